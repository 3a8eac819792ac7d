#if canImport(Glibc)
import Glibc
#endif

// safetensors files (format: huggingface/safetensors README and the Python package's
// behaviour, safetensors 0.8.0, measured by Tests/fixtures/make_files_fixtures.py):
//   8 bytes   N, little-endian u64
//   N bytes   UTF-8 JSON object {name: {"dtype", "shape", "data_offsets": [begin, end]},
//             "__metadata__": {str: str}}   (optional metadata; leading/trailing JSON
//             whitespace allowed; the writer pads with spaces to a multiple of 8)
//   the rest  the data section; offsets are relative to its start, the tensors (sorted by
//             offsets) must tile it exactly: first begins at 0, each begins where the previous
//             ends, the last ends at the end of the file.
// Rules checked (as the Python package does): N <= 100,000,000 and 8 + N <= file size; valid
// JSON; known dtype; shape entries non-negative integers; exactly two integer offsets,
// begin <= end; product(shape) × dtype size (without overflow, even with a zero dimension) ==
// end − begin; the tiling above. Stricter than the Python package (which keeps the last of two
// equal keys): duplicate tensor names or metadata keys are rejected.
// Names and metadata are any JSON strings: escapes are decoded (`\u0000` gives a NUL
// character, kept: a Swift String carries it, and the C API hands strings out with lengths).

/// A safetensors element type (the header's spelling is the raw value). Sub-byte types (F4,
/// F6_*) are not supported.
public enum SafeTensorsDType: String, CaseIterable, Sendable {
    case bool = "BOOL", u8 = "U8", i8 = "I8"
    case f8e5m2 = "F8_E5M2", f8e4m3 = "F8_E4M3", f8e8m0 = "F8_E8M0", f8e4m3fnuz = "F8_E4M3FNUZ", f8e5m2fnuz = "F8_E5M2FNUZ"
    case i16 = "I16", u16 = "U16", f16 = "F16", bf16 = "BF16"
    case i32 = "I32", u32 = "U32", f32 = "F32"
    case c64 = "C64", f64 = "F64", i64 = "I64", u64 = "U64"

    /// Bytes per element.
    public var size: Int {
        switch self {
        case .bool, .u8, .i8, .f8e5m2, .f8e4m3, .f8e8m0, .f8e4m3fnuz, .f8e5m2fnuz: return 1
        case .i16, .u16, .f16, .bf16: return 2
        case .i32, .u32, .f32: return 4
        case .c64, .f64, .i64, .u64: return 8
        }
    }

    /// Position in the safetensors crate's `Dtype` enum (0.8.0: BOOL, F4, F6_E2M3, F6_E3M2, U8,
    /// I8, F8_E5M2, F8_E4M3, F8_E8M0, F8_E4M3FNUZ, F8_E5M2FNUZ, I16, U16, F16, BF16, I32, U32,
    /// F32, C64, F64, I64, U64). The writer orders tensors by this, descending, then by name.
    var crateOrder: Int {
        switch self {
        case .bool: return 0
        case .u8: return 4
        case .i8: return 5
        case .f8e5m2: return 6
        case .f8e4m3: return 7
        case .f8e8m0: return 8
        case .f8e4m3fnuz: return 9
        case .f8e5m2fnuz: return 10
        case .i16: return 11
        case .u16: return 12
        case .f16: return 13
        case .bf16: return 14
        case .i32: return 15
        case .u32: return 16
        case .f32: return 17
        case .c64: return 18
        case .f64: return 19
        case .i64: return 20
        case .u64: return 21
        }
    }

    /// The engine's dtype, when there is one.
    public var dtype: DType? {
        switch self {
        case .f32: return .f32
        case .f16: return .f16
        case .bf16: return .bf16
        case .u8: return .u8
        case .i8: return .i8
        case .i32: return .i32
        case .i64: return .i64
        default: return nil
        }
    }

    public init(_ d: DType) {
        switch d {
        case .f32: self = .f32
        case .f16: self = .f16
        case .bf16: self = .bf16
        case .u8: self = .u8
        case .i8: self = .i8
        case .i32: self = .i32
        case .i64: self = .i64
        }
    }
}

