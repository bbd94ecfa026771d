/* cbn_post.h: the post-operation of an element-wise pass -- a residual added to the batch-norm
 * output and an activation of any kind (cbn_epilogue.h), or the gradient through them -- as
 * the compile-once module hands it to a level's kernels (cbn_table.h).
 *
 * Why a second stage and not more register forms: the in-register epilogue (act inside every
 * pass, cbn_epilogue-inl.h) keeps ReLU free, but a residual is one more input array and SiLU or
 * GELU one more polynomial in each of the ~20 pass variants (runs up and down, streamed,
 * channels-last tiles and rows).  Instead a pass with a post-operation computes s = bn(x) for
 * a block of at most CBN_POST_BLOCK_BYTES into a per-task buffer (plain stores: it stays in
 * L1), then one contiguous loop (cbn_post-inl.h) reads s, the residual and dy at the same
 * offsets and writes the output, streamed when the pass streams.  Memory traffic is the fused
 * one (x and the residual read once, the output written once); the buffer costs an L1 store
 * and load per element.
 */
#ifndef CBN_POST_H
#define CBN_POST_H

#include <stddef.h>

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

/* The block of bn(x) kept between the two stages: 8 KB is a quarter of L1 on every x86 core
 * since Zen 1 / Skylake, and long enough (2048 float32) for the loop overhead to vanish. */
#define CBN_POST_BLOCK_BYTES 8192
/* Channels-last blocks are whole rows, at least this many bytes of them: the rows kernel loads
 * its three coefficient vectors once per call, so a block of 2 rows of C = 1024 float32 moved
 * 1.5x its data in coefficients (measured 2.2x the floor; TUNED below). */
#ifndef CBN_POST_ROWS_BYTES
#define CBN_POST_ROWS_BYTES 65536
#endif

/* Start loading the next block of x while the stage computes on this one: the plain loop of
 * the first stage streams x with the arithmetic units mostly idle and the second computes
 * (SiLU, GELU) with the memory bus mostly idle; a prefetch of the next block (one instruction
 * per 64 bytes) lets them overlap.  Measured, SiLU on 25.7 MB float32 at one thread: 2.51x
 * the floor against 2.67x without (means of 4 processes, noisy). */
static inline void cbn_post_prefetch(const void *p, ptrdiff_t bytes) {
    const char *c = (const char *)p;
    for (ptrdiff_t b = 0; b < bytes; b += 64) __builtin_prefetch(c + b, 0, 3);
}

#endif /* CBN_POST_H */
