/* peftswift_types.h: the hand-written part of the C API (status codes, constants, handle and
 * parameter types). The function declarations are generated from the Swift sources into
 * include/peftswift.h by scripts/gen_header.py; include <peftswift.h>, not this file.
 *
 * The file is split into one block per section of the header, each opened by a line
 * `/ * ==== section: NAME ==== * /` (without the spaces) and starting with the section's
 * one-paragraph introduction; scripts/gen_header.py places each block at the start of its
 * section, before that section's functions. Blocks come in the header's order (core,
 * quantization, lora, optimizers, paging, files, llm, trainer), so that this file also compiles
 * on its own, as the C module the Swift engine imports. */
#ifndef PEFTSWIFT_TYPES_H
#define PEFTSWIFT_TYPES_H

#include <stddef.h>
#include <stdint.h>
#include <stdbool.h>

/* ==== section: core ==== */
/* Versions, status codes, the calling thread's last error, the thread count and the CPU check;
 * and what every other section uses: element types, the largest tensor rank, the opaque
 * handles and the rule by which parameter structs grow (struct_size). */

/* ---- Versions (compile time; compare with pst_version_string()/pst_abi_version() at run time) */
#define PST_VERSION_MAJOR 0
#define PST_VERSION_MINOR 1
#define PST_VERSION_PATCH 0
#define PST_VERSION_STRING "0.1.0"
/* Bumped whenever a shipped signature or layout changes meaning. */
#define PST_ABI_VERSION 1

/* ---- Status codes. Values never change meaning once shipped. */
typedef int32_t pst_status;
#define PST_OK 0
#define PST_ERR_INVALID_ARG 1     /* a pointer, size, enum value or option is invalid */
#define PST_ERR_OUT_OF_MEMORY 2   /* an allocation failed, or a request exceeds a budget */
#define PST_ERR_SHAPE 3           /* tensor shapes or lengths disagree */
#define PST_ERR_UNSUPPORTED 4     /* valid request this build does not support */
#define PST_ERR_MISUSE 5          /* calls in the wrong order, use after free, double release */
#define PST_ERR_IO 6              /* a file or OS call failed */
#define PST_ERR_CORRUPT 7         /* data (a file, a state, a page) fails its checks */
#define PST_ERR_NOT_FOUND 8       /* a named item (adapter, tensor, key) does not exist */
#define PST_ERR_EXISTS 9          /* a named item already exists */
#define PST_ERR_NONFINITE 10      /* NaN or +-Inf in an input that must be finite */
#define PST_ERR_INTERNAL 11       /* a bug in peftswift: please report it */
#define PST_ERR_UNSUPPORTED_CPU 12 /* this CPU lacks an instruction set the library needs (x86-64-v3:
                                    AVX2, FMA, F16C, BMI1/2, LZCNT, MOVBE); the message names them */

/* ---- Kernel paths (pst_set_isa, pst_get_isa, pst_host_isa), each a superset of the one before.
 * The library picks the best path the CPU has at load; the environment variable PST_ISA
 * (avx2, avx512, avx512bf16) read at load caps it, as pst_set_isa does. Results of fp32
 * compute are bit-identical on every path; compute dtype bf16 needs PST_ISA_AVX512_BF16. */
#define PST_ISA_AVX2 0        /* AVX2 + FMA (x86-64-v3): every CPU the library runs on */
#define PST_ISA_AVX512 1      /* + AVX-512F/BW/DQ/VL fp32 kernels */
#define PST_ISA_AVX512_BF16 2 /* + AVX512_BF16 kernels (vdpbf16ps) for compute dtype bf16 */

/* ---- Element types of tensors crossing the ABI */
#define PST_DTYPE_F32 0
#define PST_DTYPE_F16 1
#define PST_DTYPE_BF16 2
#define PST_DTYPE_U8 3
#define PST_DTYPE_I8 4
#define PST_DTYPE_I32 5
#define PST_DTYPE_I64 6

/* Largest tensor rank a pst_quant_state or pst_tensor carries. */
#define PST_MAX_DIMS 8

/* ---- Opaque handles, one per section that owns objects. Never dereference, copy or declare
 * one by value: only pointers returned by the matching pst_*_create/load functions are valid,
 * and only until the matching free. (Each is a complete struct with one reserved byte so that
 * Swift can name the type; the byte has no meaning.) They are all declared here because
 * sections use each other's: a LoRA layer over a pst_quant, a paged pst_adamw in a pst_pager. */
