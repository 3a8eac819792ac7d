import Foundation
import Testing
import CPeftSwift
@testable import PeftSwift

/// Names and `__metadata__` of safetensors files are any JSON strings (NUL included, any
/// length): the writer escapes and the reader decodes them as safetensors 0.8.0 does, the
/// header is bounded only by the format's 100,000,000 bytes, and the C API carries strings
/// with their lengths (the _v2 functions) or refuses, never truncates, where it cannot.
/// The expected bytes are what `safetensors.numpy.save` writes (measured; Tests/python
/// compares against the package itself).
@Suite struct FilesStringsTests {
    static func header(_ bytes: [UInt8]) -> String {
        let n = bytes.prefix(8).enumerated().reduce(0) { $0 | Int($1.element) << (8 * $1.offset) }
        return String(decoding: bytes[8..<(8 + n)], as: UTF8.self)
    }

    static let a = SafeTensorsEntry(name: "a", dtype: .f32, shape: [3], data: [0, 0, 0, 0, 0, 0, 0x80, 0x3F, 0, 0, 0, 0x40])

    /// metadata nil and [] are different files, as metadata=None and metadata={}.
    @Test func emptyMetadataIsWritten() throws {
        #expect(Self.header(try SafeTensorsWriter.serialize([Self.a], metadata: nil))
                == #"{"a":{"dtype":"F32","shape":[3],"data_offsets":[0,12]}} "#)
        #expect(Self.header(try SafeTensorsWriter.serialize([Self.a], metadata: []))
                == #"{"__metadata__":{},"a":{"dtype":"F32","shape":[3],"data_offsets":[0,12]}}       "#)
        // no tensors: safetensors writes `{},"__metadata__":{}}`, which no reader accepts; ours is valid
        let empty = try SafeTensorsWriter.serialize([], metadata: [])
        #expect(Self.header(empty) == #"{"__metadata__":{}}     "#)
        let f = try SafeTensorsFile(bytes: empty, name: "empty")
        #expect(f.tensors.isEmpty && f.metadataPairs?.isEmpty == true)
        #expect(Self.header(try SafeTensorsWriter.serialize([], metadata: nil)) == "{}      ")
    }

    /// NUL and other controls are escaped as serde_json escapes them, and read back whole.
    @Test func nulInNamesAndMetadataRoundTrips() throws {
        let t = SafeTensorsEntry(name: "a\u{0}b", dtype: .f32, shape: [3], data: [UInt8](repeating: 1, count: 12))
        let bytes = try SafeTensorsWriter.serialize([t], metadata: [("k\u{0}a", "v\u{0}w\u{1}\n\"\\é😀")])
        #expect(Self.header(bytes)
                == #"{"__metadata__":{"k\u0000a":"v\u0000w\u0001\n\"\\é😀"},"a\u0000b":{"dtype":"F32","shape":[3],"data_offsets":[0,12]}} "#)
        let f = try SafeTensorsFile(bytes: bytes, name: "nul")
        #expect(f.names == ["a\u{0}b"])
        #expect(f.metadataPairs?.map { [$0.key, $0.value] } == [["k\u{0}a", "v\u{0}w\u{1}\n\"\\é😀"]])
        #expect(try f.tensor("a\u{0}b").byteCount == 12)
        #expect(!f.contains("a"))
    }

    /// Long metadata values (kohya's ss_tag_frequency runs to megabytes) have no cap; the header
    /// as a whole has the format's: 100,000,000 bytes after padding, as safetensors' writer.
    @Test func headerLimitIsTheFormats() throws {
        let big = String(repeating: "x", count: 1 << 20)
        let f = try SafeTensorsFile(bytes: try SafeTensorsWriter.serialize([Self.a], metadata: [("ss_tag_frequency", big)]), name: "big")
        #expect(f.metadata?["ss_tag_frequency"] == big)
        // {"__metadata__":{"k":"<L bytes>"},"a":{...}} is 79 + L bytes: L = 99,999,921 is exactly
        // 100,000,000 (accepted), one more byte pads to 100,000,008 (refused), as safetensors
        let atLimit = try SafeTensorsWriter.header(for: [Self.a], metadata: [("k", String(repeating: "x", count: 99_999_921))])
        #expect(atLimit.bytes.count == 8 + 100_000_000)
        let e = thrownPST { _ = try SafeTensorsWriter.header(for: [Self.a], metadata: [("k", String(repeating: "x", count: 99_999_922))]) }
        #expect(e?.status == PST_ERR_INVALID_ARG)
        #expect(e?.message.contains("100000008 bytes") == true && e?.message.contains("100000000") == true, "\(e?.message ?? "")")
    }

    // ---- the C API

