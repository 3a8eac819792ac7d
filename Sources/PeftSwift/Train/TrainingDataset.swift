#if canImport(Glibc)
import Glibc
#endif

/// One instruction/response pair for chat fine-tuning.
public struct InstructionExample: Sendable, Equatable {
    public var instruction: String
    public var response: String
    public init(instruction: String, response: String) {
        self.instruction = instruction
        self.response = response
    }
}

/// Fixed-length training sequences: `count` rows of `seqLen` token ids with their labels
/// (`ignoreIndex` = −100 where no loss is taken). Labels are aligned with the ids: the model
/// shifts them (`LanguageModel.loss`: position t predicts labels[t+1], as transformers'
/// LlamaForCausalLM), so labels = ids for plain language modelling.
///
/// The order of sequences is a deterministic function of (seed, cursor): epoch e visits the
/// rows in a Fisher–Yates permutation drawn from SplitMix64(seed ^ e·φ), so a cursor is all a
/// checkpoint needs to resume the data stream exactly.
public final class TrainingDataset {
    public static let ignoreIndex: Int32 = -100
    public let seqLen: Int
    /// Token ids, count × seqLen, row-major.
    public let ids: [Int32]
    public let labels: [Int32]
    /// Number of sequences.
    public var count: Int { ids.count / seqLen }
    /// Tokens whose label is not ignored.
    public let targetCount: Int

    /// Builds a dataset from ready-made rows (each `seqLen` long). Throws for empty data,
    /// mismatched sizes, ids outside 0..<vocab (when given), labels neither −100 nor ids.
    public init(ids: [Int32], labels: [Int32], seqLen: Int, vocab: Int? = nil) throws(PSTError) {
        guard seqLen >= 2 else { throw .invalidArgument("sequence length (\(seqLen)) must be >= 2") }
        guard !ids.isEmpty else { throw .invalidArgument("the dataset is empty") }
        guard ids.count % seqLen == 0 else {
            throw .shape("ids has \(ids.count) tokens, not a multiple of the sequence length \(seqLen)")
        }
        guard labels.count == ids.count else { throw .shape("labels has \(labels.count) entries, ids \(ids.count)") }
        var n = 0
        for i in 0..<ids.count {
            if let vocab, ids[i] < 0 || Int(ids[i]) >= vocab {
                throw .invalidArgument("token id \(ids[i]) at position \(i) is outside the vocabulary 0..<\(vocab)")
            }
            if labels[i] != TrainingDataset.ignoreIndex {
                if let vocab, labels[i] < 0 || Int(labels[i]) >= vocab {
                    throw .invalidArgument("label \(labels[i]) at position \(i) is neither -100 nor in 0..<\(vocab)")
                }
                n += 1
            }
        }
        self.ids = ids
        self.labels = labels
        self.seqLen = seqLen
        self.targetCount = n
    }

    static func checkSeqLen(_ seqLen: Int, maxPositions: Int?) throws(PSTError) {
        guard seqLen >= 2 else { throw .invalidArgument("sequence length (\(seqLen)) must be >= 2") }
        if let maxPositions, seqLen > maxPositions {
            throw .invalidArgument("sequence length (\(seqLen)) is beyond the model's context length (\(maxPositions))")
        }
    }

    /// Causal-LM data: each document is tokenized (no BOS; special-token text is not parsed),
    /// followed by the tokenizer's EOS, all concatenated and cut into rows of `seqLen`
    /// (labels = ids). A final partial row is kept, padded with EOS whose labels are −100.
    /// Throws for no documents, documents that tokenize to nothing, a tokenizer without EOS,
    /// or `seqLen` beyond `maxPositions`.
    public static func packedText(_ documents: [String], tokenizer: BPETokenizer, seqLen: Int,
                                  maxPositions: Int? = nil) throws(PSTError) -> TrainingDataset {
        try checkSeqLen(seqLen, maxPositions: maxPositions)
        guard let eos = tokenizer.eosID else { throw .unsupported("the tokenizer has no EOS token to separate documents") }
        var stream: [Int32] = []
        for d in documents where !d.isEmpty {
            stream += tokenizer.encode(d, addBOS: false, addEOS: false, parseSpecial: false)
            stream.append(eos)
        }
        guard !stream.isEmpty else { throw .invalidArgument("the dataset is empty (no non-empty document)") }
        var labels = stream
        let rem = stream.count % seqLen
        if rem != 0 {
            let pad = seqLen - rem
            stream += [Int32](repeating: eos, count: pad)
            labels += [Int32](repeating: ignoreIndex, count: pad)
        }
        return try TrainingDataset(ids: stream, labels: labels, seqLen: seqLen, vocab: tokenizer.vocabSize)
    }

