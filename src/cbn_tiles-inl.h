/* cbn_tiles-inl.h: the register-tiled channels-last kernels for one element type (see
 * cbn_tiles.h for why and how).  Included once per type by cbn_kernels.h, with TS, T, SFX(name),
 * CBN_TV (the native vector of T), CBN_TVL (its lanes) and CBN_TLOAD defined; no include
 * guard. */

#ifdef CBN_VECTOR

/* ---------------------------------------------------------------- column tiles (reductions) */
static inline void SFX(cbn_col_shifted_sums_stream)(double *restrict s1, double *restrict s2,
                                                     const TS *restrict x, ptrdiff_t ld,
                                                     ptrdiff_t rows, const double *restrict k) {
    const ptrdiff_t rs = CBN_COL_RS(ld, TS);
    const cbn_vd zero = {0};
    cbn_vd kv[CBN_RS_TV], a[CBN_RS_TV], q[CBN_RS_TV];
    CBN_ONE_INIT(one);
    CBN_RS_EACH(v, kv[v] = cbn_loadv_f64(k + CBN_DL * v);)
    for (ptrdiff_t r0 = 0; r0 < rows; r0 += rs) {
        const ptrdiff_t r1 = r0 + rs < rows ? r0 + rs : rows;
        CBN_RS_EACH(v, a[v] = zero; q[v] = zero;)
        for (ptrdiff_t r = r0; r < r1; r++) {
            const TS *p = x + r * ld;
            CBN_RS_EACH(v, cbn_vd d = CBN_SUB_ON_FMA(SFX(cbn_loadv)(p + CBN_DL * v), kv[v], one);
                        a[v] += d;
                        q[v] += d * d;)
        }
        CBN_RS_EACH(v, cbn_storev_f64(s1 + CBN_DL * v, cbn_loadv_f64(s1 + CBN_DL * v) + a[v]);
                       cbn_storev_f64(s2 + CBN_DL * v, cbn_loadv_f64(s2 + CBN_DL * v) + q[v]);)
    }
}
/* s1[j] += sum_r (x[r][j] - k[j]),  s2[j] += sum_r (x[r][j] - k[j])^2; threads: the team
 * running the pass (sets the memory blocks, cbn_tiles.h; not the sums) */
static inline void SFX(cbn_col_shifted_sums)(double *restrict s1, double *restrict s2,
                                              const TS *restrict x, ptrdiff_t ld, ptrdiff_t rows,
                                              const double *restrict k, ptrdiff_t w,
                                              int threads) {
    const ptrdiff_t tw = CBN_DL * CBN_COL_TV, wt = w / tw * tw, rs = CBN_COL_RS(ld, TS);
    const ptrdiff_t mb = rs * cbn_col_block_subs(ld, sizeof(TS), rs, threads);
    const int pf_ = CBN_COL_PF(ld, TS);
    if (cbn_row_stream_fits(w)) {
        SFX(cbn_col_shifted_sums_stream)(s1, s2, x, ld, rows, k);
        return;
    }
    CBN_ONE_INIT(one);
    for (ptrdiff_t m0 = 0; m0 < rows; m0 += mb) {
        const ptrdiff_t m1 = m0 + mb < rows ? m0 + mb : rows;
        for (ptrdiff_t j = 0; j < wt; j += tw) {
            cbn_vd kv[CBN_COL_TV], A[CBN_COL_TV], Q[CBN_COL_TV];
            for (int v = 0; v < CBN_COL_TV; v++) {
                kv[v] = cbn_loadv_f64(k + j + CBN_DL * v);
                A[v] = cbn_loadv_f64(s1 + j + CBN_DL * v);
                Q[v] = cbn_loadv_f64(s2 + j + CBN_DL * v);
            }
            for (ptrdiff_t r0 = m0; r0 < m1; r0 += rs) {
                const ptrdiff_t r1 = r0 + rs < m1 ? r0 + rs : m1;
                cbn_vd a[CBN_COL_TV], q[CBN_COL_TV];
                for (int v = 0; v < CBN_COL_TV; v++) a[v] = q[v] = (cbn_vd){0};
                const TS *p = x + r0 * ld + j;
                for (ptrdiff_t r = r0; r < r1; r++, p += ld) {
                    CBN_PREFETCH_AHEAD(p, mb * ld, tw * sizeof(TS));
                    for (int v = 0; v < CBN_COL_TV; v++) {
                        cbn_vd d = CBN_SUB_ON_FMA(SFX(cbn_loadv)(p + CBN_DL * v), kv[v], one);
                        a[v] += d;
                        q[v] += d * d;
                    }
                }
                for (int v = 0; v < CBN_COL_TV; v++) {
                    A[v] = A[v] + a[v];
                    Q[v] = Q[v] + q[v];
                }
            }
            for (int v = 0; v < CBN_COL_TV; v++) {
                cbn_storev_f64(s1 + j + CBN_DL * v, A[v]);
                cbn_storev_f64(s2 + j + CBN_DL * v, Q[v]);
            }
        }
    }
    if (wt < w) SFX(cbn_col_shifted_sums_rows)(s1 + wt, s2 + wt, x + wt, ld, rows, k + wt,
                                                 w - wt);
}
/* sdy[j] += sum_r g[r][j]; if sdyx: sdyx[j] += sum_r g[r][j] * (x[r][j] - m[j]); g = dy
 * through the activation act whose output is ym (cbn_epilogue.h).  The g sums are added in the
 * same order either way. */