/// One tensor's header entry.
public struct SafeTensorInfo: Sendable, Equatable {
    public let name: String
    public let dtype: SafeTensorsDType
    public let shape: [Int]
    /// [begin, end) relative to the data section.
    public let begin: Int
    public let end: Int

    public var byteCount: Int { end - begin }
    /// product(shape) (1 for a scalar).
    public var elementCount: Int { byteCount / dtype.size }
}

/// Owns the bytes of a file: a read-only private mapping (unmapped when the last reference
/// goes) or a heap copy. Tensor views hold it, so their pointers stay valid while they live.
final class _FileRegion: @unchecked Sendable {
    let base: UnsafeRawPointer?
    let count: Int
    private let mapped: Bool

    init(mapping base: UnsafeRawPointer, count: Int) {
        self.base = base; self.count = count; mapped = true
    }

    init(copying bytes: UnsafeRawBufferPointer) {
        count = bytes.count
        if bytes.count > 0, let src = bytes.baseAddress {
            let p = UnsafeMutableRawPointer.allocate(byteCount: bytes.count, alignment: 64)
            p.copyMemory(from: src, byteCount: bytes.count)
            base = UnsafeRawPointer(p)
        } else {
            base = nil
        }
        mapped = false
    }

    var buffer: UnsafeRawBufferPointer { UnsafeRawBufferPointer(start: base, count: count) }

    deinit {
        guard let base else { return }
        if mapped { munmap(UnsafeMutableRawPointer(mutating: base), count) } else { base.deallocate() }
    }
}

/// A tensor of an open safetensors file: its header entry and its bytes, read in place (no
/// copy). The view keeps the file's mapping alive; pointers from it are valid while the view
/// (or another view or the file object) lives. Data is little-endian and, in files written by
/// the Python package or peftswift, aligned to its element size; other files may hold
/// misaligned tensors, so typed access goes through `withUnsafeBytes` + `loadUnaligned` or
/// the copying helpers.
public struct SafeTensorView {
    public let info: SafeTensorInfo
    let region: _FileRegion
    let offset: Int   // of the tensor's first byte in the region

    public var name: String { info.name }
    public var dtype: SafeTensorsDType { info.dtype }
    public var shape: [Int] { info.shape }
    public var byteCount: Int { info.byteCount }
    public var elementCount: Int { info.elementCount }

    /// The tensor's bytes (valid while this view lives).
    public var bytes: UnsafeRawBufferPointer {
        guard let b = region.base, info.byteCount > 0 else { return UnsafeRawBufferPointer(start: nil, count: 0) }
        return UnsafeRawBufferPointer(start: b + offset, count: info.byteCount)
    }

    public func withUnsafeBytes<R, E: Error>(_ body: (UnsafeRawBufferPointer) throws(E) -> R) throws(E) -> R {
        defer { withExtendedLifetime(region) {} }
        return try body(bytes)
    }

    /// A copy of the bytes.
    public var byteArray: [UInt8] { withUnsafeBytes { Array($0) } }

    /// True when the data address is a multiple of the element size.
    public var isAligned: Bool {
        guard let b = bytes.baseAddress else { return true }
        return Int(bitPattern: b) % dtype.size == 0
    }

    /// The values converted to float32 (F32 copied, F16/BF16 widened exactly, F64 rounded,
    /// integer types converted). `PST_ERR_UNSUPPORTED` for BOOL, F8 and complex types.
    public func floats() throws(PSTError) -> [Float] {
        var out = [Float](repeating: 0, count: elementCount)
        try withMutableFloats(&out) { (o) throws(PSTError) in try copyFloats(into: o) }
        return out
    }

