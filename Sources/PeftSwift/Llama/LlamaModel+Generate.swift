#if canImport(Glibc)
import Glibc
#endif

/// Why `generate` stopped.
public enum GenerationStopReason: Sendable, Equatable {
    /// A stop id (EOS) was generated (it is the last token of the result).
    case stopToken
    /// `maxNewTokens` tokens were generated.
    case maxNewTokens
    /// The per-token callback returned false.
    case callback
}

/// What `generate` returns: the new token ids (the prompt excluded) and why it stopped.
public struct GenerationResult: Sendable, Equatable {
    public var tokens: [Int32]
    public var stopReason: GenerationStopReason
}

/// How `LlamaModel.generate` picks tokens.
public struct GenerationOptions: Sendable, Equatable {
    /// Most new tokens to generate (≥ 0).
    public var maxNewTokens: Int
    /// Sampling temperature: 0 = greedy (argmax, lowest id on ties); > 0 samples from
    /// softmax(logits / temperature) after top-k / top-p filtering.
    public var temperature: Float
    /// Nucleus sampling (Holtzman et al. 2019): keep the most probable tokens whose cumulative
    /// probability reaches topP (at least one), in (0, 1]; 1 disables.
    public var topP: Float
    /// Keep the topK most probable tokens (0 disables).
    public var topK: Int
    /// Seed of the sampling generator (same seed, same options, same model → same tokens).
    public var seed: UInt64
    /// Generation stops after emitting one of these (e.g. the tokenizer's EOS).
    public var stopIDs: [Int32]
    /// Generate with every adapter disabled (the base model: a "before" generation); the
    /// active sets are restored afterwards.
    public var disableAdapters: Bool

    public init(maxNewTokens: Int = 32, temperature: Float = 0, topP: Float = 1, topK: Int = 0, seed: UInt64 = 0,
                stopIDs: [Int32] = [], disableAdapters: Bool = false) {
        self.maxNewTokens = maxNewTokens
        self.temperature = temperature
        self.topP = topP
        self.topK = topK
        self.seed = seed
        self.stopIDs = stopIDs
        self.disableAdapters = disableAdapters
    }

    /// Throws `PST_ERR_INVALID_ARG` naming the first bad field.
    public func validate(vocab: Int) throws(PSTError) {
        guard maxNewTokens >= 0 else { throw .invalidArgument("max_new_tokens (\(maxNewTokens)) must be >= 0") }
        guard temperature.isFinite && temperature >= 0 else {
            throw .invalidArgument("temperature (\(temperature)) must be finite and >= 0")
        }
        guard topP.isFinite && topP > 0 && topP <= 1 else { throw .invalidArgument("top_p (\(topP)) must be in (0, 1]") }
        guard topK >= 0 else { throw .invalidArgument("top_k (\(topK)) must be >= 0") }
        for s in stopIDs where s < 0 || Int(s) >= vocab {
            throw .invalidArgument("stop id \(s) is out of range 0..<\(vocab)")
        }
    }
}

/// Token selection from one row of logits.
public struct Sampler {
    public let options: GenerationOptions
    var rng: SplitMix64
    var order: [Int32] = []
    var probs: [Float] = []

    public init(options: GenerationOptions) {
        self.options = options
        rng = SplitMix64(seed: options.seed)
    }

    /// The index of the largest value (the lowest on ties; NaN never wins).
    public static func argmax(_ z: UnsafeBufferPointer<Float>) -> Int32 {
        var best = 0, bv = -Float.infinity
        for i in 0..<z.count where z[i] > bv { bv = z[i]; best = i }
        return Int32(best)
    }

