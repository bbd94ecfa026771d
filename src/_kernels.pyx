# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
# cython: initializedcheck=False, nonecheck=False, embedsignature=True
"""One SIMD level's batch-norm kernels (float32 and float64, GIL-free, OpenMP).

This file is compiled once per SIMD level (meson.build) and holds only ``noexcept nogil``
code: the statistics, the element-wise passes and the backward sums, each written once for both
float types (the fused type ``floating``), on top of the explicit-SIMD C loops of
cbn_kernels.h.
Its one Python-visible function, ``table``, hands the compile-once module (_core.pyx) the
level's entries (cbn_table.h).  The design is described in ARCHITECTURE.md beside this file.

Conventions: arguments marked IN are read, OUT are written (named ``*_out``); every function
called inside a parallel region is ``noexcept nogil``.
"""

from libc.stdlib cimport malloc, free
from libc.math cimport sqrt
from cpython.pycapsule cimport PyCapsule_New, PyCapsule_GetPointer
from cython.parallel cimport prange, threadid

from cbn_shared cimport *
from cbn_simd cimport *

ctypedef fused floating:
    float
    double

# The process's one runtime (tuning settings, probes, fork flags), owned by _core.pyx and set
# by table() before any entry can be called.
cdef cbn_runtime* _rt = NULL


# ------------------------------------------------------------------------------- point functions
cdef inline double _sum(const floating* x, Py_ssize_t n) noexcept nogil:
    if floating is float:
        return cbn_sum_f32(x, n)
    else:
        return cbn_sum_f64(x, n)


cdef inline void _shifted_sums(const floating* x, Py_ssize_t n, double k, double* s1,
                               double* s2) noexcept nogil:
    if floating is float:
        cbn_shifted_sums_f32(x, n, k, s1, s2)
    else:
        cbn_shifted_sums_f64(x, n, k, s1, s2)


cdef inline const floating* _at(const floating* p, Py_ssize_t off) noexcept nogil:
    """p + off, keeping NULL (no activation's saved output) as NULL."""
    return p + off if p != NULL else NULL


cdef inline floating _act_grad(floating g, floating y, int act) noexcept nogil:
    """g through the activation act given its output y (cbn_epilogue-inl.h)."""
    if floating is float:
        return cbn_act_grad_f32(g, y, act)
    else:
        return cbn_act_grad_f64(g, y, act)


cdef inline void _sum_like_dot(const floating* dy, const floating* ym, int act, Py_ssize_t n,
                               double* sdy) noexcept nogil:
    """sdy += sum(g), g = dy through the activation act whose output is ym (cbn_epilogue.h)."""
    if floating is float:
        cbn_sum_like_dot_f32(dy, ym, n, sdy, act)
    else:
        cbn_sum_like_dot_f64(dy, ym, n, sdy, act)


cdef inline void _sum_dot(const floating* dy, const floating* ym, int act, const floating* x,
                          Py_ssize_t n,
                          double m, double* sdy, double* sdyx) noexcept nogil:
    """sdy += sum(g), sdyx += sum(g * (x - m)), g as in _sum_like_dot."""
    if floating is float:
        cbn_sum_dot_f32(dy, ym, x, n, m, sdy, sdyx, act)
    else:
        cbn_sum_dot_f64(dy, ym, x, n, m, sdy, sdyx, act)


cdef inline void _col_shifted_sums(double* s1, double* s2, const floating* x, Py_ssize_t ld,
                                   Py_ssize_t rows, const double* k, Py_ssize_t w) noexcept nogil:
    if floating is float:
        cbn_col_shifted_sums_f32(s1, s2, x, ld, rows, k, w)
    else:
        cbn_col_shifted_sums_f64(s1, s2, x, ld, rows, k, w)


cdef inline void _col_sum_dot(double* sdy, double* sdyx, const floating* dy, const floating* ym,
                              int act,
                              const floating* x, Py_ssize_t ld, Py_ssize_t rows, const double* m,
                              Py_ssize_t w) noexcept nogil:
    """sdyx NULL: only the g sums (g = dy through the activation act whose output is ym)."""
    if floating is float:
        cbn_col_sum_dot_f32(sdy, sdyx, dy, ym, x, ld, rows, m, w, act)
    else:
        cbn_col_sum_dot_f64(sdy, sdyx, dy, ym, x, ld, rows, m, w, act)


cdef inline void _block_moments(double inv_nb, double k, double kref, double s1, double s2,
                                double* mean_out, double* m2_out) noexcept nogil:
    """Moments of a block of nb = 1 / inv_nb values from its sums shifted by k, an element of
    the block: then (k - mean)^2 <= nb * var, so the cancellation below costs at most a factor
    nb + 1.  OUT mean_out is the block mean *less kref*, the channel's reference element (see
    _channel_ref): merges then subtract small offsets, not two rounded copies of a huge mean
    (float64 data at 1e10 +- 1 lost 7e-8 of its variance that way)."""
    cdef double t = s1 * inv_nb
    cdef double q = s2 - s1 * t
    mean_out[0] = (k - kref) + t
    # clamp rounding below zero, but let NaN through (a NaN/Inf input must poison its channel)
    m2_out[0] = 0.0 if q < 0.0 else q


cdef inline void _block_moments_columns(double inv_nb, const double* k, const floating* kref,
                                        double* s1_mean, double* s2_m2,
                                        Py_ssize_t w) noexcept nogil:
    """_block_moments for w columns, in place: IN/OUT s1 -> mean less kref and s2 -> M2
    (vectorised; the same operations in the same order as the scalar form)."""
    cdef Py_ssize_t j
    cdef double t, q
    for j in range(w):
        t = s1_mean[j] * inv_nb
        q = s2_m2[j] - s1_mean[j] * t
        s1_mean[j] = (k[j] - <double>kref[j]) + t
        s2_m2[j] = 0.0 if q < 0.0 else q


cdef void _merge(double* n_a, double* mean_a, double* m2_a,
                 double n_b, double mean_b, double m2_b) noexcept nogil:
    """Chan et al.: fold the moments (n_b, mean_b, m2_b) into (n_a, mean_a, m2_a), IN/OUT.

    Not inline on purpose: every merge in the module runs this one compiled body, so the
    rounding is the same whichever code path (fused or partials) performed it."""
    cdef double n = n_a[0] + n_b
    cdef double delta, f
    if n_b == 0:
        return
    if n_a[0] == 0:  # the formula below gives the same, but inf * 0 = NaN once delta^2 overflows
        mean_a[0] = mean_b
        m2_a[0] = m2_b
        n_a[0] = n_b
        return
    delta = mean_b - mean_a[0]
    f = n_b / n
    mean_a[0] = mean_a[0] + delta * f
    m2_a[0] = m2_a[0] + m2_b + delta * delta * (n_a[0] * f)
    n_a[0] = n


