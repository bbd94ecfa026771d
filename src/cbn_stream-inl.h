/* cbn_stream-inl.h: the element-wise passes with streaming stores for one element type (see
 * cbn_stream.h).  Included once per type by cbn_families-inl.h, with T, SFX(name), CBN_NTV and
 * CBN_NTI (the streaming vector of T and its integer twin) and CBN_NT_STORE(p, v) defined; no
 * include guard.  Each pass is written once over a constant activation act (the `_act` bodies,
 * always inlined) and instantiated per activation by CBN_FOR_ACT (cbn_epilogue.h). */

#if defined(CBN_HAVE_NT) && !CBN_HALF

#define CBN_NT_INLINE static inline __attribute__((always_inline))

static inline CBN_NTV SFX(cbn_nt_load)(const T *p) {
    CBN_NTV v;
    memcpy(&v, p, sizeof v);
    return v;
}
/* dy through the activation at i, scalar and vector (ym is never read without one) */
#define CBN_NT_G_S(i) (act ? SFX(cbn_act_grad)(dy[i], ym[i], act) : dy[i])
#define CBN_NT_G_V(i)                                                                            \
    (act ? SFX(cbn_act_grad_nt)(SFX(cbn_nt_load)(dy + (i)), SFX(cbn_nt_load)(ym + (i)), act)     \
         : SFX(cbn_nt_load)(dy + (i)))

/* One run of n elements with scalar coefficients: y = act((x - hi) * sc + sh). */
CBN_NT_INLINE void SFX(cbn_affine_run_nt_act)(const T *restrict x, T *restrict y, ptrdiff_t n,
                                              T hi, T sc, T sh, const int act) {
    enum { VL = CBN_NT_BYTES / sizeof(T) };
    const ptrdiff_t h = CBN_NT_HEAD(y, n);
    const CBN_NTV H = (CBN_NTV){0} + hi, S = (CBN_NTV){0} + sc, B = (CBN_NTV){0} + sh;
    ptrdiff_t i = 0;
    for (; i < h; i++) y[i] = SFX(cbn_act)(CBN_NT_AFFINE_S(x[i], hi, sc, sh), act);
    for (; i + VL <= n; i += VL)
        CBN_NT_STORE(y + i, SFX(cbn_act_nt)(CBN_NT_AFFINE_S(SFX(cbn_nt_load)(x + i), H, S, B),
                                            act));
    for (; i < n; i++) y[i] = SFX(cbn_act)(CBN_NT_AFFINE_S(x[i], hi, sc, sh), act);
}
static inline void SFX(cbn_affine_run_nt)(const T *restrict x, T *restrict y, ptrdiff_t n,
                                           T hi, T sc, T sh, int act) {
    CBN_FOR_ACT(act, SFX(cbn_affine_run_nt_act)(x, y, n, hi, sc, sh, a_));
}
/* One run with scalar coefficients: dx = g * k1 + (x - hi) * k2 + k3, g = dy through the
 * activation act whose output is ym. */
CBN_NT_INLINE void SFX(cbn_dx_run_nt_act)(const T *restrict dy, const T *restrict ym,
                                          const T *restrict x, T *restrict dx, ptrdiff_t n,
                                          T hi, T k1, T k2, T k3, const int act) {
    enum { VL = CBN_NT_BYTES / sizeof(T) };
    const ptrdiff_t h = CBN_NT_HEAD(dx, n);
    const CBN_NTV H = (CBN_NTV){0} + hi, K1 = (CBN_NTV){0} + k1;
    const CBN_NTV K2 = (CBN_NTV){0} + k2, K3 = (CBN_NTV){0} + k3;
    ptrdiff_t i = 0;
    for (; i < h; i++) dx[i] = CBN_NT_DX_S(CBN_NT_G_S(i), x[i], hi, k1, k2, k3);
    for (; i + VL <= n; i += VL)
        CBN_NT_STORE(dx + i, CBN_NT_DX_S(CBN_NT_G_V(i), SFX(cbn_nt_load)(x + i), H, K1, K2, K3));
    for (; i < n; i++) dx[i] = CBN_NT_DX_S(CBN_NT_G_S(i), x[i], hi, k1, k2, k3);
}
static inline void SFX(cbn_dx_run_nt)(const T *restrict dy, const T *restrict ym,
                                       const T *restrict x, T *restrict dx, ptrdiff_t n,
                                       T hi, T k1, T k2, T k3, int act) {
    CBN_FOR_ACT(act, SFX(cbn_dx_run_nt_act)(dy, ym, x, dx, n, hi, k1, k2, k3, a_));
}
/* Extended coefficients: out holds k vectors of C + CBN_NT_PAD entries, vector v being
 * coef[v * C + (j mod C)] for j < C + CBN_NT_PAD. */
