// M = 1 inference straight from the packed nibbles.
import _Builtin_intrinsics.intel
import PeftSwiftAVX512

@inline(__always) func _sum4(_ a: SIMD8<Float>, _ b: SIMD8<Float>, _ c: SIMD8<Float>, _ d: SIMD8<Float>) -> SIMD4<Float> {
    QuantizedTensor._sum4Impl(a, b, c, d)
}

extension QuantizedTensor {
    /// Rows and columns of the weight viewed as a matrix: (shape[0], count / shape[0]); a 1-D
    /// tensor is one row.
    public var matrixShape: (rows: Int, cols: Int) {
        shape.count == 1 ? (1, count) : (shape[0], count / shape[0])
    }

    /// y[o] (+)= Σ_i W[o, i] · x[i] for W = this tensor as (rows, cols) row-major
    /// (`matrixShape`, e.g. a Linear weight out×in). x: cols floats, y: rows floats (must not
    /// alias x). Reads the packed nibbles directly (no float32 W), AVX2, parallel over rows.
    /// Per block segment it accumulates Σ fl(code·scale)·x with FMAs, so it differs from the
    /// reference twin (dequantize then a plain dot) by float32 rounding only. `isa` (default: the
    /// active path, read once) picks the kernel; every path gives bit-identical results.
    public func matvec(_ x: UnsafePointer<Float>, _ y: UnsafeMutablePointer<Float>, accumulate: Bool, isa: ISA = ISA.active) {
        let (rows, cols) = matrixShape
        let bs = blocksize
        if cols % bs == 0 {
            _matvecAligned(x, y, accumulate: accumulate, rows: rows, cols: cols, isa: isa)
            return
        }
        // rows that split a block: matvecRows' general path, in parallel over rows
        parallelChunks(rows, grain: Swift.max(1, 16384 / Swift.max(cols, 1))) { lo, hi in
            matvecRows(x, y, accumulate: accumulate, r0: lo, r1: hi, isa: isa)
        }
    }

    /// The common case: every row is a whole number of blocks (cols % blocksize == 0, so each
    /// row starts at a block and at a byte boundary), in parallel over rows.
    func _matvecAligned(_ x: UnsafePointer<Float>, _ y: UnsafeMutablePointer<Float>, accumulate: Bool, rows: Int, cols: Int, isa: ISA) {
        parallelChunks(rows, grain: Swift.max(4, 16384 / Swift.max(cols, 1))) { r0, r1 in
            _matvecRowsAligned(x, y, accumulate: accumulate, r0: r0, r1: r1, cols: cols, isa: isa)
        }
    }

    /// Rows r0..<r1 of `matvec` on the calling thread (y[r0..<r1] only): what a caller that
    /// splits the rows over its own threads (the decode step) runs per range.
    func matvecRows(_ x: UnsafePointer<Float>, _ y: UnsafeMutablePointer<Float>, accumulate: Bool, r0: Int, r1: Int,
                    isa: ISA = ISA.active) {
        let (_, cols) = matrixShape
        if cols % blocksize == 0 {
            _matvecRowsAligned(x, y, accumulate: accumulate, r0: r0, r1: r1, cols: cols, isa: isa)
            return
        }
        // rare (a row that splits a block): the general path's arithmetic, one row at a time
        let p = packed.baseAddress, codeP = code.baseAddress, bs = blocksize
        withScales { scale in
            var cs = (SIMD8<Float>(), SIMD8<Float>())
            withUnsafeMutableBytes(of: &cs) { raw in
                let csp = raw.baseAddress!.assumingMemoryBound(to: Float.self)
                for o in r0..<r1 {
                    let rs = o * cols, re = rs + cols
                    var total: Float = 0
                    var i = rs
                    while i < re {
                        let b = i / bs
                        let e = Swift.min(re, (b + 1) * bs)
                        let (tlo, thi) = Quant4._scaledTables(codeP, scale(b), csp)
                        total += QuantizedTensor._dotSegment(p, i, e, tlo, thi, csp, x + (i - rs))
                        i = e
                    }
                    y[o] = accumulate ? y[o] + total : total
                }
            }
        }
    }

