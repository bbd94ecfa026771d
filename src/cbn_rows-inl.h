/* cbn_rows-inl.h: the channels-last row loops for one element type: column accumulations
 * (statistics, backward sums) and the element-wise passes.  Included once per type by
 * cbn_kernels.h, with T and SFX(name) defined; no include guard.  The register-tiled kernels of
 * cbn_tiles-inl.h call these for the columns that do not fill a tile.
 *
 * Column accumulations run over `rows` rows of width w spaced ld elements apart.  Four rows are
 * folded per accumulator update, so the float64 accumulators (in L1) are loaded and stored once
 * per four input rows; the loops are element-wise over columns and vectorise without
 * reassociation.  Row order is fixed, so results are deterministic.  Accumulators and inputs
 * never alias. */

/* s1[j] += sum_r (x[r][j] - k[j]),  s2[j] += sum_r (x[r][j] - k[j])^2 */
static inline void SFX(cbn_col_shifted_sums_rows)(double *restrict s1, double *restrict s2,
                                              const TS *restrict x, ptrdiff_t ld, ptrdiff_t rows,
                                              const double *restrict k, ptrdiff_t w) {
    ptrdiff_t r = 0;
    for (; r + 4 <= rows; r += 4) {
        const TS *x0 = x + r * ld, *x1 = x0 + ld, *x2 = x1 + ld, *x3 = x2 + ld;
        _Pragma("omp simd")
        for (ptrdiff_t j = 0; j < w; j++) {
            double d0 = (double)CBN_LD(x0[j]) - k[j], d1 = (double)CBN_LD(x1[j]) - k[j];
            double d2 = (double)CBN_LD(x2[j]) - k[j], d3 = (double)CBN_LD(x3[j]) - k[j];
            s1[j] += (d0 + d1) + (d2 + d3);
            s2[j] += (d0 * d0 + d1 * d1) + (d2 * d2 + d3 * d3);
        }
    }
    for (; r < rows; r++) {
        const TS *x0 = x + r * ld;
        _Pragma("omp simd")
        for (ptrdiff_t j = 0; j < w; j++) {
            double d0 = (double)CBN_LD(x0[j]) - k[j];
            s1[j] += d0;
            s2[j] += d0 * d0;
        }
    }
}

/* The body of cbn_col_sum_dot_rows for one activation act (a constant: the function is always
 * inlined, so the activation's gradient leaves the loops and every form vectorises).  mk is the
 * activation's saved output (any valid pointer without an activation: it is never read then). */
static inline __attribute__((always_inline)) void SFX(cbn_col_sum_dot_rows_act)(
    double *restrict sdy, double *restrict sdyx, const TS *restrict dy, const TS *restrict mk,
    const TS *restrict x, ptrdiff_t ld, ptrdiff_t rows, const double *restrict m, ptrdiff_t w,
    const int act) {
    ptrdiff_t r = 0;
    for (; r + 4 <= rows; r += 4) {
        const TS *g0 = dy + r * ld, *g1 = g0 + ld, *g2 = g1 + ld, *g3 = g2 + ld;
        const TS *y0 = mk + r * ld, *y1 = y0 + ld, *y2 = y1 + ld, *y3 = y2 + ld;
        if (sdyx) {
            const TS *x0 = x + r * ld, *x1 = x0 + ld, *x2 = x1 + ld, *x3 = x2 + ld;
            _Pragma("omp simd")
            for (ptrdiff_t j = 0; j < w; j++) {
                double a0 = CBN_G(act, g0, y0, j), a1 = CBN_G(act, g1, y1, j);
                double a2 = CBN_G(act, g2, y2, j), a3 = CBN_G(act, g3, y3, j);
                sdy[j] += (a0 + a1) + (a2 + a3);
                sdyx[j] += (a0 * ((double)CBN_LD(x0[j]) - m[j]) + a1 * ((double)CBN_LD(x1[j]) - m[j]))
                         + (a2 * ((double)CBN_LD(x2[j]) - m[j]) + a3 * ((double)CBN_LD(x3[j]) - m[j]));
            }
        } else {
            _Pragma("omp simd")
            for (ptrdiff_t j = 0; j < w; j++) {
                double a0 = CBN_G(act, g0, y0, j), a1 = CBN_G(act, g1, y1, j);
                double a2 = CBN_G(act, g2, y2, j), a3 = CBN_G(act, g3, y3, j);
                sdy[j] += (a0 + a1) + (a2 + a3);
            }
        }
    }
    for (; r < rows; r++) {
        const TS *g0 = dy + r * ld, *x0 = x + r * ld, *y0 = mk + r * ld;
        for (ptrdiff_t j = 0; j < w; j++) {
            double a0 = CBN_G(act, g0, y0, j);
            sdy[j] += a0;
            if (sdyx) sdyx[j] += a0 * ((double)CBN_LD(x0[j]) - m[j]);
        }
    }
}
/* sdy[j] += sum_r g[r][j]; if sdyx: sdyx[j] += sum_r g[r][j] * (x[r][j] - m[j]), where g is dy
 * through the activation act whose output is ym (cbn_epilogue.h).  The g sum has the same
 * order with or without the dot product (dbias does not depend on `needs`). */
