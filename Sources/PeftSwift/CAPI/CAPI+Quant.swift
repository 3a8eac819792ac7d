import CPeftSwift

// C API of the quantization engine (Sources/PeftSwift/Quant): flat kernels over caller-owned
// buffers, and the pst_quant handle that owns a quantized tensor with its state.

/// Returns the bytes of packed 4-bit codes for n elements: (n + 1) / 2; 0 when n < 1.
@c(pstimpl_4bit_packed_bytes)
public func pst_4bit_packed_bytes(_ n: Int64) -> Int64 {
    n < 1 ? 0 : Int64(Quant4.packedByteCount(Int(n)))
}

/// Returns the number of blocks (absmax values) for n elements in blocks of blocksize:
/// ceil(n / blocksize); 0 when n < 1 or blocksize < 1.
@c(pstimpl_blockwise_count)
public func pst_blockwise_count(_ n: Int64, _ blocksize: Int32) -> Int64 {
    n < 1 || blocksize < 1 ? 0 : (n + Int64(blocksize) - 1) / Int64(blocksize)
}

/// Copies a codebook (PST_CODE_*) into out: 16 floats for NF4/FP4, 256 for the dynamic maps.
/// out_count is the capacity of out in floats.
/// Errors: PST_ERR_INVALID_ARG for an unknown codebook, a NULL or too small out.
@c(pstimpl_codebook)
public func pst_codebook(_ which: Int32, _ out: UnsafeMutablePointer<Float>?, _ out_count: Int64) -> pst_status {
    cEntry("pst_codebook") { () throws(PSTError) in
        let table: [Float]
        switch which {
        case PST_CODE_NF4: table = Codebooks.nf4
        case PST_CODE_FP4: table = Codebooks.fp4
        case PST_CODE_DYNAMIC_SIGNED: table = Codebooks.dynamicSigned
        case PST_CODE_DYNAMIC_UNSIGNED: table = Codebooks.dynamicUnsigned
        default: throw .invalidArgument("which (\(which)) is not a PST_CODE_* value")
        }
        let o = try required(out, "out")
        try requireCapacity("out", have: out_count, need: table.count, unit: "floats")
        table.withUnsafeBufferPointer { o.update(from: $0.baseAddress!, count: table.count) }
    }
}

func quantType(_ raw: Int32) throws(PSTError) -> QuantType {
    guard let t = QuantType(rawValue: raw) else {
        throw .invalidArgument("quant_type (\(raw)) must be PST_QUANT_NF4 (0) or PST_QUANT_FP4 (1)")
    }
    return t
}

func floatDType(_ raw: Int32, _ name: StaticString) throws(PSTError) -> DType {
    let d = try DType.from(raw, argument: name)
    guard d.isFloat else {
        throw .invalidArgument("\(name) (\(raw), \(d.torchName)) must be PST_DTYPE_F32, _F16 or _BF16")
    }
    return d
}

/// Quantizes n elements of x (dtype PST_DTYPE_F32, _F16 or _BF16) to 4-bit codes in blocks of
/// blocksize, bitsandbytes' quantize_4bit without double quantization (layout: see
/// pst_quant_state). Writes pst_4bit_packed_bytes(n) bytes to packed and
/// pst_blockwise_count(n, blocksize) floats to absmax; capacities are in bytes and floats.
/// Nothing is written on error.
/// Errors: PST_ERR_INVALID_ARG (NULL pointer, n < 1, blocksize not in 32...4096, unknown dtype
/// or quant_type, capacity too small), PST_ERR_NONFINITE (NaN/Inf; the message names the index).
@c(pstimpl_4bit_quantize)
public func pst_4bit_quantize(_ x: UnsafeRawPointer?, _ dtype: Int32, _ n: Int64, _ blocksize: Int32, _ quant_type: Int32,
                              _ packed: UnsafeMutablePointer<UInt8>?, _ packed_capacity: Int64,
                              _ absmax: UnsafeMutablePointer<Float>?, _ absmax_capacity: Int64) -> pst_status {
    cEntry("pst_4bit_quantize") { () throws(PSTError) in
        let x = try required(x, "x")
        let dt = try floatDType(dtype, "dtype")
        let count = try requireCount("n", n)
        try Quant4.validate(count: count, blocksize: Int(blocksize))
        let qt = try quantType(quant_type)
        let p = try required(packed, "packed"), a = try required(absmax, "absmax")
        try requireCapacity("packed", have: packed_capacity, need: Quant4.packedByteCount(count))
        try requireCapacity("absmax", have: absmax_capacity, need: Quant4.blockCount(count, blocksize: Int(blocksize)), unit: "floats")
        try Quant4.quantize(x, dtype: dt, count: count, blocksize: Int(blocksize), type: qt, packed: p, absmax: a)
    }
}

