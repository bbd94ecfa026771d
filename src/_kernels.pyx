# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
# cython: initializedcheck=False, nonecheck=False, embedsignature=True
"""One SIMD level's batch-norm kernels (float32 and float64, GIL-free, OpenMP).

This module is compiled once per SIMD level (meson.build) and holds only ``noexcept nogil``
code, each concern in its own file below, written once for both float types (the fused type
``floating``) on top of the explicit-SIMD C loops of cbn_kernels.h.  Its one Python-visible
function, ``table``, hands the compile-once module (_core.pyx) the level's entries
(cbn_table.h).  The design is described in ARCHITECTURE.md beside this file.

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

include "kernels_point.pxi"
include "kernels_template.pxi"
include "kernels_statistics.pxi"
include "kernels_elementwise.pxi"
include "kernels_post.pxi"
include "kernels_wide.pxi"
include "kernels_forward.pxi"
include "kernels_backward.pxi"
include "kernels_floor.pxi"
include "kernels_tasks.pxi"


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


cdef void _math_entry(int fn, const floating* x, floating* out, floating* aux,
                      Py_ssize_t n) noexcept nogil:
    if floating is float:
        cbn_math_eval_f32(fn, x, out, aux, n)
    else:
        cbn_math_eval_f64(fn, x, out, aux, n)


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
_TABLE.math_f32 = _math_entry[float]
_TABLE.math_f64 = _math_entry[double]
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
