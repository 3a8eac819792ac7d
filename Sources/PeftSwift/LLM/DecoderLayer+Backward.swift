extension DecoderLayer {
    /// Backward of the last `forward` of this layer (over whole sequences: past 0, P kept in
    /// `acts`): on entry ws.dres = ∂L/∂x_out, on return ∂L/∂x (when `inputGradient`; otherwise
    /// only the LoRA gradients are accumulated). The activations' gate/up buffers are overwritten.
    func backward(_ c: ModelConfig, x: UnsafePointer<Float>, acts: LayerActivations, ws: LayerWorkspace,
                  inputGradient: Bool) throws(PSTError) {
        let B = ws.batch, T = ws.seqLen, m = B * T, H = c.hidden, I = c.intermediate
        let s = ws.scratch
        // MLP: dact = dres·W_down (+ LoRA), then SwiGLU backward in place over gate/up
        try ProfPhase.projectionBackward.time { () throws(PSTError) in try downProj.backward(buf(ws.dres), m: m, dx: mbuf(s.act)) }
        DecoderKernels.swigluBackward(s.act.baseAddress, acts.gate.baseAddress, acts.up.baseAddress,
                                      dg: acts.gate.baseAddress, du: acts.up.baseAddress, count: m * I)
        try ProfPhase.projectionBackward.time { () throws(PSTError) in try gateProj.backward(buf(acts.gate), m: m, dx: mbuf(ws.dn)) }
        try ProfPhase.projectionBackward.time { () throws(PSTError) in try upProj.backward(buf(acts.up), m: m, dx: mbuf(s.tmpH)) }
        addVectors(ws.dn.baseAddress, s.tmpH.baseAddress, ws.dn.baseAddress, m * H)
        // dh1 = dres + RMSNorm backward
        DecoderKernels.rmsNormBackward(ws.dn.baseAddress, acts.h1.baseAddress, postAttentionNorm.baseAddress,
                                       rstd: acts.rstd2.baseAddress, ws.dres.baseAddress, rows: m, n: H, accumulate: true)
        // attention
        try ProfPhase.projectionBackward.time { () throws(PSTError) in try oProj.backward(buf(ws.dres), m: m, dx: mbuf(ws.dattn)) }
        let shape = AttentionShape(batch: B, seqLen: T, heads: c.heads, kvHeads: c.kvHeads, headDim: c.headDim,
                                   window: c.architecture.attentionWindow)
        ProfPhase.attentionBackward.time {
            CausalAttention.backward(shape, dout: ws.dattn.baseAddress, q: acts.q.baseAddress, k: acts.k.baseAddress,
                                     v: acts.v.baseAddress, probs: acts.probs.baseAddress, dq: ws.dq.baseAddress,
                                     dk: ws.dk.baseAddress, dv: ws.dv.baseAddress, scratch: ws.attnScratch.baseAddress,
                                     threads: ws.attnThreads)
        }
        DecoderKernels.rope(ws.dq.baseAddress, rows: m, seqLen: T, heads: c.heads, headDim: c.headDim,
                            cos: ws.cos.baseAddress, sin: ws.sin.baseAddress, inverse: true)
        DecoderKernels.rope(ws.dk.baseAddress, rows: m, seqLen: T, heads: c.kvHeads, headDim: c.headDim,
                            cos: ws.cos.baseAddress, sin: ws.sin.baseAddress, inverse: true)
        if !inputGradient {
            try ProfPhase.projectionBackward.time { () throws(PSTError) in try qProj.backward(buf(ws.dq), m: m, dx: nil) }
            try ProfPhase.projectionBackward.time { () throws(PSTError) in try kProj.backward(buf(ws.dk), m: m, dx: nil) }
            try ProfPhase.projectionBackward.time { () throws(PSTError) in try vProj.backward(buf(ws.dv), m: m, dx: nil) }
            return
        }
        try ProfPhase.projectionBackward.time { () throws(PSTError) in try qProj.backward(buf(ws.dq), m: m, dx: mbuf(ws.dn)) }
        try ProfPhase.projectionBackward.time { () throws(PSTError) in try kProj.backward(buf(ws.dk), m: m, dx: mbuf(s.tmpH)) }
        addVectors(ws.dn.baseAddress, s.tmpH.baseAddress, ws.dn.baseAddress, m * H)
        try ProfPhase.projectionBackward.time { () throws(PSTError) in try vProj.backward(buf(ws.dv), m: m, dx: mbuf(s.tmpH)) }
        addVectors(ws.dn.baseAddress, s.tmpH.baseAddress, ws.dn.baseAddress, m * H)
        DecoderKernels.rmsNormBackward(ws.dn.baseAddress, x, inputNorm.baseAddress, rstd: acts.rstd1.baseAddress,
                                       ws.dres.baseAddress, rows: m, n: H, accumulate: true)
    }
}
