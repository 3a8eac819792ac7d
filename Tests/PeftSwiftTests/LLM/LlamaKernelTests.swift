import Foundation
import Testing
@testable import PeftSwift

/// The decoder kernels (LLM/DecoderKernels.swift, Attention.swift): each fast fp32 kernel against
/// its double reference twin, and each reference backward against central finite differences of
/// the reference forward.
@Suite struct LlamaKernelTests {
    // ---- tolerances, beside what they bound (fast kernel vs its float64 reference twin)
    /// One element-wise fp32 op chain (RMSNorm, SwiGLU, softmax row, RoPE): a few roundings of 2^-24.
    static let elementwiseTol = 1e-6
    /// Backward passes that sum over a row (RMSNorm dx) in fp32: ~sqrt(n)·2^-24, n <= 512.
    static let rowSumTol = 1e-5
    /// Attention forward: a softmax-weighted sum over <= 70 keys in fp32.
    static let attentionTol = 2e-6
    /// Attention backward: dq/dk/dv sum products over keys and the head dimension in fp32.
    static let attentionBackwardTol = 1e-5
    /// vexp (Cephes expf polynomial, ~1 ulp) against libm's expf: 2.5 ulp of 2^-23.
    static let vexpTol: Float = 3e-7

    static func randoms(_ n: Int, seed: UInt64, scale: Double = 1) -> [Double] {
        var g = SplitMix64(seed: seed)
        return (0..<n).map { _ in Double(g.uniform(-1, 1)) * scale }
    }

    static func f(_ x: [Double]) -> [Float] { x.map { Float($0) } }

    static func maxRel(_ a: [Float], _ b: [Double]) -> Double {
        var d = 0.0, m = 0.0
        for i in 0..<a.count { d = max(d, abs(Double(a[i]) - b[i])); m = max(m, abs(b[i])) }
        return d / max(m, 1e-30)
    }

    /// ∂(Σ u ⊙ F(x))/∂x by central differences (double, h = 1e-6).
    static func fd(_ x: [Double], _ u: [Double], _ fwd: ([Double]) -> [Double]) -> [Double] {
        var g = [Double](repeating: 0, count: x.count)
        let h = 1e-6
        for i in 0..<x.count {
            var xp = x, xm = x
            xp[i] += h; xm[i] -= h
            let lp = zip(fwd(xp), u).reduce(0.0) { $0 + $1.0 * $1.1 }
            let lm = zip(fwd(xm), u).reduce(0.0) { $0 + $1.0 * $1.1 }
            g[i] = (lp - lm) / (2 * h)
        }
        return g
    }

    static func close(_ a: [Double], _ b: [Double], _ tol: Double, _ what: String) {
        var d = 0.0, m = 0.0
        for i in 0..<a.count { d = max(d, abs(a[i] - b[i])); m = max(m, abs(b[i])) }
        #expect(d <= tol * max(m, 1e-12), "\(what): max diff \(d), max |ref| \(m)")
    }

    @Test(arguments: [5, 8, 19, 64])
    func rmsNorm(n: Int) {
        let rows = 3
        let x = Self.randoms(rows * n, seed: 1, scale: 2), w = Self.randoms(n, seed: 2).map { 1 + 0.3 * $0 }
        let dy = Self.randoms(rows * n, seed: 3)
        let eps = 1e-5
        let (yRef, rRef) = DecoderReference.rmsNorm(x, w, rows: rows, n: n, eps: eps)
        let dxRef = DecoderReference.rmsNormBackward(dy, x, w, rows: rows, n: n, eps: eps)
        Self.close(dxRef, Self.fd(x, dy) { DecoderReference.rmsNorm($0, w, rows: rows, n: n, eps: eps).y }, 1e-6, "rmsnorm ref backward vs fd")
        let xf = Self.f(x), wf = Self.f(w), dyf = Self.f(dy)
        var y = [Float](repeating: 0, count: rows * n), r = [Float](repeating: 0, count: rows)
        var dx = [Float](repeating: 0.5, count: rows * n)
        DecoderKernels.rmsNorm(xf, wf, &y, rstd: &r, rows: rows, n: n, eps: Float(eps))
        #expect(Self.maxRel(y, yRef) < Self.elementwiseTol)
        #expect(Self.maxRel(r, rRef) < Self.elementwiseTol)
        DecoderKernels.rmsNormBackward(dyf, xf, wf, rstd: r, &dx, rows: rows, n: n, accumulate: false)
        #expect(Self.maxRel(dx, dxRef) < Self.rowSumTol)
        DecoderKernels.rmsNormBackward(dyf, xf, wf, rstd: r, &dx, rows: rows, n: n, accumulate: true)
        #expect(Self.maxRel(dx, dxRef.map { 2 * $0 }) < Self.rowSumTol)
    }

