import Foundation
import Testing
@testable import PeftSwift

/// Tolerances of the fast SGEMM against its Double-accumulating reference twin, relative to
/// the magnitude scale of each element: |alpha|·Σ_p |op(A)[i,p]|·|op(B)[p,j]| + |beta·C0[i,j]|.
enum GEMMTolerance {
    /// fp32 accumulation over k terms in blocks: grows like sqrt(k) for random data; the
    /// constant covers the worst seen with ~2× margin plus the final alpha/beta rounding.
    static func relative(k: Int) -> Double { Double(Float.ulpOfOne) * (4 * Double(k).squareRoot() + 8) }
    /// Absolute floor for elements whose scale is 0 (k == 0 with beta == 0, and so on).
    static let absolute = 1e-30
}

/// Deterministic pseudo-random values in [-1, 1).
struct GEMMRng {
    var s: UInt64
    mutating func next() -> Float {
        s = s &* 6364136223846793005 &+ 1442695040888963407
        return Float(Int64(bitPattern: s >> 11) % (1 << 20)) / Float(1 << 20)
    }
    mutating func array(_ n: Int) -> [Float] { (0..<n).map { _ in next() } }
}

/// One sgemm problem with stored operands sized by their leading dimensions.
struct GEMMCase: CustomStringConvertible {
    var transA = false, transB = false
    var m: Int, n: Int, k: Int
    var alpha: Float = 1, beta: Float = 0
    var padA = 0, padB = 0, padC = 0
    var seed: UInt64 = 1

    var lda: Int { (transA ? m : k) + padA }
    var ldb: Int { (transB ? k : n) + padB }
    var ldc: Int { n + padC }
    var aRows: Int { transA ? k : m }
    var bRows: Int { transB ? n : k }
    var bCols: Int { transB ? k : n }

    var description: String {
        "m=\(m) n=\(n) k=\(k) tA=\(transA) tB=\(transB) α=\(alpha) β=\(beta) pads=\(padA),\(padB),\(padC)"
    }

    func operands() -> (a: [Float], b: [Float], c: [Float]) {
        var r = GEMMRng(s: seed &* 0x9E3779B97F4A7C15 &+ UInt64(m * 131 + n * 17 + k))
        return (r.array(max(1, aRows * lda)), r.array(max(1, bRows * ldb)), r.array(max(1, m * ldc)))
    }

    func opA(_ a: [Float], _ i: Int, _ p: Int) -> Float { transA ? a[p * lda + i] : a[i * lda + p] }
    func opB(_ b: [Float], _ p: Int, _ j: Int) -> Float { transB ? b[j * ldb + p] : b[p * ldb + j] }

    func runFast(_ a: [Float], _ b: [Float], _ c: inout [Float]) {
        c.withUnsafeMutableBufferPointer { cp in
            GEMM.sgemm(transA: transA, transB: transB, m: m, n: n, k: k, alpha: alpha,
                       a: a, lda: lda, b: b, ldb: ldb, beta: beta, c: cp.baseAddress!, ldc: ldc)
        }
    }

    func runPanel(_ a: [Float], _ b: [Float], _ c: inout [Float]) {
        b.withUnsafeBufferPointer { bp in
            let src = PanelSource.dense(bp.baseAddress!, rows: bRows, cols: bCols, ld: ldb)
            c.withUnsafeMutableBufferPointer { cp in
                GEMM.sgemm(transA: transA, transB: transB, m: m, n: n, k: k, alpha: alpha,
                           a: a, lda: lda, b: src, beta: beta, c: cp.baseAddress!, ldc: ldc)
            }
        }
    }

    func runReference(_ a: [Float], _ b: [Float], _ c: inout [Float]) {
        c.withUnsafeMutableBufferPointer { cp in
            GEMM.sgemmReference(transA: transA, transB: transB, m: m, n: n, k: k, alpha: alpha,
                                a: a, lda: lda, b: b, ldb: ldb, beta: beta, c: cp.baseAddress!, ldc: ldc)
        }
    }

