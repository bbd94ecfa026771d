/* cbn_reduce-inl.h: the reductions along a channel-major run (sums, shifted sums, backward
 * sums) for one element type.  Included once per type by cbn_kernels.h, with T (float or
 * double; TS, the data's type in memory) and SFX(name) defined; no include guard.
 *
 * Each reduction keeps 8 lanes of partial sums in a fixed order (cbn_simd.h), so every SIMD
 * level sums in the same order; all sums are accumulated in double. */

#ifdef CBN_VECTOR
/* 8 lanes of the upstream gradient at dy + i through the activation whose output is ym
 * (cbn_epilogue.h; ym is never read without an activation) */
static inline cbn_v8d SFX(cbn_g8)(const TS *dy, const TS *ym, ptrdiff_t i, const int act) {
    return act == CBN_ACT_NONE ? SFX(cbn_load8)(dy + i)
                               : cbn_act_grad8(SFX(cbn_load8)(dy + i), SFX(cbn_load8)(ym + i), act);
}

/* sum of x[0:n] */
static inline double SFX(cbn_sum)(const TS *x, ptrdiff_t n) {
    cbn_v8d a0 = cbn_v8_zero(), a1 = a0, a2 = a0, a3 = a0;
    ptrdiff_t i = 0;
    for (; i + 32 <= n; i += 32) {
        a0 = cbn_v8_add(a0, SFX(cbn_load8)(x + i));
        a1 = cbn_v8_add(a1, SFX(cbn_load8)(x + i + 8));
        a2 = cbn_v8_add(a2, SFX(cbn_load8)(x + i + 16));
        a3 = cbn_v8_add(a3, SFX(cbn_load8)(x + i + 24));
    }
    for (; i + 8 <= n; i += 8) a0 = cbn_v8_add(a0, SFX(cbn_load8)(x + i));
    double s = cbn_hsum8(cbn_v8_add(cbn_v8_add(a0, a1), cbn_v8_add(a2, a3)));
    for (; i < n; i++) s += (double)CBN_LD(x[i]);
    return s;
}
/* sum of dy in exactly the order cbn_sum_dot uses for its first sum, added to *sdy: dbias is
 * then bit-identical whether or not dweight/dx are computed too */
static inline void SFX(cbn_sum_like_dot)(const TS *dy, const TS *ym, ptrdiff_t n, double *sdy,
                                         const int act) {
    cbn_v8d s0 = cbn_v8_zero(), s1 = s0;
    ptrdiff_t i = 0;
    for (; i + 16 <= n; i += 16) {
        s0 = cbn_v8_add(s0, SFX(cbn_g8)(dy, ym, i, act));
        s1 = cbn_v8_add(s1, SFX(cbn_g8)(dy, ym, i + 8, act));
    }
    for (; i + 8 <= n; i += 8) s0 = cbn_v8_add(s0, SFX(cbn_g8)(dy, ym, i, act));
    double a = cbn_hsum8(cbn_v8_add(s0, s1));
    for (; i < n; i++) a += SFX(cbn_grad_d)(dy, ym, i, act);
    *sdy += a;
}
/* sum of dy and of dy * (x - m) over [0:n], added to *sdy and *sdyx */
static inline void SFX(cbn_sum_dot)(const TS *dy, const TS *ym, const TS *x, ptrdiff_t n,
                                     double m, double *sdy, double *sdyx, const int act) {
    cbn_v8d s0 = cbn_v8_zero(), s1 = s0, p0 = s0, p1 = s0;
    const cbn_v8d mv = cbn_v8_set1(m);
    CBN_ONE_INIT(one);
    ptrdiff_t i = 0;
    for (; i + 16 <= n; i += 16) {
        cbn_v8d g0 = SFX(cbn_g8)(dy, ym, i, act), g1 = SFX(cbn_g8)(dy, ym, i + 8, act);
        s0 = cbn_v8_add(s0, g0); s1 = CBN_V8_ADD_ON_FMA(s1, g1, one);
        p0 = cbn_v8_madd(p0, g0, CBN_V8_SUB_ON_FMA(SFX(cbn_load8)(x + i), mv, one));
        p1 = cbn_v8_madd(p1, g1, CBN_V8_SUB_ON_FMA(SFX(cbn_load8)(x + i + 8), mv, one));
    }
    for (; i + 8 <= n; i += 8) {
        cbn_v8d g = SFX(cbn_g8)(dy, ym, i, act);
        s0 = cbn_v8_add(s0, g); p0 = cbn_v8_madd(p0, g, cbn_v8_sub(SFX(cbn_load8)(x + i), mv));
    }
    double a = cbn_hsum8(cbn_v8_add(s0, s1)), b = cbn_hsum8(cbn_v8_add(p0, p1));
    for (; i < n; i++) { double g = SFX(cbn_grad_d)(dy, ym, i, act); a += g; b += g * ((double)CBN_LD(x[i]) - m); }
    *sdy += a; *sdyx += b;
}
/* cbn_shifted_sums over many short runs of one channel, into 8-lane partials s1_8, s2_8 (no
 * horizontal sum per run: cbn_hsum8_array of each at the end of the block gives the sums); the
 * n % 8 trailing elements are added as one zero-padded vector with the padding lanes masked
 * (their x - k would be -k). */
