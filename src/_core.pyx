# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
# cython: initializedcheck=False, nonecheck=False, embedsignature=True
"""The compile-once half of cbn's kernels: entries, fast paths, running statistics, tuning.

Everything here is compiled once, for the baseline target: the Python-facing entries that the
Python layer (cbn/_batch_norm.py, cbn/_moments.py, cbn/_fold.py) calls, the argument rules (the
one home of every value rule, shared formula and error message, used by the fast paths and,
through def wrappers, by cbn/_validation.py), the fast paths, the running-statistic update, the
info and test hooks, the one runtime (tuning settings, probes, fork-safety flags) and the
wrappers of the benchmark's floor kernels.  The kernels themselves
are one SIMD level's module (_kernels.pyx compiled per level), called through the table that
cbn/_dispatch.py binds here (bind, cbn_table.h).  The design is described in ARCHITECTURE.md
beside this file.
"""

from libc.stdlib cimport malloc, free
from libc.string cimport memcpy
from libc.math cimport sqrt, isfinite
from cpython.pycapsule cimport PyCapsule_New, PyCapsule_GetPointer
from cpython.object cimport PyObject_GenericSetAttr
cimport numpy as cnp

from cbn_shared cimport *

cnp.import_array()

cdef extern from "cbn_channels.h" nogil:
    void cbn_widen_f32(const float* a, Py_ssize_t C, double* out)
    void cbn_fill_f64(double value, Py_ssize_t C, double* out)
    Py_ssize_t cbn_count_negative(const double* v, Py_ssize_t C)
    double cbn_inference_scale(double weight, double var, double eps)
    bint cbn_keeps_running(double mean, double var)
    void cbn_ema_f32(float* a, const double* batch, double f, Py_ssize_t C, double m,
                     const double* mean, const double* var, bint skip)
    void cbn_ema_f64(double* a, const double* batch, double f, Py_ssize_t C, double m,
                     const double* mean, const double* var, bint skip)
    void cbn_inference_scales(double* w, const double* var, Py_ssize_t C, double eps)

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
#: The activations the kernels fuse, by the name of ``activation=``: their codes in
#: cbn_epilogue.h, the kernels' one list.
ACTIVATIONS = {"relu": CBN_ACT_RELU, "relu6": CBN_ACT_RELU6, "leaky_relu": CBN_ACT_LEAKY_RELU,
               "silu": CBN_ACT_SILU, "gelu": CBN_ACT_GELU, "gelu_tanh": CBN_ACT_GELU_TANH}


def variant():
    """Name of the SIMD level whose kernels are bound."""
    _bound()
    return _T.level.decode()


def floor_variant():
    """Name of the SIMD level of the bound floor kernels (stream_scale, stream_triad,
    stream_sum)."""
    _floor_bound()
    return _FLOOR.level.decode()


_REDUCE_NAMES = {CBN_RED_CM_ROWS: "cm_rows", CBN_RED_CM_CHANNELS: "cm_channels",
                 CBN_RED_CM_SEGMENTS: "cm_segments", CBN_RED_CL: "cl"}
_ELEMENTWISE_NAMES = {CBN_EW_CM_SHARES: "cm_shares", CBN_EW_CM_PIECES: "cm_pieces",
                      CBN_EW_CL_ROWS: "cl_rows"}
_FUSABLE = {"forward": 1, "backward": 2, "moments": 0, "inference": 0, "dx_from_sums": 0}


def plan(shape, int axis, dtype, int num_threads=0, str op="forward"):
    """The plan the kernels run for ``op`` on a C-contiguous array of ``shape`` and ``dtype``
    with channel axis ``axis`` (src/cbn_plan.h): the same pure function of the geometry, the
    thread count and the cache budget that the kernels call.  For tests and reports.

    ``op`` is "forward", "backward" (with dx), "moments", "inference" or "dx_from_sums".
    Returns a dict: threads, fused, reduce and reduce_tasks (with channel_ranges and
    channel_range_width for "cm_rows"), elementwise, elementwise_tasks, rows_per_task, and the
    geometry (outer, C, inner, pieces, segments).
    """
    if op not in _FUSABLE:
        raise ValueError(f"op must be one of {', '.join(_FUSABLE)}, got {op!r}")
    shape = tuple(int(d) for d in shape)
    check_ndim(shape, "shape")
    a = check_channel_axis(axis, len(shape), "axis", axis)
    outer, C, inner = geometry(shape, a)
    cdef Py_ssize_t itemsize = cnp.PyArray_DescrFromType(cnp.dtype(dtype).num).itemsize
    cdef Geometry g = cbn_geometry_of(outer, C, inner, itemsize)
    cdef int nt = cbn_threads_for(outer * C * inner, num_threads, cbn_tasks_of(&g),
                                  cbn_max_threads(), cbn_num_procs(), _RT.forked_child)
    cdef cbn_plan p = cbn_plan_of(&g, nt, _FUSABLE[op] * g.n * itemsize, _RT.fuse_budget_bytes)
    return dict(threads=p.nt, fused=bool(p.fused), reduce=_REDUCE_NAMES[p.reduce],
                reduce_tasks=p.ntasks_red, channel_ranges=p.nch, channel_range_width=p.cw,
                elementwise=_ELEMENTWISE_NAMES[p.ew], elementwise_tasks=p.ntasks_ew,
                rows_per_task=p.rows_per_task, outer=g.outer, C=g.C, inner=g.inner,
                pieces=g.pieces, segments=g.nseg)


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

# The type number NumPy gave ml_dtypes.bfloat16 (a user dtype: known once one is seen, see
# note_bfloat16), or -1.
cdef int _BF16_NUM = -1


def note_bfloat16(int type_num):
    """Record the type number of ml_dtypes.bfloat16 (cbn/_validation.py, when it first meets
    one): the entries then take bfloat16 arrays."""
    global _BF16_NUM
    _BF16_NUM = type_num


cdef enum:
    _F32 = 0
    _F64 = 1
    _F16 = 2
    _BF16 = 3


cdef inline int _format_of(cnp.ndarray x) noexcept:
    """The element type of an entry's data: _F32, _F64, _F16, _BF16, or -1 (none of them)."""
    cdef int t = cnp.PyArray_TYPE(x)
    if t == cnp.NPY_FLOAT32:
        return _F32
    if t == cnp.NPY_FLOAT64:
        return _F64
    if t == cnp.NPY_FLOAT16:
        return _F16
    if t == _BF16_NUM and t >= 0:
        return _BF16
    return -1


cdef inline int _check_kernel_arrays(cnp.ndarray x, object a=None, object b=None) except -1:
    """The entries dispatch on the element type (_format_of): anything else must never reach a
    kernel (it would be read with the wrong element size)."""
    cdef int t = cnp.PyArray_TYPE(x)
    if _format_of(x) < 0:
        raise TypeError(f"cbn kernels take float16, bfloat16, float32 or float64 arrays, "
                        f"got {x.dtype}")
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


cdef inline void _fill_post(cbn_post* p, int post_act, double slope, object residual,
                            object dy, bint direct) noexcept:
    """p, the post-operation of an entry (cbn_post.h): post_act an ACTIVATIONS code (or
    CBN_ACT_NONE with only a residual), residual and dy None or arrays like x (not checked
    here); dy given: the gradient mode."""
    p.mode = CBN_POST_APPLY if dy is None else CBN_POST_GRAD
    p.act = post_act
    p.slope = slope
    p.res = NULL if residual is None else cnp.PyArray_DATA(<cnp.ndarray>residual)
    p.dy = NULL if dy is None else cnp.PyArray_DATA(<cnp.ndarray>dy)
    p.direct = direct


cdef int _post_of(cbn_post* p, cnp.ndarray x, int post_act, double slope, object residual,
                  object dy, bint direct=False) except -1:
    """_fill_post for the Python route's entries, after checking the arrays against x."""
    _check_kernel_arrays(x, residual, dy)
    _fill_post(p, post_act, slope, residual, dy, direct)
    return 0


