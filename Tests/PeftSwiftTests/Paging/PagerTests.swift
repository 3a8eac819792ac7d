import Testing
import Foundation
import Dispatch
@testable import PeftSwift
import CPeftSwift

/// Fills `p` with a pattern derived from `seed` (distinct per page and buffer).
private func fill(_ p: UnsafeMutableRawBufferPointer, seed: UInt64) {
    var x = seed &* 0x9E37_79B9_7F4A_7C15 | 1
    for i in 0..<p.count {
        x ^= x << 13; x ^= x >> 7; x ^= x << 17
        p[i] = UInt8(truncatingIfNeeded: x)
    }
}

private func matches(_ p: UnsafeMutableRawBufferPointer, seed: UInt64) -> Bool {
    var x = seed &* 0x9E37_79B9_7F4A_7C15 | 1
    for i in 0..<p.count {
        x ^= x << 13; x ^= x >> 7; x ^= x << 17
        if p[i] != UInt8(truncatingIfNeeded: x) { return false }
    }
    return true
}

private let ps = Pager.systemPageSize

func status(_ body: () throws -> Void) -> Int32 {
    do { try body(); return PST_OK } catch let e as PSTError { return e.status } catch { return -1 }
}

@Suite struct PagerTests {
    @Test func crc32cCheckValueAndReferenceTwin() {
        let s = Array("123456789".utf8)
        #expect(s.withUnsafeBytes { CRC32C.checksum($0) } == 0xE306_9283)
        #expect(s.withUnsafeBytes { CRC32C.referenceChecksum($0) } == 0xE306_9283)
        var rng = SystemRandomNumberGenerator()
        for n in [0, 1, 7, 8, 9, 63, 64, 1000, 4099] {
            let b = (0..<n).map { _ in UInt8.random(in: 0...255, using: &rng) }
            b.withUnsafeBytes { raw in
                let fast = CRC32C.checksum(raw)
                #expect(fast == CRC32C.referenceChecksum(raw))
                #expect(fast == CRC32C.tableChecksum(raw))
                let k = n / 3
                let part = CRC32C.checksum(UnsafeRawBufferPointer(rebasing: raw[k...]),
                                           continuing: CRC32C.checksum(UnsafeRawBufferPointer(rebasing: raw[..<k])))
                #expect(part == fast)
            }
        }
    }

    @Test func invalidArgumentsAreRejected() throws {
        #expect(status { _ = try Pager(budget: 0, pageSize: ps) } == PST_ERR_INVALID_ARG)
        #expect(status { _ = try Pager(budget: -5, pageSize: ps) } == PST_ERR_INVALID_ARG)
        #expect(status { _ = try Pager(budget: 1 << 20, pageSize: 0) } == PST_ERR_INVALID_ARG)
        #expect(status { _ = try Pager(budget: 1 << 20, pageSize: ps + 1) } == PST_ERR_INVALID_ARG)
        #expect(status { _ = try Pager(budget: ps - 1, pageSize: ps) } == PST_ERR_INVALID_ARG)
        do {
            _ = try Pager(budget: 1 << 20, pageSize: 1000)
            Issue.record("expected an error")
        } catch {
            #expect(error.message.contains("pageSize (1000)"))
        }
        let pager = try Pager(budget: 4 * ps, pageSize: ps)
        #expect(status { _ = try pager.allocate(bytes: 0) } == PST_ERR_INVALID_ARG)
        #expect(status { try pager.setBudget(0) } == PST_ERR_INVALID_ARG)
        let b = try pager.allocate(bytes: 3 * ps + 10)
        #expect(b.pageCount == 4)
        #expect(status { _ = try b.acquire(offset: -1, count: 4) } == PST_ERR_INVALID_ARG)
        #expect(status { _ = try b.acquire(offset: 0, count: 3 * ps + 11) } == PST_ERR_INVALID_ARG)
        #expect(status { _ = try b.acquire(offset: Int.max, count: Int.max) } == PST_ERR_INVALID_ARG)
        #expect(pager.stats.pinnedBytes == 0)
    }

