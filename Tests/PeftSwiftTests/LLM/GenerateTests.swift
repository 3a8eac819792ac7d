import Foundation
import Testing
import CPeftSwift
@testable import PeftSwift

/// A tiny Llama with random weights (deterministic per tensor name).
func generateTinyModel(options: ModelLoadOptions = .dense, tied: Bool = true, maxPositions: Int = 128,
                       adapter: Bool = true) throws -> LanguageModel {
    let c = ModelConfig(layers: 2, hidden: 32, intermediate: 48, heads: 4, kvHeads: 2, headDim: 8, vocab: 61,
                                 rmsEps: 1e-5, ropeTheta: 10000, maxPositions: maxPositions, tiedEmbeddings: tied)
    let m = try LanguageModel(config: c, options: options) { (name: String, shape: [Int], dst: UnsafeMutableBufferPointer<Float>) throws(PSTError) in
        var h: UInt64 = 0xcbf2_9ce4_8422_2325
        for b in name.utf8 { h = (h ^ UInt64(b)) &* 0x100_0000_01b3 }
        var g = SplitMix64(seed: h)
        let isNorm = name.hasSuffix("norm.weight")
        let s: Float = name.contains("embed") || name.contains("lm_head") ? 1 : (3 / Float(shape.last!)).squareRoot()
        for i in 0..<dst.count { dst[i] = isNorm ? 1 + 0.1 * g.uniform(-1, 1) : g.uniform(-s, s) }
    }
    if adapter {
        try m.addAdapter("default", config: LoraConfig(r: 4, alpha: 8, dropout: 0.1))
        var g = SplitMix64(seed: 99)
        for t in m.trainableParameters() where t.name.contains("lora_B") {
            for i in 0..<t.parameter.count { t.parameter[i] = 0.2 * g.uniform(-1, 1) }
        }
    }
    return m
}

/// The last row of the full forward over `ids` (eval mode: no dropout).
func fullLastLogits(_ m: LanguageModel, _ ids: [Int32]) throws -> [Float] {
    let was = m.training
    m.training = false
    defer { m.training = was }
    let all = try m.logits(ids: ids, batch: 1, seqLen: ids.count)
    return Array(all[((ids.count - 1) * m.config.vocab)...])
}

func genExpectError(_ status: Int32, _ body: () throws -> Void, sourceLocation: SourceLocation = #_sourceLocation) {
    do {
        try body()
        Issue.record("no error", sourceLocation: sourceLocation)
    } catch let e as PSTError {
        #expect(e.status == status, "\(e)", sourceLocation: sourceLocation)
    } catch {
        Issue.record("unexpected \(error)", sourceLocation: sourceLocation)
    }
}

@Suite struct GenerateTests {
    /// Cached decoding against the whole-sequence forward (the same layer code; only the
    /// attention's GEMM shapes differ, so only fp32 summation order): relative to max|z|.
    static let cachedVsFullTol = 1e-5
    /// An adapter must move the logits by far more than rounding.
    static let adapterMovesAtLeast = 1e-3

    /// Prefill + token-by-token decode over the KV cache equals the full forward at every
    /// generated position (dense and NF4 bases, tied and untied heads, prompts shorter and
    /// longer than one attention row block).
    @Test(arguments: [(ModelLoadOptions.dense, true, 7), (.dense, false, 70), (.qlora, true, 5), (.qlora, false, 66)])
    func kvDecodeMatchesFullForward(_ opts: ModelLoadOptions, _ tied: Bool, _ promptLen: Int) throws {
        let m = try generateTinyModel(options: opts, tied: tied)
        var g = SplitMix64(seed: 5)
        var ids = (0..<promptLen).map { _ in Int32(g.next() % 61) }
        let cache = try m.makeKVCache(capacity: promptLen + 20)
        var z = try m.forwardCached(ids: ids, cache: cache)
        var worst = llamaRelErr(z, try fullLastLogits(m, ids))
        for _ in 0..<20 {
            let t = z.withUnsafeBufferPointer { Sampler.argmax($0) }
            ids.append(t)
            z = try m.forwardCached(ids: [t], cache: cache)
            worst = max(worst, llamaRelErr(z, try fullLastLogits(m, ids)))
        }
        #expect(cache.count == promptLen + 20)
        #expect(worst < Self.cachedVsFullTol, "worst relative error \(worst)")
        // the cache is full
        genExpectError(PST_ERR_INVALID_ARG) { _ = try m.forwardCached(ids: [1], cache: cache) }
    }

