// Llama hyper-parameters, from GGUF metadata (llama.cpp's key names, src/llama-arch.cpp
// LLM_KV_*) or from already-parsed values of a Hugging Face config.json (transformers'
// LlamaConfig field names). Also the q/k row permutation llama.cpp's converter applies.

/// RoPE scaling, when the model uses it (`llama.rope.scaling.*` / HF `rope_scaling`).
public struct RopeScaling: Equatable, Sendable {
    /// "linear", "yarn", "llama3", "dynamic", ... (GGUF `rope.scaling.type`, HF `rope_type`/`type`).
    public var type: String
    public var factor: Double
    /// GGUF `rope.scaling.original_context_length`, HF `original_max_position_embeddings`.
    public var originalContextLength: Int?

    public init(type: String, factor: Double, originalContextLength: Int? = nil) {
        self.type = type
        self.factor = factor
        self.originalContextLength = originalContextLength
    }
}

/// A value of an already-parsed HF config.json (whatever JSON reader produced it).
public indirect enum HFConfigValue: Equatable, Sendable {
    case null
    case bool(Bool)
    case int(Int)
    case double(Double)
    case string(String)
    case array([HFConfigValue])
    case object([String: HFConfigValue])

    var number: Double? {
        switch self {
        case .int(let i): return Double(i)
        case .double(let d): return d
        default: return nil
        }
    }
    var integer: Int? {
        switch self {
        case .int(let i): return i
        case .double(let d): return d == d.rounded() && abs(d) < 1e15 ? Int(d) : nil
        default: return nil
        }
    }
}

/// The shape of a Llama decoder (SmolLM2-135M: 30 layers, hidden 576, 9 heads / 3 KV heads of
/// 64, FFN 1536, vocab 49152, tied embeddings, rope theta 1e5, RMS eps 1e-5).
public struct LlamaConfig: Equatable, Sendable {
    /// Decoder layers (`llama.block_count`, HF `num_hidden_layers`).
    public var blockCount: Int
    /// `llama.embedding_length`, HF `hidden_size`.
    public var hiddenSize: Int
    /// `llama.feed_forward_length`, HF `intermediate_size`.
    public var intermediateSize: Int
    /// `llama.attention.head_count`, HF `num_attention_heads`.
    public var headCount: Int
    /// `llama.attention.head_count_kv` (default headCount), HF `num_key_value_heads`.
    public var headCountKV: Int
    /// `llama.attention.key_length` or hiddenSize / headCount; HF `head_dim`.
    public var headDim: Int
    /// `llama.attention.layer_norm_rms_epsilon`, HF `rms_norm_eps` (as float32, the precision
    /// the model adds it in).
    public var rmsNormEpsilon: Float
    /// `llama.rope.freq_base` (default 10000), HF `rope_theta`.
    public var ropeTheta: Float
    /// `llama.rope.dimension_count` (default headDim).
    public var ropeDimensionCount: Int
    public var ropeScaling: RopeScaling?
    /// `llama.context_length`, HF `max_position_embeddings`.
    public var contextLength: Int
    /// `llama.vocab_size`, else the token list's length, else token_embd's rows; HF `vocab_size`.
    public var vocabSize: Int
    /// The LM head shares token_embd (GGUF: no `output.weight` tensor; HF `tie_word_embeddings`).
    public var tiedEmbeddings: Bool

    public init(blockCount: Int, hiddenSize: Int, intermediateSize: Int, headCount: Int, headCountKV: Int,
                headDim: Int? = nil, rmsNormEpsilon: Float, ropeTheta: Float, ropeDimensionCount: Int? = nil,
                ropeScaling: RopeScaling? = nil, contextLength: Int, vocabSize: Int, tiedEmbeddings: Bool) throws(PSTError) {
        self.blockCount = blockCount
        self.hiddenSize = hiddenSize
        self.intermediateSize = intermediateSize
        self.headCount = headCount
        self.headCountKV = headCountKV
        self.headDim = headDim ?? (headCount > 0 ? hiddenSize / headCount : 0)
        self.rmsNormEpsilon = rmsNormEpsilon
        self.ropeTheta = ropeTheta
        self.ropeDimensionCount = ropeDimensionCount ?? self.headDim
        self.ropeScaling = ropeScaling
        self.contextLength = contextLength
        self.vocabSize = vocabSize
        self.tiedEmbeddings = tiedEmbeddings
        try validate(source: "llama config")
    }