    /// `packedText` over UTF-8 text files, one document per file (or, with `separator`, each
    /// file split at that string, e.g. "\n\n"). Throws `PST_ERR_NOT_FOUND`/`PST_ERR_IO` for
    /// unreadable files and `PST_ERR_INVALID_ARG` naming the file and byte offset of invalid UTF-8,
    /// or a file with no text (empty or whitespace only).
    public static func packedTextFiles(_ paths: [String], tokenizer: BPETokenizer, seqLen: Int,
                                       maxPositions: Int? = nil, separator: String? = nil,
                                       maxFileBytes: Int = 1 << 30) throws(PSTError) -> TrainingDataset {
        guard !paths.isEmpty else { throw .invalidArgument("no text files given") }
        var docs: [String] = []
        for p in paths {
            let bytes = try FileSystem.readAll(p, limit: maxFileBytes)
            let text = try decodeUTF8(bytes, source: p)
            guard text.unicodeScalars.contains(where: { !$0.properties.isWhitespace }) else {
                throw .invalidArgument("\(p): the file is empty (no text to train on)")
            }
            if let separator, !separator.isEmpty {
                docs += splitString(text, separator).filter { !$0.isEmpty }
            } else {
                docs.append(text)
            }
        }
        do {
            return try packedText(docs, tokenizer: tokenizer, seqLen: seqLen, maxPositions: maxPositions)
        } catch {
            throw PSTError(status: error.status, "\(paths.joined(separator: ", ")): \(error.message)")
        }
    }

    /// Strict UTF-8 decoding; throws `PST_ERR_INVALID_ARG` naming `source` and the first bad byte offset.
    public static func decodeUTF8(_ bytes: [UInt8], source: String) throws(PSTError) -> String {
        let (text, at) = bytes.withUnsafeBytes { decodeStrictUTF8($0) }
        guard let text else {
            throw .invalidArgument("\(source): not valid UTF-8 text (bad byte sequence near byte offset \(at))")
        }
        return text
    }

    static func splitString(_ s: String, _ sep: String) -> [String] {
        var out: [String] = []
        var rest = Substring(s)
        while let r = rest.firstRange(of: sep) {
            out.append(String(rest[rest.startIndex..<r.lowerBound]))
            rest = rest[r.upperBound...]
        }
        out.append(String(rest))
        return out
    }

    /// Token ids and the response mask of one example in SmolLM2's ChatML format:
    ///
    ///     [<|im_start|>system\n{system}<|im_end|>\n]<|im_start|>user\n{instruction}<|im_end|>\n
    ///     <|im_start|>assistant\n{response}<|im_end|>\n
    ///
    /// The response, its `<|im_end|>` and the final newline are the trained part (mask true).
    /// Text between special tokens is encoded as one piece each, as the HF tokenizer splits
    /// at special tokens; the instruction and response texts are not scanned for special tokens.
    public static func renderChatML(_ e: InstructionExample, tokenizer: BPETokenizer,
                                    system: String? = nil) throws(PSTError) -> (ids: [Int32], trained: [Bool]) {
        guard let start = tokenizer.tokenID("<|im_start|>"), let end = tokenizer.tokenID("<|im_end|>") else {
            throw .unsupported("the tokenizer has no <|im_start|>/<|im_end|> tokens (ChatML)")
        }
        func enc(_ s: String) -> [Int32] { tokenizer.encode(s, addBOS: false, addEOS: false, parseSpecial: false) }
        var ids: [Int32] = []
        if let system { ids += [start] + enc("system\n" + system) + [end] + enc("\n") }
        ids += [start] + enc("user\n" + e.instruction) + [end] + enc("\n")
        ids += [start] + enc("assistant\n")
        let prompt = ids.count
        ids += enc(e.response) + [end] + enc("\n")
        return (ids, (0..<ids.count).map { $0 >= prompt })
    }