def forward_train(cnp.ndarray x, cnp.ndarray y_out, Py_ssize_t outer, Py_ssize_t C,
                  Py_ssize_t inner, object weight, object bias, double eps,
                  cnp.ndarray mean_out, cnp.ndarray var_out, cnp.ndarray invstd_out,
                  int num_threads, int act=CBN_ACT_NONE, int post_act=-1, double slope=0.0,
                  object residual=None):
    """Training forward: y_out (the activation act applied: an ACTIVATIONS code), and float64
    mean_out, var_out (biased), invstd_out.  post_act >= 0 (an ACTIVATIONS code, act then
    NONE): y_out = post_act(bn(x) + residual) through the post-operation stage, residual (like
    x) or None, slope the leaky ReLU's."""
    _bound()
    _check_kernel_arrays(x, y_out)
    cdef Geometry g = _geom_of(x, outer, C, inner)
    cdef const double* w = _vec_or_null(weight)
    cdef const double* b = _vec_or_null(bias)
    cdef double* mo = <double*>cnp.PyArray_DATA(mean_out)
    cdef double* vo = <double*>cnp.PyArray_DATA(var_out)
    cdef double* io = <double*>cnp.PyArray_DATA(invstd_out)
    cdef cbn_post post
    cdef const cbn_post* pp = NULL
    cdef int rc
    if post_act >= 0:
        _post_of(&post, x, post_act, slope, residual, None)
        pp = &post
        act = CBN_ACT_NONE
    cdef int f = _format_of(x)
    cdef const void* xp = cnp.PyArray_DATA(x)
    cdef void* yp = cnp.PyArray_DATA(y_out)
    with nogil:
        if f == _F32:
            rc = _T.forward_f32(<const float*>xp, <float*>yp, &g, num_threads, eps, w, b, mo,
                                vo, io, act, pp)
        elif f == _F64:
            rc = _T.forward_f64(<const double*>xp, <double*>yp, &g, num_threads, eps, w, b, mo,
                                vo, io, act, pp)
        elif f == _F16:
            rc = _T.forward_f16(<const cbn_f16*>xp, <cbn_f16*>yp, &g, num_threads, eps, w, b,
                                mo, vo, io, act, pp)
        else:
            rc = _T.forward_bf16(<const cbn_bf16*>xp, <cbn_bf16*>yp, &g, num_threads, eps, w, b,
                                 mo, vo, io, act, pp)
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
    cdef int f = _format_of(x)
    cdef const void* xp = cnp.PyArray_DATA(x)
    with nogil:
        if f == _F32:
            rc = _T.moments_f32(<const float*>xp, &g, nt, mo, qo)
        elif f == _F64:
            rc = _T.moments_f64(<const double*>xp, &g, nt, mo, qo)
        elif f == _F16:
            rc = _T.moments_f16(<const cbn_f16*>xp, &g, nt, mo, qo)
        else:
            rc = _T.moments_bf16(<const cbn_bf16*>xp, &g, nt, mo, qo)
    _check_rc(rc)


cdef int _weights_of(cnp.ndarray weights, Py_ssize_t outer, Py_ssize_t C, Py_ssize_t inner,
                     cbn_weights* w) except -1:
    """OUT w: the kernels' view of a mask or weights -- C-contiguous bool (a mask), float32
    or float64, of ``outer * inner`` elements (one per position, shared by the channels) or
    ``outer * C * inner`` (one per element), finite and >= 0 (cbn/_masked.py checks them)."""
    cdef int t = cnp.PyArray_TYPE(weights)
    cdef Py_ssize_t size = cnp.PyArray_SIZE(weights)
    if not cnp.PyArray_IS_C_CONTIGUOUS(weights):
        raise ValueError("cbn._core: weights must be C-contiguous")
    if t == cnp.NPY_BOOL:
        w.kind = CBN_W_MASK
    elif t == cnp.NPY_FLOAT32:
        w.kind = CBN_W_F32
    elif t == cnp.NPY_FLOAT64:
        w.kind = CBN_W_F64
    else:
        raise TypeError(f"cbn._core: weights of dtype {weights.dtype}")
    if size == outer * inner:
        w.row = inner
        w.chan = 0
    elif size == outer * C * inner:
        w.row = C * inner
        w.chan = inner
    else:
        raise ValueError("cbn._core: weights of the wrong size")
    w.p = cnp.PyArray_DATA(weights)
    return 0


cdef inline const double* _c_vector(object a, Py_ssize_t C) except NULL:
    if (cnp.PyArray_TYPE(<cnp.ndarray>a) != cnp.NPY_FLOAT64
            or cnp.PyArray_SIZE(<cnp.ndarray>a) != C
            or not cnp.PyArray_IS_C_CONTIGUOUS(<cnp.ndarray>a)):
        raise ValueError("cbn._core: per-channel vectors must be float64 of length C")
    return <const double*>cnp.PyArray_DATA(<cnp.ndarray>a)


def weighted_moments(cnp.ndarray x, cnp.ndarray weights, Py_ssize_t outer, Py_ssize_t C,
                     Py_ssize_t inner, cnp.ndarray sw_out, cnp.ndarray mean_out,
                     cnp.ndarray m2_out, int num_threads):
    """Per-channel float64 weight sum, mean and M2 over the elements the weights select
    (_weights_of: their layout)."""
    _bound()
    _check_kernel_arrays(x)
    cdef Geometry g = _geom_of(x, outer, C, inner)
    cdef cbn_weights w
    _weights_of(weights, outer, C, inner, &w)
    cdef double* so = <double*>_c_vector(sw_out, C)
    cdef double* mo = <double*>_c_vector(mean_out, C)
    cdef double* qo = <double*>_c_vector(m2_out, C)
    cdef int nt = num_threads
    cdef int rc
    cdef int f = _format_of(x)
    cdef const void* xp = cnp.PyArray_DATA(x)
    with nogil:
        if f == _F32:
            rc = _T.wmoments_f32(<const float*>xp, &w, &g, nt, so, mo, qo)
        elif f == _F64:
            rc = _T.wmoments_f64(<const double*>xp, &w, &g, nt, so, mo, qo)
        elif f == _F16:
            rc = _T.wmoments_f16(<const cbn_f16*>xp, &w, &g, nt, so, mo, qo)
        else:
            rc = _T.wmoments_bf16(<const cbn_bf16*>xp, &w, &g, nt, so, mo, qo)
    _check_rc(rc)


def weighted_dx(cnp.ndarray g, cnp.ndarray x, cnp.ndarray weights, cnp.ndarray dx_out,
                Py_ssize_t outer, Py_ssize_t C, Py_ssize_t inner, a, b, d, mean,
                int num_threads):
    """The masked backward's dx pass: dx_out = a g - w (b + d (x - mean)) per channel, with
    the weight w of each element (_weights_of) and float64 vectors a, b, d, mean; g, x and
    dx_out of one dtype and shape (dx_out may be g)."""
    _bound()
    _check_kernel_arrays(x, g, dx_out)
    cdef Geometry geo = _geom_of(x, outer, C, inner)
    cdef cbn_weights w
    _weights_of(weights, outer, C, inner, &w)
    cdef const double* ap = _c_vector(a, C)
    cdef const double* bp = _c_vector(b, C)
    cdef const double* dp = _c_vector(d, C)
    cdef const double* mp = _c_vector(mean, C)
    cdef int nt = num_threads
    cdef int rc
    cdef int f = _format_of(x)
    cdef const void* xp = cnp.PyArray_DATA(x)
    cdef const void* gp = cnp.PyArray_DATA(g)
    cdef void* op = cnp.PyArray_DATA(dx_out)
    with nogil:
        if f == _F32:
            rc = _T.wdx_f32(<const float*>gp, <const float*>xp, &w, &geo, <float*>op, nt,
                            ap, bp, dp, mp)
        elif f == _F64:
            rc = _T.wdx_f64(<const double*>gp, <const double*>xp, &w, &geo, <double*>op, nt,
                            ap, bp, dp, mp)
        elif f == _F16:
            rc = _T.wdx_f16(<const cbn_f16*>gp, <const cbn_f16*>xp, &w, &geo, <cbn_f16*>op,
                            nt, ap, bp, dp, mp)
        else:
            rc = _T.wdx_bf16(<const cbn_bf16*>gp, <const cbn_bf16*>xp, &w, &geo,
                             <cbn_bf16*>op, nt, ap, bp, dp, mp)
    _check_rc(rc)


