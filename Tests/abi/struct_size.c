/* Structs that grow (peftswift_types.h): a program compiled against an older header, whose
 * parameter structs lack the fields appended since, keeps working with a newer library.
 *
 * This file is such an "older" caller: it defines shortened copies of pst_lora_params,
 * pst_adamw_params, pst_pager_stats and pst_tensor with their last field(s) removed, sets
 * struct_size to their sizeof, and calls the library with them, each struct followed in memory
 * by 0xAB bytes that the library must neither read nor write. Tests/abi/check.sh runs it twice:
 *
 *   struct_size current   against the shipped library, whose version-1 layout is today's: the
 *                         shortened structs are older than version 1 and are refused
 *                         (PST_ERR_INVALID_ARG naming struct_size and the value), as are a
 *                         struct_size of 0 and one larger than sizeof (a newer caller);
 *                         today's structs work.
 *   struct_size older     against the same sources built with the V1 sizes of these four
 *                         structs lowered to the shortened sizes (`struct_size --v1-sizes`
 *                         prints them), that is a library in which the removed fields were
 *                         appended after version 1: the older caller works, the missing input
 *                         fields take their defaults, outputs are written for struct_size
 *                         bytes only, and an array of older pst_tensor is read with its stride.
 *
 * Prints PASS/FAIL lines; exits 1 on any failure. */
#define _DEFAULT_SOURCE /* mkdtemp */
#include <peftswift.h>
#include <math.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* ---- The older caller's structs: prefixes of today's, field for field. */
typedef struct old_lora_params { /* without seed */
    size_t struct_size;
    int32_t r;
    float alpha;
    float dropout;
    int32_t use_rslora;
    int32_t init;
} old_lora_params;

typedef struct old_adamw_params { /* without state_format and min_8bit_size */
    size_t struct_size;
    double lr, beta1, beta2, eps, weight_decay;
} old_adamw_params;

typedef struct old_pager_stats { /* without io_seconds */
    size_t struct_size;
    int64_t budget_bytes, page_size, resident_bytes, peak_resident_bytes, pinned_bytes, pages_spilled,
        bytes_spilled, pages_evicted, pages_read_back, bytes_read_back, spill_file_bytes;
} old_pager_stats;

typedef struct old_tensor { /* without byte_count */
    size_t struct_size;
    const char *name;
    const char *dtype;
    int32_t ndim;
    int64_t shape[PST_MAX_DIMS];
    const void *data;
} old_tensor;

#define PREFIX(OLD, NEW, F) _Static_assert(offsetof(OLD, F) == offsetof(NEW, F), #OLD "." #F " is not where " #NEW " has it")
PREFIX(old_lora_params, pst_lora_params, init);
PREFIX(old_adamw_params, pst_adamw_params, weight_decay);
PREFIX(old_pager_stats, pst_pager_stats, spill_file_bytes);
PREFIX(old_tensor, pst_tensor, data);
/* each removed field starts at or after the shortened sizeof (the growth rule) */
_Static_assert(offsetof(pst_lora_params, seed) >= sizeof(old_lora_params), "seed");
_Static_assert(offsetof(pst_adamw_params, state_format) >= sizeof(old_adamw_params), "state_format");
_Static_assert(offsetof(pst_pager_stats, io_seconds) >= sizeof(old_pager_stats), "io_seconds");
_Static_assert(offsetof(pst_tensor, byte_count) >= sizeof(old_tensor), "byte_count");

static int failures = 0;

static void check(int ok, const char *what) {
    printf("%s %s\n", ok ? "PASS" : "FAIL", what);
    if (!ok) {
        printf("    last error: %s\n", pst_last_error());
        failures++;
    }
}

/* A call refused with PST_ERR_INVALID_ARG whose message starts with fn and holds `field (value)`. */
static void refused(pst_status st, const char *fn, const char *field, size_t value, const char *what) {
    char want[160];
    snprintf(want, sizeof want, "%s (%zu)", field, value);
    const char *msg = pst_last_error();
    int ok = st == PST_ERR_INVALID_ARG && strncmp(msg, fn, strlen(fn)) == 0 && strstr(msg, want) != NULL;
    printf("%s %s -> %s: %s\n", ok ? "PASS" : "FAIL", what, pst_status_string(st), msg);
    if (!ok) failures++;
}

/* Room for a struct and the 0xAB bytes after it. */
typedef union {
    unsigned char bytes[512];
    long double align_;
} slot;

static void *fill_ab(slot *s) {
    memset(s->bytes, 0xAB, sizeof s->bytes);
    return s->bytes;
}

static int untouched_after(const slot *s, size_t from) {
    for (size_t i = from; i < sizeof s->bytes; i++)
        if (s->bytes[i] != 0xAB) return 0;
    return 1;
}

