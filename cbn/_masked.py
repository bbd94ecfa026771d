"""Masked and weighted batch normalization: statistics over the positions a mask or weights
select (padded sequences, invalid pixels, weighted samples).

Semantics (frequency weights; a boolean mask is the weights 0 and 1):

* statistics of channel ``c`` over the elements of positive weight ``w``:
  ``W = sum(w)``, ``mean = sum(w x) / W``, the biased ``var = sum(w (x - mean)^2) / W`` that
  normalizes, and ``var * W / (W - 1)`` for the unbiased running variance;
* the output, by ``masked_output``: ``"normalize"`` (default, as Keras) normalizes every
  position with those statistics; ``"zero"`` leaves 0 where the weight is 0; ``"keep"`` leaves
  ``x`` there;
* the backward pass is the exact gradient of that forward (``_backward`` below).

The statistics kernel (src/kernels_masked.pxi) keeps the promises of the unmasked one: float64
sums shifted per block, Chan's merge with the weight sums as counts, the same bound on
cancellation, bit-identical for any thread count.  Elements of weight 0 are never read into a
statistic, so NaN or Inf in padding is harmless.  This module is the Python layer: it checks
the mask or weights and lays them out like the kernel's view of ``x``.
"""

from __future__ import annotations

from typing import NamedTuple, Optional

import numpy as np

from . import _validation as v
from ._dispatch import kernels as _k

_F64 = v.F64

#: the values of ``masked_output``
MASKED_OUTPUTS = ("normalize", "zero", "keep")


class Weights(NamedTuple):
    """A mask or weights in the kernel's layout.

    ``k``: C-contiguous, shape ``(outer, 1, inner)`` (one per position, shared by the
    channels) or ``(outer, C, inner)`` (one per element), bool or float32/float64;
    ``name``: the argument it came from.
    """

    k: np.ndarray
    name: str



def check_masked_output(masked_output):
    """``masked_output`` is one of :data:`MASKED_OUTPUTS`."""
    if not isinstance(masked_output, str) or masked_output not in MASKED_OUTPUTS:
        raise ValueError(f"masked_output must be one of {', '.join(map(repr, MASKED_OUTPUTS))}"
                         f", got {masked_output!r}")
    return masked_output


def _as_array(a, name):
    if isinstance(a, np.ma.MaskedArray):
        raise TypeError(f"{name} is a numpy.ma.MaskedArray: pass a plain array")
    try:
        return np.asarray(a)
    except (TypeError, ValueError) as e:
        raise TypeError(f"{name} must be an array, got {type(a).__name__}") from e


def _checked_values(mask, sample_weight, x_dtype):
    """The mask (bool) or weights (float32/float64, finite, >= 0) as an array, and its name."""
    if mask is not None and sample_weight is not None:
        raise ValueError("pass mask or sample_weight, not both (a mask is the sample weights "
                         "0 and 1; multiply them first if both apply)")
    if mask is not None:
        m = _as_array(mask, "mask")
        if m.dtype != np.bool_:
            raise TypeError(f"mask must be a boolean array (True where a position counts), got "
                            f"dtype {m.dtype}; pass mask.astype(bool), or sample_weight= for "
                            f"weights")
        raw = m.view(np.uint8) if m.size else None
        if raw is not None and raw.max() > 1:  # bools made by a view: bytes other than 0 and 1
            m = raw != 0
        return m, "mask"
    w = _as_array(sample_weight, "sample_weight")
    if v.is_bfloat16(w.dtype):
        w = w.astype(np.float32)
    if w.dtype == np.bool_:
        raise TypeError("sample_weight must be numbers, got a boolean array: pass it as mask=")
    if w.dtype.kind not in "fiu":
        raise TypeError(f"sample_weight must be a real float or integer array, got dtype "
                        f"{w.dtype}")
    w = w.astype(np.float32 if w.dtype == np.float32 and x_dtype != _F64 else _F64,
                 copy=False)
    if not np.isfinite(w).all():
        raise ValueError("sample_weight must be finite (found NaN or Inf)")
    if (w < 0).any():
        raise ValueError("sample_weight must be >= 0 (found a negative weight)")
    return w, "sample_weight"


def _broadcasts(shape, target):
    try:
        return np.broadcast_shapes(shape, target) == tuple(target)
    except ValueError:
        return False


