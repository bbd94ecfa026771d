# Included by _kernels.pyx (compiled per SIMD level; declarations and the fused type there).
# Element-wise passes: normalise and dx, their streaming-store and 4K-aliasing decisions.

# --------------------------------------------------------------------------- element-wise passes
cdef inline bint _streams(const void* out, const void* a, const void* b, const void* c,
                          Py_ssize_t n, Py_ssize_t itemsize, Py_ssize_t run,
                          bint single_pass=False) noexcept nogil:
    """Whether an element-wise pass writes its n-element output with streaming stores: the
    arrays it touches (the output and the non-NULL inputs a, b, c) cannot stay in the
    last-level cache together (the runtime's nt_min_bytes; twice that for a single_pass op,
    inference, whose output is the only thing left to keep, when several threads share the
    memory bus:
    measured, 2 threads, float32, x + y of 51 MB against a 32 MB L3, streamed 0.74-1.30x the
    plain-store floor across processes and plain stores 0.98-1.06x, while at 103 MB streaming
    won every time, 0.82-0.85x against 1.03-1.06x.  One thread cannot keep enough plain-store
    misses in flight: there streaming already wins at 1x, 0.57-0.80x the time of plain
    stores at 34-51 MB, NHWC 0.99-1.07x.  The passes that follow a reduction gain from it at
    1x too, e.g. backward 0.85-0.98x against 1.01-1.14x), the output aliases none of the
    inputs (in place the line is read anyway, so a plain store costs no extra read), it is
    aligned to its element size, and its contiguous runs (``run`` elements) are long enough for
    the plain head and tail of each run not to dominate (CBN_NT_MIN_RUN_BYTES).  Called once per
    pass, before its parallel region; notes a yes for last_streamed()."""
    cdef Py_ssize_t arrays = 1 + (a != NULL) + (b != NULL) + (c != NULL)
    cdef bint yes = (cbn_nt_available() and _rt.nt_min_bytes >= 0 and n > 0
                     and arrays * n * itemsize // (2 if single_pass else 1) >= _rt.nt_min_bytes
                     and run * itemsize >= CBN_NT_MIN_RUN_BYTES and out != a and out != b
                     and out != c and (<size_t>out) % <size_t>itemsize == 0)
    if yes:
        _rt.last_streamed = 1
    return yes


cdef inline bint _note_reversed(bint rev) noexcept nogil:
    if rev:
        _rt.last_reversed = 1
    return rev


cdef inline bint _reverse(const void* out, const void* a, const void* b,
                          const void* c) noexcept nogil:
    """Whether a plain-store element-wise pass walks down in memory (cbn_reverse.h): its output
    starts up to CBN_ALIAS_WINDOW bytes past an input modulo 4 KB (walking up, each load would wait
    on the store just issued to the same address modulo 4 KB), and no input starts just past
    the output (walking down would then alias the same way)."""
    cdef const void* ins[3]
    cdef size_t d
    cdef bint near = False, far = False
    cdef int j
    if _rt.reverse_mode != 1:
        return _note_reversed(_rt.reverse_mode == 2)
    ins[0] = a
    ins[1] = b
    ins[2] = c
    for j in range(3):
        if ins[j] != NULL:
            d = (<size_t>out - <size_t>ins[j]) & 4095
            if 0 < d <= CBN_ALIAS_WINDOW:
                near = True
            elif d >= 4096 - CBN_ALIAS_WINDOW:
                far = True
    return _note_reversed(near and not far)


