/* cbn_post-inl.h: the post-operation stage (cbn_post.h) for one element type: every
 * activation of cbn_epilogue.h, forward and gradient, on native vectors, and the one contiguous
 * loop that applies them to a block.  Included once per type by cbn_families-inl.h, after
 * cbn_math-inl.h; no include guard.
 *
 * Semantics are torch's functionals in float64 (NaN and Inf included; tests/kernels/
 * test_post.py checks them against torch): relu6 is hardtanh(0, 6) (NaN kept), its gradient
 * dy where 0 < z < 6, else 0 -- also at NaN, as torch's vectorised loop (its scalar loop,
 * for tensors of a few elements, passes dy at NaN); leaky_relu's gradient at NaN is
 * dy * slope.  ReLU keeps cbn's own rule (gradient 0 where z is NaN, as the in-register
 * epilogue).  The smooth activations are written so that no tail cancels:
 *   silu(z)      = z / (1 + e^-z)
 *   gelu(z)      = z * Phi(z)                       (Phi from erfc: exact in the lower tail)
 *   gelu_tanh(z) = z / (1 + e^-2u), u = sqrt(2/pi) (z + 0.044715 z^3)
 * (0.5 (1 + tanh u) = 1 / (1 + e^-2u): the tanh form without its cancellation for z << 0);
 * 1 - sigmoid(w) is taken as e^-w * sigmoid(w) for w >= 0.  All gradients pass through
 * the derivative of the same closed form. */

#ifdef CBN_VECTOR

/* sigmoid(w) = 1 / (1 + e^-w) and 1 - sigmoid(w), without cancellation on either side */
static inline CBN_TV SFX(cbn_pv_sigmoid)(CBN_TV w, CBN_TV *one_minus) {
    const CBN_TV one = (CBN_TV){0} + (T)1;
    CBN_TV e = SFX(cbn_vexp)(-w);
    CBN_TV s = one / (one + e);
    *one_minus = SFX(cbn_vsel_)((CBN_TVI)(w < 0), one - s, e * s);
    return s;
}
#define CBN_GELU_K ((T)0.79788456080286535588) /* sqrt(2 / pi) */
#define CBN_GELU_C ((T)0.044715)

/* act(z) */
static inline __attribute__((always_inline)) CBN_TV SFX(cbn_post_act_v)(CBN_TV z, const int act,
                                                                       CBN_TV slope) {
    const CBN_TV zero = {0}, one = zero + (T)1;
    if (act == CBN_ACT_RELU) return (CBN_TV)((CBN_TVI)z & ~(CBN_TVI)(z < zero));
    if (act == CBN_ACT_RELU6) {
        CBN_TV r = (CBN_TV)((CBN_TVI)z & ~(CBN_TVI)(z < zero));
        return SFX(cbn_vsel_)((CBN_TVI)(r > zero + (T)6), zero + (T)6, r);
    }
    if (act == CBN_ACT_LEAKY_RELU) return SFX(cbn_vsel_)((CBN_TVI)(z > zero), z, z * slope);
    if (act == CBN_ACT_SILU) return z / (one + SFX(cbn_vexp)(-z));
    if (act == CBN_ACT_GELU) {
        CBN_TV pdf;
        return z * SFX(cbn_vnormal)(z, &pdf);
    }
    if (act == CBN_ACT_GELU_TANH) {
        CBN_TV u = CBN_GELU_K * (z + CBN_GELU_C * (z * z * z));
        return z / (one + SFX(cbn_vexp)((T)-2 * u));
    }
    return z;
}
/* dy * act'(z) */
static inline __attribute__((always_inline)) CBN_TV SFX(cbn_post_grad_v)(CBN_TV g, CBN_TV z,
                                                                        const int act,
                                                                        CBN_TV slope) {
    const CBN_TV zero = {0}, one = zero + (T)1;
    if (act == CBN_ACT_RELU) return (CBN_TV)((CBN_TVI)g & (CBN_TVI)(z > zero));
    if (act == CBN_ACT_RELU6)
        return (CBN_TV)((CBN_TVI)g & ((CBN_TVI)(z > zero) & (CBN_TVI)(z < zero + (T)6)));
    if (act == CBN_ACT_LEAKY_RELU) return SFX(cbn_vsel_)((CBN_TVI)(z > zero), g, g * slope);
    if (act == CBN_ACT_SILU) {
        CBN_TV om, s = SFX(cbn_pv_sigmoid)(z, &om);
        return g * (s * (one + z * om));
    }
    if (act == CBN_ACT_GELU) {
        CBN_TV pdf, cdf = SFX(cbn_vnormal)(z, &pdf);
        return g * (cdf + z * pdf);
    }
    if (act == CBN_ACT_GELU_TANH) {
        CBN_TV z2 = z * z;
        CBN_TV u = CBN_GELU_K * (z + CBN_GELU_C * (z2 * z));
        CBN_TV du = CBN_GELU_K * (one + (T)3 * CBN_GELU_C * z2);
        CBN_TV om, s = SFX(cbn_pv_sigmoid)((T)2 * u, &om);
        return g * (s + z * ((T)2 * s * om) * du);
    }
    return g;
}
#undef CBN_GELU_K
#undef CBN_GELU_C

