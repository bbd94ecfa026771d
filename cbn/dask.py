"""Batch normalization on Dask arrays, chunk by chunk, with exact global statistics.

``import cbn.dask`` (needs ``pip install 'cbn[dask]'``) gives the three batch-norm functions for
:class:`dask.array.Array` inputs chunked along any axes but the channel axis:

* :func:`batch_norm_forward`: per-chunk :func:`cbn.moments` -> tree reduction with
  :func:`cbn.merge_moments` -> per-chunk :func:`cbn.normalize`;
* :func:`batch_norm_backward`: per-chunk :func:`cbn.backward_reduce` -> tree sum -> per-chunk
  :func:`cbn.backward_elemt`;
* :func:`batch_norm_inference`: per-chunk :func:`cbn.batch_norm_inference`.

Only per-channel vectors (a few times C float64 per chunk) travel between tasks; no task ever
holds more than one chunk of the array, so the arrays may be larger than memory.

The training functions **compute the statistics eagerly** (one pass over the input, with the
current scheduler) and return them as NumPy arrays; the normalized output / ``dx`` stay lazy
Dask arrays whose computation reads the input a second time.  If producing ``x`` is costly,
``x = x.persist()`` first.  This is what makes ``mean``/``invstd`` concrete and lets the
running statistics be updated in place, as in the in-memory functions.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any, List, Optional, Sequence

import numpy as np
from numpy.typing import ArrayLike

from . import _conventions as conv
from . import _masked as M
from . import _validation as v
from ._batch_norm import batch_norm_inference as _np_inference
from ._batch_norm import _activation_gradient
from ._moments import (
    Moments,
    _backward_sums,
    backward_elemt,
    backward_reduce,
    merge_moments,
    moments,
    normalize,
)
from ._dispatch import kernels as _k
from ._types import BackwardResult, ForwardResult, FusedBackwardResult

if TYPE_CHECKING:  # pragma: no cover
    import dask.array as _da

__all__ = ["batch_norm_forward", "batch_norm_backward", "batch_norm_inference"]

#: Fan-in of the tree reductions of per-chunk statistics.
SPLIT_EVERY = 8

_F64 = v.F64


def _import_dask():
    try:
        import dask
        import dask.array as da
    except ImportError as exc:  # pragma: no cover - exercised only without dask
        raise ImportError(
            "cbn.dask needs Dask: pip install 'cbn[dask]' (installs dask[array] and "
            f"distributed). Cause: {exc}"
        ) from exc
    return dask, da


def _check_array(x, name, axis, *, need_channel_chunk=True):
    """Validate a Dask array argument; returns the normalised channel axis."""
    dask, da = _import_dask()
    if not isinstance(x, da.Array):
        raise TypeError(
            f"{name} must be a dask.array.Array, got {type(x).__name__} "
            f"(use cbn.batch_norm_* for in-memory arrays, or dask.array.from_array)"
        )
    v.check_float_dtype(x.dtype, name)
    v.check_ndim(x.shape, name)
    a = v.check_axis(axis, x.ndim)
    if need_channel_chunk and len(x.chunks[a]) != 1:
        raise ValueError(
            f"{name} is chunked along the channel axis (axis={a}, chunks {x.chunks[a]}); the "
            f"channel axis must be a single chunk: use {name}.rechunk({{{a}: -1}})"
        )
    if math.isnan(x.shape[a]):
        raise ValueError(f"{name} has an unknown size along the channel axis (axis={a})")
    return a


def _same_shape(s, t):
    """Tuples equal, where NaN (an unknown Dask size) equals NaN."""
    return len(s) == len(t) and all(
        a == b or (isinstance(a, float) and isinstance(b, float) and math.isnan(a)
                   and math.isnan(b)) for a, b in zip(s, t))


def _has_nan(chunks):
    return any(isinstance(c, float) and math.isnan(c) for cc in chunks for c in cc)


def _meta(x):
    return np.empty((0,) * x.ndim, x.dtype)


def _chunk_threads(num_threads):
    return v.check_threads(num_threads)  # validated once, here; 0 = all threads


# ------------------------------------------------------------------------------- tree reduction

def _tree(dask, leaves: List[Any], combine, split_every: int):
    """Reduce delayed leaves in a tree of fan-in ``split_every`` with ``combine(*parts)``."""
    combine_d = dask.delayed(combine, pure=True)
    level = list(leaves)
    while len(level) > 1:
        level = [combine_d(*level[i:i + split_every]) for i in range(0, len(level), split_every)]
    return level[0]


def _chunk_moments(block, axis, nt, weights=None, name=None):
    kw = {} if weights is None else {name: weights}
    return moments(block, axis=axis, num_threads=nt or None, **kw)


def _sum_parts(*parts):
    """Sum (count, sum_dy, sum_dy_xmu) triples (new arrays)."""
    n = sum(p[0] for p in parts)
    sdy = parts[0][1].copy()
    sdyx = parts[0][2].copy()
    for p in parts[1:]:
        sdy += p[1]
        sdyx += p[2]
    return (n, sdy, sdyx)


def _chunk_backward_sums(dy, x, axis, mean, with_dot, nt):
    x, axis = v.check_input(x, axis)
    dy = v.kernel_dtype(dy, "dy")  # native byte order, as the in-memory entries convert
    xk, ak, perm = v.kernel_view(x, axis)
    outer, C, inner = v.geometry(xk.shape, ak)
    s = _backward_sums(v.view_like(dy, perm), xk, outer, C, inner, mean, with_dot, nt)
    return (outer * inner, s.sum_dy, s.sum_dy_xmu)


def _weights_like_x(mask, sample_weight, x, axis):
    """The mask or weights of a Dask call as a Dask array of x's ndim whose chunks pair with
    x's: the channel axis of length 1 (one weight per position) or C (one per element), the
    other axes chunked as x.  Returns (array, keyword name) or (None, None)."""
    if mask is None and sample_weight is None:
        return None, None
    if mask is not None and sample_weight is not None:
        M._checked_values(mask, sample_weight, x.dtype)  # the error of both
    dask, da = _import_dask()
    name = "mask" if mask is not None else "sample_weight"
    if any(math.isnan(s) for s in x.shape):
        raise ValueError(f"{name}= needs the chunk sizes of x, unknown here: call "
                         f"x.compute_chunk_sizes() first")
    w = mask if mask is not None else sample_weight
    if not isinstance(w, da.Array):
        w = M._as_array(w, name)
    if name == "mask" and w.dtype != np.bool_:
        raise TypeError(f"mask must be a boolean array (True where a position counts), got "
                        f"dtype {w.dtype}")
    if name == "sample_weight" and (w.dtype == np.bool_ or w.dtype.kind not in "fiu"):
        raise TypeError(f"sample_weight must be a real float or integer array, got dtype "
                        f"{w.dtype}" + ("; pass it as mask=" if w.dtype == np.bool_ else ""))
    target, via_positions = M.target_shape(w.shape, x.shape, axis, name)
    if via_positions:
        positions = x.shape[:axis] + x.shape[axis + 1:]
        w = da.expand_dims(da.broadcast_to(w, positions), axis) if isinstance(
            w, da.Array) else np.expand_dims(np.broadcast_to(w, positions), axis)
    chunks = tuple((1,) if i == axis and target[axis] == 1 else c
                   for i, c in enumerate(x.chunks))
    w = da.broadcast_to(da.asarray(w), target) if isinstance(w, da.Array) else \
        da.from_array(np.broadcast_to(w, target), chunks=chunks)
    return w.rechunk(chunks), name


def _block_keys(x) -> List[Any]:
    # unoptimized: blocks keep their own keys, so that dy and x sharing inputs (dy = f(x)) are
    # computed once in the combined graph instead of once per fused copy
    return list(x.to_delayed(optimize_graph=False).ravel())


def _global_moments(x, axis, nt, split_every=SPLIT_EVERY, weights=None,
                    name=None) -> Moments:
    """Compute (eagerly) the exact moments of a Dask array, chunk by chunk (over the mask or
    weights ``weights``, chunked as _weights_like_x gives them, when given)."""
    dask, _ = _import_dask()
    chunk_d = dask.delayed(_chunk_moments, pure=True)
    if weights is None:
        leaves = [chunk_d(b, axis, nt) for b in _block_keys(x)]
    else:
        leaves = [chunk_d(b, axis, nt, wb, name)
                  for b, wb in zip(_block_keys(x), _block_keys(weights))]
    (m,) = dask.compute(_tree(dask, leaves, merge_moments, split_every))
    return m


def _like_x(a, x, name):
    """A Dask array argument shaped like x, in x's chunks (rechunked when they differ)."""
    dask, da = _import_dask()
    if not isinstance(a, da.Array):
        raise TypeError(f"{name} must be a dask.array.Array, got {type(a).__name__}")
    v.check_float_dtype(a.dtype, name)
    v.check_like(a, x.shape, None, name, same_shape=_same_shape)
    if not all(_same_shape(ca, cx) for ca, cx in zip(a.chunks, x.chunks)):
        if _has_nan(x.chunks) or _has_nan(a.chunks):
            raise ValueError(f"{name} and x have different chunks of unknown size; give them "
                             f"the same chunks (or call compute_chunk_sizes() on both)")
        a = a.rechunk(x.chunks)
    return a


