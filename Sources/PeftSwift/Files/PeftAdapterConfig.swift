// adapter_config.json of a PEFT LoRA adapter (peft 0.21.2: LoraConfig.save_pretrained writes
// json.dumps(to_dict(), indent=2, sort_keys=True); the field set is FORMATS.md §1).

/// One entry of `rank_pattern` / `alpha_pattern`: PEFT matches `key` as the regular expression
/// `(.*\.)?(key)$` against a module path, first key in file order wins (peft's
/// `get_pattern_key`). peftswift supports keys made of literal characters and `.` (which, as in
/// the regex, matches any character); keys with other regex syntax are rejected.
public struct PeftPatternEntry<Value: Equatable & Sendable>: Equatable, Sendable {
    public var key: String
    public var value: Value
    public init(_ key: String, _ value: Value) { self.key = key; self.value = value }
}

/// PEFT's `target_modules`: a list of names (a module matches when its path equals one or
/// ends with "." + one) or a regular expression (full match).
public enum PeftTargetModules: Equatable, Sendable {
    case names([String])
    case regex(String)
}

/// The fields of a LoRA adapter_config.json that peftswift reads and writes, with PEFT's
/// defaults for absent fields (r 8, lora_alpha 8, lora_dropout 0, use_rslora false,
/// inference_mode false when read, true when written by `PeftAdapterDirectory.save`).
public struct PeftLoraConfig: Equatable, Sendable {
    public var r: Int = 8
    public var loraAlpha: Double = 8
    public var loraDropout: Double = 0
    public var useRslora = false
    public var rankPattern: [PeftPatternEntry<Int>] = []
    public var alphaPattern: [PeftPatternEntry<Double>] = []
    public var targetModules: PeftTargetModules? = nil
    /// `true`, `false` or a method name such as `"gaussian"`.
    public var initLoraWeights: JSONValue = .bool(true)
    public var baseModelNameOrPath: String? = nil
    public var taskType: String? = nil
    public var inferenceMode = false
    public var peftVersion: String? = nil
    /// The whole object as read (empty for a config made in Swift), for fields peftswift does
    /// not interpret.
    public var document = JSONObject()

    public init() {}

    /// The rank of the module at `path`: its rank_pattern entry, else `r`.
    public func rank(forModule path: String) -> Int {
        rankPattern.first { PeftLoraConfig.patternMatches($0.key, path) }?.value ?? r
    }

    /// lora_alpha of the module at `path`: its alpha_pattern entry, else `loraAlpha`.
    public func alpha(forModule path: String) -> Double {
        alphaPattern.first { PeftLoraConfig.patternMatches($0.key, path) }?.value ?? loraAlpha
    }

    /// The engine's adapter configuration for the module at `path`. `initialization` records
    /// init_lora_weights (true and unknown methods -> kaiming, "gaussian" -> gaussian, false ->
    /// zeros), so that saving a loaded adapter writes the same value.
    public func loraConfig(forModule path: String) -> LoraConfig {
        let initialization: LoraInit
        switch initLoraWeights {
        case .bool(false): initialization = .zeros
        case .string("gaussian"): initialization = .gaussian
        default: initialization = .kaiming
        }
        return LoraConfig(r: rank(forModule: path), alpha: Float(alpha(forModule: path)), dropout: Float(loraDropout),
                          useRslora: useRslora, initialization: initialization)
    }

    static let regexSyntax: Set<UInt8> = Set("\\^$*+?{}[]()|".utf8)

    /// True for keys peftswift can match exactly like PEFT's regex.
    static func isSupportedPattern(_ key: String) -> Bool {
        !key.isEmpty && !key.utf8.contains { regexSyntax.contains($0) || $0 == 0x0A }
    }

    /// `re.match(rf"(.*\.)?({key})$", path)` for keys of literal characters and `.`: the key
    /// matches a suffix of `path` that is the whole path or follows a ".", with "." in the key
    /// matching any one character.
    static func patternMatches(_ key: String, _ path: String) -> Bool {
        let k = Array(key.unicodeScalars), p = Array(path.unicodeScalars)
        guard !k.isEmpty, k.count <= p.count else { return false }
        let start = p.count - k.count
        // `$` also matches before a trailing newline; module paths never hold one.
        func tailMatches(_ s: Int) -> Bool {
            for j in 0..<k.count where k[j] != "." && k[j] != p[s + j] { return false }
            return true
        }
        guard tailMatches(start) else { return false }
        return start == 0 || p[start - 1] == "."
    }

