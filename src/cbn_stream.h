/* cbn_stream.h: element-wise passes with non-temporal (streaming) stores (included by
 * cbn_simd.h).
 *
 * Why: a plain store first reads the destination line into the cache (read-for-ownership), so
 * an output that does not stay cached costs a read *and* a write of memory.  For outputs well
 * beyond the last-level cache nothing is gained by caching them, and streaming stores
 * (MOVNTPS/MOVNTPD) write whole lines straight to memory: inference moves 2 bytes of memory per
 * byte of output instead of 3, training forward 3 instead of 4, backward 5 instead of 6
 * (measured on the 2-core Zen 4 host: a 25 MB inference at 0.9x the time of a plain-store copy,
 * 67 MB at 0.8x).  Below the last-level cache they are slower (the output would have stayed
 * cached), so the caller streams only outputs above a threshold and never in place.
 *
 * The arithmetic is exactly that of the plain-store loops (same expressions, same contraction);
 * only the stores differ.  A streaming store needs an aligned address: each run starts with
 * plain stores up to the first aligned element, then streams whole vectors, then finishes the
 * tail with plain stores.  Channels-last blocks are dense (rows of C channels, back to back), so
 * they are streamed as one run with periodic coefficients: the coefficient vectors are extended
 * by CBN_NT_PAD wrapped-around entries so that a vector starting at any column can be loaded
 * in one piece.  Narrow rows of whole vectors (C = m * VL, m <= CBN_NT_REG) keep the m
 * rotated coefficient vectors in registers instead.
 *
 * Streaming stores are weakly ordered: each thread must call cbn_nt_fence() (SFENCE) after its
 * last streaming store and before the OpenMP team joins, so that the data are visible to the
 * thread that reads them next.  The functions here do not fence: a fence per run (a few KB)
 * measured 5% slower than one per task.  The functions exist only on x86
 * with vector extensions (CBN_HAVE_NT); elsewhere the callers keep plain stores.
 */
#ifndef CBN_STREAM_H
#define CBN_STREAM_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>

/* Entries appended to each extended coefficient vector (>= the widest vector in elements). */
#define CBN_NT_PAD 16
/* Rows of at most this many vectors (and a whole number of them) keep their coefficients in
 * registers: the aligned vectors of the stream then cycle through C / VL column phases. */
#ifdef CBN_ROW_TV
#define CBN_NT_REG (CBN_VB / 16) /* 4 zmm, 2 ymm, 1 xmm */
#else
#define CBN_NT_REG 1
#endif

#if defined(CBN_VECTOR) && (defined(__x86_64__) || defined(__i386__)) && defined(__SSE2__)
#define CBN_HAVE_NT 1
#include <immintrin.h>

#if defined(__AVX512F__)
#define CBN_NT_BYTES 64
#define CBN_NT_STORE_F32(p, v) _mm512_stream_ps((p), (__m512)(v))
#define CBN_NT_STORE_F64(p, v) _mm512_stream_pd((p), (__m512d)(v))
#elif defined(__AVX__)
#define CBN_NT_BYTES 32
#define CBN_NT_STORE_F32(p, v) _mm256_stream_ps((p), (__m256)(v))
#define CBN_NT_STORE_F64(p, v) _mm256_stream_pd((p), (__m256d)(v))
#else
#define CBN_NT_BYTES 16
#define CBN_NT_STORE_F32(p, v) _mm_stream_ps((p), (__m128)(v))
#define CBN_NT_STORE_F64(p, v) _mm_stream_pd((p), (__m128d)(v))
#endif

_Static_assert(CBN_NT_PAD >= CBN_NT_BYTES / sizeof(float),
               "the extended coefficient vectors must hold one vector past their end");
typedef float cbn_ntf __attribute__((vector_size(CBN_NT_BYTES)));
typedef int cbn_nti __attribute__((vector_size(CBN_NT_BYTES)));
typedef double cbn_ntd __attribute__((vector_size(CBN_NT_BYTES)));
typedef long long cbn_ntl __attribute__((vector_size(CBN_NT_BYTES)));

static inline int cbn_nt_available(void) { return 1; }
static inline void cbn_nt_fence(void) { _mm_sfence(); }

/* Elements before the first CBN_NT_BYTES-aligned element of y, at most n (y is aligned to its
 * element size: the callers check). */
#define CBN_NT_HEAD(y, n)                                                                        \
    ({ ptrdiff_t h_ = (ptrdiff_t)(((uintptr_t)0 - (uintptr_t)(y)) % CBN_NT_BYTES) /              \
                      (ptrdiff_t)sizeof(*(y));                                                   \
       h_ < (n) ? h_ : (n); })

