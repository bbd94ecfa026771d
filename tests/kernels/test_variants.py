"""Every compiled SIMD variant, not only the one the CPU selects, against the float64 oracle.

The rest of the suite runs on the dispatched variant (AVX-512 on our machines, and in CI).  Here
the public functions run on each built variant the CPU supports in turn (``cbn._dispatch.
use_level``), over shapes that reach every kernel class:
channel-major runs with vector tails and runs shorter than a vector, a single long channel,
channels-last rows narrower than, equal to and wider than a register tile, and wide rows that
take the column tiles.  Each variant must match the oracle, be bit-identical across thread
counts, and agree with the dispatched variant to rounding: the run reductions keep 8 lanes in
the same order at every level, only FMA contraction differs (SSE2 has none).
"""

import numpy as np
import pytest

import cbn
import cbn.reference as ref
from cbn import _dispatch
from cbn._dispatch import kernels as k
from helpers import assert_elementwise_close, eps_of, make_case, stats_error

DISPATCHED = _dispatch.level  # the level bound at import

SHAPES = [
    ((4, 3, 5, 7), 1),        # runs of 35: vector tails
    ((6, 9, 3), 1),           # runs shorter than a vector
    ((8, 40, 14, 14), 1),     # short runs, many channels
    ((1, 1, 70001), 1),       # one channel split between threads
    ((300, 3), 1),            # fewer columns than a vector (float64 tiles start at 2 or 4)
    ((300, 13), 1),           # NC, a partial tile
    ((300, 32), 1),           # whole element-wise tiles
    ((500, 64), 1),           # the widest element-wise tile (AVX2 and AVX-512 float32)
    ((64, 7, 7, 70), -1),     # NHWC wider than a tile, partial tiles
    ((257, 1031), 1),         # wide rows: column tiles plus remainders
]


@pytest.fixture(params=_dispatch.LEVELS)
def variant(request):
    """Run cbn's public functions on one SIMD variant; yields its name."""
    name = request.param
    if name not in _dispatch.supported_levels():
        pytest.skip(f"{name}: not built or not supported by this CPU")
    dispatched = _dispatch.level
    with _dispatch.use_level(name):
        assert _dispatch.kernels.variant() == name
        yield name
    assert _dispatch.level == dispatched and _dispatch.kernels.variant() == dispatched


def _running(mean, invstd, dtype):
    """Running statistics in the input dtype, as a trained layer would hold them."""
    return mean.astype(dtype), (1.0 / invstd**2 - 1e-5).astype(dtype)


def _run(x, dy, w, b, axis, nt):
    y, mean, invstd = cbn.batch_norm_forward(x, w, b, axis=axis, num_threads=nt)
    dx, dw, db = cbn.batch_norm_backward(dy, x, mean, invstd, w, axis=axis, num_threads=nt)
    rm, rv = _running(mean, invstd, x.dtype)
    yi = cbn.batch_norm_inference(x, rm, rv, w, b, axis=axis, num_threads=nt)
    return y, mean, invstd, dx, dw, db, yi


@pytest.mark.parametrize("shape,axis", SHAPES)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_variant_against_the_oracle(rng, variant, shape, axis, dtype):
    x, dy, w, b = make_case(rng, shape, axis, dtype, offset=3.0)
    x64, dy64 = x.astype(np.float64), dy.astype(np.float64)
    a = axis % x.ndim
    red = tuple(i for i in range(x.ndim) if i != a)
    bshape = [1] * x.ndim
    bshape[a] = -1
    one = _run(x, dy, w, b, axis, 1)
    two = _run(x, dy, w, b, axis, 2)
    for p, q in zip(one, two):  # the decomposition depends on the shape only
        np.testing.assert_array_equal(p, q)
    y, mean, invstd, dx, dw, db, yi = one

    np.testing.assert_allclose(mean, x64.mean(axis=red), rtol=0,
                               atol=64 * eps_of(np.float64) * np.abs(x64).max())
    np.testing.assert_allclose(1.0 / invstd**2 - 1e-5, x64.var(axis=red), rtol=1e-12)
    scale = np.abs(w) * invstd
    xhat_mag = (np.abs(x64 - mean.reshape(bshape)) * scale.reshape(bshape)
                + np.abs(b).reshape(bshape))
    y_ref, _, _ = ref.batch_norm_forward(x64, w, b, axis=axis)
    oracle = 4 * eps_of(np.float64) * xhat_mag
    assert_elementwise_close(y, y_ref, dtype, xhat_mag,
                             stats_error=stats_error(x64, a, w * invstd) + oracle)
    rm, rv = (v.astype(np.float64) for v in _running(mean, invstd, dtype))
    yi_ref = ref.batch_norm_inference(x64, rm, rv, w, b, axis=axis)
    iscale = np.abs(w) / np.sqrt(rv + 1e-5)
    yi_mag = (np.abs(x64 - rm.reshape(bshape)) * iscale.reshape(bshape)
              + np.abs(b).reshape(bshape))
    # the oracle's own float64 form x * scale + shift rounds at |x * scale| + |shift|
    yi_oracle = 4 * eps_of(np.float64) * ((np.abs(x64) + np.abs(rm).reshape(bshape))
                                          * iscale.reshape(bshape) + np.abs(b).reshape(bshape))
    assert_elementwise_close(yi, yi_ref, dtype, yi_mag, stats_error=yi_oracle)

    dx_ref, dw_ref, db_ref = ref.batch_norm_backward(dy64, x64, mean, invstd, w, axis=axis)
    n = x.size // x.shape[a]
    np.testing.assert_allclose(db, db_ref, rtol=0, atol=64 * eps_of(np.float64) * n * np.abs(dy64).max())
    np.testing.assert_allclose(dw, dw_ref, rtol=0,
                               atol=64 * eps_of(np.float64) * n * np.abs(dy64).max()
                               * np.abs(x64 - mean.reshape(bshape)).max() * invstd.max())
    g = np.abs(w) * invstd
    dx_mag = g.reshape(bshape) * (np.abs(dy64) + np.abs(dy64).max() * (1 + np.abs(x64 - mean.reshape(bshape)) * invstd.reshape(bshape)))
    assert_elementwise_close(dx, dx_ref, dtype, dx_mag)


