#if canImport(Glibc)
import Glibc
#endif

/// A fixed-size, 64-byte-aligned, zero-initialized heap buffer of trivial elements whose
/// address never moves, so the C API and Python can hand out pointers into it for as long as
/// the owner lives. Not thread-safe; not copy-on-write (it is a class: sharing shares storage).
///
/// A buffer made with `init(borrowing:count:)` wraps memory someone else owns (a PyTorch
/// tensor's storage, handed over through the C API): it is neither aligned nor freed by the
/// buffer, and its owner must keep it alive for as long as the buffer is used.
public final class AlignedBuffer<Element: BitwiseCopyable> {
    public let count: Int
    public let baseAddress: UnsafeMutablePointer<Element>
    /// False for a borrowed buffer: deinit leaves the memory to its owner.
    public let ownsMemory: Bool

    /// Allocates `count` zeroed elements (count may be 0). Throws `PST_ERR_OUT_OF_MEMORY`
    /// when the allocation fails or the byte count overflows.
    public init(count: Int) throws(PSTError) {
        precondition(count >= 0)
        let (bytes, overflow) = count.multipliedReportingOverflow(by: MemoryLayout<Element>.stride)
        guard !overflow else { throw .outOfMemory("\(count) elements overflow the address space") }
        var p: UnsafeMutableRawPointer? = nil
        guard posix_memalign(&p, 64, max(bytes, 64)) == 0, let p else {
            throw .outOfMemory("cannot allocate \(bytes) bytes")
        }
        memset(p, 0, max(bytes, 64))
        self.count = count
        self.baseAddress = p.bindMemory(to: Element.self, capacity: max(count, 1))
        self.ownsMemory = true
    }

    /// Wraps `count` elements at `pointer`, owned by the caller: no copy, no alignment
    /// guarantee (every kernel loads unaligned), never freed here.
    public init(borrowing pointer: UnsafeMutablePointer<Element>, count: Int) {
        precondition(count >= 0)
        self.count = count
        self.baseAddress = pointer
        self.ownsMemory = false
    }

    /// Allocates and copies `source`.
    public convenience init(copying source: UnsafeBufferPointer<Element>) throws(PSTError) {
        try self.init(count: source.count)
        if let b = source.baseAddress, source.count > 0 { baseAddress.update(from: b, count: source.count) }
    }

    public convenience init(_ array: [Element]) throws(PSTError) {
        try self.init(count: array.count)
        array.withUnsafeBufferPointer { baseAddress.update(from: $0.baseAddress!, count: array.count) }
    }

    deinit { if ownsMemory { free(baseAddress) } }

    public var byteCount: Int { count * MemoryLayout<Element>.stride }
    public var buffer: UnsafeMutableBufferPointer<Element> { UnsafeMutableBufferPointer(start: baseAddress, count: count) }
    public var array: [Element] { Array(UnsafeBufferPointer(start: baseAddress, count: count)) }

    @inline(__always) public subscript(i: Int) -> Element {
        get { assert(i >= 0 && i < count, "index \(i) out of 0..<\(count)"); return baseAddress[i] }
        set { assert(i >= 0 && i < count, "index \(i) out of 0..<\(count)"); baseAddress[i] = newValue }
    }
}
