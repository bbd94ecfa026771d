"""The standing adversarial suite (#21): what a hostile user tries -- Ctrl-C during a long call,
fork from a thread while a kernel runs, outputs overlapping inputs by one element, odd array
types, pickle and deepcopy of every public type.  Each test states the promise it checks
(README "Guarantees"); the long checks run in a subprocess so that a hang fails, not blocks.

Concurrency (8 Python threads over every op, the layers and Dask) is in test_threads.py,
leaks (every entry point, 100k calls) in test_leaks.py, extreme values in
tests/kernels/test_wide.py and test_numerics.py."""

import copy
import os
import pickle
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import cbn
from cbn import reference as R


def _run_script(code, timeout=240):
    """Run code in a fresh interpreter; its stdout (fails on a non-zero exit or a hang)."""
    r = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True,
                       text=True, timeout=timeout)
    assert r.returncode == 0, r.stderr[-3000:]
    return r.stdout


# ------------------------------------------------------------------------------ Ctrl-C
_SIGINT = """
import signal, sys, time
import numpy as np, cbn
signal.signal(signal.SIGALRM, lambda s, f: signal.raise_signal(signal.SIGINT))
mode = sys.argv[1] if len(sys.argv) > 1 else MODE
rng = np.random.default_rng(0)
dtype = np.float16 if mode == "half" else np.float32
x0 = rng.standard_normal((16, 64, 48, 48)).astype(dtype)
if mode == "python_path":
    x0 = np.asfortranarray(x0)
layer_mode = mode.startswith("layer")
dy = rng.standard_normal(x0.shape).astype(np.float32)

stats = cbn.batch_norm_forward(x0.astype(np.float32))

def make():
    if mode == "fused_backward":  # two caller arrays: out and dresidual_out
        return (np.zeros(x0.shape, np.float32), np.zeros(x0.shape, np.float32))
    if mode == "layer_backward":
        bn = cbn.BatchNorm(64)
        bn(x0)
        bn.backward(dy)  # the gradients exist: a step adds to both
        return bn
    if layer_mode:
        return cbn.BatchNorm(64, convention=mode.split("_")[1])
    return (np.zeros(64, np.float32), np.ones(64, np.float32))

def run(st, x):
    if mode == "fused_backward":
        cbn.batch_norm_backward(dy, x, stats.mean, stats.invstd, bias=None, residual=dy,
                                activation="silu", out=st[0], dresidual_out=st[1])
    elif mode == "layer_backward":
        st.backward(dy)
    elif layer_mode:
        st(x)
    else:  # in place: x and the running statistics change together
        cbn.batch_norm_forward(x, running_mean=st[0], running_var=st[1], out=x)

def state(st):
    if mode == "layer_backward":
        return [st.grad_weight.copy(), st.grad_bias.copy()]
    if layer_mode:
        return [st.running_mean.copy(), st.running_var.copy(),
                np.array(st.num_batches_tracked), st._saved is not None]
    return [a.copy() for a in st]

def same(a, b):
    return all(np.array_equal(p, q) for p, q in zip(a, b))

before = state(make())
st = make(); x_done = x0.copy(order="K"); run(st, x_done); after = state(st)
t = time.perf_counter(); run(make(), x0.copy(order="K")); t = time.perf_counter() - t
bad = hits = 0
for k in range(40):
    x, st = x0.copy(order="K"), make()  # K: the Python path's Fortran order kept
    try:
        signal.setitimer(signal.ITIMER_REAL, 1e-5 + (k % 20) / 20 * t * 1.3)
        run(st, x)
        time.sleep(2 * t)
    except KeyboardInterrupt:
        hits += 1
    signal.setitimer(signal.ITIMER_REAL, 0)
    s = state(st)
    if layer_mode or mode == "fused_backward":  # x is not written
        ok = same(s, before) or same(s, after)
    else:
        ok = ((same(s, before) and np.array_equal(x, x0))
              or (same(s, after) and np.array_equal(x, x_done)))
    bad += not ok
print(hits, bad)
"""


@pytest.mark.parametrize("mode", [
    "fast_path", "python_path", "half", "layer_torch", "layer_keras", "layer_backward",
    "fused_backward"])
