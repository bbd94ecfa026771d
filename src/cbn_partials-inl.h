/* cbn_partials-inl.h: the two-level sums of the statistics and of the backward (cbn_partials.h)
 * for one 16-bit format (float arithmetic).  Included once per format by cbn_families-inl.h,
 * after cbn_post-inl.h (for SFX(cbn_pv_load_n)); no include guard.
 *
 * One set of loops serves both: g is x - c (SQUARES, the statistics, c the channel's centre)
 * or dy through the activation act (the backward), and the loops sum g and, with DOT, g g
 * (SQUARES) or g (x - h) (h the mean rounded to float32), in float32 partials of at most
 * CBN_F32_RUN_RUNS (runs) or CBN_F32_RUN_COLS (columns) terms from zero, each then added to
 * float64.  Which terms share a partial is fixed by the position in the run or the row in the
 * block alone (never by the thread count or the memory blocking). */

/* Columns [j0, w) of the two-level column sums, one at a time (the arithmetic of a tile's lane,
 * and the portable form of the whole): sa[j] += sum g and, if sb, sb[j] += sum g g (SQUARES:
 * g = x - h[j], src = x) or sum g (x - h[j]) (g = src through act, output ym), float32 partials
 * over groups of CBN_F32_RUN_COLS rows. */
static inline void SFX(cbn_col_partial_cols)(double *restrict sa, double *restrict sb,
                                             const TS *restrict src, const TS *restrict ym,
                                             const TS *restrict x, ptrdiff_t ld, ptrdiff_t rows,
                                             const float *restrict h, ptrdiff_t j0, ptrdiff_t w,
                                             int act, int squares) {
    for (ptrdiff_t j = j0; j < w; j++) {
        double A = sa[j], B = sb ? sb[j] : 0.0;
        for (ptrdiff_t r0 = 0; r0 < rows; r0 += CBN_F32_RUN_COLS) {
            const ptrdiff_t r1 = r0 + CBN_F32_RUN_COLS < rows ? r0 + CBN_F32_RUN_COLS : rows;
            float a = 0.0f, b = 0.0f;
            for (ptrdiff_t r = r0; r < r1; r++) {
                const ptrdiff_t i = r * ld + j;
                if (squares) {
                    const float d = CBN_LD(src[i]) - h[j];
                    a += d;
                    b += d * d;
                } else {
                    const float g = SFX(cbn_act_grad)(CBN_LD(src[i]), act ? CBN_LD(ym[i]) : 0,
                                                      act);
                    a += g;
                    if (sb) b += g * (CBN_LD(x[i]) - h[j]);
                }
            }
            A += (double)a;
            B += (double)b;
        }
        sa[j] = A;
        if (sb) sb[j] = B;
    }
}

#ifdef CBN_VECTOR
/* The column tiles of both two-level column reductions, PT native float vectors wide (a
 * constant, as are act, DOT and SQUARES: the function is always inlined, the tile's state stays
 * in registers).  For every memory block of mb rows each tile walks its rows: g is the row of
 * src (SQUARES: less h, the statistics' centres; else through the activation act, output ym),
 * sa[j] += sum g and, with DOT, sb[j] += sum g g (SQUARES) or sum g (x - h) -- float32
 * partials over groups of CBN_F32_RUN_COLS rows, each added to the float64 sums, kept in
 * registers for the walk. */
