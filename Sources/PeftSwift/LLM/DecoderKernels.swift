import Dispatch
#if canImport(Glibc)
import Glibc
#endif

// The elementwise and row kernels of the decoder layer (every family), in fp32 with AVX2 (SIMD8).
// Each has a plain twin in `DecoderReference` (DecoderKernels+Reference.swift: Double, scalar
// loops) that the tests hold it to; the references' backward formulas are in turn checked by
// finite differences.

// F8, load8 and store8: Core/SIMD+Memory.swift.

/// e^x for 8 lanes: Cody–Waite reduction x = n·ln2 + r (|r| ≤ ln2/2), a degree-6 minimax
/// polynomial for e^r (Cephes' expf coefficients, ~1 ulp), scaled by 2^n through the exponent
/// bits. Inputs are clamped to [−87.3, 88.3], so the result is finite and > 0 (e^−87.3 ≈ 1.2e−38
/// for anything below).
@inline(__always) func vexp(_ x0: F8) -> F8 {
    var x = x0.replacing(with: 88.3, where: x0 .> 88.3)
    x = x.replacing(with: -87.3, where: x .< -87.3)
    // n = round(x·log2 e) by the 1.5·2^23 trick: adding it leaves n in the low mantissa bits
    // (no float → int conversion, which SIMD8 only offers through a slow generic path).
    let magic = F8(repeating: 12_582_912)
    let t = x * 1.442_695_040_888_963_4 + magic
    let n = t - magic
    var r = x - n * 0.693_359_375
    r = r - n * -2.121_944_400_546_905_8e-4
    var p = F8(repeating: 1.987_569_150_0e-4)
    p = p * r + 1.398_199_950_7e-3
    p = p * r + 8.333_451_907_3e-3
    p = p * r + 4.166_579_589_4e-2
    p = p * r + 1.666_666_545_9e-1
    p = p * r + 5.000_000_120_1e-1
    p = p * (r * r) + r + 1
    // 2^n: bits of t are 0x4B400000 + n
    let bits = (unsafeBitCast(t, to: SIMD8<Int32>.self) &- 0x4B40_0000 &+ 127) &<< 23
    return p * unsafeBitCast(bits, to: F8.self)
}

/// Scalar e^x with the same polynomial (for tails, so a row's results do not depend on its
/// position relative to the 8-lane grid).
@inline(__always) func sexp(_ x: Float) -> Float {
    vexp(F8(repeating: x))[0]
}

enum DecoderKernels {
    // MARK: RMSNorm

    /// RMSNorm (Zhang & Sennrich 2019) as transformers' LlamaRMSNorm, per row of x (rows × n):
    ///   r = 1 / √(mean_j x_j² + eps),  y_j = w_j · (x_j · r)
    /// y may alias x. Writes r per row into `rstd` when given (backward needs it).
    static func rmsNorm(_ x: UnsafePointer<Float>, _ w: UnsafePointer<Float>, _ y: UnsafeMutablePointer<Float>,
                        rstd: UnsafeMutablePointer<Float>?, rows: Int, n: Int, eps: Float) {
        parallelChunks(rows, grain: max(1, 16384 / max(n, 1))) { lo, hi in
            for i in lo..<hi {
                let xr = x + i * n, yr = y + i * n
                let r = 1 / (sumSquares(xr, n) / Float(n) + eps).squareRoot()
                rstd?[i] = r
                let rv = F8(repeating: r)
                var j = 0
                while j + 8 <= n { store8(yr + j, load8(w + j) * (load8(xr + j) * rv)); j += 8 }
                while j < n { yr[j] = w[j] * (xr[j] * r); j += 1 }
            }
        }
    }