static inline void SFX(cbn_nt_extend)(const T *restrict coef, ptrdiff_t C, int k,
                                       T *restrict out) {
    for (int v = 0; v < k; v++)
        for (ptrdiff_t j = 0; j < C + CBN_NT_PAD; j++)
            out[v * (C + CBN_NT_PAD) + j] = coef[v * C + j % C];
}
/* Dense channels-last block of n elements whose first element is column 0, per-channel
 * extended coefficients (stride C + CBN_NT_PAD): y = act((x - hi) * sc + sh). */
CBN_NT_INLINE void SFX(cbn_affine_flat_nt_act)(const T *restrict x, T *restrict y, ptrdiff_t n,
                                               ptrdiff_t C, const T *restrict ext,
                                               const int act) {
    enum { VL = CBN_NT_BYTES / sizeof(T) };
    const T *hi = ext, *sc = ext + (C + CBN_NT_PAD), *sh = ext + 2 * (C + CBN_NT_PAD);
    const ptrdiff_t h = CBN_NT_HEAD(y, n), step = VL % C; /* c += VL, modulo C */
    ptrdiff_t i = 0, c = 0;
    for (; i < h; i++) {
        y[i] = SFX(cbn_act)(CBN_NT_AFFINE_S(x[i], hi[c], sc[c], sh[c]), act);
        if (++c == C) c = 0;
    }
    if (C % VL == 0 && C / VL <= CBN_NT_REG) { /* whole periods of C / VL vectors */
        const int m = (int)(C / VL);
        CBN_NTV H[CBN_NT_REG], S[CBN_NT_REG], B[CBN_NT_REG];
        for (int v = 0; v < CBN_NT_REG; v++)
            if (v < m) {
                const ptrdiff_t cv = c + v * VL < C ? c + v * VL : c + v * VL - C;
                H[v] = SFX(cbn_nt_load)(hi + cv);
                S[v] = SFX(cbn_nt_load)(sc + cv);
                B[v] = SFX(cbn_nt_load)(sh + cv);
            }
        for (; i + C <= n; i += C)
            for (int v = 0; v < CBN_NT_REG; v++)
                if (v < m)
                    CBN_NT_STORE(y + i + v * VL,
                                 SFX(cbn_act_nt)(CBN_NT_AFFINE_S(SFX(cbn_nt_load)(x + i + v * VL),
                                                                 H[v], S[v], B[v]), act));
    }
    for (; i + VL <= n; i += VL) {
        CBN_NT_STORE(y + i, SFX(cbn_act_nt)(CBN_NT_AFFINE_S(SFX(cbn_nt_load)(x + i),
                                                            SFX(cbn_nt_load)(hi + c),
                                                            SFX(cbn_nt_load)(sc + c),
                                                            SFX(cbn_nt_load)(sh + c)), act));
        c += step;
        if (c >= C) c -= C;
    }
    for (; i < n; i++) {
        y[i] = SFX(cbn_act)(CBN_NT_AFFINE_S(x[i], hi[c], sc[c], sh[c]), act);
        if (++c == C) c = 0;
    }
}
static inline void SFX(cbn_affine_flat_nt)(const T *restrict x, T *restrict y, ptrdiff_t n,
                                            ptrdiff_t C, const T *restrict ext, int act) {
    CBN_FOR_ACT(act, SFX(cbn_affine_flat_nt_act)(x, y, n, C, ext, a_));
}
/* Dense channels-last block, extended coefficients [hi | k1 | k2 | k3]:
 * dx = g * k1 + (x - hi) * k2 + k3, g = dy through the activation act whose output is ym. */
