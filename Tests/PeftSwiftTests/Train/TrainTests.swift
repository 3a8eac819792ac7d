import Foundation
import Testing
@testable import PeftSwift

/// Trainer, dataset and GGUF-loading tests on a tiny random model (fast), plus SmolLM2 when installed.
@Suite struct TrainTests {
    /// HF-directory logits against transformers' fp32 (fixture): fp32 rounding through the model.
    static let hfLogitsRelTol = 1e-4
    /// The same against a float16-stored reference row: float16 has 2^-11 relative precision.
    static let float16ReferenceTol = 2e-3

    static let cfg = ModelConfig(layers: 2, hidden: 32, intermediate: 48, heads: 4, kvHeads: 2, headDim: 8,
                                          vocab: 64, rmsEps: 1e-5, ropeTheta: 10000, maxPositions: 64, tiedEmbeddings: true)

    /// A random model with no adapter (same weights for the same seed).
    static func model(seed: UInt64 = 7, options: ModelLoadOptions = .dense) throws -> LanguageModel {
        var g = SplitMix64(seed: seed)
        return try LanguageModel(config: cfg, options: options) { (name: String, shape: [Int], dst: UnsafeMutableBufferPointer<Float>) throws(PSTError) in
            let fanIn = Float(shape.last!)
            for i in 0..<dst.count {
                if name.hasSuffix("norm.weight") { dst[i] = 1 + 0.1 * g.uniform(-1, 1) }
                else if name.contains("embed") { dst[i] = 0.5 * g.uniform(-1, 1) }
                else { dst[i] = g.uniform(-1, 1) * (3 / fanIn).squareRoot() }
            }
        }
    }

    /// Rows of a repeated pattern (labels = ids), with a few ignored labels.
    static func data(rows: Int = 8, seqLen: Int = 12) throws -> TrainingDataset {
        var ids: [Int32] = [], labels: [Int32] = []
        for r in 0..<rows {
            for t in 0..<seqLen {
                let v = Int32((r * 3 + t * 5) % 20 + 1)
                ids.append(v); labels.append(t == 4 ? -100 : v)
            }
        }
        return try TrainingDataset(ids: ids, labels: labels, seqLen: seqLen, vocab: cfg.vocab)
    }

    static func params(_ m: LanguageModel) -> [[UInt32]] {
        m.trainableParameters().map { t in (0..<t.parameter.count).map { t.parameter[$0].bitPattern } }
    }

