import CPeftSwift
#if canImport(Glibc)
import Glibc
#endif

// C API of the LoRA layer (Sources/PeftSwift/LoRA): pst_lora handles over a dense or quantized
// frozen base, with named adapters.

/// Fills *p with the defaults: r 8, alpha 8, dropout 0, no rsLoRA, kaiming init, seed 0.
/// Errors: PST_ERR_INVALID_ARG (p NULL).
@c(pstimpl_lora_params_init)
public func pst_lora_params_init(_ p: UnsafeMutablePointer<pst_lora_params>?) -> pst_status {
    cEntry("pst_lora_params_init") { () throws(PSTError) in
        let p = try required(p, "params")
        p.pointee = pst_lora_params(struct_size: MemoryLayout<pst_lora_params>.size, r: 8, alpha: 8, dropout: 0,
                                    use_rslora: 0, init: PST_LORA_INIT_KAIMING, seed: 0)
    }
}

/// Creates a LoRA layer over a dense fp32 base: weight is out_features x in_features,
/// row-major (torch's Linear.weight), copied; bias (out_features floats) may be NULL.
/// weight_count is the number of floats at weight. Free with pst_lora_free.
/// Errors: PST_ERR_INVALID_ARG, PST_ERR_SHAPE, PST_ERR_NONFINITE, PST_ERR_OUT_OF_MEMORY.
@c(pstimpl_lora_create_dense)
public func pst_lora_create_dense(_ weight: UnsafePointer<Float>?, _ weight_count: Int64, _ out_features: Int64, _ in_features: Int64,
                                  _ bias: UnsafePointer<Float>?, _ out: UnsafeMutablePointer<UnsafeMutablePointer<pst_lora>?>?) -> pst_status {
    cEntry("pst_lora_create_dense") { () throws(PSTError) in
        let o = try required(out, "out")
        o.pointee = nil
        let w = try required(weight, "weight")
        let of = try requireCount("out_features", out_features), inf = try requireCount("in_features", in_features)
        try LoraLinear.checkFeatures(inf, of)
        try requireCapacity("weight", have: weight_count, need: of * inf, unit: "floats")
        let l = try LoraLinear(dense: UnsafeBufferPointer(start: w, count: of * inf), outFeatures: of, inFeatures: inf,
                               bias: bias.map { UnsafeBufferPointer(start: $0, count: of) })
        o.pointee = makeHandle(l, as: pst_lora.self)
    }
}

/// Creates a LoRA layer over a dense fp32 base it BORROWS: weight (out_features x in_features,
/// row-major, weight_count floats: a PyTorch nn.Linear's weight) is used in place, not copied,
/// and checked finite once, here. Lifetime: the caller keeps weight alive until
/// pst_lora_free(layer); the library never writes or frees it, so pst_lora_merge on this layer
/// is PST_ERR_MISUSE. Changes the caller makes to the values are seen by the next call. For a
/// borrowed 4-bit base see pst_quant_borrow_state. The layer has no bias of its own (give one
/// to pst_lora_apply). Free with pst_lora_free.
/// Errors: PST_ERR_INVALID_ARG, PST_ERR_SHAPE, PST_ERR_NONFINITE.
@c(pstimpl_lora_create_dense_borrowed)
public func pst_lora_create_dense_borrowed(_ weight: UnsafePointer<Float>?, _ weight_count: Int64, _ out_features: Int64,
                                           _ in_features: Int64, _ out: UnsafeMutablePointer<UnsafeMutablePointer<pst_lora>?>?) -> pst_status {
    cEntry("pst_lora_create_dense_borrowed") { () throws(PSTError) in
        let o = try required(out, "out")
        o.pointee = nil
        let w = try required(weight, "weight")
        let of = try requireCount("out_features", out_features), inf = try requireCount("in_features", in_features)
        try LoraLinear.checkFeatures(inf, of)
        try requireCapacity("weight", have: weight_count, need: of * inf, unit: "floats")
        let l = try LoraLinear(borrowingDense: w, outFeatures: of, inFeatures: inf)
        o.pointee = makeHandle(l, as: pst_lora.self)
    }
}

