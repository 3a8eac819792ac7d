// Conversions between float32 and the 16-bit float types, with PyTorch's semantics:
// upcasts are exact; downcasts round to nearest, ties to even (torch's `.to(torch.bfloat16)`
// / `.to(torch.float16)`; for bf16 torch's `round_to_nearest_even` in c10/util/BFloat16.h:
// `(bits + 0x7FFF + ((bits >> 16) & 1)) >> 16`, NaN -> 0x7FC0).

@inline(__always) func bf16ToFloat(_ h: UInt16) -> Float { Float(bitPattern: UInt32(h) << 16) }

@inline(__always) func floatToBF16(_ f: Float) -> UInt16 {
    if f.isNaN { return 0x7FC0 }
    let u = f.bitPattern
    return UInt16(truncatingIfNeeded: (u &+ 0x7FFF &+ ((u >> 16) & 1)) >> 16)
}

@inline(__always) func f16ToFloat(_ h: UInt16) -> Float { Float(Float16(bitPattern: h)) }
@inline(__always) func floatToF16(_ f: Float) -> UInt16 { Float16(f).bitPattern }

/// 8 bf16 values (raw bits) -> 8 floats, exact.
@inline(__always) func bf16x8ToFloat(_ p: UnsafePointer<UInt16>) -> SIMD8<Float> {
    let h = UnsafeRawPointer(p).loadUnaligned(as: SIMD8<UInt16>.self)
    return unsafeBitCast(SIMD8<UInt32>(truncatingIfNeeded: h) &<< 16, to: SIMD8<Float>.self)
}

/// 8 floats -> 8 bf16 (raw bits), round to nearest even; NaN -> 0x7FC0.
@inline(__always) func floatx8ToBF16(_ v: SIMD8<Float>, _ p: UnsafeMutablePointer<UInt16>) {
    let u = unsafeBitCast(v, to: SIMD8<UInt32>.self)
    var r = (u &+ 0x7FFF &+ ((u &>> 16) & 1)) &>> 16
    r.replace(with: 0x7FC0, where: v .!= v)
    UnsafeMutableRawPointer(p).storeBytes(of: SIMD8<UInt16>(truncatingIfNeeded: r), as: SIMD8<UInt16>.self)
}

/// 8 fp16 values (raw bits) -> 8 floats, exact (F16C).
@inline(__always) func f16x8ToFloat(_ p: UnsafePointer<UInt16>) -> SIMD8<Float> {
    SIMD8<Float>(UnsafeRawPointer(p).loadUnaligned(as: SIMD8<Float16>.self))
}

/// 8 floats -> 8 fp16 (raw bits), round to nearest even.
@inline(__always) func floatx8ToF16(_ v: SIMD8<Float>, _ p: UnsafeMutablePointer<UInt16>) {
    UnsafeMutableRawPointer(p).storeBytes(of: SIMD8<Float16>(v), as: SIMD8<Float16>.self)
}

/// Element `i` of a float32/float16/bfloat16 array, widened exactly to float32.
@inline(__always) func loadFloat(_ x: UnsafeRawPointer, _ dtype: DType, _ i: Int) -> Float {
    switch dtype {
    case .f16: return f16ToFloat(x.load(fromByteOffset: 2 * i, as: UInt16.self))
    case .bf16: return bf16ToFloat(x.load(fromByteOffset: 2 * i, as: UInt16.self))
    default: return x.load(fromByteOffset: 4 * i, as: Float.self)
    }
}

/// Stores `v` as element `i` of a float32/float16/bfloat16 array (rounding to nearest even).
@inline(__always) func storeFloat(_ v: Float, _ out: UnsafeMutableRawPointer, _ dtype: DType, _ i: Int) {
    switch dtype {
    case .f16: out.storeBytes(of: floatToF16(v), toByteOffset: 2 * i, as: UInt16.self)
    case .bf16: out.storeBytes(of: floatToBF16(v), toByteOffset: 2 * i, as: UInt16.self)
    default: out.storeBytes(of: v, toByteOffset: 4 * i, as: Float.self)
    }
}

