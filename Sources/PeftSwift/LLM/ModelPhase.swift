/// The profiler's phases (Core/Profile.swift, PST_PROFILE=1) that the model's code times, by
/// name: each is a slot of `Prof.ns`, reported under `Prof.names[rawValue]`.
enum ModelPhase: Int {
    case attentionForward = 8      // "attnFwd"
    case attentionBackward = 9     // "attnBwd"
    case layerForward = 23         // "layerFwdTotal"
    case layerBackward = 24        // "layerBwdTotal"
    case projectionForward = 25    // "linFwdTotal"
    case projectionBackward = 26   // "linBwdTotal"
    case recomputeForward = 27     // "recomputeFwd"

    /// Runs `body`, adding its time to this phase when profiling is on (otherwise one branch).
    @inline(__always) func time<R, E: Error>(_ body: () throws(E) -> R) throws(E) -> R {
        try Prof.time(rawValue, body)
    }
}
