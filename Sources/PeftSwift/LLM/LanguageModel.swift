#if canImport(Glibc)
import Glibc
#endif

/// Supplies a weight by its Hugging Face name (`model.embed_tokens.weight`,
/// `model.layers.N.self_attn.q_proj.weight`, ..., `model.norm.weight`, `lm_head.weight`): it
/// must fill `destination` (exactly shape's element count, row-major, fp32) or throw. The model
/// asks for one tensor at a time and reuses the destination, so a loader converting from
/// bf16/f16 on the fly never holds more than one fp32 tensor. `GGUFWeights.read` and
/// `SafeTensorsWeights.read` are the file formats' providers.
public typealias WeightProvider = (_ name: String, _ shape: [Int], _ destination: UnsafeMutableBufferPointer<Float>) throws(PSTError) -> Void

/// How the frozen base of the projections is stored.
public struct ModelLoadOptions: Sendable, Equatable {
    /// Quantize each projection weight as it loads (QLoRA); otherwise keep it fp32.
    public var quantize: Bool
    public var quantType: QuantType
    public var blocksize: Int
    /// Double quantization of the absmax (bitsandbytes' compress_statistics).
    public var doubleQuant: Bool
    /// The precision of the projections' and the LM head's products (ComputeDType).
    public var computeDType: ComputeDType

    public init(quantize: Bool = false, quantType: QuantType = .nf4, blocksize: Int = 64, doubleQuant: Bool = true,
                computeDType: ComputeDType = .fp32) {
        self.quantize = quantize
        self.quantType = quantType
        self.blocksize = blocksize
        self.doubleQuant = doubleQuant
        self.computeDType = computeDType
    }

    /// fp32 base.
    public static let dense = ModelLoadOptions()
    /// QLoRA's base: NF4, blocksize 64, double quantization.
    public static let qlora = ModelLoadOptions(quantize: true)
}

/// A trainable tensor with its gradient, named as PEFT names it in memory
/// (`model.layers.N.self_attn.q_proj.lora_A.<adapter>.weight`).
public struct TrainableTensor {
    public let name: String
    public let parameter: AlignedBuffer<Float>
    public let gradient: AlignedBuffer<Float>
}

/// A decoder-only language model for LoRA / QLoRA fine-tuning and generation, as Hugging Face's
/// `LlamaForCausalLM` computes it (and the other families of `Architecture`): a frozen fp32
/// embedding, decoder layers (RMSNorm → GQA attention with RoPE → residual → RMSNorm → SwiGLU
/// MLP → residual) whose seven projections are `LoraLinear`s, a final RMSNorm and an fp32 LM head
/// (the embedding when tied). Only LoRA adapters get gradients.
///
/// Its parts: loading (`+Load`: GGUF, Hugging Face directories), the forward over whole
/// sequences (`+Forward`), the loss and backward (`+Loss`), adapters (`+Adapters`), sizes
/// (`+Info`), cached decoding (`+Decode`, `KVCache`) and generation (`Generate.swift`). Every
/// forward runs `DecoderLayer.forward`.
///
/// Batches are B sequences of T token ids (row-major B × T, positions 0..<T, causal); hidden
/// states are (B·T) × H row-major. Not thread-safe: one call at a time.
public final class LanguageModel {
    public let config: ModelConfig
    /// model.embed_tokens.weight: vocab × H.
    public let embedding: AlignedBuffer<Float>
    /// lm_head.weight (vocab × H) when not tied; nil when tied (the embedding is the head).
    public let lmHead: AlignedBuffer<Float>?
    /// model.norm.weight (H).
    public let finalNorm: AlignedBuffer<Float>
    public let layers: [DecoderLayer]
    /// RoPE inverse frequencies (d/2), after scaling.
    public let ropeInverseFrequencies: [Float]
    /// Every projection with its module path (`model.layers.N.self_attn.q_proj`, ...), layer by
    /// layer in PEFT's order: what a PEFT adapter file is keyed by. Fixed once loaded.
    public let loraModules: [(modulePath: String, layer: LoraLinear)]
    /// loraModules' index by module path.
    let moduleIndex: [String: Int]

