import Foundation
import Testing
import CPeftSwift
@testable import PeftSwift

/// PEFT adapter directories: directories written by peft 0.21.2's save_pretrained load into
/// peftswift layers and reproduce PEFT's outputs; peftswift's saves are PEFT's bytes; loads are
/// all-or-nothing; bad configs are rejected with clear errors.
@Suite struct FilesPeftTests {
    static let paths = ["model.layers.0.self_attn.q_proj", "model.layers.0.self_attn.v_proj", "model.layers.0.mlp.down_proj",
                        "model.layers.1.self_attn.q_proj", "model.layers.1.self_attn.v_proj", "model.layers.1.mlp.down_proj"]

    /// Dense layers with the base weights stored in <variant>_io.safetensors.
    static func baseModules(_ io: SafeTensorsFile) throws -> [PeftModule] {
        try paths.map { p in
            let w = try io.tensor("\(p).weight")
            let wf = try w.floats()
            let bias = io.contains("\(p).bias") ? try io.tensor("\(p).bias").floats() : nil
            let layer = try wf.withUnsafeBufferPointer { wp in
                try (bias ?? []).withUnsafeBufferPointer { bp in
                    try LoraLinear(dense: wp, outFeatures: w.shape[0], inFeatures: w.shape[1], bias: bias == nil ? nil : bp)
                }
            }
            layer.training = false
            return PeftModule(p, layer)
        }
    }

    static func forward(_ l: LoraLinear, _ x: [Float]) throws -> [Float] {
        let m = x.count / l.inFeatures
        var y = [Float](repeating: 0, count: m * l.outFeatures)
        try x.withUnsafeBufferPointer { xp in try y.withUnsafeMutableBufferPointer { try l.forward(xp, m: m, $0) } }
        return y
    }

    static func expectClose(_ a: [Float], _ b: [Float], _ what: String, tol: Float = 2e-6) {
        #expect(a.count == b.count, "\(what)")
        var worst: Float = 0
        for (x, y) in zip(a, b) { worst = max(worst, abs(x - y) / max(1, abs(y))) }
        #expect(worst <= tol, "\(what): max rel diff \(worst)")
    }

    static func ioFile(_ variant: String) throws -> SafeTensorsFile {
        try SafeTensorsFile(path: FilesFixtures.path("peft/\(variant)_io.safetensors"))
    }

    /// PEFT's outputs (eval mode) from the base + the loaded adapter, for plain LoRA, rsLoRA,
    /// dropout (inactive in eval) and rank_pattern/alpha_pattern.
    @Test(arguments: ["plain", "rslora", "dropout", "pattern"])
    func loadsPeftDirectoryAndReproducesOutputs(_ variant: String) throws {
        let io = try Self.ioFile(variant)
        let modules = try Self.baseModules(io)
        let cfg = try PeftAdapterDirectory.load(from: FilesFixtures.path("peft/\(variant)"), into: modules, as: "default")
        #expect(cfg.r == 4)
        for m in modules {
            let a = try #require(m.layer.adapter(named: "default"))
            #expect(m.layer.active.first === a)
            switch variant {
            case "rslora": #expect(a.config.useRslora && a.scaling == 3)
            case "dropout": #expect(a.config.dropout == 0.1 && a.scaling == 2)
            case "pattern":
                #expect(a.config.r == (m.path.hasSuffix("q_proj") ? 2 : 4))
                #expect(a.config.alpha == (m.path.hasSuffix("down_proj") ? 3 : 8))
            default: #expect(a.scaling == 2)
            }
            let y = try Self.forward(m.layer, try io.tensor("\(m.path).x").floats())
            Self.expectClose(y, try io.tensor("\(m.path).y").floats(), "\(variant) \(m.path)")
        }
    }

