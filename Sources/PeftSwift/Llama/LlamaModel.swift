#if canImport(Glibc)
import Glibc
#endif

/// Supplies a weight by its Hugging Face name (`model.embed_tokens.weight`,
/// `model.layers.N.self_attn.q_proj.weight`, ..., `model.norm.weight`, `lm_head.weight`): it
/// must fill `destination` (exactly shape's element count, row-major, fp32) or throw. The model
/// asks for one tensor at a time and reuses the destination, so a loader converting from
/// bf16/f16 on the fly never holds more than one fp32 tensor.
public typealias LlamaWeightProvider = (_ name: String, _ shape: [Int], _ destination: UnsafeMutableBufferPointer<Float>) throws(PSTError) -> Void

/// How the frozen base of the seven projections is stored.
public struct LlamaLoadOptions: Sendable, Equatable {
    /// Quantize each projection weight as it loads (QLoRA); otherwise keep it fp32.
    public var quantize: Bool
    public var quantType: QuantType
    public var blocksize: Int
    /// Double quantization of the absmax (bitsandbytes' compress_statistics).
    public var doubleQuant: Bool

    public init(quantize: Bool = false, quantType: QuantType = .nf4, blocksize: Int = 64, doubleQuant: Bool = true) {
        self.quantize = quantize
        self.quantType = quantType
        self.blocksize = blocksize
        self.doubleQuant = doubleQuant
    }

    /// fp32 base.
    public static let dense = LlamaLoadOptions()
    /// QLoRA's base: NF4, blocksize 64, double quantization.
    public static let qlora = LlamaLoadOptions(quantize: true)
}

/// A trainable tensor with its gradient, named as PEFT names it in memory
/// (`model.layers.N.self_attn.q_proj.lora_A.<adapter>.weight`).
public struct LlamaTrainableTensor {
    public let name: String
    public let parameter: AlignedBuffer<Float>
    public let gradient: AlignedBuffer<Float>
}

/// Hugging Face's `LlamaForCausalLM` for LoRA / QLoRA fine-tuning: a frozen fp32 embedding,
/// decoder layers (RMSNorm → GQA attention with RoPE → residual → RMSNorm → SwiGLU MLP →
/// residual) whose seven projections are `LoraLinear`s, a final RMSNorm and an fp32 LM head
/// (the embedding when tied). Only LoRA adapters get gradients.
///
/// Batches are B sequences of T token ids (row-major B × T, positions 0..<T, causal); hidden
/// states are (B·T) × H row-major. Not thread-safe: one call at a time.
public final class LlamaModel {
    public let config: LlamaHyperparameters
    /// model.embed_tokens.weight: vocab × H.
    public let embedding: AlignedBuffer<Float>
    /// lm_head.weight (vocab × H) when not tied; nil when tied (the embedding is the head).
    public let lmHead: AlignedBuffer<Float>?
    /// model.norm.weight (H).
    public let finalNorm: AlignedBuffer<Float>
    public let layers: [LlamaDecoderLayer]
    /// RoPE inverse frequencies (d/2), after scaling.
    public let ropeInverseFrequencies: [Float]

    /// Activation recomputation (gradient checkpointing per layer): forward keeps only each
    /// layer's input; backward recomputes the layer's forward first. Gradients are identical
    /// bit for bit to stored-activation mode. Changing it drops a pending backward.
    public var recomputeActivations = false {
        didSet { if oldValue != recomputeActivations { dropState() } }
    }

    /// Training mode (LoRA dropout on). Propagates to every projection.
    public var training: Bool = true {
        didSet { for l in layers { for p in l.linears { p.training = training } } }
    }

    // per-(B, T) state
    var ws: LlamaWorkspace? = nil
    var layerInputs: [AlignedBuffer<Float>] = []     // layers + 1, each M × H
    var stored: [LayerActivations] = []              // one per layer, or one (recomputation)
    var rstdFinal: AlignedBuffer<Float>? = nil       // M
    var normedFinal: AlignedBuffer<Float>? = nil     // M × H
    var rngSnapshots: [[[SplitMix64]]] = []          // [layer][linear][adapter]
    // the pending loss
    var pendingBackward = false
    var validRows: [Int32] = []
    var logitsBuffer: AlignedBuffer<Float>? = nil    // ≥ validRows × vocab (the gradient after loss); kept across steps

