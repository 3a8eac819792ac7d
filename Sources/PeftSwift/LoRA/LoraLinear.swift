#if canImport(Glibc)
import Glibc
#endif

/// The frozen base weight of a LoRA layer: W is out × in (torch's Linear.weight layout).
public enum LoraBase {
    /// fp32, row-major out × in. The layer owns it (merge writes into it).
    case dense(AlignedBuffer<Float>)
    /// A 4-bit tensor of shape [out, in] (nf4/fp4, with or without double quantization). The
    /// forward and dx products dequantize it panel by panel inside the GEMM; an fp32 copy of W
    /// never exists (except transiently during merge).
    case quantized(QuantizedTensor)
}

/// A linear layer with a frozen base and any number of named LoRA adapters (PEFT's
/// `lora.Linear` / `lora.bnb.Linear4bit`):
///
///   y = x·Wᵀ + b + Σ_{a active, not merged} w_a · s_a · dropout_a(x)·A_aᵀ·B_aᵀ
///
/// x: (M, in) row-major, y: (M, out); A_a: (r, in), B_a: (out, r); s_a = alpha/r (alpha/√r with
/// rsLoRA); w_a the adapter's weight in the active set (1 unless set). Dropout (inverted, keep
/// probability 1−p, survivors scaled by 1/(1−p)) only in training mode; the mask drawn in
/// forward is the one backward uses. Not thread-safe: one call at a time per layer.
public final class LoraLinear {
    public let inFeatures: Int
    public let outFeatures: Int
    public internal(set) var base: LoraBase
    /// Optional bias (out) and its gradient.
    public let bias: AlignedBuffer<Float>?
    public let gradBias: AlignedBuffer<Float>?
    /// Adapters in insertion order.
    public internal(set) var adapters: [LoraAdapter] = []
    /// The active set: (adapter, weight). Forward uses these that are not merged.
    public internal(set) var active: [LoraAdapter] = []
    public var training = true
    /// The precision of the base products x·Wᵀ and dy·W (ComputeDType): fp32, or bf16 on CPUs
    /// with AVX512_BF16. The LoRA branch, gradients and bias stay fp32. Set with `setComputeDType`.
    public internal(set) var computeDType: ComputeDType = .fp32
    /// Deleted adapters stay allocated until the layer is freed, so that pointers borrowed
    /// through the C API (pst_lora_adapter_tensor) never dangle.
    var retired: [LoraAdapter] = []
    /// Base states saved by merges on a quantized base (restored exactly by unmerge).
    var premergeBases: [QuantizedTensor] = []

    // What forward keeps for backward.
    var cacheM = -1
    var cacheX: AlignedBuffer<Float>? = nil              // M × in (copy of x)
    var cacheDropped: [ObjectIdentifier: AlignedBuffer<Float>] = [:]   // M × in per adapter with dropout
    var cacheMasks: [ObjectIdentifier: AlignedBuffer<UInt8>] = [:]
    var cacheT: [ObjectIdentifier: AlignedBuffer<Float>] = [:]         // M × r per adapter: xd·Aᵀ
    var cacheUsed: [LoraAdapter] = []                                  // adapters that contributed
    var cacheG: AlignedBuffer<Float>? = nil                            // M × r scratch of backward

    /// A layer over a dense fp32 base (`weight`: out × in, copied) with an optional bias (out).
    public init(dense weight: UnsafeBufferPointer<Float>, outFeatures: Int, inFeatures: Int,
                bias: UnsafeBufferPointer<Float>? = nil) throws(PSTError) {
        try LoraLinear.checkFeatures(inFeatures, outFeatures)
        guard weight.count == outFeatures * inFeatures else {
            throw .shape("weight has \(weight.count) elements, expected out_features·in_features = \(outFeatures)·\(inFeatures)")
        }
        try LoraLinear.checkFinite(weight, "weight")
        self.inFeatures = inFeatures
        self.outFeatures = outFeatures
        base = .dense(try AlignedBuffer(copying: weight))
        (self.bias, gradBias) = try LoraLinear.makeBias(bias, outFeatures)
    }

