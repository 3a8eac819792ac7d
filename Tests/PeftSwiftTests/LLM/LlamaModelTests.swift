import Foundation
import Testing
@testable import PeftSwift

/// Normwise relative error max|a − b| / max|b| (per tensor).
func llamaRelErr(_ a: [Float], _ b: [Float]) -> Double {
    precondition(a.count == b.count, "\(a.count) vs \(b.count)")
    var d = 0.0, m = 0.0
    for i in 0..<a.count { d = max(d, abs(Double(a[i]) - Double(b[i]))); m = max(m, abs(Double(b[i]))) }
    return m == 0 ? d : d / m
}

/// A fixture written by Tests/fixtures/make_llama_fixtures.py with the real transformers
/// LlamaForCausalLM + PEFT.
struct LlamaFixture {
    let file: FixtureFile
    let config: ModelConfig
    let batch: Int, seqLen: Int, loraR: Int, loraAlpha: Float

    init(_ name: String) throws {
        file = try FixtureFile.load("llama/\(name).safetensors")
        let j = try JSONSerialization.jsonObject(with: Data(file.metadata["config"]!.utf8)) as! [String: Any]
        let rope = j["rope"] as! [String: Any]
        var scaling: RopeScaling? = nil
        if rope["rope_type"] as! String == "llama3" {
            scaling = .llama3(factor: Float(rope["factor"] as! Double), lowFreqFactor: Float(rope["low_freq_factor"] as! Double),
                              highFreqFactor: Float(rope["high_freq_factor"] as! Double),
                              originalMaxPositions: rope["original_max_position_embeddings"] as! Int)
        }
        config = ModelConfig(
            layers: j["layers"] as! Int, hidden: j["hidden"] as! Int, intermediate: j["intermediate"] as! Int,
            heads: j["heads"] as! Int, kvHeads: j["kv_heads"] as! Int, headDim: (j["head_dim"] as! Int),
            vocab: j["vocab"] as! Int, rmsEps: Float(j["rms_eps"] as! Double), ropeTheta: Float(rope["rope_theta"] as! Double),
            ropeScaling: scaling, maxPositions: j["max_positions"] as! Int, tiedEmbeddings: j["tied"] as! Bool)
        batch = j["batch"] as! Int
        seqLen = j["seq"] as! Int
        loraR = j["lora_r"] as! Int
        loraAlpha = Float(j["lora_alpha"] as! Double)
    }

    var ids: [Int32] { file["ids"].i64.map { Int32($0) } }
    var labels: [Int32] { file["labels"].i64.map { Int32($0) } }

    /// A provider over `w.<name>` tensors (optionally overridden by `deq.<name>` of another file).
    static func provider(_ f: FixtureFile, prefix: String = "w.") -> WeightProvider {
        return { (name: String, shape: [Int], dst: UnsafeMutableBufferPointer<Float>) throws(PSTError) in
            guard let t = f.tensors[prefix + name] else { throw .notFound("no tensor \(name)") }
            guard t.shape == shape else { throw .shape("\(name): \(t.shape) vs \(shape)") }
            let v = t.floats
            for i in 0..<v.count { dst[i] = v[i] }
        }
    }

    func model(options: ModelLoadOptions = .dense) throws -> LanguageModel {
        try LanguageModel(config: config, options: options, weights: LlamaFixture.provider(file))
    }

    /// Attaches PEFT's adapter ("default", r, alpha, all 7 projections) with the fixture's A, B
    /// (taken from `loraFile`, default this fixture).
    func attachLora(_ m: LanguageModel, from loraFile: FixtureFile? = nil) throws {
        let f = loraFile ?? file
        try m.addAdapter("default", config: LoraConfig(r: loraR, alpha: loraAlpha))
        for (path, lin) in m.loraModules {
            let a = lin.adapter(named: "default")!
            let av = f["lora.\(path).A"].floats, bv = f["lora.\(path).B"].floats
            precondition(av.count == a.a.count && bv.count == a.b.count)
            for i in 0..<av.count { a.a[i] = av[i] }
            for i in 0..<bv.count { a.b[i] = bv[i] }
        }
    }
}

/// Results of one comparison run against a fixture.
struct LlamaComparison {
    var logitsBase = 0.0, lossBase = 0.0, logits = 0.0, loss = 0.0, gradA = 0.0, gradB = 0.0
    var description: String {
        String(format: "logits_base %.2e loss_base %.2e logits %.2e loss %.2e gradA %.2e gradB %.2e",
               logitsBase, lossBase, logits, loss, gradA, gradB)
    }
}