typedef struct pst_quant { uint8_t pst_reserved_; } pst_quant;             /* quantization */
typedef struct pst_lora { uint8_t pst_reserved_; } pst_lora;               /* LoRA */
typedef struct pst_adamw { uint8_t pst_reserved_; } pst_adamw;             /* optimizers */
typedef struct pst_pager { uint8_t pst_reserved_; } pst_pager;             /* paging */
typedef struct pst_paged { uint8_t pst_reserved_; } pst_paged;             /* paging */
typedef struct pst_safetensors { uint8_t pst_reserved_; } pst_safetensors; /* files */
typedef struct pst_llm { uint8_t pst_reserved_; } pst_llm;                 /* language models */
typedef struct pst_trainer { uint8_t pst_reserved_; } pst_trainer;         /* fine-tuning */

/* ---- Structs that grow. A struct whose first field is `size_t struct_size` may gain fields
 * at its end in a later version (never in the middle; a new field starts at or after the
 * previous version's sizeof, so that it never lands in that version's tail padding). The
 * caller sets struct_size to the sizeof of the struct it was compiled with (the _init
 * functions do), and the library accepts any struct_size from the struct's first-version size
 * (PST_<NAME>_V1_SIZE, beside each struct) up to its own sizeof:
 *   - a struct the caller passes in is read for struct_size bytes only; fields beyond them
 *     (added after the caller was compiled) take the defaults of the struct's _init function
 *     (or 0 where it has none);
 *   - a struct the library fills is written for struct_size bytes only.
 * Any other struct_size is PST_ERR_INVALID_ARG, with a message naming it and its value.
 * So a program compiled against an older header keeps working with a newer library; a newer
 * program meets an older library's PST_ERR_INVALID_ARG rather than a silent misreading.
 * An array of such structs (pst_safetensors_write's tensors) is laid out with the caller's
 * sizeof: every element's struct_size must be the first element's. The V1 sizes are those of
 * x86-64 Linux, the library's platform. */

/* ==== section: quantization ==== */
/* bitsandbytes' 4-bit (NF4, FP4) and 8-bit blockwise quantization, bit-exact with it: flat
 * kernels over caller-owned buffers (pst_4bit_*, pst_8bit_*, pst_absmax_double_quantize) sized
 * by pst_4bit_packed_bytes and pst_blockwise_count, the codebooks (pst_codebook), and the
 * pst_quant handle, which owns a quantized tensor with its state (pst_quant_*). */

/* 4-bit quantization types (bitsandbytes' quant_type) */
#define PST_QUANT_NF4 0
#define PST_QUANT_FP4 1

/* Codebooks (pst_codebook) */
#define PST_CODE_NF4 0              /* 16 floats: bitsandbytes' NF4 table, sorted, code 7 = 0.0 */
#define PST_CODE_FP4 1              /* 16 floats: bitsandbytes' FP4 table in bit order, 0b1000 = sign */
#define PST_CODE_DYNAMIC_SIGNED 2   /* 256 floats: create_dynamic_map(signed=True), sorted */
#define PST_CODE_DYNAMIC_UNSIGNED 3 /* 256 floats: create_dynamic_map(signed=False), sorted */