static inline __attribute__((always_inline)) void SFX(cbn_col_partial_tiles)(
    double *restrict sa, double *restrict sb, const TS *restrict src, const TS *restrict ym,
    const TS *restrict x, ptrdiff_t ld, ptrdiff_t rows, const float *restrict h, ptrdiff_t wt,
    ptrdiff_t mb, int pf_, const int PT, const int act, const int DOT, const int SQUARES) {
    const ptrdiff_t tw = PT * CBN_TVL;
    for (ptrdiff_t m0 = 0; m0 < rows; m0 += mb) {
        const ptrdiff_t m1 = m0 + mb < rows ? m0 + mb : rows;
        for (ptrdiff_t j = 0; j < wt; j += tw) {
            cbn_vf hv[CBN_PT_MAX];
            cbn_vd A[2 * CBN_PT_MAX], B[2 * CBN_PT_MAX];
            for (int v = 0; v < PT; v++) hv[v] = DOT ? cbn_vload_f32(h + j + CBN_TVL * v)
                                                     : (cbn_vf){0};
            for (int v = 0; v < 2 * PT; v++) {
                A[v] = cbn_loadv_f64(sa + j + CBN_DL * v);
                B[v] = DOT ? cbn_loadv_f64(sb + j + CBN_DL * v) : (cbn_vd){0};
            }
            for (ptrdiff_t r0 = m0; r0 < m1; r0 += CBN_F32_RUN_COLS) {
                const ptrdiff_t r1 = r0 + CBN_F32_RUN_COLS < m1 ? r0 + CBN_F32_RUN_COLS : m1;
                cbn_vf a[CBN_PT_MAX], b[CBN_PT_MAX];
                for (int v = 0; v < PT; v++) a[v] = b[v] = (cbn_vf){0};
                for (ptrdiff_t r = r0, i = r0 * ld + j; r < r1; r++, i += ld) {
                    CBN_PREFETCH_AHEAD(src + i, mb * ld, tw * sizeof(TS));
                    if (DOT && !SQUARES) CBN_PREFETCH_AHEAD(x + i, mb * ld, tw * sizeof(TS));
                    if (act) CBN_PREFETCH_AHEAD(ym + i, mb * ld, tw * sizeof(TS));
                    for (int v = 0; v < PT; v++) {
                        cbn_vf g = SFX(cbn_vload)(src + i + CBN_TVL * v);
                        if (SQUARES) g = g - hv[v];
                        if (act) g = SFX(cbn_act_grad_v)(g, SFX(cbn_vload)(ym + i + CBN_TVL * v),
                                                         act);
                        a[v] += g;
                        if (SQUARES) b[v] += g * g;
                        else if (DOT) b[v] += g * (SFX(cbn_vload)(x + i + CBN_TVL * v) - hv[v]);
                    }
                }
                for (int v = 0; v < PT; v++) {
                    cbn_vd lo, hi;
                    cbn_widen_f32(a[v], &lo, &hi);
                    A[2 * v] += lo;
                    A[2 * v + 1] += hi;
                    if (DOT) {
                        cbn_widen_f32(b[v], &lo, &hi);
                        B[2 * v] += lo;
                        B[2 * v + 1] += hi;
                    }
                }
            }
            for (int v = 0; v < 2 * PT; v++) {
                cbn_storev_f64(sa + j + CBN_DL * v, A[v]);
                if (DOT) cbn_storev_f64(sb + j + CBN_DL * v, B[v]);
            }
        }
    }
}

/* s1[j] += sum_r (x[r][j] - c[j]), s2[j] += sum_r (x[r][j] - c[j])^2 over rows [0, rows) of
 * width w, ld apart: per column, float32 partials over groups of CBN_F32_RUN_COLS rows from
 * row 0, each added to float64 in row order.  Tiles of two native float vectors walk a memory block
 * of rows (threads: the team running the pass, as in cbn_col_shifted_sums; it sets the memory
 * blocks, multiples of the group, never the sums); rows that one tile of CBN_PT_MAX vectors
 * spans (NHWC with 64 float32 channels on AVX-512) are walked whole, as the row streams of
 * cbn_tiles.h (measured there: a tile's jumps through the sub-blocks cost up to 1.9x). */
