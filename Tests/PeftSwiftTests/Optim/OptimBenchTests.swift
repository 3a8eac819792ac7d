import Testing
import Foundation
@testable import PeftSwift

/// Speed check against bench/optim_bench.py (same tensor sizes). Runs only with PST_BENCH=1:
///     PST_BENCH=1 swift test -c release -Xswiftc -enable-testing --filter OptimBench
@Suite struct OptimBenchTests {
    @Test(.enabled(if: ProcessInfo.processInfo.environment["PST_BENCH"] == "1"))
    func adamWStepSpeed() throws {
        let sizes = [Int](repeating: 1 << 21, count: 4)
        for (label, format, paged) in [("peftswift AdamW float32", AdamW.StateFormat.float32, false),
                                       ("peftswift AdamW 8-bit blockwise", .blockwise8bit(), false),
                                       ("peftswift AdamW float32, paged (budget 1/4)", .float32, true)] {
            let m = try TestModel(sizes: sizes)
            let storage: OptimizerStorage = paged
                ? .paged(try Pager(budget: sizes.reduce(0, +) * 8 / 4, pageSize: 1 << 20)) : .memory
            let o = try AdamW(.init(), stateFormat: format, storage: storage)
            try m.register(o)
            m.setGradients(step: 1)
            for _ in 0..<3 { try o.step() }
            var ts: [Double] = []
            for _ in 0..<20 {
                let t0 = DispatchTime.now().uptimeNanoseconds
                try o.step()
                ts.append(Double(DispatchTime.now().uptimeNanoseconds - t0) / 1e6)
            }
            ts.sort()
            print(String(format: "%-45@ median %8.2f ms/step (%.1f M params, %d threads)",
                         label as NSString, ts[ts.count / 2], Double(sizes.reduce(0, +)) / 1e6, Threads.count))
        }
    }
}
