import CPeftSwift
#if canImport(Glibc)
import Glibc
#endif

// C API of the file formats (Sources/PeftSwift/Files): safetensors (memory-mapped reading,
// atomic writing), PEFT adapter directories, bitsandbytes 4-bit checkpoints.

/// A C string owned by a handle.
final class OwnedCString {
    let p: UnsafeMutablePointer<CChar>
    init(_ s: String) {
        let u = Array(s.utf8)
        p = UnsafeMutablePointer<CChar>.allocate(capacity: u.count + 1)
        u.withUnsafeBufferPointer { b in
            for i in 0..<u.count { p[i] = CChar(bitPattern: b[i]) }
        }
        p[u.count] = 0
    }
    deinit { p.deallocate() }
}

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

    func fill(_ i: Int, _ out: UnsafeMutablePointer<pst_tensor>) {
        let v = views[i]
        var t = pst_tensor()
        t.struct_size = MemoryLayout<pst_tensor>.size
        t.name = UnsafePointer(names[i].p)
        t.dtype = UnsafePointer(dtypes[i].p)
        t.ndim = Int32(v.shape.count)
        withUnsafeMutableBytes(of: &t.shape) { raw in
            let s = raw.bindMemory(to: Int64.self)
            for (k, d) in v.shape.enumerated() where k < Int(PST_MAX_DIMS) { s[k] = Int64(d) }
        }
        t.data = v.bytes.baseAddress
        t.byte_count = Int64(v.byteCount)
        out.pointee = t
    }
}

func checkTensorStruct(_ p: UnsafeMutablePointer<pst_tensor>?, _ name: StaticString) throws(PSTError) -> UnsafeMutablePointer<pst_tensor> {
    let t = try required(p, name)
    guard t.pointee.struct_size == MemoryLayout<pst_tensor>.size else {
        throw .invalidArgument("\(name)->struct_size (\(t.pointee.struct_size)) must be sizeof(pst_tensor) (\(MemoryLayout<pst_tensor>.size))")
    }
    return t
}

/// Opens a safetensors file by memory-mapping it; the header is checked completely (length,
/// JSON, dtypes, shapes against offsets, offsets in range, no overlaps or gaps). Tensors are
/// handed out without copying. Free with pst_safetensors_free.
/// Errors: PST_ERR_IO (cannot open/map), PST_ERR_CORRUPT (malformed file; the message names
/// the file and the problem), PST_ERR_INVALID_ARG.
@c(pstimpl_safetensors_open)
public func pst_safetensors_open(_ path: UnsafePointer<CChar>?, _ out: UnsafeMutablePointer<UnsafeMutablePointer<pst_safetensors>?>?) -> Int32 {
    cEntry("pst_safetensors_open") { () throws(PSTError) in
        let o = try required(out, "out")
        o.pointee = nil
        let f = try SafeTensorsFile(path: try cString(path, "path"))
        o.pointee = makeHandle(SafeTensorsHandle(f), as: pst_safetensors.self)
    }
}

/// Closes a file opened by pst_safetensors_open (unmapping it); NULL is a no-op. Pointers
/// from pst_safetensors_tensor_at/_find/_metadata_at become invalid.
@c(pstimpl_safetensors_free)
public func pst_safetensors_free(_ st: UnsafeMutablePointer<pst_safetensors>?) {
    if let st { releaseHandle(st, as: SafeTensorsHandle.self) }
}

/// Writes the number of tensors to *count and of __metadata__ entries to *metadata_count
/// (either may be NULL).
/// Errors: PST_ERR_INVALID_ARG.
@c(pstimpl_safetensors_count)
public func pst_safetensors_count(_ st: UnsafeMutablePointer<pst_safetensors>?, _ count: UnsafeMutablePointer<Int64>?,
                                  _ metadata_count: UnsafeMutablePointer<Int64>?) -> Int32 {
    cEntry("pst_safetensors_count") { () throws(PSTError) in
        let h = object(try required(st, "st"), as: SafeTensorsHandle.self)
        count?.pointee = Int64(h.views.count)
        metadata_count?.pointee = Int64(h.metaKeys.count)
    }
}