def fill_padding(cnp.ndarray y, object src, cnp.ndarray weights, Py_ssize_t outer,
                 Py_ssize_t C, Py_ssize_t inner, int num_threads):
    """y = src (0 when src is None) wherever the weight is 0 (_weights_of), in place; src of
    y's dtype and shape."""
    _bound()
    _check_kernel_arrays(y, src)
    cdef Geometry g = _geom_of(y, outer, C, inner)
    cdef cbn_weights w
    _weights_of(weights, outer, C, inner, &w)
    cdef int nt = num_threads
    cdef int f = _format_of(y)
    cdef void* yp = cnp.PyArray_DATA(y)
    cdef const void* sp = NULL if src is None else cnp.PyArray_DATA(<cnp.ndarray>src)
    with nogil:
        if f == _F32:
            _T.pad_f32(<float*>yp, <const float*>sp, &g, &w, nt)
        elif f == _F64:
            _T.pad_f64(<double*>yp, <const double*>sp, &g, &w, nt)
        elif f == _F16:
            _T.pad_f16(<cbn_f16*>yp, <const cbn_f16*>sp, &g, &w, nt)
        else:
            _T.pad_bf16(<cbn_bf16*>yp, <const cbn_bf16*>sp, &g, &w, nt)


def inference(cnp.ndarray x, cnp.ndarray y_out, Py_ssize_t outer, Py_ssize_t C,
              Py_ssize_t inner, cnp.ndarray centre, cnp.ndarray scale, cnp.ndarray shift,
              int num_threads, int act=CBN_ACT_NONE, int post_act=-1, double slope=0.0,
              object residual=None, object dy=None, bint direct=False):
    """y_out = act((x - centre) * scale + shift) with float64 per-channel vectors (act an
    ACTIVATIONS code).  post_act >= 0 (act then NONE): y_out = post_act(that + residual), or
    with dy given (like x) y_out = dy * post_act'(that + residual), the gradient at the
    activation's input (residual like x, or None).  direct: x is that input itself (centre,
    scale and shift are not read; no residual)."""
    _bound()
    _check_kernel_arrays(x, y_out)
    cdef Geometry g = _geom_of(x, outer, C, inner)
    cdef const double* ce = <const double*>cnp.PyArray_DATA(centre)
    cdef const double* sc = <const double*>cnp.PyArray_DATA(scale)
    cdef const double* sh = <const double*>cnp.PyArray_DATA(shift)
    cdef cbn_post post
    cdef const cbn_post* pp = NULL
    cdef int rc
    if post_act >= 0:
        if direct and residual is not None:
            raise ValueError("a direct post-operation takes no residual")
        _post_of(&post, x, post_act, slope, residual, dy, direct)
        pp = &post
        act = CBN_ACT_NONE
    cdef int f = _format_of(x)
    cdef const void* xp = cnp.PyArray_DATA(x)
    cdef void* yp = cnp.PyArray_DATA(y_out)
    with nogil:
        if f == _F32:
            rc = _T.inference_f32(<const float*>xp, <float*>yp, &g, num_threads, ce, sc, sh, act,
                                  pp)
        elif f == _F64:
            rc = _T.inference_f64(<const double*>xp, <double*>yp, &g, num_threads, ce, sc, sh,
                                  act, pp)
        elif f == _F16:
            rc = _T.inference_f16(<const cbn_f16*>xp, <cbn_f16*>yp, &g, num_threads, ce, sc, sh,
                                  act, pp)
        else:
            rc = _T.inference_bf16(<const cbn_bf16*>xp, <cbn_bf16*>yp, &g, num_threads, ce, sc,
                                   sh, act, pp)
    _check_rc(rc)


def math_eval(str name, cnp.ndarray x):
    """The bound level's vector e^x ("exp"), normal CDF and density ("normal": returns the
    pair), silu ("silu") or sigmoid and its complement ("sigmoid": the pair) of the post stage
    (cbn_math-inl.h) over a C-contiguous float32/float64 array, for the accuracy tests."""
    _bound()
    _check_kernel_arrays(x)
    names = ("exp", "normal", "silu", "sigmoid")
    if name not in names:
        raise ValueError(f"name must be one of {names}, got {name!r}")
    if _format_of(x) > _F64:
        raise TypeError(f"math_eval takes float32 or float64 arrays, got {x.dtype}")
    cdef int fn = names.index(name)
    cdef bint pair = fn in (1, 3)
    cdef cnp.ndarray out = np.empty_like(x)
    cdef cnp.ndarray aux = np.empty_like(x)
    cdef Py_ssize_t n = cnp.PyArray_SIZE(x)
    if cnp.PyArray_TYPE(x) == cnp.NPY_FLOAT32:
        _T.math_f32(fn, <const float*>cnp.PyArray_DATA(x), <float*>cnp.PyArray_DATA(out),
                    <float*>cnp.PyArray_DATA(aux) if pair else NULL, n)
    else:
        _T.math_f64(fn, <const double*>cnp.PyArray_DATA(x), <double*>cnp.PyArray_DATA(out),
                    <double*>cnp.PyArray_DATA(aux) if pair else NULL, n)
    return (out, aux) if pair else out


def half_convert(cnp.ndarray src, str fmt, bint narrow, bint pairs=False):
    """The bound level's conversions of a 16-bit format (fmt "float16" or "bfloat16"), for the
    accuracy tests: narrow, a C-contiguous float32 array to the format's bits (uint16); else
    the format's bits (a C-contiguous uint16 array) widened to float32; flat arrays out.  pairs:
    through the pair forms of the element-wise passes first (cbn_half.h)."""
    _bound()
    if fmt not in ("float16", "bfloat16"):
        raise ValueError(f"fmt must be 'float16' or 'bfloat16', got {fmt!r}")
    want = cnp.NPY_FLOAT32 if narrow else cnp.NPY_UINT16
    if cnp.PyArray_TYPE(src) != want or not cnp.PyArray_IS_C_CONTIGUOUS(src):
        raise TypeError("half_convert takes a C-contiguous " +
                        ("float32" if narrow else "uint16") + " array")
    cdef cnp.ndarray dst = np.empty(cnp.PyArray_SIZE(src), np.uint16 if narrow else np.float32)
    _T.half_convert(0 if fmt == "float16" else 1, narrow + 2 * pairs, cnp.PyArray_DATA(src),
                    cnp.PyArray_DATA(dst), cnp.PyArray_SIZE(src))
    return dst


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
    cdef int f = _format_of(x)
    cdef const void* dyp = cnp.PyArray_DATA(dy)
    cdef const void* xp = cnp.PyArray_DATA(x)
    with nogil:
        if f == _F32:
            rc = _T.backward_f32(<const float*>dyp, <const float*>ym, <const float*>xp,
                                 <float*>dxp, &g, num_threads, mu, iv, w, with_dot, a, d)
        elif f == _F64:
            rc = _T.backward_f64(<const double*>dyp, <const double*>ym, <const double*>xp,
                                 <double*>dxp, &g, num_threads, mu, iv, w, with_dot, a, d)
        elif f == _F16:
            rc = _T.backward_f16(<const cbn_f16*>dyp, <const cbn_f16*>ym, <const cbn_f16*>xp,
                                 <cbn_f16*>dxp, &g, num_threads, mu, iv, w, with_dot, a, d)
        else:
            rc = _T.backward_bf16(<const cbn_bf16*>dyp, <const cbn_bf16*>ym,
                                  <const cbn_bf16*>xp, <cbn_bf16*>dxp, &g, num_threads, mu, iv,
                                  w, with_dot, a, d)
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
    cdef int f = _format_of(x)
    cdef const void* dyp = cnp.PyArray_DATA(dy)
    cdef const void* xp = cnp.PyArray_DATA(x)
    cdef void* dxp = cnp.PyArray_DATA(dx_out)
    with nogil:
        if f == _F32:
            rc = _T.dx_from_sums_f32(<const float*>dyp, <const float*>ym, <const float*>xp,
                                     <float*>dxp, &g, nt, n_total, mu, iv, w, a, d)
        elif f == _F64:
            rc = _T.dx_from_sums_f64(<const double*>dyp, <const double*>ym, <const double*>xp,
                                     <double*>dxp, &g, nt, n_total, mu, iv, w, a, d)
        elif f == _F16:
            rc = _T.dx_from_sums_f16(<const cbn_f16*>dyp, <const cbn_f16*>ym,
                                     <const cbn_f16*>xp, <cbn_f16*>dxp, &g, nt, n_total, mu, iv,
                                     w, a, d)
        else:
            rc = _T.dx_from_sums_bf16(<const cbn_bf16*>dyp, <const cbn_bf16*>ym,
                                      <const cbn_bf16*>xp, <cbn_bf16*>dxp, &g, nt, n_total, mu,
                                      iv, w, a, d)
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


