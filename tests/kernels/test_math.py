"""The post stage's elementary functions (src/cbn_math-inl.h), at every SIMD level, against
float64 (float32 kernels: float64 NumPy/libm values, exact to far below a float32 ulp) and
mpmath (float64 kernels): the maximum errors its design note states, in ulps of the result,
over the whole range of the type; and the special values."""

import math

import numpy as np
import pytest

from cbn import _dispatch

F32, F64 = np.float32, np.float64
_ERFC = np.frompyfunc(math.erfc, 1, 1)


def _ulps(got, want, dtype):
    """|got - want| in ulps of want (the spacing at want's magnitude; results that are normal
    numbers of dtype only)."""
    want = np.asarray(want, F64)
    normal = np.abs(want) >= np.finfo(dtype).tiny
    spacing = np.spacing(np.abs(want[normal]).astype(dtype)).astype(F64)
    return np.abs(got[normal].astype(F64) - want[normal]) / spacing


def _float32_sweep():
    """Every 2**12-th bit pattern of the finite float32 values, both signs."""
    bits = np.arange(0, 0x7F800000, 1 << 12, dtype=np.uint32)
    pos = bits.view(F32)
    return np.concatenate([pos, -pos])


def _normal_cdf64(z):
    return (0.5 * _ERFC(-z.astype(F64) / math.sqrt(2.0))).astype(F64)


def test_exp_float32_within_one_ulp_everywhere(level):
    x = _float32_sweep()
    x = x[(x > -104) & (x < 88.72)]  # beyond: 0 or Inf, checked below
    x = np.concatenate([x, np.linspace(-103.9, 88.7, 200001, dtype=F32)])
    got = _dispatch.kernels.math_eval("exp", x)
    with np.errstate(over="ignore"):
        u = _ulps(got, np.exp(x.astype(F64)), F32)
    assert u.max() <= 1.0, u.max()


def test_normal_float32_within_four_ulps_everywhere(level):
    z = _float32_sweep()
    z = np.concatenate([z[np.abs(z) < 20], np.linspace(-20, 20, 200001, dtype=F32)])
    cdf, pdf = _dispatch.kernels.math_eval("normal", z)
    zd = z.astype(F64)
    assert _ulps(cdf, _normal_cdf64(zd), F32).max() <= 4.0
    assert _ulps(pdf, np.exp(-0.5 * zd * zd) / math.sqrt(2 * math.pi), F32).max() <= 1.0


def _silu64(z):
    z = z.astype(F64)
    with np.errstate(over="ignore"):
        return z / (1 + np.exp(-z))


def _sigmoid_pair64(w):
    """sigmoid(w) and 1 - sigmoid(w) in float64, neither through a cancellation"""
    w = w.astype(F64)
    with np.errstate(over="ignore"):
        e = np.exp(-np.abs(w))
    big, small = 1 / (1 + e), e / (1 + e)
    return np.where(w < 0, small, big), np.where(w < 0, big, small)


def test_silu_float32_within_three_ulps_everywhere(level):
    z = _float32_sweep()
    z = np.concatenate([z, np.linspace(-120, 30, 200001, dtype=F32)])
    got = _dispatch.kernels.math_eval("silu", z)
    want = _silu64(z)
    assert _ulps(got, want, F32).max() <= 3.0
    # results below the normal range: rounded once after the scaling by 2**n, so within a
    # few units of the smallest subnormal (not flushed to -0, as z / (1 + e^-z) would be
    # from z = -89 on, where e^-z overflows)
    sub = np.abs(want) < np.finfo(F32).tiny
    assert sub.sum() > 1000
    assert (np.abs(got[sub].astype(F64) - want[sub]) / 2.0**-149).max() <= 1.5


def test_sigmoid_float32_within_two_and_a_half_ulps_everywhere(level):
    w = _float32_sweep()
    w = np.concatenate([w, np.linspace(-110, 110, 200001, dtype=F32)])
    s, om = _dispatch.kernels.math_eval("sigmoid", w)
    want_s, want_om = _sigmoid_pair64(w)
    assert _ulps(s, want_s, F32).max() <= 2.5
    assert _ulps(om, want_om, F32).max() <= 2.5


