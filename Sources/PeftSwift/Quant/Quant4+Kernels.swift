// Fast AVX2 kernels of 4-bit quantization. The rules are in Quant4.swift; the plain twins in
// Quant4+Reference.swift are the specification these are tested against, bit for bit.
import _Builtin_intrinsics.intel
import Synchronization

/// Nibble shifts that turn a little-endian 4-byte word into the 8 codes in element order
/// (element 2j is the HIGH nibble of byte j).
@usableFromInline let _nibbleShifts = SIMD8<UInt32>(4, 0, 12, 8, 20, 16, 28, 24)

/// 8 codes (element order) of the 4 packed bytes at `p`.
@inline(__always) func _nibbles8(_ p: UnsafePointer<UInt8>) -> SIMD8<UInt32> {
    let w = UnsafeRawPointer(p).loadUnaligned(as: UInt32.self)
    return (SIMD8<UInt32>(repeating: w) &>> _nibbleShifts) & 15
}

/// table[idx] for a 16-entry float table held as two registers (lo = entries 0...7,
/// hi = 8...15): two `vpermps` and a `vblendvps` on bit 3 of the index.
@inline(__always) func _lookup16(_ lo: SIMD8<Float>, _ hi: SIMD8<Float>, _ idx: SIMD8<UInt32>) -> SIMD8<Float> {
    let i = unsafeBitCast(idx, to: __m256i.self)
    let a = _mm256_permutevar8x32_ps(lo, i)
    let b = _mm256_permutevar8x32_ps(hi, i)
    return _mm256_blendv_ps(a, b, unsafeBitCast(idx &<< 28, to: SIMD8<Float>.self))
}

/// Same for 16 Int32 entries.
@inline(__always) func _lookup16(_ lo: SIMD8<Int32>, _ hi: SIMD8<Int32>, _ idx: SIMD8<Int32>) -> SIMD8<Int32> {
    unsafeBitCast(_lookup16(unsafeBitCast(lo, to: SIMD8<Float>.self), unsafeBitCast(hi, to: SIMD8<Float>.self),
                            unsafeBitCast(idx, to: SIMD8<UInt32>.self)), to: SIMD8<Int32>.self)
}

// 8-float loads and stores: load8/store8 (Core/SIMD+Memory.swift).

extension Quant4 {
    /// Sorted rank #{k : s > m_k} of 8 scaled values: branch-free, 15 compares whose masks
    /// (-1 where true) are subtracted; equality (a midpoint) counts as not greater.
    @inline(__always)
    static func _rank8(_ s: SIMD8<Float>, _ mids: UnsafePointer<Float>) -> SIMD8<Int32> {
        var r = SIMD8<Int32>(repeating: 0)
        for k in 0..<15 {
            r &-= unsafeBitCast(s .> SIMD8<Float>(repeating: mids[k]), to: SIMD8<Int32>.self)
        }
        return r
    }

    /// Packs 8 codes (element order) into 4 bytes at `out`: byte j = c[2j] << 4 | c[2j+1].
    @inline(__always)
    static func _pack8(_ c: SIMD8<Int32>, _ out: UnsafeMutablePointer<UInt8>) {
        let v = unsafeBitCast(c, to: SIMD4<UInt64>.self)   // lane j = c[2j] | c[2j+1] << 32
        let b = ((v &<< 4) | (v &>> 32)) & 0xFF
        let bytes = SIMD4<UInt8>(truncatingIfNeeded: b)
        UnsafeMutableRawPointer(out).storeBytes(of: bytes, as: SIMD4<UInt8>.self)
    }

