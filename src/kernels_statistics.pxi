# Included by _kernels.pyx (compiled per SIMD level; declarations and the fused type there).
# Statistics: per-channel mean and M2 in a decomposition fixed by the shape (ARCHITECTURE.md).
#
# Design note: the two-level statistics of the 16-bit formats (float16, bfloat16)
# ---------------------------------------------------------------------------------------------
# float32 and float64 data are summed in float64, each block shifted by one of its own elements
# (below).  16-bit data is summed in two levels (cbn_partials.h, which says why not float32):
# d = x - c and d^2 in float32, each float32 partial over at most L terms (L = CBN_F32_RUN_RUNS
# along channel-major runs, CBN_F32_RUN_COLS down channels-last columns), each
# partial then added to float64, in the same blocks and segments, merged by the same Chan
# formula.  The shift c is
# the channel's *centre*, one float32 per channel: the mean of a sample fixed by the shape
# (_pilot_cm, _pilots_cl), so the whole channel is summed about one value near its mean.
#
# Bound (u = 2^-24, gamma_k = k u / (1 - k u), e_i = x_i - c exactly, S1 = sum e_i,
# S2 = sum e_i^2 = M2 + n (mean - c)^2).  fl(x - c) = e (1 + a), |a| <= u; a float32 partial of
# L squares takes at most L roundings (FMA or not), so each computed square is
# e^2 (1 + t), |t| <= gamma_{L+2}, and each d in a partial of d's e (1 + t'), |t'| <= gamma_{L+1}.
# Chan's merges of the block sums compute, in exact arithmetic, S2^ - S1^^2 / n from the
# float32 sums, so (float64 rounding apart: a term n 2^-53 S2 below; the two-level merges do not
# clamp a block's rounding below zero, which would break the identity)
#     |M2^ - M2| <= gamma_{L+2} S2 + |S1^ - S1| (|S1^| + |S1|) / n
#               <= gamma_{L+2} S2 + 2 gamma_{L+1} |mean - c| sqrt(n S2) + 3 gamma_{L+1}^2 S2,
# using sum |e_i| <= sqrt(n S2).  With rho = |mean - c| / std the relative error is
#     gamma_{L+2} (1 + rho^2) + 2 gamma_{L+1} rho sqrt(1 + rho^2) + ...
# -- 6u = 3.6e-7 for L = 4, 10u for L = 8, with a centre at the mean -- and the mean is within
# gamma_{L+1} std sqrt(1 + rho^2) (5u to 9u std).  Underflow adds at most 2^-149 per element (a
# square or a sum of squares below float32's normal range); overflow gives Inf.
#
# Certificate: after the merge, _certified evaluates this bound from the computed moments
# (with slack for S2 and the float64 roundings) and accepts the channel when it is at most
# 2^-20 (9.5e-7) of M2 -- the variance promise (within 1e-6 relative of float64, whatever the
# offset: README), far below the outputs' own rounding (2^-11 for float16, 2^-8 for bfloat16).
# It accepts centres up to ~0.28 (L = 8) or ~0.6 (L = 4) standard deviations from the mean; a
# sample of 256 elements (8 lines) or 64 rows lands there unless the data is skewed or
# adversarial.  A channel-major channel that fails is summed again, two-level, about its
# computed mean (then ~0 standard deviations away).  A channel that still fails -- a constant
# or subnormal-scale channel (M2 ~ 0: no relative bound), offsets beyond float32's digits, NaN
# or Inf -- and a channels-last one that fails once are summed again in float64
# (_channel_moments_cm_in without a centre, as float64 data is; _channel_moments_cl_exact,
# one column, block by block), so the answer is always within the promise, the slow way only
# where the fast one cannot prove it.  Those second passes run after the parallel pass, on
# one thread.  Both decisions depend on the data and the shape only: results stay
# bit-identical for any thread count.

# ------------------------------------------------------------------------------------ statistics
cdef inline double _channel_ref(const elem* x, const Geometry* g, Py_ssize_t c) noexcept nogil:
    """The reference element of channel c: its first element.  Block and segment means are
    kept as offsets from it through every merge and it is added back once at the end, in the
    same way by every code path (so fused and partial paths stay bit-identical).  0 for an
    empty channel, which has no element to read."""
    return _ld(x[c * g.inner]) if g.n > 0 else 0.0


