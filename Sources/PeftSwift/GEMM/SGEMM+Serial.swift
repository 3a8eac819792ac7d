// sgemm on the calling thread: for callers that already run one GEMM per thread (the LLM's
// attention runs one per (sequence, head) pair, the pairs in parallel).

extension GEMM {
    /// `sgemm` on the calling thread only (for callers that already run one GEMM per thread,
    /// like attention's per-head products).
    static func sgemmSerial(transA: Bool, transB: Bool, m: Int, n: Int, k: Int, alpha: Float,
                            a: UnsafePointer<Float>, lda: Int, b: UnsafePointer<Float>, ldb: Int,
                            beta: Float, c: UnsafeMutablePointer<Float>, ldc: Int) {
        checkShapes(transA: transA, m: m, n: n, k: k, lda: lda, ldc: ldc)
        precondition(ldb >= max(1, transB ? k : n))
        let p = Problem(transA: transA, transB: transB, m: m, n: n, k: k, alpha: alpha, a: a, lda: lda,
                        b: .memory(b, ldb), beta: beta, c: c, ldc: ldc, isa: ISA.active)
        if m == 0 || n == 0 { return }
        if k == 0 || alpha == 0 { scaleC(m, n, beta, c, ldc); return }
        if (m == 1 || n == 1) && m * n * k < parallelThreshold { gemv(p); return }
        blocked(p, 0, m, 0, n)
    }
}