# ------------------------------------------------------------------------------------ argument rules
# The one home of every argument *value* rule, of the formulas both routes share, and of their
# error messages.  A public function takes one of two routes:
#
# * the fast path (section "fast paths" below) *recognises* canonical input -- exact ndarrays,
#   C-contiguous, aligned, native byte order, float32/float64, vectors of length C, a plain
#   float eps or momentum, a plain int axis or thread count, an out= of the right kind without
#   partial overlap -- and applies the rules below, cdef functions of C values, to it;
# * the Python route (cbn/_validation.py and the public modules) takes everything else: it
#   turns the arguments into canonical form (array-likes, layouts, dtypes, NumPy scalars; the
#   TypeErrors naming what was given are its own) and applies the same rules through the def
#   wrappers below, which raise each rule's one message.
#
# The fast path returns None both for input it does not recognise and for input that breaks a
# rule, so it never raises for bad input: every error comes from the Python route, in its order
# of checks, with the message defined here.  A value the fast path declines is judged by the
# same predicate in the Python route, and a value it takes passes that predicate by
# construction.  This is design (a) of the "one home for every argument rule" issue: the rules
# live here, compiled, because the fast paths must apply them without Python overhead (a tiny
# inference call is ~0.4 us); a rule in Python with a fast-path subset beside it would keep two
# expressions of each rule in step by tests rather than by construction.
#
# What is *not* a rule here: recognition (exact types, layouts, dtypes, lengths, out= kinds),
# which only the fast path does, and canonicalisation with its TypeErrors (operator.index,
# numbers.Real, np.asarray, kernel_view), which only the Python route does.

from libc.limits cimport LONG_MAX, LONG_MIN
from cpython.number cimport PyNumber_Index
import numpy as np

cdef extern from "Python.h":
    # (declared here without Cython's error check: only ever called with an int)
    long _long_and_overflow "PyLong_AsLongAndOverflow" (object pylong, int* overflow) noexcept


cdef inline long _clamped(object n) noexcept:
    """The int ``n`` as a C long, saturated at LONG_MIN / LONG_MAX.  The rules compare with
    bounds far inside that range, so saturation never changes a verdict.  Callers pass ints
    (exact, or PyNumber_Index's result)."""
    cdef int overflow = 0
    cdef long v = _long_and_overflow(n, &overflow)
    if overflow > 0:
        return LONG_MAX
    if overflow < 0:
        return LONG_MIN
    return v




# -- eps
cdef inline bint _eps_ok(double eps) noexcept nogil:
    """Rule: eps is finite and > 0 (NaN fails)."""
    return eps > 0.0 and isfinite(eps)


def check_eps_value(double eps, given):
    """The eps rule for the Python route: returns ``eps`` (a float), or raises the rule's
    ValueError naming ``given``, the caller's argument."""
    if not _eps_ok(eps):
        raise ValueError(f"eps must be finite and > 0, got {given!r}")
    return eps


# -- momentum
cdef inline bint _momentum_applies(object running_mean, object running_var) noexcept:
    """Rule: momentum is read, and checked, only when a running statistic is updated."""
    return running_mean is not None or running_var is not None


cdef inline bint _momentum_ok(double momentum) noexcept nogil:
    """Rule: momentum is in [0, 1] (NaN fails)."""
    return 0.0 <= momentum <= 1.0


def momentum_applies(running_mean, running_var):
    """Whether ``momentum`` is read (and so checked): a running statistic is given."""
    return _momentum_applies(running_mean, running_var)


def check_momentum_value(double momentum, given):
    """The momentum rule for the Python route: returns ``momentum``, or raises the rule's
    ValueError naming ``given``."""
    if not _momentum_ok(momentum):
        raise ValueError(f"momentum must be in [0, 1], got {given!r}")
    return momentum


# -- thread count
cdef enum:
    _THREADS_CAP = 1 << 20
    _ALL_THREADS = 0
    _THREADS_INVALID = -1
    _THREADS_NOT_CANONICAL = -2

#: Thread requests above this are capped to it (the kernels cap them further, at
#: omp_get_num_procs()); it keeps every request inside a C int.
THREADS_CAP = _THREADS_CAP


cdef inline int _threads_of(object num_threads) noexcept:
    """Rule: num_threads None means all threads (0 for the kernels); an int n >= 1 is n threads,
    capped at THREADS_CAP; an int n < 1 is invalid (-1).  Anything but None or an exact int is
    not canonical (-2: the Python route converts it, or raises its TypeError)."""
    cdef long n
    if num_threads is None:
        return _ALL_THREADS
    if type(num_threads) is not int:
        return _THREADS_NOT_CANONICAL
    n = _clamped(num_threads)
    if n < 1:
        return _THREADS_INVALID
    return <int>(n if n < _THREADS_CAP else _THREADS_CAP)


def check_thread_count(num_threads):
    """The num_threads rule for the Python route: None or an int (operator.index'ed) to the
    kernels' thread count (0 = all), or the rule's ValueError."""
    if num_threads is not None:
        num_threads = PyNumber_Index(num_threads)
    cdef int n = _threads_of(num_threads)
    if n == _THREADS_INVALID:
        raise ValueError(f"num_threads must be >= 1, got {num_threads}")
    return n


# -- shape and channel axis
cdef inline bint _ndim_ok(int ndim) noexcept nogil:
    """Rule: an input has at least a batch and a channel dimension."""
    return ndim >= 2


cdef inline int _channel_axis(long axis, int ndim) noexcept nogil:
    """Rule: the channel axis of an ndim-dimensional array is in [-ndim, ndim), negative
    values counting from the end.  Returns it normalised to [0, ndim), or -1 when out of
    range."""
    if axis < -ndim or axis >= ndim:
        return -1
    return <int>(axis + ndim if axis < 0 else axis)


cdef inline void _split_dims(const cnp.npy_intp* dims, int ndim, int axis, Py_ssize_t* outer,
                             Py_ssize_t* inner) noexcept nogil:
    """The view of a C-contiguous array with channel axis ``axis`` as (outer, C, inner): OUT
    outer, the product of the dimensions before the axis, and inner, of those after it."""
    cdef int i
    outer[0] = 1
    inner[0] = 1
    for i in range(axis):
        outer[0] *= dims[i]
    for i in range(axis + 1, ndim):
        inner[0] *= dims[i]


def check_ndim(shape, str name):
    """The ndim rule for the Python route: raises its ValueError for a shape of fewer than 2
    dimensions."""
    if not _ndim_ok(len(shape)):
        raise ValueError(
            f"{name} must have at least 2 dimensions (batch and channel), got shape {shape}")


def check_channel_axis(axis, int ndim, str name, given):
    """The channel-axis rule for the Python route: ``axis`` (an int) normalised to
    [0, ndim), or the rule's ValueError naming ``given``."""
    cdef int a = _channel_axis(_clamped(PyNumber_Index(axis)), ndim)
    if a < 0:
        raise ValueError(f"{name}={given} is out of range for an array with {ndim} dimensions")
    return a


def geometry(shape, int axis):
    """(outer, C, inner) of a C-contiguous array of shape ``shape`` with channel axis ``axis``
    (normalised), as the fast paths view it."""
    cdef cnp.npy_intp dims[64]
    cdef int i, nd = len(shape)
    cdef Py_ssize_t outer, inner
    if nd > 64 or not 0 <= axis < nd:
        raise ValueError(f"cbn._core.geometry: shape {shape} with axis {axis}")
    for i in range(nd):
        dims[i] = shape[i]
    _split_dims(dims, nd, axis, &outer, &inner)
    return outer, dims[axis], inner


# -- batch size of a training call
cdef inline bint _batch_count_ok(Py_ssize_t n) noexcept nogil:
    """Rule: training statistics need more than one value per channel (torch's rule).  n == 0,
    an empty batch, is no error: NaN statistics, running statistics left alone."""
    return n != 1


#: the rule's message, also raised by the masked statistics (cbn/_masked.py)
BATCH_COUNT_MESSAGE = "Expected more than 1 value per channel when training"


