import CPeftSwift
#if canImport(Glibc)
import Glibc
#endif

// C API of fine-tuning (Sources/PeftSwift/Train): pst_trainer handles over a pst_llm, steps,
// checkpoints. The model handle and the helpers are in CAPI+LLM.swift.

/// A trainer handle: the run, and the model handle it trains (kept alive until it is freed).
final class TrainerHandle {
    let llm: LLMHandle
    let trainer: Trainer
    /// The path pst_train_progress.checkpoint points to (valid until the next step).
    var lastCheckpoint: OwnedCString? = nil
    init(llm: LLMHandle, trainer: Trainer) { self.llm = llm; self.trainer = trainer }
}

/// cEntry for a function of a trainer handle: `body` runs with the handle, once `trainer` is checked.
@inline(__always)
func trainerEntry(_ function: StaticString, _ trainer: UnsafeMutablePointer<pst_trainer>?,
                  _ body: (TrainerHandle) throws(PSTError) -> Void) -> Int32 {
    cEntry(function) { () throws(PSTError) in try body(object(try required(trainer, "trainer"), as: TrainerHandle.self)) }
}

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

/// The trainer config of params (targets: every projection of `model` when params names none).
func trainerConfig(_ p: pst_trainer_params, model: LanguageModel) throws(PSTError) -> TrainerConfig {
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
    let adapter = try cStringOrNil(p.adapter_name, "params->adapter_name") ?? "default"
    let cfg = TrainerConfig(steps: try int(p.steps, "steps"), batchSize: Int(p.batch_size),
                            gradientAccumulation: Int(p.gradient_accumulation), learningRate: p.learning_rate,
                            warmupSteps: try int(p.warmup_steps, "warmup_steps"), schedule: schedule,
                            weightDecay: p.weight_decay, clipNorm: p.clip_norm,
                            optimizer8bit: p.optimizer_state == PST_OPTIM_STATE_8BIT,
                            pagedBudgetBytes: try int(p.paged_budget_bytes, "paged_budget_bytes"), loraR: Int(p.lora_r),
                            loraAlpha: p.lora_alpha, loraDropout: p.lora_dropout,
                            targetModules: try targetModuleList(p.target_modules, "params->target_modules") ?? model.projectionNames, seed: p.seed,
                            shuffle: p.shuffle != 0, checkpointEvery: try int(p.checkpoint_every, "checkpoint_every"),
                            outputDirectory: try cStringOrNil(p.output_dir, "params->output_dir"),
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
        let o = try nulledOutput(out, "out")
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
        let tp = try readParams(params, pst_trainer_params_init, pst_trainer_params(), "pst_trainer_params")
        let cfg = try trainerConfig(tp, model: h.model)
        guard tp.data_format == PST_DATA_TEXT || tp.data_format == PST_DATA_JSONL else {
            throw .invalidArgument("params->data_format (\(tp.data_format)) is not PST_DATA_TEXT or PST_DATA_JSONL")
        }
        let maxPos = h.model.config.maxPositions
        guard tp.seq_len >= 2 && Int(tp.seq_len) <= maxPos else {
            throw .invalidArgument("params->seq_len (\(tp.seq_len)) must be in 2...\(maxPos) (the model's context length)")
        }
        let resume = try cStringOrNil(tp.resume_from, "params->resume_from")
        let sep = try cStringOrNil(tp.text_separator, "params->text_separator")
        let system = try cStringOrNil(tp.system_prompt, "params->system_prompt")
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
    t.lastCheckpoint = p.checkpoint.map { OwnedCString($0) }
    return pst_train_progress(struct_size: MemoryLayout<pst_train_progress>.size, step: Int64(p.step),
                              total_steps: Int64(p.totalSteps), loss: p.loss, grad_norm: p.gradNorm,
                              learning_rate: p.learningRate, tokens_per_second: p.tokensPerSecond,
                              resident_bytes: Int64(p.residentBytes), elapsed_seconds: p.elapsedSeconds,
                              checkpoint: t.lastCheckpoint?.cString)
}

/// Runs one optimizer step (gradient accumulation, clipping, AdamW, a checkpoint when due) and
/// fills *progress (may be NULL; else struct_size must be sizeof(pst_train_progress)).
/// Errors: PST_ERR_INVALID_ARG, PST_ERR_MISUSE (all steps done, model busy), PST_ERR_NONFINITE
/// (the loss diverged; no update is made), PST_ERR_IO (checkpoint), PST_ERR_OUT_OF_MEMORY.
@c(pstimpl_trainer_step)
public func pst_trainer_step(_ trainer: UnsafeMutablePointer<pst_trainer>?, _ progress: UnsafeMutablePointer<pst_train_progress>?) -> Int32 {
    trainerEntry("pst_trainer_step", trainer) { (t) throws(PSTError) in
        let out = try progress.map { (p) throws(PSTError) in try structOutput(p, "progress") }
        let p = try t.llm.exclusive { () throws(PSTError) -> TrainerProgress in
            t.llm.model.training = true
            return try t.trainer.step()
        }
        out?.store(fillProgress(p, t))
    }
}

/// Runs the remaining steps, calling callback (may be NULL) after each; a nonzero return stops
/// early (then nothing more is saved: call pst_trainer_save_checkpoint to keep the state).
/// After the last step, saves the adapter to params->output_dir when it was given.
/// Errors: as pst_trainer_step.
@c(pstimpl_trainer_train)
public func pst_trainer_train(_ trainer: UnsafeMutablePointer<pst_trainer>?, _ callback: pst_progress_callback?,
                              _ user: UnsafeMutableRawPointer?) -> Int32 {
    trainerEntry("pst_trainer_train", trainer) { (t) throws(PSTError) in
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
    trainerEntry("pst_trainer_save_adapter", trainer) { (t) throws(PSTError) in
        let dir = try cString(directory, "directory")
        try t.llm.exclusive { () throws(PSTError) in try t.trainer.saveAdapter(to: dir) }
    }
}

/// Writes a resumable checkpoint (adapter, optimizer state, step, data position, RNGs) as the
/// directory `directory`, atomically as a whole (written beside it, then renamed).
/// Errors: PST_ERR_INVALID_ARG, PST_ERR_IO, PST_ERR_MISUSE.
@c(pstimpl_trainer_save_checkpoint)
public func pst_trainer_save_checkpoint(_ trainer: UnsafeMutablePointer<pst_trainer>?, _ directory: UnsafePointer<CChar>?) -> Int32 {
    trainerEntry("pst_trainer_save_checkpoint", trainer) { (t) throws(PSTError) in
        let dir = try cString(directory, "directory")
        try t.llm.exclusive { () throws(PSTError) in try t.trainer.saveCheckpoint(to: dir) }
    }
}

/// Fills *info (info->struct_size must be sizeof(pst_trainer_info)).
/// Errors: PST_ERR_INVALID_ARG.
@c(pstimpl_trainer_get_info)
public func pst_trainer_get_info(_ trainer: UnsafeMutablePointer<pst_trainer>?, _ info: UnsafeMutablePointer<pst_trainer_info>?) -> Int32 {
    trainerEntry("pst_trainer_get_info", trainer) { (t) throws(PSTError) in
        let i = try structOutput(try required(info, "info"), "info")
        let d = t.trainer.dataset
        let params = t.trainer.model.trainableParameters(adapter: t.trainer.config.adapterName).reduce(0) { $0 + $1.parameter.count }
        i.store(pst_trainer_info(struct_size: MemoryLayout<pst_trainer_info>.size, rows: Int64(d.count),
                                     seq_len: Int32(d.seqLen), tokens: Int64(d.ids.count), target_tokens: Int64(d.targetCount),
                                     completed_steps: Int64(t.trainer.completedSteps), total_steps: Int64(t.trainer.config.steps),
                                     trainable_parameters: Int64(params)))
    }
}

/// The newest complete checkpoint under directory (a checkpoint-<N> holding trainer_state.json,
/// largest N), NUL-terminated into path (capacity bytes); *length receives its byte length
/// (0 and PST_ERR_NOT_FOUND when there is none). Sizing as pst_llm_detokenize.
/// Errors: PST_ERR_INVALID_ARG, PST_ERR_NOT_FOUND.
@c(pstimpl_trainer_latest_checkpoint)
public func pst_trainer_latest_checkpoint(_ directory: UnsafePointer<CChar>?, _ path: UnsafeMutablePointer<CChar>?,
                                          _ capacity: Int64, _ length: UnsafeMutablePointer<Int64>?) -> Int32 {
    cEntry("pst_trainer_latest_checkpoint") { () throws(PSTError) in
        let len = try zeroedOutput(length, "length")
        let dir = try cString(directory, "directory")
        guard let found = Trainer.latestCheckpoint(in: dir) else { throw .notFound("directory \"\(dir)\" holds no complete checkpoint-<N>") }
        try copyOutString(found, "path", path, capacity, len)
    }
}