static inline void SFX(cbn_col_sum_dot_stream)(double *restrict sdy, double *restrict sdyx,
                                                const TS *restrict dy, const TS *restrict ym,
                                                const TS *restrict x, ptrdiff_t ld,
                                                ptrdiff_t rows, const double *restrict m,
                                                int act) {
    const ptrdiff_t rs = CBN_COL_RS(ld, TS);
    const cbn_vd zero = {0};
    cbn_vd mv[CBN_RS_TV], a[CBN_RS_TV], b[CBN_RS_TV];
    CBN_ONE_INIT(one);
    CBN_RS_EACH(v, mv[v] = sdyx ? cbn_loadv_f64(m + CBN_DL * v) : zero;)
    for (ptrdiff_t r0 = 0; r0 < rows; r0 += rs) {
        const ptrdiff_t r1 = r0 + rs < rows ? r0 + rs : rows;
        CBN_RS_EACH(v, a[v] = zero; b[v] = zero;)
        if (sdyx)
            CBN_FOR_ACT(act, CBN_SUM_DOT_STREAM_LOOP(1, a_));
        else
            CBN_FOR_ACT(act, CBN_SUM_DOT_STREAM_LOOP(0, a_));
        CBN_RS_EACH(v, cbn_storev_f64(sdy + CBN_DL * v, cbn_loadv_f64(sdy + CBN_DL * v) + a[v]);
                       if (sdyx) cbn_storev_f64(sdyx + CBN_DL * v,
                                                cbn_loadv_f64(sdyx + CBN_DL * v) + b[v]);)
    }
}
static inline void SFX(cbn_col_sum_dot)(double *restrict sdy, double *restrict sdyx,
                                         const TS *restrict dy, const TS *restrict ym,
                                         const TS *restrict x, ptrdiff_t ld, ptrdiff_t rows,
                                         const double *restrict m, ptrdiff_t w, int act,
                                         int threads) {
    const ptrdiff_t tw = CBN_DL * CBN_COL_TV, wt = w / tw * tw, rs = CBN_COL_RS(ld, TS);
    const ptrdiff_t mb = rs * cbn_col_block_subs(ld, sizeof(TS), rs, threads);
    const int pf_ = CBN_COL_PF(ld, TS);
    if (cbn_row_stream_fits(w)) {
        SFX(cbn_col_sum_dot_stream)(sdy, sdyx, dy, ym, x, ld, rows, m, act);
        return;
    }
    CBN_ONE_INIT(one);
    for (ptrdiff_t m0 = 0; m0 < rows; m0 += mb) {
        const ptrdiff_t m1 = m0 + mb < rows ? m0 + mb : rows;
        for (ptrdiff_t j = 0; j < wt; j += tw) {
            cbn_vd mv[CBN_COL_TV], A[CBN_COL_TV], B[CBN_COL_TV];
            for (int v = 0; v < CBN_COL_TV; v++) {
                const cbn_vd zero = {0};
                A[v] = cbn_loadv_f64(sdy + j + CBN_DL * v);
                B[v] = sdyx ? cbn_loadv_f64(sdyx + j + CBN_DL * v) : zero;
                mv[v] = sdyx ? cbn_loadv_f64(m + j + CBN_DL * v) : zero;
            }
            for (ptrdiff_t r0 = m0; r0 < m1; r0 += rs) {
                const ptrdiff_t r1 = r0 + rs < m1 ? r0 + rs : m1;
                cbn_vd a[CBN_COL_TV], b[CBN_COL_TV];
                for (int v = 0; v < CBN_COL_TV; v++) a[v] = b[v] = (cbn_vd){0};
                const ptrdiff_t o = r0 * ld + j;
                if (sdyx)
                    CBN_FOR_ACT(act, CBN_SUM_DOT_TILE_LOOP(1, a_));
                else
                    CBN_FOR_ACT(act, CBN_SUM_DOT_TILE_LOOP(0, a_));
                for (int v = 0; v < CBN_COL_TV; v++) {
                    A[v] = A[v] + a[v];
                    B[v] = B[v] + b[v];
                }
            }
            for (int v = 0; v < CBN_COL_TV; v++) {
                cbn_storev_f64(sdy + j + CBN_DL * v, A[v]);
                if (sdyx) cbn_storev_f64(sdyx + j + CBN_DL * v, B[v]);
            }
        }
    }
    if (wt < w) SFX(cbn_col_sum_dot_rows)(sdy + wt, sdyx ? sdyx + wt : NULL, dy + wt,
                                            ym ? ym + wt : NULL, x + wt, ld, rows, m + wt,
                                            w - wt, act);
}

