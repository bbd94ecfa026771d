/* cbn_math-inl.h: elementary functions on native vectors for the post-operation activations
 * (cbn_post-inl.h), for one element type.  Included once per type by cbn_families-inl.h; no
 * include guard.  Interim form: lane by lane through libm in double (correctly rounded for
 * float, libm's accuracy for double); the vectorised polynomial forms replace it. */
#include <math.h>

#ifdef CBN_VECTOR
/* e^x per lane */
static inline CBN_TV SFX(cbn_vexp)(CBN_TV x) {
    CBN_TV r;
    for (int l = 0; l < (int)(CBN_TVL); l++) r[l] = (T)exp((double)x[l]);
    return r;
}
/* Phi(z), the standard normal CDF, per lane; *pdf_out = phi(z) = exp(-z^2/2) / sqrt(2 pi) */
static inline CBN_TV SFX(cbn_vnormal)(CBN_TV z, CBN_TV *pdf_out) {
    CBN_TV c, d;
    for (int l = 0; l < (int)(CBN_TVL); l++) {
        double v = (double)z[l];
        c[l] = (T)(0.5 * erfc(-v * 0.70710678118654752440));
        d[l] = (T)(0.39894228040143267794 * exp(-0.5 * v * v));
    }
    *pdf_out = d;
    return c;
}
#endif