/* The state of a 4-bit quantized tensor: bitsandbytes' QuantState, field for field.
 *
 * Layout (the memory layout is ABI; it is bitsandbytes' own):
 *   - the tensor (shape[0..ndim), row-major) is flattened; block b is elements
 *     [b*blocksize, min((b+1)*blocksize, n)); nblocks = ceil(n / blocksize);
 *   - packed[j] = code[2j] << 4 | code[2j+1]: the even element in the HIGH nibble; odd n pads the
 *     last low nibble with the code of 0.0 (NF4: 7, FP4: 0); packed_bytes = (n + 1) / 2;
 *   - without double quantization (nested == 0) absmax is float[nblocks], the block's max |x|;
 *   - with double quantization (nested != 0) absmax is uint8_t[nblocks]: absmax[b] - offset
 *     quantized with nested_code (256 floats) in blocks of nested_blocksize (256) with
 *     nested_absmax[ceil(nblocks / nested_blocksize)] as their float scales, so the block scale is
 *     nested_code[absmax[b]] * nested_absmax[b / nested_blocksize] + offset;
 *   - element i = code[nibble(i)] * scale(i / blocksize).
 * Edge rules (bitsandbytes' CPU/default path, checked against it): an all-zero full block has
 * absmax 0 and NF4 code 7 (CUDA writes code 0, value -0.0: the same value); an all-zero partial
 * last block stores absmax 1e-38 (bitsandbytes clamps it there). A block whose absmax is below
 * 1e-38 (subnormal values) stores its true absmax but is scaled by 1e-38, as bitsandbytes does.
 * A value exactly at the midpoint of two codes takes the lower one. Full blocks are scaled by
 * the float reciprocal of absmax, the partial last block by division. FP4 code 8 decodes to
 * +0.0 through the stored map (bitsandbytes' C kernel gives -0.0; they compare equal). NaN and
 * +-Inf are rejected (PST_ERR_NONFINITE) naming the first offending index.
 * The 8-bit index of the nested constants is the exact nearest code, ties to the lower (as
 * bitsandbytes' CUDA and default paths; its CPU lookup table is 1-3 codes off at ~0.15% of
 * values), so checkpoints made by peftswift equal GPU-made ones. offset follows torch.mean's
 * float32 summation order.
 *
 * Filled by pst_quant_get_state (pointers borrowed from the handle, valid until pst_quant_free)
 * or by the caller for pst_quant_from_state (copied; nothing is kept after the call). */
typedef struct pst_quant_state {
    size_t struct_size;          /* set to sizeof(pst_quant_state) */
    int32_t quant_type;          /* PST_QUANT_NF4 or PST_QUANT_FP4 */
    int32_t dtype;               /* dtype of the original tensor: PST_DTYPE_F32, _F16 or _BF16 */
    int32_t blocksize;           /* 32, 64, 128, 256, 512, 1024, 2048 or 4096 */
    int32_t ndim;                /* 1 ... PST_MAX_DIMS */
    int64_t shape[PST_MAX_DIMS]; /* the original shape; n = product of shape[0..ndim) */
    const uint8_t *packed;       /* packed_bytes = (n + 1) / 2 bytes of codes */
    int64_t packed_bytes;
    const float *code;           /* 16 floats: the 4-bit map (bitsandbytes' quant_map) */
    const void *absmax;          /* float[absmax_count], or uint8_t[absmax_count] when nested */
    int64_t absmax_count;        /* nblocks */
    int32_t nested;              /* 1 when double-quantized (compress_statistics=True), else 0 */
    int32_t nested_blocksize;    /* 256 (bitsandbytes' fixed value); ignored when !nested */
    float offset;                /* mean of the original absmax; ignored when !nested */
    const float *nested_absmax;  /* float[nested_absmax_count]; NULL when !nested */
    int64_t nested_absmax_count; /* ceil(absmax_count / nested_blocksize) */
    const float *nested_code;    /* 256 floats (nested_quant_map); NULL when !nested */
} pst_quant_state;
#define PST_QUANT_STATE_V1_SIZE 168 /* sizeof(pst_quant_state) in version 1 */

/* ==== section: lora ==== */
/* pst_lora: a linear layer over a frozen dense or 4-bit base with named LoRA adapters (PEFT's
 * LoraConfig fields): forward and backward, several adapters active with weights, merging into
 * the base weight and back. */

#define PST_LORA_INIT_KAIMING 0   /* PEFT's default: A ~ U(-1/sqrt(in), 1/sqrt(in)), B = 0 */
#define PST_LORA_INIT_GAUSSIAN 1  /* init_lora_weights="gaussian": A ~ N(0, (1/r)^2), B = 0 */
#define PST_LORA_INIT_ZEROS 2     /* A = 0, B = 0 (for loading weights right after) */

/* Which tensor of an adapter pst_lora_adapter_tensor returns */
#define PST_LORA_A 0        /* lora_A.weight: r x in */
#define PST_LORA_B 1        /* lora_B.weight: out x r */
#define PST_LORA_GRAD_A 2   /* gradient of A: r x in */
#define PST_LORA_GRAD_B 3   /* gradient of B: out x r */

