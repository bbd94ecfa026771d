# Included by _kernels.pyx (compiled per SIMD level; declarations and the fused type there).
# Masked and weighted statistics: per-channel weight sum, mean and M2 over the elements a mask
# or weights select (cbn_weights.h), in the blocks and segments of the unmasked statistics.
#
# Design.  A block's sums are shifted by its first element of the largest weight k: then
# M2_b >= w_k (k - mean_b)^2, so the cancellation in S2 - S1^2 / S0 costs at most a factor
# S0 / w_k + 1 <= (elements of the block) + 1, the bound of the unmasked blocks (for a mask, k
# is the block's first selected element).  Blocks merge into (segment, channel) partials and
# those into the channel by Chan's formula with the weight sums as counts, in order, every mean
# an offset from the channel's reference (its first element of positive weight, added back
# once).  The decomposition depends only on the shape and the dtype, so results are
# bit-identical for any thread count; threads only choose who computes a (segment, channel
# chunk) task.  Elements of weight 0 are never read into a sum (their x may be NaN).

cdef inline void _wsums8(const elem* x, const cbn_weights* w, Py_ssize_t at, Py_ssize_t n,
                         double k, double* s0_8, double* s1_8, double* s2_8) noexcept nogil:
    if elem is float:
        cbn_wsums8_f32(x, w, at, n, k, s0_8, s1_8, s2_8)
    elif elem is double:
        cbn_wsums8_f64(x, w, at, n, k, s0_8, s1_8, s2_8)
    elif elem is cbn_f16:
        cbn_wsums8_f16(x, w, at, n, k, s0_8, s1_8, s2_8)
    else:
        cbn_wsums8_bf16(x, w, at, n, k, s0_8, s1_8, s2_8)


cdef inline void _msums8(const elem* x, const unsigned char* m, Py_ssize_t n, double k,
                         double* s1_8, double* s2_8) noexcept nogil:
    if elem is float:
        cbn_msums8_f32(x, m, n, k, s1_8, s2_8)
    elif elem is double:
        cbn_msums8_f64(x, m, n, k, s1_8, s2_8)
    elif elem is cbn_f16:
        cbn_msums8_f16(x, m, n, k, s1_8, s2_8)
    else:
        cbn_msums8_bf16(x, m, n, k, s1_8, s2_8)


cdef inline double _mask_count(const unsigned char* m, Py_ssize_t n) noexcept nogil:
    """The number of selected bytes of m[0:n] (0 or 1 each), exact."""
    cdef Py_ssize_t i, c = 0
    for i in range(n):
        c = c + m[i]
    return <double>c


cdef inline void _col_wsums(double* s0, double* s1, double* s2, const elem* x,
                            const cbn_weights* w, Py_ssize_t at, const double* k,
                            Py_ssize_t n) noexcept nogil:
    if elem is float:
        cbn_col_wsums_f32(s0, s1, s2, x, w, at, k, n)
    elif elem is double:
        cbn_col_wsums_f64(s0, s1, s2, x, w, at, k, n)
    elif elem is cbn_f16:
        cbn_col_wsums_f16(s0, s1, s2, x, w, at, k, n)
    else:
        cbn_col_wsums_bf16(s0, s1, s2, x, w, at, k, n)


cdef inline void _col_wsums_row(double* s1, double* s2, const elem* x, const double* k,
                                Py_ssize_t n, double wr) noexcept nogil:
    if elem is float:
        cbn_col_wsums_row_f32(s1, s2, x, k, n, wr)
    elif elem is double:
        cbn_col_wsums_row_f64(s1, s2, x, k, n, wr)
    elif elem is cbn_f16:
        cbn_col_wsums_row_f16(s1, s2, x, k, n, wr)
    else:
        cbn_col_wsums_row_bf16(s1, s2, x, k, n, wr)


