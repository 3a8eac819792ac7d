import Foundation
@testable import PeftSwift

/// Paths and helpers for the file-format fixtures (Tests/fixtures/files, written by
/// Tests/fixtures/make_files_fixtures.py with the real safetensors/PEFT/bitsandbytes).
enum FilesFixtures {
    /// Tests/fixtures/files/<relative> (resolved from this file, as FixtureFile does).
    static func path(_ relative: String) -> String {
        FixtureFile.url("files/" + relative).path
    }

    static func bytes(_ relative: String) throws -> [UInt8] {
        [UInt8](try Data(contentsOf: URL(fileURLWithPath: path(relative))))
    }

    static func json(_ relative: String) throws -> Any {
        try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: path(relative))))
    }

    /// make_files_fixtures.py `pattern`: byte i = (i*131 + 7*len(name) + sum(name bytes)) mod 256
    static func pattern(_ name: String, _ n: Int) -> [UInt8] {
        let u = Array(name.utf8)
        let s = (7 * u.count + u.reduce(0) { $0 + Int($1) }) % 256
        return (0..<n).map { UInt8((($0 * 131) + s) % 256) }
    }
}

/// A fresh private directory under the system temporary directory, removed by `cleanup()`.
struct TempDir {
    let path: String
    init(_ tag: String = "files") throws {
        let base = NSTemporaryDirectory() + "pst-\(tag)-\(getpid())-\(UUID().uuidString.prefix(8))"
        try FileManager.default.createDirectory(atPath: base, withIntermediateDirectories: true)
        path = base
    }
    func file(_ name: String) -> String { path + "/" + name }
    func cleanup() { try? FileManager.default.removeItem(atPath: path) }
    func list() -> [String] { ((try? FileManager.default.contentsOfDirectory(atPath: path)) ?? []).sorted() }
}

func readFileBytes(_ path: String) throws -> [UInt8] { [UInt8](try Data(contentsOf: URL(fileURLWithPath: path))) }

/// Runs `body` and returns the PSTError it throws (nil when it does not throw).
func thrownPST(_ body: () throws -> Void) -> PSTError? {
    do { try body(); return nil } catch let e as PSTError { return e } catch { return PSTError(status: -1, "\(error)") }
}
