/* cbn_table.h: the entries of one SIMD level's kernels, as the compile-once module calls them.
 *
 * Each level's module (_kernels.pyx compiled per level) fills one cbn_kernel_table and hands
 * it out in a capsule; cbn/_dispatch.py binds one table into _core.pyx, which calls nothing
 * else of the level.  Every entry is `noexcept nogil`, takes C-contiguous arrays of the named
 * type laid out as the geometry says, float64 per-channel vectors (NULL where optional), and
 * the requested thread count (0: all); it returns 0, or -1 when out of memory, unless noted.
 */
#ifndef CBN_TABLE_H
#define CBN_TABLE_H

#include "cbn_plan.h"
#include "cbn_post.h"
#include "cbn_half.h"
#include "cbn_weights.h"

#define CBN_TABLE_CAPSULE "cbn.kernel_table"

typedef struct {
    const char *level;  /* "baseline", "avx2", "avx512" */
    int has_streaming;  /* the level can write outputs with streaming stores */

    /* training forward: y, and the biased variance's statistics mean, var, invstd; `act` is
     * the in-register activation (NONE or RELU), `post` the post-operation stage (cbn_post.h:
     * a residual and any activation; NULL: none; with a post, act is NONE) */
    int (*forward_f32)(const float *x, float *y_out, const cbn_geometry *g, int nt,
                       double eps, const double *w, const double *b, double *mean_out,
                       double *var_out, double *invstd_out, int act,
                       const cbn_post *post);
    int (*forward_f64)(const double *x, double *y_out, const cbn_geometry *g, int nt,
                       double eps, const double *w, const double *b, double *mean_out,
                       double *var_out, double *invstd_out, int act,
                       const cbn_post *post);
    /* per-channel mean and M2 (sum of squared deviations) */
    int (*moments_f32)(const float *x, const cbn_geometry *g, int nt, double *mean_out,
                       double *m2_out);
    int (*moments_f64)(const double *x, const cbn_geometry *g, int nt, double *mean_out,
                       double *m2_out);
    /* y = (x - centre) * scale + shift (then the activation act, cbn_epilogue.h, or the
     * post-operation post, cbn_post.h: with CBN_POST_GRAD, y is dy * act'(that + residual)) */
    int (*inference_f32)(const float *x, float *y_out, const cbn_geometry *g, int nt,
                         const double *centre, const double *scale, const double *shift,
                         int act, const cbn_post *post);
    int (*inference_f64)(const double *x, double *y_out, const cbn_geometry *g, int nt,
                         const double *centre, const double *scale, const double *shift,
                         int act, const cbn_post *post);
    /* sdy = sum(g), sdyx = sum(g * (x - mean)) if with_dot, and dx unless dx_out is NULL;
     * g = dy, or dy where the fused ReLU's output ym > 0 (ym NULL: no ReLU) */
    int (*backward_f32)(const float *dy, const float *ym, const float *x, float *dx_out,
                        const cbn_geometry *g, int nt, const double *mean,
                        const double *invstd, const double *w, int with_dot, double *sdy_out,
                        double *sdyx_out);
    int (*backward_f64)(const double *dy, const double *ym, const double *x, double *dx_out,
                        const cbn_geometry *g, int nt, const double *mean,
                        const double *invstd, const double *w, int with_dot, double *sdy_out,
                        double *sdyx_out);
    /* dx from given sums over n_total values per channel (SyncBN, chunked float16) */
    int (*dx_from_sums_f32)(const float *dy, const float *ym, const float *x, float *dx_out,
                            const cbn_geometry *g, int nt, double n_total, const double *mean,
                            const double *invstd, const double *w, const double *sdy,
                            const double *sdyx);
    int (*dx_from_sums_f64)(const double *dy, const double *ym, const double *x,
                            double *dx_out, const cbn_geometry *g, int nt, double n_total,
                            const double *mean, const double *invstd, const double *w,
                            const double *sdy, const double *sdyx);

    /* the same for the 16-bit formats (cbn_half.h): data, output and saved activation output
     * of the format, float32 arithmetic, float64 statistics */
    int (*forward_f16)(const cbn_f16 *x, cbn_f16 *y_out, const cbn_geometry *g, int nt,
                       double eps, const double *w, const double *b, double *mean_out,
                       double *var_out, double *invstd_out, int act, const cbn_post *post);
    int (*forward_bf16)(const cbn_bf16 *x, cbn_bf16 *y_out, const cbn_geometry *g, int nt,
                        double eps, const double *w, const double *b, double *mean_out,
                        double *var_out, double *invstd_out, int act, const cbn_post *post);
    int (*moments_f16)(const cbn_f16 *x, const cbn_geometry *g, int nt, double *mean_out,
                       double *m2_out);
    int (*moments_bf16)(const cbn_bf16 *x, const cbn_geometry *g, int nt, double *mean_out,
                        double *m2_out);
    int (*inference_f16)(const cbn_f16 *x, cbn_f16 *y_out, const cbn_geometry *g, int nt,
                         const double *centre, const double *scale, const double *shift,
                         int act, const cbn_post *post);
    int (*inference_bf16)(const cbn_bf16 *x, cbn_bf16 *y_out, const cbn_geometry *g, int nt,
                          const double *centre, const double *scale, const double *shift,
                          int act, const cbn_post *post);
    int (*backward_f16)(const cbn_f16 *dy, const cbn_f16 *ym, const cbn_f16 *x,
                        cbn_f16 *dx_out, const cbn_geometry *g, int nt, const double *mean,
                        const double *invstd, const double *w, int with_dot, double *sdy_out,
                        double *sdyx_out);
    int (*backward_bf16)(const cbn_bf16 *dy, const cbn_bf16 *ym, const cbn_bf16 *x,
                         cbn_bf16 *dx_out, const cbn_geometry *g, int nt, const double *mean,
                         const double *invstd, const double *w, int with_dot, double *sdy_out,
                         double *sdyx_out);
    int (*dx_from_sums_f16)(const cbn_f16 *dy, const cbn_f16 *ym, const cbn_f16 *x,
                            cbn_f16 *dx_out, const cbn_geometry *g, int nt, double n_total,
                            const double *mean, const double *invstd, const double *w,
                            const double *sdy, const double *sdyx);
    int (*dx_from_sums_bf16)(const cbn_bf16 *dy, const cbn_bf16 *ym, const cbn_bf16 *x,
                             cbn_bf16 *dx_out, const cbn_geometry *g, int nt, double n_total,
                             const double *mean, const double *invstd, const double *w,
                             const double *sdy, const double *sdyx);

    /* masked and weighted statistics: per-channel weight sum, mean and M2 over the elements
     * the mask or weights w select (cbn_weights.h; mean and M2 0 where the sum is 0) */
    int (*wmoments_f32)(const float *x, const cbn_weights *w, const cbn_geometry *g, int nt,
                        double *sw_out, double *mean_out, double *m2_out);
    int (*wmoments_f64)(const double *x, const cbn_weights *w, const cbn_geometry *g, int nt,
                        double *sw_out, double *mean_out, double *m2_out);
    int (*wmoments_f16)(const cbn_f16 *x, const cbn_weights *w, const cbn_geometry *g, int nt,
                        double *sw_out, double *mean_out, double *m2_out);
    int (*wmoments_bf16)(const cbn_bf16 *x, const cbn_weights *w, const cbn_geometry *g,
                         int nt, double *sw_out, double *mean_out, double *m2_out);

    /* the masked backward's dx: dx = a g - w (b + d (x - mean)) per channel, w the element's
     * weight (float64 coefficient vectors of length C) */
    int (*wdx_f32)(const float *g, const float *x, const cbn_weights *w, const cbn_geometry *geo,
                   float *dx_out, int nt, const double *a, const double *b, const double *d,
                   const double *mean);
    int (*wdx_f64)(const double *g, const double *x, const cbn_weights *w, const cbn_geometry *geo,
                   double *dx_out, int nt, const double *a, const double *b, const double *d,
                   const double *mean);
    int (*wdx_f16)(const cbn_f16 *g, const cbn_f16 *x, const cbn_weights *w, const cbn_geometry *geo,
                   cbn_f16 *dx_out, int nt, const double *a, const double *b, const double *d,
                   const double *mean);
    int (*wdx_bf16)(const cbn_bf16 *g, const cbn_bf16 *x, const cbn_weights *w, const cbn_geometry *geo,
                   cbn_bf16 *dx_out, int nt, const double *a, const double *b, const double *d,
                   const double *mean);

    /* a masked output's padding: y = src (0 when src is NULL) wherever the weight is 0 */
    int (*pad_f32)(float *y, const float *src, const cbn_geometry *g, const cbn_weights *w, int nt);
    int (*pad_f64)(double *y, const double *src, const cbn_geometry *g, const cbn_weights *w, int nt);
    int (*pad_f16)(cbn_f16 *y, const cbn_f16 *src, const cbn_geometry *g, const cbn_weights *w, int nt);
    int (*pad_bf16)(cbn_bf16 *y, const cbn_bf16 *src, const cbn_geometry *g, const cbn_weights *w, int nt);

    /* the post stage's elementary functions over n elements, for the tests: fn 0 e^x, fn 1
     * the normal CDF (aux: its density, or NULL) */
    void (*math_f32)(int fn, const float *x, float *out, float *aux, ptrdiff_t n);
    void (*math_f64)(int fn, const double *x, double *out, double *aux, ptrdiff_t n);

    /* the 16-bit formats' conversions, for the tests (cbn_half_convert in cbn_half.h) */
    void (*half_convert)(int fmt, int mode, const void *src, void *dst, ptrdiff_t n);

    /* the benchmark's bandwidth floor over n elements (no return code) */
    void (*floor_scale_f32)(const float *a, float *out, ptrdiff_t n, int nt);
    void (*floor_scale_f64)(const double *a, double *out, ptrdiff_t n, int nt);
    void (*floor_triad_f32)(const float *a, const float *b, float *out, ptrdiff_t n, int nt);
    void (*floor_triad_f64)(const double *a, const double *b, double *out, ptrdiff_t n, int nt);
    double (*floor_sum_f32)(const float *a, ptrdiff_t n, int nt);
    double (*floor_sum_f64)(const double *a, ptrdiff_t n, int nt);
} cbn_kernel_table;

#endif /* CBN_TABLE_H */
