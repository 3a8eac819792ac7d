import Foundation
import Testing
import CPeftSwift
@testable import PeftSwift

/// safetensors reader and writer against files written by the Python package (safetensors
/// 0.8.0, Tests/fixtures/make_files_fixtures.py) and its verdicts on hand-made files.
@Suite struct FilesSafeTensorsTests {
    static let stFiles = ["all_dtypes", "metadata", "empty_metadata", "shapes", "names", "no_tensors", "torch_dtypes"]

    typealias Manifest = [String: [String: Any]]
    static func manifest() throws -> Manifest { try FilesFixtures.json("st/manifest.json") as! Manifest }

    static func expectedBytes(_ name: String, _ dtype: String, _ n: Int) -> [UInt8] {
        let p = FilesFixtures.pattern(name, n)
        return dtype == "BOOL" ? p.map { $0 & 1 } : p
    }

    /// Every tensor of every Python-written file: names, dtypes, shapes, offsets (data order),
    /// bytes and metadata exactly as the Python package wrote them.
    @Test(arguments: stFiles)
    func readsPythonFiles(_ file: String) throws {
        let m = try Self.manifest()["\(file).safetensors"]!
        let f = try SafeTensorsFile(path: FilesFixtures.path("st/\(file).safetensors"))
        let want = m["tensors"] as! [[String: Any]]
        #expect(f.tensors.count == want.count)
        for (t, w) in zip(f.tensors, want) {
            #expect(t.name == w["name"] as! String)
            #expect(t.dtype.rawValue == w["dtype"] as! String)
            #expect(t.shape == w["shape"] as! [Int])
            #expect([t.begin, t.end] == w["data_offsets"] as! [Int])
            let v = try f.tensor(t.name)
            #expect(v.byteArray == Self.expectedBytes(t.name, t.dtype.rawValue, t.byteCount), "\(file): \(t.name)")
            #expect(v.isAligned)
        }
        let md = m["metadata"] as? [String: String]
        #expect(f.metadata == md)
    }

    /// Reading a Python file and writing its tensors again gives the same bytes (in memory and
    /// through the atomic file writer).
    @Test(arguments: stFiles)
    func rewritesPythonFilesByteForByte(_ file: String) throws {
        let path = FilesFixtures.path("st/\(file).safetensors")
        let orig = try readFileBytes(path)
        let f = try SafeTensorsFile(path: path)
        // shuffled input order: the writer sorts
        let entries = f.views().reversed().map { v in
            SafeTensorsEntry(name: v.name, dtype: v.dtype, shape: v.shape, data: v.byteArray)
        }
        let md = f.metadataPairs?.map { ($0.key, $0.value) }
        #expect(try SafeTensorsWriter.serialize(entries, metadata: md) == orig)
        let dir = try TempDir("st")
        defer { dir.cleanup() }
        try SafeTensorsWriter.write(entries, metadata: md, to: dir.file("out.safetensors"))
        #expect(try readFileBytes(dir.file("out.safetensors")) == orig)
        #expect(dir.list() == ["out.safetensors"])
    }

    /// The writer alone (tensors built here, not read back) reproduces safetensors.numpy's
    /// file for all dtypes.
    @Test func writerMatchesNumpySaveFile() throws {
        let dts: [(String, SafeTensorsDType)] = [("BOOL", .bool), ("U8", .u8), ("I8", .i8), ("I16", .i16), ("U16", .u16),
                                                 ("F16", .f16), ("I32", .i32), ("U32", .u32), ("F32", .f32), ("F64", .f64),
                                                 ("I64", .i64), ("U64", .u64)]
        var entries: [SafeTensorsEntry] = []
        for (s, d) in dts {
            let name = "t_\(s.lowercased())"
            entries.append(SafeTensorsEntry(name: name, dtype: d, shape: [3, 2], data: Self.expectedBytes(name, s, 6 * d.size)))
        }
        entries.append(SafeTensorsEntry(name: "a_second_f32", dtype: .f32, shape: [5], data: FilesFixtures.pattern("a_second_f32", 20)))
        entries.append(SafeTensorsEntry(name: "z_last_u8", dtype: .u8, shape: [7], data: FilesFixtures.pattern("z_last_u8", 7)))
        #expect(try SafeTensorsWriter.serialize(entries) == FilesFixtures.bytes("st/all_dtypes.safetensors"))
        // borrowed and AlignedBuffer-backed entries give the same bytes
        let w = FilesFixtures.pattern("weight", 48), b = FilesFixtures.pattern("bias", 16)
        let buf = try AlignedBuffer<UInt8>(b)
        let out = try w.withUnsafeBytes { wp in
            try SafeTensorsWriter.serialize([SafeTensorsEntry(name: "weight", dtype: .f32, shape: [4, 3], bytes: wp),
                                             SafeTensorsEntry(name: "bias", dtype: .f32, shape: [4], buffer: buf)],
                                            metadata: [("format", "pt")])
        }
        #expect(out == (try FilesFixtures.bytes("st/metadata.safetensors")))
    }