    /// Loads every weight through `weights` (see `LlamaWeightProvider`), quantizing the
    /// projections as they arrive when `options.quantize`. Throws the provider's errors,
    /// `PST_ERR_INVALID_ARG` for a bad config, `PST_ERR_NONFINITE` for a NaN/Inf weight.
    ///
    /// `quantizedWeights`, when given, is asked first for each projection weight
    /// (`model.layers.N.self_attn.q_proj.weight`, ...): a tensor it returns (shape [out, in]) is
    /// used as the frozen base as is (e.g. a bitsandbytes 4-bit checkpoint's state); nil falls
    /// back to `weights`.
    public init(config: LlamaHyperparameters, options: LlamaLoadOptions = .dense,
                quantizedWeights: ((_ name: String) throws(PSTError) -> QuantizedTensor?)? = nil,
                weights: LlamaWeightProvider) throws(PSTError) {
        try config.validate()
        self.config = config
        let H = config.hidden, I = config.intermediate, V = config.vocab
        func load(_ name: String, _ shape: [Int]) throws(PSTError) -> AlignedBuffer<Float> {
            let b = try AlignedBuffer<Float>(count: shape.reduce(1, *))
            try weights(name, shape, b.buffer)
            try LoraLinear.checkFinite(buf(b), name)
            return b
        }
        embedding = try load("model.embed_tokens.weight", [V, H])
        let shapes = [(config.qWidth, H), (config.kvWidth, H), (config.kvWidth, H), (H, config.qWidth),
                      (I, H), (I, H), (H, I)]
        let scratch = try AlignedBuffer<Float>(count: shapes.map { $0.0 * $0.1 }.max()!)
        var layers: [LlamaDecoderLayer] = []
        for l in 0..<config.layers {
            let p = "model.layers.\(l)."
            let n1 = try load(p + "input_layernorm.weight", [H])
            var lins: [LoraLinear] = []
            for (j, path) in LlamaDecoderLayer.modulePaths.enumerated() {
                let (o, i) = shapes[j]
                let name = p + path + ".weight"
                if let qw = try quantizedWeights?(name) {
                    guard qw.shape == [o, i] else {
                        throw .shape("\(name): quantized tensor has shape \(qw.shape), expected [\(o), \(i)]")
                    }
                    lins.append(try LoraLinear(quantized: qw))
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
                    lins.append(try LoraLinear(quantized: q))
                } else {
                    do {
                        lins.append(try LoraLinear(dense: UnsafeBufferPointer(dst), outFeatures: o, inFeatures: i))
                    } catch {
                        throw PSTError(status: error.status, "\(name): \(error.message)")
                    }
                }
            }
            let n2 = try load(p + "post_attention_layernorm.weight", [H])
            layers.append(LlamaDecoderLayer(index: l, inputNorm: n1, postAttentionNorm: n2, linears: lins))
        }
        self.layers = layers
        finalNorm = try load("model.norm.weight", [H])
        lmHead = config.tiedEmbeddings ? nil : try load("lm_head.weight", [V, H])
        ropeInverseFrequencies = config.ropeInverseFrequencies()
    }

    /// The LM head's weight (vocab × H): lm_head.weight, or the embedding when tied.
    var headWeight: UnsafePointer<Float> { UnsafePointer((lmHead ?? embedding).baseAddress) }

    // MARK: - LoRA

    /// PEFT's target names for all seven projections (the QLoRA default).
    public static let allTargetModules = LlamaDecoderLayer.moduleNames

