/* cbn_partials.h: what the two-level statistics of the 16-bit formats share across the two
 * formats (the loops: cbn_partials-inl.h; the scheme, its error bound and the certificate:
 * kernels_statistics.pxi).
 *
 * float64 sums of 16-bit data are compute-bound: each 16 elements cost two conversions to
 * float32, two to float64 and six float64 operations, against half the bytes of float32 data.
 * Here x - c is summed in float32, each float32 lane over at most CBN_F32_RUN_* terms, and each
 * lane's partial is then added to float64: three float32 operations per 16 elements and one
 * conversion to float64 per CBN_F32_RUN_* vectors (float32 data in L1, one core, AVX-512: 0.056 ns
 * per element against 0.090).  The rounding error of a partial grows with its length, so the
 * length is a constant of the bound.  float32 data keeps the float64 sums: there the scheme
 * measured 0.97-1.13x the float64 time over 25.7 MB at one and two threads (the float64 sums
 * already run at the read's speed) and slower in cache, which does not pay for the digits. */
#ifndef CBN_PARTIALS_H
#define CBN_PARTIALS_H

/* Terms per float32 partial before it is added to float64: the bound's L (kernels_statistics).
 * Channel-major runs take 8 (groups of 16 elements per partial): the bound is then 10u (u =
 * 2^-24) for a centre at the mean and accepts centres within ~0.28 standard deviations, and a
 * channel refused about its sampled centre is summed again about its computed mean (a second
 * contiguous pass; 4 ran 25% slower: 0.085 against 0.067 ns per float16 element in L1).
 * Channels-last columns take 4 rows (bound 6u, centres within ~0.6 standard deviations): there
 * a second pass walks a column across every row, so the centre must be right the first time. */
#define CBN_F32_RUN_RUNS 8
#define CBN_F32_RUN_COLS 4

/* The centre c of a channel is a float32 estimate of its mean from a sample fixed by the shape
 * (kernels_statistics.pxi): channel-major, CBN_PILOT_LINES pieces of one 64-byte line each,
 * spread evenly over the channel; channels-last, CBN_PILOT_ROWS rows spread evenly.  The
 * certificate accepts a centre within ~0.6 standard deviations of the mean: a sample of 64
 * independent values misses that by 5 of its standard errors (~1e-6 of the channels); with 16
 * rows 7 of 1024 channels of normal data fell back (4096 x 1024 float32), costing 40%. */
#define CBN_PILOT_LINES 8
#define CBN_PILOT_ROWS 64

#ifdef CBN_VECTOR
/* Native float vectors of the widest column tile (a whole row when the row is that wide):
 * 4 with AVX-512 (64 float32 columns, 28 of the 32 registers), 2 otherwise. */
#if defined(__AVX512F__)
#define CBN_PT_MAX 4
#else
#define CBN_PT_MAX 2
#endif

/* The float32 lanes of one native float vector as two native double vectors: lanes
 * [0, CBN_DL) and [CBN_DL, 2 CBN_DL). */
static inline void cbn_widen_f32(cbn_vf v, cbn_vd *lo, cbn_vd *hi) {
#if defined(__AVX512F__)
    *lo = (cbn_vd)_mm512_cvtps_pd(_mm512_castps512_ps256((__m512)v));
    *hi = (cbn_vd)_mm512_cvtps_pd(
        _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd((__m512)v), 1)));
#elif defined(__AVX__)
    *lo = (cbn_vd)_mm256_cvtps_pd(_mm256_castps256_ps128((__m256)v));
    *hi = (cbn_vd)_mm256_cvtps_pd(_mm256_extractf128_ps((__m256)v, 1));
#elif defined(__SSE2__)
    *lo = (cbn_vd)_mm_cvtps_pd((__m128)v);
    *hi = (cbn_vd)_mm_cvtps_pd(_mm_movehl_ps((__m128)v, (__m128)v));
#else
    for (int l = 0; l < CBN_DL; l++) {
        (*lo)[l] = (double)v[l];
        (*hi)[l] = (double)v[CBN_DL + l];
    }
#endif
}

/* A group of 16 float32 lanes as CBN_NV native float vectors (lane l in vector l / (2 CBN_DL)),
 * added to the 8 float64 lanes of acc: lane l receives float lanes l and l + 8, summed first
 * (the same order at every SIMD level). */
static inline cbn_v8d cbn_v8_add_group16(cbn_v8d acc, const cbn_vf *grp) {
    cbn_vd w[2 * CBN_NV];
    for (int u = 0; u < CBN_NV; u++) cbn_widen_f32(grp[u], &w[2 * u], &w[2 * u + 1]);
    CBN_V8_EACH(i) acc.h[i] += w[i] + w[CBN_NV + i];
    return acc;
}
#endif /* CBN_VECTOR */

#endif /* CBN_PARTIALS_H */
