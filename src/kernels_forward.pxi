# Included by _kernels.pyx (compiled per SIMD level; declarations and the fused type there).
# The training forward and inference.

# ------------------------------------------------------------------------------------ forward
cdef inline bint _affine_coef(Py_ssize_t c, Py_ssize_t C, double centre, double scale,
                              double shift, floating* coef_out) noexcept nogil:
    """Coefficients of y = (x - centre) * scale + shift as [hi | scale | shift'] with
    centre = hi + lo (hi, lo of the input type) and shift' = shift - lo * scale: x - hi keeps the
    digits of x when |centre| >> |x - centre|, and lo * scale is small, so shift' carries no
    cancellation.  One subtraction and one fma per element.  Returns whether the channel is
    wide (kernels_wide.pxi); its coefficients are then zero."""
    cdef floating hi, lo
    cdef double split
    _split_centre(centre, &hi, &lo)
    split = shift - <double>lo * scale
    if floating is float:
        if _affine_wide(centre, hi, scale, split):
            coef_out[c] = 0.0
            coef_out[C + c] = 0.0
            coef_out[2 * C + c] = 0.0
            return True
    coef_out[c] = hi
    coef_out[C + c] = <floating>scale
    coef_out[2 * C + c] = <floating>split
    return False


cdef inline bint _forward_coef(Py_ssize_t c, Py_ssize_t C, double mean, double m2, double n,
                               double eps, const double* w, const double* b,
                               double* mean_out, double* var_out, double* invstd_out,
                               floating* coef_out, double* wide_out) noexcept nogil:
    """The statistics of channel c and its coefficients (_affine_coef); returns whether it is
    wide, with its float64 (centre, scale, shift) in wide_out[0:3] then."""
    cdef double var = m2 / n
    cdef double invstd = 1.0 / sqrt(var + eps)
    cdef double scale = invstd * (w[c] if w != NULL else 1.0)
    cdef double shift = b[c] if b != NULL else 0.0
    mean_out[c] = mean
    var_out[c] = var
    invstd_out[c] = invstd
    wide_out[0] = mean
    wide_out[1] = scale
    wide_out[2] = shift
    return _affine_coef(c, C, mean, scale, shift, coef_out)


cdef void _forward_channel_fused(const elem* x, elem* y_out, const Geometry* g,
                                 Py_ssize_t c, double eps, const double* w, const double* b,
                                 double* mean_out, double* var_out, double* invstd_out,
                                 floating* coef, int act, bint stream,
                                 const cbn_post* post) noexcept nogil:
    """Channel-major: statistics of channel c, then normalise it while it is still cached
    (through the post-operation post when given)."""
    cdef double mean, m2
    cdef double k[3]
    cdef Py_ssize_t o, off, C = g.C
    _channel_moments_cm(x, g, c, &mean, &m2)
    if _forward_coef(c, C, mean, m2, <double>g.n, eps, w, b, mean_out, var_out, invstd_out,
                     coef, k):
        _wide_affine_channel(x, y_out, False, g, c, k, act, post)
        return
    for o in range(g.outer):
        off = (o * C + c) * g.inner
        if post != NULL:
            _post_run(x, y_out, off, 1, g.inner, c, C, coef, post, stream)
        else:
            _normalize_run(x + off, y_out + off, g.inner, coef[c], coef[C + c],
                           coef[2 * C + c], act, stream)
    if stream:
        cbn_nt_fence()


cdef int _forward(const elem* x, elem* y_out, const Geometry* g, int nt_req,
                  double eps, const double* w, const double* b,
                  double* mean_out, double* var_out, double* invstd_out,
                  int act, const cbn_post* post, floating tag) noexcept nogil:
    """Training forward.  IN x, w, b (NULL = 1 / 0), the post-operation post (or NULL); OUT
    y_out = act(normalised x) (or post's output) and the per-channel float64 mean, biased var
    and invstd; tag has the arithmetic type.  Returns 0, or -1 when out of memory."""
    cdef Py_ssize_t C = g.C, c
    cdef Py_ssize_t total = g.outer * C * g.inner
    cdef cbn_plan plan = cbn_plan_of(g, _threads_for(total, nt_req, cbn_tasks_of(g)),
                                     g.n * <Py_ssize_t>sizeof(elem), _rt.fuse_budget_bytes)
    cdef floating* coef = <floating*>cbn_alloc_beside(3 * C * sizeof(floating), y_out)
    cdef double* m2
    cdef double k[3]
    cdef int rc
    cdef Work wk
    cdef Wide wd
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
        wk.stream = False
        if elem is float or elem is double:  # the 16-bit formats never stream
            wk.stream = _streams(y_out, x, NULL, NULL, total, sizeof(elem), g.inner)
            if post != NULL:
                wk.stream = (wk.stream and post.res != y_out
                             and _streams(y_out, x, post.res, NULL, total, sizeof(elem), g.inner))
        _run(&wk, FORWARD_CHANNEL, C, plan.nt, True, NULL, 0, x, tag)
        cbn_free_beside(coef)
        return 0
    m2 = <double*>malloc(C * sizeof(double))
    if m2 == NULL or _moments(x, g, &plan, mean_out, m2, tag) != 0:
        free(m2)
        cbn_free_beside(coef)
        return -1
    _wide_init(&wd)
    rc = 0
    for c in range(C):
        if (_forward_coef(c, C, mean_out[c], m2[c], <double>g.n, eps, w, b, mean_out, var_out,
                          invstd_out, coef, k) and rc == 0):
            rc = _wide_add(&wd, C, c, k[0], k[1], k[2], 0.0)
    free(m2)
    if rc == 0:
        rc = _wide_affine(x, g, &wd, act, post)
    if rc == 0:
        rc = _normalize(x, y_out, g, &plan, coef, act, False, post)
    _wide_finish(y_out, g, &wd)
    cbn_free_beside(coef)
    return rc


# ------------------------------------------------------------------------------------ inference
cdef int _inference(const elem* x, elem* y_out, const Geometry* g, int nt_req,
                    const double* centre, const double* scale, const double* shift,
                    int act, const cbn_post* post, floating tag) noexcept nogil:
    """y = act((x - centre) * scale + shift), one pass, or the post-operation post (or NULL)
    of that.  IN per-channel float64 centre, scale, shift; tag has the arithmetic type."""
    cdef Py_ssize_t C = g.C, c
    cdef int rc
    cdef cbn_plan plan = cbn_plan_of(
        g, _threads_for(g.outer * C * g.inner, nt_req, cbn_tasks_of(g)), 0, 0)
    cdef floating* coef = <floating*>cbn_alloc_beside(3 * C * sizeof(floating), y_out)
    cdef Wide wd
    if coef == NULL:
        return -1
    _wide_init(&wd)
    rc = 0
    for c in range(C):
        if (_affine_coef(c, C, centre[c], scale[c], shift[c], coef) and rc == 0
                and (post == NULL or not post.direct)):  # direct: no affine map (unread)
            rc = _wide_add(&wd, C, c, centre[c], scale[c], shift[c], 0.0)
    if rc == 0:
        rc = _wide_affine(x, g, &wd, act, post)
    if rc == 0:
        rc = _normalize(x, y_out, g, &plan, coef, act, True, post)
    _wide_finish(y_out, g, &wd)
    cbn_free_beside(coef)
    return rc
