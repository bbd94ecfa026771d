"""Hard data: large offsets, thread-count independence, non-negative variance, n == 1."""

import numpy as np
import pytest

import cbn

from helpers import THREADS

LAYOUTS = [((64, 8, 300), 1), ((5000, 16), 1), ((8, 20, 20, 12), -1), ((4, 3, 200, 5), 2),
           ((2, 4, 70000), 1), ((4, 1, 200, 200), 1)]


@pytest.mark.parametrize("shape,axis", LAYOUTS)
@pytest.mark.parametrize("ratio", [1e3, 1e6])
@pytest.mark.parametrize("threads", THREADS)
def test_float32_large_offset_variance(rng, shape, axis, ratio, threads):
    """float32 data with |mean|/std up to 1e6: variance within 1e-6 relative of a float64
    computation on the same float32 values (torch's CPU path for (N, C) is orders off)."""
    C = shape[axis]
    bshape = [1] * len(shape)
    bshape[axis % len(shape)] = C
    std = rng.uniform(0.5, 2.0, C).reshape(bshape)
    sign = rng.choice([-1.0, 1.0], C).reshape(bshape)
    x = (sign * ratio * std + std * rng.standard_normal(shape)).astype(np.float32)
    eps = 1e-12  # tiny so the variance itself is what invstd measures
    y, mean, invstd = cbn.batch_norm_forward(x, eps=eps, axis=axis, num_threads=threads)
    red = tuple(i for i in range(x.ndim) if i != axis % x.ndim)
    x64 = x.astype(np.float64)
    var64 = x64.var(axis=red)
    var = 1.0 / invstd**2 - eps
    np.testing.assert_allclose(var, var64, rtol=1e-6)
    np.testing.assert_allclose(mean, x64.mean(axis=red), rtol=1e-12)
    # the output too: (x - mean) * invstd to float32 accuracy, no cancellation
    y64 = (x64 - x64.mean(axis=red, keepdims=True)) / np.sqrt(x64.var(axis=red, keepdims=True))
    np.testing.assert_allclose(y, y64, atol=1e-5)


@pytest.mark.parametrize("shape,axis", LAYOUTS)
def test_float32_large_offset_inference_and_backward(rng, shape, axis):
    C = shape[axis]
    bshape = [1] * len(shape)
    bshape[axis % len(shape)] = C
    x = (1e6 + rng.standard_normal(shape)).astype(np.float32)
    dy = rng.standard_normal(shape).astype(np.float32)
    red = tuple(i for i in range(x.ndim) if i != axis % x.ndim)
    x64 = x.astype(np.float64)
    mean64, var64 = x64.mean(axis=red), x64.var(axis=red)
    y = cbn.batch_norm_inference(x, mean64, var64, eps=1e-12, axis=axis)
    y64 = (x64 - mean64.reshape(bshape)) / np.sqrt(var64.reshape(bshape))
    np.testing.assert_allclose(y, y64, atol=1e-5)
    _, mean, invstd = cbn.batch_norm_forward(x, eps=1e-12, axis=axis)
    dx, dw, db = cbn.batch_norm_backward(dy, x, mean, invstd, axis=axis)
    ref = cbn.reference.batch_norm_backward(dy.astype(np.float64), x64, mean, invstd, axis=axis)
    np.testing.assert_allclose(dx, ref.dx, atol=1e-5 * np.abs(ref.dx).max())
    np.testing.assert_allclose(dw, ref.dweight, rtol=1e-6, atol=1e-6 * np.abs(dy).sum() / C)


@pytest.mark.parametrize("shape,axis", LAYOUTS + [((64, 3000), 1), ((32, 64, 20, 20), 1)])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_results_do_not_depend_on_thread_count(rng, shape, axis, dtype):
    x = (rng.standard_normal(shape) * 3 + 7).astype(dtype)
    dy = rng.standard_normal(shape).astype(dtype)
    C = shape[axis]
    w, b = rng.standard_normal(C), rng.standard_normal(C)
    runs = []
    for threads in (1, 2, 3):
        f = cbn.batch_norm_forward(x, w, b, axis=axis, num_threads=threads)
        g = cbn.batch_norm_backward(dy, x, f.mean, f.invstd, w, axis=axis, num_threads=threads)
        i = cbn.batch_norm_inference(x, f.mean, 1 / f.invstd**2, w, b, axis=axis, num_threads=threads)
        runs.append((*f, *g, i))
    for other in runs[1:]:
        for a, b_ in zip(runs[0], other):
            np.testing.assert_array_equal(a, b_)


