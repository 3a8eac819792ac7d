// One decoded token (T = 1) through every layer and the LM head in ONE parallel region of a
// persistent team (Core/Parallel.swift `WorkerTeam`), with barriers between the phases of a
// layer, instead of one Dispatch call per kernel. The math is `DecoderLayer.forward` at M = 1
// (the twin it is tested against: LLM/GenerateTests `decodeStepMatchesLayerForward`):
//   A  n1 = RMSNorm(x)·w1 (each thread its own copy); q, k, v rows (+ bias + LoRA), split by
//      heads so each thread applies RoPE to the heads it made; k, v go to the cache row
//   B  attention per query head over the cache rows 0...p (heads split between threads)
//   C  h1 = x + o_proj(attn) (rows split)
//   D  n2 = RMSNorm(h1)·w2 (own copy); act = silu(gate(n2)) ⊙ up(n2) (rows split)
//   E  x = h1 + down_proj(act) (rows split)
// then the final norm and the LM head rows (`LanguageModel.decodeHead`: the embedding's
// lossless int8 form when it has one). The GEMVs differ from the GEMM path by summation
// order only.

/// Per-thread scratch of the decode step: a normed copy of the row (H), attention scores
/// (capacity), LoRA's t = A·x for every adapter of one projection group (Σ r).
final class DecodeStepScratch {
    let threads: Int, hidden: Int, capacity: Int, loraWidth: Int
    let normed: AlignedBuffer<Float>
    let scores: AlignedBuffer<Float>
    let lora: AlignedBuffer<Float>

    init(threads: Int, hidden: Int, capacity: Int, loraWidth: Int) throws(PSTError) {
        self.threads = threads; self.hidden = hidden; self.capacity = capacity; self.loraWidth = loraWidth
        normed = try AlignedBuffer(count: threads * hidden)
        scores = try AlignedBuffer(count: threads * capacity)
        lora = try AlignedBuffer(count: max(1, threads * loraWidth))
    }
}

extension LanguageModel {
    /// The LM head for decoding: the embedding / lm_head as `Int8Rows` when that is exact
    /// (made once, on first use), else nil (the fp32 rows are read).
    var decodeHead: Int8Rows? {
        if !decodeHeadTried {
            decodeHeadTried = true
            decodeHeadInt8 = Int8Rows(exactly: headWeight, rows: config.vocab, cols: config.hidden)
        }
        return decodeHeadInt8
    }

    /// Σ r of the adapters a projection adds at inference (active, not merged), the most over
    /// all projections: the LoRA scratch one projection needs.
    func decodeLoraWidth() -> Int {
        var w = 0
        for l in layers {
            for p in l.linears {
                var s = 0
                for a in p.active where !a.merged { s += a.config.r }
                w = max(w, s)
            }
        }
        return w
    }

