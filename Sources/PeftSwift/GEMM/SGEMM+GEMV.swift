// The M == 1 / N == 1 path: a matrix-vector product, bound by reading the matrix once.
//
//   y[i·incy] = alpha·Σ_j Mat(i,j)·x[j] + beta·y[i·incy]     i < rows, j < len
//   .dot:  Mat(i,j) = P[i·ld + j]   (each output is a dot product with a contiguous row)
//   .axpy: Mat(i,j) = P[j·ld + i]   (each input element scales a contiguous row segment)
//
// Mapping from sgemm (op as in SGEMM.swift):
//   M == 1: y = C[0, ·] (incy 1),    x = op(A)[0, ·],  Mat = op(B)ᵀ: transB → .dot over stored B
//                                                                     else   → .axpy over stored B
//   N == 1: y = C[·, 0] (incy ldc),  x = op(B)[·, 0],  Mat = op(A):  transA → .axpy over A
//                                                                     else   → .dot over A
// Threads split the outputs i into contiguous ranges.

extension GEMM {
    enum GEMVForm { case dot, axpy }

    /// Rows per `.dot` block (accumulators held per block) and outputs per `.axpy` block.
    static let gemvDotRows = 64
    static let gemvAxpyCols = 2048
    /// Length of the j-range per panel-source fill on the `.dot` GEMV path.
    static let gemvPanelLen = panelBlockLimit / gemvDotRows

    static func gemv(_ p: Problem) {
        let k = p.k
        // x: op(A) row 0 (M == 1) or op(B) column 0 (N == 1), made contiguous.
        let xs = Workspace.acquire(floats: k)
        defer { Workspace.release(xs) }
        let x = xs.pointer
        let form: GEMVForm
        let rows: Int, incy: Int
        var mat: BOperand
        if p.m == 1 {
            // op(A)[0, j] = transA ? a[j·lda] : a[j]
            if p.transA { for j in 0..<k { x[j] = p.a[j * p.lda] } } else { x.update(from: p.a, count: k) }
            rows = p.n; incy = 1
            form = p.transB ? .dot : .axpy
            mat = p.b
        } else {
            // op(B)[j, 0] = transB ? b[j] : b[j·ldb]   (stored 1×K or K×1)
            switch p.b {
            case .memory(let b, let ldb):
                if p.transB { x.update(from: b, count: k) } else { for j in 0..<k { x[j] = b[j * ldb] } }
            case .panel(let src):
                if p.transB { src.fill(0, 1, 0, k, x, k) } else { src.fill(0, k, 0, 1, x, 1) }
            }
            rows = p.m; incy = p.ldc
            form = p.transA ? .axpy : .dot
            mat = .memory(p.a, p.lda)
        }
        let len = k
        let y = p.c
        let threads = rows * len < parallelThreshold ? 1 : Threads.count
        // Split outputs into thread ranges; axpy ranges are multiples of 8 for aligned SIMD.
        let unit = form == .dot ? 4 : 8
        let units = (rows + unit - 1) / unit
        let t = max(1, min(threads, units))
        parallelChunks(t) { lo, hi in
            for ti in lo..<hi {
                let i0 = min(rows, units * ti / t * unit), i1 = min(rows, units * (ti + 1) / t * unit)
                if i0 >= i1 { continue }
                switch form {
                case .dot: gemvDot(mat, i0, i1, len, x, p.alpha, p.beta, y, incy)
                case .axpy: gemvAxpy(mat, i0, i1, len, x, p.alpha, p.beta, y, incy)
                }
            }
        }
    }

    @inline(__always)
    static func storeY(_ acc: Float, _ alpha: Float, _ beta: Float, _ y: UnsafeMutablePointer<Float>) {
        y.pointee = beta == 0 ? alpha * acc : beta * y.pointee + alpha * acc
    }

