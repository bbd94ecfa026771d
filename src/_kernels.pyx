# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
# cython: initializedcheck=False, nonecheck=False, embedsignature=True
"""One SIMD level's batch-norm kernels (float32, float64, float16 and bfloat16; GIL-free, OpenMP).

This module is compiled once per SIMD level (meson.build) and holds only ``noexcept nogil``
code, each concern in its own file below, written once for every element type on top of the
explicit-SIMD C loops of cbn_kernels.h: the fused type ``elem`` is the type of the data in
memory, ``floating`` the type of the coefficients and of the arithmetic (float for float32
and the 16-bit formats, whose loads widen to float32 in registers; double for float64).  The
two are tied by the table's typed entries at the bottom (each passes a ``floating`` tag
matching its ``elem``) and carried together from there, so only the four matching pairs are
reached.  Cython type-checks every pair of a function's fused types all the same, so the C
calls cast coefficient pointers to the type their branch expects.  Its one Python-visible
function, ``table``, hands the compile-once module (_core.pyx) the level's entries
(cbn_table.h).  The design is described in ARCHITECTURE.md beside this file.

Conventions: arguments marked IN are read, OUT are written (named ``*_out``); every function
called inside a parallel region is ``noexcept nogil``.
"""

from libc.stdlib cimport malloc, free
from libc.math cimport sqrt, fabs, isfinite
from cpython.pycapsule cimport PyCapsule_New, PyCapsule_GetPointer
from cython.parallel cimport prange, threadid

from cbn_shared cimport *
from cbn_simd cimport *

ctypedef fused floating:
    float
    double

ctypedef fused elem:
    float
    double
    cbn_f16
    cbn_bf16

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
include "kernels_masked.pxi"
include "kernels_floor.pxi"
include "kernels_tasks.pxi"


# ------------------------------------------------------------------------------------ the table
# Typed entries for cbn_table.h, one per element type: each ties the data's type (elem) to its
# arithmetic type (float for float32 and the 16-bit formats, double for float64), so only those
# four pairs of the fused kernels are built.  The forward, inference and backward kernels
# decide their own thread count from the requested one; moments and dx_from_sums get it decided
# here.

cdef int _moments_of(const elem* x, const Geometry* g, int nt_req, double* mean_out,
                     double* m2_out, floating tag) noexcept nogil:
    cdef cbn_plan plan = cbn_plan_of(
        g, _threads_for(g.outer * g.C * g.inner, nt_req, cbn_tasks_of(g)), 0, 0)
    return _moments(x, g, &plan, mean_out, m2_out, tag)


cdef inline int _saved_act(const void* ym) noexcept nogil:
    """The activation of a backward table entry: its saved output ym is that of the fused ReLU,
    the only activation so far (NULL: none)."""
    return CBN_ACT_RELU if ym != NULL else CBN_ACT_NONE


# The entries of one element type E with arithmetic type A (a macro would do in C: here each
# is spelled out).
cdef int _forward_f32(const float* x, float* y_out, const Geometry* g, int nt, double eps,
                     const double* w, const double* b, double* mean_out, double* var_out,
                     double* invstd_out, int act, const cbn_post* post) noexcept nogil:
    return _forward(x, y_out, g, nt, eps, w, b, mean_out, var_out, invstd_out, act, post,
                    <float>0)


cdef int _moments_f32(const float* x, const Geometry* g, int nt, double* mean_out,
                     double* m2_out) noexcept nogil:
    return _moments_of(x, g, nt, mean_out, m2_out, <float>0)


cdef int _inference_f32(const float* x, float* y_out, const Geometry* g, int nt,
                       const double* centre, const double* scale, const double* shift,
                       int act, const cbn_post* post) noexcept nogil:
    return _inference(x, y_out, g, nt, centre, scale, shift, act, post, <float>0)


