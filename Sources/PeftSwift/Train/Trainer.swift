#if canImport(Glibc)
import Glibc
#endif

/// LoRA / QLoRA fine-tuning loop over a `LanguageModel` and a `TrainingDataset`: micro-batches
/// with gradient accumulation, gradient clipping, AdamW (fp32 or 8-bit, optionally paged) with
/// a warm-up + cosine/linear/constant schedule, checkpoints that resume bit for bit.
///
/// A checkpoint directory holds `adapter_config.json` + `adapter_model.safetensors` (PEFT),
/// `optimizer.bin` (`AdamW.saveState`) and `trainer_state.json` (step, data cursor, every
/// adapter's dropout RNG state, the config), each written atomically, trainer_state.json last.
public final class Trainer {
    public let model: LanguageModel
    public let dataset: TrainingDataset
    public let config: TrainerConfig
    public let optimizer: AdamW
    /// Optimizer steps done.
    public internal(set) var completedSteps = 0
    /// Rows consumed from the dataset's visiting order.
    public internal(set) var cursor = 0
    let pager: Pager?
    let startTime: Double

    public static let trainerStateFileName = "trainer_state.json"
    public static let optimizerFileName = "optimizer.bin"

    /// Attaches a new adapter (`config.adapterName`, LoRA r/alpha/dropout on `targetModules`)
    /// to `model` and sets up the optimizer. Throws for a bad config, a sequence length beyond
    /// the model's context, a dataset whose tokens fall outside the model's vocabulary, an
    /// adapter name already in use.
    public init(model: LanguageModel, dataset: TrainingDataset, config: TrainerConfig) throws(PSTError) {
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
            try model.activateAdapter(config.adapterName)
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
            try Trainer.register(model.trainableParameters(adapter: config.adapterName), with: optimizer)
        } catch {
            try? model.deleteAdapter(config.adapterName)
            throw error
        }
        model.recomputeActivations = config.recomputeActivations
        model.training = true
        model.zeroGrad()
    }

    /// The learning rate of the next step.
    public var nextLearningRate: Double { config.learningRate * config.lrSchedule.multiplier(step: completedSteps) }

    /// Registers trainable tensors (a model's `trainableParameters`) with an optimizer; returns
    /// the count.
    @discardableResult
    public static func register(_ tensors: [TrainableTensor], with optimizer: AdamW) throws(PSTError) -> Int {
        for p in tensors {
            try optimizer.register(parameter: p.parameter.baseAddress, gradient: p.gradient.baseAddress, count: p.parameter.count)
        }
        return tensors.count
    }

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

    static func now() -> Double { MonotonicClock.seconds() }

    /// Resident set size: /proc/self/statm's second field × page size (0 when unreadable).
    public static func residentBytes() -> Int {
        guard let bytes = try? CheckpointFiles.readProc("/proc/self/statm") else { return 0 }
        let fields = bytes.split(separator: UInt8(ascii: " "))
        guard fields.count >= 2, let pages = Int(String(decoding: fields[1], as: UTF8.self)) else { return 0 }
        return pages * Int(sysconf(Int32(_SC_PAGESIZE)))
    }
}