@pytest.mark.parametrize("shape,axis", SHAPES)
def test_variants_agree_with_the_dispatched_one(rng, variant, shape, axis):
    """To rounding: float64 statistics within a few ulps, float32 outputs within a few ulps of
    their magnitude."""
    x, dy, w, b = make_case(rng, shape, axis, np.float32, offset=3.0)
    mine = _run(x, dy, w, b, axis, 2)
    with _dispatch.use_level(DISPATCHED):
        y_d, mean_d, invstd_d = cbn.batch_norm_forward(x, w, b, axis=axis, num_threads=2)
    np.testing.assert_allclose(mine[1], mean_d, rtol=1e-14, atol=1e-14)
    np.testing.assert_allclose(mine[2], invstd_d, rtol=1e-13)
    assert np.max(np.abs(mine[0] - y_d)) <= 8 * eps_of(np.float32) * max(1.0, np.abs(y_d).max())


@pytest.mark.parametrize("shape,axis", SHAPES)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_variant_fused_relu_is_the_masked_op(rng, variant, shape, axis, dtype):
    """The fused ReLU (its masked loads and selects) in each variant: the forward equals
    max(plain forward, 0) and the backward equals the plain backward of the masked gradient,
    bit for bit."""
    x, dy, w, b = make_case(rng, shape, axis, dtype, offset=3.0)
    plain = cbn.batch_norm_forward(x, w, b, axis=axis)
    fused = cbn.batch_norm_forward(x, w, b, axis=axis, activation="relu")
    np.testing.assert_array_equal(fused.out, np.where(plain.out < 0, 0, plain.out))
    rm, rv = _running(plain.mean, plain.invstd, dtype)
    yi = cbn.batch_norm_inference(x, rm, rv, w, b, axis=axis)
    yr = cbn.batch_norm_inference(x, rm, rv, w, b, axis=axis, activation="relu")
    np.testing.assert_array_equal(yr, np.where(yi < 0, 0, yi))
    masked = np.where(fused.out > 0, dy, 0).astype(dtype)
    g_sep = cbn.batch_norm_backward(masked, x, fused.mean, fused.invstd, w, axis=axis)
    g_fused = cbn.batch_norm_backward(dy, x, fused.mean, fused.invstd, w, axis=axis,
                                      activation="relu", y=fused.out)
    for p, q in zip(g_fused, g_sep):
        np.testing.assert_array_equal(p, q)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_variant_running_stats_round_as_numpy(rng, variant, dtype):
    """The running-statistic update is compiled once and never contracted into FMAs: at every
    level it is NumPy's ``(1 - m) * running + m * batch`` in float64 (the unbiased variance for
    ``running_var``), stored in the statistic's dtype, bit for bit."""
    C, m = 64, 0.3
    x = (rng.standard_normal((50, C, 7)) * 2 + 1).astype(dtype)
    rm0 = rng.standard_normal(C).astype(dtype)
    rv0 = rng.uniform(0.5, 2.0, C).astype(dtype)
    rm, rv = rm0.copy(), rv0.copy()
    f = cbn.batch_norm_forward(x, running_mean=rm, running_var=rv, momentum=m)
    stats = cbn.moments(x)
    n = stats.count
    var = stats.m2 / n
    np.testing.assert_array_equal(f.mean, stats.mean)
    expect_mean = ((1.0 - m) * rm0.astype(np.float64) + m * stats.mean).astype(dtype)
    expect_var = ((1.0 - m) * rv0.astype(np.float64) + m * (var * (n / (n - 1.0)))).astype(dtype)
    np.testing.assert_array_equal(rm, expect_mean)
    np.testing.assert_array_equal(rv, expect_var)


# (this direct parametrization overrides the ``variant`` fixture above: the kernels are called
# on each level directly, and the test skips the levels it cannot run itself)
@pytest.mark.parametrize("variant", ["baseline", "avx2", "avx512"])
def test_every_built_variant_gives_the_same_answer(rng, variant):
    """Each compiled SIMD variant agrees with the dispatched one (to rounding: FMA contraction
    differs between instruction sets)."""
    from cbn import _build_info

    if variant not in _build_info.VARIANTS:
        pytest.skip(f"{variant} not built")
    if not k.cpu_supports(variant):
        pytest.skip(f"CPU lacks {variant}")
    x = rng.standard_normal((6, 5, 300)).astype(np.float32) + 3
    mean, m2 = np.empty(5), np.empty(5)
    y = np.empty_like(x)
    with _dispatch.use_level(variant):
        assert k.variant() == variant
        k.moments(x, 6, 5, 300, mean, m2, 0)
        k.inference(x, y, 6, 5, 300, mean, 1 / np.sqrt(m2 / 1800), np.zeros(5), 0)
    x64 = x.astype(np.float64)
    np.testing.assert_allclose(mean, x64.mean(axis=(0, 2)), rtol=1e-14)
    np.testing.assert_allclose(m2, x64.var(axis=(0, 2)) * 1800, rtol=1e-12)
    np.testing.assert_allclose(y, (x64 - mean[:, None]) / np.sqrt(m2[:, None] / 1800), atol=1e-5)
