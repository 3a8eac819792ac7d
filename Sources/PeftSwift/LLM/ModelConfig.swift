/// The shape of a decoder-only model: the one config of the engine, for every family
/// (`architecture`). Read from GGUF metadata (`ModelConfig+GGUF.swift`) or a Hugging Face
/// config.json (`ModelConfig+HF.swift`), or built in code.
///
/// SmolLM2-135M: `ModelConfig(layers: 30, hidden: 576, intermediate: 1536, heads: 9, kvHeads: 3,
/// headDim: 64, vocab: 49152, rmsEps: 1e-5, ropeTheta: 100000, maxPositions: 8192,
/// tiedEmbeddings: true)`.
public struct ModelConfig: Sendable, Equatable {
    /// The family: tensor names, biases, attention window, RoPE scalings (see `Architecture`).
    public var architecture: Architecture
    /// Decoder layers (GGUF `block_count`, HF `num_hidden_layers`).
    public var layers: Int
    /// Model width H (embedding and residual stream; `embedding_length`, `hidden_size`).
    public var hidden: Int
    /// MLP width I (gate/up output, down input; `feed_forward_length`, `intermediate_size`).
    public var intermediate: Int
    /// Query heads Hq (`attention.head_count`, `num_attention_heads`).
    public var heads: Int
    /// Key/value heads Hkv (grouped-query attention: query head h reads KV head h / (Hq/Hkv);
    /// `attention.head_count_kv`, `num_key_value_heads`, default Hq).
    public var kvHeads: Int
    /// Per-head width d (even; q_proj is (Hq·d) × H, k/v_proj (Hkv·d) × H, o_proj H × (Hq·d);
    /// `attention.key_length`, `head_dim`, default H / Hq).
    public var headDim: Int
    /// `vocab_size` (GGUF: else the token list's length, else token_embd's rows).
    public var vocab: Int
    /// RMSNorm epsilon, as float32 (the precision the model adds it in).
    public var rmsEps: Float
    /// RoPE base θ (`rope.freq_base`, `rope_theta`, default 10000).
    public var ropeTheta: Float
    public var ropeScaling: RopeScaling?
    /// Longest sequence accepted (`context_length`, `max_position_embeddings`).
    public var maxPositions: Int
    /// The LM head is the embedding (GGUF: no `output.weight`; HF `tie_word_embeddings`).
    public var tiedEmbeddings: Bool

    public init(architecture: Architecture = .llama, layers: Int, hidden: Int, intermediate: Int, heads: Int,
                kvHeads: Int, headDim: Int? = nil, vocab: Int, rmsEps: Float = 1e-5, ropeTheta: Float = 10000,
                ropeScaling: RopeScaling? = nil, maxPositions: Int = 2048, tiedEmbeddings: Bool = false) {
        self.architecture = architecture
        self.layers = layers
        self.hidden = hidden
        self.intermediate = intermediate
        self.heads = heads
        self.kvHeads = kvHeads
        self.headDim = headDim ?? (heads > 0 ? hidden / heads : 0)
        self.vocab = vocab
        self.rmsEps = rmsEps
        self.ropeTheta = ropeTheta
        self.ropeScaling = ropeScaling
        self.maxPositions = maxPositions
        self.tiedEmbeddings = tiedEmbeddings
    }

    /// SmolLM2-135M (HuggingFaceTB/SmolLM2-135M's config.json).
    public static let smolLM2_135M = ModelConfig(
        layers: 30, hidden: 576, intermediate: 1536, heads: 9, kvHeads: 3, headDim: 64, vocab: 49152,
        rmsEps: 1e-5, ropeTheta: 100000, maxPositions: 8192, tiedEmbeddings: true)

    /// Hq·d: q_proj's output width.
    public var qWidth: Int { heads * headDim }
    /// Hkv·d: k_proj's and v_proj's output width.
    public var kvWidth: Int { kvHeads * headDim }

    /// (out, in) of each projection, in `architecture.projectionNames` order.
    var projectionShapes: [(out: Int, in: Int)] {
        [(qWidth, hidden), (kvWidth, hidden), (kvWidth, hidden), (hidden, qWidth),
         (intermediate, hidden), (intermediate, hidden), (hidden, intermediate)]
    }