/// Widens `n` elements starting at element `start` of `x` to float32 in `out`.
@inline(__always) func widen(_ x: UnsafeRawPointer, _ dtype: DType, start: Int, count n: Int, into out: UnsafeMutablePointer<Float>) {
    switch dtype {
    case .f32:
        out.update(from: x.assumingMemoryBound(to: Float.self) + start, count: n)
    case .bf16, .f16:
        let h = x.assumingMemoryBound(to: UInt16.self) + start
        var i = 0
        if dtype == .bf16 {
            while i + 8 <= n { store8(out + i, bf16x8ToFloat(h + i)); i += 8 }
            while i < n { out[i] = bf16ToFloat(h[i]); i += 1 }
        } else {
            while i + 8 <= n { store8(out + i, f16x8ToFloat(h + i)); i += 8 }
            while i < n { out[i] = f16ToFloat(h[i]); i += 1 }
        }
    default:
        break
    }
}

/// Narrows `n` float32 values to element `start...` of `out` (f32/f16/bf16, nearest even).
@inline(__always) func narrow(_ x: UnsafePointer<Float>, count n: Int, into out: UnsafeMutableRawPointer, _ dtype: DType, start: Int) {
    switch dtype {
    case .f32:
        (out.assumingMemoryBound(to: Float.self) + start).update(from: x, count: n)
    case .bf16, .f16:
        let h = out.assumingMemoryBound(to: UInt16.self) + start
        var i = 0
        if dtype == .bf16 {
            while i + 8 <= n { floatx8ToBF16(load8(x + i), h + i); i += 8 }
            while i < n { h[i] = floatToBF16(x[i]); i += 1 }
        } else {
            while i + 8 <= n { floatx8ToF16(load8(x + i), h + i); i += 8 }
            while i < n { h[i] = floatToF16(x[i]); i += 1 }
        }
    default:
        break
    }
}

/// The first index in `0..<n` whose value is NaN or ±Inf, or nil. Float32/16/bf16.
/// Vectorized and parallel; the answer is the smallest bad index whatever the thread count.
func firstNonFinite(_ x: UnsafeRawPointer, _ dtype: DType, count n: Int) -> Int? {
    // A value is non-finite when its exponent bits are all ones.
    let chunk = 1 << 16
    let nChunks = (n + chunk - 1) / chunk
    var firstBadChunk = Int.max
    withUnsafeMutablePointer(to: &firstBadChunk) { fb in
        let bad = UnsafeMutablePointer<UInt8>.allocate(capacity: max(nChunks, 1))
        defer { bad.deallocate() }
        bad.initialize(repeating: 0, count: max(nChunks, 1))
        parallelChunks(nChunks) { lo, hi in
            for c in lo..<hi {
                let s = c * chunk, e = min(n, s + chunk)
                var any = false
                // Max of the exponent fields (an unsigned max reduction, auto-vectorized):
                // all ones means NaN or ±Inf somewhere in the chunk.
                if dtype == .f32 {
                    let p = x.assumingMemoryBound(to: UInt32.self)
                    var m: UInt32 = 0
                    for i in s..<e { m = Swift.max(m, p[i] & 0x7F80_0000) }
                    any = m == 0x7F80_0000
                } else {
                    let p = x.assumingMemoryBound(to: UInt16.self)
                    let mask: UInt16 = dtype == .bf16 ? 0x7F80 : 0x7C00
                    var m: UInt16 = 0
                    for i in s..<e { m = Swift.max(m, p[i] & mask) }
                    any = m == mask
                }
                if any { bad[c] = 1 }
            }
        }
        for c in 0..<nChunks where bad[c] != 0 { fb.pointee = c; break }
    }
    guard firstBadChunk != Int.max else { return nil }
    let s = firstBadChunk * chunk, e = min(n, s + chunk)
    for i in s..<e where !loadFloat(x, dtype, i).isFinite { return i }
    return nil
}

/// "NaN" / "inf" / "-inf" for error messages.
func nonFiniteName(_ v: Float) -> String { v.isNaN ? "NaN" : (v > 0 ? "inf" : "-inf") }
