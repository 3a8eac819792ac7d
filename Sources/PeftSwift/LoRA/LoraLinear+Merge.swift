#if canImport(Glibc)
import Glibc
#endif

/// What a merge into a quantized base cost: the requantization error over the whole weight,
/// |requantized(W + ΔW) − (W + ΔW)| with W the dequantized base before the merge.
public struct MergeReport: Sendable, Equatable {
    public var maxAbsError: Float
    public var rmsError: Float
}

extension LoraLinear {
    /// Merges the named adapters (default: the active, unmerged ones) into the base weight:
    /// W += Σ c_a · B_a·A_a (c_a = w_a·s_a). Merged adapters stop contributing to forward until
    /// unmerged. On a dense base the report is zero. On a quantized base W is dequantized, the
    /// deltas added in fp32, and the sum requantized with the same type, blocksize and double
    /// quantization (PEFT/bitsandbytes' merge); the pre-merge codes are kept so that unmerge
    /// restores them exactly.
    @discardableResult
    public func merge(_ names: [String]? = nil) throws(PSTError) -> MergeReport {
        var chosen: [LoraAdapter] = []
        if let names {
            for n in names {
                let a = try requireAdapter(n)
                guard !a.merged else { throw .misuse("adapter \"\(n)\" is already merged") }
                chosen.append(a)
            }
        } else {
            chosen = active.filter { !$0.merged }
        }
        if chosen.isEmpty { return MergeReport(maxAbsError: 0, rmsError: 0) }
        if case .dense(let w) = base, !w.ownsMemory {
            throw .misuse("the base weight is borrowed from the caller (pst_lora_create_dense_borrowed), so merge cannot write into it")
        }
        let n = outFeatures * inFeatures
        var report = MergeReport(maxAbsError: 0, rmsError: 0)
        switch base {
        case .dense(let w):
            for a in chosen { addDelta(a, sign: 1, into: w.baseAddress) }
        case .quantized(let q):
            let exact = try AlignedBuffer<Float>(count: n)
            q.dequantize(into: UnsafeMutableRawPointer(exact.baseAddress), dtype: .f32)
            for a in chosen { addDelta(a, sign: 1, into: exact.baseAddress) }
            try LoraLinear.checkFinite(UnsafeBufferPointer(exact.buffer), "merged weight")
            let nq = try QuantizedTensor(quantizing: UnsafeRawPointer(exact.baseAddress), dtype: .f32, shape: q.shape,
                                         blocksize: q.blocksize, type: q.quantType, doubleQuant: q.nested != nil)
            let back = try AlignedBuffer<Float>(count: n)
            nq.dequantize(into: UnsafeMutableRawPointer(back.baseAddress), dtype: .f32)
            var maxErr: Float = 0, sum2: Double = 0
            for i in 0..<n {
                let e = abs(back[i] - exact[i])
                maxErr = max(maxErr, e)
                sum2 += Double(e) * Double(e)
            }
            report = MergeReport(maxAbsError: maxErr, rmsError: Float((sum2 / Double(n)).squareRoot()))
            premergeBases.append(q)
            base = .quantized(nq)
        }
        for a in chosen { a.merged = true }
        invalidateCache()
        return report
    }

    /// Takes every merged adapter out of the base weight. A quantized base gets its pre-merge
    /// codes back bit for bit; a dense base subtracts the deltas (exact up to fp32 rounding).
    public func unmerge() throws(PSTError) {
        let merged = adapters.filter { $0.merged }
        if merged.isEmpty { return }
        switch base {
        case .dense(let w):
            for a in merged.reversed() { addDelta(a, sign: -1, into: w.baseAddress) }
        case .quantized:
            guard let original = premergeBases.first else { throw .internalError("no pre-merge state kept") }
            base = .quantized(original)
            premergeBases.removeAll()
        }
        for a in merged { a.merged = false }
        invalidateCache()
    }

    /// W (out×in) += sign · c · B (out×r) · A (r×in)
    func addDelta(_ a: LoraAdapter, sign: Float, into w: UnsafeMutablePointer<Float>) {
        GEMM.sgemm(transA: false, transB: false, m: outFeatures, n: inFeatures, k: a.config.r, alpha: sign * a.weight * a.scaling,
                   a: a.b.baseAddress, lda: a.config.r, b: a.a.baseAddress, ldb: inFeatures, beta: 1, c: w, ldc: inFeatures)
    }

    /// The effective dense weight (dequantized when quantized), out × in, for tests and export.
    public func dequantizedWeight() throws(PSTError) -> AlignedBuffer<Float> {
        let out = try AlignedBuffer<Float>(count: outFeatures * inFeatures)
        switch base {
        case .dense(let w): out.baseAddress.update(from: w.baseAddress, count: out.count)
        case .quantized(let q): q.dequantize(into: UnsafeMutableRawPointer(out.baseAddress), dtype: .f32)
        }
        return out
    }
}
