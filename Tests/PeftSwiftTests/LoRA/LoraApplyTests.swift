import Testing
@testable import PeftSwift

/// The layer as a function (`apply` / `applyBackward`, the C API's pst_lora_apply*): held bit
/// for bit to the layer's own forward/backward, which run the same products in the same order
/// (with the adapter's A, B and, with dropout, the dropped x the forward kept as the caller's
/// x_lora); borrowed bases equal owned ones bit for bit; a layer applied twice keeps no state.
@Suite struct LoraApplyTests {
    static func randoms(_ n: Int, seed: UInt64, scale: Float = 1) -> [Float] {
        var g = SplitMix64(seed: seed)
        return (0..<n).map { _ in g.uniform(-scale, scale) }
    }

    struct Run: Equatable {
        var y: [Float], dx: [Float], dA: [Float], dB: [Float], db: [Float]
    }

    /// The layer's own forward/backward with one active adapter; returns also the dropped x.
    static func own(_ l: LoraLinear, _ x: [Float], _ u: [Float], m: Int) throws -> (Run, [Float]?) {
        let a = l.active[0]
        var y = [Float](repeating: 0, count: m * l.outFeatures)
        var dx = [Float](repeating: 0, count: m * l.inFeatures)
        try x.withUnsafeBufferPointer { xp in try y.withUnsafeMutableBufferPointer { try l.forward(xp, m: m, $0) } }
        let dropped = l.cacheDropped[ObjectIdentifier(a)].map { Array(UnsafeBufferPointer(start: $0.baseAddress, count: m * l.inFeatures)) }
        l.zeroGrad()
        try u.withUnsafeBufferPointer { up in try dx.withUnsafeMutableBufferPointer { try l.backward(up, m: m, dx: $0) } }
        return (Run(y: y, dx: dx, dA: a.gradA.array, dB: a.gradB.array, db: l.gradBias?.array ?? []), dropped)
    }

