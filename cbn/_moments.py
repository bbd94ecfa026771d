"""Scale-out building blocks: exact partial moments, their merge, and the SyncBN pieces.

Batch normalization over a batch split into shards (processes, machines, Dask chunks) needs
the per-channel statistics of the *whole* batch.  The blocks here compute them exactly:

* :func:`moments` gives each shard's ``(count, mean, M2)`` (``M2`` = sum of squared deviations
  from the shard mean), computed in float64 by the same exact kernel as the training forward;
* :func:`merge_moments` combines any number of them with Chan et al.'s parallel formula, so
  the merged statistics equal those of the concatenated batch up to float64 rounding, in any
  grouping and without the cancellation of a sum / sum-of-squares all-reduce;
* :func:`normalize` is the element-wise pass with given statistics;
* :func:`backward_reduce` and :func:`backward_elemt` split the backward pass around the
  all-reduce of two per-channel sums (torch's ``batch_norm_backward_reduce`` and
  ``batch_norm_backward_elemt``).

A synchronized (cross-process) batch norm is then::

    m = merge_moments(*all_gather(moments(x_local)))        # forward
    out = normalize(x_local, m.mean, m.invstd(eps), weight, bias)
    sums = all_reduce_sum(backward_reduce(dy_local, x_local, m.mean))   # backward
    dx = backward_elemt(dy_local, x_local, m.mean, m.invstd(eps), weight, *sums, m.count)
    dweight, dbias = sums.sum_dy_xmu * m.invstd(eps), sums.sum_dy
"""

from __future__ import annotations

import operator
from typing import Any, NamedTuple, Optional, Tuple, Union

import numpy as np
from numpy.typing import ArrayLike

from . import _masked as M
from . import _validation as v
from ._batch_norm import _gradient_pass
from ._dispatch import kernels as _k

__all__ = [
    "Moments",
    "BackwardSums",
    "moments",
    "merge_moments",
    "normalize",
    "backward_reduce",
    "backward_elemt",
]

_F64 = v.F64


class Moments(NamedTuple):
    """Per-channel moments of a (part of a) batch: the unit of exchange of a sharded batch norm.

    Attributes
    ----------
    count : int or ndarray of float64, shape (C,)
        Number of values per channel (the product of all non-channel dimensions); for the
        moments of a mask or weights (:func:`moments` with ``mask=`` or ``sample_weight=``),
        the per-channel weight sums.
    mean : ndarray of float64, shape (C,)
        Per-channel mean (0 when ``count`` is 0).
    m2 : ndarray of float64, shape (C,)
        Per-channel sum of squared deviations from ``mean`` (0 when ``count`` is 0).

    Notes
    -----
    A plain :class:`typing.NamedTuple`: it pickles, and ``(count, mean, m2)`` tuples are
    accepted wherever a ``Moments`` is.
    """

    count: Union[int, np.ndarray]
    mean: np.ndarray
    m2: np.ndarray

    def var(self, ddof: int = 0) -> np.ndarray:
        """Per-channel variance ``m2 / (count - ddof)``.

        Parameters
        ----------
        ddof : int, default 0
            Delta degrees of freedom: 0 for the biased variance batch norm normalizes with,
            1 for the unbiased variance of the running-statistics update.

        Returns
        -------
        ndarray of float64, shape (C,)
            The variance; NaN where ``count <= ddof``.
        """
        if isinstance(self.count, np.ndarray):  # per-channel weight sums
            d = np.asarray(self.count, _F64) - operator.index(ddof)
            with np.errstate(divide="ignore", invalid="ignore"):
                return np.where(d > 0, np.asarray(self.m2, dtype=_F64) / d, np.nan)
        d = self.count - operator.index(ddof)
        if d <= 0:
            return np.full(np.shape(self.m2), np.nan)
        return np.asarray(self.m2, dtype=_F64) / float(d)

    def invstd(self, eps: float = 1e-5) -> np.ndarray:
        """``1 / sqrt(var + eps)`` with the biased variance, as batch norm uses it.

        Parameters
        ----------
        eps : float, default 1e-5
            Added to the variance; finite and > 0.

        Returns
        -------
        ndarray of float64, shape (C,)
        """
        eps = v.check_eps(eps)
        return 1.0 / np.sqrt(self.var(0) + eps)