def test_ctrl_c_leaves_a_call_done_or_not_done(mode):
    """SIGINT at 20 points of an in-place training forward (C fast path, Python path of a
    Fortran-order array, a float16 array through its native kernels) or of a layer's step (forward: statistics,
    counter, saved input; backward: both parameter gradients) or of a fused backward writing
    out and dresidual_out: afterwards the state is either
    untouched or fully updated, never in between."""
    hits, bad = map(int, _run_script(_SIGINT.replace("MODE", repr(mode))).split())
    assert hits >= 20  # the interrupt did arrive, during or right after the call
    assert bad == 0, f"{bad} of 40 interrupted calls left a half-done state"


# ------------------------------------------------------------------------------ fork
def test_fork_from_a_thread_while_a_kernel_runs():
    """A child forked by one thread while another runs a threaded kernel computes correctly
    (serially: GNU libgomp would hang in it), and the parent's kernel completes."""
    out = _run_script("""
        import os, threading
        import numpy as np, cbn
        x = np.random.default_rng(0).standard_normal((32, 64, 64, 64), dtype=np.float32)
        small = np.random.default_rng(1).standard_normal((64, 8, 256))
        expect = cbn.reference.batch_norm_forward(small).out
        want = cbn.batch_norm_forward(x, num_threads=2).out
        started = threading.Event()
        res = {}
        def long_call():
            started.set()
            for _ in range(3):
                res["y"] = cbn.batch_norm_forward(x, num_threads=2).out
        th = threading.Thread(target=long_call)
        th.start()
        started.wait()
        pid = os.fork()
        if pid == 0:  # the child: cbn must work (and not hang) with the parent's team mid-run
            y = cbn.batch_norm_forward(small, num_threads=2).out
            os._exit(0 if np.allclose(y, expect, atol=1e-12) else 3)
        _, status = os.waitpid(pid, 0)
        th.join()
        print(os.waitstatus_to_exitcode(status), np.array_equal(res["y"], want))
    """, timeout=120)
    assert out.split() == ["0", "True"]


# ------------------------------------------------------------------------------ aliasing
def _shifted(buf_len, shift, shape, dtype):
    """Two views of one buffer, `shift` elements apart, each of `shape`."""
    n = int(np.prod(shape))
    buf = np.zeros(buf_len + n + 2, dtype)
    a = buf[1:1 + n].reshape(shape)
    b = buf[1 + shift:1 + shift + n].reshape(shape)
    return a, b


@pytest.mark.parametrize("shift", [-1, 1])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_outputs_overlapping_inputs_by_one_element(shift, dtype, rng):
    """out one element off x (or off the residual, or dy): every op computes from the inputs
    as they were, as on separate arrays (README: written through a temporary)."""
    shape = (4, 3, 5, 6)
    x0 = rng.standard_normal(shape).astype(dtype)
    d0 = rng.standard_normal(shape).astype(dtype)
    w, b = rng.uniform(0.5, 2, 3), rng.standard_normal(3)
    rm, rv = rng.standard_normal(3), rng.uniform(0.5, 2, 3)
    f = cbn.batch_norm_forward(x0, w, b)
    cases = {
        "forward": lambda x, o: cbn.batch_norm_forward(x, w, b, out=o).out,
        "inference": lambda x, o: cbn.batch_norm_inference(x, rm, rv, w, b, out=o),
        "batch_norm": lambda x, o: cbn.batch_norm(x, None, None, w, b, training=True, out=o),
        "normalize": lambda x, o: cbn.normalize(x, f.mean, f.invstd, w, b, out=o),
        "residual": lambda r, o: cbn.batch_norm_inference(x0, rm, rv, w, b, residual=r,
                                                          activation="silu", out=o),
        "backward_dy": lambda d, o: cbn.batch_norm_backward(d, x0, f.mean, f.invstd, w,
                                                            out=o).dx,
        "backward_x": lambda x, o: cbn.batch_norm_backward(d0, x, f.mean, f.invstd, w,
                                                           out=o).dx,
        "backward_elemt": lambda d, o: cbn.backward_elemt(
            d, x0, f.mean, f.invstd, w, d0.sum(axis=(0, 2, 3)),
            ((x0 - f.mean[:, None, None]) * d0).sum(axis=(0, 2, 3)), 120, out=o),
    }
    for name, fn in cases.items():
        src = d0 if name.startswith("backward_dy") or name == "backward_elemt" else x0
        expect = fn(src.copy(), None)
        a, o = _shifted(0, shift, shape, dtype)
        a[...] = src
        got = fn(a, o)
        assert np.array_equal(got, expect), name