/* k <= CBN_TVL elements at p, the other lanes 0 (k is a constant in the loops' bodies) */
static inline __attribute__((always_inline)) CBN_TV SFX(cbn_pv_load_n)(const T *p,
                                                                       ptrdiff_t k) {
    if (k == CBN_TVL) return SFX(cbn_vload)(p);
    CBN_TV v = {0};
    memcpy(&v, p, (size_t)k * sizeof(T));
    return v;
}

/* One vector of the stage at i (k < CBN_TVL: a partial vector, through the same arithmetic,
 * so head, body and tail round alike). */
static inline __attribute__((always_inline)) CBN_TV SFX(cbn_post_at)(
    const T *restrict s, const T *restrict r, const T *restrict dy, ptrdiff_t i, ptrdiff_t k,
    const int mode, const int act, const int has_r, CBN_TV slope) {
    CBN_TV z = SFX(cbn_pv_load_n)(s + i, k);
    if (has_r) z += SFX(cbn_pv_load_n)(r + i, k);
    if (mode == CBN_POST_APPLY) return SFX(cbn_post_act_v)(z, act, slope);
    return SFX(cbn_post_grad_v)(SFX(cbn_pv_load_n)(dy + i, k), z, act, slope);
}

/* out[i] for 0 <= i < n (see cbn_post.h); streamed (whole aligned vectors) when stream */
static inline __attribute__((always_inline)) void SFX(cbn_post_body)(
    const T *restrict s, const T *restrict r, const T *restrict dy, T *restrict out,
    ptrdiff_t n, T slope_s, int stream, const int mode, const int act, const int has_r) {
    enum { VL = CBN_TVL };
    const CBN_TV slope = (CBN_TV){0} + slope_s;
    CBN_TV o;
    ptrdiff_t i = 0;
#ifdef CBN_HAVE_NT
    _Static_assert(sizeof(CBN_NTV) == sizeof(CBN_TV), "streaming and native vectors differ");
    if (stream) {
        const ptrdiff_t h = CBN_NT_HEAD(out, n);
        if (h > 0) {
            o = SFX(cbn_post_at)(s, r, dy, 0, h, mode, act, has_r, slope);
            memcpy(out, &o, (size_t)h * sizeof(T));
            i = h;
        }
        for (; i + VL <= n; i += VL)
            CBN_NT_STORE(out + i, (CBN_NTV)SFX(cbn_post_at)(s, r, dy, i, VL, mode, act, has_r,
                                                            slope));
    }
#else
    (void)stream;
#endif
    for (; i + VL <= n; i += VL) {
        SFX(cbn_vstore)(out + i, SFX(cbn_post_at)(s, r, dy, i, VL, mode, act, has_r, slope));
    }
    if (i < n) {
        o = SFX(cbn_post_at)(s, r, dy, i, n - i, mode, act, has_r, slope);
        memcpy(out + i, &o, (size_t)(n - i) * sizeof(T));
    }
}

/* For the tests (cbn._core.math_eval): fn 0 out = e^x; fn 1 out = Phi(x), aux = phi(x), over
 * n elements, partial vectors at the end as in the stage. */
static inline void SFX(cbn_math_eval)(int fn, const T *x, T *out, T *aux, ptrdiff_t n) {
    for (ptrdiff_t i = 0; i < n; i += CBN_TVL) {
        const ptrdiff_t k = n - i < CBN_TVL ? n - i : CBN_TVL;
        CBN_TV v = SFX(cbn_pv_load_n)(x + i, k), o, a = {0};
        o = fn == 0 ? SFX(cbn_vexp)(v) : SFX(cbn_vnormal)(v, &a);
        memcpy(out + i, &o, (size_t)k * sizeof(T));
        if (aux) memcpy(aux + i, &a, (size_t)k * sizeof(T));
    }
}

#else /* no vector extensions: the same forms on scalars, through libm */
#include <math.h>

