/* Compiled as C99, C11 and C++17 with -Wall -Wextra -Werror by Tests/abi/check.sh: the header
 * must be usable from all three, and its macros and the library must agree. */
#include <peftswift.h>
#include <stdio.h>
#include <string.h>

int main(void) {
    /* the compile-time version macros agree with the library */
    if (pst_abi_version() != PST_ABI_VERSION) return 1;
    if (strcmp(pst_version_string(), PST_VERSION_STRING) != 0) return 2;
    if (strcmp(pst_status_string(PST_OK), "ok") != 0) return 3;
    pst_quant_state st;
    memset(&st, 0, sizeof st);
    st.struct_size = sizeof st;
    (void)st;
    printf("header ok: %s\n", pst_version_string());
    return 0;
}
