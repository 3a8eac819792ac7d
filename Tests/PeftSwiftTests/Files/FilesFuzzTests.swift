import Foundation
import Testing
import CPeftSwift
@testable import PeftSwift

/// A seeded mutation fuzzer over the file readers: the safetensors reader (plus the
/// bitsandbytes and PEFT loaders on whatever it accepts), the JSON parser, the
/// adapter_config.json reader and the bitsandbytes quant-state blob reader. Inputs are the
/// fixtures, mutated 1-4 times each (bit flips, interesting bytes, truncations, deletions,
/// duplications, splices of two files, header-length edits, number rewrites, token
/// insertions). A crash kills the test process; every thrown error must be a PSTError with an
/// expected status, and accepted inputs must satisfy round-trip invariants.
///
/// Environment: PST_FUZZ_ITERATIONS (default 20000), PST_FUZZ_SEED (default 1),
/// PST_FUZZ_DUMP=<file> writes each input there before it runs (to recover a crashing one).
/// Crashing inputs found are kept in Tests/fixtures/files/fuzz/ and replayed by
/// `regressionInputs`.
@Suite struct FilesFuzzTests {
    enum Target: Int, CaseIterable { case safetensors, json, peftConfig, bnbBlob }

    struct Corpus {
        var inputs: [Target: [[UInt8]]] = [:]
        var all: [[UInt8]] = []
    }

    static func corpus() throws -> Corpus {
        var c = Corpus()
        let fm = FileManager.default
        let root = FilesFixtures.path("")
        var st: [[UInt8]] = [], json: [[UInt8]] = [], cfg: [[UInt8]] = [], blob: [[UInt8]] = []
        let files = (fm.enumerator(atPath: root)?.allObjects as? [String] ?? []).sorted()
        for rel in files where !rel.hasPrefix("fuzz/") && (rel.hasSuffix(".safetensors") || rel.hasSuffix(".json")) {
            let b = try FilesFixtures.bytes(rel)
            if rel.hasSuffix(".safetensors") && b.count <= 64 << 10 {
                st.append(b)
                if let f = try? SafeTensorsFile(bytes: b, name: rel) {
                    json.append(Array(b[8..<(8 + f.headerByteCount)]))
                    for n in f.names where n.contains("quant_state") { blob.append(try f.tensor(n).byteArray) }
                }
            } else if rel.hasSuffix("adapter_config.json") {
                cfg.append(b); json.append(b)
            } else if rel.hasSuffix("dumps.json") {
                json.append(b)
            }
        }
        c.inputs = [.safetensors: st, .json: json, .peftConfig: cfg, .bnbBlob: blob]
        c.all = st + json + cfg + blob
        return c
    }

    static let interesting: [UInt8] = [0, 1, 0x7F, 0x80, 0xFF, 0x20, 0x0A] + Array("\"{}[],:0123456789-+.eE\\un".utf8)
    static let tokens: [String] = ["\"", "{", "}", "[", "]", ",", ":", "null", "true", "-0", "1e999", "18446744073709551616",
                                   "9223372036854775807", "-1", "\\u0000", "\\ud800", "\"__metadata__\":", "\"dtype\":\"F32\"",
                                   "\"shape\":[]", "\"data_offsets\":[0,0]", "[[[[[[[[[[[[[[[[", "\"nested_offset\": 1e-50"]

