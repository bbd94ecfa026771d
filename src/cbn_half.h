/* cbn_half.h: the 16-bit storage formats -- IEEE binary16 (NumPy's float16) and bfloat16
 * (ml_dtypes.bfloat16) -- and their conversions to and from float32, one element at a time and
 * on the native vectors of cbn_simd.h.
 *
 * Half-precision data is a storage format here, not an arithmetic type: the kernels widen each
 * load to float32 in registers, compute in float32 (statistics in float64, as for float32
 * data) and narrow each store.  The element types are one-field structs rather than uint16_t
 * so that a kernel which reads x[i] without converting it does not compile.
 *
 * Conversions, all exact where the value is representable:
 *   widening      exact for every value (subnormals included; NaN stays NaN, its payload kept);
 *   narrowing     round to nearest, ties to even, as NumPy's and ml_dtypes' casts: overflow
 *                 gives +-inf, results below the normal range are rounded subnormals (never
 *                 flushed), NaN stays NaN (binary16: F16C keeps the payload's high bits and sets
 *                 the quiet bit, the portable path gives 0x7e00 with the sign; bfloat16: 0x7fc0
 *                 with the sign, exactly as ml_dtypes).
 * binary16 uses F16C (vcvtph2ps / vcvtps2ph, in every x86-64-v3 and v4 CPU) where the target
 * has it, and a portable integer path otherwise (the baseline level; any other architecture);
 * bfloat16 is a shift on the way in and an integer rounding on the way out at every level (a
 * few integer operations per vector, next to a memory-bound pass).  Not AVX512_BF16's
 * vcvtneps2bf16: it flushes subnormal inputs and outputs to zero, where ml_dtypes keeps them.  The portable binary16 paths
 * use float32 arithmetic on subnormal values, so they assume the process has not enabled
 * denormals-are-zero (as every float kernel here does).  tests/kernels/test_half_conversions.py
 * checks all
 * 65,536 values of each format in and sampled float32 bit patterns at every rounding boundary
 * out, at every SIMD level, against NumPy and ml_dtypes. */
#ifndef CBN_HALF_H
#define CBN_HALF_H

#include <stdint.h>
#include <string.h>
#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#endif

typedef struct { uint16_t bits; } cbn_f16;
typedef struct { uint16_t bits; } cbn_bf16;

static inline uint32_t cbn_f32_bits(float f) {
    uint32_t u;
    memcpy(&u, &f, sizeof u);
    return u;
}
static inline float cbn_bits_f32(uint32_t u) {
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}

/* ---------------------------------------------------------------- scalars */
/* The portable binary16 forms (also the reference of the vector forms below).  Widening: the
 * exponent and mantissa shifted into place give the value times 2^-112 as a float32 (a float32
 * subnormal for a binary16 subnormal), so one exact multiplication rebiases both. */
static inline float cbn_f16_to_f32_portable(uint16_t h) {
    const uint32_t sign = (uint32_t)(h & 0x8000u) << 16, em = h & 0x7fffu;
    if (em >= 0x7c00u) return cbn_bits_f32(sign | 0x7f800000u | (em & 0x3ffu) << 13);
    return cbn_bits_f32(sign | cbn_f32_bits(cbn_bits_f32(em << 13) * 0x1p112f));
}
/* Narrowing (after F. Giesen's float_to_half_fast3_rtne): below 2^-14 one float32 addition of
 * 0.5 rounds to binary16's subnormal spacing 2^-24 (ties to even, in the default rounding
 * mode); above it, an integer rounding of the mantissa, whose carry runs into the exponent (and
 * to infinity from 65520 up). */
static inline uint16_t cbn_f32_to_f16_portable(float f) {
    uint32_t u = cbn_f32_bits(f);
    const uint32_t sign = u & 0x80000000u;
    uint32_t o;
    u ^= sign;
    if (u >= 0x47800000u) {                       /* >= 2^16, inf or NaN */
        o = u > 0x7f800000u ? 0x7e00u : 0x7c00u;
    } else if (u < 0x38800000u) {                 /* below 2^-14: subnormal or zero */
        o = cbn_f32_bits(cbn_bits_f32(u) + 0.5f) - 0x3f000000u;
    } else {
        const uint32_t odd = (u >> 13) & 1u;
        o = (u + 0xc8000fffu + odd) >> 13;        /* rebias by (15 - 127) << 23, round */
    }
    return (uint16_t)(o | sign >> 16);
}

