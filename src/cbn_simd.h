/* cbn_simd.h: the innermost reduction loops of the cbn kernels, and their work buffers.
 *
 * Why C and not Cython: a float reduction only vectorises if the compiler may reassociate it,
 * and the flags that allow that (-fassociative-math) would also let it rewrite the compensated
 * arithmetic elsewhere in the kernels.  Here each reduction is written with explicit GCC/Clang
 * vector types and four independent accumulators: the summation order is fixed by this code
 * (so results never depend on the compiler or thread count), the loops run at SIMD width, and
 * the four chains hide the add latency.  The vectors are native (as wide as the variant's
 * registers: GCC spills wider generic vectors to the stack); reductions along a run keep 8 lanes
 * of partial sums as one AVX-512, two AVX2 or four SSE2 vectors, so every level sums in the
 * same order.
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

/* ---------------------------------------------------------------- work buffers */

/* Per-thread scratch: nt slices of n doubles, each starting on its own 64-byte cache line (the
 * slices hold hot accumulators: sharing a line between threads would serialise them).
 * *stride receives the slice stride in doubles.  Free with free(). */
static inline double *cbn_alloc_per_thread(int nt, ptrdiff_t n, ptrdiff_t *stride) {
    void *p = NULL;
    ptrdiff_t s = (n + 7) & ~(ptrdiff_t)7;
    if (s < 8) s = 8;
    *stride = s;
    if (posix_memalign(&p, 64, (size_t)(nt > 0 ? nt : 1) * (size_t)s * sizeof(double)) != 0)
        return NULL;
    return (double *)p;
}

/* Per-channel coefficient vectors for the element-wise passes, placed half a page (mod 4 KB)
 * away from the output they are used with.  The channels-last loops load coef[j] right after
 * storing out[r, j - VL]; when the two addresses share their low 12 bits the load waits on the
 * store (4K aliasing).  With rows of a multiple of 4 KB (1024 float32 channels) every row sits
 * at the output's page offset; with the malloc'd block wherever it fell, (64, 1024) float32
 * inference measured 1.44-1.83x a copy at some output offsets and ~0.95x elsewhere (one thread,
 * data in L2); placed half a page away, 0.92-1.06x at every offset.  Free with cbn_free_beside;
 * NULL when out of memory. */
static inline void *cbn_alloc_beside(size_t nbytes, const void *out) {
    char *raw = (char *)malloc(nbytes + 4096 + 2 * sizeof(void *));
    size_t off;
    if (raw == NULL) return NULL;
    off = ((size_t)(const char *)out + 2048 - (size_t)raw) & 4095;
    if (off < 2 * sizeof(void *)) off += 4096;  /* room for the raw pointer just below */
    memcpy(raw + off - sizeof(void *), &raw, sizeof(void *));  /* out may be only 4-aligned */
    return raw + off;
}

static inline void cbn_free_beside(void *p) {
    void *raw;
    if (p == NULL) return;
    memcpy(&raw, (char *)p - sizeof(void *), sizeof(void *));
    free(raw);
}

/* ---------------------------------------------------------------- reductions */

#if defined(__GNUC__) || defined(__clang__)
#define CBN_VECTOR 1
#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#endif
/* Native vectors: as wide as the target's registers.  GCC keeps a vector type in registers only
 * when the target has registers of its size: a 64-byte type under AVX2 or SSE2 lives on the
 * stack, every operation a store and reloads (measured: the float32 sum 5.4x slower under AVX2
 * than under AVX-512, and slower than SSE2 code).  Kernels on data in the input type use these
 * directly; each lane is a separate column or element, so their width never changes a result. */
#if defined(__AVX512F__)
#define CBN_VB 64
#elif defined(__AVX__)
#define CBN_VB 32
#else
#define CBN_VB 16
#endif
typedef double cbn_vd __attribute__((vector_size(CBN_VB)));
typedef long long cbn_vl __attribute__((vector_size(CBN_VB)));
typedef float cbn_vf __attribute__((vector_size(CBN_VB)));
typedef int cbn_vi __attribute__((vector_size(CBN_VB)));
#define CBN_DL (CBN_VB / 8) /* doubles per native vector */
#define CBN_NV (8 / CBN_DL) /* native vectors per 8 lanes */

static inline cbn_vd cbn_loadv_f64(const double *p) {
    cbn_vd v;
    memcpy(&v, p, sizeof v);
    return v;
}
static inline void cbn_storev_f64(double *p, cbn_vd v) { memcpy(p, &v, sizeof v); }
/* CBN_DL floats at p as doubles.  GCC 12 lowers __builtin_convertvector between these types into
 * half-width converts plus inserts, so the ISA's own conversion is used. */
