"""Unusual but valid input: the NaN/Inf policy, big-endian (non-native byte order) arrays,
empty batches and zero channels.  Bad input is in test_errors.py; fork safety and concurrent
threads are in tests/system/."""

import subprocess
import sys
import tempfile
import textwrap

import numpy as np
import pytest

import cbn

LAYOUTS = [((6, 4, 50), 1), ((300, 4), 1), ((4, 5, 6, 4), -1), ((4, 4, 30000), 1)]
C3 = np.ones(3)


# ---------------------------------------------------------------------------------- NaN and Inf

@pytest.mark.parametrize("shape,axis", LAYOUTS)
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_nonfinite_values_poison_only_their_channel(rng, shape, axis, bad, dtype):
    x = rng.standard_normal(shape).astype(dtype)
    dy = rng.standard_normal(shape).astype(dtype)
    C = shape[axis]
    idx = [0] * len(shape)
    idx[axis] = 2  # channel 2 gets one bad value
    x[tuple(idx)] = bad
    others = [c for c in range(C) if c != 2]
    clean = np.take(x, others, axis=axis)
    y, mean, invstd = cbn.batch_norm_forward(x, axis=axis)
    assert np.isnan(mean[2]) or np.isinf(mean[2])
    assert not np.isfinite(invstd[2]) or np.isnan(np.take(y, [2], axis=axis)).all()
    assert np.isnan(np.take(y, [2], axis=axis)).all()
    ref = cbn.batch_norm_forward(clean, axis=axis)
    np.testing.assert_array_equal(np.take(y, others, axis=axis), ref.out)
    np.testing.assert_array_equal(mean[others], ref.mean)
    dx, dw, db = cbn.batch_norm_backward(dy, x, mean, invstd, axis=axis)
    g = cbn.batch_norm_backward(np.take(dy, others, axis=axis), clean, ref.mean, ref.invstd, axis=axis)
    np.testing.assert_array_equal(np.take(dx, others, axis=axis), g.dx)
    np.testing.assert_array_equal(dw[others], g.dweight)
    rm, rv = np.zeros(C), np.ones(C)
    yi = cbn.batch_norm_inference(x, rm, rv, axis=axis)
    assert np.isfinite(np.take(yi, others, axis=axis)).all()


@pytest.mark.parametrize("shape,axis", LAYOUTS)
@pytest.mark.parametrize("stat_dtype", [np.float32, np.float64, np.float16])
def test_skip_nonfinite_keeps_running_stats_of_bad_channels(rng, shape, axis, stat_dtype):
    x = rng.standard_normal(shape)
    idx = [0] * len(shape)
    idx[axis] = 1
    x[tuple(idx)] = np.nan
    C = shape[axis]
    rm, rv = np.arange(C, dtype=stat_dtype), np.ones(C, stat_dtype)
    rm_plain, rv_plain = rm.copy(), rv.copy()
    cbn.batch_norm_forward(x, running_mean=rm, running_var=rv, axis=axis, skip_nonfinite=True)
    cbn.batch_norm_forward(x, running_mean=rm_plain, running_var=rv_plain, axis=axis)
    assert rm[1] == 1 and rv[1] == 1  # untouched
    assert np.isnan(rm_plain[1]) and np.isnan(rv_plain[1])  # the torch behaviour
    good = [c for c in range(C) if c != 1]
    np.testing.assert_array_equal(rm[good], rm_plain[good])
    np.testing.assert_array_equal(rv[good], rv_plain[good])
    # the functional form passes it through
    rm2, rv2 = np.arange(C, dtype=stat_dtype), np.ones(C, stat_dtype)
    cbn.batch_norm(x, rm2, rv2, training=True, axis=axis, skip_nonfinite=True)
    np.testing.assert_array_equal(rm2, rm)


# ---------------------------------------------------------------------------- big-endian input

