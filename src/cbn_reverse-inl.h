/* cbn_reverse-inl.h: channel-major element-wise runs walking down in memory, for one element
 * type (see cbn_reverse.h).  Included once per type by cbn_kernels.h, with T and SFX(name)
 * defined; no include guard. */

/* one channel-major run: y = (x - hi) * sc + sh, then max(., 0) if relu (NaN stays) */
static inline void SFX(cbn_affine_run_rev)(const T *restrict x, T *restrict y, ptrdiff_t n,
                                            T hi, T sc, T sh, int relu) {
    if (relu)
        CBN_DESC(n, T v_ = (x[i] - hi) * sc + sh; y[i] = v_ < 0 ? 0 : v_;);
    else
        CBN_DESC(n, y[i] = (x[i] - hi) * sc + sh;);
}
/* one channel-major run: dx = g * k1 + (x - hi) * k2 + k3, g = dy, or dy where ym > 0 */
static inline void SFX(cbn_dx_run_rev)(const T *restrict dy, const T *restrict ym,
                                        const T *restrict x, T *restrict dx, ptrdiff_t n, T hi,
                                        T k1, T k2, T k3) {
    if (ym)
        CBN_DESC(n, T g_ = dy[i]; g_ = ym[i] > 0 ? g_ : 0;
                    dx[i] = g_ * k1 + (x[i] - hi) * k2 + k3;);
    else
        CBN_DESC(n, dx[i] = dy[i] * k1 + (x[i] - hi) * k2 + k3;);
}
