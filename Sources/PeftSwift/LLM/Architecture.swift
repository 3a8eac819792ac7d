/// What varies between the decoder-only model families the engine runs: the seam a new family
/// plugs into. Everything else is shared: RMSNorm, grouped-query attention with rotate-half RoPE,
/// the SwiGLU MLP, the LoRA projections, the loss, the KV cache.
///
/// The loaders and the layer ask it:
/// - the GGUF config reader: `name` (general.architecture) and the metadata key prefix
///   (`llama.block_count`); the config.json reader: `hfModelTypes` / `hfArchitectures`;
/// - the weight loaders: the tensor names (`hfName`, `ggufName(forHF:)`), which projections
///   carry a bias (`projectionBiases`), whether llama.cpp's converter permuted the q/k rows
///   (`ggufPermutesQK`);
/// - both config readers: which RoPE scalings a config file may ask for (`ropeScalingTypes`);
/// - the decoder layer: the attention window (`attentionWindow`).
///
/// Only Llama is implemented (`Architecture+Llama.swift`). A new family is one file
/// `Architecture+<Family>.swift` with its `static let`, listed in `known`: Qwen2 (q/k/v biases,
/// not permuted in GGUF), Mistral (a sliding window), Llama 3.1 (rope_type "llama3" once its
/// factors are read from the config) each differ only in these values.
public struct Architecture: Sendable, Equatable, CustomStringConvertible {
    /// The family's GGUF `general.architecture` value, also its metadata key prefix.
    public let name: String
    /// config.json `model_type` values of the family.
    public let hfModelTypes: [String]
    /// config.json `architectures` entries of the family.
    public let hfArchitectures: [String]
    /// The projections' PEFT target names, in PEFT's order (`q_proj`, ..., `down_proj`).
    public let projectionNames: [String]
    /// The projections' module paths inside a layer (`self_attn.q_proj`, ..., `mlp.down_proj`),
    /// in `projectionNames` order; the first four are attention's q, k, v, o, the last three the
    /// MLP's gate, up, down.
    public let projectionPaths: [String]
    /// Which projections (in `projectionNames` order) have a bias (`<path>.bias`, frozen).
    public let projectionBiases: [Bool]
    /// The two RMSNorm weights of a layer (`input_layernorm`, `post_attention_layernorm`).
    public let layerNorms: (input: String, postAttention: String)
    /// Hugging Face names of the embedding, the final norm and the untied LM head.
    public let embeddingName: String, finalNormName: String, headName: String
    /// The prefix of layer l's module paths: `<layerPrefix><l>.` (`model.layers.3.`).
    public let layerPrefix: String
    /// llama.cpp's names (convert_hf_to_gguf.py): of the three global tensors (embedding, final
    /// norm, head), and of each layer module (Hugging Face module path → GGUF, `blk.<l>.` prefix).
    public let ggufGlobalNames: (embedding: String, finalNorm: String, head: String)
    public let ggufLayerNames: [(hf: String, gguf: String)]
    /// llama.cpp's converter reordered the rows of q_proj and k_proj inside each head
    /// (`GGUFWeights.ggufRow(forHFRow:headDim:)`); the GGUF loader undoes it.
    public let ggufPermutesQK: Bool
    /// RoPE scaling types (config `rope_type`, GGUF `rope.scaling.type`) the family's loaders take.
    public let ropeScalingTypes: [String]
    /// Keys each query sees (sliding-window attention: positions p−W+1 ... p); nil = every
    /// earlier position (causal attention over the whole context).
    public let attentionWindow: Int?

    /// The families the loaders recognize.
    public static let known: [Architecture] = [.llama]

    public var description: String { name }

    public static func == (a: Architecture, b: Architecture) -> Bool { a.name == b.name }

    /// The family a GGUF file's `general.architecture` names, or nil.
    public static func gguf(named n: String) -> Architecture? { known.first { $0.name == n } }

