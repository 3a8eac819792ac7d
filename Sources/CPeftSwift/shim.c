/* The C target carries include/peftswift_types.h into Swift and keeps the per-thread last-error
 * buffer (C11 _Thread_local: no allocation, no destructor, valid until the thread's next call),
 * and the status names. Compiled for baseline x86-64: it runs before the CPU check (entry.c). */
#include "peftswift_types.h"
#include "pst_shim.h"
#include <string.h>

static _Thread_local char pstshim_error_buf[PSTSHIM_ERROR_CAP];

void pstshim_set_error(const char *msg, size_t len) {
    if (len >= PSTSHIM_ERROR_CAP) {
        len = PSTSHIM_ERROR_CAP - 1;
        /* do not cut a UTF-8 sequence in half */
        while (len > 0 && (((unsigned char)msg[len]) & 0xC0) == 0x80) len--;
    }
    memcpy(pstshim_error_buf, msg, len);
    pstshim_error_buf[len] = 0;
}

void pstshim_clear_error(void) { pstshim_error_buf[0] = 0; }

const char *pstshim_last_error(void) { return pstshim_error_buf; }

const char *pstshim_status_string(int32_t status) {
    switch (status) {
    case PST_OK: return "ok";
    case PST_ERR_INVALID_ARG: return "invalid argument";
    case PST_ERR_OUT_OF_MEMORY: return "out of memory";
    case PST_ERR_SHAPE: return "shape mismatch";
    case PST_ERR_UNSUPPORTED: return "unsupported";
    case PST_ERR_MISUSE: return "misuse";
    case PST_ERR_IO: return "I/O error";
    case PST_ERR_CORRUPT: return "corrupt data";
    case PST_ERR_NOT_FOUND: return "not found";
    case PST_ERR_EXISTS: return "already exists";
    case PST_ERR_NONFINITE: return "non-finite value";
    case PST_ERR_INTERNAL: return "internal error";
    case PST_ERR_UNSUPPORTED_CPU: return "unsupported CPU";
    default: return "unknown status";
    }
}

/* The growable structs (peftswift_types.h, "Structs that grow"): struct_size comes first, and a
 * version-1 size can only stay at or below the struct's sizeof as fields are appended. */
#define PST_GROWS(T, V1)                                                                  \
    _Static_assert(offsetof(T, struct_size) == 0, #T ": struct_size must be the first field"); \
    _Static_assert((V1) <= sizeof(T), #T ": " #V1 " must not exceed sizeof(" #T ")")
PST_GROWS(pst_quant_state, PST_QUANT_STATE_V1_SIZE);
PST_GROWS(pst_lora_params, PST_LORA_PARAMS_V1_SIZE);
PST_GROWS(pst_adamw_params, PST_ADAMW_PARAMS_V1_SIZE);
PST_GROWS(pst_pager_stats, PST_PAGER_STATS_V1_SIZE);
PST_GROWS(pst_tensor, PST_TENSOR_V1_SIZE);
PST_GROWS(pst_llm_load_params, PST_LLM_LOAD_PARAMS_V1_SIZE);
PST_GROWS(pst_llm_info, PST_LLM_INFO_V1_SIZE);
PST_GROWS(pst_generate_params, PST_GENERATE_PARAMS_V1_SIZE);
PST_GROWS(pst_trainer_params, PST_TRAINER_PARAMS_V1_SIZE);
PST_GROWS(pst_train_progress, PST_TRAIN_PROGRESS_V1_SIZE);
PST_GROWS(pst_trainer_info, PST_TRAINER_INFO_V1_SIZE);
