import _Builtin_intrinsics.intel

/// CRC-32C (Castagnoli, polynomial 0x1EDC6F41, reflected 0x82F63B78), the checksum iSCSI, ext4
/// and SSE4.2's `crc32` instruction use: initial value 0xFFFFFFFF, final XOR 0xFFFFFFFF.
/// Check value: `CRC32C("123456789") == 0xE3069283`.
///
/// `checksum` uses SSE4.2's `crc32` instruction (part of x86-64-v3, which the library is built
/// for; about 8 bytes per 3 cycles on one core); `tableChecksum` is the portable slicing-by-8
/// version and `referenceChecksum` the bitwise twin: tests hold all three together. Used for
/// spilled pages and serialized optimizer states.
public enum CRC32C {
    /// tables[k][b]: the CRC of byte b followed by k zero bytes.
    static let tables: [[UInt32]] = {
        var t = [[UInt32]](repeating: [UInt32](repeating: 0, count: 256), count: 8)
        for b in 0..<256 {
            var c = UInt32(b)
            for _ in 0..<8 { c = (c & 1) != 0 ? (c >> 1) ^ 0x82F6_3B78 : c >> 1 }
            t[0][b] = c
        }
        for b in 0..<256 {
            for k in 1..<8 { t[k][b] = (t[k - 1][b] >> 8) ^ t[0][Int(t[k - 1][b] & 0xFF)] }
        }
        return t
    }()

    /// The CRC-32C of `bytes`, continuing from `crc` (pass the result of a previous call to
    /// checksum data in pieces; the default starts a new checksum).
    public static func checksum(_ bytes: UnsafeRawBufferPointer, continuing crc: UInt32 = 0) -> UInt32 {
        guard let base = bytes.baseAddress, bytes.count > 0 else { return crc }
        let n = bytes.count
        var c = UInt64(~crc)
        var i = 0
        while i + 8 <= n {
            c = _mm_crc32_u64(c, UInt64(littleEndian: (base + i).loadUnaligned(as: UInt64.self)))
            i += 8
        }
        var c32 = UInt32(truncatingIfNeeded: c)
        while i < n {
            c32 = _mm_crc32_u8(c32, base.load(fromByteOffset: i, as: UInt8.self))
            i += 1
        }
        return ~c32
    }

    /// Slicing-by-8 table version of `checksum` (portable; about 1-2 GB/s on one core).
    static func tableChecksum(_ bytes: UnsafeRawBufferPointer, continuing crc: UInt32 = 0) -> UInt32 {
        var c = ~crc
        guard let base = bytes.baseAddress, bytes.count > 0 else { return crc }
        let n = bytes.count
        var i = 0
        tables.withUnsafeBufferPointer { tp in
            let t0 = tp[0], t1 = tp[1], t2 = tp[2], t3 = tp[3], t4 = tp[4], t5 = tp[5], t6 = tp[6], t7 = tp[7]
            t0.withUnsafeBufferPointer { t0 in t1.withUnsafeBufferPointer { t1 in
            t2.withUnsafeBufferPointer { t2 in t3.withUnsafeBufferPointer { t3 in
            t4.withUnsafeBufferPointer { t4 in t5.withUnsafeBufferPointer { t5 in
            t6.withUnsafeBufferPointer { t6 in t7.withUnsafeBufferPointer { t7 in
                while i + 8 <= n {
                    let w = UInt64(littleEndian: (base + i).loadUnaligned(as: UInt64.self))
                    let lo = UInt32(truncatingIfNeeded: w) ^ c
                    let hi = UInt32(truncatingIfNeeded: w >> 32)
                    c = t7[Int(lo & 0xFF)] ^ t6[Int((lo >> 8) & 0xFF)] ^ t5[Int((lo >> 16) & 0xFF)] ^ t4[Int(lo >> 24)]
                      ^ t3[Int(hi & 0xFF)] ^ t2[Int((hi >> 8) & 0xFF)] ^ t1[Int((hi >> 16) & 0xFF)] ^ t0[Int(hi >> 24)]
                    i += 8
                }
                while i < n {
                    c = (c >> 8) ^ t0[Int((c ^ UInt32(base.load(fromByteOffset: i, as: UInt8.self))) & 0xFF)]
                    i += 1
                }
            }}}}}}}}
        }
        return ~c
    }

    /// Bitwise reference twin of `checksum` (one bit at a time, no tables); tests compare them.
    static func referenceChecksum(_ bytes: UnsafeRawBufferPointer, continuing crc: UInt32 = 0) -> UInt32 {
        var c = ~crc
        for b in bytes {
            c ^= UInt32(b)
            for _ in 0..<8 { c = (c & 1) != 0 ? (c >> 1) ^ 0x82F6_3B78 : c >> 1 }
        }
        return ~c
    }
}
