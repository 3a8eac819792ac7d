#if canImport(Glibc)
import Glibc
#endif

/// Plain twins of the kernels, in double with scalar loops (the specification the fast kernels
/// are tested against; their backward formulas are checked by finite differences).
public enum DecoderReference {
    /// y = w ⊙ x / √(mean x² + eps) per row (rows × n); returns (y, r per row).
    public static func rmsNorm(_ x: [Double], _ w: [Double], rows: Int, n: Int, eps: Double) -> (y: [Double], rstd: [Double]) {
        var y = [Double](repeating: 0, count: rows * n), rs = [Double](repeating: 0, count: rows)
        for i in 0..<rows {
            var s = 0.0
            for j in 0..<n { s += x[i * n + j] * x[i * n + j] }
            let r = 1 / (s / Double(n) + eps).squareRoot()
            rs[i] = r
            for j in 0..<n { y[i * n + j] = w[j] * x[i * n + j] * r }
        }
        return (y, rs)
    }

    /// dx of `rmsNorm`: dx_j = r·w_j·dy_j − x_j·r³·(1/n)Σ_k w_k dy_k x_k.
    public static func rmsNormBackward(_ dy: [Double], _ x: [Double], _ w: [Double], rows: Int, n: Int, eps: Double) -> [Double] {
        let (_, rs) = rmsNorm(x, w, rows: rows, n: n, eps: eps)
        var dx = [Double](repeating: 0, count: rows * n)
        for i in 0..<rows {
            let r = rs[i]
            var s = 0.0
            for k in 0..<n { s += w[k] * dy[i * n + k] * x[i * n + k] }
            for j in 0..<n { dx[i * n + j] = r * w[j] * dy[i * n + j] - x[i * n + j] * r * r * r * s / Double(n) }
        }
        return dx
    }

    /// RoPE (rotate-half) on x: (B·T) × (heads·d), row ρ at position ρ mod T, angles p·invFreq[i].
    /// `inverse` rotates by −θ (the transpose, i.e. the backward).
    public static func rope(_ x: [Double], rows: Int, seqLen: Int, heads: Int, headDim: Int, invFreq: [Float], inverse: Bool) -> [Double] {
        var y = x
        let half = headDim / 2
        for row in 0..<rows {
            let p = row % seqLen
            for h in 0..<heads {
                let base = row * heads * headDim + h * headDim
                for i in 0..<half {
                    let ang = Double(Float(p) * invFreq[i])
                    let c = cos(ang), s = inverse ? -sin(ang) : sin(ang)
                    let a = x[base + i], b = x[base + i + half]
                    y[base + i] = a * c - b * s
                    y[base + i + half] = b * c + a * s
                }
            }
        }
        return y
    }

    /// silu(g)·u elementwise.
    public static func swiglu(_ g: [Double], _ u: [Double]) -> [Double] {
        zip(g, u).map { g, u in g / (1 + exp(-g)) * u }
    }

    /// (dg, du) of `swiglu`.
    public static func swigluBackward(_ da: [Double], _ g: [Double], _ u: [Double]) -> (dg: [Double], du: [Double]) {
        var dg = da, du = da
        for i in 0..<da.count {
            let s = 1 / (1 + exp(-g[i]))
            dg[i] = da[i] * u[i] * s * (1 + g[i] * (1 - s))
            du[i] = da[i] * g[i] * s
        }
        return (dg, du)
    }

