"""Wide channels (src/kernels_wide.pxi): float32 channels whose coefficients leave float32 --
invstd ~1e40 from a legal tiny eps on a constant or subnormal-valued channel, a centre beyond
2^103 from data spanning +-3.4e38 -- are computed in float64, so finite input gives the finite
float64 answer rounded once, through every op, epilogue, layout, thread count and SIMD level;
and the other channels are bit-identical to a run in which that channel is ordinary.

Each case holds 3 channels, channel 1 the hard one.  Expected values: the float64 reference
(``cbn.reference``) on the same values widened to float64."""

import numpy as np
import pytest

import cbn
from cbn import reference as R

from helpers import assert_elementwise_close

F32_MAX = float(np.finfo(np.float32).max)
# (shape, axis): channel-major small (one task per channel), long runs, channels-last, NHWC and
# one above the parallel threshold (65,536 elements)
LAYOUTS = [((4, 3, 5), 1), ((2, 3, 700), 1), ((50, 3), -1), ((4, 5, 5, 3), -1),
           ((8, 3, 4096), 1)]
KINDS = ["constant", "subnormal", "span"]


def _channel(kind, n, rng):
    """Values of the hard channel and the eps that makes it hard."""
    if kind == "constant":  # var = 0: invstd = 1/sqrt(eps) = 1e40
        return np.full(n, 3.0, np.float32), 1e-80
    if kind == "subnormal":  # float32 subnormals: var ~1e-88, invstd ~1e44 with eps = 1e-90
        return (rng.integers(-20, 21, n) * np.float32(1.4e-45)).astype(np.float32), 1e-90
    # +-3.4e38 (centre ~1e38 >= 2^103: x - hi would overflow)
    return rng.choice(np.array([3.4e38, -3.4e38, 1.0e38], np.float32), n), 1e-5


def _case(kind, shape, axis, rng):
    """x with channel 1 hard, the same x with channel 1 ordinary, eps, weight, bias, dy."""
    axis %= len(shape)
    x = rng.standard_normal(shape).astype(np.float32)
    plain = x.copy()
    idx = [slice(None)] * len(shape)
    idx[axis] = 1
    hard, eps = _channel(kind, x[tuple(idx)].size, rng)
    x[tuple(idx)] = hard.reshape(x[tuple(idx)].shape)
    w = np.array([1.5, -0.75, 0.5])
    b = np.array([0.25, 2.0, -1.0])
    dy = rng.standard_normal(shape).astype(np.float32)
    return x, plain, eps, w, b, dy, tuple(idx)


def _others(a, idx, axis):
    """a without channel 1, for bitwise comparison."""
    return np.delete(np.asarray(a), 1, axis=axis)


def _check(actual, expected, idx, mag=None):
    """Finite where the float64 answer is, and within a few float32 ulps of it: the hard channel
    is rounded once from float64; the others as the float32 passes (tests/helpers.py)."""
    actual = np.asarray(actual)
    expected = np.asarray(expected, np.float64)
    with np.errstate(over="ignore"):
        finite = np.isfinite(expected.astype(np.float32))
    assert np.array_equal(np.isfinite(actual), finite)
    assert finite[idx].all()
    if mag is None:
        mag = np.abs(expected[idx]).max() + 1.0
    # (plus one float32 subnormal step: outputs below 1.2e-38 round to multiples of 1.4e-45)
    assert_elementwise_close(actual[idx], expected[idx], np.float32, mag, factor=4.0,
                             stats_error=float(np.finfo(np.float32).smallest_subnormal))


@pytest.mark.parametrize("shape,axis", LAYOUTS)
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("threads", [1, 2])
def test_forward(kind, shape, axis, threads, rng, level):
    x, plain, eps, w, b, _, idx = _case(kind, shape, axis, rng)
    r = cbn.batch_norm_forward(x, w, b, eps=eps, axis=axis, num_threads=threads)
    e = R.batch_norm_forward(x.astype(np.float64), w, b, eps=eps, axis=axis)
    _check(r.out, e.out, idx)
    if kind == "constant":
        assert np.all(r.out[idx] == np.float32(b[1]))
    p = cbn.batch_norm_forward(plain, w, b, eps=eps, axis=axis, num_threads=threads)
    assert np.array_equal(_others(r.out, idx, axis % x.ndim), _others(p.out, idx, axis % x.ndim))