    /// Feeding the prompt in pieces gives the same state as feeding it at once.
    @Test func chunkedPrefill() throws {
        let m = try generateTinyModel()
        let ids: [Int32] = (0..<12).map { Int32(($0 * 7 + 3) % 61) }
        let c1 = try m.makeKVCache(capacity: 16), c2 = try m.makeKVCache(capacity: 16)
        let a = try m.forwardCached(ids: ids, cache: c1)
        _ = try m.forwardCached(ids: Array(ids[0..<5]), cache: c2)
        let b = try m.forwardCached(ids: Array(ids[5...]), cache: c2)
        #expect(llamaRelErr(b, a) < Self.cachedVsFullTol)
        c1.reset()
        #expect(c1.count == 0)
        #expect(llamaRelErr(try m.forwardCached(ids: ids, cache: c1), a) == 0)
    }

    /// Greedy generation is deterministic and is the argmax chain of the full forward.
    @Test func greedyDeterministic() throws {
        let m = try generateTinyModel(options: .qlora)
        let prompt: [Int32] = [3, 14, 15, 9, 26]
        var streamed: [Int32] = []
        let r1 = try m.generate(prompt: prompt, options: GenerationOptions(maxNewTokens: 12)) { streamed.append($0); return true }
        let r2 = try m.generate(prompt: prompt, options: GenerationOptions(maxNewTokens: 12))
        #expect(r1 == r2)
        #expect(r1.tokens.count == 12 && r1.stopReason == .maxNewTokens)
        #expect(streamed == r1.tokens)
        var ids = prompt
        for t in r1.tokens {
            let z = try fullLastLogits(m, ids)
            #expect(z.withUnsafeBufferPointer { Sampler.argmax($0) } == t)
            ids.append(t)
        }
        // training mode is restored, and dropout played no part
        #expect(m.training)
    }

    /// Sampling is reproducible with a seed; top-k 1 and a tiny top-p are greedy.
    @Test func samplingReproducible() throws {
        let m = try generateTinyModel()
        let prompt: [Int32] = [1, 2, 3]
        let o = GenerationOptions(maxNewTokens: 24, temperature: 1.5, topP: 0.95, topK: 40, seed: 42)
        let a = try m.generate(prompt: prompt, options: o)
        let b = try m.generate(prompt: prompt, options: o)
        #expect(a == b)
        var o2 = o; o2.seed = 43
        var o3 = o; o3.seed = 44
        let c = try m.generate(prompt: prompt, options: o2), d = try m.generate(prompt: prompt, options: o3)
        #expect(a.tokens != c.tokens || a.tokens != d.tokens)
        let greedy = try m.generate(prompt: prompt, options: GenerationOptions(maxNewTokens: 24))
        #expect(try m.generate(prompt: prompt, options: GenerationOptions(maxNewTokens: 24, temperature: 2, topK: 1, seed: 7)) == greedy)
        #expect(try m.generate(prompt: prompt, options: GenerationOptions(maxNewTokens: 24, temperature: 2, topP: 1e-6, seed: 7)) == greedy)
    }

