// GGUF reader: header, metadata key/value table, tensor infos, data section; memory-mapped.
//
// Format facts (from ggml's docs/gguf.md and ggml/src/gguf.cpp; the code here is our own):
//   u32 magic "GGUF" (bytes 47 47 55 46), u32 version (2 or 3; 1 used u32 counts and is
//   rejected), u64 tensor_count, u64 kv_count, then kv_count entries
//   { gguf_string key, u32 value_type, value }, then tensor_count entries
//   { gguf_string name, u32 n_dims, u64 ne[n_dims], u32 ggml_type, u64 offset },
//   then padding to `general.alignment` (u32, default 32, a power of two), then the data
//   section; each tensor's offset is relative to the data section and a multiple of the
//   alignment. gguf_string = u64 byte length + UTF-8 bytes (no terminator). Arrays are
//   u32 element type + u64 count + elements (arrays of arrays allowed). All little-endian.
//   ne[0] is the innermost (contiguous) dimension: a PyTorch [out, in] weight is stored
//   with ne = [in, out]. At most 4 dims (GGML_MAX_DIMS).
//
// The file is untrusted: every count, length, offset and type is checked before use, and
// every problem is a thrown PSTError naming the file.

#if canImport(Glibc)
import Glibc
#endif

// MARK: - Types

/// GGUF metadata value types (`gguf_type`).
public enum GGUFValueType: UInt32, Sendable, CaseIterable {
    case uint8 = 0, int8 = 1, uint16 = 2, int16 = 3, uint32 = 4, int32 = 5, float32 = 6
    case bool = 7, string = 8, array = 9, uint64 = 10, int64 = 11, float64 = 12

    /// Bytes of one element; nil for string and array (variable size).
    var fixedSize: Int? {
        switch self {
        case .uint8, .int8, .bool: return 1
        case .uint16, .int16: return 2
        case .uint32, .int32, .float32: return 4
        case .uint64, .int64, .float64: return 8
        case .string, .array: return nil
        }
    }
    /// The fewest bytes one element can take (a string is at least its u64 length; an array
    /// at least its u32 type + u64 count).
    var minSize: Int { fixedSize ?? (self == .string ? 8 : 12) }
}

/// A homogeneous metadata array (typed storage, so 49k-token vocabularies stay compact).
public enum GGUFArray: Equatable, Sendable {
    case uint8([UInt8]), int8([Int8]), uint16([UInt16]), int16([Int16])
    case uint32([UInt32]), int32([Int32]), float32([Float]), bool([Bool])
    case string([String]), uint64([UInt64]), int64([Int64]), float64([Double])
    case array([GGUFArray])

    public var elementType: GGUFValueType {
        switch self {
        case .uint8: return .uint8
        case .int8: return .int8
        case .uint16: return .uint16
        case .int16: return .int16
        case .uint32: return .uint32
        case .int32: return .int32
        case .float32: return .float32
        case .bool: return .bool
        case .string: return .string
        case .uint64: return .uint64
        case .int64: return .int64
        case .float64: return .float64
        case .array: return .array
        }
    }

    public var count: Int {
        switch self {
        case .uint8(let a): return a.count
        case .int8(let a): return a.count
        case .uint16(let a): return a.count
        case .int16(let a): return a.count
        case .uint32(let a): return a.count
        case .int32(let a): return a.count
        case .float32(let a): return a.count
        case .bool(let a): return a.count
        case .string(let a): return a.count
        case .uint64(let a): return a.count
        case .int64(let a): return a.count
        case .float64(let a): return a.count
        case .array(let a): return a.count
        }
    }

    /// The elements as integers when the element type is an integer type (bool excluded).
    public var integers: [Int64]? {
        switch self {
        case .uint8(let a): return a.map { Int64($0) }
        case .int8(let a): return a.map { Int64($0) }
        case .uint16(let a): return a.map { Int64($0) }
        case .int16(let a): return a.map { Int64($0) }
        case .uint32(let a): return a.map { Int64($0) }
        case .int32(let a): return a.map { Int64($0) }
        case .int64(let a): return a
        case .uint64(let a):
            var r = [Int64](); r.reserveCapacity(a.count)
            for v in a { guard v <= UInt64(Int64.max) else { return nil }; r.append(Int64(v)) }
            return r
        default: return nil
        }
    }

