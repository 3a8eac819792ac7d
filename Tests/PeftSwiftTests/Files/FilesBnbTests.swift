import Foundation
import Testing
import CPeftSwift
@testable import PeftSwift

/// bitsandbytes 4-bit checkpoints: files saved from bitsandbytes 0.50.2 Linear4bit.state_dict
/// load into QuantizedTensors that dequantize to bitsandbytes' values, and saving them again
/// reproduces the files byte for byte.
@Suite struct FilesBnbTests {
    /// A loaded 4-bit layer's forward (the engine's SGEMM over dequantized panels) vs a scalar
    /// Float dot product of 64 terms over the same dequantized weight: ~64·2^-24 ~ 4e-6, with margin.
    static let forwardTol: Float = 1e-4

    static let cases = ["nf4_plain", "nf4_dq", "fp4_plain", "fp4_dq", "nf4_dq_odd_bias", "fp4_plain_odd_bias", "nf4_dq_bf16"]

    static func open(_ c: String) throws -> SafeTensorsFile { try SafeTensorsFile(path: FilesFixtures.path("bnb/\(c).safetensors")) }

    static func dequant(_ q: QuantizedTensor) -> [UInt8] {
        var out = [UInt8](repeating: 0, count: q.count * q.dtype.size)
        out.withUnsafeMutableBytes { q.dequantize(into: $0.baseAddress!, dtype: q.dtype) }
        return out
    }

