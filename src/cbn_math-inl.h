/* cbn_math-inl.h: vectorised elementary functions for the fused activations (SiLU, GELU), for
 * one element type: e^x, silu and the sigmoid pair, the standard normal CDF with its density.  Included once per type
 * with T, SFX, CBN_TV, CBN_TVI and CBN_TVL defined (cbn_kernels.h); no include guard.  GCC
 * vector extensions, branch-free per lane, no libm (and no libmvec/SVML) in the vector paths.
 *
 *   CBN_TV SFX(cbn_vexp)(CBN_TV x)                      e^x
 *   CBN_TV SFX(cbn_vsilu)(CBN_TV z)                     z sigmoid(z)
 *   CBN_TV SFX(cbn_vsigmoid)(CBN_TV w, CBN_TV *om)      sigmoid(w), and 1 - sigmoid(w) into *om
 *   CBN_TV SFX(cbn_vnormal)(CBN_TV z, CBN_TV *pdf_out)  Phi(z), and phi(z) into *pdf_out
 *
 * Design.
 * exp: n = round(x log2 e) by the magic-constant trick (adding 1.5 * 2^mant puts n in the low
 *   bits), r = x - n ln2_hi - n ln2_lo (ln2_hi has trailing zeros, so n ln2_hi and the first
 *   subtraction are exact with or without FMA), |r| <= 0.347; e^r = 1 + r + r^2 P(r), P of
 *   degree 4 (float) / 9 (double); 2^n through the exponent bits in two factors 2^(n/2) and
 *   2^(n - n/2), each a normal number, so results near overflow and gradual underflow are
 *   rounded once at the end, like any product.  x is clamped first to [-104, 89] (float) /
 *   [-746, 710] (double): the ends overflow to +inf or round to 0 by themselves; NaN passes the
 *   clamp (the comparisons are false) and makes P NaN.
 *   Measured max error (tools/vecmath, same at SSE2, AVX2, AVX-512): float 0.68 ulp, double
 *   0.67 ulp on normal results (0.79 / 0.76 ulp of the subnormal spacing below them).
 *   Cost: ~25 (float) / ~30 (double) vector operations per vector, no division; AVX2, data in
 *   L2: ~0.5-0.7 ns per float, ~1.2-1.7 ns per double.
 * silu, sigmoid: one e = e^-|w| serves both sides (1 / (1 + e) and e / (1 + e): no 1 - s).
 *   e^-a is a lean exp (cbn_vexpneg_): a clamped to 115 / 760 (beyond, every result has
 *   underflowed or is exactly 1 or z), no Fast2Sum, the polynomial as one Horner chain, and the
 *   scaling 2^n kept apart: e = p 2^n enters 1 + e, and for z < 0 silu divides z p by 1 + e
 *   and applies 2^n after the division, so a result below the normal range rounds once
 *   (z / (1 + e^-z) flushes to -0 from z = -89 on, where e^-z overflows float32).  2^n is
 *   AVX-512's scalef, else two normal factors formed once.  AVX-512 keeps the selections on
 *   mask registers (GCC's vector selects round-trip k -> vector -> k: 2 extra operations per
 *   select, ~30% of silu).  silu(-inf) is NaN as torch's -inf / inf.
 *   Measured max error (tests/kernels/test_math.py, every level): silu float 2.99 ulp (results
 *   below the normal range within 1.1-1.3 units of 2^-149), double 2.0 ulp (mpmath); sigmoid
 *   and 1 - sigmoid float 2.40, double 2.0 ulp.
 *   Cost (AVX-512, in L1, with the affine map and the store): silu 0.27 ns per float, ~20
 *   vector operations and a division; the division as rcp14 + a Newton step was slower (0.30).
 * normal: t = |z| (clamped to 15 / 40, where phi and Phi(-t) have underflowed to 0: so +-inf
 *   give phi = 0 and Phi = 0 or 1; NaN passes the clamp).  t^2 = h + l exactly (FMA where the
 *   ISA has one, Veltkamp/Dekker splitting only where it has none: the kernels are compiled with
 *   -ffp-contract=fast, which would fuse the splitting's products); -t^2/2 - ln sqrt(2 pi) is
 *   formed as an unevaluated pair (TwoSum), and its low part is added to the reduced argument of
 *   exp, i.e. exp(hi + lo) = exp(hi)(1 + lo) to first order, one rounding fewer than a
 *   separate multiply.  So phi = exp(...) carries only the error of exp (without the pair, the
 *   rounding of t^2/2 alone would cost tens of ulps at |z| = 10).
 *   The lower tail is Phi(-t) = phi(t) M(t) with M the Mills ratio (M = sqrt(pi/2) erfcx(t/sqrt
 *   2)), never 1 - something, so it keeps its relative accuracy until it underflows; for z > 0,
 *   Phi = 1 - Phi(-t) (<= 0.5 subtracted from 1: no cancellation).  M is fitted in two pieces,
 *   evaluated as one Horner polynomial whose variable and coefficients are selected per lane:
 *     t < A1: M(t) in u = t - A1/2 (a centred variable: in t itself the monomial terms grow like
 *             e^(t^2/2) and cancel).  u is rounded for t < A1/4; its rounding error ulo is
 *             recovered exactly (Fast2Sum) and applied with M' = tM - 1 (the ODE of M);
 *     t >= A1: M(t) = F(w)/t, w = 1/t^2, F in u = w - W0 (F -> 1 as t -> inf).
 *   A1 = 2.5, degree 11 (float); A1 = 3, degree 22 (double).  Fits: weighted Remez exchange for
 *   the relative error, mpmath with dps 40, then each coefficient rounded to T lowest degree
 *   first with the others re-fitted by least squares at 400 Chebyshev nodes (float; double M;
 *   double F: Remez, rounded).  Fit error, relative, with the rounded coefficients: float M
 *   2.0e-8, F 2.1e-8; double M 7.4e-17, F 3.7e-17; exp float 3.3e-9, double 5.3e-18.
 *   Measured max relative error, results that are normal numbers (tools/vecmath):
 *     Phi: float 3.37 ulp (SSE2, near z = 0: pdf ~ 0.4 times M ~ 1.25 into just below 0.5),
 *          2.78 ulp (AVX2, AVX-512); double 3.11 ulp (SSE2), 2.90 ulp (AVX2, AVX-512);
 *     phi: float 0.70 ulp, double 0.67 ulp (all levels).
 *   Cost: ~65 (float) / ~110 (double) vector operations per vector, two of them divisions;
 *   AVX2, data in L2: ~1.8 ns per float, ~5.7 ns per double (Phi and phi together).
 */
