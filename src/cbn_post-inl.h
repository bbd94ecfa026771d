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
#define CBN_POST_VL_ CBN_TVL
#if CBN_TVL * 4 == CBN_VB /* float */
#define CBN_PV_M_(f, d) f
#else
#define CBN_PV_M_(f, d) d
#endif

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
    if (act == CBN_ACT_SILU) return SFX(cbn_vsilu)(z);
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
        CBN_TV om, s = SFX(cbn_vsigmoid)(z, &om);
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
        CBN_TV om, s = SFX(cbn_vsigmoid)((T)2 * u, &om);
        return g * (s + z * ((T)2 * s * om) * du);
    }
    return g;
}
#undef CBN_GELU_K
#undef CBN_GELU_C

/* k <= CBN_TVL elements at p, the other lanes 0, and the first k lanes of v to p (k a
 * constant in the loops' bodies; else the head or tail of a run) */
static inline __attribute__((always_inline)) CBN_TV SFX(cbn_pv_load_n)(const TS *p,
                                                                       ptrdiff_t k) {
    if (k == CBN_TVL) return SFX(cbn_vload)(p);
#if CBN_HALF
    return SFX(cbn_vload_n)(p, k);
#elif defined(__AVX512F__) && CBN_VB == 64
    return (CBN_TV)CBN_PV_M_(_mm512_maskz_loadu_ps, _mm512_maskz_loadu_pd)(
        (CBN_PV_M_(__mmask16, __mmask8))((1u << k) - 1), p);
#else
    CBN_TV v = {0};
    memcpy(&v, p, (size_t)k * sizeof(T));
    return v;
#endif
}
static inline __attribute__((always_inline)) void SFX(cbn_pv_store_n)(TS *p, CBN_TV v,
                                                                      ptrdiff_t k) {
#if CBN_HALF
    SFX(cbn_vstore_n)(p, v, k);
#elif defined(__AVX512F__) && CBN_VB == 64
    CBN_PV_M_(_mm512_mask_storeu_ps, _mm512_mask_storeu_pd)(
        p, (CBN_PV_M_(__mmask16, __mmask8))((1u << k) - 1), CBN_PV_M_((__m512), (__m512d))v);
#else
    memcpy(p, &v, (size_t)k * sizeof(T));
#endif
}

/* Where z comes from (cbn_post.h, CBN_POST_FROM_*): s itself; or x of one channel-major run,
 * bn(x) = (x - hi) * sc + sh with its scalars; or x of channels-last rows, the coefficient
 * vectors at column c of the extended vectors (cbn_stream.h: ld = C + CBN_NT_PAD apart, a
 * vector loads whole from any column), c advancing with the elements.  The affine map is the
 * plain passes' (cbn_runs-inl.h, cbn_tiles-inl.h), so bn(x) rounds as it does there. */
typedef struct {
    CBN_TV hi, sc, sh;
    const T *ext;
    ptrdiff_t ld, C, c, step; /* step = CBN_TVL mod C */
} SFX(cbn_post_src_);

/* One vector of the stage at i (k < CBN_TVL: a partial vector, through the same arithmetic,
 * so head, body and tail round alike) */
static inline __attribute__((always_inline)) CBN_TV SFX(cbn_post_at)(
    const TS *restrict s, const TS *restrict r, const TS *restrict dy, ptrdiff_t i, ptrdiff_t k,
    const int mode, const int act, const int has_r, const int from, CBN_TV slope,
    SFX(cbn_post_src_) *src) {
    CBN_TV z = SFX(cbn_pv_load_n)(s + i, k);
    if (from == CBN_POST_FROM_RUN) {
        z = (z - src->hi) * src->sc + src->sh;
    } else if (from == CBN_POST_FROM_ROWS) {
        const T *e = src->ext + src->c;
        z = (z - CBN_TLOAD(e)) * CBN_TLOAD(e + src->ld) + CBN_TLOAD(e + 2 * src->ld);
        src->c += k == CBN_TVL ? src->step : k % src->C;
        if (src->c >= src->C) src->c -= src->C;
    }
    if (has_r) z += SFX(cbn_pv_load_n)(r + i, k);
    if (mode == CBN_POST_APPLY) return SFX(cbn_post_act_v)(z, act, slope);
    return SFX(cbn_post_grad_v)(SFX(cbn_pv_load_n)(dy + i, k), z, act, slope);
}