    public var strings: [String]? { if case .string(let s) = self { return s }; return nil }
}

/// One metadata value.
public enum GGUFValue: Equatable, Sendable {
    case uint8(UInt8), int8(Int8), uint16(UInt16), int16(Int16)
    case uint32(UInt32), int32(Int32), float32(Float), bool(Bool)
    case string(String), uint64(UInt64), int64(Int64), float64(Double)
    case array(GGUFArray)

    public var type: GGUFValueType {
        switch self {
        case .uint8: return .uint8
        case .int8: return .int8
        case .uint16: return .uint16
        case .int16: return .int16
        case .uint32: return .uint32
        case .int32: return .int32
        case .float32: return .float32
        case .bool: return .bool
        case .string: return .string
        case .uint64: return .uint64
        case .int64: return .int64
        case .float64: return .float64
        case .array: return .array
        }
    }

    /// Any integer type as Int (nil for other types or values beyond Int's range).
    public var int: Int? {
        switch self {
        case .uint8(let v): return Int(v)
        case .int8(let v): return Int(v)
        case .uint16(let v): return Int(v)
        case .int16(let v): return Int(v)
        case .uint32(let v): return Int(v)
        case .int32(let v): return Int(v)
        case .uint64(let v): return v <= UInt64(Int.max) ? Int(v) : nil
        case .int64(let v): return Int(v)
        default: return nil
        }
    }
    /// float32/float64, or an integer, as Double.
    public var double: Double? {
        switch self {
        case .float32(let v): return Double(v)
        case .float64(let v): return v
        default: return int.map(Double.init)
        }
    }
    public var string: String? { if case .string(let s) = self { return s }; return nil }
    public var bool: Bool? { if case .bool(let b) = self { return b }; return nil }
    public var array: GGUFArray? { if case .array(let a) = self { return a }; return nil }
}

/// ggml tensor types (`enum ggml_type` in ggml.h). Raw values are the file's u32 codes;
/// block sizes and bytes per block are ggml's type traits (ggml.c / ggml-common.h).
public enum GGMLType: UInt32, Sendable, CaseIterable {
    case f32 = 0, f16 = 1, q4_0 = 2, q4_1 = 3, q5_0 = 6, q5_1 = 7, q8_0 = 8, q8_1 = 9
    case q2_K = 10, q3_K = 11, q4_K = 12, q5_K = 13, q6_K = 14, q8_K = 15
    case iq2_xxs = 16, iq2_xs = 17, iq3_xxs = 18, iq1_s = 19, iq4_nl = 20, iq3_s = 21
    case iq2_s = 22, iq4_xs = 23, i8 = 24, i16 = 25, i32 = 26, i64 = 27, f64 = 28
    case iq1_m = 29, bf16 = 30, tq1_0 = 34, tq2_0 = 35, mxfp4 = 39

    /// Elements per block.
    public var blockSize: Int {
        switch self {
        case .f32, .f16, .bf16, .i8, .i16, .i32, .i64, .f64: return 1
        case .q4_0, .q4_1, .q5_0, .q5_1, .q8_0, .q8_1, .iq4_nl, .mxfp4: return 32
        default: return 256
        }
    }

    /// Bytes per block. Q8_1 is ggml-common.h's current 36-byte block (f16 d, f16 s, 32 x i8);
    /// gguf-py 0.19's GGML_QUANT_SIZES still says 40 (the old f32 d/s layout). No GGUF file
    /// stores Q8_1 (it is an activation format), so the difference is theoretical.
    public var blockBytes: Int {
        switch self {
        case .f32: return 4
        case .f16, .bf16: return 2
        case .q4_0: return 18
        case .q4_1: return 20
        case .q5_0: return 22
        case .q5_1: return 24
        case .q8_0: return 34
        case .q8_1: return 36
        case .q2_K: return 84
        case .q3_K: return 110
        case .q4_K: return 144
        case .q5_K: return 176
        case .q6_K: return 210
        case .q8_K: return 292
        case .iq2_xxs: return 66
        case .iq2_xs: return 74
        case .iq3_xxs: return 98
        case .iq1_s: return 50
        case .iq4_nl: return 18
        case .iq3_s: return 110
        case .iq2_s: return 82
        case .iq4_xs: return 136
        case .i8: return 1
        case .i16: return 2
        case .i32: return 4
        case .i64, .f64: return 8
        case .iq1_m: return 56
        case .tq1_0: return 54
        case .tq2_0: return 66
        case .mxfp4: return 17
        }
    }

