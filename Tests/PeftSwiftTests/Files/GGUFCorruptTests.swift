import Foundation
import Testing
import CPeftSwift
@testable import PeftSwift

/// A minimal GGUF writer for hand-made (and deliberately broken) files.
struct MiniGGUF {
    var magic: [UInt8] = Array("GGUF".utf8)
    var version: UInt32 = 3
    var kvs: [(String, UInt32, [UInt8])] = []        // key, type, encoded value
    var tensors: [(String, [UInt64], UInt32, UInt64)] = []  // name, ne, type, offset
    var tensorCountOverride: UInt64? = nil
    var kvCountOverride: UInt64? = nil
    var alignment = 32
    var data: [UInt8] = []

    static func le<T: FixedWidthInteger>(_ v: T) -> [UInt8] { withUnsafeBytes(of: v.littleEndian) { Array($0) } }
    static func str(_ s: String) -> [UInt8] { le(UInt64(s.utf8.count)) + Array(s.utf8) }

    mutating func kv(_ key: String, u32 v: UInt32) { kvs.append((key, 4, Self.le(v))) }
    mutating func kv(_ key: String, string v: String) { kvs.append((key, 8, Self.str(v))) }

    func bytes() -> [UInt8] {
        var b = magic + Self.le(version)
        b += Self.le(tensorCountOverride ?? UInt64(tensors.count)) + Self.le(kvCountOverride ?? UInt64(kvs.count))
        for (k, t, v) in kvs { b += Self.str(k) + Self.le(t) + v }
        for (n, ne, t, off) in tensors {
            b += Self.str(n) + Self.le(UInt32(ne.count))
            for d in ne { b += Self.le(d) }
            b += Self.le(t) + Self.le(off)
        }
        while b.count % alignment != 0 { b.append(0) }
        return b + data
    }

    /// A valid file: one F32 [4] vector and one Q8_0 [32, 2] matrix.
    static func valid() -> MiniGGUF {
        var g = MiniGGUF()
        g.kv("general.architecture", string: "llama")
        g.kvs.append(("tokens", 9, le(UInt32(8)) + le(UInt64(2)) + str("a") + str("bc")))
        g.tensors = [("v", [4], 0, 0), ("m", [32, 2], 8, 32)]
        g.data = [UInt8](repeating: 0, count: 32) + [UInt8](repeating: 0, count: 68)
        for i in 0..<4 { g.data.replaceSubrange((4 * i)..<(4 * i + 4), with: le(Float(i + 1).bitPattern)) }
        g.data[32] = 0x00; g.data[33] = 0x3C   // d = 1
        g.data[34] = 5
        return g
    }
}

@Suite struct GGUFCorruptTests {
    func expectError(_ bytes: [UInt8], _ status: Int32, _ fragment: String, sourceLocation: SourceLocation = #_sourceLocation) {
        do {
            _ = try GGUFFile(bytes: bytes, name: "bad.gguf")
            Issue.record("expected an error containing '\(fragment)'", sourceLocation: sourceLocation)
        } catch {
            #expect(error.status == status, "\(error)", sourceLocation: sourceLocation)
            #expect(error.message.hasPrefix("bad.gguf: "), "\(error)", sourceLocation: sourceLocation)
            #expect(error.message.contains(fragment), "\(error)", sourceLocation: sourceLocation)
        }
    }

    @Test func validMiniFile() throws {
        let g = try GGUFFile(bytes: MiniGGUF.valid().bytes(), name: "ok.gguf")
        #expect(g.tensors.map(\.name) == ["v", "m"])
        #expect(try g.dequantize(try g.tensor(named: "v")).array == [1, 2, 3, 4])
        let m = try g.dequantize(try g.tensor(named: "m")).array
        #expect(m[0] == 5 && m.count == 64 && m[1...].allSatisfy { $0 == 0 })
        #expect(try g.array("tokens") == .string(["a", "bc"]))
    }