def test_constant_channel_has_zero_variance_not_negative():
    x = np.full((50, 3, 40), 1234.5678, np.float32)
    x[:, 1] = 0.1  # not exactly representable: rounding must still give var == 0 exactly
    _, mean, invstd = cbn.batch_norm_forward(x, eps=1e-5)
    var = 1 / invstd**2 - 1e-5
    assert np.all(np.abs(var) < 1e-12)
    np.testing.assert_array_equal(mean, x[0, :, 0].astype(np.float64))


@pytest.mark.parametrize("shape,axis", [((1, 5), 1), ((1, 3, 1, 1), 1), ((1, 1, 1, 4), -1)])
def test_one_value_per_channel_in_training_raises(shape, axis):
    x = np.ones(shape, np.float32)
    with pytest.raises(ValueError, match="Expected more than 1 value per channel when training"):
        cbn.batch_norm_forward(x, axis=axis)
    with pytest.raises(ValueError, match="Expected more than 1 value per channel when training"):
        cbn.batch_norm(x, np.zeros(shape[axis]), np.ones(shape[axis]), training=True, axis=axis)
    # eval mode is fine with a single value
    y = cbn.batch_norm(x, np.zeros(shape[axis]), np.ones(shape[axis]), training=False, axis=axis)
    assert y.shape == x.shape


def test_empty_batch_returns_empty_and_keeps_running_stats():
    x = np.empty((0, 4, 5), np.float32)
    rm, rv = np.arange(4.0), np.ones(4)
    y, mean, invstd = cbn.batch_norm_forward(x, running_mean=rm, running_var=rv)
    assert y.shape == x.shape and y.dtype == x.dtype
    assert np.isnan(mean).all() and np.isnan(invstd).all()
    np.testing.assert_array_equal(rm, np.arange(4.0))
    np.testing.assert_array_equal(rv, np.ones(4))
    assert cbn.batch_norm_inference(x, rm, rv).shape == x.shape
    dx, dw, db = cbn.batch_norm_backward(x, x, rm, rv)
    assert dx.shape == x.shape and np.all(dw == 0) and np.all(db == 0)


@pytest.mark.parametrize("shape,axis", LAYOUTS)
@pytest.mark.parametrize("centre,spread", [(1e155, 0.0), (-1e160, 1e150), (1e163, 1e150), (-1e10, 1.0)])
def test_float64_huge_offsets_and_magnitudes(rng, shape, axis, centre, spread):
    """float64 data far from zero: means beyond 1.3e154 (whose square overflows) give finite
    statistics (a first merge into an empty accumulator must not evaluate inf * 0), and
    |mean|/std up to 1e13 keeps the variance to 1e-9 (merging blocks by their rounded means
    lost 7e-8 at 1e10)."""
    x = centre + spread * rng.standard_normal(shape)
    red = tuple(i for i in range(x.ndim) if i != axis % x.ndim)
    mean_ref = np.mean(x, axis=red)
    # x - centre is exact (Sterbenz), so this reference keeps every digit of the spread
    var_ref = np.var((x - centre) / spread, axis=red) * spread ** 2 if spread else 0.0
    y, mean, invstd = cbn.batch_norm_forward(x, eps=1e-5, axis=axis)
    m = cbn.moments(x, axis=axis)
    assert np.isfinite(mean).all() and np.isfinite(invstd).all() and np.isfinite(y).all()
    np.testing.assert_allclose(mean, mean_ref, rtol=1e-13)
    np.testing.assert_allclose(m.mean, mean_ref, rtol=1e-13)
    var = m.m2 / m.count
    assert np.isfinite(var).all()
    np.testing.assert_allclose(var, var_ref, rtol=1e-9, atol=0)
