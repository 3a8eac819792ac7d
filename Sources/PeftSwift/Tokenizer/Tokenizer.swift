// GPT-2-style byte-level BPE tokenizer, loaded from a GGUF file's `tokenizer.ggml.*` metadata
// (llama.cpp's keys: model, pre, tokens, token_type, merges, bos/eos/unknown/padding_token_id,
// add_bos_token, add_eos_token; chat_template), with Hugging Face tokenizers' semantics:
//
//  * added tokens (GGUF token_type CONTROL = 3 and UNKNOWN = 2 are special, USER_DEFINED = 4
//    plain added tokens) are cut out of the text first, leftmost-longest (tokenizers'
//    AddedVocabulary: an Aho-Corasick LeftmostLongest match on the raw text, since the tokens
//    are not normalized and have no lstrip/rstrip). With `parseSpecial: false` special tokens
//    are left in the text (tokenizers' `encode_special_tokens = True`, transformers'
//    `split_special_tokens=True`).
//  * each remaining segment is pre-tokenized (Tokenizer+PreTokenize.swift), each piece's bytes
//    are mapped to GPT-2's byte-to-unicode alphabet (bytes 0x21-0x7E, 0xA1-0xAC, 0xAE-0xFF map
//    to themselves, the other 68 bytes to U+0100... in order; openai/gpt-2 encoder.py
//    `bytes_to_unicode`), and BPE-merged (Tokenizer+BPE.swift).
//  * decode: each token's characters map back to bytes (a token with a character outside the
//    alphabet contributes its own UTF-8, as tokenizers' ByteLevel decoder does), then the bytes
//    become a String with U+FFFD for each maximal invalid subsequence (Rust's
//    String::from_utf8_lossy; Swift's UTF-8 decoding repairs the same way).

/// GPT-2's byte -> code point map (`bytes_to_unicode`).
let _byteToUnicode: [UInt32] = {
    var m = [UInt32](repeating: 0, count: 256)
    var extra: UInt32 = 0
    for b in 0..<256 {
        if (0x21...0x7E).contains(b) || (0xA1...0xAC).contains(b) || (0xAE...0xFF).contains(b) {
            m[b] = UInt32(b)
        } else {
            m[b] = 256 + extra
            extra += 1
        }
    }
    return m
}()

/// Byte-level BPE tokenizer. Immutable after init; `encode`/`decode` may run on several
/// threads at once.
public final class BPETokenizer: @unchecked Sendable {
    /// Token strings as stored (byte-level alphabet, e.g. "Ġthe").
    public let tokens: [String]
    /// GGUF token types (1 normal, 2 unknown, 3 control, 4 user-defined, 5 unused, 6 byte).
    public let tokenTypes: [Int32]
    public let bosID: Int32?
    public let eosID: Int32?
    public let unkID: Int32?
    public let padID: Int32?
    /// `tokenizer.ggml.add_bos_token` (false for SmolLM2, like its HF tokenizer, whose
    /// post-processor adds nothing). `encode(_:addBOS:)` uses it when `addBOS` is nil.
    public let addBOSByDefault: Bool
    /// `tokenizer.ggml.add_eos_token` (false when absent).
    public let addEOSByDefault: Bool
    /// `tokenizer.chat_template` (Jinja source; not interpreted here).
    public let chatTemplate: String?
    /// `tokenizer.ggml.pre` ("smollm" for SmolLM2), "" when absent.
    public let preName: String
    /// The pre-tokenizer `encode` uses.
    public let preTokenizer: BPEPreTokenizer

    public var vocabSize: Int { tokens.count }

    private let vocab: [String: Int32]
    private let byteSymbol: [Int32]            // byte -> id of its byte-level character, -1 if absent
    private let merges: _MergeTable
    private let tokenBytes: [[UInt8]]          // decode bytes per id
    private let isSpecial: [Bool]
    /// Added tokens as UTF-8, grouped by first byte, longest first: (bytes, id, special).
    private let addedByFirstByte: [[([UInt8], Int32, Bool)]]
    private let hasAdded: Bool

