# Included by _kernels.pyx (compiled per SIMD level; declarations and the fused type there).
# The training forward and inference.

# ------------------------------------------------------------------------------------ forward
cdef inline void _affine_coef(Py_ssize_t c, Py_ssize_t C, double centre, double scale,
                              double shift, floating* coef_out) noexcept nogil:
    """Coefficients of y = (x - centre) * scale + shift as [hi | scale | shift'] with
    centre = hi + lo (hi, lo of the input type) and shift' = shift - lo * scale: x - hi keeps the
    digits of x when |centre| >> |x - centre|, and lo * scale is small, so shift' carries no
    cancellation.  One subtraction and one fma per element."""
    cdef floating hi, lo
    _split_centre(centre, &hi, &lo)
    coef_out[c] = hi
    coef_out[C + c] = <floating>scale
    coef_out[2 * C + c] = <floating>(shift - <double>lo * scale)


cdef inline void _forward_coef(Py_ssize_t c, Py_ssize_t C, double mean, double m2, double n,
                               double eps, const double* w, const double* b,
                               double* mean_out, double* var_out, double* invstd_out,
                               floating* coef_out) noexcept nogil:
    cdef double var = m2 / n
    cdef double invstd = 1.0 / sqrt(var + eps)
    mean_out[c] = mean
    var_out[c] = var
    invstd_out[c] = invstd
    _affine_coef(c, C, mean, invstd * (w[c] if w != NULL else 1.0),
                 b[c] if b != NULL else 0.0, coef_out)


cdef void _forward_channel_fused(const floating* x, floating* y_out, const Geometry* g,
                                 Py_ssize_t c, double eps, const double* w, const double* b,
                                 double* mean_out, double* var_out, double* invstd_out,
                                 floating* coef, int act, bint stream, const cbn_post* post,
                                 floating* s) noexcept nogil:
    """Channel-major: statistics of channel c, then normalise it while it is still cached
    (through the post-operation post, with buffer s, when given)."""
    cdef double mean, m2
    cdef Py_ssize_t o, off, C = g.C
    _channel_moments_cm(x, g, c, &mean, &m2)
    _forward_coef(c, C, mean, m2, <double>g.n, eps, w, b, mean_out, var_out, invstd_out, coef)
    for o in range(g.outer):
        off = (o * C + c) * g.inner
        if post != NULL:
            _post_run(x, y_out, off, g.inner, coef[c], coef[C + c], coef[2 * C + c], post, s,
                      stream)
        else:
            _normalize_run(x + off, y_out + off, g.inner, coef[c], coef[C + c],
                           coef[2 * C + c], act, stream)
    if stream:
        cbn_nt_fence()


cdef int _forward(const floating* x, floating* y_out, const Geometry* g, int nt_req,
                  double eps, const double* w, const double* b,
                  double* mean_out, double* var_out, double* invstd_out,
                  int act, const cbn_post* post) noexcept nogil:
    """Training forward.  IN x, w, b (NULL = 1 / 0), the post-operation post (or NULL); OUT
    y_out = act(normalised x) (or post's output) and the per-channel float64 mean, biased var
    and invstd.  Returns 0, or -1 when out of memory."""
    cdef Py_ssize_t C = g.C, c
    cdef Py_ssize_t total = g.outer * C * g.inner
    cdef cbn_plan plan = cbn_plan_of(g, _threads_for(total, nt_req, cbn_tasks_of(g)),
                                     g.n * <Py_ssize_t>sizeof(floating), _rt.fuse_budget_bytes)
    cdef floating* coef = <floating*>cbn_alloc_beside(3 * C * sizeof(floating), y_out)
    cdef double* m2
    cdef double* buf = NULL
    cdef Py_ssize_t stride = 0
    cdef int rc
    cdef Work wk
    if coef == NULL:
        return -1
    if plan.fused:  # per channel: statistics, then normalise while cached
        wk.g = g
        wk.plan = &plan
        wk.x = x
        wk.out = y_out
        wk.coef = coef
        wk.act = act
        wk.post = post
        wk.eps = eps
        wk.w = w
        wk.b = b
        wk.mean_out = mean_out
        wk.var_out = var_out
        wk.invstd_out = invstd_out
        wk.stream = _streams(y_out, x, NULL, NULL, total, sizeof(floating), g.inner)
        if post != NULL:
            wk.stream = (wk.stream and post.res != y_out
                         and _streams(y_out, x, post.res, NULL, total, sizeof(floating), g.inner))
            stride = _post_stride(g, sizeof(floating))
            buf = <double*>malloc(max(1, plan.nt) * stride * sizeof(double))
            if buf == NULL:
                cbn_free_beside(coef)
                return -1
        _run(&wk, FORWARD_CHANNEL, C, plan.nt, True, buf, stride, <floating>0)
        free(buf)
        cbn_free_beside(coef)
        return 0
    m2 = <double*>malloc(C * sizeof(double))
    if m2 == NULL or _moments(x, g, &plan, mean_out, m2) != 0:
        free(m2)
        cbn_free_beside(coef)
        return -1
    for c in range(C):
        _forward_coef(c, C, mean_out[c], m2[c], <double>g.n, eps, w, b, mean_out, var_out,
                      invstd_out, coef)
    free(m2)
    rc = _normalize(x, y_out, g, &plan, coef, act, False, post)
    cbn_free_beside(coef)
    return rc


# ------------------------------------------------------------------------------------ inference
cdef int _inference(const floating* x, floating* y_out, const Geometry* g, int nt_req,
                    const double* centre, const double* scale, const double* shift,
                    int act, const cbn_post* post) noexcept nogil:
    """y = act((x - centre) * scale + shift), one pass, or the post-operation post (or NULL)
    of that.  IN per-channel float64 centre, scale, shift."""
    cdef Py_ssize_t C = g.C, c
    cdef int rc
    cdef cbn_plan plan = cbn_plan_of(
        g, _threads_for(g.outer * C * g.inner, nt_req, cbn_tasks_of(g)), 0, 0)
    cdef floating* coef = <floating*>cbn_alloc_beside(3 * C * sizeof(floating), y_out)
    if coef == NULL:
        return -1
    for c in range(C):
        _affine_coef(c, C, centre[c], scale[c], shift[c], coef)
    rc = _normalize(x, y_out, g, &plan, coef, act, True, post)
    cbn_free_beside(coef)
    return rc