def _be(a):
    return a.astype(a.dtype.newbyteorder(">"))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_big_endian_input_is_accepted_and_correct(rng, dtype):
    x = rng.standard_normal((5, 3, 7)).astype(dtype)
    dy = rng.standard_normal((5, 3, 7)).astype(dtype)
    w, b = rng.uniform(0.5, 2, 3), rng.standard_normal(3)
    xb, dyb, wb, bb = _be(x), _be(dy), _be(w), _be(b)
    assert not xb.dtype.isnative
    f, fb = cbn.batch_norm_forward(x, w, b), cbn.batch_norm_forward(xb, wb, bb)
    for a, a_b in zip(f, fb):
        np.testing.assert_array_equal(a, a_b)
    g = cbn.batch_norm_backward(dy, x, f.mean, f.invstd, w)
    gb = cbn.batch_norm_backward(dyb, xb, _be(f.mean), _be(f.invstd), wb)
    for a, a_b in zip(g, gb):
        np.testing.assert_array_equal(a, a_b)
    rm, rv = rng.standard_normal(3), rng.uniform(0.5, 2, 3)
    np.testing.assert_array_equal(cbn.batch_norm_inference(xb, _be(rm), _be(rv), wb, bb),
                                  cbn.batch_norm_inference(x, rm, rv, w, b))
    # big-endian running statistics are updated in place, in their own byte order
    rmb, rvb = _be(rm), _be(rv)
    rm2, rv2 = rm.copy(), rv.copy()
    cbn.batch_norm(xb, rmb, rvb, wb, bb, training=True)
    cbn.batch_norm(x, rm2, rv2, w, b, training=True)
    assert rmb.dtype.byteorder == ">"
    # (NumPy does the update for non-native statistics; the C update may contract a*b + c*d
    # into an FMA, so the two agree to rounding, not bit for bit)
    np.testing.assert_allclose(rmb, rm2, rtol=4e-16, atol=1e-300)
    np.testing.assert_allclose(rvb, rv2, rtol=4e-16)
    m, mb = cbn.moments(x), cbn.moments(xb)
    np.testing.assert_array_equal(m.mean, mb.mean)
    np.testing.assert_array_equal(cbn.normalize(xb, _be(m.mean), _be(m.invstd())),
                                  cbn.normalize(x, m.mean, m.invstd()))
    s, sb = cbn.backward_reduce(dy, x, f.mean), cbn.backward_reduce(dyb, xb, _be(f.mean))
    np.testing.assert_array_equal(s.sum_dy_xmu, sb.sum_dy_xmu)
    frozen = cbn.FrozenBatchNorm.from_stats(_be(rm), _be(rv), wb, bb)
    np.testing.assert_array_equal(frozen(xb), frozen(x))
    layer, layer_b = cbn.BatchNorm(3, dtype=dtype), cbn.BatchNorm(3, dtype=dtype)
    np.testing.assert_array_equal(layer_b(xb), layer(x))
    np.testing.assert_array_equal(layer_b.backward(dyb), layer.backward(dy))
    np.testing.assert_array_equal(layer_b.running_var, layer.running_var)


@pytest.mark.parametrize("fn", ["forward", "inference"])
def test_big_endian_in_place(fn):
    x = _be(np.arange(12, dtype=np.float32).reshape(4, 3))
    want = (cbn.batch_norm_forward(x.astype(np.float32)).out if fn == "forward"
            else cbn.batch_norm_inference(x.astype(np.float32), C3, C3))
    if fn == "forward":
        y = cbn.batch_norm_forward(x, out=x).out
    else:
        y = cbn.batch_norm_inference(x, C3, C3, out=x)
    assert y is x
    np.testing.assert_array_equal(x, want)


# -------------------------------------------------------------------------------- empty batches

