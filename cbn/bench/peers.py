"""The optional peers a user might pick instead of cbn: straightforward parallel numba kernels,
as a competent user would write them, and ONNX Runtime's BatchNormalization.

numba: each op in its two layouts, x viewed as ``(outer, C, inner)`` (channel-major runs,
``inner > 1``) or ``(rows, C)`` (channels-last, ``inner == 1``), float64 accumulation, the
parallel loop over channels (or run pairs / row chunks) with ``prange``:

* inference and the frozen layer: ``y = x * a + b`` with ``a``, ``b`` precomputed per channel;
* forward: two-pass statistics per channel (mean, then the centred sum of squares), then
  ``x * a + b``;
* backward: the two sums per channel, ``sum(dy)`` and ``sum(dy * (x - mean))``, then the dx
  pass ``dy * k1 + (x - mean) * k2 + k3``.

ONNX Runtime: one ``BatchNormalization`` node (inference only, channel at axis 1 -- the layout
ONNX defines), run with ``intra_op_num_threads`` set to the bench's threads.

Both are imported lazily; a peer that is not installed gives no callables (its columns show -).
"""

import numpy as np

_NUMBA = None


def import_numba():
    """numba, or None when it cannot be imported."""
    try:
        import numba
    except (ImportError, OSError):
        return None
    return numba


def import_onnxruntime():
    """onnxruntime and onnx, or None when either cannot be imported."""
    try:
        import onnx
        import onnxruntime
    except (ImportError, OSError):
        return None
    return onnxruntime, onnx