/// Describes tensor index (0 ... count-1, in the file's data order) in *out (out->struct_size
/// must be sizeof(pst_tensor)); out->data points into the mapping, no copy.
/// Errors: PST_ERR_INVALID_ARG (index out of range, NULL, struct_size).
@c(pstimpl_safetensors_tensor_at)
public func pst_safetensors_tensor_at(_ st: UnsafeMutablePointer<pst_safetensors>?, _ index: Int64, _ out: UnsafeMutablePointer<pst_tensor>?) -> Int32 {
    cEntry("pst_safetensors_tensor_at") { () throws(PSTError) in
        let h = object(try required(st, "st"), as: SafeTensorsHandle.self)
        let o = try checkTensorStruct(out, "out")
        guard index >= 0 && index < Int64(h.views.count) else {
            throw .invalidArgument("index (\(index)) must be in 0..<\(h.views.count)")
        }
        h.fill(Int(index), o)
    }
}

/// Describes the tensor called name in *out (as pst_safetensors_tensor_at).
/// Errors: PST_ERR_NOT_FOUND, PST_ERR_INVALID_ARG.
@c(pstimpl_safetensors_find)
public func pst_safetensors_find(_ st: UnsafeMutablePointer<pst_safetensors>?, _ name: UnsafePointer<CChar>?, _ out: UnsafeMutablePointer<pst_tensor>?) -> Int32 {
    cEntry("pst_safetensors_find") { () throws(PSTError) in
        let h = object(try required(st, "st"), as: SafeTensorsHandle.self)
        let n = try cString(name, "name")
        let o = try checkTensorStruct(out, "out")
        guard let i = h.views.firstIndex(where: { $0.name == n }) else {
            throw .notFound("\(h.file.path): no tensor \"\(n)\"")
        }
        h.fill(i, o)
    }
}

/// The index-th __metadata__ entry: *key and *value point to NUL-terminated strings owned by
/// the file handle.
/// Errors: PST_ERR_INVALID_ARG (index out of range, NULL).
@c(pstimpl_safetensors_metadata_at)
public func pst_safetensors_metadata_at(_ st: UnsafeMutablePointer<pst_safetensors>?, _ index: Int64,
                                        _ key: UnsafeMutablePointer<UnsafePointer<CChar>?>?,
                                        _ value: UnsafeMutablePointer<UnsafePointer<CChar>?>?) -> Int32 {
    cEntry("pst_safetensors_metadata_at") { () throws(PSTError) in
        let h = object(try required(st, "st"), as: SafeTensorsHandle.self)
        let k = try required(key, "key"), v = try required(value, "value")
        guard index >= 0 && index < Int64(h.metaKeys.count) else {
            throw .invalidArgument("index (\(index)) must be in 0..<\(h.metaKeys.count)")
        }
        k.pointee = UnsafePointer(h.metaKeys[Int(index)].p)
        v.pointee = UnsafePointer(h.metaValues[Int(index)].p)
    }
}