    final class CStrings {
        var storage: [UnsafeMutablePointer<CChar>] = []
        func c(_ s: String) -> UnsafePointer<CChar> { let p = strdup(s)!; storage.append(p); return UnsafePointer(p) }
        /// A pst_string over the UTF-8 of s (NUL bytes included), kept until deinit.
        func s(_ s: String) -> pst_string {
            let u = Array(s.utf8)
            let p = UnsafeMutablePointer<CChar>.allocate(capacity: max(u.count, 1))
            for (i, b) in u.enumerated() { p[i] = CChar(bitPattern: b) }
            storage.append(p)
            return pst_string(data: UnsafePointer(p), length: Int64(u.count))
        }
        deinit { storage.forEach { free($0) } }
    }

    static func string(_ s: pst_string) -> String {
        String(decoding: UnsafeRawBufferPointer(start: s.data, count: Int(s.length)), as: UTF8.self)
    }

    /// A C array of the strings (NULL for nil), freed by the caller.
    static func cArray(_ a: [pst_string]?) -> UnsafeMutablePointer<pst_string>? {
        guard let a else { return nil }
        let p = UnsafeMutablePointer<pst_string>.allocate(capacity: max(a.count, 1))
        for (i, x) in a.enumerated() { (p + i).initialize(to: x) }
        return p
    }

    static var lastError: String { String(cString: pst_last_error()) }

    static func tensor(_ c: CStrings, _ data: UnsafeRawPointer, name: String = "w") -> pst_tensor {
        var t = pst_tensor()
        t.struct_size = MemoryLayout<pst_tensor>.size
        t.name = c.c(name)
        t.dtype = c.c("F32")
        t.ndim = 1
        t.shape.0 = 2
        t.data = data
        t.byte_count = 8
        return t
    }

    @Test func cWriteV2AndReadV2CarryNULs() throws {
        let dir = try TempDir("strings")
        defer { dir.cleanup() }
        let c = CStrings()
        let path = dir.file("nul.safetensors")
        let data: [Float] = [1, 2]
        let st: Int32 = data.withUnsafeBytes { d in
            var ts = [Self.tensor(c, d.baseAddress!), Self.tensor(c, d.baseAddress!)]
            let names = [c.s("x\u{0}y"), c.s("x")]
            let keys = [c.s("k\u{0}a"), c.s("long")], values = [c.s("v\u{0}w"), c.s(String(repeating: "é", count: 5000))]
            return pst_safetensors_write_v2(path, &ts, names, 2, keys, values, 2)
        }
        #expect(st == PST_OK, "\(Self.lastError)")
        let f = try SafeTensorsFile(path: path)
        #expect(f.names == ["x", "x\u{0}y"])
        #expect(f.metadataPairs?.map(\.key) == ["k\u{0}a", "long"])
        #expect(f.metadata?["long"] == String(repeating: "é", count: 5000))

        var h: UnsafeMutablePointer<pst_safetensors>? = nil
        #expect(pst_safetensors_open(path, &h) == PST_OK)
        defer { pst_safetensors_free(h) }
        var t = pst_tensor()
        t.struct_size = MemoryLayout<pst_tensor>.size
        var name = pst_string()
        #expect(pst_safetensors_tensor_at_v2(h, 1, &t, &name) == PST_OK)
        #expect(Self.string(name) == "x\u{0}y" && name.length == 3 && t.byte_count == 8)
        #expect(UnsafeRawPointer(t.name) == UnsafeRawPointer(name.data))
        #expect(name.data![3] == 0)   // followed by a NUL
        #expect(pst_safetensors_tensor_at_v2(h, 0, &t, &name) == PST_OK && Self.string(name) == "x")
        // the NUL-terminated functions refuse the name with a NUL rather than cut it to "x"
        #expect(pst_safetensors_tensor_at(h, 1, &t) == PST_ERR_UNSUPPORTED)
        #expect(Self.lastError.hasPrefix("pst_safetensors_tensor_at: tensor 1 is named \"x\\u0000y\", which holds a NUL byte"), "\(Self.lastError)")
        #expect(pst_safetensors_tensor_at(h, 0, &t) == PST_OK && String(cString: t.name) == "x")
        // find by length finds the one with the NUL; by C string, "x"
        #expect(pst_safetensors_find_v2(h, "x\u{0}y", 3, &t) == PST_OK && t.data != nil)
        #expect(pst_safetensors_find_v2(h, "x\u{0}z", 3, &t) == PST_ERR_NOT_FOUND)
        #expect(Self.lastError.hasSuffix("no tensor \"x\\u0000z\""), "\(Self.lastError)")
        #expect(pst_safetensors_find(h, "x", &t) == PST_OK && String(cString: t.name) == "x")
        // metadata
        var count: Int64 = 0, mcount: Int64 = 0
        #expect(pst_safetensors_count(h, &count, &mcount) == PST_OK && count == 2 && mcount == 2)
        var k = pst_string(), v = pst_string()
        #expect(pst_safetensors_metadata_at_v2(h, 0, &k, &v) == PST_OK)
        #expect(Self.string(k) == "k\u{0}a" && Self.string(v) == "v\u{0}w")
        var ck: UnsafePointer<CChar>? = nil, cv: UnsafePointer<CChar>? = nil
        #expect(pst_safetensors_metadata_at(h, 0, &ck, &cv) == PST_ERR_UNSUPPORTED && ck == nil && cv == nil)
        #expect(Self.lastError.contains("key \"k\\u0000a\" holds a NUL byte"), "\(Self.lastError)")
        #expect(pst_safetensors_metadata_at(h, 1, &ck, &cv) == PST_OK && String(cString: cv!) == String(repeating: "é", count: 5000))
        #expect(pst_safetensors_metadata_at_v2(h, 1, &k, &v) == PST_OK && v.length == 10000)
    }