    /// Outputs i0..<i1 of the `.dot` form.
    static func gemvDot(_ mat: BOperand, _ i0: Int, _ i1: Int, _ len: Int, _ x: UnsafePointer<Float>,
                        _ alpha: Float, _ beta: Float, _ y: UnsafeMutablePointer<Float>, _ incy: Int) {
        switch mat {
        case .memory(let P, let ld):
            var i = i0
            while i + 4 <= i1 {
                let d = dot4(P + i * ld, ld, x, len)
                for r in 0..<4 { storeY(d[r], alpha, beta, y + (i + r) * incy) }
                i += 4
            }
            while i < i1 {
                storeY(dot1(P + i * ld, x, len), alpha, beta, y + i * incy)
                i += 1
            }
        case .panel(let src):
            let jb = min(len, gemvPanelLen)
            let ws = Workspace.acquire(floats: gemvDotRows * jb + gemvDotRows)
            defer { Workspace.release(ws) }
            let buf = ws.pointer, acc = ws.pointer + gemvDotRows * jb
            var i = i0
            while i < i1 {
                let ib = min(gemvDotRows, i1 - i)
                acc.update(repeating: 0, count: ib)
                var j = 0
                while j < len {
                    let w = min(jb, len - j)
                    src.fill(i, ib, j, w, buf, w)
                    var r = 0
                    while r + 4 <= ib {
                        let d = dot4(buf + r * w, w, x + j, w)
                        for q in 0..<4 { acc[r + q] += d[q] }
                        r += 4
                    }
                    while r < ib { acc[r] += dot1(buf + r * w, x + j, w); r += 1 }
                    j += w
                }
                for r in 0..<ib { storeY(acc[r], alpha, beta, y + (i + r) * incy) }
                i += ib
            }
        }
    }

    /// Four dot products of rows p, p+ld, p+2ld, p+3ld with x over `len`.
    @inline(__always)
    static func dot4(_ p: UnsafePointer<Float>, _ ld: Int, _ x: UnsafePointer<Float>, _ len: Int) -> SIMD4<Float> {
        let p1 = p + ld, p2 = p1 + ld, p3 = p2 + ld
        var a0 = SIMD8<Float>(), a1 = SIMD8<Float>(), a2 = SIMD8<Float>(), a3 = SIMD8<Float>()
        var b0 = SIMD8<Float>(), b1 = SIMD8<Float>(), b2 = SIMD8<Float>(), b3 = SIMD8<Float>()
        var j = 0
        while j + 16 <= len {
            let x0 = load8(x + j), x1 = load8(x + j + 8)
            a0 = a0.addingProduct(load8(p + j), x0); b0 = b0.addingProduct(load8(p + j + 8), x1)
            a1 = a1.addingProduct(load8(p1 + j), x0); b1 = b1.addingProduct(load8(p1 + j + 8), x1)
            a2 = a2.addingProduct(load8(p2 + j), x0); b2 = b2.addingProduct(load8(p2 + j + 8), x1)
            a3 = a3.addingProduct(load8(p3 + j), x0); b3 = b3.addingProduct(load8(p3 + j + 8), x1)
            j += 16
        }
        if j + 8 <= len {
            let x0 = load8(x + j)
            a0 = a0.addingProduct(load8(p + j), x0); a1 = a1.addingProduct(load8(p1 + j), x0)
            a2 = a2.addingProduct(load8(p2 + j), x0); a3 = a3.addingProduct(load8(p3 + j), x0)
            j += 8
        }
        var r = SIMD4<Float>((a0 + b0).sum(), (a1 + b1).sum(), (a2 + b2).sum(), (a3 + b3).sum())
        while j < len {
            r = r.addingProduct(SIMD4(p[j], p1[j], p2[j], p3[j]), SIMD4(repeating: x[j]))
            j += 1
        }
        return r
    }

