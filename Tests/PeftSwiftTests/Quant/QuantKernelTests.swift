import Foundation
import Testing
@testable import PeftSwift

/// Fast kernels against their reference twins, bit for bit (or within named tolerances).
@Suite struct QuantKernelTests {
    /// Fast matvec vs its reference twin: both sum the same fp32 products in other orders, so
    /// they differ by at most ~n·2^-24 of Σ|w·v| (n <= 4096 here: 2.4e-4 worst case, ~sqrt(n)·2^-24
    /// ~ 4e-6 in practice); 1e-5 of Σ|w·v| + 1.
    static let reorderTol: Float = 1e-5

    static let lengths = [1, 2, 3, 7, 8, 9, 15, 16, 17, 31, 32, 33, 63, 64, 65, 100, 127, 1000, 4097, 9001]

    static func randomInput(_ n: Int, _ dtype: DType, seed: UInt64) -> [UInt8] {
        var rng = QuantRNG(seed)
        var f = (0..<n).map { _ in rng.normal() * 0.1 }
        if n > 100 { for i in 0..<min(64, n) { f[i] = 0 } }      // an all-zero block
        if n > 300 { f[n / 2] = 25 }                               // an outlier
        var out = [UInt8](repeating: 0, count: n * dtype.size)
        out.withUnsafeMutableBytes { o in for i in 0..<n { storeFloat(f[i], o.baseAddress!, dtype, i) } }
        return out
    }

    @Test(arguments: [DType.f32, .f16, .bf16])
    func quantizeAndDequantizeMatchReference(_ dtype: DType) throws {
        for type in QuantType.allCases {
            for bs in Quant4.blocksizes {
                for n in Self.lengths where n <= 4 * bs + 1000 {
                    let x = Self.randomInput(n, dtype, seed: UInt64(n * 31 + bs))
                    let nb = Quant4.blockCount(n, blocksize: bs), nbytes = Quant4.packedByteCount(n)
                    var p1 = [UInt8](repeating: 0, count: nbytes), p2 = p1
                    var a1 = [Float](repeating: 0, count: nb), a2 = a1
                    try x.withUnsafeBytes { xp in
                        try Quant4.quantize(xp.baseAddress!, dtype: dtype, count: n, blocksize: bs, type: type, packed: &p1, absmax: &a1)
                        Quant4.quantizeReference(xp.baseAddress!, dtype: dtype, count: n, blocksize: bs, type: type, packed: &p2, absmax: &a2)
                    }
                    #expect(p1 == p2, "packed \(type) bs \(bs) n \(n) \(dtype)")
                    #expect(a1.map(\.bitPattern) == a2.map(\.bitPattern))
                    for od in [DType.f32, .f16, .bf16] {
                        var o1 = [UInt8](repeating: 0, count: n * od.size), o2 = o1
                        try Quant4.dequantize(packed: p1, absmax: a1, code: type.codebook, count: n, blocksize: bs, out: &o1, dtype: od)
                        Quant4.dequantizeReference(packed: p1, absmax: a1, code: type.codebook, count: n, blocksize: bs, out: &o2, dtype: od)
                        #expect(o1 == o2, "dequant \(type) bs \(bs) n \(n) -> \(od)")
                    }
                }
            }
        }
    }

    @Test func dequantizeRangeAndScalesMatchReference() throws {
        for dq in [false, true] {
            for (shape, bs) in [([7, 33], 32), ([5, 100], 64), ([3, 4096 + 17], 4096), ([1001], 128)] {
                let n = shape.reduce(1, *)
                let x = Self.randomInput(n, .f32, seed: UInt64(n))
                let t = try x.withUnsafeBytes {
                    try QuantizedTensor(quantizing: $0.baseAddress!, dtype: .f32, shape: shape, blocksize: bs, type: .nf4, doubleQuant: dq)
                }
                var full = [Float](repeating: 0, count: n), ref = full
                full.withUnsafeMutableBytes { t.dequantize(into: $0.baseAddress!, dtype: .f32) }
                ref.withUnsafeMutableBytes { t.dequantizeReference(into: $0.baseAddress!, dtype: .f32) }
                #expect(full.map(\.bitPattern) == ref.map(\.bitPattern))
                var rng = QuantRNG(UInt64(n))
                for _ in 0..<50 {
                    let s = Int(rng.next() % UInt64(n)), m = 1 + Int(rng.next() % UInt64(min(n - s, 300)))
                    var seg = [Float](repeating: .nan, count: m)
                    t.dequantizeRange(start: s, count: m, into: &seg)
                    #expect(seg.map(\.bitPattern) == ref[s..<(s + m)].map(\.bitPattern), "range \(s) +\(m)")
                }
                var s1 = [Float](repeating: 0, count: t.blockCount), s2 = s1
                t.blockScales(into: &s1)
                if let nested = t.nested { nested.decodeReference(into: &s2) } else { s2 = t.absmax!.array }
                #expect(s1.map(\.bitPattern) == s2.map(\.bitPattern))
            }
        }
    }

