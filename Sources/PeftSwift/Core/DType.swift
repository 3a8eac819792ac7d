import CPeftSwift

/// Element types that cross the ABI (`PST_DTYPE_*` in peftswift.h; the raw values are those
/// macros). Names are PyTorch's (`"float32"`, `"bfloat16"`, ...), as bitsandbytes writes them
/// into a quant state; `safetensorsName` is the safetensors header's spelling.
public enum DType: Int32, Sendable, CaseIterable {
    case f32 = 0, f16 = 1, bf16 = 2, u8 = 3, i8 = 4, i32 = 5, i64 = 6

    /// Bytes per element.
    public var size: Int {
        switch self {
        case .f32, .i32: return 4
        case .f16, .bf16: return 2
        case .u8, .i8: return 1
        case .i64: return 8
        }
    }

    /// PyTorch's name without the `torch.` prefix, as bitsandbytes stores it.
    public var torchName: String {
        switch self {
        case .f32: return "float32"
        case .f16: return "float16"
        case .bf16: return "bfloat16"
        case .u8: return "uint8"
        case .i8: return "int8"
        case .i32: return "int32"
        case .i64: return "int64"
        }
    }

    /// The safetensors header's dtype string.
    public var safetensorsName: String {
        switch self {
        case .f32: return "F32"
        case .f16: return "F16"
        case .bf16: return "BF16"
        case .u8: return "U8"
        case .i8: return "I8"
        case .i32: return "I32"
        case .i64: return "I64"
        }
    }

    public init?(torchName: String) {
        guard let d = DType.allCases.first(where: { $0.torchName == torchName }) else { return nil }
        self = d
    }

    public init?(safetensorsName: String) {
        guard let d = DType.allCases.first(where: { $0.safetensorsName == safetensorsName }) else { return nil }
        self = d
    }

    /// Validates a raw C value.
    public static func from(_ raw: Int32, argument: StaticString) throws(PSTError) -> DType {
        guard let d = DType(rawValue: raw) else {
            throw .invalidArgument("\(argument) (\(raw)) is not a PST_DTYPE_* value")
        }
        return d
    }

    /// True for the floating types a weight or activation may have (f32, f16, bf16).
    public var isFloat: Bool { self == .f32 || self == .f16 || self == .bf16 }
}