@pytest.mark.parametrize("shape,axis", [((0, 3, 5), 1), ((0, 3), 1), ((4, 3, 0), 1),
                                        ((0, 5, 3), -1)])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_empty_batch_every_op(shape, axis, dtype):
    """No values per channel: every op returns empty outputs of the right shape and dtype;
    statistics are NaN, gradient sums are 0, running statistics are left alone."""
    x = np.ones(shape, dtype)
    C = shape[axis]
    rm, rv = np.arange(C, dtype=np.float64), np.full(C, 2.0)
    w, b = np.ones(C), np.zeros(C)
    y, mean, invstd = cbn.batch_norm_forward(x, w, b, running_mean=rm, running_var=rv, axis=axis)
    assert y.shape == shape and y.dtype == dtype
    assert mean.shape == (C,) and np.isnan(mean).all() and np.isnan(invstd).all()
    np.testing.assert_array_equal(rm, np.arange(C))
    np.testing.assert_array_equal(rv, 2.0)
    assert cbn.batch_norm(x, rm, rv, w, b, training=True, axis=axis).shape == shape
    np.testing.assert_array_equal(rm, np.arange(C))
    assert cbn.batch_norm(x, rm, rv, w, b, axis=axis).shape == shape
    assert cbn.batch_norm_inference(x, rm, rv, w, b, axis=axis).dtype == dtype
    for needs in [(True, True, True), (False, True, True), (True, False, False)]:
        # finite statistics (the layer substitutes them, as torch): zero parameter gradients
        dx, dw, db = cbn.batch_norm_backward(x, x, np.zeros(C), np.ones(C), w, axis=axis,
                                             needs=needs)
        if needs[0]:
            assert dx.shape == shape and dx.dtype == dtype
        if needs[1]:
            np.testing.assert_array_equal(dw, 0.0)
            np.testing.assert_array_equal(db, 0.0)
    # the forward's NaN statistics passed straight back: sum(dy) is still 0, dx still empty
    # (dweight = 0 * NaN invstd is NaN: the NaN policy)
    dx, dw, db = cbn.batch_norm_backward(x, x, mean, invstd, w, axis=axis)
    assert dx.shape == shape
    np.testing.assert_array_equal(db, 0.0)
    m = cbn.moments(x, axis=axis)
    assert m.count == 0 and m.mean.shape == (C,)
    merged = cbn.merge_moments(m, cbn.moments(np.ones((2, C)) * 3, axis=1))
    assert merged.count == 2 and np.all(merged.mean == 3)
    assert cbn.normalize(x, mean, invstd, axis=axis).shape == shape
    s = cbn.backward_reduce(x, x, rm, axis=axis)
    np.testing.assert_array_equal(s.sum_dy, 0.0)
    assert cbn.backward_elemt(x, x, rm, rv, w, s.sum_dy, s.sum_dy_xmu, 4,
                              axis=axis).shape == shape
    frozen = cbn.FrozenBatchNorm.from_stats(rm, rv, axis=axis)
    assert frozen(x).shape == shape and frozen.backward(x).shape == shape
    bn = cbn.BatchNorm(C, axis=axis, dtype=np.float64)
    assert bn(x).shape == shape
    np.testing.assert_array_equal(bn.running_mean, 0.0)  # statistics unchanged
    np.testing.assert_array_equal(bn.running_var, 1.0)
    assert bn.backward(x).shape == shape
    np.testing.assert_array_equal(bn.grad_weight, 0.0)
    bn.eval()
    assert bn(x).shape == shape and bn.backward(x).shape == shape


# ------------------------------------------------------------------------ bugs found (fixed)

def _survives(code):
    """Run ``code`` in a fresh interpreter; return (exit code, last stderr line)."""
    # outside the source tree, so the subprocess imports the installed package
    r = subprocess.run([sys.executable, "-c", "import numpy as np, cbn\n" + textwrap.dedent(code)],
                       capture_output=True, text=True, timeout=120, cwd=tempfile.gettempdir())
    lines = r.stderr.strip().splitlines()
    return r.returncode, (lines[-1] if lines else "")


ZERO_CHANNEL_CALLS = {
    "forward": "cbn.batch_norm_forward(np.ones((3, 0), np.float32))",
    "forward-channels-last": "cbn.batch_norm_forward(np.ones((4, 5, 0)), axis=-1)",
    "inference": "cbn.batch_norm_inference(np.ones((3, 0)), np.ones(0), np.ones(0))",
    "backward": "cbn.batch_norm_backward(np.ones((3, 0)), np.ones((3, 0)), np.ones(0), np.ones(0))",
    "forward-python-path": "cbn.batch_norm_forward(np.ones((3, 0)), num_threads=np.int64(1))",
}


@pytest.mark.parametrize("name", list(ZERO_CHANNEL_CALLS))
def test_zero_channels_do_not_crash(name):
    rc, err = _survives(ZERO_CHANNEL_CALLS[name])
    assert rc == 0, f"exit code {rc} {err}"


@pytest.mark.parametrize("shape,axis", [((0, 3), 1), ((2, 3, 0), 1), ((0, 4, 4, 3), -1)])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_empty_batch_forward_leaves_running_stats(shape, axis, dtype):
    # documented: empty out, NaN mean and invstd, running statistics untouched (as torch's
    # functional batch_norm leaves them); the functional torch call is checked when present
    C = shape[axis]
    x = np.empty(shape, dtype)
    rm, rv = np.arange(C, dtype=dtype), np.arange(1, C + 1, dtype=dtype)
    rm0, rv0 = rm.copy(), rv.copy()
    out, mean, invstd = cbn.batch_norm_forward(x, running_mean=rm, running_var=rv, axis=axis)
    assert out.shape == shape and out.dtype == dtype
    assert mean.shape == invstd.shape == (C,)
    assert np.isnan(mean).all() and np.isnan(invstd).all()
    np.testing.assert_array_equal(rm, rm0)
    np.testing.assert_array_equal(rv, rv0)
    if axis == 1:
        torch = pytest.importorskip("torch")
        trm, trv = torch.from_numpy(rm0.copy()), torch.from_numpy(rv0.copy())
        ty = torch.nn.functional.batch_norm(torch.from_numpy(x), trm, trv, training=True)
        assert tuple(ty.shape) == shape
        np.testing.assert_array_equal(trm.numpy(), rm0)
        np.testing.assert_array_equal(trv.numpy(), rv0)


