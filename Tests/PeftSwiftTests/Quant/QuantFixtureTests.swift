import Foundation
import Testing
@testable import PeftSwift

/// Every golden fixture from the real bitsandbytes 0.50.2 (Tests/fixtures/make_quant_fixtures.py)
/// matches bit for bit.
@Suite struct QuantFixtureTests {
    static let q4Files = listQuantFixtures().filter { $0.contains("/q4_") }
    static let b8Files = listQuantFixtures().filter { $0.contains("/b8_") }

    @Test func fixturesExist() {
        #expect(Self.q4Files.count >= 60)
        #expect(Self.b8Files.count >= 7)
    }

    @Test(arguments: q4Files) func fourBit(_ path: String) throws {
        let f = try loadQuantFixture(path)
        let qt = QuantType(name: f.metadata["quant_type"]!)!
        let bs = Int(f.metadata["blocksize"]!)!
        let dtype = DType(torchName: f.metadata["dtype"]!)!
        let shape = try JSONDecoder().decode([Int].self, from: f.metadata["shape"]!.data(using: .utf8)!)
        let threads = Int(f.metadata["torch_threads"]!)!
        let n = shape.reduce(1, *)
        var xBytes: [UInt8]
        if let seed = f.metadata["gen_seed"] {
            let g = quantGen(seed: UInt32(seed)!, count: Int(f.metadata["gen_n"]!)!, kind: Int(f.metadata["gen_kind"]!)!)
            xBytes = g.withUnsafeBytes { Array($0) }
        } else {
            xBytes = f["x"].bytes
        }
        #expect(xBytes.count == n * dtype.size)
        let nb = Quant4.blockCount(n, blocksize: bs)
        let absmaxRef = f["absmax"].floats

        // plain quantization
        var packed = [UInt8](repeating: 0, count: Quant4.packedByteCount(n))
        var absmax = [Float](repeating: 0, count: nb)
        try xBytes.withUnsafeBytes { x in
            try Quant4.quantize(x.baseAddress!, dtype: dtype, count: n, blocksize: bs, type: qt, packed: &packed, absmax: &absmax)
        }
        #expect(absmax.map(\.bitPattern) == absmaxRef.map(\.bitPattern), "absmax \(path)")
        if f.tensors["packed"] != nil {
            #expect(packed == f["packed"].u8, "packed \(path)")
            // dequantize from bitsandbytes' own state
            var out = [UInt8](repeating: 0, count: n * dtype.size)
            try Quant4.dequantize(packed: f["packed"].u8, absmax: absmaxRef, code: qt.codebook, count: n, blocksize: bs,
                                  out: &out, dtype: dtype)
            let ours = widenedValues(out, dtype), theirs = widenedValues(f["dequant"].bytes, dtype)
            #expect(zip(ours, theirs).allSatisfy(sameFloat), "dequant \(path)")
        }

        // double quantization
        let t = try xBytes.withUnsafeBytes { x in
            try QuantizedTensor(quantizing: x.baseAddress!, dtype: dtype, shape: shape, blocksize: bs, type: qt,
                                doubleQuant: true, torchThreads: threads)
        }
        let nested = try #require(t.nested)
        #expect(nested.offset.bitPattern == f["nested_offset"].floats[0].bitPattern, "offset \(path)")
        #expect(nested.absmax.array.map(\.bitPattern) == f["nested_absmax"].floats.map(\.bitPattern), "nested absmax \(path)")
        #expect(nested.code.array.map(\.bitPattern) == f["nested_code"].floats.map(\.bitPattern))
        let exact = f["nested_q_exact"].u8, bnbQ = f["nested_q"].u8
        #expect(nested.q.array == exact, "nested q vs exact nearest \(path)")
        // bitsandbytes' CPU lookup table: its only differences from ours are where it is not the nearest code
        let lutDiffs = (0..<nb).filter { bnbQ[$0] != exact[$0] }
        let ourDiffs = (0..<nb).filter { bnbQ[$0] != nested.q[$0] }
        #expect(ourDiffs == lutDiffs)
        #expect(lutDiffs.allSatisfy { abs(Int(bnbQ[$0]) - Int(exact[$0])) <= 3 })
        if f.tensors["dq_packed"] != nil {
            #expect(t.packed.array == f["dq_packed"].u8)
            // reading bitsandbytes' nested state reproduces its dequantized output exactly
            let r = try f["dq_packed"].u8.withUnsafeBufferPointer { p in
                try qt.codebook.withUnsafeBufferPointer { c in
                    try bnbQ.withUnsafeBufferPointer { q in
                        try f["nested_absmax"].floats.withUnsafeBufferPointer { a2 in
                            try f["nested_code"].floats.withUnsafeBufferPointer { c2 in
                                try QuantizedTensor(shape: shape, dtype: dtype, quantType: qt, blocksize: bs, packed: p, code: c,
                                                    absmax: nil, nested: (f["nested_offset"].floats[0], q, a2, c2, 256))
                            }
                        }
                    }
                }
            }
            var out = [UInt8](repeating: 0, count: n * dtype.size)
            out.withUnsafeMutableBytes { r.dequantize(into: $0.baseAddress!, dtype: dtype) }
            let ours = widenedValues(out, dtype), theirs = widenedValues(f["dq_dequant"].bytes, dtype)
            #expect(zip(ours, theirs).allSatisfy(sameFloat), "dq dequant \(path)")
        }
    }