def _post_args(x, activation, residual, negative_slope):
    """The validated fused post-operation of a Dask call: (blocks to map with x, keywords)."""
    v.check_epilogue(activation, negative_slope)
    arrays = [] if residual is None else [_like_x(residual, x, "residual")]
    return arrays, dict(activation=activation, negative_slope=negative_slope)


# ------------------------------------------------------------------------------------ forward

def _normalize_block(block, residual=None, *, axis, mean, scale, shift, nt, post):
    return normalize(block, mean, scale, None, shift, axis=axis, num_threads=nt or None,
                     residual=residual, **post)


def _normalize_masked_block(block, weights, residual=None, *, axis, mean, scale, shift, nt,
                            post, wname, masked_output):
    """normalize, then the padding option where the weight is 0 ("zero": 0, "keep": x)."""
    y = _normalize_block(block, residual, axis=axis, mean=mean, scale=scale, shift=shift,
                         nt=nt, post=post)
    pad = M.padding_of(block, axis, **{wname: weights})
    np.copyto(y, 0 if masked_output == "zero" else block, where=pad)
    return y


def batch_norm_forward(x: "_da.Array", weight: Optional[ArrayLike] = None,
                       bias: Optional[ArrayLike] = None, *, eps: float = 1e-5,
                       running_mean: Optional[np.ndarray] = None,
                       running_var: Optional[np.ndarray] = None, momentum: Any = conv.DEFAULT,
                       axis: int = 1, num_threads: Optional[int] = 1,
                       split_every: int = SPLIT_EVERY, activation: Optional[str] = None,
                       residual: Optional["_da.Array"] = None,
                       negative_slope: Optional[float] = None,
                       convention: str = "torch", mask: Any = None, sample_weight: Any = None,
                       masked_output: str = "normalize") -> ForwardResult:
    """Training-mode batch normalization of a Dask array, with exact batch statistics.

    The statistics are those of the whole array (all chunks), computed eagerly by per-chunk
    :func:`cbn.moments` and a tree of :func:`cbn.merge_moments`; the output is a lazy Dask
    array, normalized chunk by chunk.  Mirrors :func:`cbn.batch_norm_forward` (no ``out``).

    Parameters
    ----------
    x : dask.array.Array of float16, bfloat16, float32 or float64, ndim >= 2
        The input, chunked along any axes except ``axis`` (the channel axis must be a single
        chunk).
    weight, bias : array_like of shape (C,), optional
        Affine parameters (NumPy); None means 1 and 0.
    eps : float, default 1e-5
        Added to the variance; finite and > 0.
    running_mean, running_var : ndarray of shape (C,), optional
        NumPy arrays updated in place as in :func:`cbn.batch_norm_forward` (by the rule of
        ``convention``).  The update happens in this call.
    momentum : float, default: the convention's (0.1 torch, 0.99 keras, 0.9 onnx, 0.99 flax)
        The running-stat update factor, in [0, 1], in the convention's meaning.
    axis : int, default 1
        The channel axis (negative counts from the end).
    num_threads : int or None, default 1
        OpenMP threads *per chunk task*.  Dask already runs chunks in parallel, so the default
        is 1; None means all OpenMP threads per task (for few, large chunks).
    split_every : int, default 8
        Fan-in of the tree reduction of the per-chunk moments (>= 2).
    activation, residual, negative_slope : optional
        ``out = activation(bn(x) + residual)`` chunk by chunk in the same pass, as in
        :func:`cbn.batch_norm_forward`; ``residual`` a Dask array shaped like ``x``.
    convention : {"torch", "keras", "onnx", "flax"}, default "torch"
        The running-statistics rule, as in :func:`cbn.batch_norm_forward`.
    mask, sample_weight, masked_output : optional
        Statistics over the positions a mask or weights select, as in
        :func:`cbn.batch_norm_forward`: a Dask or NumPy array of the same shapes (chunked
        like ``x``, or rechunked to it).

    Returns
    -------
    ForwardResult
        ``(out, mean, invstd)``: ``out`` a lazy Dask array with the chunks and dtype of ``x``;
        ``mean`` and ``invstd`` float64 NumPy arrays of shape (C,).

    Raises
    ------
    TypeError
        If ``x`` is not a float16/bfloat16/float32/float64 Dask array or a parameter is not
        floating point.
    ValueError
        If the channel axis is chunked (use ``x.rechunk({axis: -1})``), on a bad axis or
        shape, ``eps <= 0``, ``momentum`` outside [0, 1], a read-only running statistic, or a
        single value per channel.

    Notes
    -----
    This call computes: it reads all of ``x`` once (with the active Dask scheduler) to get the
    statistics.  Computing ``out`` reads ``x`` again; ``x.persist()`` avoids recomputing an
    expensive ``x``.  Memory: each task holds one chunk and O(C) statistics.
    """
    dask, da = _import_dask()
    a = _check_array(x, "x", axis)
    eps = v.check_eps(eps)
    nt = _chunk_threads(num_threads)
    split_every = _check_split(split_every)
    extra, post = _post_args(x, activation, residual, negative_slope)
    C = x.shape[a]
    w = None if weight is None else v.as_f64(weight, "weight", C)
    b = None if bias is None else v.as_f64(bias, "bias", C)
    conv.check_convention(convention)
    if momentum is conv.DEFAULT:
        momentum = conv.DEFAULT_MOMENTUM[convention]
    momentum = conv.update_factor(
        convention, v.check_running_stats(running_mean, running_var, momentum, C))
    wm, wname = _weights_like_x(mask, sample_weight, x, a)
    if wm is not None:
        return _masked_forward(x, a, wm, wname, M.check_masked_output(masked_output), extra,
                               post, eps, w, b, running_mean, running_var, momentum, nt,
                               split_every, convention)
    if masked_output != "normalize":
        M.check_masked_output(masked_output)
        raise ValueError("masked_output applies with mask= or sample_weight=")
    shape_known = not any(math.isnan(s) for s in x.shape)
    if shape_known:
        n = math.prod(s for i, s in enumerate(x.shape) if i != a)
        v.check_batch_count(n, x.shape)
        if n == 0:
            return ForwardResult(x.copy(), np.full(C, np.nan), np.full(C, np.nan))
    m = _global_moments(x, a, nt, split_every)
    n = m.count
    v.check_batch_count(n)
    if n == 0:
        return ForwardResult(x.copy(), np.full(C, np.nan), np.full(C, np.nan))
    mean = m.mean
    var = m.m2 / n
    invstd = 1.0 / np.sqrt(var + eps)
    scale = invstd if w is None else invstd * w
    shift = np.zeros(C, _F64) if b is None else b
    out = da.map_blocks(_normalize_block, x, *extra, axis=a, mean=mean, scale=scale,
                        shift=shift, nt=nt, post=post, dtype=x.dtype, meta=_meta(x),
                        token="cbn-normalize")
    # the in-memory function's update: float64, rounded once to each statistic's dtype
    _k.update_running(running_mean, running_var, mean, var, n, momentum, False,
                      conv.stores_unbiased(convention))
    return ForwardResult(out, mean, invstd)