    /// Adds adapter `name` to every `targetModules` projection of every layer (names from
    /// `allTargetModules`; also accepted with their `self_attn.` / `mlp.` prefix). Each
    /// projection's A is drawn from its own seed (config.seed mixed with layer and module), B = 0.
    /// All or nothing: on error no layer keeps the adapter.
    public func addAdapter(_ name: String, config lora: LoraConfig,
                           targetModules: [String] = LlamaModel.allTargetModules) throws(PSTError) {
        var targets = Set<Int>()
        for t in targetModules {
            let short = t.split(separator: ".").last.map(String.init) ?? t
            guard let j = LlamaDecoderLayer.moduleNames.firstIndex(of: short) else {
                throw .invalidArgument("target module \"\(t)\" is not one of \(LlamaDecoderLayer.moduleNames)")
            }
            targets.insert(j)
        }
        guard !targets.isEmpty else { throw .invalidArgument("target_modules is empty") }
        var added: [LoraLinear] = []
        do {
            for l in layers {
                for (j, lin) in l.linears.enumerated() where targets.contains(j) {
                    var c = lora
                    c.seed = lora.seed &+ UInt64(l.index * 7 + j + 1) &* 0x9E37_79B9_7F4A_7C15
                    try lin.addAdapter(name, config: c)
                    added.append(lin)
                }
            }
        } catch {
            for lin in added { try? lin.deleteAdapter(name) }
            throw error
        }
        dropState()
    }

    /// Deletes adapter `name` wherever it is attached.
    public func deleteAdapter(_ name: String) throws(PSTError) {
        var found = false
        for (_, lin) in loraModules where lin.adapter(named: name) != nil {
            try lin.deleteAdapter(name)
            found = true
        }
        guard found else { throw .notFound("adapter \"\(name)\" is attached to no module") }
        dropState()
    }

    /// Every projection with its module path (`model.layers.N.self_attn.q_proj`, ...), layer by
    /// layer in PEFT's order: what a PEFT adapter file is keyed by.
    public var loraModules: [(modulePath: String, layer: LoraLinear)] {
        var out: [(modulePath: String, layer: LoraLinear)] = []
        for l in layers {
            for (j, lin) in l.linears.enumerated() {
                out.append(("model.layers.\(l.index).\(LlamaDecoderLayer.modulePaths[j])", lin))
            }
        }
        return out
    }

    /// The trainable tensors (lora_A then lora_B of each adapted projection, in `loraModules`
    /// order) of adapter `adapter`, or of every adapter when nil.
    public func trainableParameters(adapter: String? = nil) -> [LlamaTrainableTensor] {
        var out: [LlamaTrainableTensor] = []
        for (path, lin) in loraModules {
            for a in lin.adapters where adapter == nil || a.name == adapter {
                out.append(LlamaTrainableTensor(name: "\(path).lora_A.\(a.name).weight", parameter: a.a, gradient: a.gradA))
                out.append(LlamaTrainableTensor(name: "\(path).lora_B.\(a.name).weight", parameter: a.b, gradient: a.gradB))
            }
        }
        return out
    }

    /// Registers every trainable tensor of `adapter` (or all) with an optimizer; returns the count.
    @discardableResult
    public func register(with optimizer: AdamW, adapter: String? = nil) throws(PSTError) -> Int {
        let ps = trainableParameters(adapter: adapter)
        for p in ps {
            try optimizer.register(parameter: p.parameter.baseAddress, gradient: p.gradient.baseAddress, count: p.parameter.count)
        }
        return ps.count
    }

    /// Zeroes every adapter's gradients.
    public func zeroGrad() {
        for l in layers { for p in l.linears { p.zeroGrad() } }
    }

    // MARK: - Forward

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

    func checkBatch(_ ids: UnsafeBufferPointer<Int32>, batch: Int, seqLen: Int) throws(PSTError) {
        guard batch >= 1 else { throw .invalidArgument("batch (\(batch)) must be >= 1") }
        guard seqLen >= 1 else { throw .invalidArgument("sequence length (\(seqLen)) must be >= 1") }
        guard seqLen <= config.maxPositions else {
            throw .invalidArgument("sequence length (\(seqLen)) exceeds the context (max_positions \(config.maxPositions))")
        }
        let (m, o) = batch.multipliedReportingOverflow(by: seqLen)
        guard !o, m <= 1 << 26 else { throw .invalidArgument("batch·seq_len (\(batch)·\(seqLen)) is too large") }
        guard ids.count == m else { throw .shape("ids has \(ids.count) elements, expected batch·seq_len = \(m)") }
        for i in 0..<m where ids[i] < 0 || Int(ids[i]) >= config.vocab {
            throw .invalidArgument("ids[\(i)] (\(ids[i])) is out of range 0..<\(config.vocab)")
        }
    }