    /// Checks that the numbers describe a buildable model.
    public func validate(source: String) throws(PSTError) {
        func bad(_ m: String) -> PSTError { .corrupt("\(source): \(m)") }
        let limit = 1 << 24
        for (n, v) in [("block count", blockCount), ("hidden size", hiddenSize), ("feed-forward size", intermediateSize),
                       ("head count", headCount), ("KV head count", headCountKV), ("head dim", headDim),
                       ("context length", contextLength), ("vocab size", vocabSize)] {
            guard v > 0, v <= limit else { throw bad("\(n) \(v) is out of range 1...\(limit)") }
        }
        guard headCount % headCountKV == 0 else { throw bad("head count \(headCount) is not a multiple of the KV head count \(headCountKV)") }
        guard headDim % 2 == 0 else { throw bad("head dim \(headDim) is odd (RoPE needs pairs)") }
        guard ropeDimensionCount > 0, ropeDimensionCount <= headDim, ropeDimensionCount % 2 == 0 else {
            throw bad("rope dimension count \(ropeDimensionCount) is not an even number in 2...\(headDim)")
        }
        guard rmsNormEpsilon.isFinite, rmsNormEpsilon > 0 else { throw bad("RMS norm epsilon \(rmsNormEpsilon) is not positive") }
        guard ropeTheta.isFinite, ropeTheta > 0 else { throw bad("rope theta \(ropeTheta) is not positive") }
        if let s = ropeScaling { guard s.factor.isFinite, s.factor > 0 else { throw bad("rope scaling factor \(s.factor) is not positive") } }
    }

    /// Reads the config of a `general.architecture == "llama"` GGUF file and checks the main
    /// tensors' shapes against it. `PST_ERR_UNSUPPORTED` for other architectures,
    /// `PST_ERR_NOT_FOUND` for a missing required key, `PST_ERR_CORRUPT` for bad values.
    public init(gguf g: GGUFFile) throws(PSTError) {
        let name = g.path
        guard let arch = try g.string("general.architecture") else {
            throw .notFound("\(name): no metadata key 'general.architecture'")
        }
        guard arch == "llama" else { throw .unsupported("\(name): architecture '\(arch)' (only llama is supported)") }
        func req(_ k: String) throws(PSTError) -> Int {
            guard let v = try g.int("llama." + k) else { throw .notFound("\(name): no metadata key 'llama.\(k)'") }
            return v
        }
        func reqF(_ k: String) throws(PSTError) -> Double {
            guard let v = try g.float("llama." + k) else { throw .notFound("\(name): no metadata key 'llama.\(k)'") }
            return v
        }
        let heads = try req("attention.head_count")
        let hidden = try req("embedding_length")
        var vocab = try g.int("llama.vocab_size")
        if vocab == nil, let toks = try g.array("tokenizer.ggml.tokens") { vocab = toks.count }
        if vocab == nil, g.hasTensor("token_embd.weight") { vocab = try g.tensor(named: "token_embd.weight").rows }
        guard let vocab else { throw .notFound("\(name): vocabulary size unknown (no llama.vocab_size, tokens or token_embd.weight)") }
        var scaling: RopeScaling? = nil
        if let t = try g.string("llama.rope.scaling.type"), t != "none" {
            scaling = RopeScaling(type: t, factor: try g.float("llama.rope.scaling.factor") ?? 1,
                                  originalContextLength: try g.int("llama.rope.scaling.original_context_length"))
        } else if let f = try g.float("llama.rope.scale_linear"), f != 1 {
            scaling = RopeScaling(type: "linear", factor: f)
        }
        try self.init(blockCount: try req("block_count"), hiddenSize: hidden,
                      intermediateSize: try req("feed_forward_length"), headCount: heads,
                      headCountKV: try g.int("llama.attention.head_count_kv") ?? heads,
                      headDim: try g.int("llama.attention.key_length") ?? (heads > 0 ? hidden / heads : 0),
                      rmsNormEpsilon: Float(try reqF("attention.layer_norm_rms_epsilon")),
                      ropeTheta: Float(try g.float("llama.rope.freq_base") ?? 10000),
                      ropeDimensionCount: try g.int("llama.rope.dimension_count"),
                      ropeScaling: scaling, contextLength: try req("context_length"),
                      vocabSize: vocab, tiedEmbeddings: !g.hasTensor("output.weight"))
        try validate(source: name)
        try checkTensors(g)
    }

