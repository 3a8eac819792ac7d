import CPeftSwift
#if canImport(Glibc)
import Glibc
#endif

// C API of the file formats (Sources/PeftSwift/Files): safetensors (memory-mapped reading,
// atomic writing), PEFT adapter directories, bitsandbytes 4-bit checkpoints.
//
// Strings of safetensors files: tensor names and __metadata__ keys and values are any JSON
// string, so they may hold NUL bytes ("\u0000" in the header) and be of any length (only the
// whole header is bounded, at SafeTensorsFile.maxHeaderBytes). The _v2 functions carry them
// with explicit lengths (pst_string); the first functions take and give NUL-terminated
// strings, and refuse (PST_ERR_UNSUPPORTED) to hand out a string that holds a NUL byte rather
// than hand out a shorter one.

/// Counts a safetensors header can hold at all (it is at most SafeTensorsFile.maxHeaderBytes):
/// a tensor entry takes at least 49 bytes (`"":{"dtype":"U8","shape":[],"data_offsets":[0,0]}`),
/// a metadata entry at least 5 (`"":""`). Bounds derived from the format, not caps of our own.
let maxSafeTensorsCount = Int64(SafeTensorsFile.maxHeaderBytes / 49)
let maxSafeTensorsMetadataCount = Int64(SafeTensorsFile.maxHeaderBytes / 5)

/// An open safetensors file with C strings for its names, dtypes and metadata.
final class SafeTensorsHandle {
    let file: SafeTensorsFile
    let views: [SafeTensorView]
    let names: [OwnedCString]
    let dtypes: [OwnedCString]
    let metaKeys: [OwnedCString]
    let metaValues: [OwnedCString]
    init(_ f: SafeTensorsFile) {
        file = f
        views = f.views()
        names = views.map { OwnedCString($0.name) }
        dtypes = views.map { OwnedCString($0.dtype.rawValue) }
        let meta = f.metadataPairs ?? []
        metaKeys = meta.map { OwnedCString($0.key) }
        metaValues = meta.map { OwnedCString($0.value) }
    }

    func fill(_ i: Int, _ out: StructOutput<pst_tensor>) {
        let v = views[i]
        var t = pst_tensor()
        t.struct_size = MemoryLayout<pst_tensor>.size
        t.name = names[i].cString
        t.dtype = dtypes[i].cString
        t.ndim = Int32(v.shape.count)
        withUnsafeMutableBytes(of: &t.shape) { raw in
            let s = raw.bindMemory(to: Int64.self)
            for (k, d) in v.shape.enumerated() where k < Int(PST_MAX_DIMS) { s[k] = Int64(d) }
        }
        t.data = v.bytes.baseAddress
        t.byte_count = Int64(v.byteCount)
        out.store(t)
    }

    func checkTensorIndex(_ index: Int64) throws(PSTError) -> Int {
        guard index >= 0 && index < Int64(views.count) else {
            throw .invalidArgument("index (\(index)) must be in 0..<\(views.count)")
        }
        return Int(index)
    }

    func checkMetadataIndex(_ index: Int64) throws(PSTError) -> Int {
        guard index >= 0 && index < Int64(metaKeys.count) else {
            throw .invalidArgument("index (\(index)) must be in 0..<\(metaKeys.count)")
        }
        return Int(index)
    }

    /// Tensor i for a function that hands its name out NUL-terminated.
    func requireNULFreeName(_ i: Int, _ v2: StaticString) throws(PSTError) {
        guard !names[i].containsNUL else {
            throw .unsupported("tensor \(i) is named \(quoted(views[i].name)), which holds a NUL byte: as a NUL-terminated string it would read shorter; use \(v2), which gives the name with its length")
        }
    }
}

/// A pst_tensor the library fills (out->struct_size checked, as for every struct that grows).
func checkTensorStruct(_ p: UnsafeMutablePointer<pst_tensor>?, _ name: StaticString) throws(PSTError) -> StructOutput<pst_tensor> {
    try structOutput(try required(p, name), name)
}

