// The model's LoRA adapters: attaching, choosing, deleting, saving and loading them (PEFT
// directories), their trainable tensors, and the module paths they are keyed by.

extension LanguageModel {
    /// PEFT's target names of every projection of the family (all seven: the QLoRA default).
    public var projectionNames: [String] { config.architecture.projectionNames }

    /// The projection at `path` (`model.layers.0.self_attn.q_proj`), or nil.
    public func module(path: String) -> LoraLinear? { moduleIndex[path].map { loraModules[$0].layer } }

    /// Whether any projection has an adapter called `name`.
    public func hasAdapter(_ name: String) -> Bool { loraModules.contains { $0.layer.adapter(named: name) != nil } }

    /// The names of the attached adapters, each once, in the order the projections first show them.
    public var adapterNames: [String] {
        var seen = Set<String>(), out: [String] = []
        for (_, lin) in loraModules { for a in lin.adapters where seen.insert(a.name).inserted { out.append(a.name) } }
        return out
    }

    /// Adds adapter `name` to every `targetModules` projection of every layer (names from
    /// `projectionNames`, also accepted with their `self_attn.` / `mlp.` prefix; nil: all).
    /// Each projection's A is drawn from its own seed (config.seed mixed with layer and module),
    /// B = 0. All or nothing: on error no layer keeps the adapter.
    public func addAdapter(_ name: String, config lora: LoraConfig, targetModules: [String]? = nil) throws(PSTError) {
        let names = projectionNames
        var targets = Set<Int>()
        for t in targetModules ?? names {
            let short = t.split(separator: ".").last.map(String.init) ?? t
            guard let j = names.firstIndex(of: short) else {
                throw .invalidArgument("target module \"\(t)\" is not one of \(names)")
            }
            targets.insert(j)
        }
        guard !targets.isEmpty else { throw .invalidArgument("target_modules is empty") }
        var added: [LoraLinear] = []
        do {
            for l in layers {
                for (j, lin) in l.linears.enumerated() where targets.contains(j) {
                    var c = lora
                    c.seed = lora.seed &+ UInt64(l.index * names.count + j + 1) &* 0x9E37_79B9_7F4A_7C15
                    try lin.addAdapter(name, config: c)
                    added.append(lin)
                }
            }
        } catch {
            for lin in added { try? lin.deleteAdapter(name) }
            throw error
        }
        dropState()
    }

    /// Deletes adapter `name` wherever it is attached.
    public func deleteAdapter(_ name: String) throws(PSTError) {
        var found = false
        for (_, lin) in loraModules where lin.adapter(named: name) != nil {
            try lin.deleteAdapter(name)
            found = true
        }
        guard found else { throw .notFound("adapter \"\(name)\" is attached to no module") }
        dropState()
    }

    /// Makes `name` the only active adapter on every projection that has it, and no adapter
    /// active on the others; nil disables every adapter (the base model alone).
    /// `PST_ERR_NOT_FOUND` when no projection has it.
    public func setAdapter(_ name: String?) throws(PSTError) {
        if let name {
            guard hasAdapter(name) else { throw .notFound("adapter \"\(name)\" is attached to no module") }
            for (_, lin) in loraModules {
                if lin.adapter(named: name) != nil { try lin.setActive([name]) } else { try lin.setActive([]) }
            }
        } else {
            for (_, lin) in loraModules { try lin.setActive([]) }
        }
        dropState()
    }

    /// Makes `name` the only active adapter on the projections that have it; the others keep
    /// their active sets (a run training one adapter on some projections).
    public func activateAdapter(_ name: String) throws(PSTError) {
        for (_, lin) in loraModules where lin.adapter(named: name) != nil { try lin.setActive([name]) }
    }

    /// Runs `body` with every projection's active set emptied (merged adapters cannot be taken
    /// out: `PST_ERR_MISUSE`), restoring the active sets afterwards, also on error.
    public func withAdaptersDisabled<R>(_ body: () throws(PSTError) -> R) throws(PSTError) -> R {
        let mods = loraModules
        for (path, lin) in mods {
            if let a = lin.adapters.first(where: { $0.merged }) {
                throw .misuse("adapter \"\(a.name)\" is merged into \(path); unmerge it to generate without adapters")
            }
        }
        let saved = mods.map { $0.layer.active }
        for (_, lin) in mods { lin.disableAdapters() }
        defer {
            for (i, (_, lin)) in mods.enumerated() { lin.active = saved[i]; lin.invalidateCache() }
        }
        return try body()
    }

    /// The trainable tensors (lora_A then lora_B of each adapted projection, in `loraModules`
    /// order) of adapter `adapter`, or of every adapter when nil.
    public func trainableParameters(adapter: String? = nil) -> [TrainableTensor] {
        var out: [TrainableTensor] = []
        for (path, lin) in loraModules {
            for a in lin.adapters where adapter == nil || a.name == adapter {
                out.append(TrainableTensor(name: "\(path).lora_A.\(a.name).weight", parameter: a.a, gradient: a.gradA))
                out.append(TrainableTensor(name: "\(path).lora_B.\(a.name).weight", parameter: a.b, gradient: a.gradB))
            }
        }
        return out
    }

    /// Zeroes every adapter's gradients.
    public func zeroGrad() {
        for l in layers { for p in l.linears { p.zeroGrad() } }
    }

    // MARK: - PEFT directories

    /// Saves adapter `name` as a PEFT directory (adapter_config.json + adapter_model.safetensors,
    /// Hugging Face module names, task type CAUSAL_LM) that PeftModel.from_pretrained loads onto
    /// the transformers model; each file written atomically. `PST_ERR_NOT_FOUND` when no
    /// projection has it.
    public func saveAdapter(_ name: String, to directory: String, baseModelNameOrPath: String? = nil) throws(PSTError) {
        let mods = loraModules.filter { $0.layer.adapter(named: name) != nil }.map { PeftModule($0.modulePath, $0.layer) }
        guard !mods.isEmpty else { throw .notFound("adapter \"\(name)\" is attached to no module") }
        try PeftAdapterDirectory.save(adapter: name, of: mods, to: directory, baseModelNameOrPath: baseModelNameOrPath,
                                      taskType: "CAUSAL_LM", inferenceMode: true)
    }

    /// Loads a PEFT adapter directory (made by PEFT or peftswift for this model) as adapter
    /// `name` onto the projections it has weights for (PEFT's target_modules and
    /// layers_to_transform decided them when it saved); all or nothing. A tensor for no
    /// projection of this model is an error (strict load), as is a file for none.
    public func loadAdapter(from directory: String, as name: String) throws(PSTError) {
        let f = try SafeTensorsFile(path: directory + "/" + PeftAdapterDirectory.weightsFileName)
        let mods = loraModules.filter { f.contains(PeftAdapterDirectory.tensorNames(forModule: $0.modulePath).a) }
            .map { PeftModule($0.modulePath, $0.layer) }
        guard !mods.isEmpty else {
            let a = config.architecture
            throw .invalidArgument("\(directory): the adapter has weights for no projection of this model (\(a.layerPrefix)N.\(a.projectionPaths[0]), ...)")
        }
        try PeftAdapterDirectory.load(from: directory, into: mods, as: name)
        dropState()
    }
}
