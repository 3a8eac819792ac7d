// Typed-throws bridges over the standard library's `rethrows` buffer accessors.

@inline(__always)
func withBytes<R>(_ a: [UInt8], _ body: (UnsafeRawBufferPointer) throws(PSTError) -> R) throws(PSTError) -> R {
    let r: Result<R, PSTError> = a.withUnsafeBytes { b in Result { () throws(PSTError) -> R in try body(b) } }
    return try r.get()
}

@inline(__always)
func withMutableFloats<R>(_ a: inout [Float], _ body: (UnsafeMutableBufferPointer<Float>) throws(PSTError) -> R) throws(PSTError) -> R {
    let r: Result<R, PSTError> = a.withUnsafeMutableBufferPointer { b in Result { () throws(PSTError) -> R in try body(b) } }
    return try r.get()
}