    /// Quantizes `len` (a multiple of 8, padded with zeros past the real elements) scaled
    /// values: s = clamp(x * inv) or clamp(x / d), rank, FP4 remap, pack `len/2` bytes.
    @inline(__always)
    static func _quantizeRun(_ x: UnsafePointer<Float>, _ len: Int, divide: Bool, d: Float,
                             _ mids: UnsafePointer<Float>, remap: Bool, _ olo: SIMD8<Int32>, _ ohi: SIMD8<Int32>,
                             _ out: UnsafeMutablePointer<UInt8>) {
        let inv = SIMD8<Float>(repeating: 1 / d)
        let dv = SIMD8<Float>(repeating: d)
        let one = SIMD8<Float>(repeating: 1), mone = SIMD8<Float>(repeating: -1)
        var i = 0
        // 16 at a time: the two halves share each midpoint broadcast.
        while i + 16 <= len {
            var s0 = divide ? load8(x + i) / dv : load8(x + i) * inv
            var s1 = divide ? load8(x + i + 8) / dv : load8(x + i + 8) * inv
            s0 = s0.replacing(with: one, where: s0 .> one).replacing(with: mone, where: s0 .< mone)
            s1 = s1.replacing(with: one, where: s1 .> one).replacing(with: mone, where: s1 .< mone)
            var c0 = SIMD8<Int32>(repeating: 0), c1 = c0
            for k in 0..<15 {
                let m = SIMD8<Float>(repeating: mids[k])
                c0 &-= unsafeBitCast(s0 .> m, to: SIMD8<Int32>.self)
                c1 &-= unsafeBitCast(s1 .> m, to: SIMD8<Int32>.self)
            }
            if remap { c0 = _lookup16(olo, ohi, c0); c1 = _lookup16(olo, ohi, c1) }
            _pack8(c0, out + i / 2)
            _pack8(c1, out + i / 2 + 4)
            i += 16
        }
        while i < len {
            let v = load8(x + i)
            var s = divide ? v / dv : v * inv
            s = s.replacing(with: one, where: s .> one).replacing(with: mone, where: s .< mone)
            var c = _rank8(s, mids)
            if remap { c = _lookup16(olo, ohi, c) }
            _pack8(c, out + i / 2)
            i += 8
        }
    }

    /// Fast 4-bit quantization of validated, finite input (see Quant4.swift for the rules).
    static func _quantize(_ x: UnsafeRawPointer, dtype: DType, count n: Int, blocksize bs: Int, table: Quant4Table,
                          packed: UnsafeMutablePointer<UInt8>, absmax: UnsafeMutablePointer<Float>) {
        let nb = blockCount(n, blocksize: bs)
        let remap = table.order != Array(0..<16).map { Int32($0) }
        let olo = SIMD8<Int32>(table.order[0..<8]), ohi = SIMD8<Int32>(table.order[8..<16])
        table.midpoints.withUnsafeBufferPointer { midsBuf in
            let mids = midsBuf.baseAddress!
            parallelChunks(nb, grain: max(1, 32768 / bs)) { lo, hi in
                let scratch = UnsafeMutablePointer<Float>.allocate(capacity: bs + 8)
                defer { scratch.deallocate() }
                for b in lo..<hi {
                    let start = b * bs
                    let len = min(bs, n - start)
                    var src: UnsafePointer<Float>
                    if dtype == .f32 {
                        src = x.assumingMemoryBound(to: Float.self) + start
                    } else {
                        widen(x, dtype, start: start, count: len, into: scratch)
                        src = UnsafePointer(scratch)
                    }
                    // absmax = max |x|: for finite floats the order of |x|'s bit patterns is the
                    // order of the values, so an unsigned max reduction (auto-vectorized) does it.
                    let bits = UnsafeRawPointer(src).assumingMemoryBound(to: UInt32.self)
                    var mb: UInt32 = 0
                    for i in 0..<len { mb = Swift.max(mb, bits[i] & 0x7FFF_FFFF) }
                    let m = Float(bitPattern: mb)
                    let d = Swift.max(m, minDivisor)
                    if len == bs {
                        absmax[b] = m
                        _quantizeRun(src, bs, divide: false, d: d, mids, remap: remap, olo, ohi, packed + start / 2)
                    } else {
                        absmax[b] = d
                        if src != UnsafePointer(scratch) { scratch.update(from: src, count: len) }
                        let padded = (len + 7) & ~7
                        for k in len..<padded { scratch[k] = 0 }
                        var tmp = (UInt64(0), UInt64(0), UInt64(0), UInt64(0))  // up to 8 bytes per 16 elements
                        let full8 = len & ~7
                        _quantizeRun(scratch, full8, divide: true, d: d, mids, remap: remap, olo, ohi, packed + start / 2)
                        if padded > full8 {
                            withUnsafeMutableBytes(of: &tmp) { t in
                                let tp = t.baseAddress!.assumingMemoryBound(to: UInt8.self)
                                _quantizeRun(scratch + full8, 8, divide: true, d: d, mids, remap: remap, olo, ohi, tp)
                                let rest = (len - full8 + 1) / 2
                                (packed + (start + full8) / 2).update(from: tp, count: rest)
                            }
                        }
                    }
                }
            }
        }
    }

