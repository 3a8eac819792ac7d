// Fast AVX2 kernels of 4-bit quantization. The rules are in Quant4.swift; the plain twins in
// Quant4+Reference.swift are the specification these are tested against, bit for bit.
import _Builtin_intrinsics.intel
import Synchronization

/// Nibble shifts that turn a little-endian 4-byte word into the 8 codes in element order
/// (element 2j is the HIGH nibble of byte j).
/// (A computed constant: a global `let` is read through a swift_once call, which the compiler
/// does not always hoist out of the decode loops.)
@usableFromInline var _nibbleShifts: SIMD8<UInt32> {
    @inline(__always) get { SIMD8<UInt32>(4, 0, 12, 8, 20, 16, 28, 24) }
}

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

/// `vpermd` index restoring element order of the 4-code groups after two packs.
@inline(__always) var _groupOrder: __m256i { unsafeBitCast(SIMD8<Int32>(0, 4, 1, 5, 2, 6, 3, 7), to: __m256i.self) }
/// `vpermd` index gathering the low 8 bytes of both 128-bit lanes, then the high 8 bytes.
@inline(__always) var _laneOrder: __m256i { unsafeBitCast(SIMD8<Int32>(0, 1, 4, 5, 2, 3, 6, 7), to: __m256i.self) }
/// Byte weights (16, 1, 16, 1, ...) for `vpmaddubsw`: c_2j * 16 + c_2j+1.
@inline(__always) var _pairWeights: __m256i { unsafeBitCast(SIMD16<UInt16>(repeating: 0x0110), to: __m256i.self) }

extension Quant4 {
    /// Words p_j = c_2j * 16 + c_2j+1 (j = 0...15, element order) of 32 codes 0...15 given as 4
    /// vectors of 8 in element order: pack to bytes (`vpackssdw`, `vpackuswb`: the lanes then
    /// hold codes 0-3, 8-11, 16-19, 24-27 | 4-7, 12-15, 20-23, 28-31), restore the order of the
    /// 4-code groups (`vpermd`), and fuse neighbours with one `vpmaddubsw` by (16, 1).
    @inline(__always)
    static func _pairWords(_ c0: SIMD8<Int32>, _ c1: SIMD8<Int32>, _ c2: SIMD8<Int32>, _ c3: SIMD8<Int32>) -> __m256i {
        let w01 = _mm256_packs_epi32(unsafeBitCast(c0, to: __m256i.self), unsafeBitCast(c1, to: __m256i.self))
        let w23 = _mm256_packs_epi32(unsafeBitCast(c2, to: __m256i.self), unsafeBitCast(c3, to: __m256i.self))
        let b = _mm256_permutevar8x32_epi32(_mm256_packus_epi16(w01, w23), _groupOrder)
        return _mm256_maddubs_epi16(b, _pairWeights)
    }

    /// Stores the 16 bytes of 32 codes (see `_pairWords`).
    @inline(__always)
    static func _store16(_ w: __m256i, _ out: UnsafeMutablePointer<UInt8>) {
        let b = _mm256_permutevar8x32_epi32(_mm256_packus_epi16(w, w), _laneOrder)
        UnsafeMutableRawPointer(out).storeBytes(of: _mm256_castsi256_si128(b), as: __m128i.self)
    }

    /// Stores the 32 bytes of 64 codes given as the words of their two halves.
    @inline(__always)
    static func _store32(_ wa: __m256i, _ wb: __m256i, _ out: UnsafeMutablePointer<UInt8>) {
        let b = _mm256_permutevar8x32_epi32(_mm256_packus_epi16(wa, wb), _laneOrder)
        UnsafeMutableRawPointer(out).storeBytes(of: b, as: __m256i.self)
    }

    /// Encodes `len` (a multiple of 32) float32 values into len/2 bytes at `out`: s = x * scale
    /// (or x / scale when `divide`), code = the sorted rank of s (Rank16 over the table's
    /// midpoints), FP4 remapped rank -> bit code.
    ///
    /// No clamp to [-1, 1]: s leaves it only by rounding (|x| <= absmax, so |s| <= 1 + 2^-23),
    /// and every midpoint of NF4 and FP4 lies strictly inside (-1, 1) (`Quant4Table` checks), so
    /// s and clamp(s) have the same rank (15 above 1, 0 below -1).
    @inline(__always)
    static func _encodeRun(_ x: UnsafePointer<Float>, _ len: Int, scale: Float, divide: Bool, _ t: Quant4Table.Search,
                           remap: Bool, _ out: UnsafeMutablePointer<UInt8>) {
        let sv = SIMD8<Float>(repeating: scale)
        @inline(__always) func code(_ p: UnsafePointer<Float>) -> SIMD8<Int32> {
            let v = load8(p)
            let c = t.rank(divide ? v / sv : v * sv)
            return remap ? _lookup16(t.orderLo, t.orderHi, c) : c
        }
        var i = 0
        while i + 64 <= len {
            let p = x + i
            let wa = _pairWords(code(p), code(p + 8), code(p + 16), code(p + 24))
            let wb = _pairWords(code(p + 32), code(p + 40), code(p + 48), code(p + 56))
            _store32(wa, wb, out + i / 2)
            i += 64
        }
        if i < len {
            let p = x + i
            _store16(_pairWords(code(p), code(p + 8), code(p + 16), code(p + 24)), out + i / 2)
        }
    }

