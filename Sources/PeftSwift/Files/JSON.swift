// A strict RFC 8259 JSON reader and a writer that reproduces Python's json.dumps and serde_json
// (safetensors) byte for byte. No Foundation: the engine parses its own files.

/// A JSON value. Object members keep their document order (and the order they were added in),
/// so a value read and written again keeps its layout unless the writer is asked to sort.
public enum JSONValue: Equatable, Sendable {
    case null
    case bool(Bool)
    case number(JSONNumber)
    case string(String)
    case array([JSONValue])
    case object(JSONObject)

    public static func int(_ v: Int) -> JSONValue { .number(JSONNumber(v)) }

    /// A double written as Python's `repr` (`0.05`, `1e-05`, `32.0`). Non-finite values have no
    /// JSON spelling: `PST_ERR_INVALID_ARG`.
    public static func double(_ v: Double) throws(PSTError) -> JSONValue { .number(try JSONNumber(double: v)) }

    public var stringValue: String? { if case .string(let s) = self { return s }; return nil }
    public var boolValue: Bool? { if case .bool(let b) = self { return b }; return nil }
    public var numberValue: JSONNumber? { if case .number(let n) = self { return n }; return nil }
    public var arrayValue: [JSONValue]? { if case .array(let a) = self { return a }; return nil }
    public var objectValue: JSONObject? { if case .object(let o) = self { return o }; return nil }
    public var isNull: Bool { if case .null = self { return true }; return false }

    /// "null", "a boolean", "a number", ... for error messages.
    public var kindName: String {
        switch self {
        case .null: return "null"
        case .bool: return "a boolean"
        case .number: return "a number"
        case .string: return "a string"
        case .array: return "an array"
        case .object: return "an object"
        }
    }
}

/// A JSON number kept as its literal text (RFC 8259 grammar), so nothing is lost until the
/// caller asks for a particular type: `int64` is exact, `double` and `float32` are correctly
/// rounded from the text.
public struct JSONNumber: Equatable, Sendable, CustomStringConvertible {
    /// The literal, e.g. `-12`, `0.05`, `1e-05`.
    public let text: String

    public var description: String { text }

    /// An integer literal.
    public init(_ v: Int) { text = String(v) }
    public init(_ v: Int64) { text = String(v) }

    /// A double spelled as Python's `repr(float)` (what json.dumps writes): the shortest digits
    /// that round-trip, fixed notation for decimal exponents -4 < e <= 16, otherwise
    /// `d.ddde±XX`, and `.0` on integral values. Throws `PST_ERR_INVALID_ARG` for NaN/±Inf.
    public init(double v: Double) throws(PSTError) {
        guard v.isFinite else { throw .invalidArgument("\(v) has no JSON spelling") }
        text = JSONNumber.pythonRepr(v)
    }

    /// Validates `literal` against the RFC 8259 number grammar.
    public init?(literal: String) {
        var s = literal
        let ok = s.withUTF8 { b -> Bool in
            guard let base = b.baseAddress else { return false }
            return b.count > 0 && JSONNumber.scan(base, b.count, 0) == b.count
        }
        guard ok else { return nil }
        text = literal
    }

    init(uncheckedText: String) { text = uncheckedText }

    /// True when the literal has neither a fraction nor an exponent.
    public var isIntegerLiteral: Bool { !text.utf8.contains(where: { $0 == UInt8(ascii: ".") || $0 == UInt8(ascii: "e") || $0 == UInt8(ascii: "E") }) }

    /// The exact value of an integer literal that fits in Int64; nil otherwise (fraction,
    /// exponent or out of range, even for `1.0` or `1e2`).
    public var int64: Int64? {
        guard isIntegerLiteral else { return nil }
        var neg = false
        var v: Int64 = 0
        for (i, c) in text.utf8.enumerated() {
            if i == 0 && c == UInt8(ascii: "-") { neg = true; continue }
            let d = Int64(c &- UInt8(ascii: "0"))
            let (m, o1) = v.multipliedReportingOverflow(by: 10)
            let (a, o2) = neg ? m.subtractingReportingOverflow(d) : m.addingReportingOverflow(d)
            if o1 || o2 { return nil }
            v = a
        }
        return v
    }