/* ---------------------------------------------------------------- row tiles (element-wise) */
/* Element-wise tiles: rows of w <= CBN_ROW_TV * CBN_TVL columns with the coefficients in
 * registers.  x and y may be the same array (each element is read before it is written), so they are not
 * restrict-qualified; the coefficients are separate arrays.  nv full vectors per row take the
 * tile; the w - nv * CBN_TVL trailing columns go through the row loops. */
static inline int SFX(cbn_row_tile_fits)(ptrdiff_t w) {
    return w >= (CBN_TVL) && w <= CBN_ROW_TV * (CBN_TVL);
}
/* A tile's coefficient registers R[0, nv) from p (the others 0: never used, but GCC cannot
 * tell); for the 16-bit formats the whole pairs in the pairs' lane order (cbn_half.h), as the
 * tiles' pair bodies take them, and an odd last vector as it is. */
static inline __attribute__((always_inline)) void SFX(cbn_tile_coef)(CBN_TV *R, const T *p,
                                                                    int nv) {
    int v = 0;
    if (CBN_HALF)
        for (; v + 1 < nv; v += 2) SFX(cbn_coef2)(p + (CBN_TVL) * v, &R[v], &R[v + 1]);
    for (; v < CBN_ROW_TV; v++) R[v] = v < nv ? CBN_TLOAD(p + (CBN_TVL) * v) : (CBN_TV){0};
}
/* y = act((x - hi) * sc + sh) */
static inline void SFX(cbn_affine_tile)(const TS *x, TS *y, ptrdiff_t ld, ptrdiff_t rows,
                                         ptrdiff_t w, const T *restrict hi,
                                         const T *restrict sc, const T *restrict sh, int act) {
    const int nv = (int)(w / (CBN_TVL));
    CBN_TV H[CBN_ROW_TV], S[CBN_ROW_TV], B[CBN_ROW_TV];
    SFX(cbn_tile_coef)(H, hi, nv);
    SFX(cbn_tile_coef)(S, sc, nv);
    SFX(cbn_tile_coef)(B, sh, nv);
    if (CBN_HALF) { /* pairs of vectors (cbn_half.h) */
        CBN_FOR_ACT(act, CBN_TILE_ROWS_PAIRED((CBN_TVL),
            CBN_TV a0; CBN_TV a1; SFX(cbn_vload2)(x + i, &a0, &a1);
            SFX(cbn_vstore2)(y + i, SFX(cbn_act_v)((a0 - H[v]) * S[v] + B[v], a_),
                             SFX(cbn_act_v)((a1 - H[v + 1]) * S[v + 1] + B[v + 1], a_));,
            SFX(cbn_vstore)(y + i, SFX(cbn_act_v)((SFX(cbn_vload)(x + i) - H[v]) * S[v] + B[v],
                                                  a_));));
    } else {
        CBN_FOR_ACT(act, CBN_TILE_ROWS((CBN_TVL),
            SFX(cbn_vstore)(y + i, SFX(cbn_act_v)((SFX(cbn_vload)(x + i) - H[v]) * S[v] + B[v],
                                                  a_));));
    }
    if (nv * (CBN_TVL) < w) {
        ptrdiff_t j = nv * (CBN_TVL);
        SFX(cbn_affine_any)(x + j, y + j, ld, rows, w - j, hi + j, sc + j, sh + j, act);
    }
}
/* dx = g * k1 + (x - hi) * k2 + k3, g = dy through the activation act whose output is ym; dx
 * aliases none of the inputs */
