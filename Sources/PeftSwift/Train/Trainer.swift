#if canImport(Glibc)
import Glibc
#endif

/// Learning-rate schedule of a `Trainer` (transformers' lr_scheduler_type), all with linear warm-up.
public enum TrainerSchedule: String, Sendable, Equatable {
    case cosine, linear, constant
}

/// Everything a fine-tuning run is configured by (saved in every checkpoint).
public struct TrainerConfig: Sendable, Equatable {
    /// Optimizer steps in the run.
    public var steps: Int
    /// Sequences per micro-batch.
    public var batchSize: Int
    /// Micro-batches per optimizer step (the loss is normalized by the step's total target
    /// count, transformers' num_items_in_batch).
    public var gradientAccumulation: Int
    public var learningRate: Double
    public var warmupSteps: Int
    public var schedule: TrainerSchedule
    public var weightDecay: Double
    /// Gradient clipping max L2 norm; 0 = no clipping.
    public var clipNorm: Double
    /// bitsandbytes-style blockwise 8-bit AdamW state instead of fp32.
    public var optimizer8bit: Bool
    /// Pager budget in bytes for the optimizer state; 0 = ordinary memory (unpaged).
    public var pagedBudgetBytes: Int
    public var loraR: Int
    public var loraAlpha: Float
    public var loraDropout: Float
    public var targetModules: [String]
    /// Seeds the adapter initialization, the dropout masks and the data order.
    public var seed: UInt64
    /// Shuffle the rows each epoch.
    public var shuffle: Bool
    /// Save a checkpoint (`outputDirectory/checkpoint-<step>`) every N steps; 0 = never.
    public var checkpointEvery: Int
    public var outputDirectory: String?
    /// Activation recomputation (gradient checkpointing).
    public var recomputeActivations: Bool
    public var adapterName: String

    public init(steps: Int, batchSize: Int = 1, gradientAccumulation: Int = 1, learningRate: Double = 2e-4,
                warmupSteps: Int = 0, schedule: TrainerSchedule = .cosine, weightDecay: Double = 0, clipNorm: Double = 1,
                optimizer8bit: Bool = false, pagedBudgetBytes: Int = 0, loraR: Int = 8, loraAlpha: Float = 16,
                loraDropout: Float = 0.05, targetModules: [String] = LlamaModel.allTargetModules, seed: UInt64 = 42,
                shuffle: Bool = true, checkpointEvery: Int = 0, outputDirectory: String? = nil,
                recomputeActivations: Bool = false, adapterName: String = "default") {
        self.steps = steps; self.batchSize = batchSize; self.gradientAccumulation = gradientAccumulation
        self.learningRate = learningRate; self.warmupSteps = warmupSteps; self.schedule = schedule
        self.weightDecay = weightDecay; self.clipNorm = clipNorm; self.optimizer8bit = optimizer8bit
        self.pagedBudgetBytes = pagedBudgetBytes; self.loraR = loraR; self.loraAlpha = loraAlpha
        self.loraDropout = loraDropout; self.targetModules = targetModules; self.seed = seed; self.shuffle = shuffle
        self.checkpointEvery = checkpointEvery; self.outputDirectory = outputDirectory
        self.recomputeActivations = recomputeActivations; self.adapterName = adapterName
    }