class BackwardSums(NamedTuple):
    """The two per-channel sums a sharded backward pass all-reduces.

    Attributes
    ----------
    sum_dy : ndarray of float64, shape (C,)
        ``sum(dy)`` over every axis but the channel axis; equal to ``dbias``.
    sum_dy_xmu : ndarray of float64, shape (C,)
        ``sum(dy * (x - mean))``; ``dweight = sum_dy_xmu * invstd``.
    """

    sum_dy: np.ndarray
    sum_dy_xmu: np.ndarray


# ------------------------------------------------------------------------------------ helpers

def _check_dy(dy, x):
    dy = v.kernel_dtype(dy, "dy")
    v.check_like(dy, x.shape, x.dtype, "dy")
    return dy


def _check_count(count, name="count"):
    if isinstance(count, (bool, np.bool_)):
        raise TypeError(f"{name} must be a non-negative integer, got bool")
    try:
        n = operator.index(count)
    except TypeError:
        # accept integral floats (e.g. a count that travelled through a float64 all-reduce)
        if isinstance(count, (float, np.floating)) and float(count).is_integer():
            n = int(count)
        else:
            raise TypeError(
                f"{name} must be a non-negative integer, got {type(count).__name__}"
            ) from None
    if n < 0:
        raise ValueError(f"{name} must be >= 0, got {n}")
    return n


# ------------------------------------------------------------------------------------ moments

def moments(x: ArrayLike, *, axis: int = 1, num_threads: Optional[int] = None,
            mask: Optional[ArrayLike] = None,
            sample_weight: Optional[ArrayLike] = None) -> Moments:
    """Exact per-channel count, mean and M2 of ``x`` (a shard of a batch).

    Parameters
    ----------
    x : ndarray of float16, bfloat16, float32 or float64, ndim >= 2
        The input, with the channel dimension at ``axis``.  May have 0 values per channel.
    axis : int, default 1
        The channel axis (negative counts from the end; -1 for channels-last).
    num_threads : int, optional
        OpenMP threads; None uses ``omp_get_max_threads()``.
    mask : array_like of bool, optional
        Only the positions (or elements) where it is True count; shapes as in
        :func:`cbn.batch_norm_forward`.
    sample_weight : array_like, optional
        Non-negative finite frequency weights instead of a mask: ``mean = sum(w x) / W``,
        ``m2 = sum(w (x - mean)^2)`` with ``W = sum(w)``.

    Returns
    -------
    Moments
        ``(count, mean, m2)`` with ``count`` the number of values per channel and float64
        ``mean`` and ``m2`` (sum of squared deviations) of shape (C,).  For an empty shard
        they are ``(0, zeros, zeros)``, the neutral element of :func:`merge_moments`.  With a
        mask or weights, ``count`` is the float64 array of per-channel weight sums (counts
        for a mask), and a channel of weight 0 has mean and m2 0.  A ``numpy.ma.MaskedArray``
        ``x`` counts its unmasked values only (its mask is the complement of ``mask``).

    Raises
    ------
    TypeError
        If ``x`` is not float32/float64 or ``axis`` / ``num_threads`` is not an integer.
    ValueError
        If ``x`` has fewer than 2 dimensions or ``axis`` is out of range.

    See Also
    --------
    merge_moments : combine the moments of several shards.

    Notes
    -----
    The same kernel as :func:`cbn.batch_norm_forward`: float64 accumulation, per-block sums
    shifted by an element of the block (bounded cancellation) merged by Chan's formula,
    bit-identical for any ``num_threads``; float16 and bfloat16 data in two levels, certified
    within 2^-20 (:func:`cbn.batch_norm_forward`).
    ``np.var(x, axis=others) * count`` equals ``m2`` up to rounding.
    """
    x, mask, _ = M.unmask(x, mask, sample_weight, axis)  # a MaskedArray's mask is honoured
    x, axis = v.check_input(x, axis)
    nt = v.check_threads(num_threads)
    xk, ak, perm = v.kernel_view(x, axis)
    outer, C, inner = v.geometry(xk.shape, ak)
    if mask is not None or sample_weight is not None:
        wts = M.weights_for(mask, sample_weight, x, axis, xk, perm)
        return Moments(*M.moments_of(xk, wts, outer, C, inner, nt))
    mean = np.zeros(C, _F64)
    m2 = np.zeros(C, _F64)
    if xk.size:
        _k.moments(xk, outer, C, inner, mean, m2, nt)
    return Moments(int(outer * inner), mean, m2)


