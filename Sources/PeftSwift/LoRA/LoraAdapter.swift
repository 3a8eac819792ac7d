#if canImport(Glibc)
import Glibc
#endif

/// How a new adapter's A is initialized (B always starts at zero, so a new adapter does not
/// change the layer's output), PEFT's `init_lora_weights`.
public enum LoraInit: Int32, Sendable {
    /// PEFT's default (`init_lora_weights=True`): A ~ kaiming_uniform(a=√5), i.e.
    /// U(−1/√in, 1/√in) (gain √(2/(1+5)) · √(3/in) = 1/√in).
    case kaiming = 0
    /// `init_lora_weights="gaussian"`: A ~ N(0, 1/r) (standard deviation 1/r, as PEFT's
    /// `nn.init.normal_(A, std=1/r)`).
    case gaussian = 1
    /// A = 0 and B = 0 (PEFT's `init_lora_weights=False` leaves the random init; zero here is
    /// for callers that load weights right after).
    case zeros = 2
}

/// The hyper-parameters of one adapter, in PEFT's words.
public struct LoraConfig: Sendable, Equatable {
    public var r: Int
    public var alpha: Float
    public var dropout: Float
    public var useRslora: Bool
    public var initialization: LoraInit
    public var seed: UInt64

    public init(r: Int, alpha: Float, dropout: Float = 0, useRslora: Bool = false,
                initialization: LoraInit = .kaiming, seed: UInt64 = 0) {
        self.r = r
        self.alpha = alpha
        self.dropout = dropout
        self.useRslora = useRslora
        self.initialization = initialization
        self.seed = seed
    }

    /// PEFT's scaling: alpha / r, or alpha / √r with rsLoRA (Kalajdzievski 2023).
    public var scaling: Float { useRslora ? alpha / Float(r).squareRoot() : alpha / Float(r) }

    /// Checks the values for a layer with the given features.
    public func validate(inFeatures: Int, outFeatures: Int) throws(PSTError) {
        guard r >= 1 && r <= min(inFeatures, outFeatures) else {
            throw .invalidArgument("r (\(r)) must be in 1...min(in_features, out_features) (\(min(inFeatures, outFeatures)))")
        }
        guard alpha.isFinite && alpha > 0 else { throw .invalidArgument("lora_alpha (\(alpha)) must be > 0") }
        guard dropout.isFinite && dropout >= 0 && dropout < 1 else {
            throw .invalidArgument("lora_dropout (\(dropout)) must be in [0, 1)")
        }
    }
}

/// One named LoRA adapter: A (r × in) and B (out × r), their gradients, and what forward
/// keeps for backward. Each adapter's tensors are its own: adding, deleting or loading one
/// never touches another's.
public final class LoraAdapter {
    public let name: String
    public let config: LoraConfig
    public let inFeatures: Int
    public let outFeatures: Int
    /// A: r × in, row-major (PEFT's lora_A.weight).
    public let a: AlignedBuffer<Float>
    /// B: out × r, row-major (PEFT's lora_B.weight).
    public let b: AlignedBuffer<Float>
    /// Gradients, accumulated by backward until zeroed.
    public let gradA: AlignedBuffer<Float>
    public let gradB: AlignedBuffer<Float>
    /// The weight of this adapter in the active set (1 by default).
    public internal(set) var weight: Float = 1
    /// True while merged into the base weight.
    public internal(set) var merged = false
    /// Dropout mask generator; advanced once per training forward.
    var rng: SplitMix64

    public var scaling: Float { config.scaling }

    init(name: String, config: LoraConfig, inFeatures: Int, outFeatures: Int) throws(PSTError) {
        try config.validate(inFeatures: inFeatures, outFeatures: outFeatures)
        self.name = name
        self.config = config
        self.inFeatures = inFeatures
        self.outFeatures = outFeatures
        a = try AlignedBuffer(count: config.r * inFeatures)
        b = try AlignedBuffer(count: outFeatures * config.r)
        gradA = try AlignedBuffer(count: config.r * inFeatures)
        gradB = try AlignedBuffer(count: outFeatures * config.r)
        var g = SplitMix64(seed: config.seed ^ 0x5EED_0F_A0A0)
        switch config.initialization {
        case .kaiming:
            let bound = 1 / Float(inFeatures).squareRoot()
            for i in 0..<a.count { a[i] = g.uniform(-bound, bound) }
        case .gaussian:
            let std = 1 / Float(config.r)
            for i in 0..<a.count { a[i] = g.normal() * std }
        case .zeros:
            break
        }
        rng = SplitMix64(seed: config.seed ^ 0xD0D0_0D0D_0D0D)
    }

    /// Sets both gradients to zero.
    public func zeroGrad() {
        memset(gradA.baseAddress, 0, gradA.byteCount)
        memset(gradB.baseAddress, 0, gradB.byteCount)
    }
}