/* out[i] for 0 <= i < n (see cbn_post.h); streamed (whole aligned vectors) when stream */
static inline __attribute__((always_inline)) void SFX(cbn_post_body)(
    const TS *restrict s, const TS *restrict r, const TS *restrict dy, TS *restrict out,
    ptrdiff_t n, CBN_TV slope, int stream, SFX(cbn_post_src_) *src, const int mode,
    const int act, const int has_r, const int from) {
    enum { VL = CBN_TVL };
    ptrdiff_t i = 0;
#if defined(CBN_HAVE_NT) && !CBN_HALF
    _Static_assert(sizeof(CBN_NTV) == sizeof(CBN_TV), "streaming and native vectors differ");
    if (stream) {
        const ptrdiff_t h = CBN_NT_HEAD(out, n);
        if (h > 0) {
            SFX(cbn_pv_store_n)(out, SFX(cbn_post_at)(s, r, dy, 0, h, mode, act, has_r, from,
                                                      slope, src), h);
            i = h;
        }
        for (; i + VL <= n; i += VL) {
            if (from != CBN_POST_FROM_S) CBN_POST_PREFETCH(s, i);
            CBN_NT_STORE(out + i, (CBN_NTV)SFX(cbn_post_at)(s, r, dy, i, VL, mode, act, has_r,
                                                            from, slope, src));
        }
    }
#else
    (void)stream;
#endif
    if (i == 0) { /* plain stores: the elements before an aligned out first (CBN_ALIGN_HEAD;
                   * a 16-bit format stores CBN_TVL elements, half a native vector) */
        const ptrdiff_t h = CBN_HALF ? CBN_ALIGN_HEAD_TO(out, n, CBN_VB / 2)
                                     : CBN_ALIGN_HEAD(out, n);
        if (h > 0) {
            SFX(cbn_pv_store_n)(out, SFX(cbn_post_at)(s, r, dy, 0, h, mode, act, has_r, from,
                                                      slope, src), h);
            i = h;
        }
    }
    for (; i + VL <= n; i += VL) {
        if (from != CBN_POST_FROM_S) CBN_POST_PREFETCH(s, i);
        SFX(cbn_vstore)(out + i, SFX(cbn_post_at)(s, r, dy, i, VL, mode, act, has_r, from,
                                                  slope, src));
    }
    if (i < n)
        SFX(cbn_pv_store_n)(out + i, SFX(cbn_post_at)(s, r, dy, i, n - i, mode, act, has_r,
                                                      from, slope, src), n - i);
}

/* The stage over nruns runs of n elements (FROM_S, FROM_ROWS: one), run j at s + j * n with
 * the coefficients of channel (c0 + j) mod C (FROM_RUN) */
static inline __attribute__((always_inline)) void SFX(cbn_post_loop)(
    const cbn_post *p, const TS *s, ptrdiff_t off, TS *out, ptrdiff_t nruns, ptrdiff_t n,
    int stream, SFX(cbn_post_src_) *src, ptrdiff_t c0, const T *coef, const int mode,
    const int act, const int has_r, const int from) {
    const TS *r = p->res ? (const TS *)p->res + off : NULL;
    const TS *dy = p->dy ? (const TS *)p->dy + off : NULL;
    const CBN_TV slope = (CBN_TV){0} + (T)p->slope;
    ptrdiff_t c = c0;
    for (ptrdiff_t j = 0; j < nruns; j++) {
        const ptrdiff_t o = j * n;
        if (from == CBN_POST_FROM_RUN) {
            src->hi = (CBN_TV){0} + coef[c];
            src->sc = (CBN_TV){0} + coef[src->C + c];
            src->sh = (CBN_TV){0} + coef[2 * src->C + c];
            if (++c == src->C) c = 0;
        }
        SFX(cbn_post_body)(s + o, r ? r + o : r, dy ? dy + o : dy, out + o, n, slope, stream,
                           src, mode, act, has_r, from);
    }
}

