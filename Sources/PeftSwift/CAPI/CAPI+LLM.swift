import CPeftSwift
#if canImport(Glibc)
import Glibc
#endif

// C API of the language model (Sources/PeftSwift/LLM, with Tokenizer and Train): pst_llm
// handles (model + tokenizer), loading, information, logits, loss and backward, and the training
// mode. Tokenizing is in CAPI+LLMTokenizer.swift, adapters in CAPI+LLMAdapters.swift, generation
// in CAPI+LLMGenerate.swift, fine-tuning (pst_trainer) in CAPI+Trainer.swift. Each function
// checks its arguments, calls the Swift engine and maps its errors, nothing more.
//
// The helpers below (llmEntry, readParams, nulledOutput, zeroedOutput, longCString) serve the
// LLM files of the C layer; the ones every C file uses (struct_size, strings, copy-out) are in
// CAPI+Support.swift.

/// A model handle: the model, its tokenizer (nil for a checkpoint directory without one) and a
/// busy flag so that a handle used from two threads at once, or re-entered from a callback,
/// gets PST_ERR_MISUSE instead of corrupting its state.
final class LLMHandle {
    let model: LanguageModel
    let tokenizer: BPETokenizer?
    /// Why there is no tokenizer (a checkpoint directory without a supported tokenizer.json).
    let tokenizerError: PSTError?
    let path: String
    let quantized: Bool
    private var busy = pthread_mutex_t()
    /// NUL-terminated module paths (the model's, in its order), for pst_llm_module_at.
    lazy var modulePaths: [OwnedCString] = model.loraModules.map { OwnedCString($0.modulePath) }

