/* cbn_half-inl.h: the data loads and stores of one 16-bit format (cbn_half.h) in the forms the
 * kernel families use for float and double (cbn_simd.h, cbn_tiles.h): a native vector of
 * float32 (CBN_TVL elements), 8 lanes of float64 for the reductions, CBN_DL elements of
 * float64 for the column tiles, partial vectors, and pairs.  Included by cbn_families-inl.h
 * for the 16-bit formats only, with TS, CBN_LD, CBN_VWIDEN, CBN_VNARROW, CBN_VWIDEN2,
 * CBN_VNARROW2, CBN_COEF2, CBN_W8 and CBN_W4 defined; no include guard. */

#ifdef CBN_VECTOR
static inline cbn_vf SFX(cbn_vload)(const TS *p) { return CBN_VWIDEN(p); }
static inline void SFX(cbn_vstore)(TS *p, cbn_vf v) { CBN_VNARROW(p, v); }
/* 2 * CBN_TVL elements as two vectors in the pair order of cbn_half.h (for lane-independent
 * work only: the order is not the elements' order), and back */
static inline void SFX(cbn_vload2)(const TS *p, cbn_vf *a, cbn_vf *b) { CBN_VWIDEN2(p, a, b); }
static inline void SFX(cbn_vstore2)(TS *p, cbn_vf a, cbn_vf b) { CBN_VNARROW2(p, a, b); }
/* the coefficients of a pair's elements (2 * CBN_TVL floats) in its lane order */
static inline void SFX(cbn_coef2)(const float *p, cbn_vf *a, cbn_vf *b) { CBN_COEF2(p, a, b); }

/* 8 elements as the 8 lanes of the reductions */
static inline cbn_v8d SFX(cbn_load8)(const TS *p) {
    cbn_v8d r;
#if defined(__AVX512F__) && defined(__F16C__)
    r.h[0] = (cbn_vd)_mm512_cvtps_pd(CBN_W8(p));
#elif defined(__AVX2__) && defined(__F16C__) && CBN_VB == 32
    r.h[0] = (cbn_vd)_mm256_cvtps_pd(CBN_W4(p));
    r.h[1] = (cbn_vd)_mm256_cvtps_pd(CBN_W4(p + 4));
#else
    float f[8];
    for (int l = 0; l < 8; l++) f[l] = CBN_LD(p[l]);
    r = cbn_load8_f32(f);
#endif
    return r;
}
/* the first k < 8 elements, zero-padded (never reads past p + k) */
static inline cbn_v8d SFX(cbn_load8_tail)(const TS *p, int k) {
    TS b[8];
    memset(b, 0, sizeof b);
    memcpy(b, p, (size_t)k * sizeof(TS));
    return SFX(cbn_load8)(b);
}
/* CBN_DL elements as float64 (one native double vector) */
static inline cbn_vd SFX(cbn_loadv)(const TS *p) {
#if defined(__AVX512F__) && defined(__F16C__)
    return (cbn_vd)_mm512_cvtps_pd(CBN_W8(p));
#elif defined(__AVX2__) && defined(__F16C__) && CBN_VB == 32
    return (cbn_vd)_mm256_cvtps_pd(CBN_W4(p));
#else
    cbn_vd v;
    for (int l = 0; l < CBN_DL; l++) v[l] = (double)CBN_LD(p[l]);
    return v;
#endif
}
/* k <= CBN_TVL elements, the other lanes 0; and the first k lanes of v stored */
static inline __attribute__((always_inline)) cbn_vf SFX(cbn_vload_n)(const TS *p, ptrdiff_t k) {
    TS b[CBN_TVL];
    if (k == CBN_TVL) return SFX(cbn_vload)(p);
    memset(b, 0, sizeof b);
    memcpy(b, p, (size_t)k * sizeof(TS));
    return SFX(cbn_vload)(b);
}
static inline __attribute__((always_inline)) void SFX(cbn_vstore_n)(TS *p, cbn_vf v, ptrdiff_t k) {
    TS b[CBN_TVL];
    if (k == CBN_TVL) {
        SFX(cbn_vstore)(p, v);
        return;
    }
    SFX(cbn_vstore)(b, v);
    memcpy(p, b, (size_t)k * sizeof(TS));
}
#endif /* CBN_VECTOR */
