"""cbn.reference: the batch-norm formulas in plain NumPy.

The oracle for the test suite and the baseline for the benchmarks.  Each function has the
signature of its fast twin in :mod:`cbn` (``num_threads`` is accepted and ignored) and computes
in the dtype of its input with NumPy's own reductions: call it with float64 arrays for a
reference answer.  No validation beyond what NumPy does.
"""

import numpy as np

from ._types import BackwardResult, ForwardResult

__all__ = ["batch_norm", "batch_norm_forward", "batch_norm_backward", "batch_norm_inference"]


def _axes(x, axis):
    axis = axis % x.ndim
    reduce_axes = tuple(i for i in range(x.ndim) if i != axis)
    bshape = [1] * x.ndim
    bshape[axis] = x.shape[axis]
    return reduce_axes, tuple(bshape), x.shape[axis]


def batch_norm_forward(x, weight=None, bias=None, *, eps=1e-5, running_mean=None,
                       running_var=None, momentum=0.1, axis=1, out=None, num_threads=None,
                       skip_nonfinite=False, activation=None):
    """Training forward: ``(x - mean) / sqrt(var + eps) * weight + bias`` with batch statistics.

    Parameters and returns as :func:`cbn.batch_norm_forward`; the running statistics are
    updated in place with the unbiased variance.
    """
    x = np.asarray(x)
    red, bshape, C = _axes(x, axis)
    n = x.size // C if C else 0
    mean = x.mean(axis=red)
    var = x.var(axis=red)
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
    if activation == "relu":
        y = np.where(y < 0, 0, y)
    y = y.astype(x.dtype, copy=False)
    if out is not None:
        out[...] = y
        y = out
    return ForwardResult(y, mean.astype(np.float64), invstd.astype(np.float64))


def batch_norm_backward(dy, x, mean, invstd, weight=None, *, axis=1, out=None, num_threads=None,
                        needs=(True, True, True), activation=None, y=None):
    """Gradients of the training forward: see :func:`cbn.batch_norm_backward`.  With
    ``activation="relu"``, ``dy`` is first masked by ``y > 0`` (``y`` the forward output)."""
    x = np.asarray(x)
    dy = np.asarray(dy)
    if activation == "relu":
        dy = np.where(np.asarray(y) > 0, dy, 0).astype(dy.dtype)
    red, bshape, C = _axes(x, axis)
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


def batch_norm_inference(x, running_mean, running_var, weight=None, bias=None, *, eps=1e-5,
                         axis=1, out=None, num_threads=None, activation=None):
    """Evaluation pass: ``x * scale + shift`` with ``scale = weight / sqrt(var + eps)`` and
    ``shift = bias - mean * scale``."""
    x = np.asarray(x)
    _, bshape, C = _axes(x, axis)
    scale = 1.0 / np.sqrt(np.asarray(running_var) + eps)
    if weight is not None:
        scale = scale * np.asarray(weight)
    shift = -np.asarray(running_mean) * scale
    if bias is not None:
        shift = shift + np.asarray(bias)
    y = (x * scale.reshape(bshape).astype(x.dtype) + shift.reshape(bshape).astype(x.dtype))
    if activation == "relu":
        y = np.where(y < 0, 0, y)
    y = y.astype(x.dtype, copy=False)
    if out is not None:
        out[...] = y
        y = out
    return y


def batch_norm(x, running_mean=None, running_var=None, weight=None, bias=None, training=False,
               momentum=0.1, eps=1e-5, *, axis=1, out=None, num_threads=None,
               skip_nonfinite=False, activation=None):
    """``torch.nn.functional.batch_norm`` semantics: see :func:`cbn.batch_norm`."""
    if training:
        return batch_norm_forward(x, weight, bias, eps=eps, running_mean=running_mean,
                                  running_var=running_var, momentum=momentum, axis=axis,
                                  out=out, skip_nonfinite=skip_nonfinite,
                                  activation=activation).out
    return batch_norm_inference(x, running_mean, running_var, weight, bias, eps=eps, axis=axis,
                                out=out, activation=activation)