/// Opens a safetensors file by memory-mapping it; the header is checked completely (length,
/// JSON, dtypes, shapes against offsets, offsets in range, no overlaps or gaps). Tensors are
/// handed out without copying. Free with pst_safetensors_free.
/// Errors: PST_ERR_IO (cannot open/map), PST_ERR_CORRUPT (malformed file; the message names
/// the file and the problem), PST_ERR_INVALID_ARG.
@c(pstimpl_safetensors_open)
public func pst_safetensors_open(_ path: UnsafePointer<CChar>?, _ out: UnsafeMutablePointer<UnsafeMutablePointer<pst_safetensors>?>?) -> pst_status {
    cEntry("pst_safetensors_open") { () throws(PSTError) in
        let o = try required(out, "out")
        o.pointee = nil
        let f = try SafeTensorsFile(path: try cString(path, "path"))
        o.pointee = makeHandle(SafeTensorsHandle(f), as: pst_safetensors.self)
    }
}

/// Closes a file opened by pst_safetensors_open (unmapping it); NULL is a no-op. Pointers
/// from pst_safetensors_tensor_at/_find/_metadata_at (and their _v2) become invalid.
@c(pstimpl_safetensors_free)
public func pst_safetensors_free(_ st: UnsafeMutablePointer<pst_safetensors>?) {
    if let st { releaseHandle(st, as: SafeTensorsHandle.self) }
}

/// Writes the number of tensors to *count and of __metadata__ entries to *metadata_count
/// (either may be NULL).
/// Errors: PST_ERR_INVALID_ARG.
@c(pstimpl_safetensors_count)
public func pst_safetensors_count(_ st: UnsafeMutablePointer<pst_safetensors>?, _ count: UnsafeMutablePointer<Int64>?,
                                  _ metadata_count: UnsafeMutablePointer<Int64>?) -> pst_status {
    cEntry("pst_safetensors_count") { () throws(PSTError) in
        let h = object(try required(st, "st"), as: SafeTensorsHandle.self)
        count?.pointee = Int64(h.views.count)
        metadata_count?.pointee = Int64(h.metaKeys.count)
    }
}

/// Describes tensor index (0 ... count-1, in the file's data order) in *out (out->struct_size
/// must be sizeof(pst_tensor)); out->data points into the mapping, no copy. out->name is
/// NUL-terminated, so a name holding a NUL byte (a JSON "\u0000") is refused, never cut short:
/// pst_safetensors_tensor_at_v2 gives every name with its length.
/// Errors: PST_ERR_INVALID_ARG (index out of range, NULL, struct_size), PST_ERR_UNSUPPORTED
/// (the name holds a NUL byte).
@c(pstimpl_safetensors_tensor_at)
public func pst_safetensors_tensor_at(_ st: UnsafeMutablePointer<pst_safetensors>?, _ index: Int64, _ out: UnsafeMutablePointer<pst_tensor>?) -> pst_status {
    cEntry("pst_safetensors_tensor_at") { () throws(PSTError) in
        let h = object(try required(st, "st"), as: SafeTensorsHandle.self)
        let o = try checkTensorStruct(out, "out")
        let i = try h.checkTensorIndex(index)
        try h.requireNULFreeName(i, "pst_safetensors_tensor_at_v2")
        h.fill(i, o)
    }
}

/// As pst_safetensors_tensor_at, for any name: *out describes tensor index and *name gets the
/// name's bytes and length (out->name points to the same bytes; both are followed by a NUL and
/// borrowed from st until pst_safetensors_free). Names may hold NUL bytes.
/// Errors: PST_ERR_INVALID_ARG (index out of range, NULL, struct_size).
@c(pstimpl_safetensors_tensor_at_v2)
public func pst_safetensors_tensor_at_v2(_ st: UnsafeMutablePointer<pst_safetensors>?, _ index: Int64, _ out: UnsafeMutablePointer<pst_tensor>?,
                                         _ name: UnsafeMutablePointer<pst_string>?) -> pst_status {
    cEntry("pst_safetensors_tensor_at_v2") { () throws(PSTError) in
        let h = object(try required(st, "st"), as: SafeTensorsHandle.self)
        let o = try checkTensorStruct(out, "out")
        let n = try required(name, "name")
        let i = try h.checkTensorIndex(index)
        h.fill(i, o)
        n.pointee = h.names[i].string
    }
}