    @Test func spillsAndReadsBackUnderBudget() throws {
        let pager = try Pager(budget: 4 * ps, pageSize: ps)
        let bufs = try (0..<3).map { _ in try pager.allocate(bytes: 7 * ps + 123) }
        for (k, b) in bufs.enumerated() {
            for page in 0..<b.pageCount {
                let lo = page * ps, n = min(ps, b.byteCount - lo)
                try b.withAcquired(lo..<(lo + n)) { fill($0, seed: UInt64(k * 100 + page)) }
                #expect(pager.stats.residentBytes <= 4 * ps)
            }
        }
        for (k, b) in bufs.enumerated() {
            for page in 0..<b.pageCount {
                let lo = page * ps, n = min(ps, b.byteCount - lo)
                let ok = try b.withAcquired(lo..<(lo + n), forWriting: false) { matches($0, seed: UInt64(k * 100 + page)) }
                #expect(ok, "buffer \(k) page \(page)")
            }
        }
        let s = pager.stats
        #expect(s.peakResidentBytes <= 4 * ps)
        #expect(s.pagesSpilled >= 24 - 4)
        #expect(s.pagesReadBack >= 20)
        #expect(s.bytesSpilled > 0 && s.bytesReadBack > 0)
        #expect(s.pinnedBytes == 0)
        #expect(s.spillFileBytes > 0)
        // Read-only use left pages clean: evicting them again needs no writes.
        let before = pager.stats.pagesSpilled
        for (k, b) in bufs.enumerated() {
            let ok = try b.withAcquired(0..<ps, forWriting: false) { matches($0, seed: UInt64(k * 100)) }
            #expect(ok)
        }
        #expect(pager.stats.pagesSpilled == before)
    }

    @Test func multiPageRangeIsContiguousAndUntouchedPagesReadZero() throws {
        let pager = try Pager(budget: 3 * ps, pageSize: ps)
        let b = try pager.allocate(bytes: 10 * ps)
        let z = try b.withAcquired((ps / 2)..<(ps / 2 + 2 * ps), forWriting: false) { p in p.allSatisfy { $0 == 0 } }
        #expect(z)
        try b.withAcquired((5 * ps - 7)..<(5 * ps + 9)) { fill($0, seed: 77) }
        for i in 0..<10 { try b.withAcquired((i * ps + ps / 2)..<(i * ps + ps / 2 + 1)) { $0[0] = UInt8(i) } }  // forces spills
        let ok = try b.withAcquired((5 * ps - 7)..<(5 * ps + 9), forWriting: false) { matches($0, seed: 77) }
        #expect(ok)
        #expect(pager.stats.pagesSpilled > 0)
    }

    @Test func oversizedAndAllPinnedRequestsFailCleanly() throws {
        let pager = try Pager(budget: 4 * ps, pageSize: ps)
        let b = try pager.allocate(bytes: 16 * ps)
        do {
            _ = try b.acquire(0..<(5 * ps))
            Issue.record("expected an error")
        } catch {
            #expect(error.status == PST_ERR_OUT_OF_MEMORY)
            #expect(error.message.contains("budget"))
        }
        // A transient request larger than the free budget evicts rather than fails.
        try b.withAcquired(0..<(4 * ps)) { fill($0, seed: 1) }
        try b.withAcquired((8 * ps)..<(12 * ps)) { fill($0, seed: 2) }
        // Everything pinned: the next page cannot come in.
        _ = try b.acquire(0..<(3 * ps))
        do {
            _ = try b.acquire((10 * ps)..<(12 * ps))
            Issue.record("expected an error")
        } catch {
            #expect(error.status == PST_ERR_OUT_OF_MEMORY)
            #expect(error.message.contains("pinned"))
        }
        #expect(pager.stats.pinnedBytes == 3 * ps)  // the failed call pinned nothing
        try b.release(0..<(3 * ps))
        let ok = try b.withAcquired((8 * ps)..<(12 * ps), forWriting: false) { matches($0, seed: 2) }
        #expect(ok)
        let ok1 = try b.withAcquired(0..<(4 * ps), forWriting: false) { matches($0, seed: 1) }
        #expect(ok1)
    }

    @Test func misuseIsReported() throws {
        let pager = try Pager(budget: 4 * ps, pageSize: ps)
        let b = try pager.allocate(bytes: 4 * ps)
        #expect(status { try b.release(0..<10) } == PST_ERR_MISUSE)
        _ = try b.acquire(0..<10)
        try b.release(0..<10)
        #expect(status { try b.release(0..<10) } == PST_ERR_MISUSE)  // double release
        _ = try b.acquire(0..<(2 * ps))
        #expect(status { try b.release(0..<(3 * ps)) } == PST_ERR_MISUSE)  // page 2 never acquired
        #expect(pager.stats.pinnedBytes == 2 * ps)  // the failed release released nothing
        #expect(status { try b.free() } == PST_ERR_MISUSE)  // still pinned
        try b.release(0..<(2 * ps))
        try b.free()
        #expect(b.isFreed)
        #expect(status { _ = try b.acquire(0..<1) } == PST_ERR_MISUSE)
        #expect(status { try b.release(0..<1) } == PST_ERR_MISUSE)
        #expect(status { try b.prefetch() } == PST_ERR_MISUSE)
        #expect(status { try b.free() } == PST_ERR_MISUSE)
        #expect(pager.stats.residentBytes == 0)
    }

