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

/* The activation codes (the Python layer's `activation=` names map to these). */
enum { CBN_ACT_NONE = 0, CBN_ACT_RELU = 1 };

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