def _as_part(p, i, C):
    if isinstance(p, Moments):
        count, mean, m2 = p
    else:
        try:
            count, mean, m2 = p
        except (TypeError, ValueError):
            raise TypeError(
                f"parts[{i}] must be a Moments or a (count, mean, m2) tuple, "
                f"got {type(p).__name__}"
            ) from None
    if isinstance(count, np.ndarray) and count.ndim == 1:  # per-channel weight sums
        count = _check_weight_sums(count, f"parts[{i}].count")
    else:
        count = _check_count(count, f"parts[{i}].count")
    if C is None:
        mean_a = np.asarray(mean)
        if mean_a.ndim != 1:
            raise ValueError(f"parts[{i}].mean must be a 1-d array, got shape {mean_a.shape}")
        C = mean_a.shape[0]
    mean = v.as_f64(mean, f"parts[{i}].mean", C)
    m2 = v.as_f64(m2, f"parts[{i}].m2", C)
    if isinstance(count, np.ndarray) and count.shape != (C,):
        raise ValueError(f"parts[{i}].count must have shape ({C},) like the means, got "
                         f"{count.shape}")
    return count, mean, m2, C


def _check_weight_sums(count, name):
    if count.dtype.kind not in "fiu":
        raise TypeError(f"{name} must be numbers, got dtype {count.dtype}")
    count = count.astype(_F64)
    if not (np.isfinite(count).all() and (count >= 0).all()):
        raise ValueError(f"{name} must be finite and >= 0")
    return count


def _merge2(a, b):
    """Chan et al.: the moments of the union of two disjoint parts (new arrays)."""
    na, ma, qa = a
    nb, mb, qb = b
    if isinstance(na, np.ndarray) or isinstance(nb, np.ndarray):
        return _merge2_weighted(a, b)
    if nb == 0:
        return a
    if na == 0:
        return b
    n = na + nb
    f = nb / n
    delta = mb - ma
    mean = ma + delta * f
    m2 = (qa + qb) + delta * delta * (na * f)
    return (n, mean, m2)


def _merge2_weighted(a, b):
    """_merge2 with per-channel counts (weight sums): a channel empty in one part takes the
    other's moments as they are, as the scalar form does."""
    na, ma, qa = a
    nb, mb, qb = b
    na = np.broadcast_to(np.asarray(na, _F64), ma.shape)
    nb = np.broadcast_to(np.asarray(nb, _F64), mb.shape)
    n = na + nb
    with np.errstate(divide="ignore", invalid="ignore"):
        f = nb / n
        delta = mb - ma
        mean = ma + delta * f
        m2 = (qa + qb) + delta * delta * (na * f)
    mean = np.where(nb == 0, ma, np.where(na == 0, mb, mean))
    m2 = np.where(nb == 0, qa, np.where(na == 0, qb, m2))
    return (n, mean, m2)