    /// Throws `PST_ERR_INVALID_ARG` naming the first bad field.
    public func validate() throws(PSTError) {
        func need(_ ok: Bool, _ m: @autoclosure () -> String) throws(PSTError) { if !ok { throw .invalidArgument(m()) } }
        try need(steps >= 1 && steps <= 1 << 40, "steps (\(steps)) must be in 1...2^40")
        try need(batchSize >= 1 && batchSize <= 1 << 16, "batch size (\(batchSize)) must be in 1...65536")
        try need(gradientAccumulation >= 1 && gradientAccumulation <= 1 << 16,
                 "gradient accumulation (\(gradientAccumulation)) must be in 1...65536")
        try need(learningRate.isFinite && learningRate >= 0, "learning rate (\(learningRate)) must be finite and >= 0")
        try need(warmupSteps >= 0 && warmupSteps <= steps, "warmup steps (\(warmupSteps)) must be in 0...steps (\(steps))")
        try need(weightDecay.isFinite && weightDecay >= 0, "weight decay (\(weightDecay)) must be finite and >= 0")
        try need(clipNorm.isFinite && clipNorm >= 0, "clip norm (\(clipNorm)) must be finite and >= 0 (0 = off)")
        try need(pagedBudgetBytes >= 0, "paged budget (\(pagedBudgetBytes)) must be >= 0 (0 = unpaged)")
        try need(checkpointEvery >= 0, "checkpoint interval (\(checkpointEvery)) must be >= 0 (0 = never)")
        try need(checkpointEvery == 0 || outputDirectory != nil, "checkpoint interval \(checkpointEvery) needs an output directory")
        try need(!targetModules.isEmpty, "target modules is empty")
    }

    var lrSchedule: LRSchedule {
        switch schedule {
        case .cosine: return .cosineWithWarmup(warmupSteps: warmupSteps, totalSteps: steps)
        case .linear: return .linearWarmup(warmupSteps: warmupSteps, decayTo: steps)
        case .constant: return .linearWarmup(warmupSteps: warmupSteps, decayTo: nil)
        }
    }

    var loraConfig: LoraConfig { LoraConfig(r: loraR, alpha: loraAlpha, dropout: loraDropout, seed: seed) }

    func json() throws(PSTError) -> JSONValue {
        var o = JSONObject()
        o.set("steps", .int(steps)); o.set("batch_size", .int(batchSize))
        o.set("gradient_accumulation", .int(gradientAccumulation))
        o.set("learning_rate", try .double(learningRate)); o.set("warmup_steps", .int(warmupSteps))
        o.set("schedule", .string(schedule.rawValue)); o.set("weight_decay", try .double(weightDecay))
        o.set("clip_norm", try .double(clipNorm)); o.set("optimizer_8bit", .bool(optimizer8bit))
        o.set("paged_budget_bytes", .int(pagedBudgetBytes)); o.set("lora_r", .int(loraR))
        o.set("lora_alpha", try .double(Double(loraAlpha))); o.set("lora_dropout", try .double(Double(loraDropout)))
        o.set("target_modules", .array(targetModules.map { .string($0) }))
        o.set("seed", .string(String(seed))); o.set("shuffle", .bool(shuffle))
        o.set("checkpoint_every", .int(checkpointEvery))
        o.set("output_dir", outputDirectory.map { .string($0) } ?? .null)
        o.set("recompute_activations", .bool(recomputeActivations)); o.set("adapter_name", .string(adapterName))
        return .object(o)
    }