cdef Py_ssize_t _first_weighted(const Geometry* g, const cbn_weights* w,
                                Py_ssize_t c) noexcept nogil:
    """The element index of channel c's first element of positive weight, or -1."""
    cdef Py_ssize_t o, i, base
    for o in range(g.outer):
        base = o * w.row + c * w.chan
        for i in range(g.inner):
            if cbn_w_at(w, base + i) > 0.0:
                return (o * g.C + c) * g.inner + i
    return -1


cdef void _weighted_refs(const elem* x, const Geometry* g, const cbn_weights* w,
                         double* kref_out) noexcept nogil:
    """OUT kref_out[c]: channel c's reference element (0 for a channel without weight)."""
    cdef Py_ssize_t c, at = -1
    for c in range(g.C):
        if w.chan != 0 or c == 0:
            at = _first_weighted(g, w, c)
        elif at >= 0:
            at = at + g.inner  # a per-position mask: the same position in the next channel
        kref_out[c] = _ld(x[at]) if at >= 0 else 0.0


cdef Py_ssize_t _block_shift_cm(const Geometry* g, const cbn_weights* w, Py_ssize_t c,
                                Py_ssize_t o0, Py_ssize_t o1, Py_ssize_t i0,
                                Py_ssize_t i1) noexcept nogil:
    """Channel-major: the element index of the first element of largest weight of channel c in
    the block of rows [o0, o1) and run positions [i0, i1), or -1 when all weigh 0."""
    cdef double best = 0.0, prev
    cdef Py_ssize_t o, at = -1, found = -1, base
    for o in range(o0, o1):
        prev = best
        base = o * w.row + c * w.chan
        cbn_w_first_max(w, base + i0, i1 - i0, &best, &at)
        if best > prev:
            found = (o * g.C + c) * g.inner + (at - base)
            if w.kind == CBN_W_MASK:
                break
    return found


cdef void _wmoments_cm_task(const elem* x, const Geometry* g, const cbn_weights* w,
                            const double* kref, Py_ssize_t s, Py_ssize_t c0, Py_ssize_t c1,
                            double* part, double* scratch) noexcept nogil:
    """Channel-major: the moments of segment s for channels [c0, c1), reading rows in memory
    order; per channel and block, 8-lane partials of the three sums, summed horizontally once
    per block.  OUT part[s*C + c] (weight sums), part[(nseg + s)*C + c] (means less kref) and
    part[(2 nseg + s)*C + c] (M2); scratch holds 26 * (c1 - c0) doubles."""
    cdef Py_ssize_t C = g.C, inner = g.inner, nw = c1 - c0, nseg = g.nseg
    cdef Py_ssize_t b, b0 = cbn_seg_start(g, s), b1 = cbn_seg_start(g, s + 1)
    cdef Py_ssize_t o, o0, o1, i0, i1, j, c, at, p
    cdef double* sw = part + s * C + c0
    cdef double* mean = part + (nseg + s) * C + c0
    cdef double* m2 = part + (2 * nseg + s) * C + c0
    cdef double* k = scratch
    cdef double* has = scratch + nw
    cdef double* lanes = scratch + 2 * nw  # 24 per channel: s0, s1, s2
    cdef double s0, s1, s2, bm, bq, cnt, shared = 0.0
    cdef bint counted = w.kind == CBN_W_MASK and w.chan == 0  # one count for all channels
    cdef const unsigned char* mk = <const unsigned char*>w.p
    for j in range(nw):
        sw[j] = 0.0
        mean[j] = 0.0
        m2[j] = 0.0
    for b in range(b0, b1):
        _block_range(g, b, &o0, &o1, &i0, &i1)
        at = -1
        for j in range(nw):
            c = c0 + j
            if w.chan != 0 or j == 0:
                at = _block_shift_cm(g, w, c, o0, o1, i0, i1)
            elif at >= 0:
                at = at + inner  # a per-position mask: the next channel's element
            has[j] = 1.0 if at >= 0 else 0.0
            k[j] = _ld(x[at]) if at >= 0 else 0.0
            for p in range(24):
                lanes[24 * j + p] = 0.0
        if counted:
            shared = 0.0
            for o in range(o0, o1):
                shared = shared + _mask_count(mk + o * w.row + i0, i1 - i0)
        for o in range(o0, o1):
            for j in range(nw):
                if has[j] == 0.0:
                    continue
                c = c0 + j
                if counted:
                    _msums8(x + (o * C + c) * inner + i0, mk + o * w.row + i0, i1 - i0, k[j],
                            lanes + 24 * j + 8, lanes + 24 * j + 16)
                else:
                    _wsums8(x + (o * C + c) * inner + i0, w, o * w.row + c * w.chan + i0,
                            i1 - i0, k[j], lanes + 24 * j, lanes + 24 * j + 8,
                            lanes + 24 * j + 16)
        for j in range(nw):
            if has[j] == 0.0:
                continue
            s0 = shared if counted else cbn_hsum8_array(lanes + 24 * j)
            s1 = cbn_hsum8_array(lanes + 24 * j + 8)
            s2 = cbn_hsum8_array(lanes + 24 * j + 16)
            _block_moments(1.0 / s0, k[j], kref[c0 + j], s1, s2, &bm, &bq)
            cnt = sw[j]
            _merge(&cnt, &mean[j], &m2[j], s0, bm, bq)
            sw[j] = cnt