/// Creates a LoRA layer over a quantized base: base must be 2-D [out_features, in_features].
/// The layer takes its own reference to the quantized tensor, so pst_quant_free(base) may be
/// called at any time after this. bias (out_features floats) may be NULL.
/// Errors: PST_ERR_INVALID_ARG, PST_ERR_SHAPE (base not 2-D), PST_ERR_OUT_OF_MEMORY.
@c(pstimpl_lora_create_quantized)
public func pst_lora_create_quantized(_ base: UnsafeMutablePointer<pst_quant>?, _ bias: UnsafePointer<Float>?,
                                      _ out: UnsafeMutablePointer<UnsafeMutablePointer<pst_lora>?>?) -> pst_status {
    cEntry("pst_lora_create_quantized") { () throws(PSTError) in
        let o = try required(out, "out")
        o.pointee = nil
        let q = object(try required(base, "base"), as: QuantizedTensor.self)
        let of = q.shape.first ?? 0
        let l = try LoraLinear(quantized: q, bias: bias.map { UnsafeBufferPointer(start: $0, count: of) })
        o.pointee = makeHandle(l, as: pst_lora.self)
    }
}

/// Frees a layer and all its adapters; NULL is a no-op. Pointers from
/// pst_lora_adapter_tensor and pst_lora_bias become invalid.
@c(pstimpl_lora_free)
public func pst_lora_free(_ layer: UnsafeMutablePointer<pst_lora>?) {
    if let layer { releaseHandle(layer, as: LoraLinear.self) }
}

/// Writes the layer's features and adapter count; any output may be NULL.
/// Errors: PST_ERR_INVALID_ARG (layer NULL).
@c(pstimpl_lora_info)
public func pst_lora_info(_ layer: UnsafeMutablePointer<pst_lora>?, _ in_features: UnsafeMutablePointer<Int64>?,
                          _ out_features: UnsafeMutablePointer<Int64>?, _ adapter_count: UnsafeMutablePointer<Int32>?) -> pst_status {
    cEntry("pst_lora_info") { () throws(PSTError) in
        let l = object(try required(layer, "layer"), as: LoraLinear.self)
        in_features?.pointee = Int64(l.inFeatures)
        out_features?.pointee = Int64(l.outFeatures)
        adapter_count?.pointee = Int32(l.adapters.count)
    }
}

/// Adds an adapter called name (1 ... 255 bytes of UTF-8, no '.') with params (NULL: the
/// defaults of pst_lora_params_init). B starts at zero. The first adapter becomes active.
/// Errors: PST_ERR_INVALID_ARG (bad r, alpha, dropout, init, struct_size or name),
/// PST_ERR_EXISTS (the name is taken), PST_ERR_OUT_OF_MEMORY.
@c(pstimpl_lora_add_adapter)
public func pst_lora_add_adapter(_ layer: UnsafeMutablePointer<pst_lora>?, _ name: UnsafePointer<CChar>?,
                                 _ params: UnsafePointer<pst_lora_params>?) -> pst_status {
    cEntry("pst_lora_add_adapter") { () throws(PSTError) in
        let l = object(try required(layer, "layer"), as: LoraLinear.self)
        let n = try cString(name, "name")
        var p = pst_lora_params()
        _ = pst_lora_params_init(&p)
        if let params { p = try readStruct(params, over: p, "params") }
        guard let ini = LoraInit(rawValue: p.`init`) else {
            throw .invalidArgument("params->init (\(p.`init`)) is not a PST_LORA_INIT_* value")
        }
        let cfg = LoraConfig(r: Int(p.r), alpha: p.alpha, dropout: p.dropout, useRslora: p.use_rslora != 0,
                             initialization: ini, seed: p.seed)
        try l.addAdapter(n, config: cfg)
    }
}

