/// The key/value cache of one sequence for incremental decoding: per layer, the keys (after
/// RoPE) and values of every position fed so far, `capacity` × (Hkv·d) row-major each, plus the
/// scratch a cached forward needs. Made by `LlamaModel.makeKVCache(capacity:)` and usable only
/// with that model. Its contents are the K/V of the adapters active when they were computed:
/// changing adapters (or their weights) makes them stale (call `reset()`).
public final class LlamaKVCache {
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

    init(model: LlamaModel, capacity: Int) throws(PSTError) {
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
        LlamaKernels.ropeTables(invFreq: model.ropeInverseFrequencies, positions: capacity,
                                cos: cos.baseAddress, sin: sin.baseAddress)
        scoreThreads = max(1, min(Threads.count, c.heads))
        scores = try AlignedBuffer(count: scoreThreads * min(AttentionShape.blockRows, capacity) * capacity)
    }

    /// Forgets every position (the buffers stay allocated).
    public func reset() { count = 0 }

    /// Bytes held by the keys and values.
    public var byteCount: Int { keys.reduce(0) { $0 + $1.byteCount } * 2 }
}

/// Scratch for a cached forward over up to `rows` new tokens.
final class DecodeWorkspace {
    let rows: Int
    let x: AlignedBuffer<Float>       // rows × H (residual stream)
    let normed: AlignedBuffer<Float>  // rows × H
    let q: AlignedBuffer<Float>       // rows × Hq·d
    let attn: AlignedBuffer<Float>    // rows × Hq·d
    let tmpH: AlignedBuffer<Float>    // rows × H
    let gate: AlignedBuffer<Float>    // rows × I
    let up: AlignedBuffer<Float>      // rows × I
    let act: AlignedBuffer<Float>     // rows × I
    let rstd: AlignedBuffer<Float>    // rows

    init(_ c: LlamaHyperparameters, rows: Int) throws(PSTError) {
        self.rows = rows
        x = try AlignedBuffer(count: rows * c.hidden)
        normed = try AlignedBuffer(count: rows * c.hidden)
        q = try AlignedBuffer(count: rows * c.qWidth)
        attn = try AlignedBuffer(count: rows * c.qWidth)
        tmpH = try AlignedBuffer(count: rows * c.hidden)
        gate = try AlignedBuffer(count: rows * c.intermediate)
        up = try AlignedBuffer(count: rows * c.intermediate)
        act = try AlignedBuffer(count: rows * c.intermediate)
        rstd = try AlignedBuffer(count: rows)
    }
}

extension LlamaAttention {
    /// Causal GQA attention of `rows` new queries at positions p0..<p0+rows over the cached
    /// keys/values 0..<p0+rows (row i sees keys 0...p0+i), as `forward` computes it:
    /// S = scale·Q_h K_gᵀ, softmax per row, O_h = P V_g. q / out: rows × (Hq·d); k / v:
    /// positions × (Hkv·d). Heads in parallel; row blocks through the GEMM.
    static func cachedForward(heads: Int, kvHeads: Int, headDim d: Int, rows T: Int, p0: Int,
                              q: UnsafePointer<Float>, k: UnsafePointer<Float>, v: UnsafePointer<Float>,
                              out: UnsafeMutablePointer<Float>, scores: UnsafeMutablePointer<Float>,
                              scoreStride: Int, threads: Int) {
        let qW = heads * d, kW = kvHeads * d, rep = heads / kvHeads, scale = 1 / Float(d).squareRoot()
        parallelIndexed(heads, chunks: min(threads, heads)) { chunk, lo, hi in
            let sb = scores + chunk * scoreStride
            for h in lo..<hi {
                let g = h / rep
                let qb = q + h * d, kb = k + g * d, vb = v + g * d, ob = out + h * d
                var r0 = 0
                while r0 < T {
                    let r1 = min(T, r0 + AttentionShape.blockRows), rb = r1 - r0, n = p0 + r1
                    GEMM.sgemmSerial(transA: false, transB: true, m: rb, n: n, k: d, alpha: scale,
                                     a: qb + r0 * qW, lda: qW, b: kb, ldb: kW, beta: 0, c: sb, ldc: n)
                    for i in r0..<r1 {
                        let row = sb + (i - r0) * n, valid = p0 + i + 1
                        LlamaKernels.softmaxRow(row, valid)
                        if valid < n { (row + valid).update(repeating: 0, count: n - valid) }
                    }
                    GEMM.sgemmSerial(transA: false, transB: false, m: rb, n: d, k: n, alpha: 1,
                                     a: sb, lda: n, b: vb, ldb: kW, beta: 0, c: ob + r0 * qW, ldc: qW)
                    r0 = r1
                }
            }
        }
    }
}
