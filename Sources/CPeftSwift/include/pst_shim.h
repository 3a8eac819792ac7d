/* Internal to peftswift (not installed, not exported): per-thread storage of the last error. */
#ifndef PST_SHIM_H
#define PST_SHIM_H
#include <stddef.h>
/* Copies at most PSTSHIM_ERROR_CAP-1 bytes of msg (truncating at a UTF-8 boundary). */
#define PSTSHIM_ERROR_CAP 1024
void pstshim_set_error(const char *msg, size_t len) __attribute__((visibility("hidden")));
void pstshim_clear_error(void) __attribute__((visibility("hidden")));
const char *pstshim_last_error(void) __attribute__((visibility("hidden")));

/* CPU features (cpu.c): bit numbers of pstshim_cpu_features(). */
enum {
    PSTSHIM_CPU_AVX = 0, PSTSHIM_CPU_AVX2, PSTSHIM_CPU_FMA, PSTSHIM_CPU_F16C, PSTSHIM_CPU_BMI1,
    PSTSHIM_CPU_BMI2, PSTSHIM_CPU_LZCNT, PSTSHIM_CPU_MOVBE, PSTSHIM_CPU_AVX512F, PSTSHIM_CPU_AVX512BW,
    PSTSHIM_CPU_AVX512VL, PSTSHIM_CPU_AVX512DQ, PSTSHIM_CPU_AVX512_BF16, PSTSHIM_CPU_AVX512_VNNI,
    PSTSHIM_CPU_AMX_TILE, PSTSHIM_CPU_AMX_BF16,
    PSTSHIM_CPU_DETECTED = 31 /* set once detection ran */
};
#include <stdint.h>
uint32_t pstshim_cpu_features(void) __attribute__((visibility("hidden")));
const char *pstshim_cpu_feature_name(int bit) __attribute__((visibility("hidden")));
/* 1 when the CPU (and OS) run the x86-64-v3 code the engine is compiled for. */
int pstshim_cpu_ok(void) __attribute__((visibility("hidden")));
/* 1 when CPUID's vendor string is "AuthenticAMD". */
int pstshim_cpu_is_amd(void) __attribute__((visibility("hidden")));
/* Sets the last error to "<function>: this CPU lacks <features>; ...". */
void pstshim_set_cpu_error(const char *function) __attribute__((visibility("hidden")));
/* The static name of a status code (pst_status_string). */
const char *pstshim_status_string(int32_t status) __attribute__((visibility("hidden")));
/* The spin-wait hint (x86 `pause`) for the worker team's waits (Core/Parallel.swift). */
static inline void pstshim_pause(void) { __builtin_ia32_pause(); }
#endif