def _merge_tree(parts):
    if len(parts) == 1:
        return parts[0]
    h = len(parts) // 2
    return _merge2(_merge_tree(parts[:h]), _merge_tree(parts[h:]))


def merge_moments(*parts: Union[Moments, Tuple[int, ArrayLike, ArrayLike]]) -> Moments:
    """Exact moments of the union of disjoint parts, by Chan et al.'s parallel formula.

    For two parts ``a`` and ``b`` with ``n = n_a + n_b`` and ``delta = mean_b - mean_a``::

        mean = mean_a + delta * n_b / n
        m2   = m2_a + m2_b + delta**2 * n_a * n_b / n

    Any number of parts is combined pairwise in a balanced tree (in argument order), so the
    result does not depend on the grouping beyond float64 rounding.

    Each part's mean is a float64 rounded at ``eps * |mean|``, and ``delta`` inherits that
    rounding: at ``|mean| / std`` near 1e10 (float64 data), 58 merged parts measured a relative
    variance error of 2e-8, where one :func:`moments` call over the whole batch (which keeps
    block means as offsets internally) has 1e-15.  Float32 data cannot reach such ratios.

    Parameters
    ----------
    *parts : Moments or (count, mean, m2) tuples
        At least one.  All must have the same number of channels C.  A count may be an
        array of per-channel weight sums (the moments of a mask or weights), mixed freely with
        integer counts; the result's count is then such an array.  Parts with ``count`` 0
        are ignored (their ``mean`` and ``m2`` are not read beyond validation, so NaN there
        is harmless).

    Returns
    -------
    Moments
        ``(count, mean, m2)`` of the union; ``count`` is the sum of the counts (a Python
        int, exact); new float64 arrays of shape (C,).

    Raises
    ------
    TypeError
        If a part is not a Moments / 3-tuple, a count is not an integer, or a mean / m2 is
        not a floating-point array.
    ValueError
        If no part is given, a count is negative, or the parts disagree on C.

    Examples
    --------
    >>> import numpy as np, cbn
    >>> x = np.random.default_rng(0).normal(size=(8, 3, 5))
    >>> m = cbn.merge_moments(cbn.moments(x[:3]), cbn.moments(x[3:]))
    >>> bool(np.allclose(m.var(), x.var(axis=(0, 2))))
    True
    """
    if not parts:
        raise ValueError("merge_moments needs at least one part")
    C = None
    norm = []
    for i, p in enumerate(parts):
        count, mean, m2, C = _as_part(p, i, C)
        norm.append((count, mean, m2))
    weighted = any(isinstance(p[0], np.ndarray) for p in norm)
    live = [p for p in norm if np.any(p[0] > 0)]
    if not live:
        return Moments(np.zeros(C, _F64) if weighted else 0, np.zeros(C, _F64),
                       np.zeros(C, _F64))
    n, mean, m2 = _merge_tree(live)
    # always hand out fresh arrays (a single live part would otherwise alias the caller's)
    n = np.array(np.broadcast_to(n, (C,)), dtype=_F64) if weighted else int(n)
    return Moments(n, np.array(mean, dtype=_F64), np.array(m2, dtype=_F64))


# ------------------------------------------------------------------------------------ forward

