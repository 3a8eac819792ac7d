import CPeftSwift

/// The precision of the matrix products (`compute_dtype` in the C, Python and CLI options).
///   fp32: operands and accumulation in fp32 (the default; results as before).
///   bf16: GEMM operands (activations and dequantized weights) rounded to bf16 (round to nearest
///         even), products summed in fp32, results fp32: bitsandbytes'
///         `bnb_4bit_compute_dtype=torch.bfloat16` for the products. LoRA A/B, gradients and
///         optimizer states stay fp32, as PEFT keeps adapter weights fp32 (autocast_adapter_dtype).
/// bf16 runs on the AVX512_BF16 kernels only; without them it is an error, never a silent fp32.
public enum ComputeDType: Int32, Sendable, CaseIterable {
    case fp32 = 0   // PST_DTYPE_F32
    case bf16 = 2   // PST_DTYPE_BF16

    public var name: String { self == .fp32 ? "fp32" : "bf16" }

    /// "fp32"/"float32" or "bf16"/"bfloat16", else nil.
    public static func named(_ s: String) -> ComputeDType? {
        switch s.lowercased() {
        case "fp32", "float32", "f32": return .fp32
        case "bf16", "bfloat16": return .bf16
        default: return nil
        }
    }

    /// Throws unsupportedCPU when this dtype cannot run on the active kernel path (bf16 needs
    /// ISA.avx512bf16: the CPU's AVX512_BF16, not capped by PST_ISA or pst_set_isa).
    public func checkAvailable(_ what: String) throws(PSTError) {
        guard self == .bf16, ISA.active < .avx512bf16 else { return }
        let missing = ISA.avx512bf16.missingFeatures
        if missing.isEmpty {
            throw PSTError(status: PST_ERR_UNSUPPORTED_CPU,
                           "\(what): compute dtype bf16 needs the avx512bf16 kernel path, but the active path is \(ISA.active.name) (PST_ISA or pst_set_isa)")
        }
        throw PSTError(status: PST_ERR_UNSUPPORTED_CPU,
                       "\(what): compute dtype bf16 needs \(missing.joined(separator: ", ")), which this CPU lacks")
    }
}
