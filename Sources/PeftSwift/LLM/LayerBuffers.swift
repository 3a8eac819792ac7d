// The buffers a decoder layer's forward and backward run in. M = B·T rows (B sequences of T
// tokens); H the width, I the MLP width, Hq·d / Hkv·d the q and k/v widths.

/// What one layer's forward writes and its backward reads (the layer input itself is kept by
/// the model: it is all that recomputation keeps). A cached decode keeps no attention state
/// here (its keys and values are in the KV cache, its scores discarded): k, v and probs are
/// then empty.
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

    init(_ c: ModelConfig, batch: Int, seqLen: Int, keepsAttention: Bool = true) throws(PSTError) {
        let m = batch * seqLen
        rstd1 = try AlignedBuffer(count: m)
        rstd2 = try AlignedBuffer(count: m)
        q = try AlignedBuffer(count: m * c.qWidth)
        k = try AlignedBuffer(count: keepsAttention ? m * c.kvWidth : 0)
        v = try AlignedBuffer(count: keepsAttention ? m * c.kvWidth : 0)
        probs = try AlignedBuffer(count: keepsAttention ? batch * c.heads * seqLen * seqLen : 0)
        h1 = try AlignedBuffer(count: m * c.hidden)
        gate = try AlignedBuffer(count: m * c.intermediate)
        up = try AlignedBuffer(count: m * c.intermediate)
    }
}

/// A forward's scratch, shared by all layers.
final class LayerScratch {
    let normed: AlignedBuffer<Float>    // M × H
    let attn: AlignedBuffer<Float>      // M × Hq·d
    let tmpH: AlignedBuffer<Float>      // M × H
    let act: AlignedBuffer<Float>       // M × I

    init(_ c: ModelConfig, rows m: Int) throws(PSTError) {
        normed = try AlignedBuffer(count: m * c.hidden)
        attn = try AlignedBuffer(count: m * c.qWidth)
        tmpH = try AlignedBuffer(count: m * c.hidden)
        act = try AlignedBuffer(count: m * c.intermediate)
    }
}

/// The scratch of a forward and backward over whole sequences at one (B, T), shared by all
/// layers: the forward's, the gradients', attention backward's, and RoPE tables for 0..<T.
final class LayerWorkspace {
    let batch: Int, seqLen: Int
    let scratch: LayerScratch
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

    init(_ c: ModelConfig, batch: Int, seqLen: Int, invFreq: [Float]) throws(PSTError) {
        self.batch = batch
        self.seqLen = seqLen
        let m = batch * seqLen
        scratch = try LayerScratch(c, rows: m)
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
        DecoderKernels.ropeTables(invFreq: invFreq, positions: seqLen, cos: cos.baseAddress, sin: sin.baseAddress)
    }
}

@inline(__always) func buf(_ b: AlignedBuffer<Float>) -> UnsafeBufferPointer<Float> {
    UnsafeBufferPointer(start: b.baseAddress, count: b.count)
}

@inline(__always) func mbuf(_ b: AlignedBuffer<Float>) -> UnsafeMutableBufferPointer<Float> {
    UnsafeMutableBufferPointer(start: b.baseAddress, count: b.count)
}