static inline void SFX(cbn_shifted_sums8)(const TS *x, ptrdiff_t n, double k, double *s1_8,
                                           double *s2_8) {
    cbn_v8d a0 = cbn_load8_f64(s1_8), a1 = cbn_v8_zero(), q0 = cbn_load8_f64(s2_8), q1 = a1;
    const cbn_v8d kv = cbn_v8_set1(k);
    CBN_ONE_INIT(one);
    ptrdiff_t i = 0;
    for (; i + 16 <= n; i += 16) {
        cbn_v8d d0 = CBN_V8_SUB_ON_FMA(SFX(cbn_load8)(x + i), kv, one);
        cbn_v8d d1 = CBN_V8_SUB_ON_FMA(SFX(cbn_load8)(x + i + 8), kv, one);
        a0 = cbn_v8_add(a0, d0); a1 = cbn_v8_add(a1, d1);
        q0 = cbn_v8_madd(q0, d0, d0); q1 = cbn_v8_madd(q1, d1, d1);
    }
    for (; i + 8 <= n; i += 8) {
        cbn_v8d d = cbn_v8_sub(SFX(cbn_load8)(x + i), kv);
        a0 = cbn_v8_add(a0, d); q0 = cbn_v8_madd(q0, d, d);
    }
    if (i < n) {
        const int m = (int)(n - i);
        cbn_v8d d = cbn_v8_first(cbn_v8_sub(SFX(cbn_load8_tail)(x + i, m), kv), m);
        a0 = cbn_v8_add(a0, d); q0 = cbn_v8_madd(q0, d, d);
    }
    cbn_store8_f64(s1_8, cbn_v8_add(a0, a1));
    cbn_store8_f64(s2_8, cbn_v8_add(q0, q1));
}
/* shifted sums over x[0:n]: *s1 += sum(x - k), *s2 += sum((x - k)^2).  With k an element of
 * the same block, the cancellation in s2 - s1^2/n is bounded by a factor n + 1.           */
static inline void SFX(cbn_shifted_sums)(const TS *x, ptrdiff_t n, double k,
                                          double *s1, double *s2) {
    double a8[8] = {0}, q8[8] = {0};
    SFX(cbn_shifted_sums8)(x, n, k, a8, q8);
    *s1 += cbn_hsum8_array(a8);
    *s2 += cbn_hsum8_array(q8);
}
/* The same sums over many short runs of one channel, into 8-lane partials (no horizontal sum
 * per run: cbn_hsum8 of the partials at the end gives the totals).  sdy8 += lanes of g,
 * sdyx8 += lanes of g * (x - m) (sdyx8 NULL: only the first); the n % 8 trailing elements are
 * added as one zero-padded vector.  The g lanes are added in the same order with or without
 * sdyx8, so the sums of g agree bit for bit. */
