// Dequantization of GGUF tensors to float32, with ggml's block definitions
// (ggml/src/ggml-common.h, ggml-quants.c `dequantize_row_*`; formulas as gguf-py's
// gguf/quants.py evaluates them in float32: products and sums are separate roundings, no FMA).
//
//   Q4_0  32 values / 18 bytes: f16 d, u8 qs[16]; x[j] = (lo(qs[j]) - 8) * d,
//         x[j+16] = (hi(qs[j]) - 8) * d
//   Q4_1  32 / 20: f16 d, f16 m, qs[16]; x[j] = lo(qs[j]) * d + m, x[j+16] = hi(qs[j]) * d + m
//   Q5_0  32 / 22: f16 d, u32 qh, qs[16]; q = nibble | (bit j (or j+16) of qh) << 4;
//         x = (q - 16) * d
//   Q5_1  32 / 24: f16 d, f16 m, u32 qh, qs[16]; x = q * d + m
//   Q8_0  32 / 34: f16 d, i8 qs[32]; x = qs * d
//   Q8_1  32 / 36: f16 d, f16 s, i8 qs[32]; x = qs * d (s = d * sum(qs) is unused)
//   F32 / F16 / BF16 widen exactly.
//
// Each type has a SIMD fast path (`GGUFDequant.row`) and a scalar reference twin
// (`GGUFDequant.rowReference`); tests hold them equal bit for bit.
import _Builtin_intrinsics.intel

public enum GGUFDequant {
    /// Dequantizes `n` elements (a multiple of `type.blockSize`) from `src` into `dst`. The caller
    /// guarantees `src` holds `n / blockSize * blockBytes` bytes. SIMD fast path.
    public static func row(_ type: GGMLType, _ src: UnsafeRawPointer, _ dst: UnsafeMutablePointer<Float>, _ n: Int) {
        let nb = n / type.blockSize
        switch type {
        case .f32:
            dst.update(from: src.assumingMemoryBound(to: Float.self), count: n)   // memcpy; unaligned is fine
        case .f16:
            let s = src.assumingMemoryBound(to: UInt16.self)
            var i = 0
            while i + 8 <= n { _gstore8(f16x8ToFloat(s + i), dst + i); i += 8 }
            while i < n { dst[i] = f16ToFloat(src.loadUnaligned(fromByteOffset: 2 * i, as: UInt16.self)); i += 1 }
        case .bf16:
            let s = src.assumingMemoryBound(to: UInt16.self)
            var i = 0
            while i + 8 <= n { _gstore8(bf16x8ToFloat(s + i), dst + i); i += 8 }
            while i < n { dst[i] = bf16ToFloat(src.loadUnaligned(fromByteOffset: 2 * i, as: UInt16.self)); i += 1 }
        case .q8_0, .q8_1:
            let bb = type.blockBytes, qoff = type == .q8_0 ? 2 : 4
            for b in 0..<nb {
                let blk = src + b * bb
                let d = SIMD8<Float>(repeating: f16ToFloat(blk.loadUnaligned(as: UInt16.self)))
                let o = dst + 32 * b
                for k in 0..<4 {
                    _gstore8(_i8x8ToFloat(blk + qoff + 8 * k) * d, o + 8 * k)
                }
            }
        case .q4_0, .q4_1:
            let bb = type.blockBytes, hasMin = type == .q4_1
            let mask = SIMD16<UInt8>(repeating: 0x0F)
            for b in 0..<nb {
                let blk = src + b * bb
                let d = SIMD8<Float>(repeating: f16ToFloat(blk.loadUnaligned(as: UInt16.self)))
                let qs = (blk + (hasMin ? 4 : 2)).loadUnaligned(as: SIMD16<UInt8>.self)
                let lo = qs & mask, hi = qs &>> 4
                let o = dst + 32 * b
                if hasMin {
                    let m = SIMD8<Float>(repeating: f16ToFloat(blk.loadUnaligned(fromByteOffset: 2, as: UInt16.self)))
                    _gstore8(_u8x8ToFloat(lo.lowHalf) * d + m, o)
                    _gstore8(_u8x8ToFloat(lo.highHalf) * d + m, o + 8)
                    _gstore8(_u8x8ToFloat(hi.lowHalf) * d + m, o + 16)
                    _gstore8(_u8x8ToFloat(hi.highHalf) * d + m, o + 24)
                } else {
                    let eight = SIMD8<Int32>(repeating: 8)
                    _gstore8(SIMD8<Float>(SIMD8<Int32>(truncatingIfNeeded: lo.lowHalf) &- eight) * d, o)
                    _gstore8(SIMD8<Float>(SIMD8<Int32>(truncatingIfNeeded: lo.highHalf) &- eight) * d, o + 8)
                    _gstore8(SIMD8<Float>(SIMD8<Int32>(truncatingIfNeeded: hi.lowHalf) &- eight) * d, o + 16)
                    _gstore8(SIMD8<Float>(SIMD8<Int32>(truncatingIfNeeded: hi.highHalf) &- eight) * d, o + 24)
                }
            }
        case .q5_0, .q5_1:
            let bb = type.blockBytes, hasMin = type == .q5_1
            let mask = SIMD16<UInt8>(repeating: 0x0F)
            let shifts = SIMD8<UInt32>(0, 1, 2, 3, 4, 5, 6, 7)
            for b in 0..<nb {
                let blk = src + b * bb
                let d = SIMD8<Float>(repeating: f16ToFloat(blk.loadUnaligned(as: UInt16.self)))
                let hoff = hasMin ? 4 : 2
                let qh = UInt32(littleEndian: blk.loadUnaligned(fromByteOffset: hoff, as: UInt32.self))
                let qs = (blk + hoff + 4).loadUnaligned(as: SIMD16<UInt8>.self)
                let lo = qs & mask, hi = qs &>> 4
                let o = dst + 32 * b
                let m = hasMin ? SIMD8<Float>(repeating: f16ToFloat(blk.loadUnaligned(fromByteOffset: 2, as: UInt16.self))) : .zero
                let bias = SIMD8<Int32>(repeating: hasMin ? 0 : 16)
                @inline(__always) func part(_ k: Int, _ nib: SIMD8<UInt8>) {
                    let hb = ((SIMD8<UInt32>(repeating: qh &>> UInt32(8 * k)) &>> shifts) & 1) &<< 4
                    let q = SIMD8<Int32>(truncatingIfNeeded: nib) | SIMD8<Int32>(truncatingIfNeeded: hb)
                    let v = SIMD8<Float>(q &- bias) * d
                    _gstore8(hasMin ? v + m : v, o + 8 * k)
                }
                part(0, lo.lowHalf); part(1, lo.highHalf); part(2, hi.lowHalf); part(3, hi.highHalf)
            }
        default:
            break  // callers check canDequantize
        }
    }