    /// The exact value as Int when it is an integer literal in range.
    public var int: Int? { int64.flatMap { Int(exactly: $0) } }

    /// The correctly rounded double (±infinity beyond the range, as Python's float()).
    public var double: Double { Double(text) ?? .nan }

    /// The correctly rounded float32 of the literal itself. Python code that reads a JSON float
    /// and makes a float32 tensor of it rounds twice (`Float(double)`); use that where the
    /// Python semantics matter.
    public var float32: Float { Float(text) ?? .nan }

    /// Length of the number literal starting at `i` (0 if none). Grammar:
    /// `-? (0 | [1-9][0-9]*) (. [0-9]+)? ([eE] [+-]? [0-9]+)?`
    static func scan(_ p: UnsafePointer<UInt8>, _ n: Int, _ start: Int) -> Int {
        var i = start
        func digit(_ i: Int) -> Bool { i < n && p[i] >= 0x30 && p[i] <= 0x39 }
        if i < n && p[i] == UInt8(ascii: "-") { i += 1 }
        guard digit(i) else { return 0 }
        if p[i] == 0x30 { i += 1 } else { while digit(i) { i += 1 } }
        if i < n && p[i] == UInt8(ascii: ".") {
            i += 1
            guard digit(i) else { return 0 }
            while digit(i) { i += 1 }
        }
        if i < n && (p[i] == UInt8(ascii: "e") || p[i] == UInt8(ascii: "E")) {
            i += 1
            if i < n && (p[i] == UInt8(ascii: "+") || p[i] == UInt8(ascii: "-")) { i += 1 }
            guard digit(i) else { return 0 }
            while digit(i) { i += 1 }
        }
        return i - start
    }

    /// Python's repr of a finite double. The shortest round-trip digits come from Swift's own
    /// `description` (also shortest, nearest among the shortest, like Python's dtoa mode 0);
    /// only the layout is Python's (`float_repr_style = 'short'`: exponent form when the decimal
    /// point position is <= -4 or > 16).
    public static func pythonRepr(_ v: Double) -> String {
        if v == 0 { return v.sign == .minus ? "-0.0" : "0.0" }
        let (negative, digits, point) = shortestDigits(v.description)
        var out = negative ? "-" : ""
        let nd = digits.count
        if point > -4 && point <= 16 {
            if point <= 0 {
                out += "0." + String(repeating: "0", count: -point) + digits
            } else if point >= nd {
                out += digits + String(repeating: "0", count: point - nd) + ".0"
            } else {
                let cut = digits.index(digits.startIndex, offsetBy: point)
                out += digits[..<cut] + "." + digits[cut...]
            }
        } else {
            let first = digits.prefix(1), rest = digits.dropFirst()
            out += first
            if !rest.isEmpty { out += "." + rest }
            let e = point - 1
            out += e < 0 ? "e-" : "e+"
            let mag = String(abs(e))
            out += (mag.count < 2 ? "0" : "") + mag
        }
        return out
    }

    /// Python's repr of a float32 value written as a JSON number the way a Python user would
    /// have typed it: the shortest float32 digits (`Float(0.05)` -> `0.05`, not the widened
    /// `0.05000000074505806`), laid out as `pythonRepr`.
    public static func pythonReprOfFloat32Literal(_ v: Float) -> String {
        pythonRepr(Double(v.description) ?? Double(v))
    }

    /// Splits a Swift float description ("-1.25e-07", "0.05", "100.0") into sign, the
    /// significant digits without leading/trailing zeros, and the decimal point position
    /// (value = 0.DIGITS × 10^point).
    static func shortestDigits(_ s: String) -> (Bool, String, Int) {
        var negative = false
        var mantissa = Substring(s)
        var exp = 0
        if mantissa.hasPrefix("-") { negative = true; mantissa = mantissa.dropFirst() }
        if let e = mantissa.firstIndex(where: { $0 == "e" || $0 == "E" }) {
            exp = Int(mantissa[mantissa.index(after: e)...]) ?? 0
            mantissa = mantissa[..<e]
        }
        var intPart = mantissa, frac: Substring = ""
        if let dot = mantissa.firstIndex(of: ".") {
            intPart = mantissa[..<dot]
            frac = mantissa[mantissa.index(after: dot)...]
        }
        var all = Array(intPart.utf8) + Array(frac.utf8)
        var point = intPart.utf8.count + exp
        while let f = all.first, f == UInt8(ascii: "0") { all.removeFirst(); point -= 1 }
        while let l = all.last, l == UInt8(ascii: "0") { all.removeLast() }
        if all.isEmpty { return (negative, "0", 1) }
        return (negative, String(decoding: all, as: UTF8.self), point)
    }
}

