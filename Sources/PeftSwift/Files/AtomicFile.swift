#if canImport(Glibc)
import Glibc
#endif

// Safe replacement of a file: write a temporary sibling, fsync it, rename it over the target,
// fsync the directory. Readers see the old file or the new one, never a mixture, and a failure
// (or a crash before the rename) leaves the old file untouched.

/// The text of errno, e.g. "No such file or directory (errno 2)".
func errnoDescription(_ e: Int32 = errno) -> String {
    guard let s = strerror(e) else { return "errno \(e)" }
    return "\(String(cString: s)) (errno \(e))"
}

/// Writes a whole file atomically.
///
/// Steps: create `.<name>.tmp-<pid>-<n>` in the target's directory (`O_EXCL`, mode 0644, or the
/// existing target's permission bits), write everything (`write(2)` until done, retrying
/// `EINTR`), `fsync` it, close, `rename` over the target, then `fsync` the directory so the
/// rename itself is durable. Any failure before the rename closes and unlinks the temporary
/// file and leaves an existing target byte-for-byte as it was. A failure of the final
/// directory fsync is reported (`PST_ERR_IO`) although the new file is already in place.
public enum AtomicFile {
    /// Writes the file through `body`, which streams bytes with `writer.write`.
    public static func write(_ path: String, _ body: (inout AtomicFileWriter) throws(PSTError) -> Void) throws(PSTError) {
        guard !path.isEmpty, !path.hasSuffix("/") else { throw .invalidArgument("path \"\(path)\" does not name a file") }
        let (dir, base) = splitPath(path)
        let tmp = dir + "/." + base + ".tmp-\(getpid())-\(nextSerial())"
        var mode: mode_t = 0o644
        var st = stat()
        if stat(path, &st) == 0 {
            guard (st.st_mode & S_IFMT) == S_IFREG else { throw .io("\(path): exists and is not a regular file") }
            mode = st.st_mode & 0o7777
        }
        let fd = open(tmp, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, mode)
        guard fd >= 0 else { throw .io("\(path): cannot create temporary file \(tmp): \(errnoDescription())") }
        var writer = AtomicFileWriter(fd: fd, path: path, fault: _Faults.take(path))
        var closed = false
        func abandon() {
            if !closed { close(fd); closed = true }
            unlink(tmp)
        }
        do throws(PSTError) {
            try body(&writer)
            if writer.fault == .fsync { throw PSTError.io("\(path): fsync failed: injected fault") }
            guard fsync(fd) == 0 else { throw PSTError.io("\(path): fsync failed: \(errnoDescription())") }
            closed = true
            guard close(fd) == 0 else { throw PSTError.io("\(path): close failed: \(errnoDescription())") }
            if writer.fault == .rename { throw PSTError.io("\(path): rename failed: injected fault") }
            guard rename(tmp, path) == 0 else { throw PSTError.io("\(path): cannot rename \(tmp) over it: \(errnoDescription())") }
        } catch {
            abandon()
            throw error
        }
        // Make the rename durable. The new file is in place whatever happens here.
        let dfd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC)
        guard dfd >= 0 else { throw .io("\(path): written, but cannot open directory \(dir) to sync it: \(errnoDescription())") }
        defer { close(dfd) }
        guard fsync(dfd) == 0 else { throw .io("\(path): written, but fsync of directory \(dir) failed: \(errnoDescription())") }
    }

    /// Writes `bytes` as the whole file.
    public static func write(_ path: String, bytes: [UInt8]) throws(PSTError) {
        try write(path) { (w: inout AtomicFileWriter) throws(PSTError) in try w.write(bytes) }
    }

    /// ("dir", "name") of a path; "." for a bare name.
    static func splitPath(_ path: String) -> (String, String) {
        let u = Array(path.utf8)
        guard let slash = u.lastIndex(of: UInt8(ascii: "/")) else { return (".", path) }
        let dir = slash == 0 ? "/" : String(decoding: u[..<slash], as: UTF8.self)
        return (dir, String(decoding: u[(slash + 1)...], as: UTF8.self))
    }

    private static var serialLock = pthread_mutex_t()
    private static var serial = 0
    private static let serialInit: Void = { pthread_mutex_init(&serialLock, nil) }()

    static func nextSerial() -> Int {
        _ = serialInit
        pthread_mutex_lock(&serialLock)
        defer { pthread_mutex_unlock(&serialLock) }
        serial += 1
        return serial
    }

    /// Test hook: the next `write` to exactly `path` fails at `stage` (writes fail once
    /// `afterBytes` bytes have gone out). Internal; used by the tests only.
    static func _injectFault(path: String, _ stage: _Fault) { _Faults.set(path, stage) }
}

