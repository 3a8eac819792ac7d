import Dispatch
#if canImport(Glibc)
import Glibc
#endif

/// Counters of a `Pager` (a snapshot; see `Pager.stats`).
public struct PagerStats: Equatable, Sendable {
    /// The budget at the time of the snapshot.
    public var budgetBytes: Int
    /// Page size of the pager.
    public var pageSize: Int
    /// Bytes of page memory mapped right now (whole pages, including pages being read in).
    public var residentBytes: Int
    /// The largest `residentBytes` seen.
    public var peakResidentBytes: Int
    /// Bytes of resident pages currently pinned by an acquire.
    public var pinnedBytes: Int
    /// Pages written to the spill file, and their bytes (a page's valid bytes, not its padding).
    public var pagesSpilled: Int
    public var bytesSpilled: Int
    /// Pages evicted from memory, including clean ones whose disk copy was still valid and
    /// needed no write.
    public var pagesEvicted: Int
    /// Pages read back from the spill file, and their bytes.
    public var pagesReadBack: Int
    public var bytesReadBack: Int
    /// Wall time spent in spill-file writes and reads, checksums included (all threads).
    public var ioSeconds: Double
    /// Bytes of the spill file currently holding pages of live buffers.
    public var spillFileBytes: Int
}

/// Bookkeeping of one page (guarded by the pager's lock).
struct PageMeta {
    enum State: UInt8 {
        /// Never mapped: reads as zeros, costs no memory and no disk.
        case untouched
        /// Mapped; `dirty` says whether the spill file's copy (if any) is stale.
        case resident
        /// Not mapped; the content is in spill slot `slot` with checksum `crc`.
        case spilled
        /// Being read in / written out by some thread (outside the lock); wait for it.
        case loading, writing
    }
    var state: State = .untouched
    var pins: Int32 = 0
    var dirty = false
    var slot = -1
    var crc: UInt32 = 0
    var lastUse: UInt64 = 0
}

/// One allocation: a reserved, contiguous range of virtual addresses whose pages are mapped
/// (made resident) and unmapped (evicted) individually.
final class BufferRecord {
    let id: Int
    let base: UnsafeMutableRawPointer
    let byteCount: Int
    let mappedBytes: Int
    var pages: [PageMeta]
    var freed = false

    init(id: Int, base: UnsafeMutableRawPointer, byteCount: Int, mappedBytes: Int, pageCount: Int) {
        self.id = id
        self.base = base
        self.byteCount = byteCount
        self.mappedBytes = mappedBytes
        self.pages = [PageMeta](repeating: PageMeta(), count: pageCount)
    }
}

/// A pthread mutex and condition variable at a fixed address (Swift may move stored structs).
final class PagerLock {
    let mutex = UnsafeMutablePointer<pthread_mutex_t>.allocate(capacity: 1)
    let cond = UnsafeMutablePointer<pthread_cond_t>.allocate(capacity: 1)
    init() {
        pthread_mutex_init(mutex, nil)
        pthread_cond_init(cond, nil)
    }
    deinit {
        pthread_cond_destroy(cond)
        pthread_mutex_destroy(mutex)
        mutex.deallocate()
        cond.deallocate()
    }
    @inline(__always) func lock() { pthread_mutex_lock(mutex) }
    @inline(__always) func unlock() { pthread_mutex_unlock(mutex) }
    /// Releases the lock, sleeps until a broadcast, re-takes the lock.
    @inline(__always) func wait() { pthread_cond_wait(cond, mutex) }
    @inline(__always) func broadcast() { pthread_cond_broadcast(cond) }
}

@inline(__always) func monotonicNanos() -> UInt64 { MonotonicClock.nanoseconds() }

