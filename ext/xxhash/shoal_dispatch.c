/* shoal: build xxHash's runtime x86 dispatch (SSE2/AVX2/AVX512 chosen at run time) only on x86-64. */
#if defined(__x86_64__) || defined(_M_X64)
#include "xxh_x86dispatch.c"
#endif