    /// Builds the config from the values of an HF config.json (parsed by any JSON reader).
    /// Required: hidden_size, intermediate_size, num_hidden_layers, num_attention_heads,
    /// rms_norm_eps, max_position_embeddings, vocab_size. rope_theta may sit at the top level
    /// or (transformers 5) in `rope_parameters`; rope_scaling's `rope_type`/`type` "default"
    /// means none. tie_word_embeddings defaults to false (transformers' LlamaConfig default).
    public init(hfConfig c: [String: HFConfigValue]) throws(PSTError) {
        let src = "config.json"
        func int(_ k: String) throws(PSTError) -> Int? {
            guard let v = c[k], v != .null else { return nil }
            guard let i = v.integer else { throw .corrupt("\(src): '\(k)' is not an integer") }
            return i
        }
        func req(_ k: String) throws(PSTError) -> Int {
            guard let i = try int(k) else { throw .notFound("\(src): no '\(k)'") }
            return i
        }
        func num(_ k: String, in d: [String: HFConfigValue]) throws(PSTError) -> Double? {
            guard let v = d[k], v != .null else { return nil }
            guard let x = v.number else { throw .corrupt("\(src): '\(k)' is not a number") }
            return x
        }
        let heads = try req("num_attention_heads"), hidden = try req("hidden_size")
        guard let eps = try num("rms_norm_eps", in: c) else { throw .notFound("\(src): no 'rms_norm_eps'") }
        var theta = try num("rope_theta", in: c)
        var scalingObj: [String: HFConfigValue]? = nil
        if case .object(let o)? = c["rope_scaling"] { scalingObj = o }
        if case .object(let rp)? = c["rope_parameters"] {
            if theta == nil { theta = try num("rope_theta", in: rp) }
            if scalingObj == nil { scalingObj = rp }
        }
        var scaling: RopeScaling? = nil
        if let o = scalingObj {
            var type: String? = nil
            if case .string(let t)? = o["rope_type"] { type = t } else if case .string(let t)? = o["type"] { type = t }
            if let type, type != "default" {
                var orig: Int? = nil
                if let v = o["original_max_position_embeddings"], v != .null {
                    guard let i = v.integer else { throw .corrupt("\(src): 'original_max_position_embeddings' is not an integer") }
                    orig = i
                }
                scaling = RopeScaling(type: type, factor: try num("factor", in: o) ?? 1, originalContextLength: orig)
            }
        }
        var tied = false
        if let v = c["tie_word_embeddings"], v != .null {
            guard case .bool(let b) = v else { throw .corrupt("\(src): 'tie_word_embeddings' is not a bool") }
            tied = b
        }
        try self.init(blockCount: try req("num_hidden_layers"), hiddenSize: hidden,
                      intermediateSize: try req("intermediate_size"), headCount: heads,
                      headCountKV: try int("num_key_value_heads") ?? heads,
                      headDim: try int("head_dim") ?? (heads > 0 ? hidden / heads : 0),
                      rmsNormEpsilon: Float(eps), ropeTheta: Float(theta ?? 10000), ropeDimensionCount: nil,
                      ropeScaling: scaling, contextLength: try req("max_position_embeddings"),
                      vocabSize: try req("vocab_size"), tiedEmbeddings: tied)
    }

