# Included by _kernels.pyx (compiled per SIMD level; declarations and the fused type there).
# The post-operation pass (cbn_post.h): the element-wise pass of an op with a residual or an
# activation beyond the in-register ones.  Each task hands its element ranges to the stage
# (cbn_post-inl.h), which forms bn(x) in registers (channel-major runs: the channels' scalar
# coefficients; channels-last rows: the extended coefficient vectors, wk.ext), adds the
# residual, reads dy at the same offsets and writes the output, streamed if the pass streams.
# A direct post-operation (the gradient from the output y) reads z itself.  The ranges follow
# the pass's own plan (CBN_EW_*), so nothing depends on the thread count.

cdef void _post_run(const elem* x, elem* out, Py_ssize_t off, Py_ssize_t nruns,
                    Py_ssize_t n, Py_ssize_t c0, Py_ssize_t C, const floating* coef,
                    const cbn_post* p, bint stream) noexcept nogil:
    """nruns consecutive channel-major runs of n elements from element off, the first of
    channel c0 (coef = [hi | scale | shift] of the C channels)."""
    if p.direct:  # the runs are one contiguous stretch of z
        _post_block(p, x + off, off, out + off, nruns * n, stream)
    else:
        if elem is float:
            cbn_post_runs_f32(p, x + off, off, out + off, nruns, n, c0, C, <const float*>coef,
                            stream)
        elif elem is double:
            cbn_post_runs_f64(p, x + off, off, out + off, nruns, n, c0, C, <const double*>coef,
                            stream)
        elif elem is cbn_f16:
            cbn_post_runs_f16(p, x + off, off, out + off, nruns, n, c0, C, <const float*>coef,
                            stream)
        else:
            cbn_post_runs_bf16(p, x + off, off, out + off, nruns, n, c0, C, <const float*>coef,
                            stream)


cdef inline void _post_block(const cbn_post* p, const elem* s, Py_ssize_t off, elem* out,
                             Py_ssize_t n, bint stream) noexcept nogil:
    """The stage over n elements whose z is s itself (direct), or s = bn(x) of a block."""
    if elem is float:
        cbn_post_block_f32(p, s, off, out, n, stream)
    elif elem is double:
        cbn_post_block_f64(p, s, off, out, n, stream)
    elif elem is cbn_f16:
        cbn_post_block_f16(p, s, off, out, n, stream)
    else:
        cbn_post_block_bf16(p, s, off, out, n, stream)


cdef void _post_rows(const Work* wk, Py_ssize_t t, const elem* x,
                     const floating* coef) noexcept nogil:
    """Channels-last block t of plan.rows_per_task rows (NORMALIZE_ROWS); coef has the type of
    the extended coefficients wk.ext."""
    cdef Py_ssize_t C = wk.g.C, rpt = wk.plan.rows_per_task
    cdef Py_ssize_t r0 = t * rpt, r1 = min(r0 + rpt, wk.g.outer), off = r0 * C
    cdef elem* out = <elem*>wk.out
    cdef const floating* ext = <const floating*>wk.ext
    if wk.post.direct:
        _post_block(wk.post, x + off, off, out + off, (r1 - r0) * C, wk.stream)
    else:
        if elem is float:
            cbn_post_rows_f32(wk.post, x + off, off, out + off, (r1 - r0) * C, C,
                               <const float*>ext, wk.stream)
        elif elem is double:
            cbn_post_rows_f64(wk.post, x + off, off, out + off, (r1 - r0) * C, C,
                               <const double*>ext, wk.stream)
        elif elem is cbn_f16:
            cbn_post_rows_f16(wk.post, x + off, off, out + off, (r1 - r0) * C, C,
                               <const float*>ext, wk.stream)
        else:
            cbn_post_rows_bf16(wk.post, x + off, off, out + off, (r1 - r0) * C, C,
                               <const float*>ext, wk.stream)


cdef void _post_task(const Work* wk, TaskKind kind, Py_ssize_t t, const elem* x,
                     const floating* coef) noexcept nogil:
    """Task t of a normalising pass with a post-operation (the NORMALIZE_* kinds)."""
    cdef Py_ssize_t nt = wk.plan.nt, C = wk.g.C, n = wk.g.inner, r0, r1, lo, hi
    if kind == NORMALIZE_SHARE:
        r0 = t * (wk.g.outer * C) // nt
        r1 = (t + 1) * (wk.g.outer * C) // nt
        _post_run(x, <elem*>wk.out, r0 * n, r1 - r0, n, r0 % C, C, coef, wk.post,
                  wk.stream)
    elif kind == NORMALIZE_PIECE:  # piece t % nt of run t // nt
        r0 = t // nt
        lo = (t % nt) * n // nt
        hi = (t % nt + 1) * n // nt
        _post_run(x, <elem*>wk.out, r0 * n + lo, 1, hi - lo, r0 % C, C, coef, wk.post,
                  wk.stream)
    else:
        _post_rows(wk, t, x, coef)
    if wk.stream:
        cbn_nt_fence()