    init(json v: JSONValue, source: String) throws(PSTError) {
        guard let o = v.objectValue else { throw .corrupt("\(source): 'config' is not an object") }
        func get(_ k: String) throws(PSTError) -> JSONValue {
            guard let x = o[k] else { throw .corrupt("\(source): config has no '\(k)'") }
            return x
        }
        func int(_ k: String) throws(PSTError) -> Int {
            guard let i = try get(k).numberValue?.int else { throw .corrupt("\(source): config '\(k)' is not an integer") }
            return i
        }
        func dbl(_ k: String) throws(PSTError) -> Double {
            guard let d = try get(k).numberValue?.double, d.isFinite else { throw .corrupt("\(source): config '\(k)' is not a number") }
            return d
        }
        func bool(_ k: String) throws(PSTError) -> Bool {
            guard let b = try get(k).boolValue else { throw .corrupt("\(source): config '\(k)' is not a bool") }
            return b
        }
        func str(_ k: String) throws(PSTError) -> String {
            guard let s = try get(k).stringValue else { throw .corrupt("\(source): config '\(k)' is not a string") }
            return s
        }
        guard let sched = TrainerSchedule(rawValue: try str("schedule")) else { throw .corrupt("\(source): unknown schedule") }
        guard let seed = UInt64(try str("seed")) else { throw .corrupt("\(source): config 'seed' is not a UInt64") }
        guard let targets = try get("target_modules").arrayValue?.compactMap(\.stringValue) else {
            throw .corrupt("\(source): config 'target_modules' is not a list of strings")
        }
        let out = try get("output_dir")
        self.init(steps: try int("steps"), batchSize: try int("batch_size"), gradientAccumulation: try int("gradient_accumulation"),
                  learningRate: try dbl("learning_rate"), warmupSteps: try int("warmup_steps"), schedule: sched,
                  weightDecay: try dbl("weight_decay"), clipNorm: try dbl("clip_norm"), optimizer8bit: try bool("optimizer_8bit"),
                  pagedBudgetBytes: try int("paged_budget_bytes"), loraR: try int("lora_r"),
                  loraAlpha: Float(try dbl("lora_alpha")), loraDropout: Float(try dbl("lora_dropout")),
                  targetModules: targets, seed: seed, shuffle: try bool("shuffle"), checkpointEvery: try int("checkpoint_every"),
                  outputDirectory: out.isNull ? nil : out.stringValue, recomputeActivations: try bool("recompute_activations"),
                  adapterName: try str("adapter_name"))
    }
}

/// What a `Trainer` reports after each optimizer step.
public struct TrainerProgress: Sendable, Equatable {
    /// Steps done (1 after the first).
    public var step: Int
    public var totalSteps: Int
    /// Mean loss over the step's target tokens.
    public var loss: Float
    /// Learning rate the step used.
    public var learningRate: Double
    /// Gradient L2 norm before clipping (0 when clipping is off).
    public var gradNorm: Float
    /// Tokens (all positions) per second over this step.
    public var tokensPerSecond: Double
    /// Resident set size from /proc/self/statm (0 if unavailable).
    public var residentBytes: Int
    /// Seconds since the trainer was created.
    public var elapsedSeconds: Double
    /// Directory of a checkpoint written after this step, if any.
    public var checkpoint: String?
}

/// LoRA / QLoRA fine-tuning loop over a `LlamaModel` and a `TrainingDataset`: micro-batches
/// with gradient accumulation, gradient clipping, AdamW (fp32 or 8-bit, optionally paged) with
/// a warm-up + cosine/linear/constant schedule, checkpoints that resume bit for bit.
///
/// A checkpoint directory holds `adapter_config.json` + `adapter_model.safetensors` (PEFT),
/// `optimizer.bin` (`AdamW.saveState`) and `trainer_state.json` (step, data cursor, every
/// adapter's dropout RNG state, the config), each written atomically, trainer_state.json last.
public final class Trainer {
    public let model: LlamaModel
    public let dataset: TrainingDataset
    public let config: TrainerConfig
    public let optimizer: AdamW
    /// Optimizer steps done.
    public private(set) var completedSteps = 0
    /// Rows consumed from the dataset's visiting order.
    public private(set) var cursor = 0
    let pager: Pager?
    let startTime: Double

    public static let trainerStateFileName = "trainer_state.json"
    public static let optimizerFileName = "optimizer.bin"

