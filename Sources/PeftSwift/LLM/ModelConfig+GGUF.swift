// The config from GGUF metadata: llama.cpp's key names (src/llama-arch.cpp LLM_KV_*), each under
// the family's prefix (`llama.block_count`).

extension ModelConfig {
    /// Reads the config of a GGUF file whose `general.architecture` is a known family
    /// (`Architecture.known`) and checks the shapes of every tensor the model reads against it.
    ///
    /// `PST_ERR_UNSUPPORTED` for another architecture, partial RoPE or a RoPE scaling the family
    /// does not take; `PST_ERR_NOT_FOUND` for a missing required key; `PST_ERR_CORRUPT` for
    /// values that contradict each other or the tensors; `PST_ERR_INVALID_ARG` for a model beyond
    /// the engine's limits (`validate()`).
    public init(gguf g: GGUFFile) throws(PSTError) {
        let name = g.path
        guard let archName = try g.string("general.architecture") else {
            throw .notFound("\(name): no metadata key 'general.architecture'")
        }
        guard let arch = Architecture.gguf(named: archName) else {
            throw .unsupported("\(name): architecture '\(archName)' (\(Architecture.supportedDescription))")
        }
        func req(_ k: String) throws(PSTError) -> Int {
            guard let v = try g.int(arch.ggufKey(k)) else { throw .notFound("\(name): no metadata key '\(arch.ggufKey(k))'") }
            return v
        }
        func reqF(_ k: String) throws(PSTError) -> Double {
            guard let v = try g.float(arch.ggufKey(k)) else { throw .notFound("\(name): no metadata key '\(arch.ggufKey(k))'") }
            return v
        }
        let heads = try req("attention.head_count")
        let hidden = try req("embedding_length")
        let embedding = arch.ggufGlobalNames.embedding
        var vocab = try g.int(arch.ggufKey("vocab_size"))
        if vocab == nil, let toks = try g.array("tokenizer.ggml.tokens") { vocab = toks.count }
        if vocab == nil, g.hasTensor(embedding) { vocab = try g.tensor(named: embedding).rows }
        guard let vocab else {
            throw .notFound("\(name): vocabulary size unknown (no \(arch.ggufKey("vocab_size")), tokens or \(embedding))")
        }
        var scaling: (type: String, factor: Double)? = nil
        if let t = try g.string(arch.ggufKey("rope.scaling.type")), t != "none" {
            scaling = (t, try g.float(arch.ggufKey("rope.scaling.factor")) ?? 1)
            _ = try g.int(arch.ggufKey("rope.scaling.original_context_length"))   // checked; no scaling taken uses it
        } else if let f = try g.float(arch.ggufKey("rope.scale_linear")), f != 1 {
            scaling = ("linear", f)
        }
        let layers = try req("block_count"), intermediate = try req("feed_forward_length")
        let kvHeads = try g.int(arch.ggufKey("attention.head_count_kv")) ?? heads
        let headDim = try g.int(arch.ggufKey("attention.key_length")) ?? (heads > 0 ? hidden / heads : 0)
        let eps = Float(try reqF("attention.layer_norm_rms_epsilon"))
        let theta = Float(try g.float(arch.ggufKey("rope.freq_base")) ?? 10000)
        let ropeDimensions = try g.int(arch.ggufKey("rope.dimension_count")) ?? headDim
        var c = ModelConfig(architecture: arch, layers: layers, hidden: hidden, intermediate: intermediate, heads: heads,
                            kvHeads: kvHeads, headDim: headDim, vocab: vocab, rmsEps: eps, ropeTheta: theta,
                            maxPositions: try req("context_length"), tiedEmbeddings: !g.hasTensor(arch.ggufGlobalNames.head))
        try c.checkFileValues(ropeDimensions: ropeDimensions, ropeScalingFactor: scaling?.factor, source: "\(arch.name) config")
        try c.checkTensors(g)
        do { try c.adoptFileRope(dimensions: ropeDimensions, scaling: scaling) } catch {
            throw PSTError(status: error.status, "\(name): \(error.message)")
        }
        self = c
    }

    /// Checks the shapes (GGUF dims, innermost first: the Hugging Face shape reversed) of every
    /// tensor the model reads (`Architecture.tensorShapes`).
    func checkTensors(_ g: GGUFFile) throws(PSTError) {
        for (hf, shape) in architecture.tensorShapes(self) {
            guard let n = architecture.ggufName(forHF: hf) else { throw .internalError("no GGUF name for '\(hf)'") }
            let t = try g.tensor(named: n)
            let dims = Array(shape.reversed())
            guard t.dims == dims else {
                throw .corrupt("\(g.path): tensor '\(n)' has dims \(t.dims), the config needs \(dims)")
            }
        }
    }
}