    init(_ loaded: LoadedModel) {
        model = loaded.model
        tokenizer = loaded.tokenizer
        tokenizerError = loaded.tokenizerError
        path = loaded.path
        quantized = loaded.options.quantize
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

@inline(__always)
func llmObject(_ h: UnsafeMutablePointer<pst_llm>?) throws(PSTError) -> LLMHandle {
    object(try required(h, "llm"), as: LLMHandle.self)
}

/// cEntry for a function of a model handle: `body` runs with the handle, once `llm` is checked.
@inline(__always)
func llmEntry(_ function: StaticString, _ llm: UnsafeMutablePointer<pst_llm>?,
              _ body: (LLMHandle) throws(PSTError) -> Void) -> Int32 {
    cEntry(function) { () throws(PSTError) in try body(try llmObject(llm)) }
}

/// The caller's parameter struct `name` (read for its struct_size, CAPI+Support's readStruct),
/// or the defaults its _init function (`initialize`) fills in `empty` when params is NULL.
func readParams<P: GrowableStruct>(_ params: UnsafePointer<P>?, _ initialize: (UnsafeMutablePointer<P>?) -> Int32,
                                   _ empty: P, _ name: StaticString) throws(PSTError) -> P {
    var p = empty
    _ = initialize(&p)
    guard let params else { return p }
    return try readStruct(params, over: p, name)
}

/// A required output handle, set to NULL before anything can fail.
func nulledOutput<H>(_ p: UnsafeMutablePointer<UnsafeMutablePointer<H>?>?,
                     _ name: StaticString) throws(PSTError) -> UnsafeMutablePointer<UnsafeMutablePointer<H>?> {
    let o = try required(p, name)
    o.pointee = nil
    return o
}

/// A required output count or length, set to 0 before anything can fail.
func zeroedOutput(_ p: UnsafeMutablePointer<Int64>?, _ name: StaticString) throws(PSTError) -> UnsafeMutablePointer<Int64> {
    let o = try required(p, name)
    o.pointee = 0
    return o
}

/// A C string of any length (up to 1 GiB) that must be valid UTF-8.
func longCString(_ p: UnsafePointer<CChar>?, _ name: StaticString) throws(PSTError) -> String {
    let p = try required(p, name)
    let n = strnlen(p, 1 << 30)
    return try TrainingDataset.decodeUTF8(Array(UnsafeRawBufferPointer(start: p, count: n)), source: "\(name)")
}

// MARK: - Loading

/// Fills *p with the defaults: NF4, blocksize 64, double quantization, the file's own pre-tokenizer.
/// Errors: PST_ERR_INVALID_ARG (p NULL).
@c(pstimpl_llm_load_params_init)
public func pst_llm_load_params_init(_ p: UnsafeMutablePointer<pst_llm_load_params>?) -> Int32 {
    cEntry("pst_llm_load_params_init") { () throws(PSTError) in
        try required(p, "params").pointee = pst_llm_load_params(
            struct_size: MemoryLayout<pst_llm_load_params>.size, quantize: 1, quant_type: PST_QUANT_NF4,
            blocksize: 64, double_quant: 1, pretokenizer: PST_PRETOK_AUTO, compute_dtype: PST_DTYPE_F32)
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
        let o = try nulledOutput(out, "out")
        let p = try cString(path, "path")
        let lp = try readParams(params, pst_llm_load_params_init, pst_llm_load_params(), "pst_llm_load_params")
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
        let cd = try computeDType(lp.compute_dtype, "params->compute_dtype")
        let options = ModelLoadOptions(quantize: lp.quantize != 0, quantType: qt, blocksize: Int(lp.blocksize),
                                       doubleQuant: lp.double_quant != 0, computeDType: cd)
        let loaded = try LoadedModel.load(path: p, options: options, preTokenizer: pre)
        o.pointee = makeHandle(LLMHandle(loaded), as: pst_llm.self)
    }
}

/// Sets the precision of the model's products with its frozen weights (the projections' base
/// GEMMs and the LM head, forward and backward): PST_DTYPE_F32 (the default) or PST_DTYPE_BF16
/// (operands rounded to bf16, fp32 sums, as bitsandbytes' bnb_4bit_compute_dtype=torch.bfloat16;
/// LoRA weights, gradients and optimizer states stay fp32). Applies from the next call on.
/// Errors: PST_ERR_INVALID_ARG (another dtype), PST_ERR_UNSUPPORTED_CPU (bf16 without
/// AVX512_BF16, or with the kernels capped below PST_ISA_AVX512_BF16; the message says which).
@c(pstimpl_llm_set_compute_dtype)
public func pst_llm_set_compute_dtype(_ llm: UnsafeMutablePointer<pst_llm>?, _ dtype: Int32) -> pst_status {
    cEntry("pst_llm_set_compute_dtype") { () throws(PSTError) in
        let h = object(try required(llm, "llm"), as: LLMHandle.self)
        let cd = try computeDType(dtype, "dtype")
        try h.exclusive { () throws(PSTError) in try h.model.setComputeDType(cd) }
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
    llmEntry("pst_llm_get_info", llm) { (h) throws(PSTError) in
        let i = try structOutput(try required(info, "info"), "info")
        let c = h.model.config
        i.store(pst_llm_info(
            struct_size: MemoryLayout<pst_llm_info>.size, layers: Int32(c.layers), hidden: Int32(c.hidden),
            intermediate: Int32(c.intermediate), heads: Int32(c.heads), kv_heads: Int32(c.kvHeads),
            head_dim: Int32(c.headDim), vocab: Int32(c.vocab), max_positions: Int32(clamping: c.maxPositions),
            tied_embeddings: c.tiedEmbeddings ? 1 : 0, quantized: h.quantized ? 1 : 0,
            bos_id: h.tokenizer?.bosID ?? -1, eos_id: h.tokenizer?.eosID ?? -1,
            has_tokenizer: h.tokenizer == nil ? 0 : 1, adapter_count: Int32(h.model.adapterNames.count),
            rms_eps: c.rmsEps, rope_theta: c.ropeTheta, parameter_count: Int64(h.model.parameterCount),
            base_bytes: Int64(h.model.baseBytes)))
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
                           _ seq_len: Int64, _ logits: UnsafeMutablePointer<Float>?, _ capacity: Int64) -> Int32 {
    llmEntry("pst_llm_logits", llm) { (h) throws(PSTError) in
        let (ip, b, t) = try readIDs(ids, batch, seq_len)
        let out = try required(logits, "logits")
        let need = b * t * h.model.config.vocab
        try requireCapacity("logits", have: capacity, need: need, unit: "floats")
        try h.exclusive { () throws(PSTError) in
            try h.model.evaluationLogits(ids: ip, batch: b, seqLen: t, into: UnsafeMutableBufferPointer(start: out, count: need))
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
    llmEntry("pst_llm_loss", llm) { (h) throws(PSTError) in
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
    llmEntry("pst_llm_backward", llm) { (h) throws(PSTError) in
        try h.exclusive { () throws(PSTError) in try h.model.backward() }
    }
}

/// Zeroes every adapter's gradients.
/// Errors: PST_ERR_INVALID_ARG, PST_ERR_MISUSE (handle busy).
@c(pstimpl_llm_zero_grad)
public func pst_llm_zero_grad(_ llm: UnsafeMutablePointer<pst_llm>?) -> Int32 {
    llmEntry("pst_llm_zero_grad", llm) { (h) throws(PSTError) in
        try h.exclusive { h.model.zeroGrad() }
    }
}

/// Training mode (1: LoRA dropout on in pst_llm_loss) or evaluation (0, the state after loading).
/// Errors: PST_ERR_INVALID_ARG, PST_ERR_MISUSE (handle busy).
@c(pstimpl_llm_set_training)
public func pst_llm_set_training(_ llm: UnsafeMutablePointer<pst_llm>?, _ training: Int32) -> Int32 {
    llmEntry("pst_llm_set_training", llm) { (h) throws(PSTError) in
        try h.exclusive { h.model.training = training != 0 }
    }
}
