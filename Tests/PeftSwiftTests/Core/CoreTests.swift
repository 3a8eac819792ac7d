import Testing
@testable import PeftSwift
import CPeftSwift
#if canImport(Glibc)
import Glibc
#endif

@Suite struct CoreTests {
    @Test func versionMatchesHeaderMacros() {
        #expect(String(cString: pst_version_string()) == PST_VERSION_STRING)
        #expect(pst_abi_version() == PST_ABI_VERSION)
    }

    @Test func statusStringsAreDistinct() {
        var seen = Set<String>()
        for s in Int32(0)...11 { seen.insert(String(cString: pst_status_string(s))) }
        #expect(seen.count == 12)
        #expect(String(cString: pst_status_string(999)) == "unknown status")
    }

    @Test func lastErrorNamesFunctionArgumentAndValue() {
        #expect(pst_set_num_threads(0) == PST_ERR_INVALID_ARG)
        #expect(String(cString: pst_last_error()) == "pst_set_num_threads: n (0) must be in 1...1024")
        #expect(pst_set_num_threads(Int32(Threads.available)) == PST_OK)
        #expect(String(cString: pst_last_error()) == "")
    }

    @Test func lastErrorIsPerThreadAndTruncatesSafely() {
        LastError.set(String(repeating: "é", count: 2000))  // 4000 bytes, 2-byte sequences
        let s = String(cString: pst_last_error())
        #expect(s.utf8.count <= 1023)
        #expect(s.allSatisfy { $0 == "é" })
        // a brand-new OS thread (not a pooled task, which may reuse this thread) sees its own, empty message
        final class Box: @unchecked Sendable { var text = "unset" }
        let box = Box()
        var tid = pthread_t()
        let rc = pthread_create(&tid, nil, { arg in
            let b = Unmanaged<Box>.fromOpaque(arg!).takeUnretainedValue()
            b.text = String(cString: pst_last_error())
            return nil
        }, Unmanaged.passUnretained(box).toOpaque())
        #expect(rc == 0)
        pthread_join(tid, nil)
        #expect(box.text == "")
        #expect(String(cString: pst_last_error()).utf8.count == s.utf8.count)  // this thread's message is untouched
        LastError.clear()
    }

    @Test func parallelChunksCoverRangeOnce() {
        for n in [0, 1, 2, 7, 1000] {
            var hits = [Int](repeating: 0, count: n)
            hits.withUnsafeMutableBufferPointer { h in
                parallelChunks(n) { lo, hi in for i in lo..<hi { h[i] += 1 } }
            }
            #expect(hits.allSatisfy { $0 == 1 })
        }
    }
}