def _masked_forward(x, a, wm, wname, masked_output, extra, post, eps, w, b, running_mean,
                    running_var, momentum, nt, split_every, convention):
    """batch_norm_forward with a mask or weights: the masked moments of every chunk merged,
    then the lazy normalization (and padding option)."""
    _, da = _import_dask()
    C = x.shape[a]
    m = _global_moments(x, a, nt, split_every, wm, wname)
    if not np.any(m.count):
        n = math.prod(s for i, s in enumerate(x.shape) if i != a)
        if n == 0:  # an empty batch, as without a mask
            return ForwardResult(x.copy(), np.full(C, np.nan), np.full(C, np.nan))
    sw = np.broadcast_to(np.asarray(m.count, _F64), (C,))
    M.check_training_weights(sw, wname)
    mean, var, var_unbiased = M.statistics(sw, m.mean, m.m2)
    invstd = 1.0 / np.sqrt(var + eps)
    scale = invstd if w is None else invstd * w
    shift = np.zeros(C, _F64) if b is None else b
    if masked_output == "normalize":
        out = da.map_blocks(_normalize_block, x, *extra, axis=a, mean=mean, scale=scale,
                            shift=shift, nt=nt, post=post, dtype=x.dtype, meta=_meta(x),
                            token="cbn-normalize")
    else:
        out = da.map_blocks(_normalize_masked_block, x, wm, *extra, axis=a, mean=mean,
                            scale=scale, shift=shift, nt=nt, post=post, wname=wname,
                            masked_output=masked_output, dtype=x.dtype, meta=_meta(x),
                            token="cbn-normalize-masked")
    _k.update_running(running_mean, running_var, mean,
                      var_unbiased if conv.stores_unbiased(convention) else var, 0, momentum,
                      False, False)
    return ForwardResult(out, mean, invstd)


