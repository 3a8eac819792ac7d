// Plain reference twins of the 4-bit kernels: the rules of Quant4.swift written out one element
// at a time, kept forever as the specification the fast kernels are tested against.

extension Quant4 {
    /// Reference quantization (no validation beyond what the fast path assumes: finite input,
    /// valid blocksize, n >= 1). Same outputs as `quantize`, bit for bit.
    public static func quantizeReference(_ x: UnsafeRawPointer, dtype: DType, count n: Int, blocksize bs: Int, type: QuantType,
                                         packed: UnsafeMutablePointer<UInt8>, absmax: UnsafeMutablePointer<Float>) {
        let t = Quant4Table.of(type)
        let nb = blockCount(n, blocksize: bs)
        var codes = [UInt8](repeating: t.zeroCode, count: n + 1)
        for b in 0..<nb {
            let start = b * bs, end = Swift.min(n, start + bs)
            var m: Float = 0
            for i in start..<end { m = Swift.max(m, Swift.abs(loadFloat(x, dtype, i))) }
            let d = Swift.max(m, minDivisor)
            let full = end - start == bs
            absmax[b] = full ? m : d
            let inv: Float = 1 / d
            for i in start..<end {
                let v = loadFloat(x, dtype, i)
                var s = full ? v * inv : v / d
                s = Swift.min(Swift.max(s, -1), 1)
                var rank = 0
                while rank < 15 && s > t.midpoints[rank] { rank += 1 }
                codes[i] = UInt8(t.order[rank])
            }
        }
        for j in 0..<packedByteCount(n) { packed[j] = codes[2 * j] << 4 | codes[2 * j + 1] }
    }

    /// Reference dequantization: out[i] = fl(code[nibble(i)] * absmax[i / bs]) rounded to dtype.
    public static func dequantizeReference(packed: UnsafePointer<UInt8>, absmax: UnsafePointer<Float>, code: UnsafePointer<Float>,
                                           count n: Int, blocksize bs: Int, out: UnsafeMutableRawPointer, dtype: DType) {
        for i in 0..<n {
            let byte = packed[i / 2]
            let nib = i % 2 == 0 ? byte >> 4 : byte & 15
            storeFloat(code[Int(nib)] * absmax[i / bs], out, dtype, i)
        }
    }
}
