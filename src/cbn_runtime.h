/* cbn_runtime.h: the state cbn keeps once per process, and the machine queries.
 *
 * One cbn_runtime lives in the compile-once module (_core.pyx); every SIMD level's kernels get
 * a pointer to it when they are bound (cbn_table.h), so the tuning settings, the test probes and
 * the fork-safety flags exist once whichever level runs.  The machine queries (OpenMP, CPU
 * features, cache sizes) are plain C, independent of the SIMD level.
 */
#ifndef CBN_RUNTIME_H
#define CBN_RUNTIME_H

#include <stddef.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>
#include <pthread.h>

#ifdef _OPENMP
#include <omp.h>
#endif

#define CBN_RUNTIME_CAPSULE "cbn.runtime"

typedef struct {
    /* tuning, written by _core.pyx (set_nontemporal_min_bytes, set_reverse_mode) */
    ptrdiff_t fuse_budget_bytes; /* a channel this large is normalised while cached */
    ptrdiff_t nt_min_bytes;      /* streaming stores from this working set; -1: never */
    int reverse_mode;            /* 0 up, 1 by placement (cbn_reverse.h), 2 down */
    /* probes for the tests, written by the kernels; benign races: every writer stores the same
     * value */
    int last_team;               /* OpenMP team size of the last kernel task */
    int last_streamed;           /* a pass used streaming stores since the last reset */
    int last_reversed;           /* a pass walked down in memory since the last reset */
    /* GNU libgomp is not fork-safe: a child forked after the parent ran a thread team can hang
     * in its next parallel region (scikit-learn #7650).  Kernels set team_started before a
     * team; the pthread_atfork child handler then marks the child, and every kernel there runs
     * on the calling thread without entering an OpenMP region. */
    volatile int team_started;
    volatile int forked_child;
} cbn_runtime;

/* ---------------------------------------------------------------- OpenMP */

static inline int cbn_openmp_enabled(void) {
#ifdef _OPENMP
    return 1;
#else
    return 0;
#endif
}

static inline int cbn_openmp_version(void) {
#ifdef _OPENMP
    return _OPENMP;
#else
    return 0;
#endif
}

static inline int cbn_max_threads(void) {
#ifdef _OPENMP
    return omp_get_max_threads();
#else
    return 1;
#endif
}

static inline int cbn_num_procs(void) {
#ifdef _OPENMP
    return omp_get_num_procs();
#else
    return 1;
#endif
}

/* Called by a kernel task: records the size of the team running it (lets the tests prove that
 * threads are really used, without timing). */
static inline void cbn_note_team(cbn_runtime *rt) {
#ifdef _OPENMP
    rt->last_team = omp_get_num_threads();
#else
    rt->last_team = 1;
#endif
}

/* ---------------------------------------------------------------- CPU and caches */

/* 1 if the running CPU (and OS) supports the named kernel level. */
static inline int cbn_cpu_supports(const char *level) {
    if (strcmp(level, "baseline") == 0) return 1;
#if (defined(__GNUC__) || defined(__clang__)) && (defined(__x86_64__) || defined(__i386__))
    __builtin_cpu_init();
    if (strcmp(level, "avx2") == 0)
        return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
               __builtin_cpu_supports("bmi2");
    if (strcmp(level, "avx512") == 0)
        return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
               __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512vl") &&
               __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
#endif
    return 0;
}

/* Size of the last-level cache: Linux sysfs first (glibc's sysconf has been seen reporting a
 * whole host's L3, 10x the 32 MB a 2-core VM shares, from CPUID leaves), sysconf otherwise. */
static inline long cbn_l3_cache_bytes(void) {
    long best = 0;
    int best_level = 0;
    for (int i = 0; i < 16; i++) {
        char path[96];
        int level = 0;
        long size = 0;
        char unit = 0;
        FILE *f;
        snprintf(path, sizeof path, "/sys/devices/system/cpu/cpu0/cache/index%d/level", i);
        if (!(f = fopen(path, "r"))) break;
        if (fscanf(f, "%d", &level) != 1) level = 0;
        fclose(f);
        snprintf(path, sizeof path, "/sys/devices/system/cpu/cpu0/cache/index%d/size", i);
        if (!(f = fopen(path, "r"))) continue;
        if (fscanf(f, "%ld%c", &size, &unit) < 1) size = 0;
        fclose(f);
        if (unit == 'K') size *= 1024;
        else if (unit == 'M') size *= 1024 * 1024;
        if (level > best_level && size > 0) { best_level = level; best = size; }
    }
    if (best_level >= 2 && best > 0) return best;
#ifdef _SC_LEVEL3_CACHE_SIZE
    {
        long v = sysconf(_SC_LEVEL3_CACHE_SIZE);
        if (v > 0) return v;
    }
#endif
    return 0;
}

/* Per-core L2 size in bytes (0 when unknown); decides whether a channel is fused in cache. */
static inline long cbn_l2_cache_bytes(void) {
#ifdef _SC_LEVEL2_CACHE_SIZE
    long v = sysconf(_SC_LEVEL2_CACHE_SIZE);
    return v > 0 ? v : 0;
#else
    return 0;
#endif
}

#endif /* CBN_RUNTIME_H */
