import Dispatch
import PeftSwiftAVX512
#if canImport(Glibc)
import Glibc
#endif

// Single-precision GEMM of the engine (no BLAS): the GotoBLAS/BLIS blocked algorithm
// (Goto & van de Geijn, "Anatomy of high-performance matrix multiplication", TOMS 2008;
// Van Zee & van de Geijn, "BLIS", TOMS 2015):
//
//   for jc in N by NC:                      (each thread owns a rectangle of C)
//     for pc in K by KC:    pack op(B)[pc, jc] → kc×nc, NR-wide slivers (L3)
//       for ic in M by MC:  pack op(A)[ic, pc] → mc×kc, MR-tall slivers (L2)
//         for jr in nc by NR: for ir in mc by MR:  6×16 micro-kernel (B sliver in L1)
//
// On AVX-512 hosts (ISA.active ≥ .avx512) the micro-kernel takes two 16-column slivers at once
// (6×32, PeftSwiftAVX512/SGEMM512+Kernel.swift) over the same packed layout; results are
// bit-identical to the AVX2 kernel's, tile for tile.
//
// M == 1 or N == 1 goes to a streaming GEMV (SGEMM+GEMV.swift), which is memory-bound.

/// A logical row-major matrix `rows × cols` (the *stored* B operand of `GEMM.sgemm`, before
/// op) that writes any sub-block on demand:
///
///   fill(r0, rc, c0, cc, dst, ld):  dst[i·ld + j] = B[r0 + i, c0 + j]  for i < rc, j < cc
///
/// `ld ≥ cc`; elements of dst past `cc` in a row must be left alone. GEMM calls `fill`
/// concurrently from its worker threads, for disjoint or overlapping blocks, so it must be
/// thread-safe (read-only). GEMM requests blocks of at most `GEMM.panelBlockLimit` elements
/// (kc × 128, 48 Ki elements), never the whole matrix once it
/// is larger than that; a block is always a full-width run of `cc` consecutive columns of
/// `rc` consecutive rows, so a source whose rows are contiguous decodes `rc` row segments.
/// The filled block is then packed into the kernel layout by GEMM (the source never sees
/// the packed layout).
public struct PanelSource {
    public let rows: Int, cols: Int
    public let fill: (_ r0: Int, _ rc: Int, _ c0: Int, _ cc: Int, _ dst: UnsafeMutablePointer<Float>, _ ld: Int) -> Void

    public init(rows: Int, cols: Int,
                fill: @escaping (_ r0: Int, _ rc: Int, _ c0: Int, _ cc: Int, _ dst: UnsafeMutablePointer<Float>, _ ld: Int) -> Void) {
        precondition(rows >= 0 && cols >= 0, "PanelSource: negative shape \(rows)×\(cols)")
        self.rows = rows
        self.cols = cols
        self.fill = fill
    }

    /// A source that copies from a dense row-major matrix `p` (`rows × cols`, row stride `ld`).
    /// The pointer must stay valid for as long as the source is used.
    public static func dense(_ p: UnsafePointer<Float>, rows: Int, cols: Int, ld: Int) -> PanelSource {
        precondition(ld >= max(1, cols), "PanelSource.dense: ld (\(ld)) < cols (\(cols))")
        return PanelSource(rows: rows, cols: cols) { r0, rc, c0, cc, dst, dld in
            for i in 0..<rc {
                (dst + i * dld).update(from: p + (r0 + i) * ld + c0, count: cc)
            }
        }
    }
}

public enum GEMM {
    // Blocking (Zen 3 here: 32 KiB L1d, 512 KiB L2 per core, 32 MiB shared L3).
    /// Rows of op(A) per packed block: mc·kc·4 B = 216 KiB stays in L2.
    static let mcBlock = 144
    /// Depth per packed block: a kc×16 B sliver (24 KiB) stays in L1 across the MR slivers
    /// (384 measured a few % better than 256 here).
    static let kcBlock = 384
    /// Columns of op(B) per packed panel (kc·nc·4 B = 4 MiB per thread, in L3).
    static let ncBlock = 4096
    /// Columns per `PanelSource.fill` call on the packed path (a multiple of NR); the filled
    /// kc×128 block (192 KiB) stays in L2 next to the packed A block while it is packed.
    static let panelCols = 128
    /// Largest block (elements) a `PanelSource` is asked for.
    static let panelBlockLimit = kcBlock * panelCols
    /// Below this many multiply-adds (m·n·k) a GEMM runs on the calling thread only.
    static let parallelThreshold = 1 << 18