static inline T SFX(cbn_post_scalar)(T z, T g, const int mode, const int act, T slope) {
    const double zd = (double)z, k = 0.79788456080286535588, c = 0.044715;
    double cdf = 0.5 * erfc(-zd * 0.70710678118654752440);
    double pdf = 0.39894228040143267794 * exp(-0.5 * zd * zd);
    double u = k * (zd + c * zd * zd * zd);
    double s1 = 1.0 / (1.0 + exp(-zd)), s2 = 1.0 / (1.0 + exp(-2.0 * u));
    double o1 = zd < 0 ? 1.0 - s1 : exp(-zd) * s1, o2 = u < 0 ? 1.0 - s2 : exp(-2.0 * u) * s2;
    if (mode == CBN_POST_APPLY) {
        switch (act) {
        case CBN_ACT_RELU: return z < 0 ? 0 : z;
        case CBN_ACT_RELU6: return z < 0 ? 0 : (z > 6 ? 6 : z);
        case CBN_ACT_LEAKY_RELU: return z > 0 ? z : z * slope;
        case CBN_ACT_SILU: return (T)(zd * s1);
        case CBN_ACT_GELU: return (T)(zd * cdf);
        case CBN_ACT_GELU_TANH: return (T)(zd * s2);
        default: return z;
        }
    }
    switch (act) {
    case CBN_ACT_RELU: return z > 0 ? g : 0;
    case CBN_ACT_RELU6: return (z > 0 && z < 6) ? g : 0;
    case CBN_ACT_LEAKY_RELU: return z > 0 ? g : g * slope;
    case CBN_ACT_SILU: return (T)(g * (s1 * (1.0 + zd * o1)));
    case CBN_ACT_GELU: return (T)(g * (cdf + zd * pdf));
    case CBN_ACT_GELU_TANH:
        return (T)(g * (s2 + zd * (2.0 * s2 * o2) * k * (1.0 + 3.0 * c * zd * zd)));
    default: return g;
    }
}
static inline void SFX(cbn_post_body)(const T *s, const T *r, const T *dy, T *out, ptrdiff_t n,
                                       T slope, int stream, const int mode, const int act,
                                       const int has_r) {
    (void)stream;
    for (ptrdiff_t i = 0; i < n; i++)
        out[i] = SFX(cbn_post_scalar)(has_r ? s[i] + r[i] : s[i], mode ? dy[i] : 0, mode, act,
                                      slope);
}
static inline void SFX(cbn_math_eval)(int fn, const T *x, T *out, T *aux, ptrdiff_t n) {
    for (ptrdiff_t i = 0; i < n; i++) {
        double v = (double)x[i];
        out[i] = (T)(fn == 0 ? exp(v) : 0.5 * erfc(-v * 0.70710678118654752440));
        if (aux) aux[i] = (T)(0.39894228040143267794 * exp(-0.5 * v * v));
    }
}

#endif /* CBN_VECTOR */

/* The stage over one block: out[i] = the post-operation p at z = s[i] + residual[off + i]
 * (dy[off + i] for a gradient), 0 <= i < n; one branch-free instance per mode, activation and
 * residual presence. */
#define CBN_POST_CASE(m_, a_)                                                                    \
    case a_:                                                                                     \
        if (r) SFX(cbn_post_body)(s, r, dy, out, n, slope, stream, m_, a_, 1);                   \
        else SFX(cbn_post_body)(s, r, dy, out, n, slope, stream, m_, a_, 0);                     \
        break;
#define CBN_POST_ACTS(m_)                                                                        \
    switch (p->act) {                                                                            \
        CBN_POST_CASE(m_, CBN_ACT_RELU) CBN_POST_CASE(m_, CBN_ACT_RELU6)                         \
        CBN_POST_CASE(m_, CBN_ACT_LEAKY_RELU) CBN_POST_CASE(m_, CBN_ACT_SILU)                    \
        CBN_POST_CASE(m_, CBN_ACT_GELU) CBN_POST_CASE(m_, CBN_ACT_GELU_TANH)                     \
        CBN_POST_CASE(m_, CBN_ACT_NONE)                                                          \
    }
static inline void SFX(cbn_post_block)(const cbn_post *p, const T *s, ptrdiff_t off, T *out,
                                        ptrdiff_t n, int stream) {
    const T *r = p->res ? (const T *)p->res + off : NULL;
    const T *dy = p->dy ? (const T *)p->dy + off : NULL;
    const T slope = (T)p->slope;
    if (p->mode == CBN_POST_GRAD)
        CBN_POST_ACTS(CBN_POST_GRAD)
    else
        CBN_POST_ACTS(CBN_POST_APPLY)
}
#undef CBN_POST_CASE
#undef CBN_POST_ACTS
