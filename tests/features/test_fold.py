"""Deployment folding: fold, fold_into_conv / fold_into_linear, FrozenBatchNorm."""

import numpy as np
import pytest

import cbn
from cbn import reference as ref


def _bn_params(C, rng, dtype=np.float32, offset=0.0):
    rm = (offset + rng.standard_normal(C)).astype(dtype)
    rv = rng.uniform(0.2, 3.0, C).astype(dtype)
    w = rng.uniform(0.5, 2.0, C).astype(dtype)
    b = rng.standard_normal(C).astype(dtype)
    return rm, rv, w, b


def _bn_eval64(y, rm, rv, w, b, eps):
    """Reference eval batch norm in float64 over axis 1."""
    return ref.batch_norm_inference(np.asarray(y, np.float64), np.float64(rm), np.float64(rv),
                                    None if w is None else np.float64(w),
                                    None if b is None else np.float64(b), eps=eps)


# ----------------------------------------------------------------------------- NumPy convolutions

def conv2d(x, W, b=None, groups=1, padding=0):
    """Direct grouped 2-D convolution (cross-correlation, stride 1) with einsum over patches."""
    N, Cin, H, Wd = x.shape
    Cout, cin_g, kh, kw = W.shape
    assert Cin == cin_g * groups
    xp = np.pad(x, ((0, 0), (0, 0), (padding, padding), (padding, padding)))
    Ho, Wo = H + 2 * padding - kh + 1, Wd + 2 * padding - kw + 1
    Wg = W.reshape(groups, Cout // groups, cin_g, kh, kw)
    y = np.zeros((N, groups, Cout // groups, Ho, Wo), np.result_type(x, W))
    for i in range(kh):
        for j in range(kw):
            patch = xp[:, :, i:i + Ho, j:j + Wo].reshape(N, groups, cin_g, Ho, Wo)
            y += np.einsum("ngchw,goc->ngohw", patch, Wg[..., i, j])
    y = y.reshape(N, Cout, Ho, Wo)
    if b is not None:
        y = y + np.asarray(b).reshape(1, -1, 1, 1)
    return y


def conv_transpose2d(x, W, b=None, groups=1):
    """Direct grouped transposed 2-D convolution (stride 1, no padding)."""
    N, Cin, H, Wd = x.shape
    cin, cout_g, kh, kw = W.shape
    assert cin == Cin
    cin_g = Cin // groups
    Cout = cout_g * groups
    xg = x.reshape(N, groups, cin_g, H, Wd)
    Wg = W.reshape(groups, cin_g, cout_g, kh, kw)
    y = np.zeros((N, groups, cout_g, H + kh - 1, Wd + kw - 1), np.result_type(x, W))
    for i in range(kh):
        for j in range(kw):
            y[..., i:i + H, j:j + Wd] += np.einsum("ngchw,gco->ngohw", xg, Wg[..., i, j])
    y = y.reshape(N, Cout, H + kh - 1, Wd + kw - 1)
    if b is not None:
        y = y + np.asarray(b).reshape(1, -1, 1, 1)
    return y


def test_numpy_convolutions_match_torch():
    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 6, 5, 5))
    W = rng.standard_normal((9, 2, 3, 3))
    b = rng.standard_normal(9)
    t = F.conv2d(torch.from_numpy(x), torch.from_numpy(W), torch.from_numpy(b), padding=1,
                 groups=3)
    np.testing.assert_allclose(conv2d(x, W, b, groups=3, padding=1), t.numpy(), rtol=1e-12,
                               atol=1e-12)
    Wt = rng.standard_normal((6, 4, 3, 2))
    bt = rng.standard_normal(8)
    t = F.conv_transpose2d(torch.from_numpy(x), torch.from_numpy(Wt), torch.from_numpy(bt),
                           groups=2)
    np.testing.assert_allclose(conv_transpose2d(x, Wt, bt, groups=2), t.numpy(), rtol=1e-12,
                               atol=1e-12)


# ----------------------------------------------------------------------------- fold


def test_fold_formula_and_inference():
    rng = np.random.default_rng(1)
    rm, rv, w, b = _bn_params(5, rng)
    scale, shift = cbn.fold(rm, rv, w, b, eps=1e-3)
    assert scale.dtype == np.float64 and shift.dtype == np.float64
    want_scale = np.float64(w) / np.sqrt(np.float64(rv) + 1e-3)
    np.testing.assert_allclose(scale, want_scale, rtol=1e-15)
    np.testing.assert_allclose(shift, np.float64(b) - np.float64(rm) * want_scale, rtol=1e-14)
    x = rng.standard_normal((4, 5, 3))
    np.testing.assert_allclose(x * scale[:, None] + shift[:, None],
                               cbn.batch_norm_inference(x, rm, rv, w, b, eps=1e-3),
                               rtol=1e-12, atol=1e-12)
    s1, t1 = cbn.fold(rm, rv)
    np.testing.assert_allclose(s1, 1 / np.sqrt(np.float64(rv) + 1e-5), rtol=1e-15)
    np.testing.assert_allclose(t1, -np.float64(rm) * s1, rtol=1e-15)


def test_fold_errors():
    with pytest.raises(ValueError, match="running_var must be >= 0"):
        cbn.fold(np.zeros(2), np.array([1.0, -1.0]))
    with pytest.raises(ValueError, match="running_var"):
        cbn.fold(np.zeros(2), np.ones(3))
    with pytest.raises(ValueError, match="weight"):
        cbn.fold(np.zeros(2), np.ones(2), np.ones(3))
    with pytest.raises(ValueError, match="eps"):
        cbn.fold(np.zeros(2), np.ones(2), eps=-1)
    with pytest.raises(TypeError, match="running_mean"):
        cbn.fold(np.zeros(2, complex), np.ones(2))


# ------------------------------------------------------------------- conv / linear vs NumPy


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("with_bias", [True, False])
def test_fold_into_conv_1x1_einsum(dtype, with_bias):
    rng = np.random.default_rng(2)
    Cin, Cout = 4, 6
    W = rng.standard_normal((Cout, Cin, 1, 1)).astype(dtype)
    b = rng.standard_normal(Cout).astype(dtype) if with_bias else None
    rm, rv, w, bb = _bn_params(Cout, rng, dtype)
    Wf, bf = cbn.fold_into_conv(W, b, rm, rv, w, bb, eps=1e-5)
    assert Wf.dtype == dtype and bf.dtype == dtype and Wf.shape == W.shape
    x = rng.standard_normal((3, Cin, 5, 5))
    conv = np.einsum("oc,nchw->nohw", np.float64(W[:, :, 0, 0]), x)
    if b is not None:
        conv += np.float64(b)[:, None, None]
    want = _bn_eval64(conv, rm, rv, w, bb, 1e-5)
    got = np.einsum("oc,nchw->nohw", np.float64(Wf[:, :, 0, 0]), x) + np.float64(bf)[:, None,
                                                                                    None]
    tol = 1e-5 if dtype == np.float32 else 1e-12
    np.testing.assert_allclose(got, want, rtol=tol, atol=tol)


@pytest.mark.parametrize("groups", [1, 2, 4])
def test_fold_into_conv_3x3_direct(groups):
    rng = np.random.default_rng(3)
    Cin, Cout = 4, 8
    W = rng.standard_normal((Cout, Cin // groups, 3, 3))
    b = rng.standard_normal(Cout)
    rm, rv, w, bb = _bn_params(Cout, rng, np.float64, offset=2.0)
    x = rng.standard_normal((2, Cin, 6, 5))
    want = _bn_eval64(conv2d(x, W, b, groups, padding=1), rm, rv, w, bb, 1e-5)
    Wf, bf = cbn.fold_into_conv(W, b, rm, rv, w, bb)
    np.testing.assert_allclose(conv2d(x, Wf, bf, groups, padding=1), want, rtol=1e-12,
                               atol=1e-12)


@pytest.mark.parametrize("groups", [1, 2, 3])
def test_fold_into_conv_transposed_direct(groups):
    rng = np.random.default_rng(4)
    Cin, cout_g = 6, 2
    Cout = cout_g * groups
    W = rng.standard_normal((Cin, cout_g, 3, 2))
    rm, rv, w, bb = _bn_params(Cout, rng, np.float64)
    x = rng.standard_normal((2, Cin, 4, 4))
    for b in (None, rng.standard_normal(Cout)):
        want = _bn_eval64(conv_transpose2d(x, W, b, groups), rm, rv, w, bb, 1e-5)
        Wf, bf = cbn.fold_into_conv(W, b, rm, rv, w, bb, transposed=True)
        np.testing.assert_allclose(conv_transpose2d(x, Wf, bf, groups), want, rtol=1e-12,
                                   atol=1e-12)


def test_fold_into_conv_1d_and_3d_kernels():
    rng = np.random.default_rng(5)
    for kshape in [(3,), (1, 2, 2)]:
        W = rng.standard_normal((5, 3) + kshape).astype(np.float32)
        rm, rv, w, bb = _bn_params(5, rng)
        Wf, bf = cbn.fold_into_conv(W, None, rm, rv, w, bb)
        s = (np.float64(w) / np.sqrt(np.float64(rv) + 1e-5)).reshape((5,) + (1,) * (W.ndim - 1))
        np.testing.assert_allclose(Wf, W * s, rtol=1e-6)
        np.testing.assert_allclose(bf, (-np.float64(rm)) * s.ravel() + bb, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("with_bias", [True, False])
def test_fold_into_linear_numpy(with_bias):
    rng = np.random.default_rng(6)
    W = rng.standard_normal((7, 4))
    b = rng.standard_normal(7) if with_bias else None
    rm, rv, w, bb = _bn_params(7, rng, np.float64)
    x = rng.standard_normal((10, 4))
    lin = x @ W.T + (0 if b is None else b)
    want = _bn_eval64(lin, rm, rv, w, bb, 1e-5)
    Wf, bf = cbn.fold_into_linear(W, b, rm, rv, w, bb)
    np.testing.assert_allclose(x @ Wf.T + bf, want, rtol=1e-12, atol=1e-12)
    # bn without affine parameters
    Wf, bf = cbn.fold_into_linear(W, b, rm, rv, None, None)
    np.testing.assert_allclose(x @ Wf.T + bf, _bn_eval64(lin, rm, rv, None, None, 1e-5),
                               rtol=1e-12, atol=1e-12)


def test_fold_into_errors():
    rm, rv = np.zeros(4), np.ones(4)
    with pytest.raises(ValueError, match="W.shape\\[0\\]"):
        cbn.fold_into_conv(np.ones((3, 2, 3, 3)), None, rm, rv, None, None)
    with pytest.raises(ValueError, match="transposed"):
        cbn.fold_into_conv(np.ones((3, 3, 3, 3)), None, rm, rv, None, None, transposed=True)
    with pytest.raises(ValueError, match="b must have shape"):
        cbn.fold_into_conv(np.ones((4, 2, 3, 3)), np.ones(3), rm, rv, None, None)
    with pytest.raises(TypeError, match="W must be a floating-point"):
        cbn.fold_into_conv(np.ones((4, 2, 3, 3), int), None, rm, rv, None, None)
    with pytest.raises(ValueError, match="shape \\(out, in\\)"):
        cbn.fold_into_linear(np.ones((4, 2, 1)), None, rm, rv, None, None)


# ------------------------------------------------------------------- vs torch.nn.utils.fusion


@pytest.mark.parametrize("groups", [1, 2])
@pytest.mark.parametrize("with_bias", [True, False])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_fold_into_conv_vs_torch(groups, with_bias, dtype):
    torch = pytest.importorskip("torch")
    from torch.nn.utils.fusion import fuse_conv_bn_eval, fuse_conv_bn_weights

    rng = np.random.default_rng(7)
    W = rng.standard_normal((6, 4 // groups, 3, 3)).astype(dtype)
    b = rng.standard_normal(6).astype(dtype) if with_bias else None
    rm, rv, w, bb = _bn_params(6, rng, dtype, offset=1.0)
    T = torch.from_numpy
    tw, tb = fuse_conv_bn_weights(T(W), None if b is None else T(b), T(rm), T(rv), 1e-5, T(w),
                                  T(bb))
    Wf, bf = cbn.fold_into_conv(W, b, rm, rv, w, bb, 1e-5)
    tol = dict(rtol=1e-6, atol=1e-6) if dtype == np.float32 else dict(rtol=1e-14, atol=1e-14)
    np.testing.assert_allclose(Wf, tw.detach().numpy(), **tol)
    np.testing.assert_allclose(bf, tb.detach().numpy(), **tol)
    # and a real module pair
    tdt = torch.float32 if dtype == np.float32 else torch.float64
    conv = torch.nn.Conv2d(4, 6, 3, padding=1, groups=groups, bias=with_bias).to(tdt)
    bn = torch.nn.BatchNorm2d(6).to(tdt).eval()
    with torch.no_grad():
        conv.weight.copy_(T(W))
        if with_bias:
            conv.bias.copy_(T(b))
        bn.running_mean.copy_(T(rm))
        bn.running_var.copy_(T(rv))
        bn.weight.copy_(T(w))
        bn.bias.copy_(T(bb))
        fused = fuse_conv_bn_eval(conv.eval(), bn)
        x = torch.from_numpy(rng.standard_normal((2, 4, 5, 5)).astype(dtype))
        want = bn(conv(x)).numpy()
    got = conv2d(x.numpy().astype(np.float64), np.float64(Wf), np.float64(bf), groups,
                 padding=1)
    np.testing.assert_allclose(got, want, rtol=1e-4 if dtype == np.float32 else 1e-12,
                               atol=1e-4 if dtype == np.float32 else 1e-12)
    np.testing.assert_allclose(Wf, fused.weight.detach().numpy(), **tol)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_fold_into_conv_transposed_vs_torch(dtype):
    torch = pytest.importorskip("torch")
    from torch.nn.utils.fusion import fuse_conv_bn_weights

    rng = np.random.default_rng(8)
    W = rng.standard_normal((4, 6, 3, 3)).astype(dtype)  # (in, out, k, k), groups=1
    b = rng.standard_normal(6).astype(dtype)
    rm, rv, w, bb = _bn_params(6, rng, dtype)
    T = torch.from_numpy
    tw, tb = fuse_conv_bn_weights(T(W), T(b), T(rm), T(rv), 1e-5, T(w), T(bb), transpose=True)
    Wf, bf = cbn.fold_into_conv(W, b, rm, rv, w, bb, transposed=True)
    tol = dict(rtol=1e-6, atol=1e-6) if dtype == np.float32 else dict(rtol=1e-14, atol=1e-14)
    np.testing.assert_allclose(Wf, tw.detach().numpy(), **tol)
    np.testing.assert_allclose(bf, tb.detach().numpy(), **tol)


def test_fold_into_conv_transposed_grouped_vs_torch_modules():
    # fuse_conv_bn_weights(transpose=True) cannot handle groups > 1; compare to the modules
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(9)
    groups, Cin, Cout = 2, 4, 6
    conv = torch.nn.ConvTranspose2d(Cin, Cout, 3, groups=groups).double()
    bn = torch.nn.BatchNorm2d(Cout).double().eval()
    rm, rv, w, bb = _bn_params(Cout, rng, np.float64)
    T = torch.from_numpy
    with torch.no_grad():
        bn.running_mean.copy_(T(rm))
        bn.running_var.copy_(T(rv))
        bn.weight.copy_(T(w))
        bn.bias.copy_(T(bb))
        x = torch.from_numpy(rng.standard_normal((2, Cin, 4, 4)))
        want = bn(conv(x)).numpy()
        Wf, bf = cbn.fold_into_conv(conv.weight.numpy(), conv.bias.numpy(), rm, rv, w, bb,
                                    transposed=True)
        got = torch.nn.functional.conv_transpose2d(x, T(Wf), T(bf), groups=groups).numpy()
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("with_bias", [True, False])
def test_fold_into_linear_vs_torch(with_bias):
    torch = pytest.importorskip("torch")
    from torch.nn.utils.fusion import fuse_linear_bn_weights

    rng = np.random.default_rng(10)
    W = rng.standard_normal((5, 3)).astype(np.float32)
    b = rng.standard_normal(5).astype(np.float32) if with_bias else None
    rm, rv, w, bb = _bn_params(5, rng)
    T = torch.from_numpy
    tw, tb = fuse_linear_bn_weights(T(W), None if b is None else T(b), T(rm), T(rv), 1e-5,
                                    T(w), T(bb))
    Wf, bf = cbn.fold_into_linear(W, b, rm, rv, w, bb)
    assert Wf.dtype == np.float32
    np.testing.assert_allclose(Wf, tw.detach().numpy(), rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(bf, tb.detach().numpy(), rtol=1e-6, atol=1e-6)


def test_layer_fold_conv_end_to_end():
    # conv + cbn.BatchNorm (trained a few steps) == folded conv
    rng = np.random.default_rng(12)
    W = rng.standard_normal((4, 3, 3, 3))
    b = rng.standard_normal(4)
    bn = cbn.BatchNorm(4, dtype=np.float64)
    bn.weight[...] = rng.uniform(0.5, 2, 4)
    bn.bias[...] = rng.standard_normal(4)
    for _ in range(3):
        bn(conv2d(rng.standard_normal((4, 3, 6, 6)) + 1, W, b, padding=1))
    bn.eval()
    x = rng.standard_normal((2, 3, 6, 6))
    want = bn(conv2d(x, W, b, padding=1))
    Wf, bf = cbn.fold_into_conv(W, b, bn.running_mean, bn.running_var, bn.weight, bn.bias,
                                bn.eps)
    np.testing.assert_allclose(conv2d(x, Wf, bf, padding=1), want, rtol=1e-12, atol=1e-12)


# ----------------------------------------------------------------------------- FrozenBatchNorm


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("axis", [1, -1])
def test_frozen_equals_inference(dtype, axis):
    rng = np.random.default_rng(13)
    C = 5
    rm, rv, w, b = _bn_params(C, rng, offset=1000.0)
    shape = (3, C, 4, 2) if axis == 1 else (3, 4, 2, C)
    x = (1000 + rng.standard_normal(shape)).astype(dtype)
    frozen = cbn.FrozenBatchNorm.from_stats(rm, rv, w, b, eps=1e-4, axis=axis)
    want = cbn.batch_norm_inference(x, rm, rv, w, b, eps=1e-4, axis=axis)
    np.testing.assert_array_equal(frozen(x), want)
    # layouts: Fortran order, strided, in place
    np.testing.assert_array_equal(frozen(np.asfortranarray(x)), want)
    xs = np.stack([x, x], axis=1)[:, 0]  # strided view of x
    assert not xs.flags.c_contiguous and not xs.flags.f_contiguous
    np.testing.assert_array_equal(frozen(xs), want)
    xc = x.copy()
    assert frozen(xc, out=xc) is xc
    np.testing.assert_array_equal(xc, want)
    out = np.empty_like(x)
    assert frozen(x, out=out) is out
    # empty batch
    assert frozen(x[:0]).shape == x[:0].shape
    # centred form keeps float32 precision with large offsets
    exact = _bn_eval64(np.moveaxis(x, axis, 1), rm, rv, w, b, 1e-4)
    np.testing.assert_allclose(np.moveaxis(frozen(x), axis, 1), exact,
                               rtol=1e-5 if dtype == np.float32 else 1e-12,
                               atol=1e-5 if dtype == np.float32 else 1e-12)


def test_frozen_from_scale_shift():
    rng = np.random.default_rng(14)
    rm, rv, w, b = _bn_params(3, rng)
    scale, shift = cbn.fold(rm, rv, w, b)
    frozen = cbn.FrozenBatchNorm(scale, shift)
    assert (frozen.centre == 0).all()
    np.testing.assert_array_equal(frozen.shift, shift)
    x = rng.standard_normal((4, 3, 2))
    np.testing.assert_allclose(frozen(x), x * scale[:, None] + shift[:, None], rtol=1e-14,
                               atol=1e-14)
    np.testing.assert_allclose(frozen(x), cbn.batch_norm_inference(x, rm, rv, w, b),
                               rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(frozen.backward(x), x * scale[:, None], rtol=1e-14)
    with pytest.raises(ValueError):
        frozen.scale[0] = 1.0  # read-only
    assert repr(frozen) == "FrozenBatchNorm(3)"
    assert repr(cbn.FrozenBatchNorm(scale, shift, axis=-1)) == "FrozenBatchNorm(3, axis=-1)"


def test_frozen_from_layer_and_freeze():
    bn = cbn.BatchNorm(3, axis=-1, dtype=np.float64)
    rng = np.random.default_rng(15)
    for _ in range(2):
        bn(rng.standard_normal((6, 4, 3)) * 3 + 2)
    frozen = bn.freeze()
    frozen2 = cbn.FrozenBatchNorm.from_layer(bn)
    assert frozen.axis == -1 and frozen.num_features == 3
    x = rng.standard_normal((2, 4, 3))
    bn.eval()
    np.testing.assert_array_equal(frozen(x), bn(x))
    np.testing.assert_array_equal(frozen2(x), bn(x))
    np.testing.assert_array_equal(frozen.centre, bn.running_mean)


def test_frozen_errors():
    frozen = cbn.FrozenBatchNorm(np.ones(3), np.zeros(3))
    with pytest.raises(ValueError, match="num_features=3"):
        frozen(np.zeros((2, 4), np.float32))
    with pytest.raises(TypeError):
        frozen(np.zeros((2, 3), np.int64))
    with pytest.raises(ValueError, match="shift"):
        cbn.FrozenBatchNorm(np.ones(3), np.zeros(2))
    with pytest.raises(ValueError, match="scale"):
        cbn.FrozenBatchNorm(np.ones((3, 1)), np.zeros(3))
    with pytest.raises(ValueError, match="finite"):
        cbn.FrozenBatchNorm(np.array([1.0, np.inf, 1.0]), np.zeros(3))
    with pytest.raises(ValueError, match="axis"):
        cbn.FrozenBatchNorm(np.ones(3), np.zeros(3), axis=3)(np.zeros((2, 3), np.float32))


def test_frozen_num_threads():
    frozen = cbn.FrozenBatchNorm(np.ones(3), np.zeros(3), num_threads=1)
    x = np.random.default_rng(16).standard_normal((64, 3, 100))
    y1 = frozen(x)
    frozen.num_threads = 2
    assert frozen.num_threads == 2
    np.testing.assert_array_equal(frozen(x), y1)
    with pytest.raises(ValueError, match="num_threads"):
        frozen.num_threads = 0
    assert frozen.num_threads == 2


@pytest.mark.parametrize("activation", [None, "relu"])
def test_frozen_call_fast_path_equals_the_python_route(activation):
    # the call's C fast path (canonical arrays) against the validated Python route (a
    # strided view of the same values), and the outs the fast path declines
    rng = np.random.default_rng(17)
    rm, rv, w, b = _bn_params(4, rng)
    frozen = cbn.FrozenBatchNorm.from_stats(rm, rv, w, b, activation=activation)
    x = rng.standard_normal((3, 4, 5)).astype(np.float32)
    strided = np.stack([x, x], axis=2)[:, :, 0]
    assert not strided.flags.c_contiguous
    np.testing.assert_array_equal(frozen(x), frozen(strided))
    ro = np.empty_like(x)
    ro.flags.writeable = False
    with pytest.raises(ValueError, match="out"):
        frozen(x, out=ro)
    with pytest.raises((TypeError, ValueError), match="out"):
        frozen(x, out=np.empty(x.shape, np.float64))
    buf = np.zeros(x.size + 1, np.float32)
    xs, outs = buf[1:].reshape(x.shape), buf[:-1].reshape(x.shape)
    xs[...] = x
    got = frozen(xs, out=outs)  # partial overlap: handled by the Python route, not garbled
    np.testing.assert_array_equal(got, frozen(x))