/// Describes the tensor called name (NUL-terminated) in *out (as pst_safetensors_tensor_at).
/// Errors: PST_ERR_NOT_FOUND, PST_ERR_INVALID_ARG.
@c(pstimpl_safetensors_find)
public func pst_safetensors_find(_ st: UnsafeMutablePointer<pst_safetensors>?, _ name: UnsafePointer<CChar>?, _ out: UnsafeMutablePointer<pst_tensor>?) -> pst_status {
    cEntry("pst_safetensors_find") { () throws(PSTError) in
        let h = object(try required(st, "st"), as: SafeTensorsHandle.self)
        let n = try cText(name, "name")
        let o = try checkTensorStruct(out, "out")
        guard let i = h.file.index(of: n) else { throw .notFound("\(h.file.path): no tensor \(quoted(n))") }
        h.fill(i, o)
    }
}

/// Describes the tensor whose name is the name_length bytes at name (UTF-8, NUL bytes
/// allowed; name may be NULL when name_length is 0) in *out, as pst_safetensors_tensor_at_v2
/// without the name.
/// Errors: PST_ERR_NOT_FOUND, PST_ERR_INVALID_ARG (NULL, name_length < 0, invalid UTF-8).
@c(pstimpl_safetensors_find_v2)
public func pst_safetensors_find_v2(_ st: UnsafeMutablePointer<pst_safetensors>?, _ name: UnsafePointer<CChar>?, _ name_length: Int64,
                                    _ out: UnsafeMutablePointer<pst_tensor>?) -> pst_status {
    cEntry("pst_safetensors_find_v2") { () throws(PSTError) in
        let h = object(try required(st, "st"), as: SafeTensorsHandle.self)
        let n = try lengthText(name, name_length, data: "name", length: "name_length")
        let o = try checkTensorStruct(out, "out")
        guard let i = h.file.index(of: n) else { throw .notFound("\(h.file.path): no tensor \(quoted(n))") }
        h.fill(i, o)
    }
}

/// The index-th __metadata__ entry: *key and *value point to NUL-terminated strings owned by
/// the file handle. A key or value holding a NUL byte (a JSON "\u0000") is refused, never cut
/// short: pst_safetensors_metadata_at_v2 gives every entry with its lengths.
/// Errors: PST_ERR_INVALID_ARG (index out of range, NULL), PST_ERR_UNSUPPORTED (a NUL byte).
@c(pstimpl_safetensors_metadata_at)
public func pst_safetensors_metadata_at(_ st: UnsafeMutablePointer<pst_safetensors>?, _ index: Int64,
                                        _ key: UnsafeMutablePointer<UnsafePointer<CChar>?>?,
                                        _ value: UnsafeMutablePointer<UnsafePointer<CChar>?>?) -> pst_status {
    cEntry("pst_safetensors_metadata_at") { () throws(PSTError) in
        let h = object(try required(st, "st"), as: SafeTensorsHandle.self)
        let k = try required(key, "key"), v = try required(value, "value")
        let i = try h.checkMetadataIndex(index)
        let mk = h.metaKeys[i], mv = h.metaValues[i]
        guard !mk.containsNUL && !mv.containsNUL else {
            let pairs = h.file.metadataPairs ?? []
            let which = mk.containsNUL ? "key \(quoted(pairs[i].key))" : "value of key \(quoted(pairs[i].key))"
            throw .unsupported("__metadata__ entry \(i): the \(which) holds a NUL byte: as a NUL-terminated string it would read shorter; use pst_safetensors_metadata_at_v2, which gives strings with their lengths")
        }
        k.pointee = mk.cString
        v.pointee = mv.cString
    }
}

