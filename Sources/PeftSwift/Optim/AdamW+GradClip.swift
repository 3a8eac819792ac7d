#if canImport(Glibc)
import Glibc
#endif

extension AdamW {
    /// Scales all registered gradients so that their global norm is at most `maxNorm`, and
    /// returns the norm before scaling — `torch.nn.utils.clip_grad_norm_` semantics (torch 2.13,
    /// torch/nn/utils/clip_grad.py):
    ///
    ///     total = ‖(‖g₁‖, ‖g₂‖, …)‖                   (float32; p-norm of the per-tensor p-norms)
    ///     coef  = min(maxNorm · 1/(total + 1e-6), 1)  (`max_norm / t` is `t.reciprocal() * max_norm`)
    ///     gᵢ    = gᵢ · coef                            (always applied, also when coef = 1)
    ///
    /// Per-tensor norms are accumulated in double and rounded to float32 (torch accumulates in
    /// float32, so the two agree to about 1e-7 relative). `normType` is 2 or `.infinity`
    /// (max |g|). Like torch with `error_if_nonfinite=False`, a NaN or infinite norm is returned
    /// as is and multiplies the gradients (making them NaN) rather than failing.
    /// - Throws: `PST_ERR_INVALID_ARG` for a negative or NaN `maxNorm` or another `normType`.
    @discardableResult
    public func clipGradNorm(maxNorm: Double, normType: Double = 2) throws(PSTError) -> Float {
        guard !maxNorm.isNaN, maxNorm >= 0 else { throw .invalidArgument("maxNorm (\(maxNorm)) must be >= 0") }
        guard normType == 2 || normType == .infinity else {
            throw .invalidArgument("normType (\(normType)) must be 2 or infinity")
        }
        if params.isEmpty { return 0 }
        let inf = normType == .infinity
        var norms: [Float] = []
        for q in params {
            norms.append(inf ? gradientMaxAbs(q.g, q.count) : Float(gradientSumOfSquares(q.g, q.count).squareRoot()))
        }
        let total: Float
        if inf {
            total = norms.reduce(0) { $1.isNaN || $0.isNaN ? .nan : max($0, $1) }
        } else {
            total = Float(norms.reduce(0.0) { $0 + Double($1) * Double($1) }.squareRoot())
        }
        let coef = min((1 / (total + Float(1e-6))) * Float(maxNorm), 1)
        for q in params { scaleGradient(q.g, q.count, coef) }
        return total
    }
}

func gradientSumOfSquares(_ g: UnsafePointer<Float>, _ n: Int) -> Double {
    // Per-thread partial sums in double; fixed chunking by index keeps the result independent
    // of scheduling (but not of Threads.count).
    let parts = max(1, min(Threads.count, n / (1 << 15)))
    var acc = [Double](repeating: 0, count: parts)
    acc.withUnsafeMutableBufferPointer { a in
        parallelChunks(parts) { lo, hi in
            for t in lo..<hi {
                let s = n * t / parts, e = n * (t + 1) / parts
                var sum = SIMD4<Double>()
                var i = s
                while i + 4 <= e {
                    let v = SIMD4<Double>(Double(g[i]), Double(g[i + 1]), Double(g[i + 2]), Double(g[i + 3]))
                    sum.addProduct(v, v)
                    i += 4
                }
                var r = sum.sum()
                while i < e { r += Double(g[i]) * Double(g[i]); i += 1 }
                a[t] = r
            }
        }
    }
    return acc.reduce(0, +)
}

func gradientMaxAbs(_ g: UnsafePointer<Float>, _ n: Int) -> Float {
    var m: Float = 0
    for i in 0..<n {
        let a = abs(g[i])
        if a.isNaN { return .nan }
        m = max(m, a)
    }
    return m
}

func scaleGradient(_ g: UnsafeMutablePointer<Float>, _ n: Int, _ c: Float) {
    parallelChunks(n, grain: 1 << 16) { lo, hi in
        for i in lo..<hi { g[i] = g[i] * c }
    }
}
