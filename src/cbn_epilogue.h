/* cbn_epilogue.h: what the element-wise passes apply after the affine map -- the activation --
 * and what backward applies to the upstream gradient in its place.  The one list of
 * activations the kernels know; their arithmetic, per element type and vector kind, is in
 * cbn_epilogue-inl.h.
 *
 * Adding an activation: a code here, a case in CBN_FOR_ACT, its forward and gradient forms in
 * cbn_epilogue-inl.h (scalar, native vector, streaming vector; the gradient also on the 8-lane
 * float64 groups of the reductions, below), and its name in the Python layer.  No kernel
 * changes: every pass is written once over a constant `act` and instantiated per activation by
 * CBN_FOR_ACT.
 *
 * Backward receives the forward's output y ("saved", NULL without an activation) and routes
 * dy through the activation's derivative there: for ReLU g = dy where y > 0, else 0 (torch's
 * threshold_backward; NaN in y gives 0).
 */
#ifndef CBN_EPILOGUE_H
#define CBN_EPILOGUE_H

#include "cbn_simd.h" /* the vector types of the gradient forms below */

/* The activation codes (the Python layer's `activation=` names map to these).  The passes'
 * in-register epilogue (CBN_FOR_ACT) knows NONE and RELU; every code is available to the
 * post-operation stage (cbn_post.h), whose forms are in cbn_post-inl.h. */
enum {
    CBN_ACT_NONE = 0,
    CBN_ACT_RELU = 1,       /* max(z, 0), NaN kept */
    CBN_ACT_RELU6 = 2,      /* min(max(z, 0), 6), NaN kept */
    CBN_ACT_LEAKY_RELU = 3, /* z > 0 ? z : slope * z */
    CBN_ACT_SILU = 4,       /* z * sigmoid(z) */
    CBN_ACT_GELU = 5,       /* z * Phi(z), Phi the standard normal CDF (the erf form) */
    CBN_ACT_GELU_TANH = 6,  /* 0.5 z (1 + tanh(sqrt(2/pi) (z + 0.044715 z^3))) */
    CBN_ACT_COUNT = 7
};

/* Run CALL once per activation with a_ the compile-time constant code of `act`, so that every
 * pass written over a constant activation gets one branch-free instance per activation. */
#define CBN_FOR_ACT(act, CALL)                                                                   \
    do {                                                                                         \
        switch (act) {                                                                           \
        case CBN_ACT_RELU: { const int a_ = CBN_ACT_RELU; CALL; } break;                         \
        default: { const int a_ = CBN_ACT_NONE; CALL; } break;                                   \
        }                                                                                        \
    } while (0)

#ifdef CBN_VECTOR
/* g through the activation's derivative on native float64 vectors and 8-lane groups (the
 * reductions accumulate in double; y widened from the data) */
static inline cbn_vd cbn_act_grad_vd(cbn_vd g, cbn_vd y, const int act) {
    const cbn_vd zero = {0};
    if (act == CBN_ACT_NONE) return g;
    return (cbn_vd)((cbn_vl)g & (cbn_vl)(y > zero));
}
static inline cbn_v8d cbn_act_grad8(cbn_v8d g, cbn_v8d y, const int act) {
    CBN_V8_EACH(u) g.h[u] = cbn_act_grad_vd(g.h[u], y.h[u], act);
    return g;
}
#endif

#endif /* CBN_EPILOGUE_H */
