"""Backward against central finite differences of the forward pass, in float64."""

import numpy as np
import pytest

import cbn

from helpers import make_case

CASES = [((3, 4, 5), 1), ((6, 3), 1), ((2, 3, 4, 2), -1), ((2, 3, 4, 2), 2), ((1, 2, 7), 1)]


def _loss(x, w, b, g, axis):
    """L = sum(g * batch_norm_forward(x, w, b)); its gradient wrt the output is g."""
    y = cbn.batch_norm_forward(x, w, b, eps=1e-3, axis=axis).out
    return float(np.sum(g * y))


@pytest.mark.parametrize("shape,axis", CASES)
@pytest.mark.parametrize("threads", [1, 2])
def test_backward_matches_finite_differences(rng, shape, axis, threads):
    x, g, w, b = make_case(rng, shape, axis, np.float64)
    _, mean, invstd = cbn.batch_norm_forward(x, w, b, eps=1e-3, axis=axis)
    dx, dw, db = cbn.batch_norm_backward(g, x, mean, invstd, w, axis=axis, num_threads=threads)
    h = 1e-6

    def central(f, arr, i):
        saved = arr.flat[i]
        arr.flat[i] = saved + h
        up = f()
        arr.flat[i] = saved - h
        down = f()
        arr.flat[i] = saved
        return (up - down) / (2 * h)

    fd_x = np.array([central(lambda: _loss(x, w, b, g, axis), x, i) for i in range(x.size)])
    fd_w = np.array([central(lambda: _loss(x, w, b, g, axis), w, i) for i in range(w.size)])
    fd_b = np.array([central(lambda: _loss(x, w, b, g, axis), b, i) for i in range(b.size)])
    # central differences: truncation O(h^2 f''') and rounding O(eps |L| / h) ~ 1e-9 here
    np.testing.assert_allclose(dx.ravel(), fd_x, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(dw, fd_w, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(db, fd_b, rtol=1e-6, atol=1e-7)


def test_backward_without_weight_is_the_weight_one_gradient(rng):
    x, g, _, _ = make_case(rng, (4, 3, 5), 1, np.float64, affine=False)
    _, mean, invstd = cbn.batch_norm_forward(x, eps=1e-3)
    dx, dw, db = cbn.batch_norm_backward(g, x, mean, invstd)
    h = 1e-6
    fd = np.empty(x.size)
    for i in range(x.size):
        saved = x.flat[i]
        x.flat[i] = saved + h
        up = float(np.sum(g * cbn.batch_norm_forward(x, eps=1e-3).out))
        x.flat[i] = saved - h
        down = float(np.sum(g * cbn.batch_norm_forward(x, eps=1e-3).out))
        x.flat[i] = saved
        fd[i] = (up - down) / (2 * h)
    np.testing.assert_allclose(dx.ravel(), fd, rtol=1e-6, atol=1e-7)