#ifdef CBN_VECTOR

#if CBN_TVL * 4 == CBN_VB /* float */
#define CBN_M_(f, d) f
typedef unsigned int SFX(cbn_vmu_) __attribute__((vector_size(CBN_VB)));
#else
#define CBN_M_(f, d) d
typedef unsigned long long SFX(cbn_vmu_) __attribute__((vector_size(CBN_VB)));
#endif
#define CBN_MV_(k) ((CBN_TV){0} + (T)(k)) /* broadcast (never -0.0: {0} + -0.0 is +0.0) */

/* m ? a : b per lane (m all-ones or all-zero lanes; C has no vector ?:) */
static inline CBN_TV SFX(cbn_vsel_)(CBN_TVI m, CBN_TV a, CBN_TV b) {
    return (CBN_TV)(((CBN_TVI)a & m) | ((CBN_TVI)b & ~m));
}
/* a^2 = *hi + *lo exactly (|a| <= 40: no overflow in the splitting) */
static inline void SFX(cbn_vsqr2_)(CBN_TV a, CBN_TV *hi, CBN_TV *lo) {
    CBN_TV h = a * a;
    *hi = h;
#if defined(__x86_64__) || defined(__i386__)
#if defined(__AVX512F__) && CBN_VB == 64
    *lo = (CBN_TV)CBN_M_(_mm512_fmsub_ps, _mm512_fmsub_pd)(CBN_M_((__m512), (__m512d))a,
              CBN_M_((__m512), (__m512d))a, CBN_M_((__m512), (__m512d))h);
#elif defined(__FMA__) && CBN_VB == 32
    *lo = (CBN_TV)CBN_M_(_mm256_fmsub_ps, _mm256_fmsub_pd)(CBN_M_((__m256), (__m256d))a,
              CBN_M_((__m256), (__m256d))a, CBN_M_((__m256), (__m256d))h);
#elif defined(__FMA__) && CBN_VB == 16
    *lo = (CBN_TV)CBN_M_(_mm_fmsub_ps, _mm_fmsub_pd)(CBN_M_((__m128), (__m128d))a,
              CBN_M_((__m128), (__m128d))a, CBN_M_((__m128), (__m128d))h);
#else
#define CBN_M_DEKKER_ 1 /* no FMA instruction: nothing can be contracted */
#endif
#elif defined(__FP_FAST_FMA) || defined(__FP_FAST_FMAF)
    for (int i = 0; i < CBN_TVL; i++)
        (*lo)[i] = CBN_M_(__builtin_fmaf, __builtin_fma)(a[i], a[i], -h[i]);
#else
#define CBN_M_DEKKER_ 1
#endif
#ifdef CBN_M_DEKKER_
    {   /* Veltkamp split a = ah + al, 12 / 26 bits each; then Dekker's exact product */
        CBN_TV c = a * CBN_M_(4097.0f, 134217729.0);
        CBN_TV ah = c - (c - a), al = a - ah;
        *lo = ((ah * ah - h) + 2 * ah * al) + al * al;
    }
#undef CBN_M_DEKKER_
#endif
}

