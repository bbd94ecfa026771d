"""The timed callables: cbn, NumPy (:mod:`~cbn.bench.numpy_peer`: in the input's dtype) and
torch for each op, the torch
adapters, and :func:`make_calls`, which adds the optional peers (numba, ONNX Runtime:
:mod:`~cbn.bench.peers`) and the floor call to them."""

import numpy as np

import cbn

from . import numpy_peer
from .floor import floor_call
from .peers import numba_calls, onnxruntime_call

#: eps and momentum of every timed call (torch's defaults).
EPS = 1e-5
MOMENTUM = 0.1

#: The implementations, in column order.
IMPLS = ("cbn", "numpy", "torch", "numba", "onnxruntime", "floor")
#: The peers: implementations a user might pick instead of cbn (each a column when installed).
PEERS = ("torch", "numba", "onnxruntime")


def import_torch():
    """torch, or None when it cannot be imported."""
    try:
        import torch
    except (ImportError, OSError):
        return None
    return torch


def _tensor(torch, arr):
    """``torch.from_numpy``, also for ml_dtypes' bfloat16 (as torch.bfloat16, sharing
    memory)."""
    if arr.dtype.kind == "V" and arr.dtype.itemsize == 2:  # ml_dtypes.bfloat16
        return torch.from_numpy(arr.view(np.int16)).view(torch.bfloat16)
    return torch.from_numpy(arr)


def _torch_layout(torch, arr, axis):
    """A torch view of ``arr`` with the channel at dim 1, sharing memory (None if impossible).

    Channels-last arrays become channels_last-strided NCHW tensors, as torch expects them.
    """
    a = axis % arr.ndim
    if a == 0:
        return None
    t = _tensor(torch, arr)
    if a == 1:
        return t
    rest = [i for i in range(1, arr.ndim) if i != a]
    return t.permute(0, a, *rest)


def _inference_calls(case, d, nt, torch, out=None):
    """Callables for the inference op, keyed by implementation (floor excluded)."""
    y = np.empty_like(d.x) if out is None else out
    rm, rv, w, b = d.running_mean, d.running_var, d.weight, d.bias
    calls = {
        "cbn": lambda: cbn.batch_norm_inference(d.x, rm, rv, w, b, eps=EPS, axis=case.axis,
                                                out=y, num_threads=nt),
        "numpy": lambda: numpy_peer.inference(d.x, rm, rv, w, b, EPS, case.axis),
    }
    xt = None if torch is None else _torch_layout(torch, d.x, case.axis)
    if xt is not None:
        F = torch.nn.functional
        trm, trv, tw, tb = (_tensor(torch, a) for a in (rm, rv, w, b))
        calls["torch"] = lambda: F.batch_norm(xt, trm, trv, tw, tb, False, MOMENTUM, EPS)
    return calls


def _per_channel(v, case, ndim, dtype):
    """A per-channel vector shaped to broadcast against x (channel at ``case.axis``)."""
    shape = [1] * ndim
    shape[case.axis % ndim] = v.size
    return np.ascontiguousarray(v, dtype=dtype).reshape(shape)


def _frozen_calls(case, d, nt, torch, out=None):
    """The deployment path: cbn's frozen layer, and ``x * a + b`` with precomputed per-channel
    ``a``, ``b`` in x's dtype as a NumPy user and a torch user would write it."""
    y = np.empty_like(d.x) if out is None else out
    layer = cbn.FrozenBatchNorm.from_stats(d.running_mean, d.running_var, d.weight, d.bias,
                                           EPS, axis=case.axis, num_threads=nt)
    inv = 1.0 / np.sqrt(d.running_var + EPS)
    a64, b64 = d.weight * inv, d.bias - d.running_mean * d.weight * inv
    a, b = (_per_channel(v, case, d.x.ndim, d.x.dtype) for v in (a64, b64))
    tmp = np.empty_like(d.x)

    def numpy_frozen():
        np.multiply(d.x, a, out=tmp)
        return np.add(tmp, b, out=tmp)
    calls = {"cbn": lambda: layer(d.x, out=y), "numpy": numpy_frozen}
    if torch is not None:
        xt, ta, tb = _tensor(torch, d.x), _tensor(torch, a), _tensor(torch, b)
        calls["torch"] = lambda: torch.addcmul(tb, xt, ta)
    return calls