    @inline(__always)
    static func dot1(_ p: UnsafePointer<Float>, _ x: UnsafePointer<Float>, _ len: Int) -> Float {
        var a0 = SIMD8<Float>(), a1 = SIMD8<Float>()
        var j = 0
        while j + 16 <= len {
            a0 = a0.addingProduct(load8(p + j), load8(x + j))
            a1 = a1.addingProduct(load8(p + j + 8), load8(x + j + 8))
            j += 16
        }
        var s = (a0 + a1).sum()
        while j < len { s = s.addingProduct(p[j], x[j]); j += 1 }
        return s
    }

    /// Outputs i0..<i1 of the `.axpy` form, `gemvAxpyCols` outputs at a time (held in `acc`).
    static func gemvAxpy(_ mat: BOperand, _ i0: Int, _ i1: Int, _ len: Int, _ x: UnsafePointer<Float>,
                         _ alpha: Float, _ beta: Float, _ y: UnsafeMutablePointer<Float>, _ incy: Int) {
        let jbPanel = max(1, panelBlockLimit / gemvAxpyCols)
        var panelFloats = 0
        if case .panel = mat { panelFloats = jbPanel * gemvAxpyCols }
        let ws = Workspace.acquire(floats: gemvAxpyCols + panelFloats)
        defer { Workspace.release(ws) }
        let acc = ws.pointer, buf = ws.pointer + gemvAxpyCols
        var i = i0
        while i < i1 {
            let ib = min(gemvAxpyCols, i1 - i)
            acc.update(repeating: 0, count: ib)
            switch mat {
            case .memory(let P, let ld):
                axpyRows(P + i, ld, 0, len, x, acc, ib)
            case .panel(let src):
                var j = 0
                while j < len {
                    let h = min(jbPanel, len - j)
                    src.fill(j, h, i, ib, buf, ib)
                    axpyRows(buf, ib, 0, h, x + j, acc, ib)
                    j += h
                }
            }
            for r in 0..<ib { storeY(acc[r], alpha, beta, y + (i + r) * incy) }
            i += ib
        }
    }

    /// acc[0..<w] += Σ_{j in j0..<j1} x[j]·P[j·ld + 0..<w], four rows per pass.
    @inline(__always)
    static func axpyRows(_ P: UnsafePointer<Float>, _ ld: Int, _ j0: Int, _ j1: Int, _ x: UnsafePointer<Float>,
                         _ acc: UnsafeMutablePointer<Float>, _ w: Int) {
        var j = j0
        while j + 4 <= j1 {
            let r0 = P + j * ld, r1 = r0 + ld, r2 = r1 + ld, r3 = r2 + ld
            let x0 = x[j], x1 = x[j + 1], x2 = x[j + 2], x3 = x[j + 3]
            let v0 = SIMD8(repeating: x0), v1 = SIMD8(repeating: x1)
            let v2 = SIMD8(repeating: x2), v3 = SIMD8(repeating: x3)
            var c = 0
            while c + 8 <= w {
                var s = load8(acc + c)
                s = s.addingProduct(load8(r0 + c), v0)
                s = s.addingProduct(load8(r1 + c), v1)
                s = s.addingProduct(load8(r2 + c), v2)
                s = s.addingProduct(load8(r3 + c), v3)
                store8(acc + c, s)
                c += 8
            }
            while c < w {
                var s = acc[c]
                s = s.addingProduct(r0[c], x0); s = s.addingProduct(r1[c], x1)
                s = s.addingProduct(r2[c], x2); s = s.addingProduct(r3[c], x3)
                acc[c] = s
                c += 1
            }
            j += 4
        }
        while j < j1 {
            let r0 = P + j * ld, x0 = x[j], v0 = SIMD8(repeating: x0)
            var c = 0
            while c + 8 <= w { store8(acc + c, load8(acc + c).addingProduct(load8(r0 + c), v0)); c += 8 }
            while c < w { acc[c] = acc[c].addingProduct(r0[c], x0); c += 1 }
            j += 1
        }
    }
}