/// Deletes the adapter called name (it must not be merged).
/// Errors: PST_ERR_INVALID_ARG, PST_ERR_NOT_FOUND, PST_ERR_MISUSE (merged).
@c(pstimpl_lora_delete_adapter)
public func pst_lora_delete_adapter(_ layer: UnsafeMutablePointer<pst_lora>?, _ name: UnsafePointer<CChar>?) -> pst_status {
    cEntry("pst_lora_delete_adapter") { () throws(PSTError) in
        let l = object(try required(layer, "layer"), as: LoraLinear.self)
        try l.deleteAdapter(try cString(name, "name"))
    }
}

/// Chooses the active adapters: names[0 .. count) with weights[0 .. count) (NULL: all 1).
/// count 0 disables all adapters (names may then be NULL).
/// Errors: PST_ERR_INVALID_ARG, PST_ERR_NOT_FOUND, PST_ERR_MISUSE (changing a merged adapter's weight).
@c(pstimpl_lora_set_active)
public func pst_lora_set_active(_ layer: UnsafeMutablePointer<pst_lora>?, _ names: UnsafePointer<UnsafePointer<CChar>?>?,
                                _ weights: UnsafePointer<Float>?, _ count: Int32) -> pst_status {
    cEntry("pst_lora_set_active") { () throws(PSTError) in
        let l = object(try required(layer, "layer"), as: LoraLinear.self)
        guard count >= 0 && count <= 4096 else { throw .invalidArgument("count (\(count)) must be in 0...4096") }
        var list: [String] = []
        if count > 0 {
            let ns = try required(names, "names")
            for i in 0..<Int(count) { list.append(try cString(ns[i], "names[i]")) }
        }
        let ws = weights.map { w in (0..<Int(count)).map { w[$0] } }
        try l.setActive(list, weights: ws)
    }
}

/// Switches training mode (dropout on) or eval mode (dropout off). Layers start in training mode.
/// Errors: PST_ERR_INVALID_ARG (layer NULL).
@c(pstimpl_lora_set_training)
public func pst_lora_set_training(_ layer: UnsafeMutablePointer<pst_lora>?, _ training: Bool) -> pst_status {
    cEntry("pst_lora_set_training") { () throws(PSTError) in
        object(try required(layer, "layer"), as: LoraLinear.self).training = training
    }
}

/// Sets the precision of the layer's base products x W^T and dy W: PST_DTYPE_F32 (the default)
/// or PST_DTYPE_BF16 (operands rounded to bf16, fp32 sums, as bitsandbytes'
/// bnb_4bit_compute_dtype=torch.bfloat16; the LoRA branch and all gradients stay fp32).
/// Errors: PST_ERR_INVALID_ARG (layer NULL, another dtype), PST_ERR_UNSUPPORTED_CPU (bf16 without
/// AVX512_BF16, or with the kernels capped below PST_ISA_AVX512_BF16).
@c(pstimpl_lora_set_compute_dtype)
public func pst_lora_set_compute_dtype(_ layer: UnsafeMutablePointer<pst_lora>?, _ dtype: Int32) -> pst_status {
    cEntry("pst_lora_set_compute_dtype") { () throws(PSTError) in
        let l = object(try required(layer, "layer"), as: LoraLinear.self)
        try l.setComputeDType(try computeDType(dtype, "dtype"))
    }
}

/// y (m x out) = x (m x in) W^T + bias + sum over active adapters of w * s * dropout(x) A^T B^T.
/// x_count and y_capacity are in floats. In training mode the layer keeps what backward needs.
/// Errors: PST_ERR_INVALID_ARG (NULL, m < 1), PST_ERR_SHAPE (a buffer smaller than m rows).
@c(pstimpl_lora_forward)
public func pst_lora_forward(_ layer: UnsafeMutablePointer<pst_lora>?, _ x: UnsafePointer<Float>?, _ x_count: Int64, _ m: Int64,
                             _ y: UnsafeMutablePointer<Float>?, _ y_capacity: Int64) -> pst_status {
    cEntry("pst_lora_forward") { () throws(PSTError) in
        let l = object(try required(layer, "layer"), as: LoraLinear.self)
        let xp = try required(x, "x"), yp = try required(y, "y")
        let mm = try requireCount("m", m)
        try l.forward(UnsafeBufferPointer(start: xp, count: Int(x_count)), m: mm, UnsafeMutableBufferPointer(start: yp, count: Int(y_capacity)))
    }
}