def check_batch_count(n, shape=None):
    """The batch-count rule for the Python route: raises its ValueError when ``n`` (values per
    channel) is 1; ``shape``, when known, is named in the message."""
    if not _batch_count_ok(_clamped(PyNumber_Index(n))):
        got = f"got input size {tuple(shape)}" if shape is not None else f"got {n}"
        raise ValueError(f"{BATCH_COUNT_MESSAGE}, {got}")


# -- inference statistics and scale
cdef inline object _new_vector(Py_ssize_t C):
    cdef cnp.npy_intp n = C
    return cnp.PyArray_EMPTY(1, &n, cnp.NPY_FLOAT64, 0)


cdef inline bint _variance_ok(double var) noexcept nogil:
    """Rule: a running variance used for inference is not negative.  NaN is no error: like NaN
    data it propagates to its own channel of the output (documented; torch gives NaN for a
    negative one, cbn raises)."""
    return not (var < 0.0)  # cbn_count_negative (cbn_channels.h) counts the channels failing it


cdef inline double _inference_scale(double weight, double var, double eps) noexcept nogil:
    """Formula: the evaluation-mode scale ``weight / sqrt(var + eps)`` in float64.  Correctly
    rounded operations, and _core is compiled without FMA contraction: the same bits as the
    NumPy expression."""
    return cbn_inference_scale(weight, var, eps)


cdef inline int _require_f64(cnp.ndarray a, Py_ssize_t C, str what) except -1:
    if (cnp.PyArray_TYPE(a) != cnp.NPY_FLOAT64 or not cnp.PyArray_IS_C_CONTIGUOUS(a)
            or cnp.PyArray_NDIM(a) != 1 or cnp.PyArray_DIM(a, 0) != C):
        raise TypeError(f"cbn._core: {what} takes C-contiguous float64 vectors of one length "
                        "(cbn/_validation.as_f64 makes them)")
    return 0


def check_running_var(cnp.ndarray var):
    """The running-variance rule for the Python route: raises its ValueError if the float64
    vector ``var`` (cbn/_validation.as_f64) has a negative entry."""
    cdef Py_ssize_t c, C = cnp.PyArray_SIZE(var)
    _require_f64(var, C, "check_running_var")
    cdef const double* v = <const double*>cnp.PyArray_DATA(var)
    for c in range(C):
        if not _variance_ok(v[c]):
            raise ValueError("running_var must be >= 0 everywhere")


def inference_scale(weight, cnp.ndarray var, double eps):
    """The evaluation-mode scale ``weight / sqrt(var + eps)`` per channel as a new float64
    vector; ``weight`` None (1) or, like ``var``, a float64 vector (cbn/_validation.as_f64).
    The fast path computes it with the same function."""
    cdef Py_ssize_t c, C = cnp.PyArray_SIZE(var)
    _require_f64(var, C, "inference_scale")
    if weight is not None:
        _require_f64(<cnp.ndarray?>weight, C, "inference_scale")
    cdef const double* v = <const double*>cnp.PyArray_DATA(var)
    cdef const double* w = _vec_or_null(weight)
    scale = _new_vector(C)
    cdef double* s = <double*>cnp.PyArray_DATA(<cnp.ndarray>scale)
    for c in range(C):
        s[c] = _inference_scale(1.0 if w == NULL else w[c], v[c], eps)
    return scale


# -- outputs
cdef inline bint _disjoint(cnp.ndarray a, cnp.ndarray b) noexcept:
    """a's memory and b's share no byte (a, b C-contiguous)."""
    cdef char* pa = <char*>cnp.PyArray_DATA(a)
    cdef char* pb = <char*>cnp.PyArray_DATA(b)
    return pa + cnp.PyArray_NBYTES(a) <= pb or pb + cnp.PyArray_NBYTES(b) <= pa


cdef inline bint _no_partial_overlap(cnp.ndarray a, cnp.ndarray b) noexcept:
    """Rule: a kernel writes its output directly only if it is exactly an input's memory (each
    element is read before it is written) or disjoint from it; partial overlap goes through a
    temporary.  a and b are C-contiguous."""
    cdef char* pa = <char*>cnp.PyArray_DATA(a)
    cdef char* pb = <char*>cnp.PyArray_DATA(b)
    cdef Py_ssize_t na = cnp.PyArray_NBYTES(a), nb = cnp.PyArray_NBYTES(b)
    return (pa == pb and na == nb) or pa + na <= pb or pb + nb <= pa


def no_partial_overlap(cnp.ndarray a, cnp.ndarray b):
    """The output-overlap rule for the Python route (a and b C-contiguous): True if a kernel
    may write ``a`` while reading ``b``."""
    if not (cnp.PyArray_IS_C_CONTIGUOUS(a) and cnp.PyArray_IS_C_CONTIGUOUS(b)):
        raise TypeError("cbn._core.no_partial_overlap takes C-contiguous arrays")
    return _no_partial_overlap(a, b)


# -- parameter gradients
cdef cnp.dtype _F32_DTYPE = cnp.PyArray_DescrFromType(cnp.NPY_FLOAT32)


cdef inline cnp.dtype _gradient_dtype(cnp.dtype x_dtype, object weight_dtype):
    """Rule: dweight and dbias take the dtype of weight when there is one (``weight_dtype`` not
    None), else of x; float16 and bfloat16 become float32 (sums of float16 gradients overflow
    past 65504; bfloat16 sums keep 8 bits).  bfloat16 is known by _BF16_NUM: the Python route
    validates x and weight (cbn/_validation.py, is_bfloat16 notes it) before this rule, and the
    fast paths take no bfloat16."""
    cdef cnp.dtype d = x_dtype if weight_dtype is None else <cnp.dtype?>weight_dtype
    if d.type_num == cnp.NPY_FLOAT16 or (d.type_num == _BF16_NUM and _BF16_NUM >= 0):
        return _F32_DTYPE
    return d


cdef inline object _as_gradient(cnp.ndarray sums, cnp.dtype dt):
    """The float64 vector ``sums`` in the gradient dtype ``dt`` (itself when float64)."""
    if cnp.PyDataType_ISNOTSWAPPED(dt):
        if dt.type_num == cnp.NPY_FLOAT64:
            return sums
        return cnp.PyArray_Cast(sums, dt.type_num)
    return sums.astype(dt)


cdef inline void _dweight_from_sums(const double* sdyx, const double* invstd, double* dw_out,
                                    Py_ssize_t C) noexcept nogil:
    """Formula: dweight = sum(dy * (x - mean)) * invstd, in float64 into OUT dw_out (which may
    be sdyx itself)."""
    cdef Py_ssize_t c
    for c in range(C):
        dw_out[c] = sdyx[c] * invstd[c]


def gradient_dtype(x_dtype, weight):
    """The gradient-dtype rule for the Python route: the dtype of dweight and dbias for an
    input of dtype ``x_dtype`` and ``weight`` (array-like or None)."""
    return _gradient_dtype(x_dtype, None if weight is None else np.asarray(weight).dtype)


def parameter_gradients(cnp.ndarray sdy, cnp.ndarray sdyx, cnp.ndarray invstd, grad_dtype,
                        bint need_dw=True, bint need_db=True):
    """(dweight, dbias) from the float64 backward sums ``sum(dy)`` and ``sum(dy * (x - mean))``
    and ``invstd``, in ``grad_dtype`` (:func:`gradient_dtype`); None for a gradient not
    needed.  The fast path uses the same functions.  ``dbias`` may be ``sdy`` itself (float64);
    ``sdyx`` is not modified."""
    cdef Py_ssize_t C = cnp.PyArray_SIZE(sdy)
    dweight = dbias = None
    if need_dw:
        _require_f64(sdyx, C, "parameter_gradients")
        _require_f64(invstd, C, "parameter_gradients")
        dw = _new_vector(C)
        _dweight_from_sums(<const double*>cnp.PyArray_DATA(sdyx),
                           <const double*>cnp.PyArray_DATA(invstd),
                           <double*>cnp.PyArray_DATA(<cnp.ndarray>dw), C)
        dweight = _as_gradient(<cnp.ndarray>dw, grad_dtype)
    if need_db:
        _require_f64(sdy, C, "parameter_gradients")
        dbias = _as_gradient(sdy, grad_dtype)
    return dweight, dbias


