import CPeftSwift
#if canImport(Glibc)
import Glibc
#endif

// C API of the pager (Sources/PeftSwift/Paging): large buffers in fixed-size pages under a RAM
// budget, spilled to an unlinked file and read back on demand.

/// Boxes a paged buffer with a strong reference to its pager (so the pager outlives it).
final class PagedHandle {
    let buffer: PagedBuffer
    init(_ b: PagedBuffer) { buffer = b }
    deinit { try? buffer.free() }
}

/// Creates a pager with a RAM budget of budget_bytes (>= one page), pages of page_size bytes
/// (0: 4 MiB; otherwise a positive multiple of the system page size), spilling to an unlinked
/// file in spill_dir (NULL: $TMPDIR or /tmp). The spill file disappears when the pager is
/// freed or the process dies. Free with pst_pager_free.
/// Errors: PST_ERR_INVALID_ARG (budget or page size), PST_ERR_IO (spill_dir is not a writable
/// directory; a directory that becomes unusable later gives PST_ERR_IO at the eviction that
/// needs it, with the page kept resident and intact).
@c(pstimpl_pager_create)
public func pst_pager_create(_ budget_bytes: Int64, _ page_size: Int64, _ spill_dir: UnsafePointer<CChar>?,
                             _ out: UnsafeMutablePointer<UnsafeMutablePointer<pst_pager>?>?) -> pst_status {
    cEntry("pst_pager_create") { () throws(PSTError) in
        let o = try required(out, "out")
        o.pointee = nil
        guard budget_bytes > 0 else { throw .invalidArgument("budget_bytes (\(budget_bytes)) must be > 0") }
        guard page_size >= 0 else { throw .invalidArgument("page_size (\(page_size)) must be >= 0 (0: 4 MiB)") }
        let dir = try cStringOrNil(spill_dir, "spill_dir")
        if let dir {
            // fail now rather than at the first eviction, deep inside a training step
            var st = stat()
            guard stat(dir, &st) == 0, (st.st_mode & S_IFMT) == S_IFDIR, access(dir, W_OK | X_OK) == 0 else {
                throw .io("spill_dir \"\(dir)\" is not a writable directory")
            }
        }
        let p = try Pager(budget: Int(budget_bytes), pageSize: page_size == 0 ? 4 << 20 : Int(page_size), spillDirectory: dir)
        o.pointee = makeHandle(p, as: pst_pager.self)
    }
}

/// Frees a pager; NULL is a no-op. Buffers still allocated keep the pager alive until they
/// are freed (their memory and spill slots are released then).
@c(pstimpl_pager_free)
public func pst_pager_free(_ pager: UnsafeMutablePointer<pst_pager>?) {
    if let pager { releaseHandle(pager, as: Pager.self) }
}

/// Changes the RAM budget while running; shrinking evicts unpinned pages at once.
/// Errors: PST_ERR_INVALID_ARG, PST_ERR_OUT_OF_MEMORY (pinned pages exceed the new budget),
/// PST_ERR_IO (a spill write failed; data stays resident and intact).
@c(pstimpl_pager_set_budget)
public func pst_pager_set_budget(_ pager: UnsafeMutablePointer<pst_pager>?, _ budget_bytes: Int64) -> pst_status {
    cEntry("pst_pager_set_budget") { () throws(PSTError) in
        let p = object(try required(pager, "pager"), as: Pager.self)
        guard budget_bytes > 0 else { throw .invalidArgument("budget_bytes (\(budget_bytes)) must be > 0") }
        try p.setBudget(Int(budget_bytes))
    }
}

/// Fills *stats (stats->struct_size must be sizeof(pst_pager_stats)).
/// Errors: PST_ERR_INVALID_ARG.
@c(pstimpl_pager_get_stats)
public func pst_pager_get_stats(_ pager: UnsafeMutablePointer<pst_pager>?, _ stats: UnsafeMutablePointer<pst_pager_stats>?) -> pst_status {
    cEntry("pst_pager_get_stats") { () throws(PSTError) in
        let p = object(try required(pager, "pager"), as: Pager.self)
        let s = try structOutput(try required(stats, "stats"), "stats")
        let t = p.stats
        s.store(pst_pager_stats(struct_size: MemoryLayout<pst_pager_stats>.size, budget_bytes: Int64(t.budgetBytes),
                                    page_size: Int64(t.pageSize), resident_bytes: Int64(t.residentBytes),
                                    peak_resident_bytes: Int64(t.peakResidentBytes), pinned_bytes: Int64(t.pinnedBytes),
                                    pages_spilled: Int64(t.pagesSpilled), bytes_spilled: Int64(t.bytesSpilled),
                                    pages_evicted: Int64(t.pagesEvicted), pages_read_back: Int64(t.pagesReadBack),
                                    bytes_read_back: Int64(t.bytesReadBack), spill_file_bytes: Int64(t.spillFileBytes),
                                    io_seconds: t.ioSeconds))
    }
}