static void older(void);
static void current(void);

int main(int argc, char **argv) {
    if (argc == 2 && strcmp(argv[1], "--v1-sizes") == 0) {
        /* the V1 sizes of a library in which the removed fields came after version 1 */
        printf("PST_LORA_PARAMS_V1_SIZE %zu\n", sizeof(old_lora_params));
        printf("PST_ADAMW_PARAMS_V1_SIZE %zu\n", sizeof(old_adamw_params));
        printf("PST_PAGER_STATS_V1_SIZE %zu\n", sizeof(old_pager_stats));
        printf("PST_TENSOR_V1_SIZE %zu\n", sizeof(old_tensor));
        return 0;
    }
    if (argc != 2 || (strcmp(argv[1], "current") != 0 && strcmp(argv[1], "older") != 0)) {
        fprintf(stderr, "usage: %s current|older|--v1-sizes\n", argv[0]);
        return 2;
    }
    if (pst_abi_version() != PST_ABI_VERSION) {
        printf("FAIL header ABI %d, library ABI %d\n", PST_ABI_VERSION, (int)pst_abi_version());
        return 1;
    }
    if (strcmp(argv[1], "older") == 0) older(); else current();
    printf("struct_size %s: %s\n", argv[1], failures ? "FAILED" : "all passed");
    return failures ? 1 : 0;
}

/* A LoRA layer over an 8 x 8 dense zero weight. */
static pst_lora *layer(void) {
    static float w[64];
    pst_lora *l = NULL;
    if (pst_lora_create_dense(w, 64, 8, 8, NULL, &l) != PST_OK) {
        printf("FAIL pst_lora_create_dense: %s\n", pst_last_error());
        exit(1);
    }
    return l;
}

static old_lora_params *old_lora(slot *s, size_t struct_size) {
    old_lora_params *p = fill_ab(s);
    p->struct_size = struct_size;
    p->r = 2;
    p->alpha = 16;
    p->dropout = 0;
    p->use_rslora = 0;
    p->init = PST_LORA_INIT_KAIMING;
    return p;
}

static old_adamw_params *old_adamw(slot *s, size_t struct_size) {
    old_adamw_params *p = fill_ab(s);
    p->struct_size = struct_size;
    p->lr = 0.5;
    p->beta1 = 0.9;
    p->beta2 = 0.999;
    p->eps = 1e-8;
    p->weight_decay = 0;
    return p;
}

static void fill_old_tensors(old_tensor t[2]) {
    static const char *names[2] = {"a", "b"};
    memset(t, 0xAB, 2 * sizeof *t);
    for (int i = 0; i < 2; i++) {
        t[i].struct_size = sizeof *t;
        t[i].name = names[i];
        t[i].dtype = "F32";
        t[i].ndim = 1;
        t[i].shape[0] = 0; /* empty: byte_count, missing, defaults to 0 */
        t[i].data = NULL;
    }
}

static char dir[64];
static char file[96];

static void make_dir(void) {
    snprintf(dir, sizeof dir, "/tmp/pst-struct-size-XXXXXX");
    if (!mkdtemp(dir)) { perror("mkdtemp"); exit(1); }
    snprintf(file, sizeof file, "%s/t.safetensors", dir);
}

static void remove_dir(void) {
    unlink(file);
    rmdir(dir);
}