    @Test func corruptedSpillPageIsDetected() throws {
        let pager = try Pager(budget: 2 * ps, pageSize: ps)
        let b = try pager.allocate(bytes: 4 * ps)
        for i in 0..<4 { try b.withAcquired((i * ps)..<((i + 1) * ps)) { fill($0, seed: UInt64(i)) } }
        #expect(pager._pageState(b, page: 0) == .spilled)
        let fd = try #require(pager._spillDescriptor)
        let off = try #require(pager._spillOffset(b, page: 0))
        var byte: UInt8 = 0
        #expect(pread(fd, &byte, 1, off_t(off + 100)) == 1)
        byte ^= 0x01
        #expect(pwrite(fd, &byte, 1, off_t(off + 100)) == 1)
        do {
            _ = try b.acquire(0..<ps)
            Issue.record("expected an error")
        } catch {
            #expect(error.status == PST_ERR_CORRUPT)
            #expect(error.message.contains("CRC-32C"))
        }
        #expect(pager.stats.pinnedBytes == 0)
        // Other pages are fine; truncating the file makes the rest fail too.
        let ok = try b.withAcquired((3 * ps)..<(4 * ps), forWriting: false) { matches($0, seed: 3) }
        #expect(ok)
        #expect(pager._pageState(b, page: 1) == .spilled)
        #expect(ftruncate(fd, 0) == 0)
        do {
            _ = try b.acquire(ps..<(2 * ps))
            Issue.record("expected an error")
        } catch {
            #expect(error.status == PST_ERR_CORRUPT)
            #expect(error.message.contains("truncated"))
        }
        #expect(pager.stats.pinnedBytes == 0)
    }

    @Test func unwritableSpillDirectoryKeepsDataResident() throws {
        let pager = try Pager(budget: 2 * ps, pageSize: ps, spillDirectory: "/nonexistent/peftswift-spill")
        let b = try pager.allocate(bytes: 4 * ps)
        try b.withAcquired(0..<(2 * ps)) { fill($0, seed: 5) }
        do {
            _ = try b.acquire((2 * ps)..<(3 * ps))
            Issue.record("expected an error")
        } catch {
            #expect(error.status == PST_ERR_IO)
            #expect(error.message.contains("/nonexistent/peftswift-spill"))
        }
        #expect(pager.stats.residentBytes == 2 * ps)
        #expect(pager.stats.pinnedBytes == 0)
        let ok = try b.withAcquired(0..<(2 * ps), forWriting: false) { matches($0, seed: 5) }
        #expect(ok)
    }

    @Test func failedWriteKeepsPageResidentAndRecovers() throws {
        let pager = try Pager(budget: 2 * ps, pageSize: ps)
        let b = try pager.allocate(bytes: 4 * ps)
        try b.withAcquired(0..<(2 * ps)) { fill($0, seed: 9) }
        pager.lock.lock(); pager._injectWriteErrno = ENOSPC; pager.lock.unlock()
        do {
            _ = try b.acquire((3 * ps)..<(4 * ps))
            Issue.record("expected an error")
        } catch {
            #expect(error.status == PST_ERR_IO)
            #expect(error.message.contains("No space left"))
        }
        #expect(pager._pageState(b, page: 0) == .resident)
        // Shrinking the budget cannot evict either: the new budget holds, residency stays.
        #expect(status { try pager.setBudget(ps) } == PST_ERR_IO)
        #expect(pager.stats.residentBytes == 2 * ps)
        pager.lock.lock(); pager._injectWriteErrno = 0; pager.lock.unlock()
        try pager.setBudget(2 * ps)
        try b.withAcquired((2 * ps)..<(4 * ps)) { fill($0, seed: 10) }
        let ok = try b.withAcquired(0..<(2 * ps), forWriting: false) { matches($0, seed: 9) }
        #expect(ok)
        let ok2 = try b.withAcquired((2 * ps)..<(4 * ps), forWriting: false) { matches($0, seed: 10) }
        #expect(ok2)
    }

    @Test func shrinkingTheBudgetEvicts() throws {
        let pager = try Pager(budget: 8 * ps, pageSize: ps)
        let b = try pager.allocate(bytes: 8 * ps)
        try b.withAcquired { fill($0, seed: 3) }
        #expect(pager.stats.residentBytes == 8 * ps)
        try pager.setBudget(3 * ps)
        #expect(pager.budget == 3 * ps)
        #expect(pager.stats.residentBytes <= 3 * ps)
        #expect(pager.stats.pagesSpilled >= 5)
        // Pinned pages cannot be evicted by a shrink: they stay until released.
        _ = try b.acquire(0..<(3 * ps), forWriting: false)
        try pager.setBudget(ps)
        #expect(pager.stats.residentBytes == 3 * ps)
        try b.release(0..<(3 * ps))
        try b.withAcquired((7 * ps)..<(8 * ps), forWriting: false) { _ in }
        #expect(pager.stats.residentBytes <= ps)
        try pager.setBudget(8 * ps)
        let all = try b.withAcquired(forWriting: false) { matches($0, seed: 3) }
        #expect(all)
    }