    /// The ids of a one-turn ChatML prompt ending with the assistant header, as
    /// `renderChatML` renders the prompt part (what generation continues from).
    public static func chatPrompt(_ user: String, tokenizer: BPETokenizer, system: String? = nil) throws(PSTError) -> [Int32] {
        let (ids, trained) = try renderChatML(InstructionExample(instruction: user, response: ""), tokenizer: tokenizer, system: system)
        return Array(ids[0..<(trained.firstIndex(of: true) ?? ids.count)])
    }

    /// Chat fine-tuning data: one row per example in ChatML (`renderChatML`), loss only on the
    /// response tokens (labels −100 elsewhere), padded to `seqLen` with EOS (labels −100);
    /// longer examples are truncated to `seqLen`. Throws for no examples, an example whose
    /// response is empty or lies entirely beyond `seqLen` (naming its index), `seqLen` beyond
    /// `maxPositions`.
    public static func instructions(_ examples: [InstructionExample], tokenizer: BPETokenizer, seqLen: Int,
                                    maxPositions: Int? = nil, system: String? = nil) throws(PSTError) -> TrainingDataset {
        try checkSeqLen(seqLen, maxPositions: maxPositions)
        guard !examples.isEmpty else { throw .invalidArgument("the dataset is empty (no instruction examples)") }
        guard let pad = tokenizer.padID ?? tokenizer.eosID else { throw .unsupported("the tokenizer has neither PAD nor EOS for padding") }
        var ids: [Int32] = [], labels: [Int32] = []
        ids.reserveCapacity(examples.count * seqLen)
        for (k, e) in examples.enumerated() {
            guard !e.response.isEmpty else { throw .invalidArgument("example \(k): the response is empty") }
            let (t, m) = try renderChatML(e, tokenizer: tokenizer, system: system)
            let n = min(t.count, seqLen)
            // position 0 is never a target (nothing predicts it)
            guard (1..<n).contains(where: { m[$0] }) else {
                throw .invalidArgument("example \(k): the prompt takes \(t.count - m.filter { $0 }.count) tokens, leaving no response token within the sequence length \(seqLen)")
            }
            for i in 0..<n { ids.append(t[i]); labels.append(m[i] ? t[i] : ignoreIndex) }
            for _ in n..<seqLen { ids.append(pad); labels.append(ignoreIndex) }
        }
        return try TrainingDataset(ids: ids, labels: labels, seqLen: seqLen, vocab: tokenizer.vocabSize)
    }