@Suite struct LlamaModelTests {
    // ---- tolerances, beside what they bound
    /// Logits and loss of the tiny fixture models against transformers' fp32 (fixtures): fp32
    /// rounding through 2 layers of <= 128-term dot products and the log-sum-exp.
    static let forwardRelTol = 1e-5
    /// LoRA gradients against PEFT's (fixtures): sums over every token in fp32, some nearly cancelling.
    static let gradientRelTol = 1e-4
    /// The chunked LM head and its one-shot twin: the same sums cut into chunks (fp32 reordering).
    static let chunkingRelTol: Float = 1e-6
    /// Central finite differences in Float (h ~ 1e-2): truncation plus fp32 loss rounding over h.
    static let finiteDifferenceTol = 3e-2

    /// Full comparison of a model (weights already loaded) with a fixture's results.
    static func compare(_ m: LanguageModel, _ fx: LlamaFixture, results f: FixtureFile, loraFrom: FixtureFile? = nil) throws -> LlamaComparison {
        var c = LlamaComparison()
        let ids = fx.ids, labels = fx.labels
        let lb = try m.logits(ids: ids, batch: fx.batch, seqLen: fx.seqLen)
        c.logitsBase = llamaRelErr(lb, f["logits_base"].floats)
        let lossB = try m.loss(ids: ids, labels: labels, batch: fx.batch, seqLen: fx.seqLen)
        c.lossBase = llamaRelErr([lossB], f["loss_base"].floats)
        try fx.attachLora(m, from: loraFrom)
        let lg = try m.logits(ids: ids, batch: fx.batch, seqLen: fx.seqLen)
        c.logits = llamaRelErr(lg, f["logits"].floats)
        m.zeroGrad()
        let loss = try m.loss(ids: ids, labels: labels, batch: fx.batch, seqLen: fx.seqLen)
        c.loss = llamaRelErr([loss], f["loss"].floats)
        try m.backward()
        for (path, lin) in m.loraModules {
            let a = lin.adapter(named: "default")!
            let ga = llamaRelErr(a.gradA.array, f["lora.\(path).gradA"].floats)
            let gb = llamaRelErr(a.gradB.array, f["lora.\(path).gradB"].floats)
            #expect(ga < Self.gradientRelTol, "\(path) gradA rel err \(ga)")
            #expect(gb < Self.gradientRelTol, "\(path) gradB rel err \(gb)")
            c.gradA = max(c.gradA, ga)
            c.gradB = max(c.gradB, gb)
        }
        #expect(c.logitsBase < Self.forwardRelTol && c.logits < Self.forwardRelTol, "\(c.description)")
        #expect(c.lossBase < Self.forwardRelTol && c.loss < Self.forwardRelTol, "\(c.description)")
        return c
    }

    @Test(arguments: ["tied", "untied_llama3"], [false, true])
    func matchesTransformers(name: String, recompute: Bool) throws {
        let fx = try LlamaFixture(name)
        let m = try fx.model()
        m.recomputeActivations = recompute
        let c = try Self.compare(m, fx, results: fx.file)
        print("llama fixture \(name) recompute=\(recompute): \(c.description)")
    }

    /// NF4 + double quant base vs transformers run on bitsandbytes' dequantized weights.
    @Test(arguments: [false, true])
    func nf4MatchesTransformersOnDequantizedWeights(recompute: Bool) throws {
        let fx = try LlamaFixture("tied")
        let nf4 = try FixtureFile.load("llama/nf4.safetensors")
        let m = try fx.model(options: .qlora)
        m.recomputeActivations = recompute
        // peftswift's 4-bit codes and dequantization equal bitsandbytes' bit for bit once the
        // nested absmax index is the exact nearest (bitsandbytes' CPU lookup differs on a few
        // blocks by a step or so; the fixture's weights use the exact index).
        var mismatches = 0, lutDiffs = 0
        for (path, lin) in m.loraModules {
            guard case .quantized(let q) = lin.base, let nested = q.nested else { Issue.record("\(path) not NF4+DQ"); continue }
            #expect(nested.q.array == nf4["exact_nested_q.\(path).weight"].u8, "\(path) nested indices")
            let bnbQ = nf4["bnb_nested_q.\(path).weight"].u8
            for (a, b) in zip(nested.q.array, bnbQ) where a != b {
                lutDiffs += 1
                #expect(abs(Int(a) - Int(b)) <= 3)
            }
            var d = [Float](repeating: 0, count: q.count)
            d.withUnsafeMutableBytes { q.dequantize(into: $0.baseAddress!, dtype: .f32) }
            let ref = nf4["deq.\(path).weight"].floats
            for i in 0..<d.count where d[i].bitPattern != ref[i].bitPattern { mismatches += 1 }
        }
        #expect(mismatches == 0, "\(mismatches) dequantized weights differ")
        #expect(String(lutDiffs) == nf4.metadata["nested_lut_diffs"])
        let c = try Self.compare(m, fx, results: nf4, loraFrom: nf4)
        print("llama fixture nf4 recompute=\(recompute): \(c.description)")
    }