/// Dequantizes n 4-bit codes: out[i] = code[nibble(i)] * absmax[i / blocksize], written as
/// out_dtype (PST_DTYPE_F32, _F16 or _BF16; half types rounded to nearest even). code is the
/// 16-entry map stored with the state (NULL: the standard table of quant_type).
/// out_capacity is in bytes. Nothing is written on error.
/// Errors: PST_ERR_INVALID_ARG (NULL pointer, bad n/blocksize/dtype/quant_type, a buffer smaller
/// than n needs), PST_ERR_NONFINITE (an absmax or code value is NaN/Inf).
@c(pstimpl_4bit_dequantize)
public func pst_4bit_dequantize(_ packed: UnsafePointer<UInt8>?, _ packed_bytes: Int64,
                                _ absmax: UnsafePointer<Float>?, _ absmax_count: Int64,
                                _ code: UnsafePointer<Float>?, _ quant_type: Int32,
                                _ n: Int64, _ blocksize: Int32,
                                _ out: UnsafeMutableRawPointer?, _ out_dtype: Int32, _ out_capacity: Int64) -> pst_status {
    cEntry("pst_4bit_dequantize") { () throws(PSTError) in
        let p = try required(packed, "packed"), a = try required(absmax, "absmax")
        let count = try requireCount("n", n)
        try Quant4.validate(count: count, blocksize: Int(blocksize))
        let qt = try quantType(quant_type)
        let dt = try floatDType(out_dtype, "out_dtype")
        let o = try required(out, "out")
        try requireCapacity("packed", have: packed_bytes, need: Quant4.packedByteCount(count))
        try requireCapacity("absmax", have: absmax_count, need: Quant4.blockCount(count, blocksize: Int(blocksize)), unit: "floats")
        try requireCapacity("out", have: out_capacity, need: count * dt.size)
        let table = qt == .nf4 ? Codebooks.nf4 : Codebooks.fp4
        try table.withUnsafeBufferPointer { (t) throws(PSTError) in
            try Quant4.dequantize(packed: p, absmax: a, code: code ?? t.baseAddress!, count: count,
                                  blocksize: Int(blocksize), out: o, dtype: dt)
        }
    }
}

/// bitsandbytes' quantize_blockwise: n floats to 8-bit indices into code (256 sorted floats;
/// NULL: the signed dynamic map) in blocks of blocksize (1 ... 2^24; bitsandbytes uses 64 ... 4096 and
/// accepts any positive size on CPU), with one
/// float absmax per block; index = the nearest code to x / absmax, ties to the lower.
/// q_capacity is in bytes (n needed), absmax_capacity in floats (pst_blockwise_count).
/// Errors: PST_ERR_INVALID_ARG, PST_ERR_NONFINITE (naming the index).
@c(pstimpl_8bit_quantize)
public func pst_8bit_quantize(_ x: UnsafePointer<Float>?, _ n: Int64, _ blocksize: Int32, _ code: UnsafePointer<Float>?,
                              _ q: UnsafeMutablePointer<UInt8>?, _ q_capacity: Int64,
                              _ absmax: UnsafeMutablePointer<Float>?, _ absmax_capacity: Int64) -> pst_status {
    cEntry("pst_8bit_quantize") { () throws(PSTError) in
        let x = try required(x, "x")
        let count = try requireCount("n", n)
        let qq = try required(q, "q"), a = try required(absmax, "absmax")
        try Blockwise8.validate(count: count, blocksize: Int(blocksize))
        try requireCapacity("q", have: q_capacity, need: count)
        try requireCapacity("absmax", have: absmax_capacity, need: Blockwise8.blockCount(count, blocksize: Int(blocksize)), unit: "floats")
        try Codebooks.dynamicSigned.withUnsafeBufferPointer { (t) throws(PSTError) in
            try Blockwise8.quantize(x, count: count, blocksize: Int(blocksize), code: code ?? t.baseAddress!, q: qq, absmax: a)
        }
    }
}