    /// Reads the tokenizer of a GGUF file. `preTokenizer` overrides the choice made from
    /// `tokenizer.ggml.pre`: "smollm", "starcoder", "refact", "codeshell", "command-r" ->
    /// `.digitsThenGPT2` (llama.cpp's grouping, and SmolLM2's own tokenizer.json);
    /// "gpt2", "default" or absent -> `.gpt2`; others -> PST_ERR_UNSUPPORTED. Pass `.gpt2` to
    /// reproduce transformers' tokenizer rebuilt from the GGUF (which ignores "smollm").
    public convenience init(gguf g: GGUFFile, preTokenizer: BPEPreTokenizer? = nil) throws(PSTError) {
        let name = g.path
        guard let model = try g.string("tokenizer.ggml.model") else {
            throw .notFound("\(name): no metadata key 'tokenizer.ggml.model'")
        }
        guard model == "gpt2" else {
            throw .unsupported("\(name): tokenizer model '\(model)' (only the byte-level BPE 'gpt2' is supported)")
        }
        guard let toks = try g.array("tokenizer.ggml.tokens")?.strings else {
            throw .notFound("\(name): no string array 'tokenizer.ggml.tokens'")
        }
        guard let mergeList = try g.array("tokenizer.ggml.merges")?.strings else {
            throw .notFound("\(name): no string array 'tokenizer.ggml.merges'")
        }
        var types: [Int32]? = nil
        if let tt = try g.array("tokenizer.ggml.token_type") {
            guard let ints = tt.integers, ints.count == toks.count, ints.allSatisfy({ $0 >= Int32.min && $0 <= Int32.max }) else {
                throw .corrupt("\(name): tokenizer.ggml.token_type is not \(toks.count) integers")
            }
            types = ints.map { Int32($0) }
        }
        let pre = try g.string("tokenizer.ggml.pre") ?? ""
        let kind: BPEPreTokenizer
        if let preTokenizer {
            kind = preTokenizer
        } else {
            switch pre {
            case "smollm", "starcoder", "refact", "codeshell", "command-r": kind = .digitsThenGPT2
            case "gpt2", "default", "": kind = .gpt2
            default: throw .unsupported("\(name): pre-tokenizer '\(pre)' is not implemented (pass preTokenizer: to choose one)")
            }
        }
        func id(_ key: String) throws(PSTError) -> Int32? {
            guard let v = try g.int("tokenizer.ggml." + key) else { return nil }
            guard v < toks.count else { throw .corrupt("\(name): tokenizer.ggml.\(key) = \(v) is outside the vocabulary (\(toks.count))") }
            return Int32(v)
        }
        try self.init(tokens: toks, tokenTypes: types, merges: mergeList, bosID: try id("bos_token_id"),
                      eosID: try id("eos_token_id"), unkID: try id("unknown_token_id"), padID: try id("padding_token_id"),
                      addBOS: try g.bool("tokenizer.ggml.add_bos_token") ?? false,
                      addEOS: try g.bool("tokenizer.ggml.add_eos_token") ?? false,
                      chatTemplate: try g.string("tokenizer.chat_template"), preName: pre, preTokenizer: kind, source: name)
    }