    /// C[M,N] = alpha·op(A)[M,K]·op(B)[K,N] + beta·C[M,N], all row-major:
    ///   op(A)[i,p] = transA ? a[p·lda + i] : a[i·lda + p]   (A stored K×M or M×K)
    ///   op(B)[p,j] = transB ? b[j·ldb + p] : b[p·ldb + j]   (B stored N×K or K×N)
    ///   C[i,j] = c[i·ldc + j]
    /// beta == 0 means C is write-only (NaNs in C ignored); alpha == 0 or k == 0 never reads
    /// A or B. Runs on up to `Threads.count` threads; the result does not depend on the
    /// thread count. Precondition failures on negative sizes or too-small leading dimensions.
    /// `isa` picks the kernel path (default `ISA.active`; a path the CPU lacks is a precondition
    /// failure): tests use it to hold every path the host offers to the reference.
    public static func sgemm(transA: Bool, transB: Bool, m: Int, n: Int, k: Int, alpha: Float,
                             a: UnsafePointer<Float>, lda: Int, b: UnsafePointer<Float>, ldb: Int,
                             beta: Float, c: UnsafeMutablePointer<Float>, ldc: Int, isa: ISA? = nil,
                             compute: ComputeDType = .fp32, bf16Kernel: BF16Kernel = .default) {
        checkShapes(transA: transA, m: m, n: n, k: k, lda: lda, ldc: ldc)
        precondition(ldb >= max(1, transB ? k : n), "sgemm: ldb (\(ldb)) < \(transB ? "k" : "n") (\(transB ? k : n))")
        run(Problem(transA: transA, transB: transB, m: m, n: n, k: k, alpha: alpha, a: a, lda: lda,
                    b: .memory(b, ldb), beta: beta, c: c, ldc: ldc, isa: resolve(isa), compute: resolve(compute),
                    bf16Kernel: bf16Kernel))
    }

    /// C[M,N] = alpha·op(A)[M,K]·op(B)[K,N] + beta·C[M,N], with the stored B (`K×N`, or `N×K`
    /// when transB) produced block by block by `b` instead of read from memory. This is how
    /// QLoRA multiplies by an NF4 weight without materializing it in fp32: `b` is asked for
    /// blocks of at most `panelBlockLimit` elements (see `PanelSource`).
    public static func sgemm(transA: Bool, transB: Bool, m: Int, n: Int, k: Int, alpha: Float,
                             a: UnsafePointer<Float>, lda: Int, b: PanelSource,
                             beta: Float, c: UnsafeMutablePointer<Float>, ldc: Int, isa: ISA? = nil,
                             compute: ComputeDType = .fp32, bf16Kernel: BF16Kernel = .default) {
        checkShapes(transA: transA, m: m, n: n, k: k, lda: lda, ldc: ldc)
        let (br, bc) = transB ? (n, k) : (k, n)
        precondition(b.rows == br && b.cols == bc,
                     "sgemm: PanelSource is \(b.rows)×\(b.cols), op(B) needs stored \(br)×\(bc)")
        run(Problem(transA: transA, transB: transB, m: m, n: n, k: k, alpha: alpha, a: a, lda: lda,
                    b: .panel(b), beta: beta, c: c, ldc: ldc, isa: resolve(isa), compute: resolve(compute),
                    bf16Kernel: bf16Kernel))
    }

    // MARK: - Internals

    enum BOperand {
        case memory(UnsafePointer<Float>, Int)
        case panel(PanelSource)
    }