def normalize(x: ArrayLike, mean: ArrayLike, invstd: ArrayLike,
              weight: Optional[ArrayLike] = None, bias: Optional[ArrayLike] = None, *,
              axis: int = 1, out: Optional[np.ndarray] = None,
              num_threads: Optional[int] = None, activation: Optional[str] = None,
              residual: Optional[ArrayLike] = None,
              negative_slope: Optional[float] = None, mask: Optional[ArrayLike] = None,
              sample_weight: Optional[ArrayLike] = None,
              masked_output: str = "normalize") -> np.ndarray:
    """The element-wise pass of batch norm with given statistics.

    Computes ``out = (x - mean) * (invstd * weight) + bias`` per channel in one read and one
    write, in the centred form that keeps float32 data with large offsets accurate.  With the
    merged statistics of all shards this is the forward pass of a synchronized batch norm.

    Parameters
    ----------
    x : ndarray of float16, bfloat16, float32 or float64, ndim >= 2
        The input (e.g. the local shard), with the channel dimension at ``axis``.
    mean, invstd : array_like of shape (C,)
        The statistics, e.g. ``m.mean`` and ``m.invstd(eps)`` of a :class:`Moments` ``m``.
    weight, bias : array_like of shape (C,), optional
        Affine parameters; None means 1 and 0.
    axis : int, default 1
        The channel axis.
    out : ndarray, optional
        Where to write the result: same shape and dtype as ``x``; may be ``x`` itself.
    num_threads : int, optional
        OpenMP threads; None uses ``omp_get_max_threads()``.
    activation, residual, negative_slope : optional
        ``out = activation(normalized + residual)`` in the same pass, as in
        :func:`cbn.batch_norm_forward`.
    mask, sample_weight, masked_output : optional
        The padding option of a masked forward (:func:`cbn.batch_norm_forward`): with
        ``masked_output`` "zero" or "keep" the output is 0 or ``x`` where the weight is 0
        (the statistics are the given ones: e.g. merged masked moments).

    Returns
    -------
    ndarray
        The normalized array, dtype of ``x``.

    Raises
    ------
    TypeError, ValueError
        On bad arguments (non-float ``x``, vectors not of shape (C,), a bad ``out``), naming
        the argument.
    """
    code, slope = v.check_epilogue(activation, negative_slope)
    x, axis = v.check_input(x, axis)
    nt = v.check_threads(num_threads)
    xk, ak, perm = v.kernel_view(x, axis)
    outer, C, inner = v.geometry(xk.shape, ak)
    mu = v.as_f64(mean, "mean", C)
    scale = v.as_f64(invstd, "invstd", C)
    if weight is not None:
        scale = scale * v.as_f64(weight, "weight", C)
    shift = np.zeros(C, _F64) if bias is None else v.as_f64(bias, "bias", C)
    rk = None if residual is None else v.residual_view(residual, x, xk, perm)
    wts = M.weights_for(mask, sample_weight, x, axis, xk, perm)
    masked_output = M.check_masked_output(masked_output)
    if wts is not None and masked_output == "keep" and out is not None \
            and np.may_share_memory(out, x):
        y = normalize(x, mean, invstd, weight, bias, axis=axis, num_threads=num_threads,
                      activation=activation, residual=residual, negative_slope=negative_slope,
                      mask=mask, sample_weight=sample_weight, masked_output=masked_output)
        np.copyto(out, y)
        return out
    yk, y, copy_back = v.output_for(out, x, xk, perm, inputs=() if rk is None else (rk,))
    if xk.size:
        post = v.in_post_stage(code, residual)
        _k.inference(xk, yk, outer, C, inner, mu, scale, shift, nt, 0 if post else code,
                     post_act=code if post else -1, slope=slope, residual=rk)
        if wts is not None:
            M.finish_padding(yk, xk, wts, masked_output, outer, C, inner, nt)
    return v.finish_output(yk, y, out, copy_back, perm)


def _gradient_at_activation(dyk, x, xk, perm, outer, C, inner, mu, invstd, weight, bias, y,
                            residual, activation, negative_slope, nt):
    """``dy * act'(z)`` in the kernel layout (dyk itself without an activation or residual):
    the gradient that the sharded backward passes reduce, as batch_norm_backward does."""
    code, slope = v.check_epilogue(activation, negative_slope)
    bias = v.check_bias_given(bias, activation, slope)
    if activation is None and residual is None:
        v.check_relu_output(False, y)
        return dyk
    v.check_fused_gradient_inputs(activation, y, residual, (True, True, True), slope)
    if activation is not None and not v.from_output(activation, slope) and invstd is None:
        raise ValueError(f"invstd is required with activation={activation!r} (its input is "
                         f"recomputed)")
    iv = None if invstd is None else v.as_f64(invstd, "invstd", C)
    w = None if weight is None else v.as_f64(weight, "weight", C)
    rk = None if residual is None else v.residual_view(residual, x, xk, perm)
    if activation is None:  # a residual alone: the gradient passes through
        return dyk
    gk = np.empty_like(xk)
    _gradient_pass(gk, dyk, activation, code, slope, y, x, xk, perm, outer, C, inner, mu, iv, w,
                   bias, rk, nt)
    return gk