def _forward_calls(case, d, nt, torch, out=None):
    """Callables for the training forward op (running statistics updated by all)."""
    y = np.empty_like(d.x) if out is None else out
    w, b = d.weight, d.bias
    rm_c, rv_c = d.running_mean.copy(), d.running_var.copy()
    rm_n, rv_n = d.running_mean.copy(), d.running_var.copy()
    calls = {
        "cbn": lambda: cbn.batch_norm_forward(d.x, w, b, eps=EPS, running_mean=rm_c,
                                              running_var=rv_c, momentum=MOMENTUM,
                                              axis=case.axis, out=y, num_threads=nt),
        "numpy": lambda: numpy_peer.forward(d.x, w, b, EPS, rm_n, rv_n, MOMENTUM, case.axis),
    }
    xt = None if torch is None else _torch_layout(torch, d.x, case.axis)
    if xt is not None:
        F = torch.nn.functional
        trm, trv = _tensor(torch, d.running_mean.copy()), _tensor(torch, d.running_var.copy())
        tw, tb = _tensor(torch, w), _tensor(torch, b)
        calls["torch"] = lambda: F.batch_norm(xt, trm, trv, tw, tb, True, MOMENTUM, EPS)
    return calls


def _backward_calls(case, d, nt, torch, out=None):
    """Callables for the backward op (all three gradients), from saved forward statistics."""
    dx = np.empty_like(d.x) if out is None else out
    w = d.weight
    _, mean, invstd = cbn.batch_norm_forward(d.x, w, d.bias, eps=EPS, axis=case.axis)
    calls = {
        "cbn": lambda: cbn.batch_norm_backward(d.dy, d.x, mean, invstd, w, axis=case.axis,
                                               out=dx, num_threads=nt),
        "numpy": lambda: numpy_peer.backward(d.dy, d.x, mean, invstd, w, case.axis),
    }
    xt = None if torch is None else _torch_layout(torch, d.x, case.axis)
    if xt is not None:
        aten = torch.ops.aten
        dyt = _torch_layout(torch, d.dy, case.axis)
        tw, tb = _tensor(torch, w), _tensor(torch, d.bias)
        trm, trv = _tensor(torch, d.running_mean.copy()), _tensor(torch, d.running_var.copy())
        _, save_mean, save_invstd = aten.native_batch_norm(xt, tw, tb, trm, trv, True,
                                                           MOMENTUM, EPS)
        mask = [True, True, True]
        calls["torch"] = lambda: aten.native_batch_norm_backward(
            dyt, xt, tw, trm, trv, save_mean, save_invstd, True, EPS, mask)
    return calls