    /// Activation recomputation (gradient checkpointing per layer): forward keeps only each
    /// layer's input; backward recomputes the layer's forward first. Gradients are identical
    /// bit for bit to stored-activation mode. Changing it drops a pending backward.
    public var recomputeActivations = false {
        didSet { if oldValue != recomputeActivations { dropState() } }
    }

    /// Training mode (LoRA dropout on). Propagates to every projection.
    /// The precision of the products with frozen weights: the seven projections' base GEMMs
    /// (forward and dx) and the LM head (logits and its dx). Attention's products, the LoRA
    /// branch, norms, gradients and optimizer states stay fp32. Set with `setComputeDType`.
    public internal(set) var computeDType: ComputeDType = .fp32

    /// Uses `dtype` from the next forward on. Errors: unsupportedCPU for bf16 without the
    /// AVX512_BF16 kernels (ComputeDType.checkAvailable).
    public func setComputeDType(_ dtype: ComputeDType) throws(PSTError) {
        try dtype.checkAvailable("compute_dtype")
        computeDType = dtype
        for (_, l) in loraModules { l.computeDType = dtype }
    }

    public var training: Bool = true {
        didSet { for l in layers { for p in l.linears { p.training = training } } }
    }

    /// The most activation memory (bytes) a batch may need before `loss`/`logits` refuse it with
    /// `PST_ERR_OUT_OF_MEMORY` (default: 3/4 of physical memory).
    public var activationMemoryLimit: Int = {
        let pages = Int(sysconf(Int32(_SC_PHYS_PAGES))), size = Int(sysconf(Int32(_SC_PAGESIZE)))
        return pages > 0 && size > 0 ? pages / 4 * 3 * size : Int.max
    }()

    /// Target rows per LM-head chunk in `loss` (at most M / 2 there, as tmpH holds the chunk's
    /// inputs and its dh side by side; 256 rows × 49152 vocab = 50 MB of logits).
    var headChunkRows = 256

    // per-(B, T) state of the forward over whole sequences
    var ws: LayerWorkspace? = nil
    var layerInputs: [AlignedBuffer<Float>] = []     // layers + 1, each M × H
    var stored: [LayerActivations] = []              // one per layer, or one (recomputation)
    var rstdFinal: AlignedBuffer<Float>? = nil       // M
    var normedFinal: AlignedBuffer<Float>? = nil     // M × H
    var rngSnapshots: [[[SplitMix64]]] = []          // [layer][linear][adapter]
    // the pending loss
    var pendingBackward = false
    var validRows: [Int32] = []
    var logitsBuffer: AlignedBuffer<Float>? = nil    // ≥ validRows × vocab (the gradient after loss); kept across steps
    // cached decoding: the LM head's lossless int8 form (LanguageModel+DecodeStep.swift), made on first use
    var decodeHeadInt8: Int8Rows? = nil
    var decodeHeadTried = false