    /// Feeds one token at position cache.count (validated by the caller) and writes the logits.
    func decodeStep(token: Int32, cache: KVCache, ws: DecodeWorkspace, logits: UnsafeMutablePointer<Float>) throws(PSTError) {
        let c = config, H = c.hidden, I = c.intermediate, d = c.headDim, half = d / 2
        let team = WorkerTeam.acquire()
        defer { WorkerTeam.release(team) }
        let loraWidth = decodeLoraWidth()
        if let s = cache.stepScratch, s.threads >= team.size, s.loraWidth >= loraWidth {} else {
            cache.stepScratch = nil
            cache.stepScratch = try DecodeStepScratch(threads: team.size, hidden: H, capacity: cache.capacity, loraWidth: loraWidth)
        }
        let st = cache.stepScratch!
        let head = decodeHead
        let x = ws.x.baseAddress
        x.update(from: embedding.baseAddress + Int(token) * H, count: H)
        let past = cache.count, n = past + 1
        let lo = c.architecture.attentionWindow.map { max(0, n - $0) } ?? 0
        let q = ws.acts.q.baseAddress, attn = ws.scratch.attn.baseAddress, h1 = ws.acts.h1.baseAddress
        let tmp = ws.scratch.tmpH.baseAddress, gate = ws.acts.gate.baseAddress, up = ws.acts.up.baseAddress
        let act = ws.scratch.act.baseAddress
        let cosP = cache.cos.baseAddress + past * half, sinP = cache.sin.baseAddress + past * half
        let rep = c.heads / c.kvHeads, scale = 1 / Float(d).squareRoot()
        let qUnits = c.heads, kvUnits = c.kvHeads, units = qUnits + 2 * kvUnits
        let headW = headWeight, V = c.vocab
        let layers = self.layers, finalNorm = self.finalNorm.baseAddress, eps = c.rmsEps
        let keys = cache.keys, values = cache.values
        let kvW = c.kvWidth

        team.run { tid in
            let nrm = st.normed.baseAddress + tid * H
            let sc = st.scores.baseAddress + tid * st.capacity
            let lt = st.lora.baseAddress + tid * st.loraWidth
            for (li, l) in layers.enumerated() {
                let kc = keys[li].baseAddress, vc = values[li].baseAddress
                let kNew = kc + past * kvW, vNew = vc + past * kvW
                // A: norm, q/k/v by head, RoPE
                DecoderKernels.rmsNorm(x, l.inputNorm.baseAddress, nrm, rstd: nil, rows: 1, n: H, eps: eps)
                let (u0, u1) = team.share(units, tid)
                for u in u0..<u1 {
                    if u < qUnits {
                        decodeProject(l.qProj, nrm, q, u * d, u * d + d, lt)
                        DecoderKernels.rope(q + u * d, rows: 1, seqLen: 1, heads: 1, headDim: d, cos: cosP, sin: sinP, inverse: false)
                    } else if u < qUnits + kvUnits {
                        let g = u - qUnits
                        decodeProject(l.kProj, nrm, kNew, g * d, g * d + d, lt)
                        DecoderKernels.rope(kNew + g * d, rows: 1, seqLen: 1, heads: 1, headDim: d, cos: cosP, sin: sinP, inverse: false)
                    } else {
                        let g = u - qUnits - kvUnits
                        decodeProject(l.vProj, nrm, vNew, g * d, g * d + d, lt)
                    }
                }
                team.barrier()
                // B: attention, query heads split
                let (h0, hEnd) = team.share(c.heads, tid)
                for h in h0..<hEnd {
                    let g = h / rep
                    decodeAttentionHead(q: q + h * d, keys: kc + g * d, values: vc + g * d, ld: kvW, lo: lo, n: n, d: d,
                                        scale: scale, scores: sc, out: attn + h * d)
                }
                team.barrier()
                // C: h1 = x + o_proj(attn)
                let (o0, o1) = team.share(H, tid, unit: 8)
                decodeProject(l.oProj, attn, tmp, o0, o1, lt)
                for i in o0..<o1 { h1[i] = x[i] + tmp[i] }
                team.barrier()
                // D: act = silu(gate(n2)) ⊙ up(n2)
                DecoderKernels.rmsNorm(h1, l.postAttentionNorm.baseAddress, nrm, rstd: nil, rows: 1, n: H, eps: eps)
                let (m0, m1) = team.share(I, tid, unit: 8)
                decodeProject(l.gateProj, nrm, gate, m0, m1, lt)
                decodeProject(l.upProj, nrm, up, m0, m1, lt)
                decodeSwiglu(gate, up, act, m0, m1)
                team.barrier()
                // E: x = h1 + down_proj(act)
                decodeProject(l.downProj, act, tmp, o0, o1, lt)
                for i in o0..<o1 { x[i] = h1[i] + tmp[i] }
                team.barrier()
            }
            // final norm and the LM head rows
            DecoderKernels.rmsNorm(x, finalNorm, nrm, rstd: nil, rows: 1, n: H, eps: eps)
            let (v0, v1) = team.share(V, tid, unit: 8)
            if let head {
                head.matvecRows(nrm, logits, r0: v0, r1: v1)
            } else {
                decodeDenseRows(headW, H, nrm, logits, v0, v1)
            }
        }
        cache.count += 1
    }
}