/// A RAM budget for large buffers, with least-recently-used spilling to disk.
///
/// Buffers allocated from a pager (`allocate(bytes:)`) are split into pages of `pageSize` bytes.
/// Memory is touched only through explicit `acquire`/`release` (pin/unpin) of a byte range:
/// the returned pointer is valid until the matching release. Paging never relies on page
/// faults: a page is either mapped (resident) or not mapped at all (`PROT_NONE`), and only
/// `acquire` maps it.
///
/// **Budget.** Resident pages (whole pages, also a buffer's partial last page) never exceed
/// the budget as a result of a successful call. When an acquire needs a page that is not
/// resident and the budget is full, the least-recently-used *unpinned* pages are evicted:
/// written to the spill file (only if their content changed since it was last written) and
/// unmapped, which returns their memory to the system. A request that needs more pages than the
/// whole budget, or that cannot be satisfied because every other resident page is pinned,
/// fails with `PST_ERR_OUT_OF_MEMORY` and pins nothing. `setBudget` may shrink the budget
/// while buffers are in use; it evicts at once what it can (pinned pages stay until released,
/// and later acquires evict down to the budget).
///
/// **Integrity.** Every spilled page carries a CRC-32C of its bytes, kept in memory and
/// checked when the page is read back. A page whose spill copy was modified or truncated gives
/// `PST_ERR_CORRUPT` on every acquire of it; its data is never handed out.
///
/// **I/O failures.** If the spill file cannot be created (missing or unwritable directory) or a
/// write fails (disk full, EIO), the call that needed the eviction fails with `PST_ERR_IO`. The
/// page it tried to evict stays resident, unchanged and usable, and keeps its place in the LRU
/// order; nothing is pinned by the failed call. The budget is therefore not exceeded by an
/// acquire; after `setBudget` shrinks it, a failed eviction leaves `residentBytes` above the new
/// budget (that is the error's consequence) until a later eviction succeeds.
///
/// **Spill file.** One per pager, created on the first eviction in `spillDirectory`
/// (`$TMPDIR`, else `/tmp`) as an unnamed file (`O_TMPFILE`, or `mkstemp` + immediate `unlink`):
/// it disappears when the pager goes away and on process death. Slots of freed buffers are
/// reused; the file does not shrink.
///
/// **Threads.** All methods are thread-safe. Metadata is guarded by one mutex; checksums and
/// file I/O run outside it, on pages marked in transit (other threads wanting such a page wait).
/// `prefetch` reads pages in on a Dispatch worker.
///
/// A buffer keeps its pager alive; free buffers (or drop them) to release their memory.
public final class Pager {
    /// Bytes per page: a positive multiple of the system page size.
    public let pageSize: Int
    /// Where the spill file is created.
    public let spillDirectory: String

    let lock = PagerLock()
    var _budget: Int
    var buffers: [Int: BufferRecord] = [:]
    var nextBufferId = 1
    var tick: UInt64 = 0
    var spill: SpillFile?
    var freeSlots: [Int] = []
    var slotCount = 0
    var inTransit = 0
    var prefetchesInFlight = 0
    var residentBytes = 0
    var peakResidentBytes = 0
    var pagesSpilled = 0, bytesSpilled = 0, pagesEvicted = 0, pagesReadBack = 0, bytesReadBack = 0
    var ioNanos: UInt64 = 0
    /// Test hook: when non-zero, spill writes fail with this errno instead of writing.
    var _injectWriteErrno: Int32 = 0

    /// The system's page size (`sysconf(_SC_PAGESIZE)`).
    public static var systemPageSize: Int { Int(sysconf(Int32(_SC_PAGESIZE))) }

    /// Creates a pager.
    /// - Parameters:
    ///   - budget: bytes of page memory that may be resident at once; ≥ `pageSize`.
    ///   - pageSize: bytes per page, a positive multiple of `Pager.systemPageSize` (4 MiB default).
    ///   - spillDirectory: directory for the spill file; `nil` means `$TMPDIR`, else `/tmp`. It is
    ///     not touched until the first eviction (an unusable directory gives `PST_ERR_IO` then).
    /// - Throws: `PST_ERR_INVALID_ARG` for a bad budget, page size or empty directory name.
    public init(budget: Int, pageSize: Int = 4 << 20, spillDirectory: String? = nil) throws(PSTError) {
        let sys = Pager.systemPageSize
        guard pageSize > 0, pageSize % sys == 0 else {
            throw .invalidArgument("pageSize (\(pageSize)) must be a positive multiple of the system page size (\(sys))")
        }
        guard budget > 0 else { throw .invalidArgument("budget (\(budget)) must be > 0") }
        guard budget >= pageSize else {
            throw .invalidArgument("budget (\(budget)) must be at least one page (pageSize \(pageSize))")
        }
        var dir = spillDirectory
        if dir == nil, let t = getenv("TMPDIR") {
            let s = String(cString: t)
            if !s.isEmpty { dir = s }
        }
        let d = dir ?? "/tmp"
        guard !d.isEmpty else { throw .invalidArgument("spillDirectory (\"\") must name a directory") }
        self.pageSize = pageSize
        self.spillDirectory = d
        self._budget = budget
    }