    struct Problem {
        var transA: Bool, transB: Bool
        var m: Int, n: Int, k: Int
        var alpha: Float
        var a: UnsafePointer<Float>, lda: Int
        var b: BOperand
        var beta: Float
        var c: UnsafeMutablePointer<Float>, ldc: Int
        var isa: ISA
        var compute: ComputeDType = .fp32
        var bf16Kernel: BF16Kernel = .default
    }

    /// bf16 products run only where the CPU has AVX512_BF16 (whatever the PST_ISA cap: callers
    /// refuse bf16 up front with ComputeDType.checkAvailable, so the cap is honoured there).
    @inline(__always)
    static func resolve(_ compute: ComputeDType) -> ComputeDType {
        precondition(compute == .fp32 || ISA.avx512bf16.missingFeatures.isEmpty,
                     "sgemm: compute dtype bf16 on a CPU without AVX512_BF16")
        return compute
    }

    /// The path to run: `isa` when given (the CPU must have it), else `ISA.active`.
    @inline(__always)
    static func resolve(_ isa: ISA?) -> ISA {
        guard let isa else { return ISA.active }
        precondition(isa.missingFeatures.isEmpty, "sgemm: isa \(isa.name) needs \(isa.missingFeatures), which this CPU lacks")
        return isa
    }

    static func checkShapes(transA: Bool, m: Int, n: Int, k: Int, lda: Int, ldc: Int) {
        precondition(m >= 0 && n >= 0 && k >= 0, "sgemm: negative size m=\(m) n=\(n) k=\(k)")
        precondition(lda >= max(1, transA ? m : k), "sgemm: lda (\(lda)) < \(transA ? "m" : "k") (\(transA ? m : k))")
        precondition(ldc >= max(1, n), "sgemm: ldc (\(ldc)) < n (\(n))")
    }

    static func run(_ p: Problem) {
        if p.m == 0 || p.n == 0 { return }
        if p.k == 0 || p.alpha == 0 {
            scaleC(p.m, p.n, p.beta, p.c, p.ldc)
            return
        }
        if (p.m == 1 || p.n == 1) && p.compute == .fp32 {
            gemv(p)
            return
        }
        let mStrips = (p.m + mr - 1) / mr, nStrips = (p.n + nr - 1) / nr
        let work = p.m * p.n * p.k
        let threads = work < parallelThreshold ? 1 : min(Threads.count, max(mStrips, nStrips))
        // Split C into `threads` rectangles along N (each thread packs its own B panels, A is
        // re-packed per thread: cheap, since it is the smaller operand in the Linear shapes)
        // unless N has too few NR strips, then along M.
        let splitN = nStrips >= threads * 2 || nStrips >= mStrips
        let strips = splitN ? nStrips : mStrips
        let t = min(threads, strips)
        parallelChunks(t) { lo, hi in
            for ti in lo..<hi {
                let s0 = strips * ti / t, s1 = strips * (ti + 1) / t
                if s0 == s1 { continue }
                let (i0, i1, j0, j1) = splitN ? (0, p.m, s0 * nr, min(p.n, s1 * nr)) : (s0 * mr, min(p.m, s1 * mr), 0, p.n)
                if p.compute == .bf16 {
                    blockedBF16(p, i0, i1, j0, j1)
                } else {
                    blocked(p, i0, i1, j0, j1)
                }
            }
        }
    }

    /// C = beta·C on an m×n block (beta == 0 writes zeros without reading).
    static func scaleC(_ m: Int, _ n: Int, _ beta: Float, _ c: UnsafeMutablePointer<Float>, _ ldc: Int) {
        if beta == 1 { return }
        for i in 0..<m {
            let row = c + i * ldc
            if beta == 0 {
                row.update(repeating: 0, count: n)
            } else {
                for j in 0..<n { row[j] *= beta }
            }
        }
    }

    /// Splits `total` into ceil(total/block) nearly equal pieces, each a multiple of `align`
    /// (except the last); returns the piece size.
    @inline(__always)
    static func evenBlock(_ total: Int, _ block: Int, _ align: Int) -> Int {
        let pieces = (total + block - 1) / block
        let size = (total + pieces - 1) / pieces
        return min(block, (size + align - 1) / align * align)
    }