cdef void _wmoments_cl_task(const elem* x, const Geometry* g, const cbn_weights* w,
                            const double* kref, Py_ssize_t s, Py_ssize_t c0, Py_ssize_t c1,
                            double* part, double* scratch, int threads) noexcept nogil:
    """Channels-last: the moments of segment s over the columns [c0, c1), into part as in
    _wmoments_cm_task.  A per-position mask selects whole rows: runs of selected rows go
    through the unmasked column tiles; per-position weights scale each row; a per-element mask
    or weights go column by column.  scratch holds 6 * (c1 - c0) doubles."""
    cdef Py_ssize_t C = g.C, nw = c1 - c0, nseg = g.nseg
    cdef Py_ssize_t b, b0 = cbn_seg_start(g, s), b1 = cbn_seg_start(g, s + 1)
    cdef Py_ssize_t r, r0, r1, j, at, start
    cdef double* sw = part + s * C + c0
    cdef double* mean = part + (nseg + s) * C + c0
    cdef double* m2 = part + (2 * nseg + s) * C + c0
    cdef double* k = scratch
    cdef double* bs0 = scratch + nw
    cdef double* bs1 = scratch + 2 * nw
    cdef double* bs2 = scratch + 3 * nw
    cdef double* best = scratch + 4 * nw
    cdef double* krow = scratch + 5 * nw
    cdef double S0, cnt = 0.0, wr, t, q, top
    cdef const unsigned char* m = <const unsigned char*>w.p
    for j in range(nw):
        sw[j] = 0.0
        mean[j] = 0.0
        m2[j] = 0.0
    for b in range(b0, b1):
        r0 = b * g.rows_per_block
        r1 = min(r0 + g.rows_per_block, g.outer)
        for j in range(nw):
            bs0[j] = 0.0
            bs1[j] = 0.0
            bs2[j] = 0.0
        if w.chan == 0:  # one weight per row
            top = 0.0
            at = -1
            cbn_w_first_max(w, r0 * w.row, r1 - r0, &top, &at)
            if at < 0:
                continue
            for j in range(nw):
                k[j] = _ld(x[at * C + c0 + j])
            S0 = 0.0
            if w.kind == CBN_W_MASK:
                r = r0
                while r < r1:
                    if m[r * w.row] == 0:
                        r = r + 1
                        continue
                    start = r
                    while r < r1 and m[r * w.row] != 0:
                        r = r + 1
                    _col_shifted_sums(bs1, bs2, x + start * C + c0, C, r - start, k, nw,
                                      threads)
                    S0 = S0 + <double>(r - start)
            else:
                for r in range(r0, r1):
                    wr = cbn_w_at(w, r * w.row)
                    if wr > 0.0:
                        _col_wsums_row(bs1, bs2, x + r * C + c0, k, nw, wr)
                        S0 = S0 + wr
            for j in range(nw):  # _block_moments for the columns
                t = bs1[j] / S0
                q = bs2[j] - bs1[j] * t
                bs1[j] = (k[j] - kref[c0 + j]) + t
                bs2[j] = 0.0 if q < 0.0 else q
            _merge_columns(mean, m2, cnt, bs1, bs2, S0, nw)
            cnt = cnt + S0
            for j in range(nw):
                sw[j] = cnt
        else:  # a weight per element: the shift of each column, then the sums row by row
            for j in range(nw):
                best[j] = 0.0
                krow[j] = -1.0
            for r in range(r0, r1):
                for j in range(nw):
                    wr = cbn_w_at(w, r * w.row + (c0 + j) * w.chan)
                    if wr > best[j]:
                        best[j] = wr
                        krow[j] = <double>r
            for j in range(nw):
                k[j] = _ld(x[<Py_ssize_t>krow[j] * C + c0 + j]) if krow[j] >= 0.0 else 0.0
            for r in range(r0, r1):
                _col_wsums(bs0, bs1, bs2, x + r * C + c0, w, r * w.row + c0 * w.chan, k, nw)
            for j in range(nw):
                if bs0[j] > 0.0:
                    _block_moments(1.0 / bs0[j], k[j], kref[c0 + j], bs1[j], bs2[j], &t, &q)
                    S0 = sw[j]
                    _merge(&S0, &mean[j], &m2[j], bs0[j], t, q)
                    sw[j] = S0


