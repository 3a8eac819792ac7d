import CPeftSwiftBF16
import _Builtin_intrinsics.intel

// AVX512_BF16 kernels of the engine's GEMM for compute dtype bf16 (PeftSwift/GEMM/SGEMM+BF16.swift):
// the operands rounded to bf16, the products summed in fp32 — bitsandbytes' and PyTorch's
// `bnb_4bit_compute_dtype=torch.bfloat16` semantics for the matrix products (fp32 accumulation,
// as oneDNN's bf16 GEMM), except that C stays fp32 instead of being rounded to bf16.
// Compiled with AVX512_BF16 (Package.swift) and reached only through GEMM's run-time dispatch
// (PeftSwift/Core/ISA.swift): a host without it never calls into this module.
//
// Layouts (k-pairs, so one vdpbf16ps does two steps of the sum for 16 columns):
//   A pair sliver:  a32[q·6 + r]  = bf16(A[r, 2q]) | bf16(A[r, 2q+1]) << 16       (UInt32)
//   B pair sliver:  b16[q·32 + 2j + t] = bf16(B[2q + t, j])        j < 16, t < 2  (UInt16)
// made from the fp32 packed slivers of SGEMM+Pack.swift (A: kc×6, B: kc×16); an odd kc gets a
// zero partner. Tile 6 × 32 (two B slivers), as the fp32 AVX-512 kernel.
//
// Rules for this module: raw pointers and intrinsics only, no Swift generics, arrays or closures
// (no shared symbols the linker could pick for code compiled without these instructions).

public enum SGEMMBF16 {
    /// Word order of a pair vector: (lo0, hi0, lo1, hi1, ...) from vcvtne2ps2bf16's (lo0..lo15, hi0..hi15).
    /// (_mm512_set_epi16 lists elements from the highest down.)
    /// Converts one fp32 packed A sliver (kc × 6: src[p·6 + r]) to the pair layout
    /// (ceil(kc/2) × 6 UInt32 at dst). Round to nearest even; subnormals become zero.
    public static func packA(_ kc: Int, _ src: UnsafePointer<Float>, _ dst: UnsafeMutablePointer<UInt32>) {
        let pairs = kc / 2
        var q = 0
        // 16 pairs (192 floats) of k at a time would need a 6-way shuffle; rows of 6 pairs instead:
        // lo = A[·, 2q] (6 floats), hi = A[·, 2q+1] (6 floats), masked 6-lane loads.
        let m6: __mmask16 = 0x3F
        while q < pairs {
            let lo = _mm512_maskz_loadu_ps(m6, src + 12 * q)
            let hi = _mm512_maskz_loadu_ps(m6, src + 12 * q + 6)
            let b = pst_cvtne2ps_bf16(hi, lo)          // bf16 lanes 0-15 lo, 16-31 hi
            let idx = _mm512_set_epi16(31, 15, 30, 14, 29, 13, 28, 12, 27, 11, 26, 10, 25, 9, 24, 8,
                                       23, 7, 22, 6, 21, 5, 20, 4, 19, 3, 18, 2, 17, 1, 16, 0)
            let inter = _mm512_permutexvar_epi16(idx, b)  // (lo0, hi0, lo1, hi1, ...)
            _mm512_mask_storeu_epi32(dst + 6 * q, m6, inter)
            q += 1
        }
        if kc % 2 == 1 {
            let lo = _mm512_maskz_loadu_ps(m6, src + 12 * q)
            let b = pst_cvtne2ps_bf16(_mm512_setzero_ps(), lo)
            let idx = _mm512_set_epi16(31, 15, 30, 14, 29, 13, 28, 12, 27, 11, 26, 10, 25, 9, 24, 8,
                                       23, 7, 22, 6, 21, 5, 20, 4, 19, 3, 18, 2, 17, 1, 16, 0)
            _mm512_mask_storeu_epi32(dst + 6 * q, m6, _mm512_permutexvar_epi16(idx, b))
        }
    }

    /// Converts one fp32 packed B sliver (kc × 16: src[p·16 + j]) to the pair layout
    /// (ceil(kc/2) × 32 UInt16 at dst). Round to nearest even; subnormals become zero.
    public static func packB(_ kc: Int, _ src: UnsafePointer<Float>, _ dst: UnsafeMutablePointer<UInt16>) {
        let idx = _mm512_set_epi16(31, 15, 30, 14, 29, 13, 28, 12, 27, 11, 26, 10, 25, 9, 24, 8,
                                   23, 7, 22, 6, 21, 5, 20, 4, 19, 3, 18, 2, 17, 1, 16, 0)
        let pairs = kc / 2
        var q = 0
        while q < pairs {
            let lo = _mm512_loadu_ps(src + 32 * q), hi = _mm512_loadu_ps(src + 32 * q + 16)
            _mm512_storeu_si512(dst + 32 * q, _mm512_permutexvar_epi16(idx, pst_cvtne2ps_bf16(hi, lo)))
            q += 1
        }
        if kc % 2 == 1 {
            let lo = _mm512_loadu_ps(src + 32 * q)
            _mm512_storeu_si512(dst + 32 * q, _mm512_permutexvar_epi16(idx, pst_cvtne2ps_bf16(_mm512_setzero_ps(), lo)))
        }
    }

