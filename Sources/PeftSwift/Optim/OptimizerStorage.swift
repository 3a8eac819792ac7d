/// Where an optimizer keeps its state tensors.
public enum OptimizerStorage {
    /// Ordinary 64-byte-aligned heap memory.
    case memory
    /// Buffers of a `Pager`: the state may be larger than the pager's budget; each step pins it
    /// chunk by chunk and prefetches the next chunk while updating the current one.
    case paged(Pager)
}

/// One state tensor of an optimizer, in heap memory or in a pager.
final class StateBlob {
    let byteCount: Int
    let memory: AlignedBuffer<UInt8>?
    let paged: PagedBuffer?

    init(bytes: Int, storage: OptimizerStorage) throws(PSTError) {
        byteCount = bytes
        switch storage {
        case .memory:
            memory = try AlignedBuffer<UInt8>(count: bytes)
            paged = nil
        case .paged(let pager):
            memory = nil
            paged = try pager.allocate(bytes: max(bytes, 1))
        }
    }

    /// Pins bytes `[offset, offset + count)` and returns their address (release with `release`).
    @inline(__always)
    func acquire(_ offset: Int, _ count: Int, forWriting: Bool) throws(PSTError) -> UnsafeMutableRawPointer {
        if let memory { return UnsafeMutableRawPointer(memory.baseAddress) + offset }
        return try paged!.acquire(offset: offset, count: count, forWriting: forWriting).baseAddress!
    }

    @inline(__always)
    func release(_ offset: Int, _ count: Int) {
        if let paged { try? paged.release(offset: offset, count: count) }
    }

    func prefetch(_ offset: Int, _ count: Int) {
        if let paged { try? paged.prefetch(offset..<(offset + count)) }
    }
}
