import Foundation
import Testing
@testable import PeftSwift

/// The quantizers' fast paths (register searches, the packing, the one-pass 4-bit kernel, the
/// register cascade sum, the fused double quantization) against their plain twins, bit for bit,
/// on odd sizes and on the values where a search can go wrong: exactly on a midpoint, one ulp
/// either side, ±0, beyond ±1.
@Suite struct QuantFastPathTests {
    /// Every midpoint, its float neighbours, the codes themselves, ±0, ±1, just beyond ±1, and
    /// random values in [-1.2, 1.2].
    static func probes(_ mids: [Float], _ codes: [Float], seed: UInt64) -> [Float] {
        var v: [Float] = [0, -0.0, 1, -1, Float(1).nextUp, Float(-1).nextDown, 1.5, -1.5, .leastNonzeroMagnitude]
        for m in mids where m.isFinite { v += [m, m.nextUp, m.nextDown] }
        v += codes
        var rng = QuantRNG(seed)
        for _ in 0..<2000 { v.append((rng.uniform() * 2 - 1) * 1.2) }
        while v.count % 8 != 0 { v.append(0.25) }
        return v
    }

    func linearRank(_ v: Float, _ s: [Float]) -> Int32 { Int32(s.reduce(0) { $0 + (v > $1 ? 1 : 0) }) }