    /// `instructions` over JSON Lines files: each non-blank line is an object with string
    /// fields "instruction" and "response" ("prompt"/"completion" are accepted too). Throws
    /// `PST_ERR_INVALID_ARG` naming the file and line of a line that is not such an object,
    /// invalid UTF-8, or files without any example.
    public static func instructionFiles(_ paths: [String], tokenizer: BPETokenizer, seqLen: Int,
                                        maxPositions: Int? = nil, system: String? = nil,
                                        maxFileBytes: Int = 1 << 30) throws(PSTError) -> TrainingDataset {
        guard !paths.isEmpty else { throw .invalidArgument("no JSON Lines files given") }
        var examples: [InstructionExample] = []
        for p in paths {
            let bytes = try FileSystem.readAll(p, limit: maxFileBytes)
            _ = try decodeUTF8(bytes, source: p)
            let before = examples.count
            var line = 0
            for raw in bytes.split(separator: UInt8(ascii: "\n"), omittingEmptySubsequences: false) {
                line += 1
                if raw.allSatisfy({ $0 == 0x20 || $0 == 0x09 || $0 == 0x0D }) { continue }
                let v: JSONValue
                do { v = try JSON.parse(Array(raw), source: "\(p):\(line)") } catch {
                    throw .invalidArgument("\(p):\(line): not a JSON object (\(error.message))")
                }
                guard let o = v.objectValue else { throw .invalidArgument("\(p):\(line): not a JSON object") }
                guard let i = (o["instruction"] ?? o["prompt"])?.stringValue,
                      let r = (o["response"] ?? o["completion"])?.stringValue else {
                    throw .invalidArgument("\(p):\(line): needs string fields \"instruction\" and \"response\"")
                }
                examples.append(InstructionExample(instruction: i, response: r))
            }
            guard examples.count > before else { throw .invalidArgument("\(p): the file is empty (no instruction examples)") }
        }
        guard !examples.isEmpty else {
            throw .invalidArgument("\(paths.joined(separator: ", ")): no instruction examples (the files are empty)")
        }
        do {
            return try instructions(examples, tokenizer: tokenizer, seqLen: seqLen, maxPositions: maxPositions, system: system)
        } catch {
            throw PSTError(status: error.status, "\(paths.joined(separator: ", ")): \(error.message)")
        }
    }

    /// FNV-1a (64-bit) over the sequence length, ids and labels: identifies the data a
    /// checkpoint was made with.
    public var fingerprint: UInt64 {
        var h: UInt64 = 0xCBF2_9CE4_8422_2325
        @inline(__always) func mix(_ v: UInt32) {
            var x = v
            for _ in 0..<4 { h ^= UInt64(x & 0xFF); h &*= 0x0000_0100_0000_01B3; x >>= 8 }
        }
        mix(UInt32(truncatingIfNeeded: seqLen))
        for v in ids { mix(UInt32(bitPattern: v)) }
        for v in labels { mix(UInt32(bitPattern: v)) }
        return h
    }

    /// The row visited at global position `cursor` >= 0 (epoch = cursor / count, shuffled per epoch
    /// when `shuffle`).
    func rowIndex(at cursor: Int, seed: UInt64, shuffle: Bool = true) -> Int {
        let n = count
        let epoch = cursor / n, k = cursor % n
        guard shuffle else { return k }
        if cachedEpoch != epoch || cachedSeed != seed {
            cachedPerm = TrainingDataset.permutation(n, seed: seed ^ (UInt64(epoch) &* 0x9E37_79B9_7F4A_7C15))
            cachedEpoch = epoch; cachedSeed = seed
        }
        return cachedPerm[k]
    }

    private var cachedEpoch = -1
    private var cachedSeed: UInt64 = 0
    private var cachedPerm: [Int] = []

    /// Fisher–Yates permutation of 0..<n from SplitMix64(seed).
    public static func permutation(_ n: Int, seed: UInt64) -> [Int] {
        var p = Array(0..<n)
        var g = SplitMix64(seed: seed)
        if n > 1 {
            for i in stride(from: n - 1, to: 0, by: -1) {
                let j = Int(g.next() % UInt64(i + 1))
                p.swapAt(i, j)
            }
        }
        return p
    }

    /// Copies `rows` consecutive rows starting at `cursor` (in visiting order) into ids/labels.
    func batch(cursor: Int, rows: Int, seed: UInt64, shuffle: Bool = true) -> (ids: [Int32], labels: [Int32]) {
        var bi: [Int32] = [], bl: [Int32] = []
        bi.reserveCapacity(rows * seqLen); bl.reserveCapacity(rows * seqLen)
        for r in 0..<rows {
            let k = rowIndex(at: cursor + r, seed: seed, shuffle: shuffle)
            bi += ids[(k * seqLen)..<((k + 1) * seqLen)]
            bl += labels[(k * seqLen)..<((k + 1) * seqLen)]
        }
        return (bi, bl)
    }
}