    @Test func lossFallsOnRepeatedText() throws {
        let m = try Self.model()
        let t = try Trainer(model: m, dataset: Self.data(rows: 4), config: TrainerConfig(
            steps: 12, batchSize: 2, learningRate: 2e-2, schedule: .constant, loraR: 4, loraAlpha: 8, loraDropout: 0))
        var losses: [Float] = []
        try t.train { p in losses.append(p.loss); #expect(p.residentBytes > 0); return true }
        #expect(losses.count == 12)
        #expect(losses.allSatisfy { $0.isFinite })
        #expect(losses.last! < 0.7 * losses.first!, "losses \(losses)")
        #expect(throws: PSTError.self) { try t.step() }   // finished
    }

    /// 6 steps straight == 3 steps + checkpoint + a new Trainer on a fresh model resumed + 3 steps,
    /// parameters and optimizer state bit-equal (dropout on, accumulation, clipping, warm-up + cosine).
    @Test(arguments: [(false, 0), (true, 0), (false, 1 << 20)])
    func resumeIsBitIdentical(eightBit: Bool, paged: Int) throws {
        let dir = try TempDir("train")
        defer { dir.cleanup() }
        let ds = try Self.data(rows: 5)
        var c = TrainerConfig(steps: 6, batchSize: 2, gradientAccumulation: 2, learningRate: 5e-3, warmupSteps: 2,
                              schedule: .cosine, weightDecay: 0.01, clipNorm: 0.5, optimizer8bit: eightBit,
                              pagedBudgetBytes: paged, loraR: 4, loraAlpha: 8, loraDropout: 0.1, seed: 11)
        let m1 = try Self.model()
        let t1 = try Trainer(model: m1, dataset: ds, config: c)
        var straight: [Float] = []
        try t1.train { straight.append($0.loss); return true }

        c.checkpointEvery = 3
        c.outputDirectory = dir.path
        let m2 = try Self.model()
        let t2 = try Trainer(model: m2, dataset: ds, config: c)
        var resumed: [Float] = []
        for _ in 0..<3 { resumed.append(try t2.step().loss) }
        let ck = dir.file("checkpoint-3")
        for f in ["adapter_config.json", "adapter_model.safetensors", "optimizer.bin", "trainer_state.json"] {
            #expect(FileManager.default.fileExists(atPath: ck + "/" + f), "\(f)")
        }
        let m3 = try Self.model()
        let t3 = try Trainer(model: m3, dataset: ds, resumingFrom: ck)
        #expect(t3.completedSteps == 3 && t3.cursor == 12)
        try t3.train { resumed.append($0.loss); return true }
        #expect(straight.map(\.bitPattern) == resumed.map(\.bitPattern))
        #expect(Self.params(m1) == Self.params(m3))
        #expect(Self.params(m1) != Self.params(try Self.model().withAdapter(c)))
        #expect(try t1.optimizer.saveState() == t3.optimizer.saveState())
        // the final adapter is a PEFT directory that loads back
        let cfg = try PeftAdapterDirectory.readConfig(dir.path)
        #expect(cfg.r == 4)
    }

    @Test func qloraTrainsAndSavesAdapter() throws {
        let dir = try TempDir("train")
        defer { dir.cleanup() }
        let m = try Self.model(options: .qlora)
        let t = try Trainer(model: m, dataset: Self.data(rows: 4), config: TrainerConfig(
            steps: 3, batchSize: 1, learningRate: 1e-2, loraR: 2, loraAlpha: 4, targetModules: ["q_proj", "v_proj"],
            outputDirectory: dir.path, recomputeActivations: true))
        try t.train()
        #expect(dir.list().contains("adapter_model.safetensors"))
        let f = try SafeTensorsFile(path: dir.file("adapter_model.safetensors"))
        #expect(f.names.count == 2 * 2 * Self.cfg.layers)
        #expect(f.contains("base_model.model.model.layers.1.self_attn.v_proj.lora_B.weight"))
    }

    // MARK: - Dataset

    /// 256 byte symbols + ChatML specials + EOS.
    static func tokenizer() throws -> BPETokenizer {
        var toks = (0..<256).map { String(Character(Unicode.Scalar(_byteToUnicode[$0])!)) }
        toks += ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "he"]
        var types = [Int32](repeating: 1, count: toks.count)
        types[256] = 3; types[257] = 3; types[258] = 3
        return try BPETokenizer(tokens: toks, tokenTypes: types, merges: ["h e"], eosID: 256, preTokenizer: .gpt2)
    }

    @Test func packedTextLayout() throws {
        let tk = try Self.tokenizer()
        let ds = try TrainingDataset.packedText(["hello", "ab"], tokenizer: tk, seqLen: 4)
        // "he" "l" "l" "o" EOS "a" "b" EOS → 8 tokens, 2 rows, no padding
        #expect(ds.count == 2)
        #expect(ds.ids == [259, 108, 108, 111, 256, 97, 98, 256])
        #expect(ds.labels == ds.ids)
        let ds2 = try TrainingDataset.packedText(["hello"], tokenizer: tk, seqLen: 4)
        #expect(ds2.ids == [259, 108, 108, 111, 256, 256, 256, 256])
        #expect(ds2.labels == [259, 108, 108, 111, 256, -100, -100, -100])
        // a seeded order is a permutation, the same for the same seed and epoch
        let big = try TrainingDataset(ids: [Int32](repeating: 1, count: 40), labels: [Int32](repeating: 1, count: 40), seqLen: 2)
        let e0 = (0..<20).map { big.rowIndex(at: $0, seed: 3) }
        #expect(Set(e0).count == 20 && e0 != Array(0..<20))
        #expect(e0 == (0..<20).map { big.rowIndex(at: $0, seed: 3) })
        #expect(e0 != (20..<40).map { big.rowIndex(at: $0, seed: 3) })
        #expect((0..<20).map { big.rowIndex(at: $0, seed: 3, shuffle: false) } == Array(0..<20))
    }

    @Test func instructionLabelsOnlyOnResponse() throws {
        let tk = try Self.tokenizer()
        let ex = InstructionExample(instruction: "hi", response: "yo")
        let (ids, mask) = try TrainingDataset.renderChatML(ex, tokenizer: tk)
        #expect(tk.decode(ids) == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\nyo<|im_end|>\n")
        let ds = try TrainingDataset.instructions([ex], tokenizer: tk, seqLen: 40)
        #expect(ds.count == 1)
        let trained = ds.labels.filter { $0 != -100 }
        #expect(trained == Array(ids[mask.firstIndex(of: true)!...]))
        #expect(tk.decode(trained) == "yo<|im_end|>\n")
        #expect(ds.ids.count == 40 && ds.ids[ids.count...].allSatisfy { $0 == 256 })
        // truncated at seqLen, response still in
        let short = try TrainingDataset.instructions([ex], tokenizer: tk, seqLen: ids.count - 2)
        #expect(short.labels.filter { $0 != -100 }.count == 2)
    }