    /// Loads every weight through `weights` (see `WeightProvider`; the names are the config's
    /// architecture's), quantizing the projections as they arrive when `options.quantize`.
    /// Throws the provider's errors, `PST_ERR_INVALID_ARG` for a bad config, `PST_ERR_NONFINITE`
    /// for a NaN/Inf weight.
    ///
    /// `quantizedWeights`, when given, is asked first for each projection weight
    /// (`model.layers.N.self_attn.q_proj.weight`, ...): a tensor it returns (shape [out, in]) is
    /// used as the frozen base as is (e.g. a bitsandbytes 4-bit checkpoint's state); nil falls
    /// back to `weights`.
    public init(config: ModelConfig, options: ModelLoadOptions = .dense,
                quantizedWeights: ((_ name: String) throws(PSTError) -> QuantizedTensor?)? = nil,
                weights: WeightProvider) throws(PSTError) {
        try config.validate()
        self.config = config
        let arch = config.architecture
        let H = config.hidden, V = config.vocab
        func load(_ name: String, _ shape: [Int]) throws(PSTError) -> AlignedBuffer<Float> {
            let b = try AlignedBuffer<Float>(count: shape.reduce(1, *))
            try weights(name, shape, b.buffer)
            try LoraLinear.checkFinite(buf(b), name)
            return b
        }
        embedding = try load(arch.embeddingName, [V, H])
        let shapes = config.projectionShapes
        let scratch = try AlignedBuffer<Float>(count: shapes.map { $0.out * $0.in }.max()!)
        var layers: [DecoderLayer] = []
        for l in 0..<config.layers {
            let n1 = try load(arch.hfName(layer: l, arch.layerNorms.input), [H])
            var lins: [LoraLinear] = []
            for (j, path) in arch.projectionPaths.enumerated() {
                let (o, i) = shapes[j]
                let name = arch.hfName(layer: l, path)
                let bias = arch.projectionBiases[j] ? try load(arch.hfName(layer: l, path, "bias"), [o]) : nil
                if let qw = try quantizedWeights?(name) {
                    guard qw.shape == [o, i] else {
                        throw .shape("\(name): quantized tensor has shape \(qw.shape), expected [\(o), \(i)]")
                    }
                    lins.append(try LoraLinear(quantized: qw, bias: bias.map(buf)))
                    continue
                }
                let dst = UnsafeMutableBufferPointer(start: scratch.baseAddress, count: o * i)
                try weights(name, [o, i], dst)
                if options.quantize {
                    let q: QuantizedTensor
                    do {
                        q = try QuantizedTensor(quantizing: UnsafeRawPointer(scratch.baseAddress), dtype: .f32, shape: [o, i],
                                                blocksize: options.blocksize, type: options.quantType,
                                                doubleQuant: options.doubleQuant)
                    } catch {
                        throw PSTError(status: error.status, "\(name): \(error.message)")
                    }
                    lins.append(try LoraLinear(quantized: q, bias: bias.map(buf)))
                } else {
                    do {
                        lins.append(try LoraLinear(dense: UnsafeBufferPointer(dst), outFeatures: o, inFeatures: i, bias: bias.map(buf)))
                    } catch {
                        throw PSTError(status: error.status, "\(name): \(error.message)")
                    }
                }
            }
            let n2 = try load(arch.hfName(layer: l, arch.layerNorms.postAttention), [H])
            layers.append(DecoderLayer(index: l, inputNorm: n1, postAttentionNorm: n2, linears: lins))
        }
        self.layers = layers
        finalNorm = try load(arch.finalNormName, [H])
        lmHead = config.tiedEmbeddings ? nil : try load(arch.headName, [V, H])
        ropeInverseFrequencies = config.ropeInverseFrequencies()
        var modules: [(modulePath: String, layer: LoraLinear)] = []
        for l in layers {
            for (j, lin) in l.linears.enumerated() { modules.append((arch.modulePath(layer: l.index, projection: j), lin)) }
        }
        loraModules = modules
        moduleIndex = Dictionary(uniqueKeysWithValues: modules.enumerated().map { ($0.element.modulePath, $0.offset) })
    }

    /// The LM head's weight (vocab × H): lm_head.weight, or the embedding when tied.
    var headWeight: UnsafePointer<Float> { UnsafePointer((lmHead ?? embedding).baseAddress) }

    /// Forgets a pending backward (the model or its adapters changed).
    func dropState() {
        pendingBackward = false
    }

    /// Frees the buffers kept between steps (activations, workspace, logits); the next call
    /// allocates them again.
    public func releaseBuffers() {
        dropState()
        ws = nil; stored = []; layerInputs = []; rstdFinal = nil; normedFinal = nil; logitsBuffer = nil
        for l in layers { for p in l.linears { p.releaseForwardCache() } }
    }
}
