"""Fused ReLU: forward/inference apply max(., 0) in the same pass; backward applies the mask
y > 0 inside its passes.  Compared with the reference, with BN followed by a separate ReLU, and
with finite differences of the composed function."""

import numpy as np
import pytest

import cbn
from cbn import reference as ref

from helpers import make_case

CASES = [((4, 6, 50), 1), ((300, 37), 1), ((5, 6, 7, 11), -1), ((8, 64, 40, 40), 1),
         ((2, 3, 70000), 1), ((4, 1, 200, 200), 1), ((16, 12, 12, 40), -1), ((64, 3000), 1)]


@pytest.mark.parametrize("shape,axis", CASES)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("threads", [1, 2])
def test_fused_relu_equals_bn_then_relu(rng, shape, axis, dtype, threads):
    x, dy, w, b = make_case(rng, shape, axis, dtype)
    C = shape[axis]
    plain = cbn.batch_norm_forward(x, w, b, axis=axis, num_threads=threads)
    fused = cbn.batch_norm_forward(x, w, b, axis=axis, num_threads=threads, activation="relu")
    # same kernel arithmetic, then max(., 0): bit-identical
    np.testing.assert_array_equal(fused.out, np.where(plain.out < 0, 0, plain.out))
    np.testing.assert_array_equal(fused.mean, plain.mean)
    rm, rv = rng.standard_normal(C), rng.uniform(0.5, 2, C)
    yi = cbn.batch_norm_inference(x, rm, rv, w, b, axis=axis, num_threads=threads)
    yr = cbn.batch_norm_inference(x, rm, rv, w, b, axis=axis, num_threads=threads,
                                  activation="relu")
    np.testing.assert_array_equal(yr, np.where(yi < 0, 0, yi))
    # backward with the mask inside equals backward of the masked gradient
    masked = np.where(fused.out > 0, dy, 0).astype(dtype)
    g_sep = cbn.batch_norm_backward(masked, x, fused.mean, fused.invstd, w, axis=axis,
                                    num_threads=threads)
    g_fused = cbn.batch_norm_backward(dy, x, fused.mean, fused.invstd, w, axis=axis,
                                      num_threads=threads, activation="relu", y=fused.out)
    for a, b_ in zip(g_fused, g_sep):
        np.testing.assert_array_equal(a, b_)
    # and the reference agrees (float64)
    r = ref.batch_norm_backward(dy.astype(np.float64), x.astype(np.float64), fused.mean,
                                fused.invstd, w, axis=axis, activation="relu",
                                y=fused.out.astype(np.float64))
    tol = 2e-4 if dtype == np.float32 else 1e-10
    np.testing.assert_allclose(g_fused.dx, r.dx, atol=tol * np.abs(r.dx).max())
    np.testing.assert_allclose(g_fused.dweight, r.dweight, rtol=1e-6, atol=tol * np.abs(dy).sum() / C)


@pytest.mark.parametrize("needs", [(False, False, True), (False, True, False), (True, False, False)])
def test_fused_relu_needs_is_consistent(rng, needs):
    x, dy, w, b = make_case(rng, (6, 5, 30), 1, np.float64)
    f = cbn.batch_norm_forward(x, w, b, activation="relu")
    full = cbn.batch_norm_backward(dy, x, f.mean, f.invstd, w, activation="relu", y=f.out)
    part = cbn.batch_norm_backward(dy, x, f.mean, f.invstd, w, activation="relu", y=f.out,
                                   needs=needs)
    for want, a, b_ in zip(needs, full, part):
        if want:
            np.testing.assert_array_equal(a, b_)
        else:
            assert b_ is None


def test_fused_relu_gradient_matches_finite_differences(rng):
    x, g, w, b = make_case(rng, (3, 4, 5), 1, np.float64)
    def loss():
        return float(np.sum(g * cbn.batch_norm_forward(x, w, b, eps=1e-3, activation="relu").out))
    f = cbn.batch_norm_forward(x, w, b, eps=1e-3, activation="relu")
    dx, dw, db = cbn.batch_norm_backward(g, x, f.mean, f.invstd, w, activation="relu", y=f.out)
    h = 1e-6
    fd = np.empty(x.size)
    for i in range(x.size):
        saved = x.flat[i]
        x.flat[i] = saved + h
        up = loss()
        x.flat[i] = saved - h
        down = loss()
        x.flat[i] = saved
        fd[i] = (up - down) / (2 * h)
    # the ReLU kink: skip elements whose output is within h-scale of 0
    ok = np.abs(f.out.ravel()) > 1e-4
    np.testing.assert_allclose(dx.ravel()[ok], fd[ok], rtol=1e-5, atol=1e-6)


