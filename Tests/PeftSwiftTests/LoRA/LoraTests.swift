import Testing
@testable import PeftSwift

/// LoRA layer: gradients by finite differences, quantized base = dense base over the
/// dequantized weight, merge/unmerge round trips, adapter management and bad input.
@Suite struct LoraTests {
    // ---- tolerances, beside what they bound
    /// fp32 results of these small layers (dot products of <= 64 terms plus a rank <= 3 branch)
    /// against another fp32 evaluation of the same math: ~64 * 2^-24 ~ 4e-6 relative at worst.
    static let fp32Tol: Float = 1e-5
    /// Central finite differences in Double over a Float layer: truncation O(h^2) plus the Float
    /// rounding of the forward divided by h.
    static let finiteDifferenceTol = 2e-3
    /// dA summed over m rows and out features in Float against a scalar loop in another order.
    static let accumulatedTol: Float = 1e-4
    /// unmerge restores the dense weight: W + s·B·A - s·B·A in Float, one rounding each way.
    static let restoreTol: Float = 1e-6

    static func randoms(_ n: Int, seed: UInt64, scale: Float = 1) -> [Float] {
        var g = SplitMix64(seed: seed)
        return (0..<n).map { _ in g.uniform(-scale, scale) }
    }

    /// A dense layer with two adapters whose B are non-zero (so every path carries signal).
    static func makeLayer(inF: Int, outF: Int, bias: Bool, dropout: Float = 0, rslora: Bool = false) throws -> LoraLinear {
        let w = randoms(outF * inF, seed: 1, scale: 0.5)
        let b = randoms(outF, seed: 2)
        let l = try w.withUnsafeBufferPointer { wp in
            try b.withUnsafeBufferPointer { bp in
                try LoraLinear(dense: wp, outFeatures: outF, inFeatures: inF, bias: bias ? bp : nil)
            }
        }
        for (i, name) in ["one", "two"].enumerated() {
            let a = try l.addAdapter(name, config: LoraConfig(r: 2 + i, alpha: 3, dropout: dropout, useRslora: rslora, seed: UInt64(i)))
            let bb = randoms(a.b.count, seed: 10 + UInt64(i), scale: 0.3)
            for j in 0..<bb.count { a.b[j] = bb[j] }
        }
        try l.setActive(["one", "two"], weights: [1, 0.5])
        return l
    }

    /// loss = Σ y ⊙ u for a fixed u, so dL/dy = u.
    static func loss(_ l: LoraLinear, _ x: [Float], m: Int, _ u: [Float]) throws -> Double {
        var y = [Float](repeating: 0, count: m * l.outFeatures)
        try x.withUnsafeBufferPointer { xp in try y.withUnsafeMutableBufferPointer { try l.forward(xp, m: m, $0) } }
        return zip(y, u).reduce(0.0) { $0 + Double($1.0) * Double($1.1) }
    }

    @Test(arguments: [false, true])
    func gradientsMatchFiniteDifferences(rslora: Bool) throws {
        let (inF, outF, m) = (7, 5, 3)
        let l = try Self.makeLayer(inF: inF, outF: outF, bias: true, rslora: rslora)
        let x = Self.randoms(m * inF, seed: 3)
        let u = Self.randoms(m * outF, seed: 4)
        _ = try Self.loss(l, x, m: m, u)
        l.zeroGrad()
        var dx = [Float](repeating: 0, count: m * inF)
        try u.withUnsafeBufferPointer { up in try dx.withUnsafeMutableBufferPointer { try l.backward(up, m: m, dx: $0) } }
        let h: Float = 1e-2  // the loss is linear in each parameter separately: central differences are exact up to rounding
        func check(_ p: AlignedBuffer<Float>, _ g: AlignedBuffer<Float>, _ what: String) throws {
            for i in 0..<p.count {
                let old = p[i]
                p[i] = old + h; let lp = try Self.loss(l, x, m: m, u)
                p[i] = old - h; let lm = try Self.loss(l, x, m: m, u)
                p[i] = old
                let fd = (lp - lm) / Double(2 * h)
                #expect(abs(fd - Double(g[i])) <= Self.finiteDifferenceTol * max(1, abs(fd)), "\(what)[\(i)]: fd \(fd) vs \(g[i])")
            }
        }
        for a in l.adapters {
            try check(a.a, a.gradA, "\(a.name).A")
            try check(a.b, a.gradB, "\(a.name).B")
        }
        // bias and x
        let gb = l.gradBias!
        for j in 0..<outF {
            let expected = (0..<m).reduce(Float(0)) { $0 + u[$1 * outF + j] }
            #expect(abs(gb[j] - expected) < Self.fp32Tol)
        }
        var xx = x
        for i in 0..<xx.count {
            let old = xx[i]
            xx[i] = old + h; let lp = try Self.loss(l, xx, m: m, u)
            xx[i] = old - h; let lm = try Self.loss(l, xx, m: m, u)
            xx[i] = old
            let fd = (lp - lm) / Double(2 * h)
            #expect(abs(fd - Double(dx[i])) <= Self.finiteDifferenceTol * max(1, abs(fd)), "dx[\(i)]")
        }
    }

