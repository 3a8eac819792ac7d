import CPeftSwift

// bitsandbytes 4-bit checkpoints (bitsandbytes 0.50.2 Linear4bit.state_dict saved with
// safetensors, measured; FORMATS.md §2 and §4). For a module at path P ("" for a bare layer):
//   P.weight                                       U8  [(n+1)/2, 1]  packed codes
//   P.weight.absmax                                F32 [blocks]      (U8 [blocks] when nested)
//   P.weight.quant_map                             F32 [16]
//   P.weight.nested_absmax                         F32 [ceil(blocks/256)]   nested only
//   P.weight.nested_quant_map                      F32 [256]                nested only
//   P.weight.quant_state.bitsandbytes__nf4|__fp4   U8  [len]  json.dumps({"quant_type",
//       "blocksize", "dtype", "shape"[, "nested_blocksize", "nested_dtype", "nested_offset"]})
//   P.bias                                         optional, [out]
// QuantState.from_dict reads the blob with exactly one quant_state key, takes
// float(nested_offset) then a float32 tensor of it, and allows no other keys.

/// The non-tensor part of a bitsandbytes QuantState (the `quant_state.bitsandbytes__*` blob).
public struct BnbQuantStateBlob: Equatable, Sendable {
    public var quantType: QuantType
    public var blocksize: Int
    /// The original dtype (`"float32"`, `"float16"`, `"bfloat16"`).
    public var dtype: DType
    public var shape: [Int]
    public var nested: Nested?

    public struct Nested: Equatable, Sendable {
        public var blocksize: Int
        /// The nested absmax dtype (bitsandbytes writes "float32").
        public var dtype: DType
        /// `float(nested_offset)` rounded to float32, as `QuantState.from_dict` does.
        public var offset: Float
        public init(blocksize: Int, dtype: DType = .f32, offset: Float) {
            self.blocksize = blocksize; self.dtype = dtype; self.offset = offset
        }
    }

    public init(quantType: QuantType, blocksize: Int, dtype: DType, shape: [Int], nested: Nested?) {
        self.quantType = quantType; self.blocksize = blocksize; self.dtype = dtype; self.shape = shape; self.nested = nested
    }

    /// The blob of a quantized tensor.
    public init(_ q: QuantizedTensor) {
        self.init(quantType: q.quantType, blocksize: q.blocksize, dtype: q.dtype, shape: q.shape,
                  nested: q.nested.map { Nested(blocksize: $0.blocksize, dtype: .f32, offset: $0.offset) })
    }

    /// Exactly bitsandbytes' bytes: `json.dumps` with default separators, keys in
    /// `QuantState.as_dict` order, `nested_offset` as Python's repr of the float32 widened to a
    /// double (`0.05204557999968529`).
    public func serialized() -> [UInt8] {
        var o = JSONObject([
            ("quant_type", .string(quantType.name)),
            ("blocksize", .int(blocksize)),
            ("dtype", .string(dtype.torchName)),
            ("shape", .array(shape.map { .int($0) })),
        ])
        if let nested {
            o.set("nested_blocksize", .int(nested.blocksize))
            o.set("nested_dtype", .string(nested.dtype.torchName))
            o.set("nested_offset", .number(JSONNumber(uncheckedText: JSONNumber.pythonRepr(Double(nested.offset)))))
        }
        return JSON.serialize(.object(o), style: .python)
    }

