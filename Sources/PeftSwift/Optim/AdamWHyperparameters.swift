/// Hyperparameters of AdamW, as `torch.optim.AdamW` and `bitsandbytes.optim.AdamW8bit` name
/// them (both default to lr 1e-3, betas (0.9, 0.999), eps 1e-8, weight_decay 1e-2). They are
/// doubles, like the Python floats they mirror; each step derives its float32 constants from
/// them in the peer library's order (see `AdamW`).
public struct AdamWHyperparameters: Equatable, Sendable {
    public var learningRate: Double
    public var beta1: Double
    public var beta2: Double
    public var eps: Double
    public var weightDecay: Double

    public init(learningRate: Double = 1e-3, beta1: Double = 0.9, beta2: Double = 0.999,
                eps: Double = 1e-8, weightDecay: Double = 1e-2) {
        self.learningRate = learningRate
        self.beta1 = beta1
        self.beta2 = beta2
        self.eps = eps
        self.weightDecay = weightDecay
    }

    /// Throws `PST_ERR_INVALID_ARG` unless lr ≥ 0, 0 ≤ beta1, beta2 < 1, eps ≥ 0 and
    /// weight decay ≥ 0, all finite (torch's own checks, plus finiteness).
    public func validate() throws(PSTError) {
        func check(_ ok: Bool, _ m: @autoclosure () -> String) throws(PSTError) {
            if !ok { throw .invalidArgument(m()) }
        }
        try check(learningRate.isFinite && learningRate >= 0, "learningRate (\(learningRate)) must be finite and >= 0")
        try check(beta1 >= 0 && beta1 < 1, "beta1 (\(beta1)) must be in [0, 1)")
        try check(beta2 >= 0 && beta2 < 1, "beta2 (\(beta2)) must be in [0, 1)")
        try check(eps.isFinite && eps >= 0, "eps (\(eps)) must be finite and >= 0")
        try check(weightDecay.isFinite && weightDecay >= 0, "weightDecay (\(weightDecay)) must be finite and >= 0")
    }
}
