// M = 1 inference straight from the packed nibbles.

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
    /// reference twin (dequantize then a plain dot) by float32 rounding only.
    public func matvec(_ x: UnsafePointer<Float>, _ y: UnsafeMutablePointer<Float>, accumulate: Bool) {
        let (rows, cols) = matrixShape
        let bs = blocksize
        if cols % bs == 0 {
            _matvecAligned(x, y, accumulate: accumulate, rows: rows, cols: cols)
            return
        }
        let p = packed.baseAddress, codeP = code.baseAddress
        withScales { scale in
            parallelChunks(rows, grain: Swift.max(1, 16384 / Swift.max(cols, 1))) { lo, hi in
                var cs = (SIMD8<Float>(), SIMD8<Float>())
                withUnsafeMutableBytes(of: &cs) { raw in
                    let csp = raw.baseAddress!.assumingMemoryBound(to: Float.self)
                    for o in lo..<hi {
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
    }

    /// The common case: every row is a whole number of blocks (cols % blocksize == 0, so each
    /// row starts at a block and at a byte boundary). Per block it accumulates Σ code[nibble]·x
    /// in vector registers with the unscaled 16-entry map, then folds it in with one FMA by the
    /// block's scale: no per-block table scaling and one horizontal sum per row.
    func _matvecAligned(_ x: UnsafePointer<Float>, _ y: UnsafeMutablePointer<Float>, accumulate: Bool, rows: Int, cols: Int) {
        let bs = blocksize
        let blocksPerRow = cols / bs
        let p = packed.baseAddress
        let lo = load8(code.baseAddress), hi = load8(code.baseAddress + 8)
        // Block scales read inline (a closure call per block costs as much as the block's FMAs).
        let isNested = nested != nil
        let plain = absmax?.baseAddress
        let nq = nested?.q.baseAddress, nc = nested?.code.baseAddress, na = nested?.absmax.baseAddress
        let nbs = nested?.blocksize ?? 1, off = nested?.offset ?? 0
        parallelChunks(rows, grain: Swift.max(1, 16384 / Swift.max(cols, 1))) { r0, r1 in
            for o in r0..<r1 {
                var acc0 = SIMD8<Float>(), acc1 = SIMD8<Float>()
                var bp = p + (o * cols) >> 1
                var xp = x
                let b0 = o * blocksPerRow
                for j in 0..<blocksPerRow {
                    var s0 = SIMD8<Float>(), s1 = SIMD8<Float>()
                    var k = 0
                    while k < bs {
                        s0 = s0.addingProduct(_lookup16(lo, hi, _nibbles8(bp)), load8(xp))
                        s1 = s1.addingProduct(_lookup16(lo, hi, _nibbles8(bp + 4)), load8(xp + 8))
                        bp += 8; xp += 16; k += 16
                    }
                    let b = b0 + j
                    // bitsandbytes' scale: fl(fl(code8[q]·absmax2) + offset), two roundings
                    let scale: Float = isNested ? (nc.unsafelyUnwrapped[Int(nq.unsafelyUnwrapped[b])] * na.unsafelyUnwrapped[b / nbs]) + off
                                                : plain.unsafelyUnwrapped[b]
                    let sc = SIMD8<Float>(repeating: scale)
                    acc0 = acc0.addingProduct(s0, sc)
                    acc1 = acc1.addingProduct(s1, sc)
                }
                let total = (acc0 + acc1).sum()
                y[o] = accumulate ? y[o] + total : total
            }
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
