# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
# cython: initializedcheck=False, nonecheck=False, embedsignature=True
"""The compile-once half of cbn's kernels: entries, fast paths, running statistics, tuning.

Everything here is compiled once, for the baseline target: the Python-facing entries that the
Python layer (cbn/_batch_norm.py, cbn/_moments.py, cbn/_half.py) calls, the fast paths, the
running-statistic update, the info and test hooks, the one runtime (tuning settings, probes,
fork-safety flags) and the wrappers of the benchmark's floor kernels.  The kernels themselves
are one SIMD level's module (_kernels.pyx compiled per level), called through the table that
cbn/_dispatch.py binds here (bind, cbn_table.h).  The design is described in ARCHITECTURE.md
beside this file.
"""

from libc.stdlib cimport malloc, free
from libc.string cimport memcpy
from libc.math cimport sqrt, isfinite
from cpython.pycapsule cimport PyCapsule_New, PyCapsule_GetPointer
cimport numpy as cnp

from cbn_shared cimport *

cnp.import_array()

cdef extern from "<pthread.h>" nogil:
    int pthread_atfork(void (*prepare)() noexcept nogil, void (*parent)() noexcept nogil,
                       void (*child)() noexcept nogil)


# ------------------------------------------------------------------------------------ runtime
cdef cbn_runtime _RT


cdef void _mark_forked_child() noexcept nogil:
    """pthread_atfork child handler (see cbn_runtime.h: libgomp is not fork-safe)."""
    if _RT.team_started:
        _RT.forked_child = 1


cdef long _L2_BYTES = cbn_l2_cache_bytes()
if _L2_BYTES <= 0:
    _L2_BYTES = 512 * 1024
# An element-wise pass whose arrays (inputs + output) span at least this many bytes writes its
# output with streaming (non-temporal) stores, cbn_stream.h: they cannot all stay in the
# last-level cache, and streaming keeps the inputs there rather than an output that would be
# evicted anyway.  Measured on the 2-core Zen 4 host (32 MB L3), 2 threads, NCHW float32,
# streamed time over plain-store time: inference with x + y of 18 MB 1.25x (the plain output
# stays cached), 37 MB 0.88x, 51 MB 0.75x, 98 MB 0.69x; backward (dy, x, dx) of 46 MB 0.85x,
# 77 MB 0.82x.
cdef long _L3_BYTES = cbn_l3_cache_bytes()
if _L3_BYTES <= 0:
    _L3_BYTES = 32 * 1024 * 1024