    @Test func matvecMatchesReference() throws {
        for dq in [false, true] {
            for type in QuantType.allCases {
                for (shape, bs) in [([3, 64], 64), ([7, 33], 32), ([5, 100], 64), ([16, 256], 128), ([4, 1], 32), ([2, 5000], 4096),
                                    ([257, 576], 64), ([6, 192], 64), ([9, 96], 32)] {
                    let n = shape.reduce(1, *)
                    let x = Self.randomInput(n, .f32, seed: UInt64(n + 7))
                    let t = try x.withUnsafeBytes {
                        try QuantizedTensor(quantizing: $0.baseAddress!, dtype: .f32, shape: shape, blocksize: bs, type: type, doubleQuant: dq)
                    }
                    var rng = QuantRNG(99)
                    let v = (0..<shape[1]).map { _ in rng.normal() }
                    var w = [Float](repeating: 0, count: n)
                    w.withUnsafeMutableBytes { t.dequantizeReference(into: $0.baseAddress!, dtype: .f32) }
                    // a row's value does not depend on how the rows are split (threads, ranges)
                    var whole = [Float](repeating: 0, count: shape[0]), parts = whole
                    t.matvec(v, &whole, accumulate: false)
                    var r0 = 0
                    while r0 < shape[0] { let r1 = min(shape[0], r0 + 3); t.matvecRows(v, &parts, accumulate: false, r0: r0, r1: r1); r0 = r1 }
                    #expect(parts == whole, "matvec \(shape) in ranges of 3")
                    for acc in [false, true] {
                        var y1 = [Float](repeating: 1, count: shape[0]), y2 = y1
                        t.matvec(v, &y1, accumulate: acc)
                        t.matvecReference(v, &y2, accumulate: acc)
                        for o in 0..<shape[0] {
                            let mag = (0..<shape[1]).reduce(Float(1)) { $0 + abs(w[o * shape[1] + $1] * v[$1]) }
                            #expect(abs(y1[o] - y2[o]) <= Self.reorderTol * mag, "matvec \(shape) row \(o)")
                        }
                    }
                }
            }
        }
    }

    @Test func blockwise8MatchesReference() throws {
        for code in [Codebooks.dynamicSigned, Codebooks.dynamicUnsigned] {
            for bs in [1, 7, 64, 256, 4096] {
                for n in [1, 5, 300, 5000] {
                    var rng = QuantRNG(UInt64(bs * n))
                    var x = (0..<n).map { _ in rng.normal() }
                    if n >= 300 { for i in 0..<min(bs, 64) { x[i] = 0 }; x[n - 1] = 2e-39 }
                    let nb = Blockwise8.blockCount(n, blocksize: bs)
                    var q1 = [UInt8](repeating: 0, count: n), q2 = q1
                    var a1 = [Float](repeating: 0, count: nb), a2 = a1
                    try Blockwise8.quantize(x, count: n, blocksize: bs, code: code, q: &q1, absmax: &a1)
                    Blockwise8.quantizeReference(x, count: n, blocksize: bs, code: code, q: &q2, absmax: &a2)
                    #expect(q1 == q2, "bs \(bs) n \(n)")
                    #expect(a1.map(\.bitPattern) == a2.map(\.bitPattern))
                    var o1 = [Float](repeating: 0, count: n), o2 = o1
                    try Blockwise8.dequantize(q: q1, absmax: a1, code: code, count: n, blocksize: bs, out: &o1)
                    Blockwise8.dequantizeReference(q: q1, absmax: a1, code: code, count: n, blocksize: bs, out: &o2)
                    #expect(o1.map(\.bitPattern) == o2.map(\.bitPattern))
                }
            }
        }
    }

    @Test func torchMeanSmallSizesAgainstReference() {
        var rng = QuantRNG(5)
        for n in 1...200 {
            let x = (0..<n).map { _ in rng.uniform() }
            let m = x.withUnsafeBufferPointer { TorchMean.mean($0.baseAddress!, count: n) }
            let r = x.withUnsafeBufferPointer { TorchMean.meanReference($0.baseAddress!, count: n) }
            #expect(abs(Int(m.bitPattern) - Int(r.bitPattern)) <= 4)
        }
    }

    @Test func quantTypeNames() {
        #expect(QuantType(name: "nf4") == .nf4 && QuantType(name: "fp4") == .fp4 && QuantType(name: "int4") == nil)
        #expect(QuantType.nf4.name == "nf4" && QuantType.fp4.rawValue == 1)
        #expect(Quant4.packedByteCount(7) == 4 && Quant4.blockCount(65, blocksize: 64) == 2)
        #expect(Quant4Table.nf4.zeroCode == 7 && Quant4Table.fp4.zeroCode == 0)
    }
}
