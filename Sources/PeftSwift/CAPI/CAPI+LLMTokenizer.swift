import CPeftSwift
#if canImport(Glibc)
import Glibc
#endif

// C API of the model's tokenizer (Sources/PeftSwift/Tokenizer): text to ids and back, chat
// prompts. The handle and the helpers are in CAPI+LLM.swift.

/// flags may hold only the bits of `allowed` (the `names` flags).
func checkFlags(_ flags: Int32, _ allowed: Int32, _ names: StaticString) throws(PSTError) {
    guard flags & ~allowed == 0 else { throw .invalidArgument("flags (\(flags)) has bits other than \(names)") }
}


/// Token ids of text_len bytes of UTF-8 text (flags: PST_TOKENIZE_*), exactly as the model's
/// Hugging Face tokenizer. *count receives the number of ids; when capacity is too small (ids
/// may then be NULL) nothing is written to ids and PST_ERR_INVALID_ARG is returned with *count
/// set, so a caller can size the buffer with a first call.
/// Errors: PST_ERR_INVALID_ARG (NULL, invalid UTF-8, capacity), PST_ERR_UNSUPPORTED (no tokenizer).
@c(pstimpl_llm_tokenize)
public func pst_llm_tokenize(_ llm: UnsafeMutablePointer<pst_llm>?, _ text: UnsafePointer<CChar>?, _ text_len: Int64,
                             _ flags: Int32, _ ids: UnsafeMutablePointer<Int32>?, _ capacity: Int64,
                             _ count: UnsafeMutablePointer<Int64>?) -> Int32 {
    llmEntry("pst_llm_tokenize", llm) { (h) throws(PSTError) in
        let n = try zeroedOutput(count, "count")
        guard text_len >= 0 else { throw .invalidArgument("text_len (\(text_len)) must be >= 0") }
        try checkFlags(flags, PST_TOKENIZE_ADD_SPECIAL | PST_TOKENIZE_PARSE_SPECIAL, "PST_TOKENIZE_*")
        let tok = try h.requireTokenizer()
        let s: String
        if text_len == 0 { s = "" } else {
            let t = try required(text, "text")
            let bytes = UnsafeRawBufferPointer(start: t, count: Int(text_len))
            s = try TrainingDataset.decodeUTF8(Array(bytes), source: "text")
        }
        let add = flags & PST_TOKENIZE_ADD_SPECIAL != 0
        let out = tok.encode(s, addBOS: add ? nil : false, addEOS: add ? nil : false,
                             parseSpecial: flags & PST_TOKENIZE_PARSE_SPECIAL != 0)
        try copyOutIDs(out, ids, capacity, n)
    }
}

/// The ids of a one-turn chat prompt in the ChatML format (SmolLM2's template):
/// [<|im_start|>system\n{system}<|im_end|>\n]<|im_start|>user\n{user}<|im_end|>\n<|im_start|>assistant\n
/// system may be NULL. Sizing as pst_llm_tokenize.
/// Errors: PST_ERR_INVALID_ARG, PST_ERR_UNSUPPORTED (no tokenizer, or no ChatML tokens).
@c(pstimpl_llm_chat_prompt)
public func pst_llm_chat_prompt(_ llm: UnsafeMutablePointer<pst_llm>?, _ user: UnsafePointer<CChar>?,
                                _ system: UnsafePointer<CChar>?, _ ids: UnsafeMutablePointer<Int32>?, _ capacity: Int64,
                                _ count: UnsafeMutablePointer<Int64>?) -> Int32 {
    llmEntry("pst_llm_chat_prompt", llm) { (h) throws(PSTError) in
        let n = try zeroedOutput(count, "count")
        let u = try longCString(user, "user"), sys = try system == nil ? nil : longCString(system, "system")
        let tok = try h.requireTokenizer()
        let out = try TrainingDataset.chatPrompt(u, tokenizer: tok, system: sys)
        try copyOutIDs(out, ids, capacity, n)
    }
}

/// The text of count ids (flags: PST_DETOKENIZE_*), NUL-terminated into text (capacity bytes,
/// including the NUL). *length receives the byte length without the NUL; when capacity is too
/// small (text may then be NULL) PST_ERR_INVALID_ARG is returned with *length set. Bytes that
/// are not valid UTF-8 (a sequence cut between ids) become U+FFFD.
/// Errors: PST_ERR_INVALID_ARG (NULL, an id out of range, capacity), PST_ERR_UNSUPPORTED.
@c(pstimpl_llm_detokenize)
public func pst_llm_detokenize(_ llm: UnsafeMutablePointer<pst_llm>?, _ ids: UnsafePointer<Int32>?, _ count: Int64,
                               _ flags: Int32, _ text: UnsafeMutablePointer<CChar>?, _ capacity: Int64,
                               _ length: UnsafeMutablePointer<Int64>?) -> Int32 {
    llmEntry("pst_llm_detokenize", llm) { (h) throws(PSTError) in
        let len = try zeroedOutput(length, "length")
        guard count >= 0 else { throw .invalidArgument("count (\(count)) must be >= 0") }
        try checkFlags(flags, PST_DETOKENIZE_SKIP_SPECIAL, "PST_DETOKENIZE_*")
        let tok = try h.requireTokenizer()
        var list: [Int32] = []
        if count > 0 {
            let p = try required(ids, "ids")
            list = Array(UnsafeBufferPointer(start: p, count: Int(count)))
            if let i = list.firstIndex(where: { $0 < 0 || Int($0) >= tok.vocabSize }) {
                throw .invalidArgument("ids[\(i)] (\(list[i])) is outside the vocabulary 0..<\(tok.vocabSize)")
            }
        }
        let s = tok.decode(list, skipSpecial: flags & PST_DETOKENIZE_SKIP_SPECIAL != 0)
        try copyOutString(s, "text", text, capacity, len)
    }
}
