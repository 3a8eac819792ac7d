// The reference twin of TorchMean's summation: torch's cascade sum written as torch writes it
// (arrays of accumulators, one generic level loop), kept as the specification the register
// version in TorchMean.swift is tested against, bit for bit.

extension TorchMean {
    /// `sum` with the reference inner sum.
    public static func sumReference(_ x: UnsafePointer<Float>, count n: Int, threads: Int = TorchMean.threads) -> Float {
        chunkedSum(x, count: n, threads: threads, innerSumReference)
    }

    /// multi_row_sum: `rows` rows of 4 accumulators (row r, accumulator k = load(r, k)).
    @inline(__always)
    static func multiRowSum<V>(rows: Int, zero: V, _ add: (V, V) -> V, _ load: (Int, Int) -> V) -> (V, V, V, V) {
        let levels = 4
        let power = Swift.max(4, ceilLog2(rows) / levels)
        let step = 1 << power
        let mask = step - 1
        var acc = [[V]](repeating: [V](repeating: zero, count: 4), count: levels)
        var i = 0
        while i + step <= rows {
            for _ in 0..<step {
                for k in 0..<4 { acc[0][k] = add(acc[0][k], load(i, k)) }
                i += 1
            }
            for j in 1..<levels {
                for k in 0..<4 { acc[j][k] = add(acc[j][k], acc[j - 1][k]); acc[j - 1][k] = zero }
                if i & (mask << (j * power)) != 0 { break }
            }
        }
        while i < rows {
            for k in 0..<4 { acc[0][k] = add(acc[0][k], load(i, k)) }
            i += 1
        }
        for j in 1..<levels { for k in 0..<4 { acc[0][k] = add(acc[0][k], acc[j][k]) } }
        return (acc[0][0], acc[0][1], acc[0][2], acc[0][3])
    }

    /// vectorized_inner_sum (n >= 8) / scalar row_sum (n < 8) of one contiguous row.
    static func innerSumReference(_ x: UnsafePointer<Float>, _ n: Int) -> Float {
        if n < 8 {
            let rows = n / 4
            var p = multiRowSum(rows: rows, zero: Float(0), { $0 + $1 }) { r, k in x[4 * r + k] }
            for i in (rows * 4)..<n { p.0 = p.0 + x[i] }
            return ((p.0 + p.1) + p.2) + p.3
        }
        let vecs = n / 8
        let rows = vecs / 4
        let v: (Int) -> SIMD8<Float> = { load8(x + 8 * $0) }
        var p = multiRowSum(rows: rows, zero: SIMD8<Float>(), { $0 + $1 }) { r, k in v(4 * r + k) }
        for k in (rows * 4)..<vecs { p.0 = p.0 + v(k) }
        let s = ((p.0 + p.1) + p.2) + p.3
        var acc: Float = 0
        for i in (vecs * 8)..<n { acc = acc + x[i] }
        for l in 0..<8 { acc = acc + s[l] }
        return acc
    }
}
