import CPeftSwift

// C API of the optimizers (Sources/PeftSwift/Optim): AdamW with torch's semantics and 8-bit
// blockwise AdamW with bitsandbytes', in memory or paged.

/// Fills *p with torch.optim.AdamW's defaults: lr 1e-3, betas (0.9, 0.999), eps 1e-8,
/// weight_decay 1e-2, fp32 state, min_8bit_size 4096.
/// Errors: PST_ERR_INVALID_ARG (p NULL).
@c(pstimpl_adamw_params_init)
public func pst_adamw_params_init(_ p: UnsafeMutablePointer<pst_adamw_params>?) -> pst_status {
    cEntry("pst_adamw_params_init") { () throws(PSTError) in
        try required(p, "params").pointee = pst_adamw_params(
            struct_size: MemoryLayout<pst_adamw_params>.size, lr: 1e-3, beta1: 0.9, beta2: 0.999, eps: 1e-8,
            weight_decay: 1e-2, state_format: PST_OPTIM_STATE_F32, min_8bit_size: 4096)
    }
}

/// Creates an AdamW optimizer (params NULL: the defaults). With pager non-NULL its state
/// lives in the pager (paged AdamW: the optimizer prefetches parameter k+1's state while it
/// updates k); the optimizer keeps its own reference to the pager. Free with pst_adamw_free.
/// Errors: PST_ERR_INVALID_ARG (a hyper-parameter out of range, an unknown state format).
@c(pstimpl_adamw_create)
public func pst_adamw_create(_ params: UnsafePointer<pst_adamw_params>?, _ pager: UnsafeMutablePointer<pst_pager>?,
                             _ out: UnsafeMutablePointer<UnsafeMutablePointer<pst_adamw>?>?) -> pst_status {
    cEntry("pst_adamw_create") { () throws(PSTError) in
        let o = try required(out, "out")
        o.pointee = nil
        var p = pst_adamw_params()
        _ = pst_adamw_params_init(&p)
        if let params { p = try readStruct(params, over: p, "params") }
        let format: AdamW.StateFormat
        switch p.state_format {
        case PST_OPTIM_STATE_F32: format = .float32
        case PST_OPTIM_STATE_8BIT:
            guard p.min_8bit_size >= 0 else { throw .invalidArgument("params->min_8bit_size (\(p.min_8bit_size)) must be >= 0") }
            format = .blockwise8bit(minBlockwiseSize: Int(p.min_8bit_size))
        default: throw .invalidArgument("params->state_format (\(p.state_format)) is not a PST_OPTIM_STATE_* value")
        }
        let hp = AdamWHyperparameters(learningRate: p.lr, beta1: p.beta1, beta2: p.beta2, eps: p.eps, weightDecay: p.weight_decay)
        let storage: OptimizerStorage = pager.map { .paged(object($0, as: Pager.self)) } ?? .memory
        let opt = try AdamW(hp, stateFormat: format, storage: storage)
        o.pointee = makeHandle(opt, as: pst_adamw.self)
    }
}

/// Frees an optimizer (and its state); NULL is a no-op. Parameters and gradients are the
/// caller's and are left alone.
@c(pstimpl_adamw_free)
public func pst_adamw_free(_ opt: UnsafeMutablePointer<pst_adamw>?) {
    if let opt { releaseHandle(opt, as: AdamW.self) }
}

/// Registers a parameter (count floats at param) and its gradient (count floats at grad).
/// The optimizer KEEPS both pointers until it is freed: they must stay valid (a LoRA
/// adapter's tensors from pst_lora_adapter_tensor qualify while the layer lives). *index
/// (may be NULL) receives the parameter's index.
/// Errors: PST_ERR_INVALID_ARG, PST_ERR_OUT_OF_MEMORY.
@c(pstimpl_adamw_add_param)
public func pst_adamw_add_param(_ opt: UnsafeMutablePointer<pst_adamw>?, _ param: UnsafeMutablePointer<Float>?,
                                _ grad: UnsafeMutablePointer<Float>?, _ count: Int64, _ index: UnsafeMutablePointer<Int32>?) -> pst_status {
    cEntry("pst_adamw_add_param") { () throws(PSTError) in
        let o = object(try required(opt, "opt"), as: AdamW.self)
        let p = try required(param, "param"), g = try required(grad, "grad")
        let n = try requireCount("count", count)
        let i = try o.register(parameter: p, gradient: g, count: n)
        index?.pointee = Int32(i)
    }
}

/// One AdamW step over every registered parameter with the current learning rate.
/// Errors: PST_ERR_IO / PST_ERR_CORRUPT / PST_ERR_OUT_OF_MEMORY from a paged state.
@c(pstimpl_adamw_step)
public func pst_adamw_step(_ opt: UnsafeMutablePointer<pst_adamw>?) -> pst_status {
    cEntry("pst_adamw_step") { () throws(PSTError) in
        try object(try required(opt, "opt"), as: AdamW.self).step()
    }
}

/// Sets every registered gradient to zero.
/// Errors: PST_ERR_INVALID_ARG (opt NULL).
@c(pstimpl_adamw_zero_grad)
public func pst_adamw_zero_grad(_ opt: UnsafeMutablePointer<pst_adamw>?) -> pst_status {
    cEntry("pst_adamw_zero_grad") { () throws(PSTError) in
        object(try required(opt, "opt"), as: AdamW.self).zeroGrad()
    }
}