    @inline(__always) static func sumSquares(_ x: UnsafePointer<Float>, _ n: Int) -> Float {
        var a0 = F8(), a1 = F8()
        var j = 0
        while j + 16 <= n {
            let u = load8(x + j), v = load8(x + j + 8)
            a0 = a0.addingProduct(u, u); a1 = a1.addingProduct(v, v)
            j += 16
        }
        if j + 8 <= n { let u = load8(x + j); a0 = a0.addingProduct(u, u); j += 8 }
        var s = (a0 + a1).sum()
        while j < n { s += x[j] * x[j]; j += 1 }
        return s
    }

    @inline(__always) static func dot(_ x: UnsafePointer<Float>, _ y: UnsafePointer<Float>, _ n: Int) -> Float {
        var a0 = F8(), a1 = F8()
        var j = 0
        while j + 16 <= n {
            a0 = a0.addingProduct(load8(x + j), load8(y + j))
            a1 = a1.addingProduct(load8(x + j + 8), load8(y + j + 8))
            j += 16
        }
        if j + 8 <= n { a0 = a0.addingProduct(load8(x + j), load8(y + j)); j += 8 }
        var s = (a0 + a1).sum()
        while j < n { s += x[j] * y[j]; j += 1 }
        return s
    }

    /// Input gradient of `rmsNorm` (weight frozen), per row, with g = w ⊙ dy:
    ///   dx_j = r·g_j − x_j · r³ · (1/n) Σ_k g_k x_k
    /// Overwrites dx, or adds to it when `accumulate` (the residual branch). dx must not alias
    /// dy or x.
    static func rmsNormBackward(_ dy: UnsafePointer<Float>, _ x: UnsafePointer<Float>, _ w: UnsafePointer<Float>,
                                rstd: UnsafePointer<Float>, _ dx: UnsafeMutablePointer<Float>,
                                rows: Int, n: Int, accumulate: Bool) {
        parallelChunks(rows, grain: max(1, 8192 / max(n, 1))) { lo, hi in
            for i in lo..<hi {
                let dyr = dy + i * n, xr = x + i * n, dxr = dx + i * n
                let r = rstd[i]
                // Σ g_k x_k = Σ w_k dy_k x_k
                var a0 = F8(), a1 = F8()
                var j = 0
                while j + 16 <= n {
                    a0 = a0.addingProduct(load8(w + j) * load8(dyr + j), load8(xr + j))
                    a1 = a1.addingProduct(load8(w + j + 8) * load8(dyr + j + 8), load8(xr + j + 8))
                    j += 16
                }
                if j + 8 <= n { a0 = a0.addingProduct(load8(w + j) * load8(dyr + j), load8(xr + j)); j += 8 }
                var s = (a0 + a1).sum()
                while j < n { s += w[j] * dyr[j] * xr[j]; j += 1 }
                let c = r * r * r * s / Float(n)
                let rv = F8(repeating: r), cv = F8(repeating: c)
                j = 0
                if accumulate {
                    while j + 8 <= n {
                        store8(dxr + j, load8(dxr + j) + (rv * (load8(w + j) * load8(dyr + j)) - load8(xr + j) * cv))
                        j += 8
                    }
                    while j < n { dxr[j] += r * (w[j] * dyr[j]) - xr[j] * c; j += 1 }
                } else {
                    while j + 8 <= n {
                        store8(dxr + j, rv * (load8(w + j) * load8(dyr + j)) - load8(xr + j) * cv)
                        j += 8
                    }
                    while j < n { dxr[j] = r * (w[j] * dyr[j]) - xr[j] * c; j += 1 }
                }
            }
        }
    }

    // MARK: RoPE

    /// cos/sin tables, `positions` × d/2 each: angle(p, i) = fp32(p · invFreq[i]) (as transformers
    /// forms position·inv_freq in fp32), cos and sin rounded from double.
    static func ropeTables(invFreq: [Float], positions: Int, cos c: UnsafeMutablePointer<Float>, sin s: UnsafeMutablePointer<Float>) {
        let half = invFreq.count
        for p in 0..<positions {
            for i in 0..<half {
                let a = Double(Float(p) * invFreq[i])
                c[p * half + i] = Float(cos(a))
                s[p * half + i] = Float(sin(a))
            }
        }
    }