    /// Builds a tokenizer from its parts (byte-level token strings, "left right" merges).
    public init(tokens: [String], tokenTypes: [Int32]? = nil, merges: [String], bosID: Int32? = nil, eosID: Int32? = nil,
                unkID: Int32? = nil, padID: Int32? = nil, addBOS: Bool = false, addEOS: Bool = false,
                chatTemplate: String? = nil, preName: String = "", preTokenizer: BPEPreTokenizer = .gpt2,
                source: String = "tokenizer") throws(PSTError) {
        guard !tokens.isEmpty, tokens.count < Int(Int32.max) else { throw .corrupt("\(source): vocabulary has \(tokens.count) tokens") }
        if let t = tokenTypes, t.count != tokens.count {
            throw .corrupt("\(source): \(t.count) token types for \(tokens.count) tokens")
        }
        for (n, v) in [("bos", bosID), ("eos", eosID), ("unk", unkID), ("pad", padID)] {
            if let v, v < 0 || Int(v) >= tokens.count { throw .corrupt("\(source): \(n) id \(v) is outside the vocabulary") }
        }
        self.tokens = tokens
        self.tokenTypes = tokenTypes ?? [Int32](repeating: 1, count: tokens.count)
        self.bosID = bosID
        self.eosID = eosID
        self.unkID = unkID
        self.padID = padID
        self.addBOSByDefault = addBOS
        self.addEOSByDefault = addEOS
        self.chatTemplate = chatTemplate
        self.preName = preName
        self.preTokenizer = preTokenizer

        // vocabulary (a token listed twice keeps its last id, like a dict built in order)
        var vocab = [String: Int32](minimumCapacity: tokens.count)
        for (i, t) in tokens.enumerated() { vocab[t] = Int32(i) }
        self.vocab = vocab

        var unicodeToByte = [UInt32: UInt8]()
        var byteSymbol = [Int32](repeating: -1, count: 256)
        for b in 0..<256 {
            guard let sc = Unicode.Scalar(_byteToUnicode[b]) else { continue }
            let s = String(Character(sc))
            unicodeToByte[_byteToUnicode[b]] = UInt8(b)
            byteSymbol[b] = vocab[s] ?? -1
        }
        self.byteSymbol = byteSymbol

        var table = _MergeTable(capacityFor: merges.count)
        for (rank, m) in merges.enumerated() {
            let parts = m.split(separator: " ", omittingEmptySubsequences: false)
            guard parts.count == 2, !parts[0].isEmpty, !parts[1].isEmpty else {
                throw .corrupt("\(source): merge \(rank) '\(m)' is not two symbols separated by one space")
            }
            let l = String(parts[0]), r = String(parts[1])
            guard let li = vocab[l], let ri = vocab[r], let mi = vocab[l + r] else {
                throw .corrupt("\(source): merge \(rank) '\(m)' uses a token missing from the vocabulary")
            }
            table.set(li, ri, rank: Int32(rank), merged: mi)
        }
        self.merges = table

        var tb = [[UInt8]](); tb.reserveCapacity(tokens.count)
        for t in tokens {
            var bytes = [UInt8](); bytes.reserveCapacity(t.utf8.count)
            var ok = true
            for u in t.unicodeScalars {
                guard let b = unicodeToByte[u.value] else { ok = false; break }
                bytes.append(b)
            }
            tb.append(ok ? bytes : Array(t.utf8))
        }
        self.tokenBytes = tb

        var special = [Bool](repeating: false, count: tokens.count)
        var groups = [[([UInt8], Int32, Bool)]](repeating: [], count: 256)
        var any = false
        for (i, ty) in self.tokenTypes.enumerated() where ty == 2 || ty == 3 || ty == 4 {
            let sp = ty != 4
            special[i] = sp
            let u = Array(tokens[i].utf8)
            guard let f = u.first else { continue }
            // the same content twice: the later id wins (as in the vocabulary)
            groups[Int(f)].removeAll { $0.0 == u }
            groups[Int(f)].append((u, Int32(i), sp))
            any = true
        }
        for i in 0..<256 { groups[i].sort { $0.0.count > $1.0.count } }
        self.isSpecial = special
        self.addedByFirstByte = groups
        self.hasAdded = any
    }

    // MARK: Lookup

    /// The id of a token string (byte-level spelling), or nil.
    public func tokenID(_ token: String) -> Int32? { vocab[token] }

    /// True for special (control) tokens, which `decode(_:skipSpecial: true)` drops.
    public func isSpecialToken(_ id: Int32) -> Bool { id >= 0 && Int(id) < isSpecial.count && isSpecial[Int(id)] }

    /// The bytes token `id` decodes to (empty for an id outside the vocabulary).
    public func bytes(of id: Int32) -> [UInt8] { id >= 0 && Int(id) < tokenBytes.count ? tokenBytes[Int(id)] : [] }

    // MARK: Encode

    /// Text -> token ids. `addBOS` nil uses `addBOSByDefault` (false for SmolLM2, as HF);
    /// `addEOS` nil uses `addEOSByDefault`. `parseSpecial` false leaves special-token text to
    /// the BPE like any other text.
    public func encode(_ text: String, addBOS: Bool? = nil, addEOS: Bool? = nil, parseSpecial: Bool = true) -> [Int32] {
        var out: [Int32] = []
        out.reserveCapacity(text.utf8.count / 3 + 2)
        if addBOS ?? addBOSByDefault, let b = bosID { out.append(b) }
        var s = text
        s.withUTF8 { buf in encodeBytes(buf, parseSpecial: parseSpecial, into: &out) }
        if addEOS ?? addEOSByDefault, let e = eosID { out.append(e) }
        return out
    }