/// Backward of the last forward from dy (m x out, dy_count floats): accumulates the adapters'
/// gradients (and the bias gradient when bias_grad), writes dx (m x in) when dx is not NULL
/// (dx_capacity floats). m must equal the last forward's.
/// Errors: PST_ERR_INVALID_ARG, PST_ERR_SHAPE, PST_ERR_MISUSE (no forward before).
@c(pstimpl_lora_backward)
public func pst_lora_backward(_ layer: UnsafeMutablePointer<pst_lora>?, _ dy: UnsafePointer<Float>?, _ dy_count: Int64, _ m: Int64,
                              _ dx: UnsafeMutablePointer<Float>?, _ dx_capacity: Int64, _ bias_grad: Bool) -> pst_status {
    cEntry("pst_lora_backward") { () throws(PSTError) in
        let l = object(try required(layer, "layer"), as: LoraLinear.self)
        let dyp = try required(dy, "dy")
        let mm = try requireCount("m", m)
        try l.backward(UnsafeBufferPointer(start: dyp, count: Int(dy_count)), m: mm,
                       dx: dx.map { UnsafeMutableBufferPointer(start: $0, count: Int(dx_capacity)) }, accumulateBiasGrad: bias_grad)
    }
}

/// Sets every adapter's gradients and the bias gradient to zero.
/// Errors: PST_ERR_INVALID_ARG (layer NULL).
@c(pstimpl_lora_zero_grad)
public func pst_lora_zero_grad(_ layer: UnsafeMutablePointer<pst_lora>?) -> pst_status {
    cEntry("pst_lora_zero_grad") { () throws(PSTError) in
        object(try required(layer, "layer"), as: LoraLinear.self).zeroGrad()
    }
}

/// Borrows one tensor of an adapter (which = PST_LORA_A, _B, _GRAD_A, _GRAD_B): *data points
/// into the layer's own storage (read and write it in place: this is how weights are loaded
/// and optimizers update them), valid until the adapter is deleted or the layer freed;
/// *rows and *cols give its row-major shape (A: r x in, B: out x r). rows/cols may be NULL.
/// Errors: PST_ERR_INVALID_ARG, PST_ERR_NOT_FOUND.
@c(pstimpl_lora_adapter_tensor)
public func pst_lora_adapter_tensor(_ layer: UnsafeMutablePointer<pst_lora>?, _ name: UnsafePointer<CChar>?, _ which: Int32,
                                    _ data: UnsafeMutablePointer<UnsafeMutablePointer<Float>?>?,
                                    _ rows: UnsafeMutablePointer<Int64>?, _ cols: UnsafeMutablePointer<Int64>?) -> pst_status {
    cEntry("pst_lora_adapter_tensor") { () throws(PSTError) in
        let l = object(try required(layer, "layer"), as: LoraLinear.self)
        let d = try required(data, "data")
        let a = try l.requireAdapter(try cString(name, "name"))
        let r = Int64(a.config.r)
        let (buf, shape): (AlignedBuffer<Float>, (Int64, Int64))
        switch which {
        case PST_LORA_A: (buf, shape) = (a.a, (r, Int64(l.inFeatures)))
        case PST_LORA_B: (buf, shape) = (a.b, (Int64(l.outFeatures), r))
        case PST_LORA_GRAD_A: (buf, shape) = (a.gradA, (r, Int64(l.inFeatures)))
        case PST_LORA_GRAD_B: (buf, shape) = (a.gradB, (Int64(l.outFeatures), r))
        default: throw .invalidArgument("which (\(which)) is not a PST_LORA_* tensor")
        }
        d.pointee = buf.baseAddress
        rows?.pointee = shape.0
        cols?.pointee = shape.1
    }
}

