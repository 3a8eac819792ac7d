/// The key/value cache of one sequence for incremental decoding: per layer, the keys (after
/// RoPE) and values of every position fed so far, `capacity` × (Hkv·d) row-major each, the RoPE
/// tables of its positions, and the scratch a cached forward needs. Made by
/// `LanguageModel.makeKVCache(capacity:)` and usable only with that model. Its contents are the
/// K/V of the adapters active when they were computed: changing adapters (or their weights)
/// makes them stale (call `reset()`).
public final class KVCache {
    /// Positions the cache can hold (≤ the model's maxPositions).
    public let capacity: Int
    /// Positions fed so far (the next token goes to position `count`).
    public internal(set) var count = 0
    let owner: ObjectIdentifier
    let keys: [AlignedBuffer<Float>]     // per layer: capacity × kvWidth
    let values: [AlignedBuffer<Float>]
    /// RoPE tables for positions 0..<capacity (capacity × d/2 each).
    let cos: AlignedBuffer<Float>
    let sin: AlignedBuffer<Float>
    /// Attention scores scratch: per thread, blockRows × capacity.
    let scores: AlignedBuffer<Float>
    let scoreThreads: Int
    var ws: DecodeWorkspace? = nil
    /// Per-thread scratch of the one-token decode step (LanguageModel+DecodeStep.swift).
    var stepScratch: DecodeStepScratch? = nil

    init(model: LanguageModel, capacity: Int) throws(PSTError) {
        let c = model.config
        guard capacity >= 1 else { throw .invalidArgument("KV cache capacity (\(capacity)) must be >= 1") }
        guard capacity <= c.maxPositions else {
            throw .invalidArgument("KV cache capacity (\(capacity)) exceeds the context (max_positions \(c.maxPositions))")
        }
        self.capacity = capacity
        owner = ObjectIdentifier(model)
        var k: [AlignedBuffer<Float>] = [], v: [AlignedBuffer<Float>] = []
        for _ in 0..<c.layers {
            k.append(try AlignedBuffer(count: capacity * c.kvWidth))
            v.append(try AlignedBuffer(count: capacity * c.kvWidth))
        }
        keys = k
        values = v
        cos = try AlignedBuffer(count: capacity * c.headDim / 2)
        sin = try AlignedBuffer(count: capacity * c.headDim / 2)
        DecoderKernels.ropeTables(invFreq: model.ropeInverseFrequencies, positions: capacity,
                                  cos: cos.baseAddress, sin: sin.baseAddress)
        scoreThreads = max(1, min(Threads.count, c.heads))
        scores = try AlignedBuffer(count: scoreThreads * min(AttentionShape.blockRows, capacity) * capacity)
    }

    /// Forgets every position (the buffers stay allocated).
    public func reset() { count = 0 }

    /// Bytes held by the keys and values.
    public var byteCount: Int { keys.reduce(0) { $0 + $1.byteCount } * 2 }

    /// Layer l's attention over the cache: T new tokens at positions count..<count+T, their
    /// keys/values written into the cache, the scores discarded.
    func attention(layer l: Int, newTokens t: Int) -> AttentionContext {
        AttentionContext(batch: 1, seqLen: t, past: count, keys: keys[l].baseAddress, values: values[l].baseAddress,
                         kvRows: capacity, cos: cos.baseAddress, sin: sin.baseAddress,
                         scores: .scratch(scores.baseAddress, stride: min(AttentionShape.blockRows, capacity) * capacity,
                                          threads: scoreThreads))
    }
}

/// The buffers of a cached forward over up to `rows` new tokens: the residual stream, one
/// layer's activations (reused by every layer; no attention state: that is in the cache) and
/// the forward's scratch.
final class DecodeWorkspace {
    let rows: Int
    let x: AlignedBuffer<Float>       // rows × H (residual stream)
    let acts: LayerActivations
    let scratch: LayerScratch

    init(_ c: ModelConfig, rows: Int) throws(PSTError) {
        self.rows = rows
        x = try AlignedBuffer(count: rows * c.hidden)
        acts = try LayerActivations(c, batch: 1, seqLen: rows, keepsAttention: false)
        scratch = try LayerScratch(c, rows: rows)
    }
}
