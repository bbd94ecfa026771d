"""The NumPy column: batch norm as a competent NumPy user writes it, in the input's dtype.

:mod:`cbn.reference` is the float64 oracle of the tests: it promotes float32 data to float64
(its statistics are float64), so timing it as "NumPy" would charge NumPy for a float64 pass a
user would not run.  These functions keep every array in ``x``'s dtype (NumPy's own pairwise
sums for the statistics), broadcast per-channel vectors shaped for the channel axis, and write
the big arrays in place where a user would.  They are timed only, never used as an oracle;
``tests/system/test_bench_peers.py`` checks them against :mod:`cbn.reference`.
"""

import numpy as np


def _shape(x, axis):
    """Broadcast shape of a per-channel vector and the reduced axes."""
    a = axis % x.ndim
    shape = [1] * x.ndim
    shape[a] = x.shape[a]
    return tuple(shape), tuple(i for i in range(x.ndim) if i != a)


def _vec(v, x, shape):
    return np.asarray(v, dtype=x.dtype).reshape(shape)


def _accumulator(dtype):
    """The dtype a user sums in: float32 for the 16-bit formats, whose own sums overflow (and
    whose reduction counts, e.g. 100,352 elements per channel, are not even representable in
    float16), else the data's."""
    return np.float32 if dtype.itemsize == 2 else dtype


def _activate(y, activation, residual):
    """y (+ residual), then the activation, in place."""
    if residual is not None:
        y += residual
    if activation == "relu":
        np.maximum(y, 0, out=y)
    elif activation == "silu":
        y /= 1 + np.exp(-y)
    return y


def inference(x, running_mean, running_var, weight, bias, eps, axis, activation=None,
              residual=None):
    """Evaluation-mode batch norm, then ``+ residual`` and the activation (relu, silu)."""
    shape, _ = _shape(x, axis)
    scale = _vec(weight / np.sqrt(running_var + eps), x, shape)
    y = x - _vec(running_mean, x, shape)
    y *= scale
    y += _vec(bias, x, shape)
    return _activate(y, activation, residual)


def forward(x, weight, bias, eps, running_mean, running_var, momentum, axis, activation=None,
            residual=None):
    """Training forward: batch statistics, the running statistics updated in place, then the
    normalised output (``+ residual`` and the activation)."""
    shape, red = _shape(x, axis)
    mean = x.mean(axis=red, keepdims=True)
    xc = x - mean
    var = np.mean(np.square(xc), axis=red, keepdims=True)
    n = x.size // x.shape[axis]
    running_mean *= 1 - momentum
    running_mean += momentum * mean.reshape(-1)
    running_var *= 1 - momentum
    running_var += momentum * var.reshape(-1) * (n / (n - 1))
    xc *= _vec(weight, x, shape) / np.sqrt(var + x.dtype.type(eps))
    xc += _vec(bias, x, shape)
    return _activate(xc, activation, residual)


def forward_weighted(x, wts, weight, bias, eps, running_mean, running_var, momentum, axis):
    """The masked or weighted training forward (wts: one bool or float per position): the
    weighted statistics, the running statistics updated in place, the normalised output."""
    shape, red = _shape(x, axis)
    w = np.expand_dims(wts, axis % x.ndim).astype(x.dtype)
    total = np.broadcast_to(w, x.shape).sum(axis=red, keepdims=True)
    mean = (w * x).sum(axis=red, keepdims=True) / total
    xc = x - mean
    var = (w * np.square(xc)).sum(axis=red, keepdims=True) / total
    running_mean *= 1 - momentum
    running_mean += momentum * mean.reshape(-1)
    running_var *= 1 - momentum
    running_var += momentum * (var * total / (total - 1)).reshape(-1)
    xc *= _vec(weight, x, shape) / np.sqrt(var + x.dtype.type(eps))
    xc += _vec(bias, x, shape)
    return xc


def backward(dy, x, mean, invstd, weight, axis, y=None):
    """dx, dweight, dbias from the saved statistics; ``y`` (the output of a fused ReLU): dy is
    first masked where ``y`` is not positive (the gradient into the residual too)."""
    shape, red = _shape(x, axis)
    g = dy if y is None else np.where(y > 0, dy, dy.dtype.type(0))
    m, inv = _vec(mean, x, shape), _vec(invstd, x, shape)
    xhat = (x - m) * inv
    acc = _accumulator(x.dtype)
    dbias = g.sum(axis=red, dtype=acc)
    dweight = (g * xhat).sum(axis=red, dtype=acc)
    n = x.size // x.shape[axis]
    k = _vec(weight, x, shape) * inv
    dx = g - (dbias.reshape(shape) / n).astype(x.dtype)
    dx -= xhat * (dweight.reshape(shape) / n).astype(x.dtype)
    dx *= k
    return (dx, dweight, dbias) if y is None else (dx, dweight, dbias, g)
