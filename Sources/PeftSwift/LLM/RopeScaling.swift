#if canImport(Glibc)
import Glibc
#endif

/// How RoPE's inverse frequencies are rescaled for longer contexts (transformers'
/// `rope_parameters["rope_type"]`, GGUF `rope.scaling.type`).
public enum RopeScaling: Sendable, Equatable {
    /// `"linear"`: inv_freq / factor (position interpolation, Chen et al. 2023).
    case linear(factor: Float)
    /// `"llama3"` (Llama 3.1): with wavelen = 2π / inv_freq, L = originalMaxPositions,
    ///   wavelen < L / highFreqFactor  → inv_freq unchanged,
    ///   wavelen > L / lowFreqFactor   → inv_freq / factor,
    ///   otherwise, s = (L / wavelen − lowFreqFactor) / (highFreqFactor − lowFreqFactor):
    ///                                    (1 − s)·inv_freq / factor + s·inv_freq.
    case llama3(factor: Float, lowFreqFactor: Float, highFreqFactor: Float, originalMaxPositions: Int)

    /// The scaling a config file names by `type` with one `factor` (nil for a type that needs
    /// more parameters than that, or an unknown one).
    init?(type: String, factor: Double) {
        switch type {
        case "linear": self = .linear(factor: Float(factor))
        default: return nil
        }
    }

    /// `PST_ERR_INVALID_ARG` for a factor ≤ 0 or inconsistent llama3 parameters.
    func validate() throws(PSTError) {
        switch self {
        case .linear(let f):
            guard f.isFinite && f > 0 else { throw .invalidArgument("rope scaling factor (\(f)) must be > 0") }
        case .llama3(let f, let lo, let hi, let orig):
            guard f.isFinite && f > 0 else { throw .invalidArgument("rope scaling factor (\(f)) must be > 0") }
            guard lo.isFinite && hi.isFinite && lo > 0 && hi > lo else {
                throw .invalidArgument("llama3 rope: need 0 < low_freq_factor (\(lo)) < high_freq_factor (\(hi))")
            }
            guard orig >= 1 else { throw .invalidArgument("llama3 rope: original_max_position_embeddings (\(orig)) must be >= 1") }
        }
    }
}

extension ModelConfig {
    /// RoPE's d/2 inverse frequencies θ^(−2i/d), i < d/2 (then rescaled per `ropeScaling`),
    /// rounded to fp32 as transformers stores them.
    public func ropeInverseFrequencies() -> [Float] {
        let half = headDim / 2
        var inv = [Float](repeating: 0, count: half)
        for i in 0..<half {
            // transformers: 1 / base ** (arange(0, d, 2).float() / d), in fp32
            let e = Float(2 * i) / Float(headDim)
            let p = Float(pow(Double(ropeTheta), Double(e)))
            inv[i] = 1 / p
        }
        switch ropeScaling {
        case nil: break
        case .linear(let f):
            for i in 0..<half { inv[i] /= f }
        case .llama3(let f, let lo, let hi, let orig):
            let l = Double(orig)
            let lowWavelen = l / Double(lo), highWavelen = l / Double(hi)
            for i in 0..<half {
                let wavelen = 2 * Double.pi / Double(inv[i])
                if wavelen < highWavelen { continue }
                if wavelen > lowWavelen { inv[i] /= f; continue }
                let s = Float((l / wavelen - Double(lo)) / Double(hi - lo))
                inv[i] = (1 - s) * inv[i] / f + s * inv[i]
            }
        }
        return inv
    }
}