def target_shape(w_shape, x_shape, axis, name):
    """The shape rule: ``(target, via_positions)``, the shape of x's ndim a mask or weights of
    ``w_shape`` broadcasts to (channel axis of length 1: one weight per position; else x's
    shape), and whether it is first broadcast to the positions (x's shape without the channel
    axis) and given the channel axis.  An array of x's ndim is matched against x's shape, one
    of a dimension less against the positions; fewer dimensions are refused (NumPy would align
    them with the last axes: a per-sample (N,) vector would weight the last axis)."""
    positions = tuple(x_shape[:axis]) + tuple(x_shape[axis + 1:])
    per_position = tuple(x_shape[:axis]) + (1,) + tuple(x_shape[axis + 1:])
    if len(w_shape) == len(x_shape) and _broadcasts(w_shape, x_shape):
        return (per_position if w_shape[axis] == 1 else tuple(x_shape)), False
    if len(w_shape) == len(x_shape) - 1 and _broadcasts(w_shape, positions):
        return per_position, True
    if len(w_shape) < len(x_shape) - 1:
        sample = (x_shape[0],) + (1,) * (len(positions) - 1)
        raise ValueError(
            f"{name} of shape {tuple(w_shape)} has fewer dimensions than the positions of x "
            f"{positions}: give it their {len(positions)} dimensions, of size 1 where it does "
            f"not vary (e.g. {sample} for one weight per sample), so that no axis is guessed")
    raise ValueError(
        f"{name} of shape {tuple(w_shape)} fits neither the positions of x {positions} (x's "
        f"shape {tuple(x_shape)} without the channel axis {axis}) nor x's shape; it must be "
        f"one of them, or broadcastable to one")


def weights_for(mask, sample_weight, x, axis, xk, perm):
    """The mask or weights of a call (x, its channel axis, and its kernel view xk = x
    transposed by perm, or a C copy when perm is None) as a :class:`Weights`, or None when
    neither is given.

    Shapes: x's shape without the channel axis (one weight per position, e.g. (N, T) for
    (N, T, C) with axis=-1 or (N, H, W) for NCHW), x's full shape (one per element), or
    anything broadcastable to one of them: an array of x's ndim is matched against x's shape,
    a smaller one against the positions.
    """
    if mask is None and sample_weight is None:
        return None
    w, name = _checked_values(mask, sample_weight, x.dtype)
    target, via_positions = target_shape(w.shape, x.shape, axis, name)
    if via_positions:
        w = np.expand_dims(np.broadcast_to(w, x.shape[:axis] + x.shape[axis + 1:]), axis)
    wb = np.broadcast_to(w, target)
    ak = axis
    if perm is not None:
        wb = wb.transpose(perm)
        ak = perm.index(axis)
    outer = int(np.prod(xk.shape[:ak], dtype=np.int64))
    inner = int(np.prod(xk.shape[ak + 1:], dtype=np.int64))
    return Weights(np.ascontiguousarray(wb).reshape(outer, wb.shape[ak], inner), name)


def moments_of(xk, wts, outer, C, inner, nt):
    """``(W, mean, M2)``: float64 per-channel weight sums, means and sums of weighted squared
    deviations of the kernel view xk over the weights wts (mean and M2 0 where W is 0)."""
    sw = np.zeros(C, _F64)
    mean = np.zeros(C, _F64)
    m2 = np.zeros(C, _F64)
    if xk.size:
        _k.weighted_moments(xk, wts.k, outer, C, inner, sw, mean, m2, nt)
    return sw, mean, m2


def check_training_weights(sw, name, skip_nonfinite=False):
    """Training needs a weight sum above 1 in every channel (the rule of one value per channel;
    the unbiased variance divides by W - 1).  With ``skip_nonfinite`` a channel of weight 0 is
    allowed: its statistics are NaN and its running statistics stay as they were."""
    if not np.isfinite(sw).all():
        raise ValueError(f"the {name} sums overflow (weights near the float64 limit): scale "
                         f"them down")
    bad = ~(sw > 1.0)
    if skip_nonfinite:
        bad &= sw != 0.0
    if bad.any():
        c = np.flatnonzero(bad)
        what = "selects" if name == "mask" else "gives a weight sum of"
        vals = ", ".join(f"{sw[i]:g}" for i in c[:4])
        raise ValueError(
            f"{_k.BATCH_COUNT_MESSAGE}: the {name} {what} "
            f"{vals} in channel(s) {c[:4].tolist()}{' ...' if c.size > 4 else ''} (more than "
            f"1 is needed{'' if skip_nonfinite else '; skip_nonfinite=True lets a channel of weight 0 keep its running statistics'})")


def statistics(sw, mean, m2):
    """The biased variance ``M2 / W`` and the unbiased ``M2 / (W - 1)``; mean, and both
    variances, NaN where ``W`` is 0."""
    empty = sw == 0.0
    with np.errstate(divide="ignore", invalid="ignore"):
        var = m2 / sw
        var_unbiased = m2 / (sw - 1.0)
    mean = np.where(empty, np.nan, mean)
    var[empty] = np.nan
    var_unbiased[empty] = np.nan
    return mean, var, var_unbiased


