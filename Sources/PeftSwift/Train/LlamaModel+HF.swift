#if canImport(Glibc)
import Glibc
#endif

extension HFConfigValue {
    /// The engine's JSON value as an HF config value (integer literals → .int).
    init(_ v: JSONValue) {
        switch v {
        case .null: self = .null
        case .bool(let b): self = .bool(b)
        case .number(let n): self = n.isIntegerLiteral ? (n.int.map { .int($0) } ?? .double(n.double)) : .double(n.double)
        case .string(let s): self = .string(s)
        case .array(let a): self = .array(a.map { HFConfigValue($0) })
        case .object(let o):
            var d: [String: HFConfigValue] = [:]
            for m in o.members { d[m.key] = HFConfigValue(m.value) }
            self = .object(d)
        }
    }
}

extension LlamaModel {
    /// Loads a Hugging Face Llama checkpoint directory: `config.json` (model_type / architectures
    /// must be llama) and `model.safetensors` or a sharded `model.safetensors.index.json`
    /// (F32/BF16/F16 tensors, converted to fp32 one at a time), quantized to NF4 + double
    /// quantization as each projection loads when `qlora`.
    ///
    /// Throws `PST_ERR_NOT_FOUND` for a missing config/weights file or tensor,
    /// `PST_ERR_UNSUPPORTED` for another architecture or dtype, `PST_ERR_CORRUPT` for a tensor
    /// whose shape disagrees with config.json.
    public convenience init(huggingFaceDirectory dir: String, qlora: Bool = false) throws(PSTError) {
        try self.init(huggingFaceDirectory: dir, options: qlora ? .qlora : .dense)
    }

    /// `init(huggingFaceDirectory:qlora:)` with explicit load options.
    public convenience init(huggingFaceDirectory dir: String, options: LlamaLoadOptions) throws(PSTError) {
        let cpath = dir + "/config.json"
        let root = try JSON.parse(try FileSystem.readAll(cpath, limit: 16 << 20), source: cpath)
        guard case .object(let cfg) = HFConfigValue(root) else { throw .corrupt("\(cpath): not a JSON object") }
        var isLlama = false
        if case .string(let t)? = cfg["model_type"] { isLlama = t == "llama" }
        if case .array(let archs)? = cfg["architectures"], archs.contains(.string("LlamaForCausalLM")) { isLlama = true }
        guard isLlama else {
            var t = "unknown"
            if case .string(let s)? = cfg["model_type"] { t = s }
            throw .unsupported("\(cpath): model_type '\(t)' (only llama is supported)")
        }
        let lc: LlamaConfig
        let hp: LlamaHyperparameters
        do {
            lc = try LlamaConfig(hfConfig: cfg)
            hp = try LlamaHyperparameters(lc)
        } catch { throw PSTError(status: error.status, "\(cpath): \(error.message)") }
        // the weights: one file or shards listed by the index
        var files: [String: SafeTensorsFile] = [:]
        var whereIs: [String: String] = [:]
        let single = dir + "/model.safetensors", index = dir + "/model.safetensors.index.json"
        if access(single, F_OK) == 0 {
            let f = try SafeTensorsFile(path: single)
            files[single] = f
            for n in f.names { whereIs[n] = single }
        } else if access(index, F_OK) == 0 {
            let ij = try JSON.parse(try FileSystem.readAll(index, limit: 64 << 20), source: index)
            guard let wm = ij.objectValue?["weight_map"]?.objectValue else { throw .corrupt("\(index): no 'weight_map' object") }
            for m in wm.members {
                guard let shard = m.value.stringValue, !shard.contains("/") else {
                    throw .corrupt("\(index): weight_map entry '\(m.key)' is not a file name")
                }
                whereIs[m.key] = dir + "/" + shard
            }
        } else {
            throw .notFound("\(dir): neither model.safetensors nor model.safetensors.index.json")
        }
        try self.init(config: hp, options: options) { (name: String, shape: [Int], dst: UnsafeMutableBufferPointer<Float>) throws(PSTError) in
            guard let path = whereIs[name] else { throw .notFound("\(dir): tensor '\(name)' is missing") }
            let f: SafeTensorsFile
            if let o = files[path] { f = o } else { f = try SafeTensorsFile(path: path); files[path] = f }
            guard f.contains(name) else { throw .notFound("\(path): tensor '\(name)' is missing") }
            let v = try f.tensor(name)
            guard [.f32, .bf16, .f16].contains(v.dtype) else {
                throw .unsupported("\(path): tensor '\(name)' is \(v.dtype.rawValue) (supported: F32, BF16, F16)")
            }
            guard v.shape == shape else {
                throw .corrupt("\(path): tensor '\(name)' has shape \(v.shape), config.json needs \(shape)")
            }
            try v.copyFloats(into: dst)
        }
        _ = lc
    }
}