# The certificate's constants (the bound above): u, the slack on S2 (>= gamma_{L+2}), the
# accepted relative error, and the underflow allowance per element.
cdef double _U32 = 5.9604644775390625e-08      # 2^-24
cdef double _S2_SLACK = 9.5367431640625e-07    # 2^-20
cdef double _TAU = 9.5367431640625e-07         # 2^-20
cdef double _TINY = 1.401298464324817e-45      # 2^-149
cdef double _U64 = 1.1102230246251565e-16      # 2^-53
cdef double _EXACT_ZERO_CENTRE = 8.881784197001252e-16  # 2^-50


cdef inline double _gamma(int k) noexcept nogil:
    return k * _U32 / (1.0 - k * _U32)


cdef bint _certified(double n, double mean, double m2, double c, int L,
                     bint float16) noexcept nogil:
    """Whether the two-level moments (n, mean, m2) of a channel, summed about its centre c in
    float32 partials of L terms, are within _TAU of the exact M2 by the design note's bound.
    False for NaN or Inf.  m2 == 0 with mean == c is exact when no nonzero x - c can square to
    0: with a centre of at least 2^-50 in magnitude every nonzero x - c is at least 2^-74; with
    float16 data and a centre of 0, at least 2^-24 (then every d was 0, every block's sums 0)."""
    cdef double d = mean - c
    cdef double g1 = _gamma(L + 1), g2 = _gamma(L + 2)
    cdef double s2, e
    if m2 == 0.0 and d == 0.0 and (fabs(c) >= _EXACT_ZERO_CENTRE or (float16 and c == 0.0)):
        return True
    s2 = (m2 + n * d * d) * (1.0 + _S2_SLACK)
    e = ((g2 + 3.0 * g1 * g1 + n * _U64) * s2 + 2.0 * g1 * fabs(d) * sqrt(n * s2)
         + n * _TINY)
    return e <= _TAU * (m2 - e)