    /// Largest |fast - ref| / scale over C, and whether the padding of C was left alone.
    func compare(_ a: [Float], _ b: [Float], c0: [Float], fast: [Float], ref: [Float]) -> (worst: Double, padIntact: Bool) {
        var worst = 0.0
        var padIntact = true
        for i in 0..<m {
            for j in 0..<n {
                var s = 0.0
                for p in 0..<k { s += abs(Double(opA(a, i, p)) * Double(opB(b, p, j))) }
                let scale = abs(Double(alpha)) * s + (beta == 0 ? 0 : abs(Double(beta) * Double(c0[i * ldc + j])))
                let err = abs(Double(fast[i * ldc + j]) - Double(ref[i * ldc + j]))
                worst = max(worst, err / max(scale, GEMMTolerance.absolute))
            }
            for j in n..<ldc where fast[i * ldc + j].bitPattern != c0[i * ldc + j].bitPattern { padIntact = false }
        }
        return (worst, padIntact)
    }

    /// Runs the fast path (or the panel path) and the reference; expects agreement.
    func check(panel: Bool = false, sourceLocation: SourceLocation = #_sourceLocation) {
        let (a, b, c0) = operands()
        var fast = c0, ref = c0
        if panel { runPanel(a, b, &fast) } else { runFast(a, b, &fast) }
        runReference(a, b, &ref)
        let (worst, padIntact) = compare(a, b, c0: c0, fast: fast, ref: ref)
        #expect(worst <= GEMMTolerance.relative(k: k), "\(self) panel=\(panel): rel err \(worst)", sourceLocation: sourceLocation)
        #expect(padIntact, "\(self): wrote outside C[m, n]", sourceLocation: sourceLocation)
    }
}

@Suite(.serialized) struct GEMMTests {
    static let edgeSizes = [1, 2, 5, 6, 7, 13, 16, 17, 31, 33]

    @Test(arguments: [(false, false), (false, true), (true, false), (true, true)])
    func smallShapesAllTransposes(_ tr: (Bool, Bool)) {
        for m in Self.edgeSizes {
            for n in Self.edgeSizes {
                for k in [1, 3, 8, 17] {
                    GEMMCase(transA: tr.0, transB: tr.1, m: m, n: n, k: k).check()
                }
            }
        }
    }

    @Test(arguments: [(false, false), (false, true), (true, false), (true, true)])
    func blockedShapesCrossEveryBlockEdge(_ tr: (Bool, Bool)) {
        // k > kc (2 depth blocks, uneven), m > mc, n not a multiple of 16, threaded.
        GEMMCase(transA: tr.0, transB: tr.1, m: 151, n: 203, k: 301, alpha: 1.5, beta: -0.5, padA: 3, padB: 5, padC: 7).check()
        GEMMCase(transA: tr.0, transB: tr.1, m: 290, n: 37, k: 520, alpha: -1, beta: 1, padC: 1).check()
        GEMMCase(transA: tr.0, transB: tr.1, m: 64, n: 64, k: 64).check()
    }

    @Test func alphaBetaVariations() {
        for (alpha, beta) in [(Float(1), Float(0)), (1, 1), (2, 0), (-0.75, 0.25), (0.5, -2), (1, 3)] {
            for tr in [(false, true), (true, false)] {
                GEMMCase(transA: tr.0, transB: tr.1, m: 23, n: 41, k: 29, alpha: alpha, beta: beta, padB: 2, padC: 3).check()
                GEMMCase(transA: tr.0, transB: tr.1, m: 1, n: 41, k: 29, alpha: alpha, beta: beta, padC: 3).check()
                GEMMCase(transA: tr.0, transB: tr.1, m: 23, n: 1, k: 29, alpha: alpha, beta: beta, padC: 3).check()
            }
        }
    }

    @Test func betaZeroIgnoresNaNInC() {
        for (m, n) in [(9, 19), (1, 40), (40, 1)] {
            let cs = GEMMCase(transB: true, m: m, n: n, k: 11, alpha: 1, beta: 0)
            let (a, b, _) = cs.operands()
            var c = [Float](repeating: .nan, count: m * cs.ldc)
            cs.runFast(a, b, &c)
            #expect(c.allSatisfy { $0.isFinite }, "\(cs)")
        }
    }

