/* Kernel-path dispatch (pst_host_isa, pst_get_isa): a LoRA layer's forward and backward (GEMMs of
 * every shape class the driver has) on whatever path the CPU offers, printing the path. Run by
 * Tests/abi/check.sh natively and under qemu-x86_64 -cpu Haswell-noTSX (AVX2, no AVX-512): there
 * it must report PST_ISA_AVX2 and compute, never reach an AVX-512 instruction (SIGILL). The
 * checksum must be the same on both: fp32 results are bit-identical on every path. */
#include <peftswift.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int main(int argc, char **argv) {
    int want = argc > 1 ? atoi(argv[1]) : -2;   /* expected host path, -2: any */
    int host = pst_host_isa(), active = pst_get_isa();
    printf("host isa %d, active isa %d\n", host, active);
    if (want != -2 && host != want) { printf("FAIL host isa %d, expected %d\n", host, want); return 1; }
    enum { IN = 200, OUT = 136, M = 77 };
    static float w[OUT * IN], x[M * IN], y[M * OUT], dy[M * OUT], dx[M * IN];
    unsigned s = 12345;
    for (int i = 0; i < OUT * IN; i++) { s = s * 1103515245u + 12345u; w[i] = (float)((s >> 9) & 0xFFFF) / 65536.0f - 0.5f; }
    for (int i = 0; i < M * IN; i++) { s = s * 1103515245u + 12345u; x[i] = (float)((s >> 9) & 0xFFFF) / 65536.0f - 0.5f; }
    for (int i = 0; i < M * OUT; i++) { s = s * 1103515245u + 12345u; dy[i] = (float)((s >> 9) & 0xFFFF) / 65536.0f - 0.5f; }
    pst_lora *L = NULL;
    pst_lora_params p;
    if (pst_lora_create_dense(w, OUT * IN, OUT, IN, NULL, &L) != PST_OK || pst_lora_params_init(&p) != PST_OK) {
        printf("FAIL create: %s\n", pst_last_error());
        return 1;
    }
    p.r = 16; p.alpha = 32; p.seed = 7;
    float *B = NULL;
    int64_t rows = 0, cols = 0;
    if (pst_lora_add_adapter(L, "default", &p) != PST_OK ||
        pst_lora_adapter_tensor(L, "default", PST_LORA_B, &B, &rows, &cols) != PST_OK) {
        printf("FAIL adapter: %s\n", pst_last_error());
        return 1;
    }
    for (int64_t i = 0; i < rows * cols; i++) B[i] = 0.01f * (float)(i % 7);
    if (pst_lora_forward(L, x, M * IN, M, y, M * OUT) != PST_OK ||
        pst_lora_backward(L, dy, M * OUT, M, dx, M * IN, false) != PST_OK) {
        printf("FAIL forward/backward: %s\n", pst_last_error());
        return 1;
    }
    unsigned long long h = 1469598103934665603ull;   /* FNV-1a over the result bits */
    for (int i = 0; i < M * OUT; i++) { unsigned u; memcpy(&u, &y[i], 4); h = (h ^ u) * 1099511628211ull; }
    for (int i = 0; i < M * IN; i++) { unsigned u; memcpy(&u, &dx[i], 4); h = (h ^ u) * 1099511628211ull; }
    printf("checksum %016llx\n", h);
    pst_lora_free(L);
    return 0;
}