    /// The engine's limits: `PST_ERR_INVALID_ARG` naming the first field out of them.
    public func validate() throws(PSTError) {
        func range(_ v: Int, _ name: String, _ lo: Int, _ hi: Int) throws(PSTError) {
            guard v >= lo && v <= hi else { throw .invalidArgument("\(name) (\(v)) must be in \(lo)...\(hi)") }
        }
        try range(layers, "layers", 1, 4096)
        try range(hidden, "hidden", 1, 1 << 16)
        try range(intermediate, "intermediate", 1, 1 << 18)
        try range(heads, "heads", 1, 1024)
        try range(kvHeads, "kv_heads", 1, heads)
        guard heads % kvHeads == 0 else {
            throw .invalidArgument("heads (\(heads)) must be a multiple of kv_heads (\(kvHeads))")
        }
        try range(headDim, "head_dim", 2, 1024)
        guard headDim % 2 == 0 else { throw .invalidArgument("head_dim (\(headDim)) must be even (RoPE rotates pairs)") }
        try range(vocab, "vocab", 1, 1 << 24)
        try range(maxPositions, "max_positions", 1, 1 << 20)
        guard rmsEps.isFinite && rmsEps >= 0 else { throw .invalidArgument("rms_eps (\(rmsEps)) must be finite and >= 0") }
        guard ropeTheta.isFinite && ropeTheta > 1 else { throw .invalidArgument("rope_theta (\(ropeTheta)) must be > 1") }
        try ropeScaling?.validate()
        if let w = architecture.attentionWindow { try range(w, "attention window", 1, 1 << 20) }
    }

    // MARK: - From a file

    /// The checks of values read from a file, before the engine's limits: a file that fails
    /// them contradicts itself (`PST_ERR_CORRUPT`, the message prefixed with `source`).
    /// `ropeDimensions` is the rotated width per head the file states (GGUF
    /// `rope.dimension_count`), `ropeScalingFactor` its scaling factor, if any.
    func checkFileValues(ropeDimensions: Int, ropeScalingFactor: Double?, source: String) throws(PSTError) {
        func bad(_ m: String) -> PSTError { .corrupt("\(source): \(m)") }
        let limit = 1 << 24
        for (n, v) in [("block count", layers), ("hidden size", hidden), ("feed-forward size", intermediate),
                       ("head count", heads), ("KV head count", kvHeads), ("head dim", headDim),
                       ("context length", maxPositions), ("vocab size", vocab)] {
            guard v > 0, v <= limit else { throw bad("\(n) \(v) is out of range 1...\(limit)") }
        }
        guard heads % kvHeads == 0 else { throw bad("head count \(heads) is not a multiple of the KV head count \(kvHeads)") }
        guard headDim % 2 == 0 else { throw bad("head dim \(headDim) is odd (RoPE needs pairs)") }
        guard ropeDimensions > 0, ropeDimensions <= headDim, ropeDimensions % 2 == 0 else {
            throw bad("rope dimension count \(ropeDimensions) is not an even number in 2...\(headDim)")
        }
        guard rmsEps.isFinite, rmsEps > 0 else { throw bad("RMS norm epsilon \(rmsEps) is not positive") }
        guard ropeTheta.isFinite, ropeTheta > 0 else { throw bad("rope theta \(ropeTheta) is not positive") }
        if let f = ropeScalingFactor { guard f.isFinite, f > 0 else { throw bad("rope scaling factor \(f) is not positive") } }
    }

    /// Takes a file's RoPE settings (after `checkFileValues`), then checks the engine's limits:
    /// `PST_ERR_UNSUPPORTED` for partial RoPE (a rotated width other than the head dim) or a
    /// scaling type the family does not take, then `validate()`.
    mutating func adoptFileRope(dimensions: Int, scaling: (type: String, factor: Double)?) throws(PSTError) {
        guard dimensions == headDim else {
            throw .unsupported("rope dimension count \(dimensions) differs from head dim \(headDim) (partial RoPE is not supported)")
        }
        if let s = scaling { ropeScaling = try architecture.ropeScaling(type: s.type, factor: s.factor) }
        try validate()
    }
}