/* The scalar and vector forms of each pass, written alike so that they round alike. */
#define CBN_NT_AFFINE_S(xv, h, s, b) (((xv) - (h)) * (s) + (b))
#define CBN_NT_RELU_S(v) ((v) < 0 ? 0 : (v))
#define CBN_NT_DX_S(g, xv, h, a1, a2, a3) ((g) * (a1) + ((xv) - (h)) * (a2) + (a3))

#define CBN_DEFINE_STREAM(T, SFX, VT, VI, STORE)                                                 \
static inline VT cbn_nt_load_##SFX(const T *p) {                                                 \
    VT v;                                                                                        \
    memcpy(&v, p, sizeof v);                                                                     \
    return v;                                                                                    \
}                                                                                                \
static inline VT cbn_nt_relu_##SFX(VT v) {                                                       \
    const VT zero = {0};                                                                         \
    return (VT)((VI)v & ~(VI)(v < zero)); /* NaN < 0 is false: NaN stays */                      \
}                                                                                                \
/* One run of n elements with scalar coefficients: y = (x - hi) * sc + sh (ReLU if relu). */    \
static inline void cbn_affine_run_nt_##SFX(const T *restrict x, T *restrict y, ptrdiff_t n,     \
                                           T hi, T sc, T sh, int relu) {                         \
    enum { VL = CBN_NT_BYTES / sizeof(T) };                                                      \
    const ptrdiff_t h = CBN_NT_HEAD(y, n);                                                       \
    const VT H = (VT){0} + hi, S = (VT){0} + sc, B = (VT){0} + sh;                               \
    ptrdiff_t i = 0;                                                                             \
    if (relu) {                                                                                  \
        for (; i < h; i++) { T v = CBN_NT_AFFINE_S(x[i], hi, sc, sh); y[i] = CBN_NT_RELU_S(v); } \
        for (; i + VL <= n; i += VL)                                                             \
            STORE(y + i, cbn_nt_relu_##SFX(CBN_NT_AFFINE_S(cbn_nt_load_##SFX(x + i), H, S, B))); \
        for (; i < n; i++) { T v = CBN_NT_AFFINE_S(x[i], hi, sc, sh); y[i] = CBN_NT_RELU_S(v); } \
    } else {                                                                                     \
        for (; i < h; i++) y[i] = CBN_NT_AFFINE_S(x[i], hi, sc, sh);                             \
        for (; i + VL <= n; i += VL)                                                             \
            STORE(y + i, CBN_NT_AFFINE_S(cbn_nt_load_##SFX(x + i), H, S, B));                    \
        for (; i < n; i++) y[i] = CBN_NT_AFFINE_S(x[i], hi, sc, sh);                             \
    }                                                                                            \
}                                                                                                \
/* One run with scalar coefficients: dx = g * k1 + (x - hi) * k2 + k3, g = dy, or dy where the  \
 * ReLU output ym > 0 (ym may be NULL). */                                                      \
static inline void cbn_dx_run_nt_##SFX(const T *restrict dy, const T *restrict ym,              \
                                       const T *restrict x, T *restrict dx, ptrdiff_t n,         \
                                       T hi, T k1, T k2, T k3) {                                 \
    enum { VL = CBN_NT_BYTES / sizeof(T) };                                                      \
    const ptrdiff_t h = CBN_NT_HEAD(dx, n);                                                      \
    const VT H = (VT){0} + hi, K1 = (VT){0} + k1, K2 = (VT){0} + k2, K3 = (VT){0} + k3;         \
    const VT zero = {0};                                                                         \
    ptrdiff_t i = 0;                                                                             \
    if (ym) {                                                                                    \
        for (; i < h; i++) { T g = dy[i]; g = ym[i] > 0 ? g : 0;                                 \
                             dx[i] = CBN_NT_DX_S(g, x[i], hi, k1, k2, k3); }                     \
        for (; i + VL <= n; i += VL) {                                                           \
            VT g = cbn_nt_load_##SFX(dy + i);                                                    \
            g = (VT)((VI)g & (VI)(cbn_nt_load_##SFX(ym + i) > zero));                            \
            STORE(dx + i, CBN_NT_DX_S(g, cbn_nt_load_##SFX(x + i), H, K1, K2, K3));              \
        }                                                                                        \
        for (; i < n; i++) { T g = dy[i]; g = ym[i] > 0 ? g : 0;                                 \
                             dx[i] = CBN_NT_DX_S(g, x[i], hi, k1, k2, k3); }                     \
    } else {                                                                                     \
        for (; i < h; i++) dx[i] = CBN_NT_DX_S(dy[i], x[i], hi, k1, k2, k3);                     \
        for (; i + VL <= n; i += VL)                                                             \
            STORE(dx + i, CBN_NT_DX_S(cbn_nt_load_##SFX(dy + i), cbn_nt_load_##SFX(x + i),       \
                                      H, K1, K2, K3));                                           \
        for (; i < n; i++) dx[i] = CBN_NT_DX_S(dy[i], x[i], hi, k1, k2, k3);                     \
    }                                                                                            \
}                                                                                                \
/* Extended coefficients: out holds k vectors of C + CBN_NT_PAD entries, vector v being        \
 * coef[v * C + (j mod C)] for j < C + CBN_NT_PAD. */                                           \
static inline void cbn_nt_extend_##SFX(const T *restrict coef, ptrdiff_t C, int k,             \
                                       T *restrict out) {                                        \
    for (int v = 0; v < k; v++)                                                                  \
        for (ptrdiff_t j = 0; j < C + CBN_NT_PAD; j++)                                           \
            out[v * (C + CBN_NT_PAD) + j] = coef[v * C + j % C];                                 \
}                                                                                                \
/* Dense channels-last block of n elements whose first element is column 0, per-channel        \
 * extended coefficients (stride C + CBN_NT_PAD): y = (x - hi) * sc + sh (ReLU if relu). */      \
static inline void cbn_affine_flat_nt_##SFX(const T *restrict x, T *restrict y, ptrdiff_t n,    \
                                            ptrdiff_t C, const T *restrict ext, int relu) {      \
    enum { VL = CBN_NT_BYTES / sizeof(T) };                                                      \
    const T *hi = ext, *sc = ext + (C + CBN_NT_PAD), *sh = ext + 2 * (C + CBN_NT_PAD);           \
    const ptrdiff_t h = CBN_NT_HEAD(y, n), step = VL % C; /* c += VL, modulo C */               \
    ptrdiff_t i = 0, c = 0;                                                                      \
    for (; i < h; i++) {                                                                         \
        T v = CBN_NT_AFFINE_S(x[i], hi[c], sc[c], sh[c]);                                        \
        y[i] = relu ? CBN_NT_RELU_S(v) : v;                                                      \
        if (++c == C) c = 0;                                                                     \
    }                                                                                            \
    if (C % VL == 0 && C / VL <= CBN_NT_REG) { /* whole periods of C / VL vectors */            \
        const int m = (int)(C / VL);                                                             \
        VT H[CBN_NT_REG], S[CBN_NT_REG], B[CBN_NT_REG];                                          \
        for (int v = 0; v < CBN_NT_REG; v++)                                                     \
            if (v < m) {                                                                         \
                const ptrdiff_t cv = c + v * VL < C ? c + v * VL : c + v * VL - C;               \
                H[v] = cbn_nt_load_##SFX(hi + cv);                                               \
                S[v] = cbn_nt_load_##SFX(sc + cv);                                               \
                B[v] = cbn_nt_load_##SFX(sh + cv);                                               \
            }                                                                                    \
        if (relu) {                                                                              \
            for (; i + C <= n; i += C)                                                           \
                for (int v = 0; v < CBN_NT_REG; v++)                                             \
                    if (v < m)                                                                   \
                        STORE(y + i + v * VL, cbn_nt_relu_##SFX(CBN_NT_AFFINE_S(                  \
                            cbn_nt_load_##SFX(x + i + v * VL), H[v], S[v], B[v])));              \
        } else {                                                                                 \
            for (; i + C <= n; i += C)                                                           \
                for (int v = 0; v < CBN_NT_REG; v++)                                             \
                    if (v < m)                                                                   \
                        STORE(y + i + v * VL, CBN_NT_AFFINE_S(cbn_nt_load_##SFX(x + i + v * VL), \
                                                               H[v], S[v], B[v]));               \
        }                                                                                        \
    }                                                                                            \
    if (relu) {                                                                                  \
        for (; i + VL <= n; i += VL) {                                                           \
            STORE(y + i, cbn_nt_relu_##SFX(CBN_NT_AFFINE_S(cbn_nt_load_##SFX(x + i),             \
                cbn_nt_load_##SFX(hi + c), cbn_nt_load_##SFX(sc + c), cbn_nt_load_##SFX(sh + c)))); \
            c += step;                                                                           \
            if (c >= C) c -= C;                                                                  \
        }                                                                                        \
    } else {                                                                                     \
        for (; i + VL <= n; i += VL) {                                                           \
            STORE(y + i, CBN_NT_AFFINE_S(cbn_nt_load_##SFX(x + i), cbn_nt_load_##SFX(hi + c),    \
                                         cbn_nt_load_##SFX(sc + c), cbn_nt_load_##SFX(sh + c)));  \
            c += step;                                                                           \
            if (c >= C) c -= C;                                                                  \
        }                                                                                        \
    }                                                                                            \
    for (; i < n; i++) {                                                                         \
        T v = CBN_NT_AFFINE_S(x[i], hi[c], sc[c], sh[c]);                                        \
        y[i] = relu ? CBN_NT_RELU_S(v) : v;                                                      \
        if (++c == C) c = 0;                                                                     \
    }                                                                                            \
}                                                                                                \
/* Dense channels-last block, extended coefficients [hi | k1 | k2 | k3]:                        \
 * dx = g * k1 + (x - hi) * k2 + k3, g = dy, or dy where ym > 0 (ym may be NULL). */            \
static inline void cbn_dx_flat_nt_##SFX(const T *restrict dy, const T *restrict ym,             \
                                        const T *restrict x, T *restrict dx, ptrdiff_t n,        \
                                        ptrdiff_t C, const T *restrict ext) {                    \
    enum { VL = CBN_NT_BYTES / sizeof(T) };                                                      \
    const ptrdiff_t L = C + CBN_NT_PAD;                                                          \
    const T *hi = ext, *k1 = ext + L, *k2 = ext + 2 * L, *k3 = ext + 3 * L;                      \
    const ptrdiff_t h = CBN_NT_HEAD(dx, n), step = VL % C; /* c += VL, modulo C */              \
    const VT zero = {0};                                                                         \
    ptrdiff_t i = 0, c = 0;                                                                      \
    for (; i < h; i++) {                                                                         \
        T g = dy[i];                                                                             \
        if (ym) g = ym[i] > 0 ? g : 0;                                                           \
        dx[i] = CBN_NT_DX_S(g, x[i], hi[c], k1[c], k2[c], k3[c]);                                \
        if (++c == C) c = 0;                                                                     \
    }                                                                                            \
    if (C % VL == 0 && C / VL <= CBN_NT_REG) { /* whole periods of C / VL vectors */            \
        const int m = (int)(C / VL);                                                             \
        VT H[CBN_NT_REG], A1[CBN_NT_REG], A2[CBN_NT_REG], A3[CBN_NT_REG];                        \
        for (int v = 0; v < CBN_NT_REG; v++)                                                     \
            if (v < m) {                                                                         \
                const ptrdiff_t cv = c + v * VL < C ? c + v * VL : c + v * VL - C;               \
                H[v] = cbn_nt_load_##SFX(hi + cv);                                               \
                A1[v] = cbn_nt_load_##SFX(k1 + cv);                                              \
                A2[v] = cbn_nt_load_##SFX(k2 + cv);                                              \
                A3[v] = cbn_nt_load_##SFX(k3 + cv);                                              \
            }                                                                                    \
        if (ym) {                                                                                \
            for (; i + C <= n; i += C)                                                           \
                for (int v = 0; v < CBN_NT_REG; v++)                                             \
                    if (v < m) {                                                                 \
                        const ptrdiff_t o = i + v * VL;                                          \
                        VT g = cbn_nt_load_##SFX(dy + o);                                        \
                        g = (VT)((VI)g & (VI)(cbn_nt_load_##SFX(ym + o) > zero));                \
                        STORE(dx + o, CBN_NT_DX_S(g, cbn_nt_load_##SFX(x + o), H[v], A1[v],      \
                                                  A2[v], A3[v]));                                \
                    }                                                                            \
        } else {                                                                                 \
            for (; i + C <= n; i += C)                                                           \
                for (int v = 0; v < CBN_NT_REG; v++)                                             \
                    if (v < m) {                                                                 \
                        const ptrdiff_t o = i + v * VL;                                          \
                        STORE(dx + o, CBN_NT_DX_S(cbn_nt_load_##SFX(dy + o),                     \
                                                  cbn_nt_load_##SFX(x + o), H[v], A1[v], A2[v],  \
                                                  A3[v]));                                       \
                    }                                                                            \
        }                                                                                        \
    }                                                                                            \
    if (ym) {                                                                                    \
        for (; i + VL <= n; i += VL) {                                                           \
            VT g = cbn_nt_load_##SFX(dy + i);                                                    \
            g = (VT)((VI)g & (VI)(cbn_nt_load_##SFX(ym + i) > zero));                            \
            STORE(dx + i, CBN_NT_DX_S(g, cbn_nt_load_##SFX(x + i), cbn_nt_load_##SFX(hi + c),    \
                                      cbn_nt_load_##SFX(k1 + c), cbn_nt_load_##SFX(k2 + c),      \
                                      cbn_nt_load_##SFX(k3 + c)));                               \
            c += step;                                                                           \
            if (c >= C) c -= C;                                                                  \
        }                                                                                        \
    } else {                                                                                     \
        for (; i + VL <= n; i += VL) {                                                           \
            STORE(dx + i, CBN_NT_DX_S(cbn_nt_load_##SFX(dy + i), cbn_nt_load_##SFX(x + i),       \
                                      cbn_nt_load_##SFX(hi + c), cbn_nt_load_##SFX(k1 + c),      \
                                      cbn_nt_load_##SFX(k2 + c), cbn_nt_load_##SFX(k3 + c)));    \
            c += step;                                                                           \
            if (c >= C) c -= C;                                                                  \
        }                                                                                        \
    }                                                                                            \
    for (; i < n; i++) {                                                                         \
        T g = dy[i];                                                                             \
        if (ym) g = ym[i] > 0 ? g : 0;                                                           \
        dx[i] = CBN_NT_DX_S(g, x[i], hi[c], k1[c], k2[c], k3[c]);                                \
        if (++c == C) c = 0;                                                                     \
    }                                                                                            \
}

CBN_DEFINE_STREAM(float, f32, cbn_ntf, cbn_nti, CBN_NT_STORE_F32)
CBN_DEFINE_STREAM(double, f64, cbn_ntd, cbn_ntl, CBN_NT_STORE_F64)

#else /* no streaming stores on this target: the callers never take these paths */

static inline int cbn_nt_available(void) { return 0; }
static inline void cbn_nt_fence(void) {}
#define CBN_DEFINE_STREAM_FALLBACK(T, SFX)                                                       \
static inline void cbn_affine_run_nt_##SFX(const T *x, T *y, ptrdiff_t n, T hi, T sc, T sh,     \
                                           int relu) {                                           \
    for (ptrdiff_t i = 0; i < n; i++) {                                                          \
        T v = (x[i] - hi) * sc + sh;                                                             \
        y[i] = relu && v < 0 ? 0 : v;                                                            \
    }                                                                                            \
}                                                                                                \
static inline void cbn_dx_run_nt_##SFX(const T *dy, const T *ym, const T *x, T *dx,             \
                                       ptrdiff_t n, T hi, T k1, T k2, T k3) {                    \
    for (ptrdiff_t i = 0; i < n; i++) {                                                          \
        T g = dy[i];                                                                             \
        if (ym) g = ym[i] > 0 ? g : 0;                                                           \
        dx[i] = g * k1 + (x[i] - hi) * k2 + k3;                                                  \
    }                                                                                            \
}                                                                                                \
static inline void cbn_nt_extend_##SFX(const T *coef, ptrdiff_t C, int k, T *out) {             \
    for (int v = 0; v < k; v++)                                                                  \
        for (ptrdiff_t j = 0; j < C + CBN_NT_PAD; j++)                                           \
            out[v * (C + CBN_NT_PAD) + j] = coef[v * C + j % C];                                 \
}                                                                                                \
static inline void cbn_affine_flat_nt_##SFX(const T *x, T *y, ptrdiff_t n, ptrdiff_t C,         \
                                            const T *ext, int relu) {                            \
    const ptrdiff_t L = C + CBN_NT_PAD;                                                          \
    for (ptrdiff_t i = 0; i < n; i++) {                                                          \
        ptrdiff_t c = i % C;                                                                     \
        T v = (x[i] - ext[c]) * ext[L + c] + ext[2 * L + c];                                     \
        y[i] = relu && v < 0 ? 0 : v;                                                            \
    }                                                                                            \
}                                                                                                \
static inline void cbn_dx_flat_nt_##SFX(const T *dy, const T *ym, const T *x, T *dx,            \
                                        ptrdiff_t n, ptrdiff_t C, const T *ext) {                \
    const ptrdiff_t L = C + CBN_NT_PAD;                                                          \
    for (ptrdiff_t i = 0; i < n; i++) {                                                          \
        ptrdiff_t c = i % C;                                                                     \
        T g = dy[i];                                                                             \
        if (ym) g = ym[i] > 0 ? g : 0;                                                           \
        dx[i] = g * ext[L + c] + (x[i] - ext[c]) * ext[2 * L + c] + ext[3 * L + c];              \
    }                                                                                            \
}
CBN_DEFINE_STREAM_FALLBACK(float, f32)
CBN_DEFINE_STREAM_FALLBACK(double, f64)

#endif /* CBN_HAVE_NT */
#endif /* CBN_STREAM_H */
