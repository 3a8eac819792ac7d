import CPeftSwift
#if canImport(Glibc)
import Glibc
#endif

// C API of the language-model layer (Sources/PeftSwift/Llama, Model, Train): pst_llm handles
// (model + tokenizer), generation, and pst_trainer handles (QLoRA fine-tuning runs).

/// A model handle: the model, its tokenizer (nil for a checkpoint directory without one) and a
/// busy flag so that a handle used from two threads at once, or re-entered from a callback,
/// gets PST_ERR_MISUSE instead of corrupting its state.
final class LLMHandle {
    let model: LlamaModel
    let tokenizer: BPETokenizer?
    /// Why there is no tokenizer (a checkpoint directory without a supported tokenizer.json).
    let tokenizerError: PSTError?
    let path: String
    let quantized: Bool
    private var busy = pthread_mutex_t()
    /// NUL-terminated module paths, for pst_llm_module_at.
    lazy var modulePaths: [CStringBox] = model.loraModules.map { CStringBox($0.modulePath) }
    /// Projection by module path (the set is fixed once the model is loaded).
    lazy var moduleByPath: [String: LoraLinear] = Dictionary(uniqueKeysWithValues: model.loraModules.map { ($0.modulePath, $0.layer) })

    init(model: LlamaModel, tokenizer: BPETokenizer?, tokenizerError: PSTError?, path: String, quantized: Bool) {
        self.model = model
        self.tokenizer = tokenizer
        self.tokenizerError = tokenizerError
        self.path = path
        self.quantized = quantized
        pthread_mutex_init(&busy, nil)
    }

    deinit { pthread_mutex_destroy(&busy) }

    /// Runs body holding the handle; a concurrent or re-entrant call fails with PST_ERR_MISUSE.
    func exclusive<R>(_ body: () throws(PSTError) -> R) throws(PSTError) -> R {
        guard pthread_mutex_trylock(&busy) == 0 else {
            throw .misuse("the model handle is in use (by another thread, or re-entered from a callback)")
        }
        defer { pthread_mutex_unlock(&busy) }
        return try body()
    }

    func requireTokenizer() throws(PSTError) -> BPETokenizer {
        guard let tokenizer else {
            throw .unsupported("\(path): the model has no tokenizer (\(tokenizerError?.message ?? "none loaded"))")
        }
        return tokenizer
    }
}

/// An owned NUL-terminated copy of a Swift string whose address stays valid for its lifetime.
final class CStringBox {
    let p: UnsafeMutablePointer<CChar>
    init(_ s: String) {
        let u = Array(s.utf8CString)
        p = .allocate(capacity: u.count)
        p.initialize(from: u, count: u.count)
    }
    deinit { p.deallocate() }
}

final class TrainerHandle {
    let llm: LLMHandle
    let trainer: Trainer
    var lastCheckpoint: CStringBox? = nil
    init(llm: LLMHandle, trainer: Trainer) { self.llm = llm; self.trainer = trainer }
}

@inline(__always)
func llmObject(_ h: UnsafeMutablePointer<pst_llm>?) throws(PSTError) -> LLMHandle {
    object(try required(h, "llm"), as: LLMHandle.self)
}

/// Checks a parameter struct's struct_size against the one this library was built with.
func checkStructSize(_ have: Int, _ want: Int, _ what: StaticString, _ initFn: StaticString) throws(PSTError) {
    guard have == want else {
        throw .invalidArgument("\(what)->struct_size (\(have)) must be sizeof(\(what)) (\(want)); use \(initFn)")
    }
}

/// An optional C string (NULL → nil).
func optionalCString(_ p: UnsafePointer<CChar>?, _ name: StaticString) throws(PSTError) -> String? {
    guard p != nil else { return nil }
    return try cString(p, name)
}

// MARK: - Loading

/// Fills *p with the defaults: NF4, blocksize 64, double quantization, the file's own pre-tokenizer.
/// Errors: PST_ERR_INVALID_ARG (p NULL).
@c(pstimpl_llm_load_params_init)
public func pst_llm_load_params_init(_ p: UnsafeMutablePointer<pst_llm_load_params>?) -> Int32 {
    cEntry("pst_llm_load_params_init") { () throws(PSTError) in
        try required(p, "params").pointee = pst_llm_load_params(
            struct_size: MemoryLayout<pst_llm_load_params>.size, quantize: 1, quant_type: PST_QUANT_NF4,
            blocksize: 64, double_quant: 1, pretokenizer: PST_PRETOK_AUTO)
    }
}

/// Loads a Llama-architecture model from path: a GGUF file (general.architecture "llama";
/// F32, F16, BF16, Q8_0, Q4_0, Q4_1 tensors; its byte-level BPE tokenizer) or a Hugging Face
/// checkpoint directory (config.json + model.safetensors or a sharded index; F32/BF16/F16).
/// Each tensor is converted to fp32 as it loads and, with params->quantize, each projection is
/// quantized to 4 bits before the next one loads, so the whole model never sits in fp32.
/// params may be NULL (the defaults of pst_llm_load_params_init). Free with pst_llm_free.
/// Errors: PST_ERR_INVALID_ARG, PST_ERR_NOT_FOUND (no such file, a missing tensor or key),
/// PST_ERR_CORRUPT (not GGUF/safetensors, tensors disagreeing with the metadata),
/// PST_ERR_UNSUPPORTED (another architecture, tensor type, RoPE scaling, tokenizer), PST_ERR_IO,
/// PST_ERR_OUT_OF_MEMORY.
@c(pstimpl_llm_load)
public func pst_llm_load(_ path: UnsafePointer<CChar>?, _ params: UnsafePointer<pst_llm_load_params>?,
                         _ out: UnsafeMutablePointer<UnsafeMutablePointer<pst_llm>?>?) -> Int32 {
    cEntry("pst_llm_load") { () throws(PSTError) in
        let o = try required(out, "out")
        o.pointee = nil
        let p = try cString(path, "path")
        var lp = pst_llm_load_params()
        _ = pst_llm_load_params_init(&lp)
        if let params {
            try checkStructSize(params.pointee.struct_size, MemoryLayout<pst_llm_load_params>.size,
                                "pst_llm_load_params", "pst_llm_load_params_init")
            lp = params.pointee
        }
        guard let qt = QuantType(rawValue: lp.quant_type) else {
            throw .invalidArgument("params->quant_type (\(lp.quant_type)) is not PST_QUANT_NF4 or PST_QUANT_FP4")
        }
        guard Quant4.blocksizes.contains(Int(lp.blocksize)) else {
            throw .invalidArgument("params->blocksize (\(lp.blocksize)) must be one of \(Quant4.blocksizes)")
        }
        let pre: BPEPreTokenizer?
        switch lp.pretokenizer {
        case PST_PRETOK_AUTO: pre = nil
        case PST_PRETOK_GPT2: pre = .gpt2
        case PST_PRETOK_DIGITS: pre = .digitsThenGPT2
        default: throw .invalidArgument("params->pretokenizer (\(lp.pretokenizer)) is not a PST_PRETOK_* value")
        }
        let options = LlamaLoadOptions(quantize: lp.quantize != 0, quantType: qt, blocksize: Int(lp.blocksize),
                                       doubleQuant: lp.double_quant != 0)
        var st = stat()
        guard stat(p, &st) == 0 else {
            if errno == ENOENT { throw .notFound("path \"\(p)\": no such file or directory") }
            throw .io("path \"\(p)\": \(errnoDescription())")
        }
        let model: LlamaModel
        var tok: BPETokenizer? = nil, tokErr: PSTError? = nil
        if (st.st_mode & S_IFMT) == S_IFDIR {
            model = try LlamaModel(huggingFaceDirectory: p, options: options)
            do throws(PSTError) { tok = try BPETokenizer(huggingFaceDirectory: p, preTokenizer: pre) } catch { tokErr = error }
        } else {
            let g = try GGUFFile(path: p)
            tok = try BPETokenizer(gguf: g, preTokenizer: pre)
            model = try LlamaModel(gguf: g, options: options)
        }
        if let tok, tok.vocabSize > model.config.vocab {
            throw .corrupt("path \"\(p)\": the tokenizer has \(tok.vocabSize) tokens, the model's vocabulary \(model.config.vocab)")
        }
        model.training = false
        o.pointee = makeHandle(LLMHandle(model: model, tokenizer: tok, tokenizerError: tokErr, path: p, quantized: options.quantize), as: pst_llm.self)
    }
}