static inline float cbn_f16_to_f32(cbn_f16 h) {
#if defined(__F16C__)
    return _cvtsh_ss(h.bits);
#else
    return cbn_f16_to_f32_portable(h.bits);
#endif
}
static inline cbn_f16 cbn_f32_to_f16(float f) {
    cbn_f16 h;
#if defined(__F16C__)
    h.bits = (uint16_t)_cvtss_sh(f, _MM_FROUND_TO_NEAREST_INT);
#else
    h.bits = cbn_f32_to_f16_portable(f);
#endif
    return h;
}
static inline float cbn_bf16_to_f32(cbn_bf16 h) { return cbn_bits_f32((uint32_t)h.bits << 16); }
static inline cbn_bf16 cbn_f32_to_bf16(float f) {
    const uint32_t u = cbn_f32_bits(f);
    cbn_bf16 h;
    h.bits = (u & 0x7fffffffu) > 0x7f800000u ? (uint16_t)((u >> 16 & 0x8000u) | 0x7fc0u)
                                             : (uint16_t)((u + 0x7fffu + (u >> 16 & 1u)) >> 16);
    return h;
}

/* A float64 rounded once to a 16-bit format (the wide channels' float64 path): rounded to odd in
 * float32 first -- the float32 neighbour toward zero, its last bit set when inexact -- so the
 * second rounding equals the direct one (float32 keeps at least 2 more bits than either
 * format, subnormals included). */
static inline float cbn_f64_to_f32_odd(double v) {
    float f = (float)v;
    if (v == v && (double)f != v) {
        uint32_t u = cbn_f32_bits(f);
        if (v > 0 ? (double)f > v : (double)f < v) u -= 1; /* rounded away from zero */
        f = cbn_bits_f32(u | 1u);
    }
    return f;
}
static inline cbn_f16 cbn_f64_to_f16(double v) { return cbn_f32_to_f16(cbn_f64_to_f32_odd(v)); }
static inline cbn_bf16 cbn_f64_to_bf16(double v) { return cbn_f32_to_bf16(cbn_f64_to_f32_odd(v)); }

/* ---------------------------------------------------------------- vectors */
#ifdef CBN_VECTOR
/* CBN_VB / 4 elements of 16 bits (the lanes of one native float vector), and 8 of them */
typedef uint16_t cbn_vh __attribute__((vector_size(CBN_VB / 2)));
typedef unsigned int cbn_vu __attribute__((vector_size(CBN_VB)));
#define CBN_HL (CBN_VB / 4)

static inline cbn_vh cbn_vh_load(const void *p) {
    cbn_vh v;
    memcpy(&v, p, sizeof v);
    return v;
}
static inline void cbn_vh_store(void *p, cbn_vh v) { memcpy(p, &v, sizeof v); }
/* a where the comparison c holds, else b (C has no vector ?:) */
#define CBN_VU_SEL(c, a, b) (((cbn_vu)(c) & (a)) | (~(cbn_vu)(c) & (b)))

/* bfloat16: the bits shifted in; out, the rounding of cbn_f32_to_bf16 lane by lane.  Written
 * with intrinsics where there are some: GCC 12 splits the generic forms' 16-bit <-> 32-bit
 * conversions into halves and shuffles (in L2, one thread: bfloat16 inference 0.23 ns per
 * element against binary16's 0.10). */
static inline cbn_vf cbn_vwiden_bf16(const cbn_bf16 *p) {
#if defined(__AVX512F__)
    const __m256i h = _mm256_loadu_si256((const __m256i *)(const void *)p);
    return (cbn_vf)_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16);
#elif defined(__AVX2__)
    const __m128i h = _mm_loadu_si128((const __m128i *)(const void *)p);
    return (cbn_vf)_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16);
#else
    return (cbn_vf)(__builtin_convertvector(cbn_vh_load(p), cbn_vu) << 16);