    static func mutate(_ input: [UInt8], _ rng: inout SplitMix64, _ corpus: Corpus) -> [UInt8] {
        var b = input
        func r(_ n: Int) -> Int { n <= 0 ? 0 : Int(rng.next() % UInt64(n)) }
        let rounds = 1 + r(4)
        for _ in 0..<rounds {
            switch r(10) {
            case 0:   // bit flips
                for _ in 0..<(1 + r(8)) where !b.isEmpty { b[r(b.count)] ^= UInt8(1 << r(8)) }
            case 1:   // interesting byte
                if !b.isEmpty { b[r(b.count)] = interesting[r(interesting.count)] }
            case 2:   // truncate
                b.removeLast(r(b.count + 1))
            case 3:   // delete a range
                if !b.isEmpty { let s = r(b.count); b.removeSubrange(s..<min(b.count, s + 1 + r(32))) }
            case 4:   // duplicate a range
                if !b.isEmpty { let s = r(b.count); let e = min(b.count, s + 1 + r(64)); b.insert(contentsOf: b[s..<e], at: r(b.count)) }
            case 5:   // splice with another input
                let o = corpus.all[r(corpus.all.count)]
                b = Array(b.prefix(r(b.count + 1))) + Array(o.suffix(r(o.count + 1)))
            case 6:   // header length edit
                if b.count >= 8 {
                    var n = UInt64(b[0]) | UInt64(b[1]) << 8 | UInt64(b[2]) << 16 | UInt64(b[3]) << 24
                    n |= UInt64(b[4]) << 32 | UInt64(b[5]) << 40 | UInt64(b[6]) << 48 | UInt64(b[7]) << 56
                    switch r(4) {
                    case 0: n = n &+ UInt64(r(17)) &- 8
                    case 1: n = UInt64(r(b.count + 16))
                    case 2: n = rng.next()
                    default: n = n ^ (1 << UInt64(r(64)))
                    }
                    for k in 0..<8 { b[k] = UInt8(truncatingIfNeeded: n >> (8 * UInt64(k))) }
                }
            case 7:   // rewrite a number
                let digits = b.indices.filter { b[$0] >= 0x30 && b[$0] <= 0x39 }
                if !digits.isEmpty {
                    var s = digits[r(digits.count)], e = s
                    while s > 0 && b[s - 1] >= 0x30 && b[s - 1] <= 0x39 { s -= 1 }
                    while e < b.count && b[e] >= 0x30 && b[e] <= 0x39 { e += 1 }
                    let choices = ["0", "1", "7", "8", "15", "16", "64", "255", "256", "65535", "4294967296", "9223372036854775807",
                                   "9223372036854775808", "18446744073709551615", String(rng.next() % 100_000), "1.5", "1e3", "-3"]
                    b.replaceSubrange(s..<e, with: Array(choices[r(choices.count)].utf8))
                }
            case 8:   // insert a JSON token
                b.insert(contentsOf: Array(tokens[r(tokens.count)].utf8), at: r(b.count + 1))
            default:  // overwrite a run with random bytes
                if !b.isEmpty { let s = r(b.count); for k in s..<min(b.count, s + 1 + r(8)) { b[k] = UInt8(truncatingIfNeeded: rng.next()) } }
            }
        }
        return b
    }

    /// Edits a valid file's tensors (dtype, shape, name, presence, data, metadata) and
    /// writes a well-formed file of them; nil when the input does not parse.
    static func structuredMutate(_ input: [UInt8], _ rng: inout SplitMix64) -> [UInt8]? {
        guard let f = try? SafeTensorsFile(bytes: input, name: "seed") else { return nil }
        struct E { var name: String; var dtype: SafeTensorsDType; var shape: [Int]; var data: [UInt8] }
        var es = f.views().map { E(name: $0.name, dtype: $0.dtype, shape: $0.shape, data: $0.byteArray) }
        var md = f.metadataPairs?.map { ($0.key, $0.value) }
        func r(_ n: Int) -> Int { n <= 0 ? 0 : Int(rng.next() % UInt64(n)) }
        let dtypes = SafeTensorsDType.allCases
        for _ in 0..<(1 + r(3)) {
            guard !es.isEmpty else { break }
            let i = r(es.count)
            switch r(9) {
            case 0:   // another dtype, data resized to fit
                es[i].dtype = dtypes[r(dtypes.count)]
                let n = es[i].shape.reduce(1, *) * es[i].dtype.size
                es[i].data = Array(es[i].data.prefix(n)) + [UInt8](repeating: 0x3F, count: max(0, n - es[i].data.count))
            case 1:   // another shape with the same byte count, or a different one with resized data
                let total = es[i].data.count / es[i].dtype.size
                let choices: [[Int]] = [[total], [total, 1], [1, total], [], [0], [total + 1], [max(0, total - 1)], es[i].shape.reversed(),
                                        [2, max(1, total / 2)]]
                es[i].shape = choices[r(choices.count)]
                let n = es[i].shape.reduce(1, *) * es[i].dtype.size
                es[i].data = Array(es[i].data.prefix(n)) + [UInt8](repeating: 0, count: max(0, n - es[i].data.count))
            case 2:   // swap names
                let j = r(es.count)
                let t = es[i].name; es[i].name = es[j].name; es[j].name = t
            case 3:   // drop a tensor
                es.remove(at: i)
            case 4:   // NaN / Inf / huge values in float data
                let pats: [[UInt8]] = [[0, 0, 0xC0, 0x7F], [0, 0, 0x80, 0x7F], [0xFF, 0xFF, 0x7F, 0x7F], [0, 0, 0, 0]]
                if es[i].data.count >= 4 {
                    let at = r(es[i].data.count / 4) * 4
                    es[i].data.replaceSubrange(at..<(at + 4), with: pats[r(pats.count)])
                }
            case 5:   // random data bytes
                for _ in 0..<(1 + r(4)) where !es[i].data.isEmpty { es[i].data[r(es[i].data.count)] = UInt8(truncatingIfNeeded: rng.next()) }
            case 6:   // rename with a suffix edit
                let suffixes = [".weight", ".absmax", ".bias", ".lora_A.weight", ".lora_B.weight", "weight.quant_state.bitsandbytes__fp4",
                                "weight.quant_state.bitsandbytes__nf4", "weight.nested_absmax", "x"]
                es[i].name += suffixes[r(suffixes.count)]
            case 7:   // duplicate a tensor under a related name
                var c = es[i]; c.name = c.name.replacingOccurrences(of: "lora_A", with: "lora_B").replacingOccurrences(of: "nf4", with: "fp4")
                if !es.contains(where: { $0.name == c.name }) { es.append(c) }
            default:  // metadata
                md = r(2) == 0 ? nil : [("format", ["pt", "np", ""][r(3)])]
            }
        }
        let entries = es.map { SafeTensorsEntry(name: $0.name, dtype: $0.dtype, shape: $0.shape, data: $0.data) }
        return try? SafeTensorsWriter.serialize(entries, metadata: md)
    }

