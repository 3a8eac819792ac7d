#if canImport(Glibc)
import Glibc
#endif

// Loading a model from its files: a GGUF file, or a Hugging Face checkpoint directory; and a
// model with its tokenizer from either, told apart by the path.

extension LanguageModel {
    /// Loads a GGUF model of a known family (e.g. SmolLM2-135M-Instruct Q4_1): the config from
    /// its metadata (`ModelConfig(gguf:)`), every tensor dequantized to fp32 in Hugging Face
    /// layout as the model asks for it (`GGUFWeights`); with `options.quantize` each projection
    /// is then quantized before the next loads, so at most one fp32 projection is alive.
    ///
    /// Throws `PST_ERR_CORRUPT` for a file that is not GGUF or whose tensors disagree with its
    /// metadata, `PST_ERR_UNSUPPORTED` for another architecture or tensor type,
    /// `PST_ERR_NOT_FOUND` for a missing tensor or key.
    public convenience init(gguf g: GGUFFile, options: ModelLoadOptions = .dense) throws(PSTError) {
        let config = try ModelConfig(gguf: g)
        let weights = GGUFWeights(file: g, config: config)
        try self.init(config: config, options: options) { (name: String, shape: [Int], dst: UnsafeMutableBufferPointer<Float>) throws(PSTError) in
            try weights.read(name, shape, dst)
        }
    }

    /// `init(gguf:options:)`, fp32 or QLoRA's NF4 + double quantization base.
    public convenience init(gguf g: GGUFFile, qlora: Bool) throws(PSTError) {
        try self.init(gguf: g, options: qlora ? .qlora : .dense)
    }

    /// Opens the GGUF file at `path` and loads it (`init(gguf:options:)`).
    public convenience init(ggufPath path: String, qlora: Bool = false) throws(PSTError) {
        try self.init(gguf: try GGUFFile(path: path), qlora: qlora)
    }

    /// Loads a Hugging Face checkpoint directory: `config.json` (`ModelConfig(huggingFaceConfig:)`:
    /// model_type / architectures must name a known family) and `model.safetensors` or a
    /// sharded `model.safetensors.index.json` (`SafeTensorsWeights`: F32/BF16/F16 tensors,
    /// converted to fp32 one at a time), quantized as each projection loads when
    /// `options.quantize`.
    ///
    /// Throws `PST_ERR_NOT_FOUND` for a missing config/weights file or tensor,
    /// `PST_ERR_UNSUPPORTED` for another architecture or dtype, `PST_ERR_CORRUPT` for a tensor
    /// whose shape disagrees with config.json. Config errors name config.json's path.
    public convenience init(huggingFaceDirectory dir: String, options: ModelLoadOptions = .dense) throws(PSTError) {
        let cpath = dir + "/config.json"
        let root = try JSON.parse(try FileSystem.readAll(cpath, limit: 16 << 20), source: cpath)
        guard let object = root.objectValue else { throw .corrupt("\(cpath): not a JSON object") }
        let config: ModelConfig
        do { config = try ModelConfig(huggingFaceConfig: object) } catch {
            throw PSTError(status: error.status, "\(cpath): \(error.message)")
        }
        let weights = try SafeTensorsWeights(directory: dir)
        try self.init(config: config, options: options) { (name: String, shape: [Int], dst: UnsafeMutableBufferPointer<Float>) throws(PSTError) in
            try weights.read(name, shape, dst)
        }
    }

    /// `init(huggingFaceDirectory:options:)`, fp32 or QLoRA's base.
    public convenience init(huggingFaceDirectory dir: String, qlora: Bool) throws(PSTError) {
        try self.init(huggingFaceDirectory: dir, options: qlora ? .qlora : .dense)
    }
}

/// A model and its tokenizer, loaded from one path (what pst_llm_load opens).
public struct LoadedModel {
    public let model: LanguageModel
    /// nil for a checkpoint directory without a supported tokenizer.json (`tokenizerError` says why).
    public let tokenizer: BPETokenizer?
    public let tokenizerError: PSTError?
    public let path: String
    public let options: ModelLoadOptions

    /// Loads `path`: a directory is a Hugging Face checkpoint (its tokenizer optional), anything
    /// else a GGUF file (its tokenizer required, and read first). `preTokenizer` overrides the
    /// files' own. The model is left in evaluation mode.
    ///
    /// `PST_ERR_NOT_FOUND` for no such path, `PST_ERR_IO` when it cannot be examined,
    /// `PST_ERR_CORRUPT` for a tokenizer larger than the model's vocabulary; the loaders' errors.
    public static func load(path: String, options: ModelLoadOptions,
                            preTokenizer: BPEPreTokenizer? = nil) throws(PSTError) -> LoadedModel {
        try options.computeDType.checkAvailable("compute_dtype")   // before the (long) load
        var st = stat()
        guard stat(path, &st) == 0 else {
            if errno == ENOENT { throw .notFound("path \"\(path)\": no such file or directory") }
            throw .io("path \"\(path)\": \(errnoDescription())")
        }
        let model: LanguageModel
        var tok: BPETokenizer? = nil, tokErr: PSTError? = nil
        if (st.st_mode & S_IFMT) == S_IFDIR {
            model = try LanguageModel(huggingFaceDirectory: path, options: options)
            do throws(PSTError) { tok = try BPETokenizer(huggingFaceDirectory: path, preTokenizer: preTokenizer) } catch { tokErr = error }
        } else {
            let g = try GGUFFile(path: path)
            tok = try BPETokenizer(gguf: g, preTokenizer: preTokenizer)
            model = try LanguageModel(gguf: g, options: options)
        }
        if let tok, tok.vocabSize > model.config.vocab {
            throw .corrupt("path \"\(path)\": the tokenizer has \(tok.vocabSize) tokens, the model's vocabulary \(model.config.vocab)")
        }
        model.training = false
        try model.setComputeDType(options.computeDType)
        return LoadedModel(model: model, tokenizer: tok, tokenizerError: tokErr, path: path, options: options)
    }
}
