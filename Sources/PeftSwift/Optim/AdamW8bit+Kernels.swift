#if canImport(Glibc)
import Glibc
#endif

// bitsandbytes' 8-bit blockwise AdamW on CPU (bitsandbytes 0.50.2): the optimizer's own fused
// dequantize → update → requantize kernel. Facts from bitsandbytes, re-derived and checked by
// running it (Tests/fixtures/make_optim_fixtures.py); the code is peftswift's.
//
// State of a parameter with n ≥ min_8bit_size elements (optim/optimizer.py, Optimizer2State):
//   state1: n bytes, codes into the signed dynamic map (`Codebooks.dynamicSigned`)
//   state2: n bytes, codes into the unsigned dynamic map (`Codebooks.dynamicUnsigned`)
//   absmax1, absmax2: ceil(n/256) float32, one per block of 256 elements
// One step (backends/cpu/ops.py `_optimizer_update_8bit_blockwise_cpu`, optimizer "adam"):
//   m = code1[q1]·absmax1[b],  v = code2[q2]·absmax2[b]          dequantize (float32 product)
//   m = fma(g, 1 − β1, m·β1);  v = fma((1 − β2)·g, g, v·β2)
//   c1 = 1 − β1^t,  c2 = √(1 − β2^t)                              (doubles)
//   d = √v / c2 + eps
//   p = p · (1 − lr·wd)                                            if wd > 0
//   p = p + (−lr/c1 · m) / d                                       addcdiv_
//   requantize m and v blockwise (below)
// Quantization (csrc/cpu_ops.cpp, `quantize_cpu_impl` / `avx2_quantize_8bit_block`):
//   absmax = max |x| over the block (NaN ignored); all-zero block → absmax 0, codes 0
//   y = clamp(x · (1/absmax), −1, 1)      (NaN → −1)
//   k = trunc(((y + 1)·0.5)·65535 + 0.5)  float32, each operation rounded, no FMA
//   code = LUT[k], where LUT[i] is the first code j whose midpoint ½(c[j] + c[j+1]) is not
//   below −1 + 2i/65535 (float32). This 65,536-bin table is not always the nearest code for
//   the tightly spaced codes near zero; peftswift reproduces it so its state bytes equal
//   bitsandbytes' (the unsigned map, which spans [0, 1], uses only the upper half of the bins).

/// bitsandbytes' 65,536-entry quantization table for a sorted 256-entry codebook.
func bnbQuantizationLUT(_ code: [Float]) -> [UInt8] {
    precondition(code.count == 256)
    var mid = [Float](repeating: 0, count: 255)
    for i in 0..<255 { mid[i] = 0.5 * (code[i] + code[i + 1]) }
    var lut = [UInt8](repeating: 0, count: 65536)
    var j = 0
    for i in 0..<65536 {
        let val: Float = -1.0 + (2.0 * Float(i)) / 65535.0
        while j < 255 && mid[j] < val { j += 1 }
        lut[i] = UInt8(j)
    }
    return lut
}

/// The two codebooks and their tables, built once.
enum BnbMaps {
    static let signed = Codebooks.dynamicSigned
    static let unsigned = Codebooks.dynamicUnsigned
    static let signedLUT = bnbQuantizationLUT(Codebooks.dynamicSigned)
    static let unsignedLUT = bnbQuantizationLUT(Codebooks.dynamicUnsigned)
}

/// float32 constants of one 8-bit step.
struct Bnb8bitConstants {
    var beta1: Float, oneMinusBeta1: Float, beta2: Float, oneMinusBeta2: Float
    var c2: Float, eps: Float, decay: Float, hasDecay: Bool, negStep: Float

    init(_ h: AdamWHyperparameters, step: Int) {
        let t = Double(step)
        let c1 = 1 - pow(h.beta1, t)
        let c2d = (1 - pow(h.beta2, t)).squareRoot()
        beta1 = Float(h.beta1)
        oneMinusBeta1 = Float(1 - h.beta1)
        beta2 = Float(h.beta2)
        oneMinusBeta2 = Float(1 - h.beta2)
        c2 = Float(c2d)
        eps = Float(h.eps)
        decay = Float(1 - h.learningRate * h.weightDecay)
        hasDecay = h.weightDecay > 0
        negStep = Float(-h.learningRate / c1)
    }
}