    @Test func headerErrors() {
        var g = MiniGGUF.valid()
        g.magic = Array("GGML".utf8)
        expectError(g.bytes(), PST_ERR_CORRUPT, "bad magic")
        for v: UInt32 in [0, 1, 4, 0xFFFF_FFFF] {
            g = .valid(); g.version = v
            expectError(g.bytes(), PST_ERR_UNSUPPORTED, "version \(v)")
        }
        g = .valid(); g.tensorCountOverride = UInt64.max
        expectError(g.bytes(), PST_ERR_CORRUPT, "tensor count")
        g = .valid(); g.kvCountOverride = 1 << 40
        expectError(g.bytes(), PST_ERR_CORRUPT, "metadata count")
        g = .valid(); g.kvCountOverride = 3     // one more entry than present: runs into the tensor table
        do { _ = try GGUFFile(bytes: g.bytes(), name: "bad.gguf"); Issue.record("expected error") } catch {
            #expect(error.status == PST_ERR_CORRUPT || error.status == PST_ERR_UNSUPPORTED)
        }
        expectError([], PST_ERR_CORRUPT, "empty")
        expectError(Array("GGUF".utf8), PST_ERR_CORRUPT, "truncated")
    }

    @Test func metadataErrors() {
        var g = MiniGGUF.valid()
        g.kvs.append(("x", 13, []))
        expectError(g.bytes(), PST_ERR_CORRUPT, "unknown value type 13")
        g = .valid(); g.kvs.append(("s", 8, MiniGGUF.le(UInt64.max)))
        expectError(g.bytes(), PST_ERR_CORRUPT, "string length")
        g = .valid(); g.kvs.append(("a", 9, MiniGGUF.le(UInt32(6)) + MiniGGUF.le(UInt64(1) << 60)))
        expectError(g.bytes(), PST_ERR_CORRUPT, "element count of array 'a'")
        g = .valid(); g.kvs.append(("a", 9, MiniGGUF.le(UInt32(99)) + MiniGGUF.le(UInt64(1))))
        expectError(g.bytes(), PST_ERR_CORRUPT, "array of unknown type 99")
        g = .valid(); g.kvs.append(("b", 7, [2]))
        expectError(g.bytes(), PST_ERR_CORRUPT, "bool with byte value 2")
        g = .valid(); g.kv("general.architecture", string: "again")
        expectError(g.bytes(), PST_ERR_CORRUPT, "duplicate metadata key 'general.architecture'")
        // arrays of arrays nested too deep
        var nested = MiniGGUF.le(UInt32(9)) + MiniGGUF.le(UInt64(1))
        for _ in 0..<20 { nested += MiniGGUF.le(UInt32(9)) + MiniGGUF.le(UInt64(1)) }
        nested += MiniGGUF.le(UInt32(0)) + MiniGGUF.le(UInt64(1)) + [7]
        g = .valid(); g.kvs.append(("deep", 9, nested))
        expectError(g.bytes(), PST_ERR_CORRUPT, "deeper than 8")
        // alignment
        g = .valid(); g.kv("general.alignment", u32: 48)
        expectError(g.bytes(), PST_ERR_CORRUPT, "not a power of two")
        g = .valid(); g.kv("general.alignment", u32: 0)
        expectError(g.bytes(), PST_ERR_CORRUPT, "not a power of two")
        g = .valid(); g.kv("general.alignment", string: "32")
        expectError(g.bytes(), PST_ERR_CORRUPT, "general.alignment has type")
    }

