// A 4-bit quantized tensor: packed codes plus bitsandbytes' QuantState.

/// A tensor quantized to NF4/FP4 with bitsandbytes' layout, owning its packed codes and state
/// (bitsandbytes' `QuantState`: absmax or the nested state, the 16-entry map, blocksize,
/// shape, original dtype). Immutable; safe to read from several threads.
///
/// Element i of the flattened (row-major) tensor is nibble i of `packed` (element 2j in the
/// high nibble of byte j), scaled by block i / blocksize.
public final class QuantizedTensor {
    public let shape: [Int]
    public let count: Int
    /// The original dtype (f32, f16 or bf16): what `dequantize` produces by default and what
    /// bitsandbytes records as the state's `dtype`.
    public let dtype: DType
    public let quantType: QuantType
    public let blocksize: Int
    /// (count + 1) / 2 bytes.
    public let packed: AlignedBuffer<UInt8>
    /// The 16-entry map (`quant_map`) used to decode.
    public let code: AlignedBuffer<Float>
    /// One float32 per block, or nil when double-quantized (then `nested` holds them).
    public let absmax: AlignedBuffer<Float>?
    public let nested: NestedState?

    /// Blocks: ceil(count / blocksize).
    public var blockCount: Int { Quant4.blockCount(count, blocksize: blocksize) }

    static func checkShape(_ shape: [Int]) throws(PSTError) -> Int {
        guard !shape.isEmpty else { throw .shape("shape ([]) must have at least one dimension") }
        var n = 1
        for (i, d) in shape.enumerated() {
            guard d >= 1 else { throw .shape("shape[\(i)] (\(d)) must be >= 1") }
            let (m, o) = n.multipliedReportingOverflow(by: d)
            guard !o, m <= Int.max / 8 else { throw .shape("shape \(shape) has too many elements") }
            n = m
        }
        return n
    }

    /// Quantizes `x` (dtype f32/f16/bf16, `shape`'s element count, row-major).
    /// doubleQuant: also quantize the absmax (bitsandbytes' compress_statistics), with
    /// `torchThreads` (default `TorchMean.threads`) for the offset's summation order.
    /// Throws on a bad blocksize/shape/dtype or a non-finite input (naming the first index).
    public init(quantizing x: UnsafeRawPointer, dtype: DType, shape: [Int], blocksize: Int = 64, type: QuantType = .nf4,
                doubleQuant: Bool = false, torchThreads: Int = TorchMean.threads) throws(PSTError) {
        let n = try QuantizedTensor.checkShape(shape)
        try Quant4.validate(count: n, blocksize: blocksize)
        try Quant4.validateFloat(dtype, "dtype")
        let packed = try AlignedBuffer<UInt8>(count: Quant4.packedByteCount(n))
        let absmax = try AlignedBuffer<Float>(count: Quant4.blockCount(n, blocksize: blocksize))
        // One pass: the buffers are ours, so a NaN/Inf found on the way just discards them.
        if let bad = Quant4._quantize(x, dtype: dtype, count: n, blocksize: blocksize, table: .of(type),
                                      packed: packed.baseAddress, absmax: absmax.baseAddress) {
            throw .nonFinite("x[\(bad)] is \(nonFiniteName(loadFloat(x, dtype, bad)))")
        }
        self.shape = shape; self.count = n; self.dtype = dtype; self.quantType = type; self.blocksize = blocksize
        self.packed = packed
        self.code = try AlignedBuffer<Float>(type.codebook)
        if doubleQuant {
            self.nested = try NestedState(compressing: absmax.baseAddress, count: absmax.count, torchThreads: torchThreads)
            self.absmax = nil
        } else {
            self.nested = nil
            self.absmax = absmax
        }
    }

