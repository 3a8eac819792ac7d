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
    /// PEFT target names (default: all seven projections).
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
                loraDropout: Float = 0.05, targetModules: [String] = Architecture.llama.projectionNames, seed: UInt64 = 42,
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