def test_float64_against_mpmath(level):
    mp = pytest.importorskip("mpmath")
    mp.mp.dps = 40
    rng = np.random.default_rng(7)
    x = np.concatenate([rng.uniform(-745, 709, 3000), rng.uniform(-1, 1, 1000),
                        np.sign(rng.standard_normal(1000)) * 10.0 ** rng.uniform(-300, 2.8, 1000)])
    x = x[(x > -745) & (x < 709)]
    got = _dispatch.kernels.math_eval("exp", x)
    want = np.array([float(mp.exp(mp.mpf(float(v)))) for v in x])
    assert _ulps(got, want, F64).max() <= 1.0
    z = np.concatenate([rng.uniform(-38, 8, 3000), rng.uniform(-1, 1, 1000)])
    cdf, pdf = _dispatch.kernels.math_eval("normal", z)
    want_c = np.array([float(mp.ncdf(mp.mpf(float(v)))) for v in z])
    want_p = np.array([float(mp.npdf(mp.mpf(float(v)))) for v in z])
    assert _ulps(cdf, want_c, F64).max() <= 4.0
    assert _ulps(pdf, want_p, F64).max() <= 1.0
    w = np.concatenate([rng.uniform(-760, 40, 2000), rng.uniform(-5, 5, 1000),
                        -np.logspace(-300, 2.8, 500), np.logspace(-300, 2.8, 500)])
    mw = [mp.mpf(float(v)) for v in w]
    want_silu = np.array([float(v / (1 + mp.exp(-v))) for v in mw])
    want_s = np.array([float(1 / (1 + mp.exp(-v))) for v in mw])
    want_om = np.array([float(mp.exp(-v) / (1 + mp.exp(-v))) for v in mw])
    assert _ulps(_dispatch.kernels.math_eval("silu", w), want_silu, F64).max() <= 2.5
    s, om = _dispatch.kernels.math_eval("sigmoid", w)
    assert _ulps(s, want_s, F64).max() <= 2.5
    assert _ulps(om, want_om, F64).max() <= 2.5


@pytest.mark.parametrize("dtype", [F32, F64])
def test_special_values(level, dtype):
    x = np.array([-np.inf, np.inf, np.nan, -0.0, 0.0, -1e4, 1e4], dtype)
    e = _dispatch.kernels.math_eval("exp", x)
    np.testing.assert_array_equal(e, [0.0, np.inf, np.nan, 1.0, 1.0, 0.0, np.inf])
    cdf, pdf = _dispatch.kernels.math_eval("normal", x)
    np.testing.assert_array_equal(cdf, [0.0, 1.0, np.nan, 0.5, 0.5, 0.0, 1.0])
    np.testing.assert_array_equal(pdf[[0, 1, 5, 6]], 0.0)
    assert np.isnan(pdf[2]) and pdf[3] == pdf[4] == dtype(1 / math.sqrt(2 * math.pi))
    # silu as torch's z / (1 + e^-z): -inf / inf is NaN; the signs of zero kept
    silu = _dispatch.kernels.math_eval("silu", x)
    np.testing.assert_array_equal(silu, [np.nan, np.inf, np.nan, -0.0, 0.0, -0.0, 1e4])
    assert np.signbit(silu[[3, 5]]).all() and not np.signbit(silu[4])
    big = np.array([np.finfo(dtype).min, np.finfo(dtype).max], dtype)
    np.testing.assert_array_equal(_dispatch.kernels.math_eval("silu", big), [-0.0, big[1]])
    s, om = _dispatch.kernels.math_eval("sigmoid", x)
    np.testing.assert_array_equal(s, [0.0, 1.0, np.nan, 0.5, 0.5, 0.0, 1.0])
    np.testing.assert_array_equal(om, [1.0, 0.0, np.nan, 0.5, 0.5, 1.0, 0.0])