@pytest.mark.parametrize("shape,axis", LAYOUTS)
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("activation", ["relu", "silu", "gelu"])
def test_forward_residual_activation(kind, shape, axis, activation, rng, level):
    x, plain, eps, w, b, res, idx = _case(kind, shape, axis, rng)
    r = cbn.batch_norm_forward(x, w, b, eps=eps, axis=axis, activation=activation, residual=res)
    e = R.batch_norm_forward(x.astype(np.float64), w, b, eps=eps, axis=axis,
                             activation=activation, residual=res.astype(np.float64))
    _check(r.out, e.out, idx)
    p = cbn.batch_norm_forward(plain, w, b, eps=eps, axis=axis, activation=activation,
                               residual=res)
    assert np.array_equal(_others(r.out, idx, axis % x.ndim), _others(p.out, idx, axis % x.ndim))


@pytest.mark.parametrize("shape,axis", LAYOUTS)
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("in_place", [False, True])
@pytest.mark.parametrize("activation", [None, "relu"])
def test_forward_in_place(kind, shape, axis, in_place, activation, rng):
    x, _, eps, w, b, _, idx = _case(kind, shape, axis, rng)
    e = R.batch_norm_forward(x.astype(np.float64), w, b, eps=eps, axis=axis,
                             activation=activation)
    out = x if in_place else np.empty_like(x)
    r = cbn.batch_norm_forward(x, w, b, eps=eps, axis=axis, out=out, activation=activation)
    assert r.out is out
    _check(out, e.out, idx)


def _inference_case(kind, shape, axis, rng):
    """x, running statistics that make channel 1 hard in inference, eps."""
    x, _, eps, w, b, _, idx = _case(kind, shape, axis, rng)
    x64 = x.astype(np.float64)
    red = tuple(i for i in range(x.ndim) if i != axis % x.ndim)
    mean, var = x64.mean(axis=red), x64.var(axis=red)
    if kind == "constant":  # x within subnormal steps of the running mean, var 0
        x[idx] = (3.0 + rng.integers(-3, 4, x[idx].shape) * np.float32(2.4e-7)).astype(np.float32)
        mean[1], var[1] = 3.0, 0.0
    return x, mean, var, eps, w, b, idx


@pytest.mark.parametrize("shape,axis", LAYOUTS)
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("activation", [None, "relu", "silu"])
@pytest.mark.parametrize("threads", [1, 2])
def test_inference(kind, shape, axis, activation, threads, rng, level):
    x, mean, var, eps, w, b, idx = _inference_case(kind, shape, axis, rng)
    out = cbn.batch_norm_inference(x, mean, var, w, b, eps=eps, axis=axis,
                                   activation=activation, num_threads=threads)
    scale = w / np.sqrt(var + eps)
    bshape = [1] * x.ndim
    bshape[axis] = 3
    e = R.activation((x.astype(np.float64) - mean.reshape(bshape)) * scale.reshape(bshape)
                     + b.reshape(bshape), activation)
    _check(out, e, idx)
    # the building block on the same coefficients
    nrm = cbn.normalize(x, mean, 1.0 / np.sqrt(var + eps), w, b, axis=axis,
                        activation=activation, num_threads=threads)
    _check(nrm, e, idx)


@pytest.mark.parametrize("shape,axis", LAYOUTS)
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("relu", [False, True])
def test_backward(kind, shape, axis, threads, relu, rng, level):
    x, plain, eps, w, _, dy, idx = _case(kind, shape, axis, rng)
    if kind == "constant":  # dy constant too: its dx is exactly 0 (k1*dy + k3, x - mean = 0)
        dy[idx] = 0.5
    elif kind == "subnormal":  # dy small enough for a finite dx = O(w invstd dy)
        dy[idx] = rng.integers(-20, 21, dy[idx].shape) * np.float32(1.4e-45)
    act = "relu" if relu else None
    f = cbn.batch_norm_forward(x, w, None, eps=eps, axis=axis, activation=act)
    dx, dw, db = cbn.batch_norm_backward(dy, x, f.mean, f.invstd, w, axis=axis,
                                         num_threads=threads, activation=act,
                                         y=f.out if relu else None)
    g = R.activation_gradient(dy.astype(np.float64), f.out.astype(np.float64), act) if relu \
        else dy.astype(np.float64)
    e = R.batch_norm_backward(g, x.astype(np.float64), f.mean, f.invstd, w, axis=axis)
    # dx = w invstd (g - mean(g) - xhat mean(g xhat)): within float32 rounding of its terms
    gh, xh = g[idx], (x[idx].astype(np.float64) - f.mean[1]) * f.invstd[1]
    mag = abs(w[1] * f.invstd[1]) * (np.abs(gh) + abs(gh.mean()) + np.abs(xh) * abs((gh * xh).mean()))
    _check(dx, e.dx, idx, mag)
    if kind == "constant" and not relu:
        assert np.all(dx[idx] == 0)
    # SyncBN's building block: dx from given sums
    s = cbn.backward_reduce(dy, x, f.mean, axis=axis, activation=act, y=f.out if relu else None)
    n = x.size // 3
    dx2 = cbn.backward_elemt(dy, x, f.mean, f.invstd, w, s.sum_dy, s.sum_dy_xmu, n, axis=axis,
                             num_threads=threads, activation=act, y=f.out if relu else None)
    _check(dx2, e.dx, idx, mag)


