/* peftswift_types.h: the hand-written part of the C API (status codes, constants, handle and
 * parameter types). The function declarations are generated from the Swift sources into
 * include/peftswift.h by scripts/gen_header.py; include <peftswift.h>, not this file. */
#ifndef PEFTSWIFT_TYPES_H
#define PEFTSWIFT_TYPES_H

#include <stddef.h>
#include <stdint.h>
#include <stdbool.h>

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

/* ---- Element types of tensors crossing the ABI */
#define PST_DTYPE_F32 0
#define PST_DTYPE_F16 1
#define PST_DTYPE_BF16 2
#define PST_DTYPE_U8 3
#define PST_DTYPE_I8 4
#define PST_DTYPE_I32 5
#define PST_DTYPE_I64 6

/* ---- 4-bit quantization types (bitsandbytes' quant_type) */
#define PST_QUANT_NF4 0
#define PST_QUANT_FP4 1

/* ---- Opaque handles. Never dereference, copy or declare one by value: only pointers returned
 * by the matching pst_*_create/load functions are valid, and only until the matching free.
 * (Each is a complete struct with one reserved byte so that Swift can name the type; the
 * byte has no meaning.) */
typedef struct pst_quant { uint8_t pst_reserved_; } pst_quant;

#endif /* PEFTSWIFT_TYPES_H */