/// The index-th __metadata__ entry (0 ... metadata_count-1, in file order) with lengths:
/// *key and *value get the bytes and byte lengths of the key and value (UTF-8, NUL bytes
/// allowed, each followed by a NUL; borrowed from st until pst_safetensors_free).
/// Errors: PST_ERR_INVALID_ARG (index out of range, NULL).
@c(pstimpl_safetensors_metadata_at_v2)
public func pst_safetensors_metadata_at_v2(_ st: UnsafeMutablePointer<pst_safetensors>?, _ index: Int64,
                                           _ key: UnsafeMutablePointer<pst_string>?, _ value: UnsafeMutablePointer<pst_string>?) -> pst_status {
    cEntry("pst_safetensors_metadata_at_v2") { () throws(PSTError) in
        let h = object(try required(st, "st"), as: SafeTensorsHandle.self)
        let k = try required(key, "key"), v = try required(value, "value")
        let i = try h.checkMetadataIndex(index)
        k.pointee = h.metaKeys[i].string
        v.pointee = h.metaValues[i].string
    }
}

/// The tensors of a write call: count pst_tensor structs (tensors may be NULL when count is
/// 0), named by names[i] when names is given, else by tensors[i].name (NUL-terminated).
func writeEntries(_ tensors: UnsafePointer<pst_tensor>?, _ count: Int64, names: UnsafePointer<pst_string>?) throws(PSTError) -> [SafeTensorsEntry] {
    guard count >= 0 && count <= maxSafeTensorsCount else {
        throw .invalidArgument("count (\(count)) must be in 0...\(maxSafeTensorsCount) (more tensors do not fit in a safetensors header)")
    }
    var entries: [SafeTensorsEntry] = []
    guard count > 0 else { return entries }
    let ts = try required(tensors, "tensors")
    entries.reserveCapacity(Int(count))
    for i in 0..<Int(count) {
        let t = try readStructElement(ts, i, over: pst_tensor(), "tensors")
        let name: String
        if let names { name = try lengthText(names[i], "names[\(i)]") } else { name = try cText(t.name, "tensors[\(i)].name") }
        let dts = try cText(t.dtype, "tensors[\(i)].dtype")
        guard let dt = SafeTensorsDType(rawValue: dts) else {
            throw .invalidArgument("tensors[\(i)].dtype (\(quoted(dts))) is not a safetensors dtype")
        }
        guard t.ndim >= 0 && t.ndim <= PST_MAX_DIMS else {
            throw .invalidArgument("tensors[\(i)].ndim (\(t.ndim)) must be in 0...\(PST_MAX_DIMS)")
        }
        var shape: [Int] = []
        var n = 1
        var st = t
        try withUnsafeBytes(of: &st.shape) { (raw) throws(PSTError) in
            let s = raw.bindMemory(to: Int64.self)
            for k in 0..<Int(t.ndim) {
                guard s[k] >= 0 && s[k] <= Int64(Int32.max) else {
                    throw .invalidArgument("tensors[\(i)].shape[\(k)] (\(s[k])) must be in 0...2^31-1")
                }
                shape.append(Int(s[k]))
                let (m, o) = n.multipliedReportingOverflow(by: Int(s[k]))
                guard !o else { throw .invalidArgument("tensors[\(i)].shape \(shape) has too many elements") }
                n = m
            }
        }
        let (bytes, o) = n.multipliedReportingOverflow(by: dt.size)
        guard !o else { throw .invalidArgument("tensors[\(i)].shape \(shape) × \(dt.rawValue) has too many bytes") }
        guard t.byte_count == Int64(bytes) else {
            throw .invalidArgument("tensors[\(i)].byte_count (\(t.byte_count)) must be product(shape) * \(dt.size) = \(bytes)")
        }
        if bytes > 0 && t.data == nil { throw .invalidArgument("tensors[\(i)].data is NULL") }
        entries.append(SafeTensorsEntry(name: name, dtype: dt, shape: shape,
                                        bytes: UnsafeRawBufferPointer(start: t.data, count: bytes)))
    }
    return entries
}

