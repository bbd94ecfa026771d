/* cbn_simd.h: the innermost reduction loops of the cbn kernels, plus OpenMP and CPU queries.
 *
 * Why C and not Cython: a float reduction only vectorises if the compiler may reassociate it,
 * and the flags that allow that (-fassociative-math) would also let it rewrite the compensated
 * arithmetic elsewhere in the kernels.  Here each reduction is written with explicit GCC/Clang
 * vector types and four independent accumulators: the summation order is fixed by this code
 * (so results never depend on the compiler or thread count), the loops run at SIMD width, and
 * the four chains hide the add latency.  The vector type is 8 doubles (64 bytes); the compiler
 * lowers it to one AVX-512, two AVX2 or four SSE2 registers according to the variant's -march.
 *
 * All sums are accumulated in double, whatever the input type.
 */
#ifndef CBN_SIMD_H
#define CBN_SIMD_H

#include <stddef.h>
#include <string.h>
#include <stdlib.h>
#include <unistd.h>

#ifdef _OPENMP
#include <omp.h>
#endif

#ifndef CBN_VARIANT
#define CBN_VARIANT "baseline"
#endif

/* ---------------------------------------------------------------- OpenMP and CPU queries */

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

/* Size of the OpenMP team that last ran a kernel task (1 when serial): lets the tests prove
 * that threads are really used, without timing.  A benign race: every writer stores the same
 * value. */
static int cbn_last_team = 0;
static inline void cbn_note_team(void) {
#ifdef _OPENMP
    cbn_last_team = omp_get_num_threads();
#else
    cbn_last_team = 1;
#endif
}
static inline int cbn_get_last_team(void) { return cbn_last_team; }
static inline void cbn_reset_last_team(void) { cbn_last_team = 0; }

static inline const char *cbn_variant(void) { return CBN_VARIANT; }