CBN_NT_INLINE void SFX(cbn_dx_flat_nt_act)(const T *restrict dy, const T *restrict ym,
                                           const T *restrict x, T *restrict dx, ptrdiff_t n,
                                           ptrdiff_t C, const T *restrict ext, const int act) {
    enum { VL = CBN_NT_BYTES / sizeof(T) };
    const ptrdiff_t L = C + CBN_NT_PAD;
    const T *hi = ext, *k1 = ext + L, *k2 = ext + 2 * L, *k3 = ext + 3 * L;
    const ptrdiff_t h = CBN_NT_HEAD(dx, n), step = VL % C; /* c += VL, modulo C */
    ptrdiff_t i = 0, c = 0;
    for (; i < h; i++) {
        dx[i] = CBN_NT_DX_S(CBN_NT_G_S(i), x[i], hi[c], k1[c], k2[c], k3[c]);
        if (++c == C) c = 0;
    }
    if (C % VL == 0 && C / VL <= CBN_NT_REG) { /* whole periods of C / VL vectors */
        const int m = (int)(C / VL);
        CBN_NTV H[CBN_NT_REG], A1[CBN_NT_REG], A2[CBN_NT_REG], A3[CBN_NT_REG];
        for (int v = 0; v < CBN_NT_REG; v++)
            if (v < m) {
                const ptrdiff_t cv = c + v * VL < C ? c + v * VL : c + v * VL - C;
                H[v] = SFX(cbn_nt_load)(hi + cv);
                A1[v] = SFX(cbn_nt_load)(k1 + cv);
                A2[v] = SFX(cbn_nt_load)(k2 + cv);
                A3[v] = SFX(cbn_nt_load)(k3 + cv);
            }
        for (; i + C <= n; i += C)
            for (int v = 0; v < CBN_NT_REG; v++)
                if (v < m) {
                    const ptrdiff_t o = i + v * VL;
                    CBN_NT_STORE(dx + o, CBN_NT_DX_S(CBN_NT_G_V(o), SFX(cbn_nt_load)(x + o), H[v],
                                                     A1[v], A2[v], A3[v]));
                }
    }
    for (; i + VL <= n; i += VL) {
        CBN_NT_STORE(dx + i, CBN_NT_DX_S(CBN_NT_G_V(i), SFX(cbn_nt_load)(x + i),
                                         SFX(cbn_nt_load)(hi + c), SFX(cbn_nt_load)(k1 + c),
                                         SFX(cbn_nt_load)(k2 + c), SFX(cbn_nt_load)(k3 + c)));
        c += step;
        if (c >= C) c -= C;
    }
    for (; i < n; i++) {
        dx[i] = CBN_NT_DX_S(CBN_NT_G_S(i), x[i], hi[c], k1[c], k2[c], k3[c]);
        if (++c == C) c = 0;
    }
}
static inline void SFX(cbn_dx_flat_nt)(const T *restrict dy, const T *restrict ym,
                                        const T *restrict x, T *restrict dx, ptrdiff_t n,
                                        ptrdiff_t C, const T *restrict ext, int act) {
    CBN_FOR_ACT(act, SFX(cbn_dx_flat_nt_act)(dy, ym, x, dx, n, C, ext, a_));
}

#undef CBN_NT_INLINE
#undef CBN_NT_G_S
#undef CBN_NT_G_V

#else /* no streaming stores on this target, or a 16-bit format: the callers never take these
       * paths (the extension of the coefficients is used by the post stage's rows) */

static inline void SFX(cbn_affine_run_nt)(const TS *x, TS *y, ptrdiff_t n, T hi, T sc, T sh,
                                           int act) {
    for (ptrdiff_t i = 0; i < n; i++)
        y[i] = CBN_ST(SFX(cbn_act)((CBN_LD(x[i]) - hi) * sc + sh, act));
}
static inline void SFX(cbn_dx_run_nt)(const TS *dy, const TS *ym, const TS *x, TS *dx,
                                       ptrdiff_t n, T hi, T k1, T k2, T k3, int act) {
    for (ptrdiff_t i = 0; i < n; i++) {
        T g = act ? SFX(cbn_act_grad)(CBN_LD(dy[i]), CBN_LD(ym[i]), act) : CBN_LD(dy[i]);
        dx[i] = CBN_ST(g * k1 + (CBN_LD(x[i]) - hi) * k2 + k3);
    }
}
static inline void SFX(cbn_nt_extend)(const T *coef, ptrdiff_t C, int k, T *out) {
    for (int v = 0; v < k; v++)
        for (ptrdiff_t j = 0; j < C + CBN_NT_PAD; j++)
            out[v * (C + CBN_NT_PAD) + j] = coef[v * C + j % C];
}
static inline void SFX(cbn_affine_flat_nt)(const TS *x, TS *y, ptrdiff_t n, ptrdiff_t C,
                                            const T *ext, int act) {
    const ptrdiff_t L = C + CBN_NT_PAD;
    for (ptrdiff_t i = 0; i < n; i++) {
        ptrdiff_t c = i % C;
        y[i] = CBN_ST(SFX(cbn_act)((CBN_LD(x[i]) - ext[c]) * ext[L + c] + ext[2 * L + c], act));
    }
}
static inline void SFX(cbn_dx_flat_nt)(const TS *dy, const TS *ym, const TS *x, TS *dx,
                                        ptrdiff_t n, ptrdiff_t C, const T *ext, int act) {
    const ptrdiff_t L = C + CBN_NT_PAD;
    for (ptrdiff_t i = 0; i < n; i++) {
        ptrdiff_t c = i % C;
        T g = act ? SFX(cbn_act_grad)(CBN_LD(dy[i]), CBN_LD(ym[i]), act) : CBN_LD(dy[i]);
        dx[i] = CBN_ST(g * ext[L + c] + (CBN_LD(x[i]) - ext[c]) * ext[2 * L + c]
                       + ext[3 * L + c]);
    }
}

#endif /* CBN_HAVE_NT && !CBN_HALF */