    /// ggml's name ("Q4_1", "F32", ...), as gguf-py spells GGMLQuantizationType.
    public var name: String {
        switch self {
        case .f32: return "F32"
        case .f16: return "F16"
        case .bf16: return "BF16"
        case .q4_0: return "Q4_0"
        case .q4_1: return "Q4_1"
        case .q5_0: return "Q5_0"
        case .q5_1: return "Q5_1"
        case .q8_0: return "Q8_0"
        case .q8_1: return "Q8_1"
        case .q2_K: return "Q2_K"
        case .q3_K: return "Q3_K"
        case .q4_K: return "Q4_K"
        case .q5_K: return "Q5_K"
        case .q6_K: return "Q6_K"
        case .q8_K: return "Q8_K"
        case .iq2_xxs: return "IQ2_XXS"
        case .iq2_xs: return "IQ2_XS"
        case .iq3_xxs: return "IQ3_XXS"
        case .iq1_s: return "IQ1_S"
        case .iq4_nl: return "IQ4_NL"
        case .iq3_s: return "IQ3_S"
        case .iq2_s: return "IQ2_S"
        case .iq4_xs: return "IQ4_XS"
        case .i8: return "I8"
        case .i16: return "I16"
        case .i32: return "I32"
        case .i64: return "I64"
        case .f64: return "F64"
        case .iq1_m: return "IQ1_M"
        case .tq1_0: return "TQ1_0"
        case .tq2_0: return "TQ2_0"
        case .mxfp4: return "MXFP4"
        }
    }

    /// True when `GGUFFile.dequantize` converts this type to float32.
    public var canDequantize: Bool {
        switch self {
        case .f32, .f16, .bf16, .q4_0, .q4_1, .q5_0, .q5_1, .q8_0, .q8_1: return true
        default: return false
        }
    }
}

/// One entry of the tensor table.
public struct GGUFTensorInfo: Equatable, Sendable {
    public let name: String
    /// GGUF order, innermost first: `dims[0]` is the number of columns (contiguous elements
    /// of a row). A PyTorch `[out, in]` weight has `dims == [in, out]`.
    public let dims: [Int]
    public let type: GGMLType
    /// Byte offset of the data relative to the start of the data section.
    public let offset: Int
    /// Bytes of data (rows * columns / blockSize * blockBytes).
    public let byteCount: Int

    public var elementCount: Int { dims.reduce(1, *) }
    /// `dims[0]`.
    public var columns: Int { dims.first ?? 1 }
    /// Product of `dims[1...]` (1 for a vector).
    public var rows: Int { dims.dropFirst().reduce(1, *) }
    /// Row-major (PyTorch / numpy) shape: `dims` reversed.
    public var shape: [Int] { dims.reversed() }
    /// Bytes of one row.
    public var rowBytes: Int { columns / type.blockSize * type.blockBytes }
}

// MARK: - File

/// A GGUF file, memory-mapped read-only. Tensor data is handed out as pointers into the map
/// (no copy); they stay valid while the `GGUFFile` lives. Immutable after init, so it may be
/// read from several threads.
public final class GGUFFile: @unchecked Sendable {
    /// The path given to `init(path:)`, or the name given to `init(bytes:name:)`.
    public let path: String
    public let version: UInt32
    /// Metadata in file order (`metadata` is the same as a dictionary).
    public let metadataKeys: [String]
    public let metadata: [String: GGUFValue]
    /// Tensor table in file order.
    public let tensors: [GGUFTensorInfo]
    /// `general.alignment` (default 32).
    public let alignment: Int
    /// Absolute file offset of the data section.
    public let dataOffset: Int
    /// Total size of the file in bytes.
    public let fileSize: Int