    /// Decodes elements [s, e) (all in one block) into out[0 ..< e-s] as float32 with the block's
    /// pre-scaled table (lo/hi = code[0...7]*scale, code[8...15]*scale; `cs` the same 16 values).
    @inline(__always)
    static func _decodeSegment(_ packed: UnsafePointer<UInt8>, _ s: Int, _ e: Int,
                               _ lo: SIMD8<Float>, _ hi: SIMD8<Float>, _ cs: UnsafePointer<Float>,
                               _ out: UnsafeMutablePointer<Float>, stream: Bool = false) {
        var i = s
        var o = out
        if i < e && i & 1 == 1 { o[0] = cs[Int(packed[i >> 1] & 15)]; i += 1; o += 1 }
        if stream && Int(bitPattern: o) & 31 == 0 {
            // Non-temporal stores: the output is not read back soon and skipping the
            // read-for-ownership halves the memory traffic of a large dequantize.
            while i + 16 <= e {
                _mm256_stream_ps(UnsafeMutableRawPointer(o).assumingMemoryBound(to: Float.self), _lookup16(lo, hi, _nibbles8(packed + (i >> 1))))
                _mm256_stream_ps(o + 8, _lookup16(lo, hi, _nibbles8(packed + (i >> 1) + 4)))
                i += 16; o += 16
            }
        }
        while i + 16 <= e {
            store8(o, _lookup16(lo, hi, _nibbles8(packed + (i >> 1))))
            store8(o + 8, _lookup16(lo, hi, _nibbles8(packed + (i >> 1) + 4)))
            i += 16; o += 16
        }
        if i + 8 <= e { store8(o, _lookup16(lo, hi, _nibbles8(packed + (i >> 1)))); i += 8; o += 8 }
        while i < e {
            let byte = packed[i >> 1]
            o[0] = cs[Int(i & 1 == 0 ? byte >> 4 : byte & 15)]
            i += 1; o += 1
        }
    }

    /// Fills the block's pre-scaled tables: fl(code[k] * scale).
    @inline(__always)
    static func _scaledTables(_ code: UnsafePointer<Float>, _ scale: Float, _ cs: UnsafeMutablePointer<Float>) -> (SIMD8<Float>, SIMD8<Float>) {
        let lo = load8(code) * SIMD8<Float>(repeating: scale)
        let hi = load8(code + 8) * SIMD8<Float>(repeating: scale)
        store8(cs, lo); store8(cs + 8, hi)
        return (lo, hi)
    }

    /// Decodes elements [start, start+n) of a 4-bit tensor to float32 (out[0..<n]).
    /// `scale(b)` is block b's scale. Single-threaded; callers parallelize.
    @inline(__always)
    static func _decodeRange(packed: UnsafePointer<UInt8>, code: UnsafePointer<Float>, blocksize bs: Int,
                             start: Int, count n: Int, out: UnsafeMutablePointer<Float>, stream: Bool = false,
                             scale: (Int) -> Float) {
        var cs = (SIMD8<Float>(), SIMD8<Float>())
        withUnsafeMutableBytes(of: &cs) { raw in
            let csp = raw.baseAddress!.assumingMemoryBound(to: Float.self)
            var i = start
            let end = start + n
            while i < end {
                let b = i / bs
                let e = Swift.min(end, (b + 1) * bs)
                let (lo, hi) = _scaledTables(code, scale(b), csp)
                _decodeSegment(packed, i, e, lo, hi, csp, out + (i - start), stream: stream)
                i = e
            }
        }
    }

    /// Fast dequantization of a validated state (whole tensor, parallel over blocks).
    static func _dequantize(packed: UnsafePointer<UInt8>, count n: Int, blocksize bs: Int, code: UnsafePointer<Float>,
                            out: UnsafeMutableRawPointer, dtype: DType, scale: (Int) -> Float) {
        let nb = blockCount(n, blocksize: bs)
        parallelChunks(nb, grain: max(1, 32768 / bs)) { lo, hi in
            let s = lo * bs, e = Swift.min(n, hi * bs)
            if dtype == .f32 {
                let stream = n >= (1 << 20)
                _decodeRange(packed: packed, code: code, blocksize: bs, start: s, count: e - s,
                             out: out.assumingMemoryBound(to: Float.self) + s, stream: stream, scale: scale)
                // Order the non-temporal stores before the join (a seq_cst fence is mfence/locked op on x86).
                if stream { atomicMemoryFence(ordering: .sequentiallyConsistent) }
            } else {
                let chunk = 4096
                let tmp = UnsafeMutablePointer<Float>.allocate(capacity: chunk)
                defer { tmp.deallocate() }
                var i = s
                while i < e {
                    let m = Swift.min(chunk, e - i)
                    _decodeRange(packed: packed, code: code, blocksize: bs, start: i, count: m, out: tmp, scale: scale)
                    narrow(tmp, count: m, into: out, dtype, start: i)
                    i += m
                }
            }
        }
    }
}
