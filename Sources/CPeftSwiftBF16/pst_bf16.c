/* Intentionally empty: the module's content is the inline functions of include/pst_bf16.h
 * (a C target needs one source file). */
#include "pst_bf16.h"
