import CPeftSwift
import Synchronization
#if canImport(Glibc)
import Glibc
#endif

/// The instruction-set path of the kernels, chosen at run time. Each path is a superset of the
/// one before; the engine is compiled for `.avx2` (x86-64-v3) and reaches the AVX-512 kernels
/// (modules PeftSwiftAVX512, PeftSwiftAVX512BF16) only through `ISA.active`, which never names
/// a path the CPU lacks. fp32 results are bit-identical on every path (the kernels accumulate
/// each element in the same order); `.avx512bf16` adds the bf16 compute kernels.
public enum ISA: Int32, CaseIterable, Comparable, Sendable {
    /// AVX2 + FMA: every CPU the library runs on.
    case avx2 = 0
    /// AVX-512F/BW/DQ/VL fp32 kernels (Skylake-SP and later Intel server cores, AMD Zen 4).
    case avx512 = 1
    /// AVX512_BF16 kernels (vdpbf16ps) on top (Cooper Lake, Sapphire Rapids, Zen 4).
    case avx512bf16 = 2

    public static func < (a: ISA, b: ISA) -> Bool { a.rawValue < b.rawValue }

    /// The name PST_ISA and the Python binding use.
    public var name: String {
        switch self {
        case .avx2: return "avx2"
        case .avx512: return "avx512"
        case .avx512bf16: return "avx512bf16"
        }
    }

    /// The path named `s` ("avx2", "avx512", "avx512bf16"; "avx512_bf16" also), or nil.
    public static func named(_ s: String) -> ISA? {
        switch s.lowercased() {
        case "avx2": return .avx2
        case "avx512": return .avx512
        case "avx512bf16", "avx512_bf16": return .avx512bf16
        default: return nil
        }
    }

    /// The CPU features (pstshim_cpu_features bits) this path needs beyond x86-64-v3.
    var requiredFeatures: [Int32] {
        let f512 = [PSTSHIM_CPU_AVX512F, PSTSHIM_CPU_AVX512BW, PSTSHIM_CPU_AVX512DQ, PSTSHIM_CPU_AVX512VL].map { Int32($0) }
        switch self {
        case .avx2: return []
        case .avx512: return f512
        case .avx512bf16: return f512 + [Int32(PSTSHIM_CPU_AVX512_BF16)]
        }
    }

    /// Names of the features this path needs that the CPU lacks (empty when it can run it).
    public var missingFeatures: [String] {
        let have = pstshim_cpu_features()
        return requiredFeatures.filter { (have >> UInt32($0)) & 1 == 0 }.map { bit in
            pstshim_cpu_feature_name(bit).map { String(cString: $0) } ?? "bit \(bit)"
        }
    }

    /// The best path this CPU has.
    public static var host: ISA {
        ISA.allCases.last { $0.missingFeatures.isEmpty } ?? .avx2
    }

    private static let state = Atomic<Int32>(-1)

    /// The path the kernels use now: the host's best, capped by PST_ISA (read once) or `set`.
    @inline(__always)
    public static var active: ISA {
        let v = state.load(ordering: .relaxed)
        if v >= 0 { return ISA(rawValue: v)! }
        return initialize()
    }

    private static func initialize() -> ISA {
        var isa = host
        if let env = getenv("PST_ISA"), let want = named(String(cString: env)) { isa = min(isa, want) }
        state.store(isa.rawValue, ordering: .relaxed)
        return isa
    }

    /// Uses `isa` from the next kernel call on (process-wide). Errors: unsupportedCPU naming
    /// the missing features when this CPU lacks it.
    public static func set(_ isa: ISA) throws(PSTError) {
        let missing = isa.missingFeatures
        guard missing.isEmpty else {
            throw PSTError(status: PST_ERR_UNSUPPORTED_CPU,
                           "isa \(isa.name) needs \(missing.joined(separator: ", ")), which this CPU lacks (its best is \(host.name))")
        }
        state.store(isa.rawValue, ordering: .relaxed)
    }
}

/// How compute dtype bf16 multiplies (both give bf16 operands and fp32 sums; they round the sums
/// in a different order, so results differ in the last bits between them):
///   dot: vdpbf16ps, two products per lane and instruction (32 multiply-adds per zmm instruction);
///   fma: the operands rounded to bf16 once at packing time (vcvtneps2bf16), then the fp32
///        AVX-512 kernel (16 multiply-adds per instruction, exact products of bf16 values).
/// Which is faster depends on the core: measured on Intel Emerald Rapids (this project's host),
/// vdpbf16ps zmm issues at half the rate of fp32 zmm FMAs (two FMA ports), so `fma` is twice
/// as fast; AMD Zen 4 runs one zmm FMA per cycle (two 256-bit halves) and vdpbf16ps at twice the
/// multiply-adds (the speed issue's host), so `dot` is. Default: dot on AMD, fma elsewhere;
/// PST_BF16_KERNEL=dot|fma (read once) overrides.
public enum BF16Kernel: Sendable, CaseIterable {
    case dot, fma

    public static let `default`: BF16Kernel = {
        if let e = getenv("PST_BF16_KERNEL") {
            switch String(cString: e).lowercased() {
            case "dot": return .dot
            case "fma": return .fma
            default: break
            }
        }
        return pstshim_cpu_is_amd() != 0 ? .dot : .fma
    }()
}