    @Test(arguments: [(2, 8), (3, 16), (2, 64)])
    func rope(heads: Int, headDim: Int) {
        let (b, t) = (2, 5), rows = 10
        let c = ModelConfig(layers: 1, hidden: heads * headDim, intermediate: 4, heads: heads, kvHeads: 1,
                                     headDim: headDim, vocab: 4, ropeTheta: 500)
        let inv = c.ropeInverseFrequencies()
        let x = Self.randoms(rows * heads * headDim, seed: 4), u = Self.randoms(x.count, seed: 5)
        let yRef = DecoderReference.rope(x, rows: rows, seqLen: t, heads: heads, headDim: headDim, invFreq: inv, inverse: false)
        let dxRef = DecoderReference.rope(u, rows: rows, seqLen: t, heads: heads, headDim: headDim, invFreq: inv, inverse: true)
        Self.close(dxRef, Self.fd(x, u) { DecoderReference.rope($0, rows: rows, seqLen: t, heads: heads, headDim: headDim, invFreq: inv, inverse: false) },
                   1e-7, "rope ref backward vs fd")
        var cs = [Float](repeating: 0, count: t * headDim / 2), sn = cs
        DecoderKernels.ropeTables(invFreq: inv, positions: t, cos: &cs, sin: &sn)
        var y = Self.f(x)
        DecoderKernels.rope(&y, rows: rows, seqLen: t, heads: heads, headDim: headDim, cos: cs, sin: sn, inverse: false)
        #expect(Self.maxRel(y, yRef) < Self.elementwiseTol)
        var dx = Self.f(u)
        DecoderKernels.rope(&dx, rows: rows, seqLen: t, heads: heads, headDim: headDim, cos: cs, sin: sn, inverse: true)
        #expect(Self.maxRel(dx, dxRef) < Self.elementwiseTol)
        _ = b
    }

    @Test func ropeFrequenciesAndScaling() {
        var c = ModelConfig(layers: 1, hidden: 8, intermediate: 4, heads: 1, kvHeads: 1, headDim: 8, vocab: 4,
                                     ropeTheta: 10000)
        let base = c.ropeInverseFrequencies()
        #expect(base == [1, 0.1, 0.01, 0.001].map { Float($0) } || zip(base, [1, 0.1, 0.01, 0.001]).allSatisfy { abs(Double($0) - $1) <= 1e-7 * $1 })
        c.ropeScaling = .linear(factor: 2)
        #expect(zip(c.ropeInverseFrequencies(), base).allSatisfy { $0 == $1 / 2 })
        // llama3, original context 64, factors 1/4: wavelengths 6.3 (kept), 62.8 (smoothed), 628 and 6283 (÷ factor)
        c.ropeScaling = .llama3(factor: 4, lowFreqFactor: 1, highFreqFactor: 4, originalMaxPositions: 64)
        let s = c.ropeInverseFrequencies()
        #expect(s[0] == base[0])
        #expect(s[2] == base[2] / 4 && s[3] == base[3] / 4)
        let wl = 2 * Double.pi / Double(base[1]), sm = (64 / wl - 1) / 3
        #expect(abs(Double(s[1]) - ((1 - sm) * Double(base[1]) / 4 + sm * Double(base[1]))) < 1e-8)
    }

