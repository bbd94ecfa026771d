# Included by _kernels.pyx (compiled per SIMD level; declarations and the fused type there).
# Backward: the sums, and dx.

# ------------------------------------------------------------------------------------ backward
# The backward sums of the 16-bit formats are two-level (cbn_partials.h): g and g (x - h) in
# float32 partials of L terms (as the statistics: 8 along runs, 4 down columns), then float64,
# with h the mean rounded to float32 and sum g (x - mean) = sum g (x - h) + (h - mean) sum g.
# Bound (u = 2^-24): |error of sum g| <= gamma_{L-1} sum |g| and |error of sum g (x - h)| <=
# gamma_{L+1} sum |g| |x - h| -- at most 2^-20 of the terms' magnitudes, 1/512 of what a
# float16 dy's own rounding (2^-11 of each term) can already contribute.  No certificate: the
# bound is relative to the terms, as that of float64 sums is (a cancelling sum has no relative
# bound in either); dx, rounded to the 16-bit format, moves by at most 2^-20 of its scale.
cdef inline double _about_mean(double sum_gxh, double sum_g, float h, double mean) noexcept nogil:
    """sum g (x - mean) from sum g (x - h), h the mean rounded to float32 (h - mean is exact)."""
    return sum_gxh + (<double>h - mean) * sum_g


cdef void _segment_sums_cm(const elem* dy, const elem* ym, int act, const elem* x,
                           const Geometry* g,
                           Py_ssize_t c, Py_ssize_t s, double mean, bint with_dot,
                           double* sdy_out, double* sdyx_out, bint two_level) noexcept nogil:
    """Channel-major: sum(dy) and (if with_dot) sum(dy * (x - mean)) over segment s of channel
    c, run by run in block order.  OUT scalars (overwritten).  two_level (the 16-bit formats):
    in two levels (above) into 8 lanes, summed once; else in float64, run by run."""
    cdef Py_ssize_t b, o, o0, o1, i0, i1, off, l
    cdef double a = 0.0, d = 0.0
    cdef double lanes[16]
    cdef float h = <float>mean
    two_level = two_level and (elem is cbn_f16 or elem is cbn_bf16)
    if two_level:
        for l in range(16):
            lanes[l] = 0.0
    for b in range(cbn_seg_start(g, s), cbn_seg_start(g, s + 1)):
        _block_range(g, b, &o0, &o1, &i0, &i1)
        for o in range(o0, o1):
            off = (o * g.C + c) * g.inner + i0
            if two_level:
                _partial_sum_dot8(dy + off, _at(ym, off), x + off, i1 - i0, h, lanes,
                                  lanes + 8 if with_dot else NULL, act)
            elif with_dot:
                _sum_dot(dy + off, _at(ym, off), act, x + off, i1 - i0, mean, &a, &d)
            else:
                _sum_like_dot(dy + off, _at(ym, off), act, i1 - i0, &a)
    if two_level:
        a = cbn_hsum8_array(lanes)
        if with_dot:
            d = _about_mean(cbn_hsum8_array(lanes + 8), a, h, mean)
    sdy_out[0] = a
    sdyx_out[0] = d


cdef void _channel_sums_cm_in(const elem* dy, const elem* ym, int act, const elem* x,
                              const Geometry* g, Py_ssize_t c, double mean, bint with_dot,
                              double* sdy_out, double* sdyx_out, bint two_level) noexcept nogil:
    cdef double a = 0.0, d = 0.0, sa, sd
    cdef Py_ssize_t s
    for s in range(g.nseg):
        _segment_sums_cm(dy, ym, act, x, g, c, s, mean, with_dot, &sa, &sd, two_level)
        a = a + sa
        d = d + sd
    sdy_out[0] = a
    sdyx_out[0] = d


cdef void _channel_sums_cm(const elem* dy, const elem* ym, int act, const elem* x,
                           const Geometry* g,
                           Py_ssize_t c, double mean, bint with_dot,
                           double* sdy_out, double* sdyx_out) noexcept nogil:
    """Channel-major: the backward sums of channel c, segment by segment: two-level for the
    16-bit formats unless a float32 partial overflowed (_sums_finite), else in float64."""
    _channel_sums_cm_in(dy, ym, act, x, g, c, mean, with_dot, sdy_out, sdyx_out, True)
    if (elem is cbn_f16 or elem is cbn_bf16) and not _sums_finite(sdy_out[0], sdyx_out[0]):
        _channel_sums_cm_in(dy, ym, act, x, g, c, mean, with_dot, sdy_out, sdyx_out, False)


