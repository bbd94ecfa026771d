/* cbn_epilogue-inl.h: the activations of cbn_epilogue.h for one element type, in every form
 * the kernels use: a scalar of T, a native vector (CBN_TV, register tiles), a streaming vector
 * (CBN_NTV).  `act` is a compile-time constant wherever these are called (CBN_FOR_ACT), so each
 * folds to its one expression.  Included once per type by cbn_families-inl.h; no include guard.
 *
 * ReLU keeps NaN (NaN < 0 is false) and -0.0; its gradient is g where y > 0, else 0 (NaN in y
 * gives 0).  The vector forms are bit masks of the same comparisons. */

/* ---------------------------------------------------------------- forward: act(v) */
static inline T SFX(cbn_act)(T v, const int act) {
    if (act == CBN_ACT_RELU) return v < 0 ? 0 : v;
    return v;
}

/* ---------------------------------------------------------------- backward: g through act */
/* g given the forward output y */
static inline T SFX(cbn_act_grad)(T g, T y, const int act) {
    if (act == CBN_ACT_RELU) return y > 0 ? g : 0;
    return g;
}
/* the upstream gradient at i, widened to double: dy[i] through the activation whose output
 * is ym (never read without an activation) */
static inline double SFX(cbn_grad_d)(const TS *dy, const TS *ym, ptrdiff_t i, const int act) {
    if (act == CBN_ACT_NONE) return (double)CBN_LD(dy[i]);
    return cbn_select((double)CBN_LD(dy[i]), CBN_LD(ym[i]) > 0);
}

#ifdef CBN_VECTOR
static inline CBN_TV SFX(cbn_act_v)(CBN_TV v, const int act) {
    const CBN_TV zero = {0};
    if (act == CBN_ACT_RELU) return (CBN_TV)((CBN_TVI)v & ~(CBN_TVI)(v < zero));
    return v;
}
static inline CBN_TV SFX(cbn_act_grad_v)(CBN_TV g, CBN_TV y, const int act) {
    const CBN_TV zero = {0};
    if (act == CBN_ACT_RELU) return (CBN_TV)((CBN_TVI)g & (y > zero));
    return g;
}
#endif

#if defined(CBN_HAVE_NT) && !CBN_HALF
static inline CBN_NTV SFX(cbn_act_nt)(CBN_NTV v, const int act) {
    const CBN_NTV zero = {0};
    if (act == CBN_ACT_RELU) return (CBN_NTV)((CBN_NTI)v & ~(CBN_NTI)(v < zero));
    return v;
}
static inline CBN_NTV SFX(cbn_act_grad_nt)(CBN_NTV g, CBN_NTV y, const int act) {
    const CBN_NTV zero = {0};
    if (act == CBN_ACT_RELU) return (CBN_NTV)((CBN_NTI)g & (CBN_NTI)(y > zero));
    return g;
}
#endif