cdef int _backward_f32(const float* dy, const float* ym, const float* x, float* dx_out,
                      const Geometry* g, int nt, const double* mean, const double* invstd,
                      const double* w, bint with_dot, double* sdy_out,
                      double* sdyx_out) noexcept nogil:
    return _backward(dy, ym, _saved_act(ym), x, dx_out, g, nt, mean, invstd, w, with_dot,
                     sdy_out, sdyx_out, <float>0)


cdef int _dx_from_sums_f32(const float* dy, const float* ym, const float* x, float* dx_out,
                          const Geometry* g, int nt, double n_total, const double* mean,
                          const double* invstd, const double* w, const double* sdy,
                          const double* sdyx) noexcept nogil:
    return _dx_from_sums(dy, ym, _saved_act(ym), x, dx_out, g, nt, n_total, mean, invstd, w,
                         sdy, sdyx, <float>0)


cdef int _forward_f64(const double* x, double* y_out, const Geometry* g, int nt, double eps,
                     const double* w, const double* b, double* mean_out, double* var_out,
                     double* invstd_out, int act, const cbn_post* post) noexcept nogil:
    return _forward(x, y_out, g, nt, eps, w, b, mean_out, var_out, invstd_out, act, post,
                    <double>0)


cdef int _moments_f64(const double* x, const Geometry* g, int nt, double* mean_out,
                     double* m2_out) noexcept nogil:
    return _moments_of(x, g, nt, mean_out, m2_out, <double>0)


cdef int _inference_f64(const double* x, double* y_out, const Geometry* g, int nt,
                       const double* centre, const double* scale, const double* shift,
                       int act, const cbn_post* post) noexcept nogil:
    return _inference(x, y_out, g, nt, centre, scale, shift, act, post, <double>0)


cdef int _backward_f64(const double* dy, const double* ym, const double* x, double* dx_out,
                      const Geometry* g, int nt, const double* mean, const double* invstd,
                      const double* w, bint with_dot, double* sdy_out,
                      double* sdyx_out) noexcept nogil:
    return _backward(dy, ym, _saved_act(ym), x, dx_out, g, nt, mean, invstd, w, with_dot,
                     sdy_out, sdyx_out, <double>0)


cdef int _dx_from_sums_f64(const double* dy, const double* ym, const double* x, double* dx_out,
                          const Geometry* g, int nt, double n_total, const double* mean,
                          const double* invstd, const double* w, const double* sdy,
                          const double* sdyx) noexcept nogil:
    return _dx_from_sums(dy, ym, _saved_act(ym), x, dx_out, g, nt, n_total, mean, invstd, w,
                         sdy, sdyx, <double>0)


cdef int _forward_f16(const cbn_f16* x, cbn_f16* y_out, const Geometry* g, int nt, double eps,
                     const double* w, const double* b, double* mean_out, double* var_out,
                     double* invstd_out, int act, const cbn_post* post) noexcept nogil:
    return _forward(x, y_out, g, nt, eps, w, b, mean_out, var_out, invstd_out, act, post,
                    <float>0)


cdef int _moments_f16(const cbn_f16* x, const Geometry* g, int nt, double* mean_out,
                     double* m2_out) noexcept nogil:
    return _moments_of(x, g, nt, mean_out, m2_out, <float>0)


cdef int _inference_f16(const cbn_f16* x, cbn_f16* y_out, const Geometry* g, int nt,
                       const double* centre, const double* scale, const double* shift,
                       int act, const cbn_post* post) noexcept nogil:
    return _inference(x, y_out, g, nt, centre, scale, shift, act, post, <float>0)


cdef int _backward_f16(const cbn_f16* dy, const cbn_f16* ym, const cbn_f16* x, cbn_f16* dx_out,
                      const Geometry* g, int nt, const double* mean, const double* invstd,
                      const double* w, bint with_dot, double* sdy_out,
                      double* sdyx_out) noexcept nogil:
    return _backward(dy, ym, _saved_act(ym), x, dx_out, g, nt, mean, invstd, w, with_dot,
                     sdy_out, sdyx_out, <float>0)