/// Frees a model; NULL is a no-op. Trainers made from it keep it alive until they are freed.
@c(pstimpl_llm_free)
public func pst_llm_free(_ llm: UnsafeMutablePointer<pst_llm>?) {
    if let llm { releaseHandle(llm, as: LLMHandle.self) }
}

/// Fills *info (info->struct_size must be sizeof(pst_llm_info)).
/// Errors: PST_ERR_INVALID_ARG.
@c(pstimpl_llm_get_info)
public func pst_llm_get_info(_ llm: UnsafeMutablePointer<pst_llm>?, _ info: UnsafeMutablePointer<pst_llm_info>?) -> Int32 {
    cEntry("pst_llm_get_info") { () throws(PSTError) in
        let h = try llmObject(llm)
        let i = try required(info, "info")
        try checkStructSize(i.pointee.struct_size, MemoryLayout<pst_llm_info>.size, "pst_llm_info", "sizeof")
        let c = h.model.config
        var names = Set<String>()
        var params = h.model.embedding.count + h.model.finalNorm.count + (h.model.lmHead?.count ?? 0)
        var bytes = 4 * params
        for (_, lin) in h.model.loraModules {
            for a in lin.adapters { names.insert(a.name) }
            params += lin.inFeatures * lin.outFeatures
            switch lin.base {
            case .dense(let w): bytes += 4 * w.count
            case .quantized(let q):
                bytes += q.packed.count + (q.absmax?.count ?? 0) * 4 + q.code.count * 4
                if let n = q.nested { bytes += n.q.count + n.absmax.count * 4 + n.code.count * 4 }
            }
        }
        for l in h.model.layers {
            let k = l.inputNorm.count + l.postAttentionNorm.count
            params += k; bytes += 4 * k
        }
        i.pointee = pst_llm_info(
            struct_size: MemoryLayout<pst_llm_info>.size, layers: Int32(c.layers), hidden: Int32(c.hidden),
            intermediate: Int32(c.intermediate), heads: Int32(c.heads), kv_heads: Int32(c.kvHeads),
            head_dim: Int32(c.headDim), vocab: Int32(c.vocab), max_positions: Int32(clamping: c.maxPositions),
            tied_embeddings: c.tiedEmbeddings ? 1 : 0, quantized: h.quantized ? 1 : 0,
            bos_id: h.tokenizer?.bosID ?? -1, eos_id: h.tokenizer?.eosID ?? -1,
            has_tokenizer: h.tokenizer == nil ? 0 : 1, adapter_count: Int32(names.count),
            rms_eps: c.rmsEps, rope_theta: c.ropeTheta, parameter_count: Int64(params), base_bytes: Int64(bytes))
    }
}

// MARK: - Tokenizer

/// Copies ids into a caller's buffer after the sizing rule of pst_llm_tokenize: *count gets
/// the number of ids first; a too-small capacity (or NULL buffer) is PST_ERR_INVALID_ARG.
func copyOutIDs(_ out: [Int32], _ ids: UnsafeMutablePointer<Int32>?, _ capacity: Int,
                _ count: UnsafeMutablePointer<Int64>) throws(PSTError) {
    count.pointee = Int64(out.count)
    try requireCapacity("ids", have: ids == nil ? 0 : capacity, need: out.count, unit: "ids")
    if let ids, !out.isEmpty { out.withUnsafeBufferPointer { ids.update(from: $0.baseAddress!, count: out.count) } }
}

/// Copies a string NUL-terminated into a caller's buffer after the sizing rule of
/// pst_llm_detokenize: *length gets its byte length first.
func copyOutString(_ s: String, _ name: StaticString, _ text: UnsafeMutablePointer<CChar>?, _ capacity: Int,
                   _ length: UnsafeMutablePointer<Int64>) throws(PSTError) {
    let u = Array(s.utf8)
    length.pointee = Int64(u.count)
    try requireCapacity(name, have: text == nil ? 0 : capacity, need: u.count + 1)
    if let text {
        u.withUnsafeBytes { UnsafeMutableRawPointer(text).copyMemory(from: $0.baseAddress!, byteCount: u.count) }
        text[u.count] = 0
    }
}