    /// Writes the values converted to float32 into `out` (exactly `elementCount` elements).
    public func copyFloats(into out: UnsafeMutableBufferPointer<Float>) throws(PSTError) {
        let n = elementCount
        guard out.count == n else { throw .shape("tensor \(quoted(name)) has \(n) elements; the destination holds \(out.count)") }
        guard n > 0, let o = out.baseAddress else { return }
        try withUnsafeBytes { (raw) throws(PSTError) in
            guard let s = raw.baseAddress else { return }
            switch dtype {
            case .f32: UnsafeMutableRawPointer(o).copyMemory(from: s, byteCount: n * 4)
            case .f16: for i in 0..<n { o[i] = Float(Float16(bitPattern: s.loadUnaligned(fromByteOffset: 2 * i, as: UInt16.self))) }
            case .bf16: for i in 0..<n { o[i] = Float(bitPattern: UInt32(s.loadUnaligned(fromByteOffset: 2 * i, as: UInt16.self)) << 16) }
            case .f64: for i in 0..<n { o[i] = Float(s.loadUnaligned(fromByteOffset: 8 * i, as: Double.self)) }
            case .u8: for i in 0..<n { o[i] = Float(s.load(fromByteOffset: i, as: UInt8.self)) }
            case .i8: for i in 0..<n { o[i] = Float(s.load(fromByteOffset: i, as: Int8.self)) }
            case .i16: for i in 0..<n { o[i] = Float(s.loadUnaligned(fromByteOffset: 2 * i, as: Int16.self)) }
            case .u16: for i in 0..<n { o[i] = Float(s.loadUnaligned(fromByteOffset: 2 * i, as: UInt16.self)) }
            case .i32: for i in 0..<n { o[i] = Float(s.loadUnaligned(fromByteOffset: 4 * i, as: Int32.self)) }
            case .u32: for i in 0..<n { o[i] = Float(s.loadUnaligned(fromByteOffset: 4 * i, as: UInt32.self)) }
            case .i64: for i in 0..<n { o[i] = Float(s.loadUnaligned(fromByteOffset: 8 * i, as: Int64.self)) }
            case .u64: for i in 0..<n { o[i] = Float(s.loadUnaligned(fromByteOffset: 8 * i, as: UInt64.self)) }
            default: throw .unsupported("tensor \(quoted(name)): \(dtype.rawValue) cannot be read as float32")
            }
        }
    }
}

/// A safetensors file opened for reading: the header is parsed and checked once; tensors are
/// views into a read-only memory mapping (opening costs the header, whatever the file size).
///
/// The mapping is private and read-only; if another process truncates the file while it is
/// mapped, touching the lost pages raises SIGBUS (as with any mmap reader, the Python package
/// included). Immutable; safe to share between threads.
public final class SafeTensorsFile: @unchecked Sendable {
    /// The path (or name) given at opening; every error message starts with it.
    public let path: String
    /// Tensors in data order (by offsets).
    public let tensors: [SafeTensorInfo]
    /// `__metadata__` in file order; nil when absent or null.
    public let metadataPairs: [(key: String, value: String)]?
    /// Bytes of the header JSON (N) and of the whole file.
    public let headerByteCount: Int
    public let fileByteCount: Int

    let region: _FileRegion
    let dataStart: Int
    private let byName: [String: Int]

    /// The safetensors package's header size limit (MAX_HEADER_SIZE).
    public static let maxHeaderBytes = 100_000_000

    /// Opens and memory-maps `path`. `PST_ERR_NOT_FOUND` if it does not exist, `PST_ERR_IO`
    /// for other OS failures, `PST_ERR_CORRUPT` when it is not a valid safetensors file.
    public convenience init(path: String) throws(PSTError) {
        let (m, size) = try mapFileReadOnly(path, minimumSize: 8) { (size) -> PSTError in
            .corrupt("\(path): file is \(size) bytes; a safetensors file has at least 8 (the header length)")
        }
        try self.init(region: _FileRegion(mapping: m, count: size), path: path)
    }

    /// Parses a file held in memory (copied), named `name` in messages.
    public convenience init(bytes: UnsafeRawBufferPointer, name: String) throws(PSTError) {
        try self.init(region: _FileRegion(copying: bytes), path: name)
    }

    public convenience init(bytes: [UInt8], name: String) throws(PSTError) {
        let region = bytes.withUnsafeBytes { _FileRegion(copying: $0) }
        try self.init(region: region, path: name)
    }

