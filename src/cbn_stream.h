/* cbn_stream.h: element-wise passes with non-temporal (streaming) stores: why, the vectors and
 * the fence (the kernels, per element type: cbn_stream-inl.h).
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
#define CBN_NT_DX_S(g, xv, h, a1, a2, a3) ((g) * (a1) + ((xv) - (h)) * (a2) + (a3))

#else /* no streaming stores on this target: the callers never take these paths */

static inline int cbn_nt_available(void) { return 0; }
static inline void cbn_nt_fence(void) {}

#endif /* CBN_HAVE_NT */
#endif /* CBN_STREAM_H */
