// How big the model is: its parameters and the bytes its frozen base takes.

extension LanguageModel {
    /// The base model's parameters: embedding, final norm, untied head, every projection's
    /// out × in (and bias), every layer's two norms. Adapters are not counted.
    public var parameterCount: Int { sizes.parameters }

    /// Bytes of the frozen base as stored: 4 per fp32 value; a quantized projection's packed
    /// codes, absmax, codebook and nested (double-quantization) state.
    public var baseBytes: Int { sizes.bytes }

    private var sizes: (parameters: Int, bytes: Int) {
        var params = embedding.count + finalNorm.count + (lmHead?.count ?? 0)
        var bytes = 4 * params
        for (_, lin) in loraModules {
            params += lin.inFeatures * lin.outFeatures
            switch lin.base {
            case .dense(let w): bytes += 4 * w.count
            case .quantized(let q):
                bytes += q.packed.count + (q.absmax?.count ?? 0) * 4 + q.code.count * 4
                if let n = q.nested { bytes += n.q.count + n.absmax.count * 4 + n.code.count * 4 }
            }
            if let b = lin.bias { params += b.count; bytes += 4 * b.count }
        }
        for l in layers {
            let k = l.inputNorm.count + l.postAttentionNorm.count
            params += k; bytes += 4 * k
        }
        return (params, bytes)
    }
}