/// Writes an adapter's r, alpha, dropout, rsLoRA flag, weight in the active set, and whether
/// it is active and merged. Any output may be NULL; params->struct_size must be set (as
/// pst_lora_params_init sets it), and only that many bytes of *params are written.
/// Errors: PST_ERR_INVALID_ARG, PST_ERR_NOT_FOUND.
@c(pstimpl_lora_adapter_info)
public func pst_lora_adapter_info(_ layer: UnsafeMutablePointer<pst_lora>?, _ name: UnsafePointer<CChar>?,
                                  _ params: UnsafeMutablePointer<pst_lora_params>?, _ scaling: UnsafeMutablePointer<Float>?,
                                  _ active: UnsafeMutablePointer<Int32>?, _ weight: UnsafeMutablePointer<Float>?,
                                  _ merged: UnsafeMutablePointer<Int32>?) -> pst_status {
    cEntry("pst_lora_adapter_info") { () throws(PSTError) in
        let l = object(try required(layer, "layer"), as: LoraLinear.self)
        let out = try params.map { (p) throws(PSTError) in try structOutput(p, "params") }
        let a = try l.requireAdapter(try cString(name, "name"))
        if let out {
            let c = a.config
            out.store(pst_lora_params(struct_size: MemoryLayout<pst_lora_params>.size, r: Int32(c.r), alpha: c.alpha,
                                      dropout: c.dropout, use_rslora: c.useRslora ? 1 : 0, init: c.initialization.rawValue, seed: c.seed))
        }
        scaling?.pointee = a.scaling
        active?.pointee = l.active.contains { $0 === a } ? 1 : 0
        weight?.pointee = a.weight
        merged?.pointee = a.merged ? 1 : 0
    }
}

/// Borrows the bias and its gradient (out_features floats each); both NULL when the layer
/// has no bias. Valid until the layer is freed. Either output may be NULL.
/// Errors: PST_ERR_INVALID_ARG (layer NULL).
@c(pstimpl_lora_bias)
public func pst_lora_bias(_ layer: UnsafeMutablePointer<pst_lora>?, _ bias: UnsafeMutablePointer<UnsafeMutablePointer<Float>?>?,
                          _ grad_bias: UnsafeMutablePointer<UnsafeMutablePointer<Float>?>?) -> pst_status {
    cEntry("pst_lora_bias") { () throws(PSTError) in
        let l = object(try required(layer, "layer"), as: LoraLinear.self)
        bias?.pointee = l.bias?.baseAddress
        grad_bias?.pointee = l.gradBias?.baseAddress
    }
}

/// Merges adapters into the base weight: names[0 .. count), or the active unmerged ones when
/// count is 0. On a quantized base W is dequantized, the deltas added and W requantized with
/// the same settings; *max_abs_error and *rms_error (either may be NULL) receive the
/// requantization error over the weight (0 on a dense base). Merged adapters stop
/// contributing to forward until pst_lora_unmerge.
/// Errors: PST_ERR_INVALID_ARG, PST_ERR_NOT_FOUND, PST_ERR_MISUSE (already merged), PST_ERR_OUT_OF_MEMORY.
@c(pstimpl_lora_merge)
public func pst_lora_merge(_ layer: UnsafeMutablePointer<pst_lora>?, _ names: UnsafePointer<UnsafePointer<CChar>?>?, _ count: Int32,
                           _ max_abs_error: UnsafeMutablePointer<Float>?, _ rms_error: UnsafeMutablePointer<Float>?) -> pst_status {
    cEntry("pst_lora_merge") { () throws(PSTError) in
        let l = object(try required(layer, "layer"), as: LoraLinear.self)
        guard count >= 0 && count <= 4096 else { throw .invalidArgument("count (\(count)) must be in 0...4096") }
        var list: [String]? = nil
        if count > 0 {
            let ns = try required(names, "names")
            var ls: [String] = []
            for i in 0..<Int(count) { ls.append(try cString(ns[i], "names[i]")) }
            list = ls
        }
        let r = try l.merge(list)
        max_abs_error?.pointee = r.maxAbsError
        rms_error?.pointee = r.rmsError
    }
}