/// Writes count tensors (and meta_count __metadata__ string pairs; the arrays may be NULL when
/// meta_count is 0) to path as safetensors, laid out as the Python package does (by dtype
/// alignment, then name; header padded to 8 bytes). Names, keys and values are NUL-terminated
/// UTF-8 of any length; meta_count 0 writes no __metadata__ key. pst_safetensors_write_v2
/// takes strings with lengths (NUL bytes inside) and writes an empty __metadata__ too.
/// The file is written to a temporary name in the same directory, fsynced and renamed over
/// path: an existing file is never left half written. Tensor data is read during the call only.
/// Errors: PST_ERR_INVALID_ARG (NULLs, unknown dtype, byte_count disagreeing with the shape,
/// duplicate names, invalid UTF-8, a header over the format's 100,000,000 bytes), PST_ERR_IO.
@c(pstimpl_safetensors_write)
public func pst_safetensors_write(_ path: UnsafePointer<CChar>?, _ tensors: UnsafePointer<pst_tensor>?, _ count: Int64,
                                  _ meta_keys: UnsafePointer<UnsafePointer<CChar>?>?, _ meta_values: UnsafePointer<UnsafePointer<CChar>?>?,
                                  _ meta_count: Int64) -> pst_status {
    cEntry("pst_safetensors_write") { () throws(PSTError) in
        let p = try cString(path, "path")
        guard meta_count >= 0 && meta_count <= maxSafeTensorsMetadataCount else {
            throw .invalidArgument("meta_count (\(meta_count)) must be in 0...\(maxSafeTensorsMetadataCount) (more entries do not fit in a safetensors header)")
        }
        let entries = try writeEntries(tensors, count, names: nil)
        var meta: [(String, String)]? = nil
        if meta_count > 0 {
            let ks = try required(meta_keys, "meta_keys"), vs = try required(meta_values, "meta_values")
            var m: [(String, String)] = []
            for i in 0..<Int(meta_count) { m.append((try cText(ks[i], "meta_keys[\(i)]"), try cText(vs[i], "meta_values[\(i)]"))) }
            meta = m
        }
        try SafeTensorsWriter.write(entries, metadata: meta, to: p)
    }
}

/// Writes a safetensors file as pst_safetensors_write, with strings carried by length:
/// tensor i is named names[i] (UTF-8, NUL bytes allowed) or, when names is NULL,
/// tensors[i].name (NUL-terminated; tensors[i].name is ignored when names is given).
/// meta_count is the number of __metadata__ pairs meta_keys[i]: meta_values[i] (pst_string
/// arrays, NULL allowed when meta_count <= 0); 0 writes an empty "__metadata__":{} and
/// PST_SAFETENSORS_NO_METADATA (-1) no __metadata__ key: safetensors' metadata={} and
/// metadata=None, byte for byte (pairs are written in the order given; the Python package
/// writes several keys in a random hash order). No string has a length cap of its own; the
/// header as a whole is limited to the format's 100,000,000 bytes. Atomic, as
/// pst_safetensors_write; every argument is checked before the file is created.
/// Errors: PST_ERR_INVALID_ARG (NULLs, a negative length, invalid UTF-8, unknown dtype,
/// byte_count disagreeing with the shape, duplicate names or keys, a tensor named
/// "__metadata__", the header over 100,000,000 bytes), PST_ERR_IO.
@c(pstimpl_safetensors_write_v2)
public func pst_safetensors_write_v2(_ path: UnsafePointer<CChar>?, _ tensors: UnsafePointer<pst_tensor>?,
                                     _ names: UnsafePointer<pst_string>?, _ count: Int64,
                                     _ meta_keys: UnsafePointer<pst_string>?, _ meta_values: UnsafePointer<pst_string>?,
                                     _ meta_count: Int64) -> pst_status {
    cEntry("pst_safetensors_write_v2") { () throws(PSTError) in
        let p = try cString(path, "path")
        guard meta_count >= Int64(PST_SAFETENSORS_NO_METADATA) && meta_count <= maxSafeTensorsMetadataCount else {
            throw .invalidArgument("meta_count (\(meta_count)) must be PST_SAFETENSORS_NO_METADATA (-1) or in 0...\(maxSafeTensorsMetadataCount)")
        }
        let entries = try writeEntries(tensors, count, names: names)
        var meta: [(String, String)]? = nil
        if meta_count >= 0 {
            var m: [(String, String)] = []
            if meta_count > 0 {
                let ks = try required(meta_keys, "meta_keys"), vs = try required(meta_values, "meta_values")
                m.reserveCapacity(Int(meta_count))
                for i in 0..<Int(meta_count) { m.append((try lengthText(ks[i], "meta_keys[\(i)]"), try lengthText(vs[i], "meta_values[\(i)]"))) }
            }
            meta = m
        }
        try SafeTensorsWriter.write(entries, metadata: meta, to: p)
    }
}

