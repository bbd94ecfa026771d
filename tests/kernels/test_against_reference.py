"""The sweep: every op, every layout, both dtypes and thread counts, against cbn.reference
computed in float64 on the same values (the bottleneck-style twin test)."""

import numpy as np
import pytest

import cbn
from cbn import reference as ref

from helpers import (DTYPES, THREADS, assert_elementwise_close, assert_sum_close, make_case,
                     stats_error)

# (shape, axis, why)
CASES = [
    ((2, 1, 5), 1, "C=1"),
    ((3, 7, 9), 1, "odd C, NCL"),
    ((4, 13, 5, 6), 1, "C not a multiple of the vector width"),
    ((1, 5, 33, 17), 1, "N=1 with spatial > 1"),
    ((2, 3), 1, "tiny NC"),
    ((300, 37), 1, "NC, odd C"),
    ((2, 3, 5, 7, 4), 1, "NCDHW"),
    ((5, 6, 7, 11), -1, "channels-last NHWC"),
    ((4, 5, 6, 7), 2, "a middle axis"),
    ((6, 4, 10), 0, "channel first axis (outer = 1)"),
    ((3, 4, 2), 1, "inner = 2"),
    ((8, 64, 40, 40), 1, "large NCHW, parallel, fused per channel"),
    ((2, 3, 300, 300), 1, "large channels, not fused"),
    ((4, 1, 200, 200), 1, "C=1 large: (channel, segment) partials"),
    ((2, 3, 70000), 1, "runs longer than a block: pieces"),
    ((20000, 48), 1, "tall NC: row segments"),
    ((64, 3000), 1, "wide NC: column chunks"),
    ((16, 12, 12, 40), -1, "large channels-last"),
]
IDS = [f"{s}-ax{a}" for s, a, _ in CASES]


def _f64(*arrays):
    return [None if a is None else np.asarray(a, dtype=np.float64) for a in arrays]


