"""Shared helpers for the cbn test suite (tolerances, random cases).

Tolerances.  The kernels accumulate every reduction of float64 data in float64, so its
*statistics* agree with a float64 NumPy computation on the same values to a few float64 ulps
times the summation depth; so do those of float32 data.  The statistics of float16 and
bfloat16 data are two-level (float32 partials of 8 or 4 terms, then float64;
src/kernels_statistics.pxi): their M2 is certified within ``TWO_LEVEL`` = 2^-20 relative and
their mean is within ~10 float32 ulps of a standard deviation (the bound there), which
``assert_stats_like`` allows.
The *element-wise outputs* are computed in the input dtype: ``((x - hi) - lo) * scale + shift``
has at most four roundings, each at most eps/2 of the magnitude of its operands, so the error
is bounded by a small multiple of ``eps(dtype) * (|xhat * scale| + |shift|)``; we allow 16 eps
of the largest such magnitude.  Gradients follow the same argument with three terms.
"""

import numpy as np

DTYPES = [np.float32, np.float64]
THREADS = [1, 2]


def eps_of(dtype):
    return float(np.finfo(dtype).eps)


def assert_elementwise_close(actual, expected, dtype, magnitude, factor=16.0, stats_error=0.0):
    """|actual - expected| <= factor * eps(dtype) * magnitude + stats_error, elementwise.

    ``magnitude`` (scalar or broadcastable) bounds the operands of the element-wise formula;
    ``stats_error`` is the absolute error inherited from float64 statistics (see
    :func:`stats_error`)."""
    actual = np.asarray(actual, dtype=np.float64)
    expected = np.asarray(expected, dtype=np.float64)
    assert actual.shape == expected.shape
    tol = factor * eps_of(dtype) * np.maximum(magnitude, np.finfo(np.float64).tiny) + stats_error
    err = np.abs(actual - expected)
    bad = err > tol
    if np.any(bad):
        i = np.argmax(err - tol)
        raise AssertionError(
            f"{bad.sum()} of {bad.size} elements differ; worst at flat index {i}: "
            f"actual={actual.flat[i]!r} expected={expected.flat[i]!r} tol={np.broadcast_to(tol, err.shape).flat[i]!r}"
        )


def assert_sum_close(actual, expected, abs_terms, factor=64.0):
    """A float64-accumulated reduction: error bounded by a few float64 eps of the sum of the
    absolute values of its terms (``abs_terms``), times the summation depth folded in factor."""
    actual = np.asarray(actual, dtype=np.float64)
    expected = np.asarray(expected, dtype=np.float64)
    tol = factor * eps_of(np.float64) * np.asarray(abs_terms, dtype=np.float64) + 1e-300
    assert np.all(np.abs(actual - expected) <= tol), (actual, expected, tol)


TWO_LEVEL = 2.0 ** -20  # the two-level statistics' certified relative error of M2 (and var)


def assert_stats_like(mean, invstd, ref_mean, ref_invstd, eps=1e-5):
    """The statistics of 16-bit data against a float64 reference's (both with ``eps``): the
    two-level bound -- mean within TWO_LEVEL standard deviations, invstd within TWO_LEVEL / 2
    relative (a 1% slack, plus float64 rounding)."""
    mean, invstd = np.asarray(mean, np.float64), np.asarray(invstd, np.float64)
    ref_invstd = np.asarray(ref_invstd, np.float64)
    std = np.sqrt(np.maximum(1.0 / ref_invstd**2 - eps, 0.0))
    assert np.all(np.abs(mean - ref_mean) <= TWO_LEVEL * std + 1e-12 * np.abs(ref_mean)), (
        mean, ref_mean, std)
    np.testing.assert_allclose(invstd, ref_invstd, rtol=TWO_LEVEL / 2 * 1.01 + 1e-12)


def channel_axes(ndim, axis):
    axis %= ndim
    red = tuple(i for i in range(ndim) if i != axis)
    bshape = [1] * ndim
    return axis, red, bshape


def make_case(rng, shape, axis, dtype, offset=0.5, spread=2.0, affine=True):
    """Random x (per-channel offsets), weight, bias and dy for one test case."""
    axis %= len(shape)
    C = shape[axis]
    bshape = [1] * len(shape)
    bshape[axis] = C
    centres = rng.uniform(-offset, offset, C).reshape(bshape) if offset else 0.0
    x = (rng.standard_normal(shape) * spread + centres).astype(dtype)
    dy = rng.standard_normal(shape).astype(dtype)
    w = rng.uniform(0.5, 1.5, C) * rng.choice([-1, 1], C) if affine else None
    b = rng.standard_normal(C) if affine else None
    return x, dy, w, b




def stats_error(x, axis, gain):
    """Absolute output error allowed for float64 statistics: the kernel and the reference each
    sum n terms in float64 (errors ~ sqrt(n) eps64 |x| on the mean, in practice), amplified by
    ``gain`` (e.g. max |weight * invstd|)."""
    n = x.size // x.shape[axis]
    return 8.0 * eps_of(np.float64) * np.sqrt(n) * float(np.abs(x).max()) * float(np.max(np.abs(gain)))