    /// Two adapters of one base, saved by PEFT side by side (two/first, two/second, the second
    /// on q_proj/v_proj only), load into the same layers; each reproduces PEFT's output.
    @Test func loadsTwoAdaptersSideBySide() throws {
        let io = try Self.ioFile("two")
        let modules = try Self.baseModules(io)
        try PeftAdapterDirectory.load(from: FilesFixtures.path("peft/two/first"), into: modules, as: "first")
        let attn = modules.filter { !$0.path.hasSuffix("down_proj") }
        let second = try PeftAdapterDirectory.load(from: FilesFixtures.path("peft/two/second"), into: attn, as: "second")
        #expect(second.useRslora && second.r == 3)
        for m in modules {
            let x = try io.tensor("\(m.path).x").floats()
            try m.layer.setActive(["first"])
            Self.expectClose(try Self.forward(m.layer, x), try io.tensor("\(m.path).y_first").floats(), "first \(m.path)")
            if m.layer.adapter(named: "second") != nil { try m.layer.setActive(["second"]) } else { m.layer.disableAdapters() }
            Self.expectClose(try Self.forward(m.layer, x), try io.tensor("\(m.path).y_second").floats(), "second \(m.path)")
        }
    }

    /// Loading PEFT's directory and saving it again gives PEFT's adapter_model.safetensors byte
    /// for byte and its adapter_config.json (up to target_modules order, which PEFT takes from
    /// a set, and auto_mapping, which PEFT fills for non-transformers models).
    @Test(arguments: ["plain", "rslora", "dropout"])
    func savesWhatPeftSaves(_ variant: String) throws {
        let src = FilesFixtures.path("peft/\(variant)")
        let modules = try Self.baseModules(try Self.ioFile(variant))
        try PeftAdapterDirectory.load(from: src, into: modules, as: "mine")
        let dir = try TempDir("peft")
        defer { dir.cleanup() }
        let out = dir.path + "/nested/adapter"
        try PeftAdapterDirectory.save(adapter: "mine", of: modules, to: out)
        #expect(try readFileBytes(out + "/adapter_model.safetensors") == readFileBytes(src + "/adapter_model.safetensors"))
        var peft = try JSON.parse(readFileBytes(src + "/adapter_config.json")).objectValue!
        var mine = try JSON.parse(readFileBytes(out + "/adapter_config.json")).objectValue!
        let sortedTargets: (JSONValue?) -> JSONValue = { .array(($0?.arrayValue ?? []).compactMap(\.stringValue).sorted().map { .string($0) }) }
        peft.set("target_modules", sortedTargets(peft["target_modules"]))
        peft.set("auto_mapping", .null)
        #expect(mine["target_modules"] == peft["target_modules"])
        mine.set("target_modules", sortedTargets(mine["target_modules"]))
        let a = JSON.serializeString(.object(peft), style: .pythonIndented(2, sortKeys: true))
        let b = JSON.serializeString(.object(mine), style: .pythonIndented(2, sortKeys: true))
        #expect(a == b)
        // no temporary files left behind
        #expect(try FileManager.default.contentsOfDirectory(atPath: out).sorted() == ["adapter_config.json", "adapter_model.safetensors"])
    }

