// Branch-free AVX2 ranks of 8 floats at once among sorted thresholds: the nearest-code search
// of the 4-bit and 8-bit quantizers. Both compute r = #{k : v > m_k} over non-decreasing
// float32 midpoints m_k (the rule of Quant4.swift and Blockwise8.swift; a value exactly on a
// midpoint goes to the lower code), the same count their reference twins take one compare at
// a time.
import _Builtin_intrinsics.intel

/// t[i[lane]] for an 8-entry float table in one register (`vpermps`, index bits 0-2).
@inline(__always) func _permute8(_ t: SIMD8<Float>, _ i: SIMD8<Int32>) -> SIMD8<Float> {
    _mm256_permutevar8x32_ps(t, unsafeBitCast(i, to: __m256i.self))
}

/// -1 where v > t, 0 elsewhere (`vcmpps`).
@inline(__always) func _greater(_ v: SIMD8<Float>, _ t: SIMD8<Float>) -> SIMD8<Int32> {
    unsafeBitCast(v .> t, to: SIMD8<Int32>.self)
}

/// The rank of 8 floats among 15 non-decreasing thresholds S_0...S_14: #{k : v > S_k}, 0...15.
///
/// A binary search of 4 levels whose thresholds live in registers: with S_15 = +inf, the rank
/// is >= 8 iff v > S_7; then >= base + 4 iff v > S_(base+3); and so on. Level by level the
/// candidate thresholds are S_7; {S_3, S_11}; {S_1, S_5, S_9, S_13}; {S_0, S_2, ..., S_14},
/// each picked per lane by a `vpermps` on the bits found so far. Because the thresholds are
/// non-decreasing, each answer fixes a prefix of the count exactly, so the result equals the
/// linear count (no tolerance: the same float compares, fewer of them). 14 instructions per
/// 8 values instead of 30 for 15 compares and subtractions.
struct Rank16 {
    let t1: SIMD8<Float>, t2: SIMD8<Float>, t3: SIMD8<Float>, t4: SIMD8<Float>

    /// `s`: the 15 thresholds, non-decreasing.
    init(_ s: [Float]) {
        precondition(s.count == 15)
        t1 = SIMD8(repeating: s[7])
        t2 = SIMD8(s[3], s[11], s[3], s[11], s[3], s[11], s[3], s[11])
        t3 = SIMD8(s[1], s[5], s[9], s[13], s[1], s[5], s[9], s[13])
        t4 = SIMD8(s[0], s[2], s[4], s[6], s[8], s[10], s[12], s[14])
    }

    @inline(__always) func callAsFunction(_ v: SIMD8<Float>) -> SIMD8<Int32> {
        let i1 = SIMD8<Int32>() &- _greater(v, t1)                       // 0...1
        let i2 = i1 &+ i1 &- _greater(v, _permute8(t2, i1))               // 0...3
        let i3 = i2 &+ i2 &- _greater(v, _permute8(t3, i2))               // 0...7
        return i3 &+ i3 &- _greater(v, _permute8(t4, i3))                 // 0...15
    }
}

/// The rank of 8 floats among 255 non-decreasing midpoints m_0...m_254 of a 256-entry map:
/// #{k : v > m_k}, 0...255 (the 8-bit index of Blockwise8).
///
/// Two levels of 16: the high nibble h = #{j : v > m_(16j+15)} (Rank16 over every 16th
/// midpoint), then the low nibble = #{p < 15 : v > m_(16h+p)}, 15 compares against per-lane
/// thresholds read from 16-entry tables indexed by h (`vpermps` from each half of the table;
/// no gathers, no branches). Exact for non-decreasing midpoints: h counts a prefix of the
/// separators, so every m_k with k < 16h is below v and every m_k with k >= 16h+15 is not;
/// the 15 in between are compared one by one.
struct Rank256 {
    let high: Rank16
    /// low[p] = (m_p, m_(16+p), ..., m_(112+p)) and (m_(128+p), ..., m_(240+p)): 15 pairs.
    let low: [(SIMD8<Float>, SIMD8<Float>)]

    /// `m`: at least 255 non-decreasing midpoints (a 256th, +inf, is ignored).
    init(midpoints m: [Float]) {
        precondition(m.count >= 255)
        high = Rank16((0..<15).map { m[16 * $0 + 15] })
        low = (0..<15).map { p in
            (SIMD8<Float>((0..<8).map { m[16 * $0 + p] }), SIMD8<Float>((8..<16).map { m[16 * $0 + p] }))
        }
    }

    @inline(__always) func callAsFunction(_ v: SIMD8<Float>) -> SIMD8<Int32> {
        let h = high(v)
        // count against both halves' thresholds (vpermps reads bits 0-2 of h) and keep the
        // count of the half that bit 3 of h names: one blend instead of one per threshold
        var cLo = SIMD8<Int32>(), cHi = SIMD8<Int32>()
        low.withUnsafeBufferPointer { t in
            for p in 0..<15 {
                cLo &-= _greater(v, _permute8(t[p].0, h))
                cHi &-= _greater(v, _permute8(t[p].1, h))
            }
        }
        let c = _mm256_blendv_ps(unsafeBitCast(cLo, to: SIMD8<Float>.self), unsafeBitCast(cHi, to: SIMD8<Float>.self),
                                 unsafeBitCast(h &<< 28, to: SIMD8<Float>.self))   // sign bit = bit 3 of h
        return (h &<< 4) &+ unsafeBitCast(c, to: SIMD8<Int32>.self)
    }
}
