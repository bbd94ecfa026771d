/* cbn_post.h: the post-operation of an element-wise pass -- a residual added to the batch-norm
 * output and an activation of any kind (cbn_epilogue.h), or the gradient through them -- as
 * the compile-once module hands it to a level's kernels (cbn_table.h).
 *
 * Why one loop of its own and not more register forms: the in-register epilogue (act inside
 * every pass, cbn_epilogue-inl.h) keeps ReLU free, but a residual is one more input array and
 * SiLU or GELU one more polynomial in each of the ~20 pass variants (runs up and down,
 * streamed, channels-last tiles and rows).  Instead a pass with a post-operation hands its
 * element ranges to one contiguous loop (cbn_post-inl.h) that forms z = bn(x) in registers --
 * from the scalar coefficients of a channel-major run, or for channels-last rows from the
 * extended coefficient vectors of the streaming passes (cbn_stream.h) -- adds the residual,
 * reads dy at the same offsets and writes the output, streamed when the pass streams.  Memory
 * traffic is the fused one: x and the residual read once, the output written once.
 *
 * Why bn(x) is not first written to a cached buffer (as an earlier design did, 8 KB blocks):
 * the activations are compute-bound next to a streamed pass (SiLU ~20 vector operations and a
 * division per vector), and a block-wise first stage keeps the memory bus idle while the
 * second computes.  In one loop the loads of the hardware prefetchers overlap the arithmetic:
 * SiLU inference on 25.7 MB float32 went from 1.6-1.9x to 1.05x the time of plain inference
 * (AVX-512, 1 and 2 threads).
 */
#ifndef CBN_POST_H
#define CBN_POST_H

#include <stddef.h>
#include <stdint.h>

/* What the second stage writes, with z = s + residual (s = bn(x) of the block):
 * APPLY  out = act(z)               (forward, inference)
 * GRAD   out = dy * act'(z)         (backward: the gradient at z, which is also dresidual)  */
enum { CBN_POST_APPLY = 0, CBN_POST_GRAD = 1 };

typedef struct {
    int mode;           /* CBN_POST_APPLY or CBN_POST_GRAD */
    int act;            /* an activation code of cbn_epilogue.h */
    double slope;       /* leaky_relu's negative slope (else unused) */
    const void *res;    /* the residual, laid out as x, of x's type; NULL: none */
    const void *dy;     /* GRAD: the upstream gradient, laid out as x; else NULL */
    int direct;         /* the pass's input is z itself (no affine stage, no buffer): the
                         * gradient of an activation taken from its output y */
} cbn_post;

/* The loop prefetches x this many bytes ahead of the element it computes (computed as an
 * integer: the target may lie past the end of the array, which a prefetch tolerates).  With
 * SiLU the hardware prefetchers alone left the bus idle between bursts: (32,64,56,56) float32
 * inference took 1.28x plain inference without the prefetch, 1.04x with it (1 KB, 4 KB and
 * 16 KB ahead alike). */
#ifndef CBN_POST_AHEAD
#define CBN_POST_AHEAD 4096
#endif
#define CBN_POST_PREFETCH(p, i)                                                                  \
    __builtin_prefetch((const void *)((uintptr_t)((p) + (i)) + CBN_POST_AHEAD), 0, 3)

/* Where a post-operation's z comes from (cbn_post-inl.h) */
enum { CBN_POST_FROM_S = 0, CBN_POST_FROM_RUN = 1, CBN_POST_FROM_ROWS = 2 };

#endif /* CBN_POST_H */