/// The members of a JSON object in order. Keys are unique (the parser rejects duplicates;
/// `set` replaces in place).
public struct JSONObject: Equatable, Sendable {
    public private(set) var members: [Member] = []
    private var index: [String: Int] = [:]

    public struct Member: Equatable, Sendable {
        public let key: String
        public var value: JSONValue
    }

    public init() {}

    public init(_ pairs: [(String, JSONValue)]) {
        for (k, v) in pairs { set(k, v) }
    }

    public static func == (a: JSONObject, b: JSONObject) -> Bool { a.members == b.members }

    public var count: Int { members.count }
    public var isEmpty: Bool { members.isEmpty }
    public var keys: [String] { members.map(\.key) }

    public subscript(key: String) -> JSONValue? {
        guard let i = index[key] else { return nil }
        return members[i].value
    }

    /// Sets `key`: replaces the value in place if present, else appends.
    public mutating func set(_ key: String, _ value: JSONValue) {
        if let i = index[key] { members[i].value = value; return }
        index[key] = members.count
        members.append(Member(key: key, value: value))
    }

    /// Appends unless the key exists; returns false for a duplicate.
    mutating func appendIfNew(_ key: String, _ value: JSONValue) -> Bool {
        guard index[key] == nil else { return false }
        index[key] = members.count
        members.append(Member(key: key, value: value))
        return true
    }
}

/// How `JSON.serialize` lays out a value.
public struct JSONStyle: Sendable, Equatable {
    /// Spaces per nesting level; nil writes one line.
    public var indent: Int?
    /// Between array items / object members (`", "` or `","`; with an indent, the newline
    /// and indentation follow it, so use `","` as Python does).
    public var itemSeparator: String
    /// Between a key and its value.
    public var keySeparator: String
    /// Sort object keys by code point (Python's sort_keys=True).
    public var sortKeys: Bool
    /// Escape every non-ASCII character as `\uXXXX` (surrogate pairs beyond the BMP), and DEL;
    /// Python's default ensure_ascii=True.
    public var ensureASCII: Bool

    public init(indent: Int? = nil, itemSeparator: String = ", ", keySeparator: String = ": ",
                sortKeys: Bool = false, ensureASCII: Bool = true) {
        self.indent = indent
        self.itemSeparator = itemSeparator
        self.keySeparator = keySeparator
        self.sortKeys = sortKeys
        self.ensureASCII = ensureASCII
    }

    /// `json.dumps(v)`: separators `(", ", ": ")`, ensure_ascii (bitsandbytes' quant-state blob).
    public static let python = JSONStyle()
    /// `json.dumps(v, indent=n, sort_keys=s)`: separators `(",", ": ")` (PEFT's
    /// adapter_config.json is `indent=2, sort_keys=True`).
    public static func pythonIndented(_ n: Int, sortKeys: Bool) -> JSONStyle {
        JSONStyle(indent: n, itemSeparator: ",", keySeparator: ": ", sortKeys: sortKeys, ensureASCII: true)
    }
    /// serde_json's compact output (the safetensors header): no spaces, UTF-8 kept as is.
    public static let compact = JSONStyle(indent: nil, itemSeparator: ",", keySeparator: ":", sortKeys: false, ensureASCII: false)
}

/// Reading and writing JSON text.
public enum JSON {
    /// Bounds on what the parser accepts.
    public struct Limits: Sendable {
        /// Bytes of input.
        public var maxBytes: Int
        /// Nested arrays/objects (the outermost counts as 1).
        public var maxDepth: Int
        public init(maxBytes: Int = 16 << 20, maxDepth: Int = 64) {
            self.maxBytes = maxBytes
            self.maxDepth = maxDepth
        }
    }

