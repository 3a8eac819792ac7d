/* Calls every exported function with NULL, undersized or invalid arguments. Each fallible
 * call must return the expected status with a message that names the function; nothing may
 * crash. Tests/abi/check.sh also checks that every declared function appears in this file. */
#define _DEFAULT_SOURCE /* mkdtemp */
#include <math.h>
#include <peftswift.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static int failures = 0;

static void expect(const char *what, pst_status got, pst_status want, const char *fn) {
    const char *msg = pst_last_error();
    int ok = got == want && msg && strstr(msg, fn) == msg && strlen(msg) > strlen(fn) + 2;
    printf("%s %s -> %s: %s\n", ok ? "PASS" : "FAIL", what, pst_status_string(got), msg ? msg : "(null)");
    if (!ok) failures++;
}

#define EXPECT(call, want, fn) expect(#call, (call), (want), (fn))

static void infallible(const char *what, int ok) {
    printf("%s %s\n", ok ? "PASS" : "FAIL", what);
    if (!ok) failures++;
}

int main(int argc, char **argv) {
    /* ---- core */
    infallible("pst_version_string() is non-NULL", pst_version_string() != NULL);
    infallible("pst_abi_version() == PST_ABI_VERSION", pst_abi_version() == PST_ABI_VERSION);
    infallible("pst_status_string(-1) is a static string", strcmp(pst_status_string(-1), "unknown status") == 0);
    infallible("pst_last_error() is never NULL", pst_last_error() != NULL);
    EXPECT(pst_set_num_threads(0), PST_ERR_INVALID_ARG, "pst_set_num_threads");
    EXPECT(pst_set_num_threads(100000), PST_ERR_INVALID_ARG, "pst_set_num_threads");
    infallible("pst_get_num_threads() >= 1", pst_get_num_threads() >= 1);
    /* this host runs the tests, so it runs the library; older CPUs: the qemu checks in check.sh */
    infallible("pst_cpu_check() == PST_OK on the test host", pst_cpu_check() == PST_OK && pst_last_error()[0] == 0);
    infallible("pst_status_string(PST_ERR_UNSUPPORTED_CPU)", strcmp(pst_status_string(PST_ERR_UNSUPPORTED_CPU), "unsupported CPU") == 0);
    /* kernel paths: the active one is one the host has; a path beyond the host's is refused */
    {
        int32_t host = pst_host_isa(), active = pst_get_isa();
        infallible("PST_ISA_AVX2 <= pst_get_isa() <= pst_host_isa()", host >= PST_ISA_AVX2 && host <= PST_ISA_AVX512_BF16 &&
                   active >= PST_ISA_AVX2 && active <= host);
        EXPECT(pst_set_isa(-1), PST_ERR_INVALID_ARG, "pst_set_isa");
        EXPECT(pst_set_isa(3), PST_ERR_INVALID_ARG, "pst_set_isa");
        if (host < PST_ISA_AVX512_BF16) EXPECT(pst_set_isa(PST_ISA_AVX512_BF16), PST_ERR_UNSUPPORTED_CPU, "pst_set_isa");
        infallible("pst_set_isa(PST_ISA_AVX2)", pst_set_isa(PST_ISA_AVX2) == PST_OK && pst_get_isa() == PST_ISA_AVX2);
        infallible("pst_set_isa(host)", pst_set_isa(host) == PST_OK && pst_get_isa() == host);
    }

    /* ---- quantization: flat kernels */
    float x[100], out[100], absmax[4], code16[16], code256[256];
    uint8_t packed[50], q8[100];
    for (int i = 0; i < 100; i++) x[i] = (float)i / 100.0f - 0.5f;
    infallible("pst_4bit_packed_bytes(0) == 0", pst_4bit_packed_bytes(0) == 0 && pst_4bit_packed_bytes(5) == 3);
    infallible("pst_blockwise_count(n, 0) == 0", pst_blockwise_count(10, 0) == 0 && pst_blockwise_count(100, 64) == 2);
    EXPECT(pst_codebook(99, code16, 16), PST_ERR_INVALID_ARG, "pst_codebook");
    EXPECT(pst_codebook(PST_CODE_NF4, NULL, 16), PST_ERR_INVALID_ARG, "pst_codebook");
    EXPECT(pst_codebook(PST_CODE_DYNAMIC_SIGNED, code256, 16), PST_ERR_INVALID_ARG, "pst_codebook");
    EXPECT(pst_4bit_quantize(NULL, PST_DTYPE_F32, 100, 64, PST_QUANT_NF4, packed, 50, absmax, 4), PST_ERR_INVALID_ARG, "pst_4bit_quantize");
    EXPECT(pst_4bit_quantize(x, PST_DTYPE_F32, 0, 64, PST_QUANT_NF4, packed, 50, absmax, 4), PST_ERR_INVALID_ARG, "pst_4bit_quantize");
    EXPECT(pst_4bit_quantize(x, PST_DTYPE_F32, 100, 48, PST_QUANT_NF4, packed, 50, absmax, 4), PST_ERR_INVALID_ARG, "pst_4bit_quantize");
    EXPECT(pst_4bit_quantize(x, 77, 100, 64, PST_QUANT_NF4, packed, 50, absmax, 4), PST_ERR_INVALID_ARG, "pst_4bit_quantize");
    EXPECT(pst_4bit_quantize(x, PST_DTYPE_F32, 100, 64, 5, packed, 50, absmax, 4), PST_ERR_INVALID_ARG, "pst_4bit_quantize");
    EXPECT(pst_4bit_quantize(x, PST_DTYPE_F32, 100, 64, PST_QUANT_NF4, packed, 49, absmax, 4), PST_ERR_INVALID_ARG, "pst_4bit_quantize");
    EXPECT(pst_4bit_quantize(x, PST_DTYPE_F32, 100, 64, PST_QUANT_NF4, packed, 50, absmax, 1), PST_ERR_INVALID_ARG, "pst_4bit_quantize");
    EXPECT(pst_4bit_quantize(x, PST_DTYPE_F32, 100, 64, PST_QUANT_NF4, packed, 50, NULL, 4), PST_ERR_INVALID_ARG, "pst_4bit_quantize");
    x[37] = NAN;
    EXPECT(pst_4bit_quantize(x, PST_DTYPE_F32, 100, 64, PST_QUANT_NF4, packed, 50, absmax, 4), PST_ERR_NONFINITE, "pst_4bit_quantize");
    x[37] = INFINITY;
    EXPECT(pst_8bit_quantize(x, 100, 64, NULL, q8, 100, absmax, 4), PST_ERR_NONFINITE, "pst_8bit_quantize");
    x[37] = 0.0f;
    if (pst_4bit_quantize(x, PST_DTYPE_F32, 100, 64, PST_QUANT_NF4, packed, 50, absmax, 4) != PST_OK) failures++;
    EXPECT(pst_4bit_dequantize(NULL, 50, absmax, 2, NULL, PST_QUANT_NF4, 100, 64, out, PST_DTYPE_F32, sizeof out), PST_ERR_INVALID_ARG, "pst_4bit_dequantize");
    EXPECT(pst_4bit_dequantize(packed, 10, absmax, 2, NULL, PST_QUANT_NF4, 100, 64, out, PST_DTYPE_F32, sizeof out), PST_ERR_INVALID_ARG, "pst_4bit_dequantize");
    EXPECT(pst_4bit_dequantize(packed, 50, absmax, 1, NULL, PST_QUANT_NF4, 100, 64, out, PST_DTYPE_F32, sizeof out), PST_ERR_INVALID_ARG, "pst_4bit_dequantize");
    EXPECT(pst_4bit_dequantize(packed, 50, absmax, 2, NULL, PST_QUANT_NF4, 100, 64, out, PST_DTYPE_F32, 399), PST_ERR_INVALID_ARG, "pst_4bit_dequantize");
    EXPECT(pst_4bit_dequantize(packed, 50, absmax, 2, NULL, PST_QUANT_NF4, 100, 64, NULL, PST_DTYPE_F32, 400), PST_ERR_INVALID_ARG, "pst_4bit_dequantize");
    EXPECT(pst_4bit_dequantize(packed, 50, absmax, 2, NULL, PST_QUANT_NF4, 100, 64, out, PST_DTYPE_U8, 400), PST_ERR_INVALID_ARG, "pst_4bit_dequantize");
    EXPECT(pst_8bit_quantize(NULL, 100, 64, NULL, q8, 100, absmax, 4), PST_ERR_INVALID_ARG, "pst_8bit_quantize");
    EXPECT(pst_8bit_quantize(x, 100, 0, NULL, q8, 100, absmax, 4), PST_ERR_INVALID_ARG, "pst_8bit_quantize");
    EXPECT(pst_8bit_quantize(x, 100, 64, NULL, q8, 99, absmax, 4), PST_ERR_INVALID_ARG, "pst_8bit_quantize");
    EXPECT(pst_8bit_dequantize(q8, 100, NULL, 2, NULL, 64, out, 100), PST_ERR_INVALID_ARG, "pst_8bit_dequantize");
    EXPECT(pst_8bit_dequantize(q8, 100, absmax, 2, NULL, 64, out, 10), PST_ERR_INVALID_ARG, "pst_8bit_dequantize");
    EXPECT(pst_8bit_dequantize(q8, -5, absmax, 2, NULL, 64, out, 100), PST_ERR_INVALID_ARG, "pst_8bit_dequantize");
    float offset;
    EXPECT(pst_absmax_double_quantize(NULL, 2, 256, q8, 100, absmax, 4, &offset), PST_ERR_INVALID_ARG, "pst_absmax_double_quantize");
    EXPECT(pst_absmax_double_quantize(absmax, 2, 100, q8, 100, absmax, 4, &offset), PST_ERR_INVALID_ARG, "pst_absmax_double_quantize");
    EXPECT(pst_absmax_double_quantize(absmax, 2, 256, q8, 1, absmax, 4, &offset), PST_ERR_INVALID_ARG, "pst_absmax_double_quantize");
    EXPECT(pst_absmax_double_quantize(absmax, 2, 256, q8, 100, absmax, 4, NULL), PST_ERR_INVALID_ARG, "pst_absmax_double_quantize");

    /* ---- quantization: the pst_quant handle */
    pst_quant *h = NULL;
    int64_t shape[2] = {10, 10}, badshape[2] = {10, 0};
    EXPECT(pst_quant_create_4bit(x, PST_DTYPE_F32, shape, 2, 64, PST_QUANT_NF4, true, NULL), PST_ERR_INVALID_ARG, "pst_quant_create_4bit");
    EXPECT(pst_quant_create_4bit(NULL, PST_DTYPE_F32, shape, 2, 64, PST_QUANT_NF4, true, &h), PST_ERR_INVALID_ARG, "pst_quant_create_4bit");
    EXPECT(pst_quant_create_4bit(x, PST_DTYPE_F32, badshape, 2, 64, PST_QUANT_NF4, true, &h), PST_ERR_INVALID_ARG, "pst_quant_create_4bit");
    EXPECT(pst_quant_create_4bit(x, PST_DTYPE_F32, shape, 0, 64, PST_QUANT_NF4, true, &h), PST_ERR_INVALID_ARG, "pst_quant_create_4bit");
    EXPECT(pst_quant_create_4bit(x, PST_DTYPE_F32, NULL, 2, 64, PST_QUANT_NF4, true, &h), PST_ERR_INVALID_ARG, "pst_quant_create_4bit");
    infallible("failed create leaves *out NULL", h == NULL);
    pst_quant_state st;
    memset(&st, 0, sizeof st);
    EXPECT(pst_quant_from_state(NULL, &h), PST_ERR_INVALID_ARG, "pst_quant_from_state");
    EXPECT(pst_quant_from_state(&st, &h), PST_ERR_INVALID_ARG, "pst_quant_from_state"); /* struct_size 0 */
    st.struct_size = sizeof st;
    EXPECT(pst_quant_from_state(&st, &h), PST_ERR_INVALID_ARG, "pst_quant_from_state"); /* ndim 0 */
    st.ndim = 1; st.shape[0] = 100; st.blocksize = 64; st.dtype = PST_DTYPE_F32;
    st.packed = packed; st.packed_bytes = 50; st.code = code16; st.absmax = absmax; st.absmax_count = 2;
    if (pst_codebook(PST_CODE_NF4, code16, 16) != PST_OK) failures++;
    st.packed_bytes = 49;
    EXPECT(pst_quant_from_state(&st, &h), PST_ERR_SHAPE, "pst_quant_from_state");
    st.packed_bytes = 50; st.absmax_count = 3;
    EXPECT(pst_quant_from_state(&st, &h), PST_ERR_SHAPE, "pst_quant_from_state");
    st.absmax_count = 2; st.quant_type = 9;
    EXPECT(pst_quant_from_state(&st, &h), PST_ERR_INVALID_ARG, "pst_quant_from_state");
    st.quant_type = PST_QUANT_NF4; st.nested = 1; st.nested_blocksize = 256;
    EXPECT(pst_quant_from_state(&st, &h), PST_ERR_INVALID_ARG, "pst_quant_from_state"); /* nested_absmax NULL */
    st.nested = 0;
    EXPECT(pst_quant_from_state(&st, NULL), PST_ERR_INVALID_ARG, "pst_quant_from_state");
    EXPECT(pst_quant_borrow_state(NULL, &h), PST_ERR_INVALID_ARG, "pst_quant_borrow_state");
    EXPECT(pst_quant_borrow_state(&st, NULL), PST_ERR_INVALID_ARG, "pst_quant_borrow_state");
    st.packed_bytes = 49;
    EXPECT(pst_quant_borrow_state(&st, &h), PST_ERR_SHAPE, "pst_quant_borrow_state");
    st.packed_bytes = 50;
    {   /* a borrowed state computes on the caller's arrays */
        pst_quant *hb = NULL;
        if (pst_quant_borrow_state(&st, &hb) != PST_OK) { printf("FAIL valid borrowed state rejected: %s\n", pst_last_error()); failures++; }
        pst_quant_state sb = { .struct_size = sizeof sb };
        infallible("pst_quant_borrow_state keeps the caller's arrays",
                   hb && pst_quant_get_state(hb, &sb) == PST_OK && sb.packed == st.packed && sb.absmax == st.absmax);
        pst_quant_free(hb);
    }
    if (pst_quant_from_state(&st, &h) != PST_OK) { printf("FAIL valid state rejected: %s\n", pst_last_error()); failures++; }
    EXPECT(pst_quant_get_state(NULL, &st), PST_ERR_INVALID_ARG, "pst_quant_get_state");
    EXPECT(pst_quant_get_state(h, NULL), PST_ERR_INVALID_ARG, "pst_quant_get_state");
    pst_quant_state st2;
    memset(&st2, 0, sizeof st2);
    EXPECT(pst_quant_get_state(h, &st2), PST_ERR_INVALID_ARG, "pst_quant_get_state");
    EXPECT(pst_quant_dequantize(NULL, out, sizeof out, PST_DTYPE_F32), PST_ERR_INVALID_ARG, "pst_quant_dequantize");
    EXPECT(pst_quant_dequantize(h, NULL, sizeof out, PST_DTYPE_F32), PST_ERR_INVALID_ARG, "pst_quant_dequantize");
    EXPECT(pst_quant_dequantize(h, out, sizeof out - 1, PST_DTYPE_F32), PST_ERR_INVALID_ARG, "pst_quant_dequantize");
    EXPECT(pst_quant_dequantize(h, out, sizeof out, -1), PST_ERR_INVALID_ARG, "pst_quant_dequantize");
    EXPECT(pst_quant_info(NULL, NULL, NULL), PST_ERR_INVALID_ARG, "pst_quant_info");
    pst_quant_free(h);
    pst_quant_free(NULL);
    infallible("pst_quant_free(NULL) is a no-op", 1);

    /* ---- LoRA */
    pst_lora *L = NULL;
    float w[6 * 8], b6[6], xin[2 * 8], yout[2 * 6], dxo[2 * 8];
    for (int i = 0; i < 48; i++) w[i] = (float)(i % 7) * 0.1f;
    for (int i = 0; i < 16; i++) xin[i] = (float)i * 0.05f;
    for (int i = 0; i < 6; i++) b6[i] = 0.5f;
    pst_lora_params lp;
    EXPECT(pst_lora_params_init(NULL), PST_ERR_INVALID_ARG, "pst_lora_params_init");
    if (pst_lora_params_init(&lp) != PST_OK) failures++;
    EXPECT(pst_lora_create_dense(NULL, 48, 6, 8, NULL, &L), PST_ERR_INVALID_ARG, "pst_lora_create_dense");
    EXPECT(pst_lora_create_dense(w, 47, 6, 8, NULL, &L), PST_ERR_INVALID_ARG, "pst_lora_create_dense");
    EXPECT(pst_lora_create_dense(w, 48, 0, 8, NULL, &L), PST_ERR_INVALID_ARG, "pst_lora_create_dense");
    EXPECT(pst_lora_create_dense(w, 48, 6, 8, NULL, NULL), PST_ERR_INVALID_ARG, "pst_lora_create_dense");
    EXPECT(pst_lora_create_quantized(NULL, NULL, &L), PST_ERR_INVALID_ARG, "pst_lora_create_quantized");
    EXPECT(pst_lora_create_quantized((pst_quant *)NULL, b6, NULL), PST_ERR_INVALID_ARG, "pst_lora_create_quantized");
    if (pst_lora_create_dense(w, 48, 6, 8, b6, &L) != PST_OK) { printf("FAIL create: %s\n", pst_last_error()); return 1; }
    EXPECT(pst_lora_info(NULL, NULL, NULL, NULL), PST_ERR_INVALID_ARG, "pst_lora_info");
    EXPECT(pst_lora_add_adapter(NULL, "a", &lp), PST_ERR_INVALID_ARG, "pst_lora_add_adapter");
    EXPECT(pst_lora_add_adapter(L, NULL, &lp), PST_ERR_INVALID_ARG, "pst_lora_add_adapter");
    EXPECT(pst_lora_add_adapter(L, "", &lp), PST_ERR_INVALID_ARG, "pst_lora_add_adapter");
    lp.r = 0;
    EXPECT(pst_lora_add_adapter(L, "a", &lp), PST_ERR_INVALID_ARG, "pst_lora_add_adapter");
    lp.r = 7; /* > min(in, out) = 6 */
    EXPECT(pst_lora_add_adapter(L, "a", &lp), PST_ERR_INVALID_ARG, "pst_lora_add_adapter");
    lp.r = 2; lp.alpha = 0;
    EXPECT(pst_lora_add_adapter(L, "a", &lp), PST_ERR_INVALID_ARG, "pst_lora_add_adapter");
    lp.alpha = 4; lp.dropout = 1.0f;
    EXPECT(pst_lora_add_adapter(L, "a", &lp), PST_ERR_INVALID_ARG, "pst_lora_add_adapter");
    lp.dropout = 0; lp.init = 42;
    EXPECT(pst_lora_add_adapter(L, "a", &lp), PST_ERR_INVALID_ARG, "pst_lora_add_adapter");
    lp.init = PST_LORA_INIT_KAIMING; lp.struct_size = 3;
    EXPECT(pst_lora_add_adapter(L, "a", &lp), PST_ERR_INVALID_ARG, "pst_lora_add_adapter");
    if (pst_lora_params_init(&lp) != PST_OK) failures++;
    lp.r = 2;
    if (pst_lora_add_adapter(L, "a", &lp) != PST_OK) { printf("FAIL add: %s\n", pst_last_error()); failures++; }
    EXPECT(pst_lora_add_adapter(L, "a", &lp), PST_ERR_EXISTS, "pst_lora_add_adapter");
    EXPECT(pst_lora_backward(L, yout, 12, 2, dxo, 16, true), PST_ERR_MISUSE, "pst_lora_backward");
    EXPECT(pst_lora_forward(NULL, xin, 16, 2, yout, 12), PST_ERR_INVALID_ARG, "pst_lora_forward");
    EXPECT(pst_lora_forward(L, NULL, 16, 2, yout, 12), PST_ERR_INVALID_ARG, "pst_lora_forward");
    EXPECT(pst_lora_forward(L, xin, 15, 2, yout, 12), PST_ERR_SHAPE, "pst_lora_forward");
    EXPECT(pst_lora_forward(L, xin, 16, 2, yout, 11), PST_ERR_SHAPE, "pst_lora_forward");
    EXPECT(pst_lora_forward(L, xin, 16, 0, yout, 12), PST_ERR_INVALID_ARG, "pst_lora_forward");
    EXPECT(pst_lora_forward(L, xin, 16, (int64_t)1 << 60, yout, 12), PST_ERR_INVALID_ARG, "pst_lora_forward");
    EXPECT(pst_lora_backward(L, yout, 12, (int64_t)1 << 60, dxo, 16, true), PST_ERR_INVALID_ARG, "pst_lora_backward");
    if (pst_lora_forward(L, xin, 16, 2, yout, 12) != PST_OK) failures++;
    EXPECT(pst_lora_backward(NULL, yout, 12, 2, dxo, 16, true), PST_ERR_INVALID_ARG, "pst_lora_backward");
    EXPECT(pst_lora_backward(L, NULL, 12, 2, dxo, 16, true), PST_ERR_INVALID_ARG, "pst_lora_backward");
    EXPECT(pst_lora_backward(L, yout, 12, 1, dxo, 16, true), PST_ERR_SHAPE, "pst_lora_backward");
    EXPECT(pst_lora_backward(L, yout, 11, 2, dxo, 16, true), PST_ERR_SHAPE, "pst_lora_backward");
    EXPECT(pst_lora_backward(L, yout, 12, 2, dxo, 15, true), PST_ERR_SHAPE, "pst_lora_backward");
    EXPECT(pst_lora_zero_grad(NULL), PST_ERR_INVALID_ARG, "pst_lora_zero_grad");
    EXPECT(pst_lora_set_training(NULL, true), PST_ERR_INVALID_ARG, "pst_lora_set_training");
    EXPECT(pst_lora_set_compute_dtype(NULL, PST_DTYPE_F32), PST_ERR_INVALID_ARG, "pst_lora_set_compute_dtype");
    const char *bogus[1] = {"nope"};
    const char *nul[1] = {NULL};
    EXPECT(pst_lora_set_active(L, bogus, NULL, 1), PST_ERR_NOT_FOUND, "pst_lora_set_active");
    EXPECT(pst_lora_set_active(L, nul, NULL, 1), PST_ERR_INVALID_ARG, "pst_lora_set_active");
    EXPECT(pst_lora_set_active(L, NULL, NULL, 1), PST_ERR_INVALID_ARG, "pst_lora_set_active");
    EXPECT(pst_lora_set_active(L, bogus, NULL, -1), PST_ERR_INVALID_ARG, "pst_lora_set_active");
    float *tp = NULL;
    EXPECT(pst_lora_adapter_tensor(L, "a", 9, &tp, NULL, NULL), PST_ERR_INVALID_ARG, "pst_lora_adapter_tensor");
    EXPECT(pst_lora_adapter_tensor(L, "zz", PST_LORA_A, &tp, NULL, NULL), PST_ERR_NOT_FOUND, "pst_lora_adapter_tensor");
    EXPECT(pst_lora_adapter_tensor(L, "a", PST_LORA_A, NULL, NULL, NULL), PST_ERR_INVALID_ARG, "pst_lora_adapter_tensor");
    EXPECT(pst_lora_adapter_info(L, "zz", NULL, NULL, NULL, NULL, NULL), PST_ERR_NOT_FOUND, "pst_lora_adapter_info");
    EXPECT(pst_lora_adapter_info(NULL, "a", NULL, NULL, NULL, NULL, NULL), PST_ERR_INVALID_ARG, "pst_lora_adapter_info");
    EXPECT(pst_lora_set_compute_dtype(L, PST_DTYPE_F16), PST_ERR_INVALID_ARG, "pst_lora_set_compute_dtype");
    EXPECT(pst_lora_set_compute_dtype(L, 99), PST_ERR_INVALID_ARG, "pst_lora_set_compute_dtype");
    if (pst_host_isa() < PST_ISA_AVX512_BF16)
        EXPECT(pst_lora_set_compute_dtype(L, PST_DTYPE_BF16), PST_ERR_UNSUPPORTED_CPU, "pst_lora_set_compute_dtype");
    infallible("pst_lora_set_compute_dtype(L, PST_DTYPE_F32)", pst_lora_set_compute_dtype(L, PST_DTYPE_F32) == PST_OK);
    EXPECT(pst_lora_bias(NULL, NULL, NULL), PST_ERR_INVALID_ARG, "pst_lora_bias");
    EXPECT(pst_lora_merge(L, bogus, 1, NULL, NULL), PST_ERR_NOT_FOUND, "pst_lora_merge");
    EXPECT(pst_lora_merge(NULL, NULL, 0, NULL, NULL), PST_ERR_INVALID_ARG, "pst_lora_merge");
    EXPECT(pst_lora_unmerge(NULL), PST_ERR_INVALID_ARG, "pst_lora_unmerge");
    EXPECT(pst_lora_base_weight(L, w, 47), PST_ERR_INVALID_ARG, "pst_lora_base_weight");
    EXPECT(pst_lora_base_weight(L, NULL, 48), PST_ERR_INVALID_ARG, "pst_lora_base_weight");
    const char *a1[1] = {"a"};
    if (pst_lora_merge(L, a1, 1, NULL, NULL) != PST_OK) failures++;
    EXPECT(pst_lora_merge(L, a1, 1, NULL, NULL), PST_ERR_MISUSE, "pst_lora_merge");
    EXPECT(pst_lora_delete_adapter(L, "a"), PST_ERR_MISUSE, "pst_lora_delete_adapter");
    EXPECT(pst_lora_delete_adapter(L, "zz"), PST_ERR_NOT_FOUND, "pst_lora_delete_adapter");
    EXPECT(pst_lora_delete_adapter(NULL, "a"), PST_ERR_INVALID_ARG, "pst_lora_delete_adapter");
    pst_lora_free(L);
    pst_lora_free(NULL);

    /* ---- LoRA as a function over borrowed memory */
    L = NULL;
    EXPECT(pst_lora_create_dense_borrowed(NULL, 48, 6, 8, &L), PST_ERR_INVALID_ARG, "pst_lora_create_dense_borrowed");
    EXPECT(pst_lora_create_dense_borrowed(w, 47, 6, 8, &L), PST_ERR_INVALID_ARG, "pst_lora_create_dense_borrowed");
    EXPECT(pst_lora_create_dense_borrowed(w, 48, 6, -8, &L), PST_ERR_INVALID_ARG, "pst_lora_create_dense_borrowed");
    EXPECT(pst_lora_create_dense_borrowed(w, 48, 6, 8, NULL), PST_ERR_INVALID_ARG, "pst_lora_create_dense_borrowed");
    w[5] = NAN;
    EXPECT(pst_lora_create_dense_borrowed(w, 48, 6, 8, &L), PST_ERR_NONFINITE, "pst_lora_create_dense_borrowed");
    w[5] = 0.5f;
    if (pst_lora_create_dense_borrowed(w, 48, 6, 8, &L) != PST_OK) { printf("FAIL borrowed: %s\n", pst_last_error()); return 1; }
    EXPECT(pst_lora_apply_args_init(NULL), PST_ERR_INVALID_ARG, "pst_lora_apply_args_init");
    pst_lora_apply_args aa;
    memset(&aa, 0, sizeof aa);
    float la[2 * 8], lb[6 * 2], tt[2 * 2], ga[2 * 8], gb[6 * 2];
    for (int i = 0; i < 16; i++) la[i] = 0.01f * (float)i;
    for (int i = 0; i < 12; i++) lb[i] = 0.02f * (float)i;
    EXPECT(pst_lora_apply(L, &aa, yout, 12, NULL), PST_ERR_INVALID_ARG, "pst_lora_apply"); /* struct_size 0 */
    if (pst_lora_apply_args_init(&aa) != PST_OK) failures++;
    aa.m = 2; aa.x = xin;
    EXPECT(pst_lora_apply(NULL, &aa, yout, 12, NULL), PST_ERR_INVALID_ARG, "pst_lora_apply");
    EXPECT(pst_lora_apply(L, NULL, yout, 12, NULL), PST_ERR_INVALID_ARG, "pst_lora_apply");
    EXPECT(pst_lora_apply(L, &aa, NULL, 12, NULL), PST_ERR_INVALID_ARG, "pst_lora_apply");
    EXPECT(pst_lora_apply(L, &aa, yout, 11, NULL), PST_ERR_INVALID_ARG, "pst_lora_apply");
    aa.m = 0;
    EXPECT(pst_lora_apply(L, &aa, yout, 12, NULL), PST_ERR_INVALID_ARG, "pst_lora_apply");
    aa.m = 2; aa.x = NULL;
    EXPECT(pst_lora_apply(L, &aa, yout, 12, NULL), PST_ERR_INVALID_ARG, "pst_lora_apply");
    aa.x = xin; aa.lora_a = la;
    EXPECT(pst_lora_apply(L, &aa, yout, 12, NULL), PST_ERR_INVALID_ARG, "pst_lora_apply"); /* lora_b NULL */
    aa.lora_b = lb; aa.r = 7;
    EXPECT(pst_lora_apply(L, &aa, yout, 12, NULL), PST_ERR_INVALID_ARG, "pst_lora_apply"); /* r > min(in, out) */
    aa.r = 2; aa.scaling = INFINITY;
    EXPECT(pst_lora_apply(L, &aa, yout, 12, NULL), PST_ERR_INVALID_ARG, "pst_lora_apply");
    aa.scaling = 2.0f;
    if (pst_lora_apply(L, &aa, yout, 12, tt) != PST_OK) { printf("FAIL apply: %s\n", pst_last_error()); failures++; }
    EXPECT(pst_lora_apply_backward(NULL, &aa, yout, 12, tt, dxo, NULL, ga, gb, NULL), PST_ERR_INVALID_ARG, "pst_lora_apply_backward");
    EXPECT(pst_lora_apply_backward(L, NULL, yout, 12, tt, dxo, NULL, ga, gb, NULL), PST_ERR_INVALID_ARG, "pst_lora_apply_backward");
    EXPECT(pst_lora_apply_backward(L, &aa, NULL, 12, tt, dxo, NULL, ga, gb, NULL), PST_ERR_INVALID_ARG, "pst_lora_apply_backward");
    EXPECT(pst_lora_apply_backward(L, &aa, yout, 11, tt, dxo, NULL, ga, gb, NULL), PST_ERR_INVALID_ARG, "pst_lora_apply_backward");
    EXPECT(pst_lora_apply_backward(L, &aa, yout, 12, tt, dxo, ga, ga, gb, NULL), PST_ERR_INVALID_ARG, "pst_lora_apply_backward"); /* dx_lora without x_lora */
    aa.x = NULL;
    EXPECT(pst_lora_apply_backward(L, &aa, yout, 12, tt, dxo, NULL, ga, gb, NULL), PST_ERR_INVALID_ARG, "pst_lora_apply_backward"); /* grad_a without input */
    aa.x = xin;
    if (pst_lora_apply_backward(L, &aa, yout, 12, NULL, dxo, NULL, ga, gb, b6) != PST_OK) { printf("FAIL apply_backward: %s\n", pst_last_error()); failures++; }
    aa.lora_a = NULL; aa.lora_b = NULL;
    EXPECT(pst_lora_apply_backward(L, &aa, yout, 12, NULL, dxo, NULL, ga, NULL, NULL), PST_ERR_INVALID_ARG, "pst_lora_apply_backward"); /* grad_a without a branch */
    const char *a2[1] = {"a"};
    if (pst_lora_params_init(&lp) != PST_OK) failures++;
    lp.r = 2;
    if (pst_lora_add_adapter(L, "a", &lp) != PST_OK) { printf("FAIL add: %s\n", pst_last_error()); failures++; }
    EXPECT(pst_lora_merge(L, a2, 1, NULL, NULL), PST_ERR_MISUSE, "pst_lora_merge"); /* borrowed dense base */
    pst_lora_free(L);

    /* ---- pager */
    pst_pager *P = NULL;
    pst_paged *B = NULL;
    EXPECT(pst_pager_create(0, 0, NULL, &P), PST_ERR_INVALID_ARG, "pst_pager_create");
    EXPECT(pst_pager_create(1 << 20, 1000, NULL, &P), PST_ERR_INVALID_ARG, "pst_pager_create");
    EXPECT(pst_pager_create(1 << 20, -4096, NULL, &P), PST_ERR_INVALID_ARG, "pst_pager_create");
    EXPECT(pst_pager_create(1 << 20, 0, NULL, NULL), PST_ERR_INVALID_ARG, "pst_pager_create");
    EXPECT(pst_pager_create(8 << 20, 1 << 20, "/nonexistent/dir", &P), PST_ERR_IO, "pst_pager_create");
    if (pst_pager_create(8 << 20, 1 << 20, NULL, &P) != PST_OK) { printf("FAIL pager: %s\n", pst_last_error()); return 1; }
    EXPECT(pst_pager_set_budget(P, 0), PST_ERR_INVALID_ARG, "pst_pager_set_budget");
    EXPECT(pst_pager_set_budget(NULL, 1 << 20), PST_ERR_INVALID_ARG, "pst_pager_set_budget");
    pst_pager_stats ps;
    memset(&ps, 0, sizeof ps);
    EXPECT(pst_pager_get_stats(P, &ps), PST_ERR_INVALID_ARG, "pst_pager_get_stats");
    EXPECT(pst_pager_get_stats(P, NULL), PST_ERR_INVALID_ARG, "pst_pager_get_stats");
    EXPECT(pst_paged_alloc(P, 0, &B), PST_ERR_INVALID_ARG, "pst_paged_alloc");
    EXPECT(pst_paged_alloc(NULL, 10, &B), PST_ERR_INVALID_ARG, "pst_paged_alloc");
    EXPECT(pst_paged_alloc(P, 10, NULL), PST_ERR_INVALID_ARG, "pst_paged_alloc");
    if (pst_paged_alloc(P, 3 << 20, &B) != PST_OK) failures++;
    void *ptr = NULL;
    EXPECT(pst_paged_acquire(B, 0, 4 << 20, true, &ptr), PST_ERR_INVALID_ARG, "pst_paged_acquire");
    EXPECT(pst_paged_acquire(B, -1, 10, true, &ptr), PST_ERR_INVALID_ARG, "pst_paged_acquire");
    EXPECT(pst_paged_acquire(B, 0, 10, true, NULL), PST_ERR_INVALID_ARG, "pst_paged_acquire");
    EXPECT(pst_paged_acquire(NULL, 0, 10, true, &ptr), PST_ERR_INVALID_ARG, "pst_paged_acquire");
    EXPECT(pst_paged_release(B, 0, 10), PST_ERR_MISUSE, "pst_paged_release");
    EXPECT(pst_paged_release(NULL, 0, 10), PST_ERR_INVALID_ARG, "pst_paged_release");
    EXPECT(pst_paged_prefetch(NULL), PST_ERR_INVALID_ARG, "pst_paged_prefetch");
    pst_paged *big = NULL;
    if (pst_paged_alloc(P, 64 << 20, &big) == PST_OK) {
        EXPECT(pst_paged_acquire(big, 0, 64 << 20, true, &ptr), PST_ERR_OUT_OF_MEMORY, "pst_paged_acquire");
        pst_paged_free(big);
    }
    pst_paged_free(B);
    pst_paged_free(NULL);
    pst_pager_free(P);
    pst_pager_free(NULL);

    /* ---- optimizers */
    pst_adamw *O = NULL;
    pst_adamw_params ap;
    EXPECT(pst_adamw_params_init(NULL), PST_ERR_INVALID_ARG, "pst_adamw_params_init");
    if (pst_adamw_params_init(&ap) != PST_OK) failures++;
    ap.lr = -1;
    EXPECT(pst_adamw_create(&ap, NULL, &O), PST_ERR_INVALID_ARG, "pst_adamw_create");
    ap.lr = 1e-3; ap.beta1 = 1.5;
    EXPECT(pst_adamw_create(&ap, NULL, &O), PST_ERR_INVALID_ARG, "pst_adamw_create");
    ap.beta1 = 0.9; ap.state_format = 7;
    EXPECT(pst_adamw_create(&ap, NULL, &O), PST_ERR_INVALID_ARG, "pst_adamw_create");
    ap.state_format = PST_OPTIM_STATE_8BIT; ap.struct_size = 1;
    EXPECT(pst_adamw_create(&ap, NULL, &O), PST_ERR_INVALID_ARG, "pst_adamw_create");
    EXPECT(pst_adamw_create(NULL, NULL, NULL), PST_ERR_INVALID_ARG, "pst_adamw_create");
    if (pst_adamw_create(NULL, NULL, &O) != PST_OK) { printf("FAIL adamw: %s\n", pst_last_error()); return 1; }
    float prm[8] = {0}, grd[8] = {0};
    EXPECT(pst_adamw_add_param(O, NULL, grd, 8, NULL), PST_ERR_INVALID_ARG, "pst_adamw_add_param");
    EXPECT(pst_adamw_add_param(O, prm, NULL, 8, NULL), PST_ERR_INVALID_ARG, "pst_adamw_add_param");
    EXPECT(pst_adamw_add_param(O, prm, grd, 0, NULL), PST_ERR_INVALID_ARG, "pst_adamw_add_param");
    EXPECT(pst_adamw_add_param(NULL, prm, grd, 8, NULL), PST_ERR_INVALID_ARG, "pst_adamw_add_param");
    if (pst_adamw_add_param(O, prm, grd, 8, NULL) != PST_OK) failures++;
    EXPECT(pst_adamw_step(NULL), PST_ERR_INVALID_ARG, "pst_adamw_step");
    EXPECT(pst_adamw_zero_grad(NULL), PST_ERR_INVALID_ARG, "pst_adamw_zero_grad");
    EXPECT(pst_adamw_clip_grad_norm(O, -1, NULL), PST_ERR_INVALID_ARG, "pst_adamw_clip_grad_norm");
    EXPECT(pst_adamw_clip_grad_norm(NULL, 1, NULL), PST_ERR_INVALID_ARG, "pst_adamw_clip_grad_norm");
    EXPECT(pst_adamw_set_lr(O, NAN), PST_ERR_INVALID_ARG, "pst_adamw_set_lr");
    EXPECT(pst_adamw_set_lr(NULL, 1), PST_ERR_INVALID_ARG, "pst_adamw_set_lr");
    int64_t ssz = 0, wr = 0;
    EXPECT(pst_adamw_state_size(O, NULL), PST_ERR_INVALID_ARG, "pst_adamw_state_size");
    if (pst_adamw_state_size(O, &ssz) != PST_OK) failures++;
    unsigned char sbuf[4096];
    EXPECT(pst_adamw_save_state(O, sbuf, 3, &wr), PST_ERR_INVALID_ARG, "pst_adamw_save_state");
    EXPECT(pst_adamw_save_state(O, NULL, 4096, &wr), PST_ERR_INVALID_ARG, "pst_adamw_save_state");
    if (ssz <= (int64_t)sizeof sbuf && pst_adamw_save_state(O, sbuf, sizeof sbuf, &wr) == PST_OK) {
        sbuf[wr / 2] ^= 0x5A;
        EXPECT(pst_adamw_load_state(O, sbuf, (ptrdiff_t)wr), PST_ERR_CORRUPT, "pst_adamw_load_state");
        EXPECT(pst_adamw_load_state(O, sbuf, 5), PST_ERR_CORRUPT, "pst_adamw_load_state");
    } else failures++;
    EXPECT(pst_adamw_load_state(O, NULL, 5), PST_ERR_INVALID_ARG, "pst_adamw_load_state");
    double mult = 0;
    EXPECT(pst_lr_multiplier(99, 0, 0, 0, 0.5, &mult), PST_ERR_INVALID_ARG, "pst_lr_multiplier");
    EXPECT(pst_lr_multiplier(PST_LR_COSINE, 0, 10, 5, 0.5, &mult), PST_ERR_INVALID_ARG, "pst_lr_multiplier");
    EXPECT(pst_lr_multiplier(PST_LR_LINEAR, 0, 1, 5, 0.5, NULL), PST_ERR_INVALID_ARG, "pst_lr_multiplier");
    pst_adamw_free(O);
    pst_adamw_free(NULL);

    /* ---- files */
    pst_safetensors *S = NULL;
    char tmpl[] = "/tmp/pst_bad_input_XXXXXX";
    char *dir = mkdtemp(tmpl);
    char path[512], junk[512];
    if (!dir) { printf("FAIL mkdtemp\n"); return 1; }
    snprintf(path, sizeof path, "%s/t.safetensors", dir);
    snprintf(junk, sizeof junk, "%s/junk.safetensors", dir);
    FILE *jf = fopen(junk, "wb");
    if (jf) { fputs("\x10\x00\x00\x00\x00\x00\x00\x00{not json at all}", jf); fclose(jf); }
    EXPECT(pst_safetensors_open(NULL, &S), PST_ERR_INVALID_ARG, "pst_safetensors_open");
    EXPECT(pst_safetensors_open(path, NULL), PST_ERR_INVALID_ARG, "pst_safetensors_open");
    EXPECT(pst_safetensors_open(path, &S), PST_ERR_NOT_FOUND, "pst_safetensors_open");
    EXPECT(pst_safetensors_open(junk, &S), PST_ERR_CORRUPT, "pst_safetensors_open");
    float tdata[6] = {1, 2, 3, 4, 5, 6};
    pst_tensor tw;
    memset(&tw, 0, sizeof tw);
    tw.struct_size = sizeof tw; tw.name = "w"; tw.dtype = "F32"; tw.ndim = 2; tw.shape[0] = 2; tw.shape[1] = 3;
    tw.data = tdata; tw.byte_count = 24;
    const char *mk[1] = {"format"}, *mv[1] = {"pt"};
    EXPECT(pst_safetensors_write(NULL, &tw, 1, NULL, NULL, 0), PST_ERR_INVALID_ARG, "pst_safetensors_write");
    EXPECT(pst_safetensors_write(path, NULL, 1, NULL, NULL, 0), PST_ERR_INVALID_ARG, "pst_safetensors_write");
    EXPECT(pst_safetensors_write(path, &tw, 1, NULL, NULL, 1), PST_ERR_INVALID_ARG, "pst_safetensors_write");
    tw.byte_count = 20;
    EXPECT(pst_safetensors_write(path, &tw, 1, NULL, NULL, 0), PST_ERR_INVALID_ARG, "pst_safetensors_write");
    tw.byte_count = 24; tw.dtype = "F33";
    EXPECT(pst_safetensors_write(path, &tw, 1, NULL, NULL, 0), PST_ERR_INVALID_ARG, "pst_safetensors_write");
    tw.dtype = "F32"; tw.ndim = 99;
    EXPECT(pst_safetensors_write(path, &tw, 1, NULL, NULL, 0), PST_ERR_INVALID_ARG, "pst_safetensors_write");
    tw.ndim = 2;
    if (pst_safetensors_write(path, &tw, 1, mk, mv, 1) != PST_OK) { printf("FAIL write: %s\n", pst_last_error()); failures++; }
    if (pst_safetensors_open(path, &S) != PST_OK) { printf("FAIL open: %s\n", pst_last_error()); return 1; }
    pst_tensor tr;
    memset(&tr, 0, sizeof tr);
    EXPECT(pst_safetensors_tensor_at(S, 0, &tr), PST_ERR_INVALID_ARG, "pst_safetensors_tensor_at"); /* struct_size 0 */
    tr.struct_size = sizeof tr;
    EXPECT(pst_safetensors_tensor_at(S, 1, &tr), PST_ERR_INVALID_ARG, "pst_safetensors_tensor_at");
    EXPECT(pst_safetensors_tensor_at(NULL, 0, &tr), PST_ERR_INVALID_ARG, "pst_safetensors_tensor_at");
    EXPECT(pst_safetensors_find(S, "nope", &tr), PST_ERR_NOT_FOUND, "pst_safetensors_find");
    EXPECT(pst_safetensors_find(S, NULL, &tr), PST_ERR_INVALID_ARG, "pst_safetensors_find");
    infallible("round trip through the file", pst_safetensors_find(S, "w", &tr) == PST_OK && tr.byte_count == 24 &&
               memcmp(tr.data, tdata, 24) == 0 && strcmp(tr.dtype, "F32") == 0);
    EXPECT(pst_safetensors_count(NULL, NULL, NULL), PST_ERR_INVALID_ARG, "pst_safetensors_count");
    const char *key = NULL, *val = NULL;
    EXPECT(pst_safetensors_metadata_at(S, 5, &key, &val), PST_ERR_INVALID_ARG, "pst_safetensors_metadata_at");
    EXPECT(pst_safetensors_metadata_at(S, 0, NULL, &val), PST_ERR_INVALID_ARG, "pst_safetensors_metadata_at");
    /* the _v2 readers: strings with lengths */
    pst_string sname = {NULL, 0}, skey = {NULL, 0}, sval = {NULL, 0};
    EXPECT(pst_safetensors_tensor_at_v2(NULL, 0, &tr, &sname), PST_ERR_INVALID_ARG, "pst_safetensors_tensor_at_v2");
    EXPECT(pst_safetensors_tensor_at_v2(S, 0, NULL, &sname), PST_ERR_INVALID_ARG, "pst_safetensors_tensor_at_v2");
    EXPECT(pst_safetensors_tensor_at_v2(S, 0, &tr, NULL), PST_ERR_INVALID_ARG, "pst_safetensors_tensor_at_v2");
    EXPECT(pst_safetensors_tensor_at_v2(S, -1, &tr, &sname), PST_ERR_INVALID_ARG, "pst_safetensors_tensor_at_v2");
    EXPECT(pst_safetensors_tensor_at_v2(S, 1, &tr, &sname), PST_ERR_INVALID_ARG, "pst_safetensors_tensor_at_v2");
    infallible("pst_safetensors_tensor_at_v2 gives the name with its length",
               pst_safetensors_tensor_at_v2(S, 0, &tr, &sname) == PST_OK && sname.length == 1 && memcmp(sname.data, "w", 2) == 0 &&
               tr.name == sname.data && tr.byte_count == 24);
    EXPECT(pst_safetensors_find_v2(NULL, "w", 1, &tr), PST_ERR_INVALID_ARG, "pst_safetensors_find_v2");
    EXPECT(pst_safetensors_find_v2(S, NULL, 1, &tr), PST_ERR_INVALID_ARG, "pst_safetensors_find_v2");
    EXPECT(pst_safetensors_find_v2(S, "w", -1, &tr), PST_ERR_INVALID_ARG, "pst_safetensors_find_v2");
    EXPECT(pst_safetensors_find_v2(S, "w", INT64_MAX, &tr), PST_ERR_INVALID_ARG, "pst_safetensors_find_v2");
    EXPECT(pst_safetensors_find_v2(S, "w", 1, NULL), PST_ERR_INVALID_ARG, "pst_safetensors_find_v2");
    EXPECT(pst_safetensors_find_v2(S, "\xff", 1, &tr), PST_ERR_INVALID_ARG, "pst_safetensors_find_v2"); /* not UTF-8 */
    EXPECT(pst_safetensors_find_v2(S, "w\0x", 3, &tr), PST_ERR_NOT_FOUND, "pst_safetensors_find_v2");
    infallible("pst_safetensors_find_v2 takes the length, not a NUL", pst_safetensors_find_v2(S, "wx", 1, &tr) == PST_OK && tr.byte_count == 24);
    EXPECT(pst_safetensors_metadata_at_v2(NULL, 0, &skey, &sval), PST_ERR_INVALID_ARG, "pst_safetensors_metadata_at_v2");
    EXPECT(pst_safetensors_metadata_at_v2(S, 0, NULL, &sval), PST_ERR_INVALID_ARG, "pst_safetensors_metadata_at_v2");
    EXPECT(pst_safetensors_metadata_at_v2(S, 0, &skey, NULL), PST_ERR_INVALID_ARG, "pst_safetensors_metadata_at_v2");
    EXPECT(pst_safetensors_metadata_at_v2(S, 1, &skey, &sval), PST_ERR_INVALID_ARG, "pst_safetensors_metadata_at_v2");
    EXPECT(pst_safetensors_metadata_at_v2(S, -1, &skey, &sval), PST_ERR_INVALID_ARG, "pst_safetensors_metadata_at_v2");
    infallible("pst_safetensors_metadata_at_v2 round trip",
               pst_safetensors_metadata_at_v2(S, 0, &skey, &sval) == PST_OK && skey.length == 6 && sval.length == 2 &&
               memcmp(skey.data, "format", 7) == 0 && memcmp(sval.data, "pt", 3) == 0);
    pst_safetensors_free(S);
    pst_safetensors_free(NULL);

    /* pst_safetensors_write_v2: names and metadata with lengths (NUL bytes inside) */
    char path2[512];
    snprintf(path2, sizeof path2, "%s/nul.safetensors", dir);
    pst_string wn[1] = {{"w\0v", 3}}, wk[2] = {{"k\0", 2}, {"format", 6}}, wv[2] = {{"v", 1}, {"pt", 2}};
    pst_string neg = {"w", -1}, nulldata = {NULL, 4}, notutf8 = {"\xc3(", 2}, huge = {"w", INT64_MAX};
    EXPECT(pst_safetensors_write_v2(NULL, &tw, wn, 1, wk, wv, 2), PST_ERR_INVALID_ARG, "pst_safetensors_write_v2");
    EXPECT(pst_safetensors_write_v2(path2, NULL, wn, 1, wk, wv, 2), PST_ERR_INVALID_ARG, "pst_safetensors_write_v2");
    EXPECT(pst_safetensors_write_v2(path2, &tw, wn, -1, wk, wv, 2), PST_ERR_INVALID_ARG, "pst_safetensors_write_v2");
    EXPECT(pst_safetensors_write_v2(path2, &tw, wn, INT64_MAX, wk, wv, 2), PST_ERR_INVALID_ARG, "pst_safetensors_write_v2");
    EXPECT(pst_safetensors_write_v2(path2, &tw, wn, 1, NULL, wv, 2), PST_ERR_INVALID_ARG, "pst_safetensors_write_v2");
    EXPECT(pst_safetensors_write_v2(path2, &tw, wn, 1, wk, NULL, 2), PST_ERR_INVALID_ARG, "pst_safetensors_write_v2");
    EXPECT(pst_safetensors_write_v2(path2, &tw, wn, 1, wk, wv, -2), PST_ERR_INVALID_ARG, "pst_safetensors_write_v2");
    EXPECT(pst_safetensors_write_v2(path2, &tw, wn, 1, wk, wv, INT64_MAX), PST_ERR_INVALID_ARG, "pst_safetensors_write_v2");
    EXPECT(pst_safetensors_write_v2(path2, &tw, &neg, 1, wk, wv, 2), PST_ERR_INVALID_ARG, "pst_safetensors_write_v2");
    EXPECT(pst_safetensors_write_v2(path2, &tw, &nulldata, 1, wk, wv, 2), PST_ERR_INVALID_ARG, "pst_safetensors_write_v2");
    EXPECT(pst_safetensors_write_v2(path2, &tw, &notutf8, 1, wk, wv, 2), PST_ERR_INVALID_ARG, "pst_safetensors_write_v2");
    EXPECT(pst_safetensors_write_v2(path2, &tw, &huge, 1, wk, wv, 2), PST_ERR_INVALID_ARG, "pst_safetensors_write_v2");
    EXPECT(pst_safetensors_write_v2(path2, &tw, wn, 1, &neg, wv, 1), PST_ERR_INVALID_ARG, "pst_safetensors_write_v2");
    EXPECT(pst_safetensors_write_v2(path2, &tw, wn, 1, wk, &nulldata, 1), PST_ERR_INVALID_ARG, "pst_safetensors_write_v2");
    pst_string twice[2] = {{"k", 1}, {"k", 1}};
    EXPECT(pst_safetensors_write_v2(path2, &tw, wn, 1, twice, wv, 2), PST_ERR_INVALID_ARG, "pst_safetensors_write_v2");
    tw.dtype = "F33";
    EXPECT(pst_safetensors_write_v2(path2, &tw, wn, 1, wk, wv, 2), PST_ERR_INVALID_ARG, "pst_safetensors_write_v2");
    tw.dtype = "F32";
    infallible("pst_safetensors_write_v2 left no file behind after failures", access(path2, F_OK) != 0);
    if (pst_safetensors_write_v2(path2, &tw, wn, 1, wk, wv, 2) != PST_OK) { printf("FAIL write_v2: %s\n", pst_last_error()); failures++; }
    if (pst_safetensors_open(path2, &S) != PST_OK) { printf("FAIL open: %s\n", pst_last_error()); return 1; }
    EXPECT(pst_safetensors_tensor_at(S, 0, &tr), PST_ERR_UNSUPPORTED, "pst_safetensors_tensor_at"); /* "w\0v": never cut to "w" */
    EXPECT(pst_safetensors_metadata_at(S, 0, &key, &val), PST_ERR_UNSUPPORTED, "pst_safetensors_metadata_at");
    infallible("names and metadata with NUL bytes round trip through the file",
               pst_safetensors_tensor_at_v2(S, 0, &tr, &sname) == PST_OK && sname.length == 3 && memcmp(sname.data, "w\0v", 4) == 0 &&
               pst_safetensors_metadata_at_v2(S, 0, &skey, &sval) == PST_OK && skey.length == 2 && memcmp(skey.data, "k\0", 3) == 0 &&
               pst_safetensors_metadata_at(S, 1, &key, &val) == PST_OK && strcmp(val, "pt") == 0 &&
               pst_safetensors_find_v2(S, "w\0v", 3, &tr) == PST_OK && pst_safetensors_find(S, "w", &tr) == PST_ERR_NOT_FOUND);
    pst_safetensors_free(S);

    pst_lora *PL = NULL;
    if (pst_lora_create_dense(w, 48, 6, 8, NULL, &PL) != PST_OK) failures++;
    pst_lora_params lq;
    if (pst_lora_params_init(&lq) != PST_OK) failures++;
    lq.r = 2;
    if (pst_lora_add_adapter(PL, "a", &lq) != PST_OK) failures++;
    pst_lora *pls[1] = {PL};
    const char *mods[1] = {"model.layers.0.self_attn.q_proj"};
    char adir[512];
    snprintf(adir, sizeof adir, "%s/adapter", dir);
    EXPECT(pst_peft_save(NULL, "a", pls, mods, 1, NULL), PST_ERR_INVALID_ARG, "pst_peft_save");
    EXPECT(pst_peft_save(adir, "zz", pls, mods, 1, NULL), PST_ERR_NOT_FOUND, "pst_peft_save");
    EXPECT(pst_peft_save(adir, "a", pls, mods, 0, NULL), PST_ERR_INVALID_ARG, "pst_peft_save");
    EXPECT(pst_peft_save(adir, "a", NULL, mods, 1, NULL), PST_ERR_INVALID_ARG, "pst_peft_save");
    if (pst_peft_save(adir, "a", pls, mods, 1, "base") != PST_OK) { printf("FAIL peft save: %s\n", pst_last_error()); failures++; }
    EXPECT(pst_peft_load(adir, pls, mods, 1, "a"), PST_ERR_EXISTS, "pst_peft_load");
    EXPECT(pst_peft_load(dir, pls, mods, 1, "b"), PST_ERR_NOT_FOUND, "pst_peft_load");
    EXPECT(pst_peft_load(adir, pls, mods, 1, NULL), PST_ERR_INVALID_ARG, "pst_peft_load");
    const char *wrong[1] = {"model.layers.7.mlp.up_proj"};
    EXPECT(pst_peft_load(adir, pls, wrong, 1, "c"), PST_ERR_NOT_FOUND, "pst_peft_load");
    infallible("PEFT save + load round trip", pst_peft_load(adir, pls, mods, 1, "d") == PST_OK);
    pst_lora_free(PL);

    pst_quant *bq = NULL;
    float qw[64 * 4];
    for (int i = 0; i < 256; i++) qw[i] = (float)(i % 13) * 0.01f;
    int64_t qshape[2] = {4, 64};
    if (pst_quant_create_4bit(qw, PST_DTYPE_F32, qshape, 2, 64, PST_QUANT_NF4, true, &bq) != PST_OK) failures++;
    pst_quant *bqs[1] = {bq};
    const char *bmods[1] = {"proj"};
    char bpath[512];
    snprintf(bpath, sizeof bpath, "%s/bnb.safetensors", dir);
    EXPECT(pst_bnb_save(NULL, bqs, NULL, bmods, 1), PST_ERR_INVALID_ARG, "pst_bnb_save");
    EXPECT(pst_bnb_save(bpath, bqs, NULL, bmods, 0), PST_ERR_INVALID_ARG, "pst_bnb_save");
    EXPECT(pst_bnb_save(bpath, NULL, NULL, bmods, 1), PST_ERR_INVALID_ARG, "pst_bnb_save");
    if (pst_bnb_save(bpath, bqs, NULL, bmods, 1) != PST_OK) { printf("FAIL bnb save: %s\n", pst_last_error()); failures++; }
    pst_quant *lq2 = NULL;
    EXPECT(pst_bnb_load(bpath, "other", &lq2, NULL, 0, NULL), PST_ERR_NOT_FOUND, "pst_bnb_load");
    EXPECT(pst_bnb_load(junk, "proj", &lq2, NULL, 0, NULL), PST_ERR_CORRUPT, "pst_bnb_load");
    EXPECT(pst_bnb_load(bpath, "proj", NULL, NULL, 0, NULL), PST_ERR_INVALID_ARG, "pst_bnb_load");
    int32_t hb = -1;
    infallible("bitsandbytes checkpoint round trip", pst_bnb_load(bpath, "proj", &lq2, NULL, 0, &hb) == PST_OK && hb == 0 && lq2);
    pst_quant_free(lq2);
    pst_quant_free(bq);

    /* ---- language models (argv[1]: Tests/fixtures/llm/tiny_llama.gguf) */
    {
    const char *gguf = argc > 1 ? argv[1] : "Tests/fixtures/llm/tiny_llama.gguf";
    pst_llm *M = NULL;
    pst_llm_load_params lp;
    EXPECT(pst_llm_load_params_init(NULL), PST_ERR_INVALID_ARG, "pst_llm_load_params_init");
    if (pst_llm_load_params_init(&lp) != PST_OK) failures++;
    EXPECT(pst_llm_load(NULL, &lp, &M), PST_ERR_INVALID_ARG, "pst_llm_load");
    EXPECT(pst_llm_load(gguf, &lp, NULL), PST_ERR_INVALID_ARG, "pst_llm_load");
    EXPECT(pst_llm_load("/nonexistent/model.gguf", &lp, &M), PST_ERR_NOT_FOUND, "pst_llm_load");
    EXPECT(pst_llm_load(junk, &lp, &M), PST_ERR_CORRUPT, "pst_llm_load");
    EXPECT(pst_llm_load(dir, &lp, &M), PST_ERR_NOT_FOUND, "pst_llm_load");   /* a directory without config.json */
    lp.blocksize = 48;
    EXPECT(pst_llm_load(gguf, &lp, &M), PST_ERR_INVALID_ARG, "pst_llm_load");
    lp.blocksize = 64; lp.quant_type = 9;
    EXPECT(pst_llm_load(gguf, &lp, &M), PST_ERR_INVALID_ARG, "pst_llm_load");
    lp.quant_type = PST_QUANT_NF4; lp.pretokenizer = 9;
    EXPECT(pst_llm_load(gguf, &lp, &M), PST_ERR_INVALID_ARG, "pst_llm_load");
    lp.pretokenizer = PST_PRETOK_AUTO; lp.struct_size = 3;
    EXPECT(pst_llm_load(gguf, &lp, &M), PST_ERR_INVALID_ARG, "pst_llm_load");
    infallible("pst_llm_load(tiny_llama.gguf)", pst_llm_load(gguf, NULL, &M) == PST_OK && M);
    if (!M) { printf("FAIL cannot load %s: %s\n", gguf, pst_last_error()); return 1; }
    pst_llm_info li;
    memset(&li, 0, sizeof li);
    EXPECT(pst_llm_get_info(M, &li), PST_ERR_INVALID_ARG, "pst_llm_get_info");     /* struct_size 0 */
    EXPECT(pst_llm_get_info(NULL, &li), PST_ERR_INVALID_ARG, "pst_llm_get_info");
    EXPECT(pst_llm_set_compute_dtype(NULL, PST_DTYPE_F32), PST_ERR_INVALID_ARG, "pst_llm_set_compute_dtype");
    EXPECT(pst_llm_set_compute_dtype(M, PST_DTYPE_I8), PST_ERR_INVALID_ARG, "pst_llm_set_compute_dtype");
    if (pst_host_isa() < PST_ISA_AVX512_BF16)
        EXPECT(pst_llm_set_compute_dtype(M, PST_DTYPE_BF16), PST_ERR_UNSUPPORTED_CPU, "pst_llm_set_compute_dtype");
    infallible("pst_llm_set_compute_dtype(M, PST_DTYPE_F32)", pst_llm_set_compute_dtype(M, PST_DTYPE_F32) == PST_OK);
    li.struct_size = sizeof li;
    infallible("pst_llm_get_info", pst_llm_get_info(M, &li) == PST_OK && li.layers == 1 && li.vocab == 264 && li.quantized == 1);
    int32_t ids[64];
    int64_t nids = 0;
    EXPECT(pst_llm_tokenize(NULL, "the", 3, 0, ids, 64, &nids), PST_ERR_INVALID_ARG, "pst_llm_tokenize");
    EXPECT(pst_llm_tokenize(M, "the", 3, 0, ids, 64, NULL), PST_ERR_INVALID_ARG, "pst_llm_tokenize");
    EXPECT(pst_llm_tokenize(M, NULL, 3, 0, ids, 64, &nids), PST_ERR_INVALID_ARG, "pst_llm_tokenize");
    EXPECT(pst_llm_tokenize(M, "\xff\xfe", 2, 0, ids, 64, &nids), PST_ERR_INVALID_ARG, "pst_llm_tokenize");
    EXPECT(pst_llm_tokenize(M, "the", 3, 64, ids, 64, &nids), PST_ERR_INVALID_ARG, "pst_llm_tokenize");
    EXPECT(pst_llm_tokenize(M, "the cat", 7, 0, ids, 1, &nids), PST_ERR_INVALID_ARG, "pst_llm_tokenize");
    int64_t sized = nids;
    infallible("pst_llm_tokenize sizing call reports the count", sized > 1 && sized <= 7);
    infallible("pst_llm_tokenize", pst_llm_tokenize(M, "the cat", 7, PST_TOKENIZE_PARSE_SPECIAL, ids, 64, &nids) == PST_OK && nids == sized);
    EXPECT(pst_llm_chat_prompt(M, NULL, NULL, ids, 64, &nids), PST_ERR_INVALID_ARG, "pst_llm_chat_prompt");
    EXPECT(pst_llm_chat_prompt(M, "hi", NULL, ids, 2, &nids), PST_ERR_INVALID_ARG, "pst_llm_chat_prompt");
    infallible("pst_llm_chat_prompt", pst_llm_chat_prompt(M, "hi", "be brief", ids, 64, &nids) == PST_OK && nids > 5);
    char txt[256];
    int64_t tlen = 0;
    int32_t badid[1] = {100000};
    EXPECT(pst_llm_detokenize(M, badid, 1, 0, txt, sizeof txt, &tlen), PST_ERR_INVALID_ARG, "pst_llm_detokenize");
    EXPECT(pst_llm_detokenize(M, ids, nids, 0, txt, 2, &tlen), PST_ERR_INVALID_ARG, "pst_llm_detokenize");
    EXPECT(pst_llm_detokenize(M, ids, nids, 7, txt, sizeof txt, &tlen), PST_ERR_INVALID_ARG, "pst_llm_detokenize");
    EXPECT(pst_llm_detokenize(M, ids, nids, 0, txt, sizeof txt, NULL), PST_ERR_INVALID_ARG, "pst_llm_detokenize");
    infallible("pst_llm_detokenize", pst_llm_detokenize(M, ids, nids, 0, txt, sizeof txt, &tlen) == PST_OK && strstr(txt, "hi"));
    static float logits[2 * 8 * 264];
    int32_t seq[16] = {116, 257, 32, 99, 97, 116, 32, 259, 116, 104, 101, 32, 99, 97, 116, 46};
    EXPECT(pst_llm_logits(M, seq, 2, 8, logits, 100), PST_ERR_INVALID_ARG, "pst_llm_logits");
    EXPECT(pst_llm_logits(M, NULL, 2, 8, logits, 2 * 8 * 264), PST_ERR_INVALID_ARG, "pst_llm_logits");
    EXPECT(pst_llm_logits(M, seq, 0, 8, logits, 2 * 8 * 264), PST_ERR_INVALID_ARG, "pst_llm_logits");
    EXPECT(pst_llm_logits(M, badid, 1, 1, logits, 264), PST_ERR_INVALID_ARG, "pst_llm_logits");
    infallible("pst_llm_logits", pst_llm_logits(M, seq, 2, 8, logits, 2 * 8 * 264) == PST_OK && isfinite(logits[100]));
    int32_t longseq[200] = {0};
    static float biglogits[200 * 264];
    EXPECT(pst_llm_logits(M, longseq, 1, 200, biglogits, 200 * 264), PST_ERR_INVALID_ARG, "pst_llm_logits"); /* beyond context 128 */
    float loss = 0;
    EXPECT(pst_llm_backward(M), PST_ERR_MISUSE, "pst_llm_backward");
    EXPECT(pst_llm_backward(NULL), PST_ERR_INVALID_ARG, "pst_llm_backward");
    EXPECT(pst_llm_loss(M, seq, NULL, 2, 8, NULL), PST_ERR_INVALID_ARG, "pst_llm_loss");
    int32_t badlab[16];
    for (int i = 0; i < 16; i++) badlab[i] = seq[i];
    badlab[5] = 9999;
    EXPECT(pst_llm_loss(M, seq, badlab, 2, 8, &loss), PST_ERR_INVALID_ARG, "pst_llm_loss");
    EXPECT(pst_llm_zero_grad(NULL), PST_ERR_INVALID_ARG, "pst_llm_zero_grad");
    EXPECT(pst_llm_set_training(NULL, 1), PST_ERR_INVALID_ARG, "pst_llm_set_training");
    pst_lora_params llp;
    if (pst_lora_params_init(&llp) != PST_OK) failures++;
    EXPECT(pst_llm_add_adapter(M, "a", &llp, "q_proj,nope_proj"), PST_ERR_INVALID_ARG, "pst_llm_add_adapter");
    EXPECT(pst_llm_add_adapter(M, "a", &llp, " , "), PST_ERR_INVALID_ARG, "pst_llm_add_adapter");
    EXPECT(pst_llm_add_adapter(NULL, "a", &llp, NULL), PST_ERR_INVALID_ARG, "pst_llm_add_adapter");
    llp.r = 0;
    EXPECT(pst_llm_add_adapter(M, "a", &llp, NULL), PST_ERR_INVALID_ARG, "pst_llm_add_adapter");
    llp.r = 4;
    infallible("pst_llm_add_adapter", pst_llm_add_adapter(M, "a", &llp, "q_proj, v_proj") == PST_OK);
    EXPECT(pst_llm_add_adapter(M, "a", &llp, NULL), PST_ERR_EXISTS, "pst_llm_add_adapter");
    infallible("pst_llm_set_training", pst_llm_set_training(M, 1) == PST_OK);
    infallible("pst_llm_loss + pst_llm_backward", pst_llm_loss(M, seq, NULL, 2, 8, &loss) == PST_OK && loss > 0 &&
               pst_llm_backward(M) == PST_OK && pst_llm_zero_grad(M) == PST_OK);
    int64_t nmod = 0;
    EXPECT(pst_llm_module_count(M, NULL), PST_ERR_INVALID_ARG, "pst_llm_module_count");
    infallible("pst_llm_module_count", pst_llm_module_count(M, &nmod) == PST_OK && nmod == 7);
    const char *mp = NULL;
    EXPECT(pst_llm_module_at(M, 7, &mp), PST_ERR_INVALID_ARG, "pst_llm_module_at");
    EXPECT(pst_llm_module_at(M, -1, &mp), PST_ERR_INVALID_ARG, "pst_llm_module_at");
    infallible("pst_llm_module_at", pst_llm_module_at(M, 0, &mp) == PST_OK && strcmp(mp, "model.layers.0.self_attn.q_proj") == 0);
    float *td = NULL;
    int64_t tr = 0, tc = 0;
    EXPECT(pst_llm_adapter_tensor(M, "model.layers.0.mlp.up_proj", "a", PST_LORA_A, &td, &tr, &tc), PST_ERR_NOT_FOUND, "pst_llm_adapter_tensor");
    EXPECT(pst_llm_adapter_tensor(M, "model.layers.9.self_attn.q_proj", "a", PST_LORA_A, &td, &tr, &tc), PST_ERR_NOT_FOUND, "pst_llm_adapter_tensor");
    EXPECT(pst_llm_adapter_tensor(M, mp, "a", 7, &td, &tr, &tc), PST_ERR_INVALID_ARG, "pst_llm_adapter_tensor");
    EXPECT(pst_llm_adapter_tensor(M, mp, "a", PST_LORA_A, NULL, &tr, &tc), PST_ERR_INVALID_ARG, "pst_llm_adapter_tensor");
    infallible("pst_llm_adapter_tensor", pst_llm_adapter_tensor(M, mp, "a", PST_LORA_B, &td, &tr, &tc) == PST_OK && tr == 64 && tc == 4);
    EXPECT(pst_llm_set_adapter(M, "zz"), PST_ERR_NOT_FOUND, "pst_llm_set_adapter");
    infallible("pst_llm_set_adapter(NULL) disables all", pst_llm_set_adapter(M, NULL) == PST_OK && pst_llm_set_adapter(M, "a") == PST_OK);
    char adir2[512];
    snprintf(adir2, sizeof adir2, "%s/llm_adapter", dir);
    EXPECT(pst_llm_save_adapter(M, "zz", adir2), PST_ERR_NOT_FOUND, "pst_llm_save_adapter");
    EXPECT(pst_llm_save_adapter(M, "a", NULL), PST_ERR_INVALID_ARG, "pst_llm_save_adapter");
    char underfile[600];
    snprintf(underfile, sizeof underfile, "%s/x", junk);   /* a directory below a regular file */
    EXPECT(pst_llm_save_adapter(M, "a", underfile), PST_ERR_IO, "pst_llm_save_adapter");
    infallible("pst_llm_save_adapter", pst_llm_save_adapter(M, "a", adir2) == PST_OK);
    EXPECT(pst_llm_load_adapter(M, adir2, "a"), PST_ERR_EXISTS, "pst_llm_load_adapter");
    EXPECT(pst_llm_load_adapter(M, dir, "b"), PST_ERR_NOT_FOUND, "pst_llm_load_adapter");
    EXPECT(pst_llm_load_adapter(M, NULL, "b"), PST_ERR_INVALID_ARG, "pst_llm_load_adapter");
    infallible("pst_llm_load_adapter", pst_llm_load_adapter(M, adir2, "b") == PST_OK);
    EXPECT(pst_llm_delete_adapter(M, "zz"), PST_ERR_NOT_FOUND, "pst_llm_delete_adapter");
    EXPECT(pst_llm_delete_adapter(M, NULL), PST_ERR_INVALID_ARG, "pst_llm_delete_adapter");
    infallible("pst_llm_delete_adapter", pst_llm_delete_adapter(M, "b") == PST_OK);
    pst_generate_params gp;
    EXPECT(pst_generate_params_init(NULL), PST_ERR_INVALID_ARG, "pst_generate_params_init");
    if (pst_generate_params_init(&gp) != PST_OK) failures++;
    int32_t gen[16];
    int64_t ngen = 0;
    EXPECT(pst_llm_generate(M, seq, 0, &gp, NULL, NULL, gen, 16, &ngen), PST_ERR_INVALID_ARG, "pst_llm_generate");
    EXPECT(pst_llm_generate(M, badid, 1, &gp, NULL, NULL, gen, 16, &ngen), PST_ERR_INVALID_ARG, "pst_llm_generate");
    EXPECT(pst_llm_generate(M, seq, 8, &gp, NULL, NULL, NULL, 16, &ngen), PST_ERR_INVALID_ARG, "pst_llm_generate");
    gp.max_new_tokens = 1000;   /* beyond the context */
    EXPECT(pst_llm_generate(M, seq, 8, &gp, NULL, NULL, gen, 16, &ngen), PST_ERR_INVALID_ARG, "pst_llm_generate");
    gp.max_new_tokens = 8; gp.temperature = -1;
    EXPECT(pst_llm_generate(M, seq, 8, &gp, NULL, NULL, gen, 16, &ngen), PST_ERR_INVALID_ARG, "pst_llm_generate");
    gp.temperature = 0; gp.stop_count = 2; gp.stop_ids = NULL;
    EXPECT(pst_llm_generate(M, seq, 8, &gp, NULL, NULL, gen, 16, &ngen), PST_ERR_INVALID_ARG, "pst_llm_generate");
    gp.stop_count = 0; gp.stop_at_eos = 0;
    infallible("pst_llm_generate", pst_llm_generate(M, seq, 8, &gp, NULL, NULL, gen, 16, &ngen) == PST_OK && ngen == 8);

    /* trainer */
    char tpath[512], bad8[512], empty[512], jl[512], outdir[512], ckpath[512];
    snprintf(tpath, sizeof tpath, "%s/data.txt", dir);
    snprintf(bad8, sizeof bad8, "%s/latin1.txt", dir);
    snprintf(empty, sizeof empty, "%s/empty.txt", dir);
    snprintf(jl, sizeof jl, "%s/bad.jsonl", dir);
    snprintf(outdir, sizeof outdir, "%s/run", dir);
    FILE *tf = fopen(tpath, "wb");
    if (tf) { for (int i = 0; i < 40; i++) fputs("the cat in the hat sat on the mat. ", tf); fclose(tf); }
    tf = fopen(bad8, "wb");
    if (tf) { fputs("caf\xe9 au lait", tf); fclose(tf); }
    tf = fopen(empty, "wb");
    if (tf) fclose(tf);
    tf = fopen(jl, "wb");
    if (tf) { fputs("{\"instruction\": \"hi\", \"response\": \"hello\"}\n{\"instruction\": 3}\n", tf); fclose(tf); }
    pst_trainer_params tp;
    EXPECT(pst_trainer_params_init(NULL), PST_ERR_INVALID_ARG, "pst_trainer_params_init");
    if (pst_trainer_params_init(&tp) != PST_OK) failures++;
    tp.seq_len = 32; tp.steps = 4; tp.batch_size = 2; tp.checkpoint_every = 2; tp.output_dir = outdir;
    pst_trainer *T = NULL;
    const char *data[1] = {tpath}, *dbad[1] = {bad8}, *dempty[1] = {empty}, *djl[1] = {jl}, *dnull[1] = {NULL};
    const char *dmissing[1] = {"/nonexistent/data.txt"};
    EXPECT(pst_trainer_create(M, data, 0, &tp, &T), PST_ERR_INVALID_ARG, "pst_trainer_create");
    EXPECT(pst_trainer_create(M, dnull, 1, &tp, &T), PST_ERR_INVALID_ARG, "pst_trainer_create");
    EXPECT(pst_trainer_create(M, dbad, 1, &tp, &T), PST_ERR_INVALID_ARG, "pst_trainer_create");
    EXPECT(pst_trainer_create(M, dempty, 1, &tp, &T), PST_ERR_INVALID_ARG, "pst_trainer_create");
    EXPECT(pst_trainer_create(M, dmissing, 1, &tp, &T), PST_ERR_NOT_FOUND, "pst_trainer_create");
    tp.data_format = PST_DATA_JSONL;
    EXPECT(pst_trainer_create(M, djl, 1, &tp, &T), PST_ERR_INVALID_ARG, "pst_trainer_create");
    tp.data_format = 5;
    EXPECT(pst_trainer_create(M, data, 1, &tp, &T), PST_ERR_INVALID_ARG, "pst_trainer_create");
    tp.data_format = PST_DATA_TEXT; tp.seq_len = 4096;   /* beyond the context */
    EXPECT(pst_trainer_create(M, data, 1, &tp, &T), PST_ERR_INVALID_ARG, "pst_trainer_create");
    tp.seq_len = 32; tp.learning_rate = -1;
    EXPECT(pst_trainer_create(M, data, 1, &tp, &T), PST_ERR_INVALID_ARG, "pst_trainer_create");
    tp.learning_rate = 1e-3; tp.schedule = 42;
    EXPECT(pst_trainer_create(M, data, 1, &tp, &T), PST_ERR_INVALID_ARG, "pst_trainer_create");
    tp.schedule = PST_LR_COSINE; tp.adapter_name = "a";
    EXPECT(pst_trainer_create(M, data, 1, &tp, &T), PST_ERR_EXISTS, "pst_trainer_create");
    tp.adapter_name = "t"; tp.resume_from = dir;   /* not a checkpoint */
    EXPECT(pst_trainer_create(M, data, 1, &tp, &T), PST_ERR_NOT_FOUND, "pst_trainer_create");
    tp.resume_from = NULL;
    infallible("pst_trainer_create", pst_trainer_create(M, data, 1, &tp, &T) == PST_OK && T);
    if (!T) { printf("FAIL trainer: %s\n", pst_last_error()); return 1; }
    pst_train_progress pr;
    memset(&pr, 0, sizeof pr);
    EXPECT(pst_trainer_step(T, &pr), PST_ERR_INVALID_ARG, "pst_trainer_step");   /* struct_size 0 */
    EXPECT(pst_trainer_step(NULL, NULL), PST_ERR_INVALID_ARG, "pst_trainer_step");
    pr.struct_size = sizeof pr;
    infallible("pst_trainer_step", pst_trainer_step(T, &pr) == PST_OK && pr.step == 1 && pr.loss > 0);
    EXPECT(pst_trainer_train(NULL, NULL, NULL), PST_ERR_INVALID_ARG, "pst_trainer_train");
    infallible("pst_trainer_train", pst_trainer_train(T, NULL, NULL) == PST_OK);
    EXPECT(pst_trainer_step(T, &pr), PST_ERR_MISUSE, "pst_trainer_step");   /* all steps done */
    pst_trainer_info ti;
    memset(&ti, 0, sizeof ti);
    EXPECT(pst_trainer_get_info(T, &ti), PST_ERR_INVALID_ARG, "pst_trainer_get_info");
    ti.struct_size = sizeof ti;
    infallible("pst_trainer_get_info", pst_trainer_get_info(T, &ti) == PST_OK && ti.completed_steps == 4 && ti.seq_len == 32);
    EXPECT(pst_trainer_save_adapter(T, NULL), PST_ERR_INVALID_ARG, "pst_trainer_save_adapter");
    EXPECT(pst_trainer_save_adapter(T, underfile), PST_ERR_IO, "pst_trainer_save_adapter");
    EXPECT(pst_trainer_save_checkpoint(NULL, outdir), PST_ERR_INVALID_ARG, "pst_trainer_save_checkpoint");
    EXPECT(pst_trainer_save_checkpoint(T, "/proc/nope/ck"), PST_ERR_IO, "pst_trainer_save_checkpoint");
    int64_t cklen = 0;
    EXPECT(pst_trainer_latest_checkpoint(NULL, ckpath, sizeof ckpath, &cklen), PST_ERR_INVALID_ARG, "pst_trainer_latest_checkpoint");
    EXPECT(pst_trainer_latest_checkpoint(dir, ckpath, sizeof ckpath, &cklen), PST_ERR_NOT_FOUND, "pst_trainer_latest_checkpoint");
    EXPECT(pst_trainer_latest_checkpoint(outdir, ckpath, 3, &cklen), PST_ERR_INVALID_ARG, "pst_trainer_latest_checkpoint");
    infallible("pst_trainer_latest_checkpoint", pst_trainer_latest_checkpoint(outdir, ckpath, sizeof ckpath, &cklen) == PST_OK &&
               strstr(ckpath, "checkpoint-4") != NULL);
    pst_trainer_free(T);
    pst_trainer_free(NULL);
    /* resuming a finished run's checkpoint with a different dataset is refused */
    tp.resume_from = ckpath;
    infallible("pst_llm_delete_adapter(t)", pst_llm_delete_adapter(M, "t") == PST_OK);
    const char *d2[2] = {tpath, tpath};
    EXPECT(pst_trainer_create(M, d2, 2, &tp, &T), PST_ERR_INVALID_ARG, "pst_trainer_create");
    pst_llm_free(M);
    pst_llm_free(NULL);
    }

    return failures == 0 ? 0 : 1;
}
