"""cbn.reference: the batch-norm formulas in plain NumPy.

The oracle for the test suite and the baseline for the benchmarks.  Each function has the
signature of its fast twin in :mod:`cbn` (``num_threads`` is accepted and ignored) and computes
in the dtype of its input with NumPy's own reductions: call it with float64 arrays for a
reference answer.  No validation beyond what NumPy does.
"""

import math

import numpy as np

from ._types import BackwardResult, ForwardResult, FusedBackwardResult

__all__ = ["batch_norm", "batch_norm_forward", "batch_norm_backward", "batch_norm_inference",
           "activation", "activation_gradient", "sample_weights"]

_ERFC = np.frompyfunc(math.erfc, 1, 1)
_GELU_K = math.sqrt(2.0 / math.pi)


def _normal_cdf(z):
    return (0.5 * _ERFC(-z / math.sqrt(2.0))).astype(z.dtype)


def activation(z, name, negative_slope=0.01):
    """The activation ``name`` of :func:`cbn.batch_norm_forward` applied to ``z``.

    Parameters
    ----------
    z : array_like
        The activation's input (e.g. ``bn(x) + residual``), computed in its own dtype.
    name : {None, "relu", "relu6", "leaky_relu", "silu", "gelu", "gelu_tanh"}
        As torch's functional of that name (``"gelu_tanh"``: ``approximate="tanh"``).
    negative_slope : float, default 0.01
        ``"leaky_relu"``'s slope.

    Returns
    -------
    ndarray
        The activation's output, dtype of ``z``.
    """
    z = np.asarray(z)
    with np.errstate(over="ignore", invalid="ignore"):
        if name is None:
            return z
        if name == "relu":
            return np.where(z < 0, 0, z).astype(z.dtype)
        if name == "relu6":
            return np.where(z < 0, 0, np.where(z > 6, 6, z)).astype(z.dtype)
        if name == "leaky_relu":
            return np.where(z > 0, z, z * negative_slope).astype(z.dtype)
        if name == "silu":
            return z / (1 + np.exp(-z))
        if name == "gelu":
            return z * _normal_cdf(z)
        if name == "gelu_tanh":
            return 0.5 * z * (1 + np.tanh(_GELU_K * (z + 0.044715 * z ** 3)))
    raise ValueError(f"unknown activation {name!r}")


def activation_gradient(dy, z, name, negative_slope=0.01):
    """``dy * act'(z)``: the gradient at the activation's input.

    Parameters
    ----------
    dy : array_like
        The gradient at the activation's output.
    z : array_like
        The activation's input (for relu, relu6 and leaky_relu with a slope >= 0 its output
        gives the same result).
    name : {None, "relu", "relu6", "leaky_relu", "silu", "gelu", "gelu_tanh"}
        The activation, as in :func:`activation`.
    negative_slope : float, default 0.01
        ``"leaky_relu"``'s slope.

    Returns
    -------
    ndarray
        ``dy * act'(z)`` in the dtype of ``dy``: torch's backward of the functional, except
        that ReLU's and ReLU6's gradients are 0 where ``z`` is NaN (as in cbn and in torch's
        vectorised hardtanh backward).
    """
    dy, z = np.asarray(dy), np.asarray(z)
    with np.errstate(over="ignore", invalid="ignore"):
        if name is None:
            return dy
        if name == "relu":
            return np.where(z > 0, dy, 0).astype(dy.dtype)
        if name == "relu6":
            return np.where((z > 0) & (z < 6), dy, 0).astype(dy.dtype)
        if name == "leaky_relu":
            return np.where(z > 0, dy, dy * negative_slope).astype(dy.dtype)
        if name == "silu":
            s = 1 / (1 + np.exp(-z))
            return dy * (s * (1 + z * (1 - s)))
        if name == "gelu":
            pdf = np.exp(-0.5 * z * z) / math.sqrt(2 * math.pi)
            return dy * (_normal_cdf(z) + z * pdf)
        if name == "gelu_tanh":
            t = np.tanh(_GELU_K * (z + 0.044715 * z ** 3))
            return dy * (0.5 * (1 + t) + 0.5 * z * (1 - t * t) * _GELU_K
                         * (1 + 3 * 0.044715 * z * z))
    raise ValueError(f"unknown activation {name!r}")


def _axes(x, axis):
    axis = axis % x.ndim
    reduce_axes = tuple(i for i in range(x.ndim) if i != axis)
    bshape = [1] * x.ndim
    bshape[axis] = x.shape[axis]
    return reduce_axes, tuple(bshape), x.shape[axis]


def sample_weights(x, axis=1, mask=None, sample_weight=None):
    """The weights of a masked or weighted call as an array of ``x``'s shape (float64; None
    without either): a mask is the weights 0 and 1; an array of ``x``'s ndim broadcasts to
    ``x``'s shape, a smaller one to the positions (``x``'s shape without the channel axis)."""
    if mask is None and sample_weight is None:
        return None
    w = np.asarray(mask if mask is not None else sample_weight, dtype=np.float64)
    x = np.asarray(x)
    axis = axis % x.ndim
    if w.ndim < x.ndim:
        positions = x.shape[:axis] + x.shape[axis + 1:]
        w = np.expand_dims(np.broadcast_to(w, positions), axis)
    return np.broadcast_to(w, x.shape)