    /// A layer over a dense fp32 base it borrows (`weight`: out × in, row-major, owned by the
    /// caller, e.g. a PyTorch nn.Linear's weight): no copy; the caller keeps the memory alive for
    /// the layer's lifetime. The layer never writes it: merge refuses (`PST_ERR_MISUSE`).
    /// The values are checked finite once, here.
    public init(borrowingDense weight: UnsafePointer<Float>, outFeatures: Int, inFeatures: Int) throws(PSTError) {
        try LoraLinear.checkFeatures(inFeatures, outFeatures)
        let w = UnsafeBufferPointer(start: weight, count: outFeatures * inFeatures)
        try LoraLinear.checkFinite(w, "weight")
        self.inFeatures = inFeatures
        self.outFeatures = outFeatures
        base = .dense(AlignedBuffer(borrowing: UnsafeMutablePointer(mutating: weight), count: w.count))
        (bias, gradBias) = (nil, nil)
    }

    /// True when the base is memory the caller owns (a dense borrowed weight, or a quantized
    /// tensor made with `borrowing`): merge is refused on a borrowed dense base.
    public var baseIsBorrowed: Bool {
        switch base {
        case .dense(let w): return !w.ownsMemory
        case .quantized(let q): return !q.packed.ownsMemory
        }
    }

    /// A layer over a quantized base of shape [out, in] (shared, never modified except by merge,
    /// which replaces it).
    public init(quantized weight: QuantizedTensor, bias: UnsafeBufferPointer<Float>? = nil) throws(PSTError) {
        guard weight.shape.count == 2 else {
            throw .shape("quantized weight must be 2-D [out, in], got shape \(weight.shape)")
        }
        try LoraLinear.checkFeatures(weight.shape[1], weight.shape[0])
        outFeatures = weight.shape[0]
        inFeatures = weight.shape[1]
        base = .quantized(weight)
        (self.bias, gradBias) = try LoraLinear.makeBias(bias, outFeatures)
    }

    static func checkFeatures(_ inF: Int, _ outF: Int) throws(PSTError) {
        guard inF >= 1, outF >= 1, inF <= 1 << 24, outF <= 1 << 24 else {
            throw .invalidArgument("in_features (\(inF)) and out_features (\(outF)) must be in 1...16777216")
        }
    }

    static func checkFinite(_ p: UnsafeBufferPointer<Float>, _ name: String) throws(PSTError) {
        for i in 0..<p.count where !p[i].isFinite {
            throw .nonFinite("\(name)[\(i)] is \(p[i])")
        }
    }

    static func makeBias(_ bias: UnsafeBufferPointer<Float>?, _ outF: Int) throws(PSTError) -> (AlignedBuffer<Float>?, AlignedBuffer<Float>?) {
        guard let bias else { return (nil, nil) }
        guard bias.count == outF else { throw .shape("bias has \(bias.count) elements, expected out_features = \(outF)") }
        try checkFinite(bias, "bias")
        return (try AlignedBuffer(copying: bias), try AlignedBuffer(count: outF))
    }

    // MARK: - Adapters

    /// Adds a named adapter (B = 0, A initialized per `config`). It joins the active set when
    /// it is the first adapter (PEFT activates the first adapter it creates).
    @discardableResult
    public func addAdapter(_ name: String, config: LoraConfig) throws(PSTError) -> LoraAdapter {
        guard !name.isEmpty, name.utf8.count <= 255, !name.contains(".") else {
            throw .invalidArgument("adapter name \"\(name)\" must be 1...255 bytes without '.'")
        }
        guard adapter(named: name) == nil else { throw .exists("adapter \"\(name)\" already exists") }
        let a = try LoraAdapter(name: name, config: config, inFeatures: inFeatures, outFeatures: outFeatures)
        adapters.append(a)
        if adapters.count == 1 { active = [a] }
        invalidateCache()
        return a
    }

    public func adapter(named name: String) -> LoraAdapter? { adapters.first { $0.name == name } }

    func requireAdapter(_ name: String) throws(PSTError) -> LoraAdapter {
        guard let a = adapter(named: name) else {
            let known = adapters.map { "\"\($0.name)\"" }.joined(separator: ", ")
            throw .notFound("adapter \"\(name)\" does not exist (adapters: \(known.isEmpty ? "none" : known))")
        }
        return a
    }