/* 1 if the running CPU (and OS) supports the named kernel variant. */
static inline int cbn_cpu_supports(const char *variant) {
    if (strcmp(variant, "baseline") == 0) return 1;
#if (defined(__GNUC__) || defined(__clang__)) && (defined(__x86_64__) || defined(__i386__))
    __builtin_cpu_init();
    if (strcmp(variant, "avx2") == 0)
        return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
               __builtin_cpu_supports("bmi2");
    if (strcmp(variant, "avx512") == 0)
        return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
               __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512vl") &&
               __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
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

/* ---------------------------------------------------------------- reductions */

#if defined(__GNUC__) || defined(__clang__)
#define CBN_VECTOR 1
typedef double cbn_v8d __attribute__((vector_size(64)));
typedef float cbn_v8f __attribute__((vector_size(32)));

static inline cbn_v8d cbn_load8_f32(const float *p) {
    cbn_v8f v;
    memcpy(&v, p, sizeof v);
    return __builtin_convertvector(v, cbn_v8d);
}
static inline cbn_v8d cbn_load8_f64(const double *p) {
    cbn_v8d v;
    memcpy(&v, p, sizeof v);
    return v;
}
static inline double cbn_hsum8(cbn_v8d v) {
    /* fixed pairwise order */
    double a = (v[0] + v[4]) + (v[2] + v[6]);
    double b = (v[1] + v[5]) + (v[3] + v[7]);
    return a + b;
}
#endif

/* The reductions are generated for float and double by one macro so both stay identical. */
#ifdef CBN_VECTOR
#define CBN_DEFINE_REDUCTIONS(T, SFX)                                                            \
/* sum of x[0:n] */                                                                              \
static inline double cbn_sum_##SFX(const T *x, ptrdiff_t n) {                                    \
    cbn_v8d a0 = {0}, a1 = {0}, a2 = {0}, a3 = {0};                                              \
    ptrdiff_t i = 0;                                                                             \
    for (; i + 32 <= n; i += 32) {                                                               \
        a0 += cbn_load8_##SFX(x + i);                                                            \
        a1 += cbn_load8_##SFX(x + i + 8);                                                        \
        a2 += cbn_load8_##SFX(x + i + 16);                                                       \
        a3 += cbn_load8_##SFX(x + i + 24);                                                       \
    }                                                                                            \
    for (; i + 8 <= n; i += 8) a0 += cbn_load8_##SFX(x + i);                                     \
    double s = cbn_hsum8((a0 + a1) + (a2 + a3));                                                 \
    for (; i < n; i++) s += (double)x[i];                                                        \
    return s;                                                                                    \
}                                                                                                \
/* sum of (x - m)^2 over x[0:n] */                                                               \
static inline double cbn_sumsq_dev_##SFX(const T *x, ptrdiff_t n, double m) {                    \
    cbn_v8d a0 = {0}, a1 = {0}, a2 = {0}, a3 = {0};                                              \
    const cbn_v8d mv = {m, m, m, m, m, m, m, m};                                                 \
    ptrdiff_t i = 0;                                                                             \
    for (; i + 32 <= n; i += 32) {                                                               \
        cbn_v8d d0 = cbn_load8_##SFX(x + i) - mv, d1 = cbn_load8_##SFX(x + i + 8) - mv;          \
        cbn_v8d d2 = cbn_load8_##SFX(x + i + 16) - mv, d3 = cbn_load8_##SFX(x + i + 24) - mv;    \
        a0 += d0 * d0; a1 += d1 * d1; a2 += d2 * d2; a3 += d3 * d3;                              \
    }                                                                                            \
    for (; i + 8 <= n; i += 8) { cbn_v8d d = cbn_load8_##SFX(x + i) - mv; a0 += d * d; }        \
    double s = cbn_hsum8((a0 + a1) + (a2 + a3));                                                 \
    for (; i < n; i++) { double d = (double)x[i] - m; s += d * d; }                              \
    return s;                                                                                    \
}                                                                                                \
/* sum of dy in exactly the order cbn_sum_dot uses for its first sum, added to *sdy: dbias is   \
 * then bit-identical whether or not dweight/dx are computed too */                             \
