// Plain twins of Int8Rows' kernels: the specification the fast versions are tested against.

extension Int8Rows {
    /// W as fp32 (rows × cols): q·d per element.
    func dequantizeReference() -> [Float] {
        var w = [Float](repeating: 0, count: rows * cols)
        for r in 0..<rows {
            for c in 0..<cols { w[r * cols + c] = Float(q[r * cols + c]) * d[r * blocksPerRow + c / Int8Rows.block] }
        }
        return w
    }

    /// y[r] = Σ_c W[r, c]·x[c] with W dequantized, summed in float64.
    func matvecReference(_ x: UnsafePointer<Float>, _ y: UnsafeMutablePointer<Float>) {
        let w = dequantizeReference()
        for r in 0..<rows {
            var s = 0.0
            for c in 0..<cols { s += Double(w[r * cols + c]) * Double(x[c]) }
            y[r] = Float(s)
        }
    }
}