def test_fused_relu_functional_and_nan(rng):
    x, _, w, b = make_case(rng, (6, 4, 10), 1, np.float32)
    x[0, 1, 0] = np.nan
    rm, rv = np.zeros(4, np.float32), np.ones(4, np.float32)
    y = cbn.batch_norm(x, rm, rv, w, b, training=False, activation="relu")
    assert np.isnan(y[0, 1, 0])  # NaN propagates through the fused ReLU
    assert (np.nan_to_num(y) >= 0).all()
    y = cbn.batch_norm(x, rm.copy(), rv.copy(), w, b, training=True, activation="relu")
    assert np.isnan(y[:, 1]).all() and (y[:, [0, 2, 3]] >= 0).all()


def test_fused_relu_general_path_in_place_and_layouts(rng):
    x, dy, w, b = make_case(rng, (4, 6, 5, 7), 1, np.float64)
    f = cbn.batch_norm_forward(x, w, b, activation="relu")
    xf = np.asfortranarray(x)
    f2 = cbn.batch_norm_forward(xf, w, b, activation="relu")
    np.testing.assert_allclose(f2.out, f.out, rtol=1e-12, atol=1e-12)
    xc = x.copy()
    cbn.batch_norm_forward(xc, w, b, activation="relu", out=xc)
    np.testing.assert_array_equal(xc, f.out)
    g = cbn.batch_norm_backward(dy, x, f.mean, f.invstd, w, activation="relu", y=f.out)
    d = dy.copy()
    cbn.batch_norm_backward(d, x, f.mean, f.invstd, w, activation="relu", y=f.out, out=d)
    np.testing.assert_array_equal(d, g.dx)
    gf = cbn.batch_norm_backward(np.asfortranarray(dy), xf, f.mean, f.invstd, w,
                                 activation="relu", y=np.asfortranarray(f.out))
    np.testing.assert_allclose(gf.dx, g.dx, rtol=1e-12, atol=1e-12)


def test_activation_errors():
    x = np.ones((4, 3, 5))
    x[0] = 0
    f = cbn.batch_norm_forward(x)
    with pytest.raises(ValueError, match="activation must be None or 'relu'"):
        cbn.batch_norm_forward(x, activation="swish")
    with pytest.raises(ValueError, match="activation must be None or 'relu'"):
        cbn.batch_norm_inference(x, np.zeros(3), np.ones(3), activation="tanh")
    with pytest.raises(ValueError, match="y .* is required"):
        cbn.batch_norm_backward(x, x, f.mean, f.invstd, activation="relu")
    with pytest.raises(ValueError, match="y must have the shape of x"):
        cbn.batch_norm_backward(x, x, f.mean, f.invstd, activation="relu", y=x[:2])
    with pytest.raises(TypeError, match="y must have the dtype of x"):
        cbn.batch_norm_backward(x, x, f.mean, f.invstd, activation="relu", y=x.astype(np.float32))
    with pytest.raises(ValueError, match="y is only used"):
        cbn.batch_norm_backward(x, x, f.mean, f.invstd, y=x)


@pytest.mark.parametrize("axis", [1, -1])
def test_layer_with_fused_relu(rng, axis):
    shape = (6, 5, 7, 3) if axis == 1 else (6, 7, 3, 5)
    x, dy, _, _ = make_case(rng, shape, axis, np.float64)
    bn = cbn.BatchNorm(5, axis=axis, dtype=np.float64, activation="relu")
    plain = cbn.BatchNorm(5, axis=axis, dtype=np.float64)
    y = bn(x)
    yp = plain(x)
    np.testing.assert_array_equal(y, np.where(yp < 0, 0, yp))
    dx = bn.backward(dy)
    dxp = plain.backward(np.where(yp > 0, dy, 0))
    np.testing.assert_array_equal(dx, dxp)
    np.testing.assert_array_equal(bn.grad_weight, plain.grad_weight)
    np.testing.assert_array_equal(bn.running_mean, plain.running_mean)
    assert "activation='relu'" in repr(bn)
    bn.eval()
    plain.eval()
    y = bn(x)
    yp = plain(x)
    np.testing.assert_array_equal(y, np.where(yp < 0, 0, yp))
    np.testing.assert_array_equal(bn.backward(dy), plain.backward(np.where(yp > 0, dy, 0)))
    frozen = bn.freeze()
    np.testing.assert_array_equal(frozen(x), y)
    np.testing.assert_array_equal(frozen.backward(dy, y=y), plain.backward(np.where(yp > 0, dy, 0)))
    with pytest.raises(ValueError, match="y .* is required"):
        frozen.backward(dy)
    with pytest.raises(ValueError, match="activation"):
        cbn.BatchNorm(5, activation="swish")