cdef inline bint _sums_finite(double sdy, double sdyx) noexcept nogil:
    """Whether two-level backward sums are finite.  bfloat16 keeps float32's range, so a
    float32 partial of finite terms can overflow (|dy (x - h)| beyond 3.4e38) where float64
    does not: such a channel is summed again in float64, which also keeps the NaN or Inf of
    non-finite input."""
    return isfinite(sdy) and isfinite(sdyx)


cdef void _channel_sums_cl_exact(const elem* dy, const elem* ym, int act, const elem* x,
                                 const Geometry* g, Py_ssize_t c, double mean, bint with_dot,
                                 double* sdy_out, double* sdyx_out) noexcept nogil:
    """Channels-last: the backward sums of the one channel c in float64, row by row (a
    16-bit channel whose two-level sums overflowed)."""
    cdef Py_ssize_t r, i
    cdef double a = 0.0, d = 0.0, gv
    for r in range(g.outer):
        i = r * g.C + c
        gv = _act_grad(_ld(dy[i]), _ld(ym[i]) if act != CBN_ACT_NONE else 0.0, act)
        a += gv
        if with_dot:
            d += gv * (_ld(x[i]) - mean)
    sdy_out[0] = a
    sdyx_out[0] = d


cdef void _sums_cm_rows_task(const elem* dy, const elem* ym, int act, const elem* x,
                             const Geometry* g,
                             Py_ssize_t s, Py_ssize_t c0, Py_ssize_t c1, const double* mean,
                             bint with_dot, double* part, double* scratch) noexcept nogil:
    """Channel-major short runs: the sums of segment s for channels [c0, c1) in memory order,
    into the (2, nseg, C) partials.  Per channel, 8-lane partials run over the segment's runs in
    row order and are summed horizontally once (a horizontal sum and a scalar tail per run cost
    ~20% of these sums with runs of 196); scratch holds 16 * (c1 - c0) doubles."""
    cdef Py_ssize_t C = g.C, inner = g.inner, j, o, off, l
    cdef Py_ssize_t r0 = min(cbn_seg_start(g, s) * g.rows_per_block, g.outer)
    cdef Py_ssize_t r1 = min(cbn_seg_start(g, s + 1) * g.rows_per_block, g.outer)
    cdef double* sdy = part + s * C
    cdef double* sdyx = part + g.nseg * C + s * C
    cdef double* acc_g = scratch
    cdef double* acc_d = scratch + 8 * (c1 - c0)
    for l in range(16 * (c1 - c0)):
        scratch[l] = 0.0
    for o in range(r0, r1):
        for j in range(c0, c1):
            off = (o * C + j) * inner
            if elem is cbn_f16 or elem is cbn_bf16:
                _partial_sum_dot8(dy + off, _at(ym, off), x + off, inner, <float>mean[j],
                                  acc_g + 8 * (j - c0), acc_d + 8 * (j - c0) if with_dot else NULL,
                                  act)
            else:
                _sum_dot8(dy + off, _at(ym, off), x + off, inner, mean[j], acc_g + 8 * (j - c0),
                          acc_d + 8 * (j - c0) if with_dot else NULL, act)
    for j in range(c0, c1):
        sdy[j] = cbn_hsum8_array(acc_g + 8 * (j - c0))
        sdyx[j] = cbn_hsum8_array(acc_d + 8 * (j - c0))
        if (elem is cbn_f16 or elem is cbn_bf16) and with_dot:
            sdyx[j] = _about_mean(sdyx[j], sdy[j], <float>mean[j], mean[j])