def _check_split(split_every):
    if isinstance(split_every, bool) or not isinstance(split_every, (int, np.integer)):
        raise TypeError(f"split_every must be an integer >= 2, got {type(split_every).__name__}")
    if split_every < 2:
        raise ValueError(f"split_every must be >= 2, got {split_every}")
    return int(split_every)


# ------------------------------------------------------------------------------------ inference

def _inference_block(block, residual=None, *, axis, mean, var, weight, bias, eps, nt, post,
                     block_info=None):
    loc = block_info[0]["array-location"][axis] if block_info else None
    if loc is not None and (loc[0], loc[1]) != (0, mean.shape[0]):
        sl = slice(loc[0], loc[1])
        mean, var = mean[sl], var[sl]
        weight = None if weight is None else weight[sl]
        bias = None if bias is None else bias[sl]
    return _np_inference(block, mean, var, weight, bias, eps=eps, axis=axis,
                         num_threads=nt or None, residual=residual, **post)


def batch_norm_inference(x: "_da.Array", running_mean: ArrayLike, running_var: ArrayLike,
                         weight: Optional[ArrayLike] = None, bias: Optional[ArrayLike] = None,
                         *, eps: float = 1e-5, axis: int = 1,
                         num_threads: Optional[int] = 1, activation: Optional[str] = None,
                         residual: Optional["_da.Array"] = None,
                         negative_slope: Optional[float] = None) -> "_da.Array":
    """Evaluation-mode batch normalization of a Dask array with fixed statistics.

    Lazy and purely element-wise: :func:`cbn.batch_norm_inference` on each chunk.  Mirrors
    the in-memory function (no ``out``).

    Parameters
    ----------
    x : dask.array.Array of float16, bfloat16, float32 or float64, ndim >= 2
        The input.  Unlike the training functions, any chunking works here, including along
        the channel axis.
    running_mean, running_var : array_like of shape (C,)
        The statistics (NumPy); ``running_var`` must be >= 0.
    weight, bias : array_like of shape (C,), optional
        Affine parameters; None means 1 and 0.
    eps : float, default 1e-5
        Added to the variance; finite and > 0.
    axis : int, default 1
        The channel axis.
    num_threads : int or None, default 1
        OpenMP threads per chunk task (None: all).
    activation, residual, negative_slope : optional
        As in :func:`cbn.batch_norm_inference`; ``residual`` a Dask array shaped like ``x``.

    Returns
    -------
    dask.array.Array
        The normalized array (lazy), chunks and dtype of ``x``.

    Raises
    ------
    TypeError, ValueError
        On bad arguments, naming them; if ``running_var`` has a negative entry.
    """
    _, da = _import_dask()
    a = _check_array(x, "x", axis, need_channel_chunk=False)
    extra, post = _post_args(x, activation, residual, negative_slope)
    eps = v.check_eps(eps)
    nt = _chunk_threads(num_threads)
    C = x.shape[a]
    v.check_inference_stats(running_mean, running_var)
    rm = v.as_f64(running_mean, "running_mean", C)
    rv = v.as_f64(running_var, "running_var", C)
    v.check_running_var(rv)
    w = None if weight is None else v.as_f64(weight, "weight", C)
    b = None if bias is None else v.as_f64(bias, "bias", C)
    return da.map_blocks(_inference_block, x, *extra, axis=a, mean=rm, var=rv, weight=w, bias=b,
                         eps=eps, nt=nt, post=post, dtype=x.dtype, meta=_meta(x),
                         token="cbn-inference")


