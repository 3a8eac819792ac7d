#if canImport(Glibc)
import Glibc
#endif

/// AdamW over float32 parameters and gradients owned by the caller.
///
/// Two state formats:
/// - `.float32`: `torch.optim.AdamW` (torch 2.13, CPU) — decoupled weight decay first, moments
///   m, v in float32, bias correction, eps added after √ of the bias-corrected v, amsgrad off.
///   m and v equal torch's bit for bit; parameters differ from torch only through torch's
///   not-correctly-rounded float32 `sqrt` (a few ulp; see `TorchAdamWConstants`).
/// - `.blockwise8bit(minBlockwiseSize:)`: `bitsandbytes.optim.AdamW8bit` (0.50.2, CPU):
///   parameters with at least `minBlockwiseSize` (4096) elements keep m and v as 8-bit codes in
///   blocks of 256 with a float32 absmax per block (the same bytes bitsandbytes holds);
///   smaller parameters keep float32 state and follow bitsandbytes' 32-bit Adam kernel, whose
///   operation order differs from torch's (see `BnbAdam32Constants`, `Bnb8bitConstants`).
///
/// State lives in heap memory or in a `Pager` (`OptimizerStorage.paged`): then each step works
/// chunk by chunk (whole 256-element blocks), pinning one chunk's state while prefetching the
/// next; paged and unpaged runs give bit-identical parameters and state.
///
/// Every registered parameter is updated by every `step()`, each with its own step count (a
/// parameter registered later starts at step 1, as a new torch state would). The caller keeps
/// the parameter and gradient memory alive and unmoved while the optimizer lives, and must not
/// change it during a call. Not thread-safe: one call at a time.
public final class AdamW {
    /// How the moments are stored.
    public enum StateFormat: Equatable, Sendable {
        case float32
        case blockwise8bit(minBlockwiseSize: Int = 4096)
    }

    enum Layout: UInt32 { case torchFP32 = 0, bnbFP32 = 1, bnb8bit = 2 }

    final class Param {
        let p: UnsafeMutablePointer<Float>
        let g: UnsafeMutablePointer<Float>
        let count: Int
        let layout: Layout
        var step = 0
        /// fp32: [m, v]; 8-bit: [q1, q2, absmax1, absmax2]
        let blobs: [StateBlob]

        init(p: UnsafeMutablePointer<Float>, g: UnsafeMutablePointer<Float>, count: Int, layout: Layout,
             storage: OptimizerStorage) throws(PSTError) {
            self.p = p
            self.g = g
            self.count = count
            self.layout = layout
            if layout == .bnb8bit {
                let nb = (count + 255) / 256
                blobs = [try StateBlob(bytes: count, storage: storage), try StateBlob(bytes: count, storage: storage),
                         try StateBlob(bytes: nb * 4, storage: storage), try StateBlob(bytes: nb * 4, storage: storage)]
            } else {
                blobs = [try StateBlob(bytes: count * 4, storage: storage), try StateBlob(bytes: count * 4, storage: storage)]
            }
        }

        /// Byte range of blob `k` for elements [lo, hi) (blocks of 256 for 8-bit absmax).
        func byteRange(_ k: Int, _ lo: Int, _ hi: Int) -> (Int, Int) {
            switch layout {
            case .torchFP32, .bnbFP32: return (lo * 4, (hi - lo) * 4)
            case .bnb8bit:
                if k < 2 { return (lo, hi - lo) }
                let b0 = lo / 256, b1 = (hi + 255) / 256
                return (b0 * 4, (b1 - b0) * 4)
            }
        }
    }

    public var hyperparameters: AdamWHyperparameters
    public let stateFormat: StateFormat
    public let storage: OptimizerStorage
    var params: [Param] = []

