# Included by _kernels.pyx (compiled per SIMD level; declarations and the fused type there).
# Statistics: per-channel mean and M2 in a decomposition fixed by the shape (ARCHITECTURE.md).

# ------------------------------------------------------------------------------------ statistics
cdef inline double _channel_ref(const elem* x, const Geometry* g, Py_ssize_t c) noexcept nogil:
    """The reference element of channel c: its first element.  Block and segment means are
    kept as offsets from it through every merge and it is added back once at the end, in the
    same way by every code path (so fused and partial paths stay bit-identical).  0 for an
    empty channel, which has no element to read."""
    return _ld(x[c * g.inner]) if g.n > 0 else 0.0


cdef void _segment_moments_cm(const elem* x, const Geometry* g, Py_ssize_t c,
                              Py_ssize_t s, double* cnt_out, double* mean_out,
                              double* m2_out) noexcept nogil:
    """Channel-major: moments of segment s of channel c (IN x, OUT the three scalars; the
    mean less _channel_ref)."""
    cdef Py_ssize_t b, b0 = cbn_seg_start(g, s), b1 = cbn_seg_start(g, s + 1)
    cdef Py_ssize_t o, o0, o1, i0, i1, length, p
    cdef Py_ssize_t stride = g.C * g.inner
    cdef const elem* base = x + c * g.inner
    cdef double cnt = 0.0, mean = 0.0, m2 = 0.0, s1, q, nb, mb, k
    cdef double kref = _channel_ref(x, g, c)
    for b in range(b0, b1):
        if g.pieces > 1:
            o0 = b // g.pieces
            o1 = o0 + 1
            p = b % g.pieces
            i0 = (p * g.inner) // g.pieces
            i1 = ((p + 1) * g.inner) // g.pieces
        else:
            o0 = b * g.rows_per_block
            o1 = min(o0 + g.rows_per_block, g.outer)
            i0 = 0
            i1 = g.inner
        length = i1 - i0
        k = _ld(base[o0 * stride + i0])
        s1 = 0.0
        q = 0.0
        for o in range(o0, o1):
            _shifted_sums(base + o * stride + i0, length, k, &s1, &q)
        nb = <double>((o1 - o0) * length)
        _block_moments(1.0 / nb, k, kref, s1, q, &mb, &q)
        _merge(&cnt, &mean, &m2, nb, mb, q)
    cnt_out[0] = cnt
    mean_out[0] = mean
    m2_out[0] = m2


cdef void _channel_moments_cm(const elem* x, const Geometry* g, Py_ssize_t c,
                              double* mean_out, double* m2_out) noexcept nogil:
    """Channel-major: moments of the whole channel c, segment by segment, in order."""
    cdef double cnt = 0.0, mean = 0.0, m2 = 0.0, sc, sm, sq
    cdef Py_ssize_t s
    for s in range(g.nseg):
        _segment_moments_cm(x, g, c, s, &sc, &sm, &sq)
        _merge(&cnt, &mean, &m2, sc, sm, sq)
    mean_out[0] = _channel_ref(x, g, c) + mean
    m2_out[0] = m2