# ------------------------------------------------------------------------------------ backward

def _gradient_block(dy, x, *src, axis, mean, invstd, weight, bias, nt, post, has_y, has_res):
    """dy * act'(z) of one chunk (the gradient at the activation's input)."""
    return _activation_gradient(dy, x, mean, invstd, weight, bias,
                                src[-1] if has_res else None, src[0] if has_y else None,
                                post["activation"], post["negative_slope"], axis, nt or None)


def _elemt_block(dy, x, *, axis, mean, invstd, weight, sdy, sdyx, count, nt):
    return backward_elemt(dy, x, mean, invstd, weight, sdy, sdyx, count, axis=axis,
                          num_threads=nt or None)


def _chunk_masked_sums(dy, x, weights, axis, mean, nt, name, masked_output):
    """(the chunk's per-channel weight sums, sum_dy, sum_dy_xmu) of a masked backward."""
    kw = {name: weights}
    s = backward_reduce(dy, x, mean, axis=axis, num_threads=nt or None,
                        masked_output=masked_output, **kw)
    count = moments(x, axis=axis, num_threads=nt or None, **kw).count
    return (count, s.sum_dy, s.sum_dy_xmu)


def _masked_elemt_block(dy, x, weights, raw=None, *, axis, mean, invstd, weight, sdy, sdyx,
                        count, nt, wname, masked_output):
    """The masked dx of a chunk; raw: the gradient before a fused activation, which "keep"
    passes through at the padding (dy is then the gradient after it)."""
    dx = backward_elemt(dy, x, mean, invstd, weight, sdy, sdyx, count, axis=axis,
                        num_threads=nt or None, masked_output=masked_output,
                        **{wname: weights})
    if raw is not None:
        np.copyto(dx, raw, where=M.padding_of(x, axis, **{wname: weights}))
    return dx


