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

    /// Index of s: #{k : s > m_k} by a branch-free binary search over the 256 midpoints (the
    /// last one +inf). Requires non-decreasing midpoints.
    @inline(__always) static func _index(_ s: Float, _ m: UnsafePointer<Float>) -> Int {
        var lo = 0
        var step = 128
        while step > 0 {
            lo = s > m[lo + step - 1] ? lo + step : lo
            step >>= 1
        }
        return lo
    }

    @inline(__always) static func _scaled(_ v: Float, _ inv: Float, _ a: Float) -> Float {
        let s = inv.isFinite ? v * inv : v / a
        return Swift.min(Swift.max(s, -1), 1)
    }

    static func _quantize(_ x: UnsafePointer<Float>, count n: Int, blocksize: Int, code: UnsafePointer<Float>,
                          q: UnsafeMutablePointer<UInt8>, absmax: UnsafeMutablePointer<Float>) {
        let mids = midpoints(code)
        mids.withUnsafeBufferPointer { mb in
            let m = mb.baseAddress!
            parallelChunks(blockCount(n, blocksize: blocksize), grain: Swift.max(1, 16384 / blocksize)) { lo, hi in
                for b in lo..<hi {
                    let s = b * blocksize, e = Swift.min(n, s + blocksize)
                    var a: Float = 0
                    for i in s..<e { a = Swift.max(a, Swift.abs(x[i])) }
                    absmax[b] = a
                    if a == 0 { for i in s..<e { q[i] = 0 }; continue }
                    let inv = 1 / a
                    for i in s..<e { q[i] = UInt8(truncatingIfNeeded: _index(_scaled(x[i], inv, a), m)) }
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
