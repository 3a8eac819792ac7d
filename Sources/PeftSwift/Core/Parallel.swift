import Dispatch
#if canImport(Glibc)
import Glibc
#endif

/// How many threads peftswift's kernels use (`pst_set_num_threads`). Defaults to the number of
/// online CPUs. Kernels split work into at most this many contiguous chunks.
public enum Threads {
    nonisolated(unsafe) private static var _count: Int = max(1, Int(sysconf(Int32(_SC_NPROCESSORS_ONLN))))

    /// The number of online CPUs.
    public static var available: Int { max(1, Int(sysconf(Int32(_SC_NPROCESSORS_ONLN)))) }

    /// Current thread count (≥ 1).
    public static var count: Int {
        get { _count }
        set { _count = max(1, newValue) }
    }
}

/// Calls `body(lo, hi)` on disjoint chunks that cover `0..<n`, in parallel when it pays.
/// `grain` is the smallest chunk worth a thread. Chunks are contiguous and at most
/// `Threads.count` of them run; the results do not depend on the thread count when `body`
/// writes only its own range.
@inline(__always)
func parallelChunks(_ n: Int, grain: Int = 1, _ body: (Int, Int) -> Void) {
    if n <= 0 { return }
    let t = min(Threads.count, max(1, n / max(grain, 1)))
    if t <= 1 { body(0, n); return }
    withoutActuallyEscaping(body) { body in
        DispatchQueue.concurrentPerform(iterations: t) { i in
            let lo = n * i / t, hi = n * (i + 1) / t
            if lo < hi { body(lo, hi) }
        }
    }
}