cdef inline void _normalize_run(const elem* x, elem* y_out, Py_ssize_t n, floating hi,
                                floating scale, floating shift, int act,
                                bint stream) noexcept nogil:
    """y = act((x - hi) * scale + shift) over one run (cbn_epilogue.h); streaming stores if
    stream."""
    if stream:
        if elem is float:
            cbn_affine_run_nt_f32(x, y_out, n, hi, scale, shift, act)
        elif elem is double:
            cbn_affine_run_nt_f64(x, y_out, n, hi, scale, shift, act)
        elif elem is cbn_f16:
            cbn_affine_run_nt_f16(x, y_out, n, hi, scale, shift, act)
        else:
            cbn_affine_run_nt_bf16(x, y_out, n, hi, scale, shift, act)
    else:
        if elem is float:
            cbn_affine_run_f32(x, y_out, n, hi, scale, shift, act)
        elif elem is double:
            cbn_affine_run_f64(x, y_out, n, hi, scale, shift, act)
        elif elem is cbn_f16:
            cbn_affine_run_f16(x, y_out, n, hi, scale, shift, act)
        else:
            cbn_affine_run_bf16(x, y_out, n, hi, scale, shift, act)


cdef inline void _affine_rows(const elem* x, elem* y_out, Py_ssize_t ld, Py_ssize_t rows,
                              Py_ssize_t w, const floating* coef, Py_ssize_t C,
                              int act) noexcept nogil:
    """Channels-last rows: y = act((x - hi) * scale + shift), coef = [hi | scale | shift]; in
    place when x is y_out."""
    if elem is float:
        cbn_affine_f32(x, y_out, ld, rows, w, <const float*>coef, <const float*>coef + C,
                       <const float*>coef + 2 * C, act)
    elif elem is double:
        cbn_affine_f64(x, y_out, ld, rows, w, <const double*>coef, <const double*>coef + C,
                       <const double*>coef + 2 * C, act)
    elif elem is cbn_f16:
        cbn_affine_f16(x, y_out, ld, rows, w, <const float*>coef, <const float*>coef + C,
                       <const float*>coef + 2 * C, act)
    else:
        cbn_affine_bf16(x, y_out, ld, rows, w, <const float*>coef, <const float*>coef + C,
                       <const float*>coef + 2 * C, act)


cdef inline void _dx_run(const elem* dy, const elem* ym, int act, const elem* x,
                         elem* dx_out, Py_ssize_t n, floating hi, floating k1, floating k2,
                         floating k3, bint stream) noexcept nogil:
    """dx = g * k1 + (x - hi) * k2 + k3 with g = dy through the activation act whose output
    is ym; streaming stores if stream."""
    if stream:
        if elem is float:
            cbn_dx_run_nt_f32(dy, ym, x, dx_out, n, hi, k1, k2, k3, act)
        elif elem is double:
            cbn_dx_run_nt_f64(dy, ym, x, dx_out, n, hi, k1, k2, k3, act)
        elif elem is cbn_f16:
            cbn_dx_run_nt_f16(dy, ym, x, dx_out, n, hi, k1, k2, k3, act)
        else:
            cbn_dx_run_nt_bf16(dy, ym, x, dx_out, n, hi, k1, k2, k3, act)
    else:
        if elem is float:
            cbn_dx_run_f32(dy, ym, x, dx_out, n, hi, k1, k2, k3, act)
        elif elem is double:
            cbn_dx_run_f64(dy, ym, x, dx_out, n, hi, k1, k2, k3, act)
        elif elem is cbn_f16:
            cbn_dx_run_f16(dy, ym, x, dx_out, n, hi, k1, k2, k3, act)
        else:
            cbn_dx_run_bf16(dy, ym, x, dx_out, n, hi, k1, k2, k3, act)