/// The LUT index of x·inv (see the file comment).
@inline(__always) func bnbLUTIndex(_ x: Float, _ inv: Float) -> Int {
    var y = x * inv
    y = y.isNaN ? -1 : min(max(y, -1), 1)
    let t = ((y + 1) * 0.5) * 65535 + 0.5
    return Int(t)
}

/// Quantizes `n` ≤ 256 floats of one block: returns absmax, writes codes.
@inline(__always)
func bnbQuantizeBlock(_ x: UnsafePointer<Float>, _ n: Int, _ lut: UnsafePointer<UInt8>, _ out: UnsafeMutablePointer<UInt8>) -> Float {
    var am: Float = 0
    for i in 0..<n {
        let a = abs(x[i])
        if a > am { am = a }  // NaN compares false: ignored
    }
    if am == 0 {
        out.update(repeating: 0, count: n)
        return 0
    }
    let inv = 1 / am
    for i in 0..<n { out[i] = lut[bnbLUTIndex(x[i], inv)] }
    return am
}

/// One 8-bit AdamW step over `n` elements (scalar reference). q1, q2: n codes; a1, a2:
/// ceil(n/256) absmax; p, g: n floats. All updated in place except g.
func bnbAdam8bitReference(_ p: UnsafeMutablePointer<Float>, _ g: UnsafePointer<Float>,
                          _ q1: UnsafeMutablePointer<UInt8>, _ q2: UnsafeMutablePointer<UInt8>,
                          _ a1: UnsafeMutablePointer<Float>, _ a2: UnsafeMutablePointer<Float>,
                          _ n: Int, _ c: Bnb8bitConstants) {
    let blocks = (n + 255) / 256
    var mb = [Float](repeating: 0, count: 256), vb = [Float](repeating: 0, count: 256)
    BnbMaps.signed.withUnsafeBufferPointer { s in BnbMaps.unsigned.withUnsafeBufferPointer { u in
    BnbMaps.signedLUT.withUnsafeBufferPointer { sl in BnbMaps.unsignedLUT.withUnsafeBufferPointer { ul in
        for b in 0..<blocks {
            let lo = b * 256, len = min(256, n - lo)
            for j in 0..<len {
                let i = lo + j
                let gi = g[i]
                let m = (s[Int(q1[i])] * a1[b] * c.beta1).addingProduct(gi, c.oneMinusBeta1)
                let v = (u[Int(q2[i])] * a2[b] * c.beta2).addingProduct(c.oneMinusBeta2 * gi, gi)
                let d = v.squareRoot() / c.c2 + c.eps
                var pi = p[i]
                if c.hasDecay { pi = pi * c.decay }
                p[i] = pi + (c.negStep * m) / d
                mb[j] = m
                vb[j] = v
            }
            a1[b] = bnbQuantizeBlock(mb, len, sl.baseAddress!, q1 + lo)
            a2[b] = bnbQuantizeBlock(vb, len, ul.baseAddress!, q2 + lo)
        }
    }}}}
}