    @Test func badInputsThrow() throws {
        let tk = try Self.tokenizer()
        let dir = try TempDir("train")
        defer { dir.cleanup() }
        func status(_ body: () throws -> Void) -> Int32? { thrownPST(body)?.status }
        let inv = PSTError.invalidArgument("").status
        #expect(status { _ = try TrainingDataset.packedText([], tokenizer: tk, seqLen: 4) } == inv)
        #expect(status { _ = try TrainingDataset.packedText(["", ""], tokenizer: tk, seqLen: 4) } == inv)
        #expect(status { _ = try TrainingDataset.packedText(["x"], tokenizer: tk, seqLen: 100, maxPositions: 64) } == inv)
        #expect(status { _ = try TrainingDataset.instructions([], tokenizer: tk, seqLen: 8) } == inv)
        #expect(status { _ = try TrainingDataset.instructions([InstructionExample(instruction: "a long prompt here", response: "r")], tokenizer: tk, seqLen: 8) } == inv)
        let bad = dir.file("bad.txt")
        try Data([0x68, 0x69, 0xFF, 0x41]).write(to: URL(fileURLWithPath: bad))
        let e = thrownPST { _ = try TrainingDataset.packedTextFiles([bad], tokenizer: tk, seqLen: 4) }
        #expect(e?.status == inv && e!.message.contains("bad.txt") && e!.message.contains("UTF-8") && e!.message.contains("offset 2"))
        #expect(status { _ = try TrainingDataset.packedTextFiles([dir.file("none.txt")], tokenizer: tk, seqLen: 4) } == PSTError.notFound("").status)
        // trainer config and data/model mismatches
        let ds = try Self.data(rows: 2)
        for c in [TrainerConfig(steps: 0), TrainerConfig(steps: 2, batchSize: 0), TrainerConfig(steps: 2, batchSize: Int.max), TrainerConfig(steps: 2, learningRate: .nan),
                  TrainerConfig(steps: 2, warmupSteps: 3), TrainerConfig(steps: 2, checkpointEvery: 1),
                  TrainerConfig(steps: 2, targetModules: ["nope"])] {
            #expect(status { _ = try Trainer(model: try Self.model(), dataset: ds, config: c) } == inv, "\(c)")
        }
        let longDS = try TrainingDataset(ids: [Int32](repeating: 1, count: 128), labels: [Int32](repeating: 1, count: 128), seqLen: 128)
        #expect(status { _ = try Trainer(model: try Self.model(), dataset: longDS, config: TrainerConfig(steps: 1)) } == inv)
        let bigVocab = try TrainingDataset(ids: [1, 200], labels: [1, 200], seqLen: 2)
        #expect(status { _ = try Trainer(model: try Self.model(), dataset: bigVocab, config: TrainerConfig(steps: 1)) } == inv)
        #expect(status { _ = try Trainer(model: try Self.model(), dataset: ds, resumingFrom: dir.file("nothing")) } == PSTError.notFound("").status)
        // resuming with another dataset
        let t = try Trainer(model: try Self.model(), dataset: ds, config: TrainerConfig(steps: 2, loraR: 2))
        try t.step()
        try t.saveCheckpoint(to: dir.file("ck"))
        let m = try Self.model()
        #expect(status { _ = try Trainer(model: m, dataset: try Self.data(rows: 3), resumingFrom: dir.file("ck")) } == inv)
        #expect(m.loraModules.allSatisfy { $0.layer.adapters.isEmpty })   // nothing left attached
        var other = ds.labels
        other[3] = -100
        let ds2 = try TrainingDataset(ids: ds.ids, labels: other, seqLen: ds.seqLen)
        let efp = thrownPST { _ = try Trainer(model: m, dataset: ds2, resumingFrom: dir.file("ck")) }
        #expect(efp?.status == inv && efp!.message.contains("fingerprint"))
        // a config that disagrees with the checkpoint's
        #expect(status { _ = try Trainer(model: m, dataset: ds, resumingFrom: dir.file("ck"), config: TrainerConfig(steps: 4, loraR: 3)) } == inv)
        let t4 = try Trainer(model: m, dataset: ds, resumingFrom: dir.file("ck"), config: TrainerConfig(steps: 4, loraR: 2))
        #expect(t4.completedSteps == 1 && t4.config.steps == 4)
        // not a GGUF file
        #expect(status { _ = try LanguageModel(ggufPath: bad) } != nil)
        #expect(status { _ = try LanguageModel(ggufPath: dir.file("none.gguf")) } != nil)
    }

