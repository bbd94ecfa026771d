"""The 16-bit formats as a type parameter of the kernels: float16 and bfloat16 data run the
float32 arithmetic on values widened in registers and round each result once.  So wherever the
coefficients come from the caller (inference, normalize, backward_elemt) a 16-bit call equals
the float32 call on the widened data rounded to the format, bit for bit: every SIMD level, both
layouts and every plan (runs, pieces, shares, channels-last tiles, rows and leftover columns),
the in-register ReLU and the post stage (residual, SiLU), out-of-place and in place.  Where
the kernels reduce (forward, backward), the float64 statistics of the 16-bit data match the
float64 reference of the same values."""

import numpy as np
import pytest

import cbn
from cbn import reference as ref
from helpers import TWO_LEVEL, assert_stats_like

LAYOUTS = [((4, 8, 37), 1), ((2, 3, 5000), 1), ((1, 2, 70000), 1), ((64, 100), 1),
           ((7, 5, 6, 16), -1), ((3, 4, 4, 64), -1), ((5, 3, 3, 130), -1), ((9, 1031), 1),
           ((2, 3), 1), ((16, 24, 7, 7), 1), ((10, 1000), 1)]


def _dtypes():
    out = [np.float16]
    try:
        import ml_dtypes
    except ImportError:
        return out
    return out + [ml_dtypes.bfloat16]


DTYPES = _dtypes()
IDS = [np.dtype(d).name for d in DTYPES]


def _data(rng, shape, axis, dt):
    x = (rng.standard_normal(shape) * 2 + 0.5).astype(dt)
    C = shape[axis]
    return x, rng.standard_normal(C), rng.standard_normal(C), rng.random(C) + 0.5


def _as(a, dt):
    with np.errstate(over="ignore"):
        return a.astype(dt)


@pytest.mark.parametrize("dt", DTYPES, ids=IDS)
@pytest.mark.parametrize("shape,axis", LAYOUTS)
@pytest.mark.parametrize("act", [None, "relu", "silu"])
def test_inference_is_the_float32_kernel_rounded_once(level, rng, dt, shape, axis, act):
    x, w, b, rv = _data(rng, shape, axis, dt)
    rm = rng.standard_normal(shape[axis])
    x32 = x.astype(np.float32)
    for nt in (1, 2):
        got = cbn.batch_norm_inference(x, rm, rv, w, b, axis=axis, activation=act,
                                       num_threads=nt)
        want = cbn.batch_norm_inference(x32, rm, rv, w, b, axis=axis, activation=act,
                                        num_threads=nt)
        assert got.dtype == x.dtype
        np.testing.assert_array_equal(got.view(np.uint16), _as(want, dt).view(np.uint16))
    r = rng.standard_normal(shape).astype(dt)
    got = cbn.normalize(x, rm, 1 / np.sqrt(rv + 1e-5), w, b, axis=axis, activation="silu",
                        residual=r)
    want = cbn.normalize(x32, rm, 1 / np.sqrt(rv + 1e-5), w, b, axis=axis, activation="silu",
                         residual=r.astype(np.float32))
    np.testing.assert_array_equal(got.view(np.uint16), _as(want, dt).view(np.uint16))
    inplace = x.copy()
    cbn.batch_norm_inference(inplace, rm, rv, w, b, axis=axis, activation=act, out=inplace)
    want = cbn.batch_norm_inference(x32, rm, rv, w, b, axis=axis, activation=act)
    np.testing.assert_array_equal(inplace.view(np.uint16), _as(want, dt).view(np.uint16))