/// SIMD8 twin of `bnbAdam8bitReference`, blocks split over threads.
func bnbAdam8bitKernel(_ p: UnsafeMutablePointer<Float>, _ g: UnsafePointer<Float>,
                       _ q1: UnsafeMutablePointer<UInt8>, _ q2: UnsafeMutablePointer<UInt8>,
                       _ a1: UnsafeMutablePointer<Float>, _ a2: UnsafeMutablePointer<Float>,
                       _ n: Int, _ c: Bnb8bitConstants) {
    let blocks = (n + 255) / 256
    BnbMaps.signed.withUnsafeBufferPointer { s in BnbMaps.unsigned.withUnsafeBufferPointer { u in
    BnbMaps.signedLUT.withUnsafeBufferPointer { sl in BnbMaps.unsignedLUT.withUnsafeBufferPointer { ul in
    let s = s.baseAddress!, u = u.baseAddress!, sl = sl.baseAddress!, ul = ul.baseAddress!
    parallelChunks(blocks, grain: 16) { blo, bhi in
        typealias V = SIMD8<Float>
        let b1 = V(repeating: c.beta1), omb1 = V(repeating: c.oneMinusBeta1)
        let b2 = V(repeating: c.beta2), omb2 = V(repeating: c.oneMinusBeta2)
        let c2 = V(repeating: c.c2), eps = V(repeating: c.eps), decay = V(repeating: c.decay)
        let ns = V(repeating: c.negStep)
        withUnsafeTemporaryAllocation(of: Float.self, capacity: 512) { tmp in
            let mb = tmp.baseAddress!, vb = mb + 256
            for b in blo..<bhi {
                let lo = b * 256, len = min(256, n - lo)
                let am1 = V(repeating: a1[b]), am2 = V(repeating: a2[b])
                var j = 0
                var mx1 = V(repeating: 0), mx2 = V(repeating: 0)
                while j + 8 <= len {
                    let i = lo + j
                    var dm = V(), dv = V()
                    for k in 0..<8 {
                        dm[k] = s[Int(q1[i + k])]
                        dv[k] = u[Int(q2[i + k])]
                    }
                    let gv = UnsafeRawPointer(g + i).loadUnaligned(as: V.self)
                    let m = (dm * am1 * b1).addingProduct(gv, omb1)
                    let v = (dv * am2 * b2).addingProduct(omb2 * gv, gv)
                    let d = v.squareRoot() / c2 + eps
                    var pv = UnsafeRawPointer(p + i).loadUnaligned(as: V.self)
                    if c.hasDecay { pv = pv * decay }
                    pv = pv + (ns * m) / d
                    UnsafeMutableRawPointer(p + i).storeBytes(of: pv, as: V.self)
                    UnsafeMutableRawPointer(mb + j).storeBytes(of: m, as: V.self)
                    UnsafeMutableRawPointer(vb + j).storeBytes(of: v, as: V.self)
                    // NaN lanes → 0 so they do not take part in the maximum.
                    let am = m.replacing(with: -m, where: m .< 0), av = v.replacing(with: -v, where: v .< 0)
                    mx1 = mx1.replacing(with: am, where: am .> mx1)
                    mx2 = mx2.replacing(with: av, where: av .> mx2)
                    j += 8
                }
                var m1 = mx1.max(), m2 = mx2.max()
                while j < len {
                    let i = lo + j
                    let gi = g[i]
                    let m = (s[Int(q1[i])] * a1[b] * c.beta1).addingProduct(gi, c.oneMinusBeta1)
                    let v = (u[Int(q2[i])] * a2[b] * c.beta2).addingProduct(c.oneMinusBeta2 * gi, gi)
                    let d = v.squareRoot() / c.c2 + c.eps
                    var pi = p[i]
                    if c.hasDecay { pi = pi * c.decay }
                    p[i] = pi + (c.negStep * m) / d
                    mb[j] = m
                    vb[j] = v
                    if abs(m) > m1 { m1 = abs(m) }
                    if abs(v) > m2 { m2 = abs(v) }
                    j += 1
                }
                a1[b] = m1
                a2[b] = m2
                quantizeWithMax(mb, len, m1, sl, q1 + lo)
                quantizeWithMax(vb, len, m2, ul, q2 + lo)
            }
        }
    }
    }}}}
}

/// Codes of `n` floats given their block's absmax `am` (SIMD index arithmetic, scalar lookups).
@inline(__always)
func quantizeWithMax(_ x: UnsafePointer<Float>, _ n: Int, _ am: Float, _ lut: UnsafePointer<UInt8>, _ out: UnsafeMutablePointer<UInt8>) {
    if am == 0 {
        out.update(repeating: 0, count: n)
        return
    }
    typealias V = SIMD8<Float>
    let inv = 1 / am
    let vinv = V(repeating: inv), one = V(repeating: 1), mone = V(repeating: -1)
    let half = V(repeating: 0.5), scale = V(repeating: 65535)
    var j = 0
    while j + 8 <= n {
        var y = UnsafeRawPointer(x + j).loadUnaligned(as: V.self) * vinv
        y = y.replacing(with: mone, where: .!(y .== y))  // NaN → −1
        y = y.clamped(lowerBound: mone, upperBound: one)
        let t = ((y + one) * half) * scale + half
        for l in 0..<8 { out[j + l] = lut[Int(t[l])] }  // t in [0.5, 65535.5]: truncation
        j += 8
    }
    while j < n {
        out[j] = lut[bnbLUTIndex(x[j], inv)]
        j += 1
    }
}
