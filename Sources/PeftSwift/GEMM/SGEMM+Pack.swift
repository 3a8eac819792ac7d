// Packing of op(A) and op(B) blocks into the micro-kernel layout (see SGEMM+Kernel.swift).
//
//   packA: op(A)[i0..<i0+mc, p0..<p0+kc] → ceil(mc/6) slivers of kc×6, sliver s at dst + s·6·kc
//   packB: op(B)[p0..<p0+kc, j0..<j0+nc] → ceil(nc/16) slivers of kc×16, sliver t at dst + t·16·kc
//
// Rows/columns past the edge are zero-filled so the kernel can always run a full 6×16 tile.

extension GEMM {
    /// Packs op(A)[i0..<i0+mc, p0..<p0+kc]; op(A)[i,p] = trans ? a[p·lda + i] : a[i·lda + p].
    static func packA(_ trans: Bool, _ a: UnsafePointer<Float>, _ lda: Int, _ i0: Int, _ mc: Int,
                      _ p0: Int, _ kc: Int, _ dst: UnsafeMutablePointer<Float>) {
        var d = dst
        var i = i0
        let iEnd = i0 + mc
        while i < iEnd {
            let live = min(mr, iEnd - i)
            if trans {
                // Row p of A holds op(A)[·, p] contiguously: 6 consecutive floats per step.
                var src = a + p0 * lda + i
                if live == mr {
                    for _ in 0..<kc {
                        d[0] = src[0]; d[1] = src[1]; d[2] = src[2]
                        d[3] = src[3]; d[4] = src[4]; d[5] = src[5]
                        d += mr; src += lda
                    }
                } else {
                    for _ in 0..<kc {
                        for r in 0..<live { d[r] = src[r] }
                        for r in live..<mr { d[r] = 0 }
                        d += mr; src += lda
                    }
                }
            } else {
                let r0 = a + i * lda + p0
                if live == mr {
                    var p = 0
                    while p + 8 <= kc {
                        transpose6x8(r0 + p, lda, d)
                        d += 8 * mr; p += 8
                    }
                    let r1 = r0 + lda, r2 = r1 + lda, r3 = r2 + lda, r4 = r3 + lda, r5 = r4 + lda
                    while p < kc {
                        d[0] = r0[p]; d[1] = r1[p]; d[2] = r2[p]
                        d[3] = r3[p]; d[4] = r4[p]; d[5] = r5[p]
                        d += mr; p += 1
                    }
                } else {
                    for p in 0..<kc {
                        for r in 0..<live { d[r] = r0[r * lda + p] }
                        for r in live..<mr { d[r] = 0 }
                        d += mr
                    }
                }
            }
            i += mr
        }
    }

    /// Packs op(B)[p0..<p0+kc, j0..<j0+nc]; op(B)[p,j] = trans ? b[j·ldb + p] : b[p·ldb + j].
    static func packB(_ trans: Bool, _ b: UnsafePointer<Float>, _ ldb: Int, _ p0: Int, _ kc: Int,
                      _ j0: Int, _ nc: Int, _ dst: UnsafeMutablePointer<Float>) {
        var d = dst
        var j = j0
        let jEnd = j0 + nc
        while j < jEnd {
            let live = min(nr, jEnd - j)
            if trans {
                packBTransposedSliver(b + j * ldb + p0, ldb, kc, live, d)
                d += nr * kc
            } else {
                var src = b + p0 * ldb + j
                if live == nr {
                    for _ in 0..<kc {
                        store8(d, load8(src)); store8(d + 8, load8(src + 8))
                        d += nr; src += ldb
                    }
                } else {
                    for _ in 0..<kc {
                        for c in 0..<live { d[c] = src[c] }
                        for c in live..<nr { d[c] = 0 }
                        d += nr; src += ldb
                    }
                }
            }
            j += nr
        }
    }

    /// One kc×16 B sliver from `live` (≤ 16) stored rows of length ≥ kc at `src` (row stride
    /// ldb): dst[p·16 + r] = src[r·ldb + p]. Full slivers go 8×8 blocks at a time.
    @inline(__always)
    static func packBTransposedSliver(_ src: UnsafePointer<Float>, _ ldb: Int, _ kc: Int, _ live: Int,
                                      _ dst: UnsafeMutablePointer<Float>) {
        var p = 0
        if live == nr {
            while p + 8 <= kc {
                transpose8x8(src + p, ldb, dst + p * nr, nr)
                transpose8x8(src + 8 * ldb + p, ldb, dst + p * nr + 8, nr)
                p += 8
            }
            while p < kc {
                for r in 0..<nr { dst[p * nr + r] = src[r * ldb + p] }
                p += 1
            }
        } else {
            for p in 0..<kc {
                let d = dst + p * nr
                for r in 0..<live { d[r] = src[r * ldb + p] }
                for r in live..<nr { d[r] = 0 }
            }
        }
    }

    typealias V8x8 = (SIMD8<Float>, SIMD8<Float>, SIMD8<Float>, SIMD8<Float>,
                      SIMD8<Float>, SIMD8<Float>, SIMD8<Float>, SIMD8<Float>)