#endif
}
static inline void cbn_vnarrow_bf16(cbn_bf16 *p, cbn_vf v) {
    const cbn_vu u = (cbn_vu)v;
    const cbn_vu r = (u + 0x7fffu + (u >> 16 & 1u)) >> 16;
    const cbn_vu q = (u >> 16 & 0x8000u) | 0x7fc0u;
#if defined(__AVX512F__)
    const __mmask16 nan = _mm512_cmp_ps_mask((__m512)v, (__m512)v, _CMP_UNORD_Q);
    const __m512i o = _mm512_mask_mov_epi32((__m512i)r, nan, (__m512i)q);
    _mm256_storeu_si256((__m256i *)(void *)p, _mm512_cvtepi32_epi16(o));
#elif defined(__AVX2__)
    const __m256i nan = _mm256_castps_si256(_mm256_cmp_ps((__m256)v, (__m256)v, _CMP_UNORD_Q));
    const __m256i o = _mm256_blendv_epi8((__m256i)r, (__m256i)q, nan);
    const __m256i w = _mm256_permute4x64_epi64(_mm256_packus_epi32(o, o), 0x08); /* lanes 0, 2 */
    _mm_storeu_si128((__m128i *)(void *)p, _mm256_castsi256_si128(w));
#else
    const cbn_vu a = u & 0x7fffffffu;
    cbn_vh_store(p, __builtin_convertvector(CBN_VU_SEL(a > 0x7f800000u, q, r), cbn_vh));
#endif
}

/* bfloat16 pairs: 2 * CBN_HL elements as two vectors, for element-wise passes whose lanes are
 * independent (scalar coefficients).  Below AVX-512 the pair is split by parity: a holds the
 * even elements, b the odd ones, so widening is one shift or mask of the 32-bit words and
 * narrowing needs no pack or permute -- each word's high half is the odd element.  On one AVX2
 * core this ran a channel-major y = (x - h) * s + b from L1 at 0.17 ns per element against
 * 0.29 for the two single forms (their pack and lane permute, and the NaN select of every
 * vector).  NaN is rare: one unordered compare of the pair tests both vectors, and only then
 * does the select of cbn_vnarrow_bf16 run.  AVX-512 keeps the single forms (natural order). */
#if !defined(__AVX512F__)
/* the rounding of cbn_f32_to_bf16 kept in the high half of each 32-bit word */
static inline cbn_vu cbn_bf16_round_hi(cbn_vu u) { return u + 0x7fffu + (u >> 16 & 1u); }
static inline cbn_vu cbn_bf16_round_hi_nan(cbn_vu u) {
    return CBN_VU_SEL((u & 0x7fffffffu) > 0x7f800000u, (u & 0x80000000u) | 0x7fc00000u,
                      cbn_bf16_round_hi(u));
}
/* whether a or b has a NaN lane */
static inline int cbn_vf_any_nan2(cbn_vf a, cbn_vf b) {
#if defined(__AVX__)
    return _mm256_movemask_ps(_mm256_cmp_ps((__m256)a, (__m256)b, _CMP_UNORD_Q)) != 0;
#elif defined(__SSE2__) && CBN_VB == 16
    return _mm_movemask_ps(_mm_cmpunord_ps((__m128)a, (__m128)b)) != 0;
#else
    const cbn_vu m = (cbn_vu)((a != a) | (b != b));
    unsigned any = 0;
    for (int l = 0; l < CBN_HL; l++) any |= m[l];
    return any != 0;
#endif
}
#endif
/* 2 * CBN_HL float32 coefficients (one per element of a pair) in the pair's lane order */
static inline void cbn_vcoef2_bf16(const float *p, cbn_vf *a, cbn_vf *b) {
    cbn_vf v0, v1;
    memcpy(&v0, p, sizeof v0);
    memcpy(&v1, p + CBN_HL, sizeof v1);
#if defined(__AVX512F__)
    *a = v0;
    *b = v1;
#elif CBN_VB == 32
    *a = __builtin_shuffle(v0, v1, (cbn_vi){0, 2, 4, 6, 8, 10, 12, 14});
    *b = __builtin_shuffle(v0, v1, (cbn_vi){1, 3, 5, 7, 9, 11, 13, 15});
#else
    *a = __builtin_shuffle(v0, v1, (cbn_vi){0, 2, 4, 6});
    *b = __builtin_shuffle(v0, v1, (cbn_vi){1, 3, 5, 7});
#endif
}
static inline void cbn_vwiden2_bf16(const cbn_bf16 *p, cbn_vf *a, cbn_vf *b) {
#if defined(__AVX512F__)
    *a = cbn_vwiden_bf16(p);
    *b = cbn_vwiden_bf16(p + CBN_HL);
#else
    cbn_vu w;
    memcpy(&w, p, sizeof w);
    *a = (cbn_vf)(w << 16);
    *b = (cbn_vf)(w & 0xffff0000u);
#endif
}
static inline void cbn_vnarrow2_bf16(cbn_bf16 *p, cbn_vf a, cbn_vf b) {
#if defined(__AVX512F__)
    cbn_vnarrow_bf16(p, a);
    cbn_vnarrow_bf16(p + CBN_HL, b);
#else
    cbn_vu ra, rb;
    if (__builtin_expect(cbn_vf_any_nan2(a, b), 0)) {
        ra = cbn_bf16_round_hi_nan((cbn_vu)a);
        rb = cbn_bf16_round_hi_nan((cbn_vu)b);
    } else {
        ra = cbn_bf16_round_hi((cbn_vu)a);
        rb = cbn_bf16_round_hi((cbn_vu)b);
    }
    const cbn_vu w = (rb & 0xffff0000u) | ra >> 16;
    memcpy(p, &w, sizeof w);
#endif
}