    /// Creates an optimizer with no parameters.
    /// - Throws: `PST_ERR_INVALID_ARG` for invalid hyperparameters or `minBlockwiseSize` < 1.
    public init(_ hyperparameters: AdamWHyperparameters = .init(), stateFormat: StateFormat = .float32,
                storage: OptimizerStorage = .memory) throws(PSTError) {
        try hyperparameters.validate()
        if case .blockwise8bit(let m) = stateFormat, m < 1 {
            throw .invalidArgument("minBlockwiseSize (\(m)) must be >= 1")
        }
        self.hyperparameters = hyperparameters
        self.stateFormat = stateFormat
        self.storage = storage
    }

    /// The learning rate used by the next `step()` (set it from an `LRSchedule`).
    public var learningRate: Double {
        get { hyperparameters.learningRate }
        set { hyperparameters.learningRate = newValue }
    }

    /// Number of registered parameters.
    public var parameterCount: Int { params.count }

    /// Steps taken by parameter `index` (0 before its first step).
    public func stepCount(ofParameter index: Int) throws(PSTError) -> Int {
        guard index >= 0, index < params.count else {
            throw .invalidArgument("index (\(index)) must be in 0..<\(params.count)")
        }
        return params[index].step
    }

    /// Registers a parameter of `count` floats and its gradient (same count), both owned by the
    /// caller. Returns the parameter's index. The state starts at zero.
    /// - Throws: `PST_ERR_INVALID_ARG` if `count` ≤ 0 or the two ranges overlap;
    ///   `PST_ERR_EXISTS` if either overlaps a registered parameter or gradient;
    ///   `PST_ERR_OUT_OF_MEMORY` if the state cannot be allocated.
    @discardableResult
    public func register(parameter: UnsafeMutablePointer<Float>, gradient: UnsafeMutablePointer<Float>,
                         count: Int) throws(PSTError) -> Int {
        guard count > 0 else { throw .invalidArgument("count (\(count)) must be > 0") }
        guard count <= Int.max / 8 else { throw .invalidArgument("count (\(count)) is too large") }
        func overlaps(_ a: UnsafeMutablePointer<Float>, _ b: UnsafeMutablePointer<Float>, _ na: Int, _ nb: Int) -> Bool {
            a < b + nb && b < a + na
        }
        guard !overlaps(parameter, gradient, count, count) else {
            throw .invalidArgument("parameter and gradient memory overlap")
        }
        for (k, q) in params.enumerated() {
            for x in [parameter, gradient] where overlaps(x, q.p, count, q.count) || overlaps(x, q.g, count, q.count) {
                throw .exists("memory overlaps registered parameter \(k) or its gradient")
            }
        }
        let layout: Layout
        switch stateFormat {
        case .float32: layout = .torchFP32
        case .blockwise8bit(let minSize): layout = count < minSize ? .bnbFP32 : .bnb8bit
        }
        params.append(try Param(p: parameter, g: gradient, count: count, layout: layout, storage: storage))
        return params.count - 1
    }

    /// Sets every registered gradient to zero.
    public func zeroGrad() {
        for q in params { q.g.update(repeating: 0, count: q.count) }
    }

    // MARK: - Step

    /// Elements per chunk for paged state: a multiple of 256 whose pinned pages fit in half the
    /// budget (the other half takes the prefetch of the next chunk), or, for small budgets, in
    /// the whole budget (prefetch then finds little room). A range of B bytes pins at most
    /// ceil(B / pageSize) + 1 pages.
    func chunkElements(_ q: Param) throws(PSTError) -> Int { try chunkPlan(q).elements }

    /// The chunk size and whether there is room to prefetch the next chunk beside it (only when
    /// the chunk fits in half the budget: a prefetch in flight holds its pages, and with a
    /// whole-budget chunk it would leave the next pin no room).
    func chunkPlan(_ q: Param) throws(PSTError) -> (elements: Int, prefetch: Bool) {
        guard case .paged(let pager) = storage else { return (q.count, false) }
        let ps = pager.pageSize
        let budgetPages = pager.budget / ps
        func pages(_ e: Int) -> Int {
            var n = 0
            for k in q.blobs.indices {
                let (_, b) = q.byteRange(k, 0, e)
                n += (b + ps - 1) / ps + 1
            }
            return n
        }
        let perElement = q.layout == .bnb8bit ? 2 : 8
        for avail in [budgetPages / 2, budgetPages] {
            var e = min(q.count + 255, avail * ps / perElement) / 256 * 256
            while e >= 256 && pages(e) > avail { e -= max(256, e / 8 / 256 * 256) }
            if e >= 256 { return (min(e, q.count), avail < budgetPages) }
        }
        throw .outOfMemory("the pager's budget (\(pager.budget) bytes) is too small for this paged optimizer "
                           + "with pageSize \(ps): a chunk of 256 elements pins \(pages(256)) pages")
    }