    /// Pre-quantized projection weights (as a 4-bit checkpoint would supply them) give the same
    /// model as quantizing on load; a wrong shape is refused.
    @Test func preQuantizedWeights() throws {
        let fx = try LlamaFixture("tied")
        let provider = LlamaFixture.provider(fx.file)
        let scratch = try AlignedBuffer<Float>(count: 96 * 64)
        let pre: (String) throws(PSTError) -> QuantizedTensor? = { (name: String) throws(PSTError) -> QuantizedTensor? in
            let t = fx.file["w." + name]
            let b = UnsafeMutableBufferPointer(start: scratch.baseAddress, count: t.count)
            try provider(name, t.shape, b)
            return try QuantizedTensor(quantizing: UnsafeRawPointer(scratch.baseAddress), dtype: .f32, shape: t.shape, doubleQuant: true)
        }
        let a = try LanguageModel(config: fx.config, quantizedWeights: pre, weights: provider)
        let b = try fx.model(options: .qlora)
        #expect(try a.logits(ids: fx.ids, batch: fx.batch, seqLen: fx.seqLen) == b.logits(ids: fx.ids, batch: fx.batch, seqLen: fx.seqLen))
        do {
            _ = try LanguageModel(config: fx.config, quantizedWeights: { (_: String) throws(PSTError) -> QuantizedTensor? in
                var x = [Float](repeating: 1, count: 64)
                return try QuantizedTensor(quantizing: &x, dtype: .f32, shape: [8, 8])
            }, weights: provider)
            Issue.record("wrong shape accepted")
        } catch let e as PSTError {
            #expect(e.status == PSTError.shape("").status)
        }
    }

    /// A random tiny model (with an adapter per projection, B ≠ 0).
    static func randomModel(_ c: ModelConfig, seed: UInt64, options: ModelLoadOptions = .dense,
                            dropout: Float = 0) throws -> LanguageModel {
        var g = SplitMix64(seed: seed)
        let m = try LanguageModel(config: c, options: options) { (name: String, shape: [Int], dst: UnsafeMutableBufferPointer<Float>) throws(PSTError) in
            let fanIn = Float(shape.last!)
            for i in 0..<dst.count {
                if name.hasSuffix("norm.weight") { dst[i] = 1 + 0.2 * g.uniform(-1, 1) }
                else if name.contains("embed") { dst[i] = 0.5 * g.uniform(-1, 1) }
                else { dst[i] = g.uniform(-1, 1) * (3 / fanIn).squareRoot() }
            }
        }
        try m.addAdapter("a", config: LoraConfig(r: 4, alpha: 8, dropout: dropout, seed: seed))
        for t in m.trainableParameters() where t.name.contains("lora_B") {
            for i in 0..<t.parameter.count { t.parameter[i] = 0.2 * g.uniform(-1, 1) }
        }
        return m
    }

    static let tiny = ModelConfig(layers: 3, hidden: 48, intermediate: 80, heads: 6, kvHeads: 2, headDim: 8,
                                           vocab: 70, rmsEps: 1e-5, ropeTheta: 10000, maxPositions: 128, tiedEmbeddings: true)

    static func batch(_ c: ModelConfig, b: Int, t: Int, seed: UInt64) -> ([Int32], [Int32]) {
        var g = SplitMix64(seed: seed)
        let ids = (0..<(b * t)).map { _ in Int32(g.next() % UInt64(c.vocab)) }
        var labels = ids
        for i in stride(from: 3, to: labels.count, by: 7) { labels[i] = -100 }
        return (ids, labels)
    }