    /// The transpose of the 8×8 matrix whose rows are r: out.q[r] = r.r[q]. Written as the
    /// usual unpack / shuffle / permute2f128 network (LLVM turns the element-wise
    /// initializers into those shuffles).
    @inline(__always)
    static func transpose8(_ r: V8x8) -> V8x8 {
        let (r0, r1, r2, r3, r4, r5, r6, r7) = r
        // Stage 1: interleave pairs of rows (unpacklo/hi within 128-bit lanes).
        let t0 = SIMD8(r0[0], r1[0], r0[1], r1[1], r0[4], r1[4], r0[5], r1[5])
        let t1 = SIMD8(r0[2], r1[2], r0[3], r1[3], r0[6], r1[6], r0[7], r1[7])
        let t2 = SIMD8(r2[0], r3[0], r2[1], r3[1], r2[4], r3[4], r2[5], r3[5])
        let t3 = SIMD8(r2[2], r3[2], r2[3], r3[3], r2[6], r3[6], r2[7], r3[7])
        let t4 = SIMD8(r4[0], r5[0], r4[1], r5[1], r4[4], r5[4], r4[5], r5[5])
        let t5 = SIMD8(r4[2], r5[2], r4[3], r5[3], r4[6], r5[6], r4[7], r5[7])
        let t6 = SIMD8(r6[0], r7[0], r6[1], r7[1], r6[4], r7[4], r6[5], r7[5])
        let t7 = SIMD8(r6[2], r7[2], r6[3], r7[3], r6[6], r7[6], r6[7], r7[7])
        // Stage 2: 64-bit pairs (shuffle_ps 0x44 / 0xEE).
        let u0 = SIMD8(t0[0], t0[1], t2[0], t2[1], t0[4], t0[5], t2[4], t2[5])
        let u1 = SIMD8(t0[2], t0[3], t2[2], t2[3], t0[6], t0[7], t2[6], t2[7])
        let u2 = SIMD8(t1[0], t1[1], t3[0], t3[1], t1[4], t1[5], t3[4], t3[5])
        let u3 = SIMD8(t1[2], t1[3], t3[2], t3[3], t1[6], t1[7], t3[6], t3[7])
        let u4 = SIMD8(t4[0], t4[1], t6[0], t6[1], t4[4], t4[5], t6[4], t6[5])
        let u5 = SIMD8(t4[2], t4[3], t6[2], t6[3], t4[6], t4[7], t6[6], t6[7])
        let u6 = SIMD8(t5[0], t5[1], t7[0], t7[1], t5[4], t5[5], t7[4], t7[5])
        let u7 = SIMD8(t5[2], t5[3], t7[2], t7[3], t5[6], t5[7], t7[6], t7[7])
        // Stage 3: 128-bit halves (permute2f128 0x20 / 0x31).
        return (SIMD8(lowHalf: u0.lowHalf, highHalf: u4.lowHalf), SIMD8(lowHalf: u1.lowHalf, highHalf: u5.lowHalf),
                SIMD8(lowHalf: u2.lowHalf, highHalf: u6.lowHalf), SIMD8(lowHalf: u3.lowHalf, highHalf: u7.lowHalf),
                SIMD8(lowHalf: u0.highHalf, highHalf: u4.highHalf), SIMD8(lowHalf: u1.highHalf, highHalf: u5.highHalf),
                SIMD8(lowHalf: u2.highHalf, highHalf: u6.highHalf), SIMD8(lowHalf: u3.highHalf, highHalf: u7.highHalf))
    }

    /// dst[q·ldd + r] = src[r·lds + q] for r, q in 0..<8.
    @inline(__always)
    static func transpose8x8(_ src: UnsafePointer<Float>, _ lds: Int, _ dst: UnsafeMutablePointer<Float>, _ ldd: Int) {
        let o = transpose8((load8(src), load8(src + lds), load8(src + 2 * lds), load8(src + 3 * lds),
                            load8(src + 4 * lds), load8(src + 5 * lds), load8(src + 6 * lds), load8(src + 7 * lds)))
        store8(dst, o.0); store8(dst + ldd, o.1); store8(dst + 2 * ldd, o.2); store8(dst + 3 * ldd, o.3)
        store8(dst + 4 * ldd, o.4); store8(dst + 5 * ldd, o.5); store8(dst + 6 * ldd, o.6); store8(dst + 7 * ldd, o.7)
    }

    /// Eight steps of a full A sliver: dst[q·6 + r] = rows[r][q] for r < 6, q < 8 (48 floats).
    /// Columns 0..<7 are stored 8 wide, each store's 2 spare lanes overwritten by the next;
    /// the last is stored 6 wide so nothing past dst[48] is touched.
    @inline(__always)
    static func transpose6x8(_ r0: UnsafePointer<Float>, _ lda: Int, _ dst: UnsafeMutablePointer<Float>) {
        let z = SIMD8<Float>()
        let o = transpose8((load8(r0), load8(r0 + lda), load8(r0 + 2 * lda), load8(r0 + 3 * lda),
                            load8(r0 + 4 * lda), load8(r0 + 5 * lda), z, z))
        store8(dst, o.0); store8(dst + 6, o.1); store8(dst + 12, o.2); store8(dst + 18, o.3)
        store8(dst + 24, o.4); store8(dst + 30, o.5); store8(dst + 36, o.6)
        UnsafeMutableRawPointer(dst + 42).storeBytes(of: o.7.lowHalf, as: SIMD4<Float>.self)
        dst[46] = o.7[4]; dst[47] = o.7[5]
    }
}
