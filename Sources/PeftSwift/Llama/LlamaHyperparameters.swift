#if canImport(Glibc)
import Glibc
#endif

/// How RoPE's inverse frequencies are rescaled for longer contexts (transformers'
/// `rope_parameters["rope_type"]`).
public enum LlamaRopeScaling: Sendable, Equatable {
    /// `"linear"`: inv_freq / factor (position interpolation, Chen et al. 2023).
    case linear(factor: Float)
    /// `"llama3"` (Llama 3.1): with wavelen = 2π / inv_freq, L = originalMaxPositions,
    ///   wavelen < L / highFreqFactor  → inv_freq unchanged,
    ///   wavelen > L / lowFreqFactor   → inv_freq / factor,
    ///   otherwise, s = (L / wavelen − lowFreqFactor) / (highFreqFactor − lowFreqFactor):
    ///                                    (1 − s)·inv_freq / factor + s·inv_freq.
    case llama3(factor: Float, lowFreqFactor: Float, highFreqFactor: Float, originalMaxPositions: Int)
}

/// The shape of a Llama decoder (the subset of a Hugging Face `LlamaConfig` the engine uses).
///
/// SmolLM2-135M: `LlamaHyperparameters(layers: 30, hidden: 576, intermediate: 1536, heads: 9,
/// kvHeads: 3, headDim: 64, vocab: 49152, rmsEps: 1e-5, ropeTheta: 100000, maxPositions: 8192,
/// tiedEmbeddings: true)`.
public struct LlamaHyperparameters: Sendable, Equatable {
    public var layers: Int
    /// Model width H (embedding and residual stream).
    public var hidden: Int
    /// MLP width I (gate/up output, down input).
    public var intermediate: Int
    /// Query heads Hq.
    public var heads: Int
    /// Key/value heads Hkv (grouped-query attention: query head h reads KV head h / (Hq/Hkv)).
    public var kvHeads: Int
    /// Per-head width d (even; q_proj is (Hq·d) × H, k/v_proj (Hkv·d) × H, o_proj H × (Hq·d)).
    public var headDim: Int
    public var vocab: Int
    public var rmsEps: Float
    public var ropeTheta: Float
    public var ropeScaling: LlamaRopeScaling?
    /// Longest sequence accepted (max_position_embeddings).
    public var maxPositions: Int
    /// lm_head.weight is model.embed_tokens.weight (tie_word_embeddings).
    public var tiedEmbeddings: Bool

    public init(layers: Int, hidden: Int, intermediate: Int, heads: Int, kvHeads: Int, headDim: Int? = nil,
                vocab: Int, rmsEps: Float = 1e-5, ropeTheta: Float = 10000, ropeScaling: LlamaRopeScaling? = nil,
                maxPositions: Int = 2048, tiedEmbeddings: Bool = false) {
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
    public static let smolLM2_135M = LlamaHyperparameters(
        layers: 30, hidden: 576, intermediate: 1536, heads: 9, kvHeads: 3, headDim: 64, vocab: 49152,
        rmsEps: 1e-5, ropeTheta: 100000, maxPositions: 8192, tiedEmbeddings: true)

    /// Hq·d: q_proj's output width.
    public var qWidth: Int { heads * headDim }
    /// Hkv·d: k_proj's and v_proj's output width.
    public var kvWidth: Int { kvHeads * headDim }

    /// Throws `PST_ERR_INVALID_ARG` naming the first bad field.
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
        switch ropeScaling {
        case nil: break
        case .linear(let f):
            guard f.isFinite && f > 0 else { throw .invalidArgument("rope scaling factor (\(f)) must be > 0") }
        case .llama3(let f, let lo, let hi, let orig):
            guard f.isFinite && f > 0 else { throw .invalidArgument("rope scaling factor (\(f)) must be > 0") }
            guard lo.isFinite && hi.isFinite && lo > 0 && hi > lo else {
                throw .invalidArgument("llama3 rope: need 0 < low_freq_factor (\(lo)) < high_freq_factor (\(hi))")
            }
            guard orig >= 1 else { throw .invalidArgument("llama3 rope: original_max_position_embeddings (\(orig)) must be >= 1") }
        }
    }

    /// RoPE's d/2 inverse frequencies θ^(−2i/d), i < d/2 (then rescaled per `ropeScaling`),
    /// rounded to fp32 as transformers stores them.
    public func ropeInverseFrequencies() -> [Float] {
        let half = headDim / 2
        var inv = [Float](repeating: 0, count: half)
        for i in 0..<half {
            // transformers: 1 / base ** (arange(0, d, 2).float() / d), in fp32
            let e = Float(2 * i) / Float(headDim)
            let p = Float(pow(Double(ropeTheta), Double(e)))
            inv[i] = 1 / p
        }
        switch ropeScaling {
        case nil: break
        case .linear(let f):
            for i in 0..<half { inv[i] /= f }
        case .llama3(let f, let lo, let hi, let orig):
            let l = Double(orig)
            let lowWavelen = l / Double(lo), highWavelen = l / Double(hi)
            for i in 0..<half {
                let wavelen = 2 * Double.pi / Double(inv[i])
                if wavelen < highWavelen { continue }
                if wavelen > lowWavelen { inv[i] /= f; continue }
                let s = Float((l / wavelen - Double(lo)) / Double(hi - lo))
                inv[i] = (1 - s) * inv[i] / f + s * inv[i]
            }
        }
        return inv
    }
}