static inline void SFX(cbn_col_sum_dot_rows)(double *restrict sdy, double *restrict sdyx,
                                             const TS *restrict dy, const TS *restrict ym,
                                             const TS *restrict x, ptrdiff_t ld, ptrdiff_t rows,
                                             const double *restrict m, ptrdiff_t w, int act) {
    const TS *mk = ym ? ym : dy;
    CBN_FOR_ACT(act, SFX(cbn_col_sum_dot_rows_act)(sdy, sdyx, dy, mk, x, ld, rows, m, w, a_));
}

/* Element-wise passes over `rows` rows of width w (ld apart), with per-channel coefficient
 * vectors, one row at a time (CBN_ROWS_EACH).  Four rows per coefficient load, as an earlier
 * version did for rows of 4 KB or more, ran at 1.2-1.55x the copy floor from memory (2 threads,
 * 16.8 MB float32 and float64, C = 1024-16384 float32, 512-1024 float64: inference and dx)
 * where one row at a time runs at 1.00-1.07x (1.21x at C = 16384), and slower in L2 too
 * ((64, 1024) float32 inference 1.6x).  The restrict pointers are honest: the callers pass
 * disjoint arrays, and in-place work goes to the _inplace variants that take a single array. */
/* y = act((x - hi) * sc + sh), one instance per activation (always inlined with a constant) */
static inline __attribute__((always_inline)) void SFX(cbn_affine_rows_act)(
    const TS *restrict x, TS *restrict y, ptrdiff_t ld, ptrdiff_t rows, ptrdiff_t w,
    const T *restrict hi, const T *restrict sc, const T *restrict sh, const int act) {
    CBN_ROWS_EACH(CBN_AFFINE_AT, CBN_AFFINE_V, y)
}
static inline __attribute__((always_inline)) void SFX(cbn_affine_rows_inplace_act)(
    TS *restrict y, ptrdiff_t ld, ptrdiff_t rows, ptrdiff_t w, const T *restrict hi,
    const T *restrict sc, const T *restrict sh, const int act) {
    const TS *x = y;
    CBN_ROWS_EACH(CBN_AFFINE_AT, CBN_AFFINE_V, y)
}
/* dx = g * k1 + (x - hi) * k2 + k3 with g = dy through the activation act whose output is ym */
static inline __attribute__((always_inline)) void SFX(cbn_dx_rows_any_act)(
    const TS *restrict dy, const TS *restrict ym, const TS *restrict x, TS *restrict dx,
    ptrdiff_t ld, ptrdiff_t rows, ptrdiff_t w, const T *restrict hi, const T *restrict k1,
    const T *restrict k2, const T *restrict k3, const int act) {
    CBN_ROWS_EACH(CBN_DX_AT, CBN_DX_V, dx)
}
CBN_OWN_FRAME void SFX(cbn_dx_rows_any)(const TS *restrict dy, const TS *restrict ym,
                                     const TS *restrict x, TS *restrict dx,
                                     ptrdiff_t ld, ptrdiff_t rows, ptrdiff_t w,
                                     const T *restrict hi, const T *restrict k1,
                                     const T *restrict k2, const T *restrict k3, int act) {
    CBN_FOR_ACT(act, SFX(cbn_dx_rows_any_act)(dy, ym, x, dx, ld, rows, w, hi, k1, k2, k3, a_));
}

/* y = act((x - hi) * sc + sh) over channels-last rows; in place when x == y (the
 * restrict-qualified forms never see two names for one array). */
CBN_OWN_FRAME void SFX(cbn_affine_any)(const TS *x, TS *y, ptrdiff_t ld, ptrdiff_t rows,
                                        ptrdiff_t w, const T *hi, const T *sc, const T *sh,
                                        int act) {
    if ((const void *)x == (const void *)y)
        CBN_FOR_ACT(act, SFX(cbn_affine_rows_inplace_act)(y, ld, rows, w, hi, sc, sh, a_));
    else
        CBN_FOR_ACT(act, SFX(cbn_affine_rows_act)(x, y, ld, rows, w, hi, sc, sh, a_));
}
