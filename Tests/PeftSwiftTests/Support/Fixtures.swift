import Foundation

/// Test-only reader for the golden fixtures under Tests/fixtures (safetensors files written by
/// the Python scripts next to them with the real bitsandbytes/PyTorch/PEFT). Tests may use
/// Foundation; the engine may not.
struct FixtureTensor {
    let dtype: String
    let shape: [Int]
    let bytes: [UInt8]

    var count: Int { shape.reduce(1, *) }

    func values<T>(_: T.Type) -> [T] {
        precondition(bytes.count % MemoryLayout<T>.stride == 0)
        return bytes.withUnsafeBytes { Array($0.bindMemory(to: T.self)) }
    }
    var floats: [Float] { values(Float.self) }
    var u8: [UInt8] { bytes }
    var u16: [UInt16] { values(UInt16.self) }
    var i64: [Int64] { values(Int64.self) }
}

struct FixtureFile {
    let tensors: [String: FixtureTensor]
    let metadata: [String: String]

    subscript(_ name: String) -> FixtureTensor {
        guard let t = tensors[name] else { fatalError("fixture tensor \(name) missing") }
        return t
    }

    /// Tests/fixtures/<relative>
    /// (`file` is ignored: the path is resolved from this file, Tests/PeftSwiftTests/Support.)
    static func url(_ relative: String, file: String = #filePath) -> URL {
        let here: String = #filePath
        return URL(fileURLWithPath: here).deletingLastPathComponent()      // Support
            .deletingLastPathComponent()                            // PeftSwiftTests
            .deletingLastPathComponent()                            // Tests
            .appendingPathComponent("fixtures").appendingPathComponent(relative)
    }

    static func load(_ relative: String, file: String = #filePath) throws -> FixtureFile {
        let data = try Data(contentsOf: url(relative, file: file))
        let bytes = [UInt8](data)
        var n: UInt64 = 0
        for i in 0..<8 { n |= UInt64(bytes[i]) << (8 * UInt64(i)) }
        let header = try JSONSerialization.jsonObject(with: Data(bytes[8..<(8 + Int(n))])) as! [String: Any]
        let base = 8 + Int(n)
        var tensors: [String: FixtureTensor] = [:]
        var metadata: [String: String] = [:]
        for (k, v) in header {
            let d = v as! [String: Any]
            if k == "__metadata__" {
                for (mk, mv) in d { metadata[mk] = mv as? String }
                continue
            }
            let off = d["data_offsets"] as! [Int]
            tensors[k] = FixtureTensor(dtype: d["dtype"] as! String, shape: d["shape"] as! [Int],
                                       bytes: Array(bytes[(base + off[0])..<(base + off[1])]))
        }
        return FixtureFile(tensors: tensors, metadata: metadata)
    }

    /// All fixture files in Tests/fixtures/<dir> with the given extension, sorted.
    static func list(_ dir: String, ext: String = "safetensors", file: String = #filePath) -> [String] {
        let u = url(dir, file: file)
        let names = (try? FileManager.default.contentsOfDirectory(atPath: u.path)) ?? []
        return names.filter { $0.hasSuffix("." + ext) }.sorted().map { dir + "/" + $0 }
    }
}