cdef inline void _dx_rows(const elem* dy, const elem* ym, int act, const elem* x,
                          elem* dx_out, Py_ssize_t ld, Py_ssize_t rows, Py_ssize_t C,
                          const floating* coef) noexcept nogil:
    """Channels-last rows: dx = g * k1 + (x - hi) * k2 + k3, coef = [hi | k1 | k2 | k3], g = dy
    through the activation act whose output is ym."""
    cdef Py_ssize_t r, c
    cdef const elem* g
    cdef const elem* xr
    cdef const elem* yr
    cdef elem* d
    cdef floating gv
    if (<const void*>dx_out != <const void*>dy and <const void*>dx_out != <const void*>x
            and <const void*>dx_out != <const void*>ym):
        if elem is float:
            cbn_dx_rows_f32(dy, ym, x, dx_out, ld, rows, C, <const float*>coef,
                            <const float*>coef + C, <const float*>coef + 2 * C,
                            <const float*>coef + 3 * C, act)
        elif elem is double:
            cbn_dx_rows_f64(dy, ym, x, dx_out, ld, rows, C, <const double*>coef,
                            <const double*>coef + C, <const double*>coef + 2 * C,
                            <const double*>coef + 3 * C, act)
        elif elem is cbn_f16:
            cbn_dx_rows_f16(dy, ym, x, dx_out, ld, rows, C, <const float*>coef,
                            <const float*>coef + C, <const float*>coef + 2 * C,
                            <const float*>coef + 3 * C, act)
        else:
            cbn_dx_rows_bf16(dy, ym, x, dx_out, ld, rows, C, <const float*>coef,
                            <const float*>coef + C, <const float*>coef + 2 * C,
                            <const float*>coef + 3 * C, act)
        return
    for r in range(rows):  # in place (into dy, x or y): element-wise, one row at a time
        g = dy + r * ld
        xr = x + r * ld
        yr = _at(ym, r * ld)
        d = dx_out + r * ld
        for c in range(C):
            if elem is float or elem is double:
                gv = g[c]
                if act != CBN_ACT_NONE:
                    gv = _act_grad(gv, yr[c], act)
                d[c] = gv * coef[C + c] + (xr[c] - coef[c]) * coef[2 * C + c] + coef[3 * C + c]
            else:  # the 16-bit formats: float32 arithmetic, rounded once to the format
                gv = <floating>_ld(g[c])
                if act != CBN_ACT_NONE:
                    gv = _act_grad(gv, <floating>_ld(yr[c]), act)
                _st(d, c, gv * coef[C + c] + (<floating>_ld(xr[c]) - coef[c]) * coef[2 * C + c]
                    + coef[3 * C + c])


cdef inline void _affine_flat_nt(const elem* x, elem* y_out, Py_ssize_t rows,
                                 Py_ssize_t C, const floating* ext, int act) noexcept nogil:
    """Dense channels-last rows with streaming stores, ext = extended [hi | scale | shift]."""
    if elem is float:
        cbn_affine_flat_nt_f32(x, y_out, rows * C, C, <const float*>ext, act)
    elif elem is double:
        cbn_affine_flat_nt_f64(x, y_out, rows * C, C, <const double*>ext, act)
    elif elem is cbn_f16:
        cbn_affine_flat_nt_f16(x, y_out, rows * C, C, <const float*>ext, act)
    else:
        cbn_affine_flat_nt_bf16(x, y_out, rows * C, C, <const float*>ext, act)
    cbn_nt_fence()


cdef inline void _dx_flat_nt(const elem* dy, const elem* ym, int act, const elem* x,
                             elem* dx_out, Py_ssize_t rows, Py_ssize_t C,
                             const floating* ext) noexcept nogil:
    """Dense channels-last rows with streaming stores, ext = extended [hi | k1 | k2 | k3]."""
    if elem is float:
        cbn_dx_flat_nt_f32(dy, ym, x, dx_out, rows * C, C, <const float*>ext, act)
    elif elem is double:
        cbn_dx_flat_nt_f64(dy, ym, x, dx_out, rows * C, C, <const double*>ext, act)
    elif elem is cbn_f16:
        cbn_dx_flat_nt_f16(dy, ym, x, dx_out, rows * C, C, <const float*>ext, act)
    else:
        cbn_dx_flat_nt_bf16(dy, ym, x, dx_out, rows * C, C, <const float*>ext, act)
    cbn_nt_fence()


