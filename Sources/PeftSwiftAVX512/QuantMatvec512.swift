import _Builtin_intrinsics.intel

// AVX-512 GEMV of packed 4-bit (NF4/FP4) weights, y = W·x, for M = 1 decode: the zmm twin of
// QuantizedTensor._matvecRowsAligned (PeftSwift/Quant/QuantizedTensor+Matvec.swift), reached
// only through its run-time dispatch (PeftSwift/Core/ISA.swift).
//
// One zmm holds TWO rows: lanes 0...7 are the 8 lanes of row o's AVX2 accumulator, lanes
// 8...15 those of row o+1. A single `vpermps` on zmm looks up all 16 codebook entries (the
// AVX2 kernel needs two `vpermps` and a blend per 8 codes), and one FMA serves 16 weights.
// Every lane gets the same operations in the same order as the matching lane of the AVX2
// kernel: per block, s = 0 then for k = 0, 16, ... : s = fma(code(k + j), x[k + j], s);
// s = fma(code(k + 8 + j), x[k + 8 + j], s); then a = fma(s, scale, a); at the end the same
// hadd tree (lanes (0+1)+(2+3) then + (4+5)+(6+7)), and y = y + t or t. FMA rounds once
// whatever the width, so the results are bit-identical to the AVX2 path
// (Tests/PeftSwiftTests/Quant/QuantMatvec512Tests.swift holds them equal).
//
// Rules for this module: see SGEMM512+Kernel.swift (raw pointers and Intel intrinsics only).