    @Test func dropoutMaskIsSharedByForwardAndBackward() throws {
        let (inF, outF, m) = (16, 8, 4)
        let l = try Self.makeLayer(inF: inF, outF: outF, bias: false, dropout: 0.5)
        let x = Self.randoms(m * inF, seed: 5)
        let u = Self.randoms(m * outF, seed: 6)
        // the gradient of A for a fixed mask: recompute y with the mask applied by hand
        var y = [Float](repeating: 0, count: m * outF)
        try x.withUnsafeBufferPointer { xp in try y.withUnsafeMutableBufferPointer { try l.forward(xp, m: m, $0) } }
        l.zeroGrad()
        try u.withUnsafeBufferPointer { try l.backward($0, m: m, dx: nil) }
        let a = l.adapter(named: "one")!
        let mask = l.cacheMasks[ObjectIdentifier(a)]!
        var kept = 0
        for i in 0..<(m * inF) { kept += Int(mask[i]) }
        #expect(kept > 0 && kept < m * inF)
        // dA = c · (u·B)ᵀ · xd with xd = x ⊙ mask · 2
        let r = a.config.r, c = a.weight * a.scaling
        for i in 0..<r { for k in 0..<inF {
            var s: Float = 0
            for row in 0..<m {
                var g: Float = 0
                for o in 0..<outF { g += u[row * outF + o] * a.b[o * r + i] }
                s += g * x[row * inF + k] * Float(mask[row * inF + k]) * 2
            }
            #expect(abs(a.gradA[i * inF + k] - c * s) < Self.accumulatedTol)
        } }
        // eval mode: no dropout, deterministic
        l.training = false
        var y1 = [Float](repeating: 0, count: m * outF), y2 = y1
        try x.withUnsafeBufferPointer { xp in try y1.withUnsafeMutableBufferPointer { try l.forward(xp, m: m, $0) } }
        try x.withUnsafeBufferPointer { xp in try y2.withUnsafeMutableBufferPointer { try l.forward(xp, m: m, $0) } }
        #expect(y1 == y2)
    }

