"""Leaks: repeated calls of every entry point (fast C path, Python path, layers, the
sharded-batch functions, fused epilogues, float16, Dask, failing calls) neither change the reference counts of their
arguments nor grow the resident memory."""

import gc
import os
import sys

import numpy as np
import pytest

import cbn

# The long profile (CBN_LEAKS_LONG=1): 200,000 calls of every entry (Dask: 20,000 graphs).
LONG = os.environ.get("CBN_LEAKS_LONG") == "1"


def _rss_bytes():
    try:
        import psutil
        return psutil.Process().memory_info().rss
    except ImportError:  # pragma: no cover
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _leak_ops():
    """name -> (function of no arguments, arrays whose reference counts must not change)."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 3, 4))
    x32 = x.astype(np.float32)
    xf = np.asfortranarray(x)  # the Python (slow) path
    dy = rng.standard_normal((2, 3, 4))
    w, b = rng.uniform(0.5, 2, 3), rng.standard_normal(3)
    rm, rv = np.zeros(3), np.ones(3)
    rm32, rv32 = np.zeros(3, np.float32), np.ones(3, np.float32)
    f = cbn.batch_norm_forward(x, w, b)
    mean, invstd = f.mean, f.invstd
    out = np.empty_like(x)
    layer = cbn.BatchNorm(3, dtype=np.float64)
    layer_eval = cbn.BatchNorm(3).eval()
    frozen = cbn.FrozenBatchNorm.from_stats(rm, rv, w, b)
    sums = cbn.backward_reduce(dy, x, mean)
    bad_w = np.ones(4)
    x16 = x.astype(np.float16)
    frozen_act = cbn.FrozenBatchNorm.from_stats(rm, rv, w, b, activation="gelu_tanh")

    def forward():
        cbn.batch_norm_forward(x, w, b, running_mean=rm, running_var=rv, momentum=0.0)
        cbn.batch_norm_forward(x32, w, b, running_mean=rm32, running_var=rv32, momentum=0.0,
                               out=np.empty_like(x32))

    def forward_slow():
        cbn.batch_norm_forward(xf, w, b, running_mean=rm, running_var=rv, momentum=0.0,
                               num_threads=np.int64(1))

    def backward():
        cbn.batch_norm_backward(dy, x, mean, invstd, w, out=out)
        cbn.batch_norm_backward(dy, x, mean, invstd, w, needs=(False, True, True))

    def inference():
        cbn.batch_norm_inference(x, rm, rv, w, b)
        cbn.batch_norm_inference(x32, rm32, rv32, w, b)

    def batch_norm():
        cbn.batch_norm(x, rm, rv, w, b, training=True, momentum=0.0)
        cbn.batch_norm(x, rm, rv, w, b, training=False)

    def layer_step():
        layer(x)
        layer.backward(dy)
        layer.zero_grad()
        layer_eval(x32)
        layer_eval.backward(x32)

    def frozen_call():
        frozen(x)
        frozen.backward(dy)

    def sharded():
        m = cbn.moments(x)
        cbn.merge_moments(m, m)
        cbn.normalize(x, mean, invstd, w, b)
        cbn.backward_reduce(dy, x, mean)
        cbn.backward_elemt(dy, x, mean, invstd, w, sums.sum_dy, sums.sum_dy_xmu, 8)

    def errors():
        for fn in (lambda: cbn.batch_norm_forward(x, bad_w, running_mean=rm),
                   lambda: cbn.batch_norm_inference(x, rm, rv, bad_w),
                   lambda: cbn.batch_norm_backward(dy, x, mean, invstd, bad_w),
                   lambda: layer(x32[:, :2])):
            try:
                fn()
            except (TypeError, ValueError):
                pass

    def fused():
        cbn.batch_norm_inference(x32, rm32, rv32, w, b, residual=x32, activation="relu")
        cbn.batch_norm_forward(x, w, b, residual=dy, activation="silu")
        cbn.batch_norm_backward(dy, x, mean, invstd, w, bias=b, residual=dy, activation="gelu")
        frozen_act(x, residual=dy)

    def half():
        cbn.batch_norm_forward(x16, w, b)
        cbn.batch_norm_backward(x16, x16, mean, invstd, w)
        cbn.batch_norm_inference(x16, rm, rv, w, b)

    def dask_ops():
        da = pytest.importorskip("dask.array")
        import cbn.dask
        xd = da.from_array(x, chunks=(1, 3, 4))
        r = cbn.dask.batch_norm_forward(xd, w, b)
        r.out.compute(scheduler="synchronous")
        cbn.dask.batch_norm_inference(xd, rm, rv, w, b).compute(scheduler="synchronous")

    watched = [x, x32, xf, dy, w, b, rm, rv, rm32, rv32, mean, invstd, out, bad_w, x16]
    return {
        "forward": (forward, 100_000, watched),
        "forward_python_path": (forward_slow, 30_000, watched),
        "backward": (backward, 100_000, watched),
        "inference": (inference, 100_000, watched),
        "batch_norm": (batch_norm, 100_000, watched),
        "layer_forward_backward": (layer_step, 100_000,
                                   watched + [layer.weight, layer.bias, layer.running_mean,
                                              layer.running_var]),
        "frozen": (frozen_call, 100_000, watched + [frozen.centre, frozen.scale]),
        "moments_normalize_backward_sums": (sharded, 30_000, watched),
        "errors": (errors, 30_000, watched),
        "fused_epilogues": (fused, 30_000, watched),
        "float16": (half, 30_000, watched),
        "dask": (dask_ops, 300, watched),
    }


@pytest.mark.parametrize("name", list(_leak_ops()))
def test_no_memory_or_reference_leaks(name):
    fn, calls, watched = _leak_ops()[name]
    if LONG:
        calls = max(calls, 200_000) if name != "dask" else 20_000
    for _ in range(2000 if name != "dask" else 50):  # warm-up: caches, lazy objects, arenas
        fn()
    gc.collect()
    refs = [sys.getrefcount(a) for a in watched]
    rss0 = _rss_bytes()
    for _ in range(calls):
        fn()
    gc.collect()
    growth = _rss_bytes() - rss0
    assert [sys.getrefcount(a) for a in watched] == refs, "reference leak on an argument"
    assert growth < 4 * 2**20, f"resident memory grew by {growth / 2**20:.1f} MiB in {calls} calls"