    /// (param index, lo, hi) chunks of one pass over all parameters.
    func chunks() throws(PSTError) -> [(Int, Int, Int)] { try chunkPlans().chunks }

    /// The chunks of one pass, and whether every chunk leaves room to prefetch the next.
    func chunkPlans() throws(PSTError) -> (chunks: [(Int, Int, Int)], prefetch: Bool) {
        var out: [(Int, Int, Int)] = []
        var prefetchOK = true
        for (k, q) in params.enumerated() {
            let (e, pf) = try chunkPlan(q)
            prefetchOK = prefetchOK && pf
            var lo = 0
            while lo < q.count {
                let hi = min(q.count, lo + e)
                out.append((k, lo, hi))
                lo = hi
            }
        }
        return (out, prefetchOK)
    }

    /// Pins the state of elements [lo, hi) of `q`; returns the blob addresses (already offset).
    func pin(_ q: Param, _ lo: Int, _ hi: Int, forWriting: Bool = true) throws(PSTError) -> [UnsafeMutableRawPointer] {
        var ptrs: [UnsafeMutableRawPointer] = []
        ptrs.reserveCapacity(q.blobs.count)
        do throws(PSTError) {
            for k in q.blobs.indices {
                let (o, n) = q.byteRange(k, lo, hi)
                ptrs.append(try q.blobs[k].acquire(o, n, forWriting: forWriting))
            }
        } catch {
            for k in 0..<ptrs.count {
                let (o, n) = q.byteRange(k, lo, hi)
                q.blobs[k].release(o, n)
            }
            throw error
        }
        return ptrs
    }

    func unpin(_ q: Param, _ lo: Int, _ hi: Int) {
        for k in q.blobs.indices {
            let (o, n) = q.byteRange(k, lo, hi)
            q.blobs[k].release(o, n)
        }
    }

    func prefetch(_ q: Param, _ lo: Int, _ hi: Int) {
        for k in q.blobs.indices {
            let (o, n) = q.byteRange(k, lo, hi)
            q.blobs[k].prefetch(o, n)
        }
    }

    /// Runs `kernel` on every chunk, pinning its state and prefetching the next chunk's.
    func forEachChunk(_ body: (Param, Int, Int, [UnsafeMutableRawPointer]) throws(PSTError) -> Void) throws(PSTError) {
        let (cs, prefetchOK) = try chunkPlans()
        for (idx, (k, lo, hi)) in cs.enumerated() {
            let q = params[k]
            let ptrs = try pin(q, lo, hi)
            if prefetchOK && idx + 1 < cs.count {
                let (k2, lo2, hi2) = cs[idx + 1]
                prefetch(params[k2], lo2, hi2)
            }
            defer { unpin(q, lo, hi) }
            try body(q, lo, hi, ptrs)
        }
    }

    /// One optimizer step over all registered parameters, reading their gradients.
    /// - Throws: `PST_ERR_INVALID_ARG` for invalid hyperparameters (e.g. a negative learning
    ///   rate set through `learningRate`); with paged storage, the pager's errors
    ///   (`PST_ERR_OUT_OF_MEMORY`, `PST_ERR_IO`, `PST_ERR_CORRUPT`). A step that fails part way has
    ///   updated the chunks before the failure (their step count is advanced only at the end).
    public func step() throws(PSTError) { try step(reference: false) }

    /// The same step computed with the scalar reference kernels (tests compare the two).
    func referenceStep() throws(PSTError) { try step(reference: true) }

