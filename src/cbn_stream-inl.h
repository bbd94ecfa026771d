/* cbn_stream-inl.h: the element-wise passes with streaming stores for one element type (see
 * cbn_stream.h).  Included once per type by cbn_kernels.h, with T, SFX(name), CBN_NTV and
 * CBN_NTI (the streaming vector of T and its integer twin) and CBN_NT_STORE(p, v) defined; no
 * include guard. */

#ifdef CBN_HAVE_NT

static inline CBN_NTV SFX(cbn_nt_load)(const T *p) {
    CBN_NTV v;
    memcpy(&v, p, sizeof v);
    return v;
}
static inline CBN_NTV SFX(cbn_nt_relu)(CBN_NTV v) {
    const CBN_NTV zero = {0};
    return (CBN_NTV)((CBN_NTI)v & ~(CBN_NTI)(v < zero)); /* NaN < 0 is false: NaN stays */
}
/* One run of n elements with scalar coefficients: y = (x - hi) * sc + sh (ReLU if relu). */
static inline void SFX(cbn_affine_run_nt)(const T *restrict x, T *restrict y, ptrdiff_t n,
                                           T hi, T sc, T sh, int relu) {
    enum { VL = CBN_NT_BYTES / sizeof(T) };
    const ptrdiff_t h = CBN_NT_HEAD(y, n);
    const CBN_NTV H = (CBN_NTV){0} + hi, S = (CBN_NTV){0} + sc, B = (CBN_NTV){0} + sh;
    ptrdiff_t i = 0;
    if (relu) {
        for (; i < h; i++) { T v = CBN_NT_AFFINE_S(x[i], hi, sc, sh); y[i] = CBN_NT_RELU_S(v); }
        for (; i + VL <= n; i += VL)
            CBN_NT_STORE(y + i,
                         SFX(cbn_nt_relu)(CBN_NT_AFFINE_S(SFX(cbn_nt_load)(x + i), H, S, B)));
        for (; i < n; i++) { T v = CBN_NT_AFFINE_S(x[i], hi, sc, sh); y[i] = CBN_NT_RELU_S(v); }
    } else {
        for (; i < h; i++) y[i] = CBN_NT_AFFINE_S(x[i], hi, sc, sh);
        for (; i + VL <= n; i += VL)
            CBN_NT_STORE(y + i, CBN_NT_AFFINE_S(SFX(cbn_nt_load)(x + i), H, S, B));
        for (; i < n; i++) y[i] = CBN_NT_AFFINE_S(x[i], hi, sc, sh);
    }
}
/* One run with scalar coefficients: dx = g * k1 + (x - hi) * k2 + k3, g = dy, or dy where the
 * ReLU output ym > 0 (ym may be NULL). */
