/* cbn_masked-inl.h: the reductions of masked and weighted statistics (cbn_weights.h) for one
 * element type.  Included once per type by cbn_families-inl.h; no include guard.
 *
 * Weighted sums shifted by k: s0 += w, s1 += w (x - k), s2 += w (x - k)^2, with every term of
 * weight 0 exactly 0 (a select, not a product: a masked NaN or Inf is never read into a sum).
 * A mask is the weights 0 and 1 without the products (w (x - k) is then x - k exactly), so a
 * mask and float weights of 0 and 1 give bit-identical sums. */

#ifdef CBN_VECTOR
#define CBN_WSUMS8_DEF(NAME, WT, WLOAD8, WTAIL8, WEIGHTED)                                          \
    static inline void SFX(NAME)(const TS *x, const WT *wp, ptrdiff_t n, double k, double *s0_8,  \
                                 double *s1_8, double *s2_8) {                                     \
        cbn_v8d c0 = cbn_load8_f64(s0_8), a0 = cbn_load8_f64(s1_8), q0 = cbn_load8_f64(s2_8);      \
        cbn_v8d c1 = cbn_v8_zero(), a1 = c1, q1 = c1;                                              \
        const cbn_v8d kv = cbn_v8_set1(k);                                                         \
        ptrdiff_t i = 0;                                                                           \
        for (; i + 16 <= n; i += 16) {                                                             \
            cbn_v8d w0 = WLOAD8(wp + i), w1 = WLOAD8(wp + i + 8);                                  \
            cbn_v8d d0 = cbn_v8_where_pos(cbn_v8_sub(SFX(cbn_load8)(x + i), kv), w0);              \
            cbn_v8d d1 = cbn_v8_where_pos(cbn_v8_sub(SFX(cbn_load8)(x + i + 8), kv), w1);          \
            cbn_v8d e0 = WEIGHTED ? cbn_v8_mul(w0, d0) : d0;                                       \
            cbn_v8d e1 = WEIGHTED ? cbn_v8_mul(w1, d1) : d1;                                       \
            c0 = cbn_v8_add(c0, w0); c1 = cbn_v8_add(c1, w1);                                      \
            a0 = cbn_v8_add(a0, e0); a1 = cbn_v8_add(a1, e1);                                      \
            q0 = cbn_v8_madd(q0, e0, d0); q1 = cbn_v8_madd(q1, e1, d1);                            \
        }                                                                                          \
        for (; i < n; i += 8) { /* the last n - i <= 8 as one zero-padded group (weights 0) */    \
            const int m = n - i < 8 ? (int)(n - i) : 8;                                            \
            cbn_v8d w0 = m == 8 ? WLOAD8(wp + i) : WTAIL8(wp + i, m);                              \
            cbn_v8d xv = m == 8 ? SFX(cbn_load8)(x + i) : SFX(cbn_load8_tail)(x + i, m);           \
            cbn_v8d d0 = cbn_v8_where_pos(cbn_v8_sub(xv, kv), w0);                                 \
            cbn_v8d e0 = WEIGHTED ? cbn_v8_mul(w0, d0) : d0;                                       \
            c0 = cbn_v8_add(c0, w0); a0 = cbn_v8_add(a0, e0); q0 = cbn_v8_madd(q0, e0, d0);        \
        }                                                                                          \
        cbn_store8_f64(s0_8, cbn_v8_add(c0, c1));                                                  \
        cbn_store8_f64(s1_8, cbn_v8_add(a0, a1));                                                  \
        cbn_store8_f64(s2_8, cbn_v8_add(q0, q1));                                                  \
    }
#else /* portable scalar fallback: the same lanes, the same order */
#define CBN_WSUMS8_DEF(NAME, WT, WLOAD8, WTAIL8, WEIGHTED)                                          \
    static inline void SFX(NAME)(const TS *x, const WT *wp, ptrdiff_t n, double k, double *s0_8,  \
                                 double *s1_8, double *s2_8) {                                     \
        for (ptrdiff_t i = 0; i < n; i++) {                                                        \
            double w = (double)wp[i], d = w > 0 ? (double)CBN_LD(x[i]) - k : 0.0;                  \
            double e = WEIGHTED ? w * d : d;                                                       \
            s0_8[i % 8] += w; s1_8[i % 8] += e; s2_8[i % 8] += e * d;                              \
        }                                                                                          \
    }
