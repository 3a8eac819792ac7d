#if canImport(Glibc)
import Glibc
#endif

// Checkpoints of a fine-tuning run: writing one atomically, finding the newest, resuming from it.

extension Trainer {
    /// Resumes from a checkpoint directory written by `saveCheckpoint`: the saved config (or
    /// `config`, which must agree on everything but `steps`, `checkpointEvery` and
    /// `outputDirectory`), the adapter weights, optimizer state, step, data cursor and dropout
    /// RNG states. Continuing gives the same parameters, bit for bit, as a run never interrupted.
    public convenience init(model: LanguageModel, dataset: TrainingDataset, resumingFrom directory: String,
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

    /// Saves the adapter as a PEFT directory (adapter_config.json + adapter_model.safetensors,
    /// HF module names, task type CAUSAL_LM).
    public func saveAdapter(to directory: String, baseModelNameOrPath: String? = nil) throws(PSTError) {
        try model.saveAdapter(config.adapterName, to: directory, baseModelNameOrPath: baseModelNameOrPath)
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
        try CheckpointFiles.removeFlatDirectory(tmp)
        try FileSystem.makeDirectories(tmp)
        try writeCheckpointFiles(tmp)
        try CheckpointFiles.removeFlatDirectory(dir)
        guard rename(tmp, dir) == 0 else { throw .io("\(tmp) -> \(dir): rename failed: \(errnoDescription())") }
        try CheckpointFiles.syncDirectory(parent.isEmpty ? "." : parent)
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
}

/// The file-system steps of writing a checkpoint directory atomically, and of reading /proc.
enum CheckpointFiles {
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
    static func readProc(_ path: String) throws(PSTError) -> [UInt8] {
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
