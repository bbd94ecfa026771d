"""float16 inputs: the float32 kernels applied chunk by chunk.

Each entry has the signature of its counterpart in the compiled kernels (``forward_train``,
``inference``, ``backward``), so the public functions dispatch on the dtype alone.  A float16
array, seen as ``(outer, C, inner)``, is cut into chunks of about ``CHUNK_ELEMS`` elements along
``outer`` (or, when a row ``o`` holds more, along ``inner`` within each row).  Each chunk is
widened to float32 in a bounded work buffer and handed to the float32 kernels; statistics of
the chunks are merged with Chan's formula in float64, and results are narrowed back into the
float16 output.  So float16 data gets float32 arithmetic with float64 accumulation, and memory
stays at the outputs plus a few chunk buffers.  Chunk boundaries depend only on the shape, so
results do not depend on the thread count.
"""

import functools

import numpy as np

from ._atomic import deferred_interrupt
from ._dispatch import kernels as _k

F32 = np.dtype(np.float32)
F64 = np.dtype(np.float64)

#: Elements per chunk: large enough for the kernels' thread team, small enough for L2/L3.
CHUNK_ELEMS = 1 << 18


def _chunks(outer, C, inner):
    """The chunks of an (outer, C, inner) array: (slices, chunk shape) pairs.

    Whole rows ``o`` while a row holds at most CHUNK_ELEMS elements, else slices of the inner
    axis of one row at a time; so a chunk holds at most max(CHUNK_ELEMS, C) elements (all C
    channels of one position are needed together)."""
    if inner <= 1 or C * inner <= CHUNK_ELEMS:
        rows = max(1, CHUNK_ELEMS // max(1, C * inner))
        for o0 in range(0, outer, rows):
            o1 = min(outer, o0 + rows)
            yield (slice(o0, o1), slice(None), slice(None)), (o1 - o0, C, inner)
    else:
        cols = max(1, CHUNK_ELEMS // max(1, C))
        for o in range(outer):
            for i0 in range(0, inner, cols):
                i1 = min(inner, i0 + cols)
                yield (slice(o, o + 1), slice(None), slice(i0, i1)), (1, C, i1 - i0)


def _whole(entry):
    """The entry's chunk loop as one step for Ctrl-C (cbn/_atomic.py): an in-place call is
    never left with some chunks written."""
    @functools.wraps(entry)
    def run(*args, **kwargs):
        with deferred_interrupt():
            return entry(*args, **kwargs)
    return run


def _widen(a3, sl):
    """The float32 copy of one chunk (contiguous)."""
    return np.ascontiguousarray(a3[sl], dtype=F32)


def _merge(n_a, mean_a, m2_a, n_b, mean_b, m2_b):
    """Chan et al.: the moments of two disjoint parts, per channel (float64)."""
    n = n_a + n_b
    delta = mean_b - mean_a
    f = n_b / n
    return n, mean_a + delta * f, m2_a + m2_b + delta * delta * (n_a * f)


@_whole
def forward_train(x, y_out, outer, C, inner, weight, bias, eps, mean_out, var_out, invstd_out,
                  num_threads, relu=False, post_act=-1, slope=0.0, residual=None):
    """Training forward for a C-contiguous float16 ``x`` into float16 ``y_out``."""
    x3 = x.reshape(outer, C, inner)
    n, mean, m2 = 0.0, np.zeros(C), np.zeros(C)
    cmean, cm2 = np.empty(C), np.empty(C)
    for sl, shape in _chunks(outer, C, inner):
        _k.moments(_widen(x3, sl), shape[0], C, shape[2], cmean, cm2, num_threads)
        n, mean, m2 = _merge(n, mean, m2, float(shape[0] * shape[2]), cmean, cm2)
    var = m2 / n
    invstd = 1.0 / np.sqrt(var + eps)
    mean_out[...] = mean
    var_out[...] = var
    invstd_out[...] = invstd
    scale = invstd if weight is None else invstd * weight
    shift = np.zeros(C) if bias is None else np.ascontiguousarray(bias, F64)
    _affine(x3, y_out.reshape(outer, C, inner), outer, C, inner, mean,
            np.ascontiguousarray(scale), shift, num_threads, relu, post_act, slope, residual)


@_whole
def inference(x, y_out, outer, C, inner, centre, scale, shift, num_threads, relu=False,
              post_act=-1, slope=0.0, residual=None, dy=None, direct=False):
    """``(x - centre) * scale + shift`` (then ReLU, or the post-operation of
    ``_core.inference``) for float16 ``x`` into float16 ``y_out``."""
    _affine(x.reshape(outer, C, inner), y_out.reshape(outer, C, inner), outer, C, inner,
            centre, scale, shift, num_threads, relu, post_act, slope, residual, dy, direct)


def _affine(x3, y3, outer, C, inner, centre, scale, shift, num_threads, relu, post_act=-1,
            slope=0.0, residual=None, dy=None, direct=False):
    r3 = None if residual is None else residual.reshape(outer, C, inner)
    g3 = None if dy is None else dy.reshape(outer, C, inner)
    for sl, shape in _chunks(outer, C, inner):
        xc = _widen(x3, sl)
        if post_act >= 0:  # the residual and dy widened too: float32 arithmetic throughout
            _k.inference(xc, xc, shape[0], C, shape[2], centre, scale, shift, num_threads,
                         post_act=post_act, slope=slope,
                         residual=None if r3 is None else _widen(r3, sl),
                         dy=None if g3 is None else _widen(g3, sl), direct=direct)
        else:
            _k.inference(xc, xc, shape[0], C, shape[2], centre, scale, shift, num_threads, relu)
        y3[sl] = xc  # narrows to float16 with round-to-nearest-even


@_whole
def backward(dy, x, dx_out, outer, C, inner, mean, invstd, weight, with_dot, sdy_out, sdyx_out,
             num_threads, y_mask=None):
    """Backward for float16 arrays: float64 sums, and dx (float16) unless ``dx_out`` is None."""
    x3, dy3 = x.reshape(outer, C, inner), dy.reshape(outer, C, inner)
    y3 = None if y_mask is None else y_mask.reshape(outer, C, inner)
    need_dot = with_dot or dx_out is not None
    sdy_out[...] = 0.0
    sdyx_out[...] = 0.0
    a, d = np.empty(C), np.empty(C)
    chunks = list(_chunks(outer, C, inner))
    for sl, shape in chunks:
        ym = None if y3 is None else _widen(y3, sl)
        _k.backward(_widen(dy3, sl), _widen(x3, sl), None, shape[0], C, shape[2], mean, invstd,
                    weight, need_dot, a, d, num_threads, ym)
        sdy_out += a
        sdyx_out += d
    if dx_out is None:
        return
    dx3 = dx_out.reshape(outer, C, inner)
    n = float(outer * inner)
    for sl, shape in chunks:
        ym = None if y3 is None else _widen(y3, sl)
        xc, dyc = _widen(x3, sl), _widen(dy3, sl)
        _k.backward_dx_from_sums(dyc, xc, dyc, shape[0], C, shape[2], mean, invstd, weight,
                                 sdy_out, sdyx_out, n, num_threads, ym)
        dx3[sl] = dyc