func layerList(_ layers: UnsafePointer<UnsafeMutablePointer<pst_lora>?>?, _ paths: UnsafePointer<UnsafePointer<CChar>?>?,
               _ count: Int32) throws(PSTError) -> [PeftModule] {
    guard count >= 1 && count <= 100_000 else { throw .invalidArgument("count (\(count)) must be in 1...100000") }
    let ls = try required(layers, "layers"), ps = try required(paths, "module_paths")
    var out: [PeftModule] = []
    for i in 0..<Int(count) {
        guard let l = ls[i] else { throw .invalidArgument("layers[\(i)] is NULL") }
        out.append(PeftModule(try cText(ps[i], "module_paths[\(i)]"), object(l, as: LoraLinear.self)))
    }
    return out
}

/// Saves adapter adapter_name of count layers as a PEFT adapter directory (created if
/// missing): adapter_model.safetensors with base_model.model.<module_paths[i]>.lora_A.weight
/// (r x in) and .lora_B.weight (out x r), and adapter_config.json with the fields PEFT writes
/// (peft_type "LORA", r, lora_alpha, lora_dropout, use_rslora, target_modules, ...).
/// module_paths are the model's own names (e.g. "model.layers.0.self_attn.q_proj"), so
/// PeftModel.from_pretrained loads the directory onto the matching model.
/// base_model_name_or_path may be NULL. Files are written atomically.
/// Errors: PST_ERR_INVALID_ARG, PST_ERR_NOT_FOUND (a layer lacks the adapter), PST_ERR_IO.
@c(pstimpl_peft_save)
public func pst_peft_save(_ directory: UnsafePointer<CChar>?, _ adapter_name: UnsafePointer<CChar>?,
                          _ layers: UnsafePointer<UnsafeMutablePointer<pst_lora>?>?, _ module_paths: UnsafePointer<UnsafePointer<CChar>?>?,
                          _ count: Int32, _ base_model_name_or_path: UnsafePointer<CChar>?) -> pst_status {
    cEntry("pst_peft_save") { () throws(PSTError) in
        let dir = try cString(directory, "directory"), name = try cString(adapter_name, "adapter_name")
        let mods = try layerList(layers, module_paths, count)
        let base: String? = base_model_name_or_path == nil ? nil : try cText(base_model_name_or_path, "base_model_name_or_path")
        try PeftAdapterDirectory.save(adapter: name, of: mods, to: dir, baseModelNameOrPath: base)
    }
}

/// Loads a PEFT adapter directory (as PEFT or peftswift saved it) into count layers under
/// the name as_name: every tensor and config field is checked first (r and shapes against
/// each layer, types of the config fields) and only then is the adapter added to all layers:
/// never partly loaded. Each layer's module path selects its tensors.
/// Errors: PST_ERR_IO, PST_ERR_CORRUPT (malformed files, with the file named),
/// PST_ERR_NOT_FOUND (a tensor the layers need is missing), PST_ERR_SHAPE, PST_ERR_EXISTS
/// (as_name taken), PST_ERR_UNSUPPORTED, PST_ERR_INVALID_ARG.
@c(pstimpl_peft_load)
public func pst_peft_load(_ directory: UnsafePointer<CChar>?, _ layers: UnsafePointer<UnsafeMutablePointer<pst_lora>?>?,
                          _ module_paths: UnsafePointer<UnsafePointer<CChar>?>?, _ count: Int32, _ as_name: UnsafePointer<CChar>?) -> pst_status {
    cEntry("pst_peft_load") { () throws(PSTError) in
        let dir = try cString(directory, "directory"), name = try cString(as_name, "as_name")
        let mods = try layerList(layers, module_paths, count)
        try PeftAdapterDirectory.load(from: dir, into: mods, as: name)
    }
}