    /// Attaches a new adapter (`config.adapterName`, LoRA r/alpha/dropout on `targetModules`)
    /// to `model` and sets up the optimizer. Throws for a bad config, a sequence length beyond
    /// the model's context, a dataset whose tokens fall outside the model's vocabulary, an
    /// adapter name already in use.
    public init(model: LlamaModel, dataset: TrainingDataset, config: TrainerConfig) throws(PSTError) {
        try config.validate()
        guard dataset.seqLen <= model.config.maxPositions else {
            throw .invalidArgument("sequence length (\(dataset.seqLen)) is beyond the model's context length (\(model.config.maxPositions))")
        }
        if let bad = dataset.ids.first(where: { $0 < 0 || Int($0) >= model.config.vocab }) {
            throw .invalidArgument("dataset token id \(bad) is outside the model's vocabulary 0..<\(model.config.vocab)")
        }
        self.model = model
        self.dataset = dataset
        self.config = config
        startTime = Trainer.now()
        try model.addAdapter(config.adapterName, config: config.loraConfig, targetModules: config.targetModules)
        do throws(PSTError) {
            for (_, lin) in model.loraModules where lin.adapter(named: config.adapterName) != nil {
                try lin.setActive([config.adapterName])
            }
            if config.pagedBudgetBytes > 0 {
                // 4 MiB pages, smaller for small budgets (at least 4 pages, whole system pages)
                let sys = Pager.systemPageSize
                let budget = config.pagedBudgetBytes
                guard budget >= sys else {
                    throw .invalidArgument("paged budget (\(budget)) must be at least one system page (\(sys) bytes) or 0")
                }
                let pageSize = max(sys, min(4 << 20, budget / 4 / sys * sys))
                pager = try Pager(budget: budget, pageSize: pageSize)
            } else {
                pager = nil
            }
            optimizer = try AdamW(AdamWHyperparameters(learningRate: config.learningRate, weightDecay: config.weightDecay),
                                  stateFormat: config.optimizer8bit ? .blockwise8bit() : .float32,
                                  storage: pager.map { .paged($0) } ?? .memory)
            try model.register(with: optimizer, adapter: config.adapterName)
        } catch {
            try? model.deleteAdapter(config.adapterName)
            throw error
        }
        model.recomputeActivations = config.recomputeActivations
        model.training = true
        model.zeroGrad()
    }

    /// Resumes from a checkpoint directory written by `saveCheckpoint`: the saved config (or
    /// `config`, which must agree on everything but `steps`, `checkpointEvery` and
    /// `outputDirectory`), the adapter weights, optimizer state, step, data cursor and dropout
    /// RNG states. Continuing gives the same parameters, bit for bit, as a run never interrupted.
    public convenience init(model: LlamaModel, dataset: TrainingDataset, resumingFrom directory: String,
                            config override: TrainerConfig? = nil) throws(PSTError) {
        let statePath = directory + "/" + Trainer.trainerStateFileName
        let root = try JSON.parse(try FileSystem.readAll(statePath, limit: 64 << 20), source: statePath)
        guard let o = root.objectValue else { throw .corrupt("\(statePath): not a JSON object") }
        guard let cfgJSON = o["config"] else { throw .corrupt("\(statePath): no 'config'") }
        let saved = try TrainerConfig(json: cfgJSON, source: statePath)
        var cfg = saved
        if let override {
            var a = override, b = saved
            a.steps = 0; b.steps = 0; a.checkpointEvery = 0; b.checkpointEvery = 0
            a.outputDirectory = nil; b.outputDirectory = nil
            guard a == b else {
                throw .invalidArgument("the given trainer config differs from the checkpoint's (\(statePath)) beyond steps/checkpointEvery/outputDirectory")
            }
            cfg = override
        }
        try self.init(model: model, dataset: dataset, config: cfg)
        do {
            try restore(directory: directory, state: o, statePath: statePath)
        } catch {
            try? model.deleteAdapter(cfg.adapterName)
            throw error
        }
    }