    @Test func tensorErrors() {
        var g = MiniGGUF.valid()
        g.tensors[1].2 = 31      // removed ggml type code
        expectError(g.bytes(), PST_ERR_UNSUPPORTED, "unknown ggml type 31")
        g = .valid(); g.tensors[1].2 = 1000
        expectError(g.bytes(), PST_ERR_UNSUPPORTED, "unknown ggml type 1000")
        g = .valid(); g.tensors[1].3 = 64
        expectError(g.bytes(), PST_ERR_CORRUPT, "outside the data section")
        g = .valid(); g.tensors[1].3 = 33
        expectError(g.bytes(), PST_ERR_CORRUPT, "not a multiple of the alignment")
        g = .valid(); g.tensors[1].3 = UInt64.max - 31
        expectError(g.bytes(), PST_ERR_CORRUPT, "offset")
        g = .valid(); g.tensors[0].1 = []
        expectError(g.bytes(), PST_ERR_CORRUPT, "0 dimensions")
        g = .valid(); g.tensors[0].1 = [1, 1, 1, 1, 1]
        expectError(g.bytes(), PST_ERR_CORRUPT, "5 dimensions")
        g = .valid(); g.tensors[0].1 = [1 << 32, 1 << 32]
        expectError(g.bytes(), PST_ERR_CORRUPT, "overflow")
        g = .valid(); g.tensors[0].1 = [UInt64.max]
        expectError(g.bytes(), PST_ERR_CORRUPT, "out of range")
        g = .valid(); g.tensors[0].1 = [1 << 40]
        expectError(g.bytes(), PST_ERR_CORRUPT, "more bytes than the file has")
        g = .valid(); g.tensors[1].1 = [48, 2]
        expectError(g.bytes(), PST_ERR_CORRUPT, "not a multiple of the Q8_0 block size 32")
        g = .valid(); g.tensors[1].0 = "v"
        expectError(g.bytes(), PST_ERR_CORRUPT, "duplicate tensor name 'v'")
        g = .valid(); g.data.removeLast()
        expectError(g.bytes(), PST_ERR_CORRUPT, "tensor 'm' data")
    }

    @Test func knownButUndequantizableType() throws {
        var g = MiniGGUF.valid()
        g.tensors = [("k", [256], 12, 0)]   // Q4_K: parses, dequantize says unsupported
        g.data = [UInt8](repeating: 0, count: 144)
        let f = try GGUFFile(bytes: g.bytes(), name: "k.gguf")
        do { _ = try f.dequantize(try f.tensor(named: "k")); Issue.record("expected unsupported") } catch {
            #expect(error.status == PST_ERR_UNSUPPORTED && error.message.contains("Q4_K"))
        }
    }

    @Test func ioErrors() {
        // one rule for every reader (Core/MappedFile.swift): a missing file is NOT_FOUND
        do { _ = try GGUFFile(path: "/nonexistent/x.gguf"); Issue.record("expected NOT_FOUND") } catch {
            #expect(error.status == PST_ERR_NOT_FOUND && error.message.contains("/nonexistent/x.gguf"))
        }
        do { _ = try GGUFFile(path: "/tmp"); Issue.record("expected IO") } catch {
            #expect(error.status == PST_ERR_IO)
        }
    }

    /// Every prefix of the synthetic fixture either parses (only when the cut falls in trailing
    /// padding) or throws CORRUPT.
    @Test func everyTruncation() throws {
        let full = [UInt8](try Data(contentsOf: llmFixture("synthetic.gguf")))
        let g = try GGUFFile(bytes: full)
        let end = g.tensors.map { g.dataOffset + $0.offset + $0.byteCount }.max()!
        for n in 0..<full.count {
            do {
                _ = try GGUFFile(bytes: Array(full[0..<n]), name: "cut.gguf")
                #expect(n >= end, "prefix \(n) parsed")
            } catch {
                #expect(error.status == PST_ERR_CORRUPT, "prefix \(n): \(error)")
                #expect(error.message.hasPrefix("cut.gguf: "))
            }
        }
    }

