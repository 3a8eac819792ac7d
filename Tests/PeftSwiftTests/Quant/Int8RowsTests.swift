import Foundation
import Testing
@testable import PeftSwift

/// Int8Rows (the lossless int8 form of an LM head) against its reference twin.
@Suite struct Int8RowsTests {
    /// matvecRows vs the float64 reference: the same exact weights, products summed in another
    /// order (per 32-block q·x, then ·d), so they differ by at most ~cols·2^-24 of Σ|w·x|
    /// (cols ≤ 1000 here: 6e-5 worst case, ~sqrt(cols)·2^-24 ≈ 2e-6 in practice): 1e-5 of
    /// Σ|w·x| + 1 (as QuantKernelTests.reorderTol).
    static let reorderTol: Float = 1e-5

    /// A rows × cols matrix that is exactly q·d per 32-block, the way a Q8_0 GGUF tensor
    /// dequantizes: d an fp16 value, q = round(x/d) with |q| ≤ 127 and 127 reached in each
    /// block (GGML's d = amax/127); one all-zero block.
    static func q8Matrix(rows: Int, cols: Int, seed: UInt64) -> [Float] {
        var rng = QuantRNG(seed)
        var w = [Float](repeating: 0, count: rows * cols)
        let bpr = (cols + 31) / 32
        for r in 0..<rows {
            for b in 0..<bpr {
                if r == 0 && b == 0 && rows * cols > 64 { continue }       // an all-zero block
                let d = Float(Float16(0.001 + 0.05 * rng.uniform()))
                let c0 = b * 32, c1 = min(cols, c0 + 32)
                for c in c0..<c1 { w[r * cols + c] = Float(Int(rng.next() % 255) - 127) * d }
                w[r * cols + c0 + Int(rng.next() % UInt64(c1 - c0))] = (rng.next() & 1 == 0 ? 127 : -127) * d
            }
        }
        return w
    }

    @Test func exactFormIsFoundAndLossless() throws {
        for (rows, cols) in [(1, 32), (7, 33), (3, 100), (257, 576), (2, 1), (5, 31)] {
            let w = Self.q8Matrix(rows: rows, cols: cols, seed: UInt64(rows * 1000 + cols))
            let t = try #require(w.withUnsafeBufferPointer { Int8Rows(exactly: $0.baseAddress!, rows: rows, cols: cols) },
                                 "\(rows)x\(cols)")
            #expect(t.dequantizeReference() == w, "\(rows)x\(cols)")
        }
    }

    @Test func inexactInputHasNoForm() {
        var rng = QuantRNG(3)
        var w = (0..<(9 * 64)).map { _ in rng.normal() }
        #expect(w.withUnsafeBufferPointer { Int8Rows(exactly: $0.baseAddress!, rows: 9, cols: 64) } == nil)
        // one inexact element is enough
        w = Self.q8Matrix(rows: 9, cols: 64, seed: 4)
        w[300] = w[300].nextUp
        #expect(w.withUnsafeBufferPointer { Int8Rows(exactly: $0.baseAddress!, rows: 9, cols: 64) } == nil)
        w = Self.q8Matrix(rows: 9, cols: 64, seed: 4)
        w[5] = .nan
        #expect(w.withUnsafeBufferPointer { Int8Rows(exactly: $0.baseAddress!, rows: 9, cols: 64) } == nil)
    }

    @Test func matvecMatchesReference() throws {
        let saved = Threads.count
        defer { Threads.count = saved }
        for (rows, cols) in [(1, 32), (7, 33), (3, 100), (257, 576), (6, 1000), (5, 31)] {
            let w = Self.q8Matrix(rows: rows, cols: cols, seed: UInt64(rows + cols))
            let t = try #require(w.withUnsafeBufferPointer { Int8Rows(exactly: $0.baseAddress!, rows: rows, cols: cols) })
            var rng = QuantRNG(11)
            let x = (0..<cols).map { _ in rng.normal() }
            var ref = [Float](repeating: 0, count: rows)
            t.matvecReference(x, &ref)
            var whole = [Float](repeating: 0, count: rows)
            t.matvecRows(x, &whole, r0: 0, r1: rows)
            for r in 0..<rows {
                let mag = (0..<cols).reduce(Float(1)) { $0 + abs(w[r * cols + $1] * x[$1]) }
                #expect(abs(whole[r] - ref[r]) <= Self.reorderTol * mag, "\(rows)x\(cols) row \(r)")
            }
            // a row's value does not depend on how the rows are split (threads, ranges)
            for threads in [1, 2, 3] {
                Threads.count = threads
                var y = [Float](repeating: .nan, count: rows)
                t.matvec(x, &y)
                #expect(y == whole, "\(rows)x\(cols), \(threads) threads")
            }
            var y = [Float](repeating: .nan, count: rows)
            var r0 = 0
            while r0 < rows { let r1 = min(rows, r0 + 3); t.matvecRows(x, &y, r0: r0, r1: r1); r0 = r1 }
            #expect(y == whole, "\(rows)x\(cols) in ranges of 3")
        }
    }
}
