import Foundation
import Testing
@testable import PeftSwift

/// One QLoRA training step (loss + backward) at SmolLM2-135M size with random weights
/// (NF4 + double quant base, LoRA r 16 on all 7 projections), batch 4 × 256 tokens.
/// Runs only with PST_BENCH=1:
///     PST_BENCH=1 swift test -c release -Xswiftc -enable-testing --filter LlamaBench
@Suite struct LlamaBenchTests {
    @Test(.enabled(if: ProcessInfo.processInfo.environment["PST_BENCH"] == "1"))
    func smolLM2Step() throws {
        let c = ModelConfig.smolLM2_135M
        var g = SplitMix64(seed: 1)
        let t0 = DispatchTime.now().uptimeNanoseconds
        let quantize = ProcessInfo.processInfo.environment["PST_BENCH_DENSE"] != "1"
        let m = try LanguageModel(config: c, options: quantize ? .qlora : .dense) { (name: String, shape: [Int], dst: UnsafeMutableBufferPointer<Float>) throws(PSTError) in
            let s = name.hasSuffix("norm.weight") ? 0 : (name.contains("embed") ? 0.05 : (3 / Float(shape.last!)).squareRoot())
            for i in 0..<dst.count { dst[i] = name.hasSuffix("norm.weight") ? 1 : g.uniform(-s, s) }
        }
        try m.addAdapter("default", config: LoraConfig(r: 16, alpha: 32, dropout: 0.05))
        for t in m.trainableParameters() where t.name.contains("lora_B") {
            for i in 0..<t.parameter.count { t.parameter[i] = 0.01 * g.uniform(-1, 1) }
        }
        let load = Double(DispatchTime.now().uptimeNanoseconds - t0) / 1e9
        let (b, t) = (4, 256)
        let ids = (0..<(b * t)).map { _ in Int32(g.next() % UInt64(c.vocab)) }
        print(String(format: "SmolLM2-135M load+%@: %.2f s, %d threads", quantize ? "quantize" : "dense", load, Threads.count))
        for recompute in [false, true] {
            m.recomputeActivations = recompute
            var fw: [Double] = [], bw: [Double] = []
            for _ in 0..<3 {
                Prof.reset()
                m.zeroGrad()
                let a = DispatchTime.now().uptimeNanoseconds
                let loss = try m.loss(ids: ids, labels: ids, batch: b, seqLen: t)
                let mid = DispatchTime.now().uptimeNanoseconds
                try m.backward()
                let e = DispatchTime.now().uptimeNanoseconds
                fw.append(Double(mid - a) / 1e9); bw.append(Double(e - mid) / 1e9)
                #expect(loss.isFinite)
                if Prof.enabled { print("profile (step \(fw.last! + bw.last!)):\n" + Prof.report()) }
            }
            let best = zip(fw, bw).map { $0 + $1 }.min()!
            print(String(format: "SmolLM2-135M %@ step (B=%d, T=%d, recompute=%@): forward %.2f s, backward %.2f s, best step %.2f s",
                         quantize ? "QLoRA" : "LoRA fp32", b, t, recompute ? "yes" : "no", fw.min()!, bw.min()!, best))
        }
    }
}

extension LlamaBenchTests {
    /// GEMM throughput at the step's shapes (M = 1024 tokens): dense and NF4-panel B.
    @Test(.enabled(if: ProcessInfo.processInfo.environment["PST_BENCH"] == "1"))
    func gemmShapes() throws {
        let m = 1024
        for (n, k) in [(576, 576), (192, 576), (1536, 576), (576, 1536), (576, 192), (49152, 576)] {
            let a = try AlignedBuffer<Float>(count: m * k), w = try AlignedBuffer<Float>(count: n * k), c = try AlignedBuffer<Float>(count: m * n)
            for i in 0..<a.count { a[i] = Float(i % 7) * 0.1 }
            for i in 0..<w.count { w[i] = Float(i % 5) * 0.1 }
            let q = try QuantizedTensor(quantizing: UnsafeRawPointer(w.baseAddress), dtype: .f32, shape: [n, k], doubleQuant: true)
            for quant in [false, true] {
                var best = Double.infinity
                for _ in 0..<3 {
                    let t0 = DispatchTime.now().uptimeNanoseconds
                    if quant {
                        GEMM.sgemm(transA: false, transB: true, m: m, n: n, k: k, alpha: 1, a: a.baseAddress, lda: k,
                                   b: LoraLinear.panels(q), beta: 0, c: c.baseAddress, ldc: n)
                    } else {
                        GEMM.sgemm(transA: false, transB: true, m: m, n: n, k: k, alpha: 1, a: a.baseAddress, lda: k,
                                   b: w.baseAddress, ldb: k, beta: 0, c: c.baseAddress, ldc: n)
                    }
                    best = min(best, Double(DispatchTime.now().uptimeNanoseconds - t0) / 1e9)
                }
                print(String(format: "GEMM %d×%d×%d %@: %.1f ms, %.1f GFLOPS", m, n, k, quant ? "nf4" : "fp32", best * 1e3,
                             2 * Double(m * n * k) / best / 1e9))
            }
        }
    }
}