    /// Parses and checks a blob. `PST_ERR_CORRUPT` for malformed JSON, missing or unknown
    /// keys, wrong types or values (quant_type nf4/fp4, blocksize one of 32...4096, dtype
    /// float32/float16/bfloat16, shape of integers >= 1, nested keys all or none, nested
    /// blocksize 1...2^24, nested dtype float32, finite nested offset).
    public static func parse(_ bytes: UnsafeRawBufferPointer, source: String) throws(PSTError) -> BnbQuantStateBlob {
        let root = try JSON.parse(bytes, source: source, limits: JSON.Limits(maxBytes: 1 << 16, maxDepth: 8))
        func bad(_ m: String) -> PSTError { .corrupt("\(source): \(m)") }
        guard case .object(let o) = root else { throw bad("quant state is \(root.kindName), not an object") }
        let allowed: Set<String> = ["quant_type", "blocksize", "dtype", "shape", "nested_blocksize", "nested_dtype", "nested_offset"]
        if let k = o.keys.first(where: { !allowed.contains($0) }) { throw bad("unknown quant state key \(quoted(k))") }
        func string(_ k: String) throws(PSTError) -> String {
            guard let v = o[k] else { throw bad("quant state has no \(k)") }
            guard case .string(let s) = v else { throw bad("\(k) is \(v.kindName), expected a string") }
            return s
        }
        func int(_ k: String) throws(PSTError) -> Int {
            guard let v = o[k] else { throw bad("quant state has no \(k)") }
            guard case .number(let n) = v, let i = n.int else { throw bad("\(k) (\(SafeTensorsHeader.describe(v))) is not an integer") }
            return i
        }
        func floatDType(_ k: String) throws(PSTError) -> DType {
            let s = try string(k)
            guard let d = DType(torchName: s), d.isFloat else { throw bad("\(k) \(quoted(s)) is not float32, float16 or bfloat16") }
            return d
        }
        let qts = try string("quant_type")
        guard let qt = QuantType(name: qts) else { throw bad("quant_type \(quoted(qts)) is not \"nf4\" or \"fp4\"") }
        let bs = try int("blocksize")
        guard Quant4.blocksizes.contains(bs) else { throw bad("blocksize (\(bs)) is not one of 32, 64, 128, 256, 512, 1024, 2048, 4096") }
        let dtype = try floatDType("dtype")
        guard let sv = o["shape"] else { throw bad("quant state has no shape") }
        guard case .array(let sa) = sv, !sa.isEmpty, sa.count <= 8 else {
            throw bad("shape (\(SafeTensorsHeader.describe(sv))) is not a list of 1 to 8 integers")
        }
        var shape: [Int] = []
        var n = 1
        for (i, d) in sa.enumerated() {
            guard case .number(let num) = d, let x = num.int, x >= 1 else { throw bad("shape[\(i)] (\(SafeTensorsHeader.describe(d))) is not an integer >= 1") }
            let (m, ovf) = n.multipliedReportingOverflow(by: x)
            guard !ovf, m <= Int.max / 8 else { throw bad("shape \(SafeTensorsHeader.describe(sv)) has too many elements") }
            n = m
            shape.append(x)
        }
        let nestedKeys = ["nested_blocksize", "nested_dtype", "nested_offset"]
        let present = nestedKeys.filter { o[$0] != nil }
        var nested: Nested? = nil
        if !present.isEmpty {
            guard present.count == 3 else {
                throw bad("nested keys must come together; found only \(present.joined(separator: ", "))")
            }
            let nbs = try int("nested_blocksize")
            guard nbs >= 1 && nbs <= Blockwise8.maxBlocksize else { throw bad("nested_blocksize (\(nbs)) must be in 1...\(Blockwise8.maxBlocksize)") }
            let nd = try floatDType("nested_dtype")
            guard nd == .f32 else { throw bad("nested_dtype \(quoted(nd.torchName)) is not float32") }
            guard case .number(let off)? = o["nested_offset"] else { throw bad("nested_offset is not a number") }
            let offset = Float(off.double)
            guard offset.isFinite else { throw bad("nested_offset (\(off.text)) is not a finite float32") }
            nested = Nested(blocksize: nbs, dtype: nd, offset: offset)
        }
        return BnbQuantStateBlob(quantType: qt, blocksize: bs, dtype: dtype, shape: shape, nested: nested)
    }
}

/// A bitsandbytes `Linear4bit` in a checkpoint: module path, 4-bit weight, optional bias.
public struct BnbLayer {
    /// Module path, e.g. `model.layers.0.mlp.down_proj` ("" for a bare layer's state_dict).
    public let module: String
    public let weight: QuantizedTensor
    public let bias: AlignedBuffer<Float>?