    @Test func prefetchReadsAheadAndAcquireWaits() throws {
        let pager = try Pager(budget: 8 * ps, pageSize: ps)
        let a = try pager.allocate(bytes: 4 * ps)
        let b = try pager.allocate(bytes: 4 * ps)
        try a.withAcquired { fill($0, seed: 1) }
        try b.withAcquired { fill($0, seed: 2) }
        try pager.setBudget(4 * ps)  // b is newer, so a goes out
        #expect(pager._pageState(a, page: 0) == .spilled)
        let readBefore = pager.stats.pagesReadBack
        try a.prefetch()
        pager.waitForPrefetches()
        #expect(pager.stats.pagesReadBack == readBefore + 4)
        #expect(pager._pageState(a, page: 3) == .resident)
        let ok = try a.withAcquired(forWriting: false) { matches($0, seed: 1) }
        #expect(ok)
        #expect(pager.stats.pagesReadBack == readBefore + 4)
        // Prefetch racing an acquire of the same pages.
        try b.prefetch()
        let ok2 = try b.withAcquired(forWriting: false) { matches($0, seed: 2) }
        #expect(ok2)
        pager.waitForPrefetches()
        #expect(pager.stats.residentBytes <= 4 * ps)
    }

    @Test func spillFileHasNoNameAndClosesWithThePager() throws {
        var fd: Int32 = -1
        do {
            let pager = try Pager(budget: ps, pageSize: ps)
            let b = try pager.allocate(bytes: 2 * ps)
            try b.withAcquired(0..<ps) { fill($0, seed: 1) }
            try b.withAcquired(ps..<(2 * ps)) { fill($0, seed: 2) }
            fd = try #require(pager._spillDescriptor)
            let link = try FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/fd/\(fd)")
            #expect(link.contains("(deleted)"), "spill file \(link) should be unlinked")
            try b.free()
            #expect(pager.stats.spillFileBytes == 0)
        }
        // The pager is gone, and its descriptor with it (unless a test in parallel reused the number).
        let link = try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/fd/\(fd)")
        #expect(link == nil || !(link!.contains("(deleted)") && link!.contains("#")))
    }

    @Test func concurrentUseKeepsDataIntact() throws {
        let pager = try Pager(budget: 6 * ps, pageSize: ps)
        let bufs = try (0..<4).map { _ in try pager.allocate(bytes: 6 * ps) }
        let shared = try pager.allocate(bytes: 3 * ps)
        try shared.withAcquired { fill($0, seed: 999) }
        let failures = UnsafeMutablePointer<Int>.allocate(capacity: 4)
        failures.initialize(repeating: 0, count: 4)
        defer { failures.deallocate() }
        DispatchQueue.concurrentPerform(iterations: 4) { t in
            let b = bufs[t]
            var version = [Int](repeating: -1, count: 6)
            for round in 0..<60 {
                let page = (round * 7 + t) % 6
                do {
                    try b.withAcquired((page * ps)..<((page + 1) * ps)) { p in
                        if version[page] >= 0 && !matches(p, seed: UInt64(t * 10_000 + page * 100 + version[page])) {
                            failures[t] += 1
                        }
                        fill(p, seed: UInt64(t * 10_000 + page * 100 + round))
                    }
                    version[page] = round
                    if round % 5 == 0 { try b.prefetch() }
                    let ok = try shared.withAcquired((round % 3 * ps)..<((round % 3 + 1) * ps), forWriting: false) { p in
                        var x = UInt64(999) &* 0x9E37_79B9_7F4A_7C15 | 1
                        for _ in 0..<(round % 3 * ps) { x ^= x << 13; x ^= x >> 7; x ^= x << 17 }
                        for i in 0..<ps {
                            x ^= x << 13; x ^= x >> 7; x ^= x << 17
                            if p[i] != UInt8(truncatingIfNeeded: x) { return false }
                        }
                        return true
                    }
                    if !ok { failures[t] += 1 }
                } catch {
                    // With 4 threads × 2 pinned pages and a 6-page budget, room always exists.
                    failures[t] += 1000
                }
            }
        }
        pager.waitForPrefetches()
        #expect((0..<4).map { failures[$0] } == [0, 0, 0, 0])
        #expect(pager.stats.pinnedBytes == 0)
        #expect(pager.stats.peakResidentBytes <= 6 * ps)
        #expect(pager.stats.pagesSpilled > 0)
    }
}