cdef void _segment_moments_cl(const elem* x, const Geometry* g, Py_ssize_t s,
                              Py_ssize_t chunk, double* mean_out, double* m2_out,
                              double* scratch, int threads) noexcept nogil:
    """Channels-last: moments of segment s over the channel chunk; OUT mean_out/m2_out are the
    chunk's slices of the (nseg, C) partials (means less the channels' first row, x[c]);
    scratch holds 3 * col_width doubles."""
    cdef Py_ssize_t c0 = chunk * g.col_width
    cdef Py_ssize_t w = min(g.col_width, g.C - c0)
    cdef Py_ssize_t b, b0 = cbn_seg_start(g, s), b1 = cbn_seg_start(g, s + 1)
    cdef Py_ssize_t r, r0, r1, j
    cdef double* bmean = scratch
    cdef double* bm2 = scratch + g.col_width
    cdef double* bk = scratch + 2 * g.col_width
    cdef double cnt = 0.0, nb
    for j in range(w):
        mean_out[j] = 0.0
        m2_out[j] = 0.0
    for b in range(b0, b1):
        r0 = b * g.rows_per_block
        r1 = min(r0 + g.rows_per_block, g.outer)
        nb = <double>(r1 - r0)
        for j in range(w):
            bk[j] = _ld(x[r0 * g.C + c0 + j])
            bmean[j] = 0.0
            bm2[j] = 0.0
        _col_shifted_sums(bmean, bm2, x + r0 * g.C + c0, g.C, r1 - r0, bk, w, threads)
        _block_moments_columns(1.0 / nb, bk, x + c0, bmean, bm2, w)
        _merge_columns(mean_out, m2_out, cnt, bmean, bm2, nb, w)
        cnt = cnt + nb


cdef void _moments_cm_rows_task(const elem* x, const Geometry* g, Py_ssize_t s,
                                Py_ssize_t c0, Py_ssize_t c1, double* part,
                                double* scratch) noexcept nogil:
    """Channel-major with runs shorter than a block (pieces == 1, the only path for such runs):
    the moments of segment s for channels [c0, c1), reading rows in memory order (jumping from
    channel to channel across rows, as a per-channel traversal would, costs ~2x in prefetch and
    TLB misses).  Per channel and block, the shifted sums run over the block's runs into 8-lane
    partials, summed horizontally once per block (a horizontal sum and a scalar tail per run
    cost ~20% with runs of 196).  OUT part[s*C + c] (means) and part[nseg*C + s*C + c] (M2);
    scratch holds 17 * (c1 - c0) doubles."""
    cdef Py_ssize_t C = g.C, inner = g.inner, w = c1 - c0
    cdef Py_ssize_t b, b0 = cbn_seg_start(g, s), b1 = cbn_seg_start(g, s + 1), o, o0, o1, j
    cdef double* mean = part + s * C + c0
    cdef double* m2 = part + g.nseg * C + s * C + c0
    cdef double* k = scratch
    cdef double* s1 = scratch + w        # 8 lanes per channel
    cdef double* s2 = scratch + 9 * w    # 8 lanes per channel
    cdef double cnt = 0.0, cnt_c, nb, bm, bq
    cdef const elem* row
    for j in range(w):
        mean[j] = 0.0
        m2[j] = 0.0
    for b in range(b0, b1):
        o0 = b * g.rows_per_block
        o1 = min(o0 + g.rows_per_block, g.outer)
        row = x + (o0 * C + c0) * inner
        for j in range(w):
            k[j] = _ld(row[j * inner])
        for j in range(16 * w):
            s1[j] = 0.0
        for o in range(o0, o1):
            row = x + (o * C + c0) * inner
            for j in range(w):
                _shifted_sums8(row + j * inner, inner, k[j], s1 + 8 * j, s2 + 8 * j)
        nb = <double>((o1 - o0) * inner)
        for j in range(w):
            _block_moments(1.0 / nb, k[j], _channel_ref(x, g, c0 + j),
                           cbn_hsum8_array(s1 + 8 * j), cbn_hsum8_array(s2 + 8 * j), &bm, &bq)
            cnt_c = cnt
            _merge(&cnt_c, &mean[j], &m2[j], nb, bm, bq)
        cnt = cnt + nb


cdef inline void _moments_cl_task(const elem* x, const Geometry* g, Py_ssize_t t,
                                  double* part, double* scratch, int threads) noexcept nogil:
    cdef Py_ssize_t s = t // g.ncol_chunks, chunk = t % g.ncol_chunks
    cdef Py_ssize_t j = chunk * g.col_width
    _segment_moments_cl(x, g, s, chunk, &part[s * g.C + j],
                        &part[g.nseg * g.C + s * g.C + j], scratch, threads)