    func restore(directory: String, state o: JSONObject, statePath: String) throws(PSTError) {
        guard let s = o["step"]?.numberValue?.int, s >= 0, let c = o["cursor"]?.numberValue?.int, c >= 0 else {
            throw .corrupt("\(statePath): 'step'/'cursor' missing or not non-negative integers")
        }
        guard let seqLen = o["seq_len"]?.numberValue?.int, seqLen == dataset.seqLen,
              let rows = o["dataset_rows"]?.numberValue?.int, rows == dataset.count else {
            throw .invalidArgument("\(statePath): the checkpoint was made with a different dataset (rows/sequence length differ)")
        }
        guard let fp = o["dataset_fingerprint"]?.stringValue, UInt64(fp, radix: 16) == dataset.fingerprint else {
            throw .invalidArgument("\(statePath): the checkpoint was made with a different dataset (fingerprint differs)")
        }
        guard let rngs = o["dropout_rng"]?.arrayValue else { throw .corrupt("\(statePath): no 'dropout_rng'") }
        let adapters = model.loraModules.compactMap { $0.layer.adapter(named: config.adapterName) }
        guard rngs.count == adapters.count else {
            throw .corrupt("\(statePath): \(rngs.count) dropout RNG states for \(adapters.count) adapted modules")
        }
        var states: [UInt64] = []
        for r in rngs {
            guard let t = r.stringValue, let v = UInt64(t, radix: 16) else { throw .corrupt("\(statePath): bad dropout RNG state") }
            states.append(v)
        }
        // adapter weights (fp32 in the PEFT file, so exact)
        let wpath = directory + "/" + PeftAdapterDirectory.weightsFileName
        let f = try SafeTensorsFile(path: wpath)
        for (path, lin) in model.loraModules {
            guard let a = lin.adapter(named: config.adapterName) else { continue }
            let (ka, kb) = PeftAdapterDirectory.tensorNames(forModule: path)
            for (k, buf) in [(ka, a.a), (kb, a.b)] {
                guard f.contains(k) else { throw .notFound("\(wpath): tensor '\(k)' is missing") }
                let v = try f.tensor(k)
                guard v.dtype == .f32 else { throw .corrupt("\(wpath): tensor '\(k)' is \(v.dtype.rawValue), expected F32") }
                try v.copyFloats(into: buf.buffer)
            }
        }
        let obytes = try FileSystem.readAll(directory + "/" + Trainer.optimizerFileName, limit: Int.max)
        do { try optimizer.restoreState(obytes) } catch {
            throw PSTError(status: error.status, "\(directory)/\(Trainer.optimizerFileName): \(error.message)")
        }
        for (a, st) in zip(adapters, states) { a.rng.state = st }
        completedSteps = s
        cursor = c
    }

    /// The learning rate of the next step.
    public var nextLearningRate: Double { config.learningRate * config.lrSchedule.multiplier(step: completedSteps) }

    /// Runs one optimizer step (gradient accumulation micro-batches, clipping, AdamW), then
    /// writes a checkpoint when due. Throws `PST_ERR_MISUSE` once `config.steps` are done.
    @discardableResult
    public func step() throws(PSTError) -> TrainerProgress {
        guard completedSteps < config.steps else { throw .misuse("training is finished (\(config.steps) steps)") }
        let t0 = Trainer.now()
        let B = config.batchSize, T = dataset.seqLen, A = config.gradientAccumulation
        var micro: [(ids: [Int32], labels: [Int32])] = []
        var targets = 0
        for k in 0..<A {
            let b = dataset.batch(cursor: cursor + k * B, rows: B, seed: config.seed, shuffle: config.shuffle)
            for bt in 0..<B { for t in 1..<T where b.labels[bt * T + t] != TrainingDataset.ignoreIndex { targets += 1 } }
            micro.append(b)
        }
        var loss: Float = 0
        if targets > 0 {
            for b in micro {
                loss += try model.loss(ids: b.ids, labels: b.labels, batch: B, seqLen: T, normalizer: targets)
                try model.backward()
            }
        }
        guard loss.isFinite else {
            model.zeroGrad()
            throw .nonFinite("step \(completedSteps + 1): the loss is \(loss); no update was made (lower the learning rate?)")
        }
        var norm: Float = 0
        if config.clipNorm > 0 { norm = try optimizer.clipGradNorm(maxNorm: config.clipNorm) }
        let lr = nextLearningRate
        optimizer.learningRate = lr
        try optimizer.step()
        model.zeroGrad()
        cursor += A * B
        completedSteps += 1
        let t1 = Trainer.now()
        var p = TrainerProgress(step: completedSteps, totalSteps: config.steps, loss: loss, learningRate: lr, gradNorm: norm,
                                tokensPerSecond: Double(A * B * T) / max(t1 - t0, 1e-9),
                                residentBytes: Trainer.residentBytes(), elapsedSeconds: t1 - startTime, checkpoint: nil)
        if config.checkpointEvery > 0, completedSteps % config.checkpointEvery == 0, let out = config.outputDirectory {
            let dir = out + "/checkpoint-\(completedSteps)"
            try saveCheckpoint(to: dir)
            p.checkpoint = dir
        }
        return p
    }