cdef floating* _extended_coef(const floating* coef, Py_ssize_t C, int k,
                              const void* out) noexcept nogil:
    """The k coefficient vectors extended for the streaming channels-last kernels, placed for
    the output out (cbn_alloc_beside; NULL if out of memory: the caller then keeps plain
    stores)."""
    cdef floating* ext = <floating*>cbn_alloc_beside(k * (C + CBN_NT_PAD) * sizeof(floating),
                                                     out)
    if ext != NULL:
        if floating is float:
            cbn_nt_extend_f32(coef, C, k, ext)
        else:
            cbn_nt_extend_f64(coef, C, k, ext)
    return ext


cdef void _normalize_runs(const elem* x, elem* y_out, const Geometry* g,
                          const floating* coef, Py_ssize_t r0, Py_ssize_t r1, int act,
                          bint stream, bint rev=False) noexcept nogil:
    """Channel-major runs r0 <= r < r1 of _normalize; a store fence after them if stream;
    walking down (runs and elements) if rev."""
    cdef Py_ssize_t r, c, C = g.C
    if rev:
        for r in range(r1 - 1, r0 - 1, -1):
            c = r % C
            if elem is float:
                cbn_affine_run_rev_f32(x + r * g.inner, y_out + r * g.inner, g.inner, coef[c],
                                       coef[C + c], coef[2 * C + c], act)
            elif elem is double:
                cbn_affine_run_rev_f64(x + r * g.inner, y_out + r * g.inner, g.inner, coef[c],
                                       coef[C + c], coef[2 * C + c], act)
            elif elem is cbn_f16:
                cbn_affine_run_rev_f16(x + r * g.inner, y_out + r * g.inner, g.inner, coef[c],
                                       coef[C + c], coef[2 * C + c], act)
            else:
                cbn_affine_run_rev_bf16(x + r * g.inner, y_out + r * g.inner, g.inner, coef[c],
                                       coef[C + c], coef[2 * C + c], act)
        return
    for r in range(r0, r1):
        c = r % C
        _normalize_run(x + r * g.inner, y_out + r * g.inner, g.inner, coef[c], coef[C + c],
                       coef[2 * C + c], act, stream)
    if stream:
        cbn_nt_fence()


cdef void _normalize_piece(const elem* x, elem* y_out, const Geometry* g,
                           const floating* coef, Py_ssize_t r, Py_ssize_t p, Py_ssize_t npieces,
                           int act, bint stream) noexcept nogil:
    """Piece p of npieces of channel-major run r (fewer runs than threads)."""
    cdef Py_ssize_t c = r % g.C, C = g.C
    cdef Py_ssize_t lo = p * g.inner // npieces, hi = (p + 1) * g.inner // npieces
    _normalize_run(x + r * g.inner + lo, y_out + r * g.inner + lo, hi - lo, coef[c],
                   coef[C + c], coef[2 * C + c], act, stream)
    if stream:
        cbn_nt_fence()


cdef inline void _normalize_rows_task(const Work* wk, Py_ssize_t r, const elem* x,
                                      const floating* coef) noexcept nogil:
    """Channels-last block r of plan.rows_per_task rows (streaming stores when ext is set)."""
    cdef Py_ssize_t C = wk.g.C, rpt = wk.plan.rows_per_task
    cdef Py_ssize_t rows = min(rpt, wk.g.outer - r * rpt), off = r * rpt * C
    cdef elem* y = <elem*>wk.out
    if wk.ext != NULL:
        _affine_flat_nt(x + off, y + off, rows, C, <const floating*>wk.ext, wk.act)
    else:
        _affine_rows(x + off, y + off, C, rows, C, coef, C, wk.act)