# -- running statistics
cdef inline bint _keeps_running(double mean, double var) noexcept nogil:
    """Rule of skip_nonfinite: a channel whose batch mean or variance is NaN/Inf keeps its
    running statistics."""
    return cbn_keeps_running(mean, var)  # cbn_channels.h, applied per channel by cbn_ema_*


cdef inline bint _c_statistic(object a) noexcept:
    """A running statistic the C update takes: None, or an aligned native float32/float64
    C-contiguous ndarray."""
    cdef int t
    if a is None:
        return True
    if not cnp.PyArray_Check(a):
        return False
    t = cnp.PyArray_TYPE(<cnp.ndarray>a)
    return ((t == cnp.NPY_FLOAT32 or t == cnp.NPY_FLOAT64)
            and cnp.PyArray_IS_C_CONTIGUOUS(<cnp.ndarray>a)
            and cnp.PyArray_ISALIGNED(<cnp.ndarray>a) and cnp.PyArray_ISNOTSWAPPED(<cnp.ndarray>a))


cdef void _ema(object a, const double* batch, double f, Py_ssize_t C, double m,
               const double* mean, const double* var, bint skip_nonfinite) noexcept:
    """IN/OUT a (a _c_statistic) = (1 - m) * a + m * (batch * f) in float64, stored in a's
    dtype; with skip_nonfinite, channels that _keeps_running keep their value."""
    if cnp.PyArray_TYPE(<cnp.ndarray>a) == cnp.NPY_FLOAT32:
        cbn_ema_f32(<float*>cnp.PyArray_DATA(<cnp.ndarray>a), batch, f, C, m, mean, var,
                    skip_nonfinite)
    else:
        cbn_ema_f64(<double*>cnp.PyArray_DATA(<cnp.ndarray>a), batch, f, C, m, mean, var,
                    skip_nonfinite)


cdef inline double _variance_factor(double n, bint unbiased) noexcept nogil:
    """Formula: the batch variance enters running_var unbiased, ``var * n / (n - 1)``."""
    return n / (n - 1.0) if unbiased else 1.0


cdef void _update_running(object running_mean, object running_var, const double* mean,
                          const double* var, Py_ssize_t C, double n, double m,
                          bint skip_nonfinite, bint unbiased) noexcept:
    """update_running's C route: IN/OUT the two _c_statistic statistics (or None)."""
    if running_mean is not None:
        _ema(running_mean, mean, 1.0, C, m, mean, var, skip_nonfinite)
    if running_var is not None:
        _ema(running_var, var, _variance_factor(n, unbiased), C, m, mean, var, skip_nonfinite)


def _update_running_numpy(running_mean, running_var, mean, var, double n, double momentum,
                          bint skip_nonfinite, bint unbiased=True):
    """update_running's NumPy route, for the statistics the C route does not take (float16,
    longdouble, strided, byte-swapped): the same formula, operation for operation.  A function
    of its own so that tests can run it on float32/float64 statistics too and compare it with
    the C route bit for bit."""
    keep = (~(np.isfinite(mean) & np.isfinite(var))) if skip_nonfinite else None
    for a, batch, f in ((running_mean, mean, 1.0),
                        (running_var, var, _variance_factor(n, unbiased))):
        if a is None:
            continue
        with np.errstate(all="ignore"):  # NaN/Inf statistics: as quiet as the C route
            new = (1.0 - momentum) * a.astype(np.float64) + momentum * (batch * f)
        a[...] = new if keep is None else np.where(keep, a, new)


def update_running(running_mean, running_var, mean, var, n, momentum, bint skip_nonfinite,
                   bint unbiased=True):
    """The running-statistic update of a training step, in place::

        running_mean = (1 - momentum) * running_mean + momentum * mean
        running_var  = (1 - momentum) * running_var  + momentum * (var * n / (n - 1))

    ``mean`` and ``var`` (biased) are the float64 batch statistics of n values per channel;
    the update is computed in float64 and stored in each statistic's own dtype.  With
    ``unbiased=False`` the variance enters as given (the keras / onnx conventions of
    cbn.BatchNorm).  With ``skip_nonfinite``, a channel whose batch mean or variance is NaN/Inf
    keeps its running statistics.  ``running_mean`` / ``running_var`` may be None (not updated).

    The one definition of the update: the fast path runs its C route on its statistics, and
    every other caller (cbn/_batch_norm.py, cbn/dask.py, cbn/_layer.py) calls this function.
    Native float32/float64 C-contiguous statistics take the C route (_update_running, compiled
    without FMA contraction, so it rounds as NumPy does); others take _update_running_numpy,
    the same operations in NumPy.  tests/test_argument_rules.py checks that the two agree bit
    for bit.  Nothing is read, momentum included, when both statistics are None.
    """
    if not _momentum_applies(running_mean, running_var):
        return
    if _c_statistic(running_mean) and _c_statistic(running_var):
        mean = np.ascontiguousarray(mean, dtype=np.float64)
        var = np.ascontiguousarray(var, dtype=np.float64)
        C = cnp.PyArray_SIZE(<cnp.ndarray>mean)
        for a in (running_mean, running_var, var):
            if a is not None and cnp.PyArray_SIZE(<cnp.ndarray>a) != C:
                raise ValueError("cbn._core.update_running: statistics of different lengths")
        _update_running(running_mean, running_var, <const double*>cnp.PyArray_DATA(mean),
                        <const double*>cnp.PyArray_DATA(var), C, n, momentum, skip_nonfinite,
                        unbiased)
    else:
        _update_running_numpy(running_mean, running_var, mean, var, n, momentum,
                              skip_nonfinite, unbiased)


def commit_step(layer, saved, running_mean, running_var, mean, var, momentum, counter):
    """A layer's training-step state change as one call: the running-statistic update with the
    batch ``mean`` and the variance ``var`` as it enters running_var (update_running with
    unbiased=False; skipped when momentum is None), ``counter`` += 1 (None: no counter) and
    ``layer._saved = saved``.

    Why one call: Python raises a pending KeyboardInterrupt after a C call returns, so a step
    whose changes were several Python statements could stop between them (statistics updated,
    counter or saved input not).  Nothing here runs Python bytecode for float32/float64
    C-contiguous statistics (update_running's C route), so Ctrl-C lands before or after the
    whole step."""
    cdef bint in_c = (type(counter) is np.ndarray and counter.dtype == np.int64
                      and counter.ndim == 0 and counter.flags.writeable
                      and counter.flags.aligned)
    if isinstance(counter, np.ndarray) and not counter.flags.writeable:
        raise ValueError("num_batches_tracked must be writeable")
    if momentum is not None:
        update_running(running_mean, running_var, mean, var, 0, momentum, False, False)
    if in_c:
        (<cnp.int64_t*>cnp.PyArray_DATA(<cnp.ndarray>counter))[0] += 1
    elif counter is not None:  # a counter the user replaced: as `+= 1` treats it
        counter += 1
        PyObject_GenericSetAttr(layer, "num_batches_tracked", counter)
    # object's own setattr: a class __setattr__ written in Python (the layer's validates its
    # arrays) would run bytecode here, where Ctrl-C could stop the step half done
    PyObject_GenericSetAttr(layer, "_saved", saved)


# ------------------------------------------------------------------------------------ fast paths
# The whole public call for the common case, in C.  These functions only *recognise* canonical
# input: exact ndarrays, C-contiguous, aligned, native float32/float64; per-channel vectors
# that are None or 1-D float32/float64 ndarrays of the same kind and of length C; a plain float
# eps/momentum, a plain int axis, None or a plain int num_threads; out= None or an ndarray of the
# same kind, shape and dtype as x without partial overlap.  To recognised input they apply the
# rules of the section above.  Anything else -- not recognised, or breaking a rule -- returns
# None, and the Python route (cbn/_batch_norm.py, cbn/_validation.py) decides with the same
# rules and their messages; so these functions never raise for bad input.  Every check is made
# before anything is written, so a fallback never leaves partial updates behind.

from cbn._types import BackwardResult, ForwardResult, FusedBackwardResult

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
    if a is None:
        cbn_fill_f64(default, C, out)
    elif cnp.PyArray_TYPE(<cnp.ndarray>a) == cnp.NPY_FLOAT32:
        cbn_widen_f32(<const float*>cnp.PyArray_DATA(<cnp.ndarray>a), C, out)
    else:
        memcpy(out, cnp.PyArray_DATA(<cnp.ndarray>a), C * sizeof(double))


