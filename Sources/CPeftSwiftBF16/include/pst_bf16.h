/* AVX512_BF16 intrinsics for the Swift module PeftSwiftAVX512BF16. Swift cannot import the
 * __bf16 vector types (__m512bh) these intrinsics take, so each is wrapped here with plain
 * integer vectors in its signature. Always inlined into the caller, which is compiled with
 * -mavx512bf16 and reached only after the run-time CPU check (PeftSwift/Core/ISA.swift). */
#ifndef PST_BF16_H
#define PST_BF16_H
#include <immintrin.h>

#define PST_BF16_INLINE static inline __attribute__((always_inline, target("avx512f,avx512bw,avx512bf16")))

/* acc.fp32[j] += a.bf16[2j+1]·b.bf16[2j+1] + a.bf16[2j]·b.bf16[2j]  (vdpbf16ps; Intel SDM: the
 * products are exact in fp32, denormal inputs and outputs are flushed to zero, round to nearest
 * even) */
PST_BF16_INLINE __m512 pst_dpbf16(__m512 acc, __m512i a, __m512i b) {
    return _mm512_dpbf16_ps(acc, (__m512bh)a, (__m512bh)b);
}

/* 32 bf16: lanes 0-15 = lo rounded, 16-31 = hi rounded (vcvtne2ps2bf16: round to nearest even,
 * denormal inputs treated as zero, NaN kept quiet) */
PST_BF16_INLINE __m512i pst_cvtne2ps_bf16(__m512 hi, __m512 lo) {
    return (__m512i)_mm512_cvtne2ps_pbh(hi, lo);
}

/* 16 bf16 from 16 floats (vcvtneps2bf16, same rounding) */
PST_BF16_INLINE __m256i pst_cvtneps_bf16(__m512 x) {
    return (__m256i)_mm512_cvtneps_pbh(x);
}
#endif