    /// From an existing state (e.g. a bitsandbytes checkpoint); copies every buffer, or with
    /// `borrowing` wraps them without a copy (bitsandbytes' `Params4bit` and `QuantState`
    /// tensors used in place: the caller keeps them alive and unchanged while the tensor lives).
    ///
    /// Checks: shape dims >= 1; dtype float; blocksize one of `Quant4.blocksizes`;
    /// packed.count == (count+1)/2; code.count == 16; exactly one of absmax / nested; plain
    /// absmax.count == blockCount; nested: blocksize >= 1, q.count == blockCount,
    /// absmax.count == ceil(blockCount / nested blocksize), code.count == 256; every float
    /// finite. `PST_ERR_SHAPE` for lengths, `PST_ERR_INVALID_ARG` for values,
    /// `PST_ERR_NONFINITE` for NaN/Inf (naming the field and index).
    public init(shape: [Int], dtype: DType, quantType: QuantType, blocksize: Int, packed: UnsafeBufferPointer<UInt8>,
                code: UnsafeBufferPointer<Float>, absmax: UnsafeBufferPointer<Float>?,
                nested: (offset: Float, q: UnsafeBufferPointer<UInt8>, absmax: UnsafeBufferPointer<Float>,
                         code: UnsafeBufferPointer<Float>, blocksize: Int)?, borrowing: Bool = false) throws(PSTError) {
        func keep<T>(_ b: UnsafeBufferPointer<T>) throws(PSTError) -> AlignedBuffer<T> {
            guard borrowing else { return try AlignedBuffer(copying: b) }
            guard let base = b.baseAddress else { throw .invalidArgument("a borrowed state buffer is NULL") }
            return AlignedBuffer(borrowing: UnsafeMutablePointer(mutating: base), count: b.count)
        }
        let n = try QuantizedTensor.checkShape(shape)
        try Quant4.validate(count: n, blocksize: blocksize)
        try Quant4.validateFloat(dtype, "dtype")
        let nb = Quant4.blockCount(n, blocksize: blocksize)
        guard packed.count == Quant4.packedByteCount(n) else {
            throw .shape("packed has \(packed.count) bytes; shape \(shape) needs \(Quant4.packedByteCount(n))")
        }
        guard code.count == 16 else { throw .shape("code has \(code.count) entries; a 4-bit map needs 16") }
        func finite(_ b: UnsafeBufferPointer<Float>, _ name: String) throws(PSTError) {
            guard let base = b.baseAddress, b.count > 0 else { return }
            if let bad = firstNonFinite(base, .f32, count: b.count) {
                throw .nonFinite("\(name)[\(bad)] is \(nonFiniteName(b[bad]))")
            }
        }
        try finite(code, "code")
        switch (absmax, nested) {
        case (nil, nil): throw .invalidArgument("absmax and nested are both missing; one is required")
        case (.some, .some): throw .invalidArgument("absmax and nested are both given; give one")
        case (let a?, nil):
            guard a.count == nb else { throw .shape("absmax has \(a.count) entries; \(n) elements in blocks of \(blocksize) need \(nb)") }
            try finite(a, "absmax")
            self.absmax = try keep(a)
            self.nested = nil
        case (nil, let s?):
            guard s.blocksize >= 1 && s.blocksize <= Blockwise8.maxBlocksize else {
                throw .invalidArgument("nested blocksize (\(s.blocksize)) must be in 1...\(Blockwise8.maxBlocksize)")
            }
            guard s.q.count == nb else { throw .shape("nested q has \(s.q.count) entries; \(nb) blocks need \(nb)") }
            let nb2 = Blockwise8.blockCount(nb, blocksize: s.blocksize)
            guard s.absmax.count == nb2 else {
                throw .shape("nested absmax has \(s.absmax.count) entries; \(nb) blocks in nested blocks of \(s.blocksize) need \(nb2)")
            }
            guard s.code.count == 256 else { throw .shape("nested code has \(s.code.count) entries; an 8-bit map needs 256") }
            guard s.offset.isFinite else { throw .nonFinite("nested offset is \(nonFiniteName(s.offset))") }
            try finite(s.absmax, "nested absmax")
            try finite(s.code, "nested code")
            self.absmax = nil
            self.nested = NestedState(offset: s.offset, q: try keep(s.q), absmax: try keep(s.absmax),
                                      code: try keep(s.code), blocksize: s.blocksize)
        }
        self.shape = shape; self.count = n; self.dtype = dtype; self.quantType = quantType; self.blocksize = blocksize
        self.packed = try keep(packed)
        self.code = try keep(code)
    }

