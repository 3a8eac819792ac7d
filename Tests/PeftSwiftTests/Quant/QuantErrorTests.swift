import Foundation
import Testing
@testable import PeftSwift
import CPeftSwift

/// Bad input throws the right status with a message naming the argument and value, and writes nothing.
@Suite struct QuantErrorTests {
    func expectError(_ status: Int32, _ message: String? = nil, _ body: () throws(PSTError) -> Void) {
        do {
            try body()
            Issue.record("no error thrown; expected status \(status)")
        } catch {
            #expect(error.status == status, "\(error)")
            if let message { #expect(error.message == message) }
        }
    }

    @Test func quantizeRejectsNonFiniteAndWritesNothing() {
        var x = [Float](repeating: 0.5, count: 5000)
        x[1234] = .nan
        var packed = [UInt8](repeating: 0xAB, count: 2500), absmax = [Float](repeating: 42, count: 79)
        expectError(PST_ERR_NONFINITE, "x[1234] is NaN") { () throws(PSTError) in
            try Quant4.quantize(x, dtype: .f32, count: 5000, blocksize: 64, type: .nf4, packed: &packed, absmax: &absmax)
        }
        #expect(packed.allSatisfy { $0 == 0xAB } && absmax.allSatisfy { $0 == 42 })
        x[1234] = 0.5; x[4999] = -.infinity
        expectError(PST_ERR_NONFINITE, "x[4999] is -inf") { () throws(PSTError) in
            try Quant4.quantize(x, dtype: .f32, count: 5000, blocksize: 64, type: .fp4, packed: &packed, absmax: &absmax)
        }
        var h = [UInt16](repeating: 0x3F80, count: 100)   // bf16 1.0
        h[77] = 0x7F80                                     // bf16 +inf
        expectError(PST_ERR_NONFINITE, "x[77] is inf") { () throws(PSTError) in
            try Quant4.quantize(h, dtype: .bf16, count: 100, blocksize: 32, type: .nf4, packed: &packed, absmax: &absmax)
        }
        h[77] = 0x7E00                                     // f16 NaN
        expectError(PST_ERR_NONFINITE, "x[77] is NaN") { () throws(PSTError) in
            _ = try QuantizedTensor(quantizing: h, dtype: .f16, shape: [10, 10], blocksize: 32, type: .nf4)
        }
        #expect(packed.allSatisfy { $0 == 0xAB } && absmax.allSatisfy { $0 == 42 })
    }

    @Test func badArguments() {
        let x = [Float](repeating: 1, count: 64)
        var packed = [UInt8](repeating: 0, count: 64), absmax = [Float](repeating: 0, count: 8)
        expectError(PST_ERR_INVALID_ARG, "blocksize (48) must be one of 32, 64, 128, 256, 512, 1024, 2048, 4096") { () throws(PSTError) in
            try Quant4.quantize(x, dtype: .f32, count: 64, blocksize: 48, type: .nf4, packed: &packed, absmax: &absmax)
        }
        expectError(PST_ERR_INVALID_ARG, "count (0) must be >= 1") { () throws(PSTError) in
            try Quant4.quantize(x, dtype: .f32, count: 0, blocksize: 64, type: .nf4, packed: &packed, absmax: &absmax)
        }
        expectError(PST_ERR_UNSUPPORTED) { () throws(PSTError) in
            try Quant4.quantize(x, dtype: .i32, count: 64, blocksize: 64, type: .nf4, packed: &packed, absmax: &absmax)
        }
        var bad = [Float](repeating: 1, count: 2); bad[1] = .nan
        var out = [Float](repeating: 7, count: 64)
        expectError(PST_ERR_NONFINITE, "absmax[1] is NaN") { () throws(PSTError) in
            try Quant4.dequantize(packed: packed, absmax: bad, code: Codebooks.nf4, count: 64, blocksize: 32, out: &out, dtype: .f32)
        }
        #expect(out.allSatisfy { $0 == 7 })
        expectError(PST_ERR_INVALID_ARG, "blocksize (0) must be in 1...16777216") { () throws(PSTError) in
            try Blockwise8.quantize(x, count: 64, blocksize: 0, code: Codebooks.dynamicSigned, q: &packed, absmax: &absmax)
        }
        var unsorted = Codebooks.dynamicSigned; unsorted.swapAt(3, 4)
        expectError(PST_ERR_INVALID_ARG) { () throws(PSTError) in
            try Blockwise8.quantize(x, count: 64, blocksize: 64, code: unsorted, q: &packed, absmax: &absmax)
        }
        #expect(throws: Never.self) { try QuantType.from(1, argument: "type") }
        expectError(PST_ERR_INVALID_ARG, "type (5) is not a PST_QUANT_* value") { () throws(PSTError) in _ = try QuantType.from(5, argument: "type") }
    }

    /// A state whose fields disagree is refused with a message naming the field.
    @Test func inconsistentStateFields() {
        let shape = [10, 64]                    // 640 elements, 10 blocks of 64
        let p = [UInt8](repeating: 0x77, count: 320), code = Codebooks.nf4
        let a = [Float](repeating: 1, count: 10)
        let q = [UInt8](repeating: 128, count: 10), a2: [Float] = [0.5], c2 = Codebooks.dynamicSigned
        typealias N = (offset: Float, q: UnsafeBufferPointer<UInt8>, absmax: UnsafeBufferPointer<Float>, code: UnsafeBufferPointer<Float>, blocksize: Int)
        func make(shape: [Int] = shape, dtype: DType = .f32, bs: Int = 64, p: [UInt8] = p, code: [Float] = code, a: [Float]?,
                  n: (Float, [UInt8], [Float], [Float], Int)?) throws(PSTError) {
            let pb = p.withUnsafeBufferPointer { $0 }, cb = code.withUnsafeBufferPointer { $0 }
            let ab = a?.withUnsafeBufferPointer { $0 }
            let nb: N? = n.map { ($0.0, $0.1.withUnsafeBufferPointer { $0 }, $0.2.withUnsafeBufferPointer { $0 }, $0.3.withUnsafeBufferPointer { $0 }, $0.4) }
            _ = try withExtendedLifetime((p, code, a, n)) { () throws(PSTError) in
                try QuantizedTensor(shape: shape, dtype: dtype, quantType: .nf4, blocksize: bs, packed: pb, code: cb, absmax: ab, nested: nb)
            }
        }
        #expect(throws: Never.self) { try make(a: a, n: nil) }
        #expect(throws: Never.self) { try make(a: nil, n: (0.1, q, a2, c2, 256)) }
        expectError(PST_ERR_SHAPE, "packed has 319 bytes; shape [10, 64] needs 320") { () throws(PSTError) in try make(p: Array(p.dropLast()), a: a, n: nil) }
        expectError(PST_ERR_SHAPE, "absmax has 9 entries; 640 elements in blocks of 64 need 10") { () throws(PSTError) in try make(a: Array(a.dropLast()), n: nil) }
        expectError(PST_ERR_SHAPE) { () throws(PSTError) in try make(shape: [0, 64], a: a, n: nil) }
        expectError(PST_ERR_SHAPE) { () throws(PSTError) in try make(code: Array(code.dropLast()), a: a, n: nil) }
        expectError(PST_ERR_INVALID_ARG) { () throws(PSTError) in try make(bs: 100, a: a, n: nil) }
        expectError(PST_ERR_UNSUPPORTED) { () throws(PSTError) in try make(dtype: .u8, a: a, n: nil) }
        expectError(PST_ERR_INVALID_ARG) { () throws(PSTError) in try make(a: nil, n: nil) }
        expectError(PST_ERR_INVALID_ARG) { () throws(PSTError) in try make(a: a, n: (0.1, q, a2, c2, 256)) }
        expectError(PST_ERR_SHAPE, "nested q has 9 entries; 10 blocks need 10") { () throws(PSTError) in try make(a: nil, n: (0.1, Array(q.dropLast()), a2, c2, 256)) }
        expectError(PST_ERR_SHAPE) { () throws(PSTError) in try make(a: nil, n: (0.1, q, [0.5, 0.5], c2, 256)) }
        expectError(PST_ERR_SHAPE) { () throws(PSTError) in try make(a: nil, n: (0.1, q, a2, Array(c2.dropLast()), 256)) }
        expectError(PST_ERR_INVALID_ARG) { () throws(PSTError) in try make(a: nil, n: (0.1, q, a2, c2, 0)) }
        expectError(PST_ERR_NONFINITE, "nested offset is NaN") { () throws(PSTError) in try make(a: nil, n: (.nan, q, a2, c2, 256)) }
        expectError(PST_ERR_NONFINITE, "nested absmax[0] is inf") { () throws(PSTError) in try make(a: nil, n: (0.1, q, [.infinity], c2, 256)) }
        var badA = a; badA[3] = .nan
        expectError(PST_ERR_NONFINITE, "absmax[3] is NaN") { () throws(PSTError) in try make(a: badA, n: nil) }
    }

    /// 4096×4096 NF4, blocksize 64: 4.5 bits per parameter plain, ≈4.127 double-quantized.
    @Test func bitsPerParameter() throws {
        let n = 4096 * 4096, nb = n / 64
        let p = [UInt8](repeating: 0x77, count: n / 2), a = [Float](repeating: 1, count: nb)
        let q = [UInt8](repeating: 0, count: nb), a2 = [Float](repeating: 1, count: nb / 256)
        let plain = try p.withUnsafeBufferPointer { pb in
            try Codebooks.nf4.withUnsafeBufferPointer { cb in
                try a.withUnsafeBufferPointer { ab in
                    try QuantizedTensor(shape: [4096, 4096], dtype: .f32, quantType: .nf4, blocksize: 64, packed: pb, code: cb, absmax: ab, nested: nil)
                }
            }
        }
        let nested = try p.withUnsafeBufferPointer { pb in
            try Codebooks.nf4.withUnsafeBufferPointer { cb in
                try q.withUnsafeBufferPointer { qb in
                    try a2.withUnsafeBufferPointer { a2b in
                        try Codebooks.dynamicSigned.withUnsafeBufferPointer { c2 in
                            try QuantizedTensor(shape: [4096, 4096], dtype: .f32, quantType: .nf4, blocksize: 64, packed: pb, code: cb,
                                                absmax: nil, nested: (0.5, qb, a2b, c2, 256))
                        }
                    }
                }
            }
        }
        let b1 = Double(plain.storageByteCount * 8) / Double(n), b2 = Double(nested.storageByteCount * 8) / Double(n)
        #expect(abs(b1 - 4.5) < 0.001, "\(b1)")
        #expect(abs(b2 - 4.127) < 0.001, "\(b2)")
    }
}
