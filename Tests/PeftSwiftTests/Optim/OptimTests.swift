import Testing
import Foundation
@testable import PeftSwift
import CPeftSwift

/// The counter-based generator of Tests/fixtures/make_optim_fixtures.py (splitmix64 → 24-bit
/// uniform in [-1, 1), exact in float32).
func optimNoise(seed: UInt64, step: UInt64, count: Int) -> [Float] {
    (0..<count).map { i in
        var x = seed &* 0x9E37_79B9_7F4A_7C15 &+ step &* 0xD1B5_4A32_D192_ED03 &+ UInt64(i)
        x &+= 0x9E37_79B9_7F4A_7C15
        var z = (x ^ (x >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        z ^= z >> 31
        let u = Float(z >> 40) * 0x1p-24
        return u * 2 - 1
    }
}

/// Fixtures.swift resolves paths relative to the calling file as if it were in Support/.
func loadFixture(_ name: String, file: String = #filePath) throws -> FixtureFile {
    try FixtureFile.load(name, file: URL(fileURLWithPath: file).deletingLastPathComponent()
        .appendingPathComponent("Support").appendingPathComponent("Fixtures.swift").path)
}

private let blockScales: [Float] = [1e-3, 1e-2, 1e-1, 1, 10]

/// Parameters and gradients of a test model, owned here and registered with optimizers.
final class TestModel {
    let sizes: [Int]
    let params: [AlignedBuffer<Float>]
    let grads: [AlignedBuffer<Float>]

    init(sizes: [Int]) throws {
        self.sizes = sizes
        params = try sizes.enumerated().map { k, n in try AlignedBuffer(optimNoise(seed: 1000 + UInt64(k), step: 0, count: n)) }
        grads = try sizes.map { try AlignedBuffer<Float>(count: $0) }
    }

    /// Gradients of step t (1-based), as the fixture script makes them.
    func setGradients(step t: Int) {
        for (k, n) in sizes.enumerated() {
            let z = optimNoise(seed: UInt64(k), step: UInt64(t), count: n)
            for i in 0..<n { grads[k][i] = z[i] * blockScales[(i / 256) % 5] }
        }
    }

    func register(_ opt: AdamW) throws {
        for k in sizes.indices { try opt.register(parameter: params[k].baseAddress, gradient: grads[k].baseAddress, count: sizes[k]) }
    }

    func run(_ opt: AdamW, from: Int = 1, to: Int, reference: Bool = false, each: (Int) throws -> Void = { _ in }) throws {
        if to < from { return }
        for t in from...to {
            setGradients(step: t)
            if reference { try opt.referenceStep() } else { try opt.step() }
            try each(t)
        }
    }
}

func floats(_ b: [UInt8]) -> [Float] { b.withUnsafeBytes { Array($0.bindMemory(to: Float.self)) } }

/// Largest |a − b| / max(|b|, floor) over the arrays.
func maxRelative(_ a: [Float], _ b: [Float], floor: Float = 1e-3) -> Float {
    zip(a, b).reduce(0) { max($0, abs($1.0 - $1.1) / max(abs($1.1), floor)) }
}

/// Largest |a − b| / max |b| (tensor-wise relative difference).
func maxNormRelative(_ a: [Float], _ b: [Float]) -> Float {
    let scale = b.reduce(Float(0)) { max($0, abs($1)) }
    return zip(a, b).reduce(0) { max($0, abs($1.0 - $1.1)) } / max(scale, .leastNormalMagnitude)
}

/// Fraction of elements whose relative difference exceeds `tol` (|b| floored at 1e-3).
func fractionAbove(_ a: [Float], _ b: [Float], _ tol: Float) -> Double {
    Double(zip(a, b).filter { abs($0.0 - $0.1) / max(abs($0.1), 1e-3) > tol }.count) / Double(max(1, a.count))
}

private func hyper(_ f: FixtureFile) -> AdamWHyperparameters {
    AdamWHyperparameters(learningRate: Double(f.metadata["lr"]!)!, beta1: Double(f.metadata["beta1"]!)!,
                         beta2: Double(f.metadata["beta2"]!)!, eps: Double(f.metadata["eps"]!)!,
                         weightDecay: Double(f.metadata["weight_decay"]!)!)
}

private func sizes(_ f: FixtureFile) -> [Int] { f.metadata["sizes"]!.split(separator: ",").map { Int($0)! } }

@Suite struct OptimTests {
    /// AdamW parameters against torch.optim.AdamW's (fixtures): the same fp32 operations in the
    /// documented order (Optim/AdamW+Kernels.swift) leave only the rounding of the square root and
    /// the division, ~2 ulp per step, compounding over the fixture's steps: 1e-6 of max|param|.
    static let adamRelTol: Float = 1e-6
    /// clip_grad_norm_'s total norm: a sum of squares over 5136 values in Double vs torch's fp32
    /// pairwise sum, ~sqrt(n)·2^-24.
    static let gradNormRelTol: Float = 2e-7

    @Test(arguments: ["adamw_torch_default", "adamw_torch_lowbeta"])
    func adamWMatchesTorch(name: String) throws {
        let f = try loadFixture("optim/\(name).safetensors")
        let model = try TestModel(sizes: sizes(f))
        for k in model.sizes.indices { #expect(model.params[k].array == f["init.p\(k)"].floats) }
        let opt = try AdamW(hyper(f))
        try model.register(opt)
        var worst: Float = 0, worstElem: Float = 0, above = 0.0
        try model.run(opt, to: 100) { t in
            guard t == 1 || t == 100 else { return }
            for k in model.sizes.indices {
                let st = try opt.stateTensors(ofParameter: k)
                #expect(floats(st[0]) == f["step\(t).p\(k).exp_avg"].floats, "m, step \(t), param \(k)")
                #expect(floats(st[1]) == f["step\(t).p\(k).exp_avg_sq"].floats, "v, step \(t), param \(k)")
                let got = model.params[k].array, want = f["step\(t).p\(k)"].floats
                let rel = maxNormRelative(got, want)
                worst = max(worst, rel)
                worstElem = max(worstElem, maxRelative(got, want))
                above = max(above, fractionAbove(got, want, Self.adamRelTol))
                #expect(rel <= Self.adamRelTol, "params, step \(t), param \(k): max |diff| / max |torch| = \(rel)")
            }
        }
        print("[\(name)] AdamW vs torch after 100 steps: m, v bit-identical; params max |diff|/max|ref| \(worst), "
              + "max elementwise relative diff \(worstElem) (|ref| floored at 1e-3), elements above 1e-6 relative: \(above * 100)%")
    }

    @Test(arguments: ["adamw8bit_bnb", "adamw8bit_bnb_nowd"])
    func adamW8bitMatchesBitsandbytes(name: String) throws {
        let f = try loadFixture("optim/\(name).safetensors")
        let model = try TestModel(sizes: sizes(f))
        let opt = try AdamW(hyper(f), stateFormat: .blockwise8bit())
        try model.register(opt)
        var worst: Float = 0, worstElem: Float = 0, above = 0.0
        try model.run(opt, to: 100) { t in
            guard [1, 2, 100].contains(t) else { return }
            for k in model.sizes.indices {
                let st = try opt.stateTensors(ofParameter: k)
                if model.sizes[k] >= 4096 {
                    #expect(st[0] == f["step\(t).p\(k).state1"].u8, "state1 codes, step \(t), param \(k)")
                    #expect(st[1] == f["step\(t).p\(k).state2"].u8, "state2 codes, step \(t), param \(k)")
                    #expect(floats(st[2]) == f["step\(t).p\(k).absmax1"].floats, "absmax1, step \(t), param \(k)")
                    #expect(floats(st[3]) == f["step\(t).p\(k).absmax2"].floats, "absmax2, step \(t), param \(k)")
                } else {
                    #expect(floats(st[0]) == f["step\(t).p\(k).state1"].floats, "fp32 state1, step \(t), param \(k)")
                    #expect(floats(st[1]) == f["step\(t).p\(k).state2"].floats, "fp32 state2, step \(t), param \(k)")
                }
                let got = model.params[k].array, want = f["step\(t).p\(k)"].floats
                let rel = maxNormRelative(got, want)
                worst = max(worst, rel)
                worstElem = max(worstElem, maxRelative(got, want))
                above = max(above, fractionAbove(got, want, Self.adamRelTol))
                #expect(rel <= Self.adamRelTol, "params, step \(t), param \(k): max |diff| / max |torch| = \(rel)")
            }
        }
        print("[\(name)] AdamW8bit vs bitsandbytes after 100 steps: state bytes identical; params max |diff|/max|ref| \(worst), "
              + "max elementwise relative diff \(worstElem) (|ref| floored at 1e-3), elements above 1e-6 relative: \(above * 100)%")
    }

    @Test(arguments: [AdamW.StateFormat.float32, .blockwise8bit()])
    func fastKernelsEqualReferenceTwins(format: AdamW.StateFormat) throws {
        let sizes = [1, 7, 255, 4095, 4096 + 13, 70_001]
        let a = try TestModel(sizes: sizes), b = try TestModel(sizes: sizes)
        let h = AdamWHyperparameters(learningRate: 3e-3, beta1: 0.85, beta2: 0.995, eps: 1e-7, weightDecay: 0.05)
        let oa = try AdamW(h, stateFormat: format), ob = try AdamW(h, stateFormat: format)
        try a.register(oa)
        try b.register(ob)
        try a.run(oa, to: 12)
        try b.run(ob, to: 12, reference: true)
        for k in sizes.indices {
            #expect(a.params[k].array == b.params[k].array, "params of size \(sizes[k])")
            #expect(try oa.stateTensors(ofParameter: k) == ob.stateTensors(ofParameter: k), "state of size \(sizes[k])")
        }
    }

    @Test func lutMatchesDocumentedRuleAndNearestMostly() {
        // The table is monotone and maps the ends to the ends.
        let lut = BnbMaps.signedLUT
        #expect(lut.first == 0 && lut.last == 255)
        #expect(zip(lut, lut.dropFirst()).allSatisfy { $0 <= $1 })
        #expect(BnbMaps.unsignedLUT[32767] == 0 && BnbMaps.unsignedLUT.last == 255)
        // Zero block → absmax 0 and code 0 (bitsandbytes' CPU rule).
        var codes = [UInt8](repeating: 9, count: 5)
        let am = [Float](repeating: 0, count: 5).withUnsafeBufferPointer { x in
            bnbQuantizeBlock(x.baseAddress!, 5, lut, &codes)
        }
        #expect(am == 0 && codes == [0, 0, 0, 0, 0])
    }

    @Test(arguments: [AdamW.StateFormat.float32, .blockwise8bit()])
    func pagedEqualsUnpaged(format: AdamW.StateFormat) throws {
        let sizes = [40_000, 9000, 300, 70_000]
        let ps = Pager.systemPageSize
        let stateBytes = sizes.reduce(0) { $0 + (format == .float32 || $1 < 4096 ? 8 * $1 : 2 * $1 + 8 * (($1 + 255) / 256)) }
        let pager = try Pager(budget: max(stateBytes / 4 / ps * ps, ps), pageSize: ps)
        let a = try TestModel(sizes: sizes), b = try TestModel(sizes: sizes)
        let oa = try AdamW(.init(), stateFormat: format)
        let ob = try AdamW(.init(), stateFormat: format, storage: .paged(pager))
        try a.register(oa)
        try b.register(ob)
        try a.run(oa, to: 20)
        try b.run(ob, to: 20)
        for k in sizes.indices {
            #expect(a.params[k].array == b.params[k].array)
            #expect(try oa.stateTensors(ofParameter: k) == ob.stateTensors(ofParameter: k))
        }
        let s = pager.stats
        #expect(s.pagesSpilled > 0 && s.pagesReadBack > 0)
        #expect(s.peakResidentBytes <= pager.budget)
        print("[paged \(format)] state \(stateBytes) B, budget \(pager.budget) B: spilled \(s.pagesSpilled) pages "
              + "(\(s.bytesSpilled) B), read back \(s.pagesReadBack), peak resident \(s.peakResidentBytes) B, I/O \(s.ioSeconds) s")
    }

    @Test(arguments: [AdamW.StateFormat.float32, .blockwise8bit()], [false, true])
    func saveRestoreResumesExactly(format: AdamW.StateFormat, paged: Bool) throws {
        let sizes = [5000, 300, 9001]
        let storage: () throws -> OptimizerStorage = {
            paged ? .paged(try Pager(budget: 16 * Pager.systemPageSize, pageSize: Pager.systemPageSize)) : .memory
        }
        let h = AdamWHyperparameters(learningRate: 4e-3, weightDecay: 0.02)
        let straight = try TestModel(sizes: sizes)
        let os = try AdamW(h, stateFormat: format, storage: storage())
        try straight.register(os)
        try straight.run(os, to: 100)

        let first = try TestModel(sizes: sizes)
        let o1 = try AdamW(h, stateFormat: format, storage: storage())
        try first.register(o1)
        try first.run(o1, to: 50)
        let saved = try o1.saveState()
        #expect(saved.count == o1.serializedStateSize)

        let o2 = try AdamW(AdamWHyperparameters(learningRate: 1), stateFormat: format, storage: storage())
        try first.register(o2)  // same parameter memory, fresh optimizer
        try o2.restoreState(saved)
        #expect(o2.hyperparameters == h)
        #expect(try o2.stepCount(ofParameter: 0) == 50)
        try first.run(o2, from: 51, to: 100)
        for k in sizes.indices {
            #expect(first.params[k].array == straight.params[k].array)
            #expect(try o2.stateTensors(ofParameter: k) == os.stateTensors(ofParameter: k))
        }
    }

    @Test func restoreRejectsBadStates() throws {
        let m = try TestModel(sizes: [5000, 10])
        let o = try AdamW(.init(), stateFormat: .blockwise8bit())
        try m.register(o)
        try m.run(o, to: 2)
        let good = try o.saveState()
        let before = try o.stateTensors(ofParameter: 0)
        var bad = good
        bad[100] ^= 0x40
        #expect(status { try o.restoreState(bad) } == PST_ERR_CORRUPT)
        #expect(status { try o.restoreState(Array(good.dropLast(5))) } == PST_ERR_CORRUPT)
        #expect(status { try o.restoreState([]) } == PST_ERR_CORRUPT)
        #expect(try o.stateTensors(ofParameter: 0) == before)

        let o32 = try AdamW()
        try m.register(o32)
        #expect(status { try o32.restoreState(good) } == PST_ERR_SHAPE)
        let other = try TestModel(sizes: [5000])
        let o3 = try AdamW(.init(), stateFormat: .blockwise8bit())
        try other.register(o3)
        #expect(status { try o3.restoreState(good) } == PST_ERR_SHAPE)
    }

    @Test func invalidInputsAreRejected() throws {
        #expect(status { _ = try AdamW(AdamWHyperparameters(learningRate: -1)) } == PST_ERR_INVALID_ARG)
        #expect(status { _ = try AdamW(AdamWHyperparameters(beta1: 1)) } == PST_ERR_INVALID_ARG)
        #expect(status { _ = try AdamW(AdamWHyperparameters(eps: .nan)) } == PST_ERR_INVALID_ARG)
        #expect(status { _ = try AdamW(.init(), stateFormat: .blockwise8bit(minBlockwiseSize: 0)) } == PST_ERR_INVALID_ARG)
        let buf = try AlignedBuffer<Float>(count: 100)
        let o = try AdamW()
        #expect(status { try o.register(parameter: buf.baseAddress, gradient: buf.baseAddress + 50, count: 0) } == PST_ERR_INVALID_ARG)
        #expect(status { try o.register(parameter: buf.baseAddress, gradient: buf.baseAddress + 40, count: 50) } == PST_ERR_INVALID_ARG)
        try o.register(parameter: buf.baseAddress, gradient: buf.baseAddress + 50, count: 50)
        #expect(status { try o.register(parameter: buf.baseAddress + 10, gradient: buf.baseAddress + 60, count: 5) } == PST_ERR_EXISTS)
        o.learningRate = -0.5
        #expect(status { try o.step() } == PST_ERR_INVALID_ARG)
        #expect(try o.stepCount(ofParameter: 0) == 0)
        #expect(status { _ = try o.stepCount(ofParameter: 3) } == PST_ERR_INVALID_ARG)
        #expect(status { _ = try o.clipGradNorm(maxNorm: -1) } == PST_ERR_INVALID_ARG)
        #expect(status { _ = try o.clipGradNorm(maxNorm: 1, normType: 1) } == PST_ERR_INVALID_ARG)
        // A pager too small for one chunk of state (256 float32 elements pin 4 pages).
        let pager = try Pager(budget: 3 * Pager.systemPageSize, pageSize: Pager.systemPageSize)
        let op = try AdamW(.init(), storage: .paged(pager))
        let big = try TestModel(sizes: [100_000])
        try big.register(op)
        #expect(status { try op.step() } == PST_ERR_OUT_OF_MEMORY)
    }

    @Test func zeroGradClearsEveryGradient() throws {
        let m = try TestModel(sizes: [10, 3000])
        let o = try AdamW()
        try m.register(o)
        m.setGradients(step: 1)
        o.zeroGrad()
        #expect(m.grads.allSatisfy { $0.array.allSatisfy { $0 == 0 } })
    }

    @Test func clipGradNormMatchesTorch() throws {
        let f = try loadFixture("optim/clip_grad_norm.safetensors")
        for c in 0..<3 {
            let m = try TestModel(sizes: [1000, 4099, 37])
            let o = try AdamW()
            try m.register(o)
            m.setGradients(step: 7)
            let args = f["case\(c).params"].values(Double.self)
            let total = try o.clipGradNorm(maxNorm: args[0], normType: args[1])
            let want = f["case\(c).total"].floats[0]
            #expect(abs(total - want) <= Self.gradNormRelTol * want, "case \(c): \(total) vs torch \(want)")
            for k in 0..<3 {
                let rel = maxRelative(m.grads[k].array, f["case\(c).g\(k)"].floats, floor: 1e-6)
                #expect(rel <= Self.adamRelTol, "case \(c) grad \(k): \(rel)")
            }
        }
    }

    @Test func lrSchedulesMatchTransformers() throws {
        let f = try loadFixture("optim/lr_schedules.safetensors")
        let cases: [(String, LRSchedule)] = [
            ("constant_warmup10", .linearWarmup(warmupSteps: 10, decayTo: nil)),
            ("linear_warmup10_total100", .linearWarmup(warmupSteps: 10, decayTo: 100)),
            ("linear_warmup0_total50", .linearWarmup(warmupSteps: 0, decayTo: 50)),
            ("cosine_warmup10_total100", .cosineWithWarmup(warmupSteps: 10, totalSteps: 100)),
            ("cosine_warmup5_total60_cycles1.5", .cosineWithWarmup(warmupSteps: 5, totalSteps: 60, cycles: 1.5)),
        ]
        for (name, s) in cases {
            try s.validate()
            let want = f[name].values(Double.self)
            let got = (0..<want.count).map { s.multiplier(step: $0) }
            #expect(got == want, "\(name)")
        }
        #expect(LRSchedule.constant.multiplier(step: 5) == 1)
        #expect(status { try LRSchedule.cosineWithWarmup(warmupSteps: 10, totalSteps: 5).validate() } == PST_ERR_INVALID_ARG)
        #expect(status { try LRSchedule.linearWarmup(warmupSteps: -1, decayTo: nil).validate() } == PST_ERR_INVALID_ARG)
    }
}