    deinit {
        // Buffers hold strong references to their pager, so none is alive here.
        for (_, r) in buffers where !r.freed { munmap(r.base, r.mappedBytes) }
    }

    /// The RAM budget in bytes.
    public var budget: Int {
        lock.lock(); defer { lock.unlock() }
        return _budget
    }

    /// Changes the budget. Shrinking evicts least-recently-used unpinned pages until the
    /// resident bytes fit; pinned pages stay resident (and over budget) until released, after
    /// which acquires evict down to the budget.
    /// - Throws: `PST_ERR_INVALID_ARG` if `newBudget` < `pageSize`; `PST_ERR_IO` if an
    ///   eviction's write fails (the new budget is in force, the page stays resident).
    public func setBudget(_ newBudget: Int) throws(PSTError) {
        guard newBudget >= pageSize else {
            throw .invalidArgument("budget (\(newBudget)) must be > 0 and at least one page (pageSize \(pageSize))")
        }
        lock.lock(); defer { lock.unlock() }
        _budget = newBudget
        while residentBytes > _budget {
            if let (r, i) = pickVictim(protecting: nil, pages: 0..<0) {
                try evict(r, i)
            } else if inTransit > 0 {
                lock.wait()
            } else {
                break
            }
        }
    }

    /// A snapshot of the counters.
    public var stats: PagerStats {
        lock.lock(); defer { lock.unlock() }
        var pinned = 0
        for (_, r) in buffers { for p in r.pages where p.pins > 0 { pinned += pageSize } }
        return PagerStats(
            budgetBytes: _budget, pageSize: pageSize, residentBytes: residentBytes,
            peakResidentBytes: peakResidentBytes, pinnedBytes: pinned,
            pagesSpilled: pagesSpilled, bytesSpilled: bytesSpilled, pagesEvicted: pagesEvicted,
            pagesReadBack: pagesReadBack, bytesReadBack: bytesReadBack,
            ioSeconds: Double(ioNanos) / 1e9, spillFileBytes: (slotCount - freeSlots.count) * pageSize)
    }

    /// Resets `peakResidentBytes` to the current resident bytes.
    public func resetPeak() {
        lock.lock(); defer { lock.unlock() }
        peakResidentBytes = residentBytes
    }

    /// Allocates a buffer of `bytes` bytes (zero-filled). Only address space is reserved; pages
    /// take memory when first acquired, so a buffer may be far larger than the budget.
    /// - Throws: `PST_ERR_INVALID_ARG` if `bytes` ≤ 0; `PST_ERR_OUT_OF_MEMORY` if the address
    ///   space cannot be reserved.
    public func allocate(bytes: Int) throws(PSTError) -> PagedBuffer {
        guard bytes > 0 else { throw .invalidArgument("bytes (\(bytes)) must be > 0") }
        let (pages, o1) = (bytes / pageSize).addingReportingOverflow(bytes % pageSize == 0 ? 0 : 1)
        let (mapped, o2) = pages.multipliedReportingOverflow(by: pageSize)
        guard !o1, !o2 else { throw .outOfMemory("bytes (\(bytes)) overflow the address space") }
        let p = mmap(nil, mapped, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0)
        guard let p, p != UnsafeMutableRawPointer(bitPattern: -1) else {
            throw .outOfMemory("cannot reserve \(mapped) bytes of address space: \(SpillFile.describe(errno))")
        }
        lock.lock()
        let id = nextBufferId
        nextBufferId += 1
        let rec = BufferRecord(id: id, base: p, byteCount: bytes, mappedBytes: mapped, pageCount: pages)
        buffers[id] = rec
        lock.unlock()
        return PagedBuffer(pager: self, record: rec)
    }

    /// Blocks until every prefetch started so far has finished.
    public func waitForPrefetches() {
        lock.lock(); defer { lock.unlock() }
        while prefetchesInFlight > 0 { lock.wait() }
    }