    /// Rounds `count` floats at p to bf16 in place (vcvtneps2bf16, then widened back: the low 16
    /// bits become zero), so that the fp32 kernel multiplies bf16 operands exactly.
    public static func roundInPlace(_ p: UnsafeMutablePointer<Float>, _ count: Int) {
        var i = 0
        while i + 16 <= count {
            let h = pst_cvtneps_bf16(_mm512_loadu_ps(p + i))
            _mm512_storeu_si512(p + i, _mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16))
            i += 16
        }
        if i < count {
            let m = __mmask16(truncatingIfNeeded: (1 << (count - i)) - 1)
            let h = pst_cvtneps_bf16(_mm512_maskz_loadu_ps(m, p + i))
            _mm512_mask_storeu_epi32(p + i, m, _mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16))
        }
    }

    /// C[6,32] = alpha·A·B + beta·C (row stride ldc) over `pairs` k-pairs; beta == 0 never reads C.
    /// a: an A pair sliver; b0, b1: two B pair slivers (columns 0-15 and 16-31).
    @inline(never)
    public static func kernel6x32(_ pairs: Int, _ a: UnsafePointer<UInt32>, _ b0: UnsafePointer<UInt16>,
                                  _ b1: UnsafePointer<UInt16>, _ c: UnsafeMutablePointer<Float>, _ ldc: Int,
                                  _ alpha: Float, _ beta: Float) {
        let z = _mm512_setzero_ps()
        var c00 = z, c01 = z, c10 = z, c11 = z, c20 = z, c21 = z
        var c30 = z, c31 = z, c40 = z, c41 = z, c50 = z, c51 = z
        var pa = a, pb0 = b0, pb1 = b1
        @inline(__always) func step(_ a: UnsafePointer<UInt32>, _ x0: UnsafePointer<UInt16>, _ x1: UnsafePointer<UInt16>) {
            let v0 = _mm512_loadu_si512(x0), v1 = _mm512_loadu_si512(x1)
            var s = _mm512_set1_epi32(Int32(bitPattern: a[0]))
            c00 = pst_dpbf16(c00, s, v0); c01 = pst_dpbf16(c01, s, v1)
            s = _mm512_set1_epi32(Int32(bitPattern: a[1]))
            c10 = pst_dpbf16(c10, s, v0); c11 = pst_dpbf16(c11, s, v1)
            s = _mm512_set1_epi32(Int32(bitPattern: a[2]))
            c20 = pst_dpbf16(c20, s, v0); c21 = pst_dpbf16(c21, s, v1)
            s = _mm512_set1_epi32(Int32(bitPattern: a[3]))
            c30 = pst_dpbf16(c30, s, v0); c31 = pst_dpbf16(c31, s, v1)
            s = _mm512_set1_epi32(Int32(bitPattern: a[4]))
            c40 = pst_dpbf16(c40, s, v0); c41 = pst_dpbf16(c41, s, v1)
            s = _mm512_set1_epi32(Int32(bitPattern: a[5]))
            c50 = pst_dpbf16(c50, s, v0); c51 = pst_dpbf16(c51, s, v1)
        }
        var q = 0
        while q + 2 <= pairs {
            step(pa, pb0, pb1); step(pa + 6, pb0 + 32, pb1 + 32)
            pa += 12; pb0 += 64; pb1 += 64; q += 2
        }
        if q < pairs { step(pa, pb0, pb1) }
        let va = _mm512_set1_ps(alpha), vb = _mm512_set1_ps(beta)
        @inline(__always) func out(_ r: Int, _ x0: __m512, _ x1: __m512) {
            let row = c + r * ldc
            if beta == 0 {
                _mm512_storeu_ps(row, _mm512_mul_ps(x0, va))
                _mm512_storeu_ps(row + 16, _mm512_mul_ps(x1, va))
            } else {
                _mm512_storeu_ps(row, _mm512_fmadd_ps(x0, va, _mm512_mul_ps(_mm512_loadu_ps(row), vb)))
                _mm512_storeu_ps(row + 16, _mm512_fmadd_ps(x1, va, _mm512_mul_ps(_mm512_loadu_ps(row + 16), vb)))
            }
        }
        out(0, c00, c01); out(1, c10, c11); out(2, c20, c21)
        out(3, c30, c31); out(4, c40, c41); out(5, c50, c51)
    }
}