    /// Rows r0..<r1 when every row is whole blocks. Per block and row it accumulates
    /// Σ code[nibble]·x in one vector register with the unscaled 16-entry map (two `vpermps`
    /// and a blend per 8 codes), then folds it in with one FMA by the block's scale. Four rows
    /// per pass share the x loads and one horizontal reduction (a row gets the same operations
    /// in the same order in a pass of four or alone, so y does not depend on how the rows are
    /// split between threads); the block scales (double
    /// quant: bitsandbytes' fl(fl(code8[q]·absmax2) + offset)) are read inline, without a
    /// division per block. With `isa` >= .avx512 the pairs of rows go to the zmm kernel
    /// (PeftSwiftAVX512/QuantMatvec512.swift: the same lanes, operations and order, so
    /// bit-identical results) and only an odd last row stays here.
    func _matvecRowsAligned(_ x: UnsafePointer<Float>, _ y: UnsafeMutablePointer<Float>, accumulate: Bool,
                            r0: Int, r1: Int, cols: Int, isa: ISA) {
        let bs = blocksize
        let bpr = cols / bs
        let p = packed.baseAddress
        let lo = load8(code.baseAddress), hi = load8(code.baseAddress + 8)
        // read once (inside the loops the global's lazy-init check is a call per block; a literal
        // here gets constant-folded into per-lane scalar shifts)
        let sh = _nibbleShifts
        let isNested = nested != nil
        let plain = absmax?.baseAddress
        let nq = nested?.q.baseAddress, nc = nested?.code.baseAddress, na = nested?.absmax.baseAddress
        let nbs = nested?.blocksize ?? 1, off = nested?.offset ?? 0
        let nshift = nbs & (nbs - 1) == 0 ? nbs.trailingZeroBitCount : -1
        @inline(__always) func scale(_ b: Int) -> Float {
            if !isNested { return plain.unsafelyUnwrapped[b] }
            let g = nshift >= 0 ? b >> nshift : b / nbs
            return (nc.unsafelyUnwrapped[Int(nq.unsafelyUnwrapped[b])] * na.unsafelyUnwrapped[g]) + off
        }
        @inline(__always) func codes(_ bp: UnsafePointer<UInt8>) -> SIMD8<Float> {
            let w = UnsafeRawPointer(bp).loadUnaligned(as: UInt32.self)
            return _lookup16(lo, hi, SIMD8<UInt32>(repeating: w) &>> sh)
        }
        var o = r0
        if isa >= .avx512 && bs % 16 == 0 && r1 - r0 >= 2 {
            let cp = code.baseAddress
            o += QuantMatvec512.rows(p, cp, x, y, accumulate, r0, r1, cols, bs, isNested, plain ?? cp,
                                     nq ?? p, nc ?? cp, na ?? cp, nbs, off)
        }
        while o + 4 <= r1 {
            var a0 = SIMD8<Float>(), a1 = SIMD8<Float>(), a2 = SIMD8<Float>(), a3 = SIMD8<Float>()
            var b0p = UnsafePointer(p + (o * cols) >> 1)
            let rb = cols >> 1
            var xp = x
            var b = o * bpr
            for _ in 0..<bpr {
                var s0 = SIMD8<Float>(), s1 = SIMD8<Float>(), s2 = SIMD8<Float>(), s3 = SIMD8<Float>()
                var k = 0
                while k < bs {
                    let x0 = load8(xp + k), x1 = load8(xp + k + 8)
                    let q = b0p + (k >> 1)
                    s0 = s0.addingProduct(codes(q), x0); s0 = s0.addingProduct(codes(q + 4), x1)
                    s1 = s1.addingProduct(codes(q + rb), x0); s1 = s1.addingProduct(codes(q + rb + 4), x1)
                    s2 = s2.addingProduct(codes(q + 2 * rb), x0); s2 = s2.addingProduct(codes(q + 2 * rb + 4), x1)
                    s3 = s3.addingProduct(codes(q + 3 * rb), x0); s3 = s3.addingProduct(codes(q + 3 * rb + 4), x1)
                    k += 16
                }
                a0 = a0.addingProduct(s0, SIMD8(repeating: scale(b)))
                a1 = a1.addingProduct(s1, SIMD8(repeating: scale(b + bpr)))
                a2 = a2.addingProduct(s2, SIMD8(repeating: scale(b + 2 * bpr)))
                a3 = a3.addingProduct(s3, SIMD8(repeating: scale(b + 3 * bpr)))
                b += 1; b0p += bs >> 1; xp += bs
            }
            let t = _sum4(a0, a1, a2, a3)
            for r in 0..<4 { y[o + r] = accumulate ? y[o + r] + t[r] : t[r] }
            o += 4
        }
        while o < r1 {
            var a0 = SIMD8<Float>()
            var bp = UnsafePointer(p + (o * cols) >> 1)
            var xp = x
            var b = o * bpr
            for _ in 0..<bpr {   // the same operations per row as the four-row pass
                var s0 = SIMD8<Float>()
                var k = 0
                while k < bs {
                    s0 = s0.addingProduct(codes(bp), load8(xp)); s0 = s0.addingProduct(codes(bp + 4), load8(xp + 8))
                    bp += 8; xp += 16; k += 16
                }
                a0 = a0.addingProduct(s0, SIMD8(repeating: scale(b)))
                b += 1
            }
            let t = _sum4(a0, a0, a0, a0)[0]
            y[o] = accumulate ? y[o] + t : t
            o += 1
        }
    }