    /// The sampler's distribution: with top-k / top-p the excluded tokens never appear, and
    /// the frequencies follow softmax(z / T).
    @Test func samplerDistribution() throws {
        let z: [Float] = [2, 1, 0, -1, 0.5]
        var s = Sampler(options: GenerationOptions(temperature: 1, seed: 3))
        var counts = [Int](repeating: 0, count: 5)
        let n = 40000
        for _ in 0..<n { counts[Int(z.withUnsafeBufferPointer { s.sample($0) })] += 1 }
        let e = z.map { exp(Double($0)) }, tot = e.reduce(0, +)
        for i in 0..<5 { #expect(abs(Double(counts[i]) / Double(n) - e[i] / tot) < 0.01, "token \(i)") }
        var k2 = Sampler(options: GenerationOptions(temperature: 1, topK: 2, seed: 3))
        var p = Sampler(options: GenerationOptions(temperature: 1, topP: 0.8, seed: 3))
        // probs ≈ .53 .19 .07 .03 .12 → top-p 0.8 keeps {0, 1, 4}
        for _ in 0..<2000 {
            #expect([0, 1].contains(z.withUnsafeBufferPointer { k2.sample($0) }))
            #expect([0, 1, 4].contains(z.withUnsafeBufferPointer { p.sample($0) }))
        }
    }

    /// Edge cases of the sampler: NaN / −∞ logits are never drawn; top-k then top-p; a long
    /// tail of small probabilities (the full-sort path) keeps the exact nucleus.
    @Test func samplerEdgeCases() throws {
        let z: [Float] = [.nan, 1, -.infinity, 0.9, 3, 2.9]
        var s = Sampler(options: GenerationOptions(temperature: 1, seed: 1))
        var kp = Sampler(options: GenerationOptions(temperature: 1, topP: 0.5, topK: 3, seed: 1))
        var seen = Set<Int32>()
        for _ in 0..<3000 {
            let t = z.withUnsafeBufferPointer { s.sample($0) }
            #expect(t != 0 && t != 2)
            // top-3 = {4, 5, 1}; p ∝ e^3, e^2.9, e^1 → top-p 0.5 keeps {4, 5}
            seen.insert(z.withUnsafeBufferPointer { kp.sample($0) })
        }
        #expect(seen == [4, 5])
        // 1 big token and 5000 at −10: each tail p ≈ 4.5e-5 (under the candidate cut), together
        // ≈ 0.18 of the mass, so the 0.9 nucleus reaches into the tail
        var tail = [Float](repeating: -10, count: 5001)
        tail[0] = 0
        var tp = Sampler(options: GenerationOptions(temperature: 1, topP: 0.9, seed: 2))
        var zeroCount = 0
        let n = 2000
        for _ in 0..<n where tail.withUnsafeBufferPointer({ tp.sample($0) }) == 0 { zeroCount += 1 }
        let p0 = 1 / (1 + 5000 * exp(-10.0)), tailP = p0 * exp(-10.0)
        let need = 0.9 - p0, kept = (need / tailP).rounded(.up)
        let expect = p0 / (p0 + kept * tailP)
        #expect(abs(Double(zeroCount) / Double(n) - expect) < 0.02, "\(Double(zeroCount) / Double(n)) vs \(expect)")
        // greedy on ties: the lowest id
        let tie: [Float] = [1, 5, 5, 2]
        #expect(tie.withUnsafeBufferPointer { Sampler.argmax($0) } == 1)
    }

    /// A stop id ends generation (and is returned); the callback can stop it too.
    @Test func stopsAtEOS() throws {
        let m = try generateTinyModel()
        let prompt: [Int32] = [10, 20, 30]
        let free = try m.generate(prompt: prompt, options: GenerationOptions(maxNewTokens: 10))
        let eos = free.tokens[3]
        let firstAt = free.tokens.firstIndex(of: eos)!
        let r = try m.generate(prompt: prompt, options: GenerationOptions(maxNewTokens: 10, stopIDs: [eos]))
        #expect(r.tokens == Array(free.tokens[...firstAt]))
        #expect(r.stopReason == .stopToken)
        var n = 0
        let cb = try m.generate(prompt: prompt, options: GenerationOptions(maxNewTokens: 10)) { _ in n += 1; return n < 2 }
        #expect(cb.tokens == Array(free.tokens[..<2]) && cb.stopReason == .callback)
        #expect(try m.generate(prompt: prompt, options: GenerationOptions(maxNewTokens: 0)).tokens.isEmpty)
    }

    /// disableAdapters generates with the base model and restores the active sets.
    @Test func adaptersOnOff() throws {
        let m = try generateTinyModel()
        let base = try generateTinyModel(adapter: false)
        let prompt: [Int32] = [5, 6, 7, 8]
        let o = GenerationOptions(maxNewTokens: 10)
        var off = o; off.disableAdapters = true
        let before = try m.generate(prompt: prompt, options: off)
        #expect(before == (try base.generate(prompt: prompt, options: o)))
        #expect(m.loraModules.allSatisfy { $0.layer.active.map(\.name) == ["default"] })
        // the adapter changes the logits
        let on = try m.forwardCached(ids: prompt, cache: try m.makeKVCache(capacity: 4))
        #expect(llamaRelErr(on, try base.forwardCached(ids: prompt, cache: try base.makeKVCache(capacity: 4))) > Self.adapterMovesAtLeast)
        // logits with adapters disabled equal the base's
        let z = try m.withAdaptersDisabled { () throws(PSTError) -> [Float] in
            try m.forwardCached(ids: prompt, cache: try m.makeKVCache(capacity: 4))
        }
        #expect(llamaRelErr(z, try base.forwardCached(ids: prompt, cache: try base.makeKVCache(capacity: 4))) == 0)
        // a merged adapter cannot be disabled
        _ = try m.loraModules[0].layer.merge()
        genExpectError(PST_ERR_MISUSE) { _ = try m.generate(prompt: prompt, options: off) }
        #expect(m.loraModules.allSatisfy { $0.layer.active.map(\.name) == ["default"] })
    }

    @Test func errors() throws {
        let m = try generateTinyModel(maxPositions: 16)
        let inv = PST_ERR_INVALID_ARG
        genExpectError(inv) { _ = try m.generate(prompt: []) }
        genExpectError(inv) { _ = try m.generate(prompt: [1, 61]) }
        genExpectError(inv) { _ = try m.generate(prompt: [-1]) }
        genExpectError(inv) { _ = try m.generate(prompt: [Int32](repeating: 1, count: 17), options: GenerationOptions(maxNewTokens: 1)) }
        genExpectError(inv) { _ = try m.generate(prompt: [Int32](repeating: 1, count: 10), options: GenerationOptions(maxNewTokens: 8)) }
        _ = try m.generate(prompt: [Int32](repeating: 1, count: 10), options: GenerationOptions(maxNewTokens: 7))
        _ = try m.generate(prompt: [Int32](repeating: 1, count: 16), options: GenerationOptions(maxNewTokens: 1))
        for o in [GenerationOptions(temperature: -1), GenerationOptions(temperature: .nan), GenerationOptions(temperature: .infinity),
                  GenerationOptions(temperature: 1, topP: 0), GenerationOptions(temperature: 1, topP: 1.5),
                  GenerationOptions(temperature: 1, topP: .nan), GenerationOptions(topK: -1),
                  GenerationOptions(maxNewTokens: -1), GenerationOptions(stopIDs: [61])] {
            genExpectError(inv) { _ = try m.generate(prompt: [1], options: o) }
        }
        genExpectError(inv) { _ = try m.makeKVCache(capacity: 17) }
        genExpectError(inv) { _ = try m.makeKVCache(capacity: 0) }
        let c = try m.makeKVCache(capacity: 4)
        genExpectError(inv) { _ = try m.forwardCached(ids: [], cache: c) }
        genExpectError(inv) { _ = try m.forwardCached(ids: [1, 2, 3, 4, 5], cache: c) }
        genExpectError(inv) { _ = try m.forwardCached(ids: [99], cache: c) }
        let other = try generateTinyModel(maxPositions: 16)
        genExpectError(inv) { _ = try other.forwardCached(ids: [1], cache: c) }
        #expect(c.count == 0)
    }
}

// MARK: - SmolLM2-135M-Instruct (GGUF) against transformers

/// The SmolLM2 GGUF as a LanguageModel: config from the GGUF metadata, weights by dequantizeHF
/// under the HF → GGUF name map.
/// SmolLM2 from its GGUF through the engine's own loader (Train/LanguageModel+GGUF.swift).
func smollm2Model(_ g: GGUFFile, options: ModelLoadOptions) throws -> LanguageModel {
    try LanguageModel(gguf: g, options: options)
}

struct GreedyFixture: Decodable {
    struct Case: Decodable { let text: String; let prompt_ids: [Int32]; let expected_ids: [Int32] }
    let max_new_tokens: Int
    let eos_ids: [Int32]
    let cases: [Case]
    static func load() throws -> GreedyFixture {
        try JSONDecoder().decode(GreedyFixture.self, from: Data(contentsOf: FixtureFile.url("generate/smollm2_greedy.json")))
    }
}

@Suite struct GenerateSmolLM2Tests {
    /// Greedy generation of SmolLM2-135M-Instruct (dense fp32 from the GGUF) equals
    /// transformers' generate(do_sample=False) (Tests/fixtures/make_generate_fixtures.py).
    @Test(.enabled(if: smollm2File != nil)) func greedyMatchesTransformers() throws {
        let g = smollm2File!
        let fx = try GreedyFixture.load()
        let tok = try BPETokenizer(gguf: g)
        let m = try smollm2Model(g, options: .dense)
        for c in fx.cases {
            #expect(tok.encode(c.text, addBOS: false) == c.prompt_ids, "tokenizer: \(c.text)")
            let r = try m.generate(prompt: c.prompt_ids,
                                   options: GenerationOptions(maxNewTokens: fx.max_new_tokens, stopIDs: fx.eos_ids))
            #expect(r.tokens == c.expected_ids, "\(c.text): \(tok.decode(r.tokens)) vs \(tok.decode(c.expected_ids))")
        }
    }