    // MARK: - Internals (lock held unless stated)

    @inline(__always) func pageAddress(_ r: BufferRecord, _ i: Int) -> UnsafeMutableRawPointer {
        r.base + i * pageSize
    }

    /// Valid bytes of page `i` (the last page may be partial).
    @inline(__always) func pageLength(_ r: BufferRecord, _ i: Int) -> Int {
        min(pageSize, r.byteCount - i * pageSize)
    }

    @inline(__always) func touch() -> UInt64 {
        tick &+= 1
        return tick
    }

    /// Replaces page `i`'s memory by an inaccessible reservation, returning it to the system.
    func unmapPage(_ r: BufferRecord, _ i: Int) {
        _ = mmap(pageAddress(r, i), pageSize, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE | MAP_FIXED, -1, 0)
    }

    /// The least-recently-used resident unpinned page, not in `pages` of `protected`.
    func pickVictim(protecting protected: BufferRecord?, pages: Range<Int>) -> (BufferRecord, Int)? {
        var best: (BufferRecord, Int)? = nil
        var bestTick = UInt64.max
        for (_, r) in buffers {
            let prot = r === protected
            for i in r.pages.indices {
                let p = r.pages[i]
                if p.state == .resident, p.pins == 0, p.lastUse < bestTick, !(prot && pages.contains(i)) {
                    best = (r, i)
                    bestTick = p.lastUse
                }
            }
        }
        return best
    }

    /// Evicts resident unpinned page `i` of `r`. May drop and re-take the lock (for the write).
    func evict(_ r: BufferRecord, _ i: Int) throws(PSTError) {
        if !r.pages[i].dirty && r.pages[i].slot >= 0 {
            // The disk copy is current: no write needed.
            unmapPage(r, i)
            r.pages[i].state = .spilled
            residentBytes -= pageSize
            pagesEvicted += 1
            return
        }
        if spill == nil { spill = try SpillFile(directory: spillDirectory) }
        let file = spill!
        if r.pages[i].slot < 0 {
            if let s = freeSlots.popLast() { r.pages[i].slot = s } else { r.pages[i].slot = slotCount; slotCount += 1 }
        }
        let slot = r.pages[i].slot
        let len = pageLength(r, i)
        let addr = UnsafeRawBufferPointer(start: pageAddress(r, i), count: len)
        let injected = _injectWriteErrno
        r.pages[i].state = .writing
        inTransit += 1
        lock.unlock()
        let t0 = monotonicNanos()
        let crc = CRC32C.checksum(addr)
        let err = injected != 0 ? injected : file.write(addr, at: slot * pageSize)
        let dt = monotonicNanos() - t0
        if err == 0 { unmapPage(r, i) }
        lock.lock()
        inTransit -= 1
        ioNanos &+= dt
        defer { lock.broadcast() }
        if err != 0 {
            r.pages[i].state = .resident
            throw .io("cannot write a page to the spill file in \"\(spillDirectory)\": \(SpillFile.describe(err)); "
                      + "the page stays resident (\(residentBytes) bytes resident, budget \(_budget))")
        }
        r.pages[i].state = .spilled
        r.pages[i].dirty = false
        r.pages[i].crc = crc
        residentBytes -= pageSize
        pagesSpilled += 1
        pagesEvicted += 1
        bytesSpilled += len
    }

    /// Evicts until one more page fits in the budget. Returns false when that is impossible
    /// (everything resident is pinned or protected, and, if `wait`, nothing is in transit).
    func makeRoom(protecting protected: BufferRecord?, pages: Range<Int>, wait: Bool) throws(PSTError) -> Bool {
        while residentBytes + pageSize > _budget {
            if let (r, i) = pickVictim(protecting: protected, pages: pages) {
                try evict(r, i)
            } else if wait && inTransit > 0 {
                lock.wait()
            } else {
                return false
            }
        }
        return true
    }