cdef inline int _fast_threads(object num_threads) noexcept:
    """The kernels' thread count (0 = all) of a canonical valid num_threads, else -1."""
    cdef int n = _threads_of(num_threads)
    return n if n >= 0 else -1


cdef inline bint _fast_eps(object eps, double* out) noexcept:
    """A plain float eps that passes the eps rule: its value in OUT out."""
    if type(eps) is not float:
        return False
    out[0] = eps
    return _eps_ok(out[0])


cdef inline bint _fast_momentum(object momentum, double* out) noexcept:
    """A plain float momentum that passes the momentum rule: its value in OUT out."""
    if type(momentum) is not float:
        return False
    out[0] = momentum
    return _momentum_ok(out[0])


cdef inline bint _fast_geometry(cnp.ndarray x, object axis, Geometry* g) noexcept:
    """Channel axis and (outer, C, inner) of x, by the shape and axis rules; False when the
    Python route must decide."""
    cdef int nd = cnp.PyArray_NDIM(x), a
    cdef Py_ssize_t outer, inner
    if not _ndim_ok(nd) or type(axis) is not int:
        return False
    a = _channel_axis(_clamped(axis), nd)
    if a < 0:
        return False
    _split_dims(cnp.PyArray_DIMS(x), nd, a, &outer, &inner)
    g[0] = cbn_geometry_of(outer, cnp.PyArray_DIM(x, a), inner, cnp.PyArray_ITEMSIZE(x))
    return True


cdef inline object _new_like(cnp.ndarray x):
    return cnp.PyArray_EMPTY(cnp.PyArray_NDIM(x), cnp.PyArray_DIMS(x), cnp.PyArray_TYPE(x), 0)


cdef inline object _fast_out(object out, cnp.ndarray x):
    """A new array like x (out None), out itself if the kernels can write to it directly, or
    None: the Python route handles other outs (copy-back, errors)."""
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


def fast_inference(x, running_mean, running_var, weight, bias, eps, axis, num_threads, out,
                   int act, int post_act=-1, double slope=0.0, residual=None):
    """batch_norm_inference for the common case, or None (see the section comment); with
    post_act >= 0 through the post-operation stage (act then NONE), residual None or an array
    of x's type and shape."""
    cdef Geometry g
    cdef int nt = _fast_threads(num_threads)
    cdef Py_ssize_t C, c, nbad
    cdef double e = 0.0  # set by _fast_eps
    cdef double* buf
    cdef int rc
    cdef cbn_post post
    cdef const cbn_post* pp = NULL
    if _T == NULL or nt < 0 or not _fast_array(x) or not _fast_eps(eps, &e):
        return None
    if residual is not None and not (
            _fast_array(residual) and cnp.PyArray_TYPE(<cnp.ndarray>residual) == cnp.PyArray_TYPE(
                <cnp.ndarray>x) and cnp.PyArray_SAMESHAPE(<cnp.ndarray>residual, <cnp.ndarray>x)):
        return None
    if not _fast_geometry(<cnp.ndarray>x, axis, &g) or g.outer * g.inner == 0:
        return None
    C = g.C
    if running_mean is None or running_var is None:
        return None
    if not (_fast_vector(running_mean, C) and _fast_vector(running_var, C)
            and _fast_vector(weight, C) and _fast_vector(bias, C)):
        return None
    buf = <double*>malloc(4 * C * sizeof(double))  # mean, scale, shift, var
    if buf == NULL:
        return None
    _vcopy(running_var, C, 1.0, buf + 3 * C)
    nbad = cbn_count_negative(buf + 3 * C, C)  # channels failing _variance_ok
    if nbad:
        free(buf)
        return None  # a negative variance: the Python route raises
    y = _fast_out(out, <cnp.ndarray>x)
    if y is None or (residual is not None and not _no_partial_overlap(<cnp.ndarray>y,
                                                                       <cnp.ndarray>residual)):
        free(buf)
        return None
    if post_act >= 0:
        _fill_post(&post, post_act, slope, residual, None, False)
        pp = &post
        act = CBN_ACT_NONE
    _vcopy(running_mean, C, 0.0, buf)
    _vcopy(weight, C, 1.0, buf + C)
    _vcopy(bias, C, 0.0, buf + 2 * C)
    cbn_inference_scales(buf + C, buf + 3 * C, C, e)  # _inference_scale per channel
    if cnp.PyArray_TYPE(<cnp.ndarray>x) == cnp.NPY_FLOAT32:
        with nogil:
            rc = _T.inference_f32(<const float*>cnp.PyArray_DATA(<cnp.ndarray>x),
                                  <float*>cnp.PyArray_DATA(<cnp.ndarray>y), &g, nt, buf, buf + C,
                                  buf + 2 * C, act, pp)
    else:
        with nogil:
            rc = _T.inference_f64(<const double*>cnp.PyArray_DATA(<cnp.ndarray>x),
                                  <double*>cnp.PyArray_DATA(<cnp.ndarray>y), &g, nt, buf, buf + C,
                                  buf + 2 * C, act, pp)
    free(buf)
    _check_rc(rc)
    return y


def fast_apply(x, cnp.ndarray centre, cnp.ndarray scale, cnp.ndarray shift, axis, int nt,
               out, int act):
    """A frozen layer's call (cbn.FrozenBatchNorm) for the common case, or None (see the
    section comment): y = act((x - centre) * scale + shift) with the layer's own float64
    vectors (C-contiguous, of its channel count: checked when the layer was made), nt its
    kernel thread count (0 = all)."""
    cdef Geometry g
    cdef int rc
    if _T == NULL or nt < 0 or not _fast_array(x):
        return None
    if not _fast_geometry(<cnp.ndarray>x, axis, &g) or g.outer * g.inner == 0:
        return None
    if g.C != cnp.PyArray_SIZE(scale):
        return None  # the Python route names the mismatch
    y = _fast_out(out, <cnp.ndarray>x)
    if y is None:
        return None
    if cnp.PyArray_TYPE(<cnp.ndarray>x) == cnp.NPY_FLOAT32:
        with nogil:
            rc = _T.inference_f32(<const float*>cnp.PyArray_DATA(<cnp.ndarray>x),
                                  <float*>cnp.PyArray_DATA(<cnp.ndarray>y), &g, nt,
                                  <const double*>cnp.PyArray_DATA(centre),
                                  <const double*>cnp.PyArray_DATA(scale),
                                  <const double*>cnp.PyArray_DATA(shift), act, NULL)
    else:
        with nogil:
            rc = _T.inference_f64(<const double*>cnp.PyArray_DATA(<cnp.ndarray>x),
                                  <double*>cnp.PyArray_DATA(<cnp.ndarray>y), &g, nt,
                                  <const double*>cnp.PyArray_DATA(centre),
                                  <const double*>cnp.PyArray_DATA(scale),
                                  <const double*>cnp.PyArray_DATA(shift), act, NULL)
    _check_rc(rc)
    return y