/* For the tests (cbn._core.math_eval): fn 0 out = e^x; fn 1 out = Phi(x), aux = phi(x);
 * fn 2 out = silu(x); fn 3 out = sigmoid(x), aux = 1 - sigmoid(x); over n elements, partial
 * vectors at the end as in the stage (float and double: the 16-bit formats compute in the
 * float32 functions). */
#if !CBN_HALF
static inline void SFX(cbn_math_eval)(int fn, const T *x, T *out, T *aux, ptrdiff_t n) {
    for (ptrdiff_t i = 0; i < n; i += CBN_TVL) {
        const ptrdiff_t k = n - i < CBN_TVL ? n - i : CBN_TVL;
        CBN_TV v = SFX(cbn_pv_load_n)(x + i, k), o, a = {0};
        o = fn == 0   ? SFX(cbn_vexp)(v)
            : fn == 1 ? SFX(cbn_vnormal)(v, &a)
            : fn == 2 ? SFX(cbn_vsilu)(v)
                      : SFX(cbn_vsigmoid)(v, &a);
        memcpy(out + i, &o, (size_t)k * sizeof(T));
        if (aux) memcpy(aux + i, &a, (size_t)k * sizeof(T));
    }
}
#endif

#undef CBN_PV_M_
#else /* no vector extensions: the same forms on scalars, through libm */
#include <math.h>
#define CBN_POST_VL_ 1

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
/* the stage as in the vector form (src: the run's scalars in hi[0], sc[0], sh[0], or the
 * columns of ext) */
typedef struct {
    T hi, sc, sh;
    const T *ext;
    ptrdiff_t ld, C, c, step;
} SFX(cbn_post_src_);
static inline void SFX(cbn_post_loop)(const cbn_post *p, const TS *s, ptrdiff_t off, TS *out,
                                       ptrdiff_t nruns, ptrdiff_t n, int stream,
                                       SFX(cbn_post_src_) *src, ptrdiff_t c0, const T *coef,
                                       const int mode, const int act, const int has_r,
                                       const int from) {
    const TS *r = p->res ? (const TS *)p->res + off : NULL;
    const TS *dy = p->dy ? (const TS *)p->dy + off : NULL;
    const T slope = (T)p->slope;
    ptrdiff_t c = c0;
    (void)stream;
    for (ptrdiff_t j = 0; j < nruns; j++) {
        if (from == CBN_POST_FROM_RUN) {
            src->hi = coef[c], src->sc = coef[src->C + c], src->sh = coef[2 * src->C + c];
            if (++c == src->C) c = 0;
        }
        for (ptrdiff_t i = j * n; i < (j + 1) * n; i++) {
            T z = CBN_LD(s[i]);
            if (from == CBN_POST_FROM_RUN) z = (z - src->hi) * src->sc + src->sh;
            if (from == CBN_POST_FROM_ROWS) {
                const T *e = src->ext + src->c;
                z = (z - e[0]) * e[src->ld] + e[2 * src->ld];
                if (++src->c == src->C) src->c = 0;
            }
            out[i] = CBN_ST(SFX(cbn_post_scalar)(has_r ? z + CBN_LD(r[i]) : z,
                                                 mode ? CBN_LD(dy[i]) : 0, mode, act, slope));
        }
    }
}
#if !CBN_HALF
static inline void SFX(cbn_math_eval)(int fn, const T *x, T *out, T *aux, ptrdiff_t n) {
    for (ptrdiff_t i = 0; i < n; i++) {
        double v = (double)x[i], s = 1.0 / (1.0 + exp(-v));
        out[i] = (T)(fn == 0 ? exp(v) : fn == 1 ? 0.5 * erfc(-v * 0.70710678118654752440)
                     : fn == 2 ? v * s : s);
        if (aux) aux[i] = (T)(fn == 1 ? 0.39894228040143267794 * exp(-0.5 * v * v)
                              : v < 0 ? 1.0 - s : exp(-v) * s);
    }
}
#endif