    @Test(arguments: b8Files) func eightBit(_ path: String) throws {
        let f = try loadQuantFixture(path)
        let bs = Int(f.metadata["blocksize"]!)!
        let x = f["x"].floats, code = f["code"].floats
        let n = x.count, nb = Blockwise8.blockCount(n, blocksize: bs)
        var q = [UInt8](repeating: 0, count: n), absmax = [Float](repeating: 0, count: nb)
        try Blockwise8.quantize(x, count: n, blocksize: bs, code: code, q: &q, absmax: &absmax)
        #expect(absmax.map(\.bitPattern) == f["absmax"].floats.map(\.bitPattern))
        let exact = f["q_exact"].u8, bnbQ = f["q"].u8
        #expect(q == exact)
        #expect((0..<n).filter { bnbQ[$0] != q[$0] } == (0..<n).filter { bnbQ[$0] != exact[$0] })
        var out = [Float](repeating: 0, count: n)
        try Blockwise8.dequantize(q: bnbQ, absmax: f["absmax"].floats, code: code, count: n, blocksize: bs, out: &out)
        #expect(zip(out, f["dequant"].floats).allSatisfy(sameFloat))
    }

    /// torch.mean reproduced bit for bit on generated data (1 ... 300000 elements, 4 kinds,
    /// torch thread counts 1-4).
    @Test func torchMeanMatchesTorch() throws {
        let f = try loadQuantFixture("quant/torch_mean.safetensors")
        let rows = f["cases"].i64, means = f["means"].floats
        let data = (0..<4).map { quantGen(seed: UInt32(100 + $0), count: 300000, kind: $0) }
        var matched = 0, maxUlp = 0
        for c in 0..<means.count {
            let kind = Int(rows[3 * c]), n = Int(rows[3 * c + 1]), th = Int(rows[3 * c + 2])
            let m = data[kind].withUnsafeBufferPointer { TorchMean.mean($0.baseAddress!, count: n, threads: th) }
            if m.bitPattern == means[c].bitPattern { matched += 1 }
            let ref = data[kind].withUnsafeBufferPointer { TorchMean.meanReference($0.baseAddress!, count: n) }
            maxUlp = max(maxUlp, abs(Int(ref.bitPattern) - Int(means[c].bitPattern)))
        }
        print("TorchMean: \(matched)/\(means.count) bit-exact with torch; torch vs exact mean: max \(maxUlp) ulp")
        #expect(matched == means.count)
    }
}