    /// Parses one JSON text (RFC 8259: any value surrounded by optional whitespace; strict
    /// UTF-8; no comments, trailing commas, NaN, leading zeros, lone surrogates, control
    /// characters in strings, or duplicate object keys). Every failure is `PST_ERR_CORRUPT`
    /// with a message `"<source>: invalid JSON at byte <offset>: <problem>"`.
    public static func parse(_ bytes: UnsafeRawBufferPointer, source: String = "JSON",
                             limits: Limits = Limits()) throws(PSTError) -> JSONValue {
        guard bytes.count <= limits.maxBytes else {
            throw .corrupt("\(source): JSON text is \(bytes.count) bytes, more than the limit of \(limits.maxBytes)")
        }
        guard let base = bytes.baseAddress, bytes.count > 0 else {
            throw .corrupt("\(source): invalid JSON at byte 0: empty input")
        }
        var p = _JSONParser(p: base.assumingMemoryBound(to: UInt8.self), n: bytes.count, source: source, maxDepth: limits.maxDepth)
        p.skipWhitespace()
        let v = try p.parseValue(depth: 0)
        p.skipWhitespace()
        guard p.i == p.n else { throw p.fail("unexpected \(p.describeByte()) after the value") }
        return v
    }

    public static func parse(_ bytes: [UInt8], source: String = "JSON", limits: Limits = Limits()) throws(PSTError) -> JSONValue {
        try withBytes(bytes) { (b) throws(PSTError) -> JSONValue in try parse(b, source: source, limits: limits) }
    }

    public static func parse(_ text: String, source: String = "JSON", limits: Limits = Limits()) throws(PSTError) -> JSONValue {
        try parse(Array(text.utf8), source: source, limits: limits)
    }

    /// The UTF-8 text of `value` in `style`.
    public static func serialize(_ value: JSONValue, style: JSONStyle = .python) -> [UInt8] {
        var out: [UInt8] = []
        out.reserveCapacity(256)
        write(value, style, 0, &out)
        return out
    }

    public static func serializeString(_ value: JSONValue, style: JSONStyle = .python) -> String {
        String(decoding: serialize(value, style: style), as: UTF8.self)
    }

    static func newline(_ style: JSONStyle, _ level: Int, _ out: inout [UInt8]) {
        guard let ind = style.indent else { return }
        out.append(0x0A)
        out.append(contentsOf: repeatElement(UInt8(ascii: " "), count: ind * level))
    }

    static func write(_ v: JSONValue, _ style: JSONStyle, _ level: Int, _ out: inout [UInt8]) {
        switch v {
        case .null: out.append(contentsOf: "null".utf8)
        case .bool(let b): out.append(contentsOf: (b ? "true" : "false").utf8)
        case .number(let n): out.append(contentsOf: n.text.utf8)
        case .string(let s): writeString(s, style.ensureASCII, &out)
        case .array(let a):
            if a.isEmpty { out.append(contentsOf: "[]".utf8); return }
            out.append(UInt8(ascii: "["))
            for (i, e) in a.enumerated() {
                if i > 0 { out.append(contentsOf: style.itemSeparator.utf8) }
                newline(style, level + 1, &out)
                write(e, style, level + 1, &out)
            }
            newline(style, level, &out)
            out.append(UInt8(ascii: "]"))
        case .object(let o):
            if o.isEmpty { out.append(contentsOf: "{}".utf8); return }
            out.append(UInt8(ascii: "{"))
            var members = o.members
            if style.sortKeys {
                members.sort { Array($0.key.unicodeScalars.map(\.value)).lexicographicallyPrecedes($1.key.unicodeScalars.map(\.value)) }
            }
            for (i, m) in members.enumerated() {
                if i > 0 { out.append(contentsOf: style.itemSeparator.utf8) }
                newline(style, level + 1, &out)
                writeString(m.key, style.ensureASCII, &out)
                out.append(contentsOf: style.keySeparator.utf8)
                write(m.value, style, level + 1, &out)
            }
            newline(style, level, &out)
            out.append(UInt8(ascii: "}"))
        }
    }

    static let hex: [UInt8] = Array("0123456789abcdef".utf8)

    static func appendU4(_ u: UInt32, _ out: inout [UInt8]) {
        out.append(contentsOf: "\\u".utf8)
        for shift in stride(from: 12, through: 0, by: -4) { out.append(hex[Int((u >> UInt32(shift)) & 0xF)]) }
    }