    static let allowed: Set<Int32> = [PST_ERR_CORRUPT, PST_ERR_SHAPE, PST_ERR_UNSUPPORTED, PST_ERR_NOT_FOUND, PST_ERR_NONFINITE,
                                      PST_ERR_INVALID_ARG]

    /// Layers shaped like the PEFT fixtures' modules.
    static func peftModules() throws -> [PeftModule] {
        let shapes = [(12, 12), (8, 12), (12, 20), (12, 12), (8, 12), (12, 20)]
        return try zip(FilesPeftTests.paths, shapes).map { p, s in
            let w = [Float](repeating: 0.01, count: s.0 * s.1)
            return PeftModule(p, try w.withUnsafeBufferPointer { try LoraLinear(dense: $0, outFeatures: s.0, inFeatures: s.1) })
        }
    }

    final class Stats {
        var tried = 0, accepted = 0
        var byStatus: [Int32: Int] = [:]
        var loader: [String: Int] = [:]
        var failures: [String] = []
        var modules: [PeftModule] = []
        let plainConfig: PeftLoraConfig
        init() throws {
            plainConfig = try PeftLoraConfig.parse(FilesFixtures.bytes("peft/plain/adapter_config.json"), source: "cfg")
            modules = try FilesFuzzTests.peftModules()
        }
    }

    /// Runs one input through one target; records the outcome and checks invariants.
    static func run(_ target: Target, _ input: [UInt8], _ stats: Stats) {
        stats.tried += 1
        do throws(PSTError) {
            switch target {
            case .safetensors:
                let f = try SafeTensorsFile(bytes: input, name: "fuzz.safetensors")
                var sink: UInt8 = 0
                for v in f.views() {
                    let b = v.bytes
                    if b.count > 0 { sink ^= b[0] ^ b[b.count - 1] }
                    if [.f32, .f16, .bf16, .i32].contains(v.dtype) { sink ^= UInt8(truncatingIfNeeded: try v.floats().count) }
                }
                _ = sink
                // the loaders on top of whatever the reader accepts
                do throws(PSTError) {
                    let layers = try BnbCheckpoint.loadAll(f)
                    stats.loader["bnb ok", default: 0] += layers.isEmpty ? 0 : 1
                } catch {
                    stats.loader["bnb \(PSTError.name(of: error.status))", default: 0] += 1
                    if !allowed.contains(error.status) { stats.failures.append("bnb loader: unexpected \(error)") }
                }
                do throws(PSTError) {
                    try PeftAdapterDirectory._load(config: stats.plainConfig, file: f, into: stats.modules, as: "fz", strict: false)
                    stats.loader["peft ok", default: 0] += 1
                    stats.modules = (try? peftModules()) ?? stats.modules
                } catch {
                    stats.loader["peft \(PSTError.name(of: error.status))", default: 0] += 1
                    if !allowed.contains(error.status) { stats.failures.append("peft loader: unexpected \(error)") }
                    if stats.modules.contains(where: { !$0.layer.adapters.isEmpty }) { stats.failures.append("peft loader: partial load") }
                }
                // an accepted file writes back to a file that reads the same
                let entries = f.views().map { SafeTensorsEntry(name: $0.name, dtype: $0.dtype, shape: $0.shape, data: $0.byteArray) }
                let again = try SafeTensorsFile(bytes: try SafeTensorsWriter.serialize(entries, metadata: f.metadataPairs?.map { ($0.key, $0.value) }), name: "again")
                if again.tensors.map(\.name).sorted() != f.tensors.map(\.name).sorted() { stats.failures.append("safetensors rewrite changed names") }
            case .json:
                let v = try JSON.parse(input, source: "fuzz.json")
                for style in [JSONStyle.compact, .python, .pythonIndented(2, sortKeys: false)] {
                    let back = try JSON.parse(JSON.serialize(v, style: style), source: "again")
                    if back != v { stats.failures.append("JSON round trip differs: \(Array(input.prefix(80)))") }
                }
            case .peftConfig:
                let c = try PeftLoraConfig.parse(input, source: "adapter_config.json")
                let back = try PeftLoraConfig.parse(c.serialized(), source: "again")
                if back.r != c.r || back.useRslora != c.useRslora || back.rankPattern != c.rankPattern {
                    stats.failures.append("config round trip differs")
                }
            case .bnbBlob:
                let b = try withBytes(input) { (p) throws(PSTError) in try BnbQuantStateBlob.parse(p, source: "blob") }
                let back = try withBytes(b.serialized()) { (p) throws(PSTError) in try BnbQuantStateBlob.parse(p, source: "again") }
                if back != b { stats.failures.append("blob round trip differs: \(String(decoding: input, as: UTF8.self))") }
            }
            stats.accepted += 1
        } catch {
            stats.byStatus[error.status, default: 0] += 1
            if !allowed.contains(error.status) { stats.failures.append("unexpected status \(error): \(Array(input.prefix(80)))") }
            if error.message.isEmpty { stats.failures.append("empty message") }
        }
    }

