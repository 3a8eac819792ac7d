// Writing safetensors files byte-identical to the Python package (safetensors 0.8.0
// `save_file`, measured): tensors ordered by dtype in the crate's enum order, descending
// (U64, I64, F64, C64, F32, U32, I32, BF16, F16, U16, I16, F8..., I8, U8, BOOL), then by name
// (bytewise UTF-8); offsets packed with no gaps; the header is serde_json's compact output
// `{"__metadata__":{...},"name":{"dtype":"F32","shape":[..],"data_offsets":[b,e]},...}`
// (no `__metadata__` key when the metadata is nil, `"__metadata__":{}` when it is empty, as
// `metadata=None` / `metadata={}`) padded with spaces to a multiple of 8. Strings are escaped
// as serde_json does (`\u0000` for NUL, other controls likewise; UTF-8 kept as is).
// The Python package writes metadata keys in hash order (a Rust HashMap, different in every
// process); peftswift writes them in the order given, so files are identical whenever there
// is at most one metadata key (PEFT writes exactly {"format": "pt"}).
// Two deliberate differences, both where the Python package writes a file nobody can read:
//  - no tensors and empty metadata: the package writes `{},"__metadata__":{}}` (its
//    `impl Serialize for Metadata` in tensor.rs announces a map of tensors.len() +
//    metadata.len() entries, 0 here, and serde_json closes such a map at once); peftswift
//    writes `{"__metadata__":{}}`;
//  - a tensor named `__metadata__`: the package writes it as a second `__metadata__` key;
//    peftswift refuses the name.
// The header is limited as the package limits it: at most 100,000,000 bytes after padding
// (MAX_HEADER_SIZE in tensor.rs; its writer fails with "header too large" and its reader
// rejects longer headers), so every file written can be read back by both.

/// One tensor to write.
public struct SafeTensorsEntry {
    public let name: String
    public let dtype: SafeTensorsDType
    public let shape: [Int]
    let storage: Storage

    enum Storage {
        /// Borrowed from the caller for the duration of the write call.
        case borrowed(UnsafeRawBufferPointer)
        case owned([UInt8])
        /// Bytes of an object the entry keeps alive (an AlignedBuffer).
        case retained(AnyObject, UnsafeRawBufferPointer)
    }

    /// Bytes the caller keeps valid until the write call returns (not copied).
    public init(name: String, dtype: SafeTensorsDType, shape: [Int], bytes: UnsafeRawBufferPointer) {
        self.name = name; self.dtype = dtype; self.shape = shape; storage = .borrowed(bytes)
    }

    /// Owned bytes.
    public init(name: String, dtype: SafeTensorsDType, shape: [Int], data: [UInt8]) {
        self.name = name; self.dtype = dtype; self.shape = shape; storage = .owned(data)
    }

    /// A float32 tensor (copied).
    public init(name: String, shape: [Int], floats: [Float]) {
        let bytes = floats.withUnsafeBytes { Array($0) }
        self.init(name: name, dtype: .f32, shape: shape, data: bytes)
    }

    /// The contents of an AlignedBuffer (kept alive by the entry, not copied).
    public init<T: BitwiseCopyable>(name: String, dtype: SafeTensorsDType, shape: [Int], buffer: AlignedBuffer<T>) {
        self.name = name; self.dtype = dtype; self.shape = shape
        storage = .retained(buffer, UnsafeRawBufferPointer(start: buffer.baseAddress, count: buffer.byteCount))
    }

    func withBytes<R>(_ body: (UnsafeRawBufferPointer) throws(PSTError) -> R) throws(PSTError) -> R {
        switch storage {
        case .borrowed(let b): return try body(b)
        case .owned(let a): return try PeftSwift.withBytes(a, body)
        case .retained(let o, let b):
            defer { withExtendedLifetime(o) {} }
            return try body(b)
        }
    }

    var byteCount: Int {
        switch storage {
        case .borrowed(let b): return b.count
        case .owned(let a): return a.count
        case .retained(_, let b): return b.count
        }
    }
}