cdef void _merge_columns(double* mean_a, double* m2_a, double n_a,
                         const double* mean_b, const double* m2_b, double n_b,
                         Py_ssize_t ncols) noexcept nogil:
    """Vector form of _merge for the channels-last layout (counts are equal across columns).

    IN/OUT mean_a, m2_a; IN mean_b, m2_b.  Same formula, same order of operations."""
    cdef double n = n_a + n_b
    cdef double f, g, delta
    cdef Py_ssize_t j
    if n_b == 0:
        return
    if n_a == 0:  # as in _merge: a copy, bit-identical to the formula when it is finite
        for j in range(ncols):
            mean_a[j] = mean_b[j]
            m2_a[j] = m2_b[j]
        return
    f = n_b / n
    g = n_a * f
    for j in range(ncols):
        delta = mean_b[j] - mean_a[j]
        mean_a[j] = mean_a[j] + delta * f
        m2_a[j] = m2_a[j] + m2_b[j] + delta * delta * g


cdef inline void _split_centre(double centre, floating* hi, floating* lo) noexcept nogil:
    """centre ~= hi + lo with hi, lo of the input type (lo is 0 for double)."""
    hi[0] = <floating>centre
    lo[0] = <floating>(centre - <double>hi[0])


# ------------------------------------------------------------------------- the parallel template
# Every op runs a plan (cbn_plan.h: a pure function of the geometry, the thread count and the
# cache budget) as tasks of a few kinds; _run is the one loop that starts them -- on the
# calling thread when nt <= 1 (small inputs, one thread, a forked child: libgomp is not
# fork-safe), in an OpenMP team otherwise -- and notes the team size for the tests.  A task
# reads its arguments from the op's Work; scratch is a per-thread slice of `stride` doubles.

cdef inline int _threads_for(Py_ssize_t elems, int requested, Py_ssize_t tasks) noexcept nogil:
    """cbn_threads_for with this process's runtime; marks that a thread team will run (the
    fork handler then knows a child must stay serial)."""
    cdef int nt = cbn_threads_for(elems, requested, tasks, cbn_max_threads(), cbn_num_procs(),
                                  _rt.forked_child)
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
    FLOOR_SCALE
    FLOOR_TRIAD
    FLOOR_SUM


cdef void _run(const Work* wk, TaskKind kind, Py_ssize_t ntasks, int nt, bint dynamic,
               double* scratch, Py_ssize_t stride, floating tag) noexcept nogil:
    """Tasks 0 <= t < ntasks of one kind, on nt threads (schedule dynamic or static).  The
    element type of the op is that of tag."""
    cdef Py_ssize_t t
    if nt <= 1:
        cbn_note_team(_rt)
        for t in range(ntasks):
            _task(wk, kind, t, scratch, tag)
    elif dynamic:
        for t in prange(ntasks, num_threads=nt, schedule='dynamic'):
            cbn_note_team(_rt)
            _task(wk, kind, t, scratch + threadid() * stride if scratch != NULL else NULL, tag)
    else:
        for t in prange(ntasks, num_threads=nt, schedule='static'):
            cbn_note_team(_rt)
            _task(wk, kind, t, scratch + threadid() * stride if scratch != NULL else NULL, tag)


# ------------------------------------------------------------------------------------ statistics
cdef inline double _channel_ref(const floating* x, const Geometry* g, Py_ssize_t c) noexcept nogil:
    """The reference element of channel c: its first element.  Block and segment means are
    kept as offsets from it through every merge and it is added back once at the end, in the
    same way by every code path (so fused and partial paths stay bit-identical).  0 for an
    empty channel, which has no element to read."""
    return <double>x[c * g.inner] if g.n > 0 else 0.0


cdef void _segment_moments_cm(const floating* x, const Geometry* g, Py_ssize_t c,
                              Py_ssize_t s, double* cnt_out, double* mean_out,
                              double* m2_out) noexcept nogil:
    """Channel-major: moments of segment s of channel c (IN x, OUT the three scalars; the
    mean less _channel_ref)."""
    cdef Py_ssize_t b, b0 = cbn_seg_start(g, s), b1 = cbn_seg_start(g, s + 1)
    cdef Py_ssize_t o, o0, o1, i0, i1, length, p
    cdef Py_ssize_t stride = g.C * g.inner
    cdef const floating* base = x + c * g.inner
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
        k = <double>base[o0 * stride + i0]
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


cdef void _channel_moments_cm(const floating* x, const Geometry* g, Py_ssize_t c,
                              double* mean_out, double* m2_out) noexcept nogil:
    """Channel-major: moments of the whole channel c, segment by segment, in order."""
    cdef double cnt = 0.0, mean = 0.0, m2 = 0.0, sc, sm, sq
    cdef Py_ssize_t s
    for s in range(g.nseg):
        _segment_moments_cm(x, g, c, s, &sc, &sm, &sq)
        _merge(&cnt, &mean, &m2, sc, sm, sq)
    mean_out[0] = _channel_ref(x, g, c) + mean
    m2_out[0] = m2


cdef void _segment_moments_cl(const floating* x, const Geometry* g, Py_ssize_t s,
                              Py_ssize_t chunk, double* mean_out, double* m2_out,
                              double* scratch) noexcept nogil:
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
            bk[j] = <double>x[r0 * g.C + c0 + j]
            bmean[j] = 0.0
            bm2[j] = 0.0
        _col_shifted_sums(bmean, bm2, x + r0 * g.C + c0, g.C, r1 - r0, bk, w)
        _block_moments_columns(1.0 / nb, bk, x + c0, bmean, bm2, w)
        _merge_columns(mean_out, m2_out, cnt, bmean, bm2, nb, w)
        cnt = cnt + nb


