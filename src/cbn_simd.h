/* cbn_simd.h: the vector types and 8-lane groups the kernels are written with, and their work
 * buffers (the kernels themselves: cbn_kernels.h).
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
/* 8 mask bytes (0 or 1) as float64 lanes, and the first k < 8 of them zero-padded */
static inline cbn_v8d cbn_load8_u8(const unsigned char *p) {
    cbn_v8d r;
#if defined(__AVX512F__)
    r.h[0] = (cbn_vd)_mm512_cvtepi32_pd(_mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)(const void *)p)));
#elif defined(__AVX2__)
    const __m256i i32 = _mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)(const void *)p));
    r.h[0] = (cbn_vd)_mm256_cvtepi32_pd(_mm256_castsi256_si128(i32));
    r.h[1] = (cbn_vd)_mm256_cvtepi32_pd(_mm256_extracti128_si256(i32, 1));
#else
    CBN_V8_EACH(u) for (int l = 0; l < CBN_DL; l++) r.h[u][l] = (double)p[u * CBN_DL + l];
#endif
    return r;
}
static inline cbn_v8d cbn_load8_tail_u8(const unsigned char *p, int k) {
    unsigned char b[8] = {0};
    for (int l = 0; l < k; l++) b[l] = p[l];
    return cbn_load8_u8(b);
}
/* v where the mask byte at p is nonzero, +0.0 elsewhere (8 lanes; no float conversion of
 * the mask: AVX-512 tests the zero-extended bytes into a mask register) */
