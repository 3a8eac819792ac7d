#if canImport(Glibc)
import Glibc
#endif

/// The one way the engine maps a file: read-only, private, whole. The error rule for every
/// reader (safetensors, GGUF): a missing file is `PST_ERR_NOT_FOUND`; a path that is not a
/// regular file, or any other open/fstat/mmap failure, is `PST_ERR_IO`; a file shorter than
/// `minimumSize` gets the caller's own error (`tooSmall(size)`, usually `PST_ERR_CORRUPT`).
/// The caller owns the mapping and unmaps it with `munmap(base, count)`.
func mapFileReadOnly(_ path: String, minimumSize: Int,
                     tooSmall: (Int) -> PSTError) throws(PSTError) -> (base: UnsafeRawPointer, count: Int) {
    func describe(_ e: Int32) -> String { String(cString: strerror(e)) }
    let fd = open(path, O_RDONLY | O_CLOEXEC)
    guard fd >= 0 else {
        let e = errno
        if e == ENOENT { throw .notFound("\(path): no such file") }
        throw .io("\(path): cannot open: \(describe(e))")
    }
    defer { close(fd) }
    var st = stat()
    guard fstat(fd, &st) == 0 else { throw .io("\(path): fstat failed: \(describe(errno))") }
    guard (st.st_mode & S_IFMT) == S_IFREG else { throw .io("\(path): not a regular file") }
    let size = Int(st.st_size)
    guard size >= max(minimumSize, 1) else { throw tooSmall(size) }
    guard let m = mmap(nil, size, PROT_READ, MAP_PRIVATE, fd, 0), m != MAP_FAILED else {
        throw .io("\(path): mmap of \(size) bytes failed: \(describe(errno))")
    }
    return (UnsafeRawPointer(m), size)
}
