#if canImport(Glibc)
import Glibc
#endif

/// One decoder layer's frozen weights: two RMSNorm weights (H) and the seven projections as
/// LoRA layers over a frozen base (dense fp32 or 4-bit), in transformers' layout (out × in).
public final class LlamaDecoderLayer {
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

    /// The short module names, in PEFT's target order.
    public static let moduleNames = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    /// The module paths inside a layer (`self_attn.q_proj`, ..., `mlp.down_proj`).
    public static let modulePaths = ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
                                     "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"]

    /// The seven projections in `moduleNames` order.
    public var linears: [LoraLinear] { [qProj, kProj, vProj, oProj, gateProj, upProj, downProj] }
}

/// What one layer's backward needs from its forward (M = B·T rows). The layer input itself is
/// kept by the model (it is all that recomputation keeps).
final class LayerActivations {
    let rstd1: AlignedBuffer<Float>   // M
    let rstd2: AlignedBuffer<Float>   // M
    let q: AlignedBuffer<Float>       // M × Hq·d (after RoPE)
    let k: AlignedBuffer<Float>       // M × Hkv·d (after RoPE)
    let v: AlignedBuffer<Float>       // M × Hkv·d
    let probs: AlignedBuffer<Float>   // B × Hq × T × T
    let h1: AlignedBuffer<Float>      // M × H: x + attention output
    let gate: AlignedBuffer<Float>    // M × I (pre-activation)
    let up: AlignedBuffer<Float>      // M × I

    init(_ c: LlamaHyperparameters, batch: Int, seqLen: Int) throws(PSTError) {
        let m = batch * seqLen
        rstd1 = try AlignedBuffer(count: m)
        rstd2 = try AlignedBuffer(count: m)
        q = try AlignedBuffer(count: m * c.qWidth)
        k = try AlignedBuffer(count: m * c.kvWidth)
        v = try AlignedBuffer(count: m * c.kvWidth)
        probs = try AlignedBuffer(count: batch * c.heads * seqLen * seqLen)
        h1 = try AlignedBuffer(count: m * c.hidden)
        gate = try AlignedBuffer(count: m * c.intermediate)
        up = try AlignedBuffer(count: m * c.intermediate)
    }
}

/// Scratch shared by all layers for one (B, T).
final class LlamaWorkspace {
    let batch: Int, seqLen: Int
    let normed: AlignedBuffer<Float>    // M × H
    let attn: AlignedBuffer<Float>      // M × Hq·d
    let tmpH: AlignedBuffer<Float>      // M × H
    let act: AlignedBuffer<Float>       // M × I
    let dres: AlignedBuffer<Float>      // M × H (the residual stream's gradient)
    let dn: AlignedBuffer<Float>        // M × H
    let dattn: AlignedBuffer<Float>     // M × Hq·d
    let dq: AlignedBuffer<Float>        // M × Hq·d
    let dk: AlignedBuffer<Float>        // M × Hkv·d
    let dv: AlignedBuffer<Float>        // M × Hkv·d
    let attnScratch: AlignedBuffer<Float>
    let attnThreads: Int
    let cos: AlignedBuffer<Float>       // T × d/2
    let sin: AlignedBuffer<Float>

    init(_ c: LlamaHyperparameters, batch: Int, seqLen: Int, invFreq: [Float]) throws(PSTError) {
        self.batch = batch
        self.seqLen = seqLen
        let m = batch * seqLen
        normed = try AlignedBuffer(count: m * c.hidden)
        attn = try AlignedBuffer(count: m * c.qWidth)
        tmpH = try AlignedBuffer(count: m * c.hidden)
        act = try AlignedBuffer(count: m * c.intermediate)
        dres = try AlignedBuffer(count: m * c.hidden)
        dn = try AlignedBuffer(count: m * c.hidden)
        dattn = try AlignedBuffer(count: m * c.qWidth)
        dq = try AlignedBuffer(count: m * c.qWidth)
        dk = try AlignedBuffer(count: m * c.kvWidth)
        dv = try AlignedBuffer(count: m * c.kvWidth)
        let shape = AttentionShape(batch: batch, seqLen: seqLen, heads: c.heads, kvHeads: c.kvHeads, headDim: c.headDim)
        attnThreads = max(1, Threads.count)
        attnScratch = try AlignedBuffer(count: attnThreads * shape.scratchPerThread)
        cos = try AlignedBuffer(count: seqLen * c.headDim / 2)
        sin = try AlignedBuffer(count: seqLen * c.headDim / 2)
        LlamaKernels.ropeTables(invFreq: invFreq, positions: seqLen, cos: cos.baseAddress, sin: sin.baseAddress)
    }
}

extension LoraLinear {
    /// Frees what forward kept for backward (activation recomputation keeps no per-layer cache).
    func releaseForwardCache() {
        cacheX = nil
        cacheDropped = [:]
        cacheMasks = [:]
        cacheT = [:]
        cacheG = nil
        invalidateCache()
    }