# A channel is fused (stats + normalise while cached) if its bytes fit in this budget.
_RT.fuse_budget_bytes = <Py_ssize_t>(_L2_BYTES // 2)
_RT.nt_min_bytes = <Py_ssize_t>_L3_BYTES
_RT.reverse_mode = 1
_RT.last_team = 0
_RT.last_streamed = 0
_RT.last_reversed = 0
_RT.team_started = 0
_RT.forked_child = 0
pthread_atfork(NULL, NULL, _mark_forked_child)


def runtime():
    """The process's runtime, as a capsule for the SIMD levels' ``table()`` (cbn/_dispatch.py)."""
    return PyCapsule_New(&_RT, CBN_RUNTIME_CAPSULE, NULL)


# The bound level's kernels (cbn/_dispatch.py: bind), and the floor's (the best level the CPU
# supports, whatever CBN_SIMD selects: the floor measures the machine).
cdef const cbn_kernel_table* _T = NULL
cdef const cbn_kernel_table* _FLOOR = NULL


def bind(table, floor=None):
    """Route every entry to the kernel table ``table`` (a level's ``table()`` capsule), and the
    floor kernels to ``floor`` when given.  For cbn/_dispatch.py only: not thread-safe against
    calls running at the same time."""
    global _T, _FLOOR
    _T = <const cbn_kernel_table*>PyCapsule_GetPointer(table, CBN_TABLE_CAPSULE)
    if floor is not None:
        _FLOOR = <const cbn_kernel_table*>PyCapsule_GetPointer(floor, CBN_TABLE_CAPSULE)


cdef inline int _bound() except -1:
    if _T == NULL:
        raise RuntimeError("cbn: no kernel level is bound (import cbn first)")
    return 0


cdef inline int _floor_bound() except -1:
    if _FLOOR == NULL:
        raise RuntimeError("cbn: no floor kernels are bound (import cbn first)")
    return 0



# ------------------------------------------------------------------------------------ info
def variant():
    """Name of the SIMD level whose kernels are bound."""
    _bound()
    return _T.level.decode()


def floor_variant():
    """Name of the SIMD level of the bound floor kernels (stream_scale, stream_triad,
    stream_sum)."""
    _floor_bound()
    return _FLOOR.level.decode()


def cpu_supports(str name):
    """True if the running CPU supports the kernel level ``name``."""
    return bool(cbn_cpu_supports(name.encode()))


def openmp_info():
    """(enabled, _OPENMP version macro, omp_get_max_threads())."""
    return bool(cbn_openmp_enabled()), cbn_openmp_version(), cbn_max_threads()


def max_threads():
    """omp_get_max_threads() (1 in a serial build)."""
    return cbn_max_threads()


def in_forked_child():
    """True in a process forked after its parent ran cbn with threads: kernels run serially."""
    return bool(_RT.forked_child)


def last_team_size(bint reset=False):
    """OpenMP team size of the most recent kernel task (0 if none ran since the last reset)."""
    cdef int n = _RT.last_team
    if reset:
        _RT.last_team = 0
    return n


cdef inline bint _streaming_available() noexcept:
    return _T != NULL and _T.has_streaming


def tuning():
    """The compile-time and runtime tuning constants, for reports and tests."""
    return dict(block_bytes=CBN_BLOCK_BYTES, min_rows_channels_last=CBN_MIN_ROWS_B,
                max_columns_channels_last=CBN_MAX_COLUMNS,
                max_segments=CBN_MAX_SEGMENTS, parallel_min_elems=CBN_PARALLEL_MIN_ELEMS,
                l2_bytes=_L2_BYTES, fuse_budget_bytes=_RT.fuse_budget_bytes, l3_bytes=_L3_BYTES,
                nontemporal_min_bytes=(_RT.nt_min_bytes if _streaming_available()
                                       and _RT.nt_min_bytes >= 0 else None),
                nontemporal_min_run_bytes=CBN_NT_MIN_RUN_BYTES)


def set_nontemporal_min_bytes(n):
    """Set the working set (bytes of all arrays of a pass) from which element-wise passes write
    their output with streaming stores.

    ``None`` restores the default (the last-level cache size); 0 streams every output that
    does not alias an input.  Returns the previous value (None when the bound level has no
    streaming stores, in which case its kernels ignore the setting).  For tests and tuning.
    """
    cdef Py_ssize_t old = _RT.nt_min_bytes
    if n is not None and int(n) < 0:
        raise ValueError(f"n must be a byte count >= 0 or None, got {n}")
    _RT.nt_min_bytes = <Py_ssize_t>_L3_BYTES if n is None else int(n)
    return old if _streaming_available() and old >= 0 else None


def set_reverse_mode(int mode):
    """0: element-wise passes always walk up in memory, 1 (default): down when the output sits
    just past an input modulo 4 KB (cbn_reverse.h), 2: always down.  Returns the previous mode.
    For tests and measurements: results are bit-identical in every mode."""
    if mode not in (0, 1, 2):
        raise ValueError(f"mode must be 0, 1 or 2, got {mode}")
    cdef int previous = _RT.reverse_mode
    _RT.reverse_mode = mode
    return previous


def last_reversed(bint reset=False):
    """Whether an element-wise pass walked down in memory since the last reset (for tests)."""
    cdef bint r = _RT.last_reversed
    if reset:
        _RT.last_reversed = 0
    return r


def last_streamed(bint reset=False):
    """True if an element-wise pass used streaming stores since the last reset."""
    cdef int v = _RT.last_streamed
    if reset:
        _RT.last_streamed = 0
    return bool(v)


# ------------------------------------------------------------------------------------ Python entries
# The Python layer (cbn/_batch_norm.py) validates everything; these entries trust their
# arguments: C-contiguous arrays of one float type, per-channel arrays of length C as float64
# C-contiguous (or None), and (outer, C, inner) matching x.

cdef inline int _check_kernel_arrays(cnp.ndarray x, object a=None, object b=None) except -1:
    """The entries dispatch on float32 vs float64: anything else must never reach a kernel
    (it would be read with the wrong element size)."""
    cdef int t = cnp.PyArray_TYPE(x)
    if t != cnp.NPY_FLOAT32 and t != cnp.NPY_FLOAT64:
        raise TypeError(f"cbn kernels take float32 or float64 arrays, got {x.dtype}")
    if not cnp.PyArray_IS_C_CONTIGUOUS(x):
        raise ValueError("cbn kernels take C-contiguous arrays")
    for other in (a, b):
        if other is not None:
            if (cnp.PyArray_TYPE(<cnp.ndarray>other) != t
                    or not cnp.PyArray_IS_C_CONTIGUOUS(<cnp.ndarray>other)
                    or cnp.PyArray_SIZE(<cnp.ndarray>other) != cnp.PyArray_SIZE(x)):
                raise TypeError("cbn kernels take C-contiguous arrays of one dtype and size")
    return 0


cdef inline int _check_rc(int rc) except -1:
    """A kernel's return code: -1 when its per-channel work buffers could not be allocated."""
    if rc != 0:
        raise MemoryError("cbn: out of memory for per-channel work buffers")
    return 0


cdef inline const double* _vec_or_null(object a) except? NULL:
    if a is None:
        return NULL
    return <const double*>cnp.PyArray_DATA(<cnp.ndarray>a)


cdef inline Geometry _geom_of(cnp.ndarray x, Py_ssize_t outer, Py_ssize_t C, Py_ssize_t inner):
    return cbn_geometry_of(outer, C, inner, cnp.PyArray_ITEMSIZE(x))


def forward_train(cnp.ndarray x, cnp.ndarray y_out, Py_ssize_t outer, Py_ssize_t C,
                  Py_ssize_t inner, object weight, object bias, double eps,
                  cnp.ndarray mean_out, cnp.ndarray var_out, cnp.ndarray invstd_out,
                  int num_threads, bint relu=False):
    """Training forward: y_out (ReLU applied if relu), and float64 mean_out, var_out (biased),
    invstd_out."""
    _bound()
    _check_kernel_arrays(x, y_out)
    cdef Geometry g = _geom_of(x, outer, C, inner)
    cdef const double* w = _vec_or_null(weight)
    cdef const double* b = _vec_or_null(bias)
    cdef double* mo = <double*>cnp.PyArray_DATA(mean_out)
    cdef double* vo = <double*>cnp.PyArray_DATA(var_out)
    cdef double* io = <double*>cnp.PyArray_DATA(invstd_out)
    cdef int rc
    if cnp.PyArray_TYPE(x) == cnp.NPY_FLOAT32:
        with nogil:
            rc = _T.forward_f32(<const float*>cnp.PyArray_DATA(x), <float*>cnp.PyArray_DATA(y_out),
                                &g, num_threads, eps, w, b, mo, vo, io, relu)
    else:
        with nogil:
            rc = _T.forward_f64(<const double*>cnp.PyArray_DATA(x),
                                <double*>cnp.PyArray_DATA(y_out),
                                &g, num_threads, eps, w, b, mo, vo, io, relu)
    _check_rc(rc)


def moments(cnp.ndarray x, Py_ssize_t outer, Py_ssize_t C, Py_ssize_t inner,
            cnp.ndarray mean_out, cnp.ndarray m2_out, int num_threads):
    """Per-channel float64 mean and M2 (sum of squared deviations)."""
    _bound()
    _check_kernel_arrays(x)
    cdef Geometry g = _geom_of(x, outer, C, inner)
    cdef int nt = num_threads
    cdef double* mo = <double*>cnp.PyArray_DATA(mean_out)
    cdef double* qo = <double*>cnp.PyArray_DATA(m2_out)
    cdef int rc
    if cnp.PyArray_TYPE(x) == cnp.NPY_FLOAT32:
        with nogil:
            rc = _T.moments_f32(<const float*>cnp.PyArray_DATA(x), &g, nt, mo, qo)
    else:
        with nogil:
            rc = _T.moments_f64(<const double*>cnp.PyArray_DATA(x), &g, nt, mo, qo)
    _check_rc(rc)


def inference(cnp.ndarray x, cnp.ndarray y_out, Py_ssize_t outer, Py_ssize_t C,
              Py_ssize_t inner, cnp.ndarray centre, cnp.ndarray scale, cnp.ndarray shift,
              int num_threads, bint relu=False):
    """y_out = (x - centre) * scale + shift with float64 per-channel vectors (then ReLU if
    relu)."""
    _bound()
    _check_kernel_arrays(x, y_out)
    cdef Geometry g = _geom_of(x, outer, C, inner)
    cdef const double* ce = <const double*>cnp.PyArray_DATA(centre)
    cdef const double* sc = <const double*>cnp.PyArray_DATA(scale)
    cdef const double* sh = <const double*>cnp.PyArray_DATA(shift)
    cdef int rc
    if cnp.PyArray_TYPE(x) == cnp.NPY_FLOAT32:
        with nogil:
            rc = _T.inference_f32(<const float*>cnp.PyArray_DATA(x),
                                  <float*>cnp.PyArray_DATA(y_out),
                                  &g, num_threads, ce, sc, sh, relu)
    else:
        with nogil:
            rc = _T.inference_f64(<const double*>cnp.PyArray_DATA(x),
                                  <double*>cnp.PyArray_DATA(y_out),
                                  &g, num_threads, ce, sc, sh, relu)
    _check_rc(rc)


def backward(cnp.ndarray dy, cnp.ndarray x, object dx_out, Py_ssize_t outer, Py_ssize_t C,
             Py_ssize_t inner, cnp.ndarray mean, cnp.ndarray invstd, object weight,
             bint with_dot, cnp.ndarray sdy_out, cnp.ndarray sdyx_out, int num_threads,
             object y_mask=None):
    """Backward sums (float64 sum(g), sum(g*(x-mean))) and, if dx_out is given, dx; g is dy,
    or dy where y_mask (the output of a fused ReLU, shaped like x) is > 0."""
    _bound()
    _check_kernel_arrays(x, dy, dx_out)
    if y_mask is not None:
        _check_kernel_arrays(x, y_mask)
    cdef Geometry g = _geom_of(x, outer, C, inner)
    cdef const double* mu = <const double*>cnp.PyArray_DATA(mean)
    cdef const double* iv = <const double*>cnp.PyArray_DATA(invstd)
    cdef const double* w = _vec_or_null(weight)
    cdef double* a = <double*>cnp.PyArray_DATA(sdy_out)
    cdef double* d = <double*>cnp.PyArray_DATA(sdyx_out)
    cdef void* dxp = NULL if dx_out is None else cnp.PyArray_DATA(<cnp.ndarray>dx_out)
    cdef const void* ym = NULL if y_mask is None else cnp.PyArray_DATA(<cnp.ndarray>y_mask)
    cdef int rc
    if dxp != NULL:
        with_dot = True
    if cnp.PyArray_TYPE(x) == cnp.NPY_FLOAT32:
        with nogil:
            rc = _T.backward_f32(<const float*>cnp.PyArray_DATA(dy), <const float*>ym,
                                 <const float*>cnp.PyArray_DATA(x), <float*>dxp, &g, num_threads,
                                 mu, iv, w, with_dot, a, d)
    else:
        with nogil:
            rc = _T.backward_f64(<const double*>cnp.PyArray_DATA(dy), <const double*>ym,
                                 <const double*>cnp.PyArray_DATA(x), <double*>dxp, &g, num_threads,
                                 mu, iv, w, with_dot, a, d)
    _check_rc(rc)


def backward_dx_from_sums(cnp.ndarray dy, cnp.ndarray x, cnp.ndarray dx_out, Py_ssize_t outer,
                          Py_ssize_t C, Py_ssize_t inner, cnp.ndarray mean, cnp.ndarray invstd,
                          object weight, cnp.ndarray sdy, cnp.ndarray sdyx, double n_total,
                          int num_threads, object y_mask=None):
    """dx from given float64 sums (e.g. all-reduced across shards) and total count n_total."""
    _bound()
    _check_kernel_arrays(x, dy, dx_out)
    if y_mask is not None:
        _check_kernel_arrays(x, y_mask)
    cdef Geometry g = _geom_of(x, outer, C, inner)
    cdef const double* mu = <const double*>cnp.PyArray_DATA(mean)
    cdef const double* iv = <const double*>cnp.PyArray_DATA(invstd)
    cdef const double* w = _vec_or_null(weight)
    cdef const double* a = <const double*>cnp.PyArray_DATA(sdy)
    cdef const double* d = <const double*>cnp.PyArray_DATA(sdyx)
    cdef int nt = num_threads
    cdef const void* ym = NULL if y_mask is None else cnp.PyArray_DATA(<cnp.ndarray>y_mask)
    cdef int rc
    if cnp.PyArray_TYPE(x) == cnp.NPY_FLOAT32:
        with nogil:
            rc = _T.dx_from_sums_f32(<const float*>cnp.PyArray_DATA(dy), <const float*>ym,
                                     <const float*>cnp.PyArray_DATA(x),
                                     <float*>cnp.PyArray_DATA(dx_out), &g, nt, n_total, mu, iv, w,
                                     a, d)
    else:
        with nogil:
            rc = _T.dx_from_sums_f64(<const double*>cnp.PyArray_DATA(dy), <const double*>ym,
                                     <const double*>cnp.PyArray_DATA(x),
                                     <double*>cnp.PyArray_DATA(dx_out), &g, nt, n_total, mu, iv, w,
                                     a, d)
    _check_rc(rc)



cdef _check_stream(cnp.ndarray a, cnp.ndarray other):
    """The streaming kernels take C-contiguous float32/float64 arrays of one dtype and size."""
    if cnp.PyArray_TYPE(a) not in (cnp.NPY_FLOAT32, cnp.NPY_FLOAT64):
        raise TypeError("stream kernels take float32 or float64 arrays")
    if not cnp.PyArray_IS_C_CONTIGUOUS(a):
        raise ValueError("stream kernels take C-contiguous arrays")
    if other is not None:
        if (cnp.PyArray_TYPE(other) != cnp.PyArray_TYPE(a)
                or cnp.PyArray_SIZE(other) != cnp.PyArray_SIZE(a)
                or not cnp.PyArray_IS_C_CONTIGUOUS(other)):
            raise ValueError("stream kernels take C-contiguous arrays of one dtype and size")


def stream_scale(cnp.ndarray a, cnp.ndarray out, int num_threads):
    """out = 2 * a + 1 (1 read + 1 write per element)."""
    _check_stream(a, out)
    if not cnp.PyArray_ISWRITEABLE(out):
        raise ValueError("out is read-only")
    cdef Py_ssize_t n = cnp.PyArray_SIZE(a)
    cdef int nt = num_threads
    _floor_bound()
    if cnp.PyArray_TYPE(a) == cnp.NPY_FLOAT32:
        with nogil:
            _FLOOR.floor_scale_f32(<const float*>cnp.PyArray_DATA(a),
                                   <float*>cnp.PyArray_DATA(out), n, nt)
    else:
        with nogil:
            _FLOOR.floor_scale_f64(<const double*>cnp.PyArray_DATA(a),
                                   <double*>cnp.PyArray_DATA(out), n, nt)


def stream_triad(cnp.ndarray a, cnp.ndarray b, cnp.ndarray out, int num_threads):
    """out = 2 * a + b (2 reads + 1 write per element)."""
    _check_stream(a, b)
    _check_stream(a, out)
    if not cnp.PyArray_ISWRITEABLE(out):
        raise ValueError("out is read-only")
    cdef Py_ssize_t n = cnp.PyArray_SIZE(a)
    cdef int nt = num_threads
    _floor_bound()
    if cnp.PyArray_TYPE(a) == cnp.NPY_FLOAT32:
        with nogil:
            _FLOOR.floor_triad_f32(<const float*>cnp.PyArray_DATA(a),
                                   <const float*>cnp.PyArray_DATA(b),
                                   <float*>cnp.PyArray_DATA(out), n, nt)
    else:
        with nogil:
            _FLOOR.floor_triad_f64(<const double*>cnp.PyArray_DATA(a),
                                   <const double*>cnp.PyArray_DATA(b),
                                   <double*>cnp.PyArray_DATA(out), n, nt)


def stream_sum(cnp.ndarray a, int num_threads):
    """sum(a) in float64 (1 read per element)."""
    _check_stream(a, None)
    cdef Py_ssize_t n = cnp.PyArray_SIZE(a)
    cdef int nt = num_threads
    _floor_bound()
    cdef double s
    if cnp.PyArray_TYPE(a) == cnp.NPY_FLOAT32:
        with nogil:
            s = _FLOOR.floor_sum_f32(<const float*>cnp.PyArray_DATA(a), n, nt)
    else:
        with nogil:
            s = _FLOOR.floor_sum_f64(<const double*>cnp.PyArray_DATA(a), n, nt)
    return s


# ------------------------------------------------------------------------------------ fast paths
# The whole public call for the common case, in C: exact ndarrays, C-contiguous, aligned, native
# float32/float64 input; per-channel vectors that are None or 1-D float32/float64 contiguous
# arrays of length C; plain float eps/momentum, int axis, None/int num_threads, no out=.
# Anything else returns None and the Python layer (cbn/_batch_norm.py) takes over with its full
# validation and error messages; so these functions never raise for bad input.  Every check is
# made before anything is written, so a fallback never leaves partial updates behind.

from cbn._types import BackwardResult, ForwardResult

cdef inline bint _fast_array(object a) noexcept:
    cdef int t
    if not cnp.PyArray_CheckExact(a):
        return False
    if not (cnp.PyArray_IS_C_CONTIGUOUS(<cnp.ndarray>a) and cnp.PyArray_ISALIGNED(<cnp.ndarray>a)
            and cnp.PyArray_ISNOTSWAPPED(<cnp.ndarray>a)):
        return False
    t = cnp.PyArray_TYPE(<cnp.ndarray>a)
    return t == cnp.NPY_FLOAT32 or t == cnp.NPY_FLOAT64


cdef inline bint _fast_vector(object a, Py_ssize_t C, bint writeable=False) noexcept:
    """None, or a contiguous native float32/float64 1-D ndarray of length C."""
    if a is None:
        return True
    if not _fast_array(a):
        return False
    if cnp.PyArray_NDIM(<cnp.ndarray>a) != 1 or cnp.PyArray_DIM(<cnp.ndarray>a, 0) != C:
        return False
    return not writeable or cnp.PyArray_ISWRITEABLE(<cnp.ndarray>a)


cdef inline void _vcopy(object a, Py_ssize_t C, double default, double* out) noexcept:
    """A _fast_vector (or None: default) as C float64 values in OUT out.  Typed loops: reading
    the vectors element by element through the object (type check per element) made the
    per-channel set-up of a 2048-channel call ~10 us, as long as the data pass of a batch-1
    (1, 2048, 7, 7) inference."""
    cdef Py_ssize_t c
    cdef const float* pf
    if a is None:
        for c in range(C):
            out[c] = default
    elif cnp.PyArray_TYPE(<cnp.ndarray>a) == cnp.NPY_FLOAT32:
        pf = <const float*>cnp.PyArray_DATA(<cnp.ndarray>a)
        for c in range(C):
            out[c] = pf[c]
    else:
        memcpy(out, cnp.PyArray_DATA(<cnp.ndarray>a), C * sizeof(double))


cdef inline int _fast_threads(object num_threads) noexcept:
    """0 (= all) for None, n for an exact int n >= 1, -1 when the slow path must decide."""
    cdef long n
    if num_threads is None:
        return 0
    if type(num_threads) is not int or not (1 <= num_threads <= 1048576):
        return -1
    n = num_threads
    return <int>n


cdef inline bint _fast_geometry(cnp.ndarray x, object axis, Geometry* g) noexcept:
    """Channel axis and (outer, C, inner) of x; False when the slow path must decide."""
    cdef int nd = cnp.PyArray_NDIM(x), a, i
    cdef long ax
    cdef Py_ssize_t outer = 1, inner = 1
    if nd < 2 or type(axis) is not int or not (-nd <= axis < nd):
        return False
    ax = axis
    if ax < 0:
        ax += nd
    if ax < 0 or ax >= nd:
        return False
    a = <int>ax
    for i in range(a):
        outer *= cnp.PyArray_DIM(x, i)
    for i in range(a + 1, nd):
        inner *= cnp.PyArray_DIM(x, i)
    g[0] = cbn_geometry_of(outer, cnp.PyArray_DIM(x, a), inner, cnp.PyArray_ITEMSIZE(x))
    return True


cdef inline bint _fast_positive_float(object v) noexcept:
    cdef double d
    if type(v) is not float:
        return False
    d = v
    return d > 0.0 and d < 1e308


cdef inline object _new_like(cnp.ndarray x):
    return cnp.PyArray_EMPTY(cnp.PyArray_NDIM(x), cnp.PyArray_DIMS(x), cnp.PyArray_TYPE(x), 0)


cdef inline bint _no_partial_overlap(cnp.ndarray a, cnp.ndarray b) noexcept:
    """Two C-contiguous arrays of one shape and dtype: disjoint or exactly the same memory."""
    cdef char* pa = <char*>cnp.PyArray_DATA(a)
    cdef char* pb = <char*>cnp.PyArray_DATA(b)
    cdef Py_ssize_t nbytes = cnp.PyArray_NBYTES(a)
    return pa == pb or pa + nbytes <= pb or pb + nbytes <= pa


cdef inline object _fast_out(object out, cnp.ndarray x):
    """A new array like x (out None), out itself if the kernels can write to it directly, or
    None: the slow path handles other outs (copy-back, errors)."""
    if out is None:
        return _new_like(x)
    if not _fast_array(out) or not cnp.PyArray_ISWRITEABLE(<cnp.ndarray>out):
        return None
    if cnp.PyArray_TYPE(<cnp.ndarray>out) != cnp.PyArray_TYPE(x):
        return None
    if not cnp.PyArray_SAMESHAPE(<cnp.ndarray>out, x):
        return None
    if not _no_partial_overlap(<cnp.ndarray>out, x):
        return None
    return out


cdef inline object _new_vector(Py_ssize_t C):
    cdef cnp.npy_intp n = C
    return cnp.PyArray_EMPTY(1, &n, cnp.NPY_FLOAT64, 0)


cdef void _update_running(object running_mean, object running_var, const double* mean,
                          const double* var, Py_ssize_t C, double n, double m,
                          bint skip_nonfinite) noexcept:
    """running = (1 - m) * running + m * batch, with the unbiased variance; in float64, stored
    in each statistic's own dtype.  IN/OUT the two _fast_vector statistics (or None).  With
    skip_nonfinite, a channel whose batch mean or variance is NaN/Inf keeps its statistics."""
    if running_mean is not None:
        _ema(running_mean, mean, 1.0, C, m, mean, var, skip_nonfinite)
    if running_var is not None:
        _ema(running_var, var, n / (n - 1.0), C, m, mean, var, skip_nonfinite)


cdef void _ema(object a, const double* batch, double f, Py_ssize_t C, double m,
               const double* mean, const double* var, bint skip_nonfinite) noexcept:
    """IN/OUT a (a _fast_vector) = (1 - m) * a + m * (batch * f), in float64, stored in a's
    dtype; with skip_nonfinite, channels whose mean or var is NaN/Inf keep their value."""
    cdef Py_ssize_t c
    cdef float* pf
    cdef double* pd
    if cnp.PyArray_TYPE(<cnp.ndarray>a) == cnp.NPY_FLOAT32:
        pf = <float*>cnp.PyArray_DATA(<cnp.ndarray>a)
        for c in range(C):
            if skip_nonfinite and not (isfinite(mean[c]) and isfinite(var[c])):
                continue
            pf[c] = <float>((1.0 - m) * <double>pf[c] + m * (batch[c] * f))
    else:
        pd = <double*>cnp.PyArray_DATA(<cnp.ndarray>a)
        for c in range(C):
            if skip_nonfinite and not (isfinite(mean[c]) and isfinite(var[c])):
                continue
            pd[c] = (1.0 - m) * pd[c] + m * (batch[c] * f)


def update_running(running_mean, running_var, cnp.ndarray mean, cnp.ndarray var, double n,
                   double momentum, bint skip_nonfinite):
    """The running-stat update of the training forward for float32/float64 contiguous stats
    (the caller checks); mean and var (biased) are float64 vectors."""
    cdef Py_ssize_t C = cnp.PyArray_DIM(mean, 0)
    _update_running(running_mean, running_var, <const double*>cnp.PyArray_DATA(mean),
                    <const double*>cnp.PyArray_DATA(var), C, n, momentum, skip_nonfinite)


def fast_inference(x, running_mean, running_var, weight, bias, eps, axis, num_threads, out,
                   bint relu):
    """batch_norm_inference for the common case, or None (see the section comment)."""
    cdef Geometry g
    cdef int nt = _fast_threads(num_threads)
    cdef Py_ssize_t C, c, nbad
    cdef double e
    cdef double* buf
    cdef int rc
    if _T == NULL or nt < 0 or not _fast_array(x) or not _fast_positive_float(eps):
        return None
    if not _fast_geometry(<cnp.ndarray>x, axis, &g) or g.outer * g.inner == 0:
        return None
    C = g.C
    if running_mean is None or running_var is None:
        return None
    if not (_fast_vector(running_mean, C) and _fast_vector(running_var, C)
            and _fast_vector(weight, C) and _fast_vector(bias, C)):
        return None
    e = eps
    buf = <double*>malloc(4 * C * sizeof(double))  # mean, scale, shift, var
    if buf == NULL:
        return None
    _vcopy(running_var, C, 1.0, buf + 3 * C)
    nbad = 0
    for c in range(C):
        nbad += not buf[3 * C + c] >= 0.0
    if nbad:
        free(buf)
        return None  # negative (or NaN) variance: the slow path raises
    y = _fast_out(out, <cnp.ndarray>x)
    if y is None:
        free(buf)
        return None
    _vcopy(running_mean, C, 0.0, buf)
    _vcopy(weight, C, 1.0, buf + C)
    _vcopy(bias, C, 0.0, buf + 2 * C)
    for c in range(C):
        buf[C + c] = buf[C + c] / sqrt(buf[3 * C + c] + e)
    if cnp.PyArray_TYPE(<cnp.ndarray>x) == cnp.NPY_FLOAT32:
        with nogil:
            rc = _T.inference_f32(<const float*>cnp.PyArray_DATA(<cnp.ndarray>x),
                                  <float*>cnp.PyArray_DATA(<cnp.ndarray>y), &g, nt, buf, buf + C,
                                  buf + 2 * C, relu)
    else:
        with nogil:
            rc = _T.inference_f64(<const double*>cnp.PyArray_DATA(<cnp.ndarray>x),
                                  <double*>cnp.PyArray_DATA(<cnp.ndarray>y), &g, nt, buf, buf + C,
                                  buf + 2 * C, relu)
    free(buf)
    _check_rc(rc)
    return y


def fast_forward(x, weight, bias, eps, running_mean, running_var, momentum, axis, num_threads,
                 out, bint skip_nonfinite, bint relu):
    """batch_norm_forward for the common case, or None (see the section comment)."""
    cdef Geometry g
    cdef int nt = _fast_threads(num_threads)
    cdef Py_ssize_t C, c
    cdef double e, m = 0.0, n, unbias
    cdef double* buf
    cdef double* mo
    cdef double* io
    cdef int rc
    if _T == NULL or nt < 0 or not _fast_array(x) or not _fast_positive_float(eps):
        return None
    if not _fast_geometry(<cnp.ndarray>x, axis, &g) or g.n <= 1:
        return None
    C = g.C
    if not (_fast_vector(weight, C) and _fast_vector(bias, C)
            and _fast_vector(running_mean, C, True) and _fast_vector(running_var, C, True)):
        return None
    if running_mean is not None or running_var is not None:
        if type(momentum) is not float:
            return None
        m = momentum
        if not (0.0 <= m <= 1.0):
            return None
    e = eps
    y = _fast_out(out, <cnp.ndarray>x)
    if y is None:
        return None
    buf = <double*>malloc(3 * C * sizeof(double))  # weight, bias, var
    if buf == NULL:
        return None
    _vcopy(weight, C, 1.0, buf)
    _vcopy(bias, C, 0.0, buf + C)
    mean = _new_vector(C)
    invstd = _new_vector(C)
    mo = <double*>cnp.PyArray_DATA(<cnp.ndarray>mean)
    io = <double*>cnp.PyArray_DATA(<cnp.ndarray>invstd)
    if cnp.PyArray_TYPE(<cnp.ndarray>x) == cnp.NPY_FLOAT32:
        with nogil:
            rc = _T.forward_f32(<const float*>cnp.PyArray_DATA(<cnp.ndarray>x),
                                <float*>cnp.PyArray_DATA(<cnp.ndarray>y), &g, nt, e,
                                buf if weight is not None else NULL,
                                buf + C if bias is not None else NULL, mo, buf + 2 * C, io, relu)
    else:
        with nogil:
            rc = _T.forward_f64(<const double*>cnp.PyArray_DATA(<cnp.ndarray>x),
                                <double*>cnp.PyArray_DATA(<cnp.ndarray>y), &g, nt, e,
                                buf if weight is not None else NULL,
                                buf + C if bias is not None else NULL, mo, buf + 2 * C, io, relu)
    if rc != 0:
        free(buf)
        _check_rc(rc)
    _update_running(running_mean, running_var, mo, buf + 2 * C, C, <double>g.n, m,
                    skip_nonfinite)
    free(buf)
    return ForwardResult(y, mean, invstd)


def fast_backward(dy, x, mean, invstd, weight, axis, num_threads, out, y):
    """batch_norm_backward (all three gradients) for the common case, or None.  y: the output
    of a fused ReLU (mask) or None."""
    cdef Geometry g
    cdef int nt = _fast_threads(num_threads)
    cdef Py_ssize_t C, c
    cdef double* buf
    cdef int rc
    cdef object gdt
    cdef const void* ym
    if _T == NULL or nt < 0 or not _fast_array(x) or not _fast_array(dy):
        return None
    if cnp.PyArray_TYPE(<cnp.ndarray>dy) != cnp.PyArray_TYPE(<cnp.ndarray>x):
        return None
    if not cnp.PyArray_SAMESHAPE(<cnp.ndarray>dy, <cnp.ndarray>x):
        return None
    if y is not None:
        if (not _fast_array(y)
                or cnp.PyArray_TYPE(<cnp.ndarray>y) != cnp.PyArray_TYPE(<cnp.ndarray>x)):
            return None
        if not cnp.PyArray_SAMESHAPE(<cnp.ndarray>y, <cnp.ndarray>x):
            return None
    if not _fast_geometry(<cnp.ndarray>x, axis, &g) or g.n == 0:
        return None
    C = g.C
    if mean is None or invstd is None:
        return None
    if not (_fast_vector(mean, C) and _fast_vector(invstd, C) and _fast_vector(weight, C)):
        return None
    dx = _fast_out(out, <cnp.ndarray>x)
    if dx is None or not _no_partial_overlap(<cnp.ndarray>dx, <cnp.ndarray>dy):
        return None
    if y is not None and not _no_partial_overlap(<cnp.ndarray>dx, <cnp.ndarray>y):
        return None
    buf = <double*>malloc(3 * C * sizeof(double))  # mean, invstd, weight
    if buf == NULL:
        return None
    _vcopy(mean, C, 0.0, buf)
    _vcopy(invstd, C, 1.0, buf + C)
    _vcopy(weight, C, 1.0, buf + 2 * C)
    sdy = _new_vector(C)
    sdyx = _new_vector(C)
    ym = NULL if y is None else cnp.PyArray_DATA(<cnp.ndarray>y)
    if cnp.PyArray_TYPE(<cnp.ndarray>x) == cnp.NPY_FLOAT32:
        with nogil:
            rc = _T.backward_f32(<const float*>cnp.PyArray_DATA(<cnp.ndarray>dy),
                                 <const float*>ym,
                                 <const float*>cnp.PyArray_DATA(<cnp.ndarray>x),
                                 <float*>cnp.PyArray_DATA(<cnp.ndarray>dx), &g, nt, buf, buf + C,
                                 buf + 2 * C, True, <double*>cnp.PyArray_DATA(<cnp.ndarray>sdy),
                                 <double*>cnp.PyArray_DATA(<cnp.ndarray>sdyx))
    else:
        with nogil:
            rc = _T.backward_f64(<const double*>cnp.PyArray_DATA(<cnp.ndarray>dy),
                                 <const double*>ym,
                                 <const double*>cnp.PyArray_DATA(<cnp.ndarray>x),
                                 <double*>cnp.PyArray_DATA(<cnp.ndarray>dx), &g, nt, buf, buf + C,
                                 buf + 2 * C, True, <double*>cnp.PyArray_DATA(<cnp.ndarray>sdy),
                                 <double*>cnp.PyArray_DATA(<cnp.ndarray>sdyx))
    if rc != 0:
        free(buf)
        _check_rc(rc)
    # dweight = sum(dy * (x - mean)) * invstd, in place in the sdyx vector
    for c in range(C):
        (<double*>cnp.PyArray_DATA(<cnp.ndarray>sdyx))[c] *= buf[C + c]
    free(buf)
    gdt = cnp.PyArray_TYPE(<cnp.ndarray>(x if weight is None else weight))
    if gdt != cnp.NPY_FLOAT64:
        sdyx = cnp.PyArray_Cast(<cnp.ndarray>sdyx, gdt)
        sdy = cnp.PyArray_Cast(<cnp.ndarray>sdy, gdt)
    return BackwardResult(dx, sdyx, sdy)