static inline cbn_v8d cbn_v8_where_u8(cbn_v8d v, const unsigned char *p) {
#if defined(__AVX512F__)
    const __m512i b = _mm512_cvtepu8_epi64(_mm_loadl_epi64((const __m128i *)(const void *)p));
    v.h[0] = (cbn_vd)_mm512_maskz_mov_pd(_mm512_test_epi64_mask(b, b), (__m512d)v.h[0]);
    return v;
#else
    cbn_v8d w = cbn_load8_u8(p);
    CBN_V8_EACH(u) v.h[u] = (cbn_vd)((cbn_vl)v.h[u] & (cbn_vl)(w.h[u] > 0.0));
    return v;
#endif
}
/* v where w > 0, +0.0 elsewhere (a masked lane's NaN or Inf never enters a sum) */
static inline cbn_v8d cbn_v8_where_pos(cbn_v8d v, cbn_v8d w) {
    CBN_V8_EACH(u) v.h[u] = (cbn_vd)((cbn_vl)v.h[u] & (cbn_vl)(w.h[u] > 0.0));
    return v;
}
static inline cbn_v8d cbn_v8_mul(cbn_v8d a, cbn_v8d b) {
    CBN_V8_EACH(u) a.h[u] *= b.h[u];
    return a;
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

/* g if keep else 0, with both operands evaluated: a conditional *load* (c ? dy[i] : 0) stops
 * the vectoriser, a select of loaded values does not (the activations' gradients, cbn_epilogue). */
static inline double cbn_select(double g, int keep) { return keep ? g : 0.0; }

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

/* Elements of p[0..n) before p + i is aligned to a native vector (n at most).  The element-
 * wise loops compute these first, one by one, so that the vector loop's stores (and the loads
 * of inputs at the same offset, as arrays of one allocator usually are) are whole-vector
 * aligned: NumPy's large arrays start 16 bytes past a page, and there a loop of unaligned
 * AVX-512 vectors splits every access over two lines -- measured in L2, one thread, float32
 * inference runs: 0.124 ns per element against 0.092 aligned. */
#define CBN_ALIGN_HEAD_TO(p, n, bytes)                                                           \
    ({ ptrdiff_t h_ = (ptrdiff_t)(((uintptr_t)0 - (uintptr_t)(p)) % (bytes)) /                   \
                      (ptrdiff_t)sizeof(*(p));                                                   \
       h_ < (n) ? h_ : (n); })
#define CBN_ALIGN_HEAD(p, n) CBN_ALIGN_HEAD_TO(p, n, CBN_VB)

/* A loop that must not be inlined into the task that calls it: inlined into the one large
 * task function, the channels-last row loop kept its pointers on the stack (three reloads per
 * vector); in a frame of its own it keeps them in registers.  Measured on AVX2, in one process
 * against the inlined build: float32 (64, 7, 7, 512) inference 0.65-0.72x the time at 1 and 2
 * threads, float64 0.74-0.96x, (4096, 1024) float32 0.89-1.03x. */
#define CBN_OWN_FRAME static __attribute__((noinline))
/* Helpers of the row loops (cbn_rows-inl.h). */
/* one column's g = dy[j] through the activation act whose output is q: in the arithmetic type
 * (mask and data lanes match), then widened */
#define CBN_G(act, p, q, j)                                                                      \
    ((double)SFX(cbn_act_grad)(CBN_LD((p)[j]), (act) ? CBN_LD((q)[j]) : 0, act))
/* BODY for every row, one row at a time; j is the column, the argument the element offset.
 * float and double: each row's first columns up to an aligned OUT (its output) one by one
 * (CBN_ALIGN_HEAD), the rest a loop the compiler vectorises.  The 16-bit formats (whose
 * conversions GCC does not vectorise): VBODY on native vectors of CBN_TVL columns, the rest
 * one by one. */
#define CBN_ROWS_EACH(BODY, VBODY, OUT)                                                          \
    for (ptrdiff_t r = 0; r < rows; r++) {                                                       \
        ptrdiff_t j0_ = 0;                                                                       \
        if (CBN_HALF) {                                                                          \
            for (; j0_ + CBN_TVL <= w; j0_ += CBN_TVL) {                                         \
                const ptrdiff_t j = j0_;                                                         \
                VBODY(r * ld + j)                                                                \
            }                                                                                    \
        } else {                                                                                 \
            j0_ = CBN_ALIGN_HEAD((OUT) + r * ld, w);                                             \
            for (ptrdiff_t j = 0; j < j0_; j++) { BODY(r * ld + j) }                             \
        }                                                                                        \
        _Pragma("omp simd")                                                                      \
        for (ptrdiff_t j = j0_; j < w; j++) { BODY(r * ld + j) }                                 \
    }
/* the element bodies of the row loops, for the activation act in scope, one element and one
 * native vector (VBODY: coefficients loaded at column j) */
#define CBN_AFFINE_AT(i) y[i] = CBN_ST(SFX(cbn_act)((CBN_LD(x[i]) - hi[j]) * sc[j] + sh[j], act));
#define CBN_AFFINE_V(i)                                                                          \
    SFX(cbn_vstore)(y + (i), SFX(cbn_act_v)((SFX(cbn_vload)(x + (i)) - CBN_TLOAD(hi + j))         \
                                            * CBN_TLOAD(sc + j) + CBN_TLOAD(sh + j), act));
#define CBN_DX_AT(i)                                                                             \
    { T g_ = CBN_LD(dy[i]);                                                                      \
      if (act) g_ = SFX(cbn_act_grad)(g_, CBN_LD(ym[i]), act);                                   \
      dx[i] = CBN_ST(g_ * k1[j] + (CBN_LD(x[i]) - hi[j]) * k2[j] + k3[j]); }
#define CBN_DX_V(i)                                                                              \
    { CBN_TV g_ = SFX(cbn_vload)(dy + (i));                                                      \
      if (act) g_ = SFX(cbn_act_grad_v)(g_, SFX(cbn_vload)(ym + (i)), act);                      \
      SFX(cbn_vstore)(dx + (i), g_ * CBN_TLOAD(k1 + j)                                           \
                      + (SFX(cbn_vload)(x + (i)) - CBN_TLOAD(hi + j)) * CBN_TLOAD(k2 + j)        \
                      + CBN_TLOAD(k3 + j)); }

#endif /* CBN_SIMD_H */