    public init(module: String, weight: QuantizedTensor, bias: AlignedBuffer<Float>? = nil) {
        self.module = module; self.weight = weight; self.bias = bias
    }

    /// The base of a LoRA layer over a quantized weight (its bias included).
    public init(module: String, layer: LoraLinear) throws(PSTError) {
        guard case .quantized(let q) = layer.base else {
            throw .invalidArgument("module \(quoted(module)) has a dense base; a bitsandbytes checkpoint holds 4-bit weights")
        }
        self.init(module: module, weight: q, bias: layer.bias)
    }
}

public enum BnbCheckpoint {
    /// `module.suffix`, or `suffix` for the bare layer ("").
    public static func key(_ module: String, _ suffix: String) -> String { module.isEmpty ? suffix : module + "." + suffix }

    /// The safetensors entries of one layer, with bitsandbytes' keys, dtypes and shapes. The
    /// entries reference the layer's buffers (no copy).
    public static func entries(_ layer: BnbLayer) throws(PSTError) -> [SafeTensorsEntry] {
        let q = layer.weight, m = layer.module
        let blob = BnbQuantStateBlob(q).serialized()
        var e: [SafeTensorsEntry] = [
            SafeTensorsEntry(name: key(m, "weight"), dtype: .u8, shape: [q.packed.count, 1], buffer: q.packed),
            SafeTensorsEntry(name: key(m, "weight.quant_map"), dtype: .f32, shape: [q.code.count], buffer: q.code),
            SafeTensorsEntry(name: key(m, "weight.quant_state.bitsandbytes__\(q.quantType.name)"), dtype: .u8, shape: [blob.count], data: blob),
        ]
        if let nested = q.nested {
            e.append(SafeTensorsEntry(name: key(m, "weight.absmax"), dtype: .u8, shape: [nested.q.count], buffer: nested.q))
            e.append(SafeTensorsEntry(name: key(m, "weight.nested_absmax"), dtype: .f32, shape: [nested.absmax.count], buffer: nested.absmax))
            e.append(SafeTensorsEntry(name: key(m, "weight.nested_quant_map"), dtype: .f32, shape: [nested.code.count], buffer: nested.code))
        } else if let absmax = q.absmax {
            e.append(SafeTensorsEntry(name: key(m, "weight.absmax"), dtype: .f32, shape: [absmax.count], buffer: absmax))
        }
        if let bias = layer.bias {
            guard q.shape.count == 2, bias.count == q.shape[0] else {
                throw .shape("module \(quoted(m)): bias has \(bias.count) elements; the weight \(q.shape) has \(q.shape.first ?? 0) rows")
            }
            e.append(SafeTensorsEntry(name: key(m, "bias"), dtype: .f32, shape: [bias.count], buffer: bias))
        }
        return e
    }

    /// Writes the layers as one safetensors file (atomically), byte-identical to
    /// `safetensors.torch.save_file({P.k: v for each layer's state_dict})` for float32 biases.
    /// Module paths must be distinct.
    public static func save(_ layers: [BnbLayer], to path: String, metadata: [(String, String)]? = nil,
                            extra: [SafeTensorsEntry] = []) throws(PSTError) {
        var entries = extra
        for l in layers { entries += try self.entries(l) }
        try SafeTensorsWriter.write(entries, metadata: metadata, to: path)
    }

    /// Module paths that hold a 4-bit weight (a `weight.quant_state.bitsandbytes__*` key), in
    /// file order.
    public static func modules(in file: SafeTensorsFile) -> [String] {
        var out: [String] = [], seen = Set<String>()
        for n in file.names {
            for qt in QuantType.allCases {
                let suffix = "weight.quant_state.bitsandbytes__" + qt.name
                guard n.hasSuffix(suffix) else { continue }
                let u = Array(n.utf8).dropLast(suffix.utf8.count)
                var m = String(decoding: u, as: UTF8.self)
                if m.hasSuffix(".") { m.removeLast() } else if !m.isEmpty { continue }
                if seen.insert(m).inserted { out.append(m) }
            }
        }
        return out
    }