cdef inline void _wmoments_task(const Work* wk, Py_ssize_t t, double* scratch,
                                const elem* x) noexcept nogil:
    """Task t = (segment, channel chunk) of the weighted moments (wk.n: the chunk width,
    wk.nchunks: chunks per segment, wk.mean: the channels' references)."""
    cdef const Geometry* g = wk.g
    cdef Py_ssize_t s = t // wk.nchunks, chunk = t % wk.nchunks
    cdef Py_ssize_t c0 = min(chunk * wk.n, g.C), c1 = min(c0 + wk.n, g.C)
    if c0 >= c1:
        return
    if g.inner > 1:
        _wmoments_cm_task(x, g, wk.wts, wk.mean, s, c0, c1, wk.part, scratch)
    else:
        _wmoments_cl_task(x, g, wk.wts, wk.mean, s, c0, c1, wk.part, scratch, wk.plan.nt)


cdef int _weighted_moments(const elem* x, const Geometry* g, const cbn_weights* w, int nt_req,
                           double* sw_out, double* mean_out, double* m2_out,
                           floating tag) noexcept nogil:
    """Per-channel weight sum, mean and M2 (float64) of the elements of x the weights w
    select, into OUT arrays of length C (mean and M2 0 where the weight sum is 0).  Returns
    0, or -1 if out of memory."""
    cdef Py_ssize_t C = g.C, c, s, nch, cw, t
    cdef Py_ssize_t per_task = 26 if g.inner > 1 else 6
    cdef Py_ssize_t stride = 0
    cdef double cnt, mean, m2
    cdef double* kref = <double*>malloc((C if C > 0 else 1) * sizeof(double))
    cdef double* scratch = NULL
    cdef Work wk
    cdef cbn_plan plan  # only its team size is read (the column tiles' memory blocks)
    cdef int nt = _threads_for(g.outer * C * g.inner, nt_req, g.nseg * C)
    # chunks enough for two tasks per thread (never narrower than 64 columns channels-last);
    # the chunking decides who computes, never how
    nch = max(1, min(C, (2 * nt + g.nseg - 1) // g.nseg))
    cw = max(1, (C + nch - 1) // nch)
    if g.inner == 1:
        cw = min(max(cw, 64), g.col_width)
    nch = max(1, (C + cw - 1) // cw)
    wk.g = g
    plan.nt = nt
    wk.plan = &plan
    wk.x = x
    wk.wts = w
    wk.mean = kref
    wk.n = cw
    wk.nchunks = nch
    wk.part = <double*>malloc((3 * g.nseg * C if C > 0 else 1) * sizeof(double))
    scratch = cbn_alloc_per_thread(nt, per_task * cw, &stride)
    if kref == NULL or wk.part == NULL or scratch == NULL:
        free(kref)
        free(wk.part)
        free(scratch)
        return -1
    _weighted_refs(x, g, w, kref)
    _run(&wk, WMOMENTS, g.nseg * nch, nt, True, scratch, stride, x, tag)
    for c in range(C):
        cnt = 0.0
        mean = 0.0
        m2 = 0.0
        for s in range(g.nseg):
            t = s * C + c
            _merge(&cnt, &mean, &m2, wk.part[t], wk.part[g.nseg * C + t],
                   wk.part[2 * g.nseg * C + t])
        sw_out[c] = cnt
        mean_out[c] = kref[c] + mean if cnt > 0.0 else 0.0
        m2_out[c] = m2
    free(scratch)
    free(kref)
    free(wk.part)
    return 0


# ------------------------------------------------------------------------- the masked dx pass
cdef inline void _wdx_run(const elem* g, const elem* x, const cbn_weights* w, Py_ssize_t at,
                          elem* dx, Py_ssize_t n, floating a, floating b, floating d,
                          floating hi) noexcept nogil:
    if elem is float:
        cbn_wdx_run_f32(g, x, w, at, dx, n, <float>a, <float>b, <float>d, <float>hi)
    elif elem is double:
        cbn_wdx_run_f64(g, x, w, at, dx, n, <double>a, <double>b, <double>d, <double>hi)
    elif elem is cbn_f16:
        cbn_wdx_run_f16(g, x, w, at, dx, n, <float>a, <float>b, <float>d, <float>hi)
    else:
        cbn_wdx_run_bf16(g, x, w, at, dx, n, <float>a, <float>b, <float>d, <float>hi)


cdef inline void _wdx_row(const elem* g, const elem* x, const cbn_weights* w, Py_ssize_t at,
                          elem* dx, Py_ssize_t n, const floating* coef) noexcept nogil:
    """coef: the four coefficient vectors a, b, d, hi of C values each, one after the other."""
    cdef Py_ssize_t C = n
    if elem is float:
        cbn_wdx_row_f32(g, x, w, at, dx, n, <const float*>coef, <const float*>coef + C,
                        <const float*>coef + 2 * C, <const float*>coef + 3 * C)
    elif elem is double:
        cbn_wdx_row_f64(g, x, w, at, dx, n, <const double*>coef, <const double*>coef + C,
                        <const double*>coef + 2 * C, <const double*>coef + 3 * C)
    elif elem is cbn_f16:
        cbn_wdx_row_f16(g, x, w, at, dx, n, <const float*>coef, <const float*>coef + C,
                        <const float*>coef + 2 * C, <const float*>coef + 3 * C)
    else:
        cbn_wdx_row_bf16(g, x, w, at, dx, n, <const float*>coef, <const float*>coef + C,
                         <const float*>coef + 2 * C, <const float*>coef + 3 * C)


cdef void _wdx_task(const Work* wk, Py_ssize_t t, const elem* g, const elem* x, elem* dx,
                    const floating* coef) noexcept nogil:
    """Rows [t * outer / ntasks, (t + 1) * outer / ntasks) of the masked dx pass (wk.nchunks:
    the number of tasks)."""
    cdef const Geometry* geo = wk.g
    cdef const cbn_weights* w = wk.wts
    cdef Py_ssize_t C = geo.C, inner = geo.inner, o, c, base
    cdef Py_ssize_t o0 = t * geo.outer // wk.nchunks, o1 = (t + 1) * geo.outer // wk.nchunks
    for o in range(o0, o1):
        if inner == 1:
            _wdx_row(g + o * C, x + o * C, w, o * w.row, dx + o * C, C, coef)
            continue
        for c in range(C):
            base = (o * C + c) * inner
            _wdx_run(g + base, x + base, w, o * w.row + c * w.chan, dx + base, inner,
                     coef[c], coef[C + c], coef[2 * C + c], coef[3 * C + c])


cdef int _weighted_dx(const elem* g, const elem* x, const Geometry* geo, const cbn_weights* w,
                      elem* dx_out, int nt_req, const double* a, const double* b,
                      const double* d, const double* mean, floating tag) noexcept nogil:
    """dx_out = a g - w (b + d (x - mean)) per channel (float64 coefficient vectors of length
    C, converted here to the arithmetic type with the mean split into hi + lo).  Returns 0, or
    -1 if out of memory."""
    cdef Py_ssize_t C = geo.C, c
    cdef floating hi
    cdef floating* coef = <floating*>malloc((4 * C if C > 0 else 1) * sizeof(floating))
    cdef cbn_plan plan
    cdef Work wk
    cdef int nt = _threads_for(geo.outer * C * geo.inner, nt_req, geo.outer)
    if coef == NULL:
        return -1
    for c in range(C):
        hi = <floating>mean[c]
        coef[c] = <floating>a[c]
        coef[C + c] = <floating>(b[c] - d[c] * (mean[c] - <double>hi))
        coef[2 * C + c] = <floating>d[c]
        coef[3 * C + c] = hi
    plan.nt = nt
    wk.g = geo
    wk.plan = &plan
    wk.x = x
    wk.dy = g
    wk.out = dx_out
    wk.coef = coef
    wk.wts = w
    wk.nchunks = max(1, min(geo.outer, 4 * nt))
    _run(&wk, WDX, wk.nchunks, nt, False, NULL, 0, x, tag)
    free(coef)
    return 0


# ------------------------------------------------------------------------------ the padding
cdef inline void _pad_run(elem* y, const elem* src, const cbn_weights* w, Py_ssize_t at,
                          Py_ssize_t n) noexcept nogil:
    if elem is float:
        cbn_pad_run_f32(y, src, w, at, n)
    elif elem is double:
        cbn_pad_run_f64(y, src, w, at, n)
    elif elem is cbn_f16:
        cbn_pad_run_f16(y, src, w, at, n)
    else:
        cbn_pad_run_bf16(y, src, w, at, n)


cdef void _pad_task(const Work* wk, Py_ssize_t t, const elem* src, elem* y) noexcept nogil:
    """Rows [t * outer / ntasks, (t + 1) * outer / ntasks) of the padding fill."""
    cdef const Geometry* g = wk.g
    cdef const cbn_weights* w = wk.wts
    cdef Py_ssize_t C = g.C, inner = g.inner, o, c, base, j
    cdef Py_ssize_t o0 = t * g.outer // wk.nchunks, o1 = (t + 1) * g.outer // wk.nchunks
    for o in range(o0, o1):
        if inner == 1 and w.chan == 0:  # one weight for the row
            if cbn_w_at(w, o * w.row) == 0.0:
                for j in range(C):
                    y[o * C + j] = src[o * C + j] if src != NULL else _zero(y)
            continue
        if inner == 1:
            _pad_run(y + o * C, _at(src, o * C), w, o * w.row, C)
            continue
        for c in range(C):
            base = (o * C + c) * inner
            _pad_run(y + base, _at(src, base), w, o * w.row + c * w.chan, inner)


cdef inline elem _zero(elem* tag) noexcept nogil:
    """+0 of the element type."""
    cdef elem z
    _st(&z, 0, 0.0)
    return z


cdef int _fill_padding(elem* y, const elem* src, const Geometry* g, const cbn_weights* w,
                       int nt_req, floating tag) noexcept nogil:
    """y = src (0 when src is NULL) wherever the weight is 0; returns 0."""
    cdef cbn_plan plan
    cdef Work wk
    cdef int nt = _threads_for(g.outer * g.C * g.inner, nt_req, g.outer)
    plan.nt = nt
    wk.g = g
    wk.plan = &plan
    wk.x = src
    wk.out = y
    wk.wts = w
    wk.nchunks = max(1, min(g.outer, 4 * nt))
    _run(&wk, WPAD, wk.nchunks, nt, False, NULL, 0, y, tag)
    return 0