    private let base: UnsafeRawPointer
    private let mapped: Bool
    private let tensorIndex: [String: Int]

    /// Opens and parses `path` (memory-mapped). Throws `PST_ERR_NOT_FOUND` for a missing file,
    /// `PST_ERR_IO` if it cannot be opened or mapped (Core/MappedFile.swift's rule), `PST_ERR_CORRUPT` if it is malformed, `PST_ERR_UNSUPPORTED` for an
    /// unknown version or tensor type.
    public convenience init(path: String) throws(PSTError) {
        let (p, size) = try mapFileReadOnly(path, minimumSize: 1) { (_) -> PSTError in
            .corrupt("\(path): empty file (no GGUF header)")
        }
        do {
            try self.init(base: p, size: size, mapped: true, name: path)
        } catch {
            munmap(UnsafeMutableRawPointer(mutating: p), size)
            throw error
        }
    }

    /// Parses an in-memory GGUF image (copied into an owned buffer). For tests and small files.
    public convenience init(bytes: [UInt8], name: String = "<memory>") throws(PSTError) {
        guard !bytes.isEmpty else { throw .corrupt("\(name): empty file (no GGUF header)") }
        guard let p = malloc(bytes.count) else { throw .outOfMemory("\(name): cannot allocate \(bytes.count) bytes") }
        bytes.withUnsafeBytes { if let b = $0.baseAddress { p.copyMemory(from: b, byteCount: bytes.count) } }
        do {
            try self.init(base: UnsafeRawPointer(p), size: bytes.count, mapped: false, name: name)
        } catch {
            free(p)
            throw error
        }
    }

