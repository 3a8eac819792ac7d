#if canImport(Glibc)
import Glibc
#endif

/// The phases the profiler times, by name (the slot of each in `Prof.ns` is its raw value).
enum ProfPhase: Int, CaseIterable {
    // LoRA layers (LoRA/LoraLinear.swift, LoraLinear+Backward.swift)
    case baseForward = 0, loraDropout, loraCopyX, loraForwardGemm, baseBackwardDx
    case loraBackwardMaskAdd = 6, loraBackwardAlloc = 7
    case loraBackwardG = 16, loraBackwardDB, loraBackwardDA
    // the model (LLM/)
    case attentionForward = 8, attentionBackward = 9
    case layerForward = 23, layerBackward, projectionForward, projectionBackward, recomputeForward

    /// The name the report prints.
    var name: String {
        switch self {
        case .baseForward: return "baseFwd"
        case .loraDropout: return "loraDropout"
        case .loraCopyX: return "loraCopyX"
        case .loraForwardGemm: return "loraFwdGemm"
        case .baseBackwardDx: return "baseBwdDx"
        case .loraBackwardMaskAdd: return "loraBwdMaskAdd"
        case .loraBackwardAlloc: return "loraBwdAlloc"
        case .loraBackwardG: return "loraBwd_g"
        case .loraBackwardDB: return "loraBwd_dB"
        case .loraBackwardDA: return "loraBwd_dA"
        case .attentionForward: return "attnFwd"
        case .attentionBackward: return "attnBwd"
        case .layerForward: return "layerFwdTotal"
        case .layerBackward: return "layerBwdTotal"
        case .projectionForward: return "linFwdTotal"
        case .projectionBackward: return "linBwdTotal"
        case .recomputeForward: return "recomputeFwd"
        }
    }

    /// Runs `body`, adding its time to this phase when profiling is on (otherwise one branch).
    @inline(__always) func time<R, E: Error>(_ body: () throws(E) -> R) throws(E) -> R {
        try Prof.time(self, body)
    }
}

// Phase profiler for performance work (PST_PROFILE=1 in the environment; off by default, when
// each Prof.time is one branch). The totals are not synchronized: phases timed on several
// threads at once can lose updates, so read them as estimates. LlamaBenchTests prints them.
enum Prof {
    nonisolated(unsafe) static let enabled: Bool = getenv("PST_PROFILE") != nil
    nonisolated(unsafe) static var ns = [Int](repeating: 0, count: 32)
    @inline(__always) static func now() -> Int {
        Int(MonotonicClock.nanoseconds())
    }
    @inline(__always) static func time<R, E: Error>(_ phase: ProfPhase, _ body: () throws(E) -> R) throws(E) -> R {
        if !enabled { return try body() }
        let t0 = now(); defer { ns[phase.rawValue] += now() - t0 }
        return try body()
    }
    /// Adds `nanoseconds` to `phase` (for a phase measured around code that cannot be a closure).
    @inline(__always) static func add(_ phase: ProfPhase, _ nanoseconds: Int) { ns[phase.rawValue] += nanoseconds }
    static func reset() { for i in ns.indices { ns[i] = 0 } }
    static func report() -> String {
        var s = ""
        for p in ProfPhase.allCases where ns[p.rawValue] > 0 { s += "  \(p.name): \(ns[p.rawValue] / 1_000_000) ms\n" }
        return s
    }
}