def finish_padding(yk, xk, wts, masked_output, outer, C, inner, nt):
    """The output option at the positions of weight 0: 0 ("zero") or x ("keep"), written
    there only (src/kernels_masked.pxi)."""
    if masked_output == "normalize" or yk.size == 0:
        return
    fill_padding(yk, xk if masked_output == "keep" else None, wts, outer, C, inner, nt)


def fill_padding(yk, src, wts, outer, C, inner, nt):
    """yk = src (0 when src is None) wherever the weight is 0, in place."""
    if yk.size:
        _k.fill_padding(yk, src, wts.k, outer, C, inner, nt)


def dx_coefficients(total, sdy, sdyx, mean, invstd, weight, masked_output):
    """The per-channel coefficients of the masked dx pass ``dx = a g - w (b + d (x - centre))``
    from the weight sums ``total`` = W and the sums ``sdy = sum(g)``, ``sdyx = sum(g (x -
    mean))`` over every position: ``a = weight * invstd``, ``b = a sdy / W``,
    ``d = a invstd^2 sdyx / W``.  A channel of weight 0 (allowed with skip_nonfinite) has NaN
    statistics; with the padding zeroed or kept its output did not depend on x, so its
    coefficients are 0."""
    a = invstd if weight is None else invstd * weight
    with np.errstate(divide="ignore", invalid="ignore"):
        b = a * sdy / total
        d = a * invstd * invstd * sdyx / total
    centre = np.array(mean, dtype=_F64)
    if masked_output != "normalize":
        empty = total == 0.0
        if empty.any():
            a, b, d = (np.where(empty, 0.0, t) for t in (a, b, d))
            centre[empty] = 0.0
    return (np.ascontiguousarray(a, _F64), np.ascontiguousarray(b, _F64),
            np.ascontiguousarray(d, _F64), centre)


def padding_of(x, axis, mask=None, sample_weight=None):
    """A boolean array broadcastable to ``x`` (same ndim), True where the weight is 0: the
    padding of an evaluation-mode layer call (NumPy; the training passes use the kernels)."""
    x = np.asarray(x)
    axis = v.check_axis(axis, x.ndim)
    k = weights_for(mask, sample_weight, x, axis, x, None).k  # the shape rules, in x's order
    k = k.reshape(x.shape[:axis] + (k.shape[1],) + x.shape[axis + 1:])
    return ~k if k.dtype == np.bool_ else k == 0


def unmask(x, mask, sample_weight, axis, name="x"):
    """A ``numpy.ma.MaskedArray`` input honoured: ``(data, mask, hidden)`` with its data, cbn's
    mask (True where a value counts: the complement of numpy.ma's; one per position when it
    is the same in every channel) and its own mask to give the output (None for any other
    input, returned as is)."""
    if not isinstance(x, np.ma.MaskedArray):
        return x, mask, None
    if mask is not None or sample_weight is not None:
        raise ValueError(f"{name} is a numpy.ma.MaskedArray, whose mask already says which "
                         f"values count: pass mask= or sample_weight= with a plain array "
                         f"instead, not both")
    hidden = np.ma.getmaskarray(x)
    data = np.asarray(x.data)
    if data.ndim >= 2:
        a = v.check_axis(axis, data.ndim)
        first = hidden.take([0], axis=a)
        if data.shape[a] and np.array_equal(np.broadcast_to(first, hidden.shape), hidden):
            return data, ~first, hidden  # the same in every channel: one per position
    return data, ~hidden, hidden


def masked_like(y, hidden):
    """y as a MaskedArray hiding what the input hid (y itself when hidden is None)."""
    return y if hidden is None or y is None else np.ma.MaskedArray(y, mask=hidden.copy())


def without_padding(xk, wts, outer, C, inner, nt):
    """xk, or a copy with 0 at the padding when a padded value is not finite: the backward
    sums of "zero"/"keep" multiply the padding by a zero gradient, and 0 * NaN is NaN."""
    if xk.size == 0 or np.isfinite(xk).all():
        return xk
    xs = np.array(xk, copy=True)
    fill_padding(xs, None, wts, outer, C, inner, nt)
    return xs


def invstd_of_outputs(invstd, total, masked_output):
    """invstd for the parameter gradients: 0 in a channel of weight 0 whose output is 0 or x
    ("zero"/"keep": it does not depend on the parameters), whose statistics are NaN."""
    if masked_output == "normalize":
        return invstd
    return np.where(np.asarray(total) == 0.0, 0.0, invstd)


def finite_centre(mean, total, masked_output):
    """The mean for the backward sums: 0 in a channel of weight 0 with "zero"/"keep" (its
    mean is NaN and its gradient 0 everywhere: 0 * (x - NaN) would be NaN)."""
    if masked_output == "normalize":
        return mean
    return np.where(np.asarray(total) == 0.0, 0.0, mean)
