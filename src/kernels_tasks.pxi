# Included by _kernels.pyx (compiled per SIMD level; declarations and the fused type there).
# The tasks: every kind of work _run starts, dispatched by kind.

# ------------------------------------------------------------------------------------ the tasks
cdef void _task(const Work* wk, TaskKind kind, Py_ssize_t t, double* scratch,
                const elem* etag, floating ftag) noexcept nogil:
    """Task t of one kind (_run): every kind of work the kernels split between threads."""
    cdef const Geometry* g = wk.g
    cdef floating* coef = <floating*>wk.coef
    cdef const elem* x = <const elem*>wk.x
    cdef const elem* dy = <const elem*>wk.dy
    cdef const elem* ym = <const elem*>wk.ym
    cdef elem* out = <elem*>wk.out
    cdef Py_ssize_t nt, nruns, nch, cw
    if kind == FLOOR_SCALE or kind == FLOOR_TRIAD or kind == FLOOR_SUM:
        if elem is float or elem is double:  # the floor runs on float32 and float64 only
            _floor_task(wk, kind, t, x)
        return
    if kind == WMOMENTS:
        _wmoments_task(wk, t, scratch, x)
        return
    if kind == WDX:
        _wdx_task(wk, t, dy, x, out, coef)
        return
    if kind == WPAD:
        _pad_task(wk, t, x, out)
        return
    nt = wk.plan.nt
    nruns = g.outer * g.C
    nch = wk.plan.nch
    cw = wk.plan.cw
    if kind == MOMENTS_CM_ROWS:
        _moments_cm_rows_task(x, g, t // nch, min((t % nch) * cw, g.C),
                              min((t % nch + 1) * cw, g.C), wk.part, scratch, wk.centre)
    elif kind == MOMENTS_CM_CHANNEL:
        _channel_moments_cm(x, g, t, &wk.mean_out[t], &wk.m2_out[t])
    elif kind == MOMENTS_CM_SEGMENT:
        _segment_moments_cm(x, g, t // g.nseg, t % g.nseg, &wk.part[3 * t], &wk.part[3 * t + 1],
                            &wk.part[3 * t + 2],
                            wk.centre + t // g.nseg if wk.centre != NULL else NULL)
    elif kind == MOMENTS_CL:
        _moments_cl_task(x, g, t, wk.part, scratch, wk.plan.nt, wk.centre)
    elif ((kind == NORMALIZE_SHARE or kind == NORMALIZE_PIECE or kind == NORMALIZE_ROWS)
          and wk.post != NULL):
        _post_task(wk, kind, t, x, coef)
    elif kind == NORMALIZE_SHARE:
        _normalize_runs(x, out, g, coef, t * nruns // nt, (t + 1) * nruns // nt, wk.act,
                        wk.stream, wk.rev)
    elif kind == NORMALIZE_PIECE:
        _normalize_piece(x, out, g, coef, t // nt, t % nt, nt, wk.act, wk.stream)
    elif kind == NORMALIZE_ROWS:
        _normalize_rows_task(wk, t, x, coef)
    elif kind == FORWARD_CHANNEL:
        _forward_channel_fused(x, out, g, t, wk.eps, wk.w, wk.b, wk.mean_out, wk.var_out,
                               wk.invstd_out, coef, wk.act, wk.stream, wk.post)
    elif kind == SUMS_CM_ROWS:
        _sums_cm_rows_task(dy, ym, wk.act, x, g, t // nch, min((t % nch) * cw, g.C),
                           min((t % nch + 1) * cw, g.C), wk.mean, wk.with_dot, wk.part, scratch)
    elif kind == SUMS_CM_CHANNEL:
        _channel_sums_cm(dy, ym, wk.act, x, g, t, wk.mean[t], wk.with_dot, &wk.sdy_out[t],
                         &wk.sdyx_out[t])
    elif kind == SUMS_CM_SEGMENT:
        _segment_sums_cm(dy, ym, wk.act, x, g, t // g.nseg, t % g.nseg, wk.mean[t // g.nseg],
                         wk.with_dot, &wk.part[2 * t], &wk.part[2 * t + 1], True)
    elif kind == SUMS_CL:
        _sums_cl_task(dy, ym, wk.act, x, g, t, wk.mean, wk.centre, wk.with_dot, wk.part,
                      wk.plan.nt)
    elif kind == DX_SHARE:
        _dx_runs(dy, ym, wk.act, x, out, g, coef, t * nruns // nt, (t + 1) * nruns // nt,
                 wk.stream, wk.rev)
    elif kind == DX_PIECE:
        _dx_piece(dy, ym, wk.act, x, out, g, coef, t // nt, t % nt, nt, wk.stream)
    elif kind == DX_ROWS:
        _dx_rows_task(wk, t, dy, coef)
    elif kind == BACKWARD_CHANNEL:
        _backward_channel_fused(dy, ym, wk.act, x, out, g, t, wk.mean, wk.invstd, wk.w,
                                wk.sdy_out, wk.sdyx_out, coef, wk.stream)
