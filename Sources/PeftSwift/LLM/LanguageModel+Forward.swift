// The forward over whole sequences (training and evaluation): embedding → layers → final norm,
// and the logits of every position.

extension LanguageModel {
    func checkBatch(_ ids: UnsafeBufferPointer<Int32>, batch: Int, seqLen: Int) throws(PSTError) {
        guard batch >= 1 else { throw .invalidArgument("batch (\(batch)) must be >= 1") }
        guard seqLen >= 1 else { throw .invalidArgument("sequence length (\(seqLen)) must be >= 1") }
        guard seqLen <= config.maxPositions else {
            throw .invalidArgument("sequence length (\(seqLen)) exceeds the context (max_positions \(config.maxPositions))")
        }
        let (m, o) = batch.multipliedReportingOverflow(by: seqLen)
        guard !o, m <= 1 << 26 else { throw .invalidArgument("batch·seq_len (\(batch)·\(seqLen)) is too large") }
        guard ids.count == m else { throw .shape("ids has \(ids.count) elements, expected batch·seq_len = \(m)") }
        for i in 0..<m where ids[i] < 0 || Int(ids[i]) >= config.vocab {
            throw .invalidArgument("ids[\(i)] (\(ids[i])) is out of range 0..<\(config.vocab)")
        }
    }

    /// Bytes of activations and scratch a forward + backward at (B, T) holds in the current
    /// mode (the LoRA layers' own input copies included, roughly).
    public func activationBytes(batch: Int, seqLen: Int) -> Int {
        let c = config, m = batch * seqLen
        let perLayer = 2 * m + m * (c.qWidth + 2 * c.kvWidth + c.hidden + 2 * c.intermediate) + batch * c.heads * seqLen * seqLen
        let loraCopies = m * (5 * c.hidden + c.qWidth + c.intermediate)
        let workspace = m * (5 * c.hidden + 4 * c.qWidth + 2 * c.kvWidth + c.intermediate)
            + Threads.count * min(AttentionShape.blockRows, seqLen) * seqLen
        let kept = recomputeActivations ? 1 : c.layers
        return 4 * (kept * (perLayer + loraCopies) + (c.layers + 1) * m * c.hidden + workspace + m * (c.hidden + 1) + m * c.vocab)
    }

    /// Buffers for (B, T); reallocated when the shape or the mode changes.
    func prepare(batch: Int, seqLen: Int) throws(PSTError) {
        let m = batch * seqLen
        let wantStored = recomputeActivations ? 1 : config.layers
        if let ws, ws.batch == batch, ws.seqLen == seqLen, stored.count == wantStored { return }
        let need = activationBytes(batch: batch, seqLen: seqLen)
        guard need <= activationMemoryLimit else {
            throw .outOfMemory("batch \(batch) × \(seqLen) tokens needs ~\(need >> 20) MiB of activations, over the limit of \(activationMemoryLimit >> 20) MiB\(recomputeActivations ? "" : " (activation recomputation needs less)")")
        }
        ws = nil; stored = []; layerInputs = []; rstdFinal = nil; normedFinal = nil
        ws = try LayerWorkspace(config, batch: batch, seqLen: seqLen, invFreq: ropeInverseFrequencies)
        for _ in 0...config.layers { layerInputs.append(try AlignedBuffer(count: m * config.hidden)) }
        for _ in 0..<wantStored { stored.append(try LayerActivations(config, batch: batch, seqLen: seqLen)) }
        rstdFinal = try AlignedBuffer(count: m)
        normedFinal = try AlignedBuffer(count: m * config.hidden)
    }

    /// A layer's attention over whole sequences: its own keys and values (past 0), the
    /// probabilities kept in `acts` for backward.
    func wholeSequences(_ acts: LayerActivations, _ ws: LayerWorkspace) -> AttentionContext {
        AttentionContext(batch: ws.batch, seqLen: ws.seqLen, past: 0, keys: acts.k.baseAddress, values: acts.v.baseAddress,
                         kvRows: ws.seqLen, cos: ws.cos.baseAddress, sin: ws.sin.baseAddress,
                         scores: .keep(acts.probs.baseAddress))
    }