    /// Block b's float32 scale (decoded from the nested state when double-quantized).
    @inline(__always) public func scale(_ b: Int) -> Float {
        if let nested { return nested.scale(b) }
        return absmax!.baseAddress[b]
    }

    /// The per-block float32 scales: `blockCount` floats.
    public func blockScales(into out: UnsafeMutablePointer<Float>) {
        if let nested { nested.decode(into: out) } else { out.update(from: absmax!.baseAddress, count: blockCount) }
    }

    /// Calls body with a scale function specialized for plain / nested state.
    @inline(__always)
    func withScales<R>(_ body: ((Int) -> Float) -> R) -> R {
        if let nested {
            let c = nested.code.baseAddress, q = nested.q.baseAddress, a = nested.absmax.baseAddress
            let nbs = nested.blocksize, off = nested.offset
            return body { b in (c[Int(q[b])] * a[b / nbs]) + off }
        }
        let a = absmax!.baseAddress
        return body { a[$0] }
    }

    /// The whole tensor as `dtype` (f32/f16/bf16; `count` elements into out), in parallel.
    /// Bit-exact with bitsandbytes' dequantize_4bit (up to the sign of zero for FP4 code 8).
    /// A non-float dtype writes nothing.
    public func dequantize(into out: UnsafeMutableRawPointer, dtype: DType) {
        guard dtype.isFloat else { return }
        withScales { scale in
            Quant4._dequantize(packed: packed.baseAddress, count: count, blocksize: blocksize, code: code.baseAddress,
                               out: out, dtype: dtype, scale: scale)
        }
    }

    /// Elements [start, start+n) of the flattened tensor as float32 into out[0..<n]
    /// (single-threaded: for GEMMs that dequantize W panel by panel). The range is clipped to
    /// the tensor; a range outside it writes nothing.
    public func dequantizeRange(start: Int, count n: Int, into out: UnsafeMutablePointer<Float>) {
        guard start >= 0, n > 0, start < count else { return }
        let m = Swift.min(n, count - start)
        withScales { scale in
            Quant4._decodeRange(packed: packed.baseAddress, code: code.baseAddress, blocksize: blocksize,
                                start: start, count: m, out: out, scale: scale)
        }
    }

    /// Reference twin of `dequantize` (scalar, float32 math then rounding to dtype).
    public func dequantizeReference(into out: UnsafeMutableRawPointer, dtype: DType) {
        guard dtype.isFloat else { return }
        var scales = [Float](repeating: 0, count: blockCount)
        scales.withUnsafeMutableBufferPointer { s in
            if let nested { nested.decodeReference(into: s.baseAddress!) } else { s.baseAddress!.update(from: absmax!.baseAddress, count: blockCount) }
            Quant4.dequantizeReference(packed: packed.baseAddress, absmax: s.baseAddress!, code: code.baseAddress,
                                       count: count, blocksize: blocksize, out: out, dtype: dtype)
        }
    }

    /// Bytes of quantized storage: packed codes + absmax (float32 each) — or, when nested,
    /// the 8-bit indices + nested absmax + offset + 256-entry map — + the 16-entry map.
    /// 4096×4096 nf4/64: 4.5 bits per parameter plain, ≈4.127 nested.
    public var storageByteCount: Int {
        packed.byteCount + code.byteCount + (nested?.storageByteCount ?? absmax!.byteCount)
    }
}
