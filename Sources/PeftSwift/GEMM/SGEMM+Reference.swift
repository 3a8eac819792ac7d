// The plain twin of GEMM.sgemm: a triple loop with double accumulation, no packing, no
// threads. Tests hold the fast path to it with tolerances relative to Σ|a||b|.

extension GEMM {
    /// C[M,N] = alpha·op(A)[M,K]·op(B)[K,N] + beta·C[M,N] (same conventions as `sgemm`),
    /// accumulated in Double; beta == 0 never reads C, alpha == 0 or k == 0 never reads A, B.
    /// `operand` maps every element of A and B before it is multiplied (the identity for fp32;
    /// `roundBF16` for the bf16 twin).
    static func sgemmReference(transA: Bool, transB: Bool, m: Int, n: Int, k: Int, alpha: Float,
                               a: UnsafePointer<Float>, lda: Int, b: UnsafePointer<Float>, ldb: Int,
                               beta: Float, c: UnsafeMutablePointer<Float>, ldc: Int,
                               operand: (Float) -> Float = { $0 }) {
        for i in 0..<m {
            for j in 0..<n {
                var s = 0.0
                if alpha != 0 {
                    for p in 0..<k {
                        let av = transA ? a[p * lda + i] : a[i * lda + p]
                        let bv = transB ? b[j * ldb + p] : b[p * ldb + j]
                        s += Double(operand(av)) * Double(operand(bv))
                    }
                }
                let old = beta == 0 ? 0 : Double(beta) * Double(c[i * ldc + j])
                c[i * ldc + j] = Float(Double(alpha) * s + old)
            }
        }
    }
}

extension GEMM {
    /// bf16(x): round to nearest even, as vcvtne2ps2bf16 does (Intel SDM): NaN stays NaN (quiet),
    /// subnormal inputs become zero of the same sign; the result is widened back to fp32.
    static func roundBF16(_ x: Float) -> Float {
        let b = x.bitPattern
        if x.isNaN { return Float(bitPattern: (b | 0x0040_0000) & 0xFFFF_0000) }
        if x.isSubnormal { return Float(bitPattern: b & 0x8000_0000) }
        let r = b &+ 0x7FFF &+ ((b >> 16) & 1)
        return Float(bitPattern: r & 0xFFFF_0000)
    }

    /// The twin of `sgemm(..., compute: .bf16)`: every operand rounded by `roundBF16`, the
    /// products (exact in fp32 and in Double) summed in Double, then alpha and beta as `sgemmReference`.
    static func sgemmBF16Reference(transA: Bool, transB: Bool, m: Int, n: Int, k: Int, alpha: Float,
                                   a: UnsafePointer<Float>, lda: Int, b: UnsafePointer<Float>, ldb: Int,
                                   beta: Float, c: UnsafeMutablePointer<Float>, ldc: Int) {
        sgemmReference(transA: transA, transB: transB, m: m, n: n, k: k, alpha: alpha, a: a, lda: lda, b: b, ldb: ldb,
                       beta: beta, c: c, ldc: ldc, operand: roundBF16)
    }
}