def _zero_padding_block(g, weights, *, axis, wname):
    return np.where(M.padding_of(g, axis, **{wname: weights}), g.dtype.type(0), g)


def batch_norm_backward(dy: "_da.Array", x: "_da.Array", mean: ArrayLike, invstd: ArrayLike,
                        weight: Optional[ArrayLike] = None, *, axis: int = 1,
                        num_threads: Optional[int] = 1,
                        needs: Sequence[bool] = (True, True, True),
                        split_every: int = SPLIT_EVERY, activation: Optional[str] = None,
                        y: Optional["_da.Array"] = None, bias: Any = v.UNSET,
                        residual: Optional["_da.Array"] = None,
                        negative_slope: Optional[float] = None, mask: Any = None,
                        sample_weight: Any = None, masked_output: str = "normalize") -> Any:
    """Exact gradients of :func:`batch_norm_forward` for Dask arrays.

    Per-chunk :func:`cbn.backward_reduce`, a tree sum of the per-channel sums (computed in this
    call), then a lazy per-chunk :func:`cbn.backward_elemt` for ``dx``.  Mirrors
    :func:`cbn.batch_norm_backward` (no ``out``).

    Parameters
    ----------
    dy : dask.array.Array
        Gradient with respect to the forward output; shape and dtype of ``x`` (rechunked to
        the chunks of ``x`` if they differ).
    x : dask.array.Array of float16, bfloat16, float32 or float64
        The forward input; the channel axis must be a single chunk.
    mean, invstd : array_like of shape (C,)
        The statistics returned by :func:`batch_norm_forward`.
    weight : array_like of shape (C,), optional
        The forward ``weight``; None means 1.
    axis : int, default 1
        The channel axis.
    num_threads : int or None, default 1
        OpenMP threads per chunk task (None: all).
    needs : tuple of 3 or 4 bool, default all
        Which of ``(dx, dweight, dbias)`` -- and, with a residual, ``dresidual`` -- to compute;
        the others are None.
    split_every : int, default 8
        Fan-in of the tree sum (>= 2).
    activation, y, bias, residual, negative_slope : optional
        The fused activation and residual of the forward, as in
        :func:`cbn.batch_norm_backward` (``y`` and ``residual`` Dask arrays shaped like
        ``x``); the gradient ``g = dy * act'(z)`` is then formed chunk by chunk, lazily, and
        reduced in place of ``dy``.

    Returns
    -------
    BackwardResult or FusedBackwardResult
        ``(dx, dweight, dbias)``: ``dx`` a lazy Dask array like ``x``; ``dweight`` and
        ``dbias`` NumPy arrays of shape (C,) in the dtype of ``weight`` when given (float32
        for a float16 ``weight``), else of ``x``.  With a residual, a fourth item
        ``dresidual``, the lazy ``g``.

    Raises
    ------
    TypeError, ValueError
        On bad arguments, e.g. ``dy`` not a Dask array of the shape and dtype of ``x``, or a
        chunked channel axis.

    Notes
    -----
    This call reads ``dy`` and ``x`` once to compute the sums; computing ``dx`` reads them
    again.
    """
    dask, da = _import_dask()
    a = _check_array(x, "x", axis)
    if not isinstance(dy, da.Array):
        raise TypeError(f"dy must be a dask.array.Array, got {type(dy).__name__}")
    v.check_like(dy, x.shape, None, "dy", same_shape=_same_shape)
    if dy.dtype.newbyteorder("=") != x.dtype.newbyteorder("="):  # byte order may differ
        raise TypeError(f"dy must have the dtype of x ({x.dtype}), got {dy.dtype}")
    code, slope = v.check_epilogue(activation, negative_slope)
    bias = v.check_bias_given(bias, activation, slope)
    fused = activation is not None or residual is not None  # every activation: a lazy g
    if fused:
        need_dx, need_dw, need_db, need_dres = v.check_fused_gradient_inputs(
            activation, y, residual, needs, slope)
    else:
        v.check_relu_output(False, y)
        if not isinstance(needs, (str, bytes)) and hasattr(needs, "__len__") and len(needs) == 4:
            needs = v.check_needs4(needs, None)[:3]
        need_dx, need_dw, need_db = v.check_needs(needs)
    nt = _chunk_threads(num_threads)
    split_every = _check_split(split_every)
    C = x.shape[a]
    mu = v.as_f64(mean, "mean", C)
    iv = v.as_f64(invstd, "invstd", C)
    w = None if weight is None else v.as_f64(weight, "weight", C)
    grad_dtype = v.gradient_dtype(x.dtype, weight)
    dy = _like_x(dy, x, "dy")
    user_dy = dy
    dres = None
    if fused:
        src = ([] if y is None else [_like_x(y, x, "y")]) + (
            [] if residual is None else [_like_x(residual, x, "residual")])
        b = None if bias is None else v.as_f64(bias, "bias", C)
        dy = da.map_blocks(_gradient_block, dy, x, *src, axis=a, mean=mu, invstd=iv, weight=w,
                           bias=b, nt=nt,
                           post=dict(activation=activation, negative_slope=negative_slope),
                           has_y=y is not None, has_res=residual is not None, dtype=x.dtype,
                           meta=_meta(x), token="cbn-activation-gradient")
        dres = dy if need_dres else None
    if not (need_dx or need_dw or need_db):
        return (FusedBackwardResult(None, None, None, dres) if residual is not None
                else BackwardResult(None, None, None))
    with_dot = need_dx or need_dw
    wm, wname = _weights_like_x(mask, sample_weight, x, a)
    if wm is not None:
        masked_output = M.check_masked_output(masked_output)
        if dres is not None and masked_output != "normalize":  # the padding's output: no residual
            dres = da.map_blocks(_zero_padding_block, dres, wm, axis=a, wname=wname,
                                 dtype=x.dtype, meta=_meta(x), token="cbn-zero-padding")
        raw = user_dy if fused and masked_output == "keep" else None  # "keep": dx = dy there
        r = _masked_backward(dy, x, a, wm, wname, masked_output, mu, iv, w, grad_dtype,
                             need_dx, need_dw, need_db, nt, split_every, raw)
        return FusedBackwardResult(*r, dres) if residual is not None else r
    if masked_output != "normalize":
        M.check_masked_output(masked_output)
        raise ValueError("masked_output applies with mask= or sample_weight=")
    part_d = dask.delayed(_chunk_backward_sums, pure=True)
    leaves = [part_d(g, b, a, mu, with_dot, nt)
              for g, b in zip(_block_keys(dy), _block_keys(x))]
    ((n, sdy, sdyx),) = dask.compute(_tree(dask, leaves, _sum_parts, split_every))
    dx = None
    if need_dx:
        if n == 0:
            dx = x.copy()
        else:
            dx = da.map_blocks(_elemt_block, dy, x, axis=a, mean=mu, invstd=iv, weight=w,
                               sdy=sdy, sdyx=sdyx, count=int(n), nt=nt, dtype=x.dtype,
                               meta=_meta(x), token="cbn-backward-elemt")
    dweight, dbias = _k.parameter_gradients(sdy, sdyx, iv, grad_dtype, need_dw, need_db)
    if residual is not None:
        return FusedBackwardResult(dx, dweight, dbias, dres)
    return BackwardResult(dx, dweight, dbias)