    /// Recomputation: hands the buffers forward kept for backward to `other` (the layer at the
    /// same position in the next layer to run, which overwrites them), so that they are not
    /// freed and page-faulted in again for every layer. This layer's cache is invalidated.
    /// Adapters are matched by position; `other === self` only invalidates.
    func handOverForwardCache(to other: LoraLinear) {
        defer { invalidateCache() }
        if other === self { return }
        other.cacheX = cacheX ?? other.cacheX
        other.cacheG = cacheG ?? other.cacheG
        for (a, b) in zip(adapters, other.adapters) {
            let ia = ObjectIdentifier(a), ib = ObjectIdentifier(b)
            if let d = cacheDropped[ia] { other.cacheDropped[ib] = d }
            if let mk = cacheMasks[ia] { other.cacheMasks[ib] = mk }
            if let t = cacheT[ia] { other.cacheT[ib] = t }
        }
        other.invalidateCache()
        cacheX = nil
        cacheG = nil
        cacheDropped = [:]
        cacheMasks = [:]
        cacheT = [:]
    }

    /// The dropout generators of every adapter (recomputation replays the same masks).
    var rngStates: [SplitMix64] { adapters.map { $0.rng } }

    func restoreRng(_ states: [SplitMix64]) {
        for (a, s) in zip(adapters, states) { a.rng = s }
    }
}

@inline(__always) func buf(_ b: AlignedBuffer<Float>) -> UnsafeBufferPointer<Float> {
    UnsafeBufferPointer(start: b.baseAddress, count: b.count)
}

@inline(__always) func mbuf(_ b: AlignedBuffer<Float>) -> UnsafeMutableBufferPointer<Float> {
    UnsafeMutableBufferPointer(start: b.baseAddress, count: b.count)
}

/// c[i] = a[i] + b[i] (c may alias a or b).
func addVectors(_ a: UnsafePointer<Float>, _ b: UnsafePointer<Float>, _ c: UnsafeMutablePointer<Float>, _ n: Int) {
    parallelChunks(n, grain: 32768) { lo, hi in
        var j = lo
        while j + 8 <= hi { store8(c + j, load8(a + j) + load8(b + j)); j += 8 }
        while j < hi { c[j] = a[j] + b[j]; j += 1 }
    }
}

extension LlamaDecoderLayer {
    /// x_out = layer(x) (both M × H), keeping in `acts` what backward needs:
    ///   n1 = RMSNorm(x)·w1;  q, k, v = n1·W_qᵀ, n1·W_kᵀ, n1·W_vᵀ (+ LoRA);  RoPE(q), RoPE(k)
    ///   h1 = x + o_proj(attention(q, k, v))
    ///   n2 = RMSNorm(h1)·w2;  x_out = h1 + down_proj(silu(gate_proj(n2)) ⊙ up_proj(n2))
    func forward(_ c: LlamaHyperparameters, x: UnsafePointer<Float>, out: UnsafeMutablePointer<Float>,
                 acts: LayerActivations, ws: LlamaWorkspace) throws(PSTError) {
        let B = ws.batch, T = ws.seqLen, m = B * T, H = c.hidden
        let n = ws.normed
        LlamaKernels.rmsNorm(x, inputNorm.baseAddress, n.baseAddress, rstd: acts.rstd1.baseAddress, rows: m, n: H, eps: c.rmsEps)
        try Prof.time(25) { () throws(PSTError) in try qProj.forward(buf(n), m: m, mbuf(acts.q)) }
        try Prof.time(25) { () throws(PSTError) in try kProj.forward(buf(n), m: m, mbuf(acts.k)) }
        try Prof.time(25) { () throws(PSTError) in try vProj.forward(buf(n), m: m, mbuf(acts.v)) }
        LlamaKernels.rope(acts.q.baseAddress, rows: m, seqLen: T, heads: c.heads, headDim: c.headDim,
                          cos: ws.cos.baseAddress, sin: ws.sin.baseAddress, inverse: false)
        LlamaKernels.rope(acts.k.baseAddress, rows: m, seqLen: T, heads: c.kvHeads, headDim: c.headDim,
                          cos: ws.cos.baseAddress, sin: ws.sin.baseAddress, inverse: false)
        let shape = AttentionShape(batch: B, seqLen: T, heads: c.heads, kvHeads: c.kvHeads, headDim: c.headDim)
        Prof.time(8) { LlamaAttention.forward(shape, q: acts.q.baseAddress, k: acts.k.baseAddress, v: acts.v.baseAddress,
                               out: ws.attn.baseAddress, probs: acts.probs.baseAddress) }
        try Prof.time(25) { () throws(PSTError) in try oProj.forward(buf(ws.attn), m: m, mbuf(ws.tmpH)) }
        addVectors(x, ws.tmpH.baseAddress, acts.h1.baseAddress, m * H)
        LlamaKernels.rmsNorm(acts.h1.baseAddress, postAttentionNorm.baseAddress, n.baseAddress, rstd: acts.rstd2.baseAddress,
                             rows: m, n: H, eps: c.rmsEps)
        try Prof.time(25) { () throws(PSTError) in try gateProj.forward(buf(n), m: m, mbuf(acts.gate)) }
        try Prof.time(25) { () throws(PSTError) in try upProj.forward(buf(n), m: m, mbuf(acts.up)) }
        LlamaKernels.swiglu(acts.gate.baseAddress, acts.up.baseAddress, ws.act.baseAddress, count: m * c.intermediate)
        try Prof.time(25) { () throws(PSTError) in try downProj.forward(buf(ws.act), m: m, mbuf(ws.tmpH)) }
        addVectors(acts.h1.baseAddress, ws.tmpH.baseAddress, out, m * H)
    }

