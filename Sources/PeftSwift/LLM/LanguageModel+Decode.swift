// Cached decoding over T new tokens whose attention reads the earlier positions' keys and
// values from a KV cache: a prompt chunk runs the same layer forward as training
// (`DecoderLayer.forward`, projections through the GEMM); one token runs the fused decode step
// (LanguageModel+DecodeStep.swift: the same math at M = 1, one parallel region per token).

extension LanguageModel {
    /// A KV cache for one sequence of up to `capacity` positions (≤ maxPositions).
    public func makeKVCache(capacity: Int) throws(PSTError) -> KVCache {
        try KVCache(model: self, capacity: capacity)
    }

    /// Feeds `ids` (one sequence, ≥ 1 token) at positions cache.count..<cache.count+ids.count
    /// — the prompt at once (prefill, projections through the GEMM) or one token (decode, M = 1:
    /// `decodeStep`) — appending their keys/values to `cache`, and writes the logits of the last position
    /// (vocab values) to `lastLogits`. Uses the current active adapters in eval mode (no
    /// dropout; `training` is restored after). Drops a pending backward.
    public func forwardCached(ids: UnsafeBufferPointer<Int32>, cache: KVCache,
                              lastLogits: UnsafeMutableBufferPointer<Float>) throws(PSTError) {
        let c = config, H = c.hidden, T = ids.count
        guard cache.owner == ObjectIdentifier(self) else { throw .invalidArgument("the KV cache belongs to another model") }
        guard T >= 1 else { throw .invalidArgument("no token ids to feed (empty prompt)") }
        guard T <= cache.capacity - cache.count else {
            throw .invalidArgument("\(T) tokens at position \(cache.count) exceed the KV cache capacity (\(cache.capacity))")
        }
        for i in 0..<T where ids[i] < 0 || Int(ids[i]) >= c.vocab {
            throw .invalidArgument("ids[\(i)] (\(ids[i])) is out of range 0..<\(c.vocab)")
        }
        guard lastLogits.count >= c.vocab else {
            throw .shape("logits has room for \(lastLogits.count) elements, expected vocab = \(c.vocab)")
        }
        dropState()
        let wasTraining = training
        if wasTraining { training = false }
        defer { if wasTraining { training = true } }
        if (cache.ws?.rows ?? 0) < T { cache.ws = nil; cache.ws = try DecodeWorkspace(c, rows: T) }
        let ws = cache.ws!
        if T == 1 {   // one token: the fused step (one parallel region for the whole model)
            try decodeStep(token: ids[0], cache: cache, ws: ws, logits: lastLogits.baseAddress!)
            return
        }
        let x = ws.x.baseAddress, e = embedding.baseAddress
        for i in 0..<T { (x + i * H).update(from: e + Int(ids[i]) * H, count: H) }
        for l in layers {
            try ProfPhase.layerForward.time { () throws(PSTError) in
                try l.forward(c, x: x, out: x, acts: ws.acts, scratch: ws.scratch,
                              attention: cache.attention(layer: l.index, newTokens: T))
            }
        }
        cache.count += T
        // final norm and LM head on the last position only (a GEMV over vocab × H)
        let last = x + (T - 1) * H, normed = ws.scratch.normed.baseAddress
        DecoderKernels.rmsNorm(last, finalNorm.baseAddress, normed, rstd: ws.acts.rstd1.baseAddress, rows: 1, n: H, eps: c.rmsEps)
        // one row: a memory-bound GEMV, fp32 whatever computeDType says (bf16 operands would not
        // make it faster; generation's single-token steps use fp32 products, prefill the model's)
        if let head = decodeHead {
            head.matvec(normed, lastLogits.baseAddress!)
        } else {
            GEMM.sgemm(transA: false, transB: true, m: 1, n: c.vocab, k: H, alpha: 1, a: normed, lda: H,
                       b: headWeight, ldb: H, beta: 0, c: lastLogits.baseAddress!, ldc: c.vocab)
        }
    }

    /// `forwardCached(ids:cache:lastLogits:)` on arrays: returns the last position's logits.
    public func forwardCached(ids: [Int32], cache: KVCache) throws(PSTError) -> [Float] {
        var out = [Float](repeating: 0, count: config.vocab)
        try ids.withUnsafeBufferPointer { (ip) throws(PSTError) in
            try out.withUnsafeMutableBufferPointer { (op) throws(PSTError) in
                try forwardCached(ids: ip, cache: cache, lastLogits: op)
            }
        }
        return out
    }
}