    /// Recomputation gives bit-identical loss and gradients (dropout on, so the masks must be replayed),
    /// dense and quantized, with T spanning several attention row blocks.
    @Test(arguments: [false, true])
    func recomputationIsBitIdentical(quantized: Bool) throws {
        let c = Self.tiny
        let (ids, labels) = Self.batch(c, b: 2, t: 70, seed: 9)
        var results: [[UInt32]] = []
        for recompute in [false, true] {
            let m = try Self.randomModel(c, seed: 5, options: quantized ? .qlora : .dense, dropout: 0.1)
            m.recomputeActivations = recompute
            var all: [UInt32] = []
            for step in 0..<2 {   // two steps: the dropout streams advance identically
                m.zeroGrad()
                let l = try m.loss(ids: ids, labels: labels, batch: 2, seqLen: 70)
                try m.backward()
                all.append(l.bitPattern)
                for t in m.trainableParameters() { all += t.gradient.array.map(\.bitPattern) }
                _ = step
            }
            results.append(all)
        }
        #expect(results[0] == results[1])
        #expect(results[0].count > 100)
    }

    /// The LM head and cross-entropy run in chunks of target rows with the head's backward folded
    /// in: any chunk size gives the loss and gradients of one whole chunk.
    @Test func lmHeadChunksGiveTheSameLossAndGradients() throws {
        let c = Self.tiny
        let (ids, labels) = Self.batch(c, b: 2, t: 70, seed: 21)
        var results: [(Float, [Float])] = []
        for rows in [1_000_000, 7, 1] {
            let m = try Self.randomModel(c, seed: 8)
            m.headChunkRows = rows
            m.zeroGrad()
            let l = try m.loss(ids: ids, labels: labels, batch: 2, seqLen: 70)
            try m.backward()
            results.append((l, m.trainableParameters().flatMap { $0.gradient.array }))
        }
        for r in results.dropFirst() {
            #expect(abs(r.0 - results[0].0) <= Self.chunkingRelTol * abs(results[0].0))
            #expect(llamaRelErr(r.1, results[0].1) < Double(Self.chunkingRelTol))
        }
    }

    /// The loss gradient w.r.t. a LoRA parameter by central differences (double-checked end to end,
    /// through every layer kernel at once).
    @Test func modelGradientMatchesFiniteDifferences() throws {
        let c = ModelConfig(layers: 2, hidden: 16, intermediate: 24, heads: 4, kvHeads: 2, headDim: 4,
                                     vocab: 20, rmsEps: 1e-5, ropeTheta: 100, maxPositions: 16, tiedEmbeddings: false)
        let m = try Self.randomModel(c, seed: 3)
        let (ids, labels) = Self.batch(c, b: 2, t: 9, seed: 4)
        m.zeroGrad()
        _ = try m.loss(ids: ids, labels: labels, batch: 2, seqLen: 9)
        try m.backward()
        let h: Float = 2e-3
        var worst = 0.0
        for t in m.trainableParameters() {
            for i in Swift.stride(from: 0, to: t.parameter.count, by: max(1, t.parameter.count / 5)) {
                let old = t.parameter[i]
                t.parameter[i] = old + h
                let lp = Double(try m.loss(ids: ids, labels: labels, batch: 2, seqLen: 9))
                t.parameter[i] = old - h
                let lm = Double(try m.loss(ids: ids, labels: labels, batch: 2, seqLen: 9))
                t.parameter[i] = old
                let fd = (lp - lm) / Double(2 * h)
                let err = abs(fd - Double(t.gradient[i])) / max(0.05, abs(fd))
                worst = max(worst, err)
                #expect(err < Self.finiteDifferenceTol, "\(t.name)[\(i)]: fd \(fd) vs \(t.gradient[i])")
            }
        }
        print("llama model finite differences: worst relative error \(worst)")
    }