    @Test func kZeroAndAlphaZeroScaleC() {
        for (alpha, beta) in [(Float(1), Float(0)), (1, 2), (0, 0.5), (0, 0)] {
            for k in [0, 5] where !(k == 5 && alpha != 0) {
                let cs = GEMMCase(m: 7, n: 20, k: k, alpha: alpha, beta: beta, padA: 1, padC: 2)
                let (a, b, c0) = cs.operands()
                var c = c0
                if beta == 0 { for i in 0..<7 { for j in 0..<20 { c[i * cs.ldc + j] = .nan } } }
                cs.runFast(a, b, &c)
                for i in 0..<7 {
                    for j in 0..<20 { #expect(c[i * cs.ldc + j] == beta * c0[i * cs.ldc + j], "\(cs)") }
                    #expect(c[i * cs.ldc + 20] == c0[i * cs.ldc + 20])
                }
            }
        }
        // m == 0 or n == 0: nothing happens at all.
        var c: [Float] = [42]
        GEMM.sgemm(transA: false, transB: false, m: 0, n: 1, k: 3, alpha: 1, a: [1, 2, 3], lda: 3,
                   b: [1, 2, 3], ldb: 1, beta: 0, c: &c, ldc: 1)
        #expect(c == [42])
    }

    @Test func gemvShapesAllTransposes() {
        for tr in [(false, false), (false, true), (true, false), (true, true)] {
            for (m, n, k) in [(1, 1, 1), (1, 1, 37), (1, 3, 1), (1, 57, 130), (57, 1, 130), (1, 700, 513), (700, 1, 513), (3, 1, 5)] {
                GEMMCase(transA: tr.0, transB: tr.1, m: m, n: n, k: k, alpha: 1.25, beta: 0.5, padA: 2, padB: 3, padC: 4).check()
                GEMMCase(transA: tr.0, transB: tr.1, m: m, n: n, k: k, padA: 1).check(panel: true)
            }
        }
    }

    @Test func loraRankShapes() {
        // x·Aᵀ (rank 16 down), h·Bᵀ (up), and the transA gradient gᵀ·x, smaller K than the real 4096.
        GEMMCase(transB: true, m: 96, n: 16, k: 1030).check()
        GEMMCase(transB: true, m: 96, n: 1030, k: 16).check()
        GEMMCase(transA: true, m: 16, n: 1030, k: 96).check()
        GEMMCase(m: 96, n: 16, k: 1030, beta: 1).check()
    }

    @Test func panelPathMatchesInMemoryPathBitwise() {
        // The panel path packs the same values in the same order: identical results.
        for tr in [(false, false), (false, true), (true, false), (true, true)] {
            for (m, n, k) in [(7, 9, 5), (150, 530, 300), (31, 1100, 77), (290, 40, 600), (13, 100, 450)] {
                let cs = GEMMCase(transA: tr.0, transB: tr.1, m: m, n: n, k: k, alpha: 0.5, beta: 2, padB: 3, padC: 1)
                let (a, b, c0) = cs.operands()
                var mem = c0, pan = c0
                cs.runFast(a, b, &mem)
                cs.runPanel(a, b, &pan)
                #expect(mem.map(\.bitPattern) == pan.map(\.bitPattern), "\(cs)")
                if m * n * k < 100_000 { cs.check(panel: true) }  // the large ones: bitwise above suffices
            }
        }
    }

    @Test(arguments: [true, false])
    func panelSourceIsNeverAskedForWholeMatrix(_ transB: Bool) {
        // W is out×in = 1024×1024 (4 Mi elements); every request must be a bounded block,
        // and together the requests must cover W.
        let out = 1024, inn = 1024, m = 24
        let (n, k) = transB ? (out, inn) : (inn, out)
        var r = GEMMRng(s: 7)
        let w = r.array(out * inn), x = r.array(m * k)
        let lock = NSLock()
        var calls = 0, largest = 0
        var covered = [Bool](repeating: false, count: out * inn)
        var y = [Float](repeating: 0, count: m * n), ref = y
        w.withUnsafeBufferPointer { wp in
            let dense = PanelSource.dense(wp.baseAddress!, rows: out, cols: inn, ld: inn)
            let counting = PanelSource(rows: out, cols: inn) { r0, rc, c0, cc, dst, ld in
                lock.lock()
                calls += 1
                largest = max(largest, rc * cc)
                for i in r0..<(r0 + rc) { for j in c0..<(c0 + cc) { covered[i * inn + j] = true } }
                lock.unlock()
                dense.fill(r0, rc, c0, cc, dst, ld)
            }
            GEMM.sgemm(transA: false, transB: transB, m: m, n: n, k: k, alpha: 1, a: x, lda: k,
                       b: counting, beta: 0, c: &y, ldc: n)
            GEMM.sgemm(transA: false, transB: transB, m: m, n: n, k: k, alpha: 1, a: x, lda: k,
                       b: wp.baseAddress!, ldb: inn, beta: 0, c: &ref, ldc: n)
        }
        #expect(y.map(\.bitPattern) == ref.map(\.bitPattern))
        #expect(largest <= GEMM.panelBlockLimit)
        #expect(largest < out * inn)
        #expect(calls >= (out * inn) / GEMM.panelBlockLimit)
        #expect(calls <= 4 * (out * inn) / GEMM.panelBlockLimit + 8, "too many small requests: \(calls)")
        #expect(covered.allSatisfy { $0 })
    }

    @Test func panelGEMVIsNeverAskedForWholeMatrix() {
        let out = 1024, inn = 1024
        var r = GEMMRng(s: 9)
        let w = r.array(out * inn), x = r.array(max(out, inn))
        let lock = NSLock()
        var largest = 0
        for transB in [true, false] {
            let (n, k) = transB ? (out, inn) : (inn, out)
            var y = [Float](repeating: 0, count: n), ref = y
            w.withUnsafeBufferPointer { wp in
                let dense = PanelSource.dense(wp.baseAddress!, rows: out, cols: inn, ld: inn)
                let counting = PanelSource(rows: out, cols: inn) { r0, rc, c0, cc, dst, ld in
                    lock.lock(); largest = max(largest, rc * cc); lock.unlock()
                    dense.fill(r0, rc, c0, cc, dst, ld)
                }
                GEMM.sgemm(transA: false, transB: transB, m: 1, n: n, k: k, alpha: 1, a: x, lda: k,
                           b: counting, beta: 0, c: &y, ldc: n)
            }
            let cs = GEMMCase(transB: transB, m: 1, n: n, k: k)
            GEMM.sgemmReference(transA: false, transB: transB, m: 1, n: n, k: k, alpha: 1, a: x, lda: k,
                                b: w, ldb: inn, beta: 0, c: &ref, ldc: n)
            let scale = (0..<n).map { j in (0..<k).reduce(0.0) { $0 + abs(Double(x[$1]) * Double(cs.opB(w, $1, j))) } }
            for j in 0..<n { #expect(abs(Double(y[j] - ref[j])) <= GEMMTolerance.relative(k: k) * scale[j]) }
        }
        #expect(largest <= GEMM.panelBlockLimit)
        #expect(largest < out * inn)
    }

    @Test func resultDoesNotDependOnThreadCount() {
        let saved = Threads.count
        defer { Threads.count = saved }
        for cs in [GEMCaseList.big, GEMCaseList.tall, GEMCaseList.short, GEMCaseList.gemvRow, GEMCaseList.gemvCol] {
            let (a, b, c0) = cs.operands()
            var one = c0, two = c0, three = c0
            Threads.count = 1; cs.runFast(a, b, &one)
            Threads.count = 2; cs.runFast(a, b, &two)
            Threads.count = 3; cs.runFast(a, b, &three)
            #expect(one.map(\.bitPattern) == two.map(\.bitPattern), "\(cs)")
            #expect(one.map(\.bitPattern) == three.map(\.bitPattern), "\(cs)")
        }
    }

    @Test func referenceTwinIsExactOnSmallIntegers() {
        // Integer-valued operands: every path is exact, so fast, panel and reference agree bitwise.
        let m = 13, n = 35, k = 19
        let a = (0..<(m * k)).map { Float($0 % 7 - 3) }, b = (0..<(k * n)).map { Float($0 % 5 - 2) }
        var ref = [Float](repeating: 1, count: m * n), fast = ref
        GEMM.sgemmReference(transA: false, transB: false, m: m, n: n, k: k, alpha: 2, a: a, lda: k, b: b, ldb: n, beta: 3, c: &ref, ldc: n)
        GEMM.sgemm(transA: false, transB: false, m: m, n: n, k: k, alpha: 2, a: a, lda: k, b: b, ldb: n, beta: 3, c: &fast, ldc: n)
        #expect(ref == fast)
        var naive = [Float](repeating: 0, count: m * n)
        for i in 0..<m { for j in 0..<n {
            var s: Float = 0
            for p in 0..<k { s += a[i * k + p] * b[p * n + j] }
            naive[i * n + j] = 2 * s + 3
        } }
        #expect(ref == naive)
    }
}

enum GEMCaseList {
    static let big = GEMMCase(transB: true, m: 200, n: 300, k: 270, alpha: 1, beta: 0.5, padC: 3)
    static let tall = GEMMCase(transA: true, m: 400, n: 20, k: 260)
    static let gemvRow = GEMMCase(transB: true, m: 1, n: 900, k: 800)
    static let gemvCol = GEMMCase(transA: true, m: 900, n: 1, k: 800, beta: 1)
    static let short = GEMMCase(transA: true, m: 16, n: 700, k: 500, beta: 1)
}

/// Every kernel path this CPU offers (ISA.swift), each held to the reference twin and to the
/// AVX2 path bit for bit (fp32 accumulates each element in the same order on every path).
@Suite struct GEMMISAPathTests {
    static let hostPaths = ISA.allCases.filter { $0.missingFeatures.isEmpty }

    /// Shapes that reach each part of the driver: packed tiles (full and ragged), A read in place
    /// (n ≤ 32), B read in place (m ≤ 18), GEMV, depth blocks, and M = 1, 7, 257.
    static let cases: [GEMMCase] = {
        var cs: [GEMMCase] = []
        for (ta, tb) in [(false, false), (false, true), (true, false), (true, true)] {
            for (m, n, k) in [(7, 33, 5), (6, 32, 17), (257, 65, 131), (12, 96, 400), (18, 64, 33),
                              (1, 70, 40), (70, 1, 40), (31, 31, 3), (64, 48, 385), (145, 130, 77), (5, 200, 9)] {
                cs.append(GEMMCase(transA: ta, transB: tb, m: m, n: n, k: k, alpha: 1.25, beta: 0.5, padA: 1, padB: 2, padC: 3))
            }
        }
        cs.append(GEMMCase(transB: true, m: 257, n: 576, k: 576))
        return cs
    }()

    func run(_ cs: GEMMCase, _ a: [Float], _ b: [Float], _ c0: [Float], _ isa: ISA, panel: Bool) -> [Float] {
        var c = c0
        c.withUnsafeMutableBufferPointer { cp in
            if panel {
                b.withUnsafeBufferPointer { bp in
                    let src = PanelSource.dense(bp.baseAddress!, rows: cs.bRows, cols: cs.bCols, ld: cs.ldb)
                    GEMM.sgemm(transA: cs.transA, transB: cs.transB, m: cs.m, n: cs.n, k: cs.k, alpha: cs.alpha,
                               a: a, lda: cs.lda, b: src, beta: cs.beta, c: cp.baseAddress!, ldc: cs.ldc, isa: isa)
                }
            } else {
                GEMM.sgemm(transA: cs.transA, transB: cs.transB, m: cs.m, n: cs.n, k: cs.k, alpha: cs.alpha,
                           a: a, lda: cs.lda, b: b, ldb: cs.ldb, beta: cs.beta, c: cp.baseAddress!, ldc: cs.ldc, isa: isa)
            }
        }
        return c
    }

    @Test(arguments: hostPaths)
    func pathMatchesReferenceAndAVX2Bitwise(_ isa: ISA) {
        for cs in Self.cases {
            let (a, b, c0) = cs.operands()
            var ref = c0
            cs.runReference(a, b, &ref)
            for panel in [false, true] {
                let fast = run(cs, a, b, c0, isa, panel: panel)
                let (worst, padIntact) = cs.compare(a, b, c0: c0, fast: fast, ref: ref)
                #expect(worst <= GEMMTolerance.relative(k: cs.k), "\(isa.name) \(cs) panel=\(panel): rel err \(worst)")
                #expect(padIntact, "\(isa.name) \(cs): wrote outside C")
                let base = run(cs, a, b, c0, .avx2, panel: panel)
                #expect(fast.map(\.bitPattern) == base.map(\.bitPattern), "\(isa.name) \(cs) panel=\(panel) differs from avx2")
            }
        }
    }

    @Test func activePathIsOneTheHostHas() {
        #expect(ISA.active.missingFeatures.isEmpty)
        #expect(ISA.active <= ISA.host)
        #expect(ISA.named("AVX512_BF16") == .avx512bf16 && ISA.named("avx2") == .avx2 && ISA.named("sse") == nil)
        for isa in ISA.allCases where !isa.missingFeatures.isEmpty {
            #expect(throws: PSTError.self) { try ISA.set(isa) }
        }
    }
}

/// Compute dtype bf16 (SGEMM+BF16.swift) against its twin: operands rounded to bf16, exact
/// products, Double sums. The fast path sums in fp32 (two products per vdpbf16ps, in kc blocks),
/// so the same fp32 accumulation bound as the fp32 path applies, relative to Σ|bf16(a)·bf16(b)|.
@Suite struct GEMMBF16Tests {
    static let hasBF16 = ISA.avx512bf16.missingFeatures.isEmpty

    @Test(.enabled(if: hasBF16))
    func bf16MatchesItsTwinOnEveryShape() {
        var cases = GEMMISAPathTests.cases
        cases.append(GEMMCase(transB: true, m: 1, n: 1, k: 1))
        cases.append(GEMMCase(m: 2, n: 3, k: 801, alpha: 1, beta: 1))
        for cs in cases {
            let (a, b, c0) = cs.operands()
            var ref = c0, ref32 = c0
            ref.withUnsafeMutableBufferPointer { rp in
                GEMM.sgemmBF16Reference(transA: cs.transA, transB: cs.transB, m: cs.m, n: cs.n, k: cs.k, alpha: cs.alpha,
                                        a: a, lda: cs.lda, b: b, ldb: cs.ldb, beta: cs.beta, c: rp.baseAddress!, ldc: cs.ldc)
            }
            cs.runReference(a, b, &ref32)
            for (panel, kernel) in [(false, BF16Kernel.dot), (true, .dot), (false, .fma), (true, .fma)] {
                var fast = c0
                fast.withUnsafeMutableBufferPointer { cp in
                    if panel {
                        b.withUnsafeBufferPointer { bp in
                            let src = PanelSource.dense(bp.baseAddress!, rows: cs.bRows, cols: cs.bCols, ld: cs.ldb)
                            GEMM.sgemm(transA: cs.transA, transB: cs.transB, m: cs.m, n: cs.n, k: cs.k, alpha: cs.alpha,
                                       a: a, lda: cs.lda, b: src, beta: cs.beta, c: cp.baseAddress!, ldc: cs.ldc,
                                       compute: .bf16, bf16Kernel: kernel)
                        }
                    } else {
                        GEMM.sgemm(transA: cs.transA, transB: cs.transB, m: cs.m, n: cs.n, k: cs.k, alpha: cs.alpha,
                                   a: a, lda: cs.lda, b: b, ldb: cs.ldb, beta: cs.beta, c: cp.baseAddress!, ldc: cs.ldc,
                                   compute: .bf16, bf16Kernel: kernel)
                    }
                }
                // scale from the rounded operands (|bf16(x)| ≤ |x|·(1 + 2⁻⁸), so Σ|a||b| bounds it within 1 %)
                let (worst, padIntact) = cs.compare(a, b, c0: c0, fast: fast, ref: ref)
                #expect(worst <= 1.01 * GEMMTolerance.relative(k: cs.k), "bf16 \(kernel) \(cs) panel=\(panel): rel err \(worst)")
                #expect(padIntact, "bf16 \(cs): wrote outside C")
            }
            // the twin really rounds: bf16 moves each operand by up to 2⁻⁸ relative, so on random
            // operands the largest gap to the fp32 product over C is of that order (seen 4e-4 to
            // 6e-4 of Σ|a||b|), far beyond the fp32 accumulation bound (≈ 1e-5 here)
            if cs.k >= 8 && cs.m * cs.n >= 16 {
                let (gap, _) = cs.compare(a, b, c0: c0, fast: ref, ref: ref32)
                #expect(gap > 8 * GEMMTolerance.relative(k: cs.k), "\(cs): bf16 twin equals fp32 (gap \(gap))")
            }
        }
    }

    @Test func roundBF16IsRoundToNearestEven() {
        #expect(GEMM.roundBF16(1.0) == 1.0)
        // 1 + 2⁻⁸ is halfway between 1 and 1 + 2⁻⁷: ties to even (1.0)
        #expect(GEMM.roundBF16(1 + 0x1p-8) == 1.0)
        // 1 + 3·2⁻⁸ is halfway between 1 + 2⁻⁷ and 1 + 2·2⁻⁷: ties to even (1 + 2⁻⁶)
        #expect(GEMM.roundBF16(1 + 3 * 0x1p-8) == 1 + 0x1p-6)
        #expect(GEMM.roundBF16(1 + 0x1p-8 + 0x1p-20) == 1 + 0x1p-7)
        #expect(GEMM.roundBF16(-Float.leastNonzeroMagnitude).bitPattern == (-Float(0)).bitPattern)
        #expect(GEMM.roundBF16(.infinity) == .infinity && GEMM.roundBF16(.nan).isNaN)
        #expect(GEMM.roundBF16(Float.greatestFiniteMagnitude) == .infinity)
    }

    @Test func bf16IsAnErrorWithoutTheKernels() throws {
        if Self.hasBF16 {
            try ComputeDType.bf16.checkAvailable("test")
        } else {
            #expect(throws: PSTError.self) { try ComputeDType.bf16.checkAvailable("test") }
        }
        try ComputeDType.fp32.checkAvailable("test")
    }
}