/* e^(x + xl) with |xl| tiny next to ulp(x) (has_lo a compile-time constant).  rh + rl is the
 * reduced argument; 1 + rh is split exactly so that e^r carries one rounding at the scale of 1
 * (without it: 0.99 ulp measured, float) */
static inline CBN_TV SFX(cbn_vexp_)(CBN_TV x, CBN_TV xl, const int has_lo) {
    typedef SFX(cbn_vmu_) U;
    const T hi = CBN_M_(89.0f, 710.0), lo = CBN_M_(-104.0f, -746.0);
    const T magic = CBN_M_(12582912.0f, 6755399441055744.0); /* 1.5 * 2^mant */
    const T ln2_hi = CBN_M_(0.693359375f, 6.93147180369123816490e-01);
    const T ln2_lo = CBN_M_(-2.121944417e-04f, 1.90821492927058770002e-10);
    const int mant = CBN_M_(23, 52);
    const U bias = (U){0} + CBN_M_(127u, 1023ull);
    x = SFX(cbn_vsel_)((CBN_TVI)(x > hi), CBN_MV_(hi), x); /* NaN stays NaN */
    x = SFX(cbn_vsel_)((CBN_TVI)(x < lo), CBN_MV_(lo), x);
    CBN_TV t = x * (T)CBN_M_(1.44269504f, 1.4426950408889634) + magic;
    CBN_TV n = t - magic;                 /* round(x log2 e), exact */
    CBN_TV rh = x - n * ln2_hi;           /* exact */
    CBN_TV rl = has_lo ? xl - n * ln2_lo : -(n * ln2_lo);
    CBN_TV r = rh + rl;
    /* e^r = 1 + r + r^2 P(r); P minimax for the relative error of e^r on |r| <= 0.347 */
#if CBN_TVL * 4 == CBN_VB
    CBN_TV p = CBN_MV_(1.384037314e-03f);
    p = p * r + 8.369348943e-03f;
    p = p * r + 4.166808352e-02f;
    p = p * r + 1.666651517e-01f;
    p = p * r + 4.999999404e-01f;
#else
    CBN_TV p = CBN_MV_(2.50156809415258064e-08);
    p = p * r + 2.76307993690017910e-07;
    p = p * r + 2.75575439926348846e-06;
    p = p * r + 2.48014916593046472e-05;
    p = p * r + 1.98412695465136676e-04;
    p = p * r + 1.38888889449238729e-03;
    p = p * r + 8.33333333347966582e-03;
    p = p * r + 4.16666666665256591e-02;
    p = p * r + 1.66666666666664298e-01;
    p = p * r + 5.00000000000001110e-01;
#endif
    /* 1 + rh = S + E exactly (Fast2Sum): only the last addition rounds at the scale of 1 */
    CBN_TV S = 1 + rh, E = (1 - S) + rh;
    p = S + (E + (rl + (r * r) * p));
    /* 2^n = 2^n1 2^n2, n1 = floor(n / 2): both normal for every n of the clamped range.  In
     * unsigned lanes (a NaN x gives garbage n: no signed overflow, and P is NaN anyway) */
    U k = (U)t - ((U){0} + CBN_M_(0x4b400000u, 0x4338000000000000ull));
    U k1 = (U)((CBN_TVI)k >> 1);
    CBN_TV s1 = (CBN_TV)((k1 + bias) << mant), s2 = (CBN_TV)((k - k1 + bias) << mant);
    return p * s1 * s2;
}