    /// The same through apply/applyBackward with A, B, bias given by the caller.
    static func functional(_ l: LoraLinear, a: LoraAdapter, bias: [Float]?, _ x: [Float], xLora: [Float]?, _ u: [Float],
                           m: Int, keepT: Bool) throws -> (Run, [Float]) {
        let (inF, outF, r) = (l.inFeatures, l.outFeatures, a.config.r)
        var y = [Float](repeating: 0, count: m * outF), t = [Float](repeating: 0, count: m * r)
        var dx = [Float](repeating: 0, count: m * inF), dxl = [Float](repeating: .nan, count: m * inF)
        var dA = [Float](repeating: .nan, count: r * inF), dB = [Float](repeating: .nan, count: outF * r)
        var db = [Float](repeating: .nan, count: outF)
        let br = LoraBranch(a: UnsafePointer(a.a.baseAddress), b: UnsafePointer(a.b.baseAddress), r: r, scaling: a.scaling)
        try x.withUnsafeBufferPointer { xp in
            try (xLora ?? []).withUnsafeBufferPointer { xlp in
                let xl = xLora == nil ? nil : xlp.baseAddress
                try (bias ?? []).withUnsafeBufferPointer { bp in
                    try y.withUnsafeMutableBufferPointer { yp in
                        try t.withUnsafeMutableBufferPointer { tp in
                            try l.apply(x: xp.baseAddress!, xLora: xl, m: m, branch: br, bias: bias == nil ? nil : bp.baseAddress,
                                        y: yp.baseAddress!, t: tp.baseAddress!)
                        }
                    }
                }
                try u.withUnsafeBufferPointer { up in
                    try t.withUnsafeBufferPointer { tp in
                        try dx.withUnsafeMutableBufferPointer { dxp in
                            try dxl.withUnsafeMutableBufferPointer { dxlp in
                                try dA.withUnsafeMutableBufferPointer { ap in
                                    try dB.withUnsafeMutableBufferPointer { bp in
                                        try db.withUnsafeMutableBufferPointer { dbp in
                                            try l.applyBackward(dy: up.baseAddress!, m: m, x: xp.baseAddress!, xLora: xl, branch: br,
                                                                t: keepT ? tp.baseAddress! : nil, dx: dxp.baseAddress!,
                                                                dxLora: xl == nil ? nil : dxlp.baseAddress!,
                                                                gradA: ap.baseAddress!, gradB: bp.baseAddress!,
                                                                gradBias: bias == nil ? nil : dbp.baseAddress!)
                                        }
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
        return (Run(y: y, dx: dx, dA: dA, dB: dB, db: bias == nil ? [] : db), dxl)
    }

    static func dense(_ inF: Int, _ outF: Int, bias: Bool, dropout: Float) throws -> (LoraLinear, [Float], [Float]) {
        let w = randoms(outF * inF, seed: 1, scale: 0.5), b = randoms(outF, seed: 2)
        let l = try w.withUnsafeBufferPointer { wp in
            try b.withUnsafeBufferPointer { bp in try LoraLinear(dense: wp, outFeatures: outF, inFeatures: inF, bias: bias ? bp : nil) }
        }
        let a = try l.addAdapter("a", config: LoraConfig(r: 3, alpha: 5, dropout: dropout, seed: 9))
        let bb = randoms(a.b.count, seed: 3, scale: 0.3)
        for j in 0..<bb.count { a.b[j] = bb[j] }
        return (l, w, b)
    }

    @Test(arguments: [1, 7, 257])
    func applyEqualsTheLayersOwnPassWithoutDropout(m: Int) throws {
        let (inF, outF) = (37, 19)
        let (l, _, b) = try Self.dense(inF, outF, bias: true, dropout: 0)
        let x = Self.randoms(m * inF, seed: 4), u = Self.randoms(m * outF, seed: 5)
        let (mine, _) = try Self.own(l, x, u, m: m)
        for keepT in [true, false] {
            let (f, _) = try Self.functional(l, a: l.active[0], bias: b, x, xLora: nil, u, m: m, keepT: keepT)
            #expect(f == mine, "keepT \(keepT)")
        }
    }

    @Test(arguments: [1, 7, 33])
    func applyWithTheCallersDroppedXEqualsTheLayersDropout(m: Int) throws {
        // dx of the layer = dy·W + (c·g·A) ⊙ mask/(1-p); the function gives dy·W and c·g·A
        // (the caller's autograd applies the mask): summed the same way they agree exactly
        // where the mask keeps and dx equals dy·W where it drops.
        let (inF, outF) = (40, 24), p: Float = 0.25
        let (l, _, _) = try Self.dense(inF, outF, bias: false, dropout: p)
        let x = Self.randoms(m * inF, seed: 6), u = Self.randoms(m * outF, seed: 7)
        let (mine, dropped) = try Self.own(l, x, u, m: m)
        let xd = try #require(dropped)
        let (f, dxl) = try Self.functional(l, a: l.active[0], bias: nil, x, xLora: xd, u, m: m, keepT: true)
        #expect(f.y == mine.y && f.dA == mine.dA && f.dB == mine.dB)
        let inv = 1 / (1 - p)
        for i in 0..<(m * inF) {
            let kept = xd[i] != 0 || x[i] == 0
            let expect = kept ? f.dx[i] + dxl[i] * inv : f.dx[i]
            #expect(abs(expect - mine.dx[i]) <= 1e-6 * max(1, abs(mine.dx[i])), "dx[\(i)]")
        }
    }

    @Test func borrowedBasesEqualOwnedOnesBitForBit() throws {
        let (inF, outF, m) = (130, 20, 5)
        let w = Self.randoms(outF * inF, seed: 8, scale: 0.2)
        let x = Self.randoms(m * inF, seed: 9), u = Self.randoms(m * outF, seed: 10)
        let owned = try w.withUnsafeBufferPointer { try LoraLinear(dense: $0, outFeatures: outF, inFeatures: inF) }
        let borrowed = try w.withUnsafeBufferPointer { try LoraLinear(borrowingDense: $0.baseAddress!, outFeatures: outF, inFeatures: inF) }
        #expect(borrowed.baseIsBorrowed && !owned.baseIsBorrowed)
        let a = try owned.addAdapter("a", config: LoraConfig(r: 4, alpha: 8, seed: 1))
        for j in 0..<a.b.count { a.b[j] = 0.01 * Float(j % 13) }
        let (r1, _) = try Self.functional(owned, a: a, bias: nil, x, xLora: nil, u, m: m, keepT: false)
        let (r2, _) = try Self.functional(borrowed, a: a, bias: nil, x, xLora: nil, u, m: m, keepT: false)
        #expect(r1 == r2)
        // a borrowed dense base is never written: merge refuses
        _ = try borrowed.addAdapter("b", config: LoraConfig(r: 2, alpha: 2))
        #expect(throws: PSTError.self) { try borrowed.merge() }
        // quantized: a tensor over the caller's arrays equals the one that copied them
        let q = try w.withUnsafeBufferPointer {
            try QuantizedTensor(quantizing: UnsafeRawPointer($0.baseAddress!), dtype: .f32, shape: [outF, inF], doubleQuant: true)
        }
        let n = try #require(q.nested)
        func build(_ borrowing: Bool) throws -> QuantizedTensor {
            try QuantizedTensor(shape: q.shape, dtype: .f32, quantType: q.quantType, blocksize: q.blocksize,
                                packed: UnsafeBufferPointer(q.packed.buffer), code: UnsafeBufferPointer(q.code.buffer), absmax: nil,
                                nested: (offset: n.offset, q: UnsafeBufferPointer(n.q.buffer), absmax: UnsafeBufferPointer(n.absmax.buffer),
                                         code: UnsafeBufferPointer(n.code.buffer), blocksize: n.blocksize), borrowing: borrowing)
        }
        let qb = try build(true), qc = try build(false)
        #expect(qb.packed.baseAddress == q.packed.baseAddress && qc.packed.baseAddress != q.packed.baseAddress)
        let lb = try LoraLinear(quantized: qb), lc = try LoraLinear(quantized: qc)
        #expect(lb.baseIsBorrowed && !lc.baseIsBorrowed)
        let (q1, _) = try Self.functional(lb, a: a, bias: nil, x, xLora: nil, u, m: m, keepT: true)
        let (q2, _) = try Self.functional(lc, a: a, bias: nil, x, xLora: nil, u, m: m, keepT: true)
        #expect(q1 == q2)
    }
}