# ------------------------------------------------------------------------------------ backward

def _backward_sums(dyk, xk, outer, C, inner, mu, with_dot, nt):
    sdy = np.zeros(C, _F64)
    sdyx = np.zeros(C, _F64)
    if xk.size:
        _k.backward(dyk, xk, None, outer, C, inner, mu, np.ones(C, _F64), None, bool(with_dot),
                    sdy, sdyx, nt)
    return BackwardSums(sdy, sdyx)


def backward_reduce(dy: ArrayLike, x: ArrayLike, mean: ArrayLike, *, axis: int = 1,
                    num_threads: Optional[int] = None, activation: Optional[str] = None,
                    y: Optional[ArrayLike] = None, invstd: Optional[ArrayLike] = None,
                    weight: Optional[ArrayLike] = None, bias: Any = v.UNSET,
                    residual: Optional[ArrayLike] = None,
                    negative_slope: Optional[float] = None, mask: Optional[ArrayLike] = None,
                    sample_weight: Optional[ArrayLike] = None,
                    masked_output: str = "normalize") -> BackwardSums:
    """Local per-channel sums for a sharded backward pass (torch's ``batch_norm_backward_reduce``).

    Parameters
    ----------
    dy : ndarray
        Gradient of the loss with respect to the forward output; shape and dtype of ``x``.
    x : ndarray of float16, bfloat16, float32 or float64, ndim >= 2
        The forward input (the local shard).
    mean : array_like of shape (C,)
        The *global* batch mean used in the forward pass.
    axis : int, default 1
        The channel axis.
    num_threads : int, optional
        OpenMP threads; None uses ``omp_get_max_threads()``.
    activation, y, invstd, weight, bias, residual, negative_slope : optional
        The fused activation of the forward (:func:`normalize`): ``dy`` is then the gradient
        at its output, and the sums are those of ``g = dy * act'(z)``.  As in
        :func:`cbn.batch_norm_backward`, ``y`` (the forward output) is required for relu,
        relu6 and leaky_relu (slope >= 0); the others recompute ``z`` from ``x``, ``mean``,
        ``invstd``, ``weight``, ``bias`` (then required: None if the forward had none) and
        ``residual``.  ``g`` itself is the residual's
        gradient: ``cbn.batch_norm_backward(..., needs=(False, False, False, True))`` gives
        it locally (no all-reduce needed).
    mask, sample_weight, masked_output : optional
        Those of a masked forward: with ``masked_output`` "zero" or "keep" the sums leave out
        the positions of weight 0 (their output did not depend on the statistics); with
        "normalize" every position counts, as without a mask.

    Returns
    -------
    BackwardSums
        ``(sum_dy, sum_dy_xmu)``, float64 arrays of shape (C,): ``sum(dy)`` and
        ``sum(dy * (x - mean))`` over this shard.  Sum them over all shards (all-reduce), then
        ``dbias = sum_dy`` and ``dweight = sum_dy_xmu * invstd`` (cast them to the dtype of
        ``weight`` if you want torch's result types), and ``dx`` comes from
        :func:`backward_elemt`.

    Raises
    ------
    TypeError, ValueError
        On bad arguments, e.g. ``dy`` of another shape or dtype than ``x``.
    """
    x, axis = v.check_input(x, axis)
    dy = _check_dy(dy, x)
    nt = v.check_threads(num_threads)
    xk, ak, perm = v.kernel_view(x, axis)
    outer, C, inner = v.geometry(xk.shape, ak)
    mu = v.as_f64(mean, "mean", C)
    wts = M.weights_for(mask, sample_weight, x, axis, xk, perm)
    masked_output = M.check_masked_output(masked_output)
    dyk = v.view_like(dy, perm)
    gk = _gradient_at_activation(dyk, x, xk, perm, outer, C, inner, mu, invstd,
                                 weight, bias, y, residual, activation, negative_slope, nt)
    if wts is not None and masked_output != "normalize":
        gk = np.array(gk, copy=True) if gk is dyk else gk
        M.fill_padding(gk, None, wts, outer, C, inner, nt)
        xk = M.without_padding(xk, wts, outer, C, inner, nt)
    return _backward_sums(gk, xk, outer, C, inner, mu, True, nt)