static inline void SFX(cbn_sum_dot8)(const TS *dy, const TS *ym, const TS *x, ptrdiff_t n,
                                      double m, double *sdy8, double *sdyx8, const int act) {
    cbn_v8d s0 = cbn_load8_f64(sdy8), s1 = cbn_v8_zero(), p0 = s1, p1 = s1;
    const cbn_v8d mv = cbn_v8_set1(m);
    CBN_ONE_INIT(one);
    ptrdiff_t i = 0;
    if (sdyx8) p0 = cbn_load8_f64(sdyx8);
    for (; i + 16 <= n; i += 16) {
        cbn_v8d g0 = SFX(cbn_g8)(dy, ym, i, act), g1 = SFX(cbn_g8)(dy, ym, i + 8, act);
        s0 = cbn_v8_add(s0, g0); s1 = CBN_V8_ADD_ON_FMA(s1, g1, one);
        if (sdyx8) {
            p0 = cbn_v8_madd(p0, g0, CBN_V8_SUB_ON_FMA(SFX(cbn_load8)(x + i), mv, one));
            p1 = cbn_v8_madd(p1, g1, CBN_V8_SUB_ON_FMA(SFX(cbn_load8)(x + i + 8), mv, one));
        }
    }
    for (; i + 8 <= n; i += 8) {
        cbn_v8d g = SFX(cbn_g8)(dy, ym, i, act);
        s0 = cbn_v8_add(s0, g);
        if (sdyx8) p0 = cbn_v8_madd(p0, g, CBN_V8_SUB_ON_FMA(SFX(cbn_load8)(x + i), mv, one));
    }
    if (i < n) { /* the n - i < 8 trailing elements as one zero-padded vector */
        const int k = (int)(n - i);
        cbn_v8d g = SFX(cbn_load8_tail)(dy + i, k);
        if (act != CBN_ACT_NONE) g = cbn_act_grad8(g, SFX(cbn_load8_tail)(ym + i, k), act);
        s0 = cbn_v8_add(s0, g);
        if (sdyx8) { /* padding lanes: g = 0 times d = 0 (x - m could be inf or NaN) */
            cbn_v8d d = CBN_V8_SUB_ON_FMA(SFX(cbn_load8_tail)(x + i, k), mv, one);
            p0 = cbn_v8_madd(p0, g, cbn_v8_first(d, k));
        }
    }
    cbn_store8_f64(sdy8, cbn_v8_add(s0, s1));
    if (sdyx8) cbn_store8_f64(sdyx8, cbn_v8_add(p0, p1));
}

#else /* portable scalar fallback with the same semantics */

static inline double SFX(cbn_sum)(const TS *x, ptrdiff_t n) {
    double s0 = 0, s1 = 0, s2 = 0, s3 = 0; ptrdiff_t i = 0;
    for (; i + 4 <= n; i += 4) { s0 += CBN_LD(x[i]); s1 += CBN_LD(x[i + 1]); s2 += CBN_LD(x[i + 2]); s3 += CBN_LD(x[i + 3]); }
    double s = (s0 + s2) + (s1 + s3);
    for (; i < n; i++) s += (double)CBN_LD(x[i]);
    return s;
}
static inline void SFX(cbn_shifted_sums)(const TS *x, ptrdiff_t n, double k,
                                          double *s1, double *s2) {
    double a = 0, q = 0;
    for (ptrdiff_t i = 0; i < n; i++) { double d = (double)CBN_LD(x[i]) - k; a += d; q += d * d; }
    *s1 += a; *s2 += q;
}
static inline void SFX(cbn_sum_like_dot)(const TS *dy, const TS *ym, ptrdiff_t n, double *sdy,
                                         const int act) {
    double a = 0; for (ptrdiff_t i = 0; i < n; i++) a += SFX(cbn_grad_d)(dy, ym, i, act);
    *sdy += a;
}
static inline void SFX(cbn_sum_dot)(const TS *dy, const TS *ym, const TS *x, ptrdiff_t n,
                                     double m, double *sdy, double *sdyx, const int act) {
    double a = 0, b = 0;
    for (ptrdiff_t i = 0; i < n; i++) {
        double g = SFX(cbn_grad_d)(dy, ym, i, act); a += g; b += g * ((double)CBN_LD(x[i]) - m);
    }
    *sdy += a; *sdyx += b;
}
static inline void SFX(cbn_shifted_sums8)(const TS *x, ptrdiff_t n, double k, double *s1_8,
                                           double *s2_8) {
    for (ptrdiff_t i = 0; i < n; i++) {
        double d = (double)CBN_LD(x[i]) - k;
        s1_8[i % 8] += d;
        s2_8[i % 8] += d * d;
    }
}
static inline void SFX(cbn_sum_dot8)(const TS *dy, const TS *ym, const TS *x, ptrdiff_t n,
                                      double m, double *sdy8, double *sdyx8, const int act) {
    for (ptrdiff_t i = 0; i < n; i++) {
        double g = SFX(cbn_grad_d)(dy, ym, i, act);
        sdy8[i % 8] += g;
        if (sdyx8) sdyx8[i % 8] += g * ((double)CBN_LD(x[i]) - m);
    }
}

#endif /* CBN_VECTOR */