#endif

#ifdef CBN_VECTOR
/* A per-position mask's run: s1 and s2 only (the count, shared by the channels, is taken once
 * per block); the same lanes and order as cbn_wsums8_u8, so the same sums. */
static inline void SFX(cbn_msums8)(const TS *x, const unsigned char *m, ptrdiff_t n, double k,
                                   double *s1_8, double *s2_8) {
    cbn_v8d a0 = cbn_load8_f64(s1_8), q0 = cbn_load8_f64(s2_8), a1 = cbn_v8_zero(), q1 = a1;
    const cbn_v8d kv = cbn_v8_set1(k);
    ptrdiff_t i = 0;
    for (; i + 16 <= n; i += 16) {
        cbn_v8d d0 = cbn_v8_where_u8(cbn_v8_sub(SFX(cbn_load8)(x + i), kv), m + i);
        cbn_v8d d1 = cbn_v8_where_u8(cbn_v8_sub(SFX(cbn_load8)(x + i + 8), kv), m + i + 8);
        a0 = cbn_v8_add(a0, d0); a1 = cbn_v8_add(a1, d1);
        q0 = cbn_v8_madd(q0, d0, d0); q1 = cbn_v8_madd(q1, d1, d1);
    }
    for (; i < n; i += 8) {
        const int r = n - i < 8 ? (int)(n - i) : 8;
        cbn_v8d w0 = r == 8 ? cbn_load8_u8(m + i) : cbn_load8_tail_u8(m + i, r);
        cbn_v8d xv = r == 8 ? SFX(cbn_load8)(x + i) : SFX(cbn_load8_tail)(x + i, r);
        cbn_v8d d0 = cbn_v8_where_pos(cbn_v8_sub(xv, kv), w0);
        a0 = cbn_v8_add(a0, d0); q0 = cbn_v8_madd(q0, d0, d0);
    }
    cbn_store8_f64(s1_8, cbn_v8_add(a0, a1));
    cbn_store8_f64(s2_8, cbn_v8_add(q0, q1));
}
#else
static inline void SFX(cbn_msums8)(const TS *x, const unsigned char *m, ptrdiff_t n, double k,
                                   double *s1_8, double *s2_8) {
    for (ptrdiff_t i = 0; i < n; i++) {
        double d = m[i] ? (double)CBN_LD(x[i]) - k : 0.0;
        s1_8[i % 8] += d; s2_8[i % 8] += d * d;
    }
}
#endif

/* the sums over a run of n elements and their weights, into 8-lane partials (no horizontal
 * sum per run: cbn_hsum8_array of each at the end of the block gives the sums) */
CBN_WSUMS8_DEF(cbn_wsums8_u8, unsigned char, cbn_load8_u8, cbn_load8_tail_u8, 0)
CBN_WSUMS8_DEF(cbn_wsums8_w32, float, cbn_load8_f32, cbn_load8_tail_f32, 1)
CBN_WSUMS8_DEF(cbn_wsums8_w64, double, cbn_load8_f64, cbn_load8_tail_f64, 1)

/* channels-last, one row of w columns with one weight wr > 0 for the row:
 * s1[j] += wr (x[j] - k[j]), s2[j] += wr (x[j] - k[j])^2 */
static inline void SFX(cbn_col_wsums_row)(double *s1, double *s2, const TS *x, const double *k,
                                          ptrdiff_t w, double wr) {
    for (ptrdiff_t j = 0; j < w; j++) {
        double d = (double)CBN_LD(x[j]) - k[j], e = wr * d;
        s1[j] += e;
        s2[j] += e * d;
    }
}

/* channels-last, one row of w columns with a weight per element (the row's slice of the
 * weights at wp): s0[j] += w[j] and the shifted sums as in the run form */
