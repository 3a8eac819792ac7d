import Foundation
import Testing
import CPeftSwift
@testable import PeftSwift

/// The JSON reader and writer: RFC 8259 conformance, limits, and byte-identity with Python's
/// json.dumps / repr(float) (fixtures from Tests/fixtures/make_files_fixtures.py).
@Suite struct FilesJSONTests {
    func parse(_ s: String) throws -> JSONValue { try JSON.parse(s, source: "t.json") }

    func rejects(_ s: String, _ fragment: String? = nil, file: String = #filePath, line: Int = #line) {
        let e = thrownPST { _ = try JSON.parse(s, source: "t.json", limits: .init(maxBytes: 1 << 20, maxDepth: 64)) }
        #expect(e?.status == PST_ERR_CORRUPT, "accepted \(s.debugDescription)")
        if let fragment, let e { #expect(e.message.contains(fragment), "\(e.message)") }
        if let e { #expect(e.message.hasPrefix("t.json: invalid JSON at byte") || e.message.hasPrefix("t.json: JSON text")) }
    }

    @Test func acceptsValidDocuments() throws {
        #expect(try parse(" {\"a\" : [1, -0, 2.5e+3, true, false, null, \"x\"]}\n") == .object(JSONObject([
            ("a", .array([.int(1), .number(JSONNumber(literal: "-0")!), .number(JSONNumber(literal: "2.5e+3")!),
                          .bool(true), .bool(false), .null, .string("x")]))])))
        #expect(try parse("\"\\u00e9\\ud83d\\ude00\\/\\b\\f\\n\\r\\t\\\"\\\\\"") == .string("é😀/\u{8}\u{c}\n\r\t\"\\"))
        #expect(try parse("\"é😀\"") == .string("é😀"))
        #expect(try parse("3") == .int(3))
        #expect(try parse("[]") == .array([]))
        #expect(try parse("{}") == .object(JSONObject()))
        // depth exactly at the limit
        let deep = String(repeating: "[", count: 64) + String(repeating: "]", count: 64)
        #expect(throws: Never.self) { try parse(deep) }
        // member order is kept
        let o = try parse("{\"z\":1,\"a\":2,\"m\":3}").objectValue!
        #expect(o.keys == ["z", "a", "m"])
    }

    @Test func rejectsInvalidDocuments() {
        rejects("", "empty")
        rejects("   ", "expected a value")
        rejects("{", "end of input")
        rejects("[1,]", "expected a value")
        rejects("{\"a\":1,}", "expected a string key")
        rejects("{'a':1}")
        rejects("[01]", "expected ',' or ']'")
        rejects("[1.]", "malformed number")
        rejects("[.5]")
        rejects("[+1]")
        rejects("[1e]", "malformed number")
        rejects("[-]", "malformed number")
        rejects("NaN")
        rejects("[Infinity]")
        rejects("tru", "truncated")
        rejects("nul1", "invalid literal")
        rejects("\"abc", "unterminated")
        rejects("\"a\u{1}b\"")
        rejects("\"\\x\"", "invalid escape")
        rejects("\"\\u12\"", "malformed \\u")
        rejects("\"\\ud800\"", "lone high surrogate")
        rejects("\"\\ud800\\u0041\"", "lone high surrogate")
        rejects("\"\\udc00\"", "lone low surrogate")
        rejects("{\"a\":1,\"a\":2}", "duplicate key \"a\"")
        rejects("1 2", "after the value")
        rejects("[1]\0", "after the value")
        rejects("/*c*/1")
        rejects(String(repeating: "[", count: 65) + String(repeating: "]", count: 65), "deeper than 64")
        rejects(String(repeating: "{\"a\":", count: 65) + "1" + String(repeating: "}", count: 65), "deeper than 64")
        // huge nesting never recurses past the limit
        rejects(String(repeating: "[", count: 100_000), "deeper than 64")
    }

    @Test func rejectsInvalidUTF8() {
        let bad: [[UInt8]] = [
            [0x22, 0xFF, 0x22], [0x22, 0xC0, 0xAF, 0x22], [0x22, 0xE0, 0x80, 0xAF, 0x22],   // invalid, overlong
            [0x22, 0xED, 0xA0, 0x80, 0x22],             // UTF-8 encoded surrogate
            [0x22, 0xF4, 0x90, 0x80, 0x80, 0x22],       // > U+10FFFF
            [0x22, 0xE2, 0x82, 0x22],                   // truncated sequence
            [0x22, 0x80, 0x22],                         // lone continuation
            [0xEF, 0xBB, 0xBF, 0x31],                   // BOM
        ]
        for b in bad {
            let e = thrownPST { _ = try JSON.parse(b, source: "t.json") }
            #expect(e?.status == PST_ERR_CORRUPT, "accepted \(b)")
        }
        #expect((try? JSON.parse([0x22, 0xF0, 0x9F, 0x98, 0x80, 0x22])) == .string("😀"))
    }

    @Test func sizeLimit() {
        let e = thrownPST { _ = try JSON.parse("[1, 2, 3]", source: "x", limits: .init(maxBytes: 4)) }
        #expect(e?.status == PST_ERR_CORRUPT)
        #expect(e?.message.contains("more than the limit of 4") == true)
    }

    @Test func numbersKeepTheirPrecision() throws {
        let n = try parse("[9223372036854775807, -9223372036854775808, 9223372036854775808, 1.0, 1e2, 0.05204557999968529, 16777217, 3.4028235e38, 1e400]").arrayValue!
            .map { $0.numberValue! }
        #expect(n[0].int64 == Int64.max)
        #expect(n[1].int64 == Int64.min)
        #expect(n[2].int64 == nil && n[2].double == 9223372036854775808)
        #expect(n[3].int64 == nil && n[3].double == 1)
        #expect(n[4].int64 == nil && n[4].double == 100)
        #expect(n[5].double == 0.05204557999968529)
        #expect(Float(n[5].double).bitPattern == Float(0.05204558).bitPattern)
        #expect(n[6].float32 == 16777216)          // correctly rounded (ties to even)
        #expect(n[7].float32 == .greatestFiniteMagnitude)
        #expect(n[8].double == .infinity)
        #expect(JSONNumber(literal: "01") == nil && JSONNumber(literal: "1.5e-3") != nil && JSONNumber(literal: "") == nil)
        #expect(throws: PSTError.self) { _ = try JSONNumber(double: .nan) }
    }

    /// repr(float) for ~800 doubles (random bit patterns, decades, float32 widened) and
    /// the float32 literal spelling for 300 float32 values, all from Python.
    @Test func pythonReprMatches() throws {
        let cases = try FilesFixtures.json("json/repr.json") as! [String: [[String]]]
        var checked = 0
        for c in cases["double"]! {
            let v = Double(bitPattern: UInt64(c[0], radix: 16)!)
            #expect(JSONNumber.pythonRepr(v) == c[1], "bits \(c[0])")
            #expect(try JSONNumber(double: v).text == c[1])
            checked += 1
        }
        for c in cases["float32_literal"]! {
            let v = Float(bitPattern: UInt32(c[0], radix: 16)!)
            #expect(JSONNumber.pythonReprOfFloat32Literal(v) == c[1], "bits \(c[0])")
            checked += 1
        }
        #expect(checked > 1000)
    }

    /// Parsing Python's compact output and writing it in each style gives Python's bytes.
    @Test func dumpsMatchesPython() throws {
        let docs = try FilesFixtures.json("json/dumps.json") as! [[String: String]]
        for d in docs {
            let v = try JSON.parse(d["doc"]!)
            #expect(JSON.serializeString(v, style: .python) == d["default"]!)
            #expect(JSON.serializeString(v, style: .pythonIndented(2, sortKeys: true)) == d["indent2sorted"]!)
            #expect(JSON.serializeString(v, style: .pythonIndented(4, sortKeys: false)) == d["indent4"]!)
            #expect(JSON.serializeString(v, style: .compact) == d["compact_utf8"]!)
            // and the writer's output parses back to the same value
            #expect(try JSON.parse(JSON.serialize(v, style: .python)) == v)
        }
    }

    @Test func objectSetReplacesInPlace() {
        var o = JSONObject([("a", .int(1)), ("b", .int(2))])
        o.set("a", .int(3))
        o.set("c", .null)
        #expect(o.keys == ["a", "b", "c"])
        #expect(o["a"] == .int(3))
        #expect(JSON.serializeString(.object(o)) == "{\"a\": 3, \"b\": 2, \"c\": null}")
    }
}
