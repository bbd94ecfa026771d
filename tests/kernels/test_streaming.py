"""Element-wise passes with streaming (non-temporal) stores, src/cbn_stream.h.

Streaming is chosen by size (the arrays of a pass must exceed the last-level cache), so the
tests lower the threshold to 0 to stream small arrays.  The streamed kernels promise the same
arithmetic as the plain-store ones, so results must match them bit for bit, across every
alignment of the output (plain head, streamed body, plain tail), both layouts, ReLU, and the
thread counts; one sweep also checks against the float64 oracle.  In place there is nothing to
gain (the line is read anyway) and the plain kernels must run.
"""

import os
import subprocess
import sys

import numpy as np
import pytest

import cbn
import cbn.reference as ref
from cbn import _dispatch
from helpers import DTYPES, assert_elementwise_close, eps_of, make_case

K = _dispatch.kernels

CASES = [
    ((3, 5, 131), 1),         # the shortest runs that stream (>= 512 bytes), odd length
    ((4, 6, 8, 17), 1),
    ((2, 3, 400), 1),         # long runs: head, many streamed vectors, tail
    ((150, 1), -1),
    ((150, 3), -1),
    ((150, 7), -1),
    ((64, 16), -1),           # whole vectors per row: coefficients kept in registers
    ((50, 32), -1),
    ((20, 48), -1),
    ((90, 33), -1),
    ((40, 64), -1),
    ((30, 100), -1),
    ((12, 1024), -1),
    ((2, 5, 6, 33), -1),
    ((257, 20), 1),           # NC: channels-last view with inner == 1
]


@pytest.fixture
def threshold():
    """Set the streaming threshold for one test, then restore it."""
    old = K.set_nontemporal_min_bytes(None)
    if old is None:
        pytest.skip("no streaming stores on this target")

    def set_to(n):
        K.set_nontemporal_min_bytes(n)

    yield set_to
    K.set_nontemporal_min_bytes(old)


