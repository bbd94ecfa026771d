/* cbn_runs-inl.h: the element-wise passes over one channel-major run (scalar coefficients) with
 * plain stores, walking up in memory or down (see cbn_reverse.h for when and why), for one
 * element type.  Included once per type by cbn_families-inl.h, with TS, T and SFX(name)
 * defined; no include guard.  The streaming-store forms are in cbn_stream-inl.h.  Each pass is
 * written once over a constant activation act and instantiated per activation by CBN_FOR_ACT.
 * The 16-bit formats always walk up (kernels_elementwise.pxi): their reversed forms are the
 * scalar loops, correct but never chosen. */

/* the element bodies, for the activation act in scope */
#define CBN_RUN_AFFINE(i) y[i] = CBN_ST(SFX(cbn_act)((CBN_LD(x[i]) - hi) * sc + sh, act));
#define CBN_RUN_DX(i)                                                                            \
    { T g_ = CBN_LD(dy[i]);                                                                      \
      if (act) g_ = SFX(cbn_act_grad)(g_, CBN_LD(ym[i]), act);                                   \
      dx[i] = CBN_ST(g_ * k1 + (CBN_LD(x[i]) - hi) * k2 + k3); }

/* y = act((x - hi) * sc + sh) over one run, walking up (in place when x == y); the elements
 * before an aligned y one by one (CBN_ALIGN_HEAD) */
static inline __attribute__((always_inline)) void SFX(cbn_affine_run_act)(
    const TS *x, TS *y, ptrdiff_t n, T hi, T sc, T sh, const int act) {
    ptrdiff_t h = 0;
    if (CBN_HALF) { /* native vectors (GCC does not vectorise the conversions), the rest below */
        const CBN_TV H = (CBN_TV){0} + hi, V = (CBN_TV){0} + sc, B = (CBN_TV){0} + sh;
        for (; h + 2 * CBN_TVL <= n; h += 2 * CBN_TVL) { /* pairs: the cheaper conversions */
            CBN_TV a, b;
            SFX(cbn_vload2)(x + h, &a, &b);
            SFX(cbn_vstore2)(y + h, SFX(cbn_act_v)((a - H) * V + B, act),
                             SFX(cbn_act_v)((b - H) * V + B, act));
        }
        for (; h + CBN_TVL <= n; h += CBN_TVL)
            SFX(cbn_vstore)(y + h, SFX(cbn_act_v)((SFX(cbn_vload)(x + h) - H) * V + B, act));
    } else {
        h = CBN_ALIGN_HEAD(y, n);
        for (ptrdiff_t i = 0; i < h; i++) CBN_RUN_AFFINE(i)
    }
    for (ptrdiff_t i = h; i < n; i++) CBN_RUN_AFFINE(i)
}
static inline void SFX(cbn_affine_run)(const TS *x, TS *y, ptrdiff_t n, T hi, T sc, T sh,
                                        int act) {
    CBN_FOR_ACT(act, SFX(cbn_affine_run_act)(x, y, n, hi, sc, sh, a_));
}
/* dx = g * k1 + (x - hi) * k2 + k3, g = dy through the activation act whose output is ym,
 * over one run, walking up (dx may be dy, ym or x) */
static inline __attribute__((always_inline)) void SFX(cbn_dx_run_act)(
    const TS *dy, const TS *ym, const TS *x, TS *dx, ptrdiff_t n, T hi, T k1, T k2, T k3,
    const int act) {
    ptrdiff_t h = 0;
    if (CBN_HALF) {
        const CBN_TV H = (CBN_TV){0} + hi, K1 = (CBN_TV){0} + k1;
        const CBN_TV K2 = (CBN_TV){0} + k2, K3 = (CBN_TV){0} + k3;
        for (; h + 2 * CBN_TVL <= n; h += 2 * CBN_TVL) { /* pairs, as above */
            CBN_TV g0, g1, x0, x1;
            SFX(cbn_vload2)(dy + h, &g0, &g1);
            if (act) {
                CBN_TV y0, y1;
                SFX(cbn_vload2)(ym + h, &y0, &y1);
                g0 = SFX(cbn_act_grad_v)(g0, y0, act);
                g1 = SFX(cbn_act_grad_v)(g1, y1, act);
            }
            SFX(cbn_vload2)(x + h, &x0, &x1);
            SFX(cbn_vstore2)(dx + h, g0 * K1 + (x0 - H) * K2 + K3, g1 * K1 + (x1 - H) * K2 + K3);
        }
        for (; h + CBN_TVL <= n; h += CBN_TVL) {
            CBN_TV g = SFX(cbn_vload)(dy + h);
            if (act) g = SFX(cbn_act_grad_v)(g, SFX(cbn_vload)(ym + h), act);
            SFX(cbn_vstore)(dx + h, g * K1 + (SFX(cbn_vload)(x + h) - H) * K2 + K3);
        }
    } else {
        h = CBN_ALIGN_HEAD(dx, n);
        for (ptrdiff_t i = 0; i < h; i++) CBN_RUN_DX(i)
    }
    for (ptrdiff_t i = h; i < n; i++) CBN_RUN_DX(i)
}
static inline void SFX(cbn_dx_run)(const TS *dy, const TS *ym, const TS *x, TS *dx, ptrdiff_t n,
                                    T hi, T k1, T k2, T k3, int act) {
    CBN_FOR_ACT(act, SFX(cbn_dx_run_act)(dy, ym, x, dx, n, hi, k1, k2, k3, a_));
}

/* the same, walking down (highest block first; the output aliases no input) */
static inline __attribute__((always_inline)) void SFX(cbn_affine_run_rev_act)(
    const TS *restrict x, TS *restrict y, ptrdiff_t n, T hi, T sc, T sh, const int act) {
    CBN_DESC(n, CBN_RUN_AFFINE(i));
}
static inline void SFX(cbn_affine_run_rev)(const TS *restrict x, TS *restrict y, ptrdiff_t n,
                                            T hi, T sc, T sh, int act) {
    CBN_FOR_ACT(act, SFX(cbn_affine_run_rev_act)(x, y, n, hi, sc, sh, a_));
}
static inline __attribute__((always_inline)) void SFX(cbn_dx_run_rev_act)(
    const TS *restrict dy, const TS *restrict ym, const TS *restrict x, TS *restrict dx,
    ptrdiff_t n, T hi, T k1, T k2, T k3, const int act) {
    CBN_DESC(n, CBN_RUN_DX(i));
}
static inline void SFX(cbn_dx_run_rev)(const TS *restrict dy, const TS *restrict ym,
                                        const TS *restrict x, TS *restrict dx, ptrdiff_t n, T hi,
                                        T k1, T k2, T k3, int act) {
    CBN_FOR_ACT(act, SFX(cbn_dx_run_rev_act)(dy, ym, x, dx, n, hi, k1, k2, k3, a_));
}

#undef CBN_RUN_AFFINE
#undef CBN_RUN_DX