    /// RoPE (Su et al. 2021) in transformers' rotate-half form, in place on x: (B·T) rows, each
    /// `heads` heads of width d = 2·half; row ρ is position ρ mod T. For each head, i < half:
    ///   forward:  (a, b) = (x_i, x_{i+half}) → (a·c − b·s, b·c + a·s)
    ///   inverse (the backward, Rᵀ = R(−θ)):  (a, b) → (a·c + b·s, b·c − a·s)
    /// with c = cos[pos, i], s = sin[pos, i].
    static func rope(_ x: UnsafeMutablePointer<Float>, rows: Int, seqLen: Int, heads: Int, headDim: Int,
                     cos: UnsafePointer<Float>, sin: UnsafePointer<Float>, inverse: Bool) {
        let half = headDim / 2, width = heads * headDim
        parallelChunks(rows, grain: max(1, 8192 / max(width, 1))) { lo, hi in
            for row in lo..<hi {
                let pos = row % seqLen
                let cr = cos + pos * half, sr = sin + pos * half
                for h in 0..<heads {
                    let xa = x + row * width + h * headDim, xb = xa + half
                    var i = 0
                    if inverse {
                        while i + 8 <= half {
                            let a = load8(xa + i), b = load8(xb + i), c = load8(cr + i), s = load8(sr + i)
                            store8(xa + i, a * c + b * s); store8(xb + i, b * c - a * s)
                            i += 8
                        }
                        while i < half {
                            let a = xa[i], b = xb[i], c = cr[i], s = sr[i]
                            xa[i] = a * c + b * s; xb[i] = b * c - a * s
                            i += 1
                        }
                    } else {
                        while i + 8 <= half {
                            let a = load8(xa + i), b = load8(xb + i), c = load8(cr + i), s = load8(sr + i)
                            store8(xa + i, a * c - b * s); store8(xb + i, b * c + a * s)
                            i += 8
                        }
                        while i < half {
                            let a = xa[i], b = xb[i], c = cr[i], s = sr[i]
                            xa[i] = a * c - b * s; xb[i] = b * c + a * s
                            i += 1
                        }
                    }
                }
            }
        }
    }

    // MARK: SwiGLU

    /// SwiGLU (Shazeer 2020) as Llama's MLP middle: out = silu(g) ⊙ u, silu(g) = g·σ(g) = g / (1 + e^−g).
    static func swiglu(_ g: UnsafePointer<Float>, _ u: UnsafePointer<Float>, _ out: UnsafeMutablePointer<Float>, count: Int) {
        parallelChunks(count, grain: 16384) { lo, hi in
            var j = lo
            while j + 8 <= hi {
                let gv = load8(g + j)
                store8(out + j, gv / (1 + vexp(-gv)) * load8(u + j))
                j += 8
            }
            while j < hi { out[j] = g[j] / (1 + sexp(-g[j])) * u[j]; j += 1 }
        }
    }

    /// Backward of `swiglu` from da = ∂L/∂out, with σ = σ(g):
    ///   dg = da · u · σ·(1 + g·(1 − σ)),   du = da · g·σ
    /// dg and du may alias g and u (each element is read before it is written).
    static func swigluBackward(_ da: UnsafePointer<Float>, _ g: UnsafePointer<Float>, _ u: UnsafePointer<Float>,
                               dg: UnsafeMutablePointer<Float>, du: UnsafeMutablePointer<Float>, count: Int) {
        parallelChunks(count, grain: 16384) { lo, hi in
            var j = lo
            while j + 8 <= hi {
                let gv = load8(g + j), uv = load8(u + j), dav = load8(da + j)
                let s = 1 / (1 + vexp(-gv))
                store8(dg + j, dav * uv * (s * (1 + gv * (1 - s))))
                store8(du + j, dav * (gv * s))
                j += 8
            }
            while j < hi {
                let gv = g[j], uv = u[j], dav = da[j]
                let s = 1 / (1 + sexp(-gv))
                dg[j] = dav * uv * (s * (1 + gv * (1 - s)))
                du[j] = dav * (gv * s)
                j += 1
            }
        }
    }