def _weighted_stats(x, wf, red):
    """Weight sums, means and biased variances of x over red with the weights wf (elements of
    weight 0 excluded, whatever their value)."""
    xs = np.where(wf > 0, x, 0)
    total = wf.sum(axis=red)
    mean = (wf * xs).sum(axis=red) / total
    shape = [1] * x.ndim
    c = [i for i in range(x.ndim) if i not in red][0]
    shape[c] = x.shape[c]
    d = np.where(wf > 0, x - mean.reshape(shape), 0)
    return total, mean, (wf * d * d).sum(axis=red) / total


def batch_norm_forward(x, weight=None, bias=None, *, eps=1e-5, running_mean=None,
                       running_var=None, momentum=0.1, axis=1, out=None, num_threads=None,
                       skip_nonfinite=False, activation=None, residual=None,
                       negative_slope=None, mask=None, sample_weight=None,
                       masked_output="normalize"):
    """Training forward: ``(x - mean) / sqrt(var + eps) * weight + bias`` with batch statistics.

    Parameters and returns as :func:`cbn.batch_norm_forward`; the running statistics are
    updated in place with the unbiased variance.  With ``mask`` or ``sample_weight`` the
    statistics are the weighted ones (:func:`sample_weights`), and ``masked_output`` sets the
    output where the weight is 0.
    """
    x = np.asarray(x)
    red, bshape, C = _axes(x, axis)
    n = x.size // C if C else 0
    wf = sample_weights(x, axis, mask, sample_weight)
    if wf is None:
        mean = x.mean(axis=red)
        var = x.var(axis=red)
    else:
        n, mean, var = _weighted_stats(x, wf, red)
    invstd = 1.0 / np.sqrt(var + eps)
    y = (x - mean.reshape(bshape)) * invstd.reshape(bshape)
    if weight is not None:
        y = y * np.asarray(weight).reshape(bshape)
    if bias is not None:
        y = y + np.asarray(bias).reshape(bshape)
    keep = ~(np.isfinite(mean) & np.isfinite(var)) if skip_nonfinite else False
    if running_mean is not None:
        running_mean[...] = np.where(keep, running_mean, (1 - momentum) * running_mean + momentum * mean)
    if running_var is not None:
        running_var[...] = np.where(keep, running_var,
                                    (1 - momentum) * running_var + momentum * var * n / (n - 1))
    if residual is not None:
        y = y + np.asarray(residual)
    y = _activate(y, activation, negative_slope)
    if wf is not None and masked_output != "normalize":
        y = np.where(wf == 0, 0 if masked_output == "zero" else x, y)
    y = y.astype(x.dtype, copy=False)
    if out is not None:
        out[...] = y
        y = out
    return ForwardResult(y, mean.astype(np.float64), invstd.astype(np.float64))


def _activate(y, name, negative_slope):
    return activation(y, name, 0.01 if negative_slope is None else negative_slope)


def batch_norm_backward(dy, x, mean, invstd, weight=None, *, axis=1, out=None, num_threads=None,
                        needs=(True, True, True), activation=None, y=None, bias=None,
                        residual=None, negative_slope=None, mask=None, sample_weight=None,
                        masked_output="normalize"):
    """Gradients of the training forward: see :func:`cbn.batch_norm_backward`.  With an
    activation, ``dy`` is first taken through its derivative at ``z``: ``y`` itself for
    relu, relu6 and leaky_relu with a slope >= 0 (their derivative is that of their output),
    else ``z = bn(x) + residual`` recomputed; with a residual the result has ``dresidual`` (that
    gradient) as a fourth item."""
    x = np.asarray(x)
    dy = user_dy = np.asarray(dy)
    red, bshape, C = _axes(x, axis)
    slope = 0.01 if negative_slope is None else negative_slope
    if activation in ("relu", "relu6") or (activation == "leaky_relu" and slope >= 0):
        dy = activation_gradient(dy, np.asarray(y), activation, slope).astype(dy.dtype)
    elif activation is not None:
        z = (x - np.asarray(mean).reshape(bshape)) * np.asarray(invstd).reshape(bshape)
        if weight is not None:
            z = z * np.asarray(weight).reshape(bshape)
        if bias is not None:
            z = z + np.asarray(bias).reshape(bshape)
        if residual is not None:
            z = z + np.asarray(residual)
        dy = activation_gradient(dy, z, activation, slope).astype(dy.dtype)
    wf = sample_weights(x, axis, mask, sample_weight)
    if wf is not None:
        return _masked_backward(dy, user_dy, x, mean, invstd, weight, axis, out, needs, wf,
                                masked_output, residual)
    if residual is not None:
        result = batch_norm_backward(dy, x, mean, invstd, weight, axis=axis, out=out,
                                     needs=tuple(needs)[:3])
        dres = dy if len(needs) < 4 or needs[3] else None
        return FusedBackwardResult(*result, dres)
    n = x.size // C
    mean = np.asarray(mean).reshape(bshape)
    invstd = np.asarray(invstd).reshape(bshape)
    w = 1.0 if weight is None else np.asarray(weight).reshape(bshape)
    xhat = (x - mean) * invstd
    dbias = dy.sum(axis=red)
    dweight = (dy * xhat).sum(axis=red)
    dx = None
    if needs[0]:
        dx = (w * invstd / n) * (n * dy - dbias.reshape(bshape) - xhat * dweight.reshape(bshape))
        dx = dx.astype(x.dtype, copy=False)
        if out is not None:
            out[...] = dx
            dx = out
    gdt = x.dtype if weight is None else np.asarray(weight).dtype
    return BackwardResult(dx, dweight.astype(gdt) if needs[1] else None,
                          dbias.astype(gdt) if needs[2] else None)


