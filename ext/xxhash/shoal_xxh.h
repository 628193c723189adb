/* shoal: XXH3-64 (runtime-dispatched to AVX2/AVX512 on x86-64) and CRC-32 helpers for
 * ext/erasure.pyx, all callable without the GIL. */
#ifndef SHOAL_XXH_H
#define SHOAL_XXH_H

#include <stdint.h>
#include <string.h>

#define XXH_STATIC_LINKING_ONLY
#include "xxhash.h"
#if defined(__x86_64__) || defined(_M_X64)
#include "xxh_x86dispatch.h"
#define SHOAL_XXH3(p, n) XXH3_64bits_dispatch((p), (n))
#define SHOAL_XXH3_UPDATE(s, p, n) XXH3_64bits_update_dispatch((s), (p), (n))
#else
#define SHOAL_XXH3(p, n) XXH3_64bits((p), (n))
#define SHOAL_XXH3_UPDATE(s, p, n) XXH3_64bits_update((s), (p), (n))
#endif

static inline uint64_t shoal_xxh3(const void *p, size_t n) { return SHOAL_XXH3(p, n); }

/* memcpy src[0:take] to dst and return XXH3-64 of src[0:total] (total >= take), reading each
 * block once from memory: it is hashed from cache right after being copied. */
static inline uint64_t shoal_copy_xxh3(char *dst, const char *src, size_t take, size_t total) {
    enum { BLOCK = 64 * 1024 };
    XXH3_state_t st;
    XXH3_64bits_reset(&st);
    size_t done = 0;
    while (done < take) {
        size_t n = take - done < BLOCK ? take - done : BLOCK;
        memcpy(dst + done, src + done, n);
        SHOAL_XXH3_UPDATE(&st, dst + done, n);
        done += n;
    }
    if (total > take) SHOAL_XXH3_UPDATE(&st, src + take, total - take);
    return XXH3_64bits_digest(&st);
}

/* zlib's CRC-32 (liberasurecode's metadata_chksum), for the 59 bytes of a fragment's metadata. */
static inline uint32_t shoal_crc32(const unsigned char *p, size_t n) {
    uint32_t c = 0xFFFFFFFFu;
    for (size_t i = 0; i < n; i++) {
        c ^= p[i];
        for (int b = 0; b < 8; b++) c = (c >> 1) ^ (0xEDB88320u & (0u - (c & 1u)));
    }
    return c ^ 0xFFFFFFFFu;
}

#endif
