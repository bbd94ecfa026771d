# Included by _kernels.pyx (compiled per SIMD level; declarations and the fused type there).
# The benchmark's bandwidth floor.

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
    _run(&wk, kind, FLOOR_SUM_CHUNKS if kind == FLOOR_SUM else nt, nt, False, NULL, 0, a,
         <floating>0)
    if kind == FLOOR_SUM:
        for t in range(FLOOR_SUM_CHUNKS):
            total += part[t]
    return total