    /// The packed algorithm on C[i0..<i1, j0..<j1], on the calling thread.
    static func blocked(_ p: Problem, _ i0: Int, _ i1: Int, _ j0: Int, _ j1: Int) {
        let wide = p.isa >= .avx512
        let kcMax = evenBlock(p.k, kcBlock, 4)
        let ncMax = evenBlock(j1 - j0, ncBlock, nr)
        let mcMax = evenBlock(i1 - i0, mcBlock, mr)
        let aFloats = (mcMax + mr - 1) / mr * mr * kcMax
        let bFloats = (ncMax + nr - 1) / nr * nr * kcMax
        var panelFloats = 0
        if case .panel = p.b { panelFloats = kcMax * panelCols }
        let ws = Workspace.acquire(floats: aFloats + bFloats + panelFloats + mr * nr)
        defer { Workspace.release(ws) }
        let ap = ws.pointer, bp = ap + aFloats, panel = bp + bFloats, tile = panel + panelFloats
        // Narrow op(B) (≤ 2 NR slivers, e.g. the rank-16 LoRA down-projection x·Aᵀ): each A
        // element is used by at most 2 micro-kernel calls, so A is read in place instead of
        // packed (only a ragged last MR sliver is packed).
        let directA = j1 - j0 <= 2 * nr
        // Short op(A) (≤ 3 MR slivers, e.g. the rank-16 gradient gᵀ·x) with B in memory and not
        // transposed: each B element feeds at most 3 micro-kernel calls, so B is read in place
        // (only a ragged last NR sliver is packed).
        var directB: (b: UnsafePointer<Float>, ldb: Int)? = nil
        if !directA, !p.transB, i1 - i0 <= 3 * mr, case .memory(let b, let ldb) = p.b { directB = (b, ldb) }

        var jc = j0
        while jc < j1 {
            let nc = min(ncMax, j1 - jc)
            var pc = 0
            while pc < p.k {
                let kc = min(kcMax, p.k - pc)
                let beta: Float = pc == 0 ? p.beta : 1
                if let (b, ldb) = directB {
                    packA(p.transA, p.a, p.lda, i0, i1 - i0, pc, kc, ap)
                    directBKernel(i1 - i0, nc, kc, ap, b + pc * ldb + jc, ldb, p.c + i0 * p.ldc + jc, p.ldc,
                                  p.alpha, beta, bp, tile, wide)
                    pc += kc
                    continue
                }
                packBPanel(p, pc, kc, jc, nc, bp, panel)
                var ic = i0
                while ic < i1 {
                    let mc = min(mcMax, i1 - ic)
                    if directA {
                        directKernel(p, ic, mc, pc, kc, nc, bp, p.c + ic * p.ldc + jc, beta, ap, tile, wide)
                    } else {
                        packA(p.transA, p.a, p.lda, ic, mc, pc, kc, ap)
                        macroKernel(mc, nc, kc, ap, bp, p.c + ic * p.ldc + jc, p.ldc, p.alpha, beta, tile, wide)
                    }
                    ic += mc
                }
                pc += kc
            }
            jc += nc
        }
    }

    /// Packs op(B)[pc..<pc+kc, jc..<jc+nc] into `bp`, from memory or through the panel source
    /// (in kc × `panelCols` pieces, filled into `scratch` then packed).
    static func packBPanel(_ p: Problem, _ pc: Int, _ kc: Int, _ jc: Int, _ nc: Int,
                           _ bp: UnsafeMutablePointer<Float>, _ scratch: UnsafeMutablePointer<Float>) {
        switch p.b {
        case .memory(let b, let ldb):
            packB(p.transB, b, ldb, pc, kc, jc, nc, bp)
        case .panel(let src):
            var j = 0
            while j < nc {
                let w = min(panelCols, nc - j)
                if p.transB {
                    // stored B is N×K: rows jc+j..<+w, columns pc..<pc+kc → scratch[w][kc]
                    src.fill(jc + j, w, pc, kc, scratch, kc)
                    packB(true, scratch, kc, 0, kc, 0, w, bp + j * kc)
                } else {
                    // stored B is K×N: rows pc..<pc+kc, columns jc+j..<+w → scratch[kc][w]
                    src.fill(pc, kc, jc + j, w, scratch, w)
                    packB(false, scratch, w, 0, kc, 0, w, bp + j * kc)
                }
                j += w
            }
        }
    }

