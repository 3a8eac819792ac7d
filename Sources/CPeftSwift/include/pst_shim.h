/* Internal to peftswift (not installed, not exported): per-thread storage of the last error. */
#ifndef PST_SHIM_H
#define PST_SHIM_H
#include <stddef.h>
/* Copies at most PSTSHIM_ERROR_CAP-1 bytes of msg (truncating at a UTF-8 boundary). */
#define PSTSHIM_ERROR_CAP 1024
void pstshim_set_error(const char *msg, size_t len) __attribute__((visibility("hidden")));
void pstshim_clear_error(void) __attribute__((visibility("hidden")));
const char *pstshim_last_error(void) __attribute__((visibility("hidden")));
#endif