cdef float _pilot_cm(const elem* x, const Geometry* g, Py_ssize_t c) noexcept nogil:
    """The centre of channel c, channel-major: the mean of CBN_PILOT_LINES samples of 64 bytes
    of consecutive elements of the channel (continuing into the next runs when a run ends),
    spread evenly over it, rounded to float32."""
    cdef Py_ssize_t n = g.outer * g.inner, per = max(1, 64 // <Py_ssize_t>sizeof(elem))
    cdef Py_ssize_t q, f, o, i, m, need, cnt = 0
    cdef double acc = 0.0
    if n == 0:
        return 0.0
    for q in range(CBN_PILOT_LINES):
        f = (q * n) // CBN_PILOT_LINES
        need = per
        while need > 0 and f < n:
            o = f // g.inner
            i = f % g.inner
            m = min(need, g.inner - i)
            acc += _sum(x + (o * g.C + c) * g.inner + i, m)
            cnt += m
            need -= m
            f += m
    return <float>(acc / <double>cnt)


cdef void _pilots_cl(const elem* x, const Geometry* g, double* acc,
                     float* centre_out) noexcept nogil:
    """The centres of all channels, channels-last: the mean of CBN_PILOT_ROWS rows spread evenly
    (all rows when fewer), rounded to float32.  acc: C doubles of scratch."""
    cdef Py_ssize_t C = g.C, nq = min(<Py_ssize_t>CBN_PILOT_ROWS, g.outer), q, j
    cdef const elem* row
    for j in range(C):
        acc[j] = 0.0
    for q in range(nq):
        row = x + ((q * g.outer) // nq) * C
        for j in range(C):
            acc[j] += _ld(row[j])
    for j in range(C):
        centre_out[j] = <float>(acc[j] / <double>nq) if nq > 0 else 0.0


cdef void _segment_moments_cm(const elem* x, const Geometry* g, Py_ssize_t c,
                              Py_ssize_t s, double* cnt_out, double* mean_out,
                              double* m2_out, const float* centre) noexcept nogil:
    """Channel-major: moments of segment s of channel c (IN x, OUT the three scalars; the
    mean less _channel_ref): two-level about centre[0], or (centre NULL) in float64 with each
    block shifted by its first element."""
    cdef Py_ssize_t b, b0 = cbn_seg_start(g, s), b1 = cbn_seg_start(g, s + 1)
    cdef Py_ssize_t o, o0, o1, i0, i1, length
    cdef Py_ssize_t stride = g.C * g.inner
    cdef const elem* base = x + c * g.inner
    cdef double cnt = 0.0, mean = 0.0, m2 = 0.0, s1, q, nb, mb, k
    cdef double kref = _channel_ref(x, g, c)
    for b in range(b0, b1):
        _block_range(g, b, &o0, &o1, &i0, &i1)
        length = i1 - i0
        s1 = 0.0
        q = 0.0
        if centre != NULL:
            k = centre[0]
            for o in range(o0, o1):
                _partial_sums(base + o * stride + i0, length, centre[0], &s1, &q)
        else:
            k = _ld(base[o0 * stride + i0])
            for o in range(o0, o1):
                _shifted_sums(base + o * stride + i0, length, k, &s1, &q)
        nb = <double>((o1 - o0) * length)
        _block_moments(1.0 / nb, k, kref, s1, q, &mb, &q, centre == NULL)
        _merge(&cnt, &mean, &m2, nb, mb, q)
    cnt_out[0] = cnt
    mean_out[0] = mean
    m2_out[0] = m2


cdef void _channel_moments_cm_in(const elem* x, const Geometry* g, Py_ssize_t c,
                                 const float* centre, double* mean_out,
                                 double* m2_out) noexcept nogil:
    """Channel-major: moments of the whole channel c, segment by segment, in order: two-level
    about centre[0] (not yet certified), or in float64 with centre NULL (float64 data, and the
    channels the two-level certificate refuses)."""
    cdef double cnt = 0.0, mean = 0.0, m2 = 0.0, sc, sm, sq
    cdef Py_ssize_t s
    for s in range(g.nseg):
        _segment_moments_cm(x, g, c, s, &sc, &sm, &sq, centre)
        _merge(&cnt, &mean, &m2, sc, sm, sq)
    mean_out[0] = _channel_ref(x, g, c) + mean
    m2_out[0] = m2


cdef bint _cm_about_its_mean(const elem* x, const Geometry* g, Py_ssize_t c, float first,
                             double* mean_io, double* m2_io) noexcept nogil:
    """A channel-major channel refused about its sampled centre first: its two-level moments
    again, about its computed mean (IN mean_io), into mean_io/m2_io when certified; False
    (nothing written) when refused again, not finite, or the same centre."""
    cdef double mean, m2
    cdef float centre = <float>mean_io[0]
    if not isfinite(centre) or centre == first:
        return False
    _channel_moments_cm_in(x, g, c, &centre, &mean, &m2)
    if not _certified(<double>g.n, mean, m2, centre, CBN_F32_RUN_RUNS, elem is cbn_f16):
        return False
    mean_io[0] = mean
    m2_io[0] = m2
    return True


cdef void _channel_moments_cm(const elem* x, const Geometry* g, Py_ssize_t c,
                              double* mean_out, double* m2_out) noexcept nogil:
    """Channel-major: moments of the whole channel c, segment by segment, in order: two-level
    for the 16-bit formats when certified (the design note), else in float64."""
    cdef double mean, m2
    cdef float centre
    if elem is cbn_f16 or elem is cbn_bf16:
        centre = _pilot_cm(x, g, c)
        _channel_moments_cm_in(x, g, c, &centre, &mean, &m2)
        if (_certified(<double>g.n, mean, m2, centre, CBN_F32_RUN_RUNS, elem is cbn_f16)
                or _cm_about_its_mean(x, g, c, centre, &mean, &m2)):
            mean_out[0] = mean
            m2_out[0] = m2
            return
    _channel_moments_cm_in(x, g, c, NULL, mean_out, m2_out)


cdef void _channel_moments_cl_exact(const elem* x, const Geometry* g, Py_ssize_t c,
                                    double* mean_out, double* m2_out) noexcept nogil:
    """Channels-last: moments of the one channel c in float64, block by block (each shifted
    by its first element), in order: the channels the two-level certificate refuses."""
    cdef Py_ssize_t C = g.C, b, r, r0, r1
    cdef double cnt = 0.0, mean = 0.0, m2 = 0.0, k, d, s1, q, nb, bm, bq
    cdef double kref = _ld(x[c]) if g.outer > 0 else 0.0
    for b in range(g.nblocks):
        r0 = b * g.rows_per_block
        r1 = min(r0 + g.rows_per_block, g.outer)
        k = _ld(x[r0 * C + c])
        s1 = 0.0
        q = 0.0
        for r in range(r0, r1):
            d = _ld(x[r * C + c]) - k
            s1 += d
            q += d * d
        nb = <double>(r1 - r0)
        _block_moments(1.0 / nb, k, kref, s1, q, &bm, &bq)
        _merge(&cnt, &mean, &m2, nb, bm, bq)
    mean_out[0] = kref + mean
    m2_out[0] = m2


cdef void _segment_moments_cl(const elem* x, const Geometry* g, Py_ssize_t s,
                              Py_ssize_t chunk, double* mean_out, double* m2_out,
                              double* scratch, int threads, const float* centre) noexcept nogil:
    """Channels-last: moments of segment s over the channel chunk; OUT mean_out/m2_out are the
    chunk's slices of the (nseg, C) partials (means less the channels' first row, x[c]);
    scratch holds 3 * col_width doubles.  Two-level about the centres (all C of them) when
    given, else float64 with each block shifted by its first row."""
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
            bk[j] = centre[c0 + j] if centre != NULL else _ld(x[r0 * g.C + c0 + j])
            bmean[j] = 0.0
            bm2[j] = 0.0
        if centre != NULL:
            _col_partial_sums(bmean, bm2, x + r0 * g.C + c0, g.C, r1 - r0, centre + c0, w,
                              threads)
        else:
            _col_shifted_sums(bmean, bm2, x + r0 * g.C + c0, g.C, r1 - r0, bk, w, threads)
        _block_moments_columns(1.0 / nb, bk, x + c0, bmean, bm2, w, centre == NULL)
        _merge_columns(mean_out, m2_out, cnt, bmean, bm2, nb, w)
        cnt = cnt + nb


cdef void _moments_cm_rows_task(const elem* x, const Geometry* g, Py_ssize_t s,
                                Py_ssize_t c0, Py_ssize_t c1, double* part,
                                double* scratch, const float* centre) noexcept nogil:
    """Channel-major with runs shorter than a block (pieces == 1, the only path for such runs):
    the moments of segment s for channels [c0, c1), reading rows in memory order (jumping from
    channel to channel across rows, as a per-channel traversal would, costs ~2x in prefetch and
    TLB misses).  Per channel and block, the shifted sums run over the block's runs into 8-lane
    partials, summed horizontally once per block (a horizontal sum and a scalar tail per run
    cost ~20% with runs of 196): two-level about the centres (all C) when given, else float64
    shifted by the block's first element.  OUT part[s*C + c] (means) and
    part[nseg*C + s*C + c] (M2); scratch holds 17 * (c1 - c0) doubles."""
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
            k[j] = centre[c0 + j] if centre != NULL else _ld(row[j * inner])
        for j in range(16 * w):
            s1[j] = 0.0
        for o in range(o0, o1):
            row = x + (o * C + c0) * inner
            if centre != NULL:
                for j in range(w):
                    _partial_sums8(row + j * inner, inner, centre[c0 + j], s1 + 8 * j,
                                   s2 + 8 * j)
            else:
                for j in range(w):
                    _shifted_sums8(row + j * inner, inner, k[j], s1 + 8 * j, s2 + 8 * j)
        nb = <double>((o1 - o0) * inner)
        for j in range(w):
            _block_moments(1.0 / nb, k[j], _channel_ref(x, g, c0 + j),
                           cbn_hsum8_array(s1 + 8 * j), cbn_hsum8_array(s2 + 8 * j), &bm, &bq,
                           centre == NULL)
            cnt_c = cnt
            _merge(&cnt_c, &mean[j], &m2[j], nb, bm, bq)
        cnt = cnt + nb


cdef inline void _moments_cl_task(const elem* x, const Geometry* g, Py_ssize_t t,
                                  double* part, double* scratch, int threads,
                                  const float* centre) noexcept nogil:
    cdef Py_ssize_t s = t // g.ncol_chunks, chunk = t % g.ncol_chunks
    cdef Py_ssize_t j = chunk * g.col_width
    _segment_moments_cl(x, g, s, chunk, &part[s * g.C + j],
                        &part[g.nseg * g.C + s * g.C + j], scratch, threads, centre)


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


cdef void _certify_or_redo(const elem* x, const Geometry* g, const float* centre,
                           double* mean_out, double* m2_out) noexcept nogil:
    """The certificate of every channel's two-level moments (about centre); the refused ones
    summed again (design note): channel-major about their mean, then in float64;
    channels-last in float64."""
    cdef Py_ssize_t c
    for c in range(g.C):
        if g.inner == 1:
            if not _certified(<double>g.n, mean_out[c], m2_out[c], centre[c], CBN_F32_RUN_COLS,
                              elem is cbn_f16):
                _channel_moments_cl_exact(x, g, c, &mean_out[c], &m2_out[c])
        elif not (_certified(<double>g.n, mean_out[c], m2_out[c], centre[c], CBN_F32_RUN_RUNS,
                             elem is cbn_f16)
                  or _cm_about_its_mean(x, g, c, centre[c], &mean_out[c], &m2_out[c])):
            _channel_moments_cm_in(x, g, c, NULL, &mean_out[c], &m2_out[c])


cdef int _moments(const elem* x, const Geometry* g, const cbn_plan* plan,
                  double* mean_out, double* m2_out, floating tag) noexcept nogil:
    """Per-channel mean and M2 (float64) of x, into OUT arrays of length C, as the plan splits
    them (CBN_RED_*); tag has the op's arithmetic type.  Returns 0, or -1 if out of memory."""
    cdef Py_ssize_t C = g.C, c, s, t, stride = 0
    cdef double* scratch = NULL
    cdef float* centre = NULL
    cdef double cnt
    cdef int nt = plan.nt
    cdef Work wk
    wk.g = g
    wk.plan = plan
    wk.x = x
    wk.mean_out = mean_out
    wk.m2_out = m2_out
    wk.part = NULL
    wk.centre = NULL
    if plan.reduce == CBN_RED_CM_CHANNELS:  # bit-identical to the partials paths
        _run(&wk, MOMENTS_CM_CHANNEL, C, nt, True, NULL, 0, x, tag)
        return 0
    if elem is cbn_f16 or elem is cbn_bf16:  # the two-level statistics' centres (design note)
        centre = <float*>malloc((C + 1) * sizeof(float))
        if centre == NULL:
            return -1
        if plan.reduce == CBN_RED_CL:
            scratch = <double*>malloc((C + 1) * sizeof(double))
            if scratch == NULL:
                free(centre)
                return -1
            _pilots_cl(x, g, scratch, centre)
            free(scratch)
            scratch = NULL
        else:
            for c in range(C):
                centre[c] = _pilot_cm(x, g, c)
        wk.centre = centre
    if plan.reduce == CBN_RED_CM_SEGMENTS:  # few channels, many threads
        wk.part = <double*>malloc(3 * plan.ntasks_red * sizeof(double))
        if wk.part == NULL:
            free(centre)
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
    else:  # rows tasks (channel-major short runs, channels-last) into (nseg, C) partials
        wk.part = <double*>malloc(2 * g.nseg * C * sizeof(double))
        if plan.reduce == CBN_RED_CM_ROWS:
            scratch = cbn_alloc_per_thread(nt, 17 * plan.cw, &stride)
        else:
            scratch = cbn_alloc_per_thread(nt, 3 * g.col_width, &stride)
        if wk.part == NULL or scratch == NULL:
            free(wk.part)
            free(scratch)
            free(centre)
            return -1
        _run(&wk, MOMENTS_CM_ROWS if plan.reduce == CBN_RED_CM_ROWS else MOMENTS_CL,
             plan.ntasks_red, nt, True, scratch, stride, x, tag)
        free(scratch)
        _merge_segment_partials(x, g, wk.part, plan.reduce == CBN_RED_CL, mean_out, m2_out)
        free(wk.part)
    if centre != NULL:
        _certify_or_redo(x, g, centre, mean_out, m2_out)
        free(centre)
    return 0
