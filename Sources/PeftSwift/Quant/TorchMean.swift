// torch.mean of a contiguous 1-D float32 CPU tensor, reproduced to the bit.
//
// Facts from PyTorch 2.13 (aten/src/ATen/native/ReduceOps.cpp mean_out, cpu/SumKernel.cpp
// cascade_sum, TensorIteratorReduce.cpp two_pass_reduction, ParallelOpenMP.h), with the AVX2
// CPU capability (Vectorized<float> has 8 lanes); checked against torch by the tests:
//  * mean = fl(sum / Float(n)) (sum_out, then div_ by the element count);
//  * the sum is a "cascade sum": the row is read as vectors of 8 floats, grouped 4 at a time
//    (4 independent vector accumulators); those 4-vector rows are summed in 4 levels of
//    2^p rows each (p = max(4, ceilLog2(rows) / 4)): level 0 adds rows; every 2^p rows it is
//    added into level 1 and cleared, and so on up the levels (carry stops at the first level
//    whose counter bits are non-zero); leftover rows go to level 0; levels 1, 2, 3 are then
//    added into level 0; leftover vectors (< 4) into accumulator 0; accumulators 1, 2, 3 into
//    0; finally a scalar 0 + the tail elements (n % 8, in order) + the 8 lanes in order.
//    Rows shorter than 8 use the same scheme on scalars (4 accumulators, no vectors);
//  * with T = at::get_num_threads() > 1 and n >= 32768 (at::internal::GRAIN_SIZE) the range is
//    split in min(T, ceil(n / 32768)) OpenMP chunks of ceil(n / chunks) elements, each summed
//    as above into a T-entry buffer of zeros, and the buffer is then summed (as a row of T).
// The result therefore depends on torch's thread count (`TorchMean.threads`); below 32768
// elements it does not.
#if canImport(Glibc)
import Glibc
#endif

public enum TorchMean {
    /// The `torch.get_num_threads()` to reproduce (default: the number of online CPUs, which is
    /// torch's default on Linux). Set it to the value of the machine that wrote a checkpoint to
    /// reproduce its offsets exactly.
    nonisolated(unsafe) public static var threads: Int = Threads.available

    /// `torch.mean(x)` for n >= 1 contiguous float32 values, bit-exact with PyTorch 2.13 CPU
    /// (AVX2 build) using `threads` OpenMP threads. n == 0 returns NaN (as torch does).
    public static func mean(_ x: UnsafePointer<Float>, count n: Int, threads: Int = TorchMean.threads) -> Float {
        guard n > 0 else { return .nan }
        return sum(x, count: n, threads: threads) / Float(n)
    }

    /// `torch.sum(x)` (see the file comment for the order).
    public static func sum(_ x: UnsafePointer<Float>, count n: Int, threads: Int = TorchMean.threads) -> Float {
        chunkedSum(x, count: n, threads: threads, innerSum)
    }

    /// two_pass_reduction over OpenMP chunks, each chunk summed by `inner`.
    @inline(__always)
    static func chunkedSum(_ x: UnsafePointer<Float>, count n: Int, threads: Int,
                           _ inner: (UnsafePointer<Float>, Int) -> Float) -> Float {
        let grain = 32768
        let t = Swift.max(1, threads)
        if n < grain || t == 1 { return 0 + inner(x, n) }
        let chunks = Swift.min(t, (n + grain - 1) / grain)
        let size = (n + chunks - 1) / chunks
        var buffer = [Float](repeating: 0, count: t)
        for c in 0..<chunks where c * size < n {
            buffer[c] = 0 + inner(x + c * size, Swift.min(n, (c + 1) * size) - c * size)
        }
        return buffer.withUnsafeBufferPointer { 0 + inner($0.baseAddress!, t) }
    }

    /// The plain reference: the exact sum (float64 accumulation of float32 values is exact
    /// enough for the tests' purpose) divided by n, rounded once. torch's mean is within a few
    /// ulp of it.
    public static func meanReference(_ x: UnsafePointer<Float>, count n: Int) -> Float {
        guard n > 0 else { return .nan }
        var s: Double = 0
        for i in 0..<n { s += Double(x[i]) }
        return Float(s / Double(n))
    }

    /// utils::CeilLog2.
    @inline(__always) static func ceilLog2(_ v: Int) -> Int {
        v <= 2 ? 1 : (Int.bitWidth - (v - 1).leadingZeroBitCount)
    }

    /// Four SIMD8 accumulators (torch's 4 independent vector accumulators of one level).
    struct Acc4 {
        var a0 = F8(), a1 = F8(), a2 = F8(), a3 = F8()
        @inline(__always) mutating func add(_ o: Acc4) { a0 = a0 + o.a0; a1 = a1 + o.a1; a2 = a2 + o.a2; a3 = a3 + o.a3 }
        @inline(__always) mutating func addRow(_ p: UnsafePointer<Float>) {
            a0 = a0 + load8(p); a1 = a1 + load8(p + 8); a2 = a2 + load8(p + 16); a3 = a3 + load8(p + 24)
        }
    }

    /// vectorized_inner_sum of one contiguous row (n >= 8; the scalar row_sum below 8): the
    /// order of `innerSumReference` (TorchMean+Reference.swift) with the 4 levels of 4
    /// accumulators in registers instead of arrays and closures. The same additions in the same
    /// order, so the same bits (tested against the reference).
    static func innerSum(_ x: UnsafePointer<Float>, _ n: Int) -> Float {
        if n < 8 { return innerSumReference(x, n) }
        let vecs = n / 8
        let rows = vecs / 4
        let power = Swift.max(4, ceilLog2(rows) / 4)
        let step = 1 << power
        let mask = step - 1
        var l0 = Acc4(), l1 = Acc4(), l2 = Acc4(), l3 = Acc4()
        var i = 0
        while i + step <= rows {
            for r in i..<(i + step) { l0.addRow(x + 32 * r) }
            i += step
            // carry up the levels; stop at the first level whose counter bits are non-zero
            l1.add(l0); l0 = Acc4()
            if i & (mask << power) == 0 {
                l2.add(l1); l1 = Acc4()
                if i & (mask << (2 * power)) == 0 { l3.add(l2); l2 = Acc4() }
            }
        }
        while i < rows { l0.addRow(x + 32 * i); i += 1 }
        l0.add(l1); l0.add(l2); l0.add(l3)
        for k in (rows * 4)..<vecs { l0.a0 = l0.a0 + load8(x + 8 * k) }
        let s = ((l0.a0 + l0.a1) + l0.a2) + l0.a3
        var acc: Float = 0
        for i in (vecs * 8)..<n { acc = acc + x[i] }
        for l in 0..<8 { acc = acc + s[l] }
        return acc
    }
}