    // MARK: Softmax / cross-entropy

    /// In place on one row z[0..<n]: z ← softmax(z) = e^(z − max z) / Σ e^(z − max z).
    @inline(__always) static func softmaxRow(_ z: UnsafeMutablePointer<Float>, _ n: Int) {
        let m = rowMax(z, n)
        let s = expShiftRow(z, n, m)
        let inv = 1 / s
        scaleRow(z, n, inv)
    }

    @inline(__always) static func rowMax(_ z: UnsafePointer<Float>, _ n: Int) -> Float {
        var mv = F8(repeating: -.infinity)
        var j = 0
        while j + 8 <= n { let v = load8(z + j); mv.replace(with: v, where: v .> mv); j += 8 }
        var m = mv.max()
        while j < n { m = max(m, z[j]); j += 1 }
        return m
    }

    /// z_j ← e^(z_j − m); returns Σ_j z_j (summed in 8 lanes, then the tail).
    @inline(__always) static func expShiftRow(_ z: UnsafeMutablePointer<Float>, _ n: Int, _ m: Float) -> Float {
        let mv = F8(repeating: m)
        var acc = F8()
        var j = 0
        while j + 8 <= n { let e = vexp(load8(z + j) - mv); store8(z + j, e); acc += e; j += 8 }
        var s = acc.sum()
        while j < n { let e = sexp(z[j] - m); z[j] = e; s += e; j += 1 }
        return s
    }

    @inline(__always) static func scaleRow(_ z: UnsafeMutablePointer<Float>, _ n: Int, _ c: Float) {
        let cv = F8(repeating: c)
        var j = 0
        while j + 8 <= n { store8(z + j, load8(z + j) * cv); j += 8 }
        while j < n { z[j] *= c; j += 1 }
    }

    /// Cross-entropy rows (transformers' ForCausalLMLoss on already shifted targets): for each
    /// row i of z (rows × n) with target y_i (in 0..<n):
    ///   loss_i = log Σ_j e^(z_ij) − z_iy = (m + log Σ_j e^(z_ij − m)) − z_iy,  m = max_j z_ij
    /// and, in place, z_i ← scale · (softmax(z_i) − onehot(y_i)) (∂(scale·Σ loss)/∂z).
    /// Returns Σ_i loss_i (in double).
    static func crossEntropy(_ z: UnsafeMutablePointer<Float>, rows: Int, n: Int, targets: UnsafePointer<Int32>,
                             scale: Float) -> Double {
        let chunks = max(1, min(Threads.count, rows))
        var partial = [Double](repeating: 0, count: chunks)
        partial.withUnsafeMutableBufferPointer { part in
            let pp = part.baseAddress!
            DispatchQueue.concurrentPerform(iterations: chunks) { c in
                var s = 0.0
                for i in (rows * c / chunks)..<(rows * (c + 1) / chunks) {
                    let row = z + i * n
                    let y = Int(targets[i])
                    let zy = row[y]
                    let m = rowMax(row, n)
                    let sum = expShiftRow(row, n, m)
                    s += Double(m + log(sum) - zy)
                    scaleRow(row, n, scale / sum)
                    row[y] -= scale
                }
                pp[c] = s
            }
        }
        return partial.reduce(0, +)
    }
}

/// c[i] = a[i] + b[i] (c may alias a or b): the residual additions.
func addVectors(_ a: UnsafePointer<Float>, _ b: UnsafePointer<Float>, _ c: UnsafeMutablePointer<Float>, _ n: Int) {
    parallelChunks(n, grain: 32768) { lo, hi in
        var j = lo
        while j + 8 <= hi { store8(c + j, load8(a + j) + load8(b + j)); j += 8 }
        while j < hi { c[j] = a[j] + b[j]; j += 1 }
    }
}
