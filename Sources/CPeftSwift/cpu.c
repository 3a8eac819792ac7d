/* What this CPU can run, read once with CPUID/XGETBV. Compiled for baseline x86-64 (no -march):
 * this file and entry.c are the only code a caller reaches before the CPU check passes.
 *
 * Sources for the bits: Intel SDM vol. 2A, CPUID leaf 1 (ECX: FMA bit 12, MOVBE 22, OSXSAVE 27,
 * AVX 28, F16C 29), leaf 7 subleaf 0 (EBX: BMI1 3, AVX2 5, BMI2 8, AVX512F 16, AVX512DQ 17,
 * AVX512BW 30, AVX512VL 31; ECX: AVX512_VNNI 11; EDX: AMX-BF16 22, AMX-TILE 24), leaf 7 subleaf 1
 * (EAX: AVX512_BF16 5), leaf 0x80000001 (ECX: LZCNT/ABM 5); XCR0 (XGETBV 0): bits 1-2 SSE/AVX
 * state, 5-7 the AVX-512 opmask/ZMM state, 17-18 AMX tile state. A feature counts only when
 * the OS also saves its registers (XCR0), as the SDM's "detection of AVX" procedure requires.
 * The x86-64-v3 level is the psABI's (x86-64 psABI 1.0, section 3.1.1 "microarchitecture
 * levels"): AVX, AVX2, BMI1, BMI2, F16C, FMA, LZCNT, MOVBE, OSXSAVE. */
#include "pst_shim.h"
#include <cpuid.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

static const char *const feature_names[] = {
    [PSTSHIM_CPU_AVX] = "avx",       [PSTSHIM_CPU_AVX2] = "avx2",
    [PSTSHIM_CPU_FMA] = "fma",       [PSTSHIM_CPU_F16C] = "f16c",
    [PSTSHIM_CPU_BMI1] = "bmi1",     [PSTSHIM_CPU_BMI2] = "bmi2",
    [PSTSHIM_CPU_LZCNT] = "lzcnt",   [PSTSHIM_CPU_MOVBE] = "movbe",
    [PSTSHIM_CPU_AVX512F] = "avx512f", [PSTSHIM_CPU_AVX512BW] = "avx512bw",
    [PSTSHIM_CPU_AVX512VL] = "avx512vl", [PSTSHIM_CPU_AVX512DQ] = "avx512dq",
    [PSTSHIM_CPU_AVX512_BF16] = "avx512_bf16", [PSTSHIM_CPU_AVX512_VNNI] = "avx512_vnni",
    [PSTSHIM_CPU_AMX_TILE] = "amx_tile", [PSTSHIM_CPU_AMX_BF16] = "amx_bf16",
};

static uint64_t xgetbv0(void) {
    uint32_t lo, hi;
    __asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
    return ((uint64_t)hi << 32) | lo;
}