/// Takes every merged adapter out of the base weight (a quantized base gets its exact
/// pre-merge codes back). No merged adapter: nothing happens.
/// Errors: PST_ERR_INVALID_ARG (layer NULL).
@c(pstimpl_lora_unmerge)
public func pst_lora_unmerge(_ layer: UnsafeMutablePointer<pst_lora>?) -> pst_status {
    cEntry("pst_lora_unmerge") { () throws(PSTError) in
        try object(try required(layer, "layer"), as: LoraLinear.self).unmerge()
    }
}

/// Copies the effective base weight (dequantized when quantized; merged adapters included),
/// out x in floats, into out (capacity in floats).
/// Errors: PST_ERR_INVALID_ARG, PST_ERR_OUT_OF_MEMORY.
@c(pstimpl_lora_base_weight)
public func pst_lora_base_weight(_ layer: UnsafeMutablePointer<pst_lora>?, _ out: UnsafeMutablePointer<Float>?, _ capacity: Int64) -> pst_status {
    cEntry("pst_lora_base_weight") { () throws(PSTError) in
        let l = object(try required(layer, "layer"), as: LoraLinear.self)
        let o = try required(out, "out")
        try requireCapacity("out", have: capacity, need: l.inFeatures * l.outFeatures, unit: "floats")
        switch l.base {
        case .dense(let w): o.update(from: w.baseAddress, count: w.count)
        case .quantized(let q): q.dequantize(into: UnsafeMutableRawPointer(o), dtype: .f32)
        }
    }
}

// MARK: - The layer as a function (callers with their own autograd)

/// Fills *args with the defaults: every pointer NULL, m 0, r 0, scaling 1.
/// Errors: PST_ERR_INVALID_ARG (args NULL).
@c(pstimpl_lora_apply_args_init)
public func pst_lora_apply_args_init(_ args: UnsafeMutablePointer<pst_lora_apply_args>?) -> pst_status {
    cEntry("pst_lora_apply_args_init") { () throws(PSTError) in
        let a = try required(args, "args")
        var v = pst_lora_apply_args()
        v.struct_size = MemoryLayout<pst_lora_apply_args>.size
        v.scaling = 1
        a.pointee = v
    }
}

/// The checked contents of a pst_lora_apply_args: m, the branch (nil without one).
func readApplyArgs(_ args: UnsafePointer<pst_lora_apply_args>?, _ l: LoraLinear)
    throws(PSTError) -> (pst_lora_apply_args, Int, LoraBranch?) {
    var d = pst_lora_apply_args()
    _ = pst_lora_apply_args_init(&d)
    let a = try readStruct(try required(args, "args"), over: d, "args")
    let m = try requireCount("args->m", a.m)
    var branch: LoraBranch? = nil
    switch (a.lora_a, a.lora_b) {
    case (nil, nil): break
    case (let pa?, let pb?):
        guard a.r >= 1, a.r <= Int64(min(l.inFeatures, l.outFeatures)) else {
            throw .invalidArgument("args->r (\(a.r)) must be in 1...min(in_features, out_features) (\(min(l.inFeatures, l.outFeatures)))")
        }
        branch = LoraBranch(a: pa, b: pb, r: Int(a.r), scaling: a.scaling)
    default:
        throw .invalidArgument("args->lora_a and args->lora_b must both be given or both be NULL")
    }
    return (a, m, branch)
}