    /// Deletes an adapter (it must not be merged: unmerge first).
    public func deleteAdapter(_ name: String) throws(PSTError) {
        let a = try requireAdapter(name)
        guard !a.merged else { throw .misuse("adapter \"\(name)\" is merged into the base weight; unmerge it first") }
        adapters.removeAll { $0 === a }
        active.removeAll { $0 === a }
        retired.append(a)
        invalidateCache()
    }

    /// Chooses the active set: each named adapter with its weight (PEFT's set_adapter with
    /// several names; weights other than 1 are peftswift's). An empty list disables all.
    public func setActive(_ names: [String], weights: [Float]? = nil) throws(PSTError) {
        if let weights, weights.count != names.count {
            throw .shape("\(weights.count) weights for \(names.count) adapters")
        }
        var chosen: [LoraAdapter] = []
        for (i, n) in names.enumerated() {
            let a = try requireAdapter(n)
            guard !chosen.contains(where: { $0 === a }) else { throw .invalidArgument("adapter \"\(n)\" named twice") }
            let w = weights?[i] ?? 1
            guard w.isFinite else { throw .invalidArgument("weight of adapter \"\(n)\" (\(w)) must be finite") }
            chosen.append(a)
        }
        for (i, a) in chosen.enumerated() {
            let w = weights?[i] ?? 1
            if a.merged && a.weight != w {
                throw .misuse("adapter \"\(a.name)\" is merged with weight \(a.weight); unmerge it to change its weight")
            }
        }
        for (i, a) in chosen.enumerated() { a.weight = weights?[i] ?? 1 }
        active = chosen
        invalidateCache()
    }

    /// Disables every adapter (forward = base only). Merged adapters stay in W.
    public func disableAdapters() { active = []; invalidateCache() }

    func invalidateCache() {
        cacheM = -1
        cacheUsed = []
    }

    /// Zeroes the gradients of every adapter and the bias.
    public func zeroGrad() {
        for a in adapters { a.zeroGrad() }
        if let g = gradBias { memset(g.baseAddress, 0, g.byteCount) }
    }

    // MARK: - Forward

    /// y (M × out) = the layer applied to x (M × in). In training mode draws fresh dropout masks
    /// and keeps what backward needs (a copy of x, the masks, x·Aᵀ per adapter).
    public func forward(_ x: UnsafeBufferPointer<Float>, m: Int, _ y: UnsafeMutableBufferPointer<Float>) throws(PSTError) {
        guard m >= 1, m <= (1 << 40) / max(inFeatures, outFeatures) else {
            throw .invalidArgument("M (\(m)) must be in 1...\((1 << 40) / max(inFeatures, outFeatures))")
        }
        guard x.count >= m * inFeatures else {
            throw .shape("x has \(x.count) elements, expected M·in_features = \(m)·\(inFeatures) = \(m * inFeatures)")
        }
        guard y.count >= m * outFeatures else {
            throw .shape("y has room for \(y.count) elements, expected M·out_features = \(m)·\(outFeatures) = \(m * outFeatures)")
        }
        let xp = x.baseAddress!, yp = y.baseAddress!
        // base
        Prof.time(.baseForward) { baseForward(xp, m: m, yp) }
        if let bias {
            let b = bias.baseAddress
            for i in 0..<m { addRow(yp + i * outFeatures, b, outFeatures) }
        }
        // adapters
        let used = active.filter { !$0.merged }
        cacheUsed = used
        cacheM = m
        if used.isEmpty { return }
        // backward reads x itself only for adapters without dropout
        if used.contains(where: { !(training && $0.config.dropout > 0) }) {
            let xs = try ensure(&cacheX, m * inFeatures)
            Prof.time(.loraCopyX) { xs.baseAddress.update(from: xp, count: m * inFeatures) }
        } else {
            cacheX = nil
        }
        for a in used {
            let r = a.config.r
            var xd = UnsafePointer(cacheX?.baseAddress ?? UnsafeMutablePointer(mutating: xp))
            if training && a.config.dropout > 0 {
                let id = ObjectIdentifier(a)
                let d = try ensure(&cacheDropped[id], m * inFeatures)
                let mask = try ensureU8(&cacheMasks[id], m * inFeatures)
                let keep = 1 - a.config.dropout, inv = 1 / keep
                Prof.time(.loraDropout) {
                    LoraKernels.dropout(xp, d.baseAddress, mask.baseAddress, count: m * inFeatures, keep: keep, inv: inv, rng: &a.rng)
                }
                xd = UnsafePointer(d.baseAddress)
            } else {
                cacheDropped[ObjectIdentifier(a)] = nil
                cacheMasks[ObjectIdentifier(a)] = nil
            }
            let t = try ensure(&cacheT[ObjectIdentifier(a)], m * r)
            // t (M×r) = xd (M×in) · Aᵀ
            Prof.time(.loraForwardGemm) {
            GEMM.sgemm(transA: false, transB: true, m: m, n: r, k: inFeatures, alpha: 1,
                       a: xd, lda: inFeatures, b: a.a.baseAddress, ldb: inFeatures, beta: 0, c: t.baseAddress, ldc: r)
            // y += c · t · Bᵀ
            GEMM.sgemm(transA: false, transB: true, m: m, n: outFeatures, k: r, alpha: a.weight * a.scaling,
                       a: t.baseAddress, lda: r, b: a.b.baseAddress, ldb: r, beta: 1, c: yp, ldc: outFeatures)
            }
        }
    }

