# Declarations shared by the compile-once module (_core.pyx) and every SIMD level's kernels
# (_kernels.pyx): the runtime, the geometry and the kernel table, defined in the C headers named.

cdef extern from "cbn_runtime.h" nogil:
    const char* CBN_RUNTIME_CAPSULE
    ctypedef struct cbn_runtime:
        Py_ssize_t fuse_budget_bytes
        Py_ssize_t nt_min_bytes
        int reverse_mode
        int last_team
        int last_streamed
        int last_reversed
        int team_started
        int forked_child
    int cbn_openmp_enabled()
    int cbn_openmp_version()
    int cbn_max_threads()
    int cbn_num_procs()
    void cbn_note_team(cbn_runtime* rt)
    int cbn_cpu_supports(const char* level)
    long cbn_l2_cache_bytes()
    long cbn_l3_cache_bytes()

cdef extern from "cbn_epilogue.h" nogil:
    enum:
        CBN_ACT_NONE
        CBN_ACT_RELU
        CBN_ACT_RELU6
        CBN_ACT_LEAKY_RELU
        CBN_ACT_SILU
        CBN_ACT_GELU
        CBN_ACT_GELU_TANH

cdef extern from "cbn_post.h" nogil:
    enum:
        CBN_POST_APPLY
        CBN_POST_GRAD
    ctypedef struct cbn_post:
        int mode
        int act
        double slope
        const void* res
        const void* dy
        int direct

cdef extern from "cbn_geometry.h" nogil:
    enum:
        CBN_BLOCK_BYTES
        CBN_MIN_ROWS_B
        CBN_MAX_COLUMNS
        CBN_MAX_SEGMENTS
        CBN_PARALLEL_MIN_ELEMS
        CBN_NT_MIN_RUN_BYTES
        CBN_ALIAS_WINDOW
    ctypedef struct Geometry "cbn_geometry":
        Py_ssize_t outer, C, inner
        Py_ssize_t n
        Py_ssize_t rows_per_block
        Py_ssize_t pieces
        Py_ssize_t nblocks
        Py_ssize_t nseg
        Py_ssize_t col_width
        Py_ssize_t ncol_chunks
    Geometry cbn_geometry_of(Py_ssize_t outer, Py_ssize_t C, Py_ssize_t inner,
                             Py_ssize_t itemsize)

cdef extern from "cbn_half.h" nogil:
    # the 16-bit storage formats: IEEE binary16 and bfloat16 bits, one-field structs
    ctypedef struct cbn_f16:
        unsigned short bits
    ctypedef struct cbn_bf16:
        unsigned short bits
    float cbn_f16_to_f32(cbn_f16 h)
    float cbn_bf16_to_f32(cbn_bf16 h)
    cbn_f16 cbn_f32_to_f16(float v)
    cbn_bf16 cbn_f32_to_bf16(float v)
    cbn_f16 cbn_f64_to_f16(double v)
    cbn_bf16 cbn_f64_to_bf16(double v)

cdef extern from "cbn_weights.h" nogil:
    # the mask or weights of the masked statistics, viewed like the data (cbn_weights.h)
    enum:
        CBN_W_MASK
        CBN_W_F32
        CBN_W_F64
    ctypedef struct cbn_weights:
        const void* p
        int kind
        Py_ssize_t row
        Py_ssize_t chan
    double cbn_w_at(const cbn_weights* w, Py_ssize_t i)
    void cbn_w_first_max(const cbn_weights* w, Py_ssize_t i, Py_ssize_t n, double* best,
                         Py_ssize_t* at)

