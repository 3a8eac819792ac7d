// Double quantization of the 4-bit absmax (QLoRA's "double quant", bitsandbytes'
// compress_statistics=True). Facts from bitsandbytes 0.50.2 functional.py quantize_4bit /
// dequantize_4bit:
//   offset  = torch.mean(absmax)                      (float32, torch's summation order: TorchMean)
//   q, absmax2 = quantize_blockwise(absmax - offset, blocksize=256, code=create_dynamic_map())
//   scale[b] = fl(fl(code8[q[b]] * absmax2[b / 256]) + offset)   (two roundings, no FMA)
// The 8-bit index is the exact nearest code (Blockwise8 documents where bitsandbytes' CPU
// lookup table differs).

/// The nested (double-quantized) absmax of a 4-bit tensor: bitsandbytes' `state2` plus `offset`.
public struct NestedState {
    /// torch.mean of the float32 absmax (bitsandbytes' `nested_offset`).
    public let offset: Float
    /// One 8-bit index per 4-bit block (bitsandbytes stores these as `weight.absmax`, uint8).
    public let q: AlignedBuffer<UInt8>
    /// One float32 scale per `blocksize` indices (`nested_absmax`).
    public let absmax: AlignedBuffer<Float>
    /// The 256-entry map the indices refer to (`nested_quant_map`).
    public let code: AlignedBuffer<Float>
    /// Indices per nested block (bitsandbytes: 256).
    public let blocksize: Int

    /// bitsandbytes' nested block size.
    public static let defaultBlocksize = 256

    /// Wraps validated buffers (see `QuantizedTensor.init(shape:...)` for the checks).
    init(offset: Float, q: AlignedBuffer<UInt8>, absmax: AlignedBuffer<Float>, code: AlignedBuffer<Float>, blocksize: Int) {
        self.offset = offset; self.q = q; self.absmax = absmax; self.code = code; self.blocksize = blocksize
    }

    /// Double-quantizes `count` float32 absmax values (finite, count >= 1) with blocksize 256
    /// and the signed dynamic map. `torchThreads` is the torch thread count whose mean order
    /// is reproduced.
    public init(compressing a: UnsafePointer<Float>, count: Int, torchThreads: Int = TorchMean.threads) throws(PSTError) {
        guard count >= 1 else { throw .invalidArgument("count (\(count)) must be >= 1") }
        let bs = NestedState.defaultBlocksize
        let offset = TorchMean.mean(a, count: count, threads: torchThreads)
        // A finite sum means finite inputs (a NaN or an infinity would propagate), so the scan
        // for the first bad value runs only when the mean is not finite.
        if !offset.isFinite, let bad = firstNonFinite(a, .f32, count: count) {
            throw .nonFinite("absmax[\(bad)] is \(nonFiniteName(a[bad]))")
        }
        let q = try AlignedBuffer<UInt8>(count: count)
        let absmax2 = try AlignedBuffer<Float>(count: Blockwise8.blockCount(count, blocksize: bs))
        let code = try AlignedBuffer<Float>(Codebooks.dynamicSigned)
        Blockwise8._quantize(a, count: count, blocksize: bs, code: code.baseAddress, q: q.baseAddress,
                             absmax: absmax2.baseAddress, minus: offset)
        // absmax - offset overflowing somewhere shows as an infinite (or NaN) nested absmax
        if let b = firstNonFinite(absmax2.baseAddress, .f32, count: absmax2.count) {
            let bad = (b * bs..<Swift.min(count, (b + 1) * bs)).first { !(a[$0] - offset).isFinite } ?? b * bs
            throw .nonFinite("absmax[\(bad)] - offset overflows")
        }
        self.init(offset: offset, q: q, absmax: absmax2, code: code, blocksize: bs)
    }

    /// Reference twin of `init(compressing:)` (finite input, count >= 1): torch's mean in its
    /// reference order, a centered copy, then Blockwise8's reference quantizer.
    public static func compressReference(_ a: UnsafePointer<Float>, count: Int, torchThreads: Int = TorchMean.threads)
        -> (offset: Float, q: [UInt8], absmax: [Float]) {
        let bs = defaultBlocksize
        let offset = TorchMean.sumReference(a, count: count, threads: torchThreads) / Float(count)
        let centered = (0..<count).map { a[$0] - offset }
        var q = [UInt8](repeating: 0, count: count)
        var absmax2 = [Float](repeating: 0, count: Blockwise8.blockCount(count, blocksize: bs))
        Blockwise8.quantizeReference(centered, count: count, blocksize: bs, code: Codebooks.dynamicSigned, q: &q, absmax: &absmax2)
        return (offset, q, absmax2)
    }

    /// Block b's scale: fl(fl(code[q[b]] * absmax[b / blocksize]) + offset).
    @inline(__always) public func scale(_ b: Int) -> Float {
        let prod = code.baseAddress[Int(q.baseAddress[b])] * absmax.baseAddress[b / blocksize]
        return prod + offset
    }

    /// All `q.count` scales into out.
    public func decode(into out: UnsafeMutablePointer<Float>) {
        for b in 0..<q.count { out[b] = scale(b) }
    }

    /// Reference twin of `decode`: dequantize_blockwise then add the offset, as two passes.
    public func decodeReference(into out: UnsafeMutablePointer<Float>) {
        Blockwise8.dequantizeReference(q: q.baseAddress, absmax: absmax.baseAddress, code: code.baseAddress,
                                       count: q.count, blocksize: blocksize, out: out)
        for b in 0..<q.count { out[b] = out[b] + offset }
    }

    /// Bytes held: q + absmax2 + offset + map.
    public var storageByteCount: Int { q.byteCount + absmax.byteCount + MemoryLayout<Float>.size + code.byteCount }
}