    private init(base: UnsafeRawPointer, size: Int, mapped: Bool, name: String) throws(PSTError) {
        var r = GGUFCursor(base: base, size: size, name: name)
        let magic = try r.u32("magic")
        guard magic == 0x4655_4747 else {  // "GGUF" little-endian
            throw .corrupt("\(name): bad magic 0x\(String(magic, radix: 16)) (not a GGUF file)")
        }
        let version = try r.u32("version")
        guard version == 2 || version == 3 else {
            throw .unsupported("\(name): GGUF version \(version) (only 2 and 3 are supported)")
        }
        let nTensors = try r.count("tensor count", minBytesEach: 8 + 4 + 4 + 8)
        let nKV = try r.count("metadata count", minBytesEach: 8 + 4 + 1)

        var keys: [String] = []
        var meta: [String: GGUFValue] = [:]
        keys.reserveCapacity(nKV)
        for i in 0..<nKV {
            let key = try r.string("key of metadata entry \(i)")
            let rawType = try r.u32("type of metadata '\(key)'")
            guard let type = GGUFValueType(rawValue: rawType) else {
                throw .corrupt("\(name): metadata '\(key)' has unknown value type \(rawType)")
            }
            let value = try r.value(type, key: key)
            guard meta[key] == nil else { throw .corrupt("\(name): duplicate metadata key '\(key)'") }
            meta[key] = value
            keys.append(key)
        }

        var alignment = 32
        if let a = meta["general.alignment"] {
            guard case .uint32(let v) = a else {
                throw .corrupt("\(name): general.alignment has type \(a.type), expected uint32")
            }
            guard v > 0, v & (v - 1) == 0 else {
                throw .corrupt("\(name): general.alignment \(v) is not a power of two")
            }
            alignment = Int(v)
        }

        var infos: [GGUFTensorInfo] = []
        var index: [String: Int] = [:]
        infos.reserveCapacity(nTensors)
        for i in 0..<nTensors {
            let tname = try r.string("name of tensor \(i)")
            let nDims = try r.u32("dimension count of tensor '\(tname)'")
            guard nDims >= 1, nDims <= 4 else {
                throw .corrupt("\(name): tensor '\(tname)' has \(nDims) dimensions (1...4 allowed)")
            }
            var dims: [Int] = []
            var elements = 1
            for d in 0..<Int(nDims) {
                let v = try r.u64("dimension \(d) of tensor '\(tname)'")
                guard v <= UInt64(Int.max) else {
                    throw .corrupt("\(name): tensor '\(tname)' dimension \(d) = \(v) is out of range")
                }
                let (m, o) = elements.multipliedReportingOverflow(by: Int(v))
                guard !o else { throw .corrupt("\(name): tensor '\(tname)' element count overflows") }
                elements = m
                dims.append(Int(v))
            }
            let rawType = try r.u32("type of tensor '\(tname)'")
            guard let type = GGMLType(rawValue: rawType) else {
                throw .unsupported("\(name): tensor '\(tname)' has unknown ggml type \(rawType)")
            }
            let off = try r.u64("offset of tensor '\(tname)'")
            guard dims[0] % type.blockSize == 0 else {
                throw .corrupt("\(name): tensor '\(tname)' row length \(dims[0]) is not a multiple of the \(type.name) block size \(type.blockSize)")
            }
            let (bytes, o2) = (elements / type.blockSize).multipliedReportingOverflow(by: type.blockBytes)
            guard !o2, bytes <= size else {
                throw .corrupt("\(name): tensor '\(tname)' needs more bytes than the file has")
            }
            guard off <= UInt64(size) else {
                throw .corrupt("\(name): tensor '\(tname)' offset \(off) is beyond the end of the file")
            }
            guard Int(off) % alignment == 0 else {
                throw .corrupt("\(name): tensor '\(tname)' offset \(off) is not a multiple of the alignment \(alignment)")
            }
            guard index[tname] == nil else { throw .corrupt("\(name): duplicate tensor name '\(tname)'") }
            index[tname] = infos.count
            infos.append(GGUFTensorInfo(name: tname, dims: dims, type: type, offset: Int(off), byteCount: bytes))
        }

        // data section starts at the next multiple of the alignment
        let pos = r.pos
        let dataStart = (pos + alignment - 1) / alignment * alignment
        if !infos.isEmpty || dataStart <= size {
            guard dataStart <= size else {
                throw .corrupt("\(name): truncated before the data section (needs \(dataStart) bytes, file has \(size))")
            }
        }
        let dataSize = max(0, size - dataStart)
        for t in infos {
            let (end, o) = t.offset.addingReportingOverflow(t.byteCount)
            guard !o, end <= dataSize else {
                throw .corrupt("\(name): tensor '\(t.name)' data [\(t.offset), \(t.offset &+ t.byteCount)) lies outside the data section (\(dataSize) bytes)")
            }
        }

        self.path = name
        self.version = version
        self.metadataKeys = keys
        self.metadata = meta
        self.tensors = infos
        self.alignment = alignment
        self.dataOffset = min(dataStart, size)
        self.fileSize = size
        self.base = base
        self.mapped = mapped
        self.tensorIndex = index
    }

    deinit {
        if mapped { munmap(UnsafeMutableRawPointer(mutating: base), fileSize) }
        else { free(UnsafeMutableRawPointer(mutating: base)) }
    }

    // MARK: Lookup

    /// The tensor called `name`; `PST_ERR_NOT_FOUND` if there is none.
    public func tensor(named name: String) throws(PSTError) -> GGUFTensorInfo {
        guard let i = tensorIndex[name] else { throw .notFound("\(path): no tensor named '\(name)'") }
        return tensors[i]
    }

    /// True when a tensor called `name` exists.
    public func hasTensor(_ name: String) -> Bool { tensorIndex[name] != nil }

    /// The raw bytes of `t` inside the mapping (no copy; valid while `self` lives).
    /// `t` must come from this file's tensor table.
    public func data(of t: GGUFTensorInfo) throws(PSTError) -> UnsafeRawBufferPointer {
        guard let i = tensorIndex[t.name], tensors[i] == t else {
            throw .notFound("\(path): tensor '\(t.name)' is not in this file's tensor table")
        }
        return UnsafeRawBufferPointer(start: base + dataOffset + t.offset, count: t.byteCount)
    }