static void current(void) {
    slot s;
    pst_lora *l = layer();
    /* today's structs work */
    pst_lora_params lp;
    check(pst_lora_params_init(&lp) == PST_OK && pst_lora_add_adapter(l, "today", &lp) == PST_OK,
          "pst_lora_add_adapter with today's pst_lora_params");
    /* the shortened copy is older than version 1 here: refused, naming struct_size and the value */
    refused(pst_lora_add_adapter(l, "old", (const pst_lora_params *)(void *)old_lora(&s, sizeof(old_lora_params))),
            "pst_lora_add_adapter", "params->struct_size", sizeof(old_lora_params), "an older-than-v1 pst_lora_params is refused");
    refused(pst_lora_add_adapter(l, "zero", (const pst_lora_params *)(void *)old_lora(&s, 0)),
            "pst_lora_add_adapter", "params->struct_size", 0, "struct_size 0 is refused");
    /* a newer caller (one field more than this library knows) */
    struct { pst_lora_params p; uint64_t added; } newer;
    check(pst_lora_params_init(&newer.p) == PST_OK, "pst_lora_params_init");
    newer.p.struct_size = sizeof newer;
    refused(pst_lora_add_adapter(l, "new", &newer.p), "pst_lora_add_adapter", "params->struct_size", sizeof newer,
            "a pst_lora_params larger than sizeof (a newer caller) is refused");
    old_lora_params *op = old_lora(&s, sizeof(old_lora_params));
    slot before = s;
    refused(pst_lora_adapter_info(l, "today", (pst_lora_params *)(void *)op, NULL, NULL, NULL, NULL),
            "pst_lora_adapter_info", "params->struct_size", sizeof(old_lora_params), "pst_lora_adapter_info refuses an older-than-v1 output");
    check(memcmp(before.bytes, s.bytes, sizeof s.bytes) == 0, "... and writes nothing into it");
    pst_lora_free(l);

    pst_adamw *opt = NULL;
    refused(pst_adamw_create((const pst_adamw_params *)(void *)old_adamw(&s, sizeof(old_adamw_params)), NULL, &opt),
            "pst_adamw_create", "params->struct_size", sizeof(old_adamw_params), "an older-than-v1 pst_adamw_params is refused");
    refused(pst_adamw_create((const pst_adamw_params *)(void *)old_adamw(&s, sizeof(pst_adamw_params) + 8), NULL, &opt),
            "pst_adamw_create", "params->struct_size", sizeof(pst_adamw_params) + 8, "a pst_adamw_params larger than sizeof is refused");
    check(opt == NULL, "... and no optimizer is made");

    pst_pager *pg = NULL;
    check(pst_pager_create(8 << 20, 1 << 20, NULL, &pg) == PST_OK, "pst_pager_create");
    old_pager_stats *os = fill_ab(&s);
    os->struct_size = sizeof *os;
    refused(pst_pager_get_stats(pg, (pst_pager_stats *)(void *)os), "pst_pager_get_stats", "stats->struct_size",
            sizeof *os, "an older-than-v1 pst_pager_stats is refused");
    check(untouched_after(&s, sizeof(size_t)), "... and nothing is written");
    pst_pager_stats st;
    memset(&st, 0, sizeof st);
    st.struct_size = sizeof st;
    check(pst_pager_get_stats(pg, &st) == PST_OK && st.budget_bytes == 8 << 20, "pst_pager_get_stats with today's struct");
    pst_pager_free(pg);

    make_dir();
    old_tensor ot[2];
    fill_old_tensors(ot);
    refused(pst_safetensors_write(file, (const pst_tensor *)(void *)ot, 2, NULL, NULL, 0), "pst_safetensors_write",
            "tensors[0].struct_size", sizeof(old_tensor), "an array of older-than-v1 pst_tensor is refused");
    check(access(file, F_OK) != 0, "... and no file is written");
    remove_dir();
}