    /// One pass over every chunk with the fast kernels or their reference twins.
    func step(reference: Bool) throws(PSTError) {
        try hyperparameters.validate()
        let h = hyperparameters
        try forEachChunk { q, lo, hi, ptrs throws(PSTError) in
            let t = q.step + 1
            let n = hi - lo
            let p = q.p + lo, g = UnsafePointer(q.g + lo)
            switch q.layout {
            case .torchFP32:
                let (m, v) = (ptrs[0].assumingMemoryBound(to: Float.self), ptrs[1].assumingMemoryBound(to: Float.self))
                let k = TorchAdamWConstants(h, step: t)
                if reference { torchAdamWReference(p, g, m, v, n, k) } else { torchAdamWKernel(p, g, m, v, n, k) }
            case .bnbFP32:
                let (m, v) = (ptrs[0].assumingMemoryBound(to: Float.self), ptrs[1].assumingMemoryBound(to: Float.self))
                let k = BnbAdam32Constants(h, step: t)
                if reference { bnbAdam32Reference(p, g, m, v, n, k) } else { bnbAdam32Kernel(p, g, m, v, n, k) }
            case .bnb8bit:
                let (s1, s2) = (ptrs[0].assumingMemoryBound(to: UInt8.self), ptrs[1].assumingMemoryBound(to: UInt8.self))
                let (a1, a2) = (ptrs[2].assumingMemoryBound(to: Float.self), ptrs[3].assumingMemoryBound(to: Float.self))
                let k = Bnb8bitConstants(h, step: t)
                if reference { bnbAdam8bitReference(p, g, s1, s2, a1, a2, n, k) } else { bnbAdam8bitKernel(p, g, s1, s2, a1, a2, n, k) }
            }
        }
        for q in params { q.step += 1 }
    }

    /// Copies the state of parameter `index`, blob by blob: float32 layouts give [m, v] (as
    /// float32 bytes); 8-bit gives [state1 codes, state2 codes, absmax1, absmax2]. For tests
    /// and inspection.
    public func stateTensors(ofParameter index: Int) throws(PSTError) -> [[UInt8]] {
        guard index >= 0, index < params.count else {
            throw .invalidArgument("index (\(index)) must be in 0..<\(params.count)")
        }
        let q = params[index]
        var out = q.blobs.map { [UInt8](repeating: 0, count: $0.byteCount) }
        try copyState(q) { k, off, src, n in
            out[k].withUnsafeMutableBytes { $0.baseAddress!.advanced(by: off).copyMemory(from: src, byteCount: n) }
        }
        return out
    }

    /// Visits the state of `q` chunk by chunk: (blob, byte offset, bytes, count).
    func copyState(_ q: Param, _ visit: (Int, Int, UnsafeRawPointer, Int) throws(PSTError) -> Void) throws(PSTError) {
        let e = try chunkElements(q)
        var lo = 0
        while lo < q.count {
            let clo = lo, hi = min(q.count, lo + e)
            lo = hi
            let ptrs = try pin(q, clo, hi, forWriting: false)
            defer { unpin(q, clo, hi) }
            for k in q.blobs.indices {
                // Chunks are whole 256-element blocks, so absmax ranges do not overlap either.
                let (o, n) = q.byteRange(k, clo, hi)
                try visit(k, o, UnsafeRawPointer(ptrs[k]), n)
            }
        }
    }

    /// Writes into the state of `q` chunk by chunk: `fill(blob, byte offset, destination, bytes)`.
    func fillState(_ q: Param, _ fill: (Int, Int, UnsafeMutableRawPointer, Int) throws(PSTError) -> Void) throws(PSTError) {
        let e = try chunkElements(q)
        var lo = 0
        while lo < q.count {
            let clo = lo, hi = min(q.count, lo + e)
            lo = hi
            let ptrs = try pin(q, clo, hi, forWriting: true)
            defer { unpin(q, clo, hi) }
            for k in q.blobs.indices {
                let (o, n) = q.byteRange(k, clo, hi)
                try fill(k, o, ptrs[k], n)
            }
        }
    }
}
