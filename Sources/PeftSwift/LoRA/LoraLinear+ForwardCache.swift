// What a model does with the buffers a layer's forward keeps for its backward: frees them, or
// hands them on to the next layer to run (activation recomputation), and replays the dropout
// streams (recomputation draws the same masks again).

extension LoraLinear {
    /// Frees what forward kept for backward (activation recomputation keeps no per-layer cache).
    func releaseForwardCache() {
        cacheX = nil
        cacheDropped = [:]
        cacheMasks = [:]
        cacheT = [:]
        cacheG = nil
        invalidateCache()
    }

    /// Recomputation: hands the buffers forward kept for backward to `other` (the layer at the
    /// same position in the next layer to run, which overwrites them), so that they are not
    /// freed and page-faulted in again for every layer. This layer's cache is invalidated.
    /// Adapters are matched by position; `other === self` only invalidates.
    func handOverForwardCache(to other: LoraLinear) {
        defer { invalidateCache() }
        if other === self { return }
        other.cacheX = cacheX ?? other.cacheX
        other.cacheG = cacheG ?? other.cacheG
        for (a, b) in zip(adapters, other.adapters) {
            let ia = ObjectIdentifier(a), ib = ObjectIdentifier(b)
            if let d = cacheDropped[ia] { other.cacheDropped[ib] = d }
            if let mk = cacheMasks[ia] { other.cacheMasks[ib] = mk }
            if let t = cacheT[ia] { other.cacheT[ib] = t }
        }
        other.invalidateCache()
        cacheX = nil
        cacheG = nil
        cacheDropped = [:]
        cacheMasks = [:]
        cacheT = [:]
    }

    /// The dropout generators of every adapter (recomputation replays the same masks).
    var rngStates: [SplitMix64] { adapters.map { $0.rng } }

    func restoreRng(_ states: [SplitMix64]) {
        for (a, s) in zip(adapters, states) { a.rng = s }
    }
}