    /// Uses `dtype` for the base products from the next forward on. Errors: unsupportedCPU for
    /// bf16 on a CPU (or a PST_ISA cap) without the AVX512_BF16 kernels.
    public func setComputeDType(_ dtype: ComputeDType) throws(PSTError) {
        try dtype.checkAvailable("compute_dtype")
        computeDType = dtype
    }

    /// y = x·Wᵀ for the base (no bias).
    func baseForward(_ x: UnsafePointer<Float>, m: Int, _ y: UnsafeMutablePointer<Float>) {
        switch base {
        case .dense(let w):
            GEMM.sgemm(transA: false, transB: true, m: m, n: outFeatures, k: inFeatures, alpha: 1,
                       a: x, lda: inFeatures, b: w.baseAddress, ldb: inFeatures, beta: 0, c: y, ldc: outFeatures,
                       compute: computeDType)
        case .quantized(let q):
            if m == 1 && computeDType == .fp32 {
                q.matvec(x, y, accumulate: false)   // reads the packed nibbles directly
            } else {
                GEMM.sgemm(transA: false, transB: true, m: m, n: outFeatures, k: inFeatures, alpha: 1,
                           a: x, lda: inFeatures, b: LoraLinear.panels(q), beta: 0, c: y, ldc: outFeatures,
                           compute: computeDType)
            }
        }
    }

    /// W (out × in) of a quantized tensor as a panel source: each requested block is `rc` row
    /// segments, each a contiguous run of the flattened tensor.
    static func panels(_ q: QuantizedTensor) -> PanelSource {
        let cols = q.shape[1]
        return PanelSource(rows: q.shape[0], cols: cols) { r0, rc, c0, cc, dst, ld in
            for i in 0..<rc {
                q.dequantizeRange(start: (r0 + i) * cols + c0, count: cc, into: dst + i * ld)
            }
        }
    }

    @inline(__always) func addRow(_ y: UnsafeMutablePointer<Float>, _ b: UnsafePointer<Float>, _ n: Int) {
        var j = 0
        while j + 8 <= n {
            let v = load8(y + j) + load8(b + j)
            store8(y + j, v)
            j += 8
        }
        while j < n { y[j] += b[j]; j += 1 }
    }

    func ensure(_ slot: inout AlignedBuffer<Float>?, _ n: Int) throws(PSTError) -> AlignedBuffer<Float> {
        if let s = slot, s.count >= n { return s }
        let s = try AlignedBuffer<Float>(count: n)
        slot = s
        return s
    }

    func ensureU8(_ slot: inout AlignedBuffer<UInt8>?, _ n: Int) throws(PSTError) -> AlignedBuffer<UInt8> {
        if let s = slot, s.count >= n { return s }
        let s = try AlignedBuffer<UInt8>(count: n)
        slot = s
        return s
    }
}
