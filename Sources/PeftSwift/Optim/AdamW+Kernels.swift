#if canImport(Glibc)
import Glibc
#endif

// Elementwise AdamW kernels with float32 state. Each has a scalar reference twin that tests
// compare with the SIMD8 version bit for bit (same operations, same fused multiply-adds).

/// float32 constants of one `torch.optim.AdamW` step (torch 2.13, CPU, single-tensor and
/// foreach paths — they run the same elementwise operations), derived from the double
/// hyperparameters as torch does (Python float arithmetic, then conversion to float32 when the
/// scalar meets a float32 tensor). Read in torch/optim/adam.py (`_single_tensor_adam`,
/// `_multi_tensor_adam`) and checked bit for bit against torch by Tests/fixtures/make_optim_fixtures.py:
///
///     p = p · (1 − lr·wd)                        if wd ≠ 0      (decoupled weight decay, first)
///     m = lerp(m, g, 1 − β1)                     torch's CPU lerp: w < 0.5 ? fma(w, g−m, m) : fma(w−1, g−m, g)
///     v = fma((1 − β2)·g, g, v·β2)               mul_(β2) then addcmul_ (vectorised as one FMA)
///     d = √v / √(1 − β2^t) + eps                 bias correction inside the denominator, eps after it
///     p = p + (−lr/(1 − β1^t) · m) / d           addcdiv_ with value = −step_size
///
/// Caveat: torch's CPU `sqrt` of a float32 tensor (MKL VML) is not correctly rounded (about 1 in
/// 5 results is 1 ulp off); peftswift's square root is. m and v therefore match torch exactly,
/// and parameters agree to within a few ulp per step.
struct TorchAdamWConstants {
    var decay: Float
    var hasDecay: Bool
    var lerpCoeff: Float
    var lerpSmall: Bool
    var beta2: Float
    var oneMinusBeta2: Float
    var bc2Sqrt: Float
    var eps: Float
    var negStepSize: Float

    init(_ h: AdamWHyperparameters, step: Int) {
        let t = Double(step)
        let bc1 = 1 - pow(h.beta1, t)
        let bc2 = 1 - pow(h.beta2, t)
        decay = Float(1 - h.learningRate * h.weightDecay)
        hasDecay = h.weightDecay != 0
        let w = Float(1 - h.beta1)
        lerpSmall = abs(w) < 0.5
        lerpCoeff = lerpSmall ? w : w - 1
        beta2 = Float(h.beta2)
        oneMinusBeta2 = Float(1 - h.beta2)
        bc2Sqrt = Float(pow(bc2, 0.5))
        eps = Float(h.eps)
        negStepSize = Float(-(h.learningRate / bc1))
    }
}

/// p, g, m, v: n floats each; p, m, v updated in place (torch AdamW step, see `TorchAdamWConstants`).
func torchAdamWReference(_ p: UnsafeMutablePointer<Float>, _ g: UnsafePointer<Float>,
                         _ m: UnsafeMutablePointer<Float>, _ v: UnsafeMutablePointer<Float>,
                         _ n: Int, _ c: TorchAdamWConstants) {
    for i in 0..<n {
        var pi = p[i]
        let gi = g[i]
        if c.hasDecay { pi = pi * c.decay }
        let base = c.lerpSmall ? m[i] : gi
        let mi = base.addingProduct(c.lerpCoeff, gi - m[i])
        let vi = (v[i] * c.beta2).addingProduct(c.oneMinusBeta2 * gi, gi)
        let d = vi.squareRoot() / c.bc2Sqrt + c.eps
        pi = pi + (c.negStepSize * mi) / d
        p[i] = pi
        m[i] = mi
        v[i] = vi
    }
}

/// SIMD8 twin of `torchAdamWReference`, split over threads with `parallelChunks`.
func torchAdamWKernel(_ p: UnsafeMutablePointer<Float>, _ g: UnsafePointer<Float>,
                      _ m: UnsafeMutablePointer<Float>, _ v: UnsafeMutablePointer<Float>,
                      _ n: Int, _ c: TorchAdamWConstants) {
    parallelChunks(n, grain: 1 << 15) { lo, hi in
        typealias V = SIMD8<Float>
        let decay = V(repeating: c.decay), coeff = V(repeating: c.lerpCoeff)
        let b2 = V(repeating: c.beta2), omb2 = V(repeating: c.oneMinusBeta2)
        let bc2 = V(repeating: c.bc2Sqrt), eps = V(repeating: c.eps), ns = V(repeating: c.negStepSize)
        var i = lo
        while i + 8 <= hi {
            var pv = UnsafeRawPointer(p + i).loadUnaligned(as: V.self)
            let gv = UnsafeRawPointer(g + i).loadUnaligned(as: V.self)
            let mv0 = UnsafeRawPointer(m + i).loadUnaligned(as: V.self)
            let vv0 = UnsafeRawPointer(v + i).loadUnaligned(as: V.self)
            if c.hasDecay { pv = pv * decay }
            let base = c.lerpSmall ? mv0 : gv
            let mv = base.addingProduct(coeff, gv - mv0)
            let vv = (vv0 * b2).addingProduct(omb2 * gv, gv)
            let d = vv.squareRoot() / bc2 + eps
            pv = pv + (ns * mv) / d
            UnsafeMutableRawPointer(p + i).storeBytes(of: pv, as: V.self)
            UnsafeMutableRawPointer(m + i).storeBytes(of: mv, as: V.self)
            UnsafeMutableRawPointer(v + i).storeBytes(of: vv, as: V.self)
            i += 8
        }
        if i < hi { torchAdamWReference(p + i, g + i, m + i, v + i, hi - i, c) }
    }
}