    /// The Python package's verdict on ~55 hand-made files, valid and invalid, is ours too
    /// (except for the two duplicate-key files, which peftswift rejects on purpose).
    @Test func agreesWithPythonOnHandMadeFiles() throws {
        let verdicts = try FilesFixtures.json("st_cases/verdicts.json") as! [String: [String: Any]]
        #expect(verdicts.count > 50)
        for (name, v) in verdicts.sorted(by: { $0.key < $1.key }) {
            let path = FilesFixtures.path("st_cases/\(name).safetensors")
            let python = v["python"] as! String
            var opened: SafeTensorsFile? = nil
            let e = thrownPST { opened = try SafeTensorsFile(path: path) }
            if let f = opened {
                #expect(python == "ok" && !name.hasPrefix("strict_"), "\(name): accepted; python: \(python)")
                let want = v["tensors"] as? [String: [Any]] ?? [:]
                #expect(Set(f.names) == Set(want.keys), "\(name)")
                for (k, s) in want { #expect(f.info(k)?.shape == s[1] as? [Int], "\(name) \(k)") }
            } else if let e {
                #expect(python != "ok" || name.hasPrefix("strict_"), "\(name): rejected (\(e.message)); python accepts")
                #expect(e.status == PST_ERR_CORRUPT, "\(name): \(e)")
                #expect(e.message.hasPrefix(path + ": "), "\(e.message)")
            }
        }
    }

    func corrupt(_ bytes: [UInt8]) -> PSTError? {
        thrownPST { _ = try SafeTensorsFile(bytes: bytes, name: "adapter_model.safetensors") }
    }

    static func file(_ header: String, data: Int) -> [UInt8] {
        var n = UInt64(header.utf8.count).littleEndian
        return withUnsafeBytes(of: &n) { Array($0) } + Array(header.utf8) + [UInt8](repeating: 0, count: data)
    }

    @Test func messagesNameTheFileAndTheProblem() {
        let e = corrupt(Self.file(#"{"x":{"dtype":"F32","shape":[2],"data_offsets":[0,99]}}"#, data: 64))
        #expect(e?.message == "adapter_model.safetensors: tensor \"x\" data_offsets [0, 99] end beyond the data section (64 bytes)")
        #expect(corrupt(Self.file(#"{"x":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}}"#, data: 8))?.message
                == "adapter_model.safetensors: tensor \"x\" shape [3] × F32 is 12 bytes, but data_offsets [0, 8] span 8")
        #expect(corrupt(Self.file(#"{"x":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}"#, data: 5))?.message
                == "adapter_model.safetensors: tensors cover 4 bytes of the data section, but it has 5 (file not fully covered)")
        #expect(corrupt(Self.file(#"{"x":{"dtype":"Q4","shape":[1],"data_offsets":[0,4]}}"#, data: 4))?.message
                == "adapter_model.safetensors: tensor \"x\" has unknown dtype \"Q4\"")
        #expect(corrupt([1, 0, 0, 0, 0, 0, 0, 0])?.message == "adapter_model.safetensors: header length 1 goes beyond the end of the file (8 bytes)")
        #expect(corrupt([1, 2, 3])?.message.contains("at least 8") == true)
        let sub = corrupt(Self.file(#"{"x":{"dtype":"F4","shape":[2],"data_offsets":[0,1]}}"#, data: 1))
        #expect(sub?.status == PST_ERR_UNSUPPORTED)
        let gap = corrupt(Self.file(#"{"a":{"dtype":"U8","shape":[1],"data_offsets":[0,1]},"b":{"dtype":"U8","shape":[1],"data_offsets":[2,3]}}"#, data: 3))
        #expect(gap?.message.contains("leave a gap after byte 1") == true)
        let overlap = corrupt(Self.file(#"{"a":{"dtype":"U8","shape":[2],"data_offsets":[0,2]},"b":{"dtype":"U8","shape":[1],"data_offsets":[1,2]}}"#, data: 2))
        #expect(overlap?.message.contains("overlap") == true)
    }

    @Test func osErrors() throws {
        let missing = thrownPST { _ = try SafeTensorsFile(path: "/nonexistent/x.safetensors") }
        #expect(missing?.status == PST_ERR_NOT_FOUND)
        #expect(missing?.message == "/nonexistent/x.safetensors: no such file")
        let dir = try TempDir("st")
        defer { dir.cleanup() }
        #expect(thrownPST { _ = try SafeTensorsFile(path: dir.path) }?.status == PST_ERR_IO)
        let f = try SafeTensorsFile(path: FilesFixtures.path("st/metadata.safetensors"))
        let nf = thrownPST { _ = try f.tensor("nope") }
        #expect(nf?.status == PST_ERR_NOT_FOUND)
        #expect(nf?.message.hasSuffix("metadata.safetensors: no tensor \"nope\"") == true)
    }

    /// A view keeps the mapping alive after the file object is gone.
    @Test func viewsOutliveTheFileObject() throws {
        var view: SafeTensorView? = nil
        do {
            let f = try SafeTensorsFile(path: FilesFixtures.path("st/metadata.safetensors"))
            view = try f.tensor("weight")
        }
        #expect(view!.byteArray == FilesFixtures.pattern("weight", 48))
        let floats = try view!.floats()
        let want = FilesFixtures.pattern("weight", 48).withUnsafeBytes { Array($0.bindMemory(to: Float.self)) }
        #expect(floats.map(\.bitPattern) == want.map(\.bitPattern))
    }

    @Test func floatConversions() throws {
        let f = try SafeTensorsFile(path: FilesFixtures.path("st/torch_dtypes.safetensors"))
        let bf = try f.tensor("bf16")
        let raw = bf.byteArray
        let got = try bf.floats()
        for i in 0..<6 {
            let bits = UInt32(raw[2 * i]) | UInt32(raw[2 * i + 1]) << 8
            #expect(got[i].bitPattern == bits << 16)
        }
        #expect(thrownPST { _ = try f.tensor("c64").floats() }?.status == PST_ERR_UNSUPPORTED)
        let h16 = try f.tensor("f16")
        let hb = h16.byteArray
        #expect(try h16.floats()[0].bitPattern == Float(Float16(bitPattern: UInt16(hb[0]) | UInt16(hb[1]) << 8)).bitPattern)
    }

    @Test func writerRejectsBadEntries() {
        let a = SafeTensorsEntry(name: "a", shape: [2], floats: [1, 2])
        #expect(thrownPST { _ = try SafeTensorsWriter.serialize([a, a]) }?.status == PST_ERR_INVALID_ARG)
        #expect(thrownPST { _ = try SafeTensorsWriter.serialize([SafeTensorsEntry(name: "a", shape: [3], floats: [1, 2])]) }?.status == PST_ERR_SHAPE)
        #expect(thrownPST { _ = try SafeTensorsWriter.serialize([SafeTensorsEntry(name: "__metadata__", shape: [2], floats: [1, 2])]) }?.status == PST_ERR_INVALID_ARG)
        #expect(thrownPST { _ = try SafeTensorsWriter.serialize([a], metadata: [("k", "1"), ("k", "2")]) }?.status == PST_ERR_INVALID_ARG)
        #expect(thrownPST { _ = try SafeTensorsWriter.serialize([SafeTensorsEntry(name: "a", dtype: .u8, shape: [-1], data: [])]) }?.status == PST_ERR_SHAPE)
    }

    /// Opening maps the file and parses the header only: a 256 MB (sparse) file opens as fast
    /// as a small one.
    @Test func openingCostsTheHeaderOnly() throws {
        let dir = try TempDir("st")
        defer { dir.cleanup() }
        let big = 256 << 20
        let header = try SafeTensorsWriter.header(for: [SafeTensorsEntry(name: "w", dtype: .u8, shape: [big], bytes: UnsafeRawBufferPointer(start: UnsafeRawPointer(bitPattern: 64), count: big))], metadata: nil).bytes
        let path = dir.file("big.safetensors")
        _ = FileManager.default.createFile(atPath: path, contents: Data(header))
        let fh = try FileHandle(forWritingTo: URL(fileURLWithPath: path))
        try fh.truncate(atOffset: UInt64(header.count + big))
        try fh.close()
        let t0 = DispatchTime.now().uptimeNanoseconds
        let f = try SafeTensorsFile(path: path)
        let v = try f.tensor("w")
        let first = v.bytes[0]
        let ms = Double(DispatchTime.now().uptimeNanoseconds - t0) / 1e6
        #expect(first == 0 && v.byteCount == big)
        #expect(ms < 50, "open + first byte took \(ms) ms")
    }
}