    /// Runs the remaining steps, calling `progress` after each (return false to stop early),
    /// then saves the final adapter to `config.outputDirectory` (PEFT directory) when set.
    public func train(progress: ((TrainerProgress) -> Bool)? = nil) throws(PSTError) {
        while completedSteps < config.steps {
            let p = try step()
            if let progress, !progress(p) { return }
        }
        if let out = config.outputDirectory { try saveAdapter(to: out) }
    }

    /// Saves the adapter as a PEFT directory (adapter_config.json + adapter_model.safetensors,
    /// HF module names, task type CAUSAL_LM).
    public func saveAdapter(to directory: String, baseModelNameOrPath: String? = nil) throws(PSTError) {
        let mods = model.loraModules.filter { $0.layer.adapter(named: config.adapterName) != nil }.map { PeftModule($0.modulePath, $0.layer) }
        try PeftAdapterDirectory.save(adapter: config.adapterName, of: mods, to: directory,
                                      baseModelNameOrPath: baseModelNameOrPath, taskType: "CAUSAL_LM", inferenceMode: true)
    }

    /// Writes a resumable checkpoint as the directory `directory`, atomically as a whole: the
    /// files go into `<directory>.partial` (fsynced), which is then renamed to `directory`
    /// (replacing an older checkpoint of that name). A crash or kill at any moment leaves
    /// either the complete old directory, the complete new one, or (only if one existed
    /// before) none under that name: never a mix.
    public func saveCheckpoint(to directory: String) throws(PSTError) {
        var dir = directory
        while dir.count > 1 && dir.hasSuffix("/") { dir.removeLast() }
        let (parent, _) = AtomicFile.splitPath(dir)
        if !parent.isEmpty && parent != "." { try FileSystem.makeDirectories(parent) }
        let tmp = dir + ".partial"
        try FileSystem.removeFlatDirectory(tmp)
        try FileSystem.makeDirectories(tmp)
        try writeCheckpointFiles(tmp)
        try FileSystem.removeFlatDirectory(dir)
        guard rename(tmp, dir) == 0 else { throw .io("\(tmp) -> \(dir): rename failed: \(errnoDescription())") }
        try FileSystem.syncDirectory(parent.isEmpty ? "." : parent)
    }

    /// The newest complete checkpoint (`checkpoint-<N>` holding trainer_state.json, largest N)
    /// under `directory`, or nil.
    public static func latestCheckpoint(in directory: String) -> String? {
        guard let d = opendir(directory) else { return nil }
        defer { closedir(d) }
        var best: (Int, String)? = nil
        while let e = readdir(d) {
            let name = withUnsafeBytes(of: e.pointee.d_name) { raw in
                String(decoding: raw.prefix(while: { $0 != 0 }), as: UTF8.self)
            }
            guard name.hasPrefix("checkpoint-"), let n = Int(name.dropFirst("checkpoint-".count)), n >= 0 else { continue }
            let path = directory + "/" + name
            guard access(path + "/" + trainerStateFileName, R_OK) == 0 else { continue }
            if best == nil || n > best!.0 { best = (n, path) }
        }
        return best?.1
    }