#endif /* CBN_VECTOR */

/* The entry points (cbn_simd.pxd): one branch-free instance of the loop per mode,
 * activation, residual presence and source of z.
 *   cbn_post_block  out[i] = the post-operation at z = s[i] (+ residual[off + i]; dy[off + i]
 *                   for a gradient), 0 <= i < n: s is bn(x) of the block, or z itself (direct)
 *   cbn_post_runs   the same with z = bn(x) of nruns channel-major runs of n elements from x,
 *                   the first of channel c0, coef = [hi | scale | shift] of the C channels
 *   cbn_post_rows   the same with z = bn(x) of n elements of channels-last rows from x (the
 *                   first at column 0), ext the extended coefficients (cbn_nt_extend, 3)
 * out, s and x are offset already; the residual and dy are offset by off here. */
#define CBN_POST_CASE(m_, a_, f_)                                                                \
    case a_:                                                                                     \
        if (p->res) SFX(cbn_post_loop)(p, s, off, out, nruns, n, stream, src, c0, coef, m_, a_, \
                                       1, f_);                                                   \
        else SFX(cbn_post_loop)(p, s, off, out, nruns, n, stream, src, c0, coef, m_, a_, 0, f_); \
        break;
#define CBN_POST_ACTS(m_, f_)                                                                    \
    switch (p->act) {                                                                            \
        CBN_POST_CASE(m_, CBN_ACT_RELU, f_) CBN_POST_CASE(m_, CBN_ACT_RELU6, f_)                 \
        CBN_POST_CASE(m_, CBN_ACT_LEAKY_RELU, f_) CBN_POST_CASE(m_, CBN_ACT_SILU, f_)            \
        CBN_POST_CASE(m_, CBN_ACT_GELU, f_) CBN_POST_CASE(m_, CBN_ACT_GELU_TANH, f_)             \
        CBN_POST_CASE(m_, CBN_ACT_NONE, f_)                                                      \
    }
#define CBN_POST_DISPATCH(f_)                                                                    \
    if (p->mode == CBN_POST_GRAD)                                                                \
        CBN_POST_ACTS(CBN_POST_GRAD, f_)                                                         \
    else                                                                                         \
        CBN_POST_ACTS(CBN_POST_APPLY, f_)
static inline void SFX(cbn_post_block)(const cbn_post *p, const TS *s, ptrdiff_t off, TS *out,
                                        ptrdiff_t n, int stream) {
    SFX(cbn_post_src_) src0 = {0}, *src = &src0;
    const ptrdiff_t nruns = 1, c0 = 0;
    const T *coef = NULL;
    CBN_POST_DISPATCH(CBN_POST_FROM_S)
}
static inline void SFX(cbn_post_runs)(const cbn_post *p, const TS *s, ptrdiff_t off, TS *out,
                                       ptrdiff_t nruns, ptrdiff_t n, ptrdiff_t c0, ptrdiff_t C,
                                       const T *coef, int stream) {
    SFX(cbn_post_src_) src0 = {0}, *src = &src0;
    src0.C = C;
    CBN_POST_DISPATCH(CBN_POST_FROM_RUN)
}
static inline void SFX(cbn_post_rows)(const cbn_post *p, const TS *s, ptrdiff_t off, TS *out,
                                       ptrdiff_t n, ptrdiff_t C, const T *ext, int stream) {
    SFX(cbn_post_src_) src0 = {0}, *src = &src0;
    const ptrdiff_t nruns = 1, c0 = 0;
    const T *coef = NULL;
    src0.ext = ext, src0.ld = C + CBN_NT_PAD, src0.C = C, src0.c = 0;
    src0.step = CBN_POST_VL_ % C;
    CBN_POST_DISPATCH(CBN_POST_FROM_ROWS)
}
#undef CBN_POST_CASE
#undef CBN_POST_ACTS
#undef CBN_POST_DISPATCH
#undef CBN_POST_VL_