static inline void SFX(cbn_dx_tile)(const TS *restrict dy, const TS *restrict ym,
                                     const TS *restrict x, TS *restrict dx, ptrdiff_t ld,
                                     ptrdiff_t rows, ptrdiff_t w, const T *restrict hi,
                                     const T *restrict k1, const T *restrict k2,
                                     const T *restrict k3, int act) {
    const int nv = (int)(w / (CBN_TVL));
    CBN_TV H[CBN_ROW_TV], K1[CBN_ROW_TV], K2[CBN_ROW_TV], K3[CBN_ROW_TV];
    SFX(cbn_tile_coef)(H, hi, nv);
    SFX(cbn_tile_coef)(K1, k1, nv);
    SFX(cbn_tile_coef)(K2, k2, nv);
    SFX(cbn_tile_coef)(K3, k3, nv);
    if (CBN_HALF) { /* pairs, as in cbn_affine_tile */
        CBN_FOR_ACT(act, CBN_TILE_ROWS_PAIRED((CBN_TVL),
            CBN_TV g0; CBN_TV g1; CBN_TV x0; CBN_TV x1; SFX(cbn_vload2)(dy + i, &g0, &g1);
            if (a_) { CBN_TV y0; CBN_TV y1; SFX(cbn_vload2)(ym + i, &y0, &y1);
                      g0 = SFX(cbn_act_grad_v)(g0, y0, a_); g1 = SFX(cbn_act_grad_v)(g1, y1, a_); }
            SFX(cbn_vload2)(x + i, &x0, &x1);
            SFX(cbn_vstore2)(dx + i, g0 * K1[v] + (x0 - H[v]) * K2[v] + K3[v],
                             g1 * K1[v + 1] + (x1 - H[v + 1]) * K2[v + 1] + K3[v + 1]);,
            CBN_TV g = SFX(cbn_vload)(dy + i);
            if (a_) g = SFX(cbn_act_grad_v)(g, SFX(cbn_vload)(ym + i), a_);
            SFX(cbn_vstore)(dx + i, g * K1[v] + (SFX(cbn_vload)(x + i) - H[v]) * K2[v] + K3[v]);));
    } else {
        CBN_FOR_ACT(act, CBN_TILE_ROWS((CBN_TVL), CBN_TV g = SFX(cbn_vload)(dy + i);
            if (a_) g = SFX(cbn_act_grad_v)(g, SFX(cbn_vload)(ym + i), a_);
            SFX(cbn_vstore)(dx + i, g * K1[v] + (SFX(cbn_vload)(x + i) - H[v]) * K2[v] + K3[v]);));
    }
    if (nv * (CBN_TVL) < w) {
        ptrdiff_t j = nv * (CBN_TVL);
        SFX(cbn_dx_rows_any)(dy + j, ym ? ym + j : NULL, x + j, dx + j, ld, rows, w - j, hi + j,
                           k1 + j, k2 + j, k3 + j, act);
    }
}
static inline void SFX(cbn_affine)(const TS *x, TS *y, ptrdiff_t ld, ptrdiff_t rows, ptrdiff_t w,
                                    const T *hi, const T *sc, const T *sh, int act) {
    if (SFX(cbn_row_tile_fits)(w))
        SFX(cbn_affine_tile)(x, y, ld, rows, w, hi, sc, sh, act);
    else
        SFX(cbn_affine_any)(x, y, ld, rows, w, hi, sc, sh, act);
}
static inline void SFX(cbn_dx_rows)(const TS *dy, const TS *ym, const TS *x, TS *dx, ptrdiff_t ld,
                                     ptrdiff_t rows, ptrdiff_t w, const T *hi, const T *k1,
                                     const T *k2, const T *k3, int act) {
    if (SFX(cbn_row_tile_fits)(w))
        SFX(cbn_dx_tile)(dy, ym, x, dx, ld, rows, w, hi, k1, k2, k3, act);
    else
        SFX(cbn_dx_rows_any)(dy, ym, x, dx, ld, rows, w, hi, k1, k2, k3, act);
}

