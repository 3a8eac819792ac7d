/* examples/quantize.c: quantize a weight to NF4 with double quantization, read its state,
 * dequantize it and report the error, checking every status and freeing everything.
 *
 *   cc -std=c11 quantize.c $(pkg-config --cflags --libs peftswift) -lm -o quantize && ./quantize
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>

#include <peftswift.h>

#define CHECK(call)                                                                     \
    do {                                                                                \
        pst_status st_ = (call);                                                        \
        if (st_ != PST_OK) {                                                            \
            fprintf(stderr, "%s failed: %s (%s)\n", #call, pst_status_string(st_),      \
                    pst_last_error());                                                  \
            goto cleanup;                                                               \
        }                                                                               \
    } while (0)

int main(void) {
    int rc = 1;
    enum { ROWS = 256, COLS = 512, N = ROWS * COLS };
    float *w = NULL, *back = NULL;
    pst_quant *q = NULL;

    if (pst_abi_version() != PST_ABI_VERSION) {
        fprintf(stderr, "header ABI %d but library ABI %d\n", PST_ABI_VERSION, (int)pst_abi_version());
        return 1;
    }
    printf("peftswift %s (header %s), %d threads\n", pst_version_string(), PST_VERSION_STRING,
           (int)pst_get_num_threads());

    w = malloc(sizeof(float) * N);
    back = malloc(sizeof(float) * N);
    if (!w || !back) goto cleanup;
    /* a weight-like signal: a few smooth waves plus a deterministic pseudo-random part */
    unsigned s = 12345u;
    for (int i = 0; i < N; i++) {
        s = s * 1664525u + 1013904223u;
        w[i] = 0.02f * sinf(0.01f * (float)i) + 0.05f * ((float)(s >> 8) / 16777216.0f - 0.5f);
    }

    int64_t shape[2] = {ROWS, COLS};
    CHECK(pst_quant_create_4bit(w, PST_DTYPE_F32, shape, 2, 64, PST_QUANT_NF4, true, &q));

    pst_quant_state state = {0};
    state.struct_size = sizeof state;
    CHECK(pst_quant_get_state(q, &state));
    int64_t n = 0, bytes = 0;
    CHECK(pst_quant_info(q, &n, &bytes));
    printf("nf4 + double quant: %lld elements in %lld bytes = %.3f bits/parameter\n", (long long)n,
           (long long)bytes, 8.0 * (double)bytes / (double)n);
    printf("  %lld packed bytes, %lld 8-bit absmax, %lld nested absmax, offset %.6f\n",
           (long long)state.packed_bytes, (long long)state.absmax_count,
           (long long)state.nested_absmax_count, (double)state.offset);

    CHECK(pst_quant_dequantize(q, back, sizeof(float) * N, PST_DTYPE_F32));
    double max_err = 0, sum2 = 0;
    for (int i = 0; i < N; i++) {
        double e = fabs((double)back[i] - (double)w[i]);
        if (e > max_err) max_err = e;
        sum2 += e * e;
    }
    printf("  round trip: max |error| %.5f, rms %.6f\n", max_err, sqrt(sum2 / N));

    /* bad input gets a status and a message, never a crash */
    pst_status st = pst_4bit_quantize(w, PST_DTYPE_F32, N, 48, PST_QUANT_NF4, NULL, 0, NULL, 0);
    printf("  bad blocksize -> %s: %s\n", pst_status_string(st), pst_last_error());
    rc = (st == PST_ERR_INVALID_ARG && max_err < 0.02) ? 0 : 1;

cleanup:
    pst_quant_free(q);
    free(back);
    free(w);
    return rc;
}
