import Dispatch
import Synchronization
import CPeftSwift
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

// MARK: - A persistent team for many short parallel phases

/// `Threads.count` threads — the caller plus persistent workers — that run one body together,
/// with barriers inside it: for work made of many phases of a few microseconds each (one
/// decoded token: ~150 phases), where a Dispatch call per phase would cost more than the phase.
/// Workers spin between bodies for a short while (`spinLimit` pauses), then sleep on a
/// condition variable; `run` wakes them. One `run` at a time (the model is not thread-safe).
final class WorkerTeam {
    /// Threads in the team, the caller included (≥ 1).
    let size: Int
    private let generation = Atomic<Int>(0)
    private let finished = Atomic<Int>(0)
    private let arrived = Atomic<Int>(0)
    private let barrierGeneration = Atomic<Int>(0)
    private let stopping = Atomic<Bool>(false)
    private nonisolated(unsafe) var body: ((Int) -> Void)? = nil
    private let lock: UnsafeMutablePointer<pthread_mutex_t>
    private let wake: UnsafeMutablePointer<pthread_cond_t>
    private var threads: [pthread_t] = []
    /// The process that made the workers (a child of fork() has none of them).
    let pid = getpid()
    /// Pauses a worker spins waiting for the next body before it sleeps (~50–150 µs).
    static let spinLimit = 1 << 11

    private init(size: Int) {
        self.size = size
        lock = .allocate(capacity: 1); pthread_mutex_init(lock, nil)
        wake = .allocate(capacity: 1); pthread_cond_init(wake, nil)
        for tid in 1..<max(size, 1) {
            let box = Unmanaged.passRetained(WorkerStart(team: self, tid: tid)).toOpaque()
            var t = pthread_t()
            if pthread_create(&t, nil, { raw in
                let s = Unmanaged<WorkerStart>.fromOpaque(raw!).takeRetainedValue()
                s.team.workerLoop(s.tid)
                return nil
            }, box) == 0 {
                threads.append(t)
            } else {
                Unmanaged<WorkerStart>.fromOpaque(box).release()
            }
        }
    }

    private final class WorkerStart {
        unowned let team: WorkerTeam
        let tid: Int
        init(team: WorkerTeam, tid: Int) { self.team = team; self.tid = tid }
    }

    private nonisolated(unsafe) static var _shared: WorkerTeam? = nil
    private nonisolated(unsafe) static var _busy = false
    private static let _lock: UnsafeMutablePointer<pthread_mutex_t> = {
        let l = UnsafeMutablePointer<pthread_mutex_t>.allocate(capacity: 1)
        pthread_mutex_init(l, nil)
        return l
    }()
    /// A team of one (no workers): what a caller gets while the shared team is in use.
    private static let serial = WorkerTeam(size: 1)

    /// The shared team of `Threads.count` threads (made again when the count changed), reserved
    /// for the caller until `release`; while another caller holds it, a team of one (the body
    /// then runs on the caller alone, barriers are no-ops). Pair every call with `release`.
    static func acquire() -> WorkerTeam {
        pthread_mutex_lock(_lock)
        defer { pthread_mutex_unlock(_lock) }
        if let t = _shared, t.pid != getpid() {
            // a forked child: the workers were not copied (only the forking thread is); forget
            // them without joining
            _shared = nil
            _busy = false
        }
        if _busy { return serial }
        if let t = _shared, t.size == Threads.count, t.threads.count == t.size - 1 {
            _busy = true
            return t
        }
        _shared?.stop()
        _shared = nil
        let t = WorkerTeam(size: Threads.count)
        if t.threads.count != t.size - 1 { t.stop(); return serial }   // threads could not be made
        _shared = t
        _busy = true
        return t
    }

    /// Gives back a team from `acquire`.
    static func release(_ t: WorkerTeam) {
        if t === serial { return }
        pthread_mutex_lock(_lock)
        _busy = false
        pthread_mutex_unlock(_lock)
    }

    private func stop() {
        stopping.store(true, ordering: .sequentiallyConsistent)
        pthread_mutex_lock(lock)
        generation.wrappingAdd(1, ordering: .sequentiallyConsistent)
        pthread_cond_broadcast(wake)
        pthread_mutex_unlock(lock)
        for t in threads { pthread_join(t, nil) }
        threads = []
    }

    private func workerLoop(_ tid: Int) {
        var seen = 0
        while true {
            var spins = 0
            while generation.load(ordering: .acquiring) == seen {
                if spins < WorkerTeam.spinLimit {
                    pstshim_pause(); spins += 1
                } else {
                    pthread_mutex_lock(lock)
                    while generation.load(ordering: .acquiring) == seen { pthread_cond_wait(wake, lock) }
                    pthread_mutex_unlock(lock)
                }
            }
            seen = generation.load(ordering: .acquiring)
            if stopping.load(ordering: .acquiring) { return }
            body.unsafelyUnwrapped(tid)
            finished.wrappingAdd(1, ordering: .releasing)
        }
    }

    /// Runs body(tid) on every thread of the team (tid 0 is the caller) and returns when all
    /// have returned. Inside, `barrier()` waits for the whole team.
    func run(_ body: (Int) -> Void) {
        if size <= 1 { body(0); return }
        withoutActuallyEscaping(body) { b in
            self.body = b
            finished.store(0, ordering: .relaxed)
            pthread_mutex_lock(lock)
            generation.wrappingAdd(1, ordering: .releasing)
            pthread_cond_broadcast(wake)
            pthread_mutex_unlock(lock)
            b(0)
            var spins = 0
            while finished.load(ordering: .acquiring) != size - 1 {
                pstshim_pause(); spins += 1
                if spins & 1023 == 0 { sched_yield() }
            }
            self.body = nil
        }
    }

    /// Waits until every thread of the team has reached its barrier (inside `run` only).
    func barrier() {
        if size <= 1 { return }
        let g = barrierGeneration.load(ordering: .acquiring)
        if arrived.wrappingAdd(1, ordering: .acquiringAndReleasing).newValue == size {
            arrived.store(0, ordering: .relaxed)
            barrierGeneration.wrappingAdd(1, ordering: .releasing)
            return
        }
        var spins = 0
        while barrierGeneration.load(ordering: .acquiring) == g {
            pstshim_pause(); spins += 1
            if spins & 1023 == 0 { sched_yield() }
        }
    }

    /// The part of 0..<n that thread `tid` of the team takes (contiguous, in `unit` multiples
    /// but for the end).
    @inline(__always) func share(_ n: Int, _ tid: Int, unit: Int = 1) -> (Int, Int) {
        let units = (n + unit - 1) / unit
        return (min(n, units * tid / size * unit), min(n, units * (tid + 1) / size * unit))
    }
}
