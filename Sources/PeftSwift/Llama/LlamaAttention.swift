import Dispatch

extension GEMM {
    /// `sgemm` on the calling thread only (for callers that already run one GEMM per thread,
    /// like attention's per-head products).
    static func sgemmSerial(transA: Bool, transB: Bool, m: Int, n: Int, k: Int, alpha: Float,
                            a: UnsafePointer<Float>, lda: Int, b: UnsafePointer<Float>, ldb: Int,
                            beta: Float, c: UnsafeMutablePointer<Float>, ldc: Int) {
        checkShapes(transA: transA, m: m, n: n, k: k, lda: lda, ldc: ldc)
        precondition(ldb >= max(1, transB ? k : n))
        let p = Problem(transA: transA, transB: transB, m: m, n: n, k: k, alpha: alpha, a: a, lda: lda,
                        b: .memory(b, ldb), beta: beta, c: c, ldc: ldc)
        if m == 0 || n == 0 { return }
        if k == 0 || alpha == 0 { scaleC(m, n, beta, c, ldc); return }
        if (m == 1 || n == 1) && m * n * k < parallelThreshold { gemv(p); return }
        blocked(p, 0, m, 0, n)
    }
}

/// Runs body(chunk, lo, hi) over `chunks` contiguous pieces of 0..<n in parallel.
@inline(__always)
func parallelIndexed(_ n: Int, chunks: Int, _ body: (Int, Int, Int) -> Void) {
    if n <= 0 { return }
    if chunks <= 1 { body(0, 0, n); return }
    withoutActuallyEscaping(body) { body in
        DispatchQueue.concurrentPerform(iterations: chunks) { c in
            let lo = n * c / chunks, hi = n * (c + 1) / chunks
            if lo < hi { body(c, lo, hi) }
        }
    }
}

/// The shape of one causal grouped-query attention call. q / out / dq: (B·T) × (Hq·d);
/// k / v / dk / dv: (B·T) × (Hkv·d), token-major (row b·T + t; head h at columns h·d..<(h+1)·d,
/// the layout `q_proj` writes). probs: B × Hq × T × T (row i of a head holds P[i, 0...i];
/// only entries j ≤ i are meaningful).
struct AttentionShape {
    var batch: Int, seqLen: Int, heads: Int, kvHeads: Int, headDim: Int
    var qWidth: Int { heads * headDim }
    var kvWidth: Int { kvHeads * headDim }
    var rep: Int { heads / kvHeads }
    var scale: Float { 1 / Float(headDim).squareRoot() }
    var probsCount: Int { batch * heads * seqLen * seqLen }
    /// Query rows per block: block [r0, r1) needs keys 0..<r1 only, so the masked upper
    /// triangle is mostly skipped.
    static let blockRows = 64
    /// Floats of backward scratch per thread (a blockRows × T block of dP).
    var scratchPerThread: Int { min(AttentionShape.blockRows, seqLen) * seqLen }
}

enum LlamaAttention {
    /// Causal attention (Vaswani et al. 2017) with grouped KV heads (Ainslie et al. 2023), as
    /// transformers' eager LlamaAttention: for query head h of sequence b, with g = h / (Hq/Hkv),
    ///   S = scale · Q_h K_gᵀ  (scale = 1/√d),  P_i = softmax(S_i[0...i]) (fp32, max subtracted),
    ///   O_h = P V_g
    /// Products by the GEMM per (b, h, row block), heads in parallel. Keeps P in `probs`.
    static func forward(_ s: AttentionShape, q: UnsafePointer<Float>, k: UnsafePointer<Float>, v: UnsafePointer<Float>,
                        out: UnsafeMutablePointer<Float>, probs: UnsafeMutablePointer<Float>) {
        let T = s.seqLen, d = s.headDim, qW = s.qWidth, kW = s.kvWidth, rep = s.rep, scale = s.scale
        let pairs = s.batch * s.heads
        parallelIndexed(pairs, chunks: min(Threads.count, pairs)) { _, lo, hi in
            for pair in lo..<hi {
                let b = pair / s.heads, h = pair % s.heads, g = h / rep
                let qb = q + b * T * qW + h * d, kb = k + b * T * kW + g * d, vb = v + b * T * kW + g * d
                let ob = out + b * T * qW + h * d
                let pb = probs + pair * T * T
                var r0 = 0
                while r0 < T {
                    let r1 = min(T, r0 + AttentionShape.blockRows), rb = r1 - r0
                    let pr = pb + r0 * T
                    GEMM.sgemmSerial(transA: false, transB: true, m: rb, n: r1, k: d, alpha: scale,
                                     a: qb + r0 * qW, lda: qW, b: kb, ldb: kW, beta: 0, c: pr, ldc: T)
                    for i in r0..<r1 {
                        let row = pb + i * T
                        LlamaKernels.softmaxRow(row, i + 1)
                        if i + 1 < r1 { (row + i + 1).update(repeating: 0, count: r1 - i - 1) }
                    }
                    GEMM.sgemmSerial(transA: false, transB: false, m: rb, n: d, k: r1, alpha: 1,
                                     a: pr, lda: T, b: vb, ldb: kW, beta: 0, c: ob + r0 * qW, ldc: qW)
                    r0 = r1
                }
            }
        }
    }