    /// Maps page `i` (untouched or spilled; room already made) and fills it. Drops the lock for
    /// the I/O. On success the page is resident (pinned once if `pin`).
    func load(_ r: BufferRecord, _ i: Int, pin: Bool) throws(PSTError) {
        let prev = r.pages[i].state
        r.pages[i].state = .loading
        inTransit += 1
        residentBytes += pageSize
        peakResidentBytes = max(peakResidentBytes, residentBytes)
        let slot = r.pages[i].slot, crc = r.pages[i].crc
        let file = spill
        let len = pageLength(r, i)
        let addr = pageAddress(r, i)
        lock.unlock()

        var failure: PSTError? = nil
        var dt: UInt64 = 0
        let m = mmap(addr, pageSize, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, -1, 0)
        if m == nil || m == UnsafeMutableRawPointer(bitPattern: -1) {
            failure = .outOfMemory("cannot map a page of \(pageSize) bytes: \(SpillFile.describe(errno))")
        } else if prev == .spilled {
            let t0 = monotonicNanos()
            let buf = UnsafeMutableRawBufferPointer(start: addr, count: len)
            let got = file!.read(into: buf, at: slot * pageSize)
            if got < 0 {
                failure = .io("cannot read page \(i) of buffer \(r.id) from the spill file: \(SpillFile.describe(Int32(-got)))")
            } else if got < len {
                failure = .corrupt("spill file truncated: page \(i) of buffer \(r.id) needs \(len) bytes at offset "
                                   + "\(slot * pageSize) but only \(got) were there")
            } else {
                let c = CRC32C.checksum(UnsafeRawBufferPointer(buf))
                if c != crc {
                    failure = .corrupt("page \(i) of buffer \(r.id) fails its CRC-32C check on read-back "
                                       + "(stored 0x\(String(crc, radix: 16)), read 0x\(String(c, radix: 16))): the spill file was modified")
                }
            }
            dt = monotonicNanos() - t0
            if failure != nil { unmapPage(r, i) }
        }

        lock.lock()
        inTransit -= 1
        ioNanos &+= dt
        defer { lock.broadcast() }
        if let failure {
            residentBytes -= pageSize
            r.pages[i].state = prev
            throw failure
        }
        r.pages[i].state = .resident
        // An untouched page has no disk copy; a read-back page matches its disk copy.
        r.pages[i].dirty = prev == .untouched
        r.pages[i].lastUse = touch()
        if pin { r.pages[i].pins += 1 }
        if prev == .spilled {
            pagesReadBack += 1
            bytesReadBack += len
        }
    }

    /// Validated page span of a byte range of `r` (empty range → nil).
    func span(_ r: BufferRecord, offset: Int, count: Int) throws(PSTError) -> ClosedRange<Int>? {
        guard offset >= 0, count >= 0, offset <= r.byteCount, count <= r.byteCount - offset else {
            throw .invalidArgument("range [\(offset), \(offset) + \(count)) is outside the buffer's \(r.byteCount) bytes")
        }
        if count == 0 { return nil }
        return (offset / pageSize)...((offset + count - 1) / pageSize)
    }

    func acquire(_ r: BufferRecord, offset: Int, count: Int, forWriting: Bool) throws(PSTError) -> UnsafeMutableRawBufferPointer {
        lock.lock(); defer { lock.unlock() }
        guard !r.freed else { throw .misuse("acquire of a freed buffer") }
        guard let pages = try span(r, offset: offset, count: count) else {
            return UnsafeMutableRawBufferPointer(start: r.base + offset, count: 0)
        }
        let need = pages.count * pageSize
        guard need <= _budget else {
            throw .outOfMemory("range [\(offset), \(offset + count)) spans \(pages.count) pages (\(need) bytes), "
                               + "more than the whole budget (\(_budget) bytes)")
        }
        var pinned: [Int] = []
        pinned.reserveCapacity(pages.count)
        do throws(PSTError) {
            for i in pages {
                pageLoop: while true {
                    guard !r.freed else { throw .misuse("buffer freed during acquire") }
                    switch r.pages[i].state {
                    case .resident:
                        r.pages[i].pins += 1
                        r.pages[i].lastUse = touch()
                        pinned.append(i)
                        break pageLoop
                    case .loading, .writing:
                        lock.wait()
                    case .untouched, .spilled:
                        guard try makeRoom(protecting: r, pages: pages.lowerBound..<(pages.upperBound + 1), wait: true) else {
                            throw .outOfMemory("cannot make room for range [\(offset), \(offset + count)) "
                                               + "(\(need) bytes): the other resident pages are pinned "
                                               + "(\(residentBytes) bytes resident, \(pinnedPageCount()) pages pinned, "
                                               + "budget \(_budget))")
                        }
                        let s = r.pages[i].state
                        if s == .untouched || s == .spilled {
                            try load(r, i, pin: true)
                            pinned.append(i)
                            break pageLoop
                        }
                    }
                }
            }
        } catch {
            for i in pinned { r.pages[i].pins -= 1 }
            lock.broadcast()
            throw error
        }
        if forWriting { for i in pages { r.pages[i].dirty = true } }
        return UnsafeMutableRawBufferPointer(start: r.base + offset, count: count)
    }