@pytest.mark.parametrize("shape,axis,why", CASES, ids=IDS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("threads", THREADS)
def test_forward(rng, shape, axis, why, dtype, threads):
    x, _, w, b = make_case(rng, shape, axis, dtype)
    C = shape[axis]
    rm, rv = rng.standard_normal(C), rng.uniform(0.5, 2, C)
    rm_ref, rv_ref = rm.copy(), rv.copy()
    y, mean, invstd = cbn.batch_norm_forward(x, w, b, eps=1e-3, running_mean=rm, running_var=rv,
                                             momentum=0.3, axis=axis, num_threads=threads)
    x64, = _f64(x)
    y_ref, mean_ref, invstd_ref = ref.batch_norm_forward(
        x64, w, b, eps=1e-3, running_mean=rm_ref, running_var=rv_ref, momentum=0.3, axis=axis)
    assert y.dtype == dtype and y.shape == x.shape
    assert mean.dtype == np.float64 and mean.shape == (C,) and invstd.shape == (C,)
    red = tuple(i for i in range(x.ndim) if i != axis % x.ndim)
    assert_sum_close(mean, mean_ref, np.abs(x64).mean(axis=red))
    np.testing.assert_allclose(invstd, invstd_ref, rtol=1e-12)
    magnitude = np.abs(y_ref - (0 if b is None else b.reshape(
        [C if i == axis % x.ndim else 1 for i in range(x.ndim)]))) + np.abs(b).max()
    assert_elementwise_close(y, y_ref, dtype, magnitude,
                             stats_error=stats_error(x, axis % x.ndim, w * invstd_ref))
    np.testing.assert_allclose(rm, rm_ref, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(rv, rv_ref, rtol=1e-12)


@pytest.mark.parametrize("shape,axis,why", CASES, ids=IDS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("threads", THREADS)
def test_backward(rng, shape, axis, why, dtype, threads):
    x, dy, w, _ = make_case(rng, shape, axis, dtype)
    x64, dy64 = _f64(x, dy)
    _, mean, invstd = ref.batch_norm_forward(x64, axis=axis)
    dx, dw, db = cbn.batch_norm_backward(dy, x, mean, invstd, w, axis=axis, num_threads=threads)
    dx_ref, dw_ref, db_ref = ref.batch_norm_backward(dy64, x64, mean, invstd, w, axis=axis)
    assert dx.dtype == dtype and dw.dtype == np.float64 and db.dtype == np.float64
    ax = axis % x.ndim
    red = tuple(i for i in range(x.ndim) if i != ax)
    bshape = [shape[ax] if i == ax else 1 for i in range(x.ndim)]
    xhat = (x64 - mean.reshape(bshape)) * invstd.reshape(bshape)
    assert_sum_close(db, db_ref, np.abs(dy64).sum(axis=red))
    assert_sum_close(dw, dw_ref, np.abs(dy64 * xhat).sum(axis=red))
    k = np.abs(w * invstd).reshape(bshape)
    assert_elementwise_close(dx, dx_ref, dtype, k * (np.abs(dy64) + np.abs(dy64).max() + np.abs(xhat)
                                                     * np.abs(dy64 * xhat).mean(axis=red, keepdims=True)),
                             stats_error=stats_error(dy64, ax, w * invstd))


@pytest.mark.parametrize("shape,axis,why", CASES, ids=IDS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("threads", THREADS)
def test_inference(rng, shape, axis, why, dtype, threads):
    x, _, w, b = make_case(rng, shape, axis, dtype)
    C = shape[axis]
    rm, rv = rng.standard_normal(C), rng.uniform(0.2, 3, C)
    y = cbn.batch_norm_inference(x, rm, rv, w, b, eps=1e-4, axis=axis, num_threads=threads)
    x64, = _f64(x)
    y_ref = ref.batch_norm_inference(x64, rm, rv, w, b, eps=1e-4, axis=axis)
    ax = axis % x.ndim
    bshape = [C if i == ax else 1 for i in range(x.ndim)]
    scale = np.abs(w / np.sqrt(rv + 1e-4)).reshape(bshape)
    assert y.dtype == dtype
    assert_elementwise_close(y, y_ref, dtype, np.abs(x64 - rm.reshape(bshape)) * scale + np.abs(b).max())


@pytest.mark.parametrize("shape,axis,why", CASES[:11], ids=IDS[:11])
@pytest.mark.parametrize("dtype", DTYPES)
def test_batch_norm_functional(rng, shape, axis, why, dtype):
    """cbn.batch_norm dispatches like torch: training uses batch stats and updates the running
    stats; eval uses the running stats."""
    x, _, w, b = make_case(rng, shape, axis, dtype)
    C = shape[axis]
    rm, rv = np.zeros(C, dtype), np.ones(C, dtype)
    rm_ref, rv_ref = np.zeros(C), np.ones(C)
    y = cbn.batch_norm(x, rm, rv, w, b, training=True, momentum=0.2, eps=1e-5, axis=axis)
    y_ref = ref.batch_norm(x.astype(np.float64), rm_ref, rv_ref, w, b, training=True,
                           momentum=0.2, eps=1e-5, axis=axis)
    assert_elementwise_close(y, y_ref, dtype, np.abs(y_ref) + np.abs(b).max())
    assert rm.dtype == dtype and rv.dtype == dtype  # updated in their own dtype
    np.testing.assert_allclose(rm, rm_ref, rtol=4 * np.finfo(dtype).eps, atol=4 * np.finfo(dtype).eps)
    np.testing.assert_allclose(rv, rv_ref, rtol=4 * np.finfo(dtype).eps)
    y = cbn.batch_norm(x, rm, rv, w, b, training=False, eps=1e-5, axis=axis)
    y_ref = ref.batch_norm(x.astype(np.float64), rm.astype(np.float64), rv.astype(np.float64), w, b,
                           training=False, eps=1e-5, axis=axis)
    assert_elementwise_close(y, y_ref, dtype, np.abs(y_ref) + np.abs(b).max() + np.abs(x).max() * 4)


@pytest.mark.parametrize("dtype", DTYPES)
def test_no_affine_means_identity_parameters(rng, dtype):
    x, dy, w, b = make_case(rng, (4, 6, 10), 1, dtype)
    ones, zeros = np.ones(6, dtype), np.zeros(6, dtype)
    r1 = cbn.batch_norm_forward(x)
    r2 = cbn.batch_norm_forward(x, ones, zeros)
    for a, b_ in zip(r1, r2):
        np.testing.assert_array_equal(a, b_)
    g1 = cbn.batch_norm_backward(dy, x, r1.mean, r1.invstd)
    g2 = cbn.batch_norm_backward(dy, x, r1.mean, r1.invstd, ones)
    for a, b_ in zip(g1, g2):
        np.testing.assert_array_equal(a, b_)
    y1 = cbn.batch_norm_inference(x, zeros + 1, ones * 2)
    y2 = cbn.batch_norm_inference(x, zeros + 1, ones * 2, ones, zeros)
    np.testing.assert_array_equal(y1, y2)


@pytest.mark.parametrize("needs", [(True, False, False), (False, True, False), (False, False, True),
                                   (False, True, True), (True, True, True), (False, False, False)])
@pytest.mark.parametrize("shape,axis", [((4, 6, 50), 1), ((200, 6), 1),
                                        ((150, 64), 1), ((2, 75, 64), -1)])  # 64: row streams
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_backward_needs(rng, needs, shape, axis, dtype):
    """Any subset of the gradients is bit-identical to the same gradients of a full call (dbias
    sums dy in the same order with or without the dot product)."""
    x, dy, w, _ = make_case(rng, shape, axis, dtype)
    _, mean, invstd = cbn.batch_norm_forward(x, axis=axis)
    full = cbn.batch_norm_backward(dy, x, mean, invstd, w, axis=axis)
    part = cbn.batch_norm_backward(dy, x, mean, invstd, w, axis=axis, needs=needs)
    for want, f, p in zip(needs, full, part):
        if want:
            np.testing.assert_array_equal(f, p)
        else:
            assert p is None