    init(region: _FileRegion, path: String) throws(PSTError) {
        let h = try SafeTensorsHeader.parse(region.buffer, source: path)
        self.region = region
        self.path = path
        self.tensors = h.tensors
        self.metadataPairs = h.metadata
        self.headerByteCount = h.headerByteCount
        self.fileByteCount = region.count
        self.dataStart = 8 + h.headerByteCount
        var idx: [String: Int] = [:]
        for (i, t) in h.tensors.enumerated() { idx[t.name] = i }
        byName = idx
    }

    /// Tensor names in data order.
    public var names: [String] { tensors.map(\.name) }

    /// `__metadata__` as a dictionary; nil when absent or null.
    public var metadata: [String: String]? {
        metadataPairs.map { Dictionary($0.map { ($0.key, $0.value) }, uniquingKeysWith: { a, _ in a }) }
    }

    public func info(_ name: String) -> SafeTensorInfo? { byName[name].map { tensors[$0] } }

    public func contains(_ name: String) -> Bool { byName[name] != nil }

    /// The position of tensor `name` in `tensors` (data order).
    public func index(of name: String) -> Int? { byName[name] }

    /// The tensor `name`, or `PST_ERR_NOT_FOUND`.
    public func tensor(_ name: String) throws(PSTError) -> SafeTensorView {
        guard let i = byName[name] else { throw .notFound("\(path): no tensor \(quoted(name))") }
        return view(tensors[i])
    }

    /// Every tensor, in data order.
    public func views() -> [SafeTensorView] { tensors.map(view) }

    func view(_ info: SafeTensorInfo) -> SafeTensorView {
        SafeTensorView(info: info, region: region, offset: dataStart + info.begin)
    }
}

/// The parsed and checked header of a safetensors file.
struct SafeTensorsHeader {
    var tensors: [SafeTensorInfo]
    var metadata: [(key: String, value: String)]?
    var headerByteCount: Int

    /// Parses and checks the whole file's layout (`file`: all its bytes).
    static func parse(_ file: UnsafeRawBufferPointer, source: String) throws(PSTError) -> SafeTensorsHeader {
        func bad(_ m: String) -> PSTError { .corrupt("\(source): \(m)") }
        guard file.count >= 8, let base = file.baseAddress else {
            throw bad("file is \(file.count) bytes; a safetensors file has at least 8 (the header length)")
        }
        let n64 = UInt64(littleEndian: base.loadUnaligned(as: UInt64.self))
        guard n64 <= UInt64(SafeTensorsFile.maxHeaderBytes) else {
            throw bad("header length \(n64) is more than the limit of \(SafeTensorsFile.maxHeaderBytes) bytes")
        }
        let n = Int(n64)
        guard n <= file.count - 8 else {
            throw bad("header length \(n) goes beyond the end of the file (\(file.count) bytes)")
        }
        let dataLength = file.count - 8 - n
        let root = try JSON.parse(UnsafeRawBufferPointer(start: base + 8, count: n), source: "\(source): header",
                                  limits: JSON.Limits(maxBytes: n, maxDepth: 64))
        guard case .object(let obj) = root else { throw bad("header is \(root.kindName), not an object") }

        var tensors: [SafeTensorInfo] = []
        tensors.reserveCapacity(obj.count)
        var metadata: [(key: String, value: String)]? = nil
        for m in obj.members {
            if m.key == "__metadata__" {
                switch m.value {
                case .null: break
                case .object(let mo):
                    var pairs: [(key: String, value: String)] = []
                    for e in mo.members {
                        guard case .string(let s) = e.value else {
                            throw bad("__metadata__ value of \(quoted(e.key)) is \(e.value.kindName), not a string")
                        }
                        pairs.append((e.key, s))
                    }
                    metadata = pairs
                default:
                    throw bad("__metadata__ is \(m.value.kindName), not an object")
                }
                continue
            }
            tensors.append(try entry(m.key, m.value, dataLength: dataLength, bad))
        }
        // The tensors must tile the data section.
        tensors.sort { ($0.begin, $0.end) < ($1.begin, $1.end) }
        var at = 0
        for t in tensors {
            guard t.begin == at else {
                throw t.begin < at
                    ? bad("tensor \(quoted(t.name)) data_offsets [\(t.begin), \(t.end)] overlap the previous tensor (which ends at \(at))")
                    : bad("tensor \(quoted(t.name)) data_offsets [\(t.begin), \(t.end)] leave a gap after byte \(at) of the data section")
            }
            at = t.end
        }
        guard at == dataLength else {
            throw bad("tensors cover \(at) bytes of the data section, but it has \(dataLength) (file not fully covered)")
        }
        return SafeTensorsHeader(tensors: tensors, metadata: metadata, headerByteCount: n)
    }