    /// Scalar reference twin of `row` (the specification the fast path is tested against).
    public static func rowReference(_ type: GGMLType, _ src: UnsafeRawPointer, _ dst: UnsafeMutablePointer<Float>, _ n: Int) {
        let nb = n / type.blockSize, bb = type.blockBytes
        func h(_ p: UnsafeRawPointer, _ off: Int) -> Float { f16ToFloat(UInt16(littleEndian: p.loadUnaligned(fromByteOffset: off, as: UInt16.self))) }
        switch type {
        case .f32:
            for i in 0..<n { dst[i] = Float(bitPattern: UInt32(littleEndian: src.loadUnaligned(fromByteOffset: 4 * i, as: UInt32.self))) }
        case .f16:
            for i in 0..<n { dst[i] = h(src, 2 * i) }
        case .bf16:
            for i in 0..<n { dst[i] = bf16ToFloat(UInt16(littleEndian: src.loadUnaligned(fromByteOffset: 2 * i, as: UInt16.self))) }
        case .q8_0, .q8_1:
            let qoff = type == .q8_0 ? 2 : 4
            for b in 0..<nb {
                let blk = src + b * bb
                let d = h(blk, 0)
                for j in 0..<32 { dst[32 * b + j] = Float(blk.load(fromByteOffset: qoff + j, as: Int8.self)) * d }
            }
        case .q4_0, .q4_1:
            let hasMin = type == .q4_1, qoff = hasMin ? 4 : 2
            for b in 0..<nb {
                let blk = src + b * bb
                let d = h(blk, 0), m: Float = hasMin ? h(blk, 2) : 0
                for j in 0..<16 {
                    let q = blk.load(fromByteOffset: qoff + j, as: UInt8.self)
                    let x0 = Int(q & 0x0F), x1 = Int(q >> 4)
                    if hasMin {
                        dst[32 * b + j] = Float(x0) * d + m
                        dst[32 * b + j + 16] = Float(x1) * d + m
                    } else {
                        dst[32 * b + j] = Float(x0 - 8) * d
                        dst[32 * b + j + 16] = Float(x1 - 8) * d
                    }
                }
            }
        case .q5_0, .q5_1:
            let hasMin = type == .q5_1, hoff = hasMin ? 4 : 2
            for b in 0..<nb {
                let blk = src + b * bb
                let d = h(blk, 0), m: Float = hasMin ? h(blk, 2) : 0
                let qh = UInt32(littleEndian: blk.loadUnaligned(fromByteOffset: hoff, as: UInt32.self))
                for j in 0..<16 {
                    let q = blk.load(fromByteOffset: hoff + 4 + j, as: UInt8.self)
                    let x0 = Int(q & 0x0F) | Int((qh >> UInt32(j)) & 1) << 4
                    let x1 = Int(q >> 4) | Int((qh >> UInt32(j + 16)) & 1) << 4
                    if hasMin {
                        dst[32 * b + j] = Float(x0) * d + m
                        dst[32 * b + j + 16] = Float(x1) * d + m
                    } else {
                        dst[32 * b + j] = Float(x0 - 16) * d
                        dst[32 * b + j + 16] = Float(x1 - 16) * d
                    }
                }
            }
        default:
            break
        }
    }
}