public enum SafeTensorsWriter {
    /// The header (length prefix + padded JSON) and the entries' indices in write order.
    /// Checks: names unique and not `__metadata__`; shape dims >= 0; product(shape) × dtype
    /// size == the entry's byte count (`PST_ERR_SHAPE` otherwise); metadata keys unique; the
    /// padded header at most `SafeTensorsFile.maxHeaderBytes` (`PST_ERR_INVALID_ARG`).
    /// `metadata` nil writes no `__metadata__` key, `[]` writes `"__metadata__":{}`.
    public static func header(for entries: [SafeTensorsEntry], metadata: [(String, String)]?) throws(PSTError) -> (bytes: [UInt8], order: [Int]) {
        var seen = Set<String>()
        for e in entries {
            guard e.name != "__metadata__" else { throw .invalidArgument("a tensor may not be named \"__metadata__\"") }
            guard seen.insert(e.name).inserted else { throw .invalidArgument("tensor name \(quoted(e.name)) given twice") }
            var n = e.dtype.size
            for d in e.shape {
                guard d >= 0 else { throw .shape("tensor \(quoted(e.name)) shape \(e.shape) has a negative dimension") }
                let (m, o) = n.multipliedReportingOverflow(by: d)
                guard !o else { throw .shape("tensor \(quoted(e.name)) shape \(e.shape) overflows") }
                n = m
            }
            guard n == e.byteCount else {
                throw .shape("tensor \(quoted(e.name)) shape \(e.shape) × \(e.dtype.rawValue) is \(n) bytes; \(e.byteCount) given")
            }
        }
        let keys = entries.map { Array($0.name.utf8) }
        let order = entries.indices.sorted { a, b in
            let ra = entries[a].dtype.crateOrder, rb = entries[b].dtype.crateOrder
            if ra != rb { return ra > rb }
            return keys[a].lexicographicallyPrecedes(keys[b])
        }
        var root = JSONObject()
        if let metadata {
            var m = JSONObject()
            for (k, v) in metadata {
                guard m[k] == nil else { throw .invalidArgument("metadata key \(quoted(k)) given twice") }
                m.set(k, .string(v))
            }
            root.set("__metadata__", .object(m))
        }
        var at = 0
        for i in order {
            let e = entries[i]
            let end = at + e.byteCount
            root.set(e.name, .object(JSONObject([
                ("dtype", .string(e.dtype.rawValue)),
                ("shape", .array(e.shape.map { .int($0) })),
                ("data_offsets", .array([.int(at), .int(end)])),
            ])))
            at = end
        }
        var json = JSON.serialize(.object(root), style: .compact)
        let pad = (8 - json.count % 8) % 8
        json.append(contentsOf: repeatElement(UInt8(ascii: " "), count: pad))
        guard json.count <= SafeTensorsFile.maxHeaderBytes else {
            throw .invalidArgument("the safetensors header would be \(json.count) bytes (names and metadata included), more than the format's limit of \(SafeTensorsFile.maxHeaderBytes) bytes (MAX_HEADER_SIZE of the safetensors package, whose reader rejects such files)")
        }
        var out: [UInt8] = []
        out.reserveCapacity(8 + json.count)
        var n = UInt64(json.count).littleEndian
        withUnsafeBytes(of: &n) { out.append(contentsOf: $0) }
        out.append(contentsOf: json)
        return (out, order)
    }

    /// The whole file in memory.
    public static func serialize(_ entries: [SafeTensorsEntry], metadata: [(String, String)]? = nil) throws(PSTError) -> [UInt8] {
        let (h, order) = try header(for: entries, metadata: metadata)
        var out = h
        for i in order {
            try entries[i].withBytes { (b) throws(PSTError) in out.append(contentsOf: b) }
        }
        return out
    }

    /// Writes the file atomically (`AtomicFile`), streaming each tensor's bytes from where
    /// they are (no copy of the data section is made).
    public static func write(_ entries: [SafeTensorsEntry], metadata: [(String, String)]? = nil, to path: String) throws(PSTError) {
        let (h, order) = try header(for: entries, metadata: metadata)
        try AtomicFile.write(path) { (w: inout AtomicFileWriter) throws(PSTError) in
            try w.write(h)
            for i in order {
                try entries[i].withBytes { (b) throws(PSTError) in try w.write(b) }
            }
        }
    }
}