/// bitsandbytes' dequantize_blockwise: out[i] = code[q[i]] * absmax[i / blocksize].
/// code: 256 floats (NULL: the signed dynamic map). out_capacity in floats.
/// Errors: PST_ERR_INVALID_ARG, PST_ERR_NONFINITE (an absmax is NaN/Inf).
@c(pstimpl_8bit_dequantize)
public func pst_8bit_dequantize(_ q: UnsafePointer<UInt8>?, _ n: Int64, _ absmax: UnsafePointer<Float>?, _ absmax_count: Int64,
                                _ code: UnsafePointer<Float>?, _ blocksize: Int32,
                                _ out: UnsafeMutablePointer<Float>?, _ out_capacity: Int64) -> pst_status {
    cEntry("pst_8bit_dequantize") { () throws(PSTError) in
        let qq = try required(q, "q"), a = try required(absmax, "absmax")
        let count = try requireCount("n", n)
        try Blockwise8.validate(count: count, blocksize: Int(blocksize))
        let o = try required(out, "out")
        try requireCapacity("absmax", have: absmax_count, need: Blockwise8.blockCount(count, blocksize: Int(blocksize)), unit: "floats")
        try requireCapacity("out", have: out_capacity, need: count, unit: "floats")
        try Codebooks.dynamicSigned.withUnsafeBufferPointer { (t) throws(PSTError) in
            try Blockwise8.dequantize(q: qq, absmax: a, code: code ?? t.baseAddress!, count: count, blocksize: Int(blocksize), out: o)
        }
    }
}

// MARK: - The pst_quant handle

/// Quantizes a tensor (x: shape[0..ndim) elements of dtype PST_DTYPE_F32/_F16/_BF16,
/// row-major) to 4 bits (quant_type PST_QUANT_NF4/FP4, blocksize 32 ... 4096), with double
/// quantization of the absmax when double_quant is true (bitsandbytes' compress_statistics).
/// On success *out is a new handle owning the codes and the state; free it with
/// pst_quant_free. x is not kept.
/// Errors: PST_ERR_INVALID_ARG, PST_ERR_NONFINITE (naming the index), PST_ERR_OUT_OF_MEMORY.
@c(pstimpl_quant_create_4bit)
public func pst_quant_create_4bit(_ x: UnsafeRawPointer?, _ dtype: Int32, _ shape: UnsafePointer<Int64>?, _ ndim: Int32,
                                  _ blocksize: Int32, _ quant_type: Int32, _ double_quant: Bool,
                                  _ out: UnsafeMutablePointer<UnsafeMutablePointer<pst_quant>?>?) -> pst_status {
    cEntry("pst_quant_create_4bit") { () throws(PSTError) in
        let o = try required(out, "out")
        o.pointee = nil
        let x = try required(x, "x")
        let dt = try floatDType(dtype, "dtype")
        let dims = try readShape(shape, ndim)
        let qt = try quantType(quant_type)
        let t = try QuantizedTensor(quantizing: x, dtype: dt, shape: dims, blocksize: Int(blocksize), type: qt, doubleQuant: double_quant)
        o.pointee = makeHandle(t, as: pst_quant.self)
    }
}

/// Creates a handle from an existing state (for example a bitsandbytes Linear4bit checkpoint:
/// weight, weight.absmax, weight.quant_map, weight.nested_absmax, weight.nested_quant_map and
/// the JSON's offset/blocksize/shape/dtype). Every field is checked against the others (shape
/// vs packed_bytes, absmax_count vs blocks, map lengths, nested counts, finite values); the
/// arrays are copied, nothing is kept. st->struct_size must be sizeof(pst_quant_state).
/// Errors: PST_ERR_INVALID_ARG (a NULL pointer or an invalid field), PST_ERR_SHAPE (fields that
/// disagree), PST_ERR_NONFINITE, PST_ERR_OUT_OF_MEMORY.
@c(pstimpl_quant_from_state)
public func pst_quant_from_state(_ st: UnsafePointer<pst_quant_state>?,
                                 _ out: UnsafeMutablePointer<UnsafeMutablePointer<pst_quant>?>?) -> pst_status {
    cEntry("pst_quant_from_state") { () throws(PSTError) in
        try quantFromState(st, out, borrowing: false)
    }
}

/// Creates a handle over an existing state WITHOUT copying it: the handle (and every LoRA
/// layer made from it with pst_lora_create_quantized) computes on the caller's arrays in
/// place: st->packed, absmax, code and, when nested, nested_absmax and nested_code (the
/// tensors bitsandbytes' Params4bit and QuantState hold: weight.data (quant_storage uint8),
/// quant_state.absmax (uint8 when nested), .code, .state2.absmax, .state2.code; offset and the
/// other fields are read now). The same checks as pst_quant_from_state, once, here.
/// Lifetime: the caller keeps those arrays alive and unchanged until the handle and every
/// layer made from it are freed (pst_quant_free and pst_lora_free); the library never writes
/// or frees them (a merge on such a layer makes new codes of its own). *st itself is not kept.
/// Errors: as pst_quant_from_state (no PST_ERR_OUT_OF_MEMORY for the arrays).
@c(pstimpl_quant_borrow_state)
public func pst_quant_borrow_state(_ st: UnsafePointer<pst_quant_state>?,
                                   _ out: UnsafeMutablePointer<UnsafeMutablePointer<pst_quant>?>?) -> pst_status {
    cEntry("pst_quant_borrow_state") { () throws(PSTError) in
        try quantFromState(st, out, borrowing: true)
    }
}

