import CPeftSwift
#if canImport(Glibc)
import Glibc
#endif

// C API of the model's LoRA adapters: attaching, choosing, deleting, saving and loading them
// (PEFT directories), and their tensors by module path. The handle and the helpers are in
// CAPI+LLM.swift.

/// Adds an adapter called name (NULL: "default") to the target_modules projections of every
/// layer (comma-separated: q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, down_proj; NULL:
/// all seven) with params (NULL: pst_lora_params_init's defaults). Each projection's A gets its
/// own seed derived from params->seed; B starts at zero. All or nothing. It becomes active
/// wherever it is the first adapter; use pst_llm_set_adapter to choose.
/// Errors: PST_ERR_INVALID_ARG, PST_ERR_EXISTS, PST_ERR_MISUSE (handle busy), PST_ERR_OUT_OF_MEMORY.
@c(pstimpl_llm_add_adapter)
public func pst_llm_add_adapter(_ llm: UnsafeMutablePointer<pst_llm>?, _ name: UnsafePointer<CChar>?,
                                _ params: UnsafePointer<pst_lora_params>?, _ target_modules: UnsafePointer<CChar>?) -> Int32 {
    llmEntry("pst_llm_add_adapter", llm) { (h) throws(PSTError) in
        let n = try cStringOrNil(name, "name") ?? "default"
        let p = try readParams(params, pst_lora_params_init, pst_lora_params(), "pst_lora_params")
        guard let ini = LoraInit(rawValue: p.`init`) else {
            throw .invalidArgument("params->init (\(p.`init`)) is not a PST_LORA_INIT_* value")
        }
        let targets = try targetModuleList(target_modules, "target_modules")
        let cfg = LoraConfig(r: Int(p.r), alpha: p.alpha, dropout: p.dropout, useRslora: p.use_rslora != 0,
                             initialization: ini, seed: p.seed)
        try h.exclusive { () throws(PSTError) in
            guard !h.model.hasAdapter(n) else { throw .exists("adapter \"\(n)\" is already attached") }
            try h.model.addAdapter(n, config: cfg, targetModules: targets)
        }
    }
}

/// Deletes the adapter called name from every projection.
/// Errors: PST_ERR_INVALID_ARG, PST_ERR_NOT_FOUND, PST_ERR_MISUSE (merged, handle busy).
@c(pstimpl_llm_delete_adapter)
public func pst_llm_delete_adapter(_ llm: UnsafeMutablePointer<pst_llm>?, _ name: UnsafePointer<CChar>?) -> Int32 {
    llmEntry("pst_llm_delete_adapter", llm) { (h) throws(PSTError) in
        let n = try cString(name, "name")
        try h.exclusive { () throws(PSTError) in try h.model.deleteAdapter(n) }
    }
}

/// Makes name the only active adapter on every projection that has it (others: none active);
/// name NULL disables all adapters (the base model alone).
/// Errors: PST_ERR_INVALID_ARG, PST_ERR_NOT_FOUND (no projection has it), PST_ERR_MISUSE.
@c(pstimpl_llm_set_adapter)
public func pst_llm_set_adapter(_ llm: UnsafeMutablePointer<pst_llm>?, _ name: UnsafePointer<CChar>?) -> Int32 {
    llmEntry("pst_llm_set_adapter", llm) { (h) throws(PSTError) in
        let n = try cStringOrNil(name, "name")
        try h.exclusive { () throws(PSTError) in try h.model.setAdapter(n) }
    }
}

/// The number of projections (layers * 7), each addressable by its Hugging Face module path.
/// Errors: PST_ERR_INVALID_ARG.
@c(pstimpl_llm_module_count)
public func pst_llm_module_count(_ llm: UnsafeMutablePointer<pst_llm>?, _ count: UnsafeMutablePointer<Int64>?) -> Int32 {
    llmEntry("pst_llm_module_count", llm) { (h) throws(PSTError) in
        try required(count, "count").pointee = Int64(h.modulePaths.count)
    }
}

/// The index-th projection's module path ("model.layers.0.self_attn.q_proj", PEFT's key
/// prefix), owned by the handle (valid until pst_llm_free).
/// Errors: PST_ERR_INVALID_ARG (NULL, index out of range).
@c(pstimpl_llm_module_at)
public func pst_llm_module_at(_ llm: UnsafeMutablePointer<pst_llm>?, _ index: Int64,
                              _ path: UnsafeMutablePointer<UnsafePointer<CChar>?>?) -> Int32 {
    llmEntry("pst_llm_module_at", llm) { (h) throws(PSTError) in
        let o = try required(path, "path")
        o.pointee = nil
        guard index >= 0 && index < Int64(h.modulePaths.count) else {
            throw .invalidArgument("index (\(index)) must be in 0..<\(h.modulePaths.count)")
        }
        o.pointee = h.modulePaths[Int(index)].cString
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
    llmEntry("pst_llm_adapter_tensor", llm) { (h) throws(PSTError) in
        let d = try required(data, "data")
        d.pointee = nil
        let path = try cString(module_path, "module_path")
        let name = try cStringOrNil(adapter, "adapter") ?? "default"
        guard (PST_LORA_A...PST_LORA_GRAD_B).contains(which) else {
            throw .invalidArgument("which (\(which)) is not PST_LORA_A, _B, _GRAD_A or _GRAD_B")
        }
        guard let lin = h.model.module(path: path) else {
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
    llmEntry("pst_llm_save_adapter", llm) { (h) throws(PSTError) in
        let name = try cStringOrNil(adapter, "adapter") ?? "default"
        let dir = try cString(directory, "directory")
        try h.exclusive { () throws(PSTError) in try h.model.saveAdapter(name, to: dir) }
    }
}

/// Loads a PEFT adapter directory (made by PEFT or peftswift for this model) as adapter `name`
/// (NULL: "default"); all or nothing. It becomes active wherever it is the first adapter.
/// Errors: PST_ERR_INVALID_ARG (a tensor for no projection of this model), PST_ERR_SHAPE, PST_ERR_NOT_FOUND,
/// PST_ERR_EXISTS, PST_ERR_CORRUPT, PST_ERR_UNSUPPORTED, PST_ERR_IO, PST_ERR_MISUSE.
@c(pstimpl_llm_load_adapter)
public func pst_llm_load_adapter(_ llm: UnsafeMutablePointer<pst_llm>?, _ directory: UnsafePointer<CChar>?,
                                 _ name: UnsafePointer<CChar>?) -> Int32 {
    llmEntry("pst_llm_load_adapter", llm) { (h) throws(PSTError) in
        let dir = try cString(directory, "directory")
        let n = try cStringOrNil(name, "name") ?? "default"
        try h.exclusive { () throws(PSTError) in try h.model.loadAdapter(from: dir, as: n) }
    }
}
