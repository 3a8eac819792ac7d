#if canImport(Glibc)
import Glibc
#endif

// The layer as a pure function of its inputs, for callers that own the adapter and do their
// own autograd (PyTorch's custom op in peftswift.torch): the LoRA branch's A and B, its input
// (dropout applied by the caller), the bias, and for backward x and dy all come with the call;
// the layer contributes only its frozen base W. Nothing is kept between calls, so one layer
// may be applied any number of times before any backward (a module used twice in a graph,
// activation checkpointing, torch.func), and calls do not touch the layer's own adapters,
// dropout streams or forward cache.

/// One LoRA branch given by the caller: A (r × in) and B (out × r), row-major (PEFT's
/// lora_A.weight / lora_B.weight), and its scaling c (PEFT's `scaling[adapter]`: alpha/r or
/// alpha/√r, times any weight). Borrowed for the call only.
public struct LoraBranch {
    public var a: UnsafePointer<Float>
    public var b: UnsafePointer<Float>
    public var r: Int
    public var scaling: Float

    public init(a: UnsafePointer<Float>, b: UnsafePointer<Float>, r: Int, scaling: Float) {
        self.a = a
        self.b = b
        self.r = r
        self.scaling = scaling
    }
}

extension LoraLinear {
    func checkApply(m: Int, branch: LoraBranch?) throws(PSTError) {
        guard m >= 1, m <= (1 << 40) / max(inFeatures, outFeatures) else {
            throw .invalidArgument("m (\(m)) must be in 1...\((1 << 40) / max(inFeatures, outFeatures))")
        }
        if let br = branch {
            guard br.r >= 1, br.r <= min(inFeatures, outFeatures) else {
                throw .invalidArgument("r (\(br.r)) must be in 1...min(in_features, out_features) (\(min(inFeatures, outFeatures)))")
            }
            guard br.scaling.isFinite else { throw .invalidArgument("scaling (\(br.scaling)) must be finite") }
        }
    }

    /// y (M × out) = x·Wᵀ + bias + c · (xl·Aᵀ)·Bᵀ, with xl = xLora (the caller's dropout(x))
    /// or x when nil; no branch: the base (and bias) only.
    /// t (M × r), when given, receives xl·Aᵀ, which `applyBackward` can take instead of
    /// recomputing it. x, xLora: M × in; bias: out. y must not alias an input.
    public func apply(x: UnsafePointer<Float>, xLora: UnsafePointer<Float>?, m: Int, branch: LoraBranch?,
                      bias: UnsafePointer<Float>?, y: UnsafeMutablePointer<Float>, t: UnsafeMutablePointer<Float>?) throws(PSTError) {
        try checkApply(m: m, branch: branch)
        var scratch: AlignedBuffer<Float>? = nil
        if let br = branch, t == nil { scratch = try AlignedBuffer<Float>(count: m * br.r) }
        Prof.time(.baseForward) { baseForward(x, m: m, y) }
        if let bias {
            for i in 0..<m { addRow(y + i * outFeatures, bias, outFeatures) }
        }
        guard let br = branch else { return }
        let tp = t ?? scratch!.baseAddress
        let xl = xLora ?? x
        Prof.time(.loraForwardGemm) {
            // t (M×r) = xl (M×in) · Aᵀ
            GEMM.sgemm(transA: false, transB: true, m: m, n: br.r, k: inFeatures, alpha: 1,
                       a: xl, lda: inFeatures, b: br.a, ldb: inFeatures, beta: 0, c: tp, ldc: br.r)
            // y += c · t · Bᵀ
            GEMM.sgemm(transA: false, transB: true, m: m, n: outFeatures, k: br.r, alpha: br.scaling,
                       a: tp, lda: br.r, b: br.b, ldb: br.r, beta: 1, c: y, ldc: outFeatures)
        }
    }

