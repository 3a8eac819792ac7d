// The register-blocked micro-kernel of the packed SGEMM (the GotoBLAS/BLIS "micro-kernel":
// Goto & van de Geijn 2008, Van Zee & van de Geijn 2015).
//
//   C[MR,NR] = alpha·Ap[MR,kc]·Bp[kc,NR] + beta·C      MR = 6, NR = 16
//
// Ap is one packed A micro-panel: kc groups of MR floats (column p of the 6-row sliver, i.e.
// Ap[p*MR + r] = op(A)[i0+r, p0+p]). Bp is one packed B micro-panel: kc groups of NR floats
// (Bp[p*NR + j] = op(B)[p0+p, j0+j]). Both are zero-padded to full MR/NR, so the kernel always
// computes a full 6×16 tile; partial tiles go through a scratch tile (`storePartial`).
// 12 accumulators (6 rows × 2 SIMD8 halves) + 2 B vectors + 1 broadcast = 15 of 16 ymm registers.

extension GEMM {
    static let mr = 6
    static let nr = 16

    // 8-float loads and stores: load8/store8 (Core/SIMD+Memory.swift).

    /// C[6,16] (row stride ldc) = alpha·Ap·Bp + beta·C over `kc` steps; beta == 0 never reads C.
    @inline(never)
    static func kernel6x16(_ kc: Int, _ ap: UnsafePointer<Float>, _ bp: UnsafePointer<Float>,
                           _ c: UnsafeMutablePointer<Float>, _ ldc: Int, _ alpha: Float, _ beta: Float) {
        kernelBody(kc, ap, 1, mr, bp, nr, c, ldc, alpha, beta)
    }

    /// The same with A read in place: A(r, p) = a[r·rs + p·cs] for r < 6 (all six rows must
    /// exist). Used when op(B) is so narrow that packing A would cost as much as the products.
    @inline(never)
    static func kernel6x16Strided(_ kc: Int, _ a: UnsafePointer<Float>, _ rs: Int, _ cs: Int,
                                  _ bp: UnsafePointer<Float>, _ c: UnsafeMutablePointer<Float>, _ ldc: Int,
                                  _ alpha: Float, _ beta: Float) {
        kernelBody(kc, a, rs, cs, bp, nr, c, ldc, alpha, beta)
    }

    /// The same with packed A and B read in place: B(p, j) = b[p·bstep + j] for j < 16 (all
    /// sixteen columns must exist). Used when op(A) has so few rows that packing B would cost
    /// as much as the products (the transA LoRA gradient gᵀ·x with rank 16).
    @inline(never)
    static func kernel6x16StridedB(_ kc: Int, _ ap: UnsafePointer<Float>, _ b: UnsafePointer<Float>, _ bstep: Int,
                                   _ c: UnsafeMutablePointer<Float>, _ ldc: Int, _ alpha: Float, _ beta: Float) {
        kernelBody(kc, ap, 1, mr, b, bstep, c, ldc, alpha, beta)
    }

    /// A(r, p) = a[r·rs + p·cs], B(p, j) = b[p·bs + j]; C as in kernel6x16.
    @inline(__always)
    static func kernelBody(_ kc: Int, _ ap: UnsafePointer<Float>, _ rs: Int, _ cs: Int, _ bp: UnsafePointer<Float>,
                           _ bs: Int, _ c: UnsafeMutablePointer<Float>, _ ldc: Int, _ alpha: Float, _ beta: Float) {
        var c00 = SIMD8<Float>(), c01 = SIMD8<Float>()
        var c10 = SIMD8<Float>(), c11 = SIMD8<Float>()
        var c20 = SIMD8<Float>(), c21 = SIMD8<Float>()
        var c30 = SIMD8<Float>(), c31 = SIMD8<Float>()
        var c40 = SIMD8<Float>(), c41 = SIMD8<Float>()
        var c50 = SIMD8<Float>(), c51 = SIMD8<Float>()
        var a = ap, b = bp
        var p = 0
        @inline(__always) func step(_ a: UnsafePointer<Float>, _ b: UnsafePointer<Float>) {
            let b0 = load8(b), b1 = load8(b + 8)
            var s = SIMD8<Float>(repeating: a[0])
            c00 = c00.addingProduct(s, b0); c01 = c01.addingProduct(s, b1)
            s = SIMD8<Float>(repeating: a[rs])
            c10 = c10.addingProduct(s, b0); c11 = c11.addingProduct(s, b1)
            s = SIMD8<Float>(repeating: a[2 * rs])
            c20 = c20.addingProduct(s, b0); c21 = c21.addingProduct(s, b1)
            s = SIMD8<Float>(repeating: a[3 * rs])
            c30 = c30.addingProduct(s, b0); c31 = c31.addingProduct(s, b1)
            s = SIMD8<Float>(repeating: a[4 * rs])
            c40 = c40.addingProduct(s, b0); c41 = c41.addingProduct(s, b1)
            s = SIMD8<Float>(repeating: a[5 * rs])
            c50 = c50.addingProduct(s, b0); c51 = c51.addingProduct(s, b1)
        }
        while p + 4 <= kc {
            step(a, b); step(a + cs, b + bs); step(a + 2 * cs, b + 2 * bs); step(a + 3 * cs, b + 3 * bs)
            a += 4 * cs; b += 4 * bs; p += 4
        }
        while p < kc {
            step(a, b)
            a += cs; b += bs; p += 1
        }
        let va = SIMD8<Float>(repeating: alpha)
        @inline(__always) func out(_ r: Int, _ x0: SIMD8<Float>, _ x1: SIMD8<Float>) {
            let row = c + r * ldc
            if beta == 0 {
                store8(row, x0 * va); store8(row + 8, x1 * va)
            } else {
                let vb = SIMD8<Float>(repeating: beta)
                store8(row, (load8(row) * vb).addingProduct(x0, va))
                store8(row + 8, (load8(row + 8) * vb).addingProduct(x1, va))
            }
        }
        out(0, c00, c01); out(1, c10, c11); out(2, c20, c21)
        out(3, c30, c31); out(4, c40, c41); out(5, c50, c51)
    }

    /// A tile of `mr × nr` (≤ 6 × 16) at C: runs the full kernel into `tile` (96 floats), then
    /// merges the live corner.
    @inline(__always)
    static func kernelPartial(_ mr: Int, _ nr: Int, _ kc: Int, _ ap: UnsafePointer<Float>,
                              _ bp: UnsafePointer<Float>, _ c: UnsafeMutablePointer<Float>, _ ldc: Int,
                              _ alpha: Float, _ beta: Float, _ tile: UnsafeMutablePointer<Float>) {
        kernel6x16(kc, ap, bp, tile, 16, alpha, 0)
        mergeTile(mr, nr, c, ldc, beta, tile)
    }

    /// C[0..<mr, 0..<nr] = tile + beta·C (tile row stride 16; beta == 0 never reads C).
    @inline(__always)
    static func mergeTile(_ mr: Int, _ nr: Int, _ c: UnsafeMutablePointer<Float>, _ ldc: Int,
                          _ beta: Float, _ tile: UnsafePointer<Float>) {
        for r in 0..<mr {
            let row = c + r * ldc, t = tile + r * 16
            if beta == 0 {
                for j in 0..<nr { row[j] = t[j] }
            } else {
                for j in 0..<nr { row[j] = beta * row[j] + t[j] }
            }
        }
    }
}