/* binary16 */
static inline cbn_vf cbn_vwiden_f16(const cbn_f16 *p) {
#if defined(__AVX512F__)
    return (cbn_vf)_mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(const void *)p));
#elif defined(__AVX__) && defined(__F16C__)
    return (cbn_vf)_mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(const void *)p));
#else
    const cbn_vu em = __builtin_convertvector(cbn_vh_load(p), cbn_vu), sign = (em & 0x8000u) << 16;
    const cbn_vu e = em & 0x7fffu;
    const cbn_vu fin = (cbn_vu)((cbn_vf)(e << 13) * 0x1p112f);
    const cbn_vu nan = 0x7f800000u | (e & 0x3ffu) << 13;
    return (cbn_vf)(sign | (CBN_VU_SEL(e >= 0x7c00u, nan, fin)));
#endif
}
static inline void cbn_vnarrow_f16(cbn_f16 *p, cbn_vf v) {
#if defined(__AVX512F__)
    _mm256_storeu_si256((__m256i *)(void *)p,
                        _mm512_cvtps_ph((__m512)v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
#elif defined(__AVX__) && defined(__F16C__)
    _mm_storeu_si128((__m128i *)(void *)p, _mm256_cvtps_ph((__m256)v, _MM_FROUND_TO_NEAREST_INT));
#else
    const cbn_vu u0 = (cbn_vu)v, sign = u0 & 0x80000000u, u = u0 ^ sign;
    const cbn_vu big = CBN_VU_SEL(u > 0x7f800000u, (cbn_vu){0} + 0x7e00u, (cbn_vu){0} + 0x7c00u);
    const cbn_vu sub = (cbn_vu)((cbn_vf)u + 0.5f) - 0x3f000000u;
    const cbn_vu nrm = (u + 0xc8000fffu + (u >> 13 & 1u)) >> 13;
    const cbn_vu o = CBN_VU_SEL(u >= 0x47800000u, big, CBN_VU_SEL(u < 0x38800000u, sub, nrm));
    cbn_vh_store(p, __builtin_convertvector(o | sign >> 16, cbn_vh));
#endif
}

/* binary16 pairs (the interface of the bfloat16 pairs): two single vectors, natural order */
static inline void cbn_vwiden2_f16(const cbn_f16 *p, cbn_vf *a, cbn_vf *b) {
    *a = cbn_vwiden_f16(p);
    *b = cbn_vwiden_f16(p + CBN_HL);
}
static inline void cbn_vcoef2_f16(const float *p, cbn_vf *a, cbn_vf *b) {
    memcpy(a, p, sizeof *a);
    memcpy(b, p + CBN_HL, sizeof *b);
}
static inline void cbn_vnarrow2_f16(cbn_f16 *p, cbn_vf a, cbn_vf b) {
    cbn_vnarrow_f16(p, a);
    cbn_vnarrow_f16(p + CBN_HL, b);
}

/* 8 and 4 elements as float32 (for the float64 sums of the reductions, 8 lanes at a time) */
#if defined(__AVX2__) && defined(__F16C__)
static inline __m256 cbn_w8_f16(const cbn_f16 *p) {
    return _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(const void *)p));
}
static inline __m128 cbn_w4_f16(const cbn_f16 *p) {
    return _mm_cvtph_ps(_mm_loadl_epi64((const __m128i *)(const void *)p));
}
static inline __m256 cbn_w8_bf16(const cbn_bf16 *p) {
    const __m128i h = _mm_loadu_si128((const __m128i *)(const void *)p);
    return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
}
static inline __m128 cbn_w4_bf16(const cbn_bf16 *p) {
    const __m128i h = _mm_loadl_epi64((const __m128i *)(const void *)p);
    return _mm_castsi128_ps(_mm_slli_epi32(_mm_cvtepu16_epi32(h), 16));
}
#endif
#endif /* CBN_VECTOR */