static inline CBN_TV SFX(cbn_vexp)(CBN_TV x) { return SFX(cbn_vexp_)(x, x, 0); }

/* The sigmoid family.  Beyond |w| = CBN_SIG_AMAX, e^-|w| times any T below the T range's
 * top has underflowed to 0 (float: 115 e^-115 = 1.3e-48; double: 760 e^-760 < 1e-329), and
 * 2^-round(|w| log2 e) still splits into two normal factors (cbn_vscale_). */
#define CBN_SIG_AMAX CBN_M_(115.0f, 760.0)

/* e^-a = p 2^n for 0 <= a <= CBN_SIG_AMAX (or NaN): n = -round(a log2 e) <= 0, p = e^-r with
 * r = a + n ln2 in [-ln2/2, ln2/2] (p in [0.70, 1.42]); t holds n in its low bits (the magic-
 * constant sum, for cbn_vscale_).  The lean form of cbn_vexp_ for one side and no clamp of its
 * own: e^-r as one Horner polynomial (cbn_vexp_'s, odd coefficients negated), whose last step
 * rounds once at the scale of 1; 2^n is left to the caller, to be applied once. */
typedef struct { CBN_TV p, n, t; } SFX(cbn_expneg_);
static inline SFX(cbn_expneg_) SFX(cbn_vexpneg_)(CBN_TV a) {
    const T magic = CBN_M_(12582912.0f, 6755399441055744.0); /* 1.5 * 2^mant */
    const T ln2_hi = CBN_M_(0.693359375f, 6.93147180369123816490e-01);
    const T ln2_lo = CBN_M_(-2.121944417e-04f, 1.90821492927058770002e-10);
    SFX(cbn_expneg_) o;
    o.t = a * (T)CBN_M_(-1.44269504f, -1.4426950408889634) + magic;
    o.n = o.t - magic;                    /* -round(a log2 e), exact */
    CBN_TV r = a + o.n * ln2_hi;          /* exact */
    r = r + o.n * ln2_lo;
#if CBN_TVL * 4 == CBN_VB
    CBN_TV p = CBN_MV_(1.384037314e-03f);
    p = p * r - 8.369348943e-03f;
    p = p * r + 4.166808352e-02f;
    p = p * r - 1.666651517e-01f;
    p = p * r + 4.999999404e-01f;
#else
    CBN_TV p = CBN_MV_(-2.50156809415258064e-08);
    p = p * r + 2.76307993690017910e-07;
    p = p * r - 2.75575439926348846e-06;
    p = p * r + 2.48014916593046472e-05;
    p = p * r - 1.98412695465136676e-04;
    p = p * r + 1.38888889449238729e-03;
    p = p * r - 8.33333333347966582e-03;
    p = p * r + 4.16666666665256591e-02;
    p = p * r - 1.66666666666664298e-01;
    p = p * r + 5.00000000000001110e-01;
#endif
    p = p * r - 1;
    o.p = p * r + 1;
    return o;
}