    /// meta_count: PST_SAFETENSORS_NO_METADATA, 0 and n are None, {} and the n pairs; the
    /// first writer keeps writing no __metadata__ for 0 and takes values of any length.
    @Test func cMetadataNoneEmptyAndLong() throws {
        let dir = try TempDir("strings")
        defer { dir.cleanup() }
        let c = CStrings()
        let data: [Float] = [1, 2]
        func write(_ metaCount: Int64) -> [UInt8]? {
            let p = dir.file("m\(metaCount).safetensors")
            let st: Int32 = data.withUnsafeBytes { d in
                var t = Self.tensor(c, d.baseAddress!)
                return pst_safetensors_write_v2(p, &t, nil, 1, nil, nil, metaCount)
            }
            return st == PST_OK ? try? readFileBytes(p) : nil
        }
        #expect(Self.header(write(Int64(PST_SAFETENSORS_NO_METADATA))!) == #"{"w":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}  "#)
        #expect(Self.header(write(0)!) == #"{"__metadata__":{},"w":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}"#)
        #expect(write(-2) == nil)
        #expect(Self.lastError.hasPrefix("pst_safetensors_write_v2: meta_count (-2) must be PST_SAFETENSORS_NO_METADATA (-1) or in 0..."), "\(Self.lastError)")

        let long = String(repeating: "0123456789", count: 1000)   // 10,000 bytes: was refused at 4096
        let p = dir.file("long.safetensors")
        let st: Int32 = data.withUnsafeBytes { d in
            var t = Self.tensor(c, d.baseAddress!)
            var keys: [UnsafePointer<CChar>?] = [c.c("ss_tag_frequency")], values: [UnsafePointer<CChar>?] = [c.c(long)]
            return pst_safetensors_write(p, &t, 1, &keys, &values, 1)
        }
        #expect(st == PST_OK, "\(Self.lastError)")
        #expect(try SafeTensorsFile(path: p).metadata == ["ss_tag_frequency": long])
        let st0: Int32 = data.withUnsafeBytes { d in
            var t = Self.tensor(c, d.baseAddress!)
            return pst_safetensors_write(p, &t, 1, nil, nil, 0)
        }
        #expect(st0 == PST_OK)
        #expect(try SafeTensorsFile(path: p).metadataPairs == nil)
    }