cdef void _moments_cm_rows_task(const floating* x, const Geometry* g, Py_ssize_t s,
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
    cdef const floating* row
    for j in range(w):
        mean[j] = 0.0
        m2[j] = 0.0
    for b in range(b0, b1):
        o0 = b * g.rows_per_block
        o1 = min(o0 + g.rows_per_block, g.outer)
        row = x + (o0 * C + c0) * inner
        for j in range(w):
            k[j] = <double>row[j * inner]
        for j in range(16 * w):
            s1[j] = 0.0
        for o in range(o0, o1):
            row = x + (o * C + c0) * inner
            for j in range(w):
                if floating is float:
                    cbn_shifted_sums8_f32(row + j * inner, inner, k[j], s1 + 8 * j, s2 + 8 * j)
                else:
                    cbn_shifted_sums8_f64(row + j * inner, inner, k[j], s1 + 8 * j, s2 + 8 * j)
        nb = <double>((o1 - o0) * inner)
        for j in range(w):
            _block_moments(1.0 / nb, k[j], _channel_ref(x, g, c0 + j),
                           cbn_hsum8_array(s1 + 8 * j), cbn_hsum8_array(s2 + 8 * j), &bm, &bq)
            cnt_c = cnt
            _merge(&cnt_c, &mean[j], &m2[j], nb, bm, bq)
        cnt = cnt + nb


cdef inline void _moments_cl_task(const floating* x, const Geometry* g, Py_ssize_t t,
                                  double* part, double* scratch) noexcept nogil:
    cdef Py_ssize_t s = t // g.ncol_chunks, chunk = t % g.ncol_chunks
    cdef Py_ssize_t j = chunk * g.col_width
    _segment_moments_cl(x, g, s, chunk, &part[s * g.C + j],
                        &part[g.nseg * g.C + s * g.C + j], scratch)


cdef void _merge_segment_partials(const floating* x, const Geometry* g, const double* part,
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


cdef int _moments(const floating* x, const Geometry* g, const cbn_plan* plan,
                  double* mean_out, double* m2_out) noexcept nogil:
    """Per-channel mean and M2 (float64) of x, into OUT arrays of length C, as the plan splits
    them (CBN_RED_*).  Returns 0, or -1 if out of memory."""
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
        _run(&wk, MOMENTS_CM_CHANNEL, C, nt, True, NULL, 0, <floating>0)
        return 0
    if plan.reduce == CBN_RED_CM_SEGMENTS:  # few channels, many threads
        wk.part = <double*>malloc(3 * plan.ntasks_red * sizeof(double))
        if wk.part == NULL:
            return -1
        _run(&wk, MOMENTS_CM_SEGMENT, plan.ntasks_red, nt, True, NULL, 0, <floating>0)
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
         plan.ntasks_red, nt, True, scratch, stride, <floating>0)
    free(scratch)
    _merge_segment_partials(x, g, wk.part, plan.reduce == CBN_RED_CL, mean_out, m2_out)
    free(wk.part)
    return 0


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


cdef inline void _normalize_run(const floating* x, floating* y_out, Py_ssize_t n, floating hi,
                                floating scale, floating shift, int act,
                                bint stream) noexcept nogil:
    """y = act((x - hi) * scale + shift) over one run (cbn_epilogue.h); streaming stores if
    stream."""
    if stream:
        if floating is float:
            cbn_affine_run_nt_f32(x, y_out, n, hi, scale, shift, act)
        else:
            cbn_affine_run_nt_f64(x, y_out, n, hi, scale, shift, act)
    elif floating is float:
        cbn_affine_run_f32(x, y_out, n, hi, scale, shift, act)
    else:
        cbn_affine_run_f64(x, y_out, n, hi, scale, shift, act)


cdef inline void _affine_rows(const floating* x, floating* y_out, Py_ssize_t ld, Py_ssize_t rows,
                              Py_ssize_t w, const floating* coef, Py_ssize_t C,
                              int act) noexcept nogil:
    """Channels-last rows: y = act((x - hi) * scale + shift), coef = [hi | scale | shift]; in
    place when x is y_out."""
    if floating is float:
        cbn_affine_f32(x, y_out, ld, rows, w, coef, coef + C, coef + 2 * C, act)
    else:
        cbn_affine_f64(x, y_out, ld, rows, w, coef, coef + C, coef + 2 * C, act)


cdef inline void _dx_run(const floating* dy, const floating* ym, int act, const floating* x,
                         floating* dx_out, Py_ssize_t n, floating hi, floating k1, floating k2,
                         floating k3, bint stream) noexcept nogil:
    """dx = g * k1 + (x - hi) * k2 + k3 with g = dy through the activation act whose output
    is ym; streaming stores if stream."""
    if stream:
        if floating is float:
            cbn_dx_run_nt_f32(dy, ym, x, dx_out, n, hi, k1, k2, k3, act)
        else:
            cbn_dx_run_nt_f64(dy, ym, x, dx_out, n, hi, k1, k2, k3, act)
    elif floating is float:
        cbn_dx_run_f32(dy, ym, x, dx_out, n, hi, k1, k2, k3, act)
    else:
        cbn_dx_run_f64(dy, ym, x, dx_out, n, hi, k1, k2, k3, act)


cdef inline void _dx_rows(const floating* dy, const floating* ym, int act, const floating* x,
                          floating* dx_out, Py_ssize_t ld, Py_ssize_t rows, Py_ssize_t C,
                          const floating* coef) noexcept nogil:
    """Channels-last rows: dx = g * k1 + (x - hi) * k2 + k3, coef = [hi | k1 | k2 | k3], g = dy
    through the activation act whose output is ym."""
    cdef Py_ssize_t r, c
    cdef const floating* g
    cdef const floating* xr
    cdef const floating* yr
    cdef floating* d
    cdef floating gv
    if (<const void*>dx_out != <const void*>dy and <const void*>dx_out != <const void*>x
            and <const void*>dx_out != <const void*>ym):
        if floating is float:
            cbn_dx_rows_f32(dy, ym, x, dx_out, ld, rows, C, coef, coef + C, coef + 2 * C,
                            coef + 3 * C, act)
        else:
            cbn_dx_rows_f64(dy, ym, x, dx_out, ld, rows, C, coef, coef + C, coef + 2 * C,
                            coef + 3 * C, act)
        return
    for r in range(rows):  # in place (into dy, x or y): element-wise, one row at a time
        g = dy + r * ld
        xr = x + r * ld
        yr = _at(ym, r * ld)
        d = dx_out + r * ld
        for c in range(C):
            gv = g[c]
            if act != CBN_ACT_NONE:
                gv = _act_grad(gv, yr[c], act)
            d[c] = gv * coef[C + c] + (xr[c] - coef[c]) * coef[2 * C + c] + coef[3 * C + c]


cdef inline void _affine_flat_nt(const floating* x, floating* y_out, Py_ssize_t rows,
                                 Py_ssize_t C, const floating* ext, int act) noexcept nogil:
    """Dense channels-last rows with streaming stores, ext = extended [hi | scale | shift]."""
    if floating is float:
        cbn_affine_flat_nt_f32(x, y_out, rows * C, C, ext, act)
    else:
        cbn_affine_flat_nt_f64(x, y_out, rows * C, C, ext, act)
    cbn_nt_fence()


cdef inline void _dx_flat_nt(const floating* dy, const floating* ym, int act, const floating* x,
                             floating* dx_out, Py_ssize_t rows, Py_ssize_t C,
                             const floating* ext) noexcept nogil:
    """Dense channels-last rows with streaming stores, ext = extended [hi | k1 | k2 | k3]."""
    if floating is float:
        cbn_dx_flat_nt_f32(dy, ym, x, dx_out, rows * C, C, ext, act)
    else:
        cbn_dx_flat_nt_f64(dy, ym, x, dx_out, rows * C, C, ext, act)
    cbn_nt_fence()


cdef floating* _extended_coef(const floating* coef, Py_ssize_t C, int k,
                              const floating* out) noexcept nogil:
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


cdef void _normalize_runs(const floating* x, floating* y_out, const Geometry* g,
                          const floating* coef, Py_ssize_t r0, Py_ssize_t r1, int act,
                          bint stream, bint rev=False) noexcept nogil:
    """Channel-major runs r0 <= r < r1 of _normalize; a store fence after them if stream;
    walking down (runs and elements) if rev."""
    cdef Py_ssize_t r, c, C = g.C
    if rev:
        for r in range(r1 - 1, r0 - 1, -1):
            c = r % C
            if floating is float:
                cbn_affine_run_rev_f32(x + r * g.inner, y_out + r * g.inner, g.inner, coef[c],
                                       coef[C + c], coef[2 * C + c], act)
            else:
                cbn_affine_run_rev_f64(x + r * g.inner, y_out + r * g.inner, g.inner, coef[c],
                                       coef[C + c], coef[2 * C + c], act)
        return
    for r in range(r0, r1):
        c = r % C
        _normalize_run(x + r * g.inner, y_out + r * g.inner, g.inner, coef[c], coef[C + c],
                       coef[2 * C + c], act, stream)
    if stream:
        cbn_nt_fence()


cdef void _normalize_piece(const floating* x, floating* y_out, const Geometry* g,
                           const floating* coef, Py_ssize_t r, Py_ssize_t p, Py_ssize_t npieces,
                           int act, bint stream) noexcept nogil:
    """Piece p of npieces of channel-major run r (fewer runs than threads)."""
    cdef Py_ssize_t c = r % g.C, C = g.C
    cdef Py_ssize_t lo = p * g.inner // npieces, hi = (p + 1) * g.inner // npieces
    _normalize_run(x + r * g.inner + lo, y_out + r * g.inner + lo, hi - lo, coef[c],
                   coef[C + c], coef[2 * C + c], act, stream)
    if stream:
        cbn_nt_fence()


cdef inline void _normalize_rows_task(const Work* wk, Py_ssize_t r,
                                      const floating* x) noexcept nogil:
    """Channels-last block r of plan.rows_per_task rows (streaming stores when ext is set)."""
    cdef Py_ssize_t C = wk.g.C, rpt = wk.plan.rows_per_task
    cdef Py_ssize_t rows = min(rpt, wk.g.outer - r * rpt), off = r * rpt * C
    cdef floating* y = <floating*>wk.out
    if wk.ext != NULL:
        _affine_flat_nt(x + off, y + off, rows, C, <const floating*>wk.ext, wk.act)
    else:
        _affine_rows(x + off, y + off, C, rows, C, <const floating*>wk.coef, C, wk.act)


cdef void _elementwise(Work* wk, TaskKind share, TaskKind piece, TaskKind rows, int ncoef,
                       floating tag) noexcept nogil:
    """Run an element-wise pass (wk set up) as its plan splits it (CBN_EW_*), with the task
    kinds of the pass; the channels-last rows stream through ncoef extended coefficient
    vectors."""
    cdef const cbn_plan* plan = wk.plan
    if plan.ew == CBN_EW_CM_PIECES:  # fewer (long) runs than threads: nt pieces per run
        _run(wk, piece, plan.ntasks_ew, plan.nt, False, NULL, 0, tag)
    elif plan.ew == CBN_EW_CM_SHARES:
        # one contiguous share of runs per thread (and one store fence at its end when
        # streaming): against a parallel-loop iteration per run, 2 threads, short runs:
        # (8,256,14,14) f32 inference 0.90-0.94x the time, (64,512,7,7) 0.65-0.68x; dx of
        # (8,256,14,14) f32 0.79-0.89x
        _run(wk, share, plan.ntasks_ew, plan.nt, False, NULL, 0, tag)
    else:
        if wk.stream:
            wk.ext = _extended_coef(<const floating*>wk.coef, wk.g.C, ncoef,
                                    <const floating*>wk.out)
        _run(wk, rows, plan.ntasks_ew, plan.nt, False, NULL, 0, tag)
        cbn_free_beside(<void*>wk.ext)


cdef void _normalize(const floating* x, floating* y_out, const Geometry* g,
                     const cbn_plan* plan, const floating* coef, int act,
                     bint single_pass) noexcept nogil:
    """y = act((x - hi) * scale + shift) over the whole array, coef = [hi | scale | shift], as
    the plan splits it (CBN_EW_*); single_pass: the whole op (inference), no reduction before
    it (see _streams)."""
    cdef Py_ssize_t C = g.C
    cdef int nt = plan.nt
    cdef Work wk
    wk.g = g
    wk.plan = plan
    wk.x = x
    wk.out = y_out
    wk.coef = <void*>coef
    wk.ext = NULL
    wk.act = act
    wk.stream = _streams(y_out, x, NULL, NULL, g.outer * C * g.inner, sizeof(floating),
                         g.inner if g.inner > 1 else g.outer * C, single_pass and nt > 1)
    wk.rev = (g.inner > 1 and not wk.stream and y_out != x and _reverse(y_out, x, NULL, NULL))
    _elementwise(&wk, NORMALIZE_SHARE, NORMALIZE_PIECE, NORMALIZE_ROWS, 3, <floating>0)


cdef void _dx_runs(const floating* dy, const floating* ym, int act, const floating* x,
                   floating* dx_out,
                   const Geometry* g, const floating* coef, Py_ssize_t r0, Py_ssize_t r1,
                   bint stream, bint rev=False) noexcept nogil:
    """Channel-major runs r0 <= r < r1 of _dx_pass; a store fence after them if stream;
    walking down (runs and elements) if rev."""
    cdef Py_ssize_t r, c, off, C = g.C
    if rev:
        for r in range(r1 - 1, r0 - 1, -1):
            c = r % C
            off = r * g.inner
            if floating is float:
                cbn_dx_run_rev_f32(dy + off, _at(ym, off), x + off, dx_out + off, g.inner,
                                   coef[c], coef[C + c], coef[2 * C + c], coef[3 * C + c], act)
            else:
                cbn_dx_run_rev_f64(dy + off, _at(ym, off), x + off, dx_out + off, g.inner,
                                   coef[c], coef[C + c], coef[2 * C + c], coef[3 * C + c], act)
        return
    for r in range(r0, r1):
        c = r % C
        off = r * g.inner
        _dx_run(dy + off, _at(ym, off), act, x + off, dx_out + off, g.inner, coef[c], coef[C + c],
                coef[2 * C + c], coef[3 * C + c], stream)
    if stream:
        cbn_nt_fence()


cdef void _dx_piece(const floating* dy, const floating* ym, int act, const floating* x,
                    floating* dx_out,
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


cdef inline void _dx_rows_task(const Work* wk, Py_ssize_t r, const floating* dy) noexcept nogil:
    """Channels-last block r of plan.rows_per_task rows (streaming stores when ext is set)."""
    cdef Py_ssize_t C = wk.g.C, rpt = wk.plan.rows_per_task
    cdef Py_ssize_t rows = min(rpt, wk.g.outer - r * rpt), off = r * rpt * C
    cdef const floating* ym = <const floating*>wk.ym
    cdef const floating* x = <const floating*>wk.x
    cdef floating* dx = <floating*>wk.out
    if wk.ext != NULL:
        _dx_flat_nt(dy + off, _at(ym, off), wk.act, x + off, dx + off, rows, C,
                    <const floating*>wk.ext)
    else:
        _dx_rows(dy + off, _at(ym, off), wk.act, x + off, dx + off, C, rows, C,
                 <const floating*>wk.coef)


cdef void _dx_pass(const floating* dy, const floating* ym, int act, const floating* x,
                   floating* dx_out, const Geometry* g, const cbn_plan* plan,
                   const floating* coef) noexcept nogil:
    """dx = g * k1 + (x - hi) * k2 + k3 over the whole array, coef = [hi | k1 | k2 | k3], g =
    dy through the activation act whose output is ym, as the plan splits it (CBN_EW_*)."""
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
    wk.stream = _streams(dx_out, dy, x, ym, g.outer * C * g.inner, sizeof(floating),
                         g.inner if g.inner > 1 else g.outer * C)
    wk.rev = (g.inner > 1 and not wk.stream and dx_out != dy and dx_out != x
              and dx_out != ym and _reverse(dx_out, dy, x, ym))
    _elementwise(&wk, DX_SHARE, DX_PIECE, DX_ROWS, 4, <floating>0)


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
                                 floating* coef, int act, bint stream) noexcept nogil:
    """Channel-major: statistics of channel c, then normalise it while it is still cached."""
    cdef double mean, m2
    cdef Py_ssize_t o, off, C = g.C
    _channel_moments_cm(x, g, c, &mean, &m2)
    _forward_coef(c, C, mean, m2, <double>g.n, eps, w, b, mean_out, var_out, invstd_out, coef)
    for o in range(g.outer):
        off = (o * C + c) * g.inner
        _normalize_run(x + off, y_out + off, g.inner, coef[c], coef[C + c], coef[2 * C + c],
                       act, stream)
    if stream:
        cbn_nt_fence()


cdef int _forward(const floating* x, floating* y_out, const Geometry* g, int nt_req,
                  double eps, const double* w, const double* b,
                  double* mean_out, double* var_out, double* invstd_out,
                  int act) noexcept nogil:
    """Training forward.  IN x, w, b (NULL = 1 / 0); OUT y_out = act(normalised x) and the
    per-channel float64 mean, biased var and invstd.  Returns 0, or -1 when out of memory."""
    cdef Py_ssize_t C = g.C, c
    cdef Py_ssize_t total = g.outer * C * g.inner
    cdef cbn_plan plan = cbn_plan_of(g, _threads_for(total, nt_req, cbn_tasks_of(g)),
                                     g.n * <Py_ssize_t>sizeof(floating), _rt.fuse_budget_bytes)
    cdef floating* coef = <floating*>cbn_alloc_beside(3 * C * sizeof(floating), y_out)
    cdef double* m2
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
        wk.eps = eps
        wk.w = w
        wk.b = b
        wk.mean_out = mean_out
        wk.var_out = var_out
        wk.invstd_out = invstd_out
        wk.stream = _streams(y_out, x, NULL, NULL, total, sizeof(floating), g.inner)
        _run(&wk, FORWARD_CHANNEL, C, plan.nt, True, NULL, 0, <floating>0)
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
    _normalize(x, y_out, g, &plan, coef, act, False)
    cbn_free_beside(coef)
    return 0


# ------------------------------------------------------------------------------------ inference
cdef int _inference(const floating* x, floating* y_out, const Geometry* g, int nt_req,
                    const double* centre, const double* scale, const double* shift,
                    int act) noexcept nogil:
    """y = act((x - centre) * scale + shift), one pass.  IN per-channel float64 centre, scale,
    shift."""
    cdef Py_ssize_t C = g.C, c
    cdef cbn_plan plan = cbn_plan_of(
        g, _threads_for(g.outer * C * g.inner, nt_req, cbn_tasks_of(g)), 0, 0)
    cdef floating* coef = <floating*>cbn_alloc_beside(3 * C * sizeof(floating), y_out)
    if coef == NULL:
        return -1
    for c in range(C):
        _affine_coef(c, C, centre[c], scale[c], shift[c], coef)
    _normalize(x, y_out, g, &plan, coef, act, True)
    cbn_free_beside(coef)
    return 0


# ------------------------------------------------------------------------------------ backward
cdef void _segment_sums_cm(const floating* dy, const floating* ym, int act, const floating* x,
                           const Geometry* g,
                           Py_ssize_t c, Py_ssize_t s, double mean, bint with_dot,
                           double* sdy_out, double* sdyx_out) noexcept nogil:
    """Channel-major: sum(dy) and (if with_dot) sum(dy * (x - mean)) over segment s of channel
    c.  OUT scalars (overwritten)."""
    cdef Py_ssize_t b, b0 = cbn_seg_start(g, s), b1 = cbn_seg_start(g, s + 1)
    cdef Py_ssize_t o, o0, o1, i0, i1, p, off
    cdef double a = 0.0, d = 0.0
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
        for o in range(o0, o1):
            off = (o * g.C + c) * g.inner + i0
            if with_dot:
                _sum_dot(dy + off, _at(ym, off), act, x + off, i1 - i0, mean, &a, &d)
            else:
                _sum_like_dot(dy + off, _at(ym, off), act, i1 - i0, &a)
    sdy_out[0] = a
    sdyx_out[0] = d


cdef void _channel_sums_cm(const floating* dy, const floating* ym, int act, const floating* x,
                           const Geometry* g,
                           Py_ssize_t c, double mean, bint with_dot,
                           double* sdy_out, double* sdyx_out) noexcept nogil:
    cdef double a = 0.0, d = 0.0, sa, sd
    cdef Py_ssize_t s
    for s in range(g.nseg):
        _segment_sums_cm(dy, ym, act, x, g, c, s, mean, with_dot, &sa, &sd)
        a = a + sa
        d = d + sd
    sdy_out[0] = a
    sdyx_out[0] = d


cdef void _sums_cm_rows_task(const floating* dy, const floating* ym, int act, const floating* x,
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
            if floating is float:
                cbn_sum_dot8_f32(dy + off, _at(ym, off), x + off, inner, mean[j],
                                 acc_g + 8 * (j - c0),
                                 acc_d + 8 * (j - c0) if with_dot else NULL, act)
            else:
                cbn_sum_dot8_f64(dy + off, _at(ym, off), x + off, inner, mean[j],
                                 acc_g + 8 * (j - c0),
                                 acc_d + 8 * (j - c0) if with_dot else NULL, act)
    for j in range(c0, c1):
        sdy[j] = cbn_hsum8_array(acc_g + 8 * (j - c0))
        sdyx[j] = cbn_hsum8_array(acc_d + 8 * (j - c0))


cdef inline void _sums_cl_task(const floating* dy, const floating* ym, int act, const floating* x,
                               const Geometry* g,
                               Py_ssize_t t, const double* mean, bint with_dot,
                               double* part) noexcept nogil:
    """Channels-last: sums of segment s over one channel chunk into the (2, nseg, C) partials."""
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
    _col_sum_dot(sdy, sdyx if with_dot else NULL, dy + r0 * g.C + c0, _at(ym, r0 * g.C + c0), act,
                 x + r0 * g.C + c0, g.C, r1 - r0, mean + c0, w)


cdef inline void _backward_coef(Py_ssize_t c, Py_ssize_t C, double n, const double* mean,
                                const double* invstd, const double* w, const double* sdy,
                                const double* sdyx, floating* coef_out) noexcept nogil:
    """dx = w*invstd*(dy - sdy/n - (x-mean)*invstd^2*sdyx/n) = dy*k1 + (x-mean)*k2 + k3,
    stored as [hi | k1 | k2 | k3 - lo*k2] (see _affine_coef for the centre split)."""
    cdef double k1 = invstd[c] * (w[c] if w != NULL else 1.0)
    cdef double k2 = -k1 * invstd[c] * invstd[c] * sdyx[c] / n
    cdef double k3 = -k1 * sdy[c] / n
    cdef floating hi, lo
    _split_centre(mean[c], &hi, &lo)
    coef_out[c] = hi
    coef_out[C + c] = <floating>k1
    coef_out[2 * C + c] = <floating>k2
    coef_out[3 * C + c] = <floating>(k3 - <double>lo * k2)


cdef void _backward_channel_fused(const floating* dy, const floating* ym, int act,
                                  const floating* x,
                                  floating* dx_out,
                                  const Geometry* g, Py_ssize_t c, const double* mean,
                                  const double* invstd, const double* w, double* sdy_out,
                                  double* sdyx_out, floating* coef, bint stream) noexcept nogil:
    """Channel-major: the sums of channel c, then its dx while x and dy are still cached."""
    cdef Py_ssize_t o, off, C = g.C
    _channel_sums_cm(dy, ym, act, x, g, c, mean[c], True, &sdy_out[c], &sdyx_out[c])
    _backward_coef(c, C, <double>g.n, mean, invstd, w, sdy_out, sdyx_out, coef)
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
        for s in range(g.nseg):
            if by_task:
                t = c * g.nseg + s
                sdy_out[c] = sdy_out[c] + part[2 * t]
                sdyx_out[c] = sdyx_out[c] + part[2 * t + 1]
            else:
                sdy_out[c] = sdy_out[c] + part[s * C + c]
                sdyx_out[c] = sdyx_out[c] + part[g.nseg * C + s * C + c]


cdef int _backward_sums(Work* wk, const Geometry* g, const cbn_plan* plan,
                        floating tag) noexcept nogil:
    """The backward sums as the plan splits them (CBN_RED_*), into wk.sdy_out, wk.sdyx_out.
    Returns 0/-1."""
    cdef Py_ssize_t C = g.C, stride = 0
    cdef double* scratch = NULL
    if plan.reduce == CBN_RED_CM_CHANNELS:
        _run(wk, SUMS_CM_CHANNEL, C, plan.nt, True, NULL, 0, tag)
        return 0
    if plan.reduce == CBN_RED_CM_SEGMENTS:
        wk.part = <double*>malloc(2 * plan.ntasks_red * sizeof(double))
    else:
        wk.part = <double*>malloc(2 * g.nseg * C * sizeof(double))
    if plan.reduce == CBN_RED_CM_ROWS:
        scratch = cbn_alloc_per_thread(plan.nt, 16 * plan.cw, &stride)
        if scratch == NULL:
            free(wk.part)
            return -1
    if wk.part == NULL:
        free(scratch)
        return -1
    if plan.reduce == CBN_RED_CM_ROWS:
        _run(wk, SUMS_CM_ROWS, plan.ntasks_red, plan.nt, True, scratch, stride, tag)
    elif plan.reduce == CBN_RED_CM_SEGMENTS:
        _run(wk, SUMS_CM_SEGMENT, plan.ntasks_red, plan.nt, True, NULL, 0, tag)
    else:
        _run(wk, SUMS_CL, plan.ntasks_red, plan.nt, True, NULL, 0, tag)
    free(scratch)
    _sum_segment_partials(g, wk.part, plan.reduce == CBN_RED_CM_SEGMENTS, wk.sdy_out,
                          wk.sdyx_out)
    free(wk.part)
    return 0


cdef int _backward(const floating* dy, const floating* ym, int act, const floating* x,
                   floating* dx_out, const Geometry* g, int nt_req, const double* mean,
                   const double* invstd, const double* w, bint with_dot, double* sdy_out,
                   double* sdyx_out) noexcept nogil:
    """Backward.  IN dy, x, float64 mean/invstd, w (NULL = 1), and the fused activation act
    with its output ym (cbn_epilogue.h; CBN_ACT_NONE and NULL without one): g, dy through the
    activation, replaces dy.  OUT sdy_out = sum(g) and, if with_dot, sdyx_out =
    sum(g * (x - mean)); dx_out too unless it is NULL.  Returns 0/-1."""
    cdef Py_ssize_t C = g.C, c
    cdef Py_ssize_t total = g.outer * C * g.inner
    cdef cbn_plan plan = cbn_plan_of(
        g, _threads_for(total, nt_req, cbn_tasks_of(g)),
        2 * g.n * <Py_ssize_t>sizeof(floating) if dx_out != NULL else 0, _rt.fuse_budget_bytes)
    cdef floating* coef = NULL
    cdef Work wk
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
        wk.stream = _streams(dx_out, dy, x, ym, total, sizeof(floating), g.inner)
        _run(&wk, BACKWARD_CHANNEL, C, plan.nt, True, NULL, 0, <floating>0)
        cbn_free_beside(coef)
        return 0
    if _backward_sums(&wk, g, &plan, <floating>0) != 0:
        cbn_free_beside(coef)
        return -1
    if dx_out != NULL:
        for c in range(C):
            _backward_coef(c, C, <double>g.n, mean, invstd, w, sdy_out, sdyx_out, coef)
        _dx_pass(dy, ym, act, x, dx_out, g, &plan, coef)
        cbn_free_beside(coef)
    return 0


cdef int _dx_from_sums(const floating* dy, const floating* ym, int act, const floating* x,
                       floating* dx_out, const Geometry* g, int nt_req, double n_total,
                       const double* mean, const double* invstd, const double* w,
                       const double* sdy, const double* sdyx) noexcept nogil:
    """dx from given float64 sums over n_total values per channel (SyncBN); returns 0/-1."""
    cdef cbn_plan plan = cbn_plan_of(
        g, _threads_for(g.outer * g.C * g.inner, nt_req, cbn_tasks_of(g)), 0, 0)
    cdef floating* coef = <floating*>cbn_alloc_beside(4 * g.C * sizeof(floating), dx_out)
    cdef Py_ssize_t c
    if coef == NULL:
        return -1
    for c in range(g.C):
        _backward_coef(c, g.C, n_total, mean, invstd, w, sdy, sdyx, coef)
    _dx_pass(dy, ym, act, x, dx_out, g, &plan, coef)
    cbn_free_beside(coef)
    return 0


# ------------------------------------------------------------------------------- streaming floor
cdef inline int _stream_threads(int requested) noexcept nogil:
    cdef int nt
    if _rt.forked_child:
        return 1
    nt = requested if requested > 0 else cbn_max_threads()
    if nt > 1:
        _rt.team_started = 1  # a child forked after this team must not start another (libgomp)
    return nt


# Plain streaming loops over flat float32/float64 arrays, one contiguous chunk per thread (as
# an OpenMP static schedule splits them): the memory-bandwidth floor that the benchmarks compare
# each op against, measured in the same process and run.
cdef enum:
    FLOOR_SUM_CHUNKS = 64


cdef inline void _floor_task(const Work* wk, TaskKind kind, Py_ssize_t t,
                             const floating* a) noexcept nogil:
    cdef Py_ssize_t i, n = wk.n, lo, hi, chunk
    cdef const floating* b = <const floating*>wk.dy
    cdef floating* out = <floating*>wk.out
    if kind == FLOOR_SUM:
        chunk = (n + FLOOR_SUM_CHUNKS - 1) // FLOOR_SUM_CHUNKS
        wk.part[t] = _sum(a + min(t * chunk, n), max(0, min(chunk, n - t * chunk)))
        return
    lo = t * n // wk.nchunks
    hi = (t + 1) * n // wk.nchunks
    if kind == FLOOR_SCALE:
        for i in range(lo, hi):
            out[i] = 2 * a[i] + 1
    else:
        for i in range(lo, hi):
            out[i] = 2 * a[i] + b[i]


cdef double _floor(TaskKind kind, const floating* a, const floating* b, floating* out,
                   Py_ssize_t n, int nt_req) noexcept nogil:
    """out = 2 * a + 1 (FLOOR_SCALE), out = 2 * a + b (FLOOR_TRIAD), or the sum of a
    (FLOOR_SUM, returned; in chunks summed in order)."""
    cdef Work wk
    cdef double part[FLOOR_SUM_CHUNKS]
    cdef double total = 0.0
    cdef int nt = _stream_threads(nt_req)
    cdef Py_ssize_t t
    wk.x = a
    wk.dy = b
    wk.out = out
    wk.n = n
    wk.nchunks = nt
    wk.part = part
    _run(&wk, kind, FLOOR_SUM_CHUNKS if kind == FLOOR_SUM else nt, nt, False, NULL, 0,
         <floating>0)
    if kind == FLOOR_SUM:
        for t in range(FLOOR_SUM_CHUNKS):
            total += part[t]
    return total


# ------------------------------------------------------------------------------------ the tasks
cdef void _task(const Work* wk, TaskKind kind, Py_ssize_t t, double* scratch,
                floating tag) noexcept nogil:
    """Task t of one kind (_run): every kind of work the kernels split between threads."""
    cdef const Geometry* g = wk.g
    cdef const floating* x = <const floating*>wk.x
    cdef const floating* dy = <const floating*>wk.dy
    cdef const floating* ym = <const floating*>wk.ym
    cdef floating* out = <floating*>wk.out
    cdef floating* coef = <floating*>wk.coef
    cdef Py_ssize_t nt, nruns, nch, cw
    if kind == FLOOR_SCALE or kind == FLOOR_TRIAD or kind == FLOOR_SUM:
        _floor_task(wk, kind, t, x)
        return
    nt = wk.plan.nt
    nruns = g.outer * g.C
    nch = wk.plan.nch
    cw = wk.plan.cw
    if kind == MOMENTS_CM_ROWS:
        _moments_cm_rows_task(x, g, t // nch, min((t % nch) * cw, g.C),
                              min((t % nch + 1) * cw, g.C), wk.part, scratch)
    elif kind == MOMENTS_CM_CHANNEL:
        _channel_moments_cm(x, g, t, &wk.mean_out[t], &wk.m2_out[t])
    elif kind == MOMENTS_CM_SEGMENT:
        _segment_moments_cm(x, g, t // g.nseg, t % g.nseg, &wk.part[3 * t], &wk.part[3 * t + 1],
                            &wk.part[3 * t + 2])
    elif kind == MOMENTS_CL:
        _moments_cl_task(x, g, t, wk.part, scratch)
    elif kind == NORMALIZE_SHARE:
        _normalize_runs(x, out, g, coef, t * nruns // nt, (t + 1) * nruns // nt, wk.act,
                        wk.stream, wk.rev)
    elif kind == NORMALIZE_PIECE:
        _normalize_piece(x, out, g, coef, t // nt, t % nt, nt, wk.act, wk.stream)
    elif kind == NORMALIZE_ROWS:
        _normalize_rows_task(wk, t, x)
    elif kind == FORWARD_CHANNEL:
        _forward_channel_fused(x, out, g, t, wk.eps, wk.w, wk.b, wk.mean_out, wk.var_out,
                               wk.invstd_out, coef, wk.act, wk.stream)
    elif kind == SUMS_CM_ROWS:
        _sums_cm_rows_task(dy, ym, wk.act, x, g, t // nch, min((t % nch) * cw, g.C),
                           min((t % nch + 1) * cw, g.C), wk.mean, wk.with_dot, wk.part, scratch)
    elif kind == SUMS_CM_CHANNEL:
        _channel_sums_cm(dy, ym, wk.act, x, g, t, wk.mean[t], wk.with_dot, &wk.sdy_out[t],
                         &wk.sdyx_out[t])
    elif kind == SUMS_CM_SEGMENT:
        _segment_sums_cm(dy, ym, wk.act, x, g, t // g.nseg, t % g.nseg, wk.mean[t // g.nseg],
                         wk.with_dot, &wk.part[2 * t], &wk.part[2 * t + 1])
    elif kind == SUMS_CL:
        _sums_cl_task(dy, ym, wk.act, x, g, t, wk.mean, wk.with_dot, wk.part)
    elif kind == DX_SHARE:
        _dx_runs(dy, ym, wk.act, x, out, g, coef, t * nruns // nt, (t + 1) * nruns // nt,
                 wk.stream, wk.rev)
    elif kind == DX_PIECE:
        _dx_piece(dy, ym, wk.act, x, out, g, coef, t // nt, t % nt, nt, wk.stream)
    elif kind == DX_ROWS:
        _dx_rows_task(wk, t, dy)
    elif kind == BACKWARD_CHANNEL:
        _backward_channel_fused(dy, ym, wk.act, x, out, g, t, wk.mean, wk.invstd, wk.w,
                                wk.sdy_out, wk.sdyx_out, coef, wk.stream)


# ------------------------------------------------------------------------------------ the table
# Typed entries for cbn_table.h.  The forward, inference and backward kernels decide their own
# thread count from the requested one; moments and dx_from_sums get it decided here.

cdef int _moments_entry(const floating* x, const Geometry* g, int nt_req, double* mean_out,
                        double* m2_out) noexcept nogil:
    cdef cbn_plan plan = cbn_plan_of(
        g, _threads_for(g.outer * g.C * g.inner, nt_req, cbn_tasks_of(g)), 0, 0)
    return _moments(x, g, &plan, mean_out, m2_out)


cdef inline int _saved_act(const void* ym) noexcept nogil:
    """The activation of a backward table entry: its saved output ym is that of the fused ReLU,
    the only activation so far (NULL: none)."""
    return CBN_ACT_RELU if ym != NULL else CBN_ACT_NONE


cdef int _backward_entry(const floating* dy, const floating* ym, const floating* x,
                         floating* dx_out, const Geometry* g, int nt_req, const double* mean,
                         const double* invstd, const double* w, bint with_dot,
                         double* sdy_out, double* sdyx_out) noexcept nogil:
    return _backward(dy, ym, _saved_act(ym), x, dx_out, g, nt_req, mean, invstd, w, with_dot,
                     sdy_out, sdyx_out)


cdef int _dx_from_sums_entry(const floating* dy, const floating* ym, const floating* x,
                             floating* dx_out, const Geometry* g, int nt_req, double n_total,
                             const double* mean, const double* invstd, const double* w,
                             const double* sdy, const double* sdyx) noexcept nogil:
    return _dx_from_sums(dy, ym, _saved_act(ym), x, dx_out, g, nt_req, n_total, mean, invstd, w,
                         sdy, sdyx)


cdef void _floor_scale(const floating* a, floating* out, Py_ssize_t n, int nt_req) noexcept nogil:
    _floor(FLOOR_SCALE, a, NULL, out, n, nt_req)


cdef void _floor_triad(const floating* a, const floating* b, floating* out, Py_ssize_t n,
                       int nt_req) noexcept nogil:
    _floor(FLOOR_TRIAD, a, b, out, n, nt_req)


cdef double _floor_sum(const floating* a, Py_ssize_t n, int nt_req) noexcept nogil:
    return _floor(FLOOR_SUM, a, NULL, NULL, n, nt_req)


cdef cbn_kernel_table _TABLE
_TABLE.level = CBN_VARIANT
_TABLE.has_streaming = cbn_nt_available()
_TABLE.forward_f32 = _forward[float]
_TABLE.forward_f64 = _forward[double]
_TABLE.moments_f32 = _moments_entry[float]
_TABLE.moments_f64 = _moments_entry[double]
_TABLE.inference_f32 = _inference[float]
_TABLE.inference_f64 = _inference[double]
_TABLE.backward_f32 = _backward_entry[float]
_TABLE.backward_f64 = _backward_entry[double]
_TABLE.dx_from_sums_f32 = _dx_from_sums_entry[float]
_TABLE.dx_from_sums_f64 = _dx_from_sums_entry[double]
_TABLE.floor_scale_f32 = _floor_scale[float]
_TABLE.floor_scale_f64 = _floor_scale[double]
_TABLE.floor_triad_f32 = _floor_triad[float]
_TABLE.floor_triad_f64 = _floor_triad[double]
_TABLE.floor_sum_f32 = _floor_sum[float]
_TABLE.floor_sum_f64 = _floor_sum[double]


def table(runtime):
    """This level's kernel table (a capsule for cbn._core.bind), its kernels attached to
    ``runtime`` (the capsule of cbn._core.runtime()): for cbn/_dispatch.py only."""
    global _rt
    _rt = <cbn_runtime*>PyCapsule_GetPointer(runtime, CBN_RUNTIME_CAPSULE)
    return PyCapsule_New(&_TABLE, CBN_TABLE_CAPSULE, NULL)
