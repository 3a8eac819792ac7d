/// bitsandbytes' 4-bit data types (`quant_type`). Raw values are `PST_QUANT_NF4`/`PST_QUANT_FP4`.
public enum QuantType: Int32, Sendable, CaseIterable {
    case nf4 = 0, fp4 = 1

    /// bitsandbytes' spelling: `"nf4"` or `"fp4"` (the `quant_type` of a QuantState, and the
    /// suffix of the `quant_state.bitsandbytes__<name>` key).
    public var name: String {
        switch self {
        case .nf4: return "nf4"
        case .fp4: return "fp4"
        }
    }

    public init?(name: String) {
        switch name {
        case "nf4": self = .nf4
        case "fp4": self = .fp4
        default: return nil
        }
    }

    /// Validates a raw C value.
    public static func from(_ raw: Int32, argument: StaticString) throws(PSTError) -> QuantType {
        guard let t = QuantType(rawValue: raw) else {
            throw .invalidArgument("\(argument) (\(raw)) is not a PST_QUANT_* value")
        }
        return t
    }

    /// The 16-entry codebook (bitsandbytes' `get_4bit_type`), indexed by the 4-bit code.
    public var codebook: [Float] { self == .nf4 ? Codebooks.nf4 : Codebooks.fp4 }
}