    /// C[mc,nc] = alpha·op(A)[ic..<ic+mc, pc..<pc+kc]·Bp + beta·C with A read in place
    /// (full MR slivers) or packed into `ap` (a ragged last sliver).
    static func directKernel(_ p: Problem, _ ic: Int, _ mc: Int, _ pc: Int, _ kc: Int, _ nc: Int,
                             _ bp: UnsafePointer<Float>, _ c: UnsafeMutablePointer<Float>, _ beta: Float,
                             _ ap: UnsafeMutablePointer<Float>, _ tile: UnsafeMutablePointer<Float>, _ wide: Bool) {
        // op(A)[i, q] = a[i·rs + q·cs]
        let (rs, cs) = p.transA ? (1, p.lda) : (p.lda, 1)
        var i = 0
        while i < mc {
            let mlive = min(mr, mc - i)
            let a = p.a + (ic + i) * rs + pc * cs
            if mlive < mr { packA(p.transA, p.a, p.lda, ic + i, mlive, pc, kc, ap) }
            var j = 0
            if wide && mlive == mr {
                while j + 2 * nr <= nc {
                    SGEMM512.kernel6x32(kc, a, rs, cs, bp + j * kc, bp + (j + nr) * kc, nr,
                                        c + i * p.ldc + j, p.ldc, p.alpha, beta)
                    j += 2 * nr
                }
            }
            while j < nc {
                let nlive = min(nr, nc - j)
                let cc = c + i * p.ldc + j
                if mlive == mr && nlive == nr {
                    kernel6x16Strided(kc, a, rs, cs, bp + j * kc, cc, p.ldc, p.alpha, beta)
                } else if mlive == mr {
                    kernel6x16Strided(kc, a, rs, cs, bp + j * kc, tile, nr, p.alpha, 0)
                    mergeTile(mlive, nlive, cc, p.ldc, beta, tile)
                } else {
                    kernelPartial(mlive, nlive, kc, ap, bp + j * kc, cc, p.ldc, p.alpha, beta, tile)
                }
                j += nr
            }
            i += mr
        }
    }

    /// C[mc,nc] = alpha·Ap·B + beta·C with B[kc, nc] read in place at b (row stride ldb) for
    /// full NR slivers, or packed into `bp` (a ragged last sliver).
    static func directBKernel(_ mc: Int, _ nc: Int, _ kc: Int, _ ap: UnsafePointer<Float>,
                              _ b: UnsafePointer<Float>, _ ldb: Int, _ c: UnsafeMutablePointer<Float>, _ ldc: Int,
                              _ alpha: Float, _ beta: Float, _ bp: UnsafeMutablePointer<Float>,
                              _ tile: UnsafeMutablePointer<Float>, _ wide: Bool) {
        var j = 0
        if wide {
            // full 6×32 tiles: rows of B read in place, 32 consecutive columns
            while j + 2 * nr <= nc {
                var i = 0
                while i + mr <= mc {
                    SGEMM512.kernel6x32(kc, ap + i * kc, 1, mr, b + j, b + j + nr, ldb, c + i * ldc + j, ldc, alpha, beta)
                    i += mr
                }
                if i < mc {
                    for h in 0..<2 {
                        kernel6x16StridedB(kc, ap + i * kc, b + j + h * nr, ldb, tile, nr, alpha, 0)
                        mergeTile(mc - i, nr, c + i * ldc + j + h * nr, ldc, beta, tile)
                    }
                }
                j += 2 * nr
            }
        }
        while j < nc {
            let nlive = min(nr, nc - j)
            if nlive < nr { packB(false, b, ldb, 0, kc, j, nlive, bp) }
            var i = 0
            while i < mc {
                let mlive = min(mr, mc - i)
                let cc = c + i * ldc + j
                if nlive < nr {
                    kernelPartial(mlive, nlive, kc, ap + i * kc, bp, cc, ldc, alpha, beta, tile)
                } else if mlive == mr {
                    kernel6x16StridedB(kc, ap + i * kc, b + j, ldb, cc, ldc, alpha, beta)
                } else {
                    kernel6x16StridedB(kc, ap + i * kc, b + j, ldb, tile, nr, alpha, 0)
                    mergeTile(mlive, nlive, cc, ldc, beta, tile)
                }
                i += mr
            }
            j += nr
        }
    }