#ifdef CBN_VECTOR
/* The element each lane of a pair holds (perm[l] for lane l of a, perm[CBN_HL + l] of b): the
 * pair widened from the bit patterns 0, 1, ..., each a subnormal that narrows back exactly. */
static inline void cbn_half_pair_order(int fmt, int *perm) {
    uint16_t probe[2 * CBN_HL];
    float lanes[2 * CBN_HL];
    cbn_vf a, b;
    for (int l = 0; l < 2 * CBN_HL; l++) probe[l] = (uint16_t)l;
    if (fmt == 0) cbn_vwiden2_f16((const cbn_f16 *)(const void *)probe, &a, &b);
    else cbn_vwiden2_bf16((const cbn_bf16 *)(const void *)probe, &a, &b);
    memcpy(lanes, &a, sizeof a);
    memcpy(lanes + CBN_HL, &b, sizeof b);
    for (int l = 0; l < 2 * CBN_HL; l++)
        perm[l] = fmt == 0 ? cbn_f32_to_f16_portable(lanes[l]) : cbn_f32_to_bf16(lanes[l]).bits;
}
#endif

/* For the tests (cbn._core.half_convert): n elements of format fmt (0 binary16, 1 bfloat16)
 * widened to float32 (mode 0), or float32 narrowed to the format (mode 1), through the vector
 * forms the kernels use and the scalar forms for the n % CBN_HL last ones; mode + 2: through
 * the pair forms first (whole pairs, each element put in or taken from the lane that holds it). */
static inline void cbn_half_convert(int fmt, int mode, const void *src, void *dst,
                                    ptrdiff_t n) {
    const int narrow = mode & 1;
    ptrdiff_t i = 0;
#ifdef CBN_VECTOR
    int perm[2 * CBN_HL];
    float lanes[2 * CBN_HL];
    cbn_vf a, b;
    if (mode & 2) cbn_half_pair_order(fmt, perm);
    for (; (mode & 2) && i + 2 * CBN_HL <= n; i += 2 * CBN_HL) {
        if (narrow) {
            for (int l = 0; l < 2 * CBN_HL; l++) lanes[l] = ((const float *)src)[i + perm[l]];
            memcpy(&a, lanes, sizeof a);
            memcpy(&b, lanes + CBN_HL, sizeof b);
            if (fmt == 0) cbn_vnarrow2_f16((cbn_f16 *)dst + i, a, b);
            else cbn_vnarrow2_bf16((cbn_bf16 *)dst + i, a, b);
        } else {
            if (fmt == 0) cbn_vwiden2_f16((const cbn_f16 *)src + i, &a, &b);
            else cbn_vwiden2_bf16((const cbn_bf16 *)src + i, &a, &b);
            memcpy(lanes, &a, sizeof a);
            memcpy(lanes + CBN_HL, &b, sizeof b);
            for (int l = 0; l < 2 * CBN_HL; l++) ((float *)dst)[i + perm[l]] = lanes[l];
        }
    }
    for (; i + CBN_HL <= n; i += CBN_HL) {
        if (narrow) {
            cbn_vf v;
            memcpy(&v, (const float *)src + i, sizeof v);
            if (fmt == 0) cbn_vnarrow_f16((cbn_f16 *)dst + i, v);
            else cbn_vnarrow_bf16((cbn_bf16 *)dst + i, v);
        } else {
            const cbn_vf v = fmt == 0 ? cbn_vwiden_f16((const cbn_f16 *)src + i)
                                      : cbn_vwiden_bf16((const cbn_bf16 *)src + i);
            memcpy((float *)dst + i, &v, sizeof v);
        }
    }
#endif
    for (; i < n; i++) {
        if (narrow && fmt == 0) ((cbn_f16 *)dst)[i] = cbn_f32_to_f16(((const float *)src)[i]);
        else if (narrow) ((cbn_bf16 *)dst)[i] = cbn_f32_to_bf16(((const float *)src)[i]);
        else if (fmt == 0) ((float *)dst)[i] = cbn_f16_to_f32(((const cbn_f16 *)src)[i]);
        else ((float *)dst)[i] = cbn_bf16_to_f32(((const cbn_bf16 *)src)[i]);
    }
}

#endif /* CBN_HALF_H */