    static func env(_ k: String) -> String? { ProcessInfo.processInfo.environment[k] }

    @Test func fuzzReaders() throws {
        let iterations = Int(Self.env("PST_FUZZ_ITERATIONS") ?? "") ?? 20_000
        let seed = UInt64(Self.env("PST_FUZZ_SEED") ?? "") ?? 1
        let dump = Self.env("PST_FUZZ_DUMP").map { open($0, O_WRONLY | O_CREAT | O_TRUNC, 0o644) }
        let corpus = try Self.corpus()
        let stats = try Stats()
        // weights: safetensors 30%, JSON 30%, config 20%, blob 20%
        let schedule: [Target] = [.safetensors, .safetensors, .safetensors, .safetensors, .json, .json, .json,
                                  .peftConfig, .peftConfig, .bnbBlob, .bnbBlob, .peftConfig, .bnbBlob, .safetensors, .json, .safetensors,
                                  .json, .json, .peftConfig, .bnbBlob]
        var perTarget: [Target: Int] = [:]
        let t0 = Date()
        for i in 0..<iterations {
            var rng = SplitMix64(seed: seed &* 0x9E37_79B9_7F4A_7C15 &+ UInt64(i))
            let target = schedule[i % schedule.count]
            let pool = corpus.inputs[target]!
            let seedInput = pool[Int(rng.next() % UInt64(pool.count))]
            // a third of the safetensors inputs are well-formed files with edited tensors, which
            // reach the bitsandbytes and PEFT loaders' checks
            let input = target == .safetensors && rng.next() % 3 == 0
                ? (Self.structuredMutate(seedInput, &rng) ?? Self.mutate(seedInput, &rng, corpus))
                : Self.mutate(seedInput, &rng, corpus)
            if let fd = dump, fd >= 0 {
                ftruncate(fd, 0)
                _ = input.withUnsafeBytes { pwrite(fd, $0.baseAddress, $0.count, 0) }
            }
            perTarget[target, default: 0] += 1
            Self.run(target, input, stats)
        }
        if let fd = dump, fd >= 0 { close(fd) }
        let secs = Date().timeIntervalSince(t0)
        let statusText = stats.byStatus.sorted { $0.key < $1.key }.map { "\(PSTError.name(of: $0.key)): \($0.value)" }.joined(separator: ", ")
        print("fuzz: seed \(seed), \(stats.tried) inputs in \(String(format: "%.1f", secs)) s "
              + "(safetensors \(perTarget[.safetensors] ?? 0), json \(perTarget[.json] ?? 0), config \(perTarget[.peftConfig] ?? 0), blob \(perTarget[.bnbBlob] ?? 0)); "
              + "accepted \(stats.accepted); rejected: \(statusText); invariant failures: \(stats.failures.count); "
              + "loaders on accepted files: \(stats.loader.sorted { $0.key < $1.key }.map { "\($0.key): \($0.value)" }.joined(separator: ", "))")
        #expect(stats.failures.isEmpty, "\(stats.failures.prefix(5))")
        #expect(stats.tried == iterations)
        #expect(stats.accepted > 0)   // the mutations are not all fatal
    }

    /// Inputs that once crashed or misbehaved, through every target.
    @Test func regressionInputs() throws {
        let dir = FilesFixtures.path("fuzz")
        let names = ((try? FileManager.default.contentsOfDirectory(atPath: dir)) ?? []).filter { $0.hasSuffix(".bin") }.sorted()
        let stats = try Stats()
        for n in names {
            let b = try FilesFixtures.bytes("fuzz/\(n)")
            for t in Target.allCases { Self.run(t, b, stats) }
        }
        #expect(stats.failures.isEmpty, "\(stats.failures.prefix(5))")
        #expect(stats.tried == names.count * Target.allCases.count)
    }
}