/// y[r0..<r1] = rows r0..<r1 of x·Wᵀ + bias + Σ_adapters w·s·B(A·x) for one input row x (the
/// projection `p` in evaluation mode: no dropout). `lt` holds Σ r floats of scratch.
@inline(__always)
func decodeProject(_ p: LoraLinear, _ x: UnsafePointer<Float>, _ y: UnsafeMutablePointer<Float>, _ r0: Int, _ r1: Int,
                   _ lt: UnsafeMutablePointer<Float>) {
    if r0 >= r1 { return }
    let K = p.inFeatures
    switch p.base {
    case .quantized(let t): t.matvecRows(x, y, accumulate: false, r0: r0, r1: r1)
    case .dense(let w): decodeDenseRows(w.baseAddress, K, x, y, r0, r1)
    }
    if let b = p.bias { for r in r0..<r1 { y[r] += b[r] } }
    for a in p.active where !a.merged {
        let r = a.config.r, s = a.weight * a.scaling
        let A = a.a.baseAddress, B = a.b.baseAddress
        // t = A·x (every thread makes its own: r·K multiply-adds)
        for k in 0..<r { lt[k] = DecoderKernels.dot(A + k * K, x, K) }
        for o in r0..<r1 { y[o] += s * DecoderKernels.dot(B + o * r, lt, r) }
    }
}

/// y[r0..<r1] = rows r0..<r1 of W·x for fp32 W (rows of length K).
@inline(__always)
func decodeDenseRows(_ w: UnsafePointer<Float>, _ K: Int, _ x: UnsafePointer<Float>, _ y: UnsafeMutablePointer<Float>,
                     _ r0: Int, _ r1: Int) {
    var r = r0
    while r + 4 <= r1 {
        let v = GEMM.dot4(w + r * K, K, x, K)
        y[r] = v[0]; y[r + 1] = v[1]; y[r + 2] = v[2]; y[r + 3] = v[3]
        r += 4
    }
    while r < r1 { y[r] = GEMM.dot1(w + r * K, x, K); r += 1 }
}

/// out[i] = silu(g[i])·u[i] for i in i0..<i1 (`DecoderKernels.swiglu`'s formula, serial).
@inline(__always)
func decodeSwiglu(_ g: UnsafePointer<Float>, _ u: UnsafePointer<Float>, _ out: UnsafeMutablePointer<Float>, _ i0: Int, _ i1: Int) {
    var j = i0
    while j + 8 <= i1 {
        let gv = load8(g + j)
        store8(out + j, gv / (1 + vexp(-gv)) * load8(u + j))
        j += 8
    }
    while j < i1 { out[j] = g[j] / (1 + sexp(-g[j])) * u[j]; j += 1 }
}

/// One query head of cached attention: s_j = scale·(q·k_j) for j in lo..<n, P = softmax(s)
/// (max subtracted), out = Σ_j P_j v_j. keys / values: row j at j·ld (this head's KV head).
@inline(__always)
func decodeAttentionHead(q: UnsafePointer<Float>, keys: UnsafePointer<Float>, values: UnsafePointer<Float>, ld: Int,
                         lo: Int, n: Int, d: Int, scale: Float, scores: UnsafeMutablePointer<Float>,
                         out: UnsafeMutablePointer<Float>) {
    let m = n - lo
    for j in 0..<m { scores[j] = scale * DecoderKernels.dot(q, keys + (lo + j) * ld, d) }
    DecoderKernels.softmaxRow(scores, m)
    out.update(repeating: 0, count: d)
    for j in 0..<m {
        let p = scores[j], pv = F8(repeating: p), vr = values + (lo + j) * ld
        var i = 0
        while i + 8 <= d { store8(out + i, load8(out + i).addingProduct(load8(vr + i), pv)); i += 8 }
        while i < d { out[i] = out[i].addingProduct(vr[i], p); i += 1 }
    }
}
