#if canImport(Glibc)
import Glibc
#endif

extension LoraLinear {
    /// Backward of the last forward, from dy (M × out):
    ///   g_a  = dy·B_a                          (M × r)
    ///   dB_a += c_a · dyᵀ·t_a,  t_a = xd_a·A_aᵀ  (out × r)
    ///   dA_a += c_a · g_aᵀ·xd_a                (r × in)
    ///   dx    = dy·W + Σ_a c_a · (g_a·A_a) ⊙ dropout_a′   (M × in), when dx is given
    ///   db   += Σ_rows dy                       (when accumulateBiasGrad and the layer has a bias)
    /// with c_a = w_a·s_a. Gradients of A, B and b accumulate (call zeroGrad between steps);
    /// dx is overwritten. The base W gets no gradient (it is frozen).
    public func backward(_ dy: UnsafeBufferPointer<Float>, m: Int, dx: UnsafeMutableBufferPointer<Float>?,
                         accumulateBiasGrad: Bool = true) throws(PSTError) {
        guard cacheM >= 1 else { throw .misuse("backward before forward (or the adapters changed since the last forward)") }
        guard m == cacheM else { throw .shape("M (\(m)) differs from the last forward's M (\(cacheM))") }
        // (m equals a forward's M, which forward bounded, so the products below cannot overflow)
        guard dy.count >= m * outFeatures else {
            throw .shape("dy has \(dy.count) elements, expected M·out_features = \(m)·\(outFeatures) = \(m * outFeatures)")
        }
        if let dx, dx.count < m * inFeatures {
            throw .shape("dx has room for \(dx.count) elements, expected M·in_features = \(m)·\(inFeatures) = \(m * inFeatures)")
        }
        let dyp = dy.baseAddress!
        // g buffers are needed for dA and dx; allocate before touching any output
        let tA = Prof.now()
        let g = try ensure(&cacheG, m * (cacheUsed.map { $0.config.r }.max() ?? 0))

        if Prof.enabled { Prof.add(.loraBackwardAlloc, Prof.now() - tA) }
        if let dx { Prof.time(.baseBackwardDx) {
            let dxp = dx.baseAddress!
            switch base {
            case .dense(let w):
                GEMM.sgemm(transA: false, transB: false, m: m, n: inFeatures, k: outFeatures, alpha: 1,
                           a: dyp, lda: outFeatures, b: w.baseAddress, ldb: inFeatures, beta: 0, c: dxp, ldc: inFeatures,
                           compute: computeDType)
            case .quantized(let q):
                GEMM.sgemm(transA: false, transB: false, m: m, n: inFeatures, k: outFeatures, alpha: 1,
                           a: dyp, lda: outFeatures, b: LoraLinear.panels(q), beta: 0, c: dxp, ldc: inFeatures,
                           compute: computeDType)
            }
        } }
        if accumulateBiasGrad, let gb = gradBias {
            let g = gb.baseAddress
            for i in 0..<m { addRow(g, dyp + i * outFeatures, outFeatures) }
        }
        for a in cacheUsed {
            let id = ObjectIdentifier(a)
            let r = a.config.r
            let c = a.weight * a.scaling
            let t = cacheT[id]!.baseAddress
            let xd = UnsafePointer(cacheDropped[id]?.baseAddress ?? cacheX!.baseAddress)
            let g = g.baseAddress
            // g (M×r) = dy (M×out) · B (out×r)
            Prof.time(.loraBackwardG) {
            GEMM.sgemm(transA: false, transB: false, m: m, n: r, k: outFeatures, alpha: 1,
                       a: dyp, lda: outFeatures, b: a.b.baseAddress, ldb: r, beta: 0, c: g, ldc: r) }
            // dB (out×r) += c · dyᵀ (out×M) · t (M×r)
            Prof.time(.loraBackwardDB) {
            GEMM.sgemm(transA: true, transB: false, m: outFeatures, n: r, k: m, alpha: c,
                       a: dyp, lda: outFeatures, b: t, ldb: r, beta: 1, c: a.gradB.baseAddress, ldc: r) }
            // dA (r×in) += c · gᵀ (r×M) · xd (M×in)
            Prof.time(.loraBackwardDA) {
            GEMM.sgemm(transA: true, transB: false, m: r, n: inFeatures, k: m, alpha: c,
                       a: g, lda: r, b: xd, ldb: inFeatures, beta: 1, c: a.gradA.baseAddress, ldc: inFeatures) }
            guard let dx else { continue }
            let dxp = dx.baseAddress!
            if let mask = cacheMasks[id] {
                // dx += c · (g·A) ⊙ mask / (1−p)
                let inv = 1 / (1 - a.config.dropout)
                Prof.time(.loraBackwardMaskAdd) {
                    LoraKernels.maskedLoraDx(m: m, n: inFeatures, r: r, c: c, g: g, a: a.a.baseAddress,
                                             mask: mask.baseAddress, inv: inv, dx: dxp)
                }
            } else {
                GEMM.sgemm(transA: false, transB: false, m: m, n: inFeatures, k: r, alpha: c,
                           a: g, lda: r, b: a.a.baseAddress, ldb: inFeatures, beta: 1, c: dxp, ldc: inFeatures)
            }
        }
    }
}