    /// Bytes of activations and scratch a forward + backward at (B, T) holds in the current
    /// mode (the LoRA layers' own input copies included, roughly).
    public func activationBytes(batch: Int, seqLen: Int) -> Int {
        let c = config, m = batch * seqLen
        let perLayer = 2 * m + m * (c.qWidth + 2 * c.kvWidth + c.hidden + 2 * c.intermediate) + batch * c.heads * seqLen * seqLen
        let loraCopies = m * (5 * c.hidden + c.qWidth + c.intermediate)
        let workspace = m * (5 * c.hidden + 4 * c.qWidth + 2 * c.kvWidth + c.intermediate)
            + Threads.count * min(AttentionShape.blockRows, seqLen) * seqLen
        let kept = recomputeActivations ? 1 : c.layers
        return 4 * (kept * (perLayer + loraCopies) + (c.layers + 1) * m * c.hidden + workspace + m * (c.hidden + 1) + m * c.vocab)
    }

    /// The most activation memory (bytes) a batch may need before `loss`/`logits` refuse it with
    /// `PST_ERR_OUT_OF_MEMORY` (default: 3/4 of physical memory).
    public var activationMemoryLimit: Int = {
        let pages = Int(sysconf(Int32(_SC_PHYS_PAGES))), size = Int(sysconf(Int32(_SC_PAGESIZE)))
        return pages > 0 && size > 0 ? pages / 4 * 3 * size : Int.max
    }()

    /// Buffers for (B, T); reallocated when the shape or the mode changes.
    func prepare(batch: Int, seqLen: Int) throws(PSTError) {
        let m = batch * seqLen
        let wantStored = recomputeActivations ? 1 : config.layers
        if let ws, ws.batch == batch, ws.seqLen == seqLen, stored.count == wantStored { return }
        let need = activationBytes(batch: batch, seqLen: seqLen)
        guard need <= activationMemoryLimit else {
            throw .outOfMemory("batch \(batch) × \(seqLen) tokens needs ~\(need >> 20) MiB of activations, over the limit of \(activationMemoryLimit >> 20) MiB\(recomputeActivations ? "" : " (activation recomputation needs less)")")
        }
        ws = nil; stored = []; layerInputs = []; rstdFinal = nil; normedFinal = nil
        ws = try LlamaWorkspace(config, batch: batch, seqLen: seqLen, invFreq: ropeInverseFrequencies)
        for _ in 0...config.layers { layerInputs.append(try AlignedBuffer(count: m * config.hidden)) }
        for _ in 0..<wantStored { stored.append(try LayerActivations(config, batch: batch, seqLen: seqLen)) }
        rstdFinal = try AlignedBuffer(count: m)
        normedFinal = try AlignedBuffer(count: m * config.hidden)
    }

    /// Embedding → layers → final RMSNorm into normedFinal.
    func runForward(_ ids: UnsafeBufferPointer<Int32>, batch: Int, seqLen: Int) throws(PSTError) {
        try prepare(batch: batch, seqLen: seqLen)
        let ws = ws!, m = batch * seqLen, H = config.hidden
        let x0 = layerInputs[0].baseAddress, e = embedding.baseAddress
        for i in 0..<m { (x0 + i * H).update(from: e + Int(ids[i]) * H, count: H) }
        rngSnapshots = []
        for l in layers {
            let acts = recomputeActivations ? stored[0] : stored[l.index]
            rngSnapshots.append(l.linears.map { $0.rngStates })
            try Prof.time(23) { () throws(PSTError) in try l.forward(config, x: layerInputs[l.index].baseAddress, out: layerInputs[l.index + 1].baseAddress,
                          acts: acts, ws: ws) }
            if recomputeActivations {
                // the next layer to run is l+1, or (after the last) this one again in backward
                let next = layers[min(l.index + 1, layers.count - 1)]
                for (p, q) in zip(l.linears, next.linears) { p.handOverForwardCache(to: q) }
            }
        }
        LlamaKernels.rmsNorm(layerInputs[config.layers].baseAddress, finalNorm.baseAddress, normedFinal!.baseAddress,
                             rstd: rstdFinal!.baseAddress, rows: m, n: H, eps: config.rmsEps)
    }