static inline cbn_vd cbn_loadv_f32(const float *p) {
#if defined(__AVX512F__)
    return (cbn_vd)_mm512_cvtps_pd(_mm256_loadu_ps(p));
#elif defined(__AVX__)
    return (cbn_vd)_mm256_cvtps_pd(_mm_loadu_ps(p));
#elif defined(__SSE2__)
    const __m128i two = _mm_loadl_epi64((const __m128i *)(const void *)p); /* 2 floats */
    return (cbn_vd)_mm_cvtps_pd(_mm_castsi128_ps(two));
#else
    cbn_vd v;
    for (int l = 0; l < CBN_DL; l++) v[l] = (double)p[l];
    return v;
#endif
}

/* The reductions along a run keep 8 partial sums, lane l summing the elements i with
 * i % 8 == l, as CBN_NV native vectors (lane l in vector l / CBN_DL): the summation order is
 * that of 8 lanes at every SIMD level.  cbn_v8d is that group; the small functions below are its
 * arithmetic (all inlined: GCC keeps the vectors in registers). */
typedef struct { cbn_vd h[CBN_NV]; } cbn_v8d;
#define CBN_V8_EACH(u) for (int u = 0; u < CBN_NV; u++)

static inline cbn_v8d cbn_v8_set1(double k) {
    cbn_v8d r;
    CBN_V8_EACH(u) r.h[u] = (cbn_vd){0} + k;
    return r;
}
static inline cbn_v8d cbn_v8_zero(void) { return cbn_v8_set1(0.0); }
static inline cbn_v8d cbn_v8_add(cbn_v8d a, cbn_v8d b) {
    CBN_V8_EACH(u) a.h[u] += b.h[u];
    return a;
}
static inline cbn_v8d cbn_v8_sub(cbn_v8d a, cbn_v8d b) {
    CBN_V8_EACH(u) a.h[u] -= b.h[u];
    return a;
}
/* s + a * b (contracted to an FMA where the target has one, as the plain expression would be) */
static inline cbn_v8d cbn_v8_madd(cbn_v8d s, cbn_v8d a, cbn_v8d b) {
    CBN_V8_EACH(u) s.h[u] += a.h[u] * b.h[u];
    return s;
}
static inline cbn_v8d cbn_load8_f32(const float *p) {
    cbn_v8d r;
    CBN_V8_EACH(u) r.h[u] = cbn_loadv_f32(p + u * CBN_DL);
    return r;
}
static inline cbn_v8d cbn_load8_f64(const double *p) {
    cbn_v8d r;
    CBN_V8_EACH(u) r.h[u] = cbn_loadv_f64(p + u * CBN_DL);
    return r;
}
static inline void cbn_store8_f64(double *p, cbn_v8d v) {
    CBN_V8_EACH(u) cbn_storev_f64(p + u * CBN_DL, v.h[u]);
}
/* The first k < 8 elements at p, zero-padded (never reads past p + k). */
static inline cbn_v8d cbn_load8_tail_f32(const float *p, int k) {
#if defined(__AVX512F__) && defined(__AVX512VL__)
    cbn_v8d r;
    r.h[0] = (cbn_vd)_mm512_cvtps_pd(_mm256_maskz_loadu_ps((__mmask8)((1u << k) - 1u), p));
    return r;
#else
    float b[8] = {0};
    for (int l = 0; l < k; l++) b[l] = p[l];
    return cbn_load8_f32(b);
#endif
}
static inline cbn_v8d cbn_load8_tail_f64(const double *p, int k) {
#if defined(__AVX512F__)
    cbn_v8d r;
    r.h[0] = (cbn_vd)_mm512_maskz_loadu_pd((__mmask8)((1u << k) - 1u), p);
    return r;
#else
    double b[8] = {0};
    for (int l = 0; l < k; l++) b[l] = p[l];
    return cbn_load8_f64(b);
#endif
}
/* v with lanes >= k set to +0.0 (whatever they held: x - k of a zero padding is -k) */
static inline cbn_v8d cbn_v8_first(cbn_v8d v, int k) {
    CBN_V8_EACH(u) {
        cbn_vl lane;
        for (int l = 0; l < CBN_DL; l++) lane[l] = u * CBN_DL + l;
        v.h[u] = (cbn_vd)((cbn_vl)v.h[u] & (cbn_vl)(lane < (long long)k));
    }
    return v;
}
static inline double cbn_hsum8(cbn_v8d v) {
    double a[8];
    cbn_store8_f64(a, v);
    /* fixed pairwise order */
    return ((a[0] + a[4]) + (a[2] + a[6])) + ((a[1] + a[5]) + (a[3] + a[7]));
}
#endif

/* The upstream gradient of batch norm when a fused ReLU follows it: dy where the forward output
 * y is > 0, else 0 (torch's threshold_backward; NaN in y gives 0).  ym == NULL: no activation.
 * The branch on ym is loop-invariant: the compiler unswitches it. */
