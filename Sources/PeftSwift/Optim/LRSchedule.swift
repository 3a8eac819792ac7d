#if canImport(Glibc)
import Glibc
#endif

/// Learning-rate multipliers by step, as Hugging Face transformers' schedules (transformers
/// 5.24, optimization.py) define them: the learning rate of optimizer step `s` (0-based: the
/// first `step()` uses s = 0) is `baseLR × multiplier(step: s)`.
public enum LRSchedule: Equatable, Sendable {
    /// 1 always (`get_constant_schedule`).
    case constant
    /// Linear warm-up from 0 over `warmupSteps`, then either 1 (`decayTo == nil`,
    /// `get_constant_schedule_with_warmup`) or a linear decay reaching 0 at step `decayTo`
    /// (`get_linear_schedule_with_warmup` with `num_training_steps = decayTo`):
    ///
    ///     s < w:  s / max(1, w)
    ///     else:   max(0, (T − s) / max(1, T − w))
    case linearWarmup(warmupSteps: Int, decayTo: Int?)
    /// `get_cosine_schedule_with_warmup`: linear warm-up, then
    ///
    ///     progress = (s − w) / max(1, T − w)
    ///     max(0, ½ (1 + cos(π · cycles · 2 · progress)))
    case cosineWithWarmup(warmupSteps: Int, totalSteps: Int, cycles: Double = 0.5)

    /// Throws `PST_ERR_INVALID_ARG` for negative step counts, a decay end before the warm-up
    /// end, or non-finite cycles.
    public func validate() throws(PSTError) {
        switch self {
        case .constant: return
        case .linearWarmup(let w, let t):
            guard w >= 0 else { throw .invalidArgument("warmupSteps (\(w)) must be >= 0") }
            if let t, t < w { throw .invalidArgument("decayTo (\(t)) must be >= warmupSteps (\(w))") }
        case .cosineWithWarmup(let w, let t, let c):
            guard w >= 0 else { throw .invalidArgument("warmupSteps (\(w)) must be >= 0") }
            guard t >= w else { throw .invalidArgument("totalSteps (\(t)) must be >= warmupSteps (\(w))") }
            guard c.isFinite else { throw .invalidArgument("cycles (\(c)) must be finite") }
        }
    }

    /// The multiplier at 0-based step `step` (negative steps count as 0).
    public func multiplier(step: Int) -> Double {
        let s = max(0, step)
        switch self {
        case .constant:
            return 1
        case .linearWarmup(let w, let t):
            if s < w { return Double(s) / Double(max(1, w)) }
            guard let t else { return 1 }
            return max(0, Double(t - s) / Double(max(1, t - w)))
        case .cosineWithWarmup(let w, let t, let c):
            if s < w { return Double(s) / Double(max(1, w)) }
            let progress = Double(s - w) / Double(max(1, t - w))
            return max(0, 0.5 * (1 + cos(Double.pi * c * 2 * progress)))
        }
    }
}