# ------------------------------------------------------------------- side paths (issue #21)
@pytest.mark.parametrize("shape,axis", LAYOUTS + [((64, 3000), 1)])
def test_nan_channel_leaves_the_others_as_with_finite_values(rng, shape, axis):
    """The README's NaN-isolation promise, word for word: the other channels are bit-identical
    to a run in which the bad channel holds finite values."""
    x = rng.standard_normal(shape).astype(np.float32)
    idx = [slice(None)] * len(shape)
    idx[axis] = 1
    bad = x.copy()
    bad[tuple(idx)] = np.nan
    others = [c for c in range(shape[axis]) if c != 1]
    a, b = cbn.batch_norm_forward(bad, axis=axis), cbn.batch_norm_forward(x, axis=axis)
    np.testing.assert_array_equal(np.take(a.out, others, axis=axis),
                                  np.take(b.out, others, axis=axis))
    np.testing.assert_array_equal(a.mean[others], b.mean[others])
    np.testing.assert_array_equal(a.invstd[others], b.invstd[others])


@pytest.mark.parametrize("call", [
    lambda: cbn.batch_norm_forward(np.ones((4, 3)), running_mean=np.zeros(3),
                                   running_var=np.ones(3), skip_nonfinite="no"),
    lambda: cbn.batch_norm(np.ones((4, 3)), np.zeros(3), np.ones(3), training=True,
                           skip_nonfinite="no"),
    lambda: cbn.BatchNorm(3, affine="no"),
    lambda: cbn.BatchNorm(3, track_running_stats="no"),
    lambda: cbn.BatchNorm(3, bias="no"),
    lambda: cbn.fold_into_conv(np.ones((3, 2, 1, 1)), None, np.zeros(2), np.ones(2), None, None,
                               transposed="no"),
])
def test_every_flag_is_a_bool(call):
    """A string is not a flag ("no" meant True before)."""
    with pytest.raises(TypeError, match="must be a bool, got 'no'"):
        call()