func quantFromState(_ st: UnsafePointer<pst_quant_state>?, _ out: UnsafeMutablePointer<UnsafeMutablePointer<pst_quant>?>?,
                    borrowing: Bool) throws(PSTError) {
    let o = try required(out, "out")
    o.pointee = nil
    let s = try readStruct(try required(st, "state"), over: pst_quant_state(), "state")
    let qt = try quantType(s.quant_type)
    let dt = try floatDType(s.dtype, "state->dtype")
    let dims = try withUnsafeBytes(of: s.shape) { (raw) throws(PSTError) in
        try readShape(raw.bindMemory(to: Int64.self).baseAddress, s.ndim, "state->shape")
    }
    guard s.packed_bytes >= 0, s.absmax_count >= 0, s.nested_absmax_count >= 0 else {
        throw .invalidArgument("state counts must be >= 0 (packed_bytes \(s.packed_bytes), absmax_count \(s.absmax_count), nested_absmax_count \(s.nested_absmax_count))")
    }
    let packed = UnsafeBufferPointer(start: try required(s.packed, "state->packed"), count: Int(s.packed_bytes))
    let code = UnsafeBufferPointer(start: try required(s.code, "state->code"), count: 16)
    let absmaxRaw = try required(s.absmax, "state->absmax")
    let t: QuantizedTensor
    if s.nested != 0 {
        let q = UnsafeBufferPointer(start: absmaxRaw.assumingMemoryBound(to: UInt8.self), count: Int(s.absmax_count))
        let na = UnsafeBufferPointer(start: try required(s.nested_absmax, "state->nested_absmax"), count: Int(s.nested_absmax_count))
        let nc = UnsafeBufferPointer(start: try required(s.nested_code, "state->nested_code"), count: 256)
        t = try QuantizedTensor(shape: dims, dtype: dt, quantType: qt, blocksize: Int(s.blocksize), packed: packed, code: code,
                                absmax: nil, nested: (offset: s.offset, q: q, absmax: na, code: nc, blocksize: Int(s.nested_blocksize)), borrowing: borrowing)
    } else {
        let a = UnsafeBufferPointer(start: absmaxRaw.assumingMemoryBound(to: Float.self), count: Int(s.absmax_count))
        t = try QuantizedTensor(shape: dims, dtype: dt, quantType: qt, blocksize: Int(s.blocksize), packed: packed, code: code,
                                absmax: a, nested: nil, borrowing: borrowing)
    }
    o.pointee = makeHandle(t, as: pst_quant.self)
}

/// Fills *st with the handle's state. The pointers in it are borrowed from the handle: valid
/// until pst_quant_free(q), never to be written or freed. st->struct_size must be set by the
/// caller to sizeof(pst_quant_state).
/// Errors: PST_ERR_INVALID_ARG (NULL, wrong struct_size).
@c(pstimpl_quant_get_state)
public func pst_quant_get_state(_ q: UnsafeMutablePointer<pst_quant>?, _ st: UnsafeMutablePointer<pst_quant_state>?) -> pst_status {
    cEntry("pst_quant_get_state") { () throws(PSTError) in
        let t = object(try required(q, "q"), as: QuantizedTensor.self)
        let s = try structOutput(try required(st, "state"), "state")
        var r = pst_quant_state()
        r.struct_size = MemoryLayout<pst_quant_state>.size
        r.quant_type = t.quantType.rawValue
        r.dtype = t.dtype.rawValue
        r.blocksize = Int32(t.blocksize)
        r.ndim = Int32(t.shape.count)
        withUnsafeMutableBytes(of: &r.shape) { raw in
            let p = raw.bindMemory(to: Int64.self)
            for (i, d) in t.shape.enumerated() { p[i] = Int64(d) }
        }
        r.packed = UnsafePointer(t.packed.baseAddress)
        r.packed_bytes = Int64(t.packed.count)
        r.code = UnsafePointer(t.code.baseAddress)
        if let n = t.nested {
            r.absmax = UnsafeRawPointer(n.q.baseAddress)
            r.absmax_count = Int64(n.q.count)
            r.nested = 1
            r.nested_blocksize = Int32(n.blocksize)
            r.offset = n.offset
            r.nested_absmax = UnsafePointer(n.absmax.baseAddress)
            r.nested_absmax_count = Int64(n.absmax.count)
            r.nested_code = UnsafePointer(n.code.baseAddress)
        } else if let a = t.absmax {
            r.absmax = UnsafeRawPointer(a.baseAddress)
            r.absmax_count = Int64(a.count)
        }
        s.store(r)
    }
}

