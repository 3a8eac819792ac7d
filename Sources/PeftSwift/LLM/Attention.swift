import Dispatch

/// Runs body(chunk, lo, hi) over `chunks` contiguous pieces of 0..<n in parallel.
@inline(__always)
func parallelIndexed(_ n: Int, chunks: Int, _ body: (Int, Int, Int) -> Void) {
    if n <= 0 { return }
    if chunks <= 1 { body(0, 0, n); return }
    withoutActuallyEscaping(body) { body in
        DispatchQueue.concurrentPerform(iterations: chunks) { c in
            let lo = n * c / chunks, hi = n * (c + 1) / chunks
            if lo < hi { body(c, lo, hi) }
        }
    }
}

/// The shape of one causal grouped-query attention call: B sequences of T new query rows at
/// positions past..<past+T, over the keys/values of positions 0..<past+T.
///
/// q / out / dq: (B·T) × (Hq·d), token-major (row b·T + t; head h at columns h·d..<(h+1)·d, the
/// layout `q_proj` writes). k / v: per sequence `kvRows` × (Hkv·d) rows (row p = position p;
/// sequence b at row b·kvRows), of which 0..<past+T are filled: for a forward over whole
/// sequences these are the call's own keys (past 0, kvRows T), for cached decoding a KV cache's
/// (B = 1, kvRows = its capacity). probs: B × Hq × T × T (row i of a head holds P[i, 0...i];
/// only entries j ≤ i are meaningful).
struct AttentionShape {
    var batch: Int, seqLen: Int, heads: Int, kvHeads: Int, headDim: Int
    /// Positions before the new rows (keys and values already in k / v).
    var past = 0
    /// Rows per sequence in k / v (≥ past + seqLen).
    var kvRows: Int
    /// Sliding window: row at position p sees keys p−window+1...p; nil: keys 0...p.
    var window: Int? = nil

    init(batch: Int, seqLen: Int, heads: Int, kvHeads: Int, headDim: Int, past: Int = 0, kvRows: Int? = nil,
         window: Int? = nil) {
        self.batch = batch; self.seqLen = seqLen; self.heads = heads; self.kvHeads = kvHeads; self.headDim = headDim
        self.past = past
        self.kvRows = kvRows ?? seqLen
        self.window = window
    }

    var qWidth: Int { heads * headDim }
    var kvWidth: Int { kvHeads * headDim }
    var rep: Int { heads / kvHeads }
    var scale: Float { 1 / Float(headDim).squareRoot() }
    var probsCount: Int { batch * heads * seqLen * seqLen }
    /// Query rows per block: block [r0, r1) needs keys 0..<past+r1 only, so the masked upper
    /// triangle is mostly skipped.
    static let blockRows = 64
    /// Floats of backward scratch per thread (a blockRows × T block of dP).
    var scratchPerThread: Int { min(AttentionShape.blockRows, seqLen) * seqLen }
}

/// Where the attention probabilities of a forward go.
enum AttentionScores {
    /// Kept for backward: B × Hq × T × T (past must be 0). The (sequence, head) pairs run on up
    /// to `Threads.count` threads.
    case keep(UnsafeMutablePointer<Float>)
    /// Discarded after use: `threads` per-thread blocks of `stride` floats (≥ blockRows ×
    /// (past + T)), for decoding with a KV cache.
    case scratch(UnsafeMutablePointer<Float>, stride: Int, threads: Int)
}

enum CausalAttention {
    /// Causal attention (Vaswani et al. 2017) with grouped KV heads (Ainslie et al. 2023), as
    /// transformers' eager attention: for query head h of sequence b, with g = h / (Hq/Hkv), and
    /// the query at position p = past + i seeing keys lo(p)...p (lo = 0, or p−window+1 ≥ 0),
    ///   S = scale · Q_h K_gᵀ  (scale = 1/√d),  P_i = softmax(S_i[lo...p]) (fp32, max subtracted),
    ///   O_h = P V_g
    /// Products by the GEMM per (b, h, row block), pairs in parallel. `scores` keeps P or
    /// discards it.
    static func forward(_ s: AttentionShape, q: UnsafePointer<Float>, k: UnsafePointer<Float>, v: UnsafePointer<Float>,
                        out: UnsafeMutablePointer<Float>, scores: AttentionScores) {
        let T = s.seqLen, d = s.headDim, qW = s.qWidth, kW = s.kvWidth, rep = s.rep, scale = s.scale, past = s.past
        let pairs = s.batch * s.heads
        let threads: Int
        switch scores {
        case .keep: threads = Threads.count
        case .scratch(_, _, let t): threads = t
        }
        parallelIndexed(pairs, chunks: min(threads, pairs)) { chunk, lo, hi in
            for pair in lo..<hi {
                let b = pair / s.heads, h = pair % s.heads, g = h / rep
                let qb = q + b * T * qW + h * d, kb = k + b * s.kvRows * kW + g * d, vb = v + b * s.kvRows * kW + g * d
                let ob = out + b * T * qW + h * d
                var r0 = 0
                while r0 < T {
                    let r1 = min(T, r0 + AttentionShape.blockRows), rb = r1 - r0, n = past + r1
                    // this block's scores: rb rows of n keys, ld apart
                    let sb: UnsafeMutablePointer<Float>, ld: Int
                    switch scores {
                    case .keep(let probs): sb = probs + pair * T * T + r0 * T; ld = T
                    case .scratch(let base, let stride, _): sb = base + chunk * stride; ld = n
                    }
                    GEMM.sgemmSerial(transA: false, transB: true, m: rb, n: n, k: d, alpha: scale,
                                     a: qb + r0 * qW, lda: qW, b: kb, ldb: kW, beta: 0, c: sb, ldc: ld)
                    for i in r0..<r1 {
                        let row = sb + (i - r0) * ld, valid = past + i + 1
                        if let w = s.window, valid > w {
                            let first = valid - w
                            row.update(repeating: 0, count: first)
                            DecoderKernels.softmaxRow(row + first, w)
                        } else {
                            DecoderKernels.softmaxRow(row, valid)
                        }
                        if valid < n { (row + valid).update(repeating: 0, count: n - valid) }
                    }
                    GEMM.sgemmSerial(transA: false, transB: false, m: rb, n: d, k: n, alpha: 1,
                                     a: sb, lda: ld, b: vb, ldb: kW, beta: 0, c: ob + r0 * qW, ldc: qW)
                    r0 = r1
                }
            }
        }
    }