@inline(__always) private func _gstore8(_ v: SIMD8<Float>, _ p: UnsafeMutablePointer<Float>) {
    store8(p, v)
}

@inline(__always) private func _u8x8ToFloat(_ v: SIMD8<UInt8>) -> SIMD8<Float> {
    SIMD8<Float>(SIMD8<Int32>(truncatingIfNeeded: v))
}

@inline(__always) private func _i8x8ToFloat(_ p: UnsafeRawPointer) -> SIMD8<Float> {
    SIMD8<Float>(SIMD8<Int32>(truncatingIfNeeded: p.loadUnaligned(as: SIMD8<Int8>.self)))
}

// MARK: - GGUFFile dequantization

public extension GGUFFile {
    /// Throws unless `t` is a tensor of this file with a dequantizable type.
    private func checkDequantizable(_ t: GGUFTensorInfo) throws(PSTError) -> UnsafeRawBufferPointer {
        let bytes = try data(of: t)
        guard t.type.canDequantize else {
            throw .unsupported("\(path): tensor '\(t.name)' has type \(t.type.name), which peftswift cannot dequantize (supported: F32, F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q8_1)")
        }
        return bytes
    }

    /// Dequantizes rows `rows` (GGUF rows: `t.columns` elements each) of `t` into `out`, which
    /// holds `count == rows.count * t.columns` floats. Parallel over rows (`parallelChunks`);
    /// `reference: true` uses the scalar twin on one thread.
    func dequantizeRows(_ t: GGUFTensorInfo, rows: Range<Int>, into out: UnsafeMutablePointer<Float>, count: Int,
                        reference: Bool = false) throws(PSTError) {
        let bytes = try checkDequantizable(t)
        guard rows.lowerBound >= 0, rows.upperBound <= t.rows else {
            throw .invalidArgument("rows \(rows) out of 0..<\(t.rows) for tensor '\(t.name)'")
        }
        let cols = t.columns
        guard count == rows.count * cols else {
            throw .shape("output holds \(count) floats, rows \(rows) of '\(t.name)' need \(rows.count * cols)")
        }
        guard let base = bytes.baseAddress, count > 0 else { return }
        let rb = t.rowBytes, type = t.type, r0 = rows.lowerBound
        if reference {
            for r in rows { GGUFDequant.rowReference(type, base + r * rb, out + (r - r0) * cols, cols) }
            return
        }
        parallelChunks(rows.count, grain: max(1, 32768 / max(cols, 1))) { lo, hi in
            for r in lo..<hi { GGUFDequant.row(type, base + (r0 + r) * rb, out + r * cols, cols) }
        }
    }

    /// Dequantizes all of `t` into `out` (`count == t.elementCount`), in GGUF element order,
    /// which is PyTorch's row-major order for `t.shape`.
    func dequantize(_ t: GGUFTensorInfo, into out: UnsafeMutablePointer<Float>, count: Int, reference: Bool = false) throws(PSTError) {
        try dequantizeRows(t, rows: 0..<t.rows, into: out, count: count, reference: reference)
    }

    /// Dequantizes all of `t` into a new buffer.
    func dequantize(_ t: GGUFTensorInfo, reference: Bool = false) throws(PSTError) -> AlignedBuffer<Float> {
        _ = try checkDequantizable(t)
        let buf = try AlignedBuffer<Float>(count: t.elementCount)
        try dequantize(t, into: buf.baseAddress, count: buf.count, reference: reference)
        return buf
    }

    /// The raw (still quantized) bytes of GGUF row `row` of `t` (`t.rowBytes` bytes).
    func rawRow(_ t: GGUFTensorInfo, _ row: Int) throws(PSTError) -> UnsafeRawBufferPointer {
        let bytes = try data(of: t)
        guard row >= 0, row < t.rows else { throw .invalidArgument("row \(row) out of 0..<\(t.rows) for tensor '\(t.name)'") }
        return UnsafeRawBufferPointer(rebasing: bytes[(row * t.rowBytes)..<((row + 1) * t.rowBytes)])
    }
}
