#if canImport(Glibc)
import Glibc
#endif

/// An anonymous file that holds a pager's evicted pages. It has no name from the moment it
/// exists (Linux `O_TMPFILE`, or `mkstemp` followed at once by `unlink` where the file system
/// lacks O_TMPFILE), so the kernel deletes it when the descriptor closes: on `close()`, on
/// deinit, and on process death, however it happens.
final class SpillFile {
    let fd: Int32
    let directory: String

    /// `O_TMPFILE` from <fcntl.h> on Linux (`__O_TMPFILE | O_DIRECTORY`); Swift does not import
    /// the macro. x86-64 and aarch64 share these values.
    static let oTmpfile: Int32 = 0o2_0000_000 | 0o200_000

    /// Opens a new nameless file in `directory`. Throws `PST_ERR_IO` naming the directory and
    /// the OS error when it cannot.
    init(directory: String) throws(PSTError) {
        self.directory = directory
        var fd = open(directory, SpillFile.oTmpfile | O_RDWR | O_CLOEXEC, 0o600)
        if fd < 0 {
            let first = errno
            // File systems without O_TMPFILE: a named temporary file, unlinked immediately.
            if first == EOPNOTSUPP || first == EISDIR || first == EINVAL {
                var template = Array((directory.hasSuffix("/") ? directory : directory + "/").utf8CString.dropLast())
                template.append(contentsOf: "peftswift-spill-XXXXXX".utf8CString)
                fd = template.withUnsafeMutableBufferPointer { mkstemp($0.baseAddress!) }
                if fd >= 0 {
                    _ = fcntl(fd, F_SETFD, FD_CLOEXEC)
                    template.withUnsafeBufferPointer { _ = unlink($0.baseAddress!) }
                }
            }
            if fd < 0 {
                throw .io("spill directory \"\(directory)\" cannot hold a spill file: \(SpillFile.describe(errno))")
            }
        }
        self.fd = fd
    }

    deinit { close(fd) }

    static func describe(_ e: Int32) -> String {
        guard let s = strerror(e) else { return "errno \(e)" }
        return "\(String(cString: s)) (errno \(e))"
    }

    /// Writes all of `bytes` at `offset`, retrying interrupted and short writes. Returns 0 or
    /// the errno of the failure (ENOSPC, EIO, EFBIG, ...).
    func write(_ bytes: UnsafeRawBufferPointer, at offset: Int) -> Int32 {
        var done = 0
        while done < bytes.count {
            let r = pwrite(fd, bytes.baseAddress! + done, bytes.count - done, off_t(offset + done))
            if r < 0 {
                if errno == EINTR { continue }
                return errno
            }
            if r == 0 { return ENOSPC }
            done += r
        }
        return 0
    }

    /// Reads exactly `bytes.count` bytes at `offset`. Returns the number of bytes read (less
    /// than asked when the file is shorter: truncated) or -errno.
    func read(into bytes: UnsafeMutableRawBufferPointer, at offset: Int) -> Int {
        var done = 0
        while done < bytes.count {
            let r = pread(fd, bytes.baseAddress! + done, bytes.count - done, off_t(offset + done))
            if r < 0 {
                if errno == EINTR { continue }
                return -Int(errno)
            }
            if r == 0 { break }
            done += r
        }
        return done
    }
}