/* q 2^n for n of cbn_vexpneg_, rounded once (gradual underflow included); full: n may be
 * below the normal exponent range (else the caller ignores those lanes' excess: 1 + q 2^n
 * rounds to 1 there anyway) */
static inline CBN_TV SFX(cbn_vscale_)(CBN_TV q, SFX(cbn_expneg_) e, const int full) {
#if defined(__AVX512F__) && CBN_VB == 64
    (void)full;
    return (CBN_TV)CBN_M_(_mm512_scalef_ps, _mm512_scalef_pd)(CBN_M_((__m512), (__m512d))q,
                                                              CBN_M_((__m512), (__m512d))e.n);
#else
    typedef SFX(cbn_vmu_) U;
    const int mant = CBN_M_(23, 52);
    const U bias = (U){0} + CBN_M_(127u, 1023ull), emin = (U){0} + CBN_M_(126u, 1022ull);
    /* -n as an unsigned lane (a NaN lane gives garbage: no signed overflow, q is NaN) */
    U k = ((U){0} + CBN_M_(0x4b400000u, 0x4338000000000000ull)) - (U)e.t;
    U m = (U)(CBN_TVI)(k > emin);
    U k1 = (emin & m) | (k & ~m);
    CBN_TV s1 = (CBN_TV)((bias - k1) << mant);
    if (!full) return q * s1;
    CBN_TV s2 = (CBN_TV)((bias - (k - k1)) << mant);
    return (q * s2) * s1; /* q s2 is exact (|q| >= 2^-9 here): one rounding */
#endif
}

/* silu(z) = z sigmoid(z) = z / (1 + e^-z), as z / (1 + e) for z >= 0 and z e / (1 + e) for
 * z < 0, e = e^-|z| = p 2^n (cbn_vexpneg_): the negative side divides z p and scales by 2^n
 * after the division, so a result in the subnormal range is rounded once.  -inf gives NaN
 * (-inf / inf, as torch). */
static inline CBN_TV SFX(cbn_vsilu)(CBN_TV z) {
#if defined(__AVX512F__) && CBN_VB == 64 /* the same steps, the selections on mask registers */
#define CBN_V5_(op) CBN_M_(_mm512_##op##_ps, _mm512_##op##_pd)
    typedef CBN_M_(__m512, __m512d) V;
    typedef CBN_M_(__mmask16, __mmask8) K;
    const V amax = (V)CBN_MV_(CBN_SIG_AMAX), zv = (V)z;
    K neg = CBN_M_(_mm512_cmp_ps_mask, _mm512_cmp_pd_mask)(zv, (V)CBN_MV_(0), _CMP_LT_OQ);
    K minf = CBN_M_(_mm512_cmp_ps_mask, _mm512_cmp_pd_mask)(zv, (V)CBN_MV_(-__builtin_inf()), _CMP_EQ_OQ);
    V a = CBN_V5_(min)(amax, CBN_V5_(abs)(zv));          /* NaN stays NaN */
    SFX(cbn_expneg_) e = SFX(cbn_vexpneg_)((CBN_TV)a);
    V d = (V)(1 + SFX(cbn_vscale_)(e.p, e, 0));
    V num = CBN_V5_(mask_mul)(zv, neg, CBN_V5_(max)(zv, -amax), (V)e.p); /* -a p on neg */
    V q = CBN_V5_(div)(num, d);
    q = CBN_V5_(mask_scalef)(q, neg, q, (V)e.n);
    return (CBN_TV)CBN_V5_(mask_mov)(q, minf, (V)CBN_MV_(__builtin_nan("")));
#undef CBN_V5_
#else
    const CBN_TVI absm = (CBN_TVI){0} + CBN_M_(0x7fffffff, 0x7fffffffffffffffll);
    const CBN_TV amax = CBN_MV_(CBN_SIG_AMAX);
    CBN_TVI neg = (CBN_TVI)(z < 0);
    CBN_TV a = (CBN_TV)((CBN_TVI)z & absm);
    a = SFX(cbn_vsel_)((CBN_TVI)(a > amax), amax, a); /* NaN stays NaN */
    SFX(cbn_expneg_) e = SFX(cbn_vexpneg_)(a);
    CBN_TV d = 1 + SFX(cbn_vscale_)(e.p, e, 0);
    CBN_TV q = SFX(cbn_vsel_)(neg, -(a * e.p), z) / d;
    q = SFX(cbn_vsel_)(neg, SFX(cbn_vscale_)(q, e, 1), q);
    return SFX(cbn_vsel_)((CBN_TVI)(z == -CBN_MV_(__builtin_inf())), z - z, q);
#endif
}