static inline void SFX(cbn_col_partial_sums)(double *restrict s1, double *restrict s2,
                                             const TS *restrict x, ptrdiff_t ld, ptrdiff_t rows,
                                             const float *restrict c, ptrdiff_t w, int threads) {
    const ptrdiff_t mb =
        CBN_F32_RUN_COLS * cbn_col_block_subs(ld, sizeof(TS), CBN_F32_RUN_COLS, threads);
    const int pf_ = CBN_COL_PF(ld, TS);
    if (w == CBN_PT_MAX * CBN_TVL) {
        SFX(cbn_col_partial_tiles)(s1, s2, x, x, x, ld, rows, c, w, rows, 0, CBN_PT_MAX,
                                   CBN_ACT_NONE, 1, 1);
        return;
    }
    const ptrdiff_t wt = w / (2 * CBN_TVL) * (2 * CBN_TVL);
    SFX(cbn_col_partial_tiles)(s1, s2, x, x, x, ld, rows, c, wt, mb, pf_, 2, CBN_ACT_NONE, 1, 1);
    SFX(cbn_col_partial_cols)(s1, s2, x, x, x, ld, rows, c, wt, w, CBN_ACT_NONE, 1);
}

/* The group of 16 elements at offset 0 of src, ym, x (m < 16 of them when m is given: zero-
 * padded, the other lanes' g and x - h set to 0): g = src - h (SQUARES) or src through act
 * (output ym); a += g and, with DOT, b += g g (SQUARES) or g (x - h). */
static inline __attribute__((always_inline)) void SFX(cbn_group16_partial)(
    const TS *src, const TS *ym, const TS *x, int m, cbn_vf hv, cbn_vf *a, cbn_vf *b,
    const int act, const int DOT, const int SQUARES) {
    for (int u = 0; u < CBN_NV; u++) {
        const ptrdiff_t o = u * CBN_TVL;
        cbn_vf g, d = {0};
        if (m >= 16) {
            g = SFX(cbn_vload)(src + o);
            if (SQUARES) g = g - hv;
            if (act) g = SFX(cbn_act_grad_v)(g, SFX(cbn_vload)(ym + o), act);
            if (DOT && !SQUARES) d = SFX(cbn_vload)(x + o) - hv;
        } else {
            const int k = m - u * CBN_TVL, kk = k < 0 ? 0 : (k > CBN_TVL ? CBN_TVL : k);
            cbn_vi lane;
            for (int l = 0; l < CBN_TVL; l++) lane[l] = l;
            g = kk > 0 ? SFX(cbn_pv_load_n)(src + o, kk) : (cbn_vf){0};
            if (SQUARES) g = (cbn_vf)((cbn_vi)(g - hv) & (lane < kk));
            if (act) g = SFX(cbn_act_grad_v)(g, kk > 0 ? SFX(cbn_pv_load_n)(ym + o, kk)
                                                       : (cbn_vf){0}, act);
            if (DOT && !SQUARES) {
                d = kk > 0 ? SFX(cbn_pv_load_n)(x + o, kk) - hv : (cbn_vf){0};
                d = (cbn_vf)((cbn_vi)d & (lane < kk));
            }
        }
        a[u] += g;
        if (SQUARES) b[u] += g * g;
        else if (DOT) b[u] += g * d;
    }
}

/* The run sums for one activation, DOT and SQUARES (constants: the function is always inlined):
 * element i in float32 lane i % 16, each lane's partial over CBN_F32_RUN_RUNS groups of 16,
 * then added to the 8 float64 lanes sa8, sb8 (cbn_v8_add_group16); the last partial of the run
 * holds what is left. */