def fast_forward(x, weight, bias, eps, running_mean, running_var, momentum, axis, num_threads,
                 out, bint skip_nonfinite, int act, int post_act=-1, double slope=0.0,
                 residual=None):
    """batch_norm_forward for the common case, or None (see the section comment); with
    post_act >= 0 through the post-operation stage (act then NONE), residual None or an array
    of x's type and shape."""
    cdef Geometry g
    cdef cbn_post post
    cdef const cbn_post* pp = NULL
    cdef int nt = _fast_threads(num_threads)
    cdef Py_ssize_t C, c
    cdef double e = 0.0, m = 0.0  # set by _fast_eps, _fast_momentum
    cdef double* buf
    cdef double* mo
    cdef double* io
    cdef int rc
    if _T == NULL or nt < 0 or not _fast_array(x) or not _fast_eps(eps, &e):
        return None
    if residual is not None and not (
            _fast_array(residual) and cnp.PyArray_TYPE(<cnp.ndarray>residual) == cnp.PyArray_TYPE(
                <cnp.ndarray>x) and cnp.PyArray_SAMESHAPE(<cnp.ndarray>residual, <cnp.ndarray>x)):
        return None
    if (not _fast_geometry(<cnp.ndarray>x, axis, &g) or not _batch_count_ok(g.n)
            or g.n == 0):
        return None
    C = g.C
    if not (_fast_vector(weight, C) and _fast_vector(bias, C)
            and _fast_vector(running_mean, C, True) and _fast_vector(running_var, C, True)):
        return None
    if _momentum_applies(running_mean, running_var):
        if not _fast_momentum(momentum, &m):
            return None
    y = _fast_out(out, <cnp.ndarray>x)
    if y is None or (residual is not None and not _no_partial_overlap(<cnp.ndarray>y,
                                                                       <cnp.ndarray>residual)):
        return None
    if post_act >= 0:
        _fill_post(&post, post_act, slope, residual, None, False)
        pp = &post
        act = CBN_ACT_NONE
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
                                buf + C if bias is not None else NULL, mo, buf + 2 * C, io, act,
                                pp)
    else:
        with nogil:
            rc = _T.forward_f64(<const double*>cnp.PyArray_DATA(<cnp.ndarray>x),
                                <double*>cnp.PyArray_DATA(<cnp.ndarray>y), &g, nt, e,
                                buf if weight is not None else NULL,
                                buf + C if bias is not None else NULL, mo, buf + 2 * C, io, act,
                                pp)
    if rc != 0:
        free(buf)
        _check_rc(rc)
    _update_running(running_mean, running_var, mo, buf + 2 * C, C, <double>g.n, m,
                    skip_nonfinite, True)
    free(buf)
    return ForwardResult(y, mean, invstd)


def fast_backward(dy, x, mean, invstd, weight, axis, num_threads, out, y):
    """batch_norm_backward (all three gradients) for the common case, or None.  y: the output
    of a fused ReLU (mask) or None."""
    cdef Geometry g
    cdef int nt = _fast_threads(num_threads)
    cdef Py_ssize_t C
    cdef double* buf
    cdef int rc
    cdef cnp.dtype gdt
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
    _dweight_from_sums(<const double*>cnp.PyArray_DATA(<cnp.ndarray>sdyx), buf + C,
                       <double*>cnp.PyArray_DATA(<cnp.ndarray>sdyx), C)
    free(buf)
    gdt = _gradient_dtype((<cnp.ndarray>x).descr,
                          None if weight is None else (<cnp.ndarray>weight).descr)
    return BackwardResult(dx, _as_gradient(<cnp.ndarray>sdyx, gdt),
                          _as_gradient(<cnp.ndarray>sdy, gdt))


def fast_fused_backward(dy, x, mean, invstd, weight, bias, residual, y, axis, num_threads, out,
                        int code, double slope, bint from_y, dresidual_out=None):
    """batch_norm_backward through the post-operation stage (every gradient asked for; a new
    dresidual, or dresidual_out when it is a canonical array apart from every other array) for
    the common case, or None: g = dy * act'(z) into dresidual (from y
    directly when from_y, else z recomputed from x, the statistics, weight, bias and the
    residual), then the plain backward of g -- the Python route's steps and arithmetic."""
    cdef Geometry g
    cdef int nt = _fast_threads(num_threads)
    cdef Py_ssize_t C, c
    cdef double* buf
    cdef int rc
    cdef int t
    cdef cnp.dtype gdt
    cdef cbn_post post
    cdef cnp.ndarray src
    if _T == NULL or nt < 0 or not _fast_array(x) or not _fast_array(dy):
        return None
    t = cnp.PyArray_TYPE(<cnp.ndarray>x)
    for a in (dy, y if from_y else None, residual):
        if a is not None and not (_fast_array(a) and cnp.PyArray_TYPE(<cnp.ndarray>a) == t
                                  and cnp.PyArray_SAMESHAPE(<cnp.ndarray>a, <cnp.ndarray>x)):
            return None
    if from_y and y is None:
        return None
    if not _fast_geometry(<cnp.ndarray>x, axis, &g) or g.n == 0:
        return None
    C = g.C
    if mean is None or invstd is None:
        return None
    if not (_fast_vector(mean, C) and _fast_vector(invstd, C) and _fast_vector(weight, C)
            and _fast_vector(bias, C)):
        return None
    dx = _fast_out(out, <cnp.ndarray>x)
    if dx is None or not _no_partial_overlap(<cnp.ndarray>dx, <cnp.ndarray>dy):
        return None
    for a in (y, residual):
        if a is not None and not _no_partial_overlap(<cnp.ndarray>dx, <cnp.ndarray>a):
            return None
    buf = <double*>malloc(6 * C * sizeof(double))  # mean, invstd, weight; centre, scale, shift
    if buf == NULL:
        return None
    _vcopy(mean, C, 0.0, buf)
    _vcopy(invstd, C, 1.0, buf + C)
    _vcopy(weight, C, 1.0, buf + 2 * C)
    if from_y:  # the identity (not read: direct)
        for c in range(C):
            buf[3 * C + c] = 0.0
            buf[4 * C + c] = 1.0
            buf[5 * C + c] = 0.0
    else:
        _vcopy(mean, C, 0.0, buf + 3 * C)
        for c in range(C):  # invstd * weight, as the Python route's float64 product
            buf[4 * C + c] = buf[C + c] * buf[2 * C + c] if weight is not None else buf[C + c]
        _vcopy(bias, C, 0.0, buf + 5 * C)
    if dresidual_out is None:
        grad = _new_like(<cnp.ndarray>x)
    else:
        grad = _fast_out(dresidual_out, <cnp.ndarray>x)
        if grad is not None:
            for a in (dy, x, y, residual, dx):
                if a is not None and not _disjoint(<cnp.ndarray>grad, <cnp.ndarray>a):
                    grad = None
                    break
        if grad is None:
            free(buf)
            return None
    src = <cnp.ndarray>(y if from_y else x)
    _fill_post(&post, code, slope, None if from_y else residual, dy, from_y)
    sdy = _new_vector(C)
    sdyx = _new_vector(C)
    if t == cnp.NPY_FLOAT32:
        with nogil:
            rc = _T.inference_f32(<const float*>cnp.PyArray_DATA(src),
                                  <float*>cnp.PyArray_DATA(<cnp.ndarray>grad), &g, nt,
                                  buf + 3 * C, buf + 4 * C, buf + 5 * C, CBN_ACT_NONE, &post)
            if rc == 0:
                rc = _T.backward_f32(<const float*>cnp.PyArray_DATA(<cnp.ndarray>grad), NULL,
                                     <const float*>cnp.PyArray_DATA(<cnp.ndarray>x),
                                     <float*>cnp.PyArray_DATA(<cnp.ndarray>dx), &g, nt, buf,
                                     buf + C, buf + 2 * C, True,
                                     <double*>cnp.PyArray_DATA(<cnp.ndarray>sdy),
                                     <double*>cnp.PyArray_DATA(<cnp.ndarray>sdyx))
    else:
        with nogil:
            rc = _T.inference_f64(<const double*>cnp.PyArray_DATA(src),
                                  <double*>cnp.PyArray_DATA(<cnp.ndarray>grad), &g, nt,
                                  buf + 3 * C, buf + 4 * C, buf + 5 * C, CBN_ACT_NONE, &post)
            if rc == 0:
                rc = _T.backward_f64(<const double*>cnp.PyArray_DATA(<cnp.ndarray>grad), NULL,
                                     <const double*>cnp.PyArray_DATA(<cnp.ndarray>x),
                                     <double*>cnp.PyArray_DATA(<cnp.ndarray>dx), &g, nt, buf,
                                     buf + C, buf + 2 * C, True,
                                     <double*>cnp.PyArray_DATA(<cnp.ndarray>sdy),
                                     <double*>cnp.PyArray_DATA(<cnp.ndarray>sdyx))
    if rc != 0:
        free(buf)
        _check_rc(rc)
    _dweight_from_sums(<const double*>cnp.PyArray_DATA(<cnp.ndarray>sdyx), buf + C,
                       <double*>cnp.PyArray_DATA(<cnp.ndarray>sdyx), C)
    free(buf)
    gdt = _gradient_dtype((<cnp.ndarray>x).descr,
                          None if weight is None else (<cnp.ndarray>weight).descr)
    dw, db = _as_gradient(<cnp.ndarray>sdyx, gdt), _as_gradient(<cnp.ndarray>sdy, gdt)
    if residual is None:
        return BackwardResult(dx, dw, db)
    return FusedBackwardResult(dx, dw, db, grad)