    func writeCheckpointFiles(_ directory: String) throws(PSTError) {
        try saveAdapter(to: directory)
        try AtomicFile.write(directory + "/" + Trainer.optimizerFileName, bytes: try optimizer.saveState())
        var o = JSONObject()
        o.set("format", .string("peftswift-trainer-state"))
        o.set("version", .int(1))
        o.set("step", .int(completedSteps))
        o.set("cursor", .int(cursor))
        o.set("seq_len", .int(dataset.seqLen))
        o.set("dataset_rows", .int(dataset.count))
        o.set("dataset_fingerprint", .string(String(dataset.fingerprint, radix: 16)))
        let rngs = model.loraModules.compactMap { $0.layer.adapter(named: config.adapterName) }.map { JSONValue.string(String($0.rng.state, radix: 16)) }
        o.set("dropout_rng", .array(rngs))
        o.set("config", try config.json())
        try AtomicFile.write(directory + "/" + Trainer.trainerStateFileName,
                             bytes: JSON.serialize(.object(o), style: .pythonIndented(2, sortKeys: false)))
    }

    static func now() -> Double {
        var ts = timespec()
        clock_gettime(CLOCK_MONOTONIC, &ts)
        return Double(ts.tv_sec) + Double(ts.tv_nsec) * 1e-9
    }

    /// Resident set size: /proc/self/statm's second field × page size (0 when unreadable).
    public static func residentBytes() -> Int {
        guard let bytes = try? FileSystem.readAllProc("/proc/self/statm") else { return 0 }
        let fields = bytes.split(separator: UInt8(ascii: " "))
        guard fields.count >= 2, let pages = Int(String(decoding: fields[1], as: UTF8.self)) else { return 0 }
        return pages * Int(sysconf(Int32(_SC_PAGESIZE)))
    }
}

extension FileSystem {
    /// Removes a directory that holds only regular files (a checkpoint); a missing path is fine.
    static func removeFlatDirectory(_ path: String) throws(PSTError) {
        guard let d = opendir(path) else {
            if errno == ENOENT { return }
            throw .io("\(path): cannot open directory: \(errnoDescription())")
        }
        var names: [String] = []
        while let e = readdir(d) {
            let name = withUnsafeBytes(of: e.pointee.d_name) { raw in
                String(decoding: raw.prefix(while: { $0 != 0 }), as: UTF8.self)
            }
            if name != "." && name != ".." { names.append(name) }
        }
        closedir(d)
        for n in names where unlink(path + "/" + n) != 0 && errno != ENOENT {
            throw .io("\(path)/\(n): cannot remove: \(errnoDescription())")
        }
        guard rmdir(path) == 0 || errno == ENOENT else { throw .io("\(path): cannot remove: \(errnoDescription())") }
    }

    /// fsync of a directory (makes a rename in it durable).
    static func syncDirectory(_ path: String) throws(PSTError) {
        let fd = open(path, O_RDONLY | O_DIRECTORY | O_CLOEXEC)
        guard fd >= 0 else { throw .io("\(path): cannot open directory: \(errnoDescription())") }
        defer { close(fd) }
        _ = fsync(fd)
    }

    /// Reads a /proc file (size reported as 0, so read until EOF), at most 4 KiB.
    static func readAllProc(_ path: String) throws(PSTError) -> [UInt8] {
        let fd = open(path, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { throw .io("\(path): cannot open") }
        defer { close(fd) }
        var out = [UInt8](repeating: 0, count: 4096)
        let r = out.withUnsafeMutableBytes { read(fd, $0.baseAddress!, $0.count) }
        guard r >= 0 else { throw .io("\(path): read failed") }
        out.removeLast(out.count - r)
        return out
    }
}
