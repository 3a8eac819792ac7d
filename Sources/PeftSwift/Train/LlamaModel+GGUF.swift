#if canImport(Glibc)
import Glibc
#endif

extension LlamaHyperparameters {
    /// The engine's hyper-parameters for a `LlamaConfig` read from a GGUF file or config.json:
    /// block_count → layers, embedding_length → hidden, feed_forward_length → intermediate,
    /// head counts, head_dim, vocab, RMS eps, rope theta, rope scaling (linear only here; the
    /// GGUF llama3 scheme stores a `rope_freqs` tensor instead), context_length → maxPositions,
    /// tied embeddings. Throws `PST_ERR_UNSUPPORTED` for partial RoPE (rope dimension count ≠
    /// head dim) or an unknown rope scaling type, `PST_ERR_INVALID_ARG` for values out of range.
    public init(_ c: LlamaConfig) throws(PSTError) {
        guard c.ropeDimensionCount == c.headDim else {
            throw .unsupported("rope dimension count \(c.ropeDimensionCount) differs from head dim \(c.headDim) (partial RoPE is not supported)")
        }
        var scaling: LlamaRopeScaling? = nil
        if let s = c.ropeScaling {
            switch s.type {
            case "linear": scaling = .linear(factor: Float(s.factor))
            default: throw .unsupported("rope scaling type '\(s.type)' (supported: linear)")
            }
        }
        self.init(layers: c.blockCount, hidden: c.hiddenSize, intermediate: c.intermediateSize, heads: c.headCount,
                  kvHeads: c.headCountKV, headDim: c.headDim, vocab: c.vocabSize, rmsEps: c.rmsNormEpsilon,
                  ropeTheta: c.ropeTheta, ropeScaling: scaling, maxPositions: c.contextLength,
                  tiedEmbeddings: c.tiedEmbeddings)
        try validate()
    }
}

/// Hugging Face ↔ GGUF (llama.cpp convert_hf_to_gguf.py) tensor names of a Llama model.
public enum LlamaTensorNames {
    static let layerMap: [(hf: String, gguf: String)] = [
        ("input_layernorm", "attn_norm"), ("self_attn.q_proj", "attn_q"), ("self_attn.k_proj", "attn_k"),
        ("self_attn.v_proj", "attn_v"), ("self_attn.o_proj", "attn_output"), ("post_attention_layernorm", "ffn_norm"),
        ("mlp.gate_proj", "ffn_gate"), ("mlp.up_proj", "ffn_up"), ("mlp.down_proj", "ffn_down"),
    ]

    /// The GGUF name of an HF weight name (`model.layers.3.self_attn.q_proj.weight` →
    /// `blk.3.attn_q.weight`), or nil for a name outside the Llama layout.
    public static func gguf(forHF name: String) -> String? {
        switch name {
        case "model.embed_tokens.weight": return "token_embd.weight"
        case "model.norm.weight": return "output_norm.weight"
        case "lm_head.weight": return "output.weight"
        default: break
        }
        let prefix = "model.layers."
        guard name.hasPrefix(prefix), name.hasSuffix(".weight") else { return nil }
        let rest = name.dropFirst(prefix.count).dropLast(".weight".count)
        guard let dot = rest.firstIndex(of: "."), let layer = Int(rest[rest.startIndex..<dot]), layer >= 0 else { return nil }
        let module = String(rest[rest.index(after: dot)...])
        guard let m = layerMap.first(where: { $0.hf == module }) else { return nil }
        return "blk.\(layer).\(m.gguf).weight"
    }
}

extension LlamaModel {
    /// Loads a `general.architecture == "llama"` GGUF model (e.g. SmolLM2-135M-Instruct
    /// Q4_1): every tensor is dequantized to fp32 in Hugging Face layout
    /// (`GGUFFile.dequantizeHF`, undoing llama.cpp's q/k row permutation) as the model asks for
    /// it; with `qlora` each projection is then quantized to NF4 with double quantization
    /// (QLoRA's base) before the next loads, so at most one fp32 projection is alive.
    ///
    /// Throws `PST_ERR_CORRUPT` for a file that is not GGUF or whose tensors disagree with its
    /// metadata, `PST_ERR_UNSUPPORTED` for another architecture or tensor type,
    /// `PST_ERR_NOT_FOUND` for a missing tensor or key.
    public convenience init(gguf g: GGUFFile, qlora: Bool = false) throws(PSTError) {
        try self.init(gguf: g, options: qlora ? .qlora : .dense)
    }

    /// `init(gguf:qlora:)` with explicit load options.
    public convenience init(gguf g: GGUFFile, options: LlamaLoadOptions) throws(PSTError) {
        let lc = try LlamaConfig(gguf: g)
        let hp: LlamaHyperparameters
        do { hp = try LlamaHyperparameters(lc) } catch { throw PSTError(status: error.status, "\(g.path): \(error.message)") }
        try self.init(config: hp, options: options) { (name: String, shape: [Int], dst: UnsafeMutableBufferPointer<Float>) throws(PSTError) in
            guard let gname = LlamaTensorNames.gguf(forHF: name) else {
                throw .internalError("no GGUF name for '\(name)'")
            }
            guard g.hasTensor(gname) else { throw .notFound("\(g.path): tensor '\(gname)' (\(name)) is missing") }
            let t = try g.tensor(named: gname)
            guard t.shape == shape else {
                throw .corrupt("\(g.path): tensor '\(gname)' has shape \(t.shape), the config needs \(shape)")
            }
            guard let p = dst.baseAddress else { return }
            try g.dequantizeHF(t, config: lc, into: p, count: dst.count)
        }
    }

    /// Opens the GGUF file at `path` and loads it (`init(gguf:qlora:)`).
    public convenience init(ggufPath path: String, qlora: Bool = false) throws(PSTError) {
        let g = try GGUFFile(path: path)
        try self.init(gguf: g, qlora: qlora)
    }
}