    @Test(arguments: cases)
    func loadsBitsandbytesCheckpoint(_ c: String) throws {
        let f = try Self.open(c)
        #expect(BnbCheckpoint.modules(in: f) == [""])
        let layer = try BnbCheckpoint.load(f, module: "")
        let q = layer.weight
        let ref = try SafeTensorsFile(path: FilesFixtures.path("bnb/\(c)_ref.safetensors"))
        let w = try ref.tensor("w")
        #expect(q.shape == w.shape)
        #expect(q.quantType.name == String(c.prefix(3)))
        #expect((q.nested != nil) == c.contains("_dq"))
        #expect(q.dtype == (c.hasSuffix("bf16") ? .bf16 : .f32))
        #expect((layer.bias != nil) == c.hasSuffix("bias"))
        if let b = layer.bias { #expect(b.array == (try f.tensor("bias").floats())) }
        // bitsandbytes' dequantize_4bit, in the original dtype, bit for bit (±0 alike)
        let got = Self.dequant(q), want = try ref.tensor("dequant").byteArray
        let gv = widenedValues(got, q.dtype), wv = widenedValues(want, q.dtype)
        #expect(gv.count == wv.count)
        #expect(zip(gv, wv).allSatisfy { sameFloat($0, $1) }, "\(c)")
    }

    /// Saving the loaded layer gives bitsandbytes' file byte for byte (tensors, blob, header).
    @Test(arguments: cases)
    func resavesByteForByte(_ c: String) throws {
        let orig = try FilesFixtures.bytes("bnb/\(c).safetensors")
        let layer = try BnbCheckpoint.load(try Self.open(c), module: "")
        let dir = try TempDir("bnb")
        defer { dir.cleanup() }
        try BnbCheckpoint.save([layer], to: dir.file("w.safetensors"))
        #expect(try readFileBytes(dir.file("w.safetensors")) == orig)
        // the blob alone
        let blobKey = "weight.quant_state.bitsandbytes__\(layer.weight.quantType.name)"
        #expect(BnbQuantStateBlob(layer.weight).serialized() == (try Self.open(c).tensor(blobKey).byteArray))
    }

    /// Quantizing bitsandbytes' input in peftswift and saving gives bitsandbytes' file: byte
    /// for byte without double quantization; with it, the packed codes, quant maps and
    /// nested absmax agree and the 8-bit indices differ only where bitsandbytes' CPU lookup
    /// table misses the nearest code (FORMATS.md).
    @Test(arguments: cases)
    func quantizeAndSaveMatchesBitsandbytes(_ c: String) throws {
        let f = try Self.open(c)
        let theirs = try BnbCheckpoint.load(f, module: "")
        let ref = try SafeTensorsFile(path: FilesFixtures.path("bnb/\(c)_ref.safetensors"))
        let w = try ref.tensor("w")
        let x = w.byteArray
        let q = try x.withUnsafeBytes {
            try QuantizedTensor(quantizing: $0.baseAddress!, dtype: theirs.weight.dtype, shape: w.shape, blocksize: 64,
                                type: theirs.weight.quantType, doubleQuant: theirs.weight.nested != nil)
        }
        let mine = BnbLayer(module: "", weight: q, bias: theirs.bias)
        let bytes = try SafeTensorsWriter.serialize(try BnbCheckpoint.entries(mine))
        if q.nested == nil {
            #expect(bytes == (try FilesFixtures.bytes("bnb/\(c).safetensors")))
        } else {
            let back = try SafeTensorsFile(bytes: bytes, name: "mine")
            #expect(back.names == f.names)
            for n in ["weight", "weight.quant_map", "weight.nested_quant_map"] {
                #expect(try back.tensor(n).byteArray == f.tensor(n).byteArray, "\(c) \(n)")
            }
            let a = q.nested!, b = theirs.weight.nested!
            #expect(abs(a.offset - b.offset) <= 2 * a.offset.ulp)
            let diff = (0..<a.q.count).filter { a.q[$0] != b.q[$0] }
            #expect(diff.allSatisfy { abs(Int(a.q[$0]) - Int(b.q[$0])) <= 3 }, "\(c): \(diff)")
            if a.offset == b.offset && diff.isEmpty {
                #expect(bytes == (try FilesFixtures.bytes("bnb/\(c).safetensors")))
            }
        }
    }

    /// A transformers-style file: two layers under module paths plus a plain tensor.
    @Test func multiLayerFile() throws {
        let path = FilesFixtures.path("bnb/two_layers.safetensors")
        let f = try SafeTensorsFile(path: path)
        #expect(BnbCheckpoint.modules(in: f) == ["model.layers.0.mlp.down_proj", "model.layers.0.self_attn.q_proj"])
        let layers = try BnbCheckpoint.loadAll(f)
        #expect(layers.map(\.weight.shape) == [[16, 64], [16, 64]])
        let norm = try f.tensor("model.norm.weight")
        let out = try SafeTensorsWriter.serialize(try layers.flatMap { try BnbCheckpoint.entries($0) } +
                                                  [SafeTensorsEntry(name: norm.name, dtype: norm.dtype, shape: norm.shape, data: norm.byteArray)])
        #expect(out == (try readFileBytes(path)))
        #expect(thrownPST { _ = try BnbCheckpoint.load(f, module: "model.layers.9.mlp") }?.status == PST_ERR_NOT_FOUND)
        #expect(thrownPST { _ = try BnbCheckpoint.load(f, module: "model.norm") }?.status == PST_ERR_CORRUPT)
        // a LoRA layer over a loaded weight computes x·dequant(W)ᵀ
        let l = try LoraLinear(quantized: layers[0].weight)
        l.training = false
        let x = (0..<64).map { Float($0 % 9) * 0.25 - 1 }
        var y = [Float](repeating: 0, count: 16)
        try x.withUnsafeBufferPointer { xp in try y.withUnsafeMutableBufferPointer { try l.forward(xp, m: 1, $0) } }
        let wd = widenedValues(Self.dequant(layers[0].weight), .f32)
        for o in 0..<16 {
            let ref = (0..<64).reduce(Float(0)) { $0 + x[$1] * wd[o * 64 + $1] }
            #expect(abs(y[o] - ref) <= Self.forwardTol * max(1, abs(ref)))
        }
    }

    // MARK: - errors

    func parseBlob(_ s: String) -> PSTError? {
        let bytes = Array(s.utf8)
        return thrownPST { _ = try bytes.withUnsafeBytes { try BnbQuantStateBlob.parse($0, source: "blob") } }
    }

    @Test func blobChecks() throws {
        let good = #"{"quant_type": "nf4", "blocksize": 64, "dtype": "float32", "shape": [24, 40], "nested_blocksize": 256, "nested_dtype": "float32", "nested_offset": 0.15548698604106903}"#
        let b = try Array(good.utf8).withUnsafeBytes { try BnbQuantStateBlob.parse($0, source: "blob") }
        #expect(b.nested?.offset == Float(0.15548698604106903))
        #expect(b.serialized() == Array(good.utf8))
        let bad: [(String, String)] = [
            (#"{"quant_type": "nf3", "blocksize": 64, "dtype": "float32", "shape": [4]}"#, "quant_type \"nf3\""),
            (#"{"quant_type": "nf4", "blocksize": 48, "dtype": "float32", "shape": [4]}"#, "blocksize (48)"),
            (#"{"quant_type": "nf4", "blocksize": 64, "dtype": "int8", "shape": [4]}"#, "dtype \"int8\""),
            (#"{"quant_type": "nf4", "blocksize": 64, "dtype": "float32", "shape": [0]}"#, "shape[0] (0)"),
            (#"{"quant_type": "nf4", "blocksize": 64, "dtype": "float32", "shape": null}"#, "shape (null)"),
            (#"{"quant_type": "nf4", "blocksize": 64, "dtype": "float32", "shape": [4294967296, 4294967296]}"#, "too many elements"),
            (#"{"quant_type": "nf4", "blocksize": 64, "dtype": "float32", "shape": [4], "extra": 1}"#, "unknown quant state key \"extra\""),
            (#"{"quant_type": "nf4", "blocksize": 64, "dtype": "float32", "shape": [4], "nested_offset": 0.5}"#, "nested keys must come together"),
            (#"{"quant_type": "nf4", "blocksize": 64, "dtype": "float32", "shape": [4], "nested_blocksize": 256, "nested_dtype": "float32", "nested_offset": 1e39}"#, "not a finite float32"),
            (#"{"quant_type": "nf4", "blocksize": 64.0, "dtype": "float32", "shape": [4]}"#, "blocksize (64.0) is not an integer"),
            (#"{"blocksize": 64, "dtype": "float32", "shape": [4]}"#, "no quant_type"),
            (#"[1]"#, "not an object"),
            (#"{"quant_type": "nf4""#, "invalid JSON"),
        ]
        for (s, fragment) in bad {
            let e = parseBlob(s)
            #expect(e?.status == PST_ERR_CORRUPT, "\(s)")
            #expect(e?.message.contains(fragment) == true, "\(s): \(String(describing: e))")
        }
    }

    /// Rewrites nf4_dq.safetensors with one change and returns the load error.
    func loadError(_ edit: (inout [SafeTensorsEntry]) -> Void) throws -> PSTError? {
        let f = try Self.open("nf4_dq")
        var entries = f.views().map { SafeTensorsEntry(name: $0.name, dtype: $0.dtype, shape: $0.shape, data: $0.byteArray) }
        edit(&entries)
        let bytes = try SafeTensorsWriter.serialize(entries)
        return thrownPST { _ = try BnbCheckpoint.load(try SafeTensorsFile(bytes: bytes, name: "q.safetensors"), module: "") }
    }

    static func replace(_ entries: inout [SafeTensorsEntry], _ name: String, _ make: (SafeTensorsEntry) -> SafeTensorsEntry?) {
        entries = entries.compactMap { $0.name == name ? make($0) : $0 }
    }

    static func data(_ e: SafeTensorsEntry) -> [UInt8] { if case .owned(let d) = e.storage { return d }; return [] }

    @Test func loaderChecks() throws {
        var e = try loadError { Self.replace(&$0, "weight.nested_absmax") { _ in nil } }
        #expect(e?.status == PST_ERR_CORRUPT && e?.message == "q.safetensors: module \"\": missing tensor \"weight.nested_absmax\"")
        e = try loadError { Self.replace(&$0, "weight.absmax") { SafeTensorsEntry(name: $0.name, dtype: .u8, shape: [14], data: Array(Self.data($0).prefix(14))) } }
        #expect(e?.status == PST_ERR_SHAPE)
        #expect(e?.message.contains("tensor \"weight.absmax\" has 14 elements (shape [14]); the quant state (shape [24, 40], blocksize 64) needs 15") == true)
        e = try loadError { Self.replace(&$0, "weight.quant_map") { SafeTensorsEntry(name: $0.name, dtype: .f16, shape: [32], data: Self.data($0)) } }
        #expect(e?.status == PST_ERR_CORRUPT && e?.message.contains("is F16, expected F32") == true)
        e = try loadError { $0.append(SafeTensorsEntry(name: "weight.quant_state.bitsandbytes__fp4", dtype: .u8, shape: [2], data: [0x7B, 0x7D])) }
        #expect(e?.status == PST_ERR_CORRUPT && e?.message.contains("exactly one") == true)
        e = try loadError { $0.append(SafeTensorsEntry(name: "weight.code", dtype: .u8, shape: [1], data: [0])) }
        #expect(e?.message.contains("unexpected tensor \"weight.code\"") == true)
        e = try loadError { Self.replace(&$0, "weight.nested_absmax") { SafeTensorsEntry(name: $0.name, dtype: .f32, shape: [1], data: [0, 0, 0xC0, 0x7F]) } }
        #expect(e?.status == PST_ERR_NONFINITE && e?.message.hasPrefix("q.safetensors: module \"\": nested absmax[0] is") == true, "\(String(describing: e))")
        e = try loadError { Self.replace(&$0, "weight.quant_state.bitsandbytes__nf4") {
            SafeTensorsEntry(name: $0.name, dtype: .u8, shape: [3], data: Array("{x}".utf8)) } }
        #expect(e?.status == PST_ERR_CORRUPT && e?.message.hasPrefix("q.safetensors: module \"\": quant state: invalid JSON at byte 1") == true)
        e = try loadError { Self.replace(&$0, "weight.quant_state.bitsandbytes__nf4") {
            SafeTensorsEntry(name: "weight.quant_state.bitsandbytes__fp4", dtype: .u8, shape: $0.shape, data: Self.data($0)) } }
        #expect(e?.message.contains("disagrees with its quant_type \"nf4\"") == true)
        e = try loadError { $0.append(SafeTensorsEntry(name: "bias", shape: [5], floats: [1, 2, 3, 4, 5])) }
        #expect(e?.status == PST_ERR_SHAPE && e?.message.contains("the weight [24, 40] has 24 rows") == true)
    }

    /// With PST_FILES_EXPORT=<dir>: a checkpoint quantized and saved by peftswift (nf4 + double
    /// quant with bias, fp4 plain) plus the weights it came from, for
    /// Tests/fixtures/check_files_exports.py to load with bitsandbytes.
    @Test func exportForPython() throws {
        guard let out = ProcessInfo.processInfo.environment["PST_FILES_EXPORT"] else { return }
        var layers: [BnbLayer] = [], src: [SafeTensorsEntry] = []
        for (i, (qt, dq)) in [(QuantType.nf4, true), (.fp4, false)].enumerated() {
            let (o, inF) = (48, 136)
            let w = (0..<(o * inF)).map { Float(sin(Double($0) * 0.37 + Double(i))) * 0.2 }
            let q = try w.withUnsafeBytes { try QuantizedTensor(quantizing: $0.baseAddress!, dtype: .f32, shape: [o, inF], type: qt, doubleQuant: dq) }
            let bias = try AlignedBuffer<Float>((0..<o).map { Float($0) * 0.01 })
            let m = "layers.\(i).proj"
            layers.append(BnbLayer(module: m, weight: q, bias: bias))
            src.append(SafeTensorsEntry(name: "\(m).w", shape: [o, inF], floats: w))
            src.append(SafeTensorsEntry(name: "\(m).dequant", shape: [o, inF], floats: widenedValues(Self.dequant(q), .f32)))
        }
        try BnbCheckpoint.save(layers, to: out + "/bnb_checkpoint.safetensors")
        try SafeTensorsWriter.write(src, to: out + "/bnb_checkpoint_src.safetensors")
    }
}