/// float32 constants of bitsandbytes' 32-bit Adam step on CPU (bitsandbytes 0.50.2,
/// backends/cpu/ops.py `_optimizer_update_32bit_cpu`, optimizer "adam"), which `AdamW8bit` uses
/// for parameters with fewer than `min_8bit_size` (4096) elements:
///
///     m = fma(g, 1 − β1, m·β1)                   mul_(β1).add_(g, alpha=1−β1)
///     v = fma((1 − β2)·g, g, v·β2)
///     c1 = 1 − β1^t,  c2 = √(1 − β2^t),  step = −lr·c2/c1   (doubles)
///     p = p · (1 − lr·wd)                        if wd > 0 (after the moments, unlike torch)
///     p = fma(m / (√v + eps·c2), step, p)        add_(update, alpha=step)
struct BnbAdam32Constants {
    var beta1: Float, oneMinusBeta1: Float, beta2: Float, oneMinusBeta2: Float
    var decay: Float, hasDecay: Bool, epsC2: Float, stepSize: Float

    init(_ h: AdamWHyperparameters, step: Int) {
        let t = Double(step)
        let c1 = 1 - pow(h.beta1, t)
        let c2 = (1 - pow(h.beta2, t)).squareRoot()
        beta1 = Float(h.beta1)
        oneMinusBeta1 = Float(1 - h.beta1)
        beta2 = Float(h.beta2)
        oneMinusBeta2 = Float(1 - h.beta2)
        decay = Float(1 - h.learningRate * h.weightDecay)
        hasDecay = h.weightDecay > 0
        epsC2 = Float(h.eps * c2)
        stepSize = Float(-h.learningRate * c2 / c1)
    }
}

func bnbAdam32Reference(_ p: UnsafeMutablePointer<Float>, _ g: UnsafePointer<Float>,
                        _ m: UnsafeMutablePointer<Float>, _ v: UnsafeMutablePointer<Float>,
                        _ n: Int, _ c: BnbAdam32Constants) {
    for i in 0..<n {
        let gi = g[i]
        let mi = (m[i] * c.beta1).addingProduct(gi, c.oneMinusBeta1)
        let vi = (v[i] * c.beta2).addingProduct(c.oneMinusBeta2 * gi, gi)
        var pi = p[i]
        if c.hasDecay { pi = pi * c.decay }
        let u = mi / (vi.squareRoot() + c.epsC2)
        p[i] = pi.addingProduct(u, c.stepSize)
        m[i] = mi
        v[i] = vi
    }
}

func bnbAdam32Kernel(_ p: UnsafeMutablePointer<Float>, _ g: UnsafePointer<Float>,
                     _ m: UnsafeMutablePointer<Float>, _ v: UnsafeMutablePointer<Float>,
                     _ n: Int, _ c: BnbAdam32Constants) {
    parallelChunks(n, grain: 1 << 15) { lo, hi in
        typealias V = SIMD8<Float>
        let b1 = V(repeating: c.beta1), omb1 = V(repeating: c.oneMinusBeta1)
        let b2 = V(repeating: c.beta2), omb2 = V(repeating: c.oneMinusBeta2)
        let decay = V(repeating: c.decay), epsC2 = V(repeating: c.epsC2), step = V(repeating: c.stepSize)
        var i = lo
        while i + 8 <= hi {
            let gv = UnsafeRawPointer(g + i).loadUnaligned(as: V.self)
            let mv = (UnsafeRawPointer(m + i).loadUnaligned(as: V.self) * b1).addingProduct(gv, omb1)
            let vv = (UnsafeRawPointer(v + i).loadUnaligned(as: V.self) * b2).addingProduct(omb2 * gv, gv)
            var pv = UnsafeRawPointer(p + i).loadUnaligned(as: V.self)
            if c.hasDecay { pv = pv * decay }
            let u = mv / (vv.squareRoot() + epsC2)
            UnsafeMutableRawPointer(p + i).storeBytes(of: pv.addingProduct(u, step), as: V.self)
            UnsafeMutableRawPointer(m + i).storeBytes(of: mv, as: V.self)
            UnsafeMutableRawPointer(v + i).storeBytes(of: vv, as: V.self)
            i += 8
        }
        if i < hi { bnbAdam32Reference(p + i, g + i, m + i, v + i, hi - i, c) }
    }
}