#define CBN_COL_WSUMS_DEF(NAME, WT, WEIGHTED)                                                      \
    static inline void SFX(NAME)(double *s0, double *s1, double *s2, const TS *x, const WT *wp,  \
                                 const double *k, ptrdiff_t w) {                                   \
        for (ptrdiff_t j = 0; j < w; j++) {                                                        \
            double wj = (double)wp[j], d = (double)CBN_LD(x[j]) - k[j];                            \
            d = wj > 0 ? d : 0.0;                                                                  \
            double e = WEIGHTED ? wj * d : d;                                                      \
            s0[j] += wj;                                                                           \
            s1[j] += e;                                                                            \
            s2[j] += e * d;                                                                        \
        }                                                                                          \
    }
CBN_COL_WSUMS_DEF(cbn_col_wsums_u8, unsigned char, 0)
CBN_COL_WSUMS_DEF(cbn_col_wsums_w32, float, 1)
CBN_COL_WSUMS_DEF(cbn_col_wsums_w64, double, 1)

/* the sums of any weight kind, for the tasks (kernels_masked.pxi) */
static inline void SFX(cbn_wsums8)(const TS *x, const cbn_weights *w, ptrdiff_t at, ptrdiff_t n,
                                   double k, double *s0_8, double *s1_8, double *s2_8) {
    if (w->kind == CBN_W_MASK)
        SFX(cbn_wsums8_u8)(x, (const unsigned char *)w->p + at, n, k, s0_8, s1_8, s2_8);
    else if (w->kind == CBN_W_F32)
        SFX(cbn_wsums8_w32)(x, (const float *)w->p + at, n, k, s0_8, s1_8, s2_8);
    else
        SFX(cbn_wsums8_w64)(x, (const double *)w->p + at, n, k, s0_8, s1_8, s2_8);
}
static inline void SFX(cbn_col_wsums)(double *s0, double *s1, double *s2, const TS *x,
                                      const cbn_weights *w, ptrdiff_t at, const double *k,
                                      ptrdiff_t n) {
    if (w->kind == CBN_W_MASK)
        SFX(cbn_col_wsums_u8)(s0, s1, s2, x, (const unsigned char *)w->p + at, k, n);
    else if (w->kind == CBN_W_F32)
        SFX(cbn_col_wsums_w32)(s0, s1, s2, x, (const float *)w->p + at, k, n);
    else
        SFX(cbn_col_wsums_w64)(s0, s1, s2, x, (const double *)w->p + at, k, n);
}

/* The dx pass of the masked backward: dx = a g - w (b + d (x - hi)), the second term 0 (x
 * unread, it may be NaN) where w is 0, with per-channel
 * coefficients a, b, d and centre hi in T (hi the mean rounded to T; b carries the rest of the
 * mean, so x - hi keeps the digits of data with large offsets), w the element's weight.
 * One channel-major run (scalar coefficients) or one channels-last row (coefficient vectors;
 * one weight for the row, or one per element).  g and dx may be the same array. */
#define CBN_WDX_RUN_DEF(NAME, WT)                                                                  \
    static inline void SFX(NAME)(const TS *g, const TS *x, const WT *wp, TS *dx, ptrdiff_t n,    \
                                 T a, T b, T d, T hi) {                                            \
        for (ptrdiff_t i = 0; i < n; i++) {                                                        \
            T wi = (T)wp[i], t = wi * (b + d * (CBN_LD(x[i]) - hi));                               \
            dx[i] = CBN_ST(a * CBN_LD(g[i]) - (wi > 0 ? t : (T)0));                                \
        }                                                                                          \
    }
CBN_WDX_RUN_DEF(cbn_wdx_run_u8, unsigned char)
CBN_WDX_RUN_DEF(cbn_wdx_run_w32, float)
CBN_WDX_RUN_DEF(cbn_wdx_run_w64, double)

#define CBN_WDX_ROW_DEF(NAME, WT)                                                                  \
    static inline void SFX(NAME)(const TS *g, const TS *x, const WT *wp, TS *dx, ptrdiff_t n,    \
                                 const T *a, const T *b, const T *d, const T *hi) {                \
        for (ptrdiff_t j = 0; j < n; j++) {                                                        \
            T wj = (T)wp[j], t = wj * (b[j] + d[j] * (CBN_LD(x[j]) - hi[j]));                      \
            dx[j] = CBN_ST(a[j] * CBN_LD(g[j]) - (wj > 0 ? t : (T)0));                             \
        }                                                                                          \
    }