static inline void cbn_sum_like_dot_##SFX(const T *dy, ptrdiff_t n, double *sdy) {               \
    cbn_v8d s0 = {0}, s1 = {0};                                                                  \
    ptrdiff_t i = 0;                                                                             \
    for (; i + 16 <= n; i += 16) {                                                               \
        s0 += cbn_load8_##SFX(dy + i);                                                           \
        s1 += cbn_load8_##SFX(dy + i + 8);                                                       \
    }                                                                                            \
    for (; i + 8 <= n; i += 8) s0 += cbn_load8_##SFX(dy + i);                                    \
    double a = cbn_hsum8(s0 + s1);                                                               \
    for (; i < n; i++) a += (double)dy[i];                                                       \
    *sdy += a;                                                                                   \
}                                                                                                \
/* sum of dy and of dy * (x - m) over [0:n], added to *sdy and *sdyx */                          \
static inline void cbn_sum_dot_##SFX(const T *dy, const T *x, ptrdiff_t n, double m,             \
                                     double *sdy, double *sdyx) {                                \
    cbn_v8d s0 = {0}, s1 = {0}, p0 = {0}, p1 = {0};                                              \
    const cbn_v8d mv = {m, m, m, m, m, m, m, m};                                                 \
    ptrdiff_t i = 0;                                                                             \
    for (; i + 16 <= n; i += 16) {                                                               \
        cbn_v8d g0 = cbn_load8_##SFX(dy + i), g1 = cbn_load8_##SFX(dy + i + 8);                  \
        s0 += g0; s1 += g1;                                                                      \
        p0 += g0 * (cbn_load8_##SFX(x + i) - mv);                                                \
        p1 += g1 * (cbn_load8_##SFX(x + i + 8) - mv);                                            \
    }                                                                                            \
    for (; i + 8 <= n; i += 8) {                                                                 \
        cbn_v8d g = cbn_load8_##SFX(dy + i);                                                     \
        s0 += g; p0 += g * (cbn_load8_##SFX(x + i) - mv);                                        \
    }                                                                                            \
    double a = cbn_hsum8(s0 + s1), b = cbn_hsum8(p0 + p1);                                       \
    for (; i < n; i++) { a += (double)dy[i]; b += (double)dy[i] * ((double)x[i] - m); }         \
    *sdy += a; *sdyx += b;                                                                       \
}
#else /* portable scalar fallback with the same semantics */
#define CBN_DEFINE_REDUCTIONS(T, SFX)                                                            \
static inline double cbn_sum_##SFX(const T *x, ptrdiff_t n) {                                    \
    double s0 = 0, s1 = 0, s2 = 0, s3 = 0; ptrdiff_t i = 0;                                      \
    for (; i + 4 <= n; i += 4) { s0 += x[i]; s1 += x[i + 1]; s2 += x[i + 2]; s3 += x[i + 3]; }  \
    double s = (s0 + s2) + (s1 + s3);                                                            \
    for (; i < n; i++) s += (double)x[i];                                                        \
    return s;                                                                                    \
}                                                                                                \
static inline double cbn_sumsq_dev_##SFX(const T *x, ptrdiff_t n, double m) {                    \
    double s = 0; for (ptrdiff_t i = 0; i < n; i++) { double d = (double)x[i] - m; s += d * d; } \
    return s;                                                                                    \
}                                                                                                \
static inline void cbn_sum_like_dot_##SFX(const T *dy, ptrdiff_t n, double *sdy) {               \
    double a = 0; for (ptrdiff_t i = 0; i < n; i++) a += dy[i];                                  \
    *sdy += a;                                                                                   \
}                                                                                                \
static inline void cbn_sum_dot_##SFX(const T *dy, const T *x, ptrdiff_t n, double m,             \
                                     double *sdy, double *sdyx) {                                \
    double a = 0, b = 0;                                                                         \
    for (ptrdiff_t i = 0; i < n; i++) { a += dy[i]; b += (double)dy[i] * ((double)x[i] - m); }   \
    *sdy += a; *sdyx += b;                                                                       \
}
#endif

CBN_DEFINE_REDUCTIONS(float, f32)
CBN_DEFINE_REDUCTIONS(double, f64)

/* Column (across-channel) accumulations for the channels-last layout: element-wise over c, so
 * they vectorise without reassociation.  acc and x never alias. */
#define CBN_DEFINE_COLUMNS(T, SFX)                                                               \
static inline void cbn_col_sum_##SFX(double *restrict acc, const T *restrict x, ptrdiff_t n) {  \
    for (ptrdiff_t i = 0; i < n; i++) acc[i] += (double)x[i];                                    \
}                                                                                                \
static inline void cbn_col_sumsq_dev_##SFX(double *restrict acc, const T *restrict x,           \
                                           const double *restrict m, ptrdiff_t n) {              \
    for (ptrdiff_t i = 0; i < n; i++) { double d = (double)x[i] - m[i]; acc[i] += d * d; }       \
}                                                                                                \
static inline void cbn_col_sum_dot_##SFX(double *restrict sdy, double *restrict sdyx,           \
                                         const T *restrict dy, const T *restrict x,              \
                                         const double *restrict m, ptrdiff_t n) {                \
    for (ptrdiff_t i = 0; i < n; i++) {                                                          \
        double g = (double)dy[i];                                                                \
        sdy[i] += g;                                                                             \
        sdyx[i] += g * ((double)x[i] - m[i]);                                                    \
    }                                                                                            \
}

CBN_DEFINE_COLUMNS(float, f32)
CBN_DEFINE_COLUMNS(double, f64)

#endif /* CBN_SIMD_H */
