# Declarations of the C kernels that _kernels.pyx builds on, all included by cbn_kernels.h and
# compiled into each SIMD level's module; each block names the file that defines its functions
# (the -inl.h files define every function once per element type, as name_f32, name_f64,
# name_f16 and name_bf16).  `ym` is the
# saved output of the activation `act` (cbn_epilogue.h; NULL without one).

from cbn_shared cimport cbn_post, cbn_f16, cbn_bf16, cbn_weights

cdef extern from "cbn_kernels.h" nogil:
    const char* CBN_VARIANT


    # cbn_epilogue-inl.h (the codes, from cbn_epilogue.h: cbn_shared.pxd)
    float cbn_act_grad_f32(float g, float y, int act)
    double cbn_act_grad_f64(double g, double y, int act)

    # cbn_half.h: the 16-bit formats' conversions (for the tests)
    void cbn_half_convert(int fmt, int mode, const void* src, void* dst, Py_ssize_t n)

    # cbn_simd.h: work buffers
    double* cbn_alloc_per_thread(int nt, Py_ssize_t n, Py_ssize_t* stride)
    void* cbn_alloc_beside(size_t nbytes, const void* out)
    void cbn_free_beside(void* p)
    double cbn_hsum8_array(const double* v)

    # cbn_reduce-inl.h: channel-major run reductions
    double cbn_sum_f32(const float* x, Py_ssize_t n)
    double cbn_sum_f64(const double* x, Py_ssize_t n)
    void cbn_shifted_sums_f32(const float* x, Py_ssize_t n, double k, double* s1, double* s2)
    void cbn_shifted_sums_f64(const double* x, Py_ssize_t n, double k, double* s1, double* s2)
    void cbn_shifted_sums8_f32(const float* x, Py_ssize_t n, double k, double* s1_8,
                               double* s2_8)
    void cbn_shifted_sums8_f64(const double* x, Py_ssize_t n, double k, double* s1_8,
                               double* s2_8)
    void cbn_sum_like_dot_f32(const float* dy, const float* ym, Py_ssize_t n, double* sdy,
                              int act)
    void cbn_sum_like_dot_f64(const double* dy, const double* ym, Py_ssize_t n, double* sdy,
                              int act)
    void cbn_sum_dot_f32(const float* dy, const float* ym, const float* x, Py_ssize_t n,
                         double m, double* sdy, double* sdyx, int act)
    void cbn_sum_dot_f64(const double* dy, const double* ym, const double* x, Py_ssize_t n,
                         double m, double* sdy, double* sdyx, int act)
    void cbn_sum_dot8_f32(const float* dy, const float* ym, const float* x, Py_ssize_t n,
                          double m, double* sdy8, double* sdyx8, int act)
    void cbn_sum_dot8_f64(const double* dy, const double* ym, const double* x, Py_ssize_t n,
                          double m, double* sdy8, double* sdyx8, int act)

    # cbn_partials.h, cbn_partials-inl.h: the two-level statistics of the 16-bit formats
    enum:
        CBN_F32_RUN_RUNS
        CBN_F32_RUN_COLS
        CBN_PILOT_LINES
        CBN_PILOT_ROWS
    void cbn_partial_sums8_f16(const cbn_f16* x, Py_ssize_t n, float c, double* s1_8,
                               double* s2_8)
    void cbn_partial_sums8_bf16(const cbn_bf16* x, Py_ssize_t n, float c, double* s1_8,
                                double* s2_8)
    void cbn_partial_sum_dot8_f16(const cbn_f16* dy, const cbn_f16* ym, const cbn_f16* x,
                                  Py_ssize_t n, float h, double* sdy8, double* sdyx8, int act)
    void cbn_partial_sum_dot8_bf16(const cbn_bf16* dy, const cbn_bf16* ym, const cbn_bf16* x,
                                   Py_ssize_t n, float h, double* sdy8, double* sdyx8, int act)
    void cbn_col_partial_sum_dot_f16(double* sdy, double* sdyx, const cbn_f16* dy,
                                     const cbn_f16* ym, const cbn_f16* x, Py_ssize_t ld,
                                     Py_ssize_t rows, const float* h, Py_ssize_t w, int act,
                                     int threads)
    void cbn_col_partial_sum_dot_bf16(double* sdy, double* sdyx, const cbn_bf16* dy,
                                      const cbn_bf16* ym, const cbn_bf16* x, Py_ssize_t ld,
                                      Py_ssize_t rows, const float* h, Py_ssize_t w, int act,
                                      int threads)
    void cbn_col_partial_sums_f16(double* s1, double* s2, const cbn_f16* x, Py_ssize_t ld,
                                  Py_ssize_t rows, const float* c, Py_ssize_t w, int threads)
    void cbn_col_partial_sums_bf16(double* s1, double* s2, const cbn_bf16* x, Py_ssize_t ld,
                                   Py_ssize_t rows, const float* c, Py_ssize_t w, int threads)

    # cbn_tiles-inl.h (columns left over by a tile: cbn_rows-inl.h): channels-last rows
    void cbn_col_shifted_sums_f32(double* s1, double* s2, const float* x, Py_ssize_t ld,
                                  Py_ssize_t rows, const double* k, Py_ssize_t w, int threads)
    void cbn_col_shifted_sums_f64(double* s1, double* s2, const double* x, Py_ssize_t ld,
                                  Py_ssize_t rows, const double* k, Py_ssize_t w, int threads)
    void cbn_col_sum_dot_f32(double* sdy, double* sdyx, const float* dy, const float* ym,
                             const float* x, Py_ssize_t ld, Py_ssize_t rows, const double* m,
                             Py_ssize_t w, int act, int threads)
    void cbn_col_sum_dot_f64(double* sdy, double* sdyx, const double* dy, const double* ym,
                             const double* x, Py_ssize_t ld, Py_ssize_t rows, const double* m,
                             Py_ssize_t w, int act, int threads)
    void cbn_affine_f32(const float* x, float* y, Py_ssize_t ld, Py_ssize_t rows, Py_ssize_t w,
                        const float* hi, const float* sc, const float* sh, int act)
    void cbn_affine_f64(const double* x, double* y, Py_ssize_t ld, Py_ssize_t rows,
                        Py_ssize_t w, const double* hi, const double* sc, const double* sh,
                        int act)
    void cbn_dx_rows_f32(const float* dy, const float* ym, const float* x, float* dx,
                         Py_ssize_t ld, Py_ssize_t rows, Py_ssize_t w, const float* hi,
                         const float* k1, const float* k2, const float* k3, int act)
    void cbn_dx_rows_f64(const double* dy, const double* ym, const double* x, double* dx,
                         Py_ssize_t ld, Py_ssize_t rows, Py_ssize_t w, const double* hi,
                         const double* k1, const double* k2, const double* k3, int act)

    # cbn_post-inl.h: the post-operation stage (out and s / x offset already; see there)
    void cbn_post_block_f32(const cbn_post* p, const float* s, Py_ssize_t off, float* out,
                            Py_ssize_t n, int stream)
    void cbn_post_block_f64(const cbn_post* p, const double* s, Py_ssize_t off, double* out,
                            Py_ssize_t n, int stream)
    void cbn_post_runs_f32(const cbn_post* p, const float* x, Py_ssize_t off, float* out,
                           Py_ssize_t nruns, Py_ssize_t n, Py_ssize_t c0, Py_ssize_t C,
                           const float* coef, int stream)
    void cbn_post_runs_f64(const cbn_post* p, const double* x, Py_ssize_t off, double* out,
                           Py_ssize_t nruns, Py_ssize_t n, Py_ssize_t c0, Py_ssize_t C,
                           const double* coef, int stream)
    void cbn_post_rows_f32(const cbn_post* p, const float* x, Py_ssize_t off, float* out,
                           Py_ssize_t n, Py_ssize_t C, const float* ext, int stream)
    void cbn_post_rows_f64(const cbn_post* p, const double* x, Py_ssize_t off, double* out,
                           Py_ssize_t n, Py_ssize_t C, const double* ext, int stream)

    void cbn_math_eval_f32(int fn, const float* x, float* out, float* aux, Py_ssize_t n)
    void cbn_math_eval_f64(int fn, const double* x, double* out, double* aux, Py_ssize_t n)

    # cbn_runs-inl.h: one channel-major run, plain stores, walking up or down
    void cbn_affine_run_f32(const float* x, float* y, Py_ssize_t n, float hi, float sc,
                            float sh, int act)
    void cbn_affine_run_f64(const double* x, double* y, Py_ssize_t n, double hi, double sc,
                            double sh, int act)
    void cbn_dx_run_f32(const float* dy, const float* ym, const float* x, float* dx,
                        Py_ssize_t n, float hi, float k1, float k2, float k3, int act)
    void cbn_dx_run_f64(const double* dy, const double* ym, const double* x, double* dx,
                        Py_ssize_t n, double hi, double k1, double k2, double k3, int act)
    void cbn_affine_run_rev_f32(const float* x, float* y, Py_ssize_t n, float hi, float sc,
                                float sh, int act)
    void cbn_affine_run_rev_f64(const double* x, double* y, Py_ssize_t n, double hi, double sc,
                                double sh, int act)
    void cbn_dx_run_rev_f32(const float* dy, const float* ym, const float* x, float* dx,
                            Py_ssize_t n, float hi, float k1, float k2, float k3, int act)
    void cbn_dx_run_rev_f64(const double* dy, const double* ym, const double* x, double* dx,
                            Py_ssize_t n, double hi, double k1, double k2, double k3, int act)

    # cbn_stream.h, cbn_stream-inl.h: streaming stores
    enum: CBN_NT_PAD
    int cbn_nt_available()
    void cbn_nt_fence()
    void cbn_affine_run_nt_f32(const float* x, float* y, Py_ssize_t n, float hi, float sc,
                               float sh, int act)
    void cbn_affine_run_nt_f64(const double* x, double* y, Py_ssize_t n, double hi, double sc,
                               double sh, int act)
    void cbn_dx_run_nt_f32(const float* dy, const float* ym, const float* x, float* dx,
                           Py_ssize_t n, float hi, float k1, float k2, float k3, int act)
    void cbn_dx_run_nt_f64(const double* dy, const double* ym, const double* x, double* dx,
                           Py_ssize_t n, double hi, double k1, double k2, double k3, int act)
    void cbn_nt_extend_f32(const float* coef, Py_ssize_t C, int k, float* out)
    void cbn_nt_extend_f64(const double* coef, Py_ssize_t C, int k, double* out)
    void cbn_affine_flat_nt_f32(const float* x, float* y, Py_ssize_t n, Py_ssize_t C,
                                const float* ext, int act)
    void cbn_affine_flat_nt_f64(const double* x, double* y, Py_ssize_t n, Py_ssize_t C,
                                const double* ext, int act)
    void cbn_dx_flat_nt_f32(const float* dy, const float* ym, const float* x, float* dx,
                            Py_ssize_t n, Py_ssize_t C, const float* ext, int act)
    void cbn_dx_flat_nt_f64(const double* dy, const double* ym, const double* x, double* dx,
                            Py_ssize_t n, Py_ssize_t C, const double* ext, int act)

    # the same kernels for the 16-bit formats (cbn_kernels.h: float arithmetic, the data widened
    # and narrowed in registers)
    double cbn_sum_f16(const cbn_f16* x, Py_ssize_t n)
    double cbn_sum_bf16(const cbn_bf16* x, Py_ssize_t n)
    void cbn_shifted_sums_f16(const cbn_f16* x, Py_ssize_t n, double k, double* s1, double* s2)
    void cbn_shifted_sums_bf16(const cbn_bf16* x, Py_ssize_t n, double k, double* s1, double* s2)
    void cbn_shifted_sums8_f16(const cbn_f16* x, Py_ssize_t n, double k, double* s1_8,
                               double* s2_8)
    void cbn_shifted_sums8_bf16(const cbn_bf16* x, Py_ssize_t n, double k, double* s1_8,
                               double* s2_8)
    void cbn_sum_like_dot_f16(const cbn_f16* dy, const cbn_f16* ym, Py_ssize_t n, double* sdy,
                              int act)
    void cbn_sum_like_dot_bf16(const cbn_bf16* dy, const cbn_bf16* ym, Py_ssize_t n, double* sdy,
                              int act)
    void cbn_sum_dot_f16(const cbn_f16* dy, const cbn_f16* ym, const cbn_f16* x, Py_ssize_t n,
                         double m, double* sdy, double* sdyx, int act)
    void cbn_sum_dot_bf16(const cbn_bf16* dy, const cbn_bf16* ym, const cbn_bf16* x, Py_ssize_t n,
                         double m, double* sdy, double* sdyx, int act)
    void cbn_sum_dot8_f16(const cbn_f16* dy, const cbn_f16* ym, const cbn_f16* x, Py_ssize_t n,
                          double m, double* sdy8, double* sdyx8, int act)
    void cbn_sum_dot8_bf16(const cbn_bf16* dy, const cbn_bf16* ym, const cbn_bf16* x, Py_ssize_t n,
                          double m, double* sdy8, double* sdyx8, int act)
    void cbn_col_shifted_sums_f16(double* s1, double* s2, const cbn_f16* x, Py_ssize_t ld,
                                  Py_ssize_t rows, const double* k, Py_ssize_t w, int threads)
    void cbn_col_shifted_sums_bf16(double* s1, double* s2, const cbn_bf16* x, Py_ssize_t ld,
                                  Py_ssize_t rows, const double* k, Py_ssize_t w, int threads)
    void cbn_col_sum_dot_f16(double* sdy, double* sdyx, const cbn_f16* dy, const cbn_f16* ym,
                             const cbn_f16* x, Py_ssize_t ld, Py_ssize_t rows, const double* m,
                             Py_ssize_t w, int act, int threads)
    void cbn_col_sum_dot_bf16(double* sdy, double* sdyx, const cbn_bf16* dy, const cbn_bf16* ym,
                             const cbn_bf16* x, Py_ssize_t ld, Py_ssize_t rows, const double* m,
                             Py_ssize_t w, int act, int threads)
    void cbn_affine_f16(const cbn_f16* x, cbn_f16* y, Py_ssize_t ld, Py_ssize_t rows, Py_ssize_t w,
                        const float* hi, const float* sc, const float* sh, int act)
    void cbn_affine_bf16(const cbn_bf16* x, cbn_bf16* y, Py_ssize_t ld, Py_ssize_t rows, Py_ssize_t w,
                        const float* hi, const float* sc, const float* sh, int act)
    void cbn_dx_rows_f16(const cbn_f16* dy, const cbn_f16* ym, const cbn_f16* x, cbn_f16* dx,
                         Py_ssize_t ld, Py_ssize_t rows, Py_ssize_t w, const float* hi,
                         const float* k1, const float* k2, const float* k3, int act)
    void cbn_dx_rows_bf16(const cbn_bf16* dy, const cbn_bf16* ym, const cbn_bf16* x, cbn_bf16* dx,
                         Py_ssize_t ld, Py_ssize_t rows, Py_ssize_t w, const float* hi,
                         const float* k1, const float* k2, const float* k3, int act)
    void cbn_post_block_f16(const cbn_post* p, const cbn_f16* s, Py_ssize_t off, cbn_f16* out,
                            Py_ssize_t n, int stream)
    void cbn_post_block_bf16(const cbn_post* p, const cbn_bf16* s, Py_ssize_t off, cbn_bf16* out,
                            Py_ssize_t n, int stream)
    void cbn_post_runs_f16(const cbn_post* p, const cbn_f16* x, Py_ssize_t off, cbn_f16* out,
                           Py_ssize_t nruns, Py_ssize_t n, Py_ssize_t c0, Py_ssize_t C,
                           const float* coef, int stream)
    void cbn_post_runs_bf16(const cbn_post* p, const cbn_bf16* x, Py_ssize_t off, cbn_bf16* out,
                           Py_ssize_t nruns, Py_ssize_t n, Py_ssize_t c0, Py_ssize_t C,
                           const float* coef, int stream)
    void cbn_post_rows_f16(const cbn_post* p, const cbn_f16* x, Py_ssize_t off, cbn_f16* out,
                           Py_ssize_t n, Py_ssize_t C, const float* ext, int stream)
    void cbn_post_rows_bf16(const cbn_post* p, const cbn_bf16* x, Py_ssize_t off, cbn_bf16* out,
                           Py_ssize_t n, Py_ssize_t C, const float* ext, int stream)
    void cbn_affine_run_f16(const cbn_f16* x, cbn_f16* y, Py_ssize_t n, float hi, float sc,
                            float sh, int act)
    void cbn_affine_run_bf16(const cbn_bf16* x, cbn_bf16* y, Py_ssize_t n, float hi, float sc,
                            float sh, int act)
    void cbn_dx_run_f16(const cbn_f16* dy, const cbn_f16* ym, const cbn_f16* x, cbn_f16* dx,
                        Py_ssize_t n, float hi, float k1, float k2, float k3, int act)
    void cbn_dx_run_bf16(const cbn_bf16* dy, const cbn_bf16* ym, const cbn_bf16* x, cbn_bf16* dx,
                        Py_ssize_t n, float hi, float k1, float k2, float k3, int act)
    void cbn_affine_run_rev_f16(const cbn_f16* x, cbn_f16* y, Py_ssize_t n, float hi, float sc,
                                float sh, int act)
    void cbn_affine_run_rev_bf16(const cbn_bf16* x, cbn_bf16* y, Py_ssize_t n, float hi, float sc,
                                float sh, int act)
    void cbn_dx_run_rev_f16(const cbn_f16* dy, const cbn_f16* ym, const cbn_f16* x, cbn_f16* dx,
                            Py_ssize_t n, float hi, float k1, float k2, float k3, int act)
    void cbn_dx_run_rev_bf16(const cbn_bf16* dy, const cbn_bf16* ym, const cbn_bf16* x, cbn_bf16* dx,
                            Py_ssize_t n, float hi, float k1, float k2, float k3, int act)
    void cbn_affine_run_nt_f16(const cbn_f16* x, cbn_f16* y, Py_ssize_t n, float hi, float sc,
                               float sh, int act)
    void cbn_affine_run_nt_bf16(const cbn_bf16* x, cbn_bf16* y, Py_ssize_t n, float hi, float sc,
                               float sh, int act)
    void cbn_dx_run_nt_f16(const cbn_f16* dy, const cbn_f16* ym, const cbn_f16* x, cbn_f16* dx,
                           Py_ssize_t n, float hi, float k1, float k2, float k3, int act)
    void cbn_dx_run_nt_bf16(const cbn_bf16* dy, const cbn_bf16* ym, const cbn_bf16* x, cbn_bf16* dx,
                           Py_ssize_t n, float hi, float k1, float k2, float k3, int act)
    void cbn_affine_flat_nt_f16(const cbn_f16* x, cbn_f16* y, Py_ssize_t n, Py_ssize_t C,
                                const float* ext, int act)
    void cbn_affine_flat_nt_bf16(const cbn_bf16* x, cbn_bf16* y, Py_ssize_t n, Py_ssize_t C,
                                const float* ext, int act)
    void cbn_dx_flat_nt_f16(const cbn_f16* dy, const cbn_f16* ym, const cbn_f16* x, cbn_f16* dx,
                            Py_ssize_t n, Py_ssize_t C, const float* ext, int act)
    void cbn_dx_flat_nt_bf16(const cbn_bf16* dy, const cbn_bf16* ym, const cbn_bf16* x, cbn_bf16* dx,
                            Py_ssize_t n, Py_ssize_t C, const float* ext, int act)

    # cbn_masked-inl.h: masked and weighted statistics
    void cbn_wsums8_f32(const float* x, const cbn_weights* w, Py_ssize_t at, Py_ssize_t n,
                       double k, double* s0_8, double* s1_8, double* s2_8)
    void cbn_col_wsums_f32(double* s0, double* s1, double* s2, const float* x,
                          const cbn_weights* w, Py_ssize_t at, const double* k, Py_ssize_t n)
    void cbn_col_wsums_row_f32(double* s1, double* s2, const float* x, const double* k,
                              Py_ssize_t n, double wr)
    void cbn_wsums8_f64(const double* x, const cbn_weights* w, Py_ssize_t at, Py_ssize_t n,
                       double k, double* s0_8, double* s1_8, double* s2_8)
    void cbn_col_wsums_f64(double* s0, double* s1, double* s2, const double* x,
                          const cbn_weights* w, Py_ssize_t at, const double* k, Py_ssize_t n)
    void cbn_col_wsums_row_f64(double* s1, double* s2, const double* x, const double* k,
                              Py_ssize_t n, double wr)
    void cbn_wsums8_f16(const cbn_f16* x, const cbn_weights* w, Py_ssize_t at, Py_ssize_t n,
                       double k, double* s0_8, double* s1_8, double* s2_8)
    void cbn_col_wsums_f16(double* s0, double* s1, double* s2, const cbn_f16* x,
                          const cbn_weights* w, Py_ssize_t at, const double* k, Py_ssize_t n)
    void cbn_col_wsums_row_f16(double* s1, double* s2, const cbn_f16* x, const double* k,
                              Py_ssize_t n, double wr)
    void cbn_wsums8_bf16(const cbn_bf16* x, const cbn_weights* w, Py_ssize_t at, Py_ssize_t n,
                       double k, double* s0_8, double* s1_8, double* s2_8)
    void cbn_col_wsums_bf16(double* s0, double* s1, double* s2, const cbn_bf16* x,
                          const cbn_weights* w, Py_ssize_t at, const double* k, Py_ssize_t n)
    void cbn_col_wsums_row_bf16(double* s1, double* s2, const cbn_bf16* x, const double* k,
                              Py_ssize_t n, double wr)
    void cbn_wdx_run_f32(const float* g, const float* x, const cbn_weights* w, Py_ssize_t at,
                        float* dx, Py_ssize_t n, float a, float b, float d, float hi)
    void cbn_wdx_row_f32(const float* g, const float* x, const cbn_weights* w, Py_ssize_t at,
                        float* dx, Py_ssize_t n, const float* a, const float* b, const float* d,
                        const float* hi)
    void cbn_wdx_run_f64(const double* g, const double* x, const cbn_weights* w, Py_ssize_t at,
                        double* dx, Py_ssize_t n, double a, double b, double d, double hi)
    void cbn_wdx_row_f64(const double* g, const double* x, const cbn_weights* w, Py_ssize_t at,
                        double* dx, Py_ssize_t n, const double* a, const double* b, const double* d,
                        const double* hi)
    void cbn_wdx_run_f16(const cbn_f16* g, const cbn_f16* x, const cbn_weights* w, Py_ssize_t at,
                        cbn_f16* dx, Py_ssize_t n, float a, float b, float d, float hi)
    void cbn_wdx_row_f16(const cbn_f16* g, const cbn_f16* x, const cbn_weights* w, Py_ssize_t at,
                        cbn_f16* dx, Py_ssize_t n, const float* a, const float* b, const float* d,
                        const float* hi)
    void cbn_wdx_run_bf16(const cbn_bf16* g, const cbn_bf16* x, const cbn_weights* w, Py_ssize_t at,
                        cbn_bf16* dx, Py_ssize_t n, float a, float b, float d, float hi)
    void cbn_wdx_row_bf16(const cbn_bf16* g, const cbn_bf16* x, const cbn_weights* w, Py_ssize_t at,
                        cbn_bf16* dx, Py_ssize_t n, const float* a, const float* b, const float* d,
                        const float* hi)
    void cbn_pad_run_f32(float* y, const float* src, const cbn_weights* w, Py_ssize_t at,
                        Py_ssize_t n)
    void cbn_pad_run_f64(double* y, const double* src, const cbn_weights* w, Py_ssize_t at,
                        Py_ssize_t n)
    void cbn_pad_run_f16(cbn_f16* y, const cbn_f16* src, const cbn_weights* w, Py_ssize_t at,
                        Py_ssize_t n)
    void cbn_pad_run_bf16(cbn_bf16* y, const cbn_bf16* src, const cbn_weights* w, Py_ssize_t at,
                        Py_ssize_t n)
    void cbn_msums8_f32(const float* x, const unsigned char* m, Py_ssize_t n, double k,
                       double* s1_8, double* s2_8)
    void cbn_msums8_f64(const double* x, const unsigned char* m, Py_ssize_t n, double k,
                       double* s1_8, double* s2_8)
    void cbn_msums8_f16(const cbn_f16* x, const unsigned char* m, Py_ssize_t n, double k,
                       double* s1_8, double* s2_8)
    void cbn_msums8_bf16(const cbn_bf16* x, const unsigned char* m, Py_ssize_t n, double k,
                       double* s1_8, double* s2_8)