CBN_WDX_ROW_DEF(cbn_wdx_row_u8, unsigned char)
CBN_WDX_ROW_DEF(cbn_wdx_row_w32, float)
CBN_WDX_ROW_DEF(cbn_wdx_row_w64, double)

/* a channels-last row with one weight wr for the whole row */
static inline void SFX(cbn_wdx_row1)(const TS *g, const TS *x, TS *dx, ptrdiff_t n, const T *a,
                                     const T *b, const T *d, const T *hi, T wr) {
    if (wr > 0) {
        for (ptrdiff_t j = 0; j < n; j++)
            dx[j] = CBN_ST(a[j] * CBN_LD(g[j]) - wr * (b[j] + d[j] * (CBN_LD(x[j]) - hi[j])));
    } else { /* a padded row: x is not read (it may be NaN) */
        for (ptrdiff_t j = 0; j < n; j++) dx[j] = CBN_ST(a[j] * CBN_LD(g[j]));
    }
}

/* the run and row forms for any weight kind, for the tasks (kernels_masked.pxi); at: the
 * index of the first weight */
static inline void SFX(cbn_wdx_run)(const TS *g, const TS *x, const cbn_weights *w,
                                    ptrdiff_t at, TS *dx, ptrdiff_t n, T a, T b, T d, T hi) {
    if (w->kind == CBN_W_MASK)
        SFX(cbn_wdx_run_u8)(g, x, (const unsigned char *)w->p + at, dx, n, a, b, d, hi);
    else if (w->kind == CBN_W_F32)
        SFX(cbn_wdx_run_w32)(g, x, (const float *)w->p + at, dx, n, a, b, d, hi);
    else
        SFX(cbn_wdx_run_w64)(g, x, (const double *)w->p + at, dx, n, a, b, d, hi);
}
static inline void SFX(cbn_wdx_row)(const TS *g, const TS *x, const cbn_weights *w,
                                    ptrdiff_t at, TS *dx, ptrdiff_t n, const T *a, const T *b,
                                    const T *d, const T *hi) {
    if (w->chan == 0)
        SFX(cbn_wdx_row1)(g, x, dx, n, a, b, d, hi, (T)cbn_w_at(w, at));
    else if (w->kind == CBN_W_MASK)
        SFX(cbn_wdx_row_u8)(g, x, (const unsigned char *)w->p + at, dx, n, a, b, d, hi);
    else if (w->kind == CBN_W_F32)
        SFX(cbn_wdx_row_w32)(g, x, (const float *)w->p + at, dx, n, a, b, d, hi);
    else
        SFX(cbn_wdx_row_w64)(g, x, (const double *)w->p + at, dx, n, a, b, d, hi);
}

/* The padding option of a masked output: y = src (or 0 when src is NULL) wherever the weight
 * is 0, over a run of n elements whose weights are contiguous from index at; y is left
 * untouched elsewhere (a mask is read 8 bytes at a time, and 8 selected bytes are skipped). */
static inline void SFX(cbn_pad_run)(TS *y, const TS *src, const cbn_weights *w, ptrdiff_t at,
                                    ptrdiff_t n) {
    ptrdiff_t i = 0;
    if (w->kind == CBN_W_MASK) {
        const unsigned char *m = (const unsigned char *)w->p + at;
        for (; i + 8 <= n; i += 8) {
            unsigned long long b;
            memcpy(&b, m + i, 8);
            if (b == 0x0101010101010101ULL) continue;
            for (int l = 0; l < 8; l++)
                if (!m[i + l]) y[i + l] = src ? src[i + l] : CBN_ST((T)0);
        }
        for (; i < n; i++)
            if (!m[i]) y[i] = src ? src[i] : CBN_ST((T)0);
        return;
    }
    for (; i < n; i++)
        if (cbn_w_at(w, at + i) == 0.0) y[i] = src ? src[i] : CBN_ST((T)0);
}