    /// Backward of `forward` from dout (= ∂L/∂O), with P from forward:
    ///   dV_g += Pᵀ dO_h,  dP = dO_h V_gᵀ,  dS_ij = P_ij (dP_ij − Σ_k P_ik dP_ik)  (j ≤ i),
    ///   dQ_h = scale · dS K_g,  dK_g += scale · dSᵀ Q_h
    /// dq is overwritten; dk and dv are overwritten (summed over the Hq/Hkv query heads of each
    /// KV head). KV groups run in parallel; `scratch` holds `scratchPerThread` floats per thread
    /// (`threads` of them).
    static func backward(_ s: AttentionShape, dout: UnsafePointer<Float>, q: UnsafePointer<Float>, k: UnsafePointer<Float>,
                         v: UnsafePointer<Float>, probs: UnsafePointer<Float>,
                         dq: UnsafeMutablePointer<Float>, dk: UnsafeMutablePointer<Float>, dv: UnsafeMutablePointer<Float>,
                         scratch: UnsafeMutablePointer<Float>, threads: Int) {
        let T = s.seqLen, d = s.headDim, qW = s.qWidth, kW = s.kvWidth, rep = s.rep, scale = s.scale
        let groups = s.batch * s.kvHeads
        parallelIndexed(groups, chunks: min(threads, groups)) { chunk, lo, hi in
            let dp = scratch + chunk * s.scratchPerThread
            for grp in lo..<hi {
                let b = grp / s.kvHeads, g = grp % s.kvHeads
                let kb = k + b * T * kW + g * d, vb = v + b * T * kW + g * d
                let dkb = dk + b * T * kW + g * d, dvb = dv + b * T * kW + g * d
                for t in 0..<T {
                    (dkb + t * kW).update(repeating: 0, count: d)
                    (dvb + t * kW).update(repeating: 0, count: d)
                }
                for h in (g * rep)..<((g + 1) * rep) {
                    let qb = q + b * T * qW + h * d, dob = dout + b * T * qW + h * d, dqb = dq + b * T * qW + h * d
                    let pb = probs + (b * s.heads + h) * T * T
                    var r0 = 0
                    while r0 < T {
                        let r1 = min(T, r0 + AttentionShape.blockRows), rb = r1 - r0
                        let pr = pb + r0 * T
                        // dV[0..<r1] += P[r0..<r1, 0..<r1]ᵀ · dO[r0..<r1]
                        GEMM.sgemmSerial(transA: true, transB: false, m: r1, n: d, k: rb, alpha: 1,
                                         a: pr, lda: T, b: dob + r0 * qW, ldb: qW, beta: 1, c: dvb, ldc: kW)
                        // dP (rb × r1) = dO[r0..<r1] · V[0..<r1]ᵀ
                        GEMM.sgemmSerial(transA: false, transB: true, m: rb, n: r1, k: d, alpha: 1,
                                         a: dob + r0 * qW, lda: qW, b: vb, ldb: kW, beta: 0, c: dp, ldc: r1)
                        for i in r0..<r1 {
                            let prow = pr + (i - r0) * T, drow = dp + (i - r0) * r1
                            let n = i + 1
                            let rowdot = LlamaKernels.dot(prow, drow, n)
                            let rv = F8(repeating: rowdot)
                            var j = 0
                            while j + 8 <= n { store8(drow + j, load8(prow + j) * (load8(drow + j) - rv)); j += 8 }
                            while j < n { drow[j] = prow[j] * (drow[j] - rowdot); j += 1 }
                            if n < r1 { (drow + n).update(repeating: 0, count: r1 - n) }
                        }
                        // dQ[r0..<r1] = scale · dS · K[0..<r1]
                        GEMM.sgemmSerial(transA: false, transB: false, m: rb, n: d, k: r1, alpha: scale,
                                         a: dp, lda: r1, b: kb, ldb: kW, beta: 0, c: dqb + r0 * qW, ldc: qW)
                        // dK[0..<r1] += scale · dSᵀ · Q[r0..<r1]
                        GEMM.sgemmSerial(transA: true, transB: false, m: r1, n: d, k: rb, alpha: scale,
                                         a: dp, lda: r1, b: qb + r0 * qW, ldb: qW, beta: 1, c: dkb, ldc: kW)
                        r0 = r1
                    }
                }
            }
        }
    }
}