cdef extern from "cbn_table.h" nogil:
    const char* CBN_TABLE_CAPSULE
    ctypedef struct cbn_kernel_table:
        const char* level
        int has_streaming
        int (*forward_f32)(const float* x, float* y_out, const Geometry* g, int nt, double eps,
                           const double* w, const double* b, double* mean_out, double* var_out,
                           double* invstd_out, int act, const cbn_post* post) noexcept nogil
        int (*forward_f64)(const double* x, double* y_out, const Geometry* g, int nt,
                           double eps, const double* w, const double* b, double* mean_out,
                           double* var_out, double* invstd_out, int act,
                           const cbn_post* post) noexcept nogil
        int (*moments_f32)(const float* x, const Geometry* g, int nt, double* mean_out,
                           double* m2_out) noexcept nogil
        int (*moments_f64)(const double* x, const Geometry* g, int nt, double* mean_out,
                           double* m2_out) noexcept nogil
        int (*inference_f32)(const float* x, float* y_out, const Geometry* g, int nt,
                             const double* centre, const double* scale, const double* shift,
                             int act, const cbn_post* post) noexcept nogil
        int (*inference_f64)(const double* x, double* y_out, const Geometry* g, int nt,
                             const double* centre, const double* scale, const double* shift,
                             int act, const cbn_post* post) noexcept nogil
        int (*backward_f32)(const float* dy, const float* ym, const float* x, float* dx_out,
                            const Geometry* g, int nt, const double* mean,
                            const double* invstd, const double* w, bint with_dot,
                            double* sdy_out, double* sdyx_out) noexcept nogil
        int (*backward_f64)(const double* dy, const double* ym, const double* x,
                            double* dx_out, const Geometry* g, int nt, const double* mean,
                            const double* invstd, const double* w, bint with_dot,
                            double* sdy_out, double* sdyx_out) noexcept nogil
        int (*dx_from_sums_f32)(const float* dy, const float* ym, const float* x,
                                float* dx_out, const Geometry* g, int nt, double n_total,
                                const double* mean, const double* invstd, const double* w,
                                const double* sdy, const double* sdyx) noexcept nogil
        int (*dx_from_sums_f64)(const double* dy, const double* ym, const double* x,
                                double* dx_out, const Geometry* g, int nt, double n_total,
                                const double* mean, const double* invstd, const double* w,
                                const double* sdy, const double* sdyx) noexcept nogil
        int (*forward_f16)(const cbn_f16* x, cbn_f16* y_out, const Geometry* g, int nt,
                           double eps, const double* w, const double* b, double* mean_out,
                           double* var_out, double* invstd_out, int act,
                           const cbn_post* post) noexcept nogil
        int (*forward_bf16)(const cbn_bf16* x, cbn_bf16* y_out, const Geometry* g, int nt,
                            double eps, const double* w, const double* b, double* mean_out,
                            double* var_out, double* invstd_out, int act,
                            const cbn_post* post) noexcept nogil
        int (*moments_f16)(const cbn_f16* x, const Geometry* g, int nt, double* mean_out,
                           double* m2_out) noexcept nogil
        int (*moments_bf16)(const cbn_bf16* x, const Geometry* g, int nt, double* mean_out,
                            double* m2_out) noexcept nogil
        int (*wmoments_f32)(const float* x, const cbn_weights* w, const Geometry* g, int nt,
                            double* sw_out, double* mean_out, double* m2_out) noexcept nogil
        int (*wmoments_f64)(const double* x, const cbn_weights* w, const Geometry* g, int nt,
                            double* sw_out, double* mean_out, double* m2_out) noexcept nogil
        int (*wmoments_f16)(const cbn_f16* x, const cbn_weights* w, const Geometry* g, int nt,
                            double* sw_out, double* mean_out, double* m2_out) noexcept nogil
        int (*wmoments_bf16)(const cbn_bf16* x, const cbn_weights* w, const Geometry* g,
                             int nt, double* sw_out, double* mean_out,
                             double* m2_out) noexcept nogil
        int (*wdx_f32)(const float* g, const float* x, const cbn_weights* w, const Geometry* geo,
                       float* dx_out, int nt, const double* a, const double* b, const double* d,
                       const double* mean) noexcept nogil
        int (*wdx_f64)(const double* g, const double* x, const cbn_weights* w, const Geometry* geo,
                       double* dx_out, int nt, const double* a, const double* b, const double* d,
                       const double* mean) noexcept nogil
        int (*wdx_f16)(const cbn_f16* g, const cbn_f16* x, const cbn_weights* w, const Geometry* geo,
                       cbn_f16* dx_out, int nt, const double* a, const double* b, const double* d,
                       const double* mean) noexcept nogil
        int (*wdx_bf16)(const cbn_bf16* g, const cbn_bf16* x, const cbn_weights* w, const Geometry* geo,
                       cbn_bf16* dx_out, int nt, const double* a, const double* b, const double* d,
                       const double* mean) noexcept nogil
        int (*pad_f32)(float* y, const float* src, const Geometry* g, const cbn_weights* w,
                       int nt) noexcept nogil
        int (*pad_f64)(double* y, const double* src, const Geometry* g, const cbn_weights* w,
                       int nt) noexcept nogil
        int (*pad_f16)(cbn_f16* y, const cbn_f16* src, const Geometry* g, const cbn_weights* w,
                       int nt) noexcept nogil
        int (*pad_bf16)(cbn_bf16* y, const cbn_bf16* src, const Geometry* g, const cbn_weights* w,
                       int nt) noexcept nogil
        int (*inference_f16)(const cbn_f16* x, cbn_f16* y_out, const Geometry* g, int nt,
                             const double* centre, const double* scale, const double* shift,
                             int act, const cbn_post* post) noexcept nogil
        int (*inference_bf16)(const cbn_bf16* x, cbn_bf16* y_out, const Geometry* g, int nt,
                              const double* centre, const double* scale, const double* shift,
                              int act, const cbn_post* post) noexcept nogil
        int (*backward_f16)(const cbn_f16* dy, const cbn_f16* ym, const cbn_f16* x,
                            cbn_f16* dx_out, const Geometry* g, int nt, const double* mean,
                            const double* invstd, const double* w, bint with_dot,
                            double* sdy_out, double* sdyx_out) noexcept nogil
        int (*backward_bf16)(const cbn_bf16* dy, const cbn_bf16* ym, const cbn_bf16* x,
                             cbn_bf16* dx_out, const Geometry* g, int nt, const double* mean,
                             const double* invstd, const double* w, bint with_dot,
                             double* sdy_out, double* sdyx_out) noexcept nogil
        int (*dx_from_sums_f16)(const cbn_f16* dy, const cbn_f16* ym, const cbn_f16* x,
                                cbn_f16* dx_out, const Geometry* g, int nt, double n_total,
                                const double* mean, const double* invstd, const double* w,
                                const double* sdy, const double* sdyx) noexcept nogil
        int (*dx_from_sums_bf16)(const cbn_bf16* dy, const cbn_bf16* ym, const cbn_bf16* x,
                                 cbn_bf16* dx_out, const Geometry* g, int nt, double n_total,
                                 const double* mean, const double* invstd, const double* w,
                                 const double* sdy, const double* sdyx) noexcept nogil
        void (*math_f32)(int fn, const float* x, float* out, float* aux,
                         Py_ssize_t n) noexcept nogil
        void (*math_f64)(int fn, const double* x, double* out, double* aux,
                         Py_ssize_t n) noexcept nogil
        void (*half_convert)(int fmt, int mode, const void* src, void* dst,
                             Py_ssize_t n) noexcept nogil
        void (*floor_scale_f32)(const float* a, float* out, Py_ssize_t n, int nt) noexcept nogil
        void (*floor_scale_f64)(const double* a, double* out, Py_ssize_t n,
                                int nt) noexcept nogil
        void (*floor_triad_f32)(const float* a, const float* b, float* out, Py_ssize_t n,
                                int nt) noexcept nogil
        void (*floor_triad_f64)(const double* a, const double* b, double* out, Py_ssize_t n,
                                int nt) noexcept nogil
        double (*floor_sum_f32)(const float* a, Py_ssize_t n, int nt) noexcept nogil
        double (*floor_sum_f64)(const double* a, Py_ssize_t n, int nt) noexcept nogil

cdef extern from "cbn_plan.h" nogil:
    Py_ssize_t cbn_seg_start(const Geometry* g, Py_ssize_t s)
    Py_ssize_t cbn_segment_rows(const Geometry* g, Py_ssize_t s)
    Py_ssize_t cbn_tasks_of(const Geometry* g)
    int cbn_threads_for(Py_ssize_t elems, int requested, Py_ssize_t tasks, int max_threads,
                        int num_procs, int forked_child)
    enum:
        CBN_RED_CM_ROWS
        CBN_RED_CM_CHANNELS
        CBN_RED_CM_SEGMENTS
        CBN_RED_CL
        CBN_EW_CM_SHARES
        CBN_EW_CM_PIECES
        CBN_EW_CL_ROWS
    ctypedef struct cbn_plan:
        int nt
        bint fused
        int reduce
        Py_ssize_t ntasks_red
        Py_ssize_t nch, cw
        int ew
        Py_ssize_t ntasks_ew
        Py_ssize_t rows_per_task
    cbn_plan cbn_plan_of(const Geometry* g, int nt, Py_ssize_t fused_bytes,
                         Py_ssize_t fuse_budget)