public enum QuantMatvec512 {
    /// Rows r0 ..< r0 + 2·⌊(r1 − r0)/2⌋ of the aligned 4-bit GEMV; returns how many rows it
    /// did (the caller's AVX2 loop does the odd one left, if any).
    ///   packed: the tensor's nibbles, row o at byte o·cols/2 (element 2j = high nibble of byte j)
    ///   code: the 16-entry map; cols % bs == 0 and bs % 16 == 0
    ///   scale(b) = nested ? fl(fl(nc[nq[b]]·na[b / nbs]) + off) : absmax[b]
    ///   (pointers that the chosen case does not read may be any valid pointer)
    @inline(never)
    public static func rows(_ packed: UnsafePointer<UInt8>, _ code: UnsafePointer<Float>,
                            _ x: UnsafePointer<Float>, _ y: UnsafeMutablePointer<Float>, _ accumulate: Bool,
                            _ r0: Int, _ r1: Int, _ cols: Int, _ bs: Int,
                            _ nested: Bool, _ absmax: UnsafePointer<Float>,
                            _ nq: UnsafePointer<UInt8>, _ nc: UnsafePointer<Float>, _ na: UnsafePointer<Float>,
                            _ nbs: Int, _ off: Float) -> Int {
        let table = _mm512_loadu_ps(code)
        let sh = _mm512_set_epi32(24, 28, 16, 20, 8, 12, 0, 4, 24, 28, 16, 20, 8, 12, 0, 4)   // lanes 0... = 4, 0, 12, 8, ...
        let upper = _mm512_set_epi32(15, 14, 13, 12, 11, 10, 9, 8, 15, 14, 13, 12, 11, 10, 9, 8)
        let upper4 = _mm256_set_epi32(7, 6, 5, 4, 7, 6, 5, 4)
        let bpr = cols / bs
        let rb = cols >> 1
        let nshift = nbs & (nbs - 1) == 0 ? nbs.trailingZeroBitCount : -1
        @inline(__always) func scale(_ b: Int) -> Float {
            if !nested { return absmax[b] }
            let g = nshift >= 0 ? b >> nshift : b / nbs
            return (nc[Int(nq[b])] * na[g]) + off
        }
        @inline(__always) func scale2(_ b: Int) -> __m512 {
            _mm512_mask_mov_ps(_mm512_set1_ps(scale(b)), 0xFF00, _mm512_set1_ps(scale(b + bpr)))
        }
        // codes of rows (q, q + rb) for 8 elements each, lanes 0...7 and 8...15
        @inline(__always) func codes2(_ q: UnsafePointer<UInt8>) -> __m512 {
            let wa = UnsafeRawPointer(q).loadUnaligned(as: Int32.self)
            let wb = UnsafeRawPointer(q + rb).loadUnaligned(as: Int32.self)
            let i = _mm512_mask_set1_epi32(_mm512_set1_epi32(wa), 0xFF00, wb)
            return _mm512_permutexvar_ps(_mm512_srlv_epi32(i, sh), table)
        }
        @inline(__always) func xx(_ p: UnsafePointer<Float>) -> __m512 {
            _mm512_broadcast_f32x8(_mm256_loadu_ps(p))
        }
        // the AVX2 path's horizontal sums (QuantizedTensor._sum4Impl) of rows (lo a, hi a, lo b, hi b)
        @inline(__always) func sum4(_ a: __m512, _ b: __m512) -> __m128 {
            // (the extract intrinsics are C macros, which Swift does not import)
            let a0 = _mm512_castps512_ps256(a), a1 = _mm512_castps512_ps256(_mm512_permutexvar_ps(upper, a))
            let b0 = _mm512_castps512_ps256(b), b1 = _mm512_castps512_ps256(_mm512_permutexvar_ps(upper, b))
            let ab = _mm256_hadd_ps(a0, a1), cd = _mm256_hadd_ps(b0, b1)
            let abcd = _mm256_hadd_ps(ab, cd)
            return _mm_add_ps(_mm256_castps256_ps128(abcd), _mm256_castps256_ps128(_mm256_permutevar8x32_ps(abcd, upper4)))
        }
        @inline(__always) func store(_ o: Int, _ t: __m128, _ mask: UInt8) {
            let v = accumulate ? _mm_add_ps(_mm_maskz_loadu_ps(mask, y + o), t) : t
            _mm_mask_storeu_ps(y + o, mask, v)
        }
        var o = r0
        // 8 rows per pass: four independent FMA chains
        while o + 8 <= r1 {
            let z = _mm512_setzero_ps()
            var a0 = z, a1 = z, a2 = z, a3 = z
            var bp = packed + (o * cols) >> 1
            var xp = x
            var b = o * bpr
            for _ in 0..<bpr {
                var s0 = z, s1 = z, s2 = z, s3 = z
                var k = 0
                while k < bs {
                    let x0 = xx(xp + k), x1 = xx(xp + k + 8)
                    let q = bp + (k >> 1)
                    s0 = _mm512_fmadd_ps(codes2(q), x0, s0); s0 = _mm512_fmadd_ps(codes2(q + 4), x1, s0)
                    s1 = _mm512_fmadd_ps(codes2(q + 2 * rb), x0, s1); s1 = _mm512_fmadd_ps(codes2(q + 2 * rb + 4), x1, s1)
                    s2 = _mm512_fmadd_ps(codes2(q + 4 * rb), x0, s2); s2 = _mm512_fmadd_ps(codes2(q + 4 * rb + 4), x1, s2)
                    s3 = _mm512_fmadd_ps(codes2(q + 6 * rb), x0, s3); s3 = _mm512_fmadd_ps(codes2(q + 6 * rb + 4), x1, s3)
                    k += 16
                }
                a0 = _mm512_fmadd_ps(s0, scale2(b), a0)
                a1 = _mm512_fmadd_ps(s1, scale2(b + 2 * bpr), a1)
                a2 = _mm512_fmadd_ps(s2, scale2(b + 4 * bpr), a2)
                a3 = _mm512_fmadd_ps(s3, scale2(b + 6 * bpr), a3)
                b += 1; bp += bs >> 1; xp += bs
            }
            store(o, sum4(a0, a1), 15)
            store(o + 4, sum4(a2, a3), 15)
            o += 8
        }
        while o + 2 <= r1 {
            let z = _mm512_setzero_ps()
            var a0 = z
            var bp = packed + (o * cols) >> 1
            var xp = x
            var b = o * bpr
            for _ in 0..<bpr {
                var s0 = z
                var k = 0
                while k < bs {
                    s0 = _mm512_fmadd_ps(codes2(bp), xx(xp), s0); s0 = _mm512_fmadd_ps(codes2(bp + 4), xx(xp + 8), s0)
                    bp += 8; xp += 16; k += 16
                }
                a0 = _mm512_fmadd_ps(s0, scale2(b), a0)
                b += 1
            }
            store(o, sum4(a0, a0), 3)
            o += 2
        }
        return o - r0
    }
}
