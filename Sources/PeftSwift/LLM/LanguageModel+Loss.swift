// The causal-LM loss (the LM head and cross-entropy in chunks) and its backward through every
// layer into the adapters' gradients.

extension LanguageModel {
    /// The causal-LM loss (transformers' LlamaForCausalLM with labels): position t of sequence
    /// b predicts labels[b, t+1]; targets equal to `ignoreIndex` (and position T−1) are skipped;
    ///   loss = Σ_{targets} [logsumexp(z_bt) − z_bt[y]] / N,
    /// N = the number of targets, or `normalizer` when given (transformers' num_items_in_batch,
    /// for gradient accumulation). No targets: the loss is 0 and backward adds nothing.
    /// Keeps what `backward()` needs. Labels must be `ignoreIndex` or in 0..<vocab.
    public func loss(ids: UnsafeBufferPointer<Int32>, labels: UnsafeBufferPointer<Int32>, batch: Int, seqLen: Int,
                     ignoreIndex: Int32 = -100, normalizer: Int? = nil) throws(PSTError) -> Float {
        try checkBatch(ids, batch: batch, seqLen: seqLen)
        let m = batch * seqLen, V = config.vocab, H = config.hidden
        guard labels.count == m else { throw .shape("labels has \(labels.count) elements, expected batch·seq_len = \(m)") }
        for i in 0..<m where labels[i] != ignoreIndex && (labels[i] < 0 || Int(labels[i]) >= V) {
            throw .invalidArgument("labels[\(i)] (\(labels[i])) is neither \(ignoreIndex) nor in 0..<\(V)")
        }
        if let normalizer, normalizer < 1 { throw .invalidArgument("normalizer (\(normalizer)) must be >= 1") }
        dropState()
        var rows: [Int32] = [], targets: [Int32] = []
        for b in 0..<batch {
            for t in 0..<(seqLen - 1) where labels[b * seqLen + t + 1] != ignoreIndex {
                rows.append(Int32(b * seqLen + t))
                targets.append(labels[b * seqLen + t + 1])
            }
        }
        try runForward(ids, batch: batch, seqLen: seqLen)
        validRows = rows
        let mv = rows.count
        let dn = ws!.dn.baseAddress
        dn.update(repeating: 0, count: m * H)
        if mv == 0 { pendingBackward = true; return 0 }
        // The LM head and the cross-entropy run over chunks of target rows, and each chunk's
        // share of the backward, dh = dz·W_head, is taken right away and scattered into the
        // M × H gradient of the final norm's output (ws.dn, free until backward): only
        // chunk × vocab logits exist at once (all M × vocab would be a step's largest buffer,
        // 200 MB at 1024 × 49152). The forward-only cost is the dh product, which every
        // training step needs anyway.
        let chunk = min(mv, max(1, headChunkRows), max(1, m / 2))
        if (logitsBuffer?.count ?? 0) < chunk * V { logitsBuffer = nil; logitsBuffer = try AlignedBuffer<Float>(count: chunk * V) }
        let z = logitsBuffer!.baseAddress
        let hs = ws!.scratch.tmpH.baseAddress, nf = normedFinal!.baseAddress
        let dh = hs + chunk * H      // tmpH holds M × H floats: chunk rows of input, then chunk rows of dh
        let n = Float(normalizer ?? mv)
        var sum = 0.0
        var c0 = 0
        while c0 < mv {
            let cm = min(chunk, mv - c0)
            for i in 0..<cm { (hs + i * H).update(from: nf + Int(rows[c0 + i]) * H, count: H) }
            GEMM.sgemm(transA: false, transB: true, m: cm, n: V, k: H, alpha: 1, a: hs, lda: H, b: headWeight, ldb: H,
                       beta: 0, c: z, ldc: V, compute: computeDType)
            sum += targets.withUnsafeBufferPointer { tp in
                DecoderKernels.crossEntropy(z, rows: cm, n: V, targets: tp.baseAddress! + c0, scale: 1 / n)
            }
            GEMM.sgemm(transA: false, transB: false, m: cm, n: H, k: V, alpha: 1, a: z, lda: V, b: headWeight, ldb: H,
                       beta: 0, c: dh, ldc: H, compute: computeDType)
            for i in 0..<cm { (dn + Int(rows[c0 + i]) * H).update(from: dh + i * H, count: H) }
            c0 += cm
        }
        pendingBackward = true
        return Float(sum / Double(n))
    }

    /// `loss(ids:labels:batch:seqLen:ignoreIndex:normalizer:)` on arrays.
    public func loss(ids: [Int32], labels: [Int32], batch: Int, seqLen: Int, ignoreIndex: Int32 = -100,
                     normalizer: Int? = nil) throws(PSTError) -> Float {
        try ids.withUnsafeBufferPointer { (ip) throws(PSTError) -> Float in
            try labels.withUnsafeBufferPointer { (lp) throws(PSTError) -> Float in
                try loss(ids: ip, labels: lp, batch: batch, seqLen: seqLen, ignoreIndex: ignoreIndex, normalizer: normalizer)
            }
        }
    }

    /// Backward of the last `loss`: accumulates ∂loss/∂A and ∂loss/∂B into every active
    /// adapter's gradA / gradB (call `zeroGrad()` between steps). Once per loss.
    public func backward() throws(PSTError) {
        guard pendingBackward, let ws else { throw .misuse("backward without a preceding loss (or after the model changed)") }
        pendingBackward = false
        let mv = validRows.count
        if mv == 0 { return }
        let m = ws.batch * ws.seqLen, H = config.hidden
        // dn already holds d loss / d RMSNorm(h_L) (the LM head's backward ran in `loss`)
        let dn = ws.dn.baseAddress
        DecoderKernels.rmsNormBackward(dn, layerInputs[config.layers].baseAddress, finalNorm.baseAddress,
                                       rstd: rstdFinal!.baseAddress, ws.dres.baseAddress, rows: m, n: H, accumulate: false)
        for l in layers.reversed() {
            let x = layerInputs[l.index].baseAddress
            let acts: LayerActivations
            if recomputeActivations {
                acts = stored[0]
                for (p, s) in zip(l.linears, rngSnapshots[l.index]) { p.restoreRng(s) }
                // recompute the layer (its output, equal to the next layer's input, goes to the
                // free dn buffer and is discarded)
                try ProfPhase.recomputeForward.time { () throws(PSTError) in
                    try l.forward(config, x: x, out: ws.dn.baseAddress, acts: acts, scratch: ws.scratch, attention: wholeSequences(acts, ws))
                }
            } else {
                acts = stored[l.index]
            }
            try ProfPhase.layerBackward.time { () throws(PSTError) in
                try l.backward(config, x: x, acts: acts, ws: ws, inputGradient: l.index > 0)
            }
            if recomputeActivations {
                // to layer l−1, recomputed next (layer 0 keeps them for the next step's forward)
                let next = layers[max(l.index - 1, 0)]
                for (p, q) in zip(l.linears, next.linears) { p.handOverForwardCache(to: q) }
            }
        }
    }
}
