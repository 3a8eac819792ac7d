/// Saving and restoring an `AdamW` state.
///
/// Format (version 1, little-endian):
///
///     offset  size  field
///     0       8     magic "PSTADAMW"
///     8       4     version (1)
///     12      4     state format: 0 = float32, 1 = blockwise 8-bit
///     16      8     minBlockwiseSize (0 for float32)
///     24      40    learningRate, beta1, beta2, eps, weightDecay (float64 each)
///     64      8     parameter count P
///     then P records:
///             8     element count n
///             8     step count
///             4     layout: 0 torch float32 (m, v), 1 bitsandbytes float32 (m, v),
///                   2 bitsandbytes 8-bit (state1, state2, absmax1, absmax2)
///             4     zero
///             ...   the layout's tensors, in order: float32 m, v (4n bytes each), or
///                   n codes, n codes, ceil(n/256) float32, ceil(n/256) float32
///     end-4   4     CRC-32C of every preceding byte
///
/// Restoring requires an optimizer with the same state format and the same parameters
/// registered in the same order (element counts are checked), and takes over the saved
/// hyperparameters and step counts: a restored run continues bit for bit.
extension AdamW {
    static let magic: [UInt8] = Array("PSTADAMW".utf8)
    static let formatVersion: UInt32 = 1

    var formatCode: UInt32 { stateFormat == .float32 ? 0 : 1 }
    var minBlockwise: UInt64 {
        if case .blockwise8bit(let m) = stateFormat { return UInt64(m) }
        return 0
    }

    /// Size in bytes of `saveState()`'s result.
    public var serializedStateSize: Int {
        var n = 64 + 8 + 4
        for q in params { n += 24 + q.blobs.reduce(0) { $0 + $1.byteCount } }
        return n
    }

    /// Serializes hyperparameters, step counts and moments (format above).
    /// - Throws: with paged storage, the pager's errors.
    public func saveState() throws(PSTError) -> [UInt8] {
        var out: [UInt8] = []
        out.reserveCapacity(serializedStateSize)
        func put<T: FixedWidthInteger>(_ v: T) { withUnsafeBytes(of: v.littleEndian) { out.append(contentsOf: $0) } }
        func putD(_ d: Double) { put(d.bitPattern) }
        out.append(contentsOf: AdamW.magic)
        put(AdamW.formatVersion)
        put(formatCode)
        put(minBlockwise)
        let h = hyperparameters
        for d in [h.learningRate, h.beta1, h.beta2, h.eps, h.weightDecay] { putD(d) }
        put(UInt64(params.count))
        for q in params {
            put(UInt64(q.count))
            put(UInt64(q.step))
            put(q.layout.rawValue)
            put(UInt32(0))
            for k in q.blobs.indices {
                let start = out.count
                out.append(contentsOf: repeatElement(0, count: q.blobs[k].byteCount))
                try copyState(q) { blob, off, src, n in
                    guard blob == k else { return }
                    out.withUnsafeMutableBytes { $0.baseAddress!.advanced(by: start + off).copyMemory(from: src, byteCount: n) }
                }
            }
        }
        let crc = out.withUnsafeBytes { CRC32C.checksum($0) }
        put(crc)
        return out
    }

    /// Restores a state saved by `saveState()`.
    /// - Throws: `PST_ERR_CORRUPT` (bad magic, truncated, checksum mismatch, bad layout codes),
    ///   `PST_ERR_UNSUPPORTED` (a newer format version), `PST_ERR_SHAPE` (different state
    ///   format, parameter count or element counts). Nothing is changed when it throws, except
    ///   with paged storage after a pager error part way (then the state is partly restored).
    public func restoreState(_ bytes: [UInt8]) throws(PSTError) {
        let r: Result<Void, PSTError> = bytes.withUnsafeBytes { raw in
            do throws(PSTError) { try restoreState(raw); return .success(()) } catch { return .failure(error) }
        }
        try r.get()
    }

    /// `restoreState(_:)` from raw bytes.
    public func restoreState(_ raw: UnsafeRawBufferPointer) throws(PSTError) {
        guard raw.count >= 76 else { throw .corrupt("optimizer state (\(raw.count) bytes) is too short") }
        guard Array(raw[0..<8]) == AdamW.magic else { throw .corrupt("optimizer state has a wrong magic number") }
        let stored = raw.loadUnaligned(fromByteOffset: raw.count - 4, as: UInt32.self).littleEndian
        let actual = CRC32C.checksum(UnsafeRawBufferPointer(rebasing: raw[0..<(raw.count - 4)]))
        guard stored == actual else {
            throw .corrupt("optimizer state fails its CRC-32C check (stored 0x\(String(stored, radix: 16)), "
                           + "computed 0x\(String(actual, radix: 16)))")
        }
        var pos = 8
        func get<T: FixedWidthInteger>(_: T.Type) throws(PSTError) -> T {
            guard pos + MemoryLayout<T>.size <= raw.count - 4 else { throw .corrupt("optimizer state is truncated") }
            let v = T(littleEndian: raw.loadUnaligned(fromByteOffset: pos, as: T.self))
            pos += MemoryLayout<T>.size
            return v
        }
        let version = try get(UInt32.self)
        guard version == AdamW.formatVersion else {
            throw .unsupported("optimizer state format version \(version) (this build reads \(AdamW.formatVersion))")
        }
        let fmt = try get(UInt32.self), minB = try get(UInt64.self)
        guard fmt == formatCode, minB == minBlockwise else {
            throw .shape("optimizer state has state format \(fmt) (minBlockwiseSize \(minB)); this optimizer has "
                         + "\(formatCode) (minBlockwiseSize \(minBlockwise))")
        }
        var hd: [Double] = []
        for _ in 0..<5 { hd.append(Double(bitPattern: try get(UInt64.self))) }
        let h = AdamWHyperparameters(learningRate: hd[0], beta1: hd[1], beta2: hd[2], eps: hd[3], weightDecay: hd[4])
        do { try h.validate() } catch { throw .corrupt("optimizer state has invalid hyperparameters: \(error.message)") }
        let count = try get(UInt64.self)
        guard count == UInt64(params.count) else {
            throw .shape("optimizer state has \(count) parameters; this optimizer has \(params.count)")
        }
        // Validate everything before changing anything.
        var records: [(Int, Int)] = []  // (step, payload offset)
        for (k, q) in params.enumerated() {
            let n = try get(UInt64.self), st = try get(UInt64.self), layout = try get(UInt32.self)
            _ = try get(UInt32.self)
            guard n == UInt64(q.count) else {
                throw .shape("parameter \(k) has \(n) elements in the optimizer state but \(q.count) registered")
            }
            guard layout == q.layout.rawValue else { throw .corrupt("parameter \(k) has layout \(layout), expected \(q.layout.rawValue)") }
            guard st <= UInt64(Int.max) else { throw .corrupt("parameter \(k) has step \(st)") }
            let size = q.blobs.reduce(0) { $0 + $1.byteCount }
            guard pos + size <= raw.count - 4 else { throw .corrupt("optimizer state is truncated") }
            records.append((Int(st), pos))
            pos += size
        }
        guard pos == raw.count - 4 else { throw .corrupt("optimizer state has \(raw.count - 4 - pos) trailing bytes") }
        hyperparameters = h
        for (k, q) in params.enumerated() {
            var starts: [Int] = []
            var o = records[k].1
            for b in q.blobs { starts.append(o); o += b.byteCount }
            try fillState(q) { blob, off, dst, n in
                dst.copyMemory(from: raw.baseAddress! + starts[blob] + off, byteCount: n)
            }
            q.step = records[k].0
        }
    }
}