def test_statistics_that_are_views_of_x(rng):
    """mean/invstd (backward) and running statistics (forward) that view x's own memory."""
    x = rng.standard_normal((6, 3, 8))
    x_copy = x.copy()
    mean, invstd = x[0, 0, :3], np.abs(x[0, 1, :3]) + 0.5  # views of x
    expect = R.batch_norm_backward(x_copy, x_copy, mean.copy(), invstd.copy())
    got = cbn.batch_norm_backward(x, x, mean, invstd)
    for g, e in zip(got, expect):
        np.testing.assert_allclose(g, e, rtol=1e-12, atol=1e-12)
    assert np.array_equal(x, x_copy)  # inputs unchanged
    rm = x[1, 2, :3]  # the running mean lives in x: updated after x is read
    rv = np.ones(3)
    rm0 = rm.copy()
    y = cbn.batch_norm_forward(x, running_mean=rm, running_var=rv).out
    np.testing.assert_allclose(y, R.batch_norm_forward(x_copy).out, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(rm, 0.9 * rm0 + 0.1 * x_copy.mean(axis=(0, 2)), rtol=1e-12)


# ------------------------------------------------------------------------------ odd types
@pytest.mark.filterwarnings("ignore::PendingDeprecationWarning")  # np.matrix itself
def test_odd_array_types(rng, tmp_path):
    """memmap, np.matrix, lists and 0-d arrays: the answer of the ndarray, or a named error."""
    x = rng.standard_normal((4, 3))
    expect = cbn.batch_norm_forward(x).out
    mm = np.lib.format.open_memmap(tmp_path / "x.npy", mode="w+", dtype=x.dtype, shape=x.shape)
    mm[...] = x
    for arr in (mm, np.asmatrix(x), x.tolist()):
        y = cbn.batch_norm_forward(arr).out
        assert type(y) is np.ndarray and np.array_equal(y, expect)
    with pytest.raises(ValueError, match="x"):
        cbn.batch_norm_forward(np.float64(3.0))
    with pytest.raises(ValueError, match="x"):
        cbn.batch_norm_inference(np.array(1.0), [0.0], [1.0])
    out = np.lib.format.open_memmap(tmp_path / "y.npy", mode="w+", dtype=x.dtype,
                                    shape=x.shape)
    assert cbn.batch_norm_forward(x, out=out).out is out and np.array_equal(out, expect)


def test_torch_tensors_as_inputs(rng):
    torch = pytest.importorskip("torch")
    x = rng.standard_normal((4, 3, 5)).astype(np.float32)
    got = cbn.batch_norm_forward(torch.from_numpy(x)).out
    assert type(got) is np.ndarray and np.array_equal(got, cbn.batch_norm_forward(x).out)


# ------------------------------------------------------------------------------ pickling
def _public_objects(rng):
    x = rng.standard_normal((4, 3, 5))
    f = cbn.batch_norm_forward(x)
    layer = cbn.BatchNorm(3, dtype=np.float64, activation="relu")
    layer(x)
    frozen = cbn.FrozenBatchNorm.from_stats(np.zeros(3), np.ones(3), activation="silu")
    m = cbn.moments(x)
    return {
        "ForwardResult": f,
        "BackwardResult": cbn.batch_norm_backward(x, x, f.mean, f.invstd),
        "FusedBackwardResult": cbn.batch_norm_backward(x, x, f.mean, f.invstd,
                                                       residual=x),
        "ResidualGradients": cbn.ResidualGradients(x, x),
        "Moments": m,
        "BackwardSums": cbn.backward_reduce(x, x, f.mean),
        "BatchNorm": layer,
        "IncompatibleKeys": cbn.BatchNorm(3).load_state_dict({}, strict=False),
        "FrozenBatchNorm": frozen,
        "FoldedAffine": cbn.fold(np.zeros(3), np.ones(3)),
    }


def _same(a, b):
    if isinstance(a, np.ndarray):
        return np.array_equal(a, b, equal_nan=True)
    if isinstance(a, tuple):
        return type(a) is type(b) and all(_same(p, q) for p, q in zip(a, b))
    return a == b


@pytest.mark.parametrize("name", list(_public_objects(np.random.default_rng(0))))
@pytest.mark.parametrize("how", ["pickle", "deepcopy"])
def test_pickle_and_deepcopy_round_trip(name, how, rng):
    obj = _public_objects(rng)[name]
    back = pickle.loads(pickle.dumps(obj)) if how == "pickle" else copy.deepcopy(obj)
    assert type(back) is type(obj)
    x = rng.standard_normal((4, 3, 5))
    if isinstance(obj, cbn.BatchNorm):
        assert repr(back) == repr(obj) and _same(tuple(back.state_dict().values()),
                                                 tuple(obj.state_dict().values()))
        assert np.array_equal(back.eval()(x), obj.eval()(x))
    elif isinstance(obj, cbn.FrozenBatchNorm):
        assert np.array_equal(back(x), obj(x)) and not back.scale.flags.writeable
    else:
        assert _same(tuple(back), tuple(obj))


# ------------------------------------------------------------------------------ every entry
def _memmap_of(x):
    import tempfile
    f = tempfile.NamedTemporaryFile(suffix=".npy", delete=False)
    f.close()
    mm = np.lib.format.open_memmap(f.name, mode="w+", dtype=x.dtype, shape=x.shape)
    mm[...] = x
    os.unlink(f.name)  # the mapping stays valid
    return mm


def _torch_of(x):
    try:
        import torch
    except ImportError:
        return None
    return torch.from_numpy(x.copy())


def _variants(rng):
    """name -> (x as a hostile caller passes it, eps): memory layouts and stride patterns, then
    extreme values (channel 1: +-FLT_MAX, float32 subnormals with a tiny eps; a huge eps)."""
    shape = (4, 3, 6, 5)
    x = rng.standard_normal(shape).astype(np.float32)
    big = rng.standard_normal((4, 3, 6, 10)).astype(np.float32)
    fmax = x.copy()
    fmax[:, 1] = rng.choice(np.array([3.4e38, -3.4e38, 1e38], np.float32), (4, 6, 5))
    sub = x.copy()
    sub[:, 1] = rng.integers(-9, 10, (4, 6, 5)) * np.float32(1.4e-45)
    return {
        "contiguous": (x, 1e-5),
        "channels_last": (np.ascontiguousarray(x.transpose(0, 2, 3, 1)).transpose(0, 3, 1, 2),
                          1e-5),
        "fortran": (np.asfortranarray(x), 1e-5),
        "negative_strides": (x[::-1, :, ::-1], 1e-5),
        "step_2": (big[..., ::2], 1e-5),
        "broadcast_stride_0": (np.broadcast_to(x[:1] + x[1:2] * 0.5, shape), 1e-5),
        "big_endian": (x.astype(">f4"), 1e-5),
        "memmap": (_memmap_of(x), 1e-5),
        "nested_list": (x.tolist(), 1e-5),
        "torch_tensor": (_torch_of(x), 1e-5),
        "flt_max": (fmax, 1e-5),
        "subnormal_tiny_eps": (sub, 1e-90),
        "huge_eps": (x, 1e30),
    }


def _entries():
    """name -> fn(x, dy, eps, w, b, rm, rv): every public computing entry, its arrays out."""
    def forward(x, dy, eps, w, b, rm, rv):
        rm, rv = rm.copy(), rv.copy()
        r = cbn.batch_norm_forward(x, w, b, eps=eps, running_mean=rm, running_var=rv)
        return [*r, rm, rv]

    def backward(x, dy, eps, w, b, rm, rv):
        f = cbn.batch_norm_forward(x, w, b, eps=eps)
        return list(cbn.batch_norm_backward(dy, x, f.mean, f.invstd, w))

    def fused_backward(x, dy, eps, w, b, rm, rv):
        f = cbn.batch_norm_forward(x, w, b, eps=eps, residual=dy, activation="silu")
        return list(cbn.batch_norm_backward(dy, x, f.mean, f.invstd, w, bias=b, residual=dy,
                                            activation="silu"))

    def sharded(x, dy, eps, w, b, rm, rv):
        m = cbn.moments(x)
        mm = cbn.merge_moments(m, m)
        invstd = 1.0 / np.sqrt(m.m2 / m.count + eps)
        s = cbn.backward_reduce(dy, x, m.mean)
        return [m.mean, m.m2, mm.m2, cbn.normalize(x, m.mean, invstd, w, b), *s,
                cbn.backward_elemt(dy, x, m.mean, invstd, w, s.sum_dy, s.sum_dy_xmu, m.count)]

    def layer(x, dy, eps, w, b, rm, rv):
        bn = cbn.BatchNorm(3, eps=eps, dtype=np.float64, activation="relu")
        y = bn(x)
        dx = bn.backward(dy)
        return [y, dx, bn.grad_weight,
                bn.running_mean, bn.running_var]

    def frozen(x, dy, eps, w, b, rm, rv):
        fz = cbn.FrozenBatchNorm.from_stats(rm, rv, w, b, eps=eps, activation="gelu")
        return [fz(x, residual=dy), fz.backward(dy, x=x, residual=dy).dx]

    def dask(x, dy, eps, w, b, rm, rv):
        da = pytest.importorskip("dask.array")
        import cbn.dask as cd
        xd = da.from_array(np.asarray(x), chunks=(2, 3, 6, 5))
        dyd = da.from_array(dy, chunks=(2, 3, 6, 5))
        f = cd.batch_norm_forward(xd, w, b, eps=eps)
        mean, invstd = (np.asarray(a.compute() if hasattr(a, "compute") else a)
                        for a in (f.mean, f.invstd))
        g = cd.batch_norm_backward(dyd, xd, mean, invstd, w)
        return [np.asarray(a.compute() if hasattr(a, "compute") else a)
                for a in (f.out, mean, invstd, *g,
                          cd.batch_norm_inference(xd, rm, rv, w, b, eps=eps))]

    def inference(x, dy, eps, w, b, rm, rv):
        return [cbn.batch_norm_inference(x, rm, rv, w, b, eps=eps),
                cbn.batch_norm(x, rm, rv, w, b, eps=eps, training=False),
                cbn.batch_norm_inference(x, rm, rv, w, b, eps=eps, residual=dy,
                                         activation="relu6")]

    return dict(forward=forward, backward=backward, fused_backward=fused_backward,
                inference=inference, sharded=sharded, layer=layer, frozen=frozen, dask=dask)


@pytest.mark.parametrize("variant", list(_variants(np.random.default_rng(0))))
@pytest.mark.parametrize("entry", list(_entries()))
def test_every_entry_on_hostile_input(entry, variant, rng):
    """Every entry on every stride pattern and extreme value gives what it gives on the same
    values as a contiguous float64 array (itself checked against cbn.reference elsewhere): to
    float32 rounding, finite where that is finite, the inputs unchanged."""
    x, eps = _variants(rng)[variant]
    if x is None:
        pytest.skip("torch not installed")
    shape = np.shape(np.asarray(x))
    dy = rng.standard_normal(shape).astype(np.float32)
    if variant == "nested_list":  # floats from lists are float64: dy as a list too
        dy = np.asarray(dy.tolist())
    w, b = rng.uniform(0.5, 2, 3), rng.standard_normal(3)
    x_before = np.array(np.asarray(x), copy=True)
    rm, rv = x_before.astype(np.float64).mean(axis=(0, 2, 3)), rng.uniform(0.5, 2, 3)
    fn = _entries()[entry]
    got = fn(x, dy, eps, w, b, rm, rv)
    want = fn(np.ascontiguousarray(np.asarray(x), np.float64), dy.astype(np.float64), eps, w,
              b, rm, rv)
    assert np.array_equal(np.asarray(x), x_before)
    for i, (g, e) in enumerate(zip(got, want)):
        dtype = np.asarray(g).dtype  # finite where the answer is, in the output's own type
        g, e = np.asarray(g, np.float64), np.asarray(e, np.float64)
        with np.errstate(over="ignore"):
            finite = np.isfinite(e.astype(dtype))
        assert np.array_equal(np.isfinite(g), finite), (entry, variant, i)
        scale = np.abs(e[finite]).max(initial=0.0) + 1e-300
        np.testing.assert_allclose(g[finite], e[finite], rtol=2e-5, atol=2e-5 * scale,
                                   err_msg=f"{entry} {variant} output {i}")