/// y (m x out, y_capacity floats) = x W^T + bias + scaling * (x_lora A^T) B^T, everything but W
/// from *args (see pst_lora_apply_args); without a branch, x W^T + bias. t, when not NULL,
/// receives x_lora A^T (m x r floats) for pst_lora_apply_backward. The layer's own adapters,
/// training mode, dropout and forward cache are neither used nor changed, so a layer may be
/// applied any number of times before any backward. y and t must not alias an input.
/// One call at a time per layer.
/// Errors: PST_ERR_INVALID_ARG (NULL layer/args/x/y, m < 1, a bad r or scaling, lora_a without
/// lora_b, struct_size), PST_ERR_OUT_OF_MEMORY.
@c(pstimpl_lora_apply)
public func pst_lora_apply(_ layer: UnsafeMutablePointer<pst_lora>?, _ args: UnsafePointer<pst_lora_apply_args>?,
                           _ y: UnsafeMutablePointer<Float>?, _ y_capacity: Int64, _ t: UnsafeMutablePointer<Float>?) -> pst_status {
    cEntry("pst_lora_apply") { () throws(PSTError) in
        let l = object(try required(layer, "layer"), as: LoraLinear.self)
        let (a, m, branch) = try readApplyArgs(args, l)
        let x = try required(a.x, "args->x")
        let yp = try required(y, "y")
        try l.checkApply(m: m, branch: branch)
        try requireCapacity("y", have: y_capacity, need: m * l.outFeatures, unit: "floats")
        try l.apply(x: x, xLora: a.x_lora, m: m, branch: branch, bias: a.bias, y: yp, t: t)
    }
}

/// Gradients of pst_lora_apply with the same *args, from dy (m x out, dy_count floats). Each
/// output that is not NULL is written (overwritten, not accumulated), with these shapes:
///   dx        m x in   dy W, plus scaling (dy B) A when args->x_lora is NULL (the branch's
///                      input is then x: both gradients of x in one buffer)
///   dx_lora   m x in   scaling (dy B) A: the gradient of x_lora (the caller's dropout(x));
///                      only with args->x_lora
///   grad_a    r x in   scaling (dy B)^T x_lora
///   grad_b    out x r  scaling dy^T (x_lora A^T)
///   grad_bias out      the column sums of dy
/// The branch's input is args->x_lora, or args->x when it is NULL: backward is GIVEN it (the
/// caller's autograd saved it), nothing comes from an earlier forward. t (m x r) is
/// pst_lora_apply's, or NULL to recompute it. The base W gets no gradient.
/// Errors: PST_ERR_INVALID_ARG (NULL layer/args/dy, m < 1, dx_lora/grad_a/grad_b without a
/// branch, dx_lora without x_lora, grad_a without x_lora or x, dy_count too small),
/// PST_ERR_OUT_OF_MEMORY.
@c(pstimpl_lora_apply_backward)
public func pst_lora_apply_backward(_ layer: UnsafeMutablePointer<pst_lora>?, _ args: UnsafePointer<pst_lora_apply_args>?,
                                    _ dy: UnsafePointer<Float>?, _ dy_count: Int64, _ t: UnsafePointer<Float>?,
                                    _ dx: UnsafeMutablePointer<Float>?, _ dx_lora: UnsafeMutablePointer<Float>?,
                                    _ grad_a: UnsafeMutablePointer<Float>?, _ grad_b: UnsafeMutablePointer<Float>?,
                                    _ grad_bias: UnsafeMutablePointer<Float>?) -> pst_status {
    cEntry("pst_lora_apply_backward") { () throws(PSTError) in
        let l = object(try required(layer, "layer"), as: LoraLinear.self)
        let (a, m, branch) = try readApplyArgs(args, l)
        let dyp = try required(dy, "dy")
        try l.checkApply(m: m, branch: branch)
        try requireCapacity("dy", have: dy_count, need: m * l.outFeatures, unit: "floats")
        try l.applyBackward(dy: dyp, m: m, x: a.x, xLora: a.x_lora, branch: branch, t: t, dx: dx, dxLora: dx_lora,
                            gradA: grad_a, gradB: grad_b, gradBias: grad_bias)
    }
}