    /// Picks the next token from `logits` (vocab values); greedy when temperature is 0.
    /// Otherwise, as transformers' sampling: p ∝ exp((z − max z) / temperature), then top-k,
    /// then top-p over what top-k kept, then one draw from the renormalized rest.
    public mutating func sample(_ logits: UnsafeBufferPointer<Float>) -> Int32 {
        let n = logits.count
        if options.temperature == 0 || n == 1 { return Sampler.argmax(logits) }
        let best = Sampler.argmax(logits)
        let mx = logits[Int(best)]
        guard mx.isFinite else { return best }
        let invT = 1 / options.temperature
        if probs.count != n { probs = [Float](repeating: 0, count: n) }
        var sum = 0.0
        for i in 0..<n {
            let e = Float(exp(Double((logits[i] - mx) * invT)))
            probs[i] = e.isFinite ? e : 0      // NaN logits never win
            sum += Double(probs[i])
        }
        let k = options.topK > 0 ? min(options.topK, n) : n
        if k == n && options.topP >= 1 { return draw(count: n, total: sum) { Int32($0) } }
        // The kept tokens are a prefix of the descending order: sort only the candidates with
        // p ≥ 1e-4·p_max when they provably contain that prefix, else everything.
        order.removeAll(keepingCapacity: true)
        var sumS = 0.0
        for i in 0..<n where probs[i] >= 1e-4 {
            order.append(Int32(i)); sumS += Double(probs[i])
        }
        let enough = options.topK > 0 ? order.count >= k : sumS >= Double(options.topP) * sum
        if !enough { order = (0..<n).filter { probs[$0] > 0 }.map { Int32($0) } }
        order.sort { (a, b) in
            let x = logits[Int(a)], y = logits[Int(b)]
            return x > y || (x == y && a < b)
        }
        let kk = min(k, order.count)
        var total = 0.0
        if options.topK > 0 { for i in 0..<kk { total += Double(probs[Int(order[i])]) } } else { total = sum }
        var keep = kk
        if options.topP < 1 {
            let target = Double(options.topP) * total
            var c = 0.0
            for i in 0..<kk {
                c += Double(probs[Int(order[i])])
                if c >= target { keep = i + 1; break }
            }
        }
        var kept = 0.0
        for i in 0..<keep { kept += Double(probs[Int(order[i])]) }
        let ord = order
        return draw(count: keep, total: kept) { ord[$0] }
    }

    /// One draw among ids(0..<count) with weights probs[id], summing to `total`.
    mutating func draw(count: Int, total: Double, _ id: (Int) -> Int32) -> Int32 {
        let u = Double(rng.next() >> 11) * (1.0 / 9_007_199_254_740_992.0) * total
        var c = 0.0
        var last: Int32 = id(0)
        for i in 0..<count {
            let t = id(i)
            let p = Double(probs[Int(t)])
            if p > 0 { last = t }
            c += p
            if u < c { return t }
        }
        return last
    }
}

extension LlamaModel {
    /// A KV cache for one sequence of up to `capacity` positions (≤ maxPositions).
    public func makeKVCache(capacity: Int) throws(PSTError) -> LlamaKVCache {
        try LlamaKVCache(model: self, capacity: capacity)
    }