    @Test func swiglu() {
        let n = 37
        let g = Self.randoms(n, seed: 6, scale: 6), u = Self.randoms(n, seed: 7, scale: 2), da = Self.randoms(n, seed: 8)
        let ref = DecoderReference.swiglu(g, u)
        let (dgRef, duRef) = DecoderReference.swigluBackward(da, g, u)
        Self.close(dgRef, Self.fd(g, da) { DecoderReference.swiglu($0, u) }, 1e-6, "swiglu dg vs fd")
        Self.close(duRef, Self.fd(u, da) { DecoderReference.swiglu(g, $0) }, 1e-6, "swiglu du vs fd")
        var out = [Float](repeating: 0, count: n)
        DecoderKernels.swiglu(Self.f(g), Self.f(u), &out, count: n)
        #expect(Self.maxRel(out, ref) < Self.elementwiseTol)
        var dg = [Float](repeating: 0, count: n), du = dg
        DecoderKernels.swigluBackward(Self.f(da), Self.f(g), Self.f(u), dg: &dg, du: &du, count: n)
        #expect(Self.maxRel(dg, dgRef) < Self.elementwiseTol)
        #expect(Self.maxRel(du, duRef) < Self.elementwiseTol)
    }

    @Test func vectorExp() {
        var worst: Float = 0
        var x: Float = -87
        while x < 88 {
            let e = vexp(F8(repeating: x))[0], r = expf(x)
            worst = max(worst, abs(e - r) / r)
            x += 0.0137
        }
        #expect(worst < Self.vexpTol, "vexp worst relative error \(worst)")
        #expect(vexp(F8(repeating: -1000))[0] >= 0 && vexp(F8(repeating: -1000))[0] < 1e-37)
        #expect(vexp(F8(repeating: 1000))[0].isFinite)
    }

    @Test(arguments: [7, 8, 33, 300])
    func crossEntropy(n: Int) {
        let rows = 4
        let z = Self.randoms(rows * n, seed: 9, scale: 5)
        let targets = (0..<rows).map { ($0 * 7 + 3) % n }
        let (lossRef, gRef) = DecoderReference.crossEntropy(z, rows: rows, n: n, targets: targets)
        Self.close(gRef, Self.fd(z, [1]) { [DecoderReference.crossEntropy($0, rows: rows, n: n, targets: targets).loss] }, 1e-6, "ce grad vs fd")
        var zf = Self.f(z)
        let t32 = targets.map { Int32($0) }
        let loss = DecoderKernels.crossEntropy(&zf, rows: rows, n: n, targets: t32, scale: 0.5)
        #expect(abs(loss - lossRef) <= Self.elementwiseTol * abs(lossRef))
        #expect(Self.maxRel(zf, gRef.map { 0.5 * $0 }) < Self.elementwiseTol)
    }

    @Test(arguments: [(1, 3, 1, 4), (2, 4, 2, 8), (1, 6, 3, 16), (2, 2, 1, 4)], [5, 70, 130])
    func attention(shape: (Int, Int, Int, Int), seqLen: Int) {
        let (batch, heads, kvHeads, d) = shape
        if seqLen > 70 && heads > 2 { return }   // keep the double reference quick
        Self.checkAttention(AttentionShape(batch: batch, seqLen: seqLen, heads: heads, kvHeads: kvHeads, headDim: d), seed: 10)
    }

    /// Sliding-window attention (a family with `attentionWindow`): forward and backward against
    /// the reference, whose backward is checked by finite differences.
    @Test(arguments: [(1, 4, 2, 8, 3, 9), (2, 2, 1, 4, 70, 130)])
    func slidingWindowAttention(shape: (Int, Int, Int, Int, Int, Int)) {
        let (batch, heads, kvHeads, d, window, seqLen) = shape
        Self.checkAttention(AttentionShape(batch: batch, seqLen: seqLen, heads: heads, kvHeads: kvHeads, headDim: d, window: window),
                            seed: 20)
    }

