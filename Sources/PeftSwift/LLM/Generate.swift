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

/// How `LanguageModel.generate` picks tokens.
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

extension GenerationOptions {
    /// The ids a chat model ends its turn with, as generation stops on them by default
    /// (pst_generate_params.stop_at_eos): the tokenizer's EOS and ChatML's `<|im_end|>`, those
    /// the vocabulary has.
    public static func defaultStopIDs(_ tokenizer: BPETokenizer) -> [Int32] {
        var ids: [Int32] = []
        if let e = tokenizer.eosID { ids.append(e) }
        if let e = tokenizer.tokenID("<|im_end|>") { ids.append(e) }
        return ids
    }
}

extension LanguageModel {
    /// Generates up to `options.maxNewTokens` tokens after `prompt` (one sequence): prefill
    /// of the prompt, then one decode step per token over a KV cache, picking each token per
    /// `options` (greedy or seeded sampling). Stops after a stop id, at maxNewTokens, or when
    /// `onToken` (called with each new id, e.g. to stream text) returns false. The positions
    /// fed, prompt.count + maxNewTokens − 1, must fit in maxPositions. Runs in evaluation mode
    /// (no dropout; `training` is restored after).
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
        let wasTraining = training
        if wasTraining { training = false }
        defer { if wasTraining { training = true } }
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
