/// One decoder layer's frozen weights: two RMSNorm weights (H) and the seven projections as
/// LoRA layers over a frozen base (dense fp32 or 4-bit), in transformers' layout (out × in).
public final class DecoderLayer {
    public let index: Int
    /// input_layernorm.weight (H)
    public let inputNorm: AlignedBuffer<Float>
    /// post_attention_layernorm.weight (H)
    public let postAttentionNorm: AlignedBuffer<Float>
    /// self_attn.q_proj: (Hq·d) × H
    public let qProj: LoraLinear
    /// self_attn.k_proj: (Hkv·d) × H
    public let kProj: LoraLinear
    /// self_attn.v_proj: (Hkv·d) × H
    public let vProj: LoraLinear
    /// self_attn.o_proj: H × (Hq·d)
    public let oProj: LoraLinear
    /// mlp.gate_proj: I × H
    public let gateProj: LoraLinear
    /// mlp.up_proj: I × H
    public let upProj: LoraLinear
    /// mlp.down_proj: H × I
    public let downProj: LoraLinear

    init(index: Int, inputNorm: AlignedBuffer<Float>, postAttentionNorm: AlignedBuffer<Float>, linears: [LoraLinear]) {
        self.index = index
        self.inputNorm = inputNorm
        self.postAttentionNorm = postAttentionNorm
        qProj = linears[0]; kProj = linears[1]; vProj = linears[2]; oProj = linears[3]
        gateProj = linears[4]; upProj = linears[5]; downProj = linears[6]
    }

    /// The seven projections in `Architecture.projectionNames` order.
    public var linears: [LoraLinear] { [qProj, kProj, vProj, oProj, gateProj, upProj, downProj] }
}

/// What a layer's attention reads besides the layer's own rows: B sequences of T new tokens at
/// positions past..<past+T. Their keys and values (after RoPE) are written into `keys` /
/// `values` at rows past..<past+T of each sequence (kvRows rows apart), and attention reads rows
/// 0..<past+T there. A forward over whole sequences (training, evaluation) passes the layer's
/// own K/V buffers with past 0; cached decoding passes a KV cache's (one sequence, past = the
/// positions already fed).
struct AttentionContext {
    let batch: Int, seqLen: Int, past: Int
    let keys: UnsafeMutablePointer<Float>, values: UnsafeMutablePointer<Float>
    let kvRows: Int
    /// RoPE tables of positions 0..<past+T (d/2 floats per position; `DecoderKernels.ropeTables`).
    let cos: UnsafePointer<Float>, sin: UnsafePointer<Float>
    /// Keep the attention probabilities (for backward) or discard them.
    let scores: AttentionScores
}

/// `count` floats of `b` (at most its size) as a buffer.
@inline(__always) func rows(_ b: AlignedBuffer<Float>, _ count: Int) -> UnsafeMutableBufferPointer<Float> {
    UnsafeMutableBufferPointer(start: b.baseAddress, count: count)
}

extension DecoderLayer {
    /// x_out = layer(x) (both M × H, M = B·T; `out` may be `x`), keeping in `acts` what backward
    /// needs:
    ///   n1 = RMSNorm(x)·w1;  q, k, v = n1·W_qᵀ, n1·W_kᵀ, n1·W_vᵀ (+ LoRA);  RoPE(q), RoPE(k)
    ///   h1 = x + o_proj(attention(q, K, V))       K, V: the context's keys/values 0..<past+T
    ///   n2 = RMSNorm(h1)·w2;  x_out = h1 + down_proj(silu(gate_proj(n2)) ⊙ up_proj(n2))
    /// The one forward of the model: training, evaluation and cached decoding (T = 1, or a
    /// prefill chunk) all run it; only the attention context differs.
    func forward(_ c: ModelConfig, x: UnsafePointer<Float>, out: UnsafeMutablePointer<Float>,
                 acts: LayerActivations, scratch s: LayerScratch, attention a: AttentionContext) throws(PSTError) {
        let B = a.batch, T = a.seqLen, m = B * T, H = c.hidden, I = c.intermediate, half = c.headDim / 2
        precondition(B == 1 || (a.past == 0 && a.kvRows == T), "new keys of several sequences must fill their K/V rows")
        let n = UnsafeBufferPointer(rows(s.normed, m * H))
        let q = rows(acts.q, m * c.qWidth)
        let kNew = UnsafeMutableBufferPointer(start: a.keys + a.past * c.kvWidth, count: m * c.kvWidth)
        let vNew = UnsafeMutableBufferPointer(start: a.values + a.past * c.kvWidth, count: m * c.kvWidth)
        let cos = a.cos + a.past * half, sin = a.sin + a.past * half
        DecoderKernels.rmsNorm(x, inputNorm.baseAddress, s.normed.baseAddress, rstd: acts.rstd1.baseAddress, rows: m, n: H,
                               eps: c.rmsEps)
        try ProfPhase.projectionForward.time { () throws(PSTError) in try qProj.forward(n, m: m, q) }
        try ProfPhase.projectionForward.time { () throws(PSTError) in try kProj.forward(n, m: m, kNew) }
        try ProfPhase.projectionForward.time { () throws(PSTError) in try vProj.forward(n, m: m, vNew) }
        DecoderKernels.rope(q.baseAddress!, rows: m, seqLen: T, heads: c.heads, headDim: c.headDim, cos: cos, sin: sin,
                            inverse: false)
        DecoderKernels.rope(kNew.baseAddress!, rows: m, seqLen: T, heads: c.kvHeads, headDim: c.headDim, cos: cos, sin: sin,
                            inverse: false)
        let shape = AttentionShape(batch: B, seqLen: T, heads: c.heads, kvHeads: c.kvHeads, headDim: c.headDim, past: a.past,
                                   kvRows: a.kvRows, window: c.architecture.attentionWindow)
        ProfPhase.attentionForward.time {
            CausalAttention.forward(shape, q: acts.q.baseAddress, k: a.keys, v: a.values, out: s.attn.baseAddress, scores: a.scores)
        }
        try ProfPhase.projectionForward.time { () throws(PSTError) in
            try oProj.forward(UnsafeBufferPointer(rows(s.attn, m * c.qWidth)), m: m, rows(s.tmpH, m * H))
        }
        addVectors(x, s.tmpH.baseAddress, acts.h1.baseAddress, m * H)
        DecoderKernels.rmsNorm(acts.h1.baseAddress, postAttentionNorm.baseAddress, s.normed.baseAddress,
                               rstd: acts.rstd2.baseAddress, rows: m, n: H, eps: c.rmsEps)
        try ProfPhase.projectionForward.time { () throws(PSTError) in try gateProj.forward(n, m: m, rows(acts.gate, m * I)) }
        try ProfPhase.projectionForward.time { () throws(PSTError) in try upProj.forward(n, m: m, rows(acts.up, m * I)) }
        DecoderKernels.swiglu(acts.gate.baseAddress, acts.up.baseAddress, s.act.baseAddress, count: m * I)
        try ProfPhase.projectionForward.time { () throws(PSTError) in
            try downProj.forward(UnsafeBufferPointer(rows(s.act, m * I)), m: m, rows(s.tmpH, m * H))
        }
        addVectors(acts.h1.baseAddress, s.tmpH.baseAddress, out, m * H)
    }
}