cdef inline void _sums_cl_task(const elem* dy, const elem* ym, int act, const elem* x,
                               const Geometry* g,
                               Py_ssize_t t, const double* mean, const float* centre,
                               bint with_dot, double* part, int threads) noexcept nogil:
    """Channels-last: sums of segment s over one channel chunk into the (2, nseg, C) partials
    (the 16-bit formats: two-level, about centre, the means rounded to float32)."""
    cdef Py_ssize_t s = t // g.ncol_chunks
    cdef Py_ssize_t c0 = (t % g.ncol_chunks) * g.col_width
    cdef Py_ssize_t w = min(g.col_width, g.C - c0)
    cdef Py_ssize_t j
    cdef Py_ssize_t r0 = min(cbn_seg_start(g, s) * g.rows_per_block, g.outer)
    cdef Py_ssize_t r1 = min(cbn_seg_start(g, s + 1) * g.rows_per_block, g.outer)
    cdef double* sdy = part + s * g.C + c0
    cdef double* sdyx = part + g.nseg * g.C + s * g.C + c0
    for j in range(w):
        sdy[j] = 0.0
        sdyx[j] = 0.0
    if elem is cbn_f16 or elem is cbn_bf16:
        _col_partial_sum_dot(sdy, sdyx if with_dot else NULL, dy + r0 * g.C + c0,
                             _at(ym, r0 * g.C + c0), act, x + r0 * g.C + c0, g.C, r1 - r0,
                             centre + c0, w, threads)
        if with_dot:
            for j in range(w):
                sdyx[j] = _about_mean(sdyx[j], sdy[j], centre[c0 + j], mean[c0 + j])
    else:
        _col_sum_dot(sdy, sdyx if with_dot else NULL, dy + r0 * g.C + c0, _at(ym, r0 * g.C + c0),
                     act, x + r0 * g.C + c0, g.C, r1 - r0, mean + c0, w, threads)


cdef inline bint _backward_coef(Py_ssize_t c, Py_ssize_t C, double n, const double* mean,
                                const double* invstd, const double* w, const double* sdy,
                                const double* sdyx, floating* coef_out,
                                double* wide_out) noexcept nogil:
    """dx = w*invstd*(dy - sdy/n - (x-mean)*invstd^2*sdyx/n) = dy*k1 + (x-mean)*k2 + k3,
    stored as [hi | k1 | k2 | k3 - lo*k2] (see _affine_coef for the centre split).  Returns
    whether the channel is wide (kernels_wide.pxi; its coefficients are then zero), with its
    float64 (mean, k1, k2, k3) in wide_out[0:4] then."""
    cdef double k1 = invstd[c] * (w[c] if w != NULL else 1.0)
    cdef double k2 = -k1 * invstd[c] * invstd[c] * sdyx[c] / n
    cdef double k3 = -k1 * sdy[c] / n
    cdef double split
    cdef floating hi, lo
    _split_centre(mean[c], &hi, &lo)
    split = k3 - <double>lo * k2
    if floating is float:
        if _dx_wide(mean[c], hi, k1, k2, split):
            wide_out[0] = mean[c]
            wide_out[1] = k1
            wide_out[2] = k2
            wide_out[3] = k3
            coef_out[c] = 0.0
            coef_out[C + c] = 0.0
            coef_out[2 * C + c] = 0.0
            coef_out[3 * C + c] = 0.0
            return True
    coef_out[c] = hi
    coef_out[C + c] = <floating>k1
    coef_out[2 * C + c] = <floating>k2
    coef_out[3 * C + c] = <floating>split
    return False


cdef int _dx_coefs(const elem* dy, const elem* ym, int act, const elem* x,
                   const Geometry* g, double n, const double* mean, const double* invstd,
                   const double* w, const double* sdy, const double* sdyx, floating* coef_out,
                   Wide* wd) noexcept nogil:
    """The coefficients of every channel (_backward_coef), and the wide channels' dx packed
    into wd (kernels_wide.pxi; computed before the dx pass, which may be in place).  0/-1."""
    cdef double k[4]
    cdef Py_ssize_t c
    cdef int rc = 0
    for c in range(g.C):
        if _backward_coef(c, g.C, n, mean, invstd, w, sdy, sdyx, coef_out, k) and rc == 0:
            rc = _wide_add(wd, g.C, c, k[0], k[1], k[2], k[3])
    if rc == 0:
        rc = _wide_dx(dy, ym, act, x, g, wd)
    return rc


