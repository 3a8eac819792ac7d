// The config from a Hugging Face config.json (transformers' field names), read with the engine's
// JSON parser (Files/JSON.swift).

extension ModelConfig {
    /// Builds the config from a parsed config.json. The family comes from `model_type` or
    /// `architectures` (`Architecture.known`). Required: hidden_size, intermediate_size,
    /// num_hidden_layers, num_attention_heads, rms_norm_eps, max_position_embeddings, vocab_size.
    /// rope_theta may sit at the top level or (transformers 5) in `rope_parameters`;
    /// rope_scaling's `rope_type`/`type` "default" means none. tie_word_embeddings defaults to
    /// false (transformers' LlamaConfig default). Integers may be written as integral floats.
    ///
    /// `PST_ERR_UNSUPPORTED` for another family or RoPE scaling, `PST_ERR_NOT_FOUND` for a
    /// missing key, `PST_ERR_CORRUPT` for a value of the wrong type or contradicting the others,
    /// `PST_ERR_INVALID_ARG` beyond the engine's limits. Messages name `config.json`.
    public init(huggingFaceConfig c: JSONObject) throws(PSTError) {
        let src = "config.json"
        let modelType = c["model_type"]?.stringValue
        let archs = c["architectures"]?.arrayValue?.compactMap(\.stringValue) ?? []
        guard let arch = Architecture.huggingFace(modelType: modelType, architectures: archs) else {
            throw .unsupported("model_type '\(modelType ?? "unknown")' (\(Architecture.supportedDescription))")
        }
        func int(_ k: String, in d: JSONObject = c) throws(PSTError) -> Int? {
            guard let v = d[k], !v.isNull else { return nil }
            guard let i = v.numberValue.flatMap(ModelConfig.integer) else { throw .corrupt("\(src): '\(k)' is not an integer") }
            return i
        }
        func req(_ k: String) throws(PSTError) -> Int {
            guard let i = try int(k) else { throw .notFound("\(src): no '\(k)'") }
            return i
        }
        func num(_ k: String, in d: JSONObject) throws(PSTError) -> Double? {
            guard let v = d[k], !v.isNull else { return nil }
            guard let n = v.numberValue else { throw .corrupt("\(src): '\(k)' is not a number") }
            return n.int.map(Double.init) ?? n.double
        }
        let heads = try req("num_attention_heads"), hidden = try req("hidden_size")
        guard let eps = try num("rms_norm_eps", in: c) else { throw .notFound("\(src): no 'rms_norm_eps'") }
        var theta = try num("rope_theta", in: c)
        var scalingObj = c["rope_scaling"]?.objectValue
        if let rp = c["rope_parameters"]?.objectValue {
            if theta == nil { theta = try num("rope_theta", in: rp) }
            if scalingObj == nil { scalingObj = rp }
        }
        var scaling: (type: String, factor: Double)? = nil
        if let o = scalingObj, let type = o["rope_type"]?.stringValue ?? o["type"]?.stringValue, type != "default" {
            _ = try int("original_max_position_embeddings", in: o)   // checked; no scaling taken uses it
            scaling = (type, try num("factor", in: o) ?? 1)
        }
        var tied = false
        if let v = c["tie_word_embeddings"], !v.isNull {
            guard let b = v.boolValue else { throw .corrupt("\(src): 'tie_word_embeddings' is not a bool") }
            tied = b
        }
        let layers = try req("num_hidden_layers"), intermediate = try req("intermediate_size")
        let kvHeads = try int("num_key_value_heads") ?? heads
        let headDim = try int("head_dim") ?? (heads > 0 ? hidden / heads : 0)
        let maxPositions = try req("max_position_embeddings"), vocab = try req("vocab_size")
        var cfg = ModelConfig(architecture: arch, layers: layers, hidden: hidden, intermediate: intermediate, heads: heads,
                              kvHeads: kvHeads, headDim: headDim, vocab: vocab, rmsEps: Float(eps), ropeTheta: Float(theta ?? 10000),
                              maxPositions: maxPositions, tiedEmbeddings: tied)
        try cfg.checkFileValues(ropeDimensions: headDim, ropeScalingFactor: scaling?.factor, source: "\(arch.name) config")
        try cfg.adoptFileRope(dimensions: headDim, scaling: scaling)
        self = cfg
    }

    /// An integer as config.json may write it: an integer literal, or an integral number below
    /// 10^15 in magnitude (`32.0`, `1e3`).
    static func integer(_ n: JSONNumber) -> Int? {
        if let i = n.int { return i }
        let d = n.double
        return d == d.rounded() && abs(d) < 1e15 ? Int(d) : nil
    }
}