    @Test func badInputThrows() throws {
        let c = Self.tiny
        let m = try Self.randomModel(c, seed: 1)
        func status(_ body: () throws -> Void) -> Int32? {
            do { try body(); return nil } catch let e as PSTError { return e.status } catch { return -1 }
        }
        #expect(status { _ = try m.logits(ids: [0, 1, 70], batch: 1, seqLen: 3) } == PSTError.invalidArgument("").status)
        #expect(status { _ = try m.logits(ids: [0, -1], batch: 1, seqLen: 2) } == PSTError.invalidArgument("").status)
        #expect(status { _ = try m.logits(ids: [0, 1, 2], batch: 1, seqLen: 2) } == PSTError.shape("").status)
        #expect(status { _ = try m.logits(ids: [Int32](repeating: 0, count: 129), batch: 1, seqLen: 129) } == PSTError.invalidArgument("").status)
        #expect(status { _ = try m.logits(ids: [], batch: 0, seqLen: 1) } == PSTError.invalidArgument("").status)
        #expect(status { _ = try m.loss(ids: [0, 1], labels: [0, 70], batch: 1, seqLen: 2) } == PSTError.invalidArgument("").status)
        #expect(status { _ = try m.loss(ids: [0, 1], labels: [0], batch: 1, seqLen: 2) } == PSTError.shape("").status)
        #expect(status { _ = try m.loss(ids: [0, 1], labels: [0, 1], batch: 1, seqLen: 2, normalizer: 0) } == PSTError.invalidArgument("").status)
        #expect(status { try m.backward() } == PSTError.misuse("").status)
        _ = try m.logits(ids: [0, 1], batch: 1, seqLen: 2)
        #expect(status { try m.backward() } == PSTError.misuse("").status)
        #expect(status { try m.addAdapter("b", config: LoraConfig(r: 2, alpha: 2), targetModules: ["qkv"]) } == PSTError.invalidArgument("").status)
        #expect(status { try m.addAdapter("a", config: LoraConfig(r: 2, alpha: 2)) } == PSTError.exists("").status)
        #expect(m.loraModules.allSatisfy { $0.layer.adapters.count == 1 })
        // over the activation memory limit
        m.activationMemoryLimit = 1 << 20
        #expect(status { _ = try m.logits(ids: [Int32](repeating: 0, count: 128), batch: 1, seqLen: 128) } == PSTError.outOfMemory("").status)
        m.activationMemoryLimit = Int.max
        // all-ignored labels: loss 0, backward adds nothing
        m.zeroGrad()
        let l = try m.loss(ids: [0, 1, 2], labels: [-100, -100, -100], batch: 1, seqLen: 3)
        #expect(l == 0)
        try m.backward()
        #expect(m.trainableParameters().allSatisfy { $0.gradient.array.allSatisfy { $0 == 0 } })
        // bad configs
        var bad = c; bad.kvHeads = 4
        #expect(status { try bad.validate() } == PSTError.invalidArgument("").status)
        bad = c; bad.headDim = 7
        #expect(status { try bad.validate() } == PSTError.invalidArgument("").status)
        // a provider error propagates
        #expect(status { _ = try LanguageModel(config: c) { (_: String, _: [Int], _: UnsafeMutableBufferPointer<Float>) throws(PSTError) in throw .io("disk") } } == PSTError.io("").status)
        // non-finite weight
        #expect(status { _ = try LanguageModel(config: c) { (_: String, _: [Int], d: UnsafeMutableBufferPointer<Float>) throws(PSTError) in d[0] = .nan } } == PSTError.nonFinite("").status)
    }

    @Test func adapterBookkeeping() throws {
        let m = try Self.randomModel(Self.tiny, seed: 2)
        #expect(m.loraModules.count == 3 * 7)
        #expect(m.loraModules[0].modulePath == "model.layers.0.self_attn.q_proj")
        #expect(m.loraModules[6].modulePath == "model.layers.0.mlp.down_proj")
        #expect(m.trainableParameters().count == 3 * 7 * 2)
        #expect(m.trainableParameters()[0].name == "model.layers.0.self_attn.q_proj.lora_A.a.weight")
        try m.addAdapter("attn", config: LoraConfig(r: 2, alpha: 4), targetModules: ["q_proj", "self_attn.v_proj"])
        #expect(m.trainableParameters(adapter: "attn").count == 3 * 2 * 2)
        // A differs between layers and modules (own seeds)
        let a0 = m.layers[0].qProj.adapter(named: "a")!.a.array, a1 = m.layers[1].qProj.adapter(named: "a")!.a.array
        #expect(a0 != a1)
        let opt = try AdamW()
        #expect(try Trainer.register(m.trainableParameters(adapter: "a"), with: opt) == 42)
        try m.deleteAdapter("attn")
        #expect(m.trainableParameters().count == 42)
    }
}
