/* Harness of src/cbn_math-inl.h: run_f32/_f64 evaluate op 0 exp, 1 Phi, 2 phi over an array;
 * time_f32/_f64 the timing loop of bench.c.  Built by drive.py at each SIMD level. */
#include "cbn_simd.h"
#define T float
#define SFX(name) name##_f32
#define CBN_TV cbn_vf
#define CBN_TVI cbn_vi
#define CBN_TVL (CBN_VB / 4)
#include "cbn_math-inl.h"
#undef T
#undef SFX
#undef CBN_TV
#undef CBN_TVI
#undef CBN_TVL
#define T double
#define SFX(name) name##_f64
#define CBN_TV cbn_vd
#define CBN_TVI cbn_vl
#define CBN_TVL (CBN_VB / 8)
#include "cbn_math-inl.h"

/* op 0: exp, 1: Phi, 2: phi; n a multiple of nothing (tail via a padded copy) */
#define DEF(sfx, TT, TV, L)                                                                   \
void run##sfx(int op, const TT *x, TT *y, long n) {                                          \
    long i = 0;                                                                              \
    for (; i < n; i += L) {                                                                  \
        TT b[L], o[L]; int k = n - i < L ? (int)(n - i) : L;                                  \
        for (int j = 0; j < L; j++) b[j] = j < k ? x[i + j] : 0;                              \
        TV v, r, d; memcpy(&v, b, sizeof v);                                                  \
        if (op == 0) r = cbn_vexp##sfx(v);                                                    \
        else { r = cbn_vnormal##sfx(v, &d); if (op == 2) r = d; }                             \
        memcpy(o, &r, sizeof r);                                                              \
        for (int j = 0; j < k; j++) y[i + j] = o[j];                                          \
    }                                                                                        \
}
DEF(_f32, float, cbn_vf, CBN_VB / 4)
DEF(_f64, double, cbn_vd, CBN_VB / 8)

/* timing: reps passes over x (n a multiple of the lanes), op as above; returns sum to keep it */
#define TIM(sfx, TT, TV, L)                                                                   \
double time##sfx(int op, const TT *x, TT *y, long n, int reps) {                             \
    for (int r = 0; r < reps; r++)                                                           \
        for (long i = 0; i < n; i += L) {                                                    \
            TV v, o, d; memcpy(&v, x + i, sizeof v);                                          \
            if (op == 0) o = cbn_vexp##sfx(v);                                                \
            else { o = cbn_vnormal##sfx(v, &d); o += d; }                                     \
            memcpy(y + i, &o, sizeof o);                                                      \
        }                                                                                    \
    return y[0];                                                                             \
}
TIM(_f32, float, cbn_vf, CBN_VB / 4)
TIM(_f64, double, cbn_vd, CBN_VB / 8)