def _masked_forward_calls(kind):
    """Callables for the masked (kind "mask") or weighted ("sample_weight") training forward:
    cbn, and the weighted statistics as a NumPy and a torch user compose them (neither
    library has a masked batch norm)."""
    def build(case, d, nt, torch, out=None):
        y = np.empty_like(d.x) if out is None else out
        w, b = d.weight, d.bias
        wts = d.mask if kind == "mask" else d.sample_weight
        rm_c, rv_c = d.running_mean.copy(), d.running_var.copy()
        rm_n, rv_n = d.running_mean.copy(), d.running_var.copy()
        calls = {
            "cbn": lambda: cbn.batch_norm_forward(d.x, w, b, eps=EPS, running_mean=rm_c,
                                                  running_var=rv_c, momentum=MOMENTUM,
                                                  axis=case.axis, out=y, num_threads=nt,
                                                  **{kind: wts}),
            "numpy": lambda: numpy_peer.forward_weighted(d.x, wts, w, b, EPS, rm_n, rv_n,
                                                         MOMENTUM, case.axis),
        }
        if torch is not None:  # in x's own layout: the reductions name their dims
            xt = _tensor(torch, d.x)
            a = case.channel_axis
            wt = _tensor(torch, np.expand_dims(wts, a).astype(d.x.dtype))
            dims = tuple(i for i in range(d.x.ndim) if i != a)
            shape = [1] * d.x.ndim
            shape[a] = case.channels
            tw, tb = _tensor(torch, w).reshape(shape), _tensor(torch, b).reshape(shape)
            trm, trv = _tensor(torch, d.running_mean.copy()), _tensor(torch, d.running_var.copy())

            def torch_weighted():
                total = wt.expand_as(xt).sum(dims)
                mean = (wt * xt).sum(dims) / total
                xc = xt - mean.reshape(shape)
                var = (wt * xc * xc).sum(dims) / total
                trm.mul_(1 - MOMENTUM).add_(MOMENTUM * mean)
                trv.mul_(1 - MOMENTUM).add_(MOMENTUM * var * total / (total - 1))
                return xc * torch.rsqrt(var.reshape(shape) + EPS) * tw + tb
            calls["torch"] = torch_weighted
        return calls
    return build


def _fused_inference_calls(activation, residual):
    """A builder of the callables of a fused inference op: cbn in one pass; NumPy and torch
    eager as separate ops (batch norm, then the add, then the activation)."""
    def build(case, d, nt, torch, out=None):
        y = np.empty_like(d.x) if out is None else out
        rm, rv, w, b = d.running_mean, d.running_var, d.weight, d.bias
        r = d.residual if residual else None
        calls = {
            "cbn": lambda: cbn.batch_norm_inference(d.x, rm, rv, w, b, eps=EPS, axis=case.axis,
                                                    out=y, num_threads=nt,
                                                    activation=activation, residual=r),
            "numpy": lambda: numpy_peer.inference(d.x, rm, rv, w, b, EPS, case.axis,
                                                  activation=activation, residual=r),
        }
        xt = None if torch is None else _torch_layout(torch, d.x, case.axis)
        if xt is not None:
            F = torch.nn.functional
            act = getattr(F, activation)
            rt = _torch_layout(torch, d.residual, case.axis)
            trm, trv, tw, tb = (_tensor(torch, a) for a in (rm, rv, w, b))
            if residual:
                calls["torch"] = lambda: act(F.batch_norm(xt, trm, trv, tw, tb, False, MOMENTUM,
                                                          EPS) + rt)
            else:
                calls["torch"] = lambda: act(F.batch_norm(xt, trm, trv, tw, tb, False, MOMENTUM,
                                                          EPS))
        return calls
    return build


def _forward_add_relu_calls(case, d, nt, torch, out=None):
    """Training forward + residual + ReLU (running statistics updated by all)."""
    y = np.empty_like(d.x) if out is None else out
    w, b, r = d.weight, d.bias, d.residual
    rm_c, rv_c = d.running_mean.copy(), d.running_var.copy()
    rm_n, rv_n = d.running_mean.copy(), d.running_var.copy()
    calls = {
        "cbn": lambda: cbn.batch_norm_forward(d.x, w, b, eps=EPS, running_mean=rm_c,
                                              running_var=rv_c, momentum=MOMENTUM,
                                              axis=case.axis, out=y, num_threads=nt,
                                              activation="relu", residual=r),
        "numpy": lambda: numpy_peer.forward(d.x, w, b, EPS, rm_n, rv_n, MOMENTUM, case.axis,
                                            activation="relu", residual=r),
    }
    xt = None if torch is None else _torch_layout(torch, d.x, case.axis)
    if xt is not None:
        F = torch.nn.functional
        rt = _torch_layout(torch, r, case.axis)
        trm, trv = _tensor(torch, d.running_mean.copy()), _tensor(torch, d.running_var.copy())
        tw, tb = _tensor(torch, w), _tensor(torch, b)
        calls["torch"] = lambda: F.relu(F.batch_norm(xt, trm, trv, tw, tb, True, MOMENTUM, EPS)
                                        + rt)
    return calls