cdef int _elementwise(Work* wk, TaskKind share, TaskKind piece, TaskKind rows, int ncoef,
                      const elem* etag, const floating* coef) noexcept nogil:
    """Run an element-wise pass (wk set up) as its plan splits it (CBN_EW_*), with the task
    kinds of the pass; the channels-last rows stream through ncoef extended coefficient
    vectors, as does a post-operation (wk.post: its loop forms bn(x) from them); etag has the
    type of the data, coef is wk.coef.  Returns 0, or -1 when out of memory."""
    cdef const cbn_plan* plan = wk.plan
    if plan.ew == CBN_EW_CM_PIECES:  # fewer (long) runs than threads: nt pieces per run
        _run(wk, piece, plan.ntasks_ew, plan.nt, False, NULL, 0, etag, <floating>0)
    elif plan.ew == CBN_EW_CM_SHARES:
        # one contiguous share of runs per thread (and one store fence at its end when
        # streaming): against a parallel-loop iteration per run, 2 threads, short runs:
        # (8,256,14,14) f32 inference 0.90-0.94x the time, (64,512,7,7) 0.65-0.68x; dx of
        # (8,256,14,14) f32 0.79-0.89x
        _run(wk, share, plan.ntasks_ew, plan.nt, False, NULL, 0, etag, <floating>0)
    else:
        if wk.stream or wk.post != NULL:
            wk.ext = _extended_coef(coef, wk.g.C, ncoef, wk.out)
            if wk.ext == NULL and wk.post != NULL:
                return -1
        _run(wk, rows, plan.ntasks_ew, plan.nt, False, NULL, 0, etag, <floating>0)
        cbn_free_beside(<void*>wk.ext)
    return 0


cdef int _normalize(const elem* x, elem* y_out, const Geometry* g,
                    const cbn_plan* plan, const floating* coef, int act, bint single_pass,
                    const cbn_post* post) noexcept nogil:
    """y = act((x - hi) * scale + shift) over the whole array, coef = [hi | scale | shift], as
    the plan splits it (CBN_EW_*); with a post-operation (cbn_post.h; act is then NONE) y is
    its output instead.  single_pass: the whole op (inference), no reduction before it (see
    _streams).  Returns 0, or -1 when out of memory."""
    cdef Py_ssize_t C = g.C
    cdef int nt = plan.nt
    cdef const void* res = NULL
    cdef const void* dy = NULL
    cdef Work wk
    if post != NULL:
        res = post.res
        dy = post.dy
    wk.g = g
    wk.plan = plan
    wk.x = x
    wk.out = y_out
    wk.coef = <void*>coef
    wk.ext = NULL
    wk.post = post
    wk.act = act
    wk.stream = False
    wk.rev = False
    if elem is float or elem is double:  # the 16-bit formats: plain stores, walking up
        wk.stream = _streams(y_out, x, res, dy, g.outer * C * g.inner, sizeof(elem),
                             g.inner if g.inner > 1 else g.outer * C, single_pass and nt > 1)
        wk.rev = (g.inner > 1 and not wk.stream and y_out != x and post == NULL
                  and _reverse(y_out, x, NULL, NULL))
    return _elementwise(&wk, NORMALIZE_SHARE, NORMALIZE_PIECE, NORMALIZE_ROWS, 3, x, coef)


cdef void _dx_runs(const elem* dy, const elem* ym, int act, const elem* x,
                   elem* dx_out,
                   const Geometry* g, const floating* coef, Py_ssize_t r0, Py_ssize_t r1,
                   bint stream, bint rev=False) noexcept nogil:
    """Channel-major runs r0 <= r < r1 of _dx_pass; a store fence after them if stream;
    walking down (runs and elements) if rev."""
    cdef Py_ssize_t r, c, off, C = g.C
    if rev:
        for r in range(r1 - 1, r0 - 1, -1):
            c = r % C
            off = r * g.inner
            if elem is float:
                cbn_dx_run_rev_f32(dy + off, _at(ym, off), x + off, dx_out + off, g.inner,
                                   coef[c], coef[C + c], coef[2 * C + c], coef[3 * C + c], act)
            elif elem is double:
                cbn_dx_run_rev_f64(dy + off, _at(ym, off), x + off, dx_out + off, g.inner,
                                   coef[c], coef[C + c], coef[2 * C + c], coef[3 * C + c], act)
            elif elem is cbn_f16:
                cbn_dx_run_rev_f16(dy + off, _at(ym, off), x + off, dx_out + off, g.inner,
                                   coef[c], coef[C + c], coef[2 * C + c], coef[3 * C + c], act)
            else:
                cbn_dx_run_rev_bf16(dy + off, _at(ym, off), x + off, dx_out + off, g.inner,
                                   coef[c], coef[C + c], coef[2 * C + c], coef[3 * C + c], act)
        return
    for r in range(r0, r1):
        c = r % C
        off = r * g.inner
        _dx_run(dy + off, _at(ym, off), act, x + off, dx_out + off, g.inner, coef[c], coef[C + c],
                coef[2 * C + c], coef[3 * C + c], stream)
    if stream:
        cbn_nt_fence()