def _masked_backward(g, dy, x, mean, invstd, weight, axis, out, needs, wf, masked_output,
                     residual):
    """The gradient of the masked forward: with W = sum(w) per channel and g the gradient at
    the normalization's output (0 at the padding for "zero" and "keep"),
    ``dx = weight * invstd * (g - w / W * (sum(g) + xhat * sum(g * xhat)))``, plus ``dy``
    itself at the padding for "keep"; ``dweight = sum(g * xhat)``, ``dbias = sum(g)``."""
    red, bshape, C = _axes(x, axis)
    if masked_output != "normalize":
        g = np.where(wf == 0, 0, g)
    total = wf.sum(axis=red).reshape(bshape)
    mean = np.asarray(mean).reshape(bshape)
    invstd = np.asarray(invstd).reshape(bshape)
    wt = 1.0 if weight is None else np.asarray(weight).reshape(bshape)
    xhat = (x - mean) * invstd
    if masked_output != "normalize":  # the padding's output does not depend on x (NaN there)
        xhat = np.where(wf == 0, 0, xhat)
    dbias = g.sum(axis=red)
    dweight = (g * xhat).sum(axis=red)
    dx = None
    if needs[0]:
        dx = wt * invstd * (g - wf / total * (dbias.reshape(bshape)
                                              + xhat * dweight.reshape(bshape)))
        if masked_output == "keep":
            dx = np.where(wf == 0, dy, dx)
        elif masked_output == "zero":
            dx = np.where(wf == 0, 0, dx)  # a channel of weight 0: its output is constant
        dx = dx.astype(x.dtype, copy=False)
        if out is not None:
            out[...] = dx
            dx = out
    gdt = x.dtype if weight is None else np.asarray(weight).dtype
    result = BackwardResult(dx, dweight.astype(gdt) if needs[1] else None,
                            dbias.astype(gdt) if needs[2] else None)
    if residual is None:
        return result
    return FusedBackwardResult(*result, g if len(needs) < 4 or needs[3] else None)


def batch_norm_inference(x, running_mean, running_var, weight=None, bias=None, *, eps=1e-5,
                         axis=1, out=None, num_threads=None, activation=None, residual=None,
                         negative_slope=None):
    """Evaluation pass: ``x * scale + shift`` with ``scale = weight / sqrt(var + eps)`` and
    ``shift = bias - mean * scale`` (then ``+ residual`` and the activation)."""
    x = np.asarray(x)
    _, bshape, C = _axes(x, axis)
    scale = 1.0 / np.sqrt(np.asarray(running_var) + eps)
    if weight is not None:
        scale = scale * np.asarray(weight)
    shift = -np.asarray(running_mean) * scale
    if bias is not None:
        shift = shift + np.asarray(bias)
    y = (x * scale.reshape(bshape).astype(x.dtype) + shift.reshape(bshape).astype(x.dtype))
    if residual is not None:
        y = y + np.asarray(residual)
    y = _activate(y, activation, negative_slope).astype(x.dtype, copy=False)
    if out is not None:
        out[...] = y
        y = out
    return y


def batch_norm(x, running_mean=None, running_var=None, weight=None, bias=None, training=False,
               momentum=0.1, eps=1e-5, *, axis=1, out=None, num_threads=None,
               skip_nonfinite=False, activation=None, residual=None, negative_slope=None):
    """``torch.nn.functional.batch_norm`` semantics: see :func:`cbn.batch_norm`."""
    if training:
        return batch_norm_forward(x, weight, bias, eps=eps, running_mean=running_mean,
                                  running_var=running_var, momentum=momentum, axis=axis,
                                  out=out, skip_nonfinite=skip_nonfinite, activation=activation,
                                  residual=residual, negative_slope=negative_slope).out
    return batch_norm_inference(x, running_mean, running_var, weight, bias, eps=eps, axis=axis,
                                out=out, activation=activation, residual=residual,
                                negative_slope=negative_slope)
