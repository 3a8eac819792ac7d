#if canImport(Glibc)
import Glibc
#endif

/// The one monotonic clock (CLOCK_MONOTONIC: never jumps with the wall clock), for step
/// timings, page ages and the profiler.
enum MonotonicClock {
    /// Nanoseconds since an arbitrary fixed point.
    @inline(__always) static func nanoseconds() -> UInt64 {
        var ts = timespec()
        clock_gettime(CLOCK_MONOTONIC, &ts)
        return UInt64(ts.tv_sec) &* 1_000_000_000 &+ UInt64(ts.tv_nsec)
    }

    /// Seconds since the same point.
    @inline(__always) static func seconds() -> Double { Double(nanoseconds()) * 1e-9 }
}