    /// Modules with different ranks/alphas save as rank_pattern/alpha_pattern keyed by full
    /// path and load back to the same adapters.
    @Test func patternsRoundTrip() throws {
        let modules = try Self.baseModules(try Self.ioFile("plain"))
        for (i, m) in modules.enumerated() {
            let a = try m.layer.addAdapter("t", config: LoraConfig(r: i == 2 ? 3 : 2, alpha: i == 4 ? 0.5 : 4, dropout: 0.05, seed: UInt64(i)))
            for j in 0..<a.b.count { a.b[j] = Float(j % 7) * 0.01 - 0.02 }
        }
        let dir = try TempDir("peft")
        defer { dir.cleanup() }
        let cfg = try PeftAdapterDirectory.save(adapter: "t", of: modules, to: dir.path, baseModelNameOrPath: "tiny", taskType: "CAUSAL_LM")
        #expect(cfg.rankPattern == [PeftPatternEntry("model.layers.0.mlp.down_proj", 3)])
        #expect(cfg.alphaPattern == [PeftPatternEntry("model.layers.1.self_attn.v_proj", 0.5)])
        let text = String(decoding: try readFileBytes(dir.file("adapter_config.json")), as: UTF8.self)
        #expect(text.contains("\"lora_dropout\": 0.05,\n"))
        #expect(text.contains("\"lora_alpha\": 4,\n"))
        #expect(text.contains("\"task_type\": \"CAUSAL_LM\",\n"))
        #expect(text.contains("\"target_modules\": [\n    \"down_proj\",\n    \"q_proj\",\n    \"v_proj\"\n  ],"))
        let fresh = try Self.baseModules(try Self.ioFile("plain"))
        try PeftAdapterDirectory.load(from: dir.path, into: fresh, as: "t")
        for (m, f) in zip(modules, fresh) {
            let a = m.layer.adapter(named: "t")!, b = f.layer.adapter(named: "t")!
            #expect(a.config.r == b.config.r && a.config.alpha == b.config.alpha && b.config.dropout == 0.05)
            #expect(a.a.array == b.a.array && a.b.array == b.b.array)
        }
    }

    /// Two adapters of one set of layers saved by peftswift to separate directories load side
    /// by side into fresh layers and give the same outputs as the originals.
    @Test func twoAdaptersSavedAndLoadedSideBySide() throws {
        let modules = try Self.baseModules(try Self.ioFile("plain"))
        for (k, name) in ["left", "right"].enumerated() {
            for (i, m) in modules.enumerated() where k == 0 || i % 2 == 0 {
                let a = try m.layer.addAdapter(name, config: LoraConfig(r: 2 + k, alpha: Float(3 + k), useRslora: k == 1, seed: UInt64(10 * k + i)))
                for j in 0..<a.b.count { a.b[j] = Float((j + i + k) % 5) * 0.05 - 0.1 }
            }
        }
        let dir = try TempDir("peft")
        defer { dir.cleanup() }
        try PeftAdapterDirectory.save(adapter: "left", of: modules, to: dir.path + "/left")
        let evens = modules.enumerated().filter { $0.offset % 2 == 0 }.map(\.element)
        try PeftAdapterDirectory.save(adapter: "right", of: evens, to: dir.path + "/right")
        let fresh = try Self.baseModules(try Self.ioFile("plain"))
        try PeftAdapterDirectory.load(from: dir.path + "/left", into: fresh, as: "left")
        try PeftAdapterDirectory.load(from: dir.path + "/right", into: fresh.enumerated().filter { $0.offset % 2 == 0 }.map(\.element), as: "right")
        let x = (0..<(2 * 20)).map { Float($0 % 13) * 0.1 - 0.6 }
        for (m, f) in zip(modules, fresh) {
            let xs = Array(x.prefix(2 * m.layer.inFeatures))
            for name in ["left", "right"] where m.layer.adapter(named: name) != nil {
                try m.layer.setActive([name]); try f.layer.setActive([name])
                #expect(try Self.forward(m.layer, xs) == Self.forward(f.layer, xs), "\(name) \(m.path)")
            }
            try m.layer.setActive(f.layer.adapters.map(\.name)); try f.layer.setActive(f.layer.adapters.map(\.name))
            #expect(try Self.forward(m.layer, xs) == Self.forward(f.layer, xs))
        }
    }

    // MARK: - all-or-nothing and errors

    /// A copy of a fixture directory whose files tests may alter.
    static func copy(_ variant: String, _ dir: TempDir) throws -> String {
        let dst = dir.path + "/\(variant)"
        try FileManager.default.copyItem(atPath: FilesFixtures.path("peft/\(variant)"), toPath: dst)
        return dst
    }

    static func rewriteConfig(_ dir: String, _ edit: (inout JSONObject) -> Void) throws {
        var o = try JSON.parse(readFileBytes(dir + "/adapter_config.json")).objectValue!
        edit(&o)
        try AtomicFile.write(dir + "/adapter_config.json", bytes: JSON.serialize(.object(o), style: .pythonIndented(2, sortKeys: true)))
    }