static inline void SFX(cbn_dx_run_nt)(const T *restrict dy, const T *restrict ym,
                                       const T *restrict x, T *restrict dx, ptrdiff_t n,
                                       T hi, T k1, T k2, T k3) {
    enum { VL = CBN_NT_BYTES / sizeof(T) };
    const ptrdiff_t h = CBN_NT_HEAD(dx, n);
    const CBN_NTV H = (CBN_NTV){0} + hi, K1 = (CBN_NTV){0} + k1;
    const CBN_NTV K2 = (CBN_NTV){0} + k2, K3 = (CBN_NTV){0} + k3;
    const CBN_NTV zero = {0};
    ptrdiff_t i = 0;
    if (ym) {
        for (; i < h; i++) { T g = dy[i]; g = ym[i] > 0 ? g : 0;
                             dx[i] = CBN_NT_DX_S(g, x[i], hi, k1, k2, k3); }
        for (; i + VL <= n; i += VL) {
            CBN_NTV g = SFX(cbn_nt_load)(dy + i);
            g = (CBN_NTV)((CBN_NTI)g & (CBN_NTI)(SFX(cbn_nt_load)(ym + i) > zero));
            CBN_NT_STORE(dx + i, CBN_NT_DX_S(g, SFX(cbn_nt_load)(x + i), H, K1, K2, K3));
        }
        for (; i < n; i++) { T g = dy[i]; g = ym[i] > 0 ? g : 0;
                             dx[i] = CBN_NT_DX_S(g, x[i], hi, k1, k2, k3); }
    } else {
        for (; i < h; i++) dx[i] = CBN_NT_DX_S(dy[i], x[i], hi, k1, k2, k3);
        for (; i + VL <= n; i += VL)
            CBN_NT_STORE(dx + i, CBN_NT_DX_S(SFX(cbn_nt_load)(dy + i), SFX(cbn_nt_load)(x + i),
                                      H, K1, K2, K3));
        for (; i < n; i++) dx[i] = CBN_NT_DX_S(dy[i], x[i], hi, k1, k2, k3);
    }
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
 * extended coefficients (stride C + CBN_NT_PAD): y = (x - hi) * sc + sh (ReLU if relu). */
static inline void SFX(cbn_affine_flat_nt)(const T *restrict x, T *restrict y, ptrdiff_t n,
                                            ptrdiff_t C, const T *restrict ext, int relu) {
    enum { VL = CBN_NT_BYTES / sizeof(T) };
    const T *hi = ext, *sc = ext + (C + CBN_NT_PAD), *sh = ext + 2 * (C + CBN_NT_PAD);
    const ptrdiff_t h = CBN_NT_HEAD(y, n), step = VL % C; /* c += VL, modulo C */
    ptrdiff_t i = 0, c = 0;
    for (; i < h; i++) {
        T v = CBN_NT_AFFINE_S(x[i], hi[c], sc[c], sh[c]);
        y[i] = relu ? CBN_NT_RELU_S(v) : v;
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
        if (relu) {
            for (; i + C <= n; i += C)
                for (int v = 0; v < CBN_NT_REG; v++)
                    if (v < m)
                        CBN_NT_STORE(y + i + v * VL, SFX(cbn_nt_relu)(CBN_NT_AFFINE_S(
                            SFX(cbn_nt_load)(x + i + v * VL), H[v], S[v], B[v])));
        } else {
            for (; i + C <= n; i += C)
                for (int v = 0; v < CBN_NT_REG; v++)
                    if (v < m)
                        CBN_NT_STORE(y + i + v * VL,
                                     CBN_NT_AFFINE_S(SFX(cbn_nt_load)(x + i + v * VL), H[v], S[v],
                                                     B[v]));
        }
    }
    if (relu) {
        for (; i + VL <= n; i += VL) {
            CBN_NT_STORE(y + i, SFX(cbn_nt_relu)(CBN_NT_AFFINE_S(SFX(cbn_nt_load)(x + i),
                SFX(cbn_nt_load)(hi + c), SFX(cbn_nt_load)(sc + c), SFX(cbn_nt_load)(sh + c))));
            c += step;
            if (c >= C) c -= C;
        }
    } else {
        for (; i + VL <= n; i += VL) {
            CBN_NT_STORE(y + i, CBN_NT_AFFINE_S(SFX(cbn_nt_load)(x + i), SFX(cbn_nt_load)(hi + c),
                                         SFX(cbn_nt_load)(sc + c), SFX(cbn_nt_load)(sh + c)));
            c += step;
            if (c >= C) c -= C;
        }
    }
    for (; i < n; i++) {
        T v = CBN_NT_AFFINE_S(x[i], hi[c], sc[c], sh[c]);
        y[i] = relu ? CBN_NT_RELU_S(v) : v;
        if (++c == C) c = 0;
    }
}
/* Dense channels-last block, extended coefficients [hi | k1 | k2 | k3]:
 * dx = g * k1 + (x - hi) * k2 + k3, g = dy, or dy where ym > 0 (ym may be NULL). */
static inline void SFX(cbn_dx_flat_nt)(const T *restrict dy, const T *restrict ym,
                                        const T *restrict x, T *restrict dx, ptrdiff_t n,
                                        ptrdiff_t C, const T *restrict ext) {
    enum { VL = CBN_NT_BYTES / sizeof(T) };
    const ptrdiff_t L = C + CBN_NT_PAD;
    const T *hi = ext, *k1 = ext + L, *k2 = ext + 2 * L, *k3 = ext + 3 * L;
    const ptrdiff_t h = CBN_NT_HEAD(dx, n), step = VL % C; /* c += VL, modulo C */
    const CBN_NTV zero = {0};
    ptrdiff_t i = 0, c = 0;
    for (; i < h; i++) {
        T g = dy[i];
        if (ym) g = ym[i] > 0 ? g : 0;
        dx[i] = CBN_NT_DX_S(g, x[i], hi[c], k1[c], k2[c], k3[c]);
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
        if (ym) {
            for (; i + C <= n; i += C)
                for (int v = 0; v < CBN_NT_REG; v++)
                    if (v < m) {
                        const ptrdiff_t o = i + v * VL;
                        CBN_NTV g = SFX(cbn_nt_load)(dy + o);
                        g = (CBN_NTV)((CBN_NTI)g & (CBN_NTI)(SFX(cbn_nt_load)(ym + o) > zero));
                        CBN_NT_STORE(dx + o, CBN_NT_DX_S(g, SFX(cbn_nt_load)(x + o), H[v], A1[v],
                                                  A2[v], A3[v]));
                    }
        } else {
            for (; i + C <= n; i += C)
                for (int v = 0; v < CBN_NT_REG; v++)
                    if (v < m) {
                        const ptrdiff_t o = i + v * VL;
                        CBN_NT_STORE(dx + o, CBN_NT_DX_S(SFX(cbn_nt_load)(dy + o),
                                                  SFX(cbn_nt_load)(x + o), H[v], A1[v], A2[v],
                                                  A3[v]));
                    }
        }
    }
    if (ym) {
        for (; i + VL <= n; i += VL) {
            CBN_NTV g = SFX(cbn_nt_load)(dy + i);
            g = (CBN_NTV)((CBN_NTI)g & (CBN_NTI)(SFX(cbn_nt_load)(ym + i) > zero));
            CBN_NT_STORE(dx + i, CBN_NT_DX_S(g, SFX(cbn_nt_load)(x + i), SFX(cbn_nt_load)(hi + c),
                                      SFX(cbn_nt_load)(k1 + c), SFX(cbn_nt_load)(k2 + c),
                                      SFX(cbn_nt_load)(k3 + c)));
            c += step;
            if (c >= C) c -= C;
        }
    } else {
        for (; i + VL <= n; i += VL) {
            CBN_NT_STORE(dx + i, CBN_NT_DX_S(SFX(cbn_nt_load)(dy + i), SFX(cbn_nt_load)(x + i),
                                      SFX(cbn_nt_load)(hi + c), SFX(cbn_nt_load)(k1 + c),
                                      SFX(cbn_nt_load)(k2 + c), SFX(cbn_nt_load)(k3 + c)));
            c += step;
            if (c >= C) c -= C;
        }
    }
    for (; i < n; i++) {
        T g = dy[i];
        if (ym) g = ym[i] > 0 ? g : 0;
        dx[i] = CBN_NT_DX_S(g, x[i], hi[c], k1[c], k2[c], k3[c]);
        if (++c == C) c = 0;
    }
}

#else /* no streaming stores on this target: the callers never take these paths */

static inline void SFX(cbn_affine_run_nt)(const T *x, T *y, ptrdiff_t n, T hi, T sc, T sh,
                                           int relu) {
    for (ptrdiff_t i = 0; i < n; i++) {
        T v = (x[i] - hi) * sc + sh;
        y[i] = relu && v < 0 ? 0 : v;
    }
}
static inline void SFX(cbn_dx_run_nt)(const T *dy, const T *ym, const T *x, T *dx,
                                       ptrdiff_t n, T hi, T k1, T k2, T k3) {
    for (ptrdiff_t i = 0; i < n; i++) {
        T g = dy[i];
        if (ym) g = ym[i] > 0 ? g : 0;
        dx[i] = g * k1 + (x[i] - hi) * k2 + k3;
    }
}
static inline void SFX(cbn_nt_extend)(const T *coef, ptrdiff_t C, int k, T *out) {
    for (int v = 0; v < k; v++)
        for (ptrdiff_t j = 0; j < C + CBN_NT_PAD; j++)
            out[v * (C + CBN_NT_PAD) + j] = coef[v * C + j % C];
}
static inline void SFX(cbn_affine_flat_nt)(const T *x, T *y, ptrdiff_t n, ptrdiff_t C,
                                            const T *ext, int relu) {
    const ptrdiff_t L = C + CBN_NT_PAD;
    for (ptrdiff_t i = 0; i < n; i++) {
        ptrdiff_t c = i % C;
        T v = (x[i] - ext[c]) * ext[L + c] + ext[2 * L + c];
        y[i] = relu && v < 0 ? 0 : v;
    }
}
static inline void SFX(cbn_dx_flat_nt)(const T *dy, const T *ym, const T *x, T *dx,
                                        ptrdiff_t n, ptrdiff_t C, const T *ext) {
    const ptrdiff_t L = C + CBN_NT_PAD;
    for (ptrdiff_t i = 0; i < n; i++) {
        ptrdiff_t c = i % C;
        T g = dy[i];
        if (ym) g = ym[i] > 0 ? g : 0;
        dx[i] = g * ext[L + c] + (x[i] - ext[c]) * ext[2 * L + c] + ext[3 * L + c];
    }
}

#endif /* CBN_HAVE_NT */