    /// The escape of `"`, `\\` or a control character U+0000...U+001F.
    static func appendEscaped(_ v: UInt32, _ out: inout [UInt8]) {
        switch v {
        case 0x22: out.append(contentsOf: "\\\"".utf8)
        case 0x5C: out.append(contentsOf: "\\\\".utf8)
        case 0x08: out.append(contentsOf: "\\b".utf8)
        case 0x0C: out.append(contentsOf: "\\f".utf8)
        case 0x0A: out.append(contentsOf: "\\n".utf8)
        case 0x0D: out.append(contentsOf: "\\r".utf8)
        case 0x09: out.append(contentsOf: "\\t".utf8)
        default: appendU4(v, &out)
        }
    }

    /// Python's / serde_json's escaping: `\"`, `\\`, `\b \f \n \r \t`, other controls as
    /// `\u00xx`; with ensureASCII also DEL and everything non-ASCII as `\uxxxx` (UTF-16).
    static func writeString(_ s: String, _ ensureASCII: Bool, _ out: inout [UInt8]) {
        out.append(UInt8(ascii: "\""))
        if !ensureASCII {
            // serde_json: only `"`, `\` and U+0000...U+001F are escaped (NUL as `\u0000`); every
            // other byte of the UTF-8 is copied, in runs (metadata values can be megabytes).
            var s = s
            s.withUTF8 { b in
                var start = 0
                for i in 0..<b.count {
                    let c = b[i]
                    guard c < 0x20 || c == 0x22 || c == 0x5C else { continue }
                    out.append(contentsOf: UnsafeBufferPointer(rebasing: b[start..<i]))
                    appendEscaped(UInt32(c), &out)
                    start = i + 1
                }
                out.append(contentsOf: UnsafeBufferPointer(rebasing: b[start..<b.count]))
            }
            out.append(UInt8(ascii: "\""))
            return
        }
        for u in s.unicodeScalars {
            let v = u.value
            switch v {
            case 0..<0x20, 0x22, 0x5C: appendEscaped(v, &out)
            case 0x20..<0x7F: out.append(UInt8(v))
            default:
                if v < 0x10000 {
                    appendU4(v, &out)
                } else {
                    let w = v - 0x10000
                    appendU4(0xD800 + (w >> 10), &out)
                    appendU4(0xDC00 + (w & 0x3FF), &out)
                }
            }
        }
        out.append(UInt8(ascii: "\""))
    }
}

/// Recursive-descent parser over a byte buffer. Recursion is bounded by `maxDepth`; every index
/// is checked against `n` before it is read.
struct _JSONParser {
    let p: UnsafePointer<UInt8>
    let n: Int
    let source: String
    let maxDepth: Int
    var i = 0

    init(p: UnsafePointer<UInt8>, n: Int, source: String, maxDepth: Int) {
        self.p = p; self.n = n; self.source = source; self.maxDepth = maxDepth
    }

    func fail(_ what: String, at: Int? = nil) -> PSTError {
        .corrupt("\(source): invalid JSON at byte \(at ?? i): \(what)")
    }

    func describeByte() -> String {
        guard i < n else { return "end of input" }
        let c = p[i]
        if c >= 0x21 && c < 0x7F { return "'\(Character(Unicode.Scalar(c)))'" }
        return "byte 0x" + String(c, radix: 16)
    }

    mutating func skipWhitespace() {
        while i < n, p[i] == 0x20 || p[i] == 0x0A || p[i] == 0x0D || p[i] == 0x09 { i += 1 }
    }

    mutating func expectLiteral(_ word: StaticString, _ value: JSONValue) throws(PSTError) -> JSONValue {
        let w = word.utf8Start, wn = word.utf8CodeUnitCount
        guard n - i >= wn else { throw fail("truncated literal (expected \(word))") }
        for k in 0..<wn where p[i + k] != w[k] { throw fail("invalid literal (expected \(word))", at: i + k) }
        i += wn
        return value
    }