    /// Logits for every position: out (B·T × vocab) = RMSNorm(h_L)·W_headᵀ. Drops a pending
    /// backward. Throws on ids out of range, T > max_positions, a wrong ids/out size.
    public func logits(ids: UnsafeBufferPointer<Int32>, batch: Int, seqLen: Int,
                       into out: UnsafeMutableBufferPointer<Float>) throws(PSTError) {
        try checkBatch(ids, batch: batch, seqLen: seqLen)
        let m = batch * seqLen
        guard out.count >= m * config.vocab else {
            throw .shape("logits has room for \(out.count) elements, expected batch·seq_len·vocab = \(m * config.vocab)")
        }
        dropState()
        try runForward(ids, batch: batch, seqLen: seqLen)
        GEMM.sgemm(transA: false, transB: true, m: m, n: config.vocab, k: config.hidden, alpha: 1,
                   a: normedFinal!.baseAddress, lda: config.hidden, b: headWeight, ldb: config.hidden,
                   beta: 0, c: out.baseAddress!, ldc: config.vocab)
    }

    /// `logits(ids:batch:seqLen:into:)` on arrays.
    public func logits(ids: [Int32], batch: Int, seqLen: Int) throws(PSTError) -> [Float] {
        var out = [Float](repeating: 0, count: max(0, batch * seqLen) * config.vocab)
        try ids.withUnsafeBufferPointer { (ip) throws(PSTError) in
            try out.withUnsafeMutableBufferPointer { (op) throws(PSTError) in
                try logits(ids: ip, batch: batch, seqLen: seqLen, into: op)
            }
        }
        return out
    }

    /// The causal-LM loss (transformers' LlamaForCausalLM with labels): position t of sequence
    /// b predicts labels[b, t+1]; targets equal to `ignoreIndex` (and position T−1) are skipped;
    ///   loss = Σ_{targets} [logsumexp(z_bt) − z_bt[y]] / N,
    /// N = the number of targets, or `normalizer` when given (transformers' num_items_in_batch,
    /// for gradient accumulation). No targets: the loss is 0 and backward adds nothing.
    /// Keeps what `backward()` needs. Labels must be `ignoreIndex` or in 0..<vocab.
    public func loss(ids: UnsafeBufferPointer<Int32>, labels: UnsafeBufferPointer<Int32>, batch: Int, seqLen: Int,
                     ignoreIndex: Int32 = -100, normalizer: Int? = nil) throws(PSTError) -> Float {
        try checkBatch(ids, batch: batch, seqLen: seqLen)
        let m = batch * seqLen, V = config.vocab, H = config.hidden
        guard labels.count == m else { throw .shape("labels has \(labels.count) elements, expected batch·seq_len = \(m)") }
        for i in 0..<m where labels[i] != ignoreIndex && (labels[i] < 0 || Int(labels[i]) >= V) {
            throw .invalidArgument("labels[\(i)] (\(labels[i])) is neither \(ignoreIndex) nor in 0..<\(V)")
        }
        if let normalizer, normalizer < 1 { throw .invalidArgument("normalizer (\(normalizer)) must be >= 1") }
        dropState()
        var rows: [Int32] = [], targets: [Int32] = []
        for b in 0..<batch {
            for t in 0..<(seqLen - 1) where labels[b * seqLen + t + 1] != ignoreIndex {
                rows.append(Int32(b * seqLen + t))
                targets.append(labels[b * seqLen + t + 1])
            }
        }
        try runForward(ids, batch: batch, seqLen: seqLen)
        validRows = rows
        let mv = rows.count
        let dn = ws!.dn.baseAddress
        dn.update(repeating: 0, count: m * H)
        if mv == 0 { pendingBackward = true; return 0 }
        // The LM head and the cross-entropy run over chunks of target rows, and each chunk's
        // share of the backward, dh = dz·W_head, is taken right away and scattered into the
        // M × H gradient of the final norm's output (ws.dn, free until backward): only
        // chunk × vocab logits exist at once (all M × vocab would be a step's largest buffer,
        // 200 MB at 1024 × 49152). The forward-only cost is the dh product, which every
        // training step needs anyway.
        let chunk = min(mv, max(1, headChunkRows), max(1, m / 2))
        if (logitsBuffer?.count ?? 0) < chunk * V { logitsBuffer = nil; logitsBuffer = try AlignedBuffer<Float>(count: chunk * V) }
        let z = logitsBuffer!.baseAddress
        let hs = ws!.tmpH.baseAddress, nf = normedFinal!.baseAddress
        let dh = hs + chunk * H      // tmpH holds M × H floats: chunk rows of input, then chunk rows of dh
        let n = Float(normalizer ?? mv)
        var sum = 0.0
        var c0 = 0
        while c0 < mv {
            let cm = min(chunk, mv - c0)
            for i in 0..<cm { (hs + i * H).update(from: nf + Int(rows[c0 + i]) * H, count: H) }
            GEMM.sgemm(transA: false, transB: true, m: cm, n: V, k: H, alpha: 1, a: hs, lda: H, b: headWeight, ldb: H,
                       beta: 0, c: z, ldc: V)
            sum += targets.withUnsafeBufferPointer { tp in
                LlamaKernels.crossEntropy(z, rows: cm, n: V, targets: tp.baseAddress! + c0, scale: 1 / n)
            }
            GEMM.sgemm(transA: false, transB: false, m: cm, n: H, k: V, alpha: 1, a: z, lda: V, b: headWeight, ldb: H,
                       beta: 0, c: dh, ldc: H)
            for i in 0..<cm { (dn + Int(rows[c0 + i]) * H).update(from: dh + i * H, count: H) }
            c0 += cm
        }
        pendingBackward = true
        return Float(sum / Double(n))
    }

