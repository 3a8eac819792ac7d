import CPeftSwift

// Shared validation for the C layer: every pointer, size and enum value is checked here before
// the Swift engine sees it, so no precondition or out-of-range index is reachable from C.

/// An output buffer of `have` elements must hold `need`.
@inline(__always)
func requireCapacity(_ name: StaticString, have: Int, need: Int, unit: StaticString = "bytes") throws(PSTError) {
    guard have >= need else {
        throw .invalidArgument("\(name) capacity (\(have) \(unit)) is smaller than the \(need) \(unit) needed")
    }
}

/// A count coming from C (int64_t) that must be ≥ `minimum`.
@inline(__always)
func requireCount(_ name: StaticString, _ v: Int64, minimum: Int64 = 1) throws(PSTError) -> Int {
    guard v >= minimum else { throw .invalidArgument("\(name) (\(v)) must be >= \(minimum)") }
    guard v <= Int64(Int.max / 8) else { throw .invalidArgument("\(name) (\(v)) is too large (max \(Int.max / 8))") }
    return Int(v)
}

/// A boxed Swift object handed to C as an opaque handle of type `H`.
@inline(__always)
func makeHandle<T: AnyObject, H>(_ object: T, as _: H.Type) -> UnsafeMutablePointer<H> {
    Unmanaged.passRetained(object).toOpaque().assumingMemoryBound(to: H.self)
}

@inline(__always)
func object<T: AnyObject, H>(_ handle: UnsafeMutablePointer<H>, as _: T.Type) -> T {
    Unmanaged<T>.fromOpaque(UnsafeRawPointer(handle)).takeUnretainedValue()
}

@inline(__always)
func releaseHandle<T: AnyObject, H>(_ handle: UnsafeMutablePointer<H>, as _: T.Type) {
    Unmanaged<T>.fromOpaque(UnsafeRawPointer(handle)).release()
}

/// Reads a C shape array (`ndim` int64 values, each ≥ 1) and returns it with its product.
func readShape(_ shape: UnsafePointer<Int64>?, _ ndim: Int32, _ name: StaticString = "shape") throws(PSTError) -> [Int] {
    guard ndim >= 1 && ndim <= PST_MAX_DIMS else {
        throw .invalidArgument("ndim (\(ndim)) must be in 1...\(PST_MAX_DIMS)")
    }
    let s = try required(shape, name)
    var dims: [Int] = []
    var n = 1
    for i in 0..<Int(ndim) {
        let d = s[i]
        guard d >= 1 else { throw .invalidArgument("\(name)[\(i)] (\(d)) must be >= 1") }
        let (p, o) = n.multipliedReportingOverflow(by: Int(d))
        guard !o, p <= Int.max / 8 else { throw .invalidArgument("\(name) has too many elements") }
        n = p
        dims.append(Int(d))
    }
    return dims
}