    /// The metadata value for `key`; `PST_ERR_NOT_FOUND` if absent.
    public func value(_ key: String) throws(PSTError) -> GGUFValue {
        guard let v = metadata[key] else { throw .notFound("\(path): no metadata key '\(key)'") }
        return v
    }

    /// An integer metadata value (any integer type); nil if absent; `PST_ERR_CORRUPT` if present
    /// with another type or a negative value when `nonNegative`.
    public func int(_ key: String, nonNegative: Bool = true) throws(PSTError) -> Int? {
        guard let v = metadata[key] else { return nil }
        guard let i = v.int else { throw .corrupt("\(path): metadata '\(key)' has type \(v.type), expected an integer") }
        if nonNegative && i < 0 { throw .corrupt("\(path): metadata '\(key)' = \(i) is negative") }
        return i
    }

    /// A float metadata value (float32/float64 or integer); nil if absent.
    public func float(_ key: String) throws(PSTError) -> Double? {
        guard let v = metadata[key] else { return nil }
        guard let d = v.double else { throw .corrupt("\(path): metadata '\(key)' has type \(v.type), expected a number") }
        return d
    }

    /// A string metadata value; nil if absent.
    public func string(_ key: String) throws(PSTError) -> String? {
        guard let v = metadata[key] else { return nil }
        guard let s = v.string else { throw .corrupt("\(path): metadata '\(key)' has type \(v.type), expected a string") }
        return s
    }

    /// A bool metadata value; nil if absent.
    public func bool(_ key: String) throws(PSTError) -> Bool? {
        guard let v = metadata[key] else { return nil }
        guard let b = v.bool else { throw .corrupt("\(path): metadata '\(key)' has type \(v.type), expected a bool") }
        return b
    }

    /// An array metadata value; nil if absent.
    public func array(_ key: String) throws(PSTError) -> GGUFArray? {
        guard let v = metadata[key] else { return nil }
        guard let a = v.array else { throw .corrupt("\(path): metadata '\(key)' has type \(v.type), expected an array") }
        return a
    }
}

// MARK: - Cursor

/// Bounds-checked little-endian reader over the file image.
struct GGUFCursor {
    let base: UnsafeRawPointer
    let size: Int
    let name: String
    var pos = 0
    /// Nesting of arrays of arrays (bounded, so a hostile file cannot exhaust the stack).
    var depth = 0

    init(base: UnsafeRawPointer, size: Int, name: String) {
        self.base = base
        self.size = size
        self.name = name
    }

    var remaining: Int { size - pos }

    @inline(__always)
    mutating func need(_ n: Int, _ what: @autoclosure () -> String) throws(PSTError) {
        guard n >= 0, n <= size - pos else {
            throw .corrupt("\(name): truncated reading \(what()) at offset \(pos) (needs \(n) bytes, \(size - pos) left)")
        }
    }

    @inline(__always)
    mutating func load<T: FixedWidthInteger>(_: T.Type, _ what: @autoclosure () -> String) throws(PSTError) -> T {
        try need(MemoryLayout<T>.size, what())
        let v = base.loadUnaligned(fromByteOffset: pos, as: T.self)
        pos += MemoryLayout<T>.size
        return T(littleEndian: v)
    }

    mutating func u32(_ what: @autoclosure () -> String) throws(PSTError) -> UInt32 { try load(UInt32.self, what()) }
    mutating func u64(_ what: @autoclosure () -> String) throws(PSTError) -> UInt64 { try load(UInt64.self, what()) }

    /// A u64 count of items that each take at least `minBytesEach` bytes: rejected when the
    /// rest of the file could not hold them (so no huge allocation is attempted).
    mutating func count(_ what: @autoclosure () -> String, minBytesEach: Int) throws(PSTError) -> Int {
        let n = try u64(what())
        guard n <= UInt64(remaining / max(minBytesEach, 1)) else {
            throw .corrupt("\(name): \(what()) \(n) is larger than the file can hold")
        }
        return Int(n)
    }