    /// The gradients of `apply` from dy (M × out), each written (not accumulated) where its
    /// output is given:
    ///   g      = dy·B                                  (M × r, internal)
    ///   dx     = dy·W  (+ c·g·A when xLora is nil: the branch's input is x, whose two
    ///            gradients are summed in place)
    ///   dxLora = c·g·A                                 (M × in: the gradient of xLora, the
    ///            caller's dropout(x); only with xLora)
    ///   dA     = c·gᵀ·xl                               (r × in)
    ///   dB     = c·dyᵀ·t,  t = xl·Aᵀ (given, or recomputed)   (out × r)
    ///   dBias  = Σ_rows dy                             (out)
    /// xl = xLora or x (needed for dA, and for dB when t is nil). The base W gets no gradient.
    public func applyBackward(dy: UnsafePointer<Float>, m: Int, x: UnsafePointer<Float>?, xLora: UnsafePointer<Float>?,
                              branch: LoraBranch?, t: UnsafePointer<Float>?,
                              dx: UnsafeMutablePointer<Float>?, dxLora: UnsafeMutablePointer<Float>?,
                              gradA: UnsafeMutablePointer<Float>?, gradB: UnsafeMutablePointer<Float>?,
                              gradBias: UnsafeMutablePointer<Float>?) throws(PSTError) {
        try checkApply(m: m, branch: branch)
        let xl = xLora ?? x
        if branch == nil, dxLora != nil || gradA != nil || gradB != nil {
            throw .invalidArgument("dx_lora, grad_a and grad_b need a LoRA branch (lora_a and lora_b)")
        }
        if dxLora != nil, xLora == nil {
            throw .invalidArgument("dx_lora needs x_lora: without it the branch's input is x, whose gradient goes to dx")
        }
        if gradA != nil || (gradB != nil && t == nil), xl == nil {
            throw .invalidArgument("grad_a (and grad_b without t) need the LoRA branch's input: x_lora or x")
        }
        var gBuf: AlignedBuffer<Float>? = nil
        var tBuf: AlignedBuffer<Float>? = nil
        if let br = branch {
            let needG = gradA != nil || dxLora != nil || (dx != nil && xLora == nil)
            if needG { gBuf = try AlignedBuffer<Float>(count: m * br.r) }
            if gradB != nil && t == nil { tBuf = try AlignedBuffer<Float>(count: m * br.r) }
        }
        if let dx { Prof.time(.baseBackwardDx) {
            switch base {
            case .dense(let w):
                GEMM.sgemm(transA: false, transB: false, m: m, n: inFeatures, k: outFeatures, alpha: 1,
                           a: dy, lda: outFeatures, b: w.baseAddress, ldb: inFeatures, beta: 0, c: dx, ldc: inFeatures)
            case .quantized(let q):
                GEMM.sgemm(transA: false, transB: false, m: m, n: inFeatures, k: outFeatures, alpha: 1,
                           a: dy, lda: outFeatures, b: LoraLinear.panels(q), beta: 0, c: dx, ldc: inFeatures)
            }
        } }
        if let gradBias {
            memset(gradBias, 0, outFeatures * MemoryLayout<Float>.stride)
            for i in 0..<m { addRow(gradBias, dy + i * outFeatures, outFeatures) }
        }
        guard let br = branch else { return }
        let r = br.r, c = br.scaling
        if let gradB {
            var tp = t
            if tp == nil, let tb = tBuf, let xl {
                GEMM.sgemm(transA: false, transB: true, m: m, n: r, k: inFeatures, alpha: 1,
                           a: xl, lda: inFeatures, b: br.a, ldb: inFeatures, beta: 0, c: tb.baseAddress, ldc: r)
                tp = UnsafePointer(tb.baseAddress)
            }
            if let tp { Prof.time(.loraBackwardDB) {
                // dB (out×r) = c · dyᵀ (out×M) · t (M×r)
                GEMM.sgemm(transA: true, transB: false, m: outFeatures, n: r, k: m, alpha: c,
                           a: dy, lda: outFeatures, b: tp, ldb: r, beta: 0, c: gradB, ldc: r)
            } }
        }
        guard let g = gBuf?.baseAddress else { return }
        Prof.time(.loraBackwardG) {
            // g (M×r) = dy (M×out) · B (out×r)
            GEMM.sgemm(transA: false, transB: false, m: m, n: r, k: outFeatures, alpha: 1,
                       a: dy, lda: outFeatures, b: br.b, ldb: r, beta: 0, c: g, ldc: r)
        }
        if let gradA, let xl { Prof.time(.loraBackwardDA) {
            // dA (r×in) = c · gᵀ (r×M) · xl (M×in)
            GEMM.sgemm(transA: true, transB: false, m: r, n: inFeatures, k: m, alpha: c,
                       a: g, lda: r, b: xl, ldb: inFeatures, beta: 0, c: gradA, ldc: inFeatures)
        } }
        // the branch's input gradient: into dxLora, or added to dx when the branch's input is x
        let (target, beta): (UnsafeMutablePointer<Float>?, Float) = xLora != nil ? (dxLora, 0) : (dx, 1)
        if let target {
            GEMM.sgemm(transA: false, transB: false, m: m, n: inFeatures, k: r, alpha: c,
                       a: g, lda: r, b: br.a, ldb: inFeatures, beta: beta, c: target, ldc: inFeatures)
        }
    }
}
