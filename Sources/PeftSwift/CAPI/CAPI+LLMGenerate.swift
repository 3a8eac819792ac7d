import CPeftSwift
#if canImport(Glibc)
import Glibc
#endif

// C API of text generation: a KV-cache decode of the model, greedy or sampled, streaming each
// token to a callback. The handle and the helpers are in CAPI+LLM.swift.

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
public func pst_llm_generate(_ llm: UnsafeMutablePointer<pst_llm>?, _ prompt: UnsafePointer<Int32>?, _ prompt_count: Int64,
                             _ params: UnsafePointer<pst_generate_params>?, _ callback: pst_token_callback?,
                             _ user: UnsafeMutableRawPointer?, _ out: UnsafeMutablePointer<Int32>?, _ capacity: Int64,
                             _ count: UnsafeMutablePointer<Int64>?) -> Int32 {
    llmEntry("pst_llm_generate", llm) { (h) throws(PSTError) in
        let n = try zeroedOutput(count, "count")
        guard prompt_count >= 1 && prompt_count <= 1 << 24 else {
            throw .invalidArgument("prompt_count (\(prompt_count)) must be in 1...\(1 << 24)")
        }
        guard capacity >= 0 else { throw .invalidArgument("capacity (\(capacity)) must be >= 0") }
        if capacity > 0 { _ = try required(out, "out") }
        let ids = Array(UnsafeBufferPointer(start: try required(prompt, "prompt"), count: Int(prompt_count)))
        let gp = try readParams(params, pst_generate_params_init, pst_generate_params(), "pst_generate_params")
        guard gp.max_new_tokens >= 0 else { throw .invalidArgument("params->max_new_tokens (\(gp.max_new_tokens)) must be >= 0") }
        guard gp.stop_count >= 0 && gp.stop_count <= 4096 else {
            throw .invalidArgument("params->stop_count (\(gp.stop_count)) must be in 0...4096")
        }
        var stops: [Int32] = []
        if gp.stop_count > 0 {
            guard let s = gp.stop_ids else { throw .invalidArgument("params->stop_ids is NULL with stop_count \(gp.stop_count)") }
            stops = Array(UnsafeBufferPointer(start: s, count: Int(gp.stop_count)))
        }
        if gp.stop_at_eos != 0, let tok = h.tokenizer { stops += GenerationOptions.defaultStopIDs(tok) }
        let opts = GenerationOptions(maxNewTokens: Int(gp.max_new_tokens), temperature: gp.temperature, topP: gp.top_p,
                                     topK: Int(gp.top_k), seed: gp.seed, stopIDs: stops, disableAdapters: gp.disable_adapters != 0)
        let tok = h.tokenizer
        let result = try h.exclusive { () throws(PSTError) -> GenerationResult in
            try h.model.generate(prompt: ids, options: opts) { t in
                guard let callback else { return true }
                let bytes = tok?.bytes(of: t) ?? []
                let r = bytes.withUnsafeBufferPointer { bp in
                    bp.withMemoryRebound(to: CChar.self) { callback(t, $0.baseAddress, $0.count, user) }
                }
                return r == 0
            }
        }
        let k = min(result.tokens.count, Int(capacity))
        if k > 0, let out { result.tokens.withUnsafeBufferPointer { out.update(from: $0.baseAddress!, count: k) } }
        n.pointee = Int64(result.tokens.count)
    }
}
