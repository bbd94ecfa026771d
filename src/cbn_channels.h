/* cbn_channels.h: the per-channel set-up loops of the compile-once module (_core.pyx), cloned
 * per instruction set.
 *
 * Why: _core is compiled once for the baseline target, but its per-channel loops (widening the
 * parameter vectors, the inference scale weight / sqrt(var + eps)) run over every channel of
 * every call; at SSE2 width a 2048-channel batch-1 inference spent ~3 us more in them than when
 * they were compiled per level.  GCC's target_clones compiles each loop for x86-64-v4, v3 and
 * the baseline and picks one at load time (an ifunc), so they stay compiled once in the source
 * and in the build.  Widening is exact and sqrt and division are correctly rounded, and _core is
 * compiled without FMA contraction: every clone gives the same bits.
 */
#ifndef CBN_CHANNELS_H
#define CBN_CHANNELS_H

#include <math.h>
#include <stddef.h>

#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && defined(__linux__)
#define CBN_CLONED __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define CBN_CLONED
#endif

/* out[c] = (double)a[c] */
CBN_CLONED static void cbn_widen_f32(const float *a, ptrdiff_t C, double *out) {
    for (ptrdiff_t c = 0; c < C; c++) out[c] = (double)a[c];
}

/* out[c] = value */
CBN_CLONED static void cbn_fill_f64(double value, ptrdiff_t C, double *out) {
    for (ptrdiff_t c = 0; c < C; c++) out[c] = value;
}

/* how many of v[0:C] are below zero (NaN is not: _core.pyx's _variance_ok) */
CBN_CLONED static ptrdiff_t cbn_count_negative(const double *v, ptrdiff_t C) {
    ptrdiff_t n = 0;
    for (ptrdiff_t c = 0; c < C; c++) n += v[c] < 0.0;
    return n;
}

/* The evaluation-mode scale weight / sqrt(var + eps), in float64 (the one formula: _core.pyx's
 * _inference_scale), in place over the weights: IN/OUT w, IN var. */
static inline double cbn_inference_scale(double weight, double var, double eps) {
    return weight / sqrt(var + eps);
}
CBN_CLONED static void cbn_inference_scales(double *w, const double *var, ptrdiff_t C,
                                            double eps) {
    for (ptrdiff_t c = 0; c < C; c++) w[c] = cbn_inference_scale(w[c], var[c], eps);
}

/* Rule of skip_nonfinite: a channel whose batch mean or variance is NaN/Inf keeps its running
 * statistics (_core.pyx's _keeps_running). */
static inline int cbn_keeps_running(double mean, double var) {
    return !(isfinite(mean) && isfinite(var));
}

/* The running-statistic update of the C route, in place: a = (1 - m) * a + m * (batch * f) in
 * float64, stored in a's type; with skip, the channels cbn_keeps_running keep their value. */
CBN_CLONED static void cbn_ema_f32(float *a, const double *batch, double f, ptrdiff_t C, double m,
                                   const double *mean, const double *var, int skip) {
    for (ptrdiff_t c = 0; c < C; c++) {
        if (skip && cbn_keeps_running(mean[c], var[c])) continue;
        a[c] = (float)((1.0 - m) * (double)a[c] + m * (batch[c] * f));
    }
}
CBN_CLONED static void cbn_ema_f64(double *a, const double *batch, double f, ptrdiff_t C,
                                   double m, const double *mean, const double *var, int skip) {
    for (ptrdiff_t c = 0; c < C; c++) {
        if (skip && cbn_keeps_running(mean[c], var[c])) continue;
        a[c] = (1.0 - m) * a[c] + m * (batch[c] * f);
    }
}

#endif /* CBN_CHANNELS_H */