    /// Reads the 4-bit layer at `module` ("" for a bare state_dict). Checks the blob
    /// (`BnbQuantStateBlob.parse`), that exactly one quant_state key exists, that no other
    /// `weight.*` key does, every tensor's dtype and element count against the blob's shape and
    /// blocksize (`PST_ERR_SHAPE` for counts, `PST_ERR_CORRUPT` for dtypes and missing
    /// pieces), finite statistics (`PST_ERR_NONFINITE`), and a bias of out_features float
    /// elements if present. The result owns copies of the data.
    public static func load(_ file: SafeTensorsFile, module: String) throws(PSTError) -> BnbLayer {
        let fp = file.path, mq = quoted(module)
        func bad(_ m: String) -> PSTError { .corrupt("\(fp): module \(mq): \(m)") }
        let prefix = key(module, "weight.")
        let stateKeys = QuantType.allCases.map { prefix + "quant_state.bitsandbytes__" + $0.name }.filter { file.contains($0) }
        guard !stateKeys.isEmpty else {
            if !file.contains(key(module, "weight")) { throw .notFound("\(fp): no 4-bit weight for module \(mq) (no \(quoted(key(module, "weight"))))") }
            throw bad("no \(quoted(prefix + "quant_state.bitsandbytes__nf4")) or __fp4 key; the weight is not a bitsandbytes 4-bit weight")
        }
        guard stateKeys.count == 1 else { throw bad("both quant_state keys are present; bitsandbytes requires exactly one") }
        let known: Set<String> = ["absmax", "quant_map", "nested_absmax", "nested_quant_map", "quant_state.bitsandbytes__nf4", "quant_state.bitsandbytes__fp4"]
        for n in file.names where n.hasPrefix(prefix) {
            let rest = String(decoding: Array(n.utf8).dropFirst(prefix.utf8.count), as: UTF8.self)
            guard known.contains(rest) else { throw bad("unexpected tensor \(quoted(n))") }
        }
        let blobView = try file.tensor(stateKeys[0])
        guard blobView.dtype == .u8 else { throw bad("\(quoted(stateKeys[0])) is \(blobView.dtype.rawValue), expected U8") }
        let blob = try blobView.withUnsafeBytes { (b) throws(PSTError) in
            try BnbQuantStateBlob.parse(b, source: "\(fp): module \(mq): quant state")
        }
        guard stateKeys[0].hasSuffix("__" + blob.quantType.name) else {
            throw bad("quant_state key \(quoted(stateKeys[0])) disagrees with its quant_type \(quoted(blob.quantType.name))")
        }
        let n = blob.shape.reduce(1, *)
        let nb = Quant4.blockCount(n, blocksize: blob.blocksize)

        func tensor(_ suffix: String, _ dtype: SafeTensorsDType, count: Int) throws(PSTError) -> SafeTensorView {
            let k = key(module, suffix)
            guard file.contains(k) else { throw bad("missing tensor \(quoted(k))") }
            let v = try file.tensor(k)
            guard v.dtype == dtype else { throw bad("tensor \(quoted(k)) is \(v.dtype.rawValue), expected \(dtype.rawValue)") }
            guard v.elementCount == count else {
                throw .shape("\(fp): module \(mq): tensor \(quoted(k)) has \(v.elementCount) elements (shape \(v.shape)); the quant state (shape \(blob.shape), blocksize \(blob.blocksize)) needs \(count)")
            }
            return v
        }
        let packed = try tensor("weight", .u8, count: Quant4.packedByteCount(n))
        guard packed.shape.count == 2 && packed.shape[1] == 1 || packed.shape.count == 1 else {
            throw .shape("\(fp): module \(mq): tensor \(quoted(key(module, "weight"))) has shape \(packed.shape); bitsandbytes stores [(n+1)/2, 1]")
        }
        let code = try tensor("weight.quant_map", .f32, count: 16)
        var nestedViews: (q: SafeTensorView, absmax: SafeTensorView, code: SafeTensorView)? = nil
        var plainAbsmax: SafeTensorView? = nil
        if let nested = blob.nested {
            let q = try tensor("weight.absmax", .u8, count: nb)
            let a = try tensor("weight.nested_absmax", .f32, count: Blockwise8.blockCount(nb, blocksize: nested.blocksize))
            let c = try tensor("weight.nested_quant_map", .f32, count: 256)
            nestedViews = (q, a, c)
        } else {
            for s in ["weight.nested_absmax", "weight.nested_quant_map"] where file.contains(key(module, s)) {
                throw bad("tensor \(quoted(key(module, s))) present but the quant state has no nested keys")
            }
            plainAbsmax = try tensor("weight.absmax", .f32, count: nb)
        }

        // The packed codes and 8-bit indices are read in place (bytes need no alignment); the
        // float32 statistics are staged through aligned buffers (the views may be misaligned
        // in foreign files). QuantizedTensor copies what it keeps.
        func floats(_ v: SafeTensorView) throws(PSTError) -> AlignedBuffer<Float> {
            let b = try AlignedBuffer<Float>(count: v.elementCount)
            try v.copyFloats(into: b.buffer)
            return b
        }
        func bytes(_ v: SafeTensorView) -> UnsafeBufferPointer<UInt8> {
            UnsafeBufferPointer(start: v.bytes.baseAddress?.bindMemory(to: UInt8.self, capacity: v.byteCount), count: v.byteCount)
        }
        let codeF = try floats(code)
        let weight: QuantizedTensor
        do throws(PSTError) {
            if let nv = nestedViews, let ns = blob.nested {
                let af = try floats(nv.absmax), cf = try floats(nv.code)
                weight = try QuantizedTensor(shape: blob.shape, dtype: blob.dtype, quantType: blob.quantType, blocksize: blob.blocksize,
                                             packed: bytes(packed), code: UnsafeBufferPointer(codeF.buffer), absmax: nil,
                                             nested: (offset: ns.offset, q: bytes(nv.q), absmax: UnsafeBufferPointer(af.buffer),
                                                      code: UnsafeBufferPointer(cf.buffer), blocksize: ns.blocksize))
            } else if let pa = plainAbsmax {
                let af = try floats(pa)
                weight = try QuantizedTensor(shape: blob.shape, dtype: blob.dtype, quantType: blob.quantType, blocksize: blob.blocksize,
                                             packed: bytes(packed), code: UnsafeBufferPointer(codeF.buffer),
                                             absmax: UnsafeBufferPointer(af.buffer), nested: nil)
            } else {
                throw PSTError.internalError("no absmax")
            }
        } catch {
            // QuantizedTensor's own checks: the file's values, so invalid arguments are corruption.
            let status = error.status == PST_ERR_INVALID_ARG ? PST_ERR_CORRUPT : error.status
            throw PSTError(status: status, "\(fp): module \(mq): \(error.message)")
        }
        withExtendedLifetime(file) {}

        var bias: AlignedBuffer<Float>? = nil
        let bk = key(module, "bias")
        if file.contains(bk) {
            let v = try file.tensor(bk)
            guard [.f32, .f16, .bf16].contains(v.dtype) else { throw bad("tensor \(quoted(bk)) is \(v.dtype.rawValue), expected F32, F16 or BF16") }
            let out = blob.shape.count == 2 ? blob.shape[0] : -1
            guard v.elementCount == out else {
                throw .shape("\(fp): module \(mq): tensor \(quoted(bk)) has \(v.elementCount) elements; the weight \(blob.shape) has \(blob.shape[0]) rows")
            }
            let b = try AlignedBuffer<Float>(count: out)
            try v.copyFloats(into: b.buffer)
            for i in 0..<out where !b[i].isFinite { throw .nonFinite("\(fp): module \(mq): bias[\(i)] is \(b[i])") }
            bias = b
        }
        return BnbLayer(module: module, weight: weight, bias: bias)
    }

    /// Every 4-bit layer of a file (`modules(in:)`), loaded.
    public static func loadAll(_ file: SafeTensorsFile) throws(PSTError) -> [BnbLayer] {
        var out: [BnbLayer] = []
        for m in modules(in: file) { out.append(try load(file, module: m)) }
        return out
    }
}