def _out_like(x, offset):
    """An output array shaped like x whose data start `offset` elements past an aligned buffer
    (the streaming kernels then begin with a plain head)."""
    buf = np.empty(x.size + 32, dtype=x.dtype)
    start = (-(buf.ctypes.data // x.itemsize)) % 16 + offset
    return buf[start:start + x.size].reshape(x.shape)


def _run_all(x, dy, w, b, axis, act, nt, offset):
    rm = np.asarray(x, np.float64).mean(axis=tuple(i for i in range(x.ndim) if i != axis % x.ndim))
    rv = np.full(rm.shape, 1.7)
    y_inf = cbn.batch_norm_inference(x, rm, rv, w, b, axis=axis, out=_out_like(x, offset),
                                     num_threads=nt, activation=act)
    y, mean, invstd = cbn.batch_norm_forward(x, w, b, axis=axis, out=_out_like(x, offset),
                                             num_threads=nt, activation=act)
    dx, dw, db = cbn.batch_norm_backward(dy, x, mean, invstd, w, axis=axis,
                                         out=_out_like(x, offset), num_threads=nt,
                                         activation=act, y=y if act else None)
    return dict(inference=y_inf, forward=y, mean=mean, invstd=invstd, dx=dx, dw=dw, db=db)


@pytest.mark.parametrize("shape,axis", CASES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("relu", [False, True])
def test_streamed_equals_plain(rng, threshold, shape, axis, dtype, relu):
    x, dy, w, b = make_case(rng, shape, axis, dtype, offset=2.0)
    act = "relu" if relu else None
    for nt in (1, 2):
        for offset in (0, 1, 3):
            threshold(1 << 62)
            K.last_streamed(reset=True)
            plain = _run_all(x, dy, w, b, axis, act, nt, offset)
            assert not K.last_streamed(reset=True)
            threshold(0)
            streamed = _run_all(x, dy, w, b, axis, act, nt, offset)
            assert K.last_streamed(reset=True)
            for key in plain:
                np.testing.assert_array_equal(streamed[key], plain[key], err_msg=key)


# past PARALLEL_MIN_ELEMS (two threads), with channel-major runs beyond a statistics block (the
# fused per-channel forward and backward) and without
LARGE = [((2, 8, 9000), 1), ((4, 64, 300), 1), ((70000, 3), -1), ((300, 260), -1)]


@pytest.mark.skipif(K.max_threads() < 2, reason="needs an OpenMP team of 2")
@pytest.mark.parametrize("shape,axis", LARGE)
@pytest.mark.parametrize("dtype", DTYPES)
def test_streamed_equals_plain_threaded(rng, threshold, shape, axis, dtype):
    x, dy, w, b = make_case(rng, shape, axis, dtype, offset=2.0)
    for relu in (False, True):
        act = "relu" if relu else None
        threshold(1 << 62)
        plain = _run_all(x, dy, w, b, axis, act, 2, 1)
        threshold(0)
        K.last_streamed(reset=True)
        K.last_team_size(reset=True)
        streamed = _run_all(x, dy, w, b, axis, act, 2, 1)
        assert K.last_streamed(reset=True)
        assert K.last_team_size() == 2
        for key in plain:
            np.testing.assert_array_equal(streamed[key], plain[key], err_msg=key)


@pytest.mark.parametrize("dtype", DTYPES)
def test_short_runs_keep_plain_stores(rng, threshold, dtype):
    # runs of 15 elements: the plain head and tail of every run would dominate
    threshold(0)
    x, dy, w, b = make_case(rng, (4, 6, 3, 5), 1, dtype)
    K.last_streamed(reset=True)
    _run_all(x, dy, w, b, 1, None, 1, 1)
    assert not K.last_streamed(reset=True)


def test_threshold_setter_rejects_negative_sizes(threshold):
    with pytest.raises(ValueError, match="n must be"):
        K.set_nontemporal_min_bytes(-1)


@pytest.mark.parametrize("shape,axis", [((4, 6, 8, 17), 1), ((90, 33), -1), ((12, 1024), -1)])
@pytest.mark.parametrize("dtype", DTYPES)
def test_streamed_against_oracle(rng, threshold, shape, axis, dtype):
    threshold(0)
    x, dy, w, b = make_case(rng, shape, axis, dtype, offset=2.0)
    x64 = x.astype(np.float64)
    rm = np.linspace(-1.0, 3.0, w.size)
    rv = np.linspace(0.5, 2.0, w.size)
    y = cbn.batch_norm_inference(x, rm, rv, w, b, axis=axis, out=_out_like(x, 1), num_threads=2)
    y_ref = ref.batch_norm_inference(x64, rm, rv, w, b, axis=axis)
    bshape = [1] * x.ndim
    bshape[axis] = w.size
    scale = (np.abs(w) / np.sqrt(rv + 1e-5)).reshape(bshape)
    mag = np.abs(x64 - rm.reshape(bshape)) * scale + np.abs(b).reshape(bshape)
    oracle = 4 * eps_of(np.float64) * (np.abs(x64) + np.abs(rm.reshape(bshape))) * scale
    assert_elementwise_close(y, y_ref, dtype, mag, stats_error=oracle)
    assert K.last_streamed(reset=True)


@pytest.mark.parametrize("dtype", DTYPES)
def test_in_place_is_never_streamed(rng, threshold, dtype):
    threshold(0)
    x, dy, w, b = make_case(rng, (40, 64), -1, dtype)
    rm, rv = np.zeros(64), np.ones(64)
    expected = cbn.batch_norm_inference(x, rm, rv, w, b, axis=-1)
    K.last_streamed(reset=True)
    x_in = x.copy()
    cbn.batch_norm_inference(x_in, rm, rv, w, b, axis=-1, out=x_in)
    assert not K.last_streamed(reset=True)
    np.testing.assert_array_equal(x_in, expected)
    # backward into dy's own memory
    _, mean, invstd = cbn.batch_norm_forward(x, w, b, axis=-1)
    expected = cbn.batch_norm_backward(dy, x, mean, invstd, w, axis=-1)[0]
    dy_in = dy.copy()
    K.last_streamed(reset=True)
    cbn.batch_norm_backward(dy_in, x, mean, invstd, w, axis=-1, out=dy_in)
    assert not K.last_streamed(reset=True)
    np.testing.assert_array_equal(dy_in, expected)


@pytest.mark.parametrize("axis", [1, -1])
@pytest.mark.parametrize("nt", [1, 2])
def test_inference_streams_from_twice_the_threshold_with_threads(rng, threshold, axis, nt):
    """A single-pass op (inference) run by several threads streams only when its arrays span
    twice the threshold, by one thread from once (one core cannot keep enough plain-store
    misses in flight); the forward pass, whose element-wise pass follows a reduction, from
    once."""
    if nt > K.max_threads() or nt > (os.cpu_count() or 1):
        pytest.skip("needs 2 threads")
    x = rng.standard_normal((16, 32, 16, 16)).astype(np.float32)  # runs of 1 KB
    if axis == -1:
        x = np.ascontiguousarray(x.transpose(0, 2, 3, 1))
    C = x.shape[axis]
    both = 2 * x.nbytes  # x and the output
    y = np.empty_like(x)
    for limit, infer_streams in ((both, nt == 1), (both // 2, True), (both + 1, False)):
        threshold(limit)
        K.last_streamed(reset=True)
        cbn.batch_norm_inference(x, np.zeros(C), np.ones(C), axis=axis, out=y, num_threads=nt)
        assert K.last_streamed(reset=True) == infer_streams
        cbn.batch_norm_forward(x, axis=axis, out=y, num_threads=nt)
        assert K.last_streamed(reset=True) == (limit <= both)


def test_default_threshold_is_the_last_level_cache():
    t = K.tuning()
    if t["nontemporal_min_bytes"] is None:
        pytest.skip("no streaming stores on this target")
    if os.environ.get("CBN_STREAMING_MIN_BYTES"):
        pytest.skip("CBN_STREAMING_MIN_BYTES overrides the default")
    assert t["nontemporal_min_bytes"] == t["l3_bytes"] > 0
    # a pass far below the threshold keeps plain stores
    x = np.ones((64, 64), np.float32)
    K.last_streamed(reset=True)
    cbn.batch_norm_inference(x, np.zeros(64), np.ones(64), axis=-1, out=np.empty_like(x))
    assert not K.last_streamed(reset=True)


@pytest.mark.parametrize("shape,axis", [((0, 8), -1), ((4, 0), -1), ((0, 3, 5), 1), ((2, 3, 0), 1)])
def test_empty_arrays_with_streaming_on(threshold, shape, axis):
    threshold(0)
    x = np.zeros(shape, np.float32)
    C = shape[axis]
    y = cbn.batch_norm_inference(x, np.zeros(C), np.ones(C), axis=axis, out=np.empty_like(x))
    assert y.shape == shape


@pytest.mark.parametrize("value,expected", [("off", 1 << 62), ("12345", 12345), ("0", 0)])
def test_environment_sets_the_threshold(tmp_path, value, expected):
    if K.tuning()["nontemporal_min_bytes"] is None:
        pytest.skip("no streaming stores on this target")
    env = dict(os.environ, CBN_STREAMING_MIN_BYTES=value)
    out = subprocess.run([sys.executable, "-c",
                          "import cbn; print(cbn.config()['tuning']['nontemporal_min_bytes'])"],
                         capture_output=True, text=True, check=True, cwd=tmp_path, env=env)
    assert int(out.stdout) == expected


def test_environment_rejects_a_bad_threshold(tmp_path):
    env = dict(os.environ, CBN_STREAMING_MIN_BYTES="lots")
    out = subprocess.run([sys.executable, "-c", "import cbn"], capture_output=True, text=True,
                         cwd=tmp_path, env=env)
    assert out.returncode != 0 and "CBN_STREAMING_MIN_BYTES" in out.stderr