    /// Embedding → layers → final RMSNorm into normedFinal.
    func runForward(_ ids: UnsafeBufferPointer<Int32>, batch: Int, seqLen: Int) throws(PSTError) {
        try prepare(batch: batch, seqLen: seqLen)
        let ws = ws!, m = batch * seqLen, H = config.hidden
        let x0 = layerInputs[0].baseAddress, e = embedding.baseAddress
        for i in 0..<m { (x0 + i * H).update(from: e + Int(ids[i]) * H, count: H) }
        rngSnapshots = []
        for l in layers {
            let acts = recomputeActivations ? stored[0] : stored[l.index]
            rngSnapshots.append(l.linears.map { $0.rngStates })
            try ProfPhase.layerForward.time { () throws(PSTError) in
                try l.forward(config, x: layerInputs[l.index].baseAddress, out: layerInputs[l.index + 1].baseAddress,
                              acts: acts, scratch: ws.scratch, attention: wholeSequences(acts, ws))
            }
            if recomputeActivations {
                // the next layer to run is l+1, or (after the last) this one again in backward
                let next = layers[min(l.index + 1, layers.count - 1)]
                for (p, q) in zip(l.linears, next.linears) { p.handOverForwardCache(to: q) }
            }
        }
        DecoderKernels.rmsNorm(layerInputs[config.layers].baseAddress, finalNorm.baseAddress, normedFinal!.baseAddress,
                               rstd: rstdFinal!.baseAddress, rows: m, n: H, eps: config.rmsEps)
    }

    /// Logits for every position: out (B·T × vocab) = RMSNorm(h_L)·W_headᵀ. Drops a pending
    /// backward. Throws on ids out of range, T > max_positions, a wrong ids/out size.
    public func logits(ids: UnsafeBufferPointer<Int32>, batch: Int, seqLen: Int,
                       into out: UnsafeMutableBufferPointer<Float>) throws(PSTError) {
        try checkBatch(ids, batch: batch, seqLen: seqLen)
        let m = batch * seqLen
        guard out.count >= m * config.vocab else {
            throw .shape("logits has room for \(out.count) elements, expected batch·seq_len·vocab = \(m * config.vocab)")
        }
        dropState()
        try runForward(ids, batch: batch, seqLen: seqLen)
        GEMM.sgemm(transA: false, transB: true, m: m, n: config.vocab, k: config.hidden, alpha: 1,
                   a: normedFinal!.baseAddress, lda: config.hidden, b: headWeight, ldb: config.hidden,
                   beta: 0, c: out.baseAddress!, ldc: config.vocab, compute: computeDType)
    }

    /// `logits(ids:batch:seqLen:into:)` on arrays.
    public func logits(ids: [Int32], batch: Int, seqLen: Int) throws(PSTError) -> [Float] {
        var out = [Float](repeating: 0, count: max(0, batch * seqLen) * config.vocab)
        try ids.withUnsafeBufferPointer { (ip) throws(PSTError) in
            try out.withUnsafeMutableBufferPointer { (op) throws(PSTError) in
                try logits(ids: ip, batch: batch, seqLen: seqLen, into: op)
            }
        }
        return out
    }

    /// The logits of evaluation: `logits(ids:batch:seqLen:into:)` with dropout off (training
    /// mode restored after), the active adapters on.
    public func evaluationLogits(ids: UnsafeBufferPointer<Int32>, batch: Int, seqLen: Int,
                                 into out: UnsafeMutableBufferPointer<Float>) throws(PSTError) {
        let was = training
        training = false
        defer { training = was }
        try logits(ids: ids, batch: batch, seqLen: seqLen, into: out)
    }
}
