/// The one strict UTF-8 decoder (no replacement characters): the text, or nil and the byte
/// offset of the first invalid sequence (for the caller's message). Training data, C strings
/// and lengths-given strings all go through it.
func decodeStrictUTF8(_ bytes: UnsafeRawBufferPointer) -> (text: String?, invalidAt: Int) {
    if let s = String(validating: bytes, as: UTF8.self) { return (s, -1) }
    var it = bytes.makeIterator(), decoder = UTF8(), at = 0
    scan: while true {
        switch decoder.decode(&it) {
        case .scalarValue(let u): at += UTF8.width(u)
        case .emptyInput, .error: break scan
        }
    }
    return (nil, at)
}