/// Allocates a zero-filled buffer of bytes bytes (>= 1) from the pager; its pages are not
/// resident until acquired. Free with pst_paged_free.
/// Errors: PST_ERR_INVALID_ARG, PST_ERR_OUT_OF_MEMORY.
@c(pstimpl_paged_alloc)
public func pst_paged_alloc(_ pager: UnsafeMutablePointer<pst_pager>?, _ bytes: Int64,
                            _ out: UnsafeMutablePointer<UnsafeMutablePointer<pst_paged>?>?) -> pst_status {
    cEntry("pst_paged_alloc") { () throws(PSTError) in
        let o = try required(out, "out")
        o.pointee = nil
        let p = object(try required(pager, "pager"), as: Pager.self)
        guard bytes >= 1 else { throw .invalidArgument("bytes (\(bytes)) must be >= 1") }
        o.pointee = makeHandle(PagedHandle(try p.allocate(bytes: Int(bytes))), as: pst_paged.self)
    }
}

/// Pins bytes [offset, offset + count) of the buffer in memory (reading spilled pages back,
/// evicting least-recently-used unpinned pages of any buffer if the budget requires) and
/// stores a pointer to byte offset in *ptr, valid until the matching pst_paged_release.
/// for_writing false lets the pager drop the pages later without writing them back.
/// Errors: PST_ERR_INVALID_ARG (range outside the buffer), PST_ERR_OUT_OF_MEMORY (the range
/// cannot fit in the budget beside pinned pages), PST_ERR_IO, PST_ERR_CORRUPT (a page's
/// checksum failed on read-back: the data is never returned), PST_ERR_MISUSE (freed buffer).
@c(pstimpl_paged_acquire)
public func pst_paged_acquire(_ buffer: UnsafeMutablePointer<pst_paged>?, _ offset: Int64, _ count: Int64, _ for_writing: Bool,
                              _ ptr: UnsafeMutablePointer<UnsafeMutableRawPointer?>?) -> pst_status {
    cEntry("pst_paged_acquire") { () throws(PSTError) in
        let b = object(try required(buffer, "buffer"), as: PagedHandle.self).buffer
        let out = try required(ptr, "ptr")
        guard offset >= 0, count >= 1 else { throw .invalidArgument("offset (\(offset)) must be >= 0 and count (\(count)) >= 1") }
        out.pointee = try b.acquire(offset: Int(offset), count: Int(count), forWriting: for_writing).baseAddress
    }
}

/// Unpins a range pinned by pst_paged_acquire (the same offset and count).
/// Errors: PST_ERR_MISUSE (the range was not acquired), PST_ERR_INVALID_ARG.
@c(pstimpl_paged_release)
public func pst_paged_release(_ buffer: UnsafeMutablePointer<pst_paged>?, _ offset: Int64, _ count: Int64) -> pst_status {
    cEntry("pst_paged_release") { () throws(PSTError) in
        let b = object(try required(buffer, "buffer"), as: PagedHandle.self).buffer
        guard offset >= 0, count >= 1 else { throw .invalidArgument("offset (\(offset)) must be >= 0 and count (\(count)) >= 1") }
        try b.release(offset: Int(offset), count: Int(count))
    }
}

/// Starts reading the buffer's spilled pages back on a background thread and returns at
/// once; a later acquire waits for pages still on their way.
/// Errors: PST_ERR_INVALID_ARG, PST_ERR_MISUSE (freed buffer).
@c(pstimpl_paged_prefetch)
public func pst_paged_prefetch(_ buffer: UnsafeMutablePointer<pst_paged>?) -> pst_status {
    cEntry("pst_paged_prefetch") { () throws(PSTError) in
        try object(try required(buffer, "buffer"), as: PagedHandle.self).buffer.prefetch()
    }
}

/// Frees a paged buffer (its memory and spill slots); NULL is a no-op. Pointers from
/// pst_paged_acquire become invalid.
@c(pstimpl_paged_free)
public func pst_paged_free(_ buffer: UnsafeMutablePointer<pst_paged>?) {
    if let buffer { releaseHandle(buffer, as: PagedHandle.self) }
}