def _numba_kernels():
    """The compiled numba kernels (compiled once per process, on first use)."""
    global _NUMBA
    if _NUMBA is not None:
        return _NUMBA
    numba = import_numba()
    if numba is None:
        return None
    njit, prange = numba.njit, numba.prange

    @njit(parallel=True)
    def affine_cm(x, a, b, y):
        outer, C, inner = x.shape
        for k in prange(outer * C):
            o, c = k // C, k % C
            for i in range(inner):
                y[o, c, i] = x[o, c, i] * a[c] + b[c]

    @njit(parallel=True)
    def affine_cl(x, a, b, y):
        for r in prange(x.shape[0]):
            for c in range(x.shape[1]):
                y[r, c] = x[r, c] * a[c] + b[c]

    @njit(parallel=True)
    def stats_cm(x):
        outer, C, inner = x.shape
        mean, var = np.empty(C), np.empty(C)
        for c in prange(C):
            s = 0.0
            for o in range(outer):
                for i in range(inner):
                    s += x[o, c, i]
            m = s / (outer * inner)
            q = 0.0
            for o in range(outer):
                for i in range(inner):
                    d = x[o, c, i] - m
                    q += d * d
            mean[c], var[c] = m, q / (outer * inner)
        return mean, var

    @njit(parallel=True)
    def stats_cl(x):
        rows, C = x.shape
        nt = numba.get_num_threads()
        s, q = np.zeros((nt, C)), np.zeros((nt, C))
        for t in prange(nt):
            for r in range(t * rows // nt, (t + 1) * rows // nt):
                for c in range(C):
                    s[t, c] += x[r, c]
        mean = s.sum(axis=0) / rows
        for t in prange(nt):
            for r in range(t * rows // nt, (t + 1) * rows // nt):
                for c in range(C):
                    d = x[r, c] - mean[c]
                    q[t, c] += d * d
        return mean, q.sum(axis=0) / rows

    @njit(parallel=True)
    def sums_cm(dy, x, mean):
        outer, C, inner = x.shape
        sdy, sdyx = np.empty(C), np.empty(C)
        for c in prange(C):
            a, b = 0.0, 0.0
            for o in range(outer):
                for i in range(inner):
                    a += dy[o, c, i]
                    b += dy[o, c, i] * (x[o, c, i] - mean[c])
            sdy[c], sdyx[c] = a, b
        return sdy, sdyx

    @njit(parallel=True)
    def sums_cl(dy, x, mean):
        rows, C = x.shape
        nt = numba.get_num_threads()
        a, b = np.zeros((nt, C)), np.zeros((nt, C))
        for t in prange(nt):
            for r in range(t * rows // nt, (t + 1) * rows // nt):
                for c in range(C):
                    a[t, c] += dy[r, c]
                    b[t, c] += dy[r, c] * (x[r, c] - mean[c])
        return a.sum(axis=0), b.sum(axis=0)

    @njit(parallel=True)
    def dx_cm(dy, x, mean, k1, k2, k3, dx):
        outer, C, inner = x.shape
        for k in prange(outer * C):
            o, c = k // C, k % C
            for i in range(inner):
                dx[o, c, i] = dy[o, c, i] * k1[c] + (x[o, c, i] - mean[c]) * k2[c] + k3[c]

    @njit(parallel=True)
    def dx_cl(dy, x, mean, k1, k2, k3, dx):
        for r in prange(x.shape[0]):
            for c in range(x.shape[1]):
                dx[r, c] = dy[r, c] * k1[c] + (x[r, c] - mean[c]) * k2[c] + k3[c]

    # start numba's threading layer now: its start-up resets the OpenMP pool torch shares
    # (to all threads), which the caller then sets back (make_calls)
    one = np.ones((1, 1))
    affine_cl(one, np.ones(1), np.zeros(1), np.empty((1, 1)))
    _NUMBA = numba, {"affine": (affine_cm, affine_cl), "stats": (stats_cm, stats_cl),
                     "sums": (sums_cm, sums_cl), "dx": (dx_cm, dx_cl)}
    return _NUMBA


def _views(arrays, axis):
    """Each array as (outer, C, inner), or as (rows, C) when inner == 1; and that flag."""
    a = arrays[0]
    ax = axis % a.ndim
    outer = int(np.prod(a.shape[:ax], dtype=np.int64))
    C = a.shape[ax]
    inner = int(np.prod(a.shape[ax + 1:], dtype=np.int64))
    if inner == 1:
        return [v.reshape(outer, C) for v in arrays], True
    return [v.reshape(outer, C, inner) for v in arrays], False


def numba_calls(op, case, d, nt, eps, momentum):
    """The numba peer's callable for ``op`` on ``case`` (None: numba missing or op not covered).

    ``a``, ``b`` (and the backward coefficients) are per-channel arrays of the data's dtype,
    as a user would keep them; statistics and sums accumulate in float64.  The callable
    returns y (inference, frozen), ``(y, mean, biased var)`` (forward) or ``(dx, dweight,
    dbias)`` (backward, with the statistics of ``d.x``).
    """
    got = _numba_kernels()
    if (got is None or op not in ("inference", "frozen", "forward", "backward")
            or d.x.dtype.itemsize == 2):  # numba has no float16/bfloat16 arithmetic on the CPU
        return None
    numba, k = got
    numba.set_num_threads(max(1, min(nt, numba.config.NUMBA_NUM_THREADS)))
    dt = d.x.dtype
    y_full, dx_full = np.empty_like(d.x), np.empty_like(d.x)
    (x, y, dy, dx), cl = _views([d.x, y_full, d.dy, dx_full], case.axis)
    pick = 1 if cl else 0
    affine, stats = k["affine"][pick], k["stats"][pick]
    w, b = d.weight, d.bias
    if op in ("inference", "frozen"):
        inv = 1.0 / np.sqrt(d.running_var + eps)
        a_c = (w * inv).astype(dt)
        b_c = (b - d.running_mean * w * inv).astype(dt)

        def inference():
            affine(x, a_c, b_c, y)
            return y_full
        return inference
    if op == "forward":
        rm, rv = d.running_mean.copy(), d.running_var.copy()
        n = d.x.size // d.x.shape[case.axis]

        def forward():
            mean, var = stats(x)
            inv = 1.0 / np.sqrt(var + eps)
            affine(x, (w * inv).astype(dt), (b - mean * w * inv).astype(dt), y)
            rm[:] = (1 - momentum) * rm + momentum * mean
            rv[:] = (1 - momentum) * rv + momentum * var * (n / (n - 1))
            return y_full, mean, var
        return forward
    sums, dxk = k["sums"][pick], k["dx"][pick]
    n = d.x.size // d.x.shape[case.axis]
    mean64, var64 = stats(x)
    invstd = 1.0 / np.sqrt(var64 + eps)
    mean = mean64.astype(dt)

    def backward():
        sdy, sdyx = sums(dy, x, mean64)
        k1 = w * invstd
        k2 = -k1 * invstd * invstd * sdyx / n
        k3 = -k1 * sdy / n
        dxk(dy, x, mean, k1.astype(dt), k2.astype(dt), k3.astype(dt), dx)
        return dx_full, sdyx * invstd, sdy
    return backward


def onnxruntime_call(op, case, d, nt, eps):
    """ONNX Runtime's BatchNormalization for inference (and the frozen layer) on channel axis
    1 (None otherwise, or when onnxruntime is missing)."""
    got = import_onnxruntime()
    if (got is None or op not in ("inference", "frozen") or case.axis % d.x.ndim != 1
            or d.x.dtype.itemsize == 2):  # float32 and float64 models only
        return None
    ort, onnx = got
    from onnx import TensorProto, helper, numpy_helper

    dt = d.x.dtype
    elem = TensorProto.FLOAT if dt == np.float32 else TensorProto.DOUBLE
    params = {"scale": d.weight, "B": d.bias, "mean": d.running_mean, "var": d.running_var}
    node = helper.make_node("BatchNormalization", ["X", *params], ["Y"], epsilon=eps)
    graph = helper.make_graph(
        [node], "bn", [helper.make_tensor_value_info("X", elem, list(d.x.shape))],
        [helper.make_tensor_value_info("Y", elem, list(d.x.shape))],
        [numpy_helper.from_array(v.astype(dt), name) for name, v in params.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 15)])
    model.ir_version = min(model.ir_version, 8)
    so = ort.SessionOptions()
    so.intra_op_num_threads = nt
    so.inter_op_num_threads = 1
    # ORT's pool spins after a run by default, on the cores the next implementation of the
    # interleaved round runs on: cbn's frozen (4096, 1024) float32 call measured 739 us right
    # after a spinning ORT call, 684 us after a blocking one, 574 us alone (2 threads); ORT
    # itself ran 1367 us spinning, 1277 us blocking
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    sess = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
    x = d.x
    return lambda: sess.run(None, {"X": x})
