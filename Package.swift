// swift-tools-version: 6.1
// peftswift: QLoRA building blocks (NF4/FP4, double quantization, LoRA, paged optimizers)
// in a Swift engine shipped as libpeftswift.so with a C ABI.
import PackageDescription

#if canImport(Glibc)
import Glibc
#endif

/// `PST_DIST=1` (set by scripts/build-lib.sh) builds the shipped library: the Swift runtime
/// linked statically (no libswift*.so needed by users) and only `pst_*` exported. The test
/// bundle cannot link with -static-stdlib, so ordinary builds leave both off.
let dist = getenv("PST_DIST").map { String(cString: $0) == "1" } ?? false
let root = Context.packageDirectory

// AVX2 + FMA (x86-64-v3) for the SIMD kernels; without it SIMD8 falls back to SSE and
// addingProduct becomes a libm call.
let simd: [SwiftSetting] = [
    .unsafeFlags(["-Xcc", "-march=x86-64-v3", "-enforce-exclusivity=unchecked"]),
]

// The AVX-512 kernels: x86-64-v3 plus AVX-512F/BW/DQ/VL (Skylake-SP, Ice Lake, Sapphire Rapids,
// AMD Zen 4), and the BF16 kernels with AVX512_BF16 (Cooper Lake, Sapphire Rapids, Zen 4) on top.
// These modules hold nothing but kernels that GEMM dispatches to at run time after checking the
// CPU (Sources/PeftSwift/Core/ISA.swift); no other code may be compiled with these flags.
let avx512Flags = ["-Xcc", "-march=x86-64-v3", "-Xcc", "-mavx512f", "-Xcc", "-mavx512bw",
                   "-Xcc", "-mavx512dq", "-Xcc", "-mavx512vl", "-enforce-exclusivity=unchecked"]
let avx512: [SwiftSetting] = [.unsafeFlags(avx512Flags)]
let avx512bf16: [SwiftSetting] = [.unsafeFlags(avx512Flags + ["-Xcc", "-mavx512bf16"])]

var libLinker: [LinkerSetting] = []
if dist {
    libLinker.append(.unsafeFlags([
        "-static-stdlib", "-use-ld=lld",
        "-Xlinker", "--version-script=\(root)/scripts/exports.map",
        "-Xlinker", "--gc-sections",
        // bind the module's own symbols inside the library, so none but pst_* reach .dynsym
        "-Xlinker", "-Bsymbolic",
    ]))
}

let package = Package(
    name: "peftswift",
    products: [
        .library(name: "peftswift", type: .dynamic, targets: ["PeftSwift"]),
    ],
    targets: [
        .target(
            name: "CPeftSwift",
            // baseline x86-64 on purpose: cpu.c and entry.c run before the CPU check (no -march here)
            cSettings: [.unsafeFlags(["-O2"])]
        ),
        .target(name: "PeftSwiftAVX512", swiftSettings: avx512),
        .target(name: "CPeftSwiftBF16", cSettings: [.unsafeFlags(["-O2"])]),
        .target(name: "PeftSwiftAVX512BF16", dependencies: ["CPeftSwiftBF16"], swiftSettings: avx512bf16),
        .target(
            name: "PeftSwift",
            dependencies: ["CPeftSwift", "PeftSwiftAVX512", "PeftSwiftAVX512BF16"],
            swiftSettings: simd,
            linkerSettings: libLinker
        ),
        .testTarget(
            name: "PeftSwiftTests",
            dependencies: ["PeftSwift"],
            path: "Tests/PeftSwiftTests",
            resources: [],
            swiftSettings: simd
        ),
    ],
    // Kernels hand raw buffers to Dispatch worker threads; Swift 5 mode keeps that expressible
    // without @unchecked wrappers at every call site (the chunks never overlap).
    swiftLanguageModes: [.v5]
)
