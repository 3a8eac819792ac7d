import Testing
@testable import PeftSwift

/// The 4-bit GEMV on every ISA path the host offers: bit-identical to the AVX2 path (the zmm
/// kernel gives each lane the AVX2 lane's operations in the same order, see
/// PeftSwiftAVX512/QuantMatvec512.swift), whatever the row split, and within the reordering
/// bound of the reference twin. The ISA is passed explicitly (other tests run in parallel).
@Suite struct QuantMatvec512Tests {
    static let paths = ISA.allCases.filter { $0.missingFeatures.isEmpty }

    @Test func everyPathMatchesAVX2AndReference() throws {
        // (rows, cols, blocksize): odd row counts (1, 7, 257: pairs + an odd row, 8-row passes
        // + leftovers), K from one block to 1536, K = 64·k + 32 with blocksize 32, and a row
        // that splits a block (cols % blocksize != 0: the general path)
        let shapes: [(Int, Int, Int)] = [(1, 64, 64), (7, 96, 32), (257, 576, 64), (9, 1536, 64), (16, 1536, 128),
                                         (3, 224, 32), (2, 64, 32), (10, 576, 64), (11, 4096, 4096), (5, 100, 64),
                                         (8, 256, 256)]
        for dq in [false, true] {
            for type in QuantType.allCases {
                for (rows, cols, bs) in shapes {
                    let n = rows * cols
                    let x = QuantKernelTests.randomInput(n, .f32, seed: UInt64(n + bs + (dq ? 1 : 0)))
                    let t = try x.withUnsafeBytes {
                        try QuantizedTensor(quantizing: $0.baseAddress!, dtype: .f32, shape: [rows, cols], blocksize: bs,
                                            type: type, doubleQuant: dq)
                    }
                    var rng = QuantRNG(UInt64(cols))
                    let v = (0..<cols).map { _ in rng.normal() }
                    var w = [Float](repeating: 0, count: n)
                    w.withUnsafeMutableBytes { t.dequantizeReference(into: $0.baseAddress!, dtype: .f32) }
                    for acc in [false, true] {
                        let y0 = (0..<rows).map { Float($0) * 0.25 - 1 }
                        var avx2 = y0, ref = y0
                        t.matvec(v, &avx2, accumulate: acc, isa: .avx2)
                        t.matvecReference(v, &ref, accumulate: acc)
                        for isa in Self.paths {
                            let what = "\(isa.name) \(type) dq \(dq) \(rows)x\(cols) bs \(bs) acc \(acc)"
                            var y = y0
                            t.matvec(v, &y, accumulate: acc, isa: isa)
                            #expect(y.map(\.bitPattern) == avx2.map(\.bitPattern), "\(what) vs avx2")
                            for step in [1, 3, 5, 8] {
                                var parts = y0
                                var r0 = 0
                                while r0 < rows {
                                    let r1 = min(rows, r0 + step)
                                    t.matvecRows(v, &parts, accumulate: acc, r0: r0, r1: r1, isa: isa)
                                    r0 = r1
                                }
                                #expect(parts.map(\.bitPattern) == avx2.map(\.bitPattern), "\(what) ranges of \(step)")
                            }
                            // reordering bound of the twin (QuantKernelTests.matvecMatchesReference)
                            for o in 0..<rows {
                                let mag = (0..<cols).reduce(Float(1)) { $0 + abs(w[o * cols + $1] * v[$1]) } + abs(y0[o])
                                #expect(abs(y[o] - ref[o]) <= QuantKernelTests.reorderTol * mag, "\(what) row \(o) vs reference")
                            }
                        }
                    }
                }
            }
        }
    }
}