    /// Seeded mutations of the synthetic file: random bytes, extreme u64/u32 values at random
    /// positions, cuts and insertions. Each result parses or throws CORRUPT/UNSUPPORTED, and a
    /// file that parses can be fully dequantized (fast and reference) without a crash.
    @Test func seededMutations() throws {
        let full = [UInt8](try Data(contentsOf: llmFixture("synthetic.gguf")))
        var s: UInt64 = 0x9E37_79B9_7F4A_7C15
        func next() -> UInt64 { s ^= s << 13; s ^= s >> 7; s ^= s << 17; return s }
        func rnd(_ n: Int) -> Int { Int(next() % UInt64(max(n, 1))) }
        let extremes: [UInt64] = [0, 1, 2, 3, 31, 32, 64, 255, 1 << 31, 1 << 32, UInt64(Int64.max), UInt64.max, UInt64.max - 1]
        var parsed = 0, failed = 0
        for _ in 0..<3000 {
            var b = full
            // bias toward the header/metadata/tensor table, where the structure lives
            let headerEnd = 1400
            for _ in 0..<(1 + rnd(3)) {
                switch rnd(6) {
                case 0: b[rnd(min(b.count, headerEnd))] = UInt8(truncatingIfNeeded: next())
                case 1:
                    let p = rnd(max(1, min(b.count, headerEnd) - 8))
                    let v = extremes[rnd(extremes.count)]
                    if p + 8 <= b.count { b.replaceSubrange(p..<(p + 8), with: withUnsafeBytes(of: v.littleEndian, Array.init)) }
                case 2:
                    let p = rnd(max(1, min(b.count, headerEnd) - 4))
                    let v = UInt32(truncatingIfNeeded: extremes[rnd(extremes.count)])
                    if p + 4 <= b.count { b.replaceSubrange(p..<(p + 4), with: withUnsafeBytes(of: v.littleEndian, Array.init)) }
                case 3: b = Array(b[0..<rnd(b.count)])
                case 4: if !b.isEmpty { b.insert(UInt8(truncatingIfNeeded: next()), at: rnd(b.count)) }
                default: if !b.isEmpty { b.remove(at: rnd(b.count)) }
                }
            }
            do {
                let g = try GGUFFile(bytes: b, name: "mut.gguf")
                parsed += 1
                for t in g.tensors where t.type.canDequantize && t.elementCount < 1 << 20 {
                    _ = try g.dequantize(t)
                    _ = try g.dequantize(t, reference: true)
                }
                _ = try? ModelConfig(gguf: g)
                _ = try? BPETokenizer(gguf: g)
            } catch {
                failed += 1
                #expect(error.status == PST_ERR_CORRUPT || error.status == PST_ERR_UNSUPPORTED, "\(error)")
                #expect(error.message.hasPrefix("mut.gguf: "), "\(error)")
            }
        }
        #expect(parsed > 50 && failed > 1000, "parsed \(parsed), failed \(failed)")
    }
}

/// Hostile tokenizer metadata: a small GGUF carrying a byte-level vocabulary, mutated with a
/// seeded loop. Each result opens or throws cleanly; a tokenizer that loads encodes and decodes.
@Suite struct GGUFTokenizerCorruptTests {
    static func tokenizerGGUF() -> [UInt8] {
        var g = MiniGGUF()
        g.kv("general.architecture", string: "llama")
        g.kv("tokenizer.ggml.model", string: "gpt2")
        g.kv("tokenizer.ggml.pre", string: "smollm")
        var toks = (0..<256).map { String(Character(Unicode.Scalar(_byteToUnicode[$0])!)) }
        toks += ["<s>", "Ġt", "he", "Ġthe"]
        var arr = MiniGGUF.le(UInt32(8)) + MiniGGUF.le(UInt64(toks.count))
        for t in toks { arr += MiniGGUF.str(t) }
        g.kvs.append(("tokenizer.ggml.tokens", 9, arr))
        var types = MiniGGUF.le(UInt32(5)) + MiniGGUF.le(UInt64(toks.count))
        for i in 0..<toks.count { types += MiniGGUF.le(Int32(i == 256 ? 3 : 1)) }
        g.kvs.append(("tokenizer.ggml.token_type", 9, types))
        var merges = MiniGGUF.le(UInt32(8)) + MiniGGUF.le(UInt64(3))
        for m in ["Ġ t", "h e", "Ġt he"] { merges += MiniGGUF.str(m) }
        g.kvs.append(("tokenizer.ggml.merges", 9, merges))
        g.kv("tokenizer.ggml.bos_token_id", u32: 256)
        g.kvs.append(("tokenizer.ggml.add_bos_token", 7, [1]))
        return g.bytes()
    }

