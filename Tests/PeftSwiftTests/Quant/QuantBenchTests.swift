import Foundation
import Testing
@testable import PeftSwift

/// A quick timing of the 4-bit kernels (run only with PST_QUANT_BENCH=1, in release:
/// `PST_QUANT_BENCH=1 swift test -c release --filter QuantBench`). Prints the best of 5.
@Suite struct QuantBenchTests {
    static var enabled: Bool { ProcessInfo.processInfo.environment["PST_QUANT_BENCH"] == "1" }

    func best(_ reps: Int = 5, _ body: () -> Void) -> Double {
        var b = Double.infinity
        for _ in 0..<reps {
            let t = DispatchTime.now().uptimeNanoseconds
            body()
            b = min(b, Double(DispatchTime.now().uptimeNanoseconds - t) / 1e6)
        }
        return b
    }

    @Test(.enabled(if: enabled)) func timing() throws {
        for (rows, cols) in (ProcessInfo.processInfo.environment["PST_QUANT_BENCH_SMALL"] == "1" ? [(4096, 4096)] : [(4096, 4096), (4096, 11008)]) {
            let n = rows * cols
            var w = [Float](repeating: 0, count: n)
            var s: UInt32 = 1
            for i in 0..<n { s ^= s << 13; s ^= s >> 17; s ^= s << 5; w[i] = (Float(s >> 8) / Float(1 << 24) - 0.5) * 0.04 }
            var packed = [UInt8](repeating: 0, count: n / 2), absmax = [Float](repeating: 0, count: n / 64)
            var out = [Float](repeating: 0, count: n), dst = [Float](repeating: 0, count: n)
            let q = best { try! Quant4.quantize(w, dtype: .f32, count: n, blocksize: 64, type: .nf4, packed: &packed, absmax: &absmax) }
            let d = best { try! Quant4.dequantize(packed: packed, absmax: absmax, code: Codebooks.nf4, count: n, blocksize: 64, out: &out, dtype: .f32) }
            let m = best { w.withUnsafeBufferPointer { src in dst.withUnsafeMutableBufferPointer { _ = memcpy($0.baseAddress!, src.baseAddress!, n * 4) } } }
            let t = try QuantizedTensor(quantizing: w, dtype: .f32, shape: [rows, cols], blocksize: 64, type: .nf4, doubleQuant: true)
            let dq = best { out.withUnsafeMutableBytes { t.dequantize(into: $0.baseAddress!, dtype: .f32) } }
            let x = [Float](repeating: 0.5, count: cols)
            var y = [Float](repeating: 0, count: rows)
            let mv = best { t.matvec(x, &y, accumulate: false) }
            let chk = best { _ = w.withUnsafeBytes { firstNonFinite($0.baseAddress!, .f32, count: n) } }
            let kq = best { w.withUnsafeBytes { _ = Quant4._quantize($0.baseAddress!, dtype: .f32, count: n, blocksize: 64, table: .nf4, packed: &packed, absmax: &absmax) } }
            print(String(format: "  finiteness pass %.2f ms, quantize kernel alone %.2f ms", chk, kq))
            let nb = absmax.count
            let tm = best { _ = absmax.withUnsafeBufferPointer { TorchMean.mean($0.baseAddress!, count: nb) } }
            let dqs = best { _ = absmax.withUnsafeBufferPointer { try! NestedState(compressing: $0.baseAddress!, count: nb) } }
            let qt = best { _ = try! QuantizedTensor(quantizing: w, dtype: .f32, shape: [rows, cols], blocksize: 64, type: .nf4, doubleQuant: true) }
            print(String(format: "  double quant of %d absmax %.2f ms (torch mean %.3f ms); QuantizedTensor nf4+dq %.2f ms", nb, dqs, tm, qt))
            let qf = best { try! Quant4.quantize(w, dtype: .f32, count: n, blocksize: 64, type: .fp4, packed: &packed, absmax: &absmax) }
            print(String(format: "%dx%d nf4/64, %d threads: quantize %.2f ms (fp4 %.2f), dequantize %.2f ms (nested %.2f), memcpy of the fp32 output %.2f ms, matvec(nested) %.2f ms",
                         rows, cols, Threads.count, q, qf, d, dq, m, mv))
        }
    }
}
