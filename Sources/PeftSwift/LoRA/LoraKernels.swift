#if canImport(Glibc)
import Glibc
#endif
import _Builtin_intrinsics.intel

// Fast kernels of the LoRA layer's dropout, each with a plain twin (`...Reference`) that the
// tests hold it to bit for bit.

extension SplitMix64 {
    static let gamma: UInt64 = 0x9E37_79B9_7F4A_7C15

    /// The output of the generator whose state is `s` before the step (SplitMix64 is a counter:
    /// the i-th output after state s0 is mix(s0 + i·gamma)).
    @inline(__always) static func mix(_ s: UInt64) -> UInt64 {
        var z = s
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
}

enum LoraKernels {
    /// Inverted dropout of x[0..<n] with `rng`'s next n draws (one per element, in order):
    ///   keep_i = nextFloat() < keep;  mask[i] = keep_i;  d[i] = keep_i ? x[i]·inv : 0
    /// Advances `rng` by n draws. Parallel (each chunk jumps the counter ahead), identical bit
    /// for bit to `dropoutReference`.
    static func dropout(_ x: UnsafePointer<Float>, _ d: UnsafeMutablePointer<Float>, _ mask: UnsafeMutablePointer<UInt8>,
                        count n: Int, keep: Float, inv: Float, rng: inout SplitMix64) {
        // nextFloat() = u·2^−24 with u = next() >> 40 an integer < 2^24; u·2^−24 < keep exactly
        // when u < keep·2^24 (exact in Double), i.e. u < ceil(keep·2^24).
        let threshold = UInt64((Double(keep) * 16_777_216).rounded(.up))
        let s0 = rng.state
        parallelChunks(n, grain: 16384) { lo, hi in
            var s = s0 &+ UInt64(truncatingIfNeeded: lo) &* SplitMix64.gamma
            var i = lo
            while i < hi {
                s &+= SplitMix64.gamma
                let k: UInt8 = SplitMix64.mix(s) >> 40 < threshold ? 1 : 0
                mask[i] = k
                d[i] = k == 1 ? x[i] * inv : 0
                i += 1
            }
        }
        rng.state = s0 &+ UInt64(truncatingIfNeeded: n) &* SplitMix64.gamma
    }

    /// Plain twin of `dropout`.
    static func dropoutReference(_ x: UnsafePointer<Float>, _ d: UnsafeMutablePointer<Float>, _ mask: UnsafeMutablePointer<UInt8>,
                                 count n: Int, keep: Float, inv: Float, rng: inout SplitMix64) {
        for i in 0..<n {
            let k: UInt8 = rng.nextFloat() < keep ? 1 : 0
            mask[i] = k
            d[i] = k == 1 ? x[i] * inv : 0
        }
    }

    /// dx[i] += t[i]·inv where mask[i] != 0 (dx unchanged elsewhere), on n elements.
    @inline(__always)
    static func maskedAddSerial(_ dx: UnsafeMutablePointer<Float>, _ t: UnsafePointer<Float>, _ mask: UnsafePointer<UInt8>,
                                count n: Int, inv: Float) {
        let iv = SIMD8<Float>(repeating: inv)
        let zero = _mm256_setzero_si256()
        var i = 0
        while i + 8 <= n {
            // 8 mask bytes → 8 lanes of all-ones where nonzero (vpmovzxbd + vpcmpgtd)
            let m8 = _mm_cvtsi64_si128(Int64(bitPattern: UnsafeRawPointer(mask + i).loadUnaligned(as: UInt64.self)))
            let keep = _mm256_castsi256_ps(_mm256_cmpgt_epi32(_mm256_cvtepu8_epi32(m8), zero))
            let dv = load8(dx + i)
            let tv = load8(t + i)
            let r: SIMD8<Float> = _mm256_blendv_ps(dv, dv + tv * iv, keep)
            store8(dx + i, r)
            i += 8
        }
        while i < n { if mask[i] != 0 { dx[i] += t[i] * inv }; i += 1 }
    }

    /// Plain twin of `maskedAddSerial`.
    static func maskedAddReference(_ dx: UnsafeMutablePointer<Float>, _ t: UnsafePointer<Float>, _ mask: UnsafePointer<UInt8>,
                                   count n: Int, inv: Float) {
        for i in 0..<n where mask[i] != 0 { dx[i] += t[i] * inv }
    }

    /// dx (m × n) += c · (g (m × r) · A (r × n)) ⊙ mask · inv, row blocks in parallel, each
    /// block's product into a small per-thread tile first (never an m × n temporary).
    /// Bit-identical to the product into a full temporary followed by `maskedAddReference`.
    static func maskedLoraDx(m: Int, n: Int, r: Int, c: Float, g: UnsafePointer<Float>, a: UnsafePointer<Float>,
                             mask: UnsafePointer<UInt8>, inv: Float, dx: UnsafeMutablePointer<Float>) {
        let rowsPerBlock = max(GEMM.mr, min(48, (32768 / max(n, 1)) / GEMM.mr * GEMM.mr))
        let blocks = (m + rowsPerBlock - 1) / rowsPerBlock
        parallelChunks(blocks) { lo, hi in
            let ws = Workspace.acquire(floats: rowsPerBlock * n)
            defer { Workspace.release(ws) }
            for b in lo..<hi {
                let r0 = b * rowsPerBlock, rows = min(rowsPerBlock, m - r0)
                GEMM.sgemmSerial(transA: false, transB: false, m: rows, n: n, k: r, alpha: c,
                                 a: g + r0 * r, lda: r, b: a, ldb: n, beta: 0, c: ws.pointer, ldc: n)
                maskedAddSerial(dx + r0 * n, ws.pointer, mask + r0 * n, count: rows * n, inv: inv)
            }
        }
    }
}