def _masked_backward(dy, x, a, wm, wname, masked_output, mu, iv, w, grad_dtype, need_dx,
                     need_dw, need_db, nt, split_every, raw=None):
    """batch_norm_backward with a mask or weights: per-chunk masked sums and weight sums,
    summed in a tree, then the lazy masked dx of every chunk."""
    dask, da = _import_dask()
    part_d = dask.delayed(_chunk_masked_sums, pure=True)
    leaves = [part_d(g, b, wb, a, mu, nt, wname, masked_output)
              for g, b, wb in zip(_block_keys(dy), _block_keys(x), _block_keys(wm))]
    ((count, sdy, sdyx),) = dask.compute(_tree(dask, leaves, _sum_parts, split_every))
    dx = None
    if need_dx:
        dx = da.map_blocks(_masked_elemt_block, dy, x, wm, *([] if raw is None else [raw]),
                           axis=a, mean=mu, invstd=iv,
                           weight=w, sdy=sdy, sdyx=sdyx, count=np.asarray(count, _F64), nt=nt,
                           wname=wname, masked_output=masked_output, dtype=x.dtype,
                           meta=_meta(x), token="cbn-backward-elemt-masked")
    dweight, dbias = _k.parameter_gradients(sdy, sdyx, iv, grad_dtype, need_dw, need_db)
    return BackwardResult(dx, dweight, dbias)