    /// Causal grouped-query attention. q: (B·T) × (Hq·d), k, v: (B·T) × (Hkv·d), token-major;
    /// query head h reads KV head h / (Hq/Hkv). out_i = Σ_{lo(i) ≤ j ≤ i} softmax_j(scale · q_i·k_j) v_j,
    /// lo(i) = 0, or i − window + 1 (at least 0) with a sliding window.
    public static func attention(q: [Double], k: [Double], v: [Double], batch: Int, seqLen: Int, heads: Int,
                                 kvHeads: Int, headDim: Int, scale: Double, window: Int? = nil) -> [Double] {
        let qW = heads * headDim, kW = kvHeads * headDim, rep = heads / kvHeads
        var out = [Double](repeating: 0, count: batch * seqLen * qW)
        for b in 0..<batch {
            for h in 0..<heads {
                let g = h / rep
                for i in 0..<seqLen {
                    let lo = window.map { max(0, i + 1 - $0) } ?? 0
                    var s = [Double](repeating: -.infinity, count: i + 1)
                    for j in lo...i {
                        var d = 0.0
                        for e in 0..<headDim { d += q[(b * seqLen + i) * qW + h * headDim + e] * k[(b * seqLen + j) * kW + g * headDim + e] }
                        s[j] = d * scale
                    }
                    let m = s.max()!
                    var z = 0.0
                    for j in lo...i { s[j] = exp(s[j] - m); z += s[j] }
                    for e in 0..<headDim {
                        var acc = 0.0
                        for j in lo...i { acc += s[j] / z * v[(b * seqLen + j) * kW + g * headDim + e] }
                        out[(b * seqLen + i) * qW + h * headDim + e] = acc
                    }
                }
            }
        }
        return out
    }

    /// (dq, dk, dv) of `attention` from dout, with P the softmax, dP = dO·Vᵀ,
    /// dS = P ⊙ (dP − rowsum(P ⊙ dP)):  dq = scale·dS·K,  dk = scale·dSᵀ·Q,  dv = Pᵀ·dO.
    public static func attentionBackward(dout: [Double], q: [Double], k: [Double], v: [Double], batch: Int, seqLen: Int,
                                         heads: Int, kvHeads: Int, headDim: Int, scale: Double,
                                         window: Int? = nil) -> (dq: [Double], dk: [Double], dv: [Double]) {
        let qW = heads * headDim, kW = kvHeads * headDim, rep = heads / kvHeads
        var dq = [Double](repeating: 0, count: q.count), dk = [Double](repeating: 0, count: k.count), dv = dk
        for b in 0..<batch {
            for h in 0..<heads {
                let g = h / rep
                for i in 0..<seqLen {
                    let qi = (b * seqLen + i) * qW + h * headDim
                    let lo = window.map { max(0, i + 1 - $0) } ?? 0
                    var p = [Double](repeating: -.infinity, count: i + 1)
                    for j in lo...i {
                        var d = 0.0
                        for e in 0..<headDim { d += q[qi + e] * k[(b * seqLen + j) * kW + g * headDim + e] }
                        p[j] = d * scale
                    }
                    let m = p.max()!
                    var z = 0.0
                    for j in lo...i { p[j] = exp(p[j] - m); z += p[j] }
                    for j in lo...i { p[j] /= z }
                    var dp = [Double](repeating: 0, count: i + 1)
                    var rowdot = 0.0
                    for j in lo...i {
                        let vj = (b * seqLen + j) * kW + g * headDim
                        var d = 0.0
                        for e in 0..<headDim { d += dout[qi + e] * v[vj + e]; dv[vj + e] += p[j] * dout[qi + e] }
                        dp[j] = d
                        rowdot += p[j] * d
                    }
                    for j in lo...i {
                        let ds = p[j] * (dp[j] - rowdot) * scale
                        let kj = (b * seqLen + j) * kW + g * headDim
                        for e in 0..<headDim { dq[qi + e] += ds * k[kj + e]; dk[kj + e] += ds * q[qi + e] }
                    }
                }
            }
        }
        return (dq, dk, dv)
    }

    /// Σ_i [log Σ_j e^(z_ij) − z_iy_i] over rows (rows × n) and its gradient (softmax − onehot).
    public static func crossEntropy(_ z: [Double], rows: Int, n: Int, targets: [Int]) -> (loss: Double, grad: [Double]) {
        var loss = 0.0
        var g = [Double](repeating: 0, count: z.count)
        for i in 0..<rows {
            let row = Array(z[(i * n)..<((i + 1) * n)])
            let m = row.max()!
            let s = row.reduce(0.0) { $0 + exp($1 - m) }
            loss += m + log(s) - row[targets[i]]
            for j in 0..<n { g[i * n + j] = exp(row[j] - m) / s }
            g[i * n + targets[i]] -= 1
        }
        return (loss, g)
    }
}
