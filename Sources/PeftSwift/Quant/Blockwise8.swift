// 8-bit blockwise dynamic quantization (bitsandbytes' quantize_blockwise / dequantize_blockwise).
//
// Rules (facts from bitsandbytes 0.50.2 csrc/cpu_ops.cpp quantize_cpu_impl and
// dequantizeBlockwise8bitCpu; differences named):
//  * blocks of `blocksize` consecutive elements, the last one partial; absmax[b] = max |x|
//    (float32, stored unclamped; 0 for an all-zero block);
//  * all-zero block: every index 0 (as bitsandbytes' CPU kernel writes);
//  * otherwise s = clamp(x * fl(1/absmax), -1, 1) for every block, full or partial;
//  * index = the exact nearest entry of the sorted 256-entry `code`, ties to the lower one:
//    #{k : s > m_k} with float32 midpoints m_k = fl(code[k] + code[k+1]) / 2 (what
//    bitsandbytes' CUDA kernel and its PyTorch fallback pick). bitsandbytes' CPU kernel goes
//    through a 65,536-entry lookup table instead, which is 1-3 steps off for ~0.15% of values;
//    peftswift does not copy that (see /work/shared/FORMATS.md);
//  * when fl(1/absmax) overflows (absmax < ~2.9e-39, subnormal) peftswift divides, s = x / absmax
//    (bitsandbytes' result is undefined there);
//  * dequantize: out[i] = fl(code[q[i]] * absmax[i / blocksize]).

import _Builtin_intrinsics.intel

/// |v| lane by lane (clears the sign bits).
@inline(__always) func abs8(_ v: SIMD8<Float>) -> SIMD8<Float> {
    unsafeBitCast(unsafeBitCast(v, to: SIMD8<UInt32>.self) & 0x7FFF_FFFF, to: SIMD8<Float>.self)
}

public enum Blockwise8 {
    /// Blocks (absmax values) for `n` elements: ceil(n / blocksize).
    @inlinable public static func blockCount(_ n: Int, blocksize: Int) -> Int {
        n <= 0 || blocksize <= 0 ? 0 : (n - 1) / blocksize + 1
    }

    /// The largest block size accepted (bitsandbytes' CPU path accepts any positive size).
    public static let maxBlocksize = 1 << 24

    /// n >= 1 and 1 <= blocksize <= 2^24 (bitsandbytes on CPU accepts any positive blocksize;
    /// its documented ones are 64...4096).
    public static func validate(count n: Int, blocksize: Int) throws(PSTError) {
        guard blocksize >= 1 && blocksize <= maxBlocksize else {
            throw .invalidArgument("blocksize (\(blocksize)) must be in 1...\(maxBlocksize)")
        }
        guard n >= 1 else { throw .invalidArgument("count (\(n)) must be >= 1") }
        guard n <= Int.max / 8 else { throw .invalidArgument("count (\(n)) is too large") }
    }

    /// A quantization map must have 256 finite, non-decreasing entries.
    static func validateSortedCode(_ code: UnsafePointer<Float>) throws(PSTError) {
        for i in 0..<256 where !code[i].isFinite { throw .nonFinite("code[\(i)] is \(nonFiniteName(code[i]))") }
        for i in 1..<256 where code[i] < code[i - 1] {
            throw .invalidArgument("code must be sorted: code[\(i)] (\(code[i])) < code[\(i - 1)] (\(code[i - 1]))")
        }
    }

    /// The 256 float32 midpoints of a sorted map, the last one +inf (for the binary search).
    static func midpoints(_ code: UnsafePointer<Float>) -> [Float] {
        var m = (0..<255).map { (code[$0] + code[$0 + 1]) / 2 }
        m.append(.infinity)
        return m
    }

    /// Quantizes n float32 values with a sorted 256-entry map.
    ///
    /// - x: n values (finite; `PST_ERR_NONFINITE` names the first bad index). code: 256 sorted
    ///   finite floats (e.g. `Codebooks.dynamicSigned`). q: n bytes, absmax: blockCount floats,
    ///   written; nothing is written on error. Parallel over blocks.
    public static func quantize(_ x: UnsafePointer<Float>, count n: Int, blocksize: Int, code: UnsafePointer<Float>,
                                q: UnsafeMutablePointer<UInt8>, absmax: UnsafeMutablePointer<Float>) throws(PSTError) {
        try validate(count: n, blocksize: blocksize)
        try validateSortedCode(code)
        if let bad = firstNonFinite(x, .f32, count: n) { throw .nonFinite("x[\(bad)] is \(nonFiniteName(x[bad]))") }
        _quantize(x, count: n, blocksize: blocksize, code: code, q: q, absmax: absmax)
    }

    /// out[i] = fl(code[q[i]] * absmax[i / blocksize]). code: the state's 256-entry map (any
    /// order); absmax and code must be finite. Parallel over blocks.
    public static func dequantize(q: UnsafePointer<UInt8>, absmax: UnsafePointer<Float>, code: UnsafePointer<Float>,
                                  count n: Int, blocksize: Int, out: UnsafeMutablePointer<Float>) throws(PSTError) {
        try validate(count: n, blocksize: blocksize)
        for i in 0..<256 where !code[i].isFinite { throw .nonFinite("code[\(i)] is \(nonFiniteName(code[i]))") }
        let nb = blockCount(n, blocksize: blocksize)
        if let bad = firstNonFinite(absmax, .f32, count: nb) { throw .nonFinite("absmax[\(bad)] is \(nonFiniteName(absmax[bad]))") }
        parallelChunks(nb, grain: Swift.max(1, 65536 / blocksize)) { lo, hi in
            for b in lo..<hi {
                let s = b * blocksize, e = Swift.min(n, s + blocksize)
                let a = absmax[b]
                for i in s..<e { out[i] = code[Int(q[i])] * a }
            }
        }
    }

