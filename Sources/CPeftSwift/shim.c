/* The C target carries include/peftswift_types.h into Swift and keeps the per-thread last-error
 * buffer (C11 _Thread_local: no allocation, no destructor, valid until the thread's next call). */
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