    /// Decode speed with an NF4 + double-quant base (and a LoRA adapter), release build:
    ///     PST_BENCH=1 swift test -c release -Xswiftc -enable-testing --filter GenerateSmolLM2Tests
    @Test(.enabled(if: smollm2File != nil && ProcessInfo.processInfo.environment["PST_BENCH"] == "1"))
    func decodeSpeed() throws {
        let g = smollm2File!
        for (label, opts) in [("NF4+DQ", ModelLoadOptions.qlora), ("fp32", .dense)] {
            let m = try smollm2Model(g, options: opts)
            do {   // the tied LM head alone: a GEMV over vocab × H (fp32)
                let c = m.config
                let x = try AlignedBuffer<Float>(count: c.hidden), z = try AlignedBuffer<Float>(count: c.vocab)
                for i in 0..<c.hidden { x[i] = 0.01 * Float(i % 13) }
                let t0 = DispatchTime.now().uptimeNanoseconds
                for _ in 0..<50 {
                    GEMM.sgemm(transA: false, transB: true, m: 1, n: c.vocab, k: c.hidden, alpha: 1, a: x.baseAddress, lda: c.hidden,
                               b: m.headWeight, ldb: c.hidden, beta: 0, c: z.baseAddress, ldc: c.vocab)
                }
                print(String(format: "  LM head GEMV (%d × %d fp32): %.2f ms", c.vocab, c.hidden,
                             Double(DispatchTime.now().uptimeNanoseconds - t0) / 50e6))
            }
            let prompt = try BPETokenizer(gguf: g).encode("Once upon a time, in a small village,", addBOS: false)
            for withAdapter in [false, true] {
                if withAdapter { try m.addAdapter("default", config: LoraConfig(r: 16, alpha: 32)) }
                let n = 128
                _ = try m.generate(prompt: prompt, options: GenerationOptions(maxNewTokens: 4))
                let cache = try m.makeKVCache(capacity: prompt.count + n)
                let t0 = DispatchTime.now().uptimeNanoseconds
                var z = try m.forwardCached(ids: prompt, cache: cache)
                let t1 = DispatchTime.now().uptimeNanoseconds
                for _ in 0..<n {
                    let t = z.withUnsafeBufferPointer { Sampler.argmax($0) }
                    z = try m.forwardCached(ids: [t], cache: cache)
                }
                let t2 = DispatchTime.now().uptimeNanoseconds
                print(String(format: "SmolLM2-135M %@%@ decode: %.1f tokens/s (%d tokens, %d threads), prefill %d tokens %.1f ms",
                             label, withAdapter ? " + LoRA r16" : "", Double(n) / (Double(t2 - t1) / 1e9), n, Threads.count,
                             prompt.count, Double(t1 - t0) / 1e6))
                let o = GenerationOptions(maxNewTokens: n, temperature: 0.8, topP: 0.9, topK: 50, seed: 1)
                let t3 = DispatchTime.now().uptimeNanoseconds
                let r = try m.generate(prompt: prompt, options: o)
                let t4 = DispatchTime.now().uptimeNanoseconds
                print(String(format: "  generate(temperature 0.8, top-p 0.9, top-k 50): %d tokens, %.1f tokens/s incl. prefill",
                             r.tokens.count, Double(r.tokens.count) / (Double(t4 - t3) / 1e9)))
            }
        }
    }
}