/* Parameters of one adapter, PEFT's LoraConfig fields. Initialize with pst_lora_params_init. */
typedef struct pst_lora_params {
    size_t struct_size;   /* sizeof(pst_lora_params), set by pst_lora_params_init */
    int32_t r;            /* rank, 1 ... min(in, out); default 8 */
    float alpha;          /* lora_alpha > 0; default 8 */
    float dropout;        /* lora_dropout in [0, 1); default 0 */
    int32_t use_rslora;   /* 1: scaling = alpha / sqrt(r); 0 (default): alpha / r */
    int32_t init;         /* PST_LORA_INIT_*; default PST_LORA_INIT_KAIMING */
    uint64_t seed;        /* seeds A's init and the dropout masks; default 0 */
} pst_lora_params;
#define PST_LORA_PARAMS_V1_SIZE 40 /* sizeof(pst_lora_params) in version 1 */

/* The inputs of pst_lora_apply and pst_lora_apply_backward: the layer as a pure function of
 * its inputs, for callers with their own autograd (PyTorch's custom op in peftswift.torch).
 * The LoRA branch (A, B, scaling) and its input dropout(x) come from the caller, not from the
 * layer's adapters; the layer contributes its frozen base W. Every pointer is borrowed for the
 * call only and every array is row-major fp32. Initialize with pst_lora_apply_args_init. */
typedef struct pst_lora_apply_args {
    size_t struct_size;      /* sizeof(pst_lora_apply_args), set by pst_lora_apply_args_init */
    int64_t m;               /* rows of x (tokens), >= 1 */
    const float *x;          /* m x in: the base's input; also the branch's when x_lora is NULL */
    const float *x_lora;     /* m x in: the branch's input, the caller's dropout(x); NULL: x */
    const float *lora_a;     /* r x in (lora_A.weight); NULL together with lora_b: no branch */
    const float *lora_b;     /* out x r (lora_B.weight) */
    int64_t r;               /* rank of the branch, 1 ... min(in, out); ignored without a branch */
    float scaling;           /* the branch's factor (PEFT's scaling[adapter]); default 1 */
    const float *bias;       /* out floats added by pst_lora_apply; NULL (default): none */
} pst_lora_apply_args;
#define PST_LORA_APPLY_ARGS_V1_SIZE 72 /* sizeof(pst_lora_apply_args) in version 1 */

/* ==== section: optimizers ==== */
/* AdamW with torch.optim.AdamW's semantics, or with bitsandbytes' 8-bit blockwise state
 * (AdamW8bit), in memory or paged in a pst_pager (pst_adamw_*); and the learning-rate schedules
 * of Hugging Face transformers (pst_lr_multiplier). */

#define PST_OPTIM_STATE_F32 0   /* torch.optim.AdamW: fp32 moments */
#define PST_OPTIM_STATE_8BIT 1  /* bitsandbytes AdamW8bit: blockwise 8-bit moments (blocks of 256) */

/* Learning-rate schedules (pst_lr_multiplier), Hugging Face transformers' definitions */
#define PST_LR_CONSTANT 0             /* 1 */
#define PST_LR_CONSTANT_WARMUP 1      /* linear warm-up over warmup steps, then 1 */
#define PST_LR_LINEAR 2               /* linear warm-up, then linear decay to 0 at total steps */
#define PST_LR_COSINE 3               /* linear warm-up, then cosine to 0 at total steps */

/* AdamW hyper-parameters (torch.optim.AdamW's defaults). Initialize with pst_adamw_params_init. */
typedef struct pst_adamw_params {
    size_t struct_size;     /* sizeof(pst_adamw_params) */
    double lr;              /* 1e-3 */
    double beta1;           /* 0.9 */
    double beta2;           /* 0.999 */
    double eps;             /* 1e-8 */
    double weight_decay;    /* 1e-2 (decoupled) */
    int32_t state_format;   /* PST_OPTIM_STATE_F32 (default) or PST_OPTIM_STATE_8BIT */
    int32_t min_8bit_size;  /* 8-bit only: parameters with fewer elements keep fp32 state (4096) */
} pst_adamw_params;
#define PST_ADAMW_PARAMS_V1_SIZE 56 /* sizeof(pst_adamw_params) in version 1 */

/* ==== section: paging ==== */
/* pst_pager: large buffers (pst_paged) in fixed-size pages under a RAM budget, spilled to an
 * unlinked file and read back on demand, with explicit pinning (acquire/release) and prefetch;
 * the store behind paged optimizers. */