    @Test func validTokenizerFile() throws {
        let g = try GGUFFile(bytes: Self.tokenizerGGUF(), name: "tok.gguf")
        let t = try BPETokenizer(gguf: g)
        #expect(t.preTokenizer == .digitsThenGPT2 && t.addBOSByDefault && t.bosID == 256)
        #expect(t.encode(" the 12") == [256, 259, Int32(t.tokenID("Ġ")!), Int32(t.tokenID("1")!), Int32(t.tokenID("2")!)])
        #expect(t.decode(t.encode("<s> the"), skipSpecial: true) == " the")
    }

    @Test func badTokenizerMetadata() throws {
        func expectFail(_ bytes: [UInt8], _ fragment: String, status: Int32) {
            do {
                let g = try GGUFFile(bytes: bytes, name: "tok.gguf")
                _ = try BPETokenizer(gguf: g)
                Issue.record("expected '\(fragment)'")
            } catch {
                #expect(error.status == status && error.message.hasPrefix("tok.gguf: ") && error.message.contains(fragment), "\(error)")
            }
        }
        let base = Self.tokenizerGGUF()
        func replacing(_ a: String, _ b: String) -> [UInt8] {
            // same-length replacement of a metadata string
            let ab = Array(a.utf8), bb = Array(b.utf8)
            var out = base
            for i in 0...(out.count - ab.count) where Array(out[i..<(i + ab.count)]) == ab {
                out.replaceSubrange(i..<(i + ab.count), with: bb); break
            }
            return out
        }
        expectFail(replacing("gpt2", "llam"), "tokenizer model 'llam'", status: PST_ERR_UNSUPPORTED)
        expectFail(replacing("smollm", "qwen2x"), "pre-tokenizer 'qwen2x'", status: PST_ERR_UNSUPPORTED)
        expectFail(replacing("Ġt he", "Ġt hx"), "missing from the vocabulary", status: PST_ERR_CORRUPT)
        expectFail(replacing("h e", "h_e"), "not two symbols", status: PST_ERR_CORRUPT)
        // bos id outside the vocabulary
        var b = base
        let key = Array("tokenizer.ggml.bos_token_id".utf8)
        for i in 0...(b.count - key.count) where Array(b[i..<(i + key.count)]) == key {
            b.replaceSubrange((i + key.count + 4)..<(i + key.count + 8), with: MiniGGUF.le(UInt32(5000))); break
        }
        expectFail(b, "outside the vocabulary", status: PST_ERR_CORRUPT)
    }

    @Test func seededMutations() throws {
        let full = Self.tokenizerGGUF()
        var s: UInt64 = 0xD1B5_4A32_D192_ED03
        func next() -> UInt64 { s ^= s << 13; s ^= s >> 7; s ^= s << 17; return s }
        func rnd(_ n: Int) -> Int { Int(next() % UInt64(max(n, 1))) }
        var loaded = 0
        for _ in 0..<2000 {
            var b = full
            for _ in 0..<(1 + rnd(3)) {
                switch rnd(4) {
                case 0: b[rnd(b.count)] = UInt8(truncatingIfNeeded: next())
                case 1:
                    let p = rnd(max(1, b.count - 8))
                    let v: UInt64 = [0, 1, 255, 256, 1 << 32, UInt64.max][rnd(6)]
                    if p + 8 <= b.count { b.replaceSubrange(p..<(p + 8), with: MiniGGUF.le(v)) }
                case 2: b = Array(b[0..<rnd(b.count)])
                default: if !b.isEmpty { b.remove(at: rnd(b.count)) }
                }
            }
            do {
                let g = try GGUFFile(bytes: b, name: "mut.gguf")
                let t = try BPETokenizer(gguf: g)
                loaded += 1
                let ids = t.encode("<s> the 12 héllo\u{4}  world\n", parseSpecial: rnd(2) == 0)
                _ = t.decode(ids + [-5, 1 << 30], skipSpecial: rnd(2) == 0)
            } catch {
                #expect([PST_ERR_CORRUPT, PST_ERR_UNSUPPORTED, PST_ERR_NOT_FOUND].contains(error.status), "\(error)")
                #expect(error.message.hasPrefix("mut.gguf: "), "\(error)")
            }
        }
        #expect(loaded > 100, "loaded \(loaded)")
    }
}