/* sigmoid(w) and 1 - sigmoid(w), neither through a subtraction: with e = e^-|w|, 1 / (1 + e)
 * and e / (1 + e), one division (the second is its product with p, scaled by 2^n). */
static inline CBN_TV SFX(cbn_vsigmoid)(CBN_TV w, CBN_TV *one_minus) {
    const CBN_TVI absm = (CBN_TVI){0} + CBN_M_(0x7fffffff, 0x7fffffffffffffffll);
    const CBN_TV amax = CBN_MV_(CBN_SIG_AMAX);
    CBN_TV a = (CBN_TV)((CBN_TVI)w & absm);
    a = SFX(cbn_vsel_)((CBN_TVI)(a > amax), amax, a); /* NaN stays NaN */
    SFX(cbn_expneg_) e = SFX(cbn_vexpneg_)(a);
    CBN_TV big = 1 / (1 + SFX(cbn_vscale_)(e.p, e, 0));
    CBN_TV small = SFX(cbn_vscale_)(e.p * big, e, 1);
    CBN_TVI neg = (CBN_TVI)(w < 0);
    *one_minus = SFX(cbn_vsel_)(neg, big, small);
    return SFX(cbn_vsel_)(neg, small, big);
}

static inline CBN_TV SFX(cbn_vnormal)(CBN_TV z, CBN_TV *pdf_out) {
    const T tmax = CBN_M_(15.0f, 40.0), a1 = CBN_M_(2.5f, 3.0), cs = a1 / 2;
    const T w0 = CBN_M_(8.22222232818603516e-02f, 5.58680555555555527e-02);
    const T c_hi = CBN_M_(9.189385176e-01f, 9.1893853320467278e-01);   /* ln sqrt(2 pi) */
    const T c_lo = CBN_M_(1.563417662e-08f, -3.87829415806724145e-17);
#if CBN_TVL * 4 == CBN_VB
    static const T ms[] = {5.784303546e-01f, -2.769621015e-01f, 1.161138862e-01f,
        -4.393952712e-02f, 1.529655326e-02f, -4.964833148e-03f, 1.518171863e-03f,
        -4.371879913e-04f, 1.169948737e-04f, -3.225198452e-05f, 1.046947727e-05f,
        -2.237913122e-06f};
    static const T fl[] = {9.325829148e-01f, -6.850042939e-01f, 1.258505940e+00f,
        -3.325524092e+00f, 1.092076111e+01f, -4.106212616e+01f, 1.513139648e+02f,
        -7.535073853e+02f, 6.800197266e+03f, -2.147495508e+04f, -2.392093555e+04f,
        -7.900623750e+05f};
#else
    static const T ms[] = {5.15815638217963390e-01, -2.26276542673055137e-01,
        8.82004121041886496e-02, -3.13253081722494747e-02, 1.03031124614760359e-02,
        -3.17412789609940399e-03, 9.23653436092883241e-04, -2.55521105491607835e-04,
        6.75464726154446845e-05, -1.71334900299976994e-05, 4.18462310599521881e-06,
        -9.86956765575596590e-07, 2.25349626193864225e-07, -4.99212051302861048e-08,
        1.07474050039913188e-08, -2.25075484113240195e-09, 4.60688964282171557e-10,
        -9.30530291669024052e-11, 1.79384182696178690e-11, -3.06844717794051429e-12,
        6.13466139312797314e-13, -1.76681428916156152e-13, 2.85507794829914179e-14};
    static const T fl[] = {9.51576441331777101e-01, -7.59180226590318030e-01,
        1.57576820109887095e+00, -4.83480286822987626e+00, 1.87187374281830898e+01,
        -8.50100791005368279e+01, 4.34596174435870239e+02, -2.43689829059416206e+03,
        1.47247678199390757e+04, -9.46853359160199325e+04, 6.41902569809475564e+05,
        -4.53470323146563768e+06, 3.32303602261223122e+07, -2.68661910298763275e+08,
        2.25748403433399343e+09, -9.97133507975385666e+09, 2.72342325164402390e+10,
        -3.29245891271363867e+12, 4.23564162268497422e+13, 3.30871170195013688e+14,
        -4.90017175697967600e+15, -4.79120902745040320e+16, 5.61546758609632960e+17};
#endif
    const int deg = (int)(sizeof ms / sizeof ms[0]) - 1;
    const CBN_TVI absm = (CBN_TVI){0} + CBN_M_(0x7fffffff, 0x7fffffffffffffffll);
    CBN_TV t = (CBN_TV)((CBN_TVI)z & absm);
    t = SFX(cbn_vsel_)((CBN_TVI)(t > tmax), CBN_MV_(tmax), t); /* NaN stays NaN */

    /* phi = exp(-t^2/2 - ln sqrt(2 pi)), the exponent as the pair s + e */
    CBN_TV h, l;
    SFX(cbn_vsqr2_)(t, &h, &l);
    CBN_TV hh = h * (T)-0.5, s = hh - c_hi, bb = s - hh;        /* TwoSum(hh, -c_hi) */
    CBN_TV e = (hh - (s - bb)) - (c_hi + bb);
    CBN_TV pdf = SFX(cbn_vexp_)(s, (e + l * (T)-0.5) - c_lo, 1);

    /* the Mills ratio: one Horner polynomial, piece selected per lane */
    CBN_TVI sm = (CBN_TVI)(t < a1);
    CBN_TV us = t - cs;
    CBN_TV ulo = (CBN_TV)((CBN_TVI)(t - (us + cs)) & sm);     /* us + ulo = t - cs exactly */
    CBN_TV u = SFX(cbn_vsel_)(sm, us, 1 / (t * t) - w0);
    CBN_TV p = SFX(cbn_vsel_)(sm, CBN_MV_(ms[deg]), CBN_MV_(fl[deg]));
    for (int k = deg - 1; k >= 1; k--) /* rolled: the coefficients load from the tables */
        p = p * u + SFX(cbn_vsel_)(sm, CBN_MV_(ms[k]), CBN_MV_(fl[k]));
    /* M(us + ulo) = c0 + u p + M' ulo, M' = t M - 1; c0 + the rest is added within the
     * product with pdf (one rounding fewer at the scale of M) */
    CBN_TV c0 = SFX(cbn_vsel_)(sm, CBN_MV_(ms[0]), CBN_MV_(fl[0]));
    CBN_TV rest = u * p + (t * (c0 + u * p) - 1) * ulo;
    CBN_TV q = (pdf * c0 + pdf * rest) / SFX(cbn_vsel_)(sm, CBN_MV_(1), t); /* Phi(-t) */
    *pdf_out = pdf;
    return SFX(cbn_vsel_)((CBN_TVI)(z > 0), 1 - q, q);
}

#undef CBN_M_
#undef CBN_MV_
#endif /* CBN_VECTOR */