def backward_elemt(dy: ArrayLike, x: ArrayLike, mean: ArrayLike, invstd: ArrayLike,
                   weight: Optional[ArrayLike], sum_dy: ArrayLike, sum_dy_xmu: ArrayLike,
                   count: Union[int, ArrayLike], *, axis: int = 1,
                   out: Optional[np.ndarray] = None,
                   num_threads: Optional[int] = None, activation: Optional[str] = None,
                   y: Optional[ArrayLike] = None, bias: Any = v.UNSET,
                   residual: Optional[ArrayLike] = None,
                   negative_slope: Optional[float] = None, mask: Optional[ArrayLike] = None,
                   sample_weight: Optional[ArrayLike] = None,
                   masked_output: str = "normalize") -> np.ndarray:
    """``dx`` of a shard from the all-reduced sums (torch's ``batch_norm_backward_elemt``).

    With ``n = count`` values per channel in the whole batch::

        dx = weight * invstd * (dy - sum_dy / n - (x - mean) * invstd**2 * sum_dy_xmu / n)

    Parameters
    ----------
    dy : ndarray
        Gradient with respect to the forward output (local shard); shape and dtype of ``x``.
    x : ndarray of float16, bfloat16, float32 or float64, ndim >= 2
        The forward input (local shard).
    mean, invstd : array_like of shape (C,)
        The global statistics used in the forward pass.
    weight : array_like of shape (C,) or None
        The forward ``weight``; None means 1.
    sum_dy, sum_dy_xmu : array_like of shape (C,)
        The sums of :func:`backward_reduce` summed over *all* shards.
    count : int or array_like of shape (C,)
        Number of values per channel in the whole batch (``merge_moments(...).count``), >= 1;
        with a mask or weights, the per-channel weight sums.
    axis : int, default 1
        The channel axis.
    out : ndarray, optional
        Where to write ``dx``: same shape and dtype as ``x``; may be ``dy`` or ``x`` itself.
    num_threads : int, optional
        OpenMP threads; None uses ``omp_get_max_threads()``.
    activation, y, bias, residual, negative_slope : optional
        The fused activation of the forward, as in :func:`backward_reduce` (whose sums must
        then have been taken with the same arguments).
    mask, sample_weight, masked_output : optional
        Those of a masked forward (the local shard's): ``count`` is then the per-channel
        weight sum of the whole batch (``merge_moments(...).count``), and
        ``dx = weight * invstd * (g - w / W * (sum_dy + (x - mean) * invstd**2 * sum_dy_xmu))``
        with each element's weight ``w`` (see :func:`cbn.batch_norm_backward`).

    Returns
    -------
    ndarray
        ``dx``, shape and dtype of ``x``.

    Raises
    ------
    TypeError, ValueError
        On bad arguments, naming them; ``count`` must be at least the local number of values
        per channel.

    Notes
    -----
    The parameter gradients need no further pass: ``dweight = sum_dy_xmu * invstd`` and
    ``dbias = sum_dy``.
    """
    x, axis = v.check_input(x, axis)
    dy = _check_dy(dy, x)
    nt = v.check_threads(num_threads)
    if mask is not None or sample_weight is not None:
        return _masked_elemt(dy, x, mean, invstd, weight, sum_dy, sum_dy_xmu, count, axis, out,
                             nt, activation, y, bias, residual, negative_slope, mask,
                             sample_weight, masked_output)
    n_total = _check_count(count)
    xk, ak, perm = v.kernel_view(x, axis)
    outer, C, inner = v.geometry(xk.shape, ak)
    if n_total < outer * inner or n_total == 0:
        raise ValueError(
            f"count must be the number of values per channel in the whole batch, at least the "
            f"local {outer * inner} (and >= 1), got {n_total}"
        )
    mu = v.as_f64(mean, "mean", C)
    iv = v.as_f64(invstd, "invstd", C)
    w = None if weight is None else v.as_f64(weight, "weight", C)
    a = v.as_f64(sum_dy, "sum_dy", C)
    d = v.as_f64(sum_dy_xmu, "sum_dy_xmu", C)
    dyk = v.view_like(dy, perm)
    gk = _gradient_at_activation(dyk, x, xk, perm, outer, C, inner, mu, iv, w, bias, y,
                                 residual, activation, negative_slope, nt)
    dxk, dx, copy_back = v.output_for(out, x, xk, perm, inputs=(dyk,))
    if xk.size:
        _k.backward_dx_from_sums(gk, xk, dxk, outer, C, inner, mu, iv, w, a, d,
                                 float(n_total), nt)
    return v.finish_output(dxk, dx, out, copy_back, perm)