    /// Σ_{i in [s,e)} W[i] · xs[i - s] for elements of one block (pre-scaled table).
    @inline(__always)
    static func _dotSegment(_ packed: UnsafePointer<UInt8>, _ s: Int, _ e: Int, _ lo: SIMD8<Float>, _ hi: SIMD8<Float>,
                            _ cs: UnsafePointer<Float>, _ xs: UnsafePointer<Float>) -> Float {
        var i = s
        var xp = xs
        var head: Float = 0
        if i < e && i & 1 == 1 { head = cs[Int(packed[i >> 1] & 15)] * xp[0]; i += 1; xp += 1 }
        var a0 = SIMD8<Float>(), a1 = SIMD8<Float>()
        while i + 16 <= e {
            a0 = a0.addingProduct(_lookup16(lo, hi, _nibbles8(packed + (i >> 1))), load8(xp))
            a1 = a1.addingProduct(_lookup16(lo, hi, _nibbles8(packed + (i >> 1) + 4)), load8(xp + 8))
            i += 16; xp += 16
        }
        if i + 8 <= e { a0 = a0.addingProduct(_lookup16(lo, hi, _nibbles8(packed + (i >> 1))), load8(xp)); i += 8; xp += 8 }
        var t = head + (a0 + a1).sum()
        while i < e {
            let byte = packed[i >> 1]
            t += cs[Int(i & 1 == 0 ? byte >> 4 : byte & 15)] * xp[0]
            i += 1; xp += 1
        }
        return t
    }

    /// The lane sums of four vectors: (Σa, Σb, Σc, Σd), by a tree of horizontal adds.
    @inline(__always) static func _sum4Impl(_ a: SIMD8<Float>, _ b: SIMD8<Float>, _ c: SIMD8<Float>, _ d: SIMD8<Float>) -> SIMD4<Float> {
        let ab = _mm256_hadd_ps(a, b), cd = _mm256_hadd_ps(c, d)
        let abcd = _mm256_hadd_ps(ab, cd)   // per 128-bit half: (a, b, c, d) partial sums
        let lo = SIMD4<Float>(abcd[0], abcd[1], abcd[2], abcd[3]), hi = SIMD4<Float>(abcd[4], abcd[5], abcd[6], abcd[7])
        return lo + hi
    }

    /// Reference twin of `matvec`: dequantize each row to float32, then a plain float64 dot.
    public func matvecReference(_ x: UnsafePointer<Float>, _ y: UnsafeMutablePointer<Float>, accumulate: Bool) {
        let (rows, cols) = matrixShape
        var w = [Float](repeating: 0, count: count)
        w.withUnsafeMutableBytes { dequantizeReference(into: $0.baseAddress!, dtype: .f32) }
        for o in 0..<rows {
            var s: Double = 0
            for i in 0..<cols { s += Double(w[o * cols + i]) * Double(x[i]) }
            y[o] = accumulate ? y[o] + Float(s) : Float(s)
        }
    }
}