    @inline(__always) static func _scaled(_ v: Float, _ inv: Float, _ a: Float) -> Float {
        let s = inv.isFinite ? v * inv : v / a
        return Swift.min(Swift.max(s, -1), 1)
    }

    /// Fast quantization of validated input, `offset` subtracted first: block b holds the
    /// values fl(x[i] - offset) (offset 0 leaves finite x unchanged; DoubleQuant centers the
    /// absmax this way without a centered copy). Parallel over blocks.
    ///
    /// Per block: a = max |v| (vectorized; exact, max is order-free), then 8 indices at a time:
    /// s = clamp(v * fl(1/a), -1, 1) (v / a when fl(1/a) overflows), index = Rank256 over the
    /// map's float32 midpoints, the same count the reference takes one midpoint at a time.
    /// A value that overflows (|x - offset| = inf) gives an infinite absmax and unspecified
    /// indices; callers with an offset check the absmax.
    static func _quantize(_ x: UnsafePointer<Float>, count n: Int, blocksize: Int, code: UnsafePointer<Float>,
                          q: UnsafeMutablePointer<UInt8>, absmax: UnsafeMutablePointer<Float>, minus offset: Float = 0) {
        let rank = Rank256(midpoints: midpoints(code))
        let off = SIMD8<Float>(repeating: offset)
        parallelChunks(blockCount(n, blocksize: blocksize), grain: Swift.max(1, 16384 / blocksize)) { lo, hi in
            for b in lo..<hi {
                let s = b * blocksize, e = Swift.min(n, s + blocksize)
                var i = s
                // max |v| as bits: for non-negative floats the bit order is the value order
                var mv = SIMD8<UInt32>()
                while i + 8 <= e { mv = pointwiseMax(mv, unsafeBitCast(abs8(load8(x + i) - off), to: SIMD8<UInt32>.self)); i += 8 }
                var a = Float(bitPattern: mv.max())
                while i < e { a = Swift.max(a, Swift.abs(x[i] - offset)); i += 1 }
                absmax[b] = a
                if a == 0 { (q + s).initialize(repeating: 0, count: e - s); continue }
                let inv = 1 / a
                let divide = !inv.isFinite
                let scale = SIMD8<Float>(repeating: divide ? a : inv)
                let one = SIMD8<Float>(repeating: 1)
                @inline(__always) func index(_ v: SIMD8<Float>) -> SIMD8<Int32> {
                    let c = v - off
                    return rank(_mm256_min_ps(_mm256_max_ps(divide ? c / scale : c * scale, -one), one))
                }
                i = s
                while i + 32 <= e {
                    let w01 = _mm256_packs_epi32(unsafeBitCast(index(load8(x + i)), to: __m256i.self),
                                                 unsafeBitCast(index(load8(x + i + 8)), to: __m256i.self))
                    let w23 = _mm256_packs_epi32(unsafeBitCast(index(load8(x + i + 16)), to: __m256i.self),
                                                 unsafeBitCast(index(load8(x + i + 24)), to: __m256i.self))
                    // bytes of indices 0-3, 8-11, 16-19, 24-27 | 4-7, ...: put the groups in order
                    let bytes = _mm256_permutevar8x32_epi32(_mm256_packus_epi16(w01, w23), _groupOrder)
                    UnsafeMutableRawPointer(q + i).storeBytes(of: bytes, as: __m256i.self)
                    i += 32
                }
                while i < e {
                    let m = Swift.min(8, e - i)
                    var v = SIMD8<Float>(repeating: offset)        // padding centers to 0
                    for k in 0..<m { v[k] = x[i + k] }
                    let r = index(v)
                    for k in 0..<m { q[i + k] = UInt8(truncatingIfNeeded: r[k]) }
                    i += m
                }
            }
        }
    }

    /// Reference twin of `quantize` (validated input): a linear scan over the midpoints.
    public static func quantizeReference(_ x: UnsafePointer<Float>, count n: Int, blocksize: Int, code: UnsafePointer<Float>,
                                         q: UnsafeMutablePointer<UInt8>, absmax: UnsafeMutablePointer<Float>) {
        for b in 0..<blockCount(n, blocksize: blocksize) {
            let s = b * blocksize, e = Swift.min(n, s + blocksize)
            var a: Float = 0
            for i in s..<e { a = Swift.max(a, Swift.abs(x[i])) }
            absmax[b] = a
            let inv = 1 / a
            for i in s..<e {
                if a == 0 { q[i] = 0; continue }
                let v = _scaled(x[i], inv, a)
                var k = 0
                while k < 255 && v > (code[k] + code[k + 1]) / 2 { k += 1 }
                q[i] = UInt8(k)
            }
        }
    }

    /// Reference twin of `dequantize`.
    public static func dequantizeReference(q: UnsafePointer<UInt8>, absmax: UnsafePointer<Float>, code: UnsafePointer<Float>,
                                           count n: Int, blocksize: Int, out: UnsafeMutablePointer<Float>) {
        for i in 0..<n { out[i] = code[Int(q[i])] * absmax[i / blocksize] }
    }
}
