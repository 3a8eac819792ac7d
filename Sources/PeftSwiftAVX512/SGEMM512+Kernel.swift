import _Builtin_intrinsics.intel

// AVX-512F micro-kernels of the engine's packed SGEMM (PeftSwift/GEMM/SGEMM.swift), compiled
// with AVX-512 enabled (Package.swift) and reached only through GEMM's run-time dispatch
// (PeftSwift/Core/ISA.swift): a host without AVX-512F/BW/DQ/VL never calls into this module.
//
// The tile is 6 rows × 32 columns: two of the 16-column B slivers the AVX2 path packs
// (PeftSwift/GEMM/SGEMM+Pack.swift), side by side, so both paths share one packed layout.
// 12 zmm accumulators hide the 4-cycle FMA latency on two FMA ports (Intel server cores issue
// two 512-bit FMAs per cycle; AMD Zen 4 one), 2 B vectors + 1 broadcast: 15 of 32 registers.
//
// Every C element is accumulated in the same order as the AVX2 kernel (kernelBody in
// SGEMM+Kernel.swift): one fused multiply-add per p, p ascending, then alpha and beta applied
// the same way. FMA rounds once whatever its width, so this path's results are bit-identical
// to the AVX2 path's (Tests/PeftSwiftTests/GEMM holds them equal).
//
// Rules for this module: raw pointers and Intel intrinsics only (C static inline functions),
// no Swift generics, arrays or closures, so nothing here is a shared (weak) symbol that the
// linker could pick for code compiled without AVX-512 (Tests/abi/check.sh checks the objects).

public enum SGEMM512 {
    /// C[6,32] = alpha·A·B + beta·C (row stride ldc); beta == 0 never reads C.
    ///   A(r, p) = a[r·rs + p·cs]       r < 6
    ///   B(p, j) = b0[p·bs + j]        j < 16
    ///   B(p, 16 + j) = b1[p·bs + j]   j < 16
    /// Packed A is rs = 1, cs = 6; packed B slivers are bs = 16.
    @inline(never)
    public static func kernel6x32(_ kc: Int, _ a: UnsafePointer<Float>, _ rs: Int, _ cs: Int,
                                  _ b0: UnsafePointer<Float>, _ b1: UnsafePointer<Float>, _ bs: Int,
                                  _ c: UnsafeMutablePointer<Float>, _ ldc: Int, _ alpha: Float, _ beta: Float) {
        let z = _mm512_setzero_ps()
        var c00 = z, c01 = z, c10 = z, c11 = z, c20 = z, c21 = z
        var c30 = z, c31 = z, c40 = z, c41 = z, c50 = z, c51 = z
        var pa = a, pb0 = b0, pb1 = b1
        var p = 0
        @inline(__always) func step(_ a: UnsafePointer<Float>, _ x0: UnsafePointer<Float>, _ x1: UnsafePointer<Float>) {
            let v0 = _mm512_loadu_ps(x0), v1 = _mm512_loadu_ps(x1)
            var s = _mm512_set1_ps(a[0])
            c00 = _mm512_fmadd_ps(s, v0, c00); c01 = _mm512_fmadd_ps(s, v1, c01)
            s = _mm512_set1_ps(a[rs])
            c10 = _mm512_fmadd_ps(s, v0, c10); c11 = _mm512_fmadd_ps(s, v1, c11)
            s = _mm512_set1_ps(a[2 * rs])
            c20 = _mm512_fmadd_ps(s, v0, c20); c21 = _mm512_fmadd_ps(s, v1, c21)
            s = _mm512_set1_ps(a[3 * rs])
            c30 = _mm512_fmadd_ps(s, v0, c30); c31 = _mm512_fmadd_ps(s, v1, c31)
            s = _mm512_set1_ps(a[4 * rs])
            c40 = _mm512_fmadd_ps(s, v0, c40); c41 = _mm512_fmadd_ps(s, v1, c41)
            s = _mm512_set1_ps(a[5 * rs])
            c50 = _mm512_fmadd_ps(s, v0, c50); c51 = _mm512_fmadd_ps(s, v1, c51)
        }
        while p + 4 <= kc {
            step(pa, pb0, pb1)
            step(pa + cs, pb0 + bs, pb1 + bs)
            step(pa + 2 * cs, pb0 + 2 * bs, pb1 + 2 * bs)
            step(pa + 3 * cs, pb0 + 3 * bs, pb1 + 3 * bs)
            pa += 4 * cs; pb0 += 4 * bs; pb1 += 4 * bs; p += 4
        }
        while p < kc {
            step(pa, pb0, pb1)
            pa += cs; pb0 += bs; pb1 += bs; p += 1
        }
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