    /// `CausalAttention.forward` (probabilities kept) and `backward` against the double reference
    /// for shape `s`; for short sequences, the reference backward against finite differences.
    static func checkAttention(_ s: AttentionShape, seed: UInt64) {
        let (batch, seqLen, heads, kvHeads, d) = (s.batch, s.seqLen, s.heads, s.kvHeads, s.headDim)
        let m = batch * seqLen
        let q = randoms(m * s.qWidth, seed: seed, scale: 2), k = randoms(m * s.kvWidth, seed: seed + 1, scale: 2)
        let v = randoms(m * s.kvWidth, seed: seed + 2), dout = randoms(m * s.qWidth, seed: seed + 3)
        let scale = 1 / Double(d).squareRoot()
        func att(_ q: [Double], _ k: [Double], _ v: [Double]) -> [Double] {
            DecoderReference.attention(q: q, k: k, v: v, batch: batch, seqLen: seqLen, heads: heads, kvHeads: kvHeads, headDim: d,
                                       scale: scale, window: s.window)
        }
        let oRef = att(q, k, v)
        let (dqRef, dkRef, dvRef) = DecoderReference.attentionBackward(dout: dout, q: q, k: k, v: v, batch: batch, seqLen: seqLen,
                                                                       heads: heads, kvHeads: kvHeads, headDim: d, scale: scale,
                                                                       window: s.window)
        if seqLen < 10 {
            close(dqRef, fd(q, dout) { att($0, k, v) }, 1e-6, "attention dq vs fd")
            close(dkRef, fd(k, dout) { att(q, $0, v) }, 1e-6, "attention dk vs fd")
            close(dvRef, fd(v, dout) { att(q, k, $0) }, 1e-6, "attention dv vs fd")
        }
        let qf = f(q), kf = f(k), vf = f(v), df = f(dout)
        var out = [Float](repeating: .nan, count: m * s.qWidth)
        var probs = [Float](repeating: .nan, count: s.probsCount)
        probs.withUnsafeMutableBufferPointer { pp in
            CausalAttention.forward(s, q: qf, k: kf, v: vf, out: &out, scores: .keep(pp.baseAddress!))
        }
        #expect(maxRel(out, oRef) < Self.attentionTol)
        var dq = [Float](repeating: .nan, count: qf.count), dk = [Float](repeating: .nan, count: kf.count), dv = dk
        let threads = 2
        var scratch = [Float](repeating: 0, count: threads * s.scratchPerThread)
        CausalAttention.backward(s, dout: df, q: qf, k: kf, v: vf, probs: probs, dq: &dq, dk: &dk, dv: &dv,
                                 scratch: &scratch, threads: threads)
        #expect(maxRel(dq, dqRef) < Self.attentionBackwardTol)
        #expect(maxRel(dk, dkRef) < Self.attentionBackwardTol)
        #expect(maxRel(dv, dvRef) < Self.attentionBackwardTol)
    }

    /// Attention over a KV cache (past positions, discarded scores, rows past the cache's filled
    /// part never read) gives, row for row, the attention over the whole sequence.
    @Test(arguments: [nil, 5] as [Int?])
    func cachedAttentionEqualsWholeSequence(window: Int?) {
        let (heads, kvHeads, d, total, past, capacity) = (4, 2, 8, 90, 70, 96)
        let whole = AttentionShape(batch: 1, seqLen: total, heads: heads, kvHeads: kvHeads, headDim: d, window: window)
        let q = Self.f(Self.randoms(total * whole.qWidth, seed: 30, scale: 2))
        var k = Self.f(Self.randoms(total * whole.kvWidth, seed: 31, scale: 2)), v = Self.f(Self.randoms(total * whole.kvWidth, seed: 32))
        k += [Float](repeating: .nan, count: (capacity - total) * whole.kvWidth)
        v += [Float](repeating: .nan, count: (capacity - total) * whole.kvWidth)
        var full = [Float](repeating: .nan, count: total * whole.qWidth)
        var probs = [Float](repeating: .nan, count: whole.probsCount)
        probs.withUnsafeMutableBufferPointer { pp in
            CausalAttention.forward(whole, q: q, k: k, v: v, out: &full, scores: .keep(pp.baseAddress!))
        }
        let new = total - past
        let cached = AttentionShape(batch: 1, seqLen: new, heads: heads, kvHeads: kvHeads, headDim: d, past: past, kvRows: capacity,
                                    window: window)
        var out = [Float](repeating: .nan, count: new * whole.qWidth)
        let stride = AttentionShape.blockRows * capacity
        var scores = [Float](repeating: .nan, count: 3 * stride)
        let qNew = Array(q[(past * whole.qWidth)...])
        scores.withUnsafeMutableBufferPointer { sp in
            CausalAttention.forward(cached, q: qNew, k: k, v: v, out: &out, scores: .scratch(sp.baseAddress!, stride: stride, threads: 3))
        }
        let a = Array(full[(past * whole.qWidth)...])
        #expect(out.count == a.count)
        #expect(Self.maxRel(out, a.map { Double($0) }) < Self.elementwiseTol)
    }
}