    static func entry(_ name: String, _ v: JSONValue, dataLength: Int, _ bad: (String) -> PSTError) throws(PSTError) -> SafeTensorInfo {
        let q = quoted(name)
        guard case .object(let o) = v else { throw bad("tensor \(q) is \(v.kindName), not an object") }
        guard let dv = o["dtype"] else { throw bad("tensor \(q) has no dtype") }
        guard case .string(let ds) = dv else { throw bad("tensor \(q) dtype is \(dv.kindName), not a string") }
        guard let dtype = SafeTensorsDType(rawValue: ds) else {
            if ["F4", "F6_E2M3", "F6_E3M2"].contains(ds) {
                throw .unsupported(bad("tensor \(q) has sub-byte dtype \(ds), which peftswift does not read").message)
            }
            throw bad("tensor \(q) has unknown dtype \(quoted(ds))")
        }
        guard let sv = o["shape"] else { throw bad("tensor \(q) has no shape") }
        guard case .array(let sa) = sv else { throw bad("tensor \(q) shape is \(sv.kindName), not an array") }
        var shape: [Int] = []
        shape.reserveCapacity(sa.count)
        for (i, d) in sa.enumerated() {
            guard case .number(let num) = d, let x = num.int, x >= 0 else {
                throw bad("tensor \(q) shape[\(i)] (\(describe(d))) is not a non-negative integer")
            }
            shape.append(x)
        }
        guard let ov = o["data_offsets"] else { throw bad("tensor \(q) has no data_offsets") }
        guard case .array(let oa) = ov, oa.count == 2 else {
            throw bad("tensor \(q) data_offsets (\(describe(ov))) is not an array of two integers")
        }
        var offs: [Int] = []
        for (i, d) in oa.enumerated() {
            guard case .number(let num) = d, let x = num.int, x >= 0 else {
                throw bad("tensor \(q) data_offsets[\(i)] (\(describe(d))) is not a non-negative integer")
            }
            offs.append(x)
        }
        let (begin, end) = (offs[0], offs[1])
        guard begin <= end else { throw bad("tensor \(q) data_offsets [\(begin), \(end)] end before they begin") }
        guard end <= dataLength else {
            throw bad("tensor \(q) data_offsets [\(begin), \(end)] end beyond the data section (\(dataLength) bytes)")
        }
        // As the crate: product of the dims with overflow checks (so [2^62, 2^62, 0] is
        // rejected although its product is 0), then times the element size.
        var elems = 1
        for d in shape {
            let (m, o) = elems.multipliedReportingOverflow(by: d)
            guard !o else { throw bad("tensor \(q) shape \(shape) overflows") }
            elems = m
        }
        let (bytes, ovf) = elems.multipliedReportingOverflow(by: dtype.size)
        guard !ovf else { throw bad("tensor \(q) shape \(shape) × \(dtype.rawValue) overflows") }
        guard bytes == end - begin else {
            throw bad("tensor \(q) shape \(shape) × \(dtype.rawValue) is \(bytes) bytes, but data_offsets [\(begin), \(end)] span \(end - begin)")
        }
        return SafeTensorInfo(name: name, dtype: dtype, shape: shape, begin: begin, end: end)
    }

    /// A JSON value for a message (cut short).
    static func describe(_ v: JSONValue) -> String {
        let s = JSON.serializeString(v, style: .compact)
        return s.count > 60 ? String(s.prefix(60)) + "…" : s
    }
}