    @Test(arguments: [QuantType.nf4, .fp4], [false, true])
    func quantizedBaseEqualsDenseOverDequantizedWeight(type: QuantType, dq: Bool) throws {
        let (inF, outF) = (256, 96)
        let w = Self.randoms(outF * inF, seed: 7, scale: 0.05)
        let q = try w.withUnsafeBytes { try QuantizedTensor(quantizing: $0.baseAddress!, dtype: .f32, shape: [outF, inF], type: type, doubleQuant: dq) }
        let ql = try LoraLinear(quantized: q)
        let wd = try ql.dequantizedWeight()
        let dl = try LoraLinear(dense: UnsafeBufferPointer(wd.buffer), outFeatures: outF, inFeatures: inF)
        for l in [ql, dl] {
            let a = try l.addAdapter("x", config: LoraConfig(r: 4, alpha: 8, seed: 9))
            for j in 0..<a.b.count { a.b[j] = Float(j % 7) * 0.01 }
        }
        for m in [1, 3, 40] {
            let x = Self.randoms(m * inF, seed: UInt64(m))
            var yq = [Float](repeating: 0, count: m * outF), yd = yq
            try x.withUnsafeBufferPointer { xp in
                try yq.withUnsafeMutableBufferPointer { try ql.forward(xp, m: m, $0) }
                try yd.withUnsafeMutableBufferPointer { try dl.forward(xp, m: m, $0) }
            }
            for i in 0..<yq.count { #expect(abs(yq[i] - yd[i]) <= Self.fp32Tol * max(1, abs(yd[i])), "m=\(m) y[\(i)]") }
            let dy = Self.randoms(m * outF, seed: 99)
            var dxq = [Float](repeating: 0, count: m * inF), dxd = dxq
            ql.zeroGrad(); dl.zeroGrad()
            try dy.withUnsafeBufferPointer { dp in
                try dxq.withUnsafeMutableBufferPointer { try ql.backward(dp, m: m, dx: $0) }
                try dxd.withUnsafeMutableBufferPointer { try dl.backward(dp, m: m, dx: $0) }
            }
            for i in 0..<dxq.count { #expect(abs(dxq[i] - dxd[i]) <= Self.fp32Tol * max(1, abs(dxd[i]))) }
            let ga = ql.adapters[0].gradA, gd = dl.adapters[0].gradA
            for i in 0..<ga.count { #expect(abs(ga[i] - gd[i]) <= Self.fp32Tol * max(1, abs(gd[i]))) }
        }
    }

    @Test func mergeAndUnmergeDense() throws {
        let l = try Self.makeLayer(inF: 12, outF: 10, bias: true)
        let m = 3
        let x = Self.randoms(m * 12, seed: 11)
        var before = [Float](repeating: 0, count: m * 10), merged = before, after = before
        let w0 = try l.dequantizedWeight().array
        try x.withUnsafeBufferPointer { xp in try before.withUnsafeMutableBufferPointer { try l.forward(xp, m: m, $0) } }
        let rep = try l.merge()
        #expect(rep.maxAbsError == 0)
        #expect(l.adapters.allSatisfy { $0.merged })
        try x.withUnsafeBufferPointer { xp in try merged.withUnsafeMutableBufferPointer { try l.forward(xp, m: m, $0) } }
        for i in 0..<before.count { #expect(abs(before[i] - merged[i]) < Self.fp32Tol) }
        #expect(throws: PSTError.self) { try l.deleteAdapter("one") }
        try l.unmerge()
        try x.withUnsafeBufferPointer { xp in try after.withUnsafeMutableBufferPointer { try l.forward(xp, m: m, $0) } }
        for i in 0..<before.count { #expect(abs(before[i] - after[i]) < Self.fp32Tol) }
        let w1 = try l.dequantizedWeight().array
        for i in 0..<w0.count { #expect(abs(w0[i] - w1[i]) < Self.restoreTol) }
    }

    @Test func mergeIntoQuantizedBaseRestoresCodesExactly() throws {
        let (inF, outF) = (128, 64)
        let w = Self.randoms(outF * inF, seed: 12, scale: 0.05)
        let q = try w.withUnsafeBytes { try QuantizedTensor(quantizing: $0.baseAddress!, dtype: .f32, shape: [outF, inF], doubleQuant: true) }
        let l = try LoraLinear(quantized: q)
        let a = try l.addAdapter("d", config: LoraConfig(r: 8, alpha: 16))
        for j in 0..<a.b.count { a.b[j] = 0.02 }
        let codes = q.packed.array
        let rep = try l.merge()
        #expect(rep.maxAbsError > 0 && rep.rmsError > 0 && rep.rmsError <= rep.maxAbsError)
        guard case .quantized(let mq) = l.base else { Issue.record("base not quantized"); return }
        #expect(mq.packed.array != codes)
        try l.unmerge()
        guard case .quantized(let uq) = l.base else { Issue.record("base not quantized"); return }
        #expect(uq.packed.array == codes)
        #expect(uq === q)
    }

    @Test func adapterManagement() throws {
        let l = try Self.makeLayer(inF: 8, outF: 8, bias: false)
        #expect(throws: PSTError.exists("adapter \"one\" already exists")) { try l.addAdapter("one", config: LoraConfig(r: 2, alpha: 2)) }
        #expect(throws: PSTError.self) { try l.setActive(["nope"]) }
        #expect(throws: PSTError.self) { try l.deleteAdapter("nope") }
        try l.deleteAdapter("two")
        #expect(l.adapters.count == 1 && l.active.count == 1)
        l.disableAdapters()
        // with all adapters disabled forward is the base alone
        let x = Self.randoms(8, seed: 1)
        var y = [Float](repeating: 0, count: 8)
        try x.withUnsafeBufferPointer { xp in try y.withUnsafeMutableBufferPointer { try l.forward(xp, m: 1, $0) } }
        let w = try l.dequantizedWeight()
        for o in 0..<8 {
            var s: Float = 0
            for i in 0..<8 { s += w[o * 8 + i] * x[i] }
            #expect(abs(s - y[o]) < Self.fp32Tol)
        }
    }

    @Test func badInput() throws {
        let l = try Self.makeLayer(inF: 8, outF: 6, bias: false)
        for cfg in [LoraConfig(r: 0, alpha: 1), LoraConfig(r: 7, alpha: 1), LoraConfig(r: 2, alpha: 0),
                    LoraConfig(r: 2, alpha: 1, dropout: 1), LoraConfig(r: 2, alpha: 1, dropout: -0.1)] {
            #expect(throws: PSTError.self) { try l.addAdapter("bad", config: cfg) }
        }
        let x = [Float](repeating: 1, count: 8)
        var y = [Float](repeating: 0, count: 5)
        #expect(throws: PSTError.self) {
            try x.withUnsafeBufferPointer { xp in try y.withUnsafeMutableBufferPointer { try l.forward(xp, m: 1, $0) } }
        }
        let fresh = try Self.makeLayer(inF: 8, outF: 6, bias: false)
        let dy = [Float](repeating: 1, count: 6)
        #expect(throws: PSTError.self) { try dy.withUnsafeBufferPointer { try fresh.backward($0, m: 1, dx: nil) } }
    }
}

extension LoraTests {
    /// The parallel dropout kernel draws the same masks as its scalar twin (bit for bit, and
    /// leaves the generator in the same state), at sizes around the chunk and SIMD edges.
    @Test(arguments: [1, 7, 8, 9, 1000, 40_003])
    func dropoutKernelEqualsReference(n: Int) {
        let x = Self.randoms(n, seed: UInt64(n))
        for keep: Float in [0.95, 0.5, 0.9] {
            var d1 = [Float](repeating: 7, count: n), d2 = d1
            var m1 = [UInt8](repeating: 7, count: n), m2 = m1
            var g1 = SplitMix64(seed: 42), g2 = g1
            _ = g1.next(); _ = g2.next()
            x.withUnsafeBufferPointer { xp in
                LoraKernels.dropout(xp.baseAddress!, &d1, &m1, count: n, keep: keep, inv: 1 / keep, rng: &g1)
                LoraKernels.dropoutReference(xp.baseAddress!, &d2, &m2, count: n, keep: keep, inv: 1 / keep, rng: &g2)
            }
            #expect(m1 == m2)
            #expect(d1 == d2)
            #expect(g1.state == g2.state)
        }
    }

    /// The blocked masked LoRA input gradient equals the product into a full temporary
    /// followed by the plain masked add.
    @Test(arguments: [(1, 5), (7, 33), (100, 576), (61, 1536)])
    func maskedLoraDxEqualsReference(m: Int, n: Int) {
        let r = 16
        let g = Self.randoms(m * r, seed: 1), a = Self.randoms(r * n, seed: 2), dx0 = Self.randoms(m * n, seed: 3)
        var mg = SplitMix64(seed: 4)
        let mask = (0..<(m * n)).map { _ in UInt8(mg.next() % 3 == 0 ? 0 : 1) }
        var fast = dx0, ref = dx0
        var tmp = [Float](repeating: 0, count: m * n)
        for i in 0..<m { for j in 0..<n {
            var s: Float = 0
            for k in 0..<r { s += g[i * r + k] * a[k * n + j] }
            tmp[i * n + j] = 0.7 * s
        } }
        LoraKernels.maskedAddReference(&ref, tmp, mask, count: m * n, inv: 1.25)
        LoraKernels.maskedLoraDx(m: m, n: n, r: r, c: 0.7, g: g, a: a, mask: mask, inv: 1.25, dx: &fast)
        for i in 0..<(m * n) {
            #expect(abs(fast[i] - ref[i]) <= Self.fp32Tol * max(1, abs(ref[i])), "dx[\(i)]")
        }
        // the vectorized masked add alone is exact
        var v = dx0, w = dx0
        LoraKernels.maskedAddSerial(&v, tmp, mask, count: m * n, inv: 1.25)
        LoraKernels.maskedAddReference(&w, tmp, mask, count: m * n, inv: 1.25)
        #expect(v == w)
    }
}
