/// The one unaligned load/store pair for 8 floats (one AVX register), used by every kernel.
/// `loadUnaligned`/`storeBytes` compile to vmovups; the pointers need no alignment.
typealias F8 = SIMD8<Float>

@inline(__always) func load8(_ p: UnsafePointer<Float>) -> F8 {
    UnsafeRawPointer(p).loadUnaligned(as: F8.self)
}

@inline(__always) func store8(_ p: UnsafeMutablePointer<Float>, _ v: F8) {
    UnsafeMutableRawPointer(p).storeBytes(of: v, as: F8.self)
}