def test_backward_others_unchanged(rng):
    shape, axis = (8, 3, 4096), 1
    x, plain, eps, w, _, dy, idx = _case("subnormal", shape, axis, rng)
    for xx in (x, plain):
        f = cbn.batch_norm_forward(xx, w, None, eps=eps, axis=axis)
        dx = cbn.batch_norm_backward(dy, xx, f.mean, f.invstd, w, axis=axis).dx
        if xx is x:
            hard = dx
    assert np.array_equal(_others(hard, idx, 1), _others(dx, idx, 1))


def test_issue_examples():
    """The cases of the report (#21): all NaN, [nan, inf] and -inf before."""
    out = cbn.batch_norm_forward(np.full((4, 2), 3, np.float32), eps=1e-80).out
    assert np.all(out == 0)
    x = np.array([[3.4e38], [-3.4e38], [3.4e38]], np.float32)
    out = cbn.batch_norm_forward(x).out.ravel()
    np.testing.assert_allclose(out, [0.70710677, -1.4142135, 0.70710677], rtol=1e-6)
    y = cbn.batch_norm_inference(np.array([[3.0, 3.0 + 2.4e-7]], np.float32).T, [3.0], [0.0],
                                 eps=1e-80)
    assert y[0, 0] == 0
    np.testing.assert_allclose(y[1, 0], float(np.float32(3.0 + 2.4e-7) - 3.0) * 1e40, rtol=1e-6)


def test_true_overflow_stays_inf():
    """A result beyond float32 is +-inf, as its float64 value rounds (not NaN)."""
    x = np.array([[3.0, 3.0 + 2.4e-7, 3.0 - 2.4e-7]], np.float32).T
    y = cbn.batch_norm_inference(x, [3.0], [0.0], [1e10], eps=1e-80)  # 2.4e-7 * 1e50
    assert y[0, 0] == 0 and y[1, 0] == np.inf and y[2, 0] == -np.inf


def test_float16_goes_the_same_way():
    out = cbn.batch_norm_forward(np.full((4, 2), 3, np.float16), eps=1e-80).out
    assert out.dtype == np.float16 and np.all(out == 0)


def _per_channel_max(a, axis):
    """max |a| of each channel, broadcast against a (each channel its own tolerance)."""
    red = tuple(i for i in range(a.ndim) if i != axis % a.ndim)
    return np.abs(a).max(axis=red, keepdims=True)


@pytest.mark.parametrize("shape,axis", LAYOUTS)
def test_subnormal_coefficients_keep_their_digits(shape, axis, rng, level):
    """A scale below float32's normal range (std 1e30, weight 1e-10: 1e-40, ~16 bits in
    float32) and a backward k2 below it (std 1e10, dy ~1e-19) are computed in float64."""
    x = (rng.standard_normal(shape) * 1e30).astype(np.float32)
    w = np.array([1e-10, 1.0, 2e-10])
    f = cbn.batch_norm_forward(x, w, axis=axis)
    e = R.batch_norm_forward(x.astype(np.float64), w, axis=axis)
    assert_elementwise_close(f.out, e.out, np.float32, _per_channel_max(e.out, axis), factor=4.0,
                             stats_error=float(np.finfo(np.float32).smallest_subnormal))
    x = (rng.standard_normal(shape) * 1e10).astype(np.float32)
    dy = (rng.standard_normal(shape) * 1e-19).astype(np.float32)
    f = cbn.batch_norm_forward(x, axis=axis)
    dx = cbn.batch_norm_backward(dy, x, f.mean, f.invstd, axis=axis).dx
    e = R.batch_norm_backward(dy.astype(np.float64), x.astype(np.float64), f.mean, f.invstd,
                              axis=axis).dx
    assert_elementwise_close(dx, e, np.float32, _per_channel_max(e, axis), factor=8.0,
                             stats_error=float(np.finfo(np.float32).smallest_subnormal))