def _masked_elemt(dy, x, mean, invstd, weight, sum_dy, sum_dy_xmu, count, axis, out, nt,
                  activation, y, bias, residual, negative_slope, mask, sample_weight,
                  masked_output):
    """backward_elemt of a masked shard: the masked dx pass with the global weight sums."""
    masked_output = M.check_masked_output(masked_output)
    xk, ak, perm = v.kernel_view(x, axis)
    outer, C, inner = v.geometry(xk.shape, ak)
    wts = M.weights_for(mask, sample_weight, x, axis, xk, perm)
    total = np.asarray(count)
    if total.ndim == 0:
        total = np.full(C, _check_count(count), _F64)
    else:
        total = _check_weight_sums(total, "count")
        if total.shape != (C,):
            raise ValueError(f"count must be an integer or the per-channel weight sums of "
                             f"shape ({C},), got shape {total.shape}")
    mu = v.as_f64(mean, "mean", C)
    iv = v.as_f64(invstd, "invstd", C)
    w = None if weight is None else v.as_f64(weight, "weight", C)
    sdy = v.as_f64(sum_dy, "sum_dy", C)
    sdyx = v.as_f64(sum_dy_xmu, "sum_dy_xmu", C)
    dyk = v.view_like(dy, perm)
    gk = _gradient_at_activation(dyk, x, xk, perm, outer, C, inner, mu, iv, w, bias, y,
                                 residual, activation, negative_slope, nt)
    if masked_output != "normalize":
        gk = np.array(gk, copy=True) if gk is dyk else gk
        M.fill_padding(gk, None, wts, outer, C, inner, nt)
    dxk, dx, copy_back = v.output_for(out, x, xk, perm, inputs=(dyk, gk))
    # "keep" passes dy through at the padding: a copy when dx would overwrite it first
    keep = (dyk.copy() if np.may_share_memory(dxk, dyk) else dyk) \
        if masked_output == "keep" else None
    if xk.size:
        a, b, d, centre = M.dx_coefficients(total, sdy, sdyx, mu, iv, w, masked_output)
        _k.weighted_dx(gk, xk, wts.k, dxk, outer, C, inner, a, b, d, centre, nt)
        if keep is not None:
            M.fill_padding(dxk, keep, wts, outer, C, inner, nt)
    return v.finish_output(dxk, dx, out, copy_back, perm)