    mutating func parseValue(depth: Int) throws(PSTError) -> JSONValue {
        guard i < n else { throw fail("unexpected end of input, expected a value") }
        switch p[i] {
        case UInt8(ascii: "{"): return try parseObject(depth: depth + 1)
        case UInt8(ascii: "["): return try parseArray(depth: depth + 1)
        case UInt8(ascii: "\""): return .string(try parseString())
        case UInt8(ascii: "t"): return try expectLiteral("true", .bool(true))
        case UInt8(ascii: "f"): return try expectLiteral("false", .bool(false))
        case UInt8(ascii: "n"): return try expectLiteral("null", .null)
        case UInt8(ascii: "-"), 0x30...0x39:
            let len = JSONNumber.scan(p, n, i)
            guard len > 0 else { throw fail("malformed number") }
            let text = String(decoding: UnsafeBufferPointer(start: p + i, count: len), as: UTF8.self)
            i += len
            return .number(JSONNumber(uncheckedText: text))
        default:
            throw fail("unexpected \(describeByte()), expected a value")
        }
    }

    mutating func parseArray(depth: Int) throws(PSTError) -> JSONValue {
        guard depth <= maxDepth else { throw fail("nesting deeper than \(maxDepth) levels") }
        i += 1   // [
        var items: [JSONValue] = []
        skipWhitespace()
        if i < n && p[i] == UInt8(ascii: "]") { i += 1; return .array(items) }
        while true {
            skipWhitespace()
            items.append(try parseValue(depth: depth))
            skipWhitespace()
            guard i < n else { throw fail("unexpected end of input in an array") }
            if p[i] == UInt8(ascii: ",") { i += 1; continue }
            if p[i] == UInt8(ascii: "]") { i += 1; return .array(items) }
            throw fail("unexpected \(describeByte()) in an array, expected ',' or ']'")
        }
    }

    mutating func parseObject(depth: Int) throws(PSTError) -> JSONValue {
        guard depth <= maxDepth else { throw fail("nesting deeper than \(maxDepth) levels") }
        i += 1   // {
        var obj = JSONObject()
        skipWhitespace()
        if i < n && p[i] == UInt8(ascii: "}") { i += 1; return .object(obj) }
        while true {
            skipWhitespace()
            guard i < n, p[i] == UInt8(ascii: "\"") else { throw fail("unexpected \(describeByte()), expected a string key") }
            let keyAt = i
            let key = try parseString()
            skipWhitespace()
            guard i < n, p[i] == UInt8(ascii: ":") else { throw fail("unexpected \(describeByte()), expected ':' after a key") }
            i += 1
            skipWhitespace()
            let v = try parseValue(depth: depth)
            guard obj.appendIfNew(key, v) else { throw fail("duplicate key \(quoted(key))", at: keyAt) }
            skipWhitespace()
            guard i < n else { throw fail("unexpected end of input in an object") }
            if p[i] == UInt8(ascii: ",") { i += 1; continue }
            if p[i] == UInt8(ascii: "}") { i += 1; return .object(obj) }
            throw fail("unexpected \(describeByte()) in an object, expected ',' or '}'")
        }
    }

    func hex4(_ at: Int) -> UInt32? {
        guard n - at >= 4 else { return nil }
        var v: UInt32 = 0
        for k in 0..<4 {
            let c = p[at + k]
            let d: UInt32
            switch c {
            case 0x30...0x39: d = UInt32(c - 0x30)
            case 0x61...0x66: d = UInt32(c - 0x61 + 10)
            case 0x41...0x46: d = UInt32(c - 0x41 + 10)
            default: return nil
            }
            v = v << 4 | d
        }
        return v
    }

    /// Length of the valid UTF-8 sequence at `at` (lead byte >= 0x80), or 0 when invalid
    /// (overlong forms, surrogates and values beyond U+10FFFF are invalid).
    func utf8Length(_ at: Int) -> Int {
        let b0 = p[at]
        func cont(_ k: Int, _ lo: UInt8 = 0x80, _ hi: UInt8 = 0xBF) -> Bool { at + k < n && p[at + k] >= lo && p[at + k] <= hi }
        switch b0 {
        case 0xC2...0xDF: return cont(1) ? 2 : 0
        case 0xE0: return cont(1, 0xA0) && cont(2) ? 3 : 0
        case 0xE1...0xEC, 0xEE...0xEF: return cont(1) && cont(2) ? 3 : 0
        case 0xED: return cont(1, 0x80, 0x9F) && cont(2) ? 3 : 0
        case 0xF0: return cont(1, 0x90) && cont(2) && cont(3) ? 4 : 0
        case 0xF1...0xF3: return cont(1) && cont(2) && cont(3) ? 4 : 0
        case 0xF4: return cont(1, 0x80, 0x8F) && cont(2) && cont(3) ? 4 : 0
        default: return 0
        }
    }

