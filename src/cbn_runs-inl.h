/* cbn_runs-inl.h: the element-wise passes over one channel-major run (scalar coefficients) with
 * plain stores, walking up in memory or down (see cbn_reverse.h for when and why), for one
 * element type.  Included once per type by cbn_families-inl.h, with T and SFX(name) defined;
 * no include guard.  The streaming-store forms are in cbn_stream-inl.h.  Each pass is written
 * once over a constant activation act and instantiated per activation by CBN_FOR_ACT. */

/* the element bodies, for the activation act in scope */
#define CBN_RUN_AFFINE(i) y[i] = SFX(cbn_act)((x[i] - hi) * sc + sh, act);
#define CBN_RUN_DX(i)                                                                            \
    { T g_ = dy[i];                                                                              \
      if (act) g_ = SFX(cbn_act_grad)(g_, ym[i], act);                                           \
      dx[i] = g_ * k1 + (x[i] - hi) * k2 + k3; }

/* y = act((x - hi) * sc + sh) over one run, walking up (in place when x == y); the elements
 * before an aligned y one by one (CBN_ALIGN_HEAD) */
static inline __attribute__((always_inline)) void SFX(cbn_affine_run_act)(
    const T *x, T *y, ptrdiff_t n, T hi, T sc, T sh, const int act) {
    const ptrdiff_t h = CBN_ALIGN_HEAD(y, n);
    for (ptrdiff_t i = 0; i < h; i++) CBN_RUN_AFFINE(i)
    for (ptrdiff_t i = h; i < n; i++) CBN_RUN_AFFINE(i)
}
static inline void SFX(cbn_affine_run)(const T *x, T *y, ptrdiff_t n, T hi, T sc, T sh,
                                        int act) {
    CBN_FOR_ACT(act, SFX(cbn_affine_run_act)(x, y, n, hi, sc, sh, a_));
}
/* dx = g * k1 + (x - hi) * k2 + k3, g = dy through the activation act whose output is ym,
 * over one run, walking up (dx may be dy, ym or x) */
static inline __attribute__((always_inline)) void SFX(cbn_dx_run_act)(
    const T *dy, const T *ym, const T *x, T *dx, ptrdiff_t n, T hi, T k1, T k2, T k3,
    const int act) {
    const ptrdiff_t h = CBN_ALIGN_HEAD(dx, n);
    for (ptrdiff_t i = 0; i < h; i++) CBN_RUN_DX(i)
    for (ptrdiff_t i = h; i < n; i++) CBN_RUN_DX(i)
}
static inline void SFX(cbn_dx_run)(const T *dy, const T *ym, const T *x, T *dx, ptrdiff_t n,
                                    T hi, T k1, T k2, T k3, int act) {
    CBN_FOR_ACT(act, SFX(cbn_dx_run_act)(dy, ym, x, dx, n, hi, k1, k2, k3, a_));
}

/* the same, walking down (highest block first; the output aliases no input) */
static inline __attribute__((always_inline)) void SFX(cbn_affine_run_rev_act)(
    const T *restrict x, T *restrict y, ptrdiff_t n, T hi, T sc, T sh, const int act) {
    CBN_DESC(n, CBN_RUN_AFFINE(i));
}
static inline void SFX(cbn_affine_run_rev)(const T *restrict x, T *restrict y, ptrdiff_t n,
                                            T hi, T sc, T sh, int act) {
    CBN_FOR_ACT(act, SFX(cbn_affine_run_rev_act)(x, y, n, hi, sc, sh, a_));
}
static inline __attribute__((always_inline)) void SFX(cbn_dx_run_rev_act)(
    const T *restrict dy, const T *restrict ym, const T *restrict x, T *restrict dx,
    ptrdiff_t n, T hi, T k1, T k2, T k3, const int act) {
    CBN_DESC(n, CBN_RUN_DX(i));
}
static inline void SFX(cbn_dx_run_rev)(const T *restrict dy, const T *restrict ym,
                                        const T *restrict x, T *restrict dx, ptrdiff_t n, T hi,
                                        T k1, T k2, T k3, int act) {
    CBN_FOR_ACT(act, SFX(cbn_dx_run_rev_act)(dy, ym, x, dx, n, hi, k1, k2, k3, a_));
}

#undef CBN_RUN_AFFINE
#undef CBN_RUN_DX