    /// The family of a config.json (its model_type, or one of its architectures), or nil.
    public static func huggingFace(modelType: String?, architectures: [String]) -> Architecture? {
        known.first { a in
            modelType.map { a.hfModelTypes.contains($0) } ?? false || architectures.contains { a.hfArchitectures.contains($0) }
        }
    }

    /// "only llama is supported" / "supported: llama, qwen2" (for messages).
    static var supportedDescription: String {
        known.count == 1 ? "only \(known[0].name) is supported" : "supported: " + known.map(\.name).joined(separator: ", ")
    }

    /// The GGUF metadata key of `key` (`block_count` → `llama.block_count`).
    public func ggufKey(_ key: String) -> String { name + "." + key }

    /// Layer l's module path of projection j (`model.layers.3.self_attn.q_proj`): what PEFT
    /// adapter files are keyed by.
    public func modulePath(layer l: Int, projection j: Int) -> String { layerPrefix + "\(l)." + projectionPaths[j] }

    /// The Hugging Face name of a layer tensor (`model.layers.3.input_layernorm.weight`).
    public func hfName(layer l: Int, _ module: String, _ kind: String = "weight") -> String {
        layerPrefix + "\(l)." + module + "." + kind
    }

    /// The GGUF name of a Hugging Face tensor name (`model.layers.3.self_attn.q_proj.weight` →
    /// `blk.3.attn_q.weight`), or nil for a name outside the family's layout.
    public func ggufName(forHF name: String) -> String? {
        switch name {
        case embeddingName: return ggufGlobalNames.embedding
        case finalNormName: return ggufGlobalNames.finalNorm
        case headName: return ggufGlobalNames.head
        default: break
        }
        guard name.hasPrefix(layerPrefix) else { return nil }
        let rest = name.dropFirst(layerPrefix.count)
        guard let dot = rest.firstIndex(of: "."), let layer = Int(rest[rest.startIndex..<dot]), layer >= 0 else { return nil }
        let tail = rest[rest.index(after: dot)...]
        guard let kindDot = tail.lastIndex(of: ".") else { return nil }
        let module = String(tail[tail.startIndex..<kindDot]), kind = tail[tail.index(after: kindDot)...]
        guard kind == "weight" || kind == "bias", let m = ggufLayerNames.first(where: { $0.hf == module }) else { return nil }
        return "blk.\(layer).\(m.gguf).\(kind)"
    }

    /// Every tensor a model of config `c` reads, with its Hugging Face shape ([out, in] for a
    /// projection), in the order of a layer's modules: the embedding, the final norm, the head
    /// when untied, then per layer `ggufLayerNames` order (input norm, q, k, v, o, post-attention
    /// norm, gate, up, down), each bias after its weight.
    func tensorShapes(_ c: ModelConfig) -> [(name: String, shape: [Int])] {
        var out: [(name: String, shape: [Int])] = [(embeddingName, [c.vocab, c.hidden]), (finalNormName, [c.hidden])]
        if !c.tiedEmbeddings { out.append((headName, [c.vocab, c.hidden])) }
        let shapes = c.projectionShapes
        for l in 0..<c.layers {
            for m in ggufLayerNames {
                if let j = projectionPaths.firstIndex(of: m.hf) {
                    out.append((hfName(layer: l, m.hf), [shapes[j].out, shapes[j].in]))
                    if projectionBiases[j] { out.append((hfName(layer: l, m.hf, "bias"), [shapes[j].out])) }
                } else {
                    out.append((hfName(layer: l, m.hf), [c.hidden]))
                }
            }
        }
        return out
    }

    /// The RoPE scaling a config file asks for (`type`, `factor`), if the family takes it.
    /// `PST_ERR_UNSUPPORTED` otherwise.
    func ropeScaling(type: String, factor: Double) throws(PSTError) -> RopeScaling {
        guard ropeScalingTypes.contains(type), let s = RopeScaling(type: type, factor: factor) else {
            throw .unsupported("rope scaling type '\(type)' (supported: \(ropeScalingTypes.joined(separator: ", ")))")
        }
        return s
    }
}
