// The plain twin of GEMM.sgemm: a triple loop with double accumulation, no packing, no
// threads. Tests hold the fast path to it with tolerances relative to Σ|a||b|.

extension GEMM {
    /// C[M,N] = alpha·op(A)[M,K]·op(B)[K,N] + beta·C[M,N] (same conventions as `sgemm`),
    /// accumulated in Double; beta == 0 never reads C, alpha == 0 or k == 0 never reads A, B.
    static func sgemmReference(transA: Bool, transB: Bool, m: Int, n: Int, k: Int, alpha: Float,
                               a: UnsafePointer<Float>, lda: Int, b: UnsafePointer<Float>, ldb: Int,
                               beta: Float, c: UnsafeMutablePointer<Float>, ldc: Int) {
        for i in 0..<m {
            for j in 0..<n {
                var s = 0.0
                if alpha != 0 {
                    for p in 0..<k {
                        let av = transA ? a[p * lda + i] : a[i * lda + p]
                        let bv = transB ? b[j * ldb + p] : b[p * ldb + j]
                        s += Double(av) * Double(bv)
                    }
                }
                let old = beta == 0 ? 0 : Double(beta) * Double(c[i * ldc + j])
                c[i * ldc + j] = Float(Double(alpha) * s + old)
            }
        }
    }
}