    /// Backward of the last `forward` of this layer: on entry ws.dres = ∂L/∂x_out, on return
    /// ∂L/∂x (when `inputGradient`; otherwise only the LoRA gradients are accumulated). The
    /// activations' gate/up buffers are overwritten.
    func backward(_ c: LlamaHyperparameters, x: UnsafePointer<Float>, acts: LayerActivations, ws: LlamaWorkspace,
                  inputGradient: Bool) throws(PSTError) {
        let B = ws.batch, T = ws.seqLen, m = B * T, H = c.hidden, I = c.intermediate
        // MLP: dact = dres·W_down (+ LoRA), then SwiGLU backward in place over gate/up
        try Prof.time(26) { () throws(PSTError) in try downProj.backward(buf(ws.dres), m: m, dx: mbuf(ws.act)) }
        LlamaKernels.swigluBackward(ws.act.baseAddress, acts.gate.baseAddress, acts.up.baseAddress,
                                    dg: acts.gate.baseAddress, du: acts.up.baseAddress, count: m * I)
        try Prof.time(26) { () throws(PSTError) in try gateProj.backward(buf(acts.gate), m: m, dx: mbuf(ws.dn)) }
        try Prof.time(26) { () throws(PSTError) in try upProj.backward(buf(acts.up), m: m, dx: mbuf(ws.tmpH)) }
        addVectors(ws.dn.baseAddress, ws.tmpH.baseAddress, ws.dn.baseAddress, m * H)
        // dh1 = dres + RMSNorm backward
        LlamaKernels.rmsNormBackward(ws.dn.baseAddress, acts.h1.baseAddress, postAttentionNorm.baseAddress,
                                     rstd: acts.rstd2.baseAddress, ws.dres.baseAddress, rows: m, n: H, accumulate: true)
        // attention
        try Prof.time(26) { () throws(PSTError) in try oProj.backward(buf(ws.dres), m: m, dx: mbuf(ws.dattn)) }
        let shape = AttentionShape(batch: B, seqLen: T, heads: c.heads, kvHeads: c.kvHeads, headDim: c.headDim)
        Prof.time(9) { LlamaAttention.backward(shape, dout: ws.dattn.baseAddress, q: acts.q.baseAddress, k: acts.k.baseAddress,
                                v: acts.v.baseAddress, probs: acts.probs.baseAddress, dq: ws.dq.baseAddress,
                                dk: ws.dk.baseAddress, dv: ws.dv.baseAddress, scratch: ws.attnScratch.baseAddress,
                                threads: ws.attnThreads) }
        LlamaKernels.rope(ws.dq.baseAddress, rows: m, seqLen: T, heads: c.heads, headDim: c.headDim,
                          cos: ws.cos.baseAddress, sin: ws.sin.baseAddress, inverse: true)
        LlamaKernels.rope(ws.dk.baseAddress, rows: m, seqLen: T, heads: c.kvHeads, headDim: c.headDim,
                          cos: ws.cos.baseAddress, sin: ws.sin.baseAddress, inverse: true)
        if !inputGradient {
            try Prof.time(26) { () throws(PSTError) in try qProj.backward(buf(ws.dq), m: m, dx: nil) }
            try Prof.time(26) { () throws(PSTError) in try kProj.backward(buf(ws.dk), m: m, dx: nil) }
            try Prof.time(26) { () throws(PSTError) in try vProj.backward(buf(ws.dv), m: m, dx: nil) }
            return
        }
        try Prof.time(26) { () throws(PSTError) in try qProj.backward(buf(ws.dq), m: m, dx: mbuf(ws.dn)) }
        try Prof.time(26) { () throws(PSTError) in try kProj.backward(buf(ws.dk), m: m, dx: mbuf(ws.tmpH)) }
        addVectors(ws.dn.baseAddress, ws.tmpH.baseAddress, ws.dn.baseAddress, m * H)
        try Prof.time(26) { () throws(PSTError) in try vProj.backward(buf(ws.dv), m: m, dx: mbuf(ws.tmpH)) }
        addVectors(ws.dn.baseAddress, ws.tmpH.baseAddress, ws.dn.baseAddress, m * H)
        LlamaKernels.rmsNormBackward(ws.dn.baseAddress, x, inputNorm.baseAddress, rstd: acts.rstd1.baseAddress,
                                     ws.dres.baseAddress, rows: m, n: H, accumulate: true)
    }
}