/// Dequantizes the whole tensor into out (n elements of dtype PST_DTYPE_F32/_F16/_BF16,
/// out_capacity in bytes).
/// Errors: PST_ERR_INVALID_ARG (NULL, bad dtype, out too small).
@c(pstimpl_quant_dequantize)
public func pst_quant_dequantize(_ q: UnsafeMutablePointer<pst_quant>?, _ out: UnsafeMutableRawPointer?, _ out_capacity: Int64, _ dtype: Int32) -> pst_status {
    cEntry("pst_quant_dequantize") { () throws(PSTError) in
        let t = object(try required(q, "q"), as: QuantizedTensor.self)
        let o = try required(out, "out")
        let dt = try floatDType(dtype, "dtype")
        try requireCapacity("out", have: out_capacity, need: t.count * dt.size)
        t.dequantize(into: o, dtype: dt)
    }
}

/// Writes the number of elements of the quantized tensor to *n and the bytes its state takes
/// in memory (codes + absmax or nested state + maps) to *storage_bytes; either may be NULL.
/// Errors: PST_ERR_INVALID_ARG (q NULL).
@c(pstimpl_quant_info)
public func pst_quant_info(_ q: UnsafeMutablePointer<pst_quant>?, _ n: UnsafeMutablePointer<Int64>?, _ storage_bytes: UnsafeMutablePointer<Int64>?) -> pst_status {
    cEntry("pst_quant_info") { () throws(PSTError) in
        let t = object(try required(q, "q"), as: QuantizedTensor.self)
        n?.pointee = Int64(t.count)
        storage_bytes?.pointee = Int64(t.storageByteCount)
    }
}

/// Frees a handle made by pst_quant_create_4bit or pst_quant_from_state; NULL is a no-op.
/// Pointers obtained from pst_quant_get_state become invalid.
@c(pstimpl_quant_free)
public func pst_quant_free(_ q: UnsafeMutablePointer<pst_quant>?) {
    if let q { releaseHandle(q, as: QuantizedTensor.self) }
}

/// bitsandbytes' double quantization of 4-bit absmax (compress_statistics=True) over
/// caller-owned buffers: *offset = torch.mean(absmax) in float32 (torch's CPU summation
/// order), then absmax - offset quantized with the signed dynamic map in blocks of
/// nested_blocksize (must be 256, bitsandbytes' value): count bytes to q and
/// pst_blockwise_count(count, 256) floats to nested_absmax (capacities in bytes / floats).
/// Errors: PST_ERR_INVALID_ARG, PST_ERR_NONFINITE.
@c(pstimpl_absmax_double_quantize)
public func pst_absmax_double_quantize(_ absmax: UnsafePointer<Float>?, _ count: Int64, _ nested_blocksize: Int32,
                                       _ q: UnsafeMutablePointer<UInt8>?, _ q_capacity: Int64,
                                       _ nested_absmax: UnsafeMutablePointer<Float>?, _ nested_capacity: Int64,
                                       _ offset: UnsafeMutablePointer<Float>?) -> pst_status {
    cEntry("pst_absmax_double_quantize") { () throws(PSTError) in
        let a = try required(absmax, "absmax")
        let n = try requireCount("count", count)
        guard nested_blocksize == Int32(NestedState.defaultBlocksize) else {
            throw .invalidArgument("nested_blocksize (\(nested_blocksize)) must be 256 (bitsandbytes' value)")
        }
        let qq = try required(q, "q"), na = try required(nested_absmax, "nested_absmax"), off = try required(offset, "offset")
        try requireCapacity("q", have: q_capacity, need: n)
        try requireCapacity("nested_absmax", have: nested_capacity, need: Blockwise8.blockCount(n, blocksize: 256), unit: "floats")
        let s = try NestedState(compressing: a, count: n)
        qq.update(from: s.q.baseAddress, count: n)
        na.update(from: s.absmax.baseAddress, count: s.absmax.count)
        off.pointee = s.offset
    }
}