    func release(_ r: BufferRecord, offset: Int, count: Int) throws(PSTError) {
        lock.lock(); defer { lock.unlock() }
        guard !r.freed else { throw .misuse("release of a freed buffer") }
        guard let pages = try span(r, offset: offset, count: count) else { return }
        for i in pages where r.pages[i].pins <= 0 {
            throw .misuse("release of range [\(offset), \(offset + count)): page \(i) is not acquired")
        }
        let t = touch()
        for i in pages {
            r.pages[i].pins -= 1
            r.pages[i].lastUse = t
        }
    }

    func prefetch(_ r: BufferRecord, offset: Int, count: Int) throws(PSTError) {
        lock.lock()
        defer { lock.unlock() }
        guard !r.freed else { throw .misuse("prefetch of a freed buffer") }
        guard let pages = try span(r, offset: offset, count: count) else { return }
        prefetchesInFlight += 1
        DispatchQueue.global(qos: .userInitiated).async { [self] in
            lock.lock()
            defer {
                prefetchesInFlight -= 1
                lock.broadcast()
                lock.unlock()
            }
            let protect = pages.lowerBound..<(pages.upperBound + 1)
            for i in pages {
                // Untouched pages need no I/O; pages in transit are someone else's.
                guard !r.freed, r.pages[i].state == .spilled else { continue }
                guard (try? makeRoom(protecting: r, pages: protect, wait: false)) == true else { return }
                guard !r.freed, r.pages[i].state == .spilled else { continue }
                do { try load(r, i, pin: false) } catch { return }  // the acquire will report it
            }
        }
    }

    func free(_ r: BufferRecord, force: Bool) throws(PSTError) {
        lock.lock()
        guard !r.freed else {
            lock.unlock()
            throw .misuse("buffer freed twice")
        }
        while r.pages.contains(where: { $0.state == .loading || $0.state == .writing }) { lock.wait() }
        if !force {
            let pinned = r.pages.reduce(0) { $0 + ($1.pins > 0 ? 1 : 0) }
            if pinned > 0 {
                lock.unlock()
                throw .misuse("free of a buffer with \(pinned) acquired pages; release them first")
            }
        }
        r.freed = true
        for p in r.pages {
            if p.state == .resident { residentBytes -= pageSize }
            if p.slot >= 0 { freeSlots.append(p.slot) }
        }
        buffers[r.id] = nil
        lock.broadcast()
        lock.unlock()
        munmap(r.base, r.mappedBytes)
    }

    func pinnedPageCount() -> Int {
        var n = 0
        for (_, r) in buffers { for p in r.pages where p.pins > 0 { n += 1 } }
        return n
    }

    // MARK: - Test hooks

    /// The spill file's descriptor (nil before the first eviction). Tests corrupt it.
    var _spillDescriptor: Int32? {
        lock.lock(); defer { lock.unlock() }
        return spill?.fd
    }

    /// Byte offset in the spill file of page `page` of `buffer` (nil if it has no slot).
    func _spillOffset(_ buffer: PagedBuffer, page: Int) -> Int? {
        lock.lock(); defer { lock.unlock() }
        let s = buffer.record.pages[page].slot
        return s < 0 ? nil : s * pageSize
    }

    /// The state of page `page` of `buffer`.
    func _pageState(_ buffer: PagedBuffer, page: Int) -> PageMeta.State {
        lock.lock(); defer { lock.unlock() }
        return buffer.record.pages[page].state
    }
}