#define CBN_G1(dy, ym, i) ((ym) == NULL ? (double)(dy)[i] : cbn_select((double)(dy)[i], (ym)[i] > 0))
/* g if keep else 0, with both operands evaluated: a conditional *load* (c ? dy[i] : 0) stops
 * the vectoriser, a select of loaded values does not. */
static inline double cbn_select(double g, int keep) { return keep ? g : 0.0; }
#ifdef CBN_VECTOR
/* g where y > 0, else 0 */
static inline cbn_vd cbn_relu_maskv(cbn_vd g, cbn_vd y) {
    const cbn_vd zero = {0};
    return (cbn_vd)((cbn_vl)g & (cbn_vl)(y > zero));
}
static inline cbn_v8d cbn_relu_mask8(cbn_v8d g, cbn_v8d y) {
    CBN_V8_EACH(u) g.h[u] = cbn_relu_maskv(g.h[u], y.h[u]);
    return g;
}
#define CBN_G8(SFX, dy, ym, i) ((ym) == NULL ? cbn_load8_##SFX((dy) + (i))                      \
    : cbn_relu_mask8(cbn_load8_##SFX((dy) + (i)), cbn_load8_##SFX((ym) + (i))))
#endif

/* x - k computed as x * 1 - k: the same value (x * 1 is exact, one rounding either way), but
 * on an FMA pipe.  With AVX-512 on Zen 4 the float64 sums of cached data are bound by the add
 * pipes (the float32 -> float64 conversions, the shifts and the sums all go there); moving the
 * shift to an FMA measured 11% faster (column tiles, data in L2), and one of the two sums of
 * the run reductions 4-8% more.  The empty asm hides the 1.0 from the compiler, which would
 * otherwise fold the multiplication away.  `one` is a native vector; the cbn_v8_ forms apply
 * the same to each of the group's vectors. */
#if defined(__AVX512F__) && defined(__FMA__)
#define CBN_ONE_INIT(one) cbn_vd one = (cbn_vd){0} + 1.0; __asm__("" : "+v"(one))
#define CBN_SUB_ON_FMA(x, k, one) ((x) * (one) - (k))
#define CBN_ADD_ON_FMA(s, g, one) ((g) * (one) + (s)) /* s + g, on an FMA pipe */
#else
#define CBN_ONE_INIT(one) (void)0
#define CBN_SUB_ON_FMA(x, k, one) ((x) - (k))
#define CBN_ADD_ON_FMA(s, g, one) ((s) + (g))
#endif
#ifdef CBN_VECTOR
#define CBN_V8_SUB_ON_FMA(x, k, one)                                                             \
    ({ cbn_v8d x_ = (x), k_ = (k);                                                               \
       CBN_V8_EACH(u_) x_.h[u_] = CBN_SUB_ON_FMA(x_.h[u_], k_.h[u_], one);                         \
       x_; })
#define CBN_V8_ADD_ON_FMA(s, g, one)                                                             \
    ({ cbn_v8d s_ = (s), g_ = (g);                                                               \
       CBN_V8_EACH(u_) s_.h[u_] = CBN_ADD_ON_FMA(s_.h[u_], g_.h[u_], one);                         \
       s_; })
#endif

/* Horizontal sum of 8 doubles in memory, in cbn_hsum8's fixed pairwise order. */
static inline double cbn_hsum8_array(const double *v) {
    double a = (v[0] + v[4]) + (v[2] + v[6]);
    double b = (v[1] + v[5]) + (v[3] + v[7]);
    return a + b;
}

/* The reductions are generated for float and double by one macro so both stay identical. */
#ifdef CBN_VECTOR
#define CBN_DEFINE_REDUCTIONS(T, SFX)                                                            \
/* sum of x[0:n] */                                                                              \
static inline double cbn_sum_##SFX(const T *x, ptrdiff_t n) {                                    \
    cbn_v8d a0 = cbn_v8_zero(), a1 = a0, a2 = a0, a3 = a0;                                       \
    ptrdiff_t i = 0;                                                                             \
    for (; i + 32 <= n; i += 32) {                                                               \
        a0 = cbn_v8_add(a0, cbn_load8_##SFX(x + i));                                             \
        a1 = cbn_v8_add(a1, cbn_load8_##SFX(x + i + 8));                                         \
        a2 = cbn_v8_add(a2, cbn_load8_##SFX(x + i + 16));                                        \
        a3 = cbn_v8_add(a3, cbn_load8_##SFX(x + i + 24));                                        \
    }                                                                                            \
    for (; i + 8 <= n; i += 8) a0 = cbn_v8_add(a0, cbn_load8_##SFX(x + i));                      \
    double s = cbn_hsum8(cbn_v8_add(cbn_v8_add(a0, a1), cbn_v8_add(a2, a3)));                    \
    for (; i < n; i++) s += (double)x[i];                                                        \
    return s;                                                                                    \
}                                                                                                \
/* sum of dy in exactly the order cbn_sum_dot uses for its first sum, added to *sdy: dbias is   \
 * then bit-identical whether or not dweight/dx are computed too */                             \
static inline void cbn_sum_like_dot_##SFX(const T *dy, const T *ym, ptrdiff_t n, double *sdy) {  \
    cbn_v8d s0 = cbn_v8_zero(), s1 = s0;                                                         \
    ptrdiff_t i = 0;                                                                             \
    for (; i + 16 <= n; i += 16) {                                                               \
        s0 = cbn_v8_add(s0, CBN_G8(SFX, dy, ym, i));                                             \
        s1 = cbn_v8_add(s1, CBN_G8(SFX, dy, ym, i + 8));                                         \
    }                                                                                            \
    for (; i + 8 <= n; i += 8) s0 = cbn_v8_add(s0, CBN_G8(SFX, dy, ym, i));                      \
    double a = cbn_hsum8(cbn_v8_add(s0, s1));                                                    \
    for (; i < n; i++) a += CBN_G1(dy, ym, i);                                                   \
    *sdy += a;                                                                                   \
}                                                                                                \
/* sum of dy and of dy * (x - m) over [0:n], added to *sdy and *sdyx */                          \
static inline void cbn_sum_dot_##SFX(const T *dy, const T *ym, const T *x, ptrdiff_t n,        \
                                     double m, double *sdy, double *sdyx) {                      \
    cbn_v8d s0 = cbn_v8_zero(), s1 = s0, p0 = s0, p1 = s0;                                       \
    const cbn_v8d mv = cbn_v8_set1(m);                                                           \
    CBN_ONE_INIT(one);                                                                           \
    ptrdiff_t i = 0;                                                                             \
    for (; i + 16 <= n; i += 16) {                                                               \
        cbn_v8d g0 = CBN_G8(SFX, dy, ym, i), g1 = CBN_G8(SFX, dy, ym, i + 8);                    \
        s0 = cbn_v8_add(s0, g0); s1 = CBN_V8_ADD_ON_FMA(s1, g1, one);                            \
        p0 = cbn_v8_madd(p0, g0, CBN_V8_SUB_ON_FMA(cbn_load8_##SFX(x + i), mv, one));            \
        p1 = cbn_v8_madd(p1, g1, CBN_V8_SUB_ON_FMA(cbn_load8_##SFX(x + i + 8), mv, one));        \
    }                                                                                            \
    for (; i + 8 <= n; i += 8) {                                                                 \
        cbn_v8d g = CBN_G8(SFX, dy, ym, i);                                                      \
        s0 = cbn_v8_add(s0, g); p0 = cbn_v8_madd(p0, g, cbn_v8_sub(cbn_load8_##SFX(x + i), mv)); \
    }                                                                                            \
    double a = cbn_hsum8(cbn_v8_add(s0, s1)), b = cbn_hsum8(cbn_v8_add(p0, p1));                 \
    for (; i < n; i++) { double g = CBN_G1(dy, ym, i); a += g; b += g * ((double)x[i] - m); }   \
    *sdy += a; *sdyx += b;                                                                       \
}                                                                                                \
/* cbn_shifted_sums over many short runs of one channel, into 8-lane partials s1_8, s2_8 (no  \
 * horizontal sum per run: cbn_hsum8_array of each at the end of the block gives the sums); the \
 * n % 8 trailing elements are added as one zero-padded vector with the padding lanes masked   \
 * (their x - k would be -k). */                                                                \
static inline void cbn_shifted_sums8_##SFX(const T *x, ptrdiff_t n, double k, double *s1_8,    \
                                           double *s2_8) {                                       \
    cbn_v8d a0 = cbn_load8_f64(s1_8), a1 = cbn_v8_zero(), q0 = cbn_load8_f64(s2_8), q1 = a1;     \
    const cbn_v8d kv = cbn_v8_set1(k);                                                           \
    CBN_ONE_INIT(one);                                                                           \
    ptrdiff_t i = 0;                                                                             \
    for (; i + 16 <= n; i += 16) {                                                               \
        cbn_v8d d0 = CBN_V8_SUB_ON_FMA(cbn_load8_##SFX(x + i), kv, one);                         \
        cbn_v8d d1 = CBN_V8_SUB_ON_FMA(cbn_load8_##SFX(x + i + 8), kv, one);                     \
        a0 = cbn_v8_add(a0, d0); a1 = cbn_v8_add(a1, d1);                                        \
        q0 = cbn_v8_madd(q0, d0, d0); q1 = cbn_v8_madd(q1, d1, d1);                              \
    }                                                                                            \
    for (; i + 8 <= n; i += 8) {                                                                 \
        cbn_v8d d = cbn_v8_sub(cbn_load8_##SFX(x + i), kv);                                      \
        a0 = cbn_v8_add(a0, d); q0 = cbn_v8_madd(q0, d, d);                                      \
    }                                                                                            \
    if (i < n) {                                                                                 \
        const int m = (int)(n - i);                                                              \
        cbn_v8d d = cbn_v8_first(cbn_v8_sub(cbn_load8_tail_##SFX(x + i, m), kv), m);             \
        a0 = cbn_v8_add(a0, d); q0 = cbn_v8_madd(q0, d, d);                                      \
    }                                                                                            \
    cbn_store8_f64(s1_8, cbn_v8_add(a0, a1));                                                    \
    cbn_store8_f64(s2_8, cbn_v8_add(q0, q1));                                                    \
}                                                                                                \
/* shifted sums over x[0:n]: *s1 += sum(x - k), *s2 += sum((x - k)^2).  With k an element of   \
 * the same block, the cancellation in s2 - s1^2/n is bounded by a factor n + 1.           */    \
static inline void cbn_shifted_sums_##SFX(const T *x, ptrdiff_t n, double k,                     \
                                          double *s1, double *s2) {                              \
    double a8[8] = {0}, q8[8] = {0};                                                             \
    cbn_shifted_sums8_##SFX(x, n, k, a8, q8);                                                    \
    *s1 += cbn_hsum8_array(a8);                                                                  \
    *s2 += cbn_hsum8_array(q8);                                                                  \
}                                                                                                \
/* The same sums over many short runs of one channel, into 8-lane partials (no horizontal sum  \
 * per run: cbn_hsum8 of the partials at the end gives the totals).  sdy8 += lanes of g,        \
 * sdyx8 += lanes of g * (x - m) (sdyx8 NULL: only the first); the n % 8 trailing elements are  \
 * added as one zero-padded vector.  The g lanes are added in the same order with or without    \
 * sdyx8, so the sums of g agree bit for bit. */                                                 \
static inline void cbn_sum_dot8_##SFX(const T *dy, const T *ym, const T *x, ptrdiff_t n,       \
                                      double m, double *sdy8, double *sdyx8) {                   \
    cbn_v8d s0 = cbn_load8_f64(sdy8), s1 = cbn_v8_zero(), p0 = s1, p1 = s1;                      \
    const cbn_v8d mv = cbn_v8_set1(m);                                                           \
    CBN_ONE_INIT(one);                                                                           \
    ptrdiff_t i = 0;                                                                             \
    if (sdyx8) p0 = cbn_load8_f64(sdyx8);                                                        \
    for (; i + 16 <= n; i += 16) {                                                               \
        cbn_v8d g0 = CBN_G8(SFX, dy, ym, i), g1 = CBN_G8(SFX, dy, ym, i + 8);                    \
        s0 = cbn_v8_add(s0, g0); s1 = CBN_V8_ADD_ON_FMA(s1, g1, one);                            \
        if (sdyx8) {                                                                             \
            p0 = cbn_v8_madd(p0, g0, CBN_V8_SUB_ON_FMA(cbn_load8_##SFX(x + i), mv, one));        \
            p1 = cbn_v8_madd(p1, g1, CBN_V8_SUB_ON_FMA(cbn_load8_##SFX(x + i + 8), mv, one));    \
        }                                                                                        \
    }                                                                                            \
    for (; i + 8 <= n; i += 8) {                                                                 \
        cbn_v8d g = CBN_G8(SFX, dy, ym, i);                                                      \
        s0 = cbn_v8_add(s0, g);                                                                  \
        if (sdyx8) p0 = cbn_v8_madd(p0, g, CBN_V8_SUB_ON_FMA(cbn_load8_##SFX(x + i), mv, one));  \
    }                                                                                            \
    if (i < n) { /* the n - i < 8 trailing elements as one zero-padded vector */               \
        const int k = (int)(n - i);                                                              \
        cbn_v8d g = cbn_load8_tail_##SFX(dy + i, k);                                             \
        if (ym) g = cbn_relu_mask8(g, cbn_load8_tail_##SFX(ym + i, k));                          \
        s0 = cbn_v8_add(s0, g);                                                                  \
        if (sdyx8) { /* padding lanes: g = 0 times d = 0 (x - m could be inf or NaN) */         \
            cbn_v8d d = CBN_V8_SUB_ON_FMA(cbn_load8_tail_##SFX(x + i, k), mv, one);              \
            p0 = cbn_v8_madd(p0, g, cbn_v8_first(d, k));                                         \
        }                                                                                        \
    }                                                                                            \
    cbn_store8_f64(sdy8, cbn_v8_add(s0, s1));                                                    \
    if (sdyx8) cbn_store8_f64(sdyx8, cbn_v8_add(p0, p1));                                        \
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
static inline void cbn_shifted_sums_##SFX(const T *x, ptrdiff_t n, double k,                     \
                                          double *s1, double *s2) {                              \
    double a = 0, q = 0;                                                                         \
    for (ptrdiff_t i = 0; i < n; i++) { double d = (double)x[i] - k; a += d; q += d * d; }       \
    *s1 += a; *s2 += q;                                                                          \
}                                                                                                \
static inline void cbn_sum_like_dot_##SFX(const T *dy, const T *ym, ptrdiff_t n, double *sdy) {  \
    double a = 0; for (ptrdiff_t i = 0; i < n; i++) a += CBN_G1(dy, ym, i);                      \
    *sdy += a;                                                                                   \
}                                                                                                \
static inline void cbn_sum_dot_##SFX(const T *dy, const T *ym, const T *x, ptrdiff_t n,        \
                                     double m, double *sdy, double *sdyx) {                      \
    double a = 0, b = 0;                                                                         \
    for (ptrdiff_t i = 0; i < n; i++) {                                                          \
        double g = CBN_G1(dy, ym, i); a += g; b += g * ((double)x[i] - m);                       \
    }                                                                                            \
    *sdy += a; *sdyx += b;                                                                       \
}                                                                                                \
static inline void cbn_shifted_sums8_##SFX(const T *x, ptrdiff_t n, double k, double *s1_8,    \
                                           double *s2_8) {                                       \
    for (ptrdiff_t i = 0; i < n; i++) {                                                          \
        double d = (double)x[i] - k;                                                             \
        s1_8[i % 8] += d;                                                                        \
        s2_8[i % 8] += d * d;                                                                    \
    }                                                                                            \
}                                                                                                \
static inline void cbn_sum_dot8_##SFX(const T *dy, const T *ym, const T *x, ptrdiff_t n,       \
                                      double m, double *sdy8, double *sdyx8) {                   \
    for (ptrdiff_t i = 0; i < n; i++) {                                                          \
        double g = CBN_G1(dy, ym, i);                                                            \
        sdy8[i % 8] += g;                                                                        \
        if (sdyx8) sdyx8[i % 8] += g * ((double)x[i] - m);                                       \
    }                                                                                            \
}
#endif

CBN_DEFINE_REDUCTIONS(float, f32)
CBN_DEFINE_REDUCTIONS(double, f64)

/* Column (across-channel) accumulations for the channels-last layout, over `rows` rows of
 * width w spaced ld elements apart.  Four rows are folded per accumulator update, so the float64
 * accumulators (in L1) are loaded and stored once per four input rows; the loops are element-wise
 * over columns and vectorise without reassociation.  Row order is fixed, so results are
 * deterministic.  Accumulators and inputs never alias. */
#define CBN_DEFINE_COLUMNS(T, SFX)                                                               \
/* s1[j] += sum_r (x[r][j] - k[j]),  s2[j] += sum_r (x[r][j] - k[j])^2 */                         \
static inline void cbn_col_shifted_sums_rows_##SFX(double *restrict s1, double *restrict s2,    \
                                              const T *restrict x, ptrdiff_t ld, ptrdiff_t rows, \
                                              const double *restrict k, ptrdiff_t w) {           \
    ptrdiff_t r = 0;                                                                             \
    for (; r + 4 <= rows; r += 4) {                                                              \
        const T *x0 = x + r * ld, *x1 = x0 + ld, *x2 = x1 + ld, *x3 = x2 + ld;                   \
        _Pragma("omp simd")                                                                      \
        for (ptrdiff_t j = 0; j < w; j++) {                                                      \
            double d0 = (double)x0[j] - k[j], d1 = (double)x1[j] - k[j];                         \
            double d2 = (double)x2[j] - k[j], d3 = (double)x3[j] - k[j];                         \
            s1[j] += (d0 + d1) + (d2 + d3);                                                      \
            s2[j] += (d0 * d0 + d1 * d1) + (d2 * d2 + d3 * d3);                                  \
        }                                                                                        \
    }                                                                                            \
    for (; r < rows; r++) {                                                                      \
        const T *x0 = x + r * ld;                                                                \
        _Pragma("omp simd")                                                                      \
        for (ptrdiff_t j = 0; j < w; j++) {                                                      \
            double d0 = (double)x0[j] - k[j];                                                    \
            s1[j] += d0;                                                                         \
            s2[j] += d0 * d0;                                                                    \
        }                                                                                        \
    }                                                                                            \
}                                                                                                \
/* sdy[j] += sum_r g[r][j]; if sdyx: sdyx[j] += sum_r g[r][j] * (x[r][j] - m[j]), where g is dy
 * masked by the fused ReLU's output ym (g = dy when ym is NULL).  The g sum has the same order
 * with or without the dot product (dbias does not depend on `needs`).  The mask test is hoisted
 * out of the loops (CBN_COL_SUM_DOT_BODY is instantiated once per G), so both vectorise. */
/* select in the data's own type (mask and data lanes match), then widen */
#define CBN_GM(p, q, j) ((double)__extension__({ __typeof__(*(p)) g_ = (p)[j];                      \
                                                 (q)[j] > 0 ? g_ : (__typeof__(g_))0; }))
#define CBN_GP(p, q, j) ((double)(p)[j])
#define CBN_COL_SUM_DOT_BODY(T, G)                                                               \
    ptrdiff_t r = 0;                                                                             \
    for (; r + 4 <= rows; r += 4) {                                                              \
        const T *g0 = dy + r * ld, *g1 = g0 + ld, *g2 = g1 + ld, *g3 = g2 + ld;                  \
        const T *y0 = mk + r * ld, *y1 = y0 + ld, *y2 = y1 + ld, *y3 = y2 + ld;                  \
        if (sdyx) {                                                                              \
            const T *x0 = x + r * ld, *x1 = x0 + ld, *x2 = x1 + ld, *x3 = x2 + ld;               \
            _Pragma("omp simd")                                                                  \
            for (ptrdiff_t j = 0; j < w; j++) {                                                  \
                double a0 = G(g0, y0, j), a1 = G(g1, y1, j), a2 = G(g2, y2, j), a3 = G(g3, y3, j);\
                sdy[j] += (a0 + a1) + (a2 + a3);                                                 \
                sdyx[j] += (a0 * ((double)x0[j] - m[j]) + a1 * ((double)x1[j] - m[j]))           \
                         + (a2 * ((double)x2[j] - m[j]) + a3 * ((double)x3[j] - m[j]));          \
            }                                                                                    \
        } else {                                                                                 \
            _Pragma("omp simd")                                                                  \
            for (ptrdiff_t j = 0; j < w; j++) {                                                  \
                double a0 = G(g0, y0, j), a1 = G(g1, y1, j), a2 = G(g2, y2, j), a3 = G(g3, y3, j);\
                sdy[j] += (a0 + a1) + (a2 + a3);                                                 \
            }                                                                                    \
        }                                                                                        \
    }                                                                                            \
    for (; r < rows; r++) {                                                                      \
        const T *g0 = dy + r * ld, *x0 = x + r * ld, *y0 = mk + r * ld;                          \
        for (ptrdiff_t j = 0; j < w; j++) {                                                      \
            double a0 = G(g0, y0, j);                                                            \
            sdy[j] += a0;                                                                        \
            if (sdyx) sdyx[j] += a0 * ((double)x0[j] - m[j]);                                    \
        }                                                                                        \
    }

#define CBN_DEFINE_COL_SUM_DOT(T, SFX)                                                           \
static inline void cbn_col_sum_dot_rows_##SFX(double *restrict sdy, double *restrict sdyx,      \
                                         const T *restrict dy, const T *restrict ym,             \
                                         const T *restrict x, ptrdiff_t ld, ptrdiff_t rows,      \
                                         const double *restrict m, ptrdiff_t w) {                \
    const T *mk = ym ? ym : dy; /* CBN_GP never reads the mask: any valid pointer will do */     \
    if (ym) { CBN_COL_SUM_DOT_BODY(T, CBN_GM) }                                                  \
    else { CBN_COL_SUM_DOT_BODY(T, CBN_GP) }                                                     \
}

/* Element-wise passes of the channels-last layout over `rows` rows of width w (ld apart), with
 * per-channel coefficient vectors.  With wide rows the coefficient streams, not the data, limit
 * a one-row loop (1.5x a copy at C = 1024 float32), so four rows share each coefficient load
 * (~1.2x); with narrower rows (coefficient vectors under 4 KB) the four-row loop measured slower
 * than a copy by up to 2x while one row at a time runs at copy speed, so rows go one by one.
 * The restrict pointers are honest: the callers pass disjoint arrays, and in-place work goes to
 * the _inplace variants that take a single array. */
#define CBN_ROWS4(BODY, TAIL)                                                                    \
    ptrdiff_t r = 0;                                                                             \
    for (; w * (ptrdiff_t)sizeof(*hi) >= CBN_ROWS4_MIN_BYTES && r + 4 <= rows; r += 4) {         \
        _Pragma("omp simd")                                                                      \
        for (ptrdiff_t j = 0; j < w; j++) {                                                      \
            BODY(r * ld + j) BODY((r + 1) * ld + j) BODY((r + 2) * ld + j) BODY((r + 3) * ld + j)\
        }                                                                                        \
    }                                                                                            \
    for (; r < rows; r++) {                                                                      \
        _Pragma("omp simd")                                                                      \
        for (ptrdiff_t j = 0; j < w; j++) { TAIL(r * ld + j) }                                   \
    }

#define CBN_ROWS4_MIN_BYTES 4096
#define CBN_DEFINE_ROWS(T, SFX)                                                                  \
/* y = (x - hi) * sc + sh */                                                                     \
static inline void cbn_affine_rows_##SFX(const T *restrict x, T *restrict y, ptrdiff_t ld,       \
                                         ptrdiff_t rows, ptrdiff_t w, const T *restrict hi,      \
                                         const T *restrict sc, const T *restrict sh) {           \
    CBN_ROWS4(CBN_AFFINE_AT, CBN_AFFINE_AT)                                                      \
}                                                                                                \
static inline void cbn_affine_rows_inplace_##SFX(T *restrict y, ptrdiff_t ld, ptrdiff_t rows,    \
                                                 ptrdiff_t w, const T *restrict hi,              \
                                                 const T *restrict sc, const T *restrict sh) {   \
    const T *x = y;                                                                              \
    CBN_ROWS4(CBN_AFFINE_AT, CBN_AFFINE_AT)                                                      \
}                                                                                                \
/* y = max((x - hi) * sc + sh, 0) (NaN propagates) */                                           \
static inline void cbn_affine_relu_rows_##SFX(const T *restrict x, T *restrict y, ptrdiff_t ld,  \
                                              ptrdiff_t rows, ptrdiff_t w, const T *restrict hi, \
                                              const T *restrict sc, const T *restrict sh) {      \
    CBN_ROWS4(CBN_AFFINE_RELU_AT, CBN_AFFINE_RELU_AT)                                            \
}                                                                                                \
static inline void cbn_affine_relu_rows_inplace_##SFX(T *restrict y, ptrdiff_t ld,               \
                                                      ptrdiff_t rows, ptrdiff_t w,               \
                                                      const T *restrict hi,                      \
                                                      const T *restrict sc,                      \
                                                      const T *restrict sh) {                    \
    const T *x = y;                                                                              \
    CBN_ROWS4(CBN_AFFINE_RELU_AT, CBN_AFFINE_RELU_AT)                                            \
}                                                                                                \
/* dx = g * k1 + (x - hi) * k2 + k3 with g = dy, or dy masked by the ReLU output ym */          \
static inline void cbn_dx_rows4_##SFX(const T *restrict dy, const T *restrict ym,               \
                                     const T *restrict x, T *restrict dx,                        \
                                     ptrdiff_t ld, ptrdiff_t rows, ptrdiff_t w,                  \
                                     const T *restrict hi, const T *restrict k1,                 \
                                     const T *restrict k2, const T *restrict k3) {               \
    if (ym) { CBN_ROWS4(CBN_DX_MASK_AT, CBN_DX_MASK_AT) }                                        \
    else { CBN_ROWS4(CBN_DX_AT, CBN_DX_AT) }                                                     \
}

#define CBN_AFFINE_AT(i) y[i] = (x[i] - hi[j]) * sc[j] + sh[j];
#define CBN_DX_AT(i) dx[i] = dy[i] * k1[j] + (x[i] - hi[j]) * k2[j] + k3[j];
#define CBN_AFFINE_RELU_AT(i) { __typeof__(*y) v_ = (x[i] - hi[j]) * sc[j] + sh[j]; y[i] = v_ < 0 ? 0 : v_; }
#define CBN_DX_MASK_AT(i) { __typeof__(*dx) g_ = dy[i]; g_ = ym[i] > 0 ? g_ : 0;                   \
                            dx[i] = g_ * k1[j] + (x[i] - hi[j]) * k2[j] + k3[j]; }

CBN_DEFINE_ROWS(float, f32)
CBN_DEFINE_ROWS(double, f64)

/* y = (x - hi) * sc + sh (then max(., 0) if relu) over channels-last rows; in place when
 * x == y (the restrict-qualified variants never see two names for one array). */
#define CBN_DEFINE_AFFINE_DISPATCH(T, SFX)                                                       \
static inline void cbn_affine_any_##SFX(const T *x, T *y, ptrdiff_t ld, ptrdiff_t rows,         \
                                        ptrdiff_t w, const T *hi, const T *sc, const T *sh,      \
                                        int relu) {                                              \
    if (relu) {                                                                                  \
        if ((const void *)x == (const void *)y)                                                  \
            cbn_affine_relu_rows_inplace_##SFX(y, ld, rows, w, hi, sc, sh);                      \
        else                                                                                     \
            cbn_affine_relu_rows_##SFX(x, y, ld, rows, w, hi, sc, sh);                           \
    } else if ((const void *)x == (const void *)y) {                                             \
        cbn_affine_rows_inplace_##SFX(y, ld, rows, w, hi, sc, sh);                               \
    } else {                                                                                     \
        cbn_affine_rows_##SFX(x, y, ld, rows, w, hi, sc, sh);                                    \
    }                                                                                            \
}

CBN_DEFINE_AFFINE_DISPATCH(float, f32)
CBN_DEFINE_AFFINE_DISPATCH(double, f64)

CBN_DEFINE_COLUMNS(float, f32)
CBN_DEFINE_COLUMNS(double, f64)
CBN_DEFINE_COL_SUM_DOT(float, f32)
CBN_DEFINE_COL_SUM_DOT(double, f64)

#include "cbn_tiles.h"
#include "cbn_stream.h"
#include "cbn_reverse.h"

#endif /* CBN_SIMD_H */