/// Writes count tensors (and meta_count __metadata__ string pairs; the arrays may be NULL when
/// meta_count is 0) to path as safetensors, laid out as the Python package does (by dtype
/// alignment, then name; header padded to 8 bytes). The file is written to a temporary name in
/// the same directory, fsynced and renamed over path: an existing file is never left half
/// written. Tensor data is read during the call only.
/// Errors: PST_ERR_INVALID_ARG (NULLs, unknown dtype, byte_count disagreeing with the shape,
/// duplicate names), PST_ERR_IO.
@c(pstimpl_safetensors_write)
public func pst_safetensors_write(_ path: UnsafePointer<CChar>?, _ tensors: UnsafePointer<pst_tensor>?, _ count: Int64,
                                  _ meta_keys: UnsafePointer<UnsafePointer<CChar>?>?, _ meta_values: UnsafePointer<UnsafePointer<CChar>?>?,
                                  _ meta_count: Int64) -> Int32 {
    cEntry("pst_safetensors_write") { () throws(PSTError) in
        let p = try cString(path, "path")
        guard count >= 0 && count <= 1_000_000 else { throw .invalidArgument("count (\(count)) must be in 0...1000000") }
        guard meta_count >= 0 && meta_count <= 100_000 else { throw .invalidArgument("meta_count (\(meta_count)) must be in 0...100000") }
        var entries: [SafeTensorsEntry] = []
        if count > 0 {
            let ts = try required(tensors, "tensors")
            for i in 0..<Int(count) {
                let t = ts[i]
                guard t.struct_size == MemoryLayout<pst_tensor>.size else {
                    throw .invalidArgument("tensors[\(i)].struct_size (\(t.struct_size)) must be sizeof(pst_tensor)")
                }
                let name = try cString(t.name, "tensors[i].name")
                let dts = try cString(t.dtype, "tensors[i].dtype")
                guard let dt = SafeTensorsDType(rawValue: dts) else {
                    throw .invalidArgument("tensors[\(i)].dtype (\"\(dts)\") is not a safetensors dtype")
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
                        guard !o else { throw .invalidArgument("tensors[\(i)] has too many elements") }
                        n = m
                    }
                }
                guard t.byte_count == Int64(n * dt.size) else {
                    throw .invalidArgument("tensors[\(i)].byte_count (\(t.byte_count)) must be product(shape) * \(dt.size) = \(n * dt.size)")
                }
                if n > 0 && t.data == nil { throw .invalidArgument("tensors[\(i)].data is NULL") }
                entries.append(SafeTensorsEntry(name: name, dtype: dt, shape: shape,
                                                bytes: UnsafeRawBufferPointer(start: t.data, count: Int(t.byte_count))))
            }
        }
        var meta: [(String, String)]? = nil
        if meta_count > 0 {
            let ks = try required(meta_keys, "meta_keys"), vs = try required(meta_values, "meta_values")
            var m: [(String, String)] = []
            for i in 0..<Int(meta_count) { m.append((try cString(ks[i], "meta_keys[i]"), try cString(vs[i], "meta_values[i]"))) }
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
        out.append(PeftModule(try cString(ps[i], "module_paths[i]"), object(l, as: LoraLinear.self)))
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
                          _ count: Int32, _ base_model_name_or_path: UnsafePointer<CChar>?) -> Int32 {
    cEntry("pst_peft_save") { () throws(PSTError) in
        let dir = try cString(directory, "directory"), name = try cString(adapter_name, "adapter_name")
        let mods = try layerList(layers, module_paths, count)
        let base: String? = base_model_name_or_path == nil ? nil : try cString(base_model_name_or_path, "base_model_name_or_path")
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
                          _ module_paths: UnsafePointer<UnsafePointer<CChar>?>?, _ count: Int32, _ as_name: UnsafePointer<CChar>?) -> Int32 {
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
                         _ biases: UnsafePointer<UnsafePointer<Float>?>?, _ modules: UnsafePointer<UnsafePointer<CChar>?>?, _ count: Int32) -> Int32 {
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
            layers.append(BnbLayer(module: try cString(ms[i], "modules[i]"), weight: q, bias: bias))
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
                         _ bias: UnsafeMutablePointer<Float>?, _ bias_capacity: Int, _ has_bias: UnsafeMutablePointer<Int32>?) -> Int32 {
    cEntry("pst_bnb_load") { () throws(PSTError) in
        let w = try required(weight, "weight")
        w.pointee = nil
        let f = try SafeTensorsFile(path: try cString(path, "path"))
        let layer = try BnbCheckpoint.load(f, module: try cString(module, "module"))
        if let b = layer.bias, let out = bias {
            try requireCapacity("bias", have: bias_capacity, need: b.count, unit: "floats")
            out.update(from: b.baseAddress, count: b.count)
        }
        has_bias?.pointee = layer.bias == nil ? 0 : 1
        w.pointee = makeHandle(layer.weight, as: pst_quant.self)
    }
}