    @Test func hfToGGUFNames() {
        #expect(Architecture.llama.ggufName(forHF: "model.embed_tokens.weight") == "token_embd.weight")
        #expect(Architecture.llama.ggufName(forHF: "model.layers.12.self_attn.o_proj.weight") == "blk.12.attn_output.weight")
        #expect(Architecture.llama.ggufName(forHF: "model.layers.0.post_attention_layernorm.weight") == "blk.0.ffn_norm.weight")
        #expect(Architecture.llama.ggufName(forHF: "model.layers.3.mlp.down_proj.weight") == "blk.3.ffn_down.weight")
        #expect(Architecture.llama.ggufName(forHF: "model.norm.weight") == "output_norm.weight")
        #expect(Architecture.llama.ggufName(forHF: "model.layers.x.mlp.down_proj.weight") == nil)
    }

    /// A Hugging Face directory (config.json + one or two safetensors shards) loads the same model.
    @Test(arguments: [false, true])
    func huggingFaceDirectory(sharded: Bool) throws {
        let dir = try TempDir("train")
        defer { dir.cleanup() }
        var tensors: [(String, [Int], [Float])] = []
        var g = SplitMix64(seed: 7)
        let ref = try LanguageModel(config: Self.cfg) { (name: String, shape: [Int], dst: UnsafeMutableBufferPointer<Float>) throws(PSTError) in
            let fanIn = Float(shape.last!)
            for i in 0..<dst.count {
                if name.hasSuffix("norm.weight") { dst[i] = 1 + 0.1 * g.uniform(-1, 1) }
                else if name.contains("embed") { dst[i] = 0.5 * g.uniform(-1, 1) }
                else { dst[i] = g.uniform(-1, 1) * (3 / fanIn).squareRoot() }
            }
            tensors.append((name, shape, Array(dst)))
        }
        let c = Self.cfg
        let config = """
        {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": \(c.hidden),
         "intermediate_size": \(c.intermediate), "num_hidden_layers": \(c.layers), "num_attention_heads": \(c.heads),
         "num_key_value_heads": \(c.kvHeads), "head_dim": \(c.headDim), "rms_norm_eps": 1e-05, "rope_theta": 10000.0,
         "max_position_embeddings": \(c.maxPositions), "vocab_size": \(c.vocab), "tie_word_embeddings": true,
         "torch_dtype": "float32"}
        """
        try config.write(toFile: dir.file("config.json"), atomically: true, encoding: .utf8)
        let entries = tensors.map { SafeTensorsEntry(name: $0.0, shape: $0.1, floats: $0.2) }
        if sharded {
            let half = entries.count / 2
            try SafeTensorsWriter.write(Array(entries[..<half]), to: dir.file("model-00001-of-00002.safetensors"))
            try SafeTensorsWriter.write(Array(entries[half...]), to: dir.file("model-00002-of-00002.safetensors"))
            var map: [String: String] = [:]
            for (i, e) in entries.enumerated() { map[e.name] = i < half ? "model-00001-of-00002.safetensors" : "model-00002-of-00002.safetensors" }
            let idx = try JSONSerialization.data(withJSONObject: ["metadata": [:], "weight_map": map])
            try idx.write(to: URL(fileURLWithPath: dir.file("model.safetensors.index.json")))
        } else {
            try SafeTensorsWriter.write(entries, to: dir.file("model.safetensors"))
        }
        let m = try LanguageModel(huggingFaceDirectory: dir.path)
        #expect(m.config == Self.cfg)
        let ids: [Int32] = [1, 5, 9, 3, 7, 2]
        let a = try m.logits(ids: ids, batch: 1, seqLen: 6), b = try ref.logits(ids: ids, batch: 1, seqLen: 6)
        #expect(a.map(\.bitPattern) == b.map(\.bitPattern))
        // errors: another architecture, a missing tensor
        try config.replacingOccurrences(of: "\"llama\"", with: "\"mistral\"").replacingOccurrences(of: "LlamaForCausalLM", with: "MistralForCausalLM")
            .write(toFile: dir.file("config.json"), atomically: true, encoding: .utf8)
        #expect(thrownPST { _ = try LanguageModel(huggingFaceDirectory: dir.path) }?.status == PSTError.unsupported("").status)
        try config.write(toFile: dir.file("config.json"), atomically: true, encoding: .utf8)
        if !sharded {
            try SafeTensorsWriter.write(Array(entries.dropLast()), to: dir.file("model.safetensors"))
            let e = thrownPST { _ = try LanguageModel(huggingFaceDirectory: dir.path) }
            #expect(e?.status == PSTError.notFound("").status && e!.message.contains("model.norm.weight"))
        }
        #expect(thrownPST { _ = try LanguageModel(huggingFaceDirectory: dir.file("nothing")) }?.status == PSTError.notFound("").status)
    }

