// 4-bit blockwise quantization (NF4 / FP4), bit-exact with bitsandbytes 0.50.2 on CPU.
//
// The rules (facts from bitsandbytes 0.50.2, `backends/default/ops.py` `quantize_4bit`, which is
// what its CPU back-end runs, and `backends/cpu/ops.py` + `csrc/cpu_ops.cpp` for dequantize):
//  * blocks are runs of `blocksize` consecutive elements of the flattened tensor; the trailing
//    partial block (n % blocksize elements) has its own absmax;
//  * absmax[b] = max |x| (float32; f16/bf16 inputs are widened exactly first);
//  * the scaling divisor is d = max(absmax, 1e-38f) (`absmax.clamp(min=1e-38)`): full blocks
//    scale by the float32 reciprocal, s = x * fl(1/d); the partial block divides, s = x / d;
//    s is clamped to [-1, 1]. The stored absmax of a full block is the unclamped max|x|
//    (0 for an all-zero block); that of the partial block is d (1e-38f when it is all zero);
//  * code = the nearest entry of the 16-entry table: with the table sorted (stable, so FP4's
//    two zeros keep code 0 before code 8) and float32 midpoints m_k = fl(c_k + c_{k+1}) / 2,
//    the sorted rank is #{k : s > m_k} (a value exactly on a midpoint goes to the lower entry,
//    `torch.bucketize(right=False)`); NF4 is sorted already, FP4 maps rank -> bit code;
//  * packing: byte j = code[2j] << 4 | code[2j+1]; odd n pads the last low nibble with the
//    code of 0.0 (NF4 7, FP4 0);
//  * dequantize: y = fl(code[nibble] * absmax[b]) in float32, then rounded to the output
//    dtype (nearest even).

#if canImport(Glibc)
import Glibc
#endif
import _Builtin_intrinsics.intel
import Synchronization

/// Precomputed search data of a 4-bit codebook.
struct Quant4Table {
    /// Code values, indexed by the 4-bit code.
    let code: [Float]
    /// The 15 float32 midpoints of the stably sorted codebook.
    let midpoints: [Float]
    /// rank (position in the sorted table) -> 4-bit code.
    let order: [Int32]
    /// The code of 0.0 (used for padding odd lengths).
    let zeroCode: UInt8

    /// What the fast encoder needs, in registers.
    struct Search {
        let rank: Rank16
        /// Whether rank -> code is not the identity (FP4).
        let remap: Bool
        let orderLo: SIMD8<Int32>, orderHi: SIMD8<Int32>
    }
    let search: Search

    init(_ code: [Float]) {
        self.code = code
        let order = (0..<16).sorted { a, b in code[a] < code[b] || (code[a] == code[b] && a < b) }
        self.order = order.map { Int32($0) }
        self.midpoints = (0..<15).map { k in (code[order[k]] + code[order[k + 1]]) / 2 }
        let mids = self.midpoints
        let rank = (0..<15).reduce(0) { $0 + (Float(0) > mids[$1] ? 1 : 0) }
        self.zeroCode = UInt8(order[rank])
        // The encoder skips the clamp to [-1, 1], which is exact only when every midpoint lies
        // strictly inside (-1, 1) (Quant4+Kernels.swift, _encodeRun).
        precondition(mids.allSatisfy { $0 > -1 && $0 < 1 })
        self.search = Search(rank: Rank16(mids), remap: self.order != (0..<16).map { Int32($0) },
                             orderLo: SIMD8<Int32>(self.order[0..<8]), orderHi: SIMD8<Int32>(self.order[8..<16]))
    }

    static let nf4 = Quant4Table(Codebooks.nf4)
    static let fp4 = Quant4Table(Codebooks.fp4)
    static func of(_ t: QuantType) -> Quant4Table { t == .nf4 ? nf4 : fp4 }
}

public enum Quant4 {
    /// The block sizes bitsandbytes accepts for 4-bit quantization.
    public static let blocksizes: [Int] = [32, 64, 128, 256, 512, 1024, 2048, 4096]

    /// The smallest scaling divisor: bitsandbytes' `absmax.clamp(min=1e-38)` (as float32,
    /// 9.99999935e-39, a subnormal).
    static let minDivisor: Float = 1e-38

    /// Packed bytes for `n` elements: (n + 1) / 2 (two codes per byte).
    @inlinable public static func packedByteCount(_ n: Int) -> Int { n <= 0 ? 0 : n / 2 + (n & 1) }

    /// Blocks (absmax values) for `n` elements: ceil(n / blocksize).
    @inlinable public static func blockCount(_ n: Int, blocksize: Int) -> Int {
        n <= 0 || blocksize <= 0 ? 0 : (n - 1) / blocksize + 1
    }

    /// Checks `n >= 1` and `blocksize` ∈ `blocksizes`. `PST_ERR_INVALID_ARG` otherwise.
    public static func validate(count n: Int, blocksize: Int) throws(PSTError) {
        guard blocksizes.contains(blocksize) else {
            throw .invalidArgument("blocksize (\(blocksize)) must be one of 32, 64, 128, 256, 512, 1024, 2048, 4096")
        }
        guard n >= 1 else { throw .invalidArgument("count (\(n)) must be >= 1") }
        guard n <= Int.max / 8 else { throw .invalidArgument("count (\(n)) is too large") }
    }