    @Test func rank16EqualsTheLinearCount() {
        for t in [Quant4Table.nf4, Quant4Table.fp4] {
            let v = Self.probes(t.midpoints, t.code, seed: 3)
            for i in stride(from: 0, to: v.count, by: 8) {
                let r = t.search.rank(SIMD8<Float>(v[i..<(i + 8)]))
                for k in 0..<8 { #expect(r[k] == linearRank(v[i + k], t.midpoints), "v \(v[i + k])") }
            }
        }
        // repeated thresholds (a non-decreasing table with ties)
        let s: [Float] = [-0.5, -0.5, -0.5, 0, 0, 0, 0, 0.1, 0.1, 0.2, 0.2, 0.2, 0.9, 0.9, 0.9]
        let rank = Rank16(s)
        let v = Self.probes(s, [], seed: 4)
        for i in stride(from: 0, to: v.count, by: 8) {
            let r = rank(SIMD8<Float>(v[i..<(i + 8)]))
            for k in 0..<8 { #expect(r[k] == linearRank(v[i + k], s)) }
        }
    }

    @Test func rank256EqualsTheLinearCount() {
        for code in [Codebooks.dynamicSigned, Codebooks.dynamicUnsigned] {
            let m = code.withUnsafeBufferPointer { Blockwise8.midpoints($0.baseAddress!) }
            let rank = Rank256(midpoints: m)
            let v = Self.probes(m, code, seed: 5)
            for i in stride(from: 0, to: v.count, by: 8) {
                let r = rank(SIMD8<Float>(v[i..<(i + 8)]))
                for k in 0..<8 { #expect(r[k] == linearRank(v[i + k], Array(m[0..<255])), "v \(v[i + k])") }
            }
        }
    }

    /// Blocks whose absmax is 1 (so s = x exactly) holding every midpoint and its neighbours:
    /// ties must go to the lower code, in full blocks (multiply) and the partial block (divide).
    @Test func fourBitTiesAndNeighboursMatchReference() throws {
        for type in QuantType.allCases {
            let t = Quant4Table.of(type)
            var vals: [Float] = []
            for m in t.midpoints { vals += [m, m.nextUp, m.nextDown, -m] }
            for bs in [32, 64, 128] {
                var x: [Float] = []
                var k = 0
                while x.count < 5 * bs + 17 {
                    if x.count % bs == 0 { x.append(x.count % (2 * bs) == 0 ? 1 : -1) }   // absmax 1
                    x.append(vals[k % vals.count]); k += 1
                }
                for n in [x.count, 4 * bs + 1, 3 * bs - 5, bs - 1, 9] {
                    try expectQuantizeMatchesReference(Array(x[0..<n]), bs: bs, type: type)
                }
            }
        }
    }

    /// The one-pass kernel (Quant4.quantize, QuantizedTensor) against the reference on sizes
    /// that are not multiples of the block, of 32 or of 64, and on 1 element.
    @Test func fourBitOddSizesMatchReference() throws {
        var rng = QuantRNG(11)
        for n in [1, 2, 5, 31, 32, 33, 63, 65, 127, 129, 255, 257, 1000, 64 * 257 + 3, 70001] {
            let x = (0..<n).map { _ in rng.normal() * 0.02 }
            for bs in [32, 64, 256, 4096] {
                for type in QuantType.allCases { try expectQuantizeMatchesReference(x, bs: bs, type: type) }
            }
        }
    }

    /// Large outputs leave through non-temporal stores: every byte arrives, whatever the
    /// alignment and length (one tensor past the 256 KiB threshold, and the copy itself).
    @Test func largeOutputsAreCopiedExactly() throws {
        var rng = QuantRNG(13)
        let n = 600_001
        let x = (0..<n).map { _ in rng.normal() * 0.02 }
        try expectQuantizeMatchesReference(x, bs: 64, type: .nf4)
        let src = (0..<(1 << 18) + 300).map { UInt8(truncatingIfNeeded: $0 &* 31 &+ 7) }
        for (offset, len) in [(0, 1 << 18), (1, (1 << 18) + 1), (13, (1 << 18) + 127), (31, (1 << 18) + 200), (5, 1000)] {
            var dst = [UInt8](repeating: 0xEE, count: len + 64)
            src.withUnsafeBufferPointer { s in
                dst.withUnsafeMutableBufferPointer { d in Quant4._copyOut(s.baseAddress!, d.baseAddress! + offset, len) }
            }
            #expect(Array(dst[offset..<(offset + len)]) == Array(src[0..<len]), "offset \(offset) len \(len)")
            #expect(dst[0..<offset].allSatisfy { $0 == 0xEE } && dst[(offset + len)...].allSatisfy { $0 == 0xEE })
        }
    }

    func expectQuantizeMatchesReference(_ x: [Float], bs: Int, type: QuantType) throws {
        let n = x.count
        let nb = Quant4.blockCount(n, blocksize: bs)
        var p1 = [UInt8](repeating: 0, count: Quant4.packedByteCount(n)), p2 = p1
        var a1 = [Float](repeating: 0, count: nb), a2 = a1
        try Quant4.quantize(x, dtype: .f32, count: n, blocksize: bs, type: type, packed: &p1, absmax: &a1)
        Quant4.quantizeReference(x, dtype: .f32, count: n, blocksize: bs, type: type, packed: &p2, absmax: &a2)
        #expect(p1 == p2, "packed \(type) bs \(bs) n \(n)")
        #expect(a1.map(\.bitPattern) == a2.map(\.bitPattern), "absmax \(type) bs \(bs) n \(n)")
        let t = try QuantizedTensor(quantizing: x, dtype: .f32, shape: [n], blocksize: bs, type: type)
        #expect(t.packed.array == p2 && t.absmax!.array.map(\.bitPattern) == a2.map(\.bitPattern))
    }

    @Test func blockwise8OddSizesAndTiesMatchReference() throws {
        for code in [Codebooks.dynamicSigned, Codebooks.dynamicUnsigned] {
            let m = code.withUnsafeBufferPointer { Blockwise8.midpoints($0.baseAddress!) }
            var ties: [Float] = [1]                      // absmax 1: s = x, exactly on the midpoints
            for v in m[0..<255] { ties += [v, v.nextUp, v.nextDown] }
            var rng = QuantRNG(21)
            let random = (0..<3000).map { _ in rng.normal() }
            for bs in [1, 7, 31, 32, 33, 256, 4096] {
                for x in [ties, Array(random[0..<1]), Array(random[0..<255]), Array(random[0..<257]), random] {
                    let n = x.count, nb = Blockwise8.blockCount(n, blocksize: bs)
                    var q1 = [UInt8](repeating: 0, count: n), q2 = q1
                    var a1 = [Float](repeating: 0, count: nb), a2 = a1
                    try Blockwise8.quantize(x, count: n, blocksize: bs, code: code, q: &q1, absmax: &a1)
                    Blockwise8.quantizeReference(x, count: n, blocksize: bs, code: code, q: &q2, absmax: &a2)
                    #expect(q1 == q2, "bs \(bs) n \(n)")
                    #expect(a1.map(\.bitPattern) == a2.map(\.bitPattern))
                }
            }
        }
    }

    /// The register cascade sum takes torch's additions in torch's order: equal bits to the
    /// array-and-closure reference for lengths around every level boundary (rows of 32 floats
    /// carry every 16, 256 and 4096 rows; above 2^16 rows the level width grows).
    @Test func torchInnerSumMatchesReference() {
        var rng = QuantRNG(31)
        let big = (0..<(1 << 21) + 300).map { _ in rng.uniform() * 3 - 1 }
        var lengths = Array(1...300)
        for b in [512, 8192, 131_072, 1 << 21] { lengths += [b - 33, b - 1, b, b + 1, b + 7, b + 31, b + 32, b + 287] }
        lengths += [40000, 262_144, 300_000, 1_000_003]
        big.withUnsafeBufferPointer { p in
            for n in lengths {
                let f = TorchMean.innerSum(p.baseAddress!, n), r = TorchMean.innerSumReference(p.baseAddress!, n)
                #expect(f.bitPattern == r.bitPattern, "n \(n)")
            }
            for th in [1, 2, 3, 4] {
                for n in [32767, 32768, 65537, 262_144 + 5] {
                    #expect(TorchMean.sum(p.baseAddress!, count: n, threads: th).bitPattern
                            == TorchMean.sumReference(p.baseAddress!, count: n, threads: th).bitPattern)
                }
            }
        }
    }

    /// The fused double quantization (mean, centering inside the 8-bit kernel) against the
    /// reference chain (reference mean, a centered copy, the reference 8-bit quantizer).
    @Test func nestedStateMatchesReference() throws {
        var rng = QuantRNG(41)
        for count in [1, 2, 7, 63, 64, 255, 256, 257, 1000, 32767, 32768, 40000, 262_144 + 5] {
            let a = (0..<count).map { _ in abs(rng.normal()) * 0.05 }
            for th in [1, 2, 3] {
                let s = try a.withUnsafeBufferPointer { try NestedState(compressing: $0.baseAddress!, count: count, torchThreads: th) }
                let r = a.withUnsafeBufferPointer { NestedState.compressReference($0.baseAddress!, count: count, torchThreads: th) }
                #expect(s.offset.bitPattern == r.offset.bitPattern, "offset count \(count) threads \(th)")
                #expect(s.q.array == r.q, "q count \(count)")
                #expect(s.absmax.array.map(\.bitPattern) == r.absmax.map(\.bitPattern), "absmax count \(count)")
            }
        }
    }

    /// Errors from the one-pass kernels name the first bad element however the blocks are split
    /// between threads, and a double quantization whose centering overflows says so.
    @Test func firstNonFiniteIsNamedAcrossThreads() throws {
        let n = 64 * 3000 + 5
        var x = [Float](repeating: 0.01, count: n)
        for bad in [n - 1, 64 * 2999 + 3, 70000, 5] {
            x[bad] = .nan
            if bad != n - 1 { x[n - 1] = .infinity }
            var p = [UInt8](repeating: 7, count: Quant4.packedByteCount(n)), a = [Float](repeating: 3, count: 3001)
            do {
                try Quant4.quantize(x, dtype: .f32, count: n, blocksize: 64, type: .nf4, packed: &p, absmax: &a)
                Issue.record("no error")
            } catch { #expect(error.message == "x[\(bad)] is NaN") }
            #expect(p.allSatisfy { $0 == 7 } && a.allSatisfy { $0 == 3 })
            do {
                _ = try QuantizedTensor(quantizing: x, dtype: .f32, shape: [n], blocksize: 64, doubleQuant: true)
                Issue.record("no error")
            } catch { #expect(error.message == "x[\(bad)] is NaN") }
        }
        // torch's order sums ((3.4e38 - 3.4e38) - 3.4e38) + 3e38: the mean is -1e37, finite,
        // and 3.4e38 - mean overflows; with 3e38 doubled the mean itself is infinite
        for (a, bad) in [([Float(3.4e38), -3.4e38, -3.4e38, 3e38], 0), ([1, 3e38, 3e38, 1], 0)] {
            do {
                _ = try a.withUnsafeBufferPointer { try NestedState(compressing: $0.baseAddress!, count: 4) }
                Issue.record("no error")
            } catch let e as PSTError { #expect(e.message == "absmax[\(bad)] - offset overflows") } catch { Issue.record("\(error)") }
        }
    }
}