static void older(void) {
    slot s;
    pst_lora *l = layer();

    /* pst_lora_params without seed: the seed takes its default, 0, not the 0xAB bytes after */
    check(pst_lora_add_adapter(l, "old", (const pst_lora_params *)(void *)old_lora(&s, sizeof(old_lora_params))) == PST_OK,
          "pst_lora_add_adapter with a pst_lora_params that lacks seed");
    pst_lora_params got;
    check(pst_lora_params_init(&got) == PST_OK && pst_lora_adapter_info(l, "old", &got, NULL, NULL, NULL, NULL) == PST_OK,
          "pst_lora_adapter_info");
    check(got.r == 2 && got.alpha == 16 && got.init == PST_LORA_INIT_KAIMING, "... r and alpha are the caller's");
    check(got.seed == 0, "... seed, missing from the caller's struct, is pst_lora_params_init's 0");
    pst_lora_params full;
    check(pst_lora_params_init(&full) == PST_OK, "pst_lora_params_init");
    full.r = 2;
    full.alpha = 16;
    check(pst_lora_add_adapter(l, "full", &full) == PST_OK, "pst_lora_add_adapter with the same values, seed 0");
    float *a_old = NULL, *a_full = NULL;
    int64_t rows = 0, cols = 0;
    check(pst_lora_adapter_tensor(l, "old", PST_LORA_A, &a_old, &rows, &cols) == PST_OK &&
              pst_lora_adapter_tensor(l, "full", PST_LORA_A, &a_full, NULL, NULL) == PST_OK && rows == 2 && cols == 8 &&
              memcmp(a_old, a_full, (size_t)(rows * cols) * sizeof(float)) == 0,
          "... both adapters' A are the same (the same seed initialized them)");
    /* an output struct is written for struct_size bytes only */
    old_lora_params *op = old_lora(&s, sizeof(old_lora_params));
    op->r = 0;
    check(pst_lora_adapter_info(l, "old", (pst_lora_params *)(void *)op, NULL, NULL, NULL, NULL) == PST_OK && op->r == 2 &&
              op->alpha == 16 && op->struct_size == sizeof(old_lora_params),
          "pst_lora_adapter_info fills a pst_lora_params that lacks seed");
    check(untouched_after(&s, sizeof(old_lora_params)), "... and writes nothing past its struct_size");
    /* the range: below the (lowered) v1 size and above sizeof are still refused */
    refused(pst_lora_add_adapter(l, "short", (const pst_lora_params *)(void *)old_lora(&s, sizeof(old_lora_params) - 8)),
            "pst_lora_add_adapter", "params->struct_size", sizeof(old_lora_params) - 8, "struct_size below the v1 size is refused");
    refused(pst_lora_add_adapter(l, "long", (const pst_lora_params *)(void *)old_lora(&s, sizeof(pst_lora_params) + 8)),
            "pst_lora_add_adapter", "params->struct_size", sizeof(pst_lora_params) + 8, "struct_size above sizeof is refused");
    pst_lora_free(l);

    /* pst_adamw_params without state_format and min_8bit_size: fp32 state (the default), the
     * caller's lr. 0xABABABAB as state_format would be refused as an unknown format. */
    enum { N = 5000 };
    static float param[N], grad[N], param2[N], grad2[N];
    for (int i = 0; i < N; i++) grad[i] = grad2[i] = 1;
    pst_adamw *opt = NULL, *ref = NULL;
    check(pst_adamw_create((const pst_adamw_params *)(void *)old_adamw(&s, sizeof(old_adamw_params)), NULL, &opt) == PST_OK,
          "pst_adamw_create with a pst_adamw_params that lacks state_format and min_8bit_size");
    pst_adamw_params rp;
    check(pst_adamw_params_init(&rp) == PST_OK && pst_adamw_create(&rp, NULL, &ref) == PST_OK, "pst_adamw_create with the defaults");
    int64_t bytes = -1, ref_bytes = -2;
    check(pst_adamw_add_param(opt, param, grad, N, NULL) == PST_OK && pst_adamw_add_param(ref, param2, grad2, N, NULL) == PST_OK &&
              pst_adamw_state_size(opt, &bytes) == PST_OK && pst_adamw_state_size(ref, &ref_bytes) == PST_OK && bytes == ref_bytes,
          "... its state is the default fp32 state (the same size as the defaults')");
    check(pst_adamw_step(opt) == PST_OK && fabsf(param[0] + 0.5f) < 1e-3f, "... and its first step moves by the caller's lr (0.5)");
    pst_adamw_free(opt);
    pst_adamw_free(ref);

    /* pst_pager_stats without io_seconds: filled for struct_size bytes */
    pst_pager *pg = NULL;
    check(pst_pager_create(8 << 20, 1 << 20, NULL, &pg) == PST_OK, "pst_pager_create");
    old_pager_stats *os = fill_ab(&s);
    os->struct_size = sizeof *os;
    check(pst_pager_get_stats(pg, (pst_pager_stats *)(void *)os) == PST_OK && os->budget_bytes == 8 << 20 &&
              os->page_size == 1 << 20 && os->resident_bytes == 0 && os->struct_size == sizeof *os,
          "pst_pager_get_stats fills a pst_pager_stats that lacks io_seconds");
    check(untouched_after(&s, sizeof *os), "... and writes nothing past its struct_size");
    pst_pager_free(pg);

    /* an array of pst_tensor without byte_count: read with the caller's stride */
    make_dir();
    old_tensor ot[2];
    fill_old_tensors(ot);
    check(pst_safetensors_write(file, (const pst_tensor *)(void *)ot, 2, NULL, NULL, 0) == PST_OK,
          "pst_safetensors_write with two pst_tensor that lack byte_count (stride sizeof(old_tensor))");
    pst_safetensors *f = NULL;
    int64_t count = 0;
    check(pst_safetensors_open(file, &f) == PST_OK && pst_safetensors_count(f, &count, NULL) == PST_OK && count == 2,
          "... the file holds both tensors");
    old_tensor *t = fill_ab(&s);
    t->struct_size = sizeof *t;
    check(f && pst_safetensors_tensor_at(f, 1, (pst_tensor *)(void *)t) == PST_OK && strcmp(t->name, "b") == 0 &&
              strcmp(t->dtype, "F32") == 0 && t->ndim == 1 && t->shape[0] == 0,
          "pst_safetensors_tensor_at fills a pst_tensor that lacks byte_count");
    check(untouched_after(&s, sizeof *t), "... and writes nothing past its struct_size");
    ot[1].struct_size = sizeof(pst_tensor);
    refused(pst_safetensors_write(file, (const pst_tensor *)(void *)ot, 2, NULL, NULL, 0), "pst_safetensors_write",
            "tensors[1].struct_size", sizeof(pst_tensor), "an array whose struct_size differs between elements is refused");
    pst_safetensors_free(f);
    remove_dir();
}