    static func validateFloat(_ dtype: DType, _ name: StaticString) throws(PSTError) {
        guard dtype.isFloat else {
            throw .unsupported("\(name) (\(dtype.torchName)) must be float32, float16 or bfloat16")
        }
    }

    /// Quantizes `n` elements of `x` (dtype f32/f16/bf16) to packed 4-bit codes.
    ///
    /// - x: n elements, read only. packed: `packedByteCount(n)` bytes, absmax:
    ///   `blockCount(n, blocksize:)` floats; both written, must not alias `x`.
    /// - A NaN/±Inf throws `PST_ERR_NONFINITE` naming the first bad index, and nothing is
    ///   written. Parallel over blocks (`Threads.count`); the result does not depend on the
    ///   thread count.
    ///
    /// One pass over x: the codes go to a scratch copy of the outputs (1/7 of x's bytes for
    /// float32) that is copied out once x has proved finite. A separate finiteness pass would
    /// read all of x twice, and reading x is what this kernel's time is made of.
    public static func quantize(_ x: UnsafeRawPointer, dtype: DType, count n: Int, blocksize: Int, type: QuantType,
                                packed: UnsafeMutablePointer<UInt8>, absmax: UnsafeMutablePointer<Float>) throws(PSTError) {
        try validate(count: n, blocksize: blocksize)
        try validateFloat(dtype, "dtype")
        let nbytes = packedByteCount(n), nb = blockCount(n, blocksize: blocksize)
        // not AlignedBuffer: zero-filling the scratch would cost another pass over it
        guard let scratch = malloc(nbytes + 4 * nb + 64) else { throw .outOfMemory("cannot allocate \(nbytes + 4 * nb) bytes") }
        defer { free(scratch) }
        let sa = scratch.bindMemory(to: Float.self, capacity: nb)
        let sp = (scratch + 4 * nb).bindMemory(to: UInt8.self, capacity: nbytes)
        if let bad = _quantize(x, dtype: dtype, count: n, blocksize: blocksize, table: .of(type), packed: sp, absmax: sa) {
            throw .nonFinite("x[\(bad)] is \(nonFiniteName(loadFloat(x, dtype, bad)))")
        }
        absmax.update(from: sa, count: nb)
        parallelChunks(nbytes, grain: 1 << 20) { lo, hi in _copyOut(sp + lo, packed + lo, hi - lo) }
    }

    /// dst[0..<n] = src[0..<n]; above 256 KiB with non-temporal stores (the caller's codes are
    /// not read back soon, and skipping the read-for-ownership saves a pass over them).
    static func _copyOut(_ src: UnsafePointer<UInt8>, _ dst: UnsafeMutablePointer<UInt8>, _ n: Int) {
        var i = 0
        if n >= 1 << 18 {
            while i < n && Int(bitPattern: dst + i) & 31 != 0 { dst[i] = src[i]; i += 1 }
            while i + 128 <= n {
                for k in stride(from: 0, to: 128, by: 32) {
                    let v = UnsafeRawPointer(src + i + k).loadUnaligned(as: __m256i.self)
                    _mm256_stream_si256(UnsafeMutableRawPointer(dst + i + k).assumingMemoryBound(to: __m256i.self), v)
                }
                i += 128
            }
            atomicMemoryFence(ordering: .sequentiallyConsistent)   // order the streamed stores (sfence)
        }
        (dst + i).update(from: src + i, count: n - i)
    }

    /// Dequantizes packed 4-bit codes: out[i] = code[nibble(i)] * absmax[i / blocksize],
    /// rounded to `dtype`.
    ///
    /// - packed: `packedByteCount(n)` bytes; absmax: `blockCount(n, blocksize:)` floats;
    ///   code: the state's 16-entry map (`quant_map`; bitsandbytes' NF4/FP4 table); out: n
    ///   elements of dtype (f32/f16/bf16), must not alias the inputs.
    /// - absmax and code must be finite (`PST_ERR_NONFINITE` naming the first bad entry);
    ///   nothing is written on error. Parallel over blocks.
    public static func dequantize(packed: UnsafePointer<UInt8>, absmax: UnsafePointer<Float>, code: UnsafePointer<Float>,
                                  count n: Int, blocksize: Int, out: UnsafeMutableRawPointer, dtype: DType) throws(PSTError) {
        try validate(count: n, blocksize: blocksize)
        try validateFloat(dtype, "dtype")
        for i in 0..<16 where !code[i].isFinite { throw .nonFinite("code[\(i)] is \(nonFiniteName(code[i]))") }
        let nb = blockCount(n, blocksize: blocksize)
        if let bad = firstNonFinite(absmax, .f32, count: nb) {
            throw .nonFinite("absmax[\(bad)] is \(nonFiniteName(absmax[bad]))")
        }
        _dequantize(packed: packed, count: n, blocksize: blocksize, code: code, out: out, dtype: dtype) { absmax[$0] }
    }
}
