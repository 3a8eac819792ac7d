import Foundation
import Testing
@testable import PeftSwift

/// The one-token decode step (LLM/LanguageModel+DecodeStep.swift) and the worker team it runs on.
@Suite struct DecodeStepTests {
    /// A tiny Llama whose embedding (the tied head) is exactly q·d per 32-block, as one
    /// dequantized from a Q8_0 GGUF: its decode head is the int8 form.
    static func int8HeadModel(options: ModelLoadOptions) throws -> LanguageModel {
        let c = ModelConfig(layers: 2, hidden: 64, intermediate: 96, heads: 4, kvHeads: 2, headDim: 16, vocab: 75,
                            rmsEps: 1e-5, ropeTheta: 10000, maxPositions: 64, tiedEmbeddings: true)
        let emb = Int8RowsTests.q8Matrix(rows: c.vocab, cols: c.hidden, seed: 21).map { $0 * 20 }
        let m = try LanguageModel(config: c, options: options) { (name: String, shape: [Int], dst: UnsafeMutableBufferPointer<Float>) throws(PSTError) in
            if name.contains("embed") { for i in 0..<dst.count { dst[i] = emb[i] }; return }
            var h: UInt64 = 0xcbf2_9ce4_8422_2325
            for b in name.utf8 { h = (h ^ UInt64(b)) &* 0x100_0000_01b3 }
            var g = SplitMix64(seed: h)
            let isNorm = name.hasSuffix("norm.weight")
            let s = (3 / Float(shape.last!)).squareRoot()
            for i in 0..<dst.count { dst[i] = isNorm ? 1 + 0.1 * g.uniform(-1, 1) : g.uniform(-s, s) }
        }
        try m.addAdapter("default", config: LoraConfig(r: 4, alpha: 8, dropout: 0.1))
        var g = SplitMix64(seed: 7)
        for t in m.trainableParameters() where t.name.contains("lora_B") {
            for i in 0..<t.parameter.count { t.parameter[i] = 0.2 * g.uniform(-1, 1) }
        }
        return m
    }

    /// Decoding with the int8 head (and a LoRA adapter) equals the full forward (fp32 head,
    /// GEMM) within the cached-vs-full bound: the same weights, other summation orders.
    @Test(arguments: [ModelLoadOptions.dense, .qlora])
    func int8HeadDecodeMatchesFullForward(_ opts: ModelLoadOptions) throws {
        let m = try Self.int8HeadModel(options: opts)
        #expect(m.decodeHead != nil)
        var ids: [Int32] = [3, 17, 41, 5, 60, 22, 9]
        let cache = try m.makeKVCache(capacity: ids.count + 12)
        var z = try m.forwardCached(ids: ids, cache: cache)
        var worst = llamaRelErr(z, try fullLastLogits(m, ids))
        for _ in 0..<12 {
            let t = z.withUnsafeBufferPointer { Sampler.argmax($0) }
            ids.append(t)
            z = try m.forwardCached(ids: [t], cache: cache)
            worst = max(worst, llamaRelErr(z, try fullLastLogits(m, ids)))
        }
        #expect(worst < GenerateTests.cachedVsFullTol, "worst relative error \(worst)")
    }

    /// The step's logits do not depend on the number of threads (every row is computed by the
    /// same operations whichever thread takes it; attention heads are computed whole).
    @Test func sameLogitsOnAnyThreadCount() throws {
        let saved = Threads.count
        defer { Threads.count = saved }
        for opts in [ModelLoadOptions.dense, .qlora] {
            let m = try Self.int8HeadModel(options: opts)
            var runs: [[Float]] = []
            for threads in [1, 2, 3] {
                Threads.count = threads
                let cache = try m.makeKVCache(capacity: 16)
                _ = try m.forwardCached(ids: [1, 2, 3, 4], cache: cache)
                var z: [Float] = []
                for t in [5, 6, 7] as [Int32] { z += try m.forwardCached(ids: [t], cache: cache) }
                runs.append(z)
            }
            #expect(runs[1] == runs[0])
            #expect(runs[2] == runs[0])
        }
    }

    /// The team runs every thread's body, its barriers separate phases, and a second caller
    /// while the team is held gets a team of one.
    @Test func workerTeamPhasesAndBarriers() {
        let saved = Threads.count
        defer { Threads.count = saved }
        for threads in [1, 2, 3] {
            Threads.count = threads
            let team = WorkerTeam.acquire()
            // (a team of one when another test holds the shared team, or changed the count)
            #expect(team.size == threads || team.size == 1)
            let n = 1000
            let a = UnsafeMutablePointer<Int>.allocate(capacity: n), b = UnsafeMutablePointer<Int>.allocate(capacity: n)
            defer { a.deallocate(); b.deallocate() }
            for round in 0..<50 {
                team.run { tid in
                    let (lo, hi) = team.share(n, tid)
                    for i in lo..<hi { a[i] = i + round }
                    team.barrier()
                    // phase 2 reads what the other threads wrote in phase 1
                    let (lo2, hi2) = team.share(n, (tid + 1) % team.size)
                    for i in lo2..<hi2 { b[i] = a[n - 1 - i] * 2 }
                    team.barrier()
                }
                #expect((0..<n).allSatisfy { b[$0] == (n - 1 - $0 + round) * 2 }, "\(threads) threads, round \(round)")
            }
            if team.size > 1 {
                let other = WorkerTeam.acquire()
                #expect(other.size == 1)
                WorkerTeam.release(other)
            }
            WorkerTeam.release(team)
        }
    }
}