cdef int _dx_from_sums_f16(const cbn_f16* dy, const cbn_f16* ym, const cbn_f16* x, cbn_f16* dx_out,
                          const Geometry* g, int nt, double n_total, const double* mean,
                          const double* invstd, const double* w, const double* sdy,
                          const double* sdyx) noexcept nogil:
    return _dx_from_sums(dy, ym, _saved_act(ym), x, dx_out, g, nt, n_total, mean, invstd, w,
                         sdy, sdyx, <float>0)


cdef int _forward_bf16(const cbn_bf16* x, cbn_bf16* y_out, const Geometry* g, int nt, double eps,
                     const double* w, const double* b, double* mean_out, double* var_out,
                     double* invstd_out, int act, const cbn_post* post) noexcept nogil:
    return _forward(x, y_out, g, nt, eps, w, b, mean_out, var_out, invstd_out, act, post,
                    <float>0)


cdef int _moments_bf16(const cbn_bf16* x, const Geometry* g, int nt, double* mean_out,
                     double* m2_out) noexcept nogil:
    return _moments_of(x, g, nt, mean_out, m2_out, <float>0)


cdef int _inference_bf16(const cbn_bf16* x, cbn_bf16* y_out, const Geometry* g, int nt,
                       const double* centre, const double* scale, const double* shift,
                       int act, const cbn_post* post) noexcept nogil:
    return _inference(x, y_out, g, nt, centre, scale, shift, act, post, <float>0)


cdef int _backward_bf16(const cbn_bf16* dy, const cbn_bf16* ym, const cbn_bf16* x, cbn_bf16* dx_out,
                      const Geometry* g, int nt, const double* mean, const double* invstd,
                      const double* w, bint with_dot, double* sdy_out,
                      double* sdyx_out) noexcept nogil:
    return _backward(dy, ym, _saved_act(ym), x, dx_out, g, nt, mean, invstd, w, with_dot,
                     sdy_out, sdyx_out, <float>0)


cdef int _dx_from_sums_bf16(const cbn_bf16* dy, const cbn_bf16* ym, const cbn_bf16* x, cbn_bf16* dx_out,
                          const Geometry* g, int nt, double n_total, const double* mean,
                          const double* invstd, const double* w, const double* sdy,
                          const double* sdyx) noexcept nogil:
    return _dx_from_sums(dy, ym, _saved_act(ym), x, dx_out, g, nt, n_total, mean, invstd, w,
                         sdy, sdyx, <float>0)


cdef int _wmoments_f32(const float* x, const cbn_weights* w, const Geometry* g, int nt,
                      double* sw_out, double* mean_out, double* m2_out) noexcept nogil:
    return _weighted_moments(x, g, w, nt, sw_out, mean_out, m2_out, <float>0)


cdef int _wmoments_f64(const double* x, const cbn_weights* w, const Geometry* g, int nt,
                      double* sw_out, double* mean_out, double* m2_out) noexcept nogil:
    return _weighted_moments(x, g, w, nt, sw_out, mean_out, m2_out, <double>0)


cdef int _wmoments_f16(const cbn_f16* x, const cbn_weights* w, const Geometry* g, int nt,
                      double* sw_out, double* mean_out, double* m2_out) noexcept nogil:
    return _weighted_moments(x, g, w, nt, sw_out, mean_out, m2_out, <float>0)


cdef int _wmoments_bf16(const cbn_bf16* x, const cbn_weights* w, const Geometry* g, int nt,
                      double* sw_out, double* mean_out, double* m2_out) noexcept nogil:
    return _weighted_moments(x, g, w, nt, sw_out, mean_out, m2_out, <float>0)


cdef int _wdx_f32(const float* g, const float* x, const cbn_weights* w, const Geometry* geo,
                 float* dx_out, int nt, const double* a, const double* b, const double* d,
                 const double* mean) noexcept nogil:
    return _weighted_dx(g, x, geo, w, dx_out, nt, a, b, d, mean, <float>0)