    static func expectUntouched(_ modules: [PeftModule]) {
        for m in modules { #expect(m.layer.adapters.isEmpty, "\(m.path) got an adapter") }
    }

    @Test func failedLoadsChangeNothing() throws {
        let dir = try TempDir("peft")
        defer { dir.cleanup() }
        let src = try Self.copy("plain", dir)
        let io = try Self.ioFile("plain")

        // the last module's B has the wrong shape
        let f = try SafeTensorsFile(path: src + "/adapter_model.safetensors")
        let lastB = PeftAdapterDirectory.tensorNames(forModule: Self.paths[5]).b
        let entries = f.views().map { v in
            v.name == lastB ? SafeTensorsEntry(name: v.name, dtype: .f32, shape: [6, 8], data: v.byteArray)
                            : SafeTensorsEntry(name: v.name, dtype: v.dtype, shape: v.shape, data: v.byteArray)
        }
        try SafeTensorsWriter.write(entries, metadata: [("format", "pt")], to: src + "/adapter_model.safetensors")
        var modules = try Self.baseModules(io)
        var e = thrownPST { try PeftAdapterDirectory.load(from: src, into: modules, as: "x") }
        #expect(e?.status == PST_ERR_SHAPE)
        #expect(e?.message.contains("has shape [6, 8]; module \"model.layers.1.mlp.down_proj\" needs [out_features, r] = [12, 4] (r from the config's r)") == true, "\(e!)")
        Self.expectUntouched(modules)

        // a NaN in the last module's A
        let lastA = PeftAdapterDirectory.tensorNames(forModule: Self.paths[5]).a
        let nanEntries = try SafeTensorsFile(path: FilesFixtures.path("peft/plain/adapter_model.safetensors")).views().map { v in
            var d = v.byteArray
            if v.name == lastA { d.replaceSubrange(4..<8, with: [0, 0, 0xC0, 0x7F]) }
            return SafeTensorsEntry(name: v.name, dtype: v.dtype, shape: v.shape, data: d)
        }
        try SafeTensorsWriter.write(nanEntries, metadata: [("format", "pt")], to: src + "/adapter_model.safetensors")
        e = thrownPST { try PeftAdapterDirectory.load(from: src, into: modules, as: "x") }
        #expect(e?.status == PST_ERR_NONFINITE)
        #expect(e?.message.contains("element 1 is nan") == true)
        Self.expectUntouched(modules)

        // the name exists in one layer already: nothing else changes
        modules = try Self.baseModules(io)
        try modules[3].layer.addAdapter("x", config: LoraConfig(r: 1, alpha: 1))
        e = thrownPST { try PeftAdapterDirectory.load(from: FilesFixtures.path("peft/plain"), into: modules, as: "x") }
        #expect(e?.status == PST_ERR_EXISTS)
        #expect(modules.enumerated().allSatisfy { $0.offset == 3 || $0.element.layer.adapters.isEmpty })

        // a module the file does not have
        modules = try Self.baseModules(io)
        let extra = try LoraLinear(dense: [Float](repeating: 0, count: 12 * 12).withUnsafeBufferPointer { $0 }, outFeatures: 12, inFeatures: 12)
        e = thrownPST { try PeftAdapterDirectory.load(from: FilesFixtures.path("peft/plain"), into: modules + [PeftModule("model.layers.2.self_attn.q_proj", extra)], as: "x") }
        #expect(e?.status == PST_ERR_NOT_FOUND)
        #expect(e?.message.contains("no tensor \"base_model.model.model.layers.2.self_attn.q_proj.lora_A.weight\" for module") == true)
        Self.expectUntouched(modules)

        // strict: the file holds modules the caller did not give
        e = thrownPST { try PeftAdapterDirectory.load(from: FilesFixtures.path("peft/plain"), into: Array(modules.prefix(2)), as: "x") }
        #expect(e?.status == PST_ERR_INVALID_ARG)
        #expect(e?.message.contains("(and 7 more) belongs to none of the given modules") == true, "\(e!)")
        Self.expectUntouched(modules)
        try PeftAdapterDirectory.load(from: FilesFixtures.path("peft/plain"), into: Array(modules.prefix(2)), as: "x", strict: false)
        #expect(modules[0].layer.adapter(named: "x") != nil && modules[2].layer.adapters.isEmpty)
    }

    @Test func badConfigsAreRejected() throws {
        let dir = try TempDir("peft")
        defer { dir.cleanup() }
        let src = try Self.copy("plain", dir)
        let io = try Self.ioFile("plain")
        let cases: [(String, Int32, String, (inout JSONObject) -> Void)] = [
            ("peft_type", PST_ERR_UNSUPPORTED, "peft_type \"IA3\" is not \"LORA\"", { $0.set("peft_type", .string("IA3")) }),
            ("no peft_type", PST_ERR_CORRUPT, "peft_type is missing", { o in o = JSONObject(o.members.filter { $0.key != "peft_type" }.map { ($0.key, $0.value) }) }),
            ("r string", PST_ERR_CORRUPT, "r (\"4\") is not an integer", { $0.set("r", .string("4")) }),
            ("r float", PST_ERR_CORRUPT, "r (4.0) is not an integer", { $0.set("r", .number(JSONNumber(literal: "4.0")!)) }),
            ("r zero", PST_ERR_CORRUPT, "r (0) must be in 1...16777216", { $0.set("r", .int(0)) }),
            ("r mismatch", PST_ERR_SHAPE, "needs [r, in_features] = [3, 12] (r from the config's r)", { $0.set("r", .int(3)) }),
            ("alpha", PST_ERR_CORRUPT, "lora_alpha (-1) must be a finite number > 0", { $0.set("lora_alpha", .int(-1)) }),
            ("alpha null", PST_ERR_CORRUPT, "lora_alpha is null, expected a number", { $0.set("lora_alpha", .null) }),
            ("dropout", PST_ERR_CORRUPT, "lora_dropout (1.0) must be in [0, 1) (as a float32)", { $0.set("lora_dropout", .number(JSONNumber(literal: "1.0")!)) }),
            ("rslora", PST_ERR_CORRUPT, "use_rslora is a string, expected a boolean", { $0.set("use_rslora", .string("yes")) }),
            ("dora", PST_ERR_UNSUPPORTED, "use_dora is true", { $0.set("use_dora", .bool(true)) }),
            ("bias", PST_ERR_UNSUPPORTED, "bias \"all\" is not \"none\"", { $0.set("bias", .string("all")) }),
            ("regex pattern", PST_ERR_UNSUPPORTED, "rank_pattern key \"^model.*q_proj\" uses regular-expression syntax",
             { $0.set("rank_pattern", .object(JSONObject([("^model.*q_proj", .int(2))]))) }),
            ("pattern value", PST_ERR_CORRUPT, "alpha_pattern[\"q_proj\"] is a string, expected a number",
             { $0.set("alpha_pattern", .object(JSONObject([("q_proj", .string("2"))]))) }),
            ("targets", PST_ERR_CORRUPT, "target_modules[1] is a number, expected a string", { $0.set("target_modules", .array([.string("q_proj"), .int(1)])) }),
            ("not object", PST_ERR_CORRUPT, "the configuration is an array, not an object", { $0 = JSONObject([("x", .null)]) }),
        ]
        for (what, status, fragment, edit) in cases {
            try Self.rewriteConfig(src) { o in
                o = try! JSON.parse(readFileBytes(FilesFixtures.path("peft/plain/adapter_config.json"))).objectValue!
                edit(&o)
            }
            if what == "not object" {
                try AtomicFile.write(src + "/adapter_config.json", bytes: Array("[1]".utf8))
            }
            let modules = try Self.baseModules(io)
            let e = thrownPST { try PeftAdapterDirectory.load(from: src, into: modules, as: "x") }
            #expect(e?.status == status, "\(what): \(String(describing: e))")
            #expect(e?.message.contains(fragment) == true, "\(what): \(String(describing: e))")
            Self.expectUntouched(modules)
        }
        // missing files
        let modules = try Self.baseModules(io)
        let e = thrownPST { try PeftAdapterDirectory.load(from: dir.path + "/nope", into: modules, as: "x") }
        #expect(e?.status == PST_ERR_NOT_FOUND)
        #expect(e?.message == dir.path + "/nope/adapter_config.json: no such file")
    }

    @Test func patternMatchingFollowsPeft() {
        let m = PeftLoraConfig.patternMatches
        #expect(m("q_proj", "model.layers.0.self_attn.q_proj"))
        #expect(m("model.layers.0.self_attn.q_proj", "model.layers.0.self_attn.q_proj"))
        #expect(m("layers.0.self_attn.q_proj", "model.layers.0.self_attn.q_proj"))
        #expect(!m("proj", "model.layers.0.self_attn.q_proj"))          // must follow a '.'
        #expect(!m("q_proj", "model.layers.0.self_attn.q_proj_x"))
        #expect(m("layers.1.mlp", "model.layers.1.mlp"))
        #expect(m("layers.1.mlp", "model.layersX1.mlp"))                // '.' is a regex wildcard
        #expect(!m("layers.1.mlp", "model.layers.10.mlp"))
    }

    @Test func saveErrors() throws {
        let modules = try Self.baseModules(try Self.ioFile("plain"))
        let dir = try TempDir("peft")
        defer { dir.cleanup() }
        #expect(thrownPST { try PeftAdapterDirectory.save(adapter: "none", of: modules, to: dir.path) }?.status == PST_ERR_NOT_FOUND)
        for (i, m) in modules.enumerated() { try m.layer.addAdapter("a", config: LoraConfig(r: 2, alpha: 2, dropout: i == 1 ? 0.1 : 0)) }
        let e = thrownPST { try PeftAdapterDirectory.save(adapter: "a", of: modules, to: dir.path) }
        #expect(e?.status == PST_ERR_INVALID_ARG && e?.message.contains("lora_dropout") == true)
        #expect(thrownPST { try PeftAdapterDirectory.save(adapter: "a", of: [modules[0], modules[0]], to: dir.path) }?.status == PST_ERR_INVALID_ARG)
        #expect(thrownPST { try PeftAdapterDirectory.save(adapter: "a", of: [], to: dir.path) }?.status == PST_ERR_INVALID_ARG)
        #expect(dir.list().isEmpty)
    }

    /// With PST_FILES_EXPORT=<dir>, writes a peftswift-saved adapter plus the outputs
    /// peftswift computes with it, for Tests/fixtures/check_files_exports.py to load with
    /// PeftModel.from_pretrained.
    @Test func exportForPython() throws {
        guard let out = ProcessInfo.processInfo.environment["PST_FILES_EXPORT"] else { return }
        let io = try Self.ioFile("pattern")
        let modules = try Self.baseModules(io)
        for (i, m) in modules.enumerated() {
            let a = try m.layer.addAdapter("mine", config: LoraConfig(r: i % 3 == 0 ? 3 : 2, alpha: i == 4 ? 5 : 4, seed: UInt64(i)))
            for j in 0..<a.b.count { a.b[j] = Float((j * 7 + i) % 11) * 0.03 - 0.15 }
        }
        try PeftAdapterDirectory.save(adapter: "mine", of: modules, to: out + "/peft_adapter")
        var entries: [SafeTensorsEntry] = []
        for m in modules {
            let x = try io.tensor("\(m.path).x").floats()
            entries.append(SafeTensorsEntry(name: "\(m.path).x", shape: [3, m.layer.inFeatures], floats: x))
            entries.append(SafeTensorsEntry(name: "\(m.path).y", shape: [3, m.layer.outFeatures], floats: try Self.forward(m.layer, x)))
        }
        try SafeTensorsWriter.write(entries, to: out + "/peft_adapter_io.safetensors")
    }
}
