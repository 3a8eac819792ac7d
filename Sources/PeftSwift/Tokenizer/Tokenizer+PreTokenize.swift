// Pre-tokenization for byte-level BPE, hand-written (no regex engine).
//
// GPT-2's split pattern, as Hugging Face tokenizers' ByteLevel pre-tokenizer uses it
// (tokenizers/src/pre_tokenizers/byte_level.rs, compiled with Oniguruma) and as llama.cpp
// spells it for LLAMA_VOCAB_PRE_TYPE_GPT2 (src/llama-vocab.cpp):
//
//     's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+
//
// Semantics carried over: alternatives are tried in order at each position (leftmost match,
// first alternative that matches); the contractions are lowercase ASCII only, after U+0027;
// " ?" is U+0020 only; \p{L} = general category L*, \p{N} = N* (Nd, Nl, No); \s = Unicode
// White_Space (Oniguruma: 0009-000D, 0085, Zs, Zl, Zp — the same set); `\s+(?!\S)` takes a
// whitespace run up to the end of the text, or all of it but its last character when a
// non-space follows (so " word" keeps its space); a lone whitespace character before a
// non-space falls through to `\s+`. Every character belongs to exactly one of L, N, \s or
// "other", so the pattern covers the whole text.
//
// SmolLM2's own tokenizer.json (HuggingFaceTB/SmolLM2-*) runs
// Sequence[Digits(individual_digits=true), ByteLevel(use_regex=true)]: every \p{N} character
// (tokenizers' Digits uses Rust's char::is_numeric = Nd|Nl|No) is split off on its own first,
// then the GPT-2 pattern runs on the pieces in between. llama.cpp's "smollm" pre-type does the
// same (regex "\p{N}" then the GPT-2 pattern).

/// Character classes of the pattern.
@usableFromInline enum _PreClass: UInt8 {
    case letter = 0, number = 1, space = 2, other = 3
}

/// ASCII classes (index = byte).
private let _asciiClass: [_PreClass] = (0..<128).map { b -> _PreClass in
    switch b {
    case 0x41...0x5A, 0x61...0x7A: return .letter
    case 0x30...0x39: return .number
    case 0x09...0x0D, 0x20: return .space
    default: return .other
    }
}

@inline(__always) func _preClass(_ v: UInt32) -> _PreClass {
    if v < 0x80 { return _asciiClass[Int(v)] }
    guard let s = Unicode.Scalar(v) else { return .other }
    let p = s.properties
    if p.isWhitespace { return .space }
    switch p.generalCategory {
    case .uppercaseLetter, .lowercaseLetter, .titlecaseLetter, .modifierLetter, .otherLetter: return .letter
    case .decimalNumber, .letterNumber, .otherNumber: return .number
    default: return .other
    }
}

/// Scalars of a UTF-8 segment: byte offset of each scalar (plus one past the end), its class,
/// and its value for ASCII (0xFFFF_FFFF otherwise; the contractions only look at ASCII).
struct _Scalars {
    var offsets: [Int32] = []
    var classes: [_PreClass] = []
    var ascii: [UInt8] = []      // the byte for ASCII scalars, 0 otherwise

    /// Decodes `bytes[lo..<hi]` (valid UTF-8: it comes from a Swift String).
    mutating func load(_ bytes: UnsafeBufferPointer<UInt8>, _ lo: Int, _ hi: Int) {
        offsets.removeAll(keepingCapacity: true)
        classes.removeAll(keepingCapacity: true)
        ascii.removeAll(keepingCapacity: true)
        var i = lo
        while i < hi {
            let b0 = bytes[i]
            offsets.append(Int32(i))
            if b0 < 0x80 {
                classes.append(_asciiClass[Int(b0)])
                ascii.append(b0)
                i += 1
                continue
            }
            var v: UInt32, n: Int
            if b0 >= 0xF0 { v = UInt32(b0 & 0x07); n = 4 } else if b0 >= 0xE0 { v = UInt32(b0 & 0x0F); n = 3 } else { v = UInt32(b0 & 0x1F); n = 2 }
            let end = min(i + n, hi)
            var k = i + 1
            while k < end { v = (v << 6) | UInt32(bytes[k] & 0x3F); k += 1 }
            classes.append(_preClass(v))
            ascii.append(0)
            i = end
        }
        offsets.append(Int32(hi))
    }
}

/// Pre-tokenizer flavours.
public enum BPEPreTokenizer: Equatable, Sendable {
    /// The GPT-2 pattern alone: what transformers builds for a "gpt2" GGUF vocabulary without a
    /// recognised pre-type (`AutoTokenizer.from_pretrained(..., gguf_file=)` on SmolLM2), and
    /// llama.cpp's "gpt2" pre-type.
    case gpt2
    /// Every \p{N} character isolated, then the GPT-2 pattern: SmolLM2's original tokenizer.json
    /// (Digits(individual_digits) + ByteLevel) and llama.cpp's "smollm"/"starcoder" pre-types.
    case digitsThenGPT2
}

extension _Scalars {
    /// Calls `emit(byteStart, byteEnd)` for each piece of scalars `a..<b` under the GPT-2 pattern.
    @inline(__always)
    func splitGPT2(_ a: Int, _ b: Int, _ emit: (Int, Int) -> Void) {
        var i = a
        while i < b {
            var end = -1
            // 's 't 're 've 'm 'll 'd
            if ascii[i] == 0x27, i + 1 < b {
                let n1 = ascii[i + 1]
                if n1 == 0x73 || n1 == 0x74 || n1 == 0x6D || n1 == 0x64 {          // s t m d
                    end = i + 2
                } else if i + 2 < b {
                    let n2 = ascii[i + 2]
                    if (n1 == 0x72 && n2 == 0x65) || (n1 == 0x76 && n2 == 0x65) || (n1 == 0x6C && n2 == 0x6C) {  // re ve ll
                        end = i + 3
                    }
                }
            }
            if end < 0 {
                // " ?\p{L}+", " ?\p{N}+", " ?[^\s\p{L}\p{N}]+"
                var j = i
                if ascii[i] == 0x20, i + 1 < b, classes[i + 1] != .space { j = i + 1 }
                let cj = classes[j]
                if cj != .space {
                    var k = j + 1
                    while k < b && classes[k] == cj { k += 1 }
                    end = k
                } else {
                    // c is whitespace: "\s+(?!\S)" then "\s+"
                    var k = i + 1
                    while k < b && classes[k] == .space { k += 1 }
                    if k == b || k - i == 1 { end = k } else { end = k - 1 }
                }
            }
            emit(Int(offsets[i]), Int(offsets[end]))
            i = end
        }
    }

    /// Calls `emit` for each piece of scalars `a..<b` under `kind`.
    @inline(__always)
    func split(_ kind: BPEPreTokenizer, _ a: Int, _ b: Int, _ emit: (Int, Int) -> Void) {
        switch kind {
        case .gpt2:
            splitGPT2(a, b, emit)
        case .digitsThenGPT2:
            var start = a
            var i = a
            while i < b {
                if classes[i] == .number {
                    if start < i { splitGPT2(start, i, emit) }
                    emit(Int(offsets[i]), Int(offsets[i + 1]))
                    start = i + 1
                }
                i += 1
            }
            if start < b { splitGPT2(start, b, emit) }
        }
    }
}