    /// Bad strings are refused with the argument and the value named, before the file exists.
    @Test func cBadStrings() throws {
        let dir = try TempDir("strings")
        defer { dir.cleanup() }
        let c = CStrings()
        let p = dir.file("bad.safetensors")
        let data: [Float] = [1, 2]
        func write(names: [pst_string]? = nil, keys: [pst_string]? = nil, values: [pst_string]? = nil, metaCount: Int64 = 0) -> String? {
            let st: Int32 = data.withUnsafeBytes { d in
                var t = Self.tensor(c, d.baseAddress!)
                let ns = Self.cArray(names), ks = Self.cArray(keys), vs = Self.cArray(values)
                defer { ns?.deallocate(); ks?.deallocate(); vs?.deallocate() }
                return pst_safetensors_write_v2(p, &t, ns, 1, ks, vs, metaCount)
            }
            return st == PST_ERR_INVALID_ARG ? Self.lastError : "status \(st)"
        }
        let ok = c.s("k")
        #expect(write(names: [pst_string(data: nil, length: -1)]) == "pst_safetensors_write_v2: names[0].length (-1) must be >= 0")
        #expect(write(names: [pst_string(data: nil, length: 4)]) == "pst_safetensors_write_v2: names[0].data is NULL but names[0].length is 4")
        #expect(write(names: [pst_string(data: nil, length: 0)]) == "status 0")   // "" is a name
        try FileManager.default.removeItem(atPath: p)
        #expect(write(keys: [ok], values: [pst_string(data: nil, length: 200_000_000)], metaCount: 1)
                == "pst_safetensors_write_v2: meta_values[0].length (200000000) is more than a safetensors header can hold (100000000 bytes)")
        let invalid: [CChar] = [0x61, CChar(bitPattern: 0xC3), 0x28]
        let msg: String? = invalid.withUnsafeBufferPointer { b in
            write(keys: [pst_string(data: b.baseAddress, length: 3)], values: [ok], metaCount: 1)
        }
        #expect(msg == "pst_safetensors_write_v2: meta_keys[0].data (3 bytes) is not valid UTF-8 (at byte 1)")
        #expect(write(metaCount: 1) == "pst_safetensors_write_v2: meta_keys is NULL")
        #expect(write(keys: [ok, ok], values: [ok, ok], metaCount: 2) == "pst_safetensors_write_v2: metadata key \"k\" given twice")
        var t = pst_tensor()
        #expect(pst_safetensors_write_v2(p, &t, nil, 1, nil, nil, -1) == PST_ERR_INVALID_ARG)
        #expect(Self.lastError.hasPrefix("pst_safetensors_write_v2: tensors[0].struct_size (0) must be sizeof(pst_tensor)"))
        #expect(pst_safetensors_write_v2(nil, nil, nil, 0, nil, nil, -1) == PST_ERR_INVALID_ARG)
        #expect(pst_safetensors_write_v2(p, nil, nil, -1, nil, nil, -1) == PST_ERR_INVALID_ARG)
        #expect(Self.lastError.hasPrefix("pst_safetensors_write_v2: count (-1) must be in 0..."))
        // shapes whose byte count overflows are refused, not trapped on
        let st: Int32 = data.withUnsafeBytes { d in
            var t = Self.tensor(c, d.baseAddress!)
            t.ndim = 2; t.shape.0 = Int64(Int32.max); t.shape.1 = Int64(Int32.max)
            return pst_safetensors_write_v2(p, &t, nil, 1, nil, nil, -1)
        }
        #expect(st == PST_ERR_INVALID_ARG && Self.lastError.contains("has too many bytes"), "\(Self.lastError)")
        #expect(dir.list().isEmpty)

        // the readers
        let good = dir.file("good.safetensors")
        #expect(data.withUnsafeBytes { d in
            var t = Self.tensor(c, d.baseAddress!)
            return pst_safetensors_write_v2(good, &t, nil, 1, [ok], [ok], 1)
        } == PST_OK)
        var h: UnsafeMutablePointer<pst_safetensors>? = nil
        #expect(pst_safetensors_open(good, &h) == PST_OK)
        defer { pst_safetensors_free(h) }
        var out = pst_tensor()
        out.struct_size = MemoryLayout<pst_tensor>.size
        var n = pst_string(), v = pst_string()
        #expect(pst_safetensors_tensor_at_v2(h, 1, &out, &n) == PST_ERR_INVALID_ARG)
        #expect(Self.lastError == "pst_safetensors_tensor_at_v2: index (1) must be in 0..<1")
        #expect(pst_safetensors_tensor_at_v2(h, 0, &out, nil) == PST_ERR_INVALID_ARG)
        #expect(Self.lastError == "pst_safetensors_tensor_at_v2: name is NULL")
        #expect(pst_safetensors_tensor_at_v2(nil, 0, &out, &n) == PST_ERR_INVALID_ARG)
        #expect(pst_safetensors_find_v2(h, nil, 2, &out) == PST_ERR_INVALID_ARG)
        #expect(Self.lastError == "pst_safetensors_find_v2: name is NULL but name_length is 2")
        #expect(pst_safetensors_find_v2(h, "w", -5, &out) == PST_ERR_INVALID_ARG)
        #expect(Self.lastError == "pst_safetensors_find_v2: name_length (-5) must be >= 0")
        #expect(pst_safetensors_find_v2(h, nil, 0, &out) == PST_ERR_NOT_FOUND)
        #expect(pst_safetensors_metadata_at_v2(h, -1, &n, &v) == PST_ERR_INVALID_ARG)
        #expect(Self.lastError == "pst_safetensors_metadata_at_v2: index (-1) must be in 0..<1")
        #expect(pst_safetensors_metadata_at_v2(h, 0, &n, nil) == PST_ERR_INVALID_ARG)
        #expect(Self.lastError == "pst_safetensors_metadata_at_v2: value is NULL")
    }
}