/// A buffer allocated from a `Pager`. Bytes are reached only through `acquire`/`release` (or
/// `withAcquired`) of a byte range; the pointer is valid until the matching release (ranges are
/// pinned page by page, so overlapping acquires nest). Writing through a pointer acquired with
/// `forWriting: false` is not detected and may be lost on eviction.
///
/// Freed buffers (and every use after `free`) give `PST_ERR_MISUSE`. Dropping the last
/// reference frees the buffer.
public final class PagedBuffer {
    public let pager: Pager
    let record: BufferRecord

    init(pager: Pager, record: BufferRecord) {
        self.pager = pager
        self.record = record
    }

    deinit {
        if !isFreed { try? pager.free(record, force: true) }
    }

    /// Size in bytes.
    public var byteCount: Int { record.byteCount }
    /// Number of pages.
    public var pageCount: Int { record.pages.count }
    /// True after `free()`.
    public var isFreed: Bool {
        pager.lock.lock(); defer { pager.lock.unlock() }
        return record.freed
    }

    /// Pins the pages of bytes `[offset, offset + count)`, reading them back (or evicting others)
    /// as needed, and returns a pointer to those bytes, valid until `release(offset:count:)`.
    /// `forWriting` marks the pages changed, so eviction writes them out again.
    /// - Throws: `PST_ERR_INVALID_ARG` (range outside the buffer), `PST_ERR_MISUSE` (freed),
    ///   `PST_ERR_OUT_OF_MEMORY` (more than the budget, or no room because the rest is pinned),
    ///   `PST_ERR_IO` (an eviction's write failed), `PST_ERR_CORRUPT` (a spilled page fails its
    ///   checksum or the spill file is truncated). On error nothing stays pinned.
    public func acquire(offset: Int, count: Int, forWriting: Bool = true) throws(PSTError) -> UnsafeMutableRawBufferPointer {
        try pager.acquire(record, offset: offset, count: count, forWriting: forWriting)
    }

    /// `acquire(offset:count:)` of a range (the whole buffer when nil).
    public func acquire(_ range: Range<Int>? = nil, forWriting: Bool = true) throws(PSTError) -> UnsafeMutableRawBufferPointer {
        let r = range ?? 0..<byteCount
        return try pager.acquire(record, offset: r.lowerBound, count: r.count, forWriting: forWriting)
    }

    /// Unpins the pages of a range acquired before.
    /// - Throws: `PST_ERR_MISUSE` if a page of the range is not acquired or the buffer is freed
    ///   (nothing is released then), `PST_ERR_INVALID_ARG` for a range outside the buffer.
    public func release(offset: Int, count: Int) throws(PSTError) {
        try pager.release(record, offset: offset, count: count)
    }

    /// `release(offset:count:)` of a range (the whole buffer when nil).
    public func release(_ range: Range<Int>? = nil) throws(PSTError) {
        let r = range ?? 0..<byteCount
        try pager.release(record, offset: r.lowerBound, count: r.count)
    }

    /// Acquires `range` (whole buffer when nil), runs `body` with the pointer, releases.
    public func withAcquired<R>(_ range: Range<Int>? = nil, forWriting: Bool = true,
                                _ body: (UnsafeMutableRawBufferPointer) throws(PSTError) -> R) throws(PSTError) -> R {
        let r = range ?? 0..<byteCount
        let p = try pager.acquire(record, offset: r.lowerBound, count: r.count, forWriting: forWriting)
        defer { try? pager.release(record, offset: r.lowerBound, count: r.count) }
        return try body(p)
    }

    /// Starts reading the spilled pages of `range` (whole buffer when nil) back on a background
    /// thread and returns at once. Best effort: it evicts only least-recently-used unpinned pages
    /// outside the range and stops when there is no room or a read fails (a later acquire
    /// reports the failure). An acquire of a page being read waits for it.
    public func prefetch(_ range: Range<Int>? = nil) throws(PSTError) {
        let r = range ?? 0..<byteCount
        try pager.prefetch(record, offset: r.lowerBound, count: r.count)
    }

    /// Returns the buffer's memory and spill slots. Waits for pages in transit.
    /// - Throws: `PST_ERR_MISUSE` if already freed or if pages are still acquired.
    public func free() throws(PSTError) {
        try pager.free(record, force: false)
    }
}