/// Clips the registered gradients by their global 2-norm (torch.nn.utils.clip_grad_norm_):
/// if the norm exceeds max_norm every gradient is scaled by max_norm / (norm + 1e-6).
/// *total_norm (may be NULL) receives the norm before clipping.
/// Errors: PST_ERR_INVALID_ARG (max_norm negative or not finite).
@c(pstimpl_adamw_clip_grad_norm)
public func pst_adamw_clip_grad_norm(_ opt: UnsafeMutablePointer<pst_adamw>?, _ max_norm: Double,
                                     _ total_norm: UnsafeMutablePointer<Float>?) -> pst_status {
    cEntry("pst_adamw_clip_grad_norm") { () throws(PSTError) in
        let o = object(try required(opt, "opt"), as: AdamW.self)
        let n = try o.clipGradNorm(maxNorm: max_norm)
        total_norm?.pointee = n
    }
}

/// Sets the learning rate used by the next steps (e.g. base lr x pst_lr_multiplier).
/// Errors: PST_ERR_INVALID_ARG (lr negative or not finite).
@c(pstimpl_adamw_set_lr)
public func pst_adamw_set_lr(_ opt: UnsafeMutablePointer<pst_adamw>?, _ lr: Double) -> pst_status {
    cEntry("pst_adamw_set_lr") { () throws(PSTError) in
        let o = object(try required(opt, "opt"), as: AdamW.self)
        guard lr.isFinite && lr >= 0 else { throw .invalidArgument("lr (\(lr)) must be finite and >= 0") }
        o.learningRate = lr
    }
}

/// Writes the size in bytes of the optimizer's saved state to *bytes.
/// Errors: PST_ERR_INVALID_ARG.
@c(pstimpl_adamw_state_size)
public func pst_adamw_state_size(_ opt: UnsafeMutablePointer<pst_adamw>?, _ bytes: UnsafeMutablePointer<Int64>?) -> pst_status {
    cEntry("pst_adamw_state_size") { () throws(PSTError) in
        let o = object(try required(opt, "opt"), as: AdamW.self)
        try required(bytes, "bytes").pointee = Int64(o.serializedStateSize)
    }
}

/// Saves the whole state (hyper-parameters, step counts, moments; versioned, with a
/// checksum) into buf (capacity bytes, at least pst_adamw_state_size); *written (may be
/// NULL) receives the bytes written. Resuming from it continues a run exactly.
/// Errors: PST_ERR_INVALID_ARG (buffer too small), PST_ERR_IO (paged state).
@c(pstimpl_adamw_save_state)
public func pst_adamw_save_state(_ opt: UnsafeMutablePointer<pst_adamw>?, _ buf: UnsafeMutableRawPointer?, _ capacity: Int64,
                                 _ written: UnsafeMutablePointer<Int64>?) -> pst_status {
    cEntry("pst_adamw_save_state") { () throws(PSTError) in
        let o = object(try required(opt, "opt"), as: AdamW.self)
        let b = try required(buf, "buf")
        try requireCapacity("buf", have: capacity, need: o.serializedStateSize)
        let bytes = try o.saveState()
        try requireCapacity("buf", have: capacity, need: bytes.count)
        bytes.withUnsafeBytes { b.copyMemory(from: $0.baseAddress!, byteCount: bytes.count) }
        written?.pointee = Int64(bytes.count)
    }
}

/// Restores a state saved by pst_adamw_save_state into an optimizer with the same
/// parameters registered (same count and sizes). Checked fully before anything changes.
/// Errors: PST_ERR_CORRUPT (bad checksum, truncated, wrong version), PST_ERR_SHAPE
/// (different parameters), PST_ERR_INVALID_ARG.
@c(pstimpl_adamw_load_state)
public func pst_adamw_load_state(_ opt: UnsafeMutablePointer<pst_adamw>?, _ buf: UnsafeRawPointer?, _ length: Int64) -> pst_status {
    cEntry("pst_adamw_load_state") { () throws(PSTError) in
        let o = object(try required(opt, "opt"), as: AdamW.self)
        let b = try required(buf, "buf")
        guard length >= 0 else { throw .invalidArgument("length (\(length)) must be >= 0") }
        try o.restoreState(UnsafeRawBufferPointer(start: b, count: Int(length)))
    }
}

/// The learning-rate multiplier of a schedule (PST_LR_*) at 0-based step, Hugging Face
/// transformers' definitions: warmup steps of linear warm-up, then constant, linear decay to
/// 0 at total_steps, or cosine (cycles 0.5 = half a cosine) to 0 at total_steps.
/// Errors: PST_ERR_INVALID_ARG (unknown kind, negative steps, total < warmup, out NULL).
@c(pstimpl_lr_multiplier)
public func pst_lr_multiplier(_ kind: Int32, _ step: Int64, _ warmup: Int64, _ total_steps: Int64, _ cycles: Double,
                              _ out: UnsafeMutablePointer<Double>?) -> pst_status {
    cEntry("pst_lr_multiplier") { () throws(PSTError) in
        let o = try required(out, "out")
        let s: LRSchedule
        switch kind {
        case PST_LR_CONSTANT: s = .constant
        case PST_LR_CONSTANT_WARMUP: s = .linearWarmup(warmupSteps: Int(warmup), decayTo: nil)
        case PST_LR_LINEAR: s = .linearWarmup(warmupSteps: Int(warmup), decayTo: Int(total_steps))
        case PST_LR_COSINE: s = .cosineWithWarmup(warmupSteps: Int(warmup), totalSteps: Int(total_steps), cycles: cycles)
        default: throw .invalidArgument("kind (\(kind)) is not a PST_LR_* value")
        }
        try s.validate()
        o.pointee = s.multiplier(step: Int(step))
    }
}
