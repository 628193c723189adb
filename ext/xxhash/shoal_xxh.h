/* shoal: XXH3-64 helpers and one hashing worker thread for ext/erasure.pyx.
 *
 * The worker hashes fragment payloads on the second core while the calling thread is inside
 * pyeclib (which holds the GIL and cannot be split). It touches only raw buffers the caller
 * keeps alive until shoal_worker_wait() returns, never a Python object, so it needs no GIL.
 * One worker per process: a caller that finds it busy (another thread, or a forked child's
 * inherited state) hashes inline instead, which is always correct.
 */
#ifndef SHOAL_XXH_H
#define SHOAL_XXH_H

#include <pthread.h>
#include <stdint.h>
#include <string.h>
#include <unistd.h>

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

static const unsigned char shoal_zeros[256] = {0};

static inline uint64_t shoal_xxh3(const void *p, size_t n) { return SHOAL_XXH3(p, n); }

/* XXH3-64 of p[0:n] followed by `zeros` zero bytes (the last data fragment's padding). */
static inline uint64_t shoal_xxh3_padded(const void *p, size_t n, size_t zeros) {
    if (zeros == 0) return SHOAL_XXH3(p, n);
    XXH3_state_t st;
    XXH3_64bits_reset(&st);
    SHOAL_XXH3_UPDATE(&st, p, n);
    while (zeros) {
        size_t z = zeros < sizeof shoal_zeros ? zeros : sizeof shoal_zeros;
        SHOAL_XXH3_UPDATE(&st, shoal_zeros, z);
        zeros -= z;
    }
    return XXH3_64bits_digest(&st);
}

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

typedef struct {
    const char *p;
    size_t n;
    size_t zeros;
    uint64_t out;
} shoal_task;

static struct {
    pthread_mutex_t owner; /* held by the one caller using the worker */
    pthread_mutex_t mu;
    pthread_cond_t job, done_cv;
    shoal_task *tasks;
    int ntasks, has_job, done, started;
    pid_t pid;
} shoal_w = {PTHREAD_MUTEX_INITIALIZER, PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER,
             PTHREAD_COND_INITIALIZER, NULL, 0, 0, 0, 0, 0};

static inline void shoal_run_tasks(shoal_task *t, int n) {
    for (int i = 0; i < n; i++) t[i].out = shoal_xxh3_padded(t[i].p, t[i].n, t[i].zeros);
}

static void *shoal_worker_main(void *arg) {
    (void)arg;
    for (;;) {
        pthread_mutex_lock(&shoal_w.mu);
        while (!shoal_w.has_job) pthread_cond_wait(&shoal_w.job, &shoal_w.mu);
        shoal_task *t = shoal_w.tasks;
        int n = shoal_w.ntasks;
        shoal_w.has_job = 0;
        pthread_mutex_unlock(&shoal_w.mu);
        shoal_run_tasks(t, n);
        pthread_mutex_lock(&shoal_w.mu);
        shoal_w.done = 1;
        pthread_cond_signal(&shoal_w.done_cv);
        pthread_mutex_unlock(&shoal_w.mu);
    }
    return NULL;
}

static void shoal_after_fork_child(void) {
    /* the worker thread does not exist in the child: start a fresh one on first use */
    pthread_mutex_init(&shoal_w.owner, NULL);
    pthread_mutex_init(&shoal_w.mu, NULL);
    pthread_cond_init(&shoal_w.job, NULL);
    pthread_cond_init(&shoal_w.done_cv, NULL);
    shoal_w.has_job = shoal_w.done = shoal_w.started = 0;
}

/* Hand t[0:n] to the worker: 1 if it took them (call shoal_worker_wait before reading t[i].out
 * or releasing the buffers), 0 if the caller must hash them itself (worker busy or unavailable). */
static inline int shoal_worker_post(shoal_task *t, int n) {
    if (pthread_mutex_trylock(&shoal_w.owner) != 0) return 0;
    if (!shoal_w.started || shoal_w.pid != getpid()) {
        pthread_t th;
        pthread_attr_t attr;
        if (!shoal_w.started) pthread_atfork(NULL, NULL, shoal_after_fork_child);
        pthread_attr_init(&attr);
        pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
        int rc = pthread_create(&th, &attr, shoal_worker_main, NULL);
        pthread_attr_destroy(&attr);
        if (rc != 0) {
            pthread_mutex_unlock(&shoal_w.owner);
            return 0;
        }
        shoal_w.started = 1;
        shoal_w.pid = getpid();
    }
    pthread_mutex_lock(&shoal_w.mu);
    shoal_w.tasks = t;
    shoal_w.ntasks = n;
    shoal_w.done = 0;
    shoal_w.has_job = 1;
    pthread_cond_signal(&shoal_w.job);
    pthread_mutex_unlock(&shoal_w.mu);
    return 1;
}

static inline void shoal_worker_wait(void) {
    pthread_mutex_lock(&shoal_w.mu);
    while (!shoal_w.done) pthread_cond_wait(&shoal_w.done_cv, &shoal_w.mu);
    pthread_mutex_unlock(&shoal_w.mu);
    pthread_mutex_unlock(&shoal_w.owner);
}

#endif
