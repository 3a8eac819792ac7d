import Foundation
import Testing
import CPeftSwift
@testable import PeftSwift

/// AtomicFile: failures at any stage leave the old file intact and no temporary file behind.
@Suite struct FilesAtomicTests {
    static let old = Array("the old contents\n".utf8)

    func setUp() throws -> (TempDir, String) {
        let dir = try TempDir("atomic")
        let path = dir.file("target.bin")
        try AtomicFile.write(path, bytes: Self.old)
        return (dir, path)
    }

    @Test func replacesTheFile() throws {
        let (dir, path) = try setUp()
        defer { dir.cleanup() }
        #expect(try readFileBytes(path) == Self.old)
        chmod(path, 0o600)
        let big = (0..<300_000).map { UInt8($0 % 251) }
        try AtomicFile.write(path) { (w: inout AtomicFileWriter) throws(PSTError) in
            try w.write(Array(big[..<1000]))
            try w.write(Array(big[1000...]))
            #expect(w.bytesWritten == big.count)
        }
        #expect(try readFileBytes(path) == big)
        #expect(dir.list() == ["target.bin"])
        var st = stat()
        stat(path, &st)
        #expect(st.st_mode & 0o777 == 0o600)   // permissions of the replaced file kept
    }

    @Test(arguments: [0, 1, 5000, 65_536])
    func failureMidWriteLeavesOldFile(_ after: Int) throws {
        let (dir, path) = try setUp()
        defer { dir.cleanup() }
        AtomicFile._injectFault(path: path, .write(afterBytes: after))
        let e = thrownPST {
            try AtomicFile.write(path) { (w: inout AtomicFileWriter) throws(PSTError) in
                for _ in 0..<10 { try w.write([UInt8](repeating: 7, count: 10_000)) }
            }
        }
        #expect(e?.status == PST_ERR_IO)
        #expect(e?.message == "\(path): write failed after \(min(after, 100_000)) bytes: injected fault")
        #expect(try readFileBytes(path) == Self.old)
        #expect(dir.list() == ["target.bin"])
    }

    @Test func failuresAtFsyncRenameAndInTheBody() throws {
        let (dir, path) = try setUp()
        defer { dir.cleanup() }
        for fault in [_Fault.fsync, .rename] {
            AtomicFile._injectFault(path: path, fault)
            let e = thrownPST { try AtomicFile.write(path, bytes: [1, 2, 3]) }
            #expect(e?.status == PST_ERR_IO)
            #expect(try readFileBytes(path) == Self.old)
            #expect(dir.list() == ["target.bin"])
        }
        // the body throws its own error half way
        let e = thrownPST {
            try AtomicFile.write(path) { (w: inout AtomicFileWriter) throws(PSTError) in
                try w.write([1, 2, 3])
                throw .shape("mine")
            }
        }
        #expect(e == .shape("mine"))
        #expect(try readFileBytes(path) == Self.old)
        #expect(dir.list() == ["target.bin"])
    }

    /// A safetensors or PEFT save that fails half way leaves the previous files.
    @Test func failedSavesLeavePreviousFiles() throws {
        let dir = try TempDir("atomic")
        defer { dir.cleanup() }
        let path = dir.file("m.safetensors")
        let entries = [SafeTensorsEntry(name: "a", shape: [1000], floats: [Float](repeating: 1, count: 1000))]
        try SafeTensorsWriter.write(entries, to: path)
        let before = try readFileBytes(path)
        AtomicFile._injectFault(path: path, .write(afterBytes: 2000))
        let e = thrownPST { try SafeTensorsWriter.write([SafeTensorsEntry(name: "b", shape: [1000], floats: [Float](repeating: 2, count: 1000))], to: path) }
        #expect(e?.status == PST_ERR_IO)
        #expect(try readFileBytes(path) == before)
        #expect(dir.list() == ["m.safetensors"])
    }

    @Test func osErrors() throws {
        let dir = try TempDir("atomic")
        defer { dir.cleanup() }
        let e = thrownPST { try AtomicFile.write(dir.path + "/missing/x", bytes: [1]) }
        #expect(e?.status == PST_ERR_IO)
        #expect(e?.message.contains("cannot create temporary file") == true)
        #expect(thrownPST { try AtomicFile.write(dir.path, bytes: [1]) }?.status == PST_ERR_IO)
        #expect(thrownPST { try AtomicFile.write("", bytes: [1]) }?.status == PST_ERR_INVALID_ARG)
        // a relative name writes in the current directory's terms
        #expect(AtomicFile.splitPath("x.bin") == (".", "x.bin"))
        #expect(AtomicFile.splitPath("/x.bin") == ("/", "x.bin"))
        #expect(AtomicFile.splitPath("a/b/x.bin") == ("a/b", "x.bin"))
    }
}