def _backward_add_relu_calls(case, d, nt, torch, out=None):
    """Backward of relu(bn(x) + residual): dx, dweight, dbias and dresidual; torch eager as
    ReLU's backward (threshold_backward) and then batch norm's."""
    dx = np.empty_like(d.x) if out is None else out
    dres = np.empty_like(d.x)
    w, r = d.weight, d.residual
    y, mean, invstd = cbn.batch_norm_forward(d.x, w, d.bias, eps=EPS, axis=case.axis,
                                             activation="relu", residual=r)
    calls = {
        "cbn": lambda: cbn.batch_norm_backward(d.dy, d.x, mean, invstd, w, axis=case.axis,
                                               out=dx, num_threads=nt, activation="relu", y=y,
                                               residual=r, dresidual_out=dres),
        "numpy": lambda: numpy_peer.backward(d.dy, d.x, mean, invstd, w, case.axis, y=y),
    }
    xt = None if torch is None else _torch_layout(torch, d.x, case.axis)
    if xt is not None:
        aten = torch.ops.aten
        dyt, yt = _torch_layout(torch, d.dy, case.axis), _torch_layout(torch, y, case.axis)
        tw, tb = _tensor(torch, w), _tensor(torch, d.bias)
        trm, trv = _tensor(torch, d.running_mean.copy()), _tensor(torch, d.running_var.copy())
        _, save_mean, save_invstd = aten.native_batch_norm(xt, tw, tb, trm, trv, True,
                                                           MOMENTUM, EPS)
        mask = [True, True, True]

        def torch_backward():
            g = aten.threshold_backward(dyt, yt, 0)  # also the residual's gradient
            return g, aten.native_batch_norm_backward(g, xt, tw, trm, trv, save_mean,
                                                      save_invstd, True, EPS, mask)
        calls["torch"] = torch_backward
    return calls


#: The callables of each op: ``builder(case, data, num_threads, torch, out=None)``; the
#: scaling table reuses their cbn entry with its own output array.
CALL_BUILDERS = {"inference": _inference_calls, "forward": _forward_calls,
                 "backward": _backward_calls, "frozen": _frozen_calls,
                 "inference_add_relu": _fused_inference_calls("relu", True),
                 "forward_add_relu": _forward_add_relu_calls,
                 "inference_silu": _fused_inference_calls("silu", False),
                 "backward_add_relu": _backward_add_relu_calls,
                 "forward_masked": _masked_forward_calls("mask"),
                 "forward_weighted": _masked_forward_calls("sample_weight")}


def make_calls(op, case, data, num_threads, torch=None, peers=True):
    """Zero-argument callables of every implementation for ``op`` on ``case``.

    Parameters
    ----------
    op : str
        One of :data:`~cbn.bench.cases.OPS`.
    case : Case
        The input configuration.
    data : CaseData
        Its inputs (from ``make_data``).
    num_threads : int
        Threads for cbn and the floor kernels.
    torch : module, optional
        The torch module; None leaves torch out.
    peers : bool, default True
        Add numba and ONNX Runtime where installed (and where they cover the op).

    Returns
    -------
    dict of str to callable
        Keys among :data:`IMPLS`, in column order.
    """
    calls = CALL_BUILDERS[op](case, data, num_threads, torch)
    if peers:
        for name, call in (("numba", numba_calls(op, case, data, num_threads, EPS, MOMENTUM)),
                           ("onnxruntime", onnxruntime_call(op, case, data, num_threads, EPS))):
            if call is not None:
                calls[name] = call
        if torch is not None and "torch" in calls:
            # numba's OpenMP layer shares the OpenMP runtime with torch and sets its thread
            # count back to all threads as it runs: each torch round sets its own first (the
            # builders' torch callables are Python functions, so it rides on them unwrapped)
            calls["torch"].prepare = lambda: torch.set_num_threads(num_threads)
    calls["floor"] = floor_call(op, data, np.empty_like(data.x), num_threads)
    return {name: calls[name] for name in IMPLS if name in calls}