static uint32_t detect(void) {
    unsigned a, b, c, d;
    uint32_t f = 0;
    if (!__get_cpuid(1, &a, &b, &c, &d)) return 0;
    const int osxsave = (c >> 27) & 1;
    const uint64_t xcr0 = osxsave ? xgetbv0() : 0;
    const int ymm = (xcr0 & 0x6) == 0x6;           /* SSE + AVX state */
    const int zmm = ymm && (xcr0 & 0xE0) == 0xE0;   /* opmask, ZMM0-15 high halves, ZMM16-31 */
    const int tiles = (xcr0 & 0x60000) == 0x60000;  /* XTILECFG + XTILEDATA */
    if (ymm && ((c >> 28) & 1)) f |= 1u << PSTSHIM_CPU_AVX;
    if (ymm && ((c >> 12) & 1)) f |= 1u << PSTSHIM_CPU_FMA;
    if (ymm && ((c >> 29) & 1)) f |= 1u << PSTSHIM_CPU_F16C;
    if ((c >> 22) & 1) f |= 1u << PSTSHIM_CPU_MOVBE;
    unsigned maxleaf = __get_cpuid_max(0, NULL);
    if (maxleaf >= 7) {
        __cpuid_count(7, 0, a, b, c, d);
        unsigned subleaves = a;
        if ((b >> 3) & 1) f |= 1u << PSTSHIM_CPU_BMI1;
        if ((b >> 8) & 1) f |= 1u << PSTSHIM_CPU_BMI2;
        if (ymm && ((b >> 5) & 1)) f |= 1u << PSTSHIM_CPU_AVX2;
        if (zmm && ((b >> 16) & 1)) f |= 1u << PSTSHIM_CPU_AVX512F;
        if (zmm && ((b >> 17) & 1)) f |= 1u << PSTSHIM_CPU_AVX512DQ;
        if (zmm && ((b >> 30) & 1)) f |= 1u << PSTSHIM_CPU_AVX512BW;
        if (zmm && ((b >> 31) & 1)) f |= 1u << PSTSHIM_CPU_AVX512VL;
        if (zmm && ((c >> 11) & 1)) f |= 1u << PSTSHIM_CPU_AVX512_VNNI;
        if (tiles && ((d >> 24) & 1)) f |= 1u << PSTSHIM_CPU_AMX_TILE;
        if (tiles && ((d >> 22) & 1)) f |= 1u << PSTSHIM_CPU_AMX_BF16;
        if (subleaves >= 1) {
            __cpuid_count(7, 1, a, b, c, d);
            if (zmm && ((a >> 5) & 1)) f |= 1u << PSTSHIM_CPU_AVX512_BF16;
        }
    }
    if (__get_cpuid(0x80000001, &a, &b, &c, &d) && ((c >> 5) & 1)) f |= 1u << PSTSHIM_CPU_LZCNT;
    return f | (1u << PSTSHIM_CPU_DETECTED);
}

static volatile uint32_t cached; /* 0 until detected; detection is idempotent, so races are benign */

uint32_t pstshim_cpu_features(void) {
    uint32_t f = cached;
    if (!f) cached = f = detect();
    return f;
}

const char *pstshim_cpu_feature_name(int bit) {
    if (bit < 0 || bit >= (int)(sizeof feature_names / sizeof feature_names[0])) return NULL;
    return feature_names[bit];
}

/* The x86-64-v3 features the engine is compiled for. */
#define V3_MASK ((1u << PSTSHIM_CPU_AVX) | (1u << PSTSHIM_CPU_AVX2) | (1u << PSTSHIM_CPU_FMA) | \
                 (1u << PSTSHIM_CPU_F16C) | (1u << PSTSHIM_CPU_BMI1) | (1u << PSTSHIM_CPU_BMI2) | \
                 (1u << PSTSHIM_CPU_LZCNT) | (1u << PSTSHIM_CPU_MOVBE))

int pstshim_cpu_is_amd(void) {
    unsigned a, b, c, d;
    if (!__get_cpuid(0, &a, &b, &c, &d)) return 0;
    /* the vendor string is EBX, EDX, ECX: "Auth" "enti" "cAMD" */
    return b == 0x68747541u && d == 0x69746e65u && c == 0x444d4163u;
}

int pstshim_cpu_ok(void) { return (pstshim_cpu_features() & V3_MASK) == V3_MASK; }

__attribute__((constructor)) static void detect_at_load(void) { (void)pstshim_cpu_features(); }

void pstshim_set_cpu_error(const char *function) {
    char msg[PSTSHIM_ERROR_CAP];
    uint32_t have = pstshim_cpu_features();
    int n = snprintf(msg, sizeof msg, "%s: this CPU lacks", function);
    const char *sep = " ";
    for (int bit = 0; bit < 32 && n > 0 && (size_t)n < sizeof msg; bit++) {
        if (!((V3_MASK >> bit) & 1) || ((have >> bit) & 1)) continue;
        n += snprintf(msg + n, sizeof msg - (size_t)n, "%s%s", sep, feature_names[bit]);
        sep = ", ";
    }
    if (n > 0 && (size_t)n < sizeof msg)
        n += snprintf(msg + n, sizeof msg - (size_t)n,
                      "; libpeftswift.so needs an x86-64-v3 CPU (AVX2, FMA, F16C, BMI1/2, LZCNT, MOVBE: "
                      "Intel Haswell / AMD Excavator or newer)");
    size_t len = n < 0 ? 0 : ((size_t)n < sizeof msg ? (size_t)n : sizeof msg - 1);
    pstshim_set_error(msg, len);
}