cdef void _backward_channel_fused(const elem* dy, const elem* ym, int act,
                                  const elem* x,
                                  elem* dx_out,
                                  const Geometry* g, Py_ssize_t c, const double* mean,
                                  const double* invstd, const double* w, double* sdy_out,
                                  double* sdyx_out, floating* coef, bint stream) noexcept nogil:
    """Channel-major: the sums of channel c, then its dx while x and dy are still cached."""
    cdef Py_ssize_t o, off, C = g.C
    cdef double k[4]
    _channel_sums_cm(dy, ym, act, x, g, c, mean[c], True, &sdy_out[c], &sdyx_out[c])
    if _backward_coef(c, C, <double>g.n, mean, invstd, w, sdy_out, sdyx_out, coef, k):
        _wide_dx_channel(dy, ym, act, x, dx_out, False, g, c, k)
        return
    for o in range(g.outer):
        off = (o * C + c) * g.inner
        _dx_run(dy + off, _at(ym, off), act, x + off, dx_out + off, g.inner, coef[c], coef[C + c],
                coef[2 * C + c], coef[3 * C + c], stream)
    if stream:
        cbn_nt_fence()


cdef void _sum_segment_partials(const Geometry* g, const double* part, bint by_task,
                                double* sdy_out, double* sdyx_out) noexcept nogil:
    """Per-channel backward sums from their per-segment partials, added in segment order:
    by_task, pairs in (channel, segment) task order; else the two (nseg, C) planes."""
    cdef Py_ssize_t C = g.C, c, s, t
    for c in range(C):
        sdy_out[c] = 0.0
        sdyx_out[c] = 0.0
    if by_task:
        for c in range(C):
            for s in range(g.nseg):
                t = c * g.nseg + s
                sdy_out[c] = sdy_out[c] + part[2 * t]
                sdyx_out[c] = sdyx_out[c] + part[2 * t + 1]
        return
    for s in range(g.nseg):  # channels innermost: vectorised across channels
        for c in range(C):
            sdy_out[c] = sdy_out[c] + part[s * C + c]
            sdyx_out[c] = sdyx_out[c] + part[g.nseg * C + s * C + c]


cdef int _backward_sums(Work* wk, const Geometry* g, const cbn_plan* plan,
                        const elem* etag, floating tag) noexcept nogil:
    """The backward sums as the plan splits them (CBN_RED_*), into wk.sdy_out, wk.sdyx_out;
    etag has the data's type, tag the arithmetic type.  Returns 0/-1."""
    cdef Py_ssize_t C = g.C, stride = 0
    cdef double* scratch = NULL
    cdef float* centre = NULL
    cdef Py_ssize_t c
    wk.centre = NULL
    if plan.reduce == CBN_RED_CM_CHANNELS:
        _run(wk, SUMS_CM_CHANNEL, C, plan.nt, True, NULL, 0, etag, tag)
        return 0
    if (elem is cbn_f16 or elem is cbn_bf16) and plan.reduce == CBN_RED_CL:
        centre = <float*>malloc((C + 1) * sizeof(float))
        if centre == NULL:
            return -1
        for c in range(C):
            centre[c] = <float>wk.mean[c]
        wk.centre = centre
    if plan.reduce == CBN_RED_CM_SEGMENTS:
        wk.part = <double*>malloc(2 * plan.ntasks_red * sizeof(double))
    else:
        wk.part = <double*>malloc(2 * g.nseg * C * sizeof(double))
    if plan.reduce == CBN_RED_CM_ROWS:
        scratch = cbn_alloc_per_thread(plan.nt, 16 * plan.cw, &stride)
        if scratch == NULL:
            free(wk.part)
            free(centre)
            return -1
    if wk.part == NULL:
        free(scratch)
        free(centre)
        return -1
    if plan.reduce == CBN_RED_CM_ROWS:
        _run(wk, SUMS_CM_ROWS, plan.ntasks_red, plan.nt, True, scratch, stride, etag, tag)
    elif plan.reduce == CBN_RED_CM_SEGMENTS:
        _run(wk, SUMS_CM_SEGMENT, plan.ntasks_red, plan.nt, True, NULL, 0, etag, tag)
    else:
        _run(wk, SUMS_CL, plan.ntasks_red, plan.nt, True, NULL, 0, etag, tag)
    free(scratch)
    free(centre)
    wk.centre = NULL
    _sum_segment_partials(g, wk.part, plan.reduce == CBN_RED_CM_SEGMENTS, wk.sdy_out,
                          wk.sdyx_out)
    free(wk.part)
    if elem is cbn_f16 or elem is cbn_bf16:  # a float32 partial that overflowed: float64
        for c in range(C):
            if not _sums_finite(wk.sdy_out[c], wk.sdyx_out[c]):
                if g.inner == 1:
                    _channel_sums_cl_exact(<const elem*>wk.dy, <const elem*>wk.ym, wk.act,
                                           <const elem*>wk.x, g, c, wk.mean[c], wk.with_dot,
                                           &wk.sdy_out[c], &wk.sdyx_out[c])
                else:
                    _channel_sums_cm_in(<const elem*>wk.dy, <const elem*>wk.ym, wk.act,
                                        <const elem*>wk.x, g, c, wk.mean[c], wk.with_dot,
                                        &wk.sdy_out[c], &wk.sdyx_out[c], False)
    return 0