/* Statistics of a pager (pst_pager_get_stats). */
typedef struct pst_pager_stats {
    size_t struct_size;          /* set to sizeof(pst_pager_stats) */
    int64_t budget_bytes;        /* the RAM budget now */
    int64_t page_size;
    int64_t resident_bytes;      /* page memory mapped now */
    int64_t peak_resident_bytes; /* the largest resident_bytes seen */
    int64_t pinned_bytes;        /* resident bytes held by acquires */
    int64_t pages_spilled;       /* pages written to the spill file */
    int64_t bytes_spilled;
    int64_t pages_evicted;       /* pages whose memory was returned (spilled or clean) */
    int64_t pages_read_back;     /* pages read back from the spill file */
    int64_t bytes_read_back;
    int64_t spill_file_bytes;    /* size of the (unlinked) spill file */
    double io_seconds;           /* time spent in spill-file I/O */
} pst_pager_stats;
#define PST_PAGER_STATS_V1_SIZE 104 /* sizeof(pst_pager_stats) in version 1 */

/* ==== section: files ==== */
/* The file formats of the Python ecosystem, interchangeable with it: safetensors files
 * (memory-mapped reading, atomic writing; strings with lengths in the _v2 functions), PEFT
 * adapter directories (pst_peft_*) and bitsandbytes Linear4bit checkpoints (pst_bnb_*). */

/* A tensor of a safetensors file (read: pointers borrowed from the open file, valid until
 * pst_safetensors_free; write: the caller's, read during the call only). */
typedef struct pst_tensor {
    size_t struct_size;            /* sizeof(pst_tensor) */
    const char *name;              /* UTF-8, NUL-terminated (names with NUL bytes: the _v2 functions and pst_string) */
    const char *dtype;             /* the safetensors dtype: "F32", "F16", "BF16", "U8", "I8", "I32", "I64", ... */
    int32_t ndim;                  /* 0 (a scalar) ... PST_MAX_DIMS */
    int64_t shape[PST_MAX_DIMS];
    const void *data;              /* little-endian elements, row-major */
    int64_t byte_count;            /* product(shape) * element size */
} pst_tensor;
#define PST_TENSOR_V1_SIZE 112 /* sizeof(pst_tensor) in version 1 */

/* A string with its length in bytes (UTF-8), for the names and __metadata__ of safetensors
 * files, which may be any JSON string: NUL bytes included, any length (the format bounds only
 * the whole header, at 100,000,000 bytes). data need not end with a NUL; it may be NULL only
 * when length is 0. Strings the library hands out (the pst_safetensors_*_v2 functions) are
 * borrowed from the handle and are followed by a NUL byte, so one without NUL bytes inside can
 * also be read as a C string; length is always the whole string. This struct never grows. */
typedef struct pst_string {
    const char *data;
    int64_t length;                /* bytes, >= 0 */
} pst_string;

/* pst_safetensors_write_v2's meta_count for "no __metadata__ key" (safetensors' metadata=None);
 * meta_count 0 writes an empty "__metadata__":{} (metadata={}). */
#define PST_SAFETENSORS_NO_METADATA (-1)

/* ==== section: llm ==== */
/* pst_llm: a Llama-architecture model with its tokenizer, loaded from a GGUF file or a Hugging
 * Face checkpoint directory, its projections 4-bit as they load: tokenization, logits, loss and
 * backward, LoRA adapters on its projections (saved and loaded as PEFT directories), and text
 * generation with a KV cache. */

/* Pre-tokenizer of the byte-level BPE tokenizer (pst_llm_load_params.pretokenizer) */
#define PST_PRETOK_AUTO 0    /* the file's own (tokenizer.ggml.pre / tokenizer.json) */
#define PST_PRETOK_GPT2 1    /* the GPT-2 pattern alone: what transformers rebuilds from a GGUF */
#define PST_PRETOK_DIGITS 2  /* digits isolated, then GPT-2 (SmolLM2's own tokenizer.json, llama.cpp "smollm") */