    /// Checks the shapes (GGUF dims, innermost first) of the tensors a Llama model reads.
    public func checkTensors(_ g: GGUFFile) throws(PSTError) {
        let h = hiddenSize, q = headCount * headDim, kv = headCountKV * headDim, f = intermediateSize
        var expect: [(String, [Int])] = [("token_embd.weight", [h, vocabSize]), ("output_norm.weight", [h])]
        if !tiedEmbeddings { expect.append(("output.weight", [h, vocabSize])) }
        for l in 0..<blockCount {
            let p = "blk.\(l)."
            expect += [(p + "attn_norm.weight", [h]), (p + "attn_q.weight", [h, q]), (p + "attn_k.weight", [h, kv]),
                       (p + "attn_v.weight", [h, kv]), (p + "attn_output.weight", [q, h]), (p + "ffn_norm.weight", [h]),
                       (p + "ffn_gate.weight", [h, f]), (p + "ffn_up.weight", [h, f]), (p + "ffn_down.weight", [f, h])]
        }
        for (n, dims) in expect {
            let t = try g.tensor(named: n)
            guard t.dims == dims else {
                throw .corrupt("\(g.path): tensor '\(n)' has dims \(t.dims), the config needs \(dims)")
            }
        }
    }

    /// For row `hfRow` of an HF `q_proj`/`k_proj` weight, the GGUF (`attn_q`/`attn_k`) row that
    /// holds it.
    ///
    /// llama.cpp's convert_hf_to_gguf.py (`LlamaModel.permute`) reorders the rows of q_proj and
    /// k_proj inside each head from HF's rotate-half RoPE layout (first half of the head = the
    /// "real" parts, second half = the "imaginary" parts) to ggml's interleaved pairs:
    /// `w.reshape(heads, 2, hd/2, in).swapaxes(1, 2)`. So GGUF row h*hd + 2*i + j holds HF row
    /// h*hd + j*hd/2 + i (j in {0,1}, i < hd/2). transformers' GGUF loader undoes it
    /// (`LlamaTensorProcessor._reverse_permute_weights`, with the KV head count for k).
    @inline(__always)
    public static func ggufRow(forHFRow hfRow: Int, headDim: Int) -> Int {
        let h = hfRow / headDim, rem = hfRow - h * headDim, half = headDim / 2
        let j = rem / half, i = rem - j * half
        return h * headDim + 2 * i + j
    }

    /// Heads of the q (`attn_q`) or k (`attn_k`) projection named `tensorName`, or nil for
    /// tensors llama.cpp did not permute.
    public func permutedHeads(tensorName: String) -> Int? {
        if tensorName.hasSuffix(".attn_q.weight") { return headCount }
        if tensorName.hasSuffix(".attn_k.weight") { return headCountKV }
        return nil
    }
}

public extension GGUFFile {
    /// Dequantizes `t` in Hugging Face layout: rows of `attn_q`/`attn_k` un-permuted back to
    /// HF's rotate-half order (see `LlamaConfig.ggufRow(forHFRow:headDim:)`); other tensors as
    /// stored. Output is row-major `t.shape` (= HF `[out_features, in_features]`).
    func dequantizeHF(_ t: GGUFTensorInfo, config: LlamaConfig, into out: UnsafeMutablePointer<Float>, count: Int) throws(PSTError) {
        guard let heads = config.permutedHeads(tensorName: t.name) else {
            try dequantize(t, into: out, count: count)
            return
        }
        guard count == t.elementCount else { throw .shape("output holds \(count) floats, '\(t.name)' has \(t.elementCount)") }
        let hd = config.headDim
        guard t.rows == heads * hd else {
            throw .corrupt("\(path): tensor '\(t.name)' has \(t.rows) rows, expected \(heads) heads x \(hd)")
        }
        let cols = t.columns
        var err: PSTError? = nil
        for r in 0..<t.rows {
            let g = LlamaConfig.ggufRow(forHFRow: r, headDim: hd)
            do { try dequantizeRows(t, rows: g..<(g + 1), into: out + r * cols, count: cols) } catch { err = error; break }
        }
        if let err { throw err }
    }
}
