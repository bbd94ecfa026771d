/* cbn_reverse.h: channel-major element-wise runs that walk down in memory (included by
 * cbn_simd.h).
 *
 * Why: a load is held back when an older store still in flight has the same address modulo
 * 4 KB ("4K aliasing").  A forward pass whose output sits a little past its input modulo 4 KB
 * -- as consecutive NumPy arrays from the heap typically do, 16-64 bytes apart -- makes every
 * load of the next input vector alias a store just issued.  Measured, 2 threads, float32, output
 * 48-96 bytes past the input against 2 KB away: backward (8,256,14,14) 1.05-1.14x, NCHW inference
 * (32,64,56,56) 1.04-1.10x; walking down (highest address first), where the loads run ahead
 * *below* the stores, 0.97-0.98x and 0.79-0.87x.  _reverse() in _kernels.pyx picks the
 * direction.  Channels-last rows keep their (register-tiled, forward) kernels: a simple
 * descending row loop measured slower there than the aliasing costs.
 *
 * Same arithmetic, element for element, as the forward loops (results are bit-identical, tested);
 * blocks of CBN_REV_BLOCK elements are visited in descending order and each block is one vector
 * operation (no lane permutes); the partial block at the top comes first.
 */
#ifndef CBN_REVERSE_H
#define CBN_REVERSE_H

#define CBN_REV_BLOCK 16

/* BODY for i in [0, n), highest block first */
#define CBN_DESC(n, ...)                                                                         \
    do {                                                                                         \
        const ptrdiff_t e_ = (n), t_ = e_ % CBN_REV_BLOCK;                                       \
        _Pragma("omp simd")                                                                      \
        for (ptrdiff_t i = e_ - t_; i < e_; i++) { __VA_ARGS__ }                                 \
        for (ptrdiff_t b_ = e_ - t_ - CBN_REV_BLOCK; b_ >= 0; b_ -= CBN_REV_BLOCK) {             \
            _Pragma("omp simd")                                                                  \
            for (ptrdiff_t i = b_; i < b_ + CBN_REV_BLOCK; i++) { __VA_ARGS__ }                  \
        }                                                                                        \
    } while (0)

#define CBN_DEFINE_REVERSE(T, SFX)                                                               \
/* one channel-major run: y = (x - hi) * sc + sh, then max(., 0) if relu (NaN stays) */          \
static inline void cbn_affine_run_rev_##SFX(const T *restrict x, T *restrict y, ptrdiff_t n,    \
                                            T hi, T sc, T sh, int relu) {                        \
    if (relu)                                                                                    \
        CBN_DESC(n, T v_ = (x[i] - hi) * sc + sh; y[i] = v_ < 0 ? 0 : v_;);                      \
    else                                                                                         \
        CBN_DESC(n, y[i] = (x[i] - hi) * sc + sh;);                                              \
}                                                                                                \
/* one channel-major run: dx = g * k1 + (x - hi) * k2 + k3, g = dy, or dy where ym > 0 */         \
static inline void cbn_dx_run_rev_##SFX(const T *restrict dy, const T *restrict ym,             \
                                        const T *restrict x, T *restrict dx, ptrdiff_t n, T hi,  \
                                        T k1, T k2, T k3) {                                      \
    if (ym)                                                                                      \
        CBN_DESC(n, T g_ = dy[i]; g_ = ym[i] > 0 ? g_ : 0;                                       \
                    dx[i] = g_ * k1 + (x[i] - hi) * k2 + k3;);                                   \
    else                                                                                         \
        CBN_DESC(n, dx[i] = dy[i] * k1 + (x[i] - hi) * k2 + k3;);                                \
}

CBN_DEFINE_REVERSE(float, f32)
CBN_DEFINE_REVERSE(double, f64)

#endif /* CBN_REVERSE_H */
