// A matrix held as int8 codes with one fp32 scale per 32-element block of each row — the
// layout of GGML's Q8_0 (ggml-quants.c quantize_row_q8_0_ref: d = amax/127, q = round(x/d);
// there d is stored as fp16), kept here only where it is LOSSLESS: `init(exactly:)` succeeds
// only when q·d reproduces every fp32 element bit for bit. An LM head dequantized from a Q8_0
// GGUF always is (fp16 d times an int8 is exact in fp32, and 127·d / 127 gives d back), so
// decoding reads 1.06 bytes per weight instead of 4 with the same weights.

/// rows × cols as int8 codes, scales per block of `Int8Rows.block` columns (the last block of
/// a row may be shorter): W[r, c] = q[r·cols + c] · d[r·blocksPerRow + c / 32].
final class Int8Rows {
    static let block = 32
    let rows: Int, cols: Int, blocksPerRow: Int
    let q: AlignedBuffer<Int8>
    let d: AlignedBuffer<Float>

    /// The lossless int8 form of `w` (rows × cols, row-major), or nil when some block is not
    /// exactly q·d with d = fl(amax/127) and integers |q| ≤ 127.
    init?(exactly w: UnsafePointer<Float>, rows: Int, cols: Int) {
        guard rows >= 1, cols >= 1 else { return nil }
        let bpr = (cols + Int8Rows.block - 1) / Int8Rows.block
        guard let q = try? AlignedBuffer<Int8>(count: rows * cols), let d = try? AlignedBuffer<Float>(count: rows * bpr) else {
            return nil
        }
        self.rows = rows; self.cols = cols; blocksPerRow = bpr; self.q = q; self.d = d
        let qp = q.baseAddress, dp = d.baseAddress
        // per chunk of rows: whether every block was exact
        let chunks = max(1, min(Threads.count, rows))
        var ok = [Bool](repeating: true, count: chunks)
        ok.withUnsafeMutableBufferPointer { okp in
            let okb = okp.baseAddress!
            parallelChunks(chunks) { c0, c1 in
                for c in c0..<c1 {
                    let r0 = rows * c / chunks, r1 = rows * (c + 1) / chunks
                    okb[c] = Int8Rows._encodeRows(w, qp, dp, r0, r1, cols, bpr)
                }
            }
        }
        if ok.contains(false) { return nil }
    }

    /// Encodes rows r0..<r1; false at the first block that is not exact.
    static func _encodeRows(_ w: UnsafePointer<Float>, _ q: UnsafeMutablePointer<Int8>, _ d: UnsafeMutablePointer<Float>,
                            _ r0: Int, _ r1: Int, _ cols: Int, _ bpr: Int) -> Bool {
        for r in r0..<r1 {
            for b in 0..<bpr {
                let c0 = b * block, c1 = min(cols, c0 + block)
                let src = w + r * cols
                var amax: Float = 0
                for c in c0..<c1 {
                    let v = src[c]
                    guard v.isFinite else { return false }
                    amax = max(amax, abs(v))
                }
                let s = amax / 127
                d[r * bpr + b] = s
                for c in c0..<c1 {
                    if amax == 0 { q[r * cols + c] = 0; continue }
                    let t = (src[c] / s).rounded()
                    guard abs(t) <= 127, t * s == src[c] else { return false }
                    q[r * cols + c] = Int8(t)
                }
            }
        }
        return true
    }

    /// Bytes held (codes and scales).
    var byteCount: Int { q.byteCount + d.byteCount }

    /// y[r] = Σ_c W[r, c]·x[c] for rows r0..<r1 on the calling thread. Per block it sums
    /// q·x in fp32 (int8 → fp32 exactly, FMAs) and folds the block in with one FMA by d;
    /// four rows per pass share the x loads. Differs from the fp32 dot of the same W (the
    /// reference twin) by the summation order only.
    func matvecRows(_ x: UnsafePointer<Float>, _ y: UnsafeMutablePointer<Float>, r0: Int, r1: Int) {
        let cols = self.cols, bpr = blocksPerRow, full = cols / Int8Rows.block
        let qb = q.baseAddress, db = d.baseAddress
        @inline(__always) func f8(_ p: UnsafePointer<Int8>) -> SIMD8<Float> {
            SIMD8<Float>(SIMD8<Int32>(truncatingIfNeeded: UnsafeRawPointer(p).loadUnaligned(as: SIMD8<Int8>.self)))
        }
        @inline(__always) func tail(_ r: Int) -> Float {   // the partial last block of row r
            var s: Float = 0
            for c in (full * Int8Rows.block)..<cols { s += Float(qb[r * cols + c]) * x[c] }
            return s * db[r * bpr + full]
        }
        var r = r0
        while r + 4 <= r1 {
            var a0 = SIMD8<Float>(), a1 = SIMD8<Float>(), a2 = SIMD8<Float>(), a3 = SIMD8<Float>()
            let p0 = UnsafePointer(qb + r * cols), d0 = db + r * bpr
            for b in 0..<full {
                let c = b * Int8Rows.block, p = p0 + c
                let x0 = load8(x + c), x1 = load8(x + c + 8), x2 = load8(x + c + 16), x3 = load8(x + c + 24)
                @inline(__always) func blk(_ p: UnsafePointer<Int8>) -> SIMD8<Float> {
                    var s = f8(p) * x0
                    s = s.addingProduct(f8(p + 8), x1)
                    s = s.addingProduct(f8(p + 16), x2)
                    return s.addingProduct(f8(p + 24), x3)
                }
                a0 = a0.addingProduct(blk(p), SIMD8(repeating: d0[b]))
                a1 = a1.addingProduct(blk(p + cols), SIMD8(repeating: d0[b + bpr]))
                a2 = a2.addingProduct(blk(p + 2 * cols), SIMD8(repeating: d0[b + 2 * bpr]))
                a3 = a3.addingProduct(blk(p + 3 * cols), SIMD8(repeating: d0[b + 3 * bpr]))
            }
            var t = _sum4(a0, a1, a2, a3)
            if full < bpr { for i in 0..<4 { t[i] += tail(r + i) } }
            for i in 0..<4 { y[r + i] = t[i] }
            r += 4
        }
        while r < r1 {
            var a0 = SIMD8<Float>()
            let p0 = UnsafePointer(qb + r * cols)
            for b in 0..<full {
                let c = b * Int8Rows.block, p = p0 + c
                var s = f8(p) * load8(x + c)
                s = s.addingProduct(f8(p + 8), load8(x + c + 8))
                s = s.addingProduct(f8(p + 16), load8(x + c + 16))
                s = s.addingProduct(f8(p + 24), load8(x + c + 24))
                a0 = a0.addingProduct(s, SIMD8(repeating: db[r * bpr + b]))
            }
            var t = _sum4(a0, a0, a0, a0)[0]   // as in the four-row pass: y does not depend on the split
            if full < bpr { t += tail(r) }
            y[r] = t
            r += 1
        }
    }

    /// `matvecRows` over every row, in parallel.
    func matvec(_ x: UnsafePointer<Float>, _ y: UnsafeMutablePointer<Float>) {
        parallelChunks(rows, grain: max(4, 16384 / max(cols, 1))) { r0, r1 in matvecRows(x, y, r0: r0, r1: r1) }
    }
}