/// Saves count 4-bit layers as a bitsandbytes Linear4bit checkpoint (safetensors) with
/// bitsandbytes' keys under each module prefix: weight, weight.absmax, weight.quant_map,
/// weight.nested_absmax, weight.nested_quant_map, weight.quant_state.bitsandbytes__nf4|fp4,
/// and bias when biases[i] is not NULL (shape[0] floats). biases may be NULL. Atomic write.
/// Errors: PST_ERR_INVALID_ARG (a weight not 2-D, NULLs), PST_ERR_IO.
@c(pstimpl_bnb_save)
public func pst_bnb_save(_ path: UnsafePointer<CChar>?, _ weights: UnsafePointer<UnsafeMutablePointer<pst_quant>?>?,
                         _ biases: UnsafePointer<UnsafePointer<Float>?>?, _ modules: UnsafePointer<UnsafePointer<CChar>?>?, _ count: Int32) -> pst_status {
    cEntry("pst_bnb_save") { () throws(PSTError) in
        let p = try cString(path, "path")
        guard count >= 1 && count <= 100_000 else { throw .invalidArgument("count (\(count)) must be in 1...100000") }
        let ws = try required(weights, "weights"), ms = try required(modules, "modules")
        var layers: [BnbLayer] = []
        for i in 0..<Int(count) {
            guard let w = ws[i] else { throw .invalidArgument("weights[\(i)] is NULL") }
            let q = object(w, as: QuantizedTensor.self)
            var bias: AlignedBuffer<Float>? = nil
            if let b = biases?[i] {
                guard let out = q.shape.first else { throw .invalidArgument("weights[\(i)] has no shape") }
                bias = try AlignedBuffer(copying: UnsafeBufferPointer(start: b, count: out))
            }
            layers.append(BnbLayer(module: try cText(ms[i], "modules[\(i)]"), weight: q, bias: bias))
        }
        try BnbCheckpoint.save(layers, to: p)
    }
}

/// Loads one Linear4bit layer (module prefix module, "" for none) from a bitsandbytes
/// checkpoint: *weight receives a new pst_quant (free it), and when the checkpoint has a bias
/// and bias is not NULL, bias_capacity >= shape[0] floats of it are copied; *has_bias (may be
/// NULL) says whether there was one. Every field is validated against the others.
/// Errors: PST_ERR_IO, PST_ERR_CORRUPT, PST_ERR_NOT_FOUND, PST_ERR_SHAPE, PST_ERR_INVALID_ARG.
@c(pstimpl_bnb_load)
public func pst_bnb_load(_ path: UnsafePointer<CChar>?, _ module: UnsafePointer<CChar>?,
                         _ weight: UnsafeMutablePointer<UnsafeMutablePointer<pst_quant>?>?,
                         _ bias: UnsafeMutablePointer<Float>?, _ bias_capacity: Int64, _ has_bias: UnsafeMutablePointer<Int32>?) -> pst_status {
    cEntry("pst_bnb_load") { () throws(PSTError) in
        let w = try required(weight, "weight")
        w.pointee = nil
        let f = try SafeTensorsFile(path: try cString(path, "path"))
        let layer = try BnbCheckpoint.load(f, module: try cText(module, "module"))
        if let b = layer.bias, let out = bias {
            try requireCapacity("bias", have: bias_capacity, need: b.count, unit: "floats")
            out.update(from: b.baseAddress, count: b.count)
        }
        has_bias?.pointee = layer.bias == nil ? 0 : 1
        w.pointee = makeHandle(layer.weight, as: pst_quant.self)
    }
}
