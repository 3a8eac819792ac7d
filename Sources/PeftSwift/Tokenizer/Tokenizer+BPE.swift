// The BPE merge loop over one pre-token.
//
// Semantics (Hugging Face tokenizers, models/bpe/word.rs `Word::merge_all`, ignore_merges =
// false, no dropout): the symbols start as one per byte-level character; a character missing
// from the vocabulary is dropped when there is no unk token (SmolLM2's vocabulary lacks 21 of
// the 256 byte symbols: bytes 0x04 0x06 0x13 0x14 0x16 0x1D 0xC0 0xC1 0xF1-0xFF), and its
// neighbours become adjacent. Then, repeatedly, the adjacent pair with the lowest merge rank is
// merged, the leftmost one on ties, until no adjacent pair has a merge. Merge ranks are the
// merges' positions in the list; a pair listed twice keeps its last rank (a Rust HashMap built
// from the list in order).

/// Open-addressing hash table (left id, right id) -> (rank, merged id), both packed in UInt64.
struct _MergeTable {
    private var keys: [UInt64]
    private var vals: [UInt64]
    private let mask: Int
    static let empty = UInt64.max

    init(capacityFor n: Int) {
        var cap = 16
        while cap < 2 * max(n, 1) { cap <<= 1 }
        keys = [UInt64](repeating: Self.empty, count: cap)
        vals = [UInt64](repeating: 0, count: cap)
        mask = cap - 1
    }

    @inline(__always) static func key(_ l: Int32, _ r: Int32) -> UInt64 {
        UInt64(UInt32(bitPattern: l)) << 32 | UInt64(UInt32(bitPattern: r))
    }

    @inline(__always) private func slot(_ k: UInt64) -> Int {
        Int(truncatingIfNeeded: (k &* 0x9E37_79B9_7F4A_7C15) >> 40) & mask
    }

    mutating func set(_ l: Int32, _ r: Int32, rank: Int32, merged: Int32) {
        let k = Self.key(l, r)
        var s = slot(k)
        while keys[s] != Self.empty && keys[s] != k { s = (s + 1) & mask }
        keys[s] = k
        vals[s] = UInt64(UInt32(bitPattern: rank)) << 32 | UInt64(UInt32(bitPattern: merged))
    }

    /// (rank << 32 | merged id), or nil.
    @inline(__always) func get(_ l: Int32, _ r: Int32) -> UInt64? {
        let k = Self.key(l, r)
        var s = slot(k)
        while true {
            let kk = keys[s]
            if kk == k { return vals[s] }
            if kk == Self.empty { return nil }
            s = (s + 1) & mask
        }
    }
}

/// Reusable scratch for the merge loop.
struct _BPEScratch {
    var sym: [Int32] = []
    var prev: [Int32] = []
    var next: [Int32] = []
    var heap: [UInt64] = []     // rank << 32 | left position (min-heap)

    @inline(__always) mutating func push(_ v: UInt64) {
        heap.append(v)
        var i = heap.count - 1
        while i > 0 {
            let p = (i - 1) >> 1
            if heap[p] <= v { break }
            heap[i] = heap[p]
            i = p
        }
        heap[i] = v
    }

    @inline(__always) mutating func pop() -> UInt64 {
        let top = heap[0]
        let last = heap.removeLast()
        let n = heap.count
        if n > 0 {
            var i = 0
            while true {
                let l = 2 * i + 1
                if l >= n { break }
                var c = l
                if l + 1 < n && heap[l + 1] < heap[l] { c = l + 1 }
                if heap[c] >= last { break }
                heap[i] = heap[c]
                i = c
            }
            heap[i] = last
        }
        return top
    }

    /// Merges the symbols in `sym` (already filled, missing characters dropped) and appends the
    /// result to `out`. Heap + linked list: O(n log n).
    mutating func merge(_ table: _MergeTable, into out: inout [Int32]) {
        let n = sym.count
        if n == 0 { return }
        if n == 1 { out.append(sym[0]); return }
        prev.removeAll(keepingCapacity: true)
        next.removeAll(keepingCapacity: true)
        heap.removeAll(keepingCapacity: true)
        for i in 0..<n {
            prev.append(Int32(i - 1))
            next.append(i + 1 < n ? Int32(i + 1) : -1)
        }
        for i in 0..<(n - 1) {
            if let v = table.get(sym[i], sym[i + 1]) { push((v >> 32) << 32 | UInt64(i)) }
        }
        while !heap.isEmpty {
            let top = pop()
            let rank = top >> 32, pos = Int(top & 0xFFFF_FFFF)
            let nx = next[pos]
            if sym[pos] < 0 || nx < 0 { continue }                 // merged away / last symbol
            guard let v = table.get(sym[pos], sym[Int(nx)]), v >> 32 == rank else { continue }  // stale
            // merge pos with nx
            sym[pos] = Int32(truncatingIfNeeded: v & 0xFFFF_FFFF)
            let nn = next[Int(nx)]
            next[pos] = nn
            if nn >= 0 { prev[Int(nn)] = Int32(pos) }
            sym[Int(nx)] = -1
            let pv = prev[pos]
            if pv >= 0, let w = table.get(sym[Int(pv)], sym[pos]) { push((w >> 32) << 32 | UInt64(pv)) }
            if nn >= 0, let w = table.get(sym[pos], sym[Int(nn)]) { push((w >> 32) << 32 | UInt64(pos)) }
        }
        var i = 0
        while i >= 0 && i < n {
            out.append(sym[i])
            i = Int(next[i])
        }
    }

    /// Reference twin: the textbook loop (scan all adjacent pairs, merge the lowest rank,
    /// leftmost on ties, repeat). O(n^2); tests hold it equal to `merge`.
    static func mergeReference(_ symbols: [Int32], _ table: _MergeTable) -> [Int32] {
        var s = symbols
        while s.count > 1 {
            var best: UInt64 = .max, at = -1
            for i in 0..<(s.count - 1) {
                if let v = table.get(s[i], s[i + 1]), (v >> 32) < (best >> 32) || at < 0 { best = v; at = i }
            }
            if at < 0 { break }
            s[at] = Int32(truncatingIfNeeded: best & 0xFFFF_FFFF)
            s.remove(at: at + 1)
        }
        return s
    }
}