    // MARK: - SmolLM2 (skipped when the GGUF is absent)

    @Test func smolLM2Config() throws {
        guard let g = smollm2File else { return }
        let hp = try ModelConfig(gguf: g)
        #expect(hp == .smolLM2_135M)
    }

    /// The dense fp32 GGUF path gives transformers' logits (its GGUF loader, fp32): 16 positions of
    /// a ChatML prompt, the first 1024 vocabulary entries each, and the full last row (float16).
    @Test func smolLM2LogitsMatchTransformers() throws {
        guard let g = smollm2File else { return }
        let fx = try FixtureFile.load("train/smollm2_logits.safetensors")
        let ids = fx["ids"].values(Int32.self)
        let tk = try BPETokenizer(gguf: g)
        #expect(tk.encode("<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n",
                          addBOS: false, addEOS: false) == ids)
        let m = try LanguageModel(gguf: g)
        let T = ids.count, V = m.config.vocab
        let z = try m.logits(ids: ids, batch: 1, seqLen: T)
        let ref = fx["logits"].floats
        var mine: [Float] = []
        for t in 0..<T { mine += z[(t * V)..<(t * V + 1024)] }
        let e = llamaRelErr(mine, ref)
        #expect(e < Self.hfLogitsRelTol, "relative error \(e)")
        let last = fx["last_row"].u16.map { Float(Float16(bitPattern: $0)) }
        let e2 = llamaRelErr(Array(z[((T - 1) * V)...]).map { Float(Float16($0)) }, last)
        #expect(e2 < Self.float16ReferenceTol, "last row relative error \(e2) (float16 reference)")
        var best = 0
        for v in 0..<V where z[(T - 1) * V + v] > z[(T - 1) * V + best] { best = v }
        var bestRef = 0
        for v in 0..<V where last[v] > last[bestRef] { bestRef = v }
        #expect(best == bestRef)
    }

    /// Loads SmolLM2 as QLoRA and trains 2 steps (minutes in a debug build: PST_SLOW=1 or a release build).
    @Test(.enabled(if: ProcessInfo.processInfo.environment["PST_SLOW"] == "1"))
    func smolLM2LoadsAndTrains() throws {
        guard let g = smollm2File else { return }
        let hp = try ModelConfig(gguf: g)
        let tk = try BPETokenizer(gguf: g)
        let m = try LanguageModel(gguf: g, qlora: true)
        let ds = try TrainingDataset.instructions([InstructionExample(instruction: "What is 2+2?", response: "4.")],
                                                  tokenizer: tk, seqLen: 32, maxPositions: hp.maxPositions)
        let t = try Trainer(model: m, dataset: ds, config: TrainerConfig(steps: 2, learningRate: 1e-3, loraR: 4, loraAlpha: 8,
                                                                         targetModules: ["q_proj", "v_proj"]))
        var losses: [Float] = []
        try t.train { p in
            losses.append(p.loss)
            print("SmolLM2 QLoRA step \(p.step): loss \(p.loss) lr \(p.learningRate) \(Int(p.tokensPerSecond)) tok/s RSS \(p.residentBytes >> 20) MiB")
            return true
        }
        #expect(losses.allSatisfy { $0.isFinite && $0 > 0 && $0 < 15 }, "\(losses)")
    }
}

extension LanguageModel {
    /// Attaches the trainer's adapter without training (for comparisons).
    func withAdapter(_ c: TrainerConfig) throws -> LanguageModel {
        try addAdapter(c.adapterName, config: c.loraConfig, targetModules: c.targetModules)
        return self
    }
}