    mutating func string(_ what: @autoclosure () -> String) throws(PSTError) -> String {
        let n = try u64("length of \(what())")
        guard n <= UInt64(remaining) else {
            throw .corrupt("\(name): \(what()): string length \(n) at offset \(pos - 8) exceeds the file")
        }
        let s = String(decoding: UnsafeRawBufferPointer(start: base + pos, count: Int(n)), as: UTF8.self)
        pos += Int(n)
        return s
    }

    mutating func value(_ type: GGUFValueType, key: String) throws(PSTError) -> GGUFValue {
        let w = "value of metadata '\(key)'"
        switch type {
        case .uint8: return .uint8(try load(UInt8.self, w))
        case .int8: return .int8(try load(Int8.self, w))
        case .uint16: return .uint16(try load(UInt16.self, w))
        case .int16: return .int16(try load(Int16.self, w))
        case .uint32: return .uint32(try load(UInt32.self, w))
        case .int32: return .int32(try load(Int32.self, w))
        case .float32: return .float32(Float(bitPattern: try load(UInt32.self, w)))
        case .bool: return .bool(try boolean(w))
        case .string: return .string(try string(w))
        case .uint64: return .uint64(try load(UInt64.self, w))
        case .int64: return .int64(try load(Int64.self, w))
        case .float64: return .float64(Double(bitPattern: try load(UInt64.self, w)))
        case .array: return .array(try array(key: key))
        }
    }

    mutating func boolean(_ what: @autoclosure () -> String) throws(PSTError) -> Bool {
        let b = try load(UInt8.self, what())
        guard b <= 1 else { throw .corrupt("\(name): \(what()) is a bool with byte value \(b)") }
        return b == 1
    }

    mutating func array(key: String) throws(PSTError) -> GGUFArray {
        let rawType = try u32("array element type of metadata '\(key)'")
        guard let et = GGUFValueType(rawValue: rawType) else {
            throw .corrupt("\(name): metadata '\(key)' is an array of unknown type \(rawType)")
        }
        let n = try count("element count of array '\(key)'", minBytesEach: et.minSize)
        let w = "element of array '\(key)'"
        switch et {
        case .uint8: return .uint8(try fixed(n, UInt8.self))
        case .int8: return .int8(try fixed(n, Int8.self))
        case .uint16: return .uint16(try fixed(n, UInt16.self))
        case .int16: return .int16(try fixed(n, Int16.self))
        case .uint32: return .uint32(try fixed(n, UInt32.self))
        case .int32: return .int32(try fixed(n, Int32.self))
        case .float32: return .float32(try fixed(n, UInt32.self).map { Float(bitPattern: $0) })
        case .uint64: return .uint64(try fixed(n, UInt64.self))
        case .int64: return .int64(try fixed(n, Int64.self))
        case .float64: return .float64(try fixed(n, UInt64.self).map { Double(bitPattern: $0) })
        case .bool:
            var a = [Bool](); a.reserveCapacity(n)
            for _ in 0..<n { a.append(try boolean(w)) }
            return .bool(a)
        case .string:
            var a = [String](); a.reserveCapacity(n)
            for _ in 0..<n { a.append(try string(w)) }
            return .string(a)
        case .array:
            guard depth < 8 else { throw .corrupt("\(name): metadata '\(key)' nests arrays deeper than 8 levels") }
            depth += 1
            defer { depth -= 1 }
            var a = [GGUFArray](); a.reserveCapacity(n)
            for _ in 0..<n { a.append(try array(key: key)) }
            return .array(a)
        }
    }

    /// `n` fixed-size little-endian integers (the count was checked against the file size).
    mutating func fixed<T: FixedWidthInteger>(_ n: Int, _: T.Type) throws(PSTError) -> [T] {
        let bytes = n * MemoryLayout<T>.size
        try need(bytes, "array data")
        let start = base + pos
        let a = [T](unsafeUninitializedCapacity: n) { buf, count in
            for i in 0..<n { buf[i] = T(littleEndian: start.loadUnaligned(fromByteOffset: i * MemoryLayout<T>.size, as: T.self)) }
            count = n
        }
        pos += bytes
        return a
    }
}