    /// max |x| over `len` float32 values as a bit pattern: for floats the order of |x|'s bit
    /// patterns is the order of the values, so an unsigned max reduction does it; a result
    /// >= 0x7F80_0000 means a NaN or an infinity in the block.
    @inline(__always)
    static func _maxAbsBits(_ x: UnsafePointer<Float>, _ len: Int) -> UInt32 {
        let bits = UnsafeRawPointer(x).assumingMemoryBound(to: UInt32.self)
        let mask = SIMD8<UInt32>(repeating: 0x7FFF_FFFF)
        var m0 = SIMD8<UInt32>(), m1 = m0
        var i = 0
        while i + 16 <= len {
            m0 = pointwiseMax(m0, UnsafeRawPointer(bits + i).loadUnaligned(as: SIMD8<UInt32>.self) & mask)
            m1 = pointwiseMax(m1, UnsafeRawPointer(bits + i + 8).loadUnaligned(as: SIMD8<UInt32>.self) & mask)
            i += 16
        }
        if i + 8 <= len { m0 = pointwiseMax(m0, UnsafeRawPointer(bits + i).loadUnaligned(as: SIMD8<UInt32>.self) & mask); i += 8 }
        var m = pointwiseMax(m0, m1).max()
        while i < len { m = Swift.max(m, bits[i] & 0x7FFF_FFFF); i += 1 }
        return m
    }

    /// Fast 4-bit quantization (see Quant4.swift for the rules) in one pass over x: per block
    /// max |x|, then the codes. Returns the index of the first NaN/Inf element, or nil; when
    /// one is found, packed and absmax hold unspecified values (callers that promise to write
    /// nothing on error check finiteness first, or quantize into buffers they own).
    @discardableResult
    static func _quantize(_ x: UnsafeRawPointer, dtype: DType, count n: Int, blocksize bs: Int, table: Quant4Table,
                          packed: UnsafeMutablePointer<UInt8>, absmax: UnsafeMutablePointer<Float>) -> Int? {
        let nb = blockCount(n, blocksize: bs)
        let search = table.search
        let minD = minDivisor          // read once: a static let costs a swift_once call per read
        let firstBad = Atomic<Int>(Int.max)
        parallelChunks(nb, grain: max(1, 32768 / bs)) { lo, hi in
            // widened half-precision blocks and the zero-padded partial block; its codes
            let scratch = UnsafeMutablePointer<Float>.allocate(capacity: bs + 32)
            let tail = UnsafeMutablePointer<UInt8>.allocate(capacity: bs / 2 + 16)
            defer { scratch.deallocate(); tail.deallocate() }
            var bad = Int.max
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
                let mb = _maxAbsBits(src, len)
                if mb >= 0x7F80_0000 && bad == Int.max { bad = b }
                let m = Float(bitPattern: mb)
                let d = Swift.max(m, minD)
                if len == bs {
                    absmax[b] = m
                    _encodeRun(src, bs, scale: 1 / d, divide: false, search, remap: search.remap, packed + start / 2)
                } else {
                    // the partial block divides (bitsandbytes' rule); zeros pad it to a multiple
                    // of 32 and quantize to the code of 0.0, the pad nibble of an odd length
                    absmax[b] = d
                    if src != UnsafePointer(scratch) { scratch.update(from: src, count: len) }
                    let padded = (len + 31) & ~31
                    for k in len..<padded { scratch[k] = 0 }
                    _encodeRun(scratch, padded, scale: d, divide: true, search, remap: search.remap, tail)
                    (packed + start / 2).update(from: tail, count: (len + 1) / 2)
                }
            }
            if bad != Int.max { firstBad.min(bad, ordering: .relaxed) }
        }
        let b = firstBad.load(ordering: .relaxed)
        guard b != Int.max else { return nil }
        let s = b * bs, e = min(n, s + bs)
        for i in s..<e where !loadFloat(x, dtype, i).isFinite { return i }
        return s
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
