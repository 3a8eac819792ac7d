#if canImport(Glibc)
import Glibc
#endif

// Phase profiler for performance work (PST_PROFILE=1 in the environment; off by default, when
// each Prof.time is one branch). The totals are not synchronized: phases timed on several
// threads at once can lose updates, so read them as estimates. LlamaBenchTests prints them.
enum Prof {
    nonisolated(unsafe) static let enabled: Bool = getenv("PST_PROFILE") != nil
    nonisolated(unsafe) static var ns = [Int](repeating: 0, count: 32)
    static let names = ["baseFwd", "loraDropout", "loraCopyX", "loraFwdGemm", "baseBwdDx", "loraBwdGemm", "loraBwdMaskAdd",
                        "loraBwdAlloc", "attnFwd", "attnBwd", "elemFwd", "elemBwd", "lmHeadFwd", "crossEnt", "lmHeadBwd", "other",
                        "loraBwd_g", "loraBwd_dB", "loraBwd_dA", "loraBwd_dx", "biasGrad", "embed", "ropeBwd", "layerFwdTotal", "layerBwdTotal", "linFwdTotal", "linBwdTotal", "recomputeFwd"]
    @inline(__always) static func now() -> Int {
        Int(MonotonicClock.nanoseconds())
    }
    @inline(__always) static func time<R, E: Error>(_ i: Int, _ body: () throws(E) -> R) throws(E) -> R {
        if !enabled { return try body() }
        let t0 = now(); defer { ns[i] += now() - t0 }
        return try body()
    }
    static func reset() { for i in ns.indices { ns[i] = 0 } }
    static func report() -> String {
        var s = ""
        for (i, n) in names.enumerated() where ns[i] > 0 { s += "  \(n): \(ns[i] / 1_000_000) ms\n" }
        return s
    }
}
