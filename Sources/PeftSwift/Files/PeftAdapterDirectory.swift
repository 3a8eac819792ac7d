import CPeftSwift

// PEFT adapter directories (peft 0.21.2 PeftModel.save_pretrained / from_pretrained, measured;
// FORMATS.md §1 and §5):
//   adapter_config.json         json.dumps(config, indent=2, sort_keys=True)
//   adapter_model.safetensors   base_model.model.<module path>.lora_A.weight  [r, in]  F32
//                               base_model.model.<module path>.lora_B.weight  [out, r] F32
//                               __metadata__ {"format": "pt"}
// (PEFT drops the adapter name from the keys; a model saved with several adapters puts the
// non-default ones in sub-directories named after them.)

/// A layer of a model and its module path (`model.layers.0.self_attn.q_proj`).
public struct PeftModule {
    public let path: String
    public let layer: LoraLinear
    public init(_ path: String, _ layer: LoraLinear) { self.path = path; self.layer = layer }
}

public enum PeftAdapterDirectory {
    public static let configFileName = "adapter_config.json"
    public static let weightsFileName = "adapter_model.safetensors"

    /// The safetensors keys of a module's A and B.
    public static func tensorNames(forModule path: String) -> (a: String, b: String) {
        ("base_model.model.\(path).lora_A.weight", "base_model.model.\(path).lora_B.weight")
    }

    static func checkAdapterName(_ name: String) throws(PSTError) {
        guard !name.isEmpty, name.utf8.count <= 255, !name.contains(".") else {
            throw .invalidArgument("adapter name \(quoted(name)) must be 1...255 bytes without '.'")
        }
    }

    static func checkModules(_ modules: [PeftModule]) throws(PSTError) {
        guard !modules.isEmpty else { throw .invalidArgument("no modules given") }
        var paths = Set<String>(), layers = Set<ObjectIdentifier>()
        for m in modules {
            guard !m.path.isEmpty, !m.path.hasPrefix("."), !m.path.hasSuffix("."), !m.path.contains("..") else {
                throw .invalidArgument("module path \(quoted(m.path)) is not a dotted module name")
            }
            guard paths.insert(m.path).inserted else { throw .invalidArgument("module path \(quoted(m.path)) given twice") }
            guard layers.insert(ObjectIdentifier(m.layer)).inserted else {
                throw .invalidArgument("the layer of module \(quoted(m.path)) is also given under another path")
            }
        }
    }

    // MARK: - Save