cdef void _dx_piece(const elem* dy, const elem* ym, int act, const elem* x,
                    elem* dx_out,
                    const Geometry* g, const floating* coef, Py_ssize_t r, Py_ssize_t p,
                    Py_ssize_t npieces, bint stream) noexcept nogil:
    """Piece p of npieces of channel-major run r (fewer runs than threads)."""
    cdef Py_ssize_t c = r % g.C, C = g.C
    cdef Py_ssize_t off = r * g.inner + p * g.inner // npieces
    cdef Py_ssize_t n = (p + 1) * g.inner // npieces - p * g.inner // npieces
    _dx_run(dy + off, _at(ym, off), act, x + off, dx_out + off, n, coef[c], coef[C + c],
            coef[2 * C + c], coef[3 * C + c], stream)
    if stream:
        cbn_nt_fence()


cdef inline void _dx_rows_task(const Work* wk, Py_ssize_t r, const elem* dy,
                               const floating* coef) noexcept nogil:
    """Channels-last block r of plan.rows_per_task rows (streaming stores when ext is set)."""
    cdef Py_ssize_t C = wk.g.C, rpt = wk.plan.rows_per_task
    cdef Py_ssize_t rows = min(rpt, wk.g.outer - r * rpt), off = r * rpt * C
    cdef const elem* ym = <const elem*>wk.ym
    cdef const elem* x = <const elem*>wk.x
    cdef elem* dx = <elem*>wk.out
    if wk.ext != NULL:
        _dx_flat_nt(dy + off, _at(ym, off), wk.act, x + off, dx + off, rows, C,
                    <const floating*>wk.ext)
    else:
        _dx_rows(dy + off, _at(ym, off), wk.act, x + off, dx + off, C, rows, C, coef)


cdef int _dx_pass(const elem* dy, const elem* ym, int act, const elem* x,
                   elem* dx_out, const Geometry* g, const cbn_plan* plan,
                   const floating* coef) noexcept nogil:
    """dx = g * k1 + (x - hi) * k2 + k3 over the whole array, coef = [hi | k1 | k2 | k3], g =
    dy through the activation act whose output is ym, as the plan splits it (CBN_EW_*).
    Returns 0 (no buffer to allocate)."""
    cdef Py_ssize_t C = g.C
    cdef int nt = plan.nt
    cdef Work wk
    wk.g = g
    wk.plan = plan
    wk.dy = dy
    wk.ym = ym
    wk.x = x
    wk.out = dx_out
    wk.coef = <void*>coef
    wk.ext = NULL
    wk.act = act
    wk.post = NULL
    wk.stream = False
    wk.rev = False
    if elem is float or elem is double:  # the 16-bit formats: plain stores, walking up
        wk.stream = _streams(dx_out, dy, x, ym, g.outer * C * g.inner, sizeof(elem),
                             g.inner if g.inner > 1 else g.outer * C)
        wk.rev = (g.inner > 1 and not wk.stream and dx_out != dy and dx_out != x
                  and dx_out != ym and _reverse(dx_out, dy, x, ym))
    return _elementwise(&wk, DX_SHARE, DX_PIECE, DX_ROWS, 4, x, coef)