/* How pst_llm_load builds the model. Initialize with pst_llm_load_params_init. */
typedef struct pst_llm_load_params {
    size_t struct_size;    /* sizeof(pst_llm_load_params) */
    int32_t quantize;      /* 1 (default): the 7 projections of every layer become 4-bit (QLoRA's
                              base) as they load; 0: they stay fp32. Embeddings, norms, LM head: fp32 */
    int32_t quant_type;    /* PST_QUANT_NF4 (default) or PST_QUANT_FP4 */
    int32_t blocksize;     /* 64 (default), 32 ... 4096, a power of two */
    int32_t double_quant;  /* 1 (default): double quantization of the block constants */
    int32_t pretokenizer;  /* PST_PRETOK_* (default PST_PRETOK_AUTO) */
    int32_t compute_dtype; /* PST_DTYPE_F32 (default) or PST_DTYPE_BF16: the precision of the products
                              with the frozen weights (pst_llm_set_compute_dtype). Added after
                              version 1 in what was padding: set it through pst_llm_load_params_init */
} pst_llm_load_params;
#define PST_LLM_LOAD_PARAMS_V1_SIZE 32 /* sizeof(pst_llm_load_params) in version 1 */

/* What a loaded model is (pst_llm_get_info). */
typedef struct pst_llm_info {
    size_t struct_size;       /* sizeof(pst_llm_info) */
    int32_t layers;
    int32_t hidden;
    int32_t intermediate;
    int32_t heads;
    int32_t kv_heads;
    int32_t head_dim;
    int32_t vocab;
    int32_t max_positions;    /* the context length */
    int32_t tied_embeddings;  /* 1 when the LM head is the token embedding */
    int32_t quantized;        /* 1 when the projections are 4-bit */
    int32_t bos_id;           /* -1 when the tokenizer has none */
    int32_t eos_id;           /* -1 when the tokenizer has none */
    int32_t has_tokenizer;    /* 0 for a checkpoint directory without a supported tokenizer */
    int32_t adapter_count;    /* distinct adapter names attached */
    float rms_eps;
    float rope_theta;
    int64_t parameter_count;  /* of the base model (4-bit weights count as parameters) */
    int64_t base_bytes;       /* memory of the frozen base's weights as held now */
} pst_llm_info;
#define PST_LLM_INFO_V1_SIZE 88 /* sizeof(pst_llm_info) in version 1 */

/* pst_llm_tokenize flags */
#define PST_TOKENIZE_ADD_SPECIAL 1    /* add BOS/EOS as the tokenizer's defaults say */
#define PST_TOKENIZE_PARSE_SPECIAL 2  /* text like "<|im_end|>" becomes the special token */
/* pst_llm_detokenize flags */
#define PST_DETOKENIZE_SKIP_SPECIAL 1 /* leave special tokens out */

/* Text generation (pst_llm_generate). Initialize with pst_generate_params_init. */
typedef struct pst_generate_params {
    size_t struct_size;        /* sizeof(pst_generate_params) */
    int32_t max_new_tokens;    /* 64 */
    float temperature;         /* 0 (default): greedy; > 0: sampling */
    float top_p;               /* 1 (default): off; nucleus sampling in (0, 1] */
    int32_t top_k;             /* 0 (default): off */
    uint64_t seed;             /* seeds sampling; 0 */
    int32_t disable_adapters;  /* 1: generate with the base model alone; 0 (default) */
    int32_t stop_at_eos;       /* 1 (default): stop after the tokenizer's EOS (and <|im_end|> if present) */
    const int32_t *stop_ids;   /* more stop tokens (may be NULL) */
    int32_t stop_count;
} pst_generate_params;
#define PST_GENERATE_PARAMS_V1_SIZE 56 /* sizeof(pst_generate_params) in version 1 */

/* Called by pst_llm_generate with each new token and its bytes (a token may end inside a UTF-8
 * sequence: concatenate the bytes). Return 0 to go on, nonzero to stop. */
typedef int32_t (*pst_token_callback)(int32_t token, const char *bytes, size_t byte_count, void *user);

/* ==== section: trainer ==== */
/* pst_trainer: a QLoRA fine-tuning run over a pst_llm: data files read, checked and tokenized
 * into rows, optimizer steps with gradient accumulation and clipping, checkpoints from which a
 * run resumes bit for bit, and the trained adapter saved as a PEFT directory. */

#define PST_DATA_TEXT 0    /* UTF-8 text files, tokenized and packed into seq_len rows (causal LM) */
#define PST_DATA_JSONL 1   /* JSON Lines of {"instruction": ..., "response": ...}, rendered with the
                              ChatML template, loss on the responses only, one row per example */