cdef int _backward(const elem* dy, const elem* ym, int act, const elem* x,
                   elem* dx_out, const Geometry* g, int nt_req, const double* mean,
                   const double* invstd, const double* w, bint with_dot, double* sdy_out,
                   double* sdyx_out, floating tag) noexcept nogil:
    """Backward.  IN dy, x, float64 mean/invstd, w (NULL = 1), and the fused activation act
    with its output ym (cbn_epilogue.h; CBN_ACT_NONE and NULL without one): g, dy through the
    activation, replaces dy.  OUT sdy_out = sum(g) and, if with_dot, sdyx_out =
    sum(g * (x - mean)); dx_out too unless it is NULL; tag has the arithmetic type.
    Returns 0/-1."""
    cdef Py_ssize_t C = g.C, c
    cdef Py_ssize_t total = g.outer * C * g.inner
    cdef cbn_plan plan = cbn_plan_of(
        g, _threads_for(total, nt_req, cbn_tasks_of(g)),
        2 * g.n * <Py_ssize_t>sizeof(elem) if dx_out != NULL else 0, _rt.fuse_budget_bytes)
    cdef floating* coef = NULL
    cdef Work wk
    cdef Wide wd
    cdef int rc = 0
    if dx_out != NULL:
        coef = <floating*>cbn_alloc_beside(4 * C * sizeof(floating), dx_out)
        if coef == NULL:
            return -1
    wk.g = g
    wk.plan = &plan
    wk.dy = dy
    wk.ym = ym
    wk.act = act
    wk.x = x
    wk.out = dx_out
    wk.coef = coef
    wk.mean = mean
    wk.invstd = invstd
    wk.w = w
    wk.with_dot = with_dot
    wk.sdy_out = sdy_out
    wk.sdyx_out = sdyx_out
    if plan.fused:  # per channel: the sums, then dx while x and dy are cached
        wk.stream = False
        if elem is float or elem is double:  # the 16-bit formats never stream
            wk.stream = _streams(dx_out, dy, x, ym, total, sizeof(elem), g.inner)
        _run(&wk, BACKWARD_CHANNEL, C, plan.nt, True, NULL, 0, x, tag)
        cbn_free_beside(coef)
        return 0
    if _backward_sums(&wk, g, &plan, x, tag) != 0:
        cbn_free_beside(coef)
        return -1
    if dx_out != NULL:
        _wide_init(&wd)
        rc = _dx_coefs(dy, ym, act, x, g, <double>g.n, mean, invstd, w, sdy_out, sdyx_out, coef,
                       &wd)
        if rc == 0:
            _dx_pass(dy, ym, act, x, dx_out, g, &plan, coef)
        _wide_finish(dx_out, g, &wd)
        cbn_free_beside(coef)
    return rc


cdef int _dx_from_sums(const elem* dy, const elem* ym, int act, const elem* x,
                       elem* dx_out, const Geometry* g, int nt_req, double n_total,
                       const double* mean, const double* invstd, const double* w,
                       const double* sdy, const double* sdyx, floating tag) noexcept nogil:
    """dx from given float64 sums over n_total values per channel (SyncBN); tag has the
    arithmetic type.  Returns 0/-1."""
    cdef cbn_plan plan = cbn_plan_of(
        g, _threads_for(g.outer * g.C * g.inner, nt_req, cbn_tasks_of(g)), 0, 0)
    cdef floating* coef = <floating*>cbn_alloc_beside(4 * g.C * sizeof(floating), dx_out)
    cdef Wide wd
    cdef int rc
    if coef == NULL:
        return -1
    _wide_init(&wd)
    rc = _dx_coefs(dy, ym, act, x, g, n_total, mean, invstd, w, sdy, sdyx, coef, &wd)
    if rc == 0:
        _dx_pass(dy, ym, act, x, dx_out, g, &plan, coef)
    _wide_finish(dx_out, g, &wd)
    cbn_free_beside(coef)
    return rc