    /// Feeds `ids` (one sequence, ≥ 1 token) at positions cache.count..<cache.count+ids.count
    /// — the prompt at once (prefill, projections through the GEMM) or one token (decode, M = 1)
    /// — appending their keys/values to `cache`, and writes the logits of the last position
    /// (vocab values) to `lastLogits`. Uses the current active adapters in eval mode (no
    /// dropout; `training` is restored after). Drops a pending backward.
    public func forwardCached(ids: UnsafeBufferPointer<Int32>, cache: LlamaKVCache,
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
        let ws = cache.ws!, p0 = cache.count, half = c.headDim / 2
        let x = ws.x.baseAddress, e = embedding.baseAddress
        for i in 0..<T { (x + i * H).update(from: e + Int(ids[i]) * H, count: H) }
        func rows(_ b: AlignedBuffer<Float>, _ width: Int) -> UnsafeMutableBufferPointer<Float> {
            UnsafeMutableBufferPointer(start: b.baseAddress, count: T * width)
        }
        let cosP = cache.cos.baseAddress + p0 * half, sinP = cache.sin.baseAddress + p0 * half
        for l in layers {
            let kc = cache.keys[l.index].baseAddress, vc = cache.values[l.index].baseAddress
            let kNew = UnsafeMutableBufferPointer(start: kc + p0 * c.kvWidth, count: T * c.kvWidth)
            let vNew = UnsafeMutableBufferPointer(start: vc + p0 * c.kvWidth, count: T * c.kvWidth)
            LlamaKernels.rmsNorm(x, l.inputNorm.baseAddress, ws.normed.baseAddress, rstd: ws.rstd.baseAddress,
                                 rows: T, n: H, eps: c.rmsEps)
            let n = UnsafeBufferPointer(rows(ws.normed, H))
            try l.qProj.forward(n, m: T, rows(ws.q, c.qWidth))
            try l.kProj.forward(n, m: T, kNew)
            try l.vProj.forward(n, m: T, vNew)
            LlamaKernels.rope(ws.q.baseAddress, rows: T, seqLen: T, heads: c.heads, headDim: c.headDim,
                              cos: cosP, sin: sinP, inverse: false)
            LlamaKernels.rope(kNew.baseAddress!, rows: T, seqLen: T, heads: c.kvHeads, headDim: c.headDim,
                              cos: cosP, sin: sinP, inverse: false)
            LlamaAttention.cachedForward(heads: c.heads, kvHeads: c.kvHeads, headDim: c.headDim, rows: T, p0: p0,
                                         q: ws.q.baseAddress, k: kc, v: vc, out: ws.attn.baseAddress,
                                         scores: cache.scores.baseAddress,
                                         scoreStride: min(AttentionShape.blockRows, cache.capacity) * cache.capacity,
                                         threads: cache.scoreThreads)
            try l.oProj.forward(UnsafeBufferPointer(rows(ws.attn, c.qWidth)), m: T, rows(ws.tmpH, H))
            addVectors(x, ws.tmpH.baseAddress, x, T * H)
            LlamaKernels.rmsNorm(x, l.postAttentionNorm.baseAddress, ws.normed.baseAddress, rstd: ws.rstd.baseAddress,
                                 rows: T, n: H, eps: c.rmsEps)
            try l.gateProj.forward(n, m: T, rows(ws.gate, c.intermediate))
            try l.upProj.forward(n, m: T, rows(ws.up, c.intermediate))
            LlamaKernels.swiglu(ws.gate.baseAddress, ws.up.baseAddress, ws.act.baseAddress, count: T * c.intermediate)
            try l.downProj.forward(UnsafeBufferPointer(rows(ws.act, c.intermediate)), m: T, rows(ws.tmpH, H))
            addVectors(x, ws.tmpH.baseAddress, x, T * H)
        }
        cache.count = p0 + T
        // final norm and LM head on the last position only (a GEMV over vocab × H)
        let last = x + (T - 1) * H
        LlamaKernels.rmsNorm(last, finalNorm.baseAddress, ws.normed.baseAddress, rstd: ws.rstd.baseAddress,
                             rows: 1, n: H, eps: c.rmsEps)
        GEMM.sgemm(transA: false, transB: true, m: 1, n: c.vocab, k: H, alpha: 1, a: ws.normed.baseAddress, lda: H,
                   b: headWeight, ldb: H, beta: 0, c: lastLogits.baseAddress!, ldc: c.vocab)
    }

    /// `forwardCached(ids:cache:lastLogits:)` on arrays: returns the last position's logits.
    public func forwardCached(ids: [Int32], cache: LlamaKVCache) throws(PSTError) -> [Float] {
        var out = [Float](repeating: 0, count: config.vocab)
        try ids.withUnsafeBufferPointer { (ip) throws(PSTError) in
            try out.withUnsafeMutableBufferPointer { (op) throws(PSTError) in
                try forwardCached(ids: ip, cache: cache, lastLogits: op)
            }
        }
        return out
    }

