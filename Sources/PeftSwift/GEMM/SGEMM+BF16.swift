import PeftSwiftAVX512BF16

// The packed GEMM for compute dtype bf16 (ComputeDType.bf16): the blocking of SGEMM.swift, with
// each packed fp32 block converted once to bf16 k-pairs (PeftSwiftAVX512BF16/SGEMMBF16+Kernel.swift)
// and multiplied by the vdpbf16ps 6×32 kernel:
//
//   for jc in N by NC: for pc in K by KC:
//     pack op(B) fp32 (SGEMM+Pack.swift, or a PanelSource) → convert to bf16 pair slivers
//     for ic in M by MC: pack op(A) fp32 → convert to bf16 pair slivers
//       for jr in nc by 32: for ir in mc by 6: 6×32 bf16 kernel (ragged tiles through a scratch tile)
//
// C[i,j] = alpha·Σ_p bf16(op(A)[i,p])·bf16(op(B)[p,j]) + beta·C[i,j], sums in fp32 (pairs of p
// per instruction, in kc blocks). The twin is sgemmBF16Reference (SGEMM+Reference.swift).
// With BF16Kernel.fma (ISA.swift: the faster choice on Intel cores) the packed fp32 blocks are
// rounded to bf16 in place instead and the fp32 AVX-512 kernel multiplies them.
// Runs only when the CPU has AVX512_BF16 (precondition; callers check ComputeDType first).

extension GEMM {
    /// The bf16 path of `run` for C[i0..<i1, j0..<j1] on the calling thread.
    static func blockedBF16(_ p: Problem, _ i0: Int, _ i1: Int, _ j0: Int, _ j1: Int) {
        let kcMax = evenBlock(p.k, kcBlock, 4)
        let ncMax = evenBlock(j1 - j0, ncBlock, nr)
        let mcMax = evenBlock(i1 - i0, mcBlock, mr)
        let pairsMax = (kcMax + 1) / 2
        let aSlivers = (mcMax + mr - 1) / mr, bSlivers = (ncMax + nr - 1) / nr
        let aFloats = aSlivers * mr * kcMax, bFloats = bSlivers * nr * kcMax
        let aWords = aSlivers * mr * pairsMax, bWords = bSlivers * nr * pairsMax   // 32-bit words
        var panelFloats = 0
        if case .panel = p.b { panelFloats = kcMax * panelCols }
        let tileFloats = mr * 2 * nr
        let ws = Workspace.acquire(floats: aFloats + bFloats + aWords + bWords + panelFloats + tileFloats + 16)
        defer { Workspace.release(ws) }
        let apF = ws.pointer, bpF = apF + aFloats, panel = bpF + bFloats, tile = panel + panelFloats
        let raw = UnsafeMutableRawPointer(tile + tileFloats)
        let apB = raw.bindMemory(to: UInt32.self, capacity: aWords)
        let bpB = (raw + aWords * 4).bindMemory(to: UInt16.self, capacity: bWords * 2)

        var jc = j0
        while jc < j1 {
            let nc = min(ncMax, j1 - jc)
            var pc = 0
            while pc < p.k {
                let kc = min(kcMax, p.k - pc), pairs = (kc + 1) / 2
                let beta: Float = pc == 0 ? p.beta : 1
                packBPanel(p, pc, kc, jc, nc, bpF, panel)
                let nsl = (nc + nr - 1) / nr, dot = p.bf16Kernel == .dot
                if dot {
                    for t in 0..<nsl { SGEMMBF16.packB(kc, bpF + t * nr * kc, bpB + t * 2 * nr * pairs) }
                } else {
                    SGEMMBF16.roundInPlace(bpF, nsl * nr * kc)
                }
                var ic = i0
                while ic < i1 {
                    let mc = min(mcMax, i1 - ic)
                    packA(p.transA, p.a, p.lda, ic, mc, pc, kc, apF)
                    let msl = (mc + mr - 1) / mr
                    if dot {
                        for s in 0..<msl { SGEMMBF16.packA(kc, apF + s * mr * kc, apB + s * mr * pairs) }
                        macroKernelBF16(mc, nc, pairs, apB, bpB, p.c + ic * p.ldc + jc, p.ldc, p.alpha, beta, tile)
                    } else {
                        SGEMMBF16.roundInPlace(apF, msl * mr * kc)
                        macroKernel(mc, nc, kc, apF, bpF, p.c + ic * p.ldc + jc, p.ldc, p.alpha, beta, tile, true)
                    }
                    ic += mc
                }
                pc += kc
            }
            jc += nc
        }
    }

    /// C[mc,nc] = alpha·Ap·Bp + beta·C over bf16 pair slivers (6 × 32 tiles; a tile past an edge
    /// is computed into `tile` and merged).
    static func macroKernelBF16(_ mc: Int, _ nc: Int, _ pairs: Int, _ ap: UnsafePointer<UInt32>,
                                _ bp: UnsafePointer<UInt16>, _ c: UnsafeMutablePointer<Float>, _ ldc: Int,
                                _ alpha: Float, _ beta: Float, _ tile: UnsafeMutablePointer<Float>) {
        let sliver = 2 * nr * pairs   // UInt16 per B pair sliver
        var j = 0
        while j < nc {
            let nlive = min(2 * nr, nc - j)
            let b0 = bp + (j / nr) * sliver
            let b1 = nlive > nr ? b0 + sliver : b0   // a lone last sliver: computed twice, half kept
            var i = 0
            while i < mc {
                let mlive = min(mr, mc - i)
                let a = ap + i * pairs
                let cc = c + i * ldc + j
                if mlive == mr && nlive == 2 * nr {
                    SGEMMBF16.kernel6x32(pairs, a, b0, b1, cc, ldc, alpha, beta)
                } else {
                    SGEMMBF16.kernel6x32(pairs, a, b0, b1, tile, 2 * nr, alpha, 0)
                    for r in 0..<mlive {
                        let row = cc + r * ldc, t = tile + r * 2 * nr
                        if beta == 0 {
                            for q in 0..<nlive { row[q] = t[q] }
                        } else {
                            for q in 0..<nlive { row[q] = beta * row[q] + t[q] }
                        }
                    }
                }
                i += mr
            }
            j += 2 * nr
        }
    }
}
