# Included by _kernels.pyx (compiled per SIMD level; declarations and the fused type there).
# The parallel template: the thread count of a call, the Work of an op, the task kinds and
# _run, the one loop that starts tasks.

# ------------------------------------------------------------------------- the parallel template
# Every op runs a plan (cbn_plan.h: a pure function of the geometry, the thread count and the
# cache budget) as tasks of a few kinds; _run is the one loop that starts them -- on the
# calling thread when nt <= 1 (small inputs, one thread, a forked child: libgomp is not
# fork-safe), in an OpenMP team otherwise -- and notes the team size for the tests.  A task
# reads its arguments from the op's Work; scratch is a per-thread slice of `stride` doubles.

cdef inline int _threads_for(Py_ssize_t elems, int requested, Py_ssize_t tasks) noexcept nogil:
    """cbn_threads_for with this process's runtime; marks that a thread team will run (the
    fork handler then knows a child must stay serial).  Small inputs return before the OpenMP
    queries: omp_get_num_procs asks the kernel for the affinity mask (a system call, ~0.4 us,
    as long as a whole tiny inference)."""
    cdef int nt
    if elems < CBN_PARALLEL_MIN_ELEMS or _rt.forked_child:
        return 1
    nt = cbn_threads_for(elems, requested, tasks,
                         cbn_max_threads() if requested <= 0 else requested, cbn_num_procs(), 0)
    if nt > 1:
        _rt.team_started = 1
    return nt


cdef struct Work:
    const Geometry* g
    const cbn_plan* plan
    const void* x
    const void* dy
    const void* ym       # the activation's saved output (backward), or NULL
    void* out            # y or dx
    void* coef           # per-channel coefficients of the element-wise pass
    const void* ext      # their extension for streaming stores (channels-last), or NULL
    const cbn_post* post # the post-operation stage (kernels_post.pxi), or NULL
    const cbn_weights* wts  # the masked statistics' mask or weights (kernels_masked.pxi)
    int act
    bint stream, rev, with_dot
    double eps
    const double* w
    const double* b
    const double* mean
    const double* invstd
    double* mean_out
    double* var_out
    double* invstd_out
    double* m2_out
    double* sdy_out
    double* sdyx_out
    double* part
    const float* centre  # the two-level statistics' centres per channel (or NULL)
    Py_ssize_t n         # the floor: elements, and chunks of the element-wise loops
    Py_ssize_t nchunks


cdef enum TaskKind:
    MOMENTS_CM_ROWS
    MOMENTS_CM_CHANNEL
    MOMENTS_CM_SEGMENT
    MOMENTS_CL
    NORMALIZE_SHARE
    NORMALIZE_PIECE
    NORMALIZE_ROWS
    FORWARD_CHANNEL
    SUMS_CM_ROWS
    SUMS_CM_CHANNEL
    SUMS_CM_SEGMENT
    SUMS_CL
    DX_SHARE
    DX_PIECE
    DX_ROWS
    BACKWARD_CHANNEL
    WMOMENTS
    WDX
    WPAD
    FLOOR_SCALE
    FLOOR_TRIAD
    FLOOR_SUM


cdef void _run(const Work* wk, TaskKind kind, Py_ssize_t ntasks, int nt, bint dynamic,
               double* scratch, Py_ssize_t stride, const elem* etag,
               floating ftag) noexcept nogil:
    """Tasks 0 <= t < ntasks of one kind, on nt threads (schedule dynamic or static).  The
    type of the op's data is that of etag (any pointer of that type, never read), the type of
    its coefficients that of ftag."""
    cdef Py_ssize_t t
    if nt <= 1:
        cbn_note_team(_rt)
        for t in range(ntasks):
            _task(wk, kind, t, scratch, etag, ftag)
    elif dynamic:
        for t in prange(ntasks, num_threads=nt, schedule='dynamic'):
            cbn_note_team(_rt)
            _task(wk, kind, t, scratch + threadid() * stride if scratch != NULL else NULL, etag,
                  ftag)
    else:
        for t in prange(ntasks, num_threads=nt, schedule='static'):
            cbn_note_team(_rt)
            _task(wk, kind, t, scratch + threadid() * stride if scratch != NULL else NULL, etag,
                  ftag)