static inline __attribute__((always_inline)) void SFX(cbn_partial_run)(
    const TS *src, const TS *ym, const TS *x, ptrdiff_t n, float h, double *sa8, double *sb8,
    const int act, const int DOT, const int SQUARES) {
    cbn_v8d A = cbn_load8_f64(sa8), B = DOT ? cbn_load8_f64(sb8) : cbn_v8_zero();
    const cbn_vf hv = (cbn_vf){0} + h;
    ptrdiff_t i = 0;
    for (; i + 16 * CBN_F32_RUN_RUNS <= n; i += 16 * CBN_F32_RUN_RUNS) {
        cbn_vf a[CBN_NV] = {{0}}, b[CBN_NV] = {{0}};
        for (int t = 0; t < CBN_F32_RUN_RUNS; t++) {
            const ptrdiff_t o = i + 16 * t;
            SFX(cbn_group16_partial)(src + o, ym ? ym + o : ym, x + o, 16, hv, a, b, act, DOT,
                                     SQUARES);
        }
        A = cbn_v8_add_group16(A, a);
        if (DOT) B = cbn_v8_add_group16(B, b);
    }
    if (i < n) { /* fewer than CBN_F32_RUN_RUNS groups, the last one maybe partial */
        cbn_vf a[CBN_NV] = {{0}}, b[CBN_NV] = {{0}};
        for (; i + 16 <= n; i += 16)
            SFX(cbn_group16_partial)(src + i, ym ? ym + i : ym, x + i, 16, hv, a, b, act, DOT,
                                     SQUARES);
        if (i < n)
            SFX(cbn_group16_partial)(src + i, ym ? ym + i : ym, x + i, (int)(n - i), hv, a, b,
                                     act, DOT, SQUARES);
        A = cbn_v8_add_group16(A, a);
        if (DOT) B = cbn_v8_add_group16(B, b);
    }
    cbn_store8_f64(sa8, A);
    if (DOT) cbn_store8_f64(sb8, B);
}

/* s1_8 += lanes of sum(x - c), s2_8 += lanes of sum((x - c)^2) over x[0:n] (n >= 0). */
static inline void SFX(cbn_partial_sums8)(const TS *x, ptrdiff_t n, float c, double *s1_8,
                                          double *s2_8) {
    SFX(cbn_partial_run)(x, NULL, x, n, c, s1_8, s2_8, CBN_ACT_NONE, 1, 1);
}

/* The backward sums of a run in two levels: g = dy through the activation act (output ym),
 * sdy8 += lanes of sum(g) and, if sdyx8, sdyx8 += lanes of sum(g (x - h)), over dy/ym/x[0:n],
 * in the lanes and partials of cbn_partial_sums8.  The g lanes are added in the same order with
 * or without sdyx8. */
static inline void SFX(cbn_partial_sum_dot8)(const TS *dy, const TS *ym, const TS *x,
                                             ptrdiff_t n, float h, double *sdy8, double *sdyx8,
                                             int act) {
    if (sdyx8)
        CBN_FOR_ACT(act, SFX(cbn_partial_run)(dy, ym, x, n, h, sdy8, sdyx8, a_, 1, 0));
    else
        CBN_FOR_ACT(act, SFX(cbn_partial_run)(dy, ym, x, n, h, sdy8, sdyx8, a_, 0, 0));
}

/* The backward sums of channels-last rows in two levels: g = dy through act (output ym),
 * sdy[j] += sum_r g[r][j] and, if sdyx, sdyx[j] += sum_r g[r][j] (x[r][j] - h[j]), in the
 * groups, tiles and memory blocks of cbn_col_partial_sums. */
