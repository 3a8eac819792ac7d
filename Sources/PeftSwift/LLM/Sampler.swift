#if canImport(Glibc)
import Glibc
#endif

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
