# Included by _kernels.pyx (compiled per SIMD level; declarations and the fused type there).
# The post-operation stage (cbn_post.h): the element-wise pass of an op with a residual or an
# activation beyond the in-register ones.  Each task computes bn(x) block by block into its
# thread's buffer (plain stores, cached) and hands each block to cbn_post_block, which reads
# the residual (and dy) at the same offsets and writes the output, streamed if the pass
# streams.  A direct post-operation (the gradient from the output y) skips the buffer: the
# input is z, handed to cbn_post_block as it is.  The blocks follow the pass's own plan (CBN_EW_*), so nothing depends on the thread
# count.

cdef inline Py_ssize_t _post_stride(const Geometry* g, Py_ssize_t itemsize) noexcept nogil:
    """Doubles of buffer per thread: one block, or for channels-last rows CBN_POST_ROWS_BYTES
    (one row when a row is wider), in whole cache lines."""
    cdef Py_ssize_t b = CBN_POST_BLOCK_BYTES
    if g.inner == 1:
        b = max(CBN_POST_ROWS_BYTES, g.C * itemsize)
    return (b + 63) // 64 * 8


cdef inline void _post_block(const cbn_post* p, const floating* s, Py_ssize_t off,
                             floating* out, Py_ssize_t n, bint stream) noexcept nogil:
    if floating is float:
        cbn_post_block_f32(p, s, off, out + off, n, stream)
    else:
        cbn_post_block_f64(p, s, off, out + off, n, stream)


cdef void _post_run(const floating* x, floating* out, Py_ssize_t off, Py_ssize_t n,
                    floating hi, floating sc, floating sh, const cbn_post* p, floating* s,
                    bint stream) noexcept nogil:
    """Elements off <= i < off + n of one channel-major run (coefficients hi, sc, sh)."""
    cdef Py_ssize_t B = CBN_POST_BLOCK_BYTES // sizeof(floating), i = 0, k
    if p.direct:
        _post_block(p, x + off, off, out, n, stream)
        return
    while i < n:
        k = min(B, n - i)
        if floating is float:
            cbn_affine_run_f32(x + off + i, s, k, hi, sc, sh, CBN_ACT_NONE)
        else:
            cbn_affine_run_f64(x + off + i, s, k, hi, sc, sh, CBN_ACT_NONE)
        cbn_post_prefetch(x + off + i + k, min(B, n - i - k) * sizeof(floating))
        _post_block(p, s, off + i, out, k, stream)
        i += k


cdef void _post_runs(const Work* wk, Py_ssize_t r0, Py_ssize_t r1, floating* s,
                     const floating* x) noexcept nogil:
    """Channel-major runs r0 <= r < r1 (NORMALIZE_SHARE).  Runs shorter than a block are
    consecutive in memory, so as many as fit go through the stage in one call: per-call costs
    and partial vectors then come once per block, not once per run (14 x 14 maps: 196-element
    runs)."""
    cdef const floating* coef = <const floating*>wk.coef
    cdef Py_ssize_t r, c, j, k, C = wk.g.C, n = wk.g.inner
    cdef Py_ssize_t per = <Py_ssize_t>(CBN_POST_BLOCK_BYTES // sizeof(floating)) // n
    if wk.post.direct:  # the runs r0..r1 are one contiguous stretch of z
        _post_block(wk.post, x + r0 * n, r0 * n, <floating*>wk.out, (r1 - r0) * n, wk.stream)
    elif per < 2:
        for r in range(r0, r1):
            c = r % C
            _post_run(x, <floating*>wk.out, r * n, n, coef[c], coef[C + c], coef[2 * C + c],
                      wk.post, s, wk.stream)
    else:
        r = r0
        while r < r1:
            k = min(per, r1 - r)
            for j in range(k):
                c = (r + j) % C
                if floating is float:
                    cbn_affine_run_f32(x + (r + j) * n, s + j * n, n, coef[c], coef[C + c],
                                       coef[2 * C + c], CBN_ACT_NONE)
                else:
                    cbn_affine_run_f64(x + (r + j) * n, s + j * n, n, coef[c], coef[C + c],
                                       coef[2 * C + c], CBN_ACT_NONE)
            _post_block(wk.post, s, r * n, <floating*>wk.out, k * n, wk.stream)
            r += k
    if wk.stream:
        cbn_nt_fence()


cdef void _post_piece(const Work* wk, Py_ssize_t r, Py_ssize_t p, Py_ssize_t npieces,
                      floating* s, const floating* x) noexcept nogil:
    """Piece p of npieces of channel-major run r (NORMALIZE_PIECE)."""
    cdef const floating* coef = <const floating*>wk.coef
    cdef Py_ssize_t C = wk.g.C, n = wk.g.inner, c = r % C
    cdef Py_ssize_t lo = p * n // npieces, hi = (p + 1) * n // npieces
    _post_run(x, <floating*>wk.out, r * n + lo, hi - lo, coef[c], coef[C + c], coef[2 * C + c],
              wk.post, s, wk.stream)
    if wk.stream:
        cbn_nt_fence()


cdef void _post_rows(const Work* wk, Py_ssize_t t, floating* s, const floating* x) noexcept nogil:
    """Channels-last block t of plan.rows_per_task rows (NORMALIZE_ROWS), as sub-blocks of
    whole rows that fill the buffer (one row when a row is wider)."""
    cdef Py_ssize_t C = wk.g.C, rpt = wk.plan.rows_per_task
    cdef Py_ssize_t r0 = t * rpt, r1 = min(r0 + rpt, wk.g.outer), r, q
    cdef Py_ssize_t per = max(1, <Py_ssize_t>(CBN_POST_ROWS_BYTES // sizeof(floating)) // C)
    r = r0
    if wk.post.direct:
        _post_block(wk.post, x + r0 * C, r0 * C, <floating*>wk.out, (r1 - r0) * C, wk.stream)
        r = r1
    while r < r1:
        q = min(per, r1 - r)
        _affine_rows(x + r * C, s, C, q, C, <const floating*>wk.coef, C, CBN_ACT_NONE)
        _post_block(wk.post, s, r * C, <floating*>wk.out, q * C, wk.stream)
        r += q
    if wk.stream:
        cbn_nt_fence()


cdef void _post_task(const Work* wk, TaskKind kind, Py_ssize_t t, floating* s,
                     const floating* x) noexcept nogil:
    """Task t of a normalising pass with a post-operation (the NORMALIZE_* kinds)."""
    cdef Py_ssize_t nt = wk.plan.nt, nruns = wk.g.outer * wk.g.C
    if kind == NORMALIZE_SHARE:
        _post_runs(wk, t * nruns // nt, (t + 1) * nruns // nt, s, x)
    elif kind == NORMALIZE_PIECE:
        _post_piece(wk, t // nt, t % nt, nt, s, x)
    else:
        _post_rows(wk, t, s, x)