/// Where an injected fault strikes.
enum _Fault: Equatable {
    case write(afterBytes: Int)
    case fsync
    case rename
}

/// Fault registry keyed by target path, so concurrently running tests never see each other's.
enum _Faults {
    private static var lock = pthread_mutex_t()
    private static var table: [String: _Fault] = [:]
    private static let initLock: Void = { pthread_mutex_init(&lock, nil) }()

    static func set(_ path: String, _ f: _Fault) {
        _ = initLock
        pthread_mutex_lock(&lock); defer { pthread_mutex_unlock(&lock) }
        table[path] = f
    }

    static func take(_ path: String) -> _Fault? {
        _ = initLock
        pthread_mutex_lock(&lock); defer { pthread_mutex_unlock(&lock) }
        guard !table.isEmpty else { return nil }
        return table.removeValue(forKey: path)
    }
}

/// The sink `AtomicFile.write` hands its body: appends bytes to the temporary file.
public struct AtomicFileWriter {
    let fd: Int32
    /// The target path (for messages).
    public let path: String
    /// Bytes written so far.
    public private(set) var bytesWritten = 0
    let fault: _Fault?

    init(fd: Int32, path: String, fault: _Fault?) {
        self.fd = fd; self.path = path; self.fault = fault
    }

    /// Appends `bytes` (all of them, or throws `PST_ERR_IO`).
    public mutating func write(_ bytes: UnsafeRawBufferPointer) throws(PSTError) {
        guard let base = bytes.baseAddress, bytes.count > 0 else { return }
        var off = 0
        while off < bytes.count {
            var chunk = min(bytes.count - off, 1 << 30)
            if case .write(let after)? = fault {
                let room = after - bytesWritten
                if room <= 0 { throw .io("\(path): write failed after \(bytesWritten) bytes: injected fault") }
                chunk = min(chunk, room)
            }
            let w = Glibc.write(fd, base + off, chunk)
            if w < 0 {
                if errno == EINTR { continue }
                throw .io("\(path): write failed after \(bytesWritten) bytes: \(errnoDescription())")
            }
            if w == 0 { throw .io("\(path): write returned 0 after \(bytesWritten) bytes") }
            off += w
            bytesWritten += w
        }
    }

    public mutating func write(_ bytes: [UInt8]) throws(PSTError) {
        try withBytes(bytes) { (b) throws(PSTError) in try write(b) }
    }
}

/// Directory helpers.
enum FileSystem {
    /// mkdir -p: creates `path` and its missing parents (mode 0755). Existing directories are
    /// fine; an existing non-directory is `PST_ERR_IO`.
    static func makeDirectories(_ path: String) throws(PSTError) {
        guard !path.isEmpty else { throw .invalidArgument("directory path is empty") }
        var st = stat()
        if stat(path, &st) == 0 {
            guard (st.st_mode & S_IFMT) == S_IFDIR else { throw .io("\(path): exists and is not a directory") }
            return
        }
        let (parent, _) = AtomicFile.splitPath(path)
        if parent != path && parent != "." && parent != "/" { try makeDirectories(parent) }
        if mkdir(path, 0o755) != 0 && errno != EEXIST {
            throw .io("\(path): cannot create directory: \(errnoDescription())")
        }
    }

    /// Reads a whole (small) file into memory, at most `limit` bytes.
    static func readAll(_ path: String, limit: Int) throws(PSTError) -> [UInt8] {
        let fd = open(path, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else {
            let e = errno
            if e == ENOENT { throw .notFound("\(path): no such file") }
            throw .io("\(path): cannot open: \(errnoDescription(e))")
        }
        defer { close(fd) }
        var st = stat()
        guard fstat(fd, &st) == 0 else { throw .io("\(path): fstat failed: \(errnoDescription())") }
        guard (st.st_mode & S_IFMT) == S_IFREG else { throw .io("\(path): not a regular file") }
        guard Int(st.st_size) <= limit else { throw .corrupt("\(path): \(st.st_size) bytes, more than the limit of \(limit)") }
        var out = [UInt8](repeating: 0, count: Int(st.st_size))
        var got = 0
        while got < out.count {
            let r = out.withUnsafeMutableBytes { read(fd, $0.baseAddress! + got, $0.count - got) }
            if r < 0 { if errno == EINTR { continue }; throw .io("\(path): read failed: \(errnoDescription())") }
            if r == 0 { break }   // shrank meanwhile
            got += r
        }
        out.removeLast(out.count - got)
        return out
    }
}