    /// Target rows per LM-head chunk in `loss` (at most M / 2 there, as tmpH holds the chunk's
    /// inputs and its dh side by side; 256 rows × 49152 vocab = 50 MB of logits).
    var headChunkRows = 256

    /// `loss(ids:labels:batch:seqLen:ignoreIndex:normalizer:)` on arrays.
    public func loss(ids: [Int32], labels: [Int32], batch: Int, seqLen: Int, ignoreIndex: Int32 = -100,
                     normalizer: Int? = nil) throws(PSTError) -> Float {
        try ids.withUnsafeBufferPointer { (ip) throws(PSTError) -> Float in
            try labels.withUnsafeBufferPointer { (lp) throws(PSTError) -> Float in
                try loss(ids: ip, labels: lp, batch: batch, seqLen: seqLen, ignoreIndex: ignoreIndex, normalizer: normalizer)
            }
        }
    }

    /// Backward of the last `loss`: accumulates ∂loss/∂A and ∂loss/∂B into every active
    /// adapter's gradA / gradB (call `zeroGrad()` between steps). Once per loss.
    public func backward() throws(PSTError) {
        guard pendingBackward, let ws else { throw .misuse("backward without a preceding loss (or after the model changed)") }
        pendingBackward = false
        let mv = validRows.count
        if mv == 0 { return }
        let m = ws.batch * ws.seqLen, H = config.hidden
        // dn already holds d loss / d RMSNorm(h_L) (the LM head's backward ran in `loss`)
        let dn = ws.dn.baseAddress
        LlamaKernels.rmsNormBackward(dn, layerInputs[config.layers].baseAddress, finalNorm.baseAddress,
                                     rstd: rstdFinal!.baseAddress, ws.dres.baseAddress, rows: m, n: H, accumulate: false)
        for l in layers.reversed() {
            let x = layerInputs[l.index].baseAddress
            let acts: LayerActivations
            if recomputeActivations {
                acts = stored[0]
                for (p, s) in zip(l.linears, rngSnapshots[l.index]) { p.restoreRng(s) }
                // recompute the layer (its output, equal to the next layer's input, goes to the
                // free dn buffer and is discarded)
                try Prof.time(27) { () throws(PSTError) in try l.forward(config, x: x, out: ws.dn.baseAddress, acts: acts, ws: ws) }
            } else {
                acts = stored[l.index]
            }
            try Prof.time(24) { () throws(PSTError) in try l.backward(config, x: x, acts: acts, ws: ws, inputGradient: l.index > 0) }
            if recomputeActivations {
                // to layer l−1, recomputed next (layer 0 keeps them for the next step's forward)
                let next = layers[max(l.index - 1, 0)]
                for (p, q) in zip(l.linears, next.linears) { p.handOverForwardCache(to: q) }
            }
        }
    }
}
