/* Compile the SSE4.1 kernel without a per-file -msse4.1 flag (the build passes one set of flags
   for every source); blake3_dispatch.c only calls it after checking the CPU at run time. */
#if defined(__x86_64__) || defined(_M_X64) || defined(__i386__)
#pragma GCC target("sse4.1")
#include "blake3_sse41.c"
#endif