    mutating func parseString() throws(PSTError) -> String {
        let start = i
        i += 1   // opening quote
        // Fast path: no escapes.
        var j = i
        while j < n {
            let c = p[j]
            if c == UInt8(ascii: "\"") || c == UInt8(ascii: "\\") || c < 0x20 { break }
            if c < 0x80 { j += 1; continue }
            let l = utf8Length(j)
            guard l > 0 else { throw fail("invalid UTF-8 in a string", at: j) }
            j += l
        }
        guard j < n else { throw fail("unterminated string", at: start) }
        if p[j] == UInt8(ascii: "\"") {
            let s = String(decoding: UnsafeBufferPointer(start: p + i, count: j - i), as: UTF8.self)
            i = j + 1
            return s
        }
        var buf = Array(UnsafeBufferPointer(start: p + i, count: j - i))
        i = j
        while true {
            guard i < n else { throw fail("unterminated string", at: start) }
            let c = p[i]
            if c == UInt8(ascii: "\"") { i += 1; break }
            if c < 0x20 { throw fail("control character 0x\(String(c, radix: 16)) in a string") }
            if c >= 0x80 {
                let l = utf8Length(i)
                guard l > 0 else { throw fail("invalid UTF-8 in a string") }
                buf.append(contentsOf: UnsafeBufferPointer(start: p + i, count: l))
                i += l
                continue
            }
            if c != UInt8(ascii: "\\") { buf.append(c); i += 1; continue }
            guard i + 1 < n else { throw fail("unterminated escape") }
            let e = p[i + 1]
            i += 2
            switch e {
            case UInt8(ascii: "\""): buf.append(0x22)
            case UInt8(ascii: "\\"): buf.append(0x5C)
            case UInt8(ascii: "/"): buf.append(0x2F)
            case UInt8(ascii: "b"): buf.append(0x08)
            case UInt8(ascii: "f"): buf.append(0x0C)
            case UInt8(ascii: "n"): buf.append(0x0A)
            case UInt8(ascii: "r"): buf.append(0x0D)
            case UInt8(ascii: "t"): buf.append(0x09)
            case UInt8(ascii: "u"):
                guard let u = hex4(i) else { throw fail("malformed \\u escape", at: i - 2) }
                i += 4
                var scalar = u
                if u >= 0xD800 && u <= 0xDBFF {
                    guard n - i >= 6, p[i] == UInt8(ascii: "\\"), p[i + 1] == UInt8(ascii: "u"),
                          let lo = hex4(i + 2), lo >= 0xDC00 && lo <= 0xDFFF else {
                        throw fail("lone high surrogate \\u\(String(u, radix: 16))", at: i - 6)
                    }
                    i += 6
                    scalar = 0x10000 + ((u - 0xD800) << 10) + (lo - 0xDC00)
                } else if u >= 0xDC00 && u <= 0xDFFF {
                    throw fail("lone low surrogate \\u\(String(u, radix: 16))", at: i - 6)
                }
                guard let us = Unicode.Scalar(scalar) else { throw fail("invalid \\u escape", at: i - 6) }
                buf.append(contentsOf: String(us).utf8)
            default:
                throw fail("invalid escape '\\\(Character(Unicode.Scalar(e)))'", at: i - 2)
            }
        }
        return String(decoding: buf, as: UTF8.self)
    }
}

/// `"name"` with the characters JSON would escape escaped, for error messages (a file's names
/// may hold anything); long names are cut to 200 characters.
func quoted(_ s: String) -> String {
    var body = s
    if body.unicodeScalars.count > 200 { body = String(String.UnicodeScalarView(body.unicodeScalars.prefix(200))) + "…" }
    return String(decoding: JSON.serialize(.string(body), style: .compact), as: UTF8.self)
}