    // MARK: - Reading

    /// Parses adapter_config.json. Type-checks every field used; `PST_ERR_CORRUPT` for a
    /// malformed file or a wrongly typed or out-of-range value, `PST_ERR_UNSUPPORTED` for
    /// valid PEFT settings peftswift cannot honour (another peft_type, DoRA, fan_in_fan_out,
    /// lora_bias, bias other than "none", pattern keys with regex syntax).
    public static func parse(_ bytes: UnsafeRawBufferPointer, source: String) throws(PSTError) -> PeftLoraConfig {
        let root = try JSON.parse(bytes, source: source, limits: JSON.Limits(maxBytes: 16 << 20, maxDepth: 64))
        func bad(_ m: String) -> PSTError { .corrupt("\(source): \(m)") }
        func unsupported(_ m: String) -> PSTError { .unsupported("\(source): \(m)") }
        guard case .object(let o) = root else { throw bad("the configuration is \(root.kindName), not an object") }
        var c = PeftLoraConfig()
        c.document = o

        func field(_ k: String) -> JSONValue? {
            guard let v = o[k] else { return nil }
            return v
        }
        func bool(_ k: String) throws(PSTError) -> Bool? {
            guard let v = field(k) else { return nil }
            guard case .bool(let b) = v else { throw bad("\(k) is \(v.kindName), expected a boolean") }
            return b
        }
        func optString(_ k: String) throws(PSTError) -> String? {
            guard let v = field(k), !v.isNull else { return nil }
            guard case .string(let s) = v else { throw bad("\(k) is \(v.kindName), expected a string or null") }
            return s
        }
        func positive(_ v: JSONValue, _ what: String) throws(PSTError) -> Double {
            guard case .number(let n) = v else { throw bad("\(what) is \(v.kindName), expected a number") }
            let d = n.double
            guard d.isFinite, d > 0 else { throw bad("\(what) (\(n.text)) must be a finite number > 0") }
            return d
        }
        func rank(_ v: JSONValue, _ what: String) throws(PSTError) -> Int {
            guard case .number(let n) = v, let i = n.int else {
                throw bad("\(what) (\(SafeTensorsHeader.describe(v))) is not an integer")
            }
            guard i >= 1 && i <= 1 << 24 else { throw bad("\(what) (\(i)) must be in 1...16777216") }
            return i
        }

        guard let pt = field("peft_type") else { throw bad("peft_type is missing") }
        guard case .string(let pts) = pt else { throw bad("peft_type is \(pt.kindName), expected a string") }
        guard pts == "LORA" else { throw unsupported("peft_type \(quoted(pts)) is not \"LORA\"") }

        if let v = field("r") { c.r = try rank(v, "r") }
        if let v = field("lora_alpha") { c.loraAlpha = try positive(v, "lora_alpha") }
        if let v = field("lora_dropout") {
            guard case .number(let n) = v else { throw bad("lora_dropout is \(v.kindName), expected a number") }
            let d = n.double
            guard d >= 0 && d < 1 && Float(d) < 1 else { throw bad("lora_dropout (\(n.text)) must be in [0, 1) (as a float32)") }
            c.loraDropout = d
        }
        if let b = try bool("use_rslora") { c.useRslora = b }
        if try bool("use_dora") == true { throw unsupported("use_dora is true; peftswift does not implement DoRA") }
        if try bool("fan_in_fan_out") == true { throw unsupported("fan_in_fan_out is true (Conv1D layers); peftswift's layers are nn.Linear") }
        if try bool("lora_bias") == true { throw unsupported("lora_bias is true; peftswift's LoRA B has no bias") }
        if let bias = try optString("bias"), bias != "none" {
            throw unsupported("bias \(quoted(bias)) is not \"none\"; peftswift does not train or load base biases with an adapter")
        }
        for (k, isRank) in [("rank_pattern", true), ("alpha_pattern", false)] {
            guard let v = field(k), !v.isNull else { continue }
            guard case .object(let po) = v else { throw bad("\(k) is \(v.kindName), expected an object") }
            for m in po.members {
                guard isSupportedPattern(m.key) else {
                    throw unsupported("\(k) key \(quoted(m.key)) uses regular-expression syntax; peftswift matches literal module names (with '.' as a wildcard) only")
                }
                if isRank {
                    c.rankPattern.append(PeftPatternEntry(m.key, try rank(m.value, "\(k)[\(quoted(m.key))]")))
                } else {
                    c.alphaPattern.append(PeftPatternEntry(m.key, try positive(m.value, "\(k)[\(quoted(m.key))]")))
                }
            }
        }
        if let v = field("target_modules") {
            switch v {
            case .null: c.targetModules = nil
            case .string(let s): c.targetModules = .regex(s)
            case .array(let a):
                var names: [String] = []
                for (i, e) in a.enumerated() {
                    guard case .string(let s) = e else { throw bad("target_modules[\(i)] is \(e.kindName), expected a string") }
                    names.append(s)
                }
                c.targetModules = .names(names)
            default: throw bad("target_modules is \(v.kindName), expected a list of strings, a string or null")
            }
        }
        if let v = field("init_lora_weights") {
            switch v {
            case .bool, .string: c.initLoraWeights = v
            default: throw bad("init_lora_weights is \(v.kindName), expected a boolean or a string")
            }
        }
        c.baseModelNameOrPath = try optString("base_model_name_or_path")
        c.taskType = try optString("task_type")
        c.peftVersion = try optString("peft_version")
        if let b = try bool("inference_mode") { c.inferenceMode = b }
        return c
    }