    /// Saves adapter `adapter` of every module as PEFT's save_pretrained does: creates
    /// `directory` (and parents) if needed, then writes adapter_model.safetensors and
    /// adapter_config.json, each atomically (an existing file is replaced whole or left as it
    /// was; the pair is not replaced as one unit).
    ///
    /// The config's `r` / `lora_alpha` are the most common values among the modules; modules
    /// that differ get `rank_pattern` / `alpha_pattern` entries keyed by their full path (as
    /// PEFT matches them). Every module's adapter must have the same dropout and use_rslora
    /// (PEFT has no per-module setting for them). `target_modules` is the sorted list of the
    /// distinct last path components (PEFT writes its set in hash order). Returns the config
    /// written.
    @discardableResult
    public static func save(adapter: String, of modules: [PeftModule], to directory: String,
                            baseModelNameOrPath: String? = nil, taskType: String? = nil,
                            inferenceMode: Bool = true) throws(PSTError) -> PeftLoraConfig {
        try checkAdapterName(adapter)
        try checkModules(modules)
        var adapters: [LoraAdapter] = []
        for m in modules {
            guard let a = m.layer.adapter(named: adapter) else {
                throw .notFound("module \(quoted(m.path)) has no adapter \(quoted(adapter))")
            }
            adapters.append(a)
        }
        let first = adapters[0].config
        for (m, a) in zip(modules, adapters) {
            guard a.config.dropout == first.dropout else {
                throw .invalidArgument("module \(quoted(m.path)) has lora_dropout \(a.config.dropout), module \(quoted(modules[0].path)) \(first.dropout); PEFT stores one dropout per adapter")
            }
            guard a.config.useRslora == first.useRslora else {
                throw .invalidArgument("module \(quoted(m.path)) has use_rslora \(a.config.useRslora), module \(quoted(modules[0].path)) \(first.useRslora); PEFT stores one setting per adapter")
            }
        }
        func mostCommon<T: Hashable>(_ values: [T]) -> T {
            var counts: [T: Int] = [:]
            for v in values { counts[v, default: 0] += 1 }
            return values.max { counts[$0]! < counts[$1]! } ?? values[0]
        }
        // float32 settings as the value a user would have typed (0.05, not 0.05000000074505806)
        func literal(_ f: Float) -> Double { Double(f.description) ?? Double(f) }
        var c = PeftLoraConfig()
        c.r = mostCommon(adapters.map { $0.config.r })
        let alpha = mostCommon(adapters.map { $0.config.alpha })
        c.loraAlpha = literal(alpha)
        c.loraDropout = literal(first.dropout)
        c.useRslora = first.useRslora
        for (m, a) in zip(modules, adapters) {
            if a.config.r != c.r { c.rankPattern.append(PeftPatternEntry(m.path, a.config.r)) }
            if a.config.alpha != alpha { c.alphaPattern.append(PeftPatternEntry(m.path, literal(a.config.alpha))) }
        }
        // A path that is a dotted suffix of another would capture that module's pattern too.
        for (m, a) in zip(modules, adapters) {
            guard c.rank(forModule: m.path) == a.config.r, c.alpha(forModule: m.path) == literal(a.config.alpha) else {
                throw .unsupported("module \(quoted(m.path)): its rank/alpha cannot be expressed with PEFT patterns next to the other modules' (one path is a suffix of another)")
            }
        }
        var last = Set<String>()
        for m in modules { last.insert(String(m.path.split(separator: ".").last ?? Substring(m.path))) }
        c.targetModules = .names(last.sorted())
        switch first.initialization {
        case .kaiming: c.initLoraWeights = .bool(true)
        case .gaussian: c.initLoraWeights = .string("gaussian")
        case .zeros: c.initLoraWeights = .bool(false)
        }
        c.baseModelNameOrPath = baseModelNameOrPath
        c.taskType = taskType
        c.inferenceMode = inferenceMode
        c.peftVersion = "0.21.2"   // the PEFT release whose format this is

        var entries: [SafeTensorsEntry] = []
        for (m, a) in zip(modules, adapters) {
            let (ka, kb) = tensorNames(forModule: m.path)
            entries.append(SafeTensorsEntry(name: ka, dtype: .f32, shape: [a.config.r, a.inFeatures], buffer: a.a))
            entries.append(SafeTensorsEntry(name: kb, dtype: .f32, shape: [a.outFeatures, a.config.r], buffer: a.b))
        }
        try FileSystem.makeDirectories(directory)
        try SafeTensorsWriter.write(entries, metadata: [("format", "pt")], to: directory + "/" + weightsFileName)
        try AtomicFile.write(directory + "/" + configFileName, bytes: c.serialized())
        return c
    }

    // MARK: - Load

    /// Reads `directory`'s adapter_config.json.
    public static func readConfig(_ directory: String) throws(PSTError) -> PeftLoraConfig {
        let path = directory + "/" + configFileName
        let bytes = try FileSystem.readAll(path, limit: 16 << 20)
        return try PeftLoraConfig.parse(bytes, source: path)
    }

    /// Loads the adapter saved in `directory` into every module under the name `name`,
    /// all-or-nothing: the config is read and type-checked, every module's lora_A / lora_B is
    /// found (`PST_ERR_NOT_FOUND`), checked against the layer and the config's rank for that
    /// module (`PST_ERR_SHAPE`), converted to float32 (F32, F16 or BF16 in the file) and
    /// checked finite (`PST_ERR_NONFINITE`) into new adapters before any layer is touched; only
    /// then is the adapter added to each layer (active if it is the layer's first adapter, as
    /// `addAdapter`). With `strict` (the default) a tensor in the file that belongs to none of
    /// the given modules is an error (`PST_ERR_INVALID_ARG`), as it means the caller's model
    /// does not match the adapter. The adapter name must be new in every layer
    /// (`PST_ERR_EXISTS`). Returns the config read.
    @discardableResult
    public static func load(from directory: String, into modules: [PeftModule], as name: String,
                            strict: Bool = true) throws(PSTError) -> PeftLoraConfig {
        try checkAdapterName(name)
        try checkModules(modules)
        for m in modules where m.layer.adapter(named: name) != nil {
            throw .exists("module \(quoted(m.path)) already has an adapter \(quoted(name))")
        }
        let config = try readConfig(directory)
        let file = try SafeTensorsFile(path: directory + "/" + weightsFileName)
        try _load(config: config, file: file, into: modules, as: name, strict: strict)
        return config
    }