cdef void _merge_segment_partials(const elem* x, const Geometry* g, const double* part,
                                  bint columns, double* mean_out, double* m2_out) noexcept nogil:
    """Per-channel moments from the (nseg, C) partials of the rows tasks (columns: all channels
    share the segment counts, merged as vectors), in segment order, exactly as a
    channel-by-channel pass merges them."""
    cdef Py_ssize_t C = g.C, c, s
    cdef double cnt, sc
    if columns:
        for c in range(C):
            mean_out[c] = 0.0
            m2_out[c] = 0.0
        cnt = 0.0
        for s in range(g.nseg):
            sc = <double>cbn_segment_rows(g, s)
            _merge_columns(mean_out, m2_out, cnt, &part[s * C], &part[g.nseg * C + s * C], sc, C)
            cnt = cnt + sc
    else:
        for c in range(C):
            cnt = 0.0
            mean_out[c] = 0.0
            m2_out[c] = 0.0
            for s in range(g.nseg):
                sc = <double>(cbn_segment_rows(g, s) * g.inner)
                _merge(&cnt, &mean_out[c], &m2_out[c], sc, part[s * C + c],
                       part[g.nseg * C + s * C + c])
    for c in range(C):
        mean_out[c] = _channel_ref(x, g, c) + mean_out[c]


cdef int _moments(const elem* x, const Geometry* g, const cbn_plan* plan,
                  double* mean_out, double* m2_out, floating tag) noexcept nogil:
    """Per-channel mean and M2 (float64) of x, into OUT arrays of length C, as the plan splits
    them (CBN_RED_*); tag has the op's arithmetic type.  Returns 0, or -1 if out of memory."""
    cdef Py_ssize_t C = g.C, c, s, t, stride = 0
    cdef double* scratch = NULL
    cdef double cnt
    cdef int nt = plan.nt
    cdef Work wk
    wk.g = g
    wk.plan = plan
    wk.x = x
    wk.mean_out = mean_out
    wk.m2_out = m2_out
    wk.part = NULL
    if plan.reduce == CBN_RED_CM_CHANNELS:  # bit-identical to the partials paths
        _run(&wk, MOMENTS_CM_CHANNEL, C, nt, True, NULL, 0, x, tag)
        return 0
    if plan.reduce == CBN_RED_CM_SEGMENTS:  # few channels, many threads
        wk.part = <double*>malloc(3 * plan.ntasks_red * sizeof(double))
        if wk.part == NULL:
            return -1
        _run(&wk, MOMENTS_CM_SEGMENT, plan.ntasks_red, nt, True, NULL, 0, x, tag)
        for c in range(C):
            cnt = 0.0
            mean_out[c] = 0.0
            m2_out[c] = 0.0
            for s in range(g.nseg):
                t = c * g.nseg + s
                _merge(&cnt, &mean_out[c], &m2_out[c], wk.part[3 * t], wk.part[3 * t + 1],
                       wk.part[3 * t + 2])
            mean_out[c] = _channel_ref(x, g, c) + mean_out[c]
        free(wk.part)
        return 0
    # rows tasks (channel-major short runs, channels-last) into (nseg, C) partials
    wk.part = <double*>malloc(2 * g.nseg * C * sizeof(double))
    if plan.reduce == CBN_RED_CM_ROWS:
        scratch = cbn_alloc_per_thread(nt, 17 * plan.cw, &stride)
    else:
        scratch = cbn_alloc_per_thread(nt, 3 * g.col_width, &stride)
    if wk.part == NULL or scratch == NULL:
        free(wk.part)
        free(scratch)
        return -1
    _run(&wk, MOMENTS_CM_ROWS if plan.reduce == CBN_RED_CM_ROWS else MOMENTS_CL,
         plan.ntasks_red, nt, True, scratch, stride, x, tag)
    free(scratch)
    _merge_segment_partials(x, g, wk.part, plan.reduce == CBN_RED_CL, mean_out, m2_out)
    free(wk.part)
    return 0
