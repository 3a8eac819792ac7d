import Foundation
@testable import PeftSwift

/// The fixtures' xorshift32 generator (Tests/fixtures/make_quant_fixtures.py `gen`): exact
/// float32 values both sides compute identically.
func quantGen(seed: UInt32, count n: Int, kind: Int) -> [Float] {
    var s = seed
    var out = [Float](repeating: 0, count: n)
    for i in 0..<n {
        s ^= s << 13; s ^= s >> 17; s ^= s << 5
        let h = s
        let m = Float(bitPattern: (h >> 9) | 0x3F80_0000)
        switch kind {
        case 0: out[i] = (m - 1.5) * Float(sign: .plus, exponent: Int(h & 7) - 3, significand: 1)
        case 1: out[i] = m * Float(sign: .plus, exponent: Int(h & 15) - 8, significand: 1)
        case 2: out[i] = 1000 + (m - 1)
        default: out[i] = m
        }
    }
    return out
}

/// Deterministic pseudo-random normal-ish floats for fast-vs-reference tests.
struct QuantRNG {
    var state: UInt64
    init(_ seed: UInt64) { state = seed &* 0x9E37_79B9_7F4A_7C15 | 1 }
    mutating func next() -> UInt64 {
        state ^= state << 13; state ^= state >> 7; state ^= state << 17
        return state
    }
    mutating func uniform() -> Float { Float(next() >> 40) / Float(1 << 24) }
    mutating func normal() -> Float {
        let u1 = max(uniform(), 1e-7), u2 = uniform()
        return sqrt(-2 * log(u1)) * cos(2 * Float.pi * u2)
    }
}

/// Bit equality, treating +0 and -0 as equal (bitsandbytes' FP4 code 8 decodes to -0.0 in its C
/// kernel and +0.0 through the map).
func sameFloat(_ a: Float, _ b: Float) -> Bool { a.bitPattern == b.bitPattern || (a == 0 && b == 0) }

/// Raw element bits of a float buffer of dtype (f32 -> bit pattern, f16/bf16 -> 16-bit pattern),
/// widened to Float for comparison.
func widenedValues(_ bytes: [UInt8], _ dtype: DType) -> [Float] {
    bytes.withUnsafeBytes { raw in
        let n = bytes.count / dtype.size
        return (0..<n).map { loadFloat(raw.baseAddress!, dtype, $0) }
    }
}

extension FixtureTensor {
    var peftDType: DType { DType(safetensorsName: dtype)! }
}

/// FixtureFile.load/list resolve paths from their caller's #filePath assuming a caller in
/// Tests/PeftSwiftTests/Support; these wrappers live there, so suites one level up use them.
func loadQuantFixture(_ relative: String) throws -> FixtureFile { try FixtureFile.load(relative) }
func listQuantFixtures() -> [String] { FixtureFile.list("quant") }