/// Token ids of text_len bytes of UTF-8 text (flags: PST_TOKENIZE_*), exactly as the model's
/// Hugging Face tokenizer. *count receives the number of ids; when capacity is too small (ids
/// may then be NULL) nothing is written to ids and PST_ERR_INVALID_ARG is returned with *count
/// set, so a caller can size the buffer with a first call.
/// Errors: PST_ERR_INVALID_ARG (NULL, invalid UTF-8, capacity), PST_ERR_UNSUPPORTED (no tokenizer).
@c(pstimpl_llm_tokenize)
public func pst_llm_tokenize(_ llm: UnsafeMutablePointer<pst_llm>?, _ text: UnsafePointer<CChar>?, _ text_len: Int,
                             _ flags: Int32, _ ids: UnsafeMutablePointer<Int32>?, _ capacity: Int,
                             _ count: UnsafeMutablePointer<Int64>?) -> Int32 {
    cEntry("pst_llm_tokenize") { () throws(PSTError) in
        let h = try llmObject(llm)
        let n = try required(count, "count")
        n.pointee = 0
        guard text_len >= 0 else { throw .invalidArgument("text_len (\(text_len)) must be >= 0") }
        guard flags & ~3 == 0 else { throw .invalidArgument("flags (\(flags)) has bits other than PST_TOKENIZE_*") }
        let tok = try h.requireTokenizer()
        let s: String
        if text_len == 0 { s = "" } else {
            let t = try required(text, "text")
            let bytes = UnsafeRawBufferPointer(start: t, count: text_len)
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
                                _ system: UnsafePointer<CChar>?, _ ids: UnsafeMutablePointer<Int32>?, _ capacity: Int,
                                _ count: UnsafeMutablePointer<Int64>?) -> Int32 {
    cEntry("pst_llm_chat_prompt") { () throws(PSTError) in
        let h = try llmObject(llm)
        let n = try required(count, "count")
        n.pointee = 0
        let u = try longCString(user, "user"), sys = try system == nil ? nil : longCString(system, "system")
        let tok = try h.requireTokenizer()
        let out = try TrainingDataset.chatPrompt(u, tokenizer: tok, system: sys)
        try copyOutIDs(out, ids, capacity, n)
    }
}

/// A C string of any length (up to 1 GiB) that must be valid UTF-8.
func longCString(_ p: UnsafePointer<CChar>?, _ name: StaticString) throws(PSTError) -> String {
    let p = try required(p, name)
    let n = strnlen(p, 1 << 30)
    return try TrainingDataset.decodeUTF8(Array(UnsafeRawBufferPointer(start: p, count: n)), source: "\(name)")
}

/// The text of count ids (flags: PST_DETOKENIZE_*), NUL-terminated into text (capacity bytes,
/// including the NUL). *length receives the byte length without the NUL; when capacity is too
/// small (text may then be NULL) PST_ERR_INVALID_ARG is returned with *length set. Bytes that
/// are not valid UTF-8 (a sequence cut between ids) become U+FFFD.
/// Errors: PST_ERR_INVALID_ARG (NULL, an id out of range, capacity), PST_ERR_UNSUPPORTED.
@c(pstimpl_llm_detokenize)
public func pst_llm_detokenize(_ llm: UnsafeMutablePointer<pst_llm>?, _ ids: UnsafePointer<Int32>?, _ count: Int,
                               _ flags: Int32, _ text: UnsafeMutablePointer<CChar>?, _ capacity: Int,
                               _ length: UnsafeMutablePointer<Int64>?) -> Int32 {
    cEntry("pst_llm_detokenize") { () throws(PSTError) in
        let h = try llmObject(llm)
        let len = try required(length, "length")
        len.pointee = 0
        guard count >= 0 else { throw .invalidArgument("count (\(count)) must be >= 0") }
        guard flags & ~1 == 0 else { throw .invalidArgument("flags (\(flags)) has bits other than PST_DETOKENIZE_*") }
        let tok = try h.requireTokenizer()
        var list: [Int32] = []
        if count > 0 {
            let p = try required(ids, "ids")
            list = Array(UnsafeBufferPointer(start: p, count: count))
            if let i = list.firstIndex(where: { $0 < 0 || Int($0) >= tok.vocabSize }) {
                throw .invalidArgument("ids[\(i)] (\(list[i])) is outside the vocabulary 0..<\(tok.vocabSize)")
            }
        }
        let s = tok.decode(list, skipSpecial: flags & PST_DETOKENIZE_SKIP_SPECIAL != 0)
        try copyOutString(s, "text", text, capacity, len)
    }
}

// MARK: - Forward, loss, backward

func readIDs(_ ids: UnsafePointer<Int32>?, _ batch: Int64, _ seqLen: Int64) throws(PSTError) -> (UnsafeBufferPointer<Int32>, Int, Int) {
    let b = try requireCount("batch", batch), t = try requireCount("seq_len", seqLen)
    let (m, o) = b.multipliedReportingOverflow(by: t)
    guard !o, m <= 1 << 30 else { throw .invalidArgument("batch * seq_len (\(batch) * \(seqLen)) is too large") }
    return (UnsafeBufferPointer(start: try required(ids, "ids"), count: m), b, t)
}

/// Logits of every position: logits (batch * seq_len * vocab floats, row-major [b][t][v]) for
/// ids (batch * seq_len token ids). Runs with dropout off (evaluation), with the active adapters.
/// Errors: PST_ERR_INVALID_ARG (NULL, ids out of range, capacity, seq_len beyond the context),
/// PST_ERR_MISUSE (handle busy), PST_ERR_OUT_OF_MEMORY.
@c(pstimpl_llm_logits)
public func pst_llm_logits(_ llm: UnsafeMutablePointer<pst_llm>?, _ ids: UnsafePointer<Int32>?, _ batch: Int64,
                           _ seq_len: Int64, _ logits: UnsafeMutablePointer<Float>?, _ capacity: Int) -> Int32 {
    cEntry("pst_llm_logits") { () throws(PSTError) in
        let h = try llmObject(llm)
        let (ip, b, t) = try readIDs(ids, batch, seq_len)
        let out = try required(logits, "logits")
        let need = b * t * h.model.config.vocab
        try requireCapacity("logits", have: capacity, need: need, unit: "floats")
        try h.exclusive { () throws(PSTError) in
            let m = h.model, was = m.training
            m.training = false
            defer { m.training = was }
            try m.logits(ids: ip, batch: b, seqLen: t, into: UnsafeMutableBufferPointer(start: out, count: need))
        }
    }
}

/// The causal-LM loss of ids (batch * seq_len) against labels (the same size; NULL: labels =
/// ids), as transformers computes it: position t predicts labels[t + 1], labels of -100 are
/// ignored, the mean over the targets. Dropout applies in training mode (pst_llm_set_training).
/// Keeps what pst_llm_backward needs.
/// Errors: PST_ERR_INVALID_ARG, PST_ERR_MISUSE, PST_ERR_OUT_OF_MEMORY.
@c(pstimpl_llm_loss)
public func pst_llm_loss(_ llm: UnsafeMutablePointer<pst_llm>?, _ ids: UnsafePointer<Int32>?, _ labels: UnsafePointer<Int32>?,
                         _ batch: Int64, _ seq_len: Int64, _ loss: UnsafeMutablePointer<Float>?) -> Int32 {
    cEntry("pst_llm_loss") { () throws(PSTError) in
        let h = try llmObject(llm)
        let (ip, b, t) = try readIDs(ids, batch, seq_len)
        let l = try required(loss, "loss")
        let lp = labels.map { UnsafeBufferPointer(start: $0, count: ip.count) } ?? ip
        l.pointee = try h.exclusive { () throws(PSTError) in try h.model.loss(ids: ip, labels: lp, batch: b, seqLen: t) }
    }
}

/// Backward of the last pst_llm_loss: adds d loss / d A and d loss / d B into the gradients of
/// every active adapter (read them with pst_llm_adapter_tensor; clear with pst_llm_zero_grad).
/// Errors: PST_ERR_INVALID_ARG, PST_ERR_MISUSE (no pending loss, handle busy).
@c(pstimpl_llm_backward)
public func pst_llm_backward(_ llm: UnsafeMutablePointer<pst_llm>?) -> Int32 {
    cEntry("pst_llm_backward") { () throws(PSTError) in
        let h = try llmObject(llm)
        try h.exclusive { () throws(PSTError) in try h.model.backward() }
    }
}

/// Zeroes every adapter's gradients.
/// Errors: PST_ERR_INVALID_ARG, PST_ERR_MISUSE (handle busy).
@c(pstimpl_llm_zero_grad)
public func pst_llm_zero_grad(_ llm: UnsafeMutablePointer<pst_llm>?) -> Int32 {
    cEntry("pst_llm_zero_grad") { () throws(PSTError) in
        let h = try llmObject(llm)
        try h.exclusive { h.model.zeroGrad() }
    }
}

/// Training mode (1: LoRA dropout on in pst_llm_loss) or evaluation (0, the state after loading).
/// Errors: PST_ERR_INVALID_ARG, PST_ERR_MISUSE (handle busy).
@c(pstimpl_llm_set_training)
public func pst_llm_set_training(_ llm: UnsafeMutablePointer<pst_llm>?, _ training: Int32) -> Int32 {
    cEntry("pst_llm_set_training") { () throws(PSTError) in
        let h = try llmObject(llm)
        try h.exclusive { h.model.training = training != 0 }
    }
}

// MARK: - Adapters

/// Parses a comma-separated target_modules list (NULL → all seven projections).
func targetList(_ p: UnsafePointer<CChar>?, _ name: StaticString) throws(PSTError) -> [String] {
    guard let s = try optionalCString(p, name) else { return LlamaModel.allTargetModules }
    let list = s.split(separator: ",").map { String($0).trimmingSpaces() }.filter { !$0.isEmpty }
    guard !list.isEmpty else { throw .invalidArgument("\(name) (\"\(s)\") names no module") }
    return list
}

extension String {
    func trimmingSpaces() -> String {
        var s = Substring(self)
        while let f = s.first, f == " " || f == "\t" { s.removeFirst() }
        while let l = s.last, l == " " || l == "\t" { s.removeLast() }
        return String(s)
    }
}

/// Adds an adapter called name (NULL: "default") to the target_modules projections of every
/// layer (comma-separated: q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, down_proj; NULL:
/// all seven) with params (NULL: pst_lora_params_init's defaults). Each projection's A gets its
/// own seed derived from params->seed; B starts at zero. All or nothing. It becomes active
/// wherever it is the first adapter; use pst_llm_set_adapter to choose.
/// Errors: PST_ERR_INVALID_ARG, PST_ERR_EXISTS, PST_ERR_MISUSE (handle busy), PST_ERR_OUT_OF_MEMORY.
@c(pstimpl_llm_add_adapter)
public func pst_llm_add_adapter(_ llm: UnsafeMutablePointer<pst_llm>?, _ name: UnsafePointer<CChar>?,
                                _ params: UnsafePointer<pst_lora_params>?, _ target_modules: UnsafePointer<CChar>?) -> Int32 {
    cEntry("pst_llm_add_adapter") { () throws(PSTError) in
        let h = try llmObject(llm)
        let n = try optionalCString(name, "name") ?? "default"
        var p = pst_lora_params()
        _ = pst_lora_params_init(&p)
        if let params {
            try checkStructSize(params.pointee.struct_size, MemoryLayout<pst_lora_params>.size, "pst_lora_params", "pst_lora_params_init")
            p = params.pointee
        }
        guard let ini = LoraInit(rawValue: p.`init`) else {
            throw .invalidArgument("params->init (\(p.`init`)) is not a PST_LORA_INIT_* value")
        }
        let targets = try targetList(target_modules, "target_modules")
        let cfg = LoraConfig(r: Int(p.r), alpha: p.alpha, dropout: p.dropout, useRslora: p.use_rslora != 0,
                             initialization: ini, seed: p.seed)
        try h.exclusive { () throws(PSTError) in
            for (_, lin) in h.model.loraModules where lin.adapter(named: n) != nil {
                throw .exists("adapter \"\(n)\" is already attached")
            }
            try h.model.addAdapter(n, config: cfg, targetModules: targets)
        }
    }
}

/// Deletes the adapter called name from every projection.
/// Errors: PST_ERR_INVALID_ARG, PST_ERR_NOT_FOUND, PST_ERR_MISUSE (merged, handle busy).
@c(pstimpl_llm_delete_adapter)
public func pst_llm_delete_adapter(_ llm: UnsafeMutablePointer<pst_llm>?, _ name: UnsafePointer<CChar>?) -> Int32 {
    cEntry("pst_llm_delete_adapter") { () throws(PSTError) in
        let h = try llmObject(llm)
        let n = try cString(name, "name")
        try h.exclusive { () throws(PSTError) in try h.model.deleteAdapter(n) }
    }
}

/// Makes name the only active adapter on every projection that has it (others: none active);
/// name NULL disables all adapters (the base model alone).
/// Errors: PST_ERR_INVALID_ARG, PST_ERR_NOT_FOUND (no projection has it), PST_ERR_MISUSE.
@c(pstimpl_llm_set_adapter)
public func pst_llm_set_adapter(_ llm: UnsafeMutablePointer<pst_llm>?, _ name: UnsafePointer<CChar>?) -> Int32 {
    cEntry("pst_llm_set_adapter") { () throws(PSTError) in
        let h = try llmObject(llm)
        let n = try optionalCString(name, "name")
        try h.exclusive { () throws(PSTError) in
            let mods = h.model.loraModules
            if let n {
                guard mods.contains(where: { $0.layer.adapter(named: n) != nil }) else {
                    throw .notFound("adapter \"\(n)\" is attached to no module")
                }
                for (_, lin) in mods {
                    if lin.adapter(named: n) != nil { try lin.setActive([n]) } else { try lin.setActive([]) }
                }
            } else {
                for (_, lin) in mods { try lin.setActive([]) }
            }
            h.model.dropState()
        }
    }
}

/// The number of projections (layers * 7), each addressable by its Hugging Face module path.
/// Errors: PST_ERR_INVALID_ARG.
@c(pstimpl_llm_module_count)
public func pst_llm_module_count(_ llm: UnsafeMutablePointer<pst_llm>?, _ count: UnsafeMutablePointer<Int64>?) -> Int32 {
    cEntry("pst_llm_module_count") { () throws(PSTError) in
        let h = try llmObject(llm)
        try required(count, "count").pointee = Int64(h.modulePaths.count)
    }
}

/// The index-th projection's module path ("model.layers.0.self_attn.q_proj", PEFT's key
/// prefix), owned by the handle (valid until pst_llm_free).
/// Errors: PST_ERR_INVALID_ARG (NULL, index out of range).
@c(pstimpl_llm_module_at)
public func pst_llm_module_at(_ llm: UnsafeMutablePointer<pst_llm>?, _ index: Int64,
                              _ path: UnsafeMutablePointer<UnsafePointer<CChar>?>?) -> Int32 {
    cEntry("pst_llm_module_at") { () throws(PSTError) in
        let h = try llmObject(llm)
        let o = try required(path, "path")
        o.pointee = nil
        guard index >= 0 && index < Int64(h.modulePaths.count) else {
            throw .invalidArgument("index (\(index)) must be in 0..<\(h.modulePaths.count)")
        }
        o.pointee = UnsafePointer(h.modulePaths[Int(index)].p)
    }
}

/// A tensor of adapter `adapter` (NULL: "default") on projection `module_path`: which is
/// PST_LORA_A (r x in), PST_LORA_B (out x r), PST_LORA_GRAD_A or PST_LORA_GRAD_B. *data points
/// into the model (read and write; valid until the adapter is deleted or the model freed);
/// *rows and *cols (may be NULL) receive its shape, row-major.
/// Errors: PST_ERR_INVALID_ARG, PST_ERR_NOT_FOUND (no such module or adapter).
@c(pstimpl_llm_adapter_tensor)
public func pst_llm_adapter_tensor(_ llm: UnsafeMutablePointer<pst_llm>?, _ module_path: UnsafePointer<CChar>?,
                                   _ adapter: UnsafePointer<CChar>?, _ which: Int32,
                                   _ data: UnsafeMutablePointer<UnsafeMutablePointer<Float>?>?,
                                   _ rows: UnsafeMutablePointer<Int64>?, _ cols: UnsafeMutablePointer<Int64>?) -> Int32 {
    cEntry("pst_llm_adapter_tensor") { () throws(PSTError) in
        let h = try llmObject(llm)
        let d = try required(data, "data")
        d.pointee = nil
        let path = try cString(module_path, "module_path")
        let name = try optionalCString(adapter, "adapter") ?? "default"
        guard (PST_LORA_A...PST_LORA_GRAD_B).contains(which) else {
            throw .invalidArgument("which (\(which)) is not PST_LORA_A, _B, _GRAD_A or _GRAD_B")
        }
        guard let lin = h.moduleByPath[path] else {
            throw .notFound("module_path \"\(path)\" is not a projection of this model (e.g. model.layers.0.self_attn.q_proj)")
        }
        guard let a = lin.adapter(named: name) else { throw .notFound("module \"\(path)\" has no adapter \"\(name)\"") }
        let (buf, r, c): (AlignedBuffer<Float>, Int, Int)
        switch which {
        case PST_LORA_A: (buf, r, c) = (a.a, a.config.r, lin.inFeatures)
        case PST_LORA_B: (buf, r, c) = (a.b, lin.outFeatures, a.config.r)
        case PST_LORA_GRAD_A: (buf, r, c) = (a.gradA, a.config.r, lin.inFeatures)
        default: (buf, r, c) = (a.gradB, lin.outFeatures, a.config.r)
        }
        d.pointee = buf.baseAddress
        rows?.pointee = Int64(r)
        cols?.pointee = Int64(c)
    }
}

/// Saves adapter `adapter` (NULL: "default") as a PEFT directory (adapter_config.json +
/// adapter_model.safetensors, Hugging Face module names, task type CAUSAL_LM) that
/// PeftModel.from_pretrained loads onto the transformers model. Each file is written atomically.
/// Errors: PST_ERR_INVALID_ARG, PST_ERR_NOT_FOUND, PST_ERR_IO, PST_ERR_MISUSE.
@c(pstimpl_llm_save_adapter)
public func pst_llm_save_adapter(_ llm: UnsafeMutablePointer<pst_llm>?, _ adapter: UnsafePointer<CChar>?,
                                 _ directory: UnsafePointer<CChar>?) -> Int32 {
    cEntry("pst_llm_save_adapter") { () throws(PSTError) in
        let h = try llmObject(llm)
        let name = try optionalCString(adapter, "adapter") ?? "default"
        let dir = try cString(directory, "directory")
        try h.exclusive { () throws(PSTError) in
            let mods = h.model.loraModules.filter { $0.layer.adapter(named: name) != nil }.map { PeftModule($0.modulePath, $0.layer) }
            guard !mods.isEmpty else { throw .notFound("adapter \"\(name)\" is attached to no module") }
            try PeftAdapterDirectory.save(adapter: name, of: mods, to: dir, baseModelNameOrPath: nil,
                                          taskType: "CAUSAL_LM", inferenceMode: true)
        }
    }
}

/// Loads a PEFT adapter directory (made by PEFT or peftswift for this model) as adapter `name`
/// (NULL: "default"); all or nothing. It becomes active wherever it is the first adapter.
/// Errors: PST_ERR_INVALID_ARG (a tensor for no projection of this model), PST_ERR_SHAPE, PST_ERR_NOT_FOUND,
/// PST_ERR_EXISTS, PST_ERR_CORRUPT, PST_ERR_UNSUPPORTED, PST_ERR_IO, PST_ERR_MISUSE.
@c(pstimpl_llm_load_adapter)
public func pst_llm_load_adapter(_ llm: UnsafeMutablePointer<pst_llm>?, _ directory: UnsafePointer<CChar>?,
                                 _ name: UnsafePointer<CChar>?) -> Int32 {
    cEntry("pst_llm_load_adapter") { () throws(PSTError) in
        let h = try llmObject(llm)
        let dir = try cString(directory, "directory")
        let n = try optionalCString(name, "name") ?? "default"
        try h.exclusive { () throws(PSTError) in
            // the projections the file has weights for (PEFT's target_modules and
            // layers_to_transform decide that when it saves); a tensor for no projection of
            // this model is an error (strict load)
            let f = try SafeTensorsFile(path: dir + "/" + PeftAdapterDirectory.weightsFileName)
            let mods = h.model.loraModules.filter { f.contains(PeftAdapterDirectory.tensorNames(forModule: $0.modulePath).a) }
                .map { PeftModule($0.modulePath, $0.layer) }
            guard !mods.isEmpty else {
                throw .invalidArgument("\(dir): the adapter has weights for no projection of this model (model.layers.N.self_attn.q_proj, ...)")
            }
            try PeftAdapterDirectory.load(from: dir, into: mods, as: n)
            h.model.dropState()
        }
    }
}

// MARK: - Generation

/// Fills *p with the defaults: 64 new tokens, greedy, stop at EOS.
/// Errors: PST_ERR_INVALID_ARG (p NULL).
@c(pstimpl_generate_params_init)
public func pst_generate_params_init(_ p: UnsafeMutablePointer<pst_generate_params>?) -> Int32 {
    cEntry("pst_generate_params_init") { () throws(PSTError) in
        try required(p, "params").pointee = pst_generate_params(
            struct_size: MemoryLayout<pst_generate_params>.size, max_new_tokens: 64, temperature: 0, top_p: 1, top_k: 0,
            seed: 0, disable_adapters: 0, stop_at_eos: 1, stop_ids: nil, stop_count: 0)
    }
}

/// Generates up to params->max_new_tokens tokens after prompt (prompt_count ids) with a KV
/// cache: greedy, or temperature / top-p / top-k sampling seeded by params->seed; with the
/// active adapters or (params->disable_adapters) without. callback (may be NULL) gets each new
/// token and its bytes as it is chosen; returning nonzero stops. The new ids go to out
/// (capacity ids; may be NULL when capacity is 0), *count receives how many were generated
/// (at most capacity are stored). params may be NULL (the defaults).
/// Errors: PST_ERR_INVALID_ARG (NULL, ids out of range, prompt + max_new_tokens beyond the
/// context, bad params), PST_ERR_MISUSE (handle busy, a merged adapter with disable_adapters).
@c(pstimpl_llm_generate)
public func pst_llm_generate(_ llm: UnsafeMutablePointer<pst_llm>?, _ prompt: UnsafePointer<Int32>?, _ prompt_count: Int,
                             _ params: UnsafePointer<pst_generate_params>?, _ callback: pst_token_callback?,
                             _ user: UnsafeMutableRawPointer?, _ out: UnsafeMutablePointer<Int32>?, _ capacity: Int,
                             _ count: UnsafeMutablePointer<Int64>?) -> Int32 {
    cEntry("pst_llm_generate") { () throws(PSTError) in
        let h = try llmObject(llm)
        let n = try required(count, "count")
        n.pointee = 0
        guard prompt_count >= 1 && prompt_count <= 1 << 24 else {
            throw .invalidArgument("prompt_count (\(prompt_count)) must be in 1...\(1 << 24)")
        }
        guard capacity >= 0 else { throw .invalidArgument("capacity (\(capacity)) must be >= 0") }
        if capacity > 0 { _ = try required(out, "out") }
        let ids = Array(UnsafeBufferPointer(start: try required(prompt, "prompt"), count: prompt_count))
        var gp = pst_generate_params()
        _ = pst_generate_params_init(&gp)
        if let params {
            try checkStructSize(params.pointee.struct_size, MemoryLayout<pst_generate_params>.size,
                                "pst_generate_params", "pst_generate_params_init")
            gp = params.pointee
        }
        guard gp.max_new_tokens >= 0 else { throw .invalidArgument("params->max_new_tokens (\(gp.max_new_tokens)) must be >= 0") }
        guard gp.stop_count >= 0 && gp.stop_count <= 4096 else {
            throw .invalidArgument("params->stop_count (\(gp.stop_count)) must be in 0...4096")
        }
        var stops: [Int32] = []
        if gp.stop_count > 0 {
            guard let s = gp.stop_ids else { throw .invalidArgument("params->stop_ids is NULL with stop_count \(gp.stop_count)") }
            stops = Array(UnsafeBufferPointer(start: s, count: Int(gp.stop_count)))
        }
        if gp.stop_at_eos != 0, let tok = h.tokenizer {
            if let e = tok.eosID { stops.append(e) }
            if let e = tok.tokenID("<|im_end|>") { stops.append(e) }
        }
        let opts = GenerationOptions(maxNewTokens: Int(gp.max_new_tokens), temperature: gp.temperature, topP: gp.top_p,
                                     topK: Int(gp.top_k), seed: gp.seed, stopIDs: stops, disableAdapters: gp.disable_adapters != 0)
        let tok = h.tokenizer
        let result = try h.exclusive { () throws(PSTError) -> GenerationResult in
            let m = h.model, was = m.training
            m.training = false
            defer { m.training = was }
            return try m.generate(prompt: ids, options: opts) { t in
                guard let callback else { return true }
                let bytes = tok?.bytes(of: t) ?? []
                let r = bytes.withUnsafeBufferPointer { bp in
                    bp.withMemoryRebound(to: CChar.self) { callback(t, $0.baseAddress, $0.count, user) }
                }
                return r == 0
            }
        }
        let k = min(result.tokens.count, capacity)
        if k > 0, let out { result.tokens.withUnsafeBufferPointer { out.update(from: $0.baseAddress!, count: k) } }
        n.pointee = Int64(result.tokens.count)
    }
}

// MARK: - Trainer

/// Fills *p with QLoRA's defaults (see pst_trainer_params).
/// Errors: PST_ERR_INVALID_ARG (p NULL).
@c(pstimpl_trainer_params_init)
public func pst_trainer_params_init(_ p: UnsafeMutablePointer<pst_trainer_params>?) -> Int32 {
    cEntry("pst_trainer_params_init") { () throws(PSTError) in
        try required(p, "params").pointee = pst_trainer_params(
            struct_size: MemoryLayout<pst_trainer_params>.size, data_format: PST_DATA_TEXT, seq_len: 256, steps: 100,
            batch_size: 4, gradient_accumulation: 1, learning_rate: 2e-4, warmup_steps: 0, schedule: PST_LR_COSINE,
            weight_decay: 0, clip_norm: 1, optimizer_state: PST_OPTIM_STATE_F32, paged_budget_bytes: 0, lora_r: 16,
            lora_alpha: 32, lora_dropout: 0.05, target_modules: nil, seed: 42, shuffle: 1, checkpoint_every: 0,
            output_dir: nil, recompute: 0, adapter_name: nil, resume_from: nil, text_separator: nil, system_prompt: nil)
    }
}

func trainerConfig(_ p: pst_trainer_params) throws(PSTError) -> TrainerConfig {
    func int(_ v: Int64, _ name: StaticString) throws(PSTError) -> Int {
        guard v >= 0 && v <= 1 << 40 else { throw .invalidArgument("params->\(name) (\(v)) is out of range") }
        return Int(v)
    }
    let schedule: TrainerSchedule
    switch p.schedule {
    case PST_LR_COSINE: schedule = .cosine
    case PST_LR_LINEAR: schedule = .linear
    case PST_LR_CONSTANT, PST_LR_CONSTANT_WARMUP: schedule = .constant
    default: throw .invalidArgument("params->schedule (\(p.schedule)) is not a PST_LR_* value")
    }
    guard p.optimizer_state == PST_OPTIM_STATE_F32 || p.optimizer_state == PST_OPTIM_STATE_8BIT else {
        throw .invalidArgument("params->optimizer_state (\(p.optimizer_state)) is not PST_OPTIM_STATE_F32 or _8BIT")
    }
    guard p.lora_r >= 1 else { throw .invalidArgument("params->lora_r (\(p.lora_r)) must be >= 1") }
    guard p.lora_alpha.isFinite && p.lora_alpha > 0 else { throw .invalidArgument("params->lora_alpha (\(p.lora_alpha)) must be > 0") }
    guard p.lora_dropout >= 0 && p.lora_dropout < 1 else {
        throw .invalidArgument("params->lora_dropout (\(p.lora_dropout)) must be in [0, 1)")
    }
    let adapter = try optionalCString(p.adapter_name, "params->adapter_name") ?? "default"
    let cfg = TrainerConfig(steps: try int(p.steps, "steps"), batchSize: Int(p.batch_size),
                            gradientAccumulation: Int(p.gradient_accumulation), learningRate: p.learning_rate,
                            warmupSteps: try int(p.warmup_steps, "warmup_steps"), schedule: schedule,
                            weightDecay: p.weight_decay, clipNorm: p.clip_norm,
                            optimizer8bit: p.optimizer_state == PST_OPTIM_STATE_8BIT,
                            pagedBudgetBytes: try int(p.paged_budget_bytes, "paged_budget_bytes"), loraR: Int(p.lora_r),
                            loraAlpha: p.lora_alpha, loraDropout: p.lora_dropout,
                            targetModules: try targetList(p.target_modules, "params->target_modules"), seed: p.seed,
                            shuffle: p.shuffle != 0, checkpointEvery: try int(p.checkpoint_every, "checkpoint_every"),
                            outputDirectory: try optionalCString(p.output_dir, "params->output_dir"),
                            recomputeActivations: p.recompute != 0, adapterName: adapter)
    do { try cfg.validate() } catch { throw .invalidArgument("params: \(error.message)") }
    return cfg
}

/// Sets up a fine-tuning run of llm on data_count data files (params->data_format): the data
/// are read, checked (UTF-8, non-empty, ids within the vocabulary, seq_len within the context)
/// and tokenized, a new adapter (params->adapter_name) is attached to the target projections
/// and the optimizer is created; with params->resume_from the adapter, optimizer state, step,
/// data position and dropout RNGs come from that checkpoint, so continuing gives the same
/// parameters, bit for bit, as a run never interrupted. Everything is checked before any
/// training work. The trainer keeps llm alive; the adapter stays on the model after
/// pst_trainer_free (generate with it, save it). Free with pst_trainer_free.
/// Errors: PST_ERR_INVALID_ARG (params, data: empty, not UTF-8, bad JSON Lines; seq_len beyond
/// the context), PST_ERR_NOT_FOUND, PST_ERR_IO, PST_ERR_EXISTS (adapter name taken),
/// PST_ERR_CORRUPT (a damaged checkpoint), PST_ERR_UNSUPPORTED (no tokenizer), PST_ERR_MISUSE.
@c(pstimpl_trainer_create)
public func pst_trainer_create(_ llm: UnsafeMutablePointer<pst_llm>?, _ data_paths: UnsafePointer<UnsafePointer<CChar>?>?,
                               _ data_count: Int32, _ params: UnsafePointer<pst_trainer_params>?,
                               _ out: UnsafeMutablePointer<UnsafeMutablePointer<pst_trainer>?>?) -> Int32 {
    cEntry("pst_trainer_create") { () throws(PSTError) in
        let o = try required(out, "out")
        o.pointee = nil
        let h = try llmObject(llm)
        guard data_count >= 1 && data_count <= 1 << 20 else {
            throw .invalidArgument("data_count (\(data_count)) must be in 1...\(1 << 20)")
        }
        let dp = try required(data_paths, "data_paths")
        var paths: [String] = []
        for i in 0..<Int(data_count) {
            guard let s = dp[i] else { throw .invalidArgument("data_paths[\(i)] is NULL") }
            paths.append(try cString(s, "data_paths[i]"))
        }
        var tp = pst_trainer_params()
        _ = pst_trainer_params_init(&tp)
        if let params {
            try checkStructSize(params.pointee.struct_size, MemoryLayout<pst_trainer_params>.size,
                                "pst_trainer_params", "pst_trainer_params_init")
            tp = params.pointee
        }
        let cfg = try trainerConfig(tp)
        guard tp.data_format == PST_DATA_TEXT || tp.data_format == PST_DATA_JSONL else {
            throw .invalidArgument("params->data_format (\(tp.data_format)) is not PST_DATA_TEXT or PST_DATA_JSONL")
        }
        let maxPos = h.model.config.maxPositions
        guard tp.seq_len >= 2 && Int(tp.seq_len) <= maxPos else {
            throw .invalidArgument("params->seq_len (\(tp.seq_len)) must be in 2...\(maxPos) (the model's context length)")
        }
        let resume = try optionalCString(tp.resume_from, "params->resume_from")
        let sep = try optionalCString(tp.text_separator, "params->text_separator")
        let system = try optionalCString(tp.system_prompt, "params->system_prompt")
        let tok = try h.requireTokenizer()
        let data: TrainingDataset
        if tp.data_format == PST_DATA_TEXT {
            data = try TrainingDataset.packedTextFiles(paths, tokenizer: tok, seqLen: Int(tp.seq_len), maxPositions: maxPos,
                                                       separator: sep)
        } else {
            data = try TrainingDataset.instructionFiles(paths, tokenizer: tok, seqLen: Int(tp.seq_len), maxPositions: maxPos,
                                                        system: system)
        }
        let t = try h.exclusive { () throws(PSTError) -> Trainer in
            if let resume { return try Trainer(model: h.model, dataset: data, resumingFrom: resume, config: cfg) }
            return try Trainer(model: h.model, dataset: data, config: cfg)
        }
        o.pointee = makeHandle(TrainerHandle(llm: h, trainer: t), as: pst_trainer.self)
    }
}

/// Frees a trainer (its optimizer state and data); NULL is a no-op. The adapter stays on the model.
@c(pstimpl_trainer_free)
public func pst_trainer_free(_ trainer: UnsafeMutablePointer<pst_trainer>?) {
    guard let trainer else { return }
    let t = object(trainer, as: TrainerHandle.self)
    t.llm.model.training = false
    releaseHandle(trainer, as: TrainerHandle.self)
}

func fillProgress(_ p: TrainerProgress, _ t: TrainerHandle) -> pst_train_progress {
    t.lastCheckpoint = p.checkpoint.map { CStringBox($0) }
    return pst_train_progress(struct_size: MemoryLayout<pst_train_progress>.size, step: Int64(p.step),
                              total_steps: Int64(p.totalSteps), loss: p.loss, grad_norm: p.gradNorm,
                              learning_rate: p.learningRate, tokens_per_second: p.tokensPerSecond,
                              resident_bytes: Int64(p.residentBytes), elapsed_seconds: p.elapsedSeconds,
                              checkpoint: t.lastCheckpoint.map { UnsafePointer($0.p) })
}

/// Runs one optimizer step (gradient accumulation, clipping, AdamW, a checkpoint when due) and
/// fills *progress (may be NULL; else struct_size must be sizeof(pst_train_progress)).
/// Errors: PST_ERR_INVALID_ARG, PST_ERR_MISUSE (all steps done, model busy), PST_ERR_NONFINITE
/// (the loss diverged; no update is made), PST_ERR_IO (checkpoint), PST_ERR_OUT_OF_MEMORY.
@c(pstimpl_trainer_step)
public func pst_trainer_step(_ trainer: UnsafeMutablePointer<pst_trainer>?, _ progress: UnsafeMutablePointer<pst_train_progress>?) -> Int32 {
    cEntry("pst_trainer_step") { () throws(PSTError) in
        let t = object(try required(trainer, "trainer"), as: TrainerHandle.self)
        if let progress {
            try checkStructSize(progress.pointee.struct_size, MemoryLayout<pst_train_progress>.size, "pst_train_progress", "sizeof")
        }
        let p = try t.llm.exclusive { () throws(PSTError) -> TrainerProgress in
            t.llm.model.training = true
            return try t.trainer.step()
        }
        progress?.pointee = fillProgress(p, t)
    }
}

/// Runs the remaining steps, calling callback (may be NULL) after each; a nonzero return stops
/// early (then nothing more is saved: call pst_trainer_save_checkpoint to keep the state).
/// After the last step, saves the adapter to params->output_dir when it was given.
/// Errors: as pst_trainer_step.
@c(pstimpl_trainer_train)
public func pst_trainer_train(_ trainer: UnsafeMutablePointer<pst_trainer>?, _ callback: pst_progress_callback?,
                              _ user: UnsafeMutableRawPointer?) -> Int32 {
    cEntry("pst_trainer_train") { () throws(PSTError) in
        let t = object(try required(trainer, "trainer"), as: TrainerHandle.self)
        try t.llm.exclusive { () throws(PSTError) in
            t.llm.model.training = true
            defer { t.llm.model.training = false }
            try t.trainer.train { p in
                guard let callback else { return true }
                var cp = fillProgress(p, t)
                return callback(&cp, user) == 0
            }
        }
    }
}

/// Saves the trained adapter as a PEFT directory (as pst_llm_save_adapter).
/// Errors: PST_ERR_INVALID_ARG, PST_ERR_IO, PST_ERR_MISUSE.
@c(pstimpl_trainer_save_adapter)
public func pst_trainer_save_adapter(_ trainer: UnsafeMutablePointer<pst_trainer>?, _ directory: UnsafePointer<CChar>?) -> Int32 {
    cEntry("pst_trainer_save_adapter") { () throws(PSTError) in
        let t = object(try required(trainer, "trainer"), as: TrainerHandle.self)
        let dir = try cString(directory, "directory")
        try t.llm.exclusive { () throws(PSTError) in try t.trainer.saveAdapter(to: dir) }
    }
}

/// Writes a resumable checkpoint (adapter, optimizer state, step, data position, RNGs) as the
/// directory `directory`, atomically as a whole (written beside it, then renamed).
/// Errors: PST_ERR_INVALID_ARG, PST_ERR_IO, PST_ERR_MISUSE.
@c(pstimpl_trainer_save_checkpoint)
public func pst_trainer_save_checkpoint(_ trainer: UnsafeMutablePointer<pst_trainer>?, _ directory: UnsafePointer<CChar>?) -> Int32 {
    cEntry("pst_trainer_save_checkpoint") { () throws(PSTError) in
        let t = object(try required(trainer, "trainer"), as: TrainerHandle.self)
        let dir = try cString(directory, "directory")
        try t.llm.exclusive { () throws(PSTError) in try t.trainer.saveCheckpoint(to: dir) }
    }
}

/// Fills *info (info->struct_size must be sizeof(pst_trainer_info)).
/// Errors: PST_ERR_INVALID_ARG.
@c(pstimpl_trainer_get_info)
public func pst_trainer_get_info(_ trainer: UnsafeMutablePointer<pst_trainer>?, _ info: UnsafeMutablePointer<pst_trainer_info>?) -> Int32 {
    cEntry("pst_trainer_get_info") { () throws(PSTError) in
        let t = object(try required(trainer, "trainer"), as: TrainerHandle.self)
        let i = try required(info, "info")
        try checkStructSize(i.pointee.struct_size, MemoryLayout<pst_trainer_info>.size, "pst_trainer_info", "sizeof")
        let d = t.trainer.dataset
        let params = t.trainer.model.trainableParameters(adapter: t.trainer.config.adapterName).reduce(0) { $0 + $1.parameter.count }
        i.pointee = pst_trainer_info(struct_size: MemoryLayout<pst_trainer_info>.size, rows: Int64(d.count),
                                     seq_len: Int32(d.seqLen), tokens: Int64(d.ids.count), target_tokens: Int64(d.targetCount),
                                     completed_steps: Int64(t.trainer.completedSteps), total_steps: Int64(t.trainer.config.steps),
                                     trainable_parameters: Int64(params))
    }
}

/// The newest complete checkpoint under directory (a checkpoint-<N> holding trainer_state.json,
/// largest N), NUL-terminated into path (capacity bytes); *length receives its byte length
/// (0 and PST_ERR_NOT_FOUND when there is none). Sizing as pst_llm_detokenize.
/// Errors: PST_ERR_INVALID_ARG, PST_ERR_NOT_FOUND.
@c(pstimpl_trainer_latest_checkpoint)
public func pst_trainer_latest_checkpoint(_ directory: UnsafePointer<CChar>?, _ path: UnsafeMutablePointer<CChar>?,
                                          _ capacity: Int, _ length: UnsafeMutablePointer<Int64>?) -> Int32 {
    cEntry("pst_trainer_latest_checkpoint") { () throws(PSTError) in
        let len = try required(length, "length")
        len.pointee = 0
        let dir = try cString(directory, "directory")
        guard let found = Trainer.latestCheckpoint(in: dir) else { throw .notFound("directory \"\(dir)\" holds no complete checkpoint-<N>") }
        try copyOutString(found, "path", path, capacity, len)
    }
}