    /// `load` after the files are read (arguments already checked): validates everything,
    /// then attaches. Internal so that the fuzzer can drive it from memory.
    static func _load(config: PeftLoraConfig, file: SafeTensorsFile, into modules: [PeftModule], as name: String,
                      strict: Bool) throws(PSTError) {
        let fp = file.path
        var used = Set<String>()
        var prepared: [LoraAdapter] = []
        for m in modules {
            let layer = m.layer
            let (ka, kb) = tensorNames(forModule: m.path)
            let r = config.rank(forModule: m.path)
            let q = quoted(m.path)
            guard file.contains(ka) else { throw .notFound("\(fp): no tensor \(quoted(ka)) for module \(q)") }
            guard file.contains(kb) else { throw .notFound("\(fp): no tensor \(quoted(kb)) for module \(q)") }
            let va = try file.tensor(ka), vb = try file.tensor(kb)
            for v in [va, vb] where ![.f32, .f16, .bf16].contains(v.dtype) {
                throw .corrupt("\(fp): tensor \(quoted(v.name)) is \(v.dtype.rawValue); LoRA weights are F32, F16 or BF16")
            }
            let rankSource = config.rankPattern.contains { PeftLoraConfig.patternMatches($0.key, m.path) } ? "rank_pattern" : "r"
            guard va.shape == [r, layer.inFeatures] else {
                throw .shape("\(fp): tensor \(quoted(ka)) has shape \(va.shape); module \(q) needs [r, in_features] = [\(r), \(layer.inFeatures)] (r from the config's \(rankSource))")
            }
            guard vb.shape == [layer.outFeatures, r] else {
                throw .shape("\(fp): tensor \(quoted(kb)) has shape \(vb.shape); module \(q) needs [out_features, r] = [\(layer.outFeatures), \(r)] (r from the config's \(rankSource))")
            }
            let lc = config.loraConfig(forModule: m.path)
            guard r <= min(layer.inFeatures, layer.outFeatures) else {
                throw .unsupported("\(fp): module \(q) has rank \(r) > min(in_features, out_features) = \(min(layer.inFeatures, layer.outFeatures)), which peftswift's LoraLinear does not support")
            }
            guard lc.alpha.isFinite, lc.alpha > 0 else {
                throw .unsupported("\(fp): module \(q): lora_alpha \(config.alpha(forModule: m.path)) does not fit a float32")
            }
            let adapter: LoraAdapter
            do throws(PSTError) {
                adapter = try LoraAdapter(name: name, config: lc, inFeatures: layer.inFeatures, outFeatures: layer.outFeatures)
            } catch {
                // LoraConfig's checks on values from the file: invalid arguments are corruption
                let status = error.status == PST_ERR_INVALID_ARG ? PST_ERR_CORRUPT : error.status
                throw PSTError(status: status, "\(fp): module \(q): \(error.message)")
            }
            try va.copyFloats(into: adapter.a.buffer)
            try vb.copyFloats(into: adapter.b.buffer)
            for (buf, key) in [(adapter.a, ka), (adapter.b, kb)] {
                for i in 0..<buf.count where !buf[i].isFinite {
                    throw .nonFinite("\(fp): tensor \(quoted(key)) element \(i) is \(buf[i])")
                }
            }
            used.insert(ka); used.insert(kb)
            prepared.append(adapter)
        }
        if strict, let extra = file.names.first(where: { !used.contains($0) }) {
            let others = file.names.filter { !used.contains($0) }.count
            throw .invalidArgument("\(fp): tensor \(quoted(extra))\(others > 1 ? " (and \(others - 1) more)" : "") belongs to none of the given modules (load with strict: false to ignore)")
        }
        for (m, a) in zip(modules, prepared) { m.layer._attachLoadedAdapter(a) }
    }
}

extension LoraLinear {
    /// Adds a fully built adapter (name already checked to be new), with `addAdapter`'s
    /// activation rule. Cannot fail, so a multi-layer load commits all layers or none.
    func _attachLoadedAdapter(_ a: LoraAdapter) {
        adapters.append(a)
        if adapters.count == 1 { active = [a] }
        invalidateCache()
    }
}
