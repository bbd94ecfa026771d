"""64-bit sizes: one float32 channel of more than 2**31 elements (8.6 GB; run with
``CBN_BIG=1 pytest tests/kernels/test_64bit_sizes.py``)."""

import os
from fractions import Fraction

import numpy as np
import pytest

import cbn


BIG_N = 2**31 + 64
TAIL = 1000.0  # the last 64 values, beyond index 2**31 - 1


def _fill_pattern(x):
    """x[i] = (i % 7) - 3 for i < 2**31, x[i] = TAIL beyond; filled in chunks (no 17 GB index
    array).  Returns the exact (sum, sum of squares) as Python integers."""
    M = 2**31
    L = 7 * 2**21
    block = ((np.arange(L) % 7) - 3).astype(x.dtype)
    for s in range(0, M, L):
        e = min(s + L, M)
        x[s:e] = block[:e - s]
    x[M:] = TAIL
    q, r = divmod(M, 7)
    s1 = sum(j - 3 for j in range(r)) + 64 * int(TAIL)
    s2 = 28 * q + sum((j - 3) ** 2 for j in range(r)) + 64 * int(TAIL) ** 2
    return s1, s2


@pytest.mark.slow
@pytest.mark.skipif(os.environ.get("CBN_BIG", "") in ("", "0"),
                    reason="8.6 GB test: set CBN_BIG=1 to run")
@pytest.mark.parametrize("shape", [(BIG_N, 1), (1, 1, BIG_N)], ids=["NC-rows", "one-run"])
def test_channel_with_more_than_2_31_elements(shape):
    """One float32 channel of 2**31 + 64 elements (8.6 GB, the only big buffer: the forward
    runs in place): moments, backward sums and the forward statistics are exact to float64
    rounding, and the outputs beyond index 2**31 are right."""
    N = BIG_N
    flat = np.empty(N, np.float32)
    s1, s2 = _fill_pattern(flat)
    x = flat.reshape(shape)
    mean_q = Fraction(s1, N)
    var_q = Fraction(s2, N) - mean_q**2
    mean_x, var_x = float(mean_q), float(var_q)
    eps = 1e-5
    invstd_x = 1.0 / np.sqrt(var_x + eps)

    m = cbn.moments(x)
    assert m.count == N
    assert abs(m.mean[0] - mean_x) <= 1e-12 * (abs(mean_x) + 1)
    assert abs(m.m2[0] / N - var_x) <= 1e-12 * var_x

    # dbias = sum(dy) and dweight = sum(dy * xhat) with dy = x (a float64 weight: float64
    # gradients, not rounded to x's float32)
    _, dw, db = cbn.batch_norm_backward(x, x, np.array([mean_x]), np.array([invstd_x]),
                                        np.ones(1), needs=(False, True, True))
    assert dw.dtype == np.float64
    assert abs(db[0] - s1) <= 1e-9 * abs(s1)
    want_dw = (s2 - mean_x * s1) * invstd_x
    assert abs(dw[0] - want_dw) <= 1e-10 * abs(want_dw)

    y, mean, invstd = cbn.batch_norm_forward(x, eps=eps, out=x)
    assert y is x
    assert abs(mean[0] - mean_x) <= 1e-12 * (abs(mean_x) + 1)
    assert abs(invstd[0] - invstd_x) <= 1e-12 * invstd_x
    expect_vals = {v: (v - mean_x) * invstd_x for v in list(range(-3, 4)) + [TAIL]}
    tol = 16 * float(np.finfo(np.float32).eps)
    M = 2**31

    def check(lo, hi):
        got = flat[lo:hi].astype(np.float64)  # flat is x's memory: the output
        want = np.array([expect_vals[TAIL if i >= M else (i % 7) - 3] for i in range(lo, hi)])
        np.testing.assert_allclose(got, want, rtol=tol, atol=tol)

    check(0, 14)
    check(M - 70, M)        # the last pattern values before 2**31
    check(M, N)             # the 64 values beyond 2**31 - 1
    check(N - 5, N)
    # every element: a vectorised scan in chunks against the periodic pattern
    L = 7 * 2**21
    block = np.array([expect_vals[(j % 7) - 3] for j in range(7)]).astype(np.float32)
    block = np.tile(block, L // 7)
    for s in range(0, M, L):
        e = min(s + L, M)
        np.testing.assert_allclose(flat[s:e], block[:e - s], rtol=tol, atol=tol)