static inline void SFX(cbn_col_partial_sum_dot)(double *restrict sdy, double *restrict sdyx,
                                                const TS *restrict dy, const TS *restrict ym,
                                                const TS *restrict x, ptrdiff_t ld,
                                                ptrdiff_t rows, const float *restrict h,
                                                ptrdiff_t w, int act, int threads) {
    const ptrdiff_t mb =
        CBN_F32_RUN_COLS * cbn_col_block_subs(ld, sizeof(TS), CBN_F32_RUN_COLS, threads);
    const int pf_ = CBN_COL_PF(ld, TS);
    if (w == CBN_PT_MAX * CBN_TVL) {
        if (sdyx)
            CBN_FOR_ACT(act, SFX(cbn_col_partial_tiles)(sdy, sdyx, dy, ym, x, ld, rows, h, w, rows,
                                                        0, CBN_PT_MAX, a_, 1, 0));
        else
            CBN_FOR_ACT(act, SFX(cbn_col_partial_tiles)(sdy, sdyx, dy, ym, x, ld, rows, h, w, rows,
                                                        0, CBN_PT_MAX, a_, 0, 0));
        return;
    }
    const ptrdiff_t wt = w / (2 * CBN_TVL) * (2 * CBN_TVL);
    if (sdyx)
        CBN_FOR_ACT(act, SFX(cbn_col_partial_tiles)(sdy, sdyx, dy, ym, x, ld, rows, h, wt, mb,
                                                    pf_, 2, a_, 1, 0));
    else
        CBN_FOR_ACT(act, SFX(cbn_col_partial_tiles)(sdy, sdyx, dy, ym, x, ld, rows, h, wt, mb,
                                                    pf_, 2, a_, 0, 0));
    SFX(cbn_col_partial_cols)(sdy, sdyx, dy, ym, x, ld, rows, h, wt, w, act, 0);
}

#else /* portable scalar fallback: the same partials, the same order */

static inline void SFX(cbn_partial_run_portable)(const TS *src, const TS *ym, const TS *x,
                                                 ptrdiff_t n, float h, double *sa8, double *sb8,
                                                 int act, int squares) {
    for (ptrdiff_t i0 = 0; i0 < n; i0 += 16 * CBN_F32_RUN_RUNS) {
        float a[16] = {0}, b[16] = {0};
        const ptrdiff_t i1 = i0 + 16 * CBN_F32_RUN_RUNS < n ? i0 + 16 * CBN_F32_RUN_RUNS : n;
        for (ptrdiff_t i = i0; i < i1; i++) {
            if (squares) {
                const float d = CBN_LD(src[i]) - h;
                a[i % 16] += d;
                b[i % 16] += d * d;
            } else {
                const float g = SFX(cbn_act_grad)(CBN_LD(src[i]), act ? CBN_LD(ym[i]) : 0, act);
                a[i % 16] += g;
                if (sb8) b[i % 16] += g * (CBN_LD(x[i]) - h);
            }
        }
        for (int l = 0; l < 8; l++) {
            sa8[l] += (double)a[l] + (double)a[l + 8];
            if (sb8) sb8[l] += (double)b[l] + (double)b[l + 8];
        }
    }
}

static inline void SFX(cbn_partial_sums8)(const TS *x, ptrdiff_t n, float c, double *s1_8,
                                          double *s2_8) {
    SFX(cbn_partial_run_portable)(x, NULL, x, n, c, s1_8, s2_8, CBN_ACT_NONE, 1);
}

static inline void SFX(cbn_col_partial_sums)(double *restrict s1, double *restrict s2,
                                             const TS *restrict x, ptrdiff_t ld, ptrdiff_t rows,
                                             const float *restrict c, ptrdiff_t w, int threads) {
    (void)threads;
    SFX(cbn_col_partial_cols)(s1, s2, x, x, x, ld, rows, c, 0, w, CBN_ACT_NONE, 1);
}

static inline void SFX(cbn_partial_sum_dot8)(const TS *dy, const TS *ym, const TS *x,
                                             ptrdiff_t n, float h, double *sdy8, double *sdyx8,
                                             int act) {
    SFX(cbn_partial_run_portable)(dy, ym, x, n, h, sdy8, sdyx8, act, 0);
}

static inline void SFX(cbn_col_partial_sum_dot)(double *restrict sdy, double *restrict sdyx,
                                                const TS *restrict dy, const TS *restrict ym,
                                                const TS *restrict x, ptrdiff_t ld,
                                                ptrdiff_t rows, const float *restrict h,
                                                ptrdiff_t w, int act, int threads) {
    (void)threads;
    SFX(cbn_col_partial_cols)(sdy, sdyx, dy, ym, x, ld, rows, h, 0, w, act, 0);
}

#endif /* CBN_VECTOR */