def test_dask_backward_with_non_native_byte_order(rng):
    """dy (and x) in big-endian order: the same gradients as native arrays, also mixed."""
    da = pytest.importorskip("dask.array")
    import cbn.dask as cd

    x, dy = rng.standard_normal((8, 3, 20)), rng.standard_normal((8, 3, 20))
    f = cbn.batch_norm_forward(x)
    want = cbn.batch_norm_backward(dy, x, f.mean, f.invstd)
    big = lambda a: a.astype(a.dtype.newbyteorder(">"))  # noqa: E731
    for xa, dya in ((big(x), big(dy)), (x, big(dy)), (big(x), dy)):
        g = cd.batch_norm_backward(da.from_array(dya, chunks=(4, 3, 10)),
                                   da.from_array(xa, chunks=(4, 3, 10)), f.mean, f.invstd)
        np.testing.assert_allclose(g.dx.compute(), want.dx, rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(g.dbias, want.dbias, rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(g.dweight, want.dweight, rtol=1e-12, atol=1e-12)


def test_streaming_variable_out_of_range_is_a_named_error():
    code = "import cbn"
    env = dict(__import__("os").environ, CBN_STREAMING_MIN_BYTES="99999999999999999999999")
    p = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                       cwd=tempfile.gettempdir())
    assert p.returncode != 0
    assert "ValueError: CBN_STREAMING_MIN_BYTES='99999999999999999999999'" in p.stderr


def test_pickled_layer_leaves_its_last_batch_behind():
    import pickle

    bn = cbn.BatchNorm(64)
    x = np.ones((32, 64, 28, 28), np.float32)
    x[0] = 0
    bn(x)
    blob = pickle.dumps(bn)
    assert len(blob) < 100_000  # the batch alone is 6.4 MB
    back = pickle.loads(blob)
    np.testing.assert_array_equal(back.running_var, bn.running_var)
    with pytest.raises(RuntimeError, match="backward called before forward"):
        back.backward(np.ones_like(x))
    bn.backward(np.ones_like(x))  # the original keeps its saved input


def test_frozen_layer_stays_frozen():
    import copy
    import pickle

    fz = cbn.BatchNorm(3).eval().freeze()
    for twin in (pickle.loads(pickle.dumps(fz)), copy.deepcopy(fz), copy.copy(fz)):
        for name in ("centre", "scale", "offset"):
            assert not getattr(twin, name).flags.writeable
            np.testing.assert_array_equal(getattr(twin, name), getattr(fz, name))
        with pytest.raises(ValueError, match="read-only"):
            twin.scale[0] = np.nan
    for name in ("centre", "scale", "offset", "activation"):
        with pytest.raises(AttributeError):
            setattr(fz, name, np.full(3, np.nan))


def test_backward_twice_accumulates_twice(rng):
    """Documented (zero_grad): two backward calls after one forward add their gradients."""
    bn = cbn.BatchNorm(3, dtype=np.float64)
    x, dy = rng.standard_normal((8, 3)), rng.standard_normal((8, 3))
    bn(x)
    bn.backward(dy)
    once = bn.grad_weight.copy()
    bn.backward(dy)
    np.testing.assert_allclose(bn.grad_weight, 2 * once, rtol=1e-15)
    bn.zero_grad()
    assert bn.grad_weight is None


@pytest.mark.parametrize("convention", ["torch", "keras", "onnx"])
def test_every_convention_checks_its_statistics_before_writing(convention):
    """A read-only running_var or a (2, C) running_mean: the named error, and nothing changed
    (keras and onnx updated in NumPy after the kernel, unvalidated)."""
    x = np.arange(24.0).reshape(8, 3)
    bn = cbn.BatchNorm(3, dtype=np.float64, convention=convention)
    bn.running_var.flags.writeable = False
    before = bn.running_mean.copy()
    with pytest.raises(ValueError, match="running_var"):
        bn(x)
    np.testing.assert_array_equal(bn.running_mean, before)
    assert bn.num_batches_tracked == 0
    bn = cbn.BatchNorm(3, dtype=np.float64, convention=convention)
    with pytest.raises(ValueError, match="running_mean"):  # refused as it is assigned
        bn.running_mean = np.zeros((2, 3))
    np.testing.assert_array_equal(bn.running_mean, before)


def test_layer_shared_by_threads_in_training_counts_every_step():
    """Training steps of threads sharing one BatchNorm are serialised: with momentum=None (the
    cumulative average) the running mean is the mean of all batch means (3.56-3.64 for 3.5
    before: lost updates)."""
    import threading

    bn = cbn.BatchNorm(4, momentum=None, dtype=np.float64, num_threads=1)
    batches = [np.full((4096, 4), float(v)) + np.linspace(-1, 1, 4096)[:, None]
               for v in range(8)]
    barrier = threading.Barrier(4)

    def work(k):
        barrier.wait()
        for i in range(200):
            bn(batches[(k + i) % 8])

    threads = [threading.Thread(target=work, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert int(bn.num_batches_tracked) == 800
    np.testing.assert_allclose(bn.running_mean, 3.5, rtol=1e-12)


@pytest.mark.parametrize("which", ["layer", "frozen"])
def test_eval_relu_backward_allocates_only_its_output(which):
    """The README's memory promise for the layers: an evaluation-mode ReLU backward allocates
    dx and per-channel work space, no full-size temporary (np.where's mask and copy before)."""
    import tracemalloc

    x = np.random.default_rng(3).standard_normal((16, 8, 64, 64)).astype(np.float32)
    dy = np.ones_like(x)
    bn = cbn.BatchNorm(8, activation="relu").eval()
    frozen = bn.freeze()
    y = bn(x) if which == "layer" else frozen(x)
    tracemalloc.start()
    try:
        dx = bn.backward(dy) if which == "layer" else frozen.backward(dy, y=y)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert dx.shape == x.shape
    assert peak < 1.25 * x.nbytes, peak / x.nbytes


def test_enum_arguments_take_names_only():
    """activation= takes a name (a str, np.str_ included), not an array holding one; the layer
    and the functions alike."""
    x = np.ones((4, 3))
    x[0] = 0
    for bad in (np.array(["relu"]), ["relu"], b"relu", 1):
        with pytest.raises(ValueError, match="activation must be None or 'relu'"):
            cbn.batch_norm_forward(x, activation=bad)
        with pytest.raises(ValueError, match="activation must be None or 'relu'"):
            cbn.BatchNorm(3, activation=bad)
    np.testing.assert_array_equal(cbn.batch_norm_forward(x, activation=np.str_("relu")).out,
                                  cbn.batch_norm_forward(x, activation="relu").out)