#else /* no vector extensions: the row loops are the kernels */

static inline void SFX(cbn_col_shifted_sums)(double *restrict s1, double *restrict s2,
                                              const TS *restrict x, ptrdiff_t ld, ptrdiff_t rows,
                                              const double *restrict k, ptrdiff_t w,
                                              int threads) {
    (void)threads;
    SFX(cbn_col_shifted_sums_rows)(s1, s2, x, ld, rows, k, w);
}
static inline void SFX(cbn_col_sum_dot)(double *restrict sdy, double *restrict sdyx,
                                         const TS *restrict dy, const TS *restrict ym,
                                         const TS *restrict x, ptrdiff_t ld, ptrdiff_t rows,
                                         const double *restrict m, ptrdiff_t w, int act,
                                         int threads) {
    (void)threads;
    SFX(cbn_col_sum_dot_rows)(sdy, sdyx, dy, ym, x, ld, rows, m, w, act);
}
static inline void SFX(cbn_affine)(const TS *x, TS *y, ptrdiff_t ld, ptrdiff_t rows, ptrdiff_t w,
                                    const T *hi, const T *sc, const T *sh, int act) {
    SFX(cbn_affine_any)(x, y, ld, rows, w, hi, sc, sh, act);
}
static inline void SFX(cbn_dx_rows)(const TS *dy, const TS *ym, const TS *x, TS *dx, ptrdiff_t ld,
                                     ptrdiff_t rows, ptrdiff_t w, const T *hi, const T *k1,
                                     const T *k2, const T *k3, int act) {
    SFX(cbn_dx_rows_any)(dy, ym, x, dx, ld, rows, w, hi, k1, k2, k3, act);
}

#endif /* CBN_VECTOR */