    /// Runs `body` with every projection's active set emptied (merged adapters cannot be taken
    /// out: `PST_ERR_MISUSE`), restoring the active sets afterwards, also on error.
    public func withAdaptersDisabled<R>(_ body: () throws(PSTError) -> R) throws(PSTError) -> R {
        let mods = loraModules
        for (path, lin) in mods {
            if let a = lin.adapters.first(where: { $0.merged }) {
                throw .misuse("adapter \"\(a.name)\" is merged into \(path); unmerge it to generate without adapters")
            }
        }
        let saved = mods.map { $0.layer.active }
        for (_, lin) in mods { lin.disableAdapters() }
        defer {
            for (i, (_, lin)) in mods.enumerated() { lin.active = saved[i]; lin.invalidateCache() }
        }
        return try body()
    }

    /// Generates up to `options.maxNewTokens` tokens after `prompt` (one sequence): prefill
    /// of the prompt, then one decode step per token over a KV cache, picking each token per
    /// `options` (greedy or seeded sampling). Stops after a stop id, at maxNewTokens, or when
    /// `onToken` (called with each new id, e.g. to stream text) returns false. The positions
    /// fed, prompt.count + maxNewTokens − 1, must fit in maxPositions.
    public func generate(prompt: [Int32], options: GenerationOptions = GenerationOptions(),
                         onToken: ((Int32) -> Bool)? = nil) throws(PSTError) -> GenerationResult {
        try options.validate(vocab: config.vocab)
        guard !prompt.isEmpty else { throw .invalidArgument("the prompt is empty") }
        for (i, t) in prompt.enumerated() where t < 0 || Int(t) >= config.vocab {
            throw .invalidArgument("prompt[\(i)] (\(t)) is out of range 0..<\(config.vocab)")
        }
        let fed = prompt.count + max(options.maxNewTokens, 1) - 1
        guard fed <= config.maxPositions else {
            throw .invalidArgument("prompt (\(prompt.count) tokens) + max_new_tokens (\(options.maxNewTokens)) exceeds the context (max_positions \(config.maxPositions))")
        }
        if options.maxNewTokens == 0 { return GenerationResult(tokens: [], stopReason: .maxNewTokens) }
        if options.disableAdapters {
            return try withAdaptersDisabled { () throws(PSTError) -> GenerationResult in
                try generateCore(prompt: prompt, options: options, capacity: fed, onToken: onToken)
            }
        }
        return try generateCore(prompt: prompt, options: options, capacity: fed, onToken: onToken)
    }

    func generateCore(prompt: [Int32], options: GenerationOptions, capacity: Int,
                      onToken: ((Int32) -> Bool)?) throws(PSTError) -> GenerationResult {
        let cache = try makeKVCache(capacity: capacity)
        var sampler = Sampler(options: options)
        var logits = [Float](repeating: 0, count: config.vocab)
        var out: [Int32] = []
        let stops = Set(options.stopIDs)
        try prompt.withUnsafeBufferPointer { (ip) throws(PSTError) in
            try logits.withUnsafeMutableBufferPointer { (lp) throws(PSTError) in
                try forwardCached(ids: ip, cache: cache, lastLogits: lp)
            }
        }
        while true {
            let t = logits.withUnsafeBufferPointer { sampler.sample($0) }
            out.append(t)
            if let onToken, !onToken(t) { return GenerationResult(tokens: out, stopReason: .callback) }
            if stops.contains(t) { return GenerationResult(tokens: out, stopReason: .stopToken) }
            if out.count >= options.maxNewTokens { return GenerationResult(tokens: out, stopReason: .maxNewTokens) }
            var one = t
            try withUnsafePointer(to: &one) { (p) throws(PSTError) in
                try logits.withUnsafeMutableBufferPointer { (lp) throws(PSTError) in
                    try forwardCached(ids: UnsafeBufferPointer(start: p, count: 1), cache: cache, lastLogits: lp)
                }
            }
        }
    }
}
