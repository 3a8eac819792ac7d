#if canImport(Glibc)
import Glibc
#endif

extension BPETokenizer {
    /// Reads the byte-level BPE tokenizer of a Hugging Face checkpoint directory:
    /// `tokenizer.json` (the `tokenizers` library's format: model.type "BPE" with its vocab and
    /// merges, added_tokens, a ByteLevel pre-tokenizer optionally preceded by
    /// Digits(individual_digits)) and, when present, `tokenizer_config.json` (bos/eos tokens,
    /// add_bos_token, chat_template). `preTokenizer` overrides the one the file describes.
    ///
    /// Throws `PST_ERR_NOT_FOUND` without tokenizer.json, `PST_ERR_UNSUPPORTED` for another
    /// model type or pre-tokenizer (e.g. Llama 3's Split regex, SentencePiece), `PST_ERR_CORRUPT`
    /// for a malformed file.
    public convenience init(huggingFaceDirectory dir: String, preTokenizer: BPEPreTokenizer? = nil) throws(PSTError) {
        let path = dir + "/tokenizer.json"
        let root = try JSON.parse(try FileSystem.readAll(path, limit: 256 << 20), source: path)
        guard let o = root.objectValue, let model = o["model"]?.objectValue else { throw .corrupt("\(path): no 'model' object") }
        let type = model["type"]?.stringValue ?? "?"
        guard type == "BPE" else { throw .unsupported("\(path): tokenizer model type '\(type)' (only byte-level BPE is supported)") }
        if model["byte_fallback"]?.boolValue == true {
            throw .unsupported("\(path): a byte_fallback (SentencePiece-style) BPE is not supported")
        }
        guard let vocabObj = model["vocab"]?.objectValue else { throw .corrupt("\(path): model.vocab is not an object") }
        var byID: [Int: String] = [:]
        for m in vocabObj.members {
            guard let id = m.value.numberValue?.int, id >= 0, id < Int(Int32.max) else {
                throw .corrupt("\(path): vocab entry '\(m.key)' has no valid id")
            }
            byID[id] = m.key
        }
        var types: [Int: Int32] = [:]
        for t in o["added_tokens"]?.arrayValue ?? [] {
            guard let a = t.objectValue, let id = a["id"]?.numberValue?.int, id >= 0, id < Int(Int32.max),
                  let content = a["content"]?.stringValue else { throw .corrupt("\(path): an added_tokens entry lacks id/content") }
            byID[id] = content
            types[id] = a["special"]?.boolValue == true ? 3 : 4
        }
        let n = (byID.keys.max() ?? -1) + 1
        guard n > 0, byID.count == n else {
            throw .corrupt("\(path): token ids are not 0..<\(n) without gaps (\(byID.count) distinct ids)")
        }
        let tokens = (0..<n).map { byID[$0]! }
        let tokenTypes = (0..<n).map { types[$0] ?? 1 }
        var merges: [String] = []
        for (i, m) in (model["merges"]?.arrayValue ?? []).enumerated() {
            if let s = m.stringValue { merges.append(s); continue }
            if let pair = m.arrayValue, pair.count == 2, let l = pair[0].stringValue, let r = pair[1].stringValue {
                merges.append(l + " " + r); continue
            }
            throw .corrupt("\(path): merge \(i) is neither \"a b\" nor [\"a\", \"b\"]")
        }
        // the pre-tokenizer
        func kind(_ v: JSONValue?) throws(PSTError) -> BPEPreTokenizer {
            guard let p = v?.objectValue, let t = p["type"]?.stringValue else {
                throw .unsupported("\(path): no pre_tokenizer (a byte-level BPE needs ByteLevel)")
            }
            if t == "ByteLevel" && p["use_regex"]?.boolValue != false { return .gpt2 }
            if t == "Sequence", let list = p["pretokenizers"]?.arrayValue, list.count == 2,
               let d = list[0].objectValue, d["type"]?.stringValue == "Digits", d["individual_digits"]?.boolValue == true,
               let b = list[1].objectValue, b["type"]?.stringValue == "ByteLevel", b["use_regex"]?.boolValue != false {
                return .digitsThenGPT2
            }
            throw .unsupported("\(path): pre_tokenizer '\(t)' is not supported (ByteLevel, or Digits + ByteLevel)")
        }
        let pre: BPEPreTokenizer
        if let preTokenizer { pre = preTokenizer } else { pre = try kind(o["pre_tokenizer"]) }
        // special tokens and the chat template from tokenizer_config.json
        var bos: Int32? = nil, eos: Int32? = nil, pad: Int32? = nil, unk: Int32? = nil, addBOS = false
        var template: String? = nil
        let cpath = dir + "/tokenizer_config.json"
        if access(cpath, F_OK) == 0 {
            let c = try JSON.parse(try FileSystem.readAll(cpath, limit: 64 << 20), source: cpath)
            if let co = c.objectValue {
                func id(_ key: String) -> Int32? {
                    let v = co[key]
                    guard let s = v?.stringValue ?? v?.objectValue?["content"]?.stringValue,
                          let i = tokens.lastIndex(of: s) else { return nil }
                    return Int32(i)
                }
                bos = id("bos_token"); eos = id("eos_token"); pad = id("pad_token"); unk = id("unk_token")
                addBOS = co["add_bos_token"]?.boolValue ?? false
                template = co["chat_template"]?.stringValue
            }
        }
        try self.init(tokens: tokens, tokenTypes: tokenTypes, merges: merges, bosID: bos, eosID: eos, unkID: unk, padID: pad,
                      addBOS: addBOS, addEOS: false, chatTemplate: template, preName: pre == .gpt2 ? "gpt2" : "digits",
                      preTokenizer: pre, source: path)
    }
}