    /// Backward of `forward` (past 0, kvRows T, P kept) from dout (= ∂L/∂O):
    ///   dV_g += Pᵀ dO_h,  dP = dO_h V_gᵀ,  dS_ij = P_ij (dP_ij − Σ_k P_ik dP_ik)  (j ≤ i),
    ///   dQ_h = scale · dS K_g,  dK_g += scale · dSᵀ Q_h
    /// (outside a sliding window P_ij = 0, so dS_ij = 0 there and nothing else changes).
    /// dq is overwritten; dk and dv are overwritten (summed over the Hq/Hkv query heads of each
    /// KV head). KV groups run in parallel; `scratch` holds `scratchPerThread` floats per thread
    /// (`threads` of them).
    static func backward(_ s: AttentionShape, dout: UnsafePointer<Float>, q: UnsafePointer<Float>, k: UnsafePointer<Float>,
                         v: UnsafePointer<Float>, probs: UnsafePointer<Float>,
                         dq: UnsafeMutablePointer<Float>, dk: UnsafeMutablePointer<Float>, dv: UnsafeMutablePointer<Float>,
                         scratch: UnsafeMutablePointer<Float>, threads: Int) {
        precondition(s.past == 0 && s.kvRows == s.seqLen, "attention backward runs over whole sequences")
        let T = s.seqLen, d = s.headDim, qW = s.qWidth, kW = s.kvWidth, rep = s.rep, scale = s.scale
        let groups = s.batch * s.kvHeads
        parallelIndexed(groups, chunks: min(threads, groups)) { chunk, lo, hi in
            let dp = scratch + chunk * s.scratchPerThread
            for grp in lo..<hi {
                let b = grp / s.kvHeads, g = grp % s.kvHeads
                let kb = k + b * T * kW + g * d, vb = v + b * T * kW + g * d
                let dkb = dk + b * T * kW + g * d, dvb = dv + b * T * kW + g * d
                for t in 0..<T {
                    (dkb + t * kW).update(repeating: 0, count: d)
                    (dvb + t * kW).update(repeating: 0, count: d)
                }
                for h in (g * rep)..<((g + 1) * rep) {
                    let qb = q + b * T * qW + h * d, dob = dout + b * T * qW + h * d, dqb = dq + b * T * qW + h * d
                    let pb = probs + (b * s.heads + h) * T * T
                    var r0 = 0
                    while r0 < T {
                        let r1 = min(T, r0 + AttentionShape.blockRows), rb = r1 - r0
                        let pr = pb + r0 * T
                        // dV[0..<r1] += P[r0..<r1, 0..<r1]ᵀ · dO[r0..<r1]
                        GEMM.sgemmSerial(transA: true, transB: false, m: r1, n: d, k: rb, alpha: 1,
                                         a: pr, lda: T, b: dob + r0 * qW, ldb: qW, beta: 1, c: dvb, ldc: kW)
                        // dP (rb × r1) = dO[r0..<r1] · V[0..<r1]ᵀ
                        GEMM.sgemmSerial(transA: false, transB: true, m: rb, n: r1, k: d, alpha: 1,
                                         a: dob + r0 * qW, lda: qW, b: vb, ldb: kW, beta: 0, c: dp, ldc: r1)
                        for i in r0..<r1 {
                            let prow = pr + (i - r0) * T, drow = dp + (i - r0) * r1
                            let n = i + 1
                            let rowdot = DecoderKernels.dot(prow, drow, n)
                            let rv = F8(repeating: rowdot)
                            var j = 0
                            while j + 8 <= n { store8(drow + j, load8(prow + j) * (load8(drow + j) - rv)); j += 8 }
                            while j < n { drow[j] = prow[j] * (drow[j] - rowdot); j += 1 }
                            if n < r1 { (drow + n).update(repeating: 0, count: r1 - n) }
                        }
                        // dQ[r0..<r1] = scale · dS · K[0..<r1]
                        GEMM.sgemmSerial(transA: false, transB: false, m: rb, n: d, k: r1, alpha: scale,
                                         a: dp, lda: r1, b: kb, ldb: kW, beta: 0, c: dqb + r0 * qW, ldc: qW)
                        // dK[0..<r1] += scale · dSᵀ · Q[r0..<r1]
                        GEMM.sgemmSerial(transA: true, transB: false, m: r1, n: d, k: rb, alpha: scale,
                                         a: dp, lda: r1, b: qb + r0 * qW, ldb: qW, beta: 1, c: dkb, ldc: kW)
                        r0 = r1
                    }
                }
            }
        }
    }
}