    /// Encodes valid UTF-8 bytes (no BOS/EOS).
    func encodeBytes(_ buf: UnsafeBufferPointer<UInt8>, parseSpecial: Bool, into out: inout [Int32]) {
        var state = _EncodeState()
        let n = buf.count
        var segStart = 0, i = 0
        if hasAdded {
            while i < n {
                let group = addedByFirstByte[Int(buf[i])]
                var matched: ([UInt8], Int32, Bool)? = nil
                if !group.isEmpty {
                    for cand in group where parseSpecial || !cand.2 {
                        let c = cand.0
                        if c.count <= n - i && c.withUnsafeBufferPointer({ cb in
                            var k = 0
                            while k < cb.count && cb[k] == buf[i + k] { k += 1 }
                            return k == cb.count
                        }) {
                            matched = cand
                            break   // longest first
                        }
                    }
                }
                if let m = matched {
                    if segStart < i { encodeSegment(buf, segStart, i, &state, &out) }
                    out.append(m.1)
                    i += m.0.count
                    segStart = i
                } else {
                    i += 1
                }
            }
        }
        if segStart < n { encodeSegment(buf, segStart, n, &state, &out) }
    }

    private func encodeSegment(_ buf: UnsafeBufferPointer<UInt8>, _ lo: Int, _ hi: Int, _ st: inout _EncodeState, _ out: inout [Int32]) {
        st.scalars.load(buf, lo, hi)
        let count = st.scalars.classes.count
        st.scalars.split(preTokenizer, 0, count) { a, b in
            self.encodePiece(buf, a, b, &st, &out)
        }
    }

    @inline(__always)
    private func encodePiece(_ buf: UnsafeBufferPointer<UInt8>, _ a: Int, _ b: Int, _ st: inout _EncodeState, _ out: inout [Int32]) {
        if b - a == 1 {
            let s = byteSymbol[Int(buf[a])]
            if s >= 0 { out.append(s) }
            return
        }
        let cacheable = b - a <= 48
        var key: [UInt8] = []
        if cacheable {
            key = Array(UnsafeBufferPointer(rebasing: buf[a..<b]))
            if let hit = st.cache[key] { out.append(contentsOf: hit); return }
        }
        st.bpe.sym.removeAll(keepingCapacity: true)
        for k in a..<b {
            let s = byteSymbol[Int(buf[k])]
            if s >= 0 { st.bpe.sym.append(s) }
        }
        let start = out.count
        st.bpe.merge(merges, into: &out)
        if cacheable && st.cache.count < 100_000 { st.cache[key] = Array(out[start...]) }
    }

    // MARK: Decode

    /// Token ids -> bytes (ids outside the vocabulary are skipped, as tokenizers does).
    public func decodeBytes(_ ids: [Int32], skipSpecial: Bool = false) -> [UInt8] {
        var out: [UInt8] = []
        out.reserveCapacity(ids.count * 4)
        for id in ids where id >= 0 && Int(id) < tokenBytes.count {
            if skipSpecial && isSpecial[Int(id)] { continue }
            out.append(contentsOf: tokenBytes[Int(id)])
        }
        return out
    }

    /// Token ids -> text; invalid UTF-8 becomes U+FFFD per maximal invalid subsequence (HF's
    /// `decode`, i.e. String::from_utf8_lossy). `skipSpecial` drops special tokens
    /// (`skip_special_tokens=True`).
    public func decode(_ ids: [Int32], skipSpecial: Bool = false) -> String {
        String(decoding: decodeBytes(ids, skipSpecial: skipSpecial), as: UTF8.self)
    }

    // MARK: Testing hooks

    /// The pre-tokenizer's pieces of `text` (no added-token handling), as strings.
    func preTokenize(_ text: String) -> [String] {
        var s = text
        var pieces: [String] = []
        s.withUTF8 { buf in
            var sc = _Scalars()
            sc.load(buf, 0, buf.count)
            sc.split(preTokenizer, 0, sc.classes.count) { a, b in
                pieces.append(String(decoding: UnsafeBufferPointer(rebasing: buf[a..<b]), as: UTF8.self))
            }
        }
        return pieces
    }

    /// Heap merge loop vs the O(n^2) reference on the symbols of `bytes` (missing bytes dropped).
    func mergeBothWays(_ bytes: [UInt8]) -> ([Int32], [Int32]) {
        var st = _BPEScratch()
        st.sym = bytes.compactMap { let s = byteSymbol[Int($0)]; return s >= 0 ? s : nil }
        let ref = _BPEScratch.mergeReference(st.sym, merges)
        var fast: [Int32] = []
        st.merge(merges, into: &fast)
        return (fast, ref)
    }
}

/// Per-call scratch: scalar tables, merge buffers, and a cache of pieces already merged.
struct _EncodeState {
    var scalars = _Scalars()
    var bpe = _BPEScratch()
    var cache: [[UInt8]: [Int32]] = [:]
}
