/// A GGUF file's tensors as the model asks for them: by Hugging Face name, in Hugging Face
/// layout, dequantized to fp32 (F32, F16, BF16, Q8_0, Q4_0, Q4_1; Files/GGUF+Dequant.swift).
/// Names are mapped by the config's architecture; the q/k rows llama.cpp's converter permuted
/// are put back.
public struct GGUFWeights {
    public let file: GGUFFile
    public let config: ModelConfig

    public init(file: GGUFFile, config: ModelConfig) {
        self.file = file
        self.config = config
    }

    /// The `WeightProvider` of the file: fills `destination` with tensor `name` (Hugging Face
    /// name and shape). `PST_ERR_NOT_FOUND` for a missing tensor, `PST_ERR_CORRUPT` for a shape
    /// other than the config's.
    public func read(_ name: String, _ shape: [Int], _ destination: UnsafeMutableBufferPointer<Float>) throws(PSTError) {
        guard let gname = config.architecture.ggufName(forHF: name) else { throw .internalError("no GGUF name for '\(name)'") }
        guard file.hasTensor(gname) else { throw .notFound("\(file.path): tensor '\(gname)' (\(name)) is missing") }
        let t = try file.tensor(named: gname)
        guard t.shape == shape else {
            throw .corrupt("\(file.path): tensor '\(gname)' has shape \(t.shape), the config needs \(shape)")
        }
        guard let p = destination.baseAddress else { return }
        try dequantizeHF(t, into: p, count: destination.count)
    }

    /// Dequantizes `t` in Hugging Face layout: rows of the q/k projections un-permuted back to
    /// the rotate-half order (see `ggufRow(forHFRow:headDim:)`); other tensors as stored.
    /// Output is row-major `t.shape` (= HF `[out_features, in_features]`).
    public func dequantizeHF(_ t: GGUFTensorInfo, into out: UnsafeMutablePointer<Float>, count: Int) throws(PSTError) {
        guard let heads = permutedHeads(tensorName: t.name) else {
            try file.dequantize(t, into: out, count: count)
            return
        }
        guard count == t.elementCount else { throw .shape("output holds \(count) floats, '\(t.name)' has \(t.elementCount)") }
        let hd = config.headDim
        guard t.rows == heads * hd else {
            throw .corrupt("\(file.path): tensor '\(t.name)' has \(t.rows) rows, expected \(heads) heads x \(hd)")
        }
        let cols = t.columns
        for r in 0..<t.rows {
            let g = GGUFWeights.ggufRow(forHFRow: r, headDim: hd)
            try file.dequantizeRows(t, rows: g..<(g + 1), into: out + r * cols, count: cols)
        }
    }

    /// Heads of the q (`attn_q`) or k (`attn_k`) projection named `tensorName` when the family's
    /// converter permuted them (`Architecture.ggufPermutesQK`), else nil.
    public func permutedHeads(tensorName: String) -> Int? {
        let a = config.architecture
        guard a.ggufPermutesQK else { return nil }
        func suffix(_ j: Int) -> String? {
            a.ggufLayerNames.first { $0.hf == a.projectionPaths[j] }.map { "." + $0.gguf + ".weight" }
        }
        if let q = suffix(0), tensorName.hasSuffix(q) { return config.heads }
        if let k = suffix(1), tensorName.hasSuffix(k) { return config.kvHeads }
        return nil
    }

    /// For row `hfRow` of an HF `q_proj`/`k_proj` weight, the GGUF (`attn_q`/`attn_k`) row that
    /// holds it.
    ///
    /// llama.cpp's convert_hf_to_gguf.py (`LlamaModel.permute`) reorders the rows of q_proj and
    /// k_proj inside each head from HF's rotate-half RoPE layout (first half of the head = the
    /// "real" parts, second half = the "imaginary" parts) to ggml's interleaved pairs:
    /// `w.reshape(heads, 2, hd/2, in).swapaxes(1, 2)`. So GGUF row h*hd + 2*i + j holds HF row
    /// h*hd + j*hd/2 + i (j in {0,1}, i < hd/2). transformers' GGUF loader undoes it
    /// (`LlamaTensorProcessor._reverse_permute_weights`, with the KV head count for k).
    @inline(__always)
    public static func ggufRow(forHFRow hfRow: Int, headDim: Int) -> Int {
        let h = hfRow / headDim, rem = hfRow - h * headDim, half = headDim / 2
        let j = rem / half, i = rem - j * half
        return h * headDim + 2 * i + j
    }
}