/* A fine-tuning run. Initialize with pst_trainer_params_init; QLoRA's defaults. */
typedef struct pst_trainer_params {
    size_t struct_size;            /* sizeof(pst_trainer_params) */
    int32_t data_format;           /* PST_DATA_TEXT (default) or PST_DATA_JSONL */
    int32_t seq_len;               /* 256 (2 ... the model's context) */
    int64_t steps;                 /* optimizer steps, 100 */
    int32_t batch_size;            /* sequences per micro-batch, 4 */
    int32_t gradient_accumulation; /* micro-batches per step, 1 */
    double learning_rate;          /* 2e-4 */
    int64_t warmup_steps;          /* 0 */
    int32_t schedule;              /* PST_LR_COSINE (default), PST_LR_LINEAR, PST_LR_CONSTANT(_WARMUP) */
    double weight_decay;           /* 0 */
    double clip_norm;              /* max gradient L2 norm, 1.0; 0 = off */
    int32_t optimizer_state;       /* PST_OPTIM_STATE_F32 (default) or PST_OPTIM_STATE_8BIT */
    int64_t paged_budget_bytes;    /* optimizer state paged under this RAM budget; 0 (default) = unpaged */
    int32_t lora_r;                /* 16 */
    float lora_alpha;              /* 32 */
    float lora_dropout;            /* 0.05 */
    const char *target_modules;    /* comma-separated (q_proj,k_proj,...); NULL = all 7 projections */
    uint64_t seed;                 /* adapter init, dropout masks, data order; 42 */
    int32_t shuffle;               /* 1: visit the rows in a seeded random order each epoch */
    int64_t checkpoint_every;      /* write output_dir/checkpoint-<step> every N steps; 0 = never */
    const char *output_dir;        /* where pst_trainer_train saves the final adapter; NULL = nowhere */
    int32_t recompute;             /* 1: activation recomputation (less memory, ~1/3 more compute) */
    const char *adapter_name;      /* "default" when NULL */
    const char *resume_from;       /* a checkpoint directory to resume (bit-exact); NULL = fresh */
    const char *text_separator;    /* PST_DATA_TEXT: split files into documents at this string
                                      (e.g. "\n\n"); NULL = one document per file */
    const char *system_prompt;     /* PST_DATA_JSONL: a ChatML system turn for every row; NULL = none */
} pst_trainer_params;
#define PST_TRAINER_PARAMS_V1_SIZE 184 /* sizeof(pst_trainer_params) in version 1 */

/* Reported after each optimizer step (pst_trainer_step, the pst_trainer_train callback). */
typedef struct pst_train_progress {
    size_t struct_size;        /* sizeof(pst_train_progress) */
    int64_t step;              /* steps done, 1 after the first */
    int64_t total_steps;
    float loss;                /* mean over the step's target tokens */
    float grad_norm;           /* before clipping (0 when clipping is off) */
    double learning_rate;      /* the rate this step used */
    double tokens_per_second;  /* all positions of the step's sequences / the step's time */
    int64_t resident_bytes;    /* the process's resident set size now */
    double elapsed_seconds;    /* since the trainer was created */
    const char *checkpoint;    /* the checkpoint written after this step, or NULL; valid until the
                                  next call on the trainer */
} pst_train_progress;
#define PST_TRAIN_PROGRESS_V1_SIZE 72 /* sizeof(pst_train_progress) in version 1 */

/* Called by pst_trainer_train after each step. Return 0 to go on, nonzero to stop (the trainer
 * stays usable: pst_trainer_save_checkpoint, then resume later). */
typedef int32_t (*pst_progress_callback)(const pst_train_progress *progress, void *user);

/* What a trainer is training on (pst_trainer_get_info). */
typedef struct pst_trainer_info {
    size_t struct_size;        /* sizeof(pst_trainer_info) */
    int64_t rows;              /* sequences in the dataset */
    int32_t seq_len;
    int64_t tokens;            /* rows * seq_len */
    int64_t target_tokens;     /* positions that carry a loss */
    int64_t completed_steps;
    int64_t total_steps;
    int64_t trainable_parameters;
} pst_trainer_info;
#define PST_TRAINER_INFO_V1_SIZE 64 /* sizeof(pst_trainer_info) in version 1 */

#endif /* PEFTSWIFT_TYPES_H */