    /// C[mc,nc] = alpha·Ap·Bp + beta·C over packed blocks (all MR×NR tiles).
    @inline(__always)
    static func macroKernel(_ mc: Int, _ nc: Int, _ kc: Int, _ ap: UnsafePointer<Float>,
                            _ bp: UnsafePointer<Float>, _ c: UnsafeMutablePointer<Float>, _ ldc: Int,
                            _ alpha: Float, _ beta: Float, _ tile: UnsafeMutablePointer<Float>, _ wide: Bool) {
        var j = 0
        if wide {
            // pairs of full slivers: 6×32 tiles (a ragged last row sliver as two 6×16 partials)
            while j + 2 * nr <= nc {
                let b0 = bp + j * kc, b1 = b0 + nr * kc
                var i = 0
                while i + mr <= mc {
                    SGEMM512.kernel6x32(kc, ap + i * kc, 1, mr, b0, b1, nr, c + i * ldc + j, ldc, alpha, beta)
                    i += mr
                }
                if i < mc {
                    kernelPartial(mc - i, nr, kc, ap + i * kc, b0, c + i * ldc + j, ldc, alpha, beta, tile)
                    kernelPartial(mc - i, nr, kc, ap + i * kc, b1, c + i * ldc + j + nr, ldc, alpha, beta, tile)
                }
                j += 2 * nr
            }
        }
        while j < nc {
            let nlive = min(nr, nc - j)
            let bs = bp + j * kc
            var i = 0
            while i < mc {
                let mlive = min(mr, mc - i)
                let cc = c + i * ldc + j
                if mlive == mr && nlive == nr {
                    kernel6x16(kc, ap + i * kc, bs, cc, ldc, alpha, beta)
                } else {
                    kernelPartial(mlive, nlive, kc, ap + i * kc, bs, cc, ldc, alpha, beta, tile)
                }
                i += mr
            }
            j += nr
        }
    }
}

/// Per-thread scratch for GEMM packing, recycled across calls so that large packing buffers
/// are not mmap'ed and page-faulted on every call. 64-byte aligned.
struct Workspace {
    let pointer: UnsafeMutablePointer<Float>
    let floats: Int

    nonisolated(unsafe) private static var pool: [Workspace] = []
    private static let lock: UnsafeMutablePointer<pthread_mutex_t> = {
        let l = UnsafeMutablePointer<pthread_mutex_t>.allocate(capacity: 1)
        pthread_mutex_init(l, nil)
        return l
    }()
    /// Buffers kept for reuse beyond this are freed.
    private static let keep = 8

    static func acquire(floats: Int) -> Workspace {
        pthread_mutex_lock(lock)
        if let i = pool.firstIndex(where: { $0.floats >= floats }) {
            let w = pool.remove(at: i)
            pthread_mutex_unlock(lock)
            return w
        }
        pthread_mutex_unlock(lock)
        var raw: UnsafeMutableRawPointer? = nil
        let n = max(floats, 16)
        guard posix_memalign(&raw, 64, n * MemoryLayout<Float>.stride) == 0, let raw else {
            fatalError("GEMM: cannot allocate \(n * 4) bytes of packing workspace")
        }
        return Workspace(pointer: raw.bindMemory(to: Float.self, capacity: n), floats: n)
    }

    static func release(_ w: Workspace) {
        pthread_mutex_lock(lock)
        pool.append(w)
        var drop: Workspace? = nil
        if pool.count > keep, let i = pool.indices.min(by: { pool[$0].floats < pool[$1].floats }) {
            drop = pool.remove(at: i)
        }
        pthread_mutex_unlock(lock)
        if let drop { free(drop.pointer) }
    }
}