cdef int _wdx_f64(const double* g, const double* x, const cbn_weights* w, const Geometry* geo,
                 double* dx_out, int nt, const double* a, const double* b, const double* d,
                 const double* mean) noexcept nogil:
    return _weighted_dx(g, x, geo, w, dx_out, nt, a, b, d, mean, <double>0)


cdef int _wdx_f16(const cbn_f16* g, const cbn_f16* x, const cbn_weights* w, const Geometry* geo,
                 cbn_f16* dx_out, int nt, const double* a, const double* b, const double* d,
                 const double* mean) noexcept nogil:
    return _weighted_dx(g, x, geo, w, dx_out, nt, a, b, d, mean, <float>0)


cdef int _wdx_bf16(const cbn_bf16* g, const cbn_bf16* x, const cbn_weights* w, const Geometry* geo,
                 cbn_bf16* dx_out, int nt, const double* a, const double* b, const double* d,
                 const double* mean) noexcept nogil:
    return _weighted_dx(g, x, geo, w, dx_out, nt, a, b, d, mean, <float>0)


cdef int _pad_f32(float* y, const float* src, const Geometry* g, const cbn_weights* w,
                 int nt) noexcept nogil:
    return _fill_padding(y, src, g, w, nt, <float>0)


cdef int _pad_f64(double* y, const double* src, const Geometry* g, const cbn_weights* w,
                 int nt) noexcept nogil:
    return _fill_padding(y, src, g, w, nt, <double>0)


cdef int _pad_f16(cbn_f16* y, const cbn_f16* src, const Geometry* g, const cbn_weights* w,
                 int nt) noexcept nogil:
    return _fill_padding(y, src, g, w, nt, <float>0)


cdef int _pad_bf16(cbn_bf16* y, const cbn_bf16* src, const Geometry* g, const cbn_weights* w,
                 int nt) noexcept nogil:
    return _fill_padding(y, src, g, w, nt, <float>0)


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
_TABLE.forward_f32 = _forward_f32
_TABLE.moments_f32 = _moments_f32
_TABLE.inference_f32 = _inference_f32
_TABLE.backward_f32 = _backward_f32
_TABLE.dx_from_sums_f32 = _dx_from_sums_f32
_TABLE.forward_f64 = _forward_f64
_TABLE.moments_f64 = _moments_f64
_TABLE.inference_f64 = _inference_f64
_TABLE.backward_f64 = _backward_f64
_TABLE.dx_from_sums_f64 = _dx_from_sums_f64
_TABLE.forward_f16 = _forward_f16
_TABLE.moments_f16 = _moments_f16
_TABLE.inference_f16 = _inference_f16
_TABLE.backward_f16 = _backward_f16
_TABLE.dx_from_sums_f16 = _dx_from_sums_f16
_TABLE.forward_bf16 = _forward_bf16
_TABLE.moments_bf16 = _moments_bf16
_TABLE.inference_bf16 = _inference_bf16
_TABLE.backward_bf16 = _backward_bf16
_TABLE.dx_from_sums_bf16 = _dx_from_sums_bf16
_TABLE.wmoments_f32 = _wmoments_f32
_TABLE.wmoments_f64 = _wmoments_f64
_TABLE.wmoments_f16 = _wmoments_f16
_TABLE.wmoments_bf16 = _wmoments_bf16
_TABLE.wdx_f32 = _wdx_f32
_TABLE.wdx_f64 = _wdx_f64
_TABLE.wdx_f16 = _wdx_f16
_TABLE.wdx_bf16 = _wdx_bf16
_TABLE.pad_f32 = _pad_f32
_TABLE.pad_f64 = _pad_f64
_TABLE.pad_f16 = _pad_f16
_TABLE.pad_bf16 = _pad_bf16
_TABLE.half_convert = cbn_half_convert
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
