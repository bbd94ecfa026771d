/* cbn_reverse.h: channel-major element-wise runs that walk down in memory: why, and the loop
 * shape (the kernels, per element type: cbn_reverse-inl.h).
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

#endif /* CBN_REVERSE_H */