@pytest.mark.parametrize("dt", DTYPES, ids=IDS)
@pytest.mark.parametrize("shape,axis", LAYOUTS)
def test_backward_elemt_is_the_float32_kernel_rounded_once(level, rng, dt, shape, axis):
    x, w, _, _ = _data(rng, shape, axis, dt)
    dy = rng.standard_normal(shape).astype(dt)
    C = shape[axis]
    mean, invstd = rng.standard_normal(C), rng.random(C) + 0.5
    sdy, sdyx = rng.standard_normal(C) * 10, rng.standard_normal(C) * 10
    n = x.size // C
    got = cbn.backward_elemt(dy, x, mean, invstd, w, sdy, sdyx, n, axis=axis)
    want = cbn.backward_elemt(dy.astype(np.float32), x.astype(np.float32), mean, invstd, w, sdy,
                              sdyx, n, axis=axis)
    np.testing.assert_array_equal(got.view(np.uint16), _as(want, dt).view(np.uint16))
    y = np.where(rng.random(shape) < 0.5, 1.0, -1.0).astype(dt)  # a ReLU's output mask
    got = cbn.backward_elemt(dy, x, mean, invstd, w, sdy, sdyx, n, axis=axis, activation="relu",
                             y=y)
    want = cbn.backward_elemt(dy.astype(np.float32), x.astype(np.float32), mean, invstd, w, sdy,
                              sdyx, n, axis=axis, activation="relu", y=y.astype(np.float32))
    np.testing.assert_array_equal(got.view(np.uint16), _as(want, dt).view(np.uint16))


@pytest.mark.parametrize("dt", DTYPES, ids=IDS)
@pytest.mark.parametrize("shape,axis", LAYOUTS)
def test_statistics_and_sums_are_those_of_the_values(level, rng, dt, shape, axis):
    x, w, b, _ = _data(rng, shape, axis, dt)
    dy = rng.standard_normal(shape).astype(dt)
    x64, dy64 = x.astype(np.float64), dy.astype(np.float64)
    for nt in (1, 2):
        f = cbn.batch_norm_forward(x, w, b, axis=axis, num_threads=nt)
        e = ref.batch_norm_forward(x64, w, b, axis=axis)
        assert_stats_like(f.mean, f.invstd, e.mean, e.invstd)
        g = cbn.batch_norm_backward(dy, x, f.mean, f.invstd, w, axis=axis, num_threads=nt)
        ge = ref.batch_norm_backward(dy64, x64, f.mean, f.invstd, w, axis=axis)
        # two-level sums: within TWO_LEVEL of their terms' magnitudes, then rounded to float32
        a = axis % x.ndim
        red = tuple(i for i in range(x.ndim) if i != a)
        bsh = [x.shape[a] if i == a else 1 for i in range(x.ndim)]
        xhat = (x64 - f.mean.reshape(bsh)) * f.invstd.reshape(bsh)
        eps32 = float(np.finfo(np.float32).eps)
        for got, want, terms in ((g.dbias, ge.dbias, np.abs(dy64)),
                                 (g.dweight, ge.dweight, np.abs(dy64 * xhat))):
            tol = TWO_LEVEL * terms.sum(axis=red) + eps32 * np.abs(want) + 1e-30
            assert np.all(np.abs(got - want) <= tol), (got, want, tol)
        assert g.dweight.dtype == w.dtype and g.dx.dtype == x.dtype  # the weight's dtype
        m = cbn.moments(x, axis=axis, num_threads=nt)
        np.testing.assert_array_equal(m.mean, f.mean)  # one reduction for both


@pytest.mark.parametrize("dt", DTYPES, ids=IDS)
def test_results_do_not_depend_on_the_thread_count(rng, dt):
    for shape, axis in [((8, 64, 30, 30), 1), ((3000, 96), 1), ((16, 9, 9, 64), -1)]:
        x, w, b, _ = _data(rng, shape, axis, dt)
        dy = rng.standard_normal(shape).astype(dt)
        runs = []
        for nt in (1, 2, 3):
            f = cbn.batch_norm_forward(x, w, b, axis=axis, num_threads=nt)
            g = cbn.batch_norm_backward(dy, x, f.mean, f.invstd, w, axis=axis, num_threads=nt)
            runs.append([f.out.view(np.uint16), f.mean, f.invstd, g.dx.view(np.uint16),
                         g.dweight, g.dbias])
        for other in runs[1:]:
            for a, c in zip(runs[0], other):
                np.testing.assert_array_equal(a, c)