    public static func parse(_ bytes: [UInt8], source: String) throws(PSTError) -> PeftLoraConfig {
        try withBytes(bytes) { (b) throws(PSTError) in try parse(b, source: source) }
    }

    // MARK: - Writing

    /// A float as PEFT would have written the value a user typed: integers as `32`, other
    /// values by their shortest float32 digits (`0.05`).
    static func pythonNumber(_ v: Double, integral: Bool) -> JSONValue {
        if integral, v == v.rounded(), abs(v) < 1e15 { return .int(Int(v)) }
        return .number(JSONNumber(uncheckedText: JSONNumber.pythonReprOfFloat32Literal(Float(v))))
    }

    /// The adapter_config.json object with every field PEFT 0.21.2 writes for a LoRA adapter
    /// (values peftswift does not use at their defaults).
    public func jsonObject() -> JSONObject {
        var target: JSONValue = .null
        switch targetModules {
        case .names(let n)?: target = .array(n.map { .string($0) })
        case .regex(let s)?: target = .string(s)
        case nil: break
        }
        let opt: (String?) -> JSONValue = { $0.map { .string($0) } ?? .null }
        return JSONObject([
            ("alora_invocation_tokens", .null),
            ("alpha_pattern", .object(JSONObject(alphaPattern.map { ($0.key, PeftLoraConfig.pythonNumber($0.value, integral: true)) }))),
            ("arrow_config", .null),
            ("auto_mapping", .null),
            ("base_model_name_or_path", opt(baseModelNameOrPath)),
            ("bias", .string("none")),
            ("corda_config", .null),
            ("ensure_weight_tying", .bool(false)),
            ("eva_config", .null),
            ("exclude_modules", .null),
            ("fan_in_fan_out", .bool(false)),
            ("inference_mode", .bool(inferenceMode)),
            ("init_lora_weights", initLoraWeights),
            ("kasa_config", .null),
            ("layer_replication", .null),
            ("layers_pattern", .null),
            ("layers_to_transform", .null),
            ("loftq_config", .object(JSONObject())),
            ("lora_alpha", PeftLoraConfig.pythonNumber(loraAlpha, integral: true)),
            ("lora_bias", .bool(false)),
            ("lora_dropout", PeftLoraConfig.pythonNumber(loraDropout, integral: false)),
            ("lora_ga_config", .null),
            ("megatron_config", .null),
            ("megatron_core", .string("megatron.core")),
            ("modules_to_save", .null),
            ("monteclora_config", .null),
            ("peft_type", .string("LORA")),
            ("peft_version", opt(peftVersion)),
            ("qalora_group_size", .int(16)),
            ("r", .int(r)),
            ("rank_pattern", .object(JSONObject(rankPattern.map { ($0.key, .int($0.value)) }))),
            ("revision", .null),
            ("target_modules", target),
            ("target_parameters", .null),
            ("task_type", opt(taskType)),
            ("trainable_token_indices", .null),
            ("use_bdlora", .null),
            ("use_dora", .bool(false)),
            ("use_qalora", .bool(false)),
            ("use_rslora", .bool(useRslora)),
            ("velora_config", .null),
        ])
    }

    /// The file's bytes: `json.dumps(obj, indent=2, sort_keys=True)` as PEFT writes it.
    public func serialized() -> [UInt8] {
        JSON.serialize(.object(jsonObject()), style: .pythonIndented(2, sortKeys: true))
    }
}
