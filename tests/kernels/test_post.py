"""Fused post-operations: ``y = act(bn(x) + residual)`` for every activation, with and without a
residual, forward, inference and backward (dx, dweight, dbias, dresidual), against the float64
reference (``cbn.reference.activation`` / ``activation_gradient``) and, when installed, torch's
functionals under float64 autograd; special values against torch; every layout class, dtype,
thread count, SIMD level and the streaming-store path; and the argument errors."""

import numpy as np
import pytest

import cbn
from cbn import _dispatch
from cbn import reference as ref

from helpers import make_case, stats_error

ACTS = [None, "relu", "relu6", "leaky_relu", "silu", "gelu", "gelu_tanh"]
SMOOTH = ("silu", "gelu", "gelu_tanh")
FROM_Y = ("relu", "relu6", "leaky_relu")
# channel-major runs (shares, pieces), channels-last rows (tiles, wide rows), 2D NC
CASES = [((4, 6, 50), 1), ((2, 3, 9000), 1), ((300, 37), 1), ((5, 6, 7, 11), -1),
         ((64, 3000), 1), ((40, 8, 8, 64), -1)]
EPS = {np.float32: 2.0 ** -23, np.float64: 2.0 ** -52}


def _slope(act):
    return 0.2 if act == "leaky_relu" else None


def _backward_kw(act, y, b, r):
    kw = {"residual": r, "negative_slope": _slope(act)}
    if act in FROM_Y:
        kw["y"] = y
    else:
        kw["bias"] = b
    return kw


def _close(actual, expected, dtype, magnitude, factor=64.0, extra=0.0):
    actual = np.asarray(actual, np.float64)
    tol = factor * EPS[dtype] * magnitude + extra
    err = np.abs(actual - expected)
    bad = ~(err <= tol) & ~(np.isnan(actual) & np.isnan(expected))
    assert not bad.any(), (f"{bad.sum()} of {bad.size} differ; worst "
                           f"{np.nanmax(err - tol)} at {np.argmax(np.where(bad, err, 0))}")


def _reference(x, dy, w, b, r, axis, act):
    f64 = np.float64
    x64, dy64 = x.astype(f64), dy.astype(f64)
    r64 = None if r is None else r.astype(f64)
    fwd = ref.batch_norm_forward(x64, w, b, axis=axis, activation=act, residual=r64,
                                 negative_slope=_slope(act))
    kw = _backward_kw(act, fwd.out, b, r64)
    bwd = ref.batch_norm_backward(dy64, x64, fwd.mean, fwd.invstd, w, axis=axis,
                                  activation=act, **kw)
    return fwd, bwd


@pytest.mark.parametrize("shape,axis", CASES)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("act", ACTS)
@pytest.mark.parametrize("with_residual", [True, False])
def test_fused_op_matches_the_reference(rng, shape, axis, dtype, act, with_residual):
    if act in (None, "relu") and not with_residual:
        pytest.skip("the in-register epilogue: tests/kernels/test_relu.py")
    x, dy, w, b = make_case(rng, shape, axis, dtype)
    r = rng.standard_normal(shape).astype(dtype) if with_residual else None
    fwd, bwd = _reference(x, dy, w, b, r, axis, act)
    gain = np.abs(w) * fwd.invstd
    serr = stats_error(x.astype(np.float64), axis, gain)
    z_mag = np.abs(fwd.out) + (0 if r is None else np.abs(r)) + 4.0
    y = None
    for nt in (1, 2):
        out = cbn.batch_norm_forward(x, w, b, axis=axis, num_threads=nt, activation=act,
                                     residual=r, negative_slope=_slope(act))
        _close(out.out, fwd.out, dtype, z_mag, extra=2 * serr)
        if y is None:
            y = out.out
        else:  # the thread count changes nothing
            np.testing.assert_array_equal(out.out, y)
        g = cbn.batch_norm_backward(dy, x, out.mean, out.invstd, w, axis=axis, num_threads=nt,
                                    activation=act, **_backward_kw(act, out.out, b, r))
        n = x.size // x.shape[axis]
        scale = np.abs(dy).max() * (1 + np.abs(r).max() if r is not None else 1) * 4
        if r is not None:
            assert type(g).__name__ == "FusedBackwardResult"
            _close(g.dresidual, bwd.dresidual, dtype, scale, extra=scale * 1e3 * serr)
        else:
            assert len(g) == 3
        dx_mag = np.abs(bwd.dx).max() + scale * gain.max() * 4
        _close(g.dx, bwd.dx, dtype, dx_mag, factor=256.0)
        sum_mag = np.abs(dy).sum() * 4 / x.shape[axis] * (1 + np.abs(fwd.out).max())
        _close(g.dbias, bwd.dbias, dtype, sum_mag, factor=256.0)
        _close(g.dweight, bwd.dweight, dtype, sum_mag * 4, factor=256.0)
        assert n > 0


@pytest.mark.parametrize("act", [a for a in ACTS if a is not None])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_inference_with_residual_matches_the_reference(rng, act, dtype):
    shape, axis = (6, 10, 33), 1
    x, _, w, b = make_case(rng, shape, axis, dtype)
    r = rng.standard_normal(shape) * 3  # float64 residual: cast to x's dtype
    rm, rv = rng.standard_normal(10), rng.uniform(0.5, 2, 10)
    got = cbn.batch_norm_inference(x, rm, rv, w, b, axis=axis, activation=act, residual=r,
                                   negative_slope=_slope(act))
    want = ref.batch_norm_inference(x.astype(np.float64), rm, rv, w, b, axis=axis,
                                    activation=act, residual=r.astype(dtype).astype(np.float64),
                                    negative_slope=_slope(act))
    _close(got, want, dtype, np.abs(want) + np.abs(r) + 4)
    # cbn.batch_norm passes everything through
    via = cbn.batch_norm(x, rm, rv, w, b, axis=axis, activation=act, residual=r,
                         negative_slope=_slope(act))
    np.testing.assert_array_equal(via, got)


@pytest.mark.parametrize("act", ACTS)
def test_out_may_be_the_residual(rng, act):
    x, _, w, b = make_case(rng, (4, 5, 60), 1, np.float32)
    r = rng.standard_normal(x.shape).astype(np.float32)
    want = cbn.batch_norm_forward(x, w, b, activation=act, residual=r).out
    got = cbn.batch_norm_forward(x, w, b, activation=act, residual=r, out=r).out
    assert got is r
    np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("act", ACTS)
@pytest.mark.parametrize("shape,axis", [((2, 4, 20000), 1), ((3000, 48), 1)])
def test_streamed_and_plain_stores_agree(rng, act, shape, axis):
    """The post stage's streaming-store loop rounds as its plain loop (forced both ways)."""
    x, dy, w, b = make_case(rng, shape, axis, np.float32)
    r = rng.standard_normal(shape).astype(np.float32)
    old = cbn._core.set_nontemporal_min_bytes(1 << 62)
    if old is None:
        pytest.skip("no streaming stores at this level")
    try:
        plain = cbn.batch_norm_forward(x, w, b, axis=axis, activation=act, residual=r)
        cbn._core.set_nontemporal_min_bytes(0)
        cbn._core.last_streamed(reset=True)
        streamed = cbn.batch_norm_forward(x, w, b, axis=axis, activation=act, residual=r)
        assert cbn._core.last_streamed()
    finally:
        cbn._core.set_nontemporal_min_bytes(old)
    np.testing.assert_array_equal(streamed.out, plain.out)


@pytest.mark.parametrize("act", ACTS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_every_level_matches_the_reference(rng, level, act, dtype):
    shape, axis = (3, 7, 301), 1
    x, dy, w, b = make_case(rng, shape, axis, dtype)
    r = rng.standard_normal(shape).astype(dtype)
    fwd, bwd = _reference(x, dy, w, b, r, axis, act)
    out = cbn.batch_norm_forward(x, w, b, axis=axis, activation=act, residual=r,
                                 negative_slope=_slope(act))
    _close(out.out, fwd.out, dtype, np.abs(fwd.out) + np.abs(r) + 4, extra=1e-12)
    g = cbn.batch_norm_backward(dy, x, out.mean, out.invstd, w, axis=axis, activation=act,
                                **_backward_kw(act, out.out, b, r))
    scale = np.abs(dy).max() * 4
    _close(g.dresidual, bwd.dresidual, dtype, scale * (1 + np.abs(r).max()), extra=1e-12)


# --------------------------------------------------------------------------- torch semantics
SPECIALS = [-np.inf, -1e300, -1e30, -40.0, -20.0, -6.0, -1.0, -1e-30, -0.0, 0.0, 1e-30, 0.5,
            1.0, 6.0, 7.0, 20.0, 1e30, 1e300, np.inf, np.nan]


def _torch_fn(F, act):
    return {"relu": F.relu, "relu6": F.relu6,
            "leaky_relu": lambda t: F.leaky_relu(t, 0.2), "silu": F.silu, "gelu": F.gelu,
            "gelu_tanh": lambda t: F.gelu(t, approximate="tanh"), None: lambda t: t}[act]


@pytest.mark.parametrize("act", ACTS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_special_values_behave_as_torch(act, dtype):
    """z = 0 + residual exactly (x = 0 normalises to 0), so the activation and its gradient
    meet NaN, +-Inf, huge and tiny values as they are; torch's functional in float64 (the
    float32 values are exact in float64) decides what is right."""
    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    vals = [v for v in SPECIALS if float(np.finfo(dtype).max) >= abs(v) or not np.isfinite(v)]
    z = np.array(vals, dtype).reshape(1, 1, -1).repeat(3, axis=0)
    z = np.ascontiguousarray(np.broadcast_to(z, (3, 2, z.shape[-1])))
    x = np.zeros_like(z)
    dy = np.ones_like(z)
    zt = torch.tensor(z.astype(np.float64), requires_grad=True)
    yt = _torch_fn(F, act)(zt)
    yt.backward(torch.ones_like(yt))
    with np.errstate(over="ignore"):  # float64 values past float32's range become Inf
        want = yt.detach().numpy().astype(dtype)
        want_g = zt.grad.numpy().astype(dtype)
    if act == "relu":  # cbn's ReLU: gradient 0 where z is NaN (torch passes dy through)
        want_g = np.where(np.isnan(z), 0, want_g).astype(dtype)
    fwd = cbn.batch_norm_forward(x, residual=z, activation=act, negative_slope=_slope(act))
    inf = cbn.batch_norm_inference(x, np.zeros(2), np.ones(2), residual=z, activation=act,
                                   negative_slope=_slope(act))
    kw = _backward_kw(act, fwd.out, None, z)
    g = cbn.batch_norm_backward(dy, x, fwd.mean, fwd.invstd, activation=act,
                                needs=(False, False, False, True), **kw)
    # NaN and Inf exactly where torch has them; finite values within a few ulps of the value
    # or of z (torch's float64 gelu cancels: 1 + erf(-20/sqrt 2) is 0, cbn's is 5.5e-88)
    zmag = np.minimum(np.abs(np.nan_to_num(z.astype(np.float64))) + 1, 64)
    keep = np.ones(z.shape, bool)
    if dtype == np.float32 and act == "gelu_tanh":
        keep = np.abs(z) < 1e12  # z**3 overflows float32 (torch's float32 gives NaN too)
    if act == "relu6":  # torch's gradient at NaN is 0 in its vector loop, dy in its tail loop
        keep = ~np.isnan(z)
    for got, exp, grad in ((fwd.out, want, False), (inf, want, False),
                           (g.dresidual, want_g, True)):
        k = keep if grad else np.ones(z.shape, bool)
        got, exp = got[k].astype(np.float64), exp[k].astype(np.float64)
        np.testing.assert_array_equal(np.isnan(got), np.isnan(exp))
        np.testing.assert_array_equal(np.isinf(got) * np.sign(got), np.isinf(exp) * np.sign(exp))
        fin = np.isfinite(exp)
        tol = 8 * EPS[dtype] * (np.abs(exp[fin]) + zmag[k][fin])
        assert np.all(np.abs(got[fin] - exp[fin]) <= tol), (act, got, exp)


@pytest.mark.parametrize("act", ACTS)
@pytest.mark.parametrize("axis", [1, -1])
def test_against_torch_autograd(rng, act, axis):
    """The whole fused op against torch: F.batch_norm, + residual, the functional, float64
    autograd; cbn in float64."""
    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    shape = (6, 5, 7, 9) if axis == 1 else (6, 7, 9, 5)
    x, dy, w, b = make_case(rng, shape, axis, np.float64)
    r = rng.standard_normal(shape)
    xt, rt = torch.tensor(x, requires_grad=True), torch.tensor(r, requires_grad=True)
    wt, bt = torch.tensor(w, requires_grad=True), torch.tensor(b, requires_grad=True)
    zt = F.batch_norm(xt.movedim(axis, 1), None, None, wt, bt, training=True).movedim(1, axis)
    yt = _torch_fn(F, act)(zt + rt)
    yt.backward(torch.tensor(dy))
    out = cbn.batch_norm_forward(x, w, b, axis=axis, activation=act, residual=r,
                                 negative_slope=_slope(act))
    np.testing.assert_allclose(out.out, yt.detach().numpy(), rtol=1e-12, atol=1e-12)
    g = cbn.batch_norm_backward(dy, x, out.mean, out.invstd, w, axis=axis, activation=act,
                                **_backward_kw(act, out.out, b, r))
    for got, t in zip(g, (xt, wt, bt, rt)):
        np.testing.assert_allclose(got, t.grad.numpy(), rtol=1e-10, atol=1e-11)


# --------------------------------------------------------------------------- float16
@pytest.mark.parametrize("act", ACTS)
def test_float16_goes_through_the_same_post_stage(rng, act):
    shape, axis = (8, 4, 300), 1
    x, dy, w, b = make_case(rng, shape, axis, np.float16)
    r = rng.standard_normal(shape).astype(np.float16)
    fwd, bwd = _reference(x, dy, w, b, r, axis, act)
    out = cbn.batch_norm_forward(x, w, b, axis=axis, activation=act, residual=r,
                                 negative_slope=_slope(act))
    assert out.out.dtype == np.float16
    np.testing.assert_allclose(out.out, fwd.out, rtol=2e-3, atol=4e-3)
    g = cbn.batch_norm_backward(dy, x, out.mean, out.invstd, w, axis=axis, activation=act,
                                **_backward_kw(act, out.out, b, r))
    assert g.dresidual.dtype == np.float16
    np.testing.assert_allclose(g.dresidual, bwd.dresidual, rtol=4e-3, atol=8e-3)
    np.testing.assert_allclose(g.dbias, bwd.dbias, rtol=1e-2, atol=0.05)


# --------------------------------------------------------------------------- needs
@pytest.mark.parametrize("act", ["relu", "silu"])
def test_needs_selects_each_gradient(rng, act):
    x, dy, w, b = make_case(rng, (6, 5, 30), 1, np.float64)
    r = rng.standard_normal(x.shape)
    f = cbn.batch_norm_forward(x, w, b, activation=act, residual=r)
    kw = _backward_kw(act, f.out, b, r)
    full = cbn.batch_norm_backward(dy, x, f.mean, f.invstd, w, activation=act, **kw)
    for needs in [(False, False, False, True), (True, False, False, False),
                  (False, True, True, False), (True, True, True)]:
        part = cbn.batch_norm_backward(dy, x, f.mean, f.invstd, w, activation=act, needs=needs,
                                       **kw)
        for want, a, b_ in zip(needs + (True,) * (4 - len(needs)), full, part):
            if want:
                np.testing.assert_array_equal(a, b_)
            else:
                assert b_ is None


# --------------------------------------------------------------------------- bad input
def test_bad_arguments_are_named_and_nothing_is_written():
    x = np.random.default_rng(1).standard_normal((4, 3, 5))
    out = np.full_like(x, 7.0)
    f = cbn.batch_norm_forward(x)
    cases = [
        (ValueError, "activation must be None or 'relu'",
         dict(activation="swish")),
        (ValueError, "negative_slope is only used with activation='leaky_relu'",
         dict(activation="relu", negative_slope=0.1)),
        (TypeError, "negative_slope must be a real number",
         dict(activation="leaky_relu", negative_slope="0.1")),
        (ValueError, "negative_slope must be finite",
         dict(activation="leaky_relu", negative_slope=float("nan"))),
        (ValueError, r"residual must have the shape of x \(4, 3, 5\)",
         dict(activation="relu", residual=x[:2])),
        (TypeError, "residual must be a floating-point array",
         dict(residual=np.ones(x.shape, np.int64))),
    ]
    for exc, msg, kw in cases:
        with pytest.raises(exc, match=msg):
            cbn.batch_norm_forward(x, out=out, **kw)
        with pytest.raises(exc, match=msg):
            cbn.batch_norm_inference(x, np.zeros(3), np.ones(3), out=out, **kw)
        with pytest.raises(exc, match=msg):
            cbn.batch_norm(x, np.zeros(3), np.ones(3), out=out, **kw)
        assert (out == 7.0).all()
    bwd = [
        (ValueError, "needs asks for dresidual, but no residual was given",
         dict(activation="silu", bias=None, needs=(True, True, True, True))),
        (ValueError, "bias is required with activation='gelu'",
         dict(activation="gelu", residual=x)),
        (ValueError, r"bias is required with activation='leaky_relu' with negative_slope=-0.1",
         dict(activation="leaky_relu", negative_slope=-0.1, y=x)),
        (ValueError, r"y \(the forward output\) is required with activation='relu6'",
         dict(activation="relu6", residual=x)),
        (ValueError, "y is not used with activation='gelu'",
         dict(activation="gelu", bias=None, y=x)),
        (TypeError, "needs must be a tuple of three or four booleans",
         dict(activation="gelu", bias=None, residual=x, needs=(True,) * 5)),
        (ValueError, r"residual must have the shape of x",
         dict(activation="silu", bias=None, residual=x[:, :2])),
        (ValueError, r"y is not used with activation='leaky_relu' with negative_slope=-0.1",
         dict(activation="leaky_relu", negative_slope=-0.1, bias=None, y=x)),
    ]
    for exc, msg, kw in bwd:
        with pytest.raises(exc, match=msg):
            cbn.batch_norm_backward(x, x, f.mean, f.invstd, out=out, **kw)
        assert (out == 7.0).all()


# --------------------------------------------------------------------------- the layers
def _layer_case(rng, act, axis):
    shape = (4, 6, 5, 5) if axis == 1 else (4, 5, 5, 6)
    bn = cbn.BatchNorm(6, axis=axis, dtype=np.float64, activation=act,
                       negative_slope=_slope(act))
    bn.weight[:] = rng.uniform(0.5, 1.5, 6)
    bn.bias[:] = rng.standard_normal(6)
    bn.running_mean[:] = rng.standard_normal(6)
    bn.running_var[:] = rng.uniform(0.5, 2, 6)
    x, r, dy = (rng.standard_normal(shape) for _ in range(3))
    return bn, x, r, dy


@pytest.mark.parametrize("act", ACTS)
@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("axis", [1, -1])
def test_layer_residual_block_against_torch(rng, act, training, axis):
    """BatchNorm(activation=...) on ``layer(x, residual=r)``: outputs, dx, dresidual, the
    parameter gradients and the running statistics as torch's BatchNorm2d + r + functional."""
    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    bn, x, r, dy = _layer_case(rng, act, axis)
    tb = torch.nn.BatchNorm2d(6, dtype=torch.float64)
    with torch.no_grad():
        for name in ("weight", "bias", "running_mean", "running_var"):
            getattr(tb, name)[:] = torch.tensor(getattr(bn, name))
    if not training:
        bn.eval()
        tb.eval()
    xt, rt = torch.tensor(x, requires_grad=True), torch.tensor(r, requires_grad=True)
    yt = _torch_fn(F, act)(tb(xt.movedim(axis, 1)).movedim(1, axis) + rt)
    yt.backward(torch.tensor(dy))
    y = bn(x, residual=r)
    g = bn.backward(dy)
    assert isinstance(g, cbn.ResidualGradients)
    for got, want in ((y, yt.detach()), (g.dx, xt.grad), (g.dresidual, rt.grad),
                      (bn.grad_weight, tb.weight.grad), (bn.grad_bias, tb.bias.grad),
                      (bn.running_var, tb.running_var)):
        np.testing.assert_allclose(got, want.numpy(), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("act", ACTS)
def test_layer_without_residual_and_frozen_layer(rng, act):
    """Without a residual backward returns dx alone; the frozen layer computes the evaluation
    transform and its gradient (y or x supplied as its activation needs)."""
    bn, x, r, dy = _layer_case(rng, act, 1)
    bn.eval()
    want = ref.batch_norm_inference(x, bn.running_mean, bn.running_var, bn.weight, bn.bias,
                                    activation=act, residual=r, negative_slope=_slope(act))
    y = bn(x, residual=r)
    np.testing.assert_allclose(y, want, rtol=1e-13, atol=1e-13)
    g = bn.backward(dy)
    frozen = bn.freeze()
    assert frozen.activation == act and (act != "leaky_relu" or frozen.negative_slope == 0.2)
    np.testing.assert_array_equal(frozen(x, residual=r), y)
    kw = {"y": y} if act in FROM_Y else {"x": x}
    fg = frozen.backward(dy, residual=r, **kw if act is not None else {})
    np.testing.assert_allclose(fg.dx, g.dx, rtol=1e-13, atol=1e-14)
    np.testing.assert_allclose(fg.dresidual, g.dresidual, rtol=1e-13, atol=1e-14)
    plain = bn(x)
    assert isinstance(bn.backward(dy), np.ndarray)
    np.testing.assert_array_equal(frozen(x), plain)
    assert repr(bn).endswith(")") and (act is None or f"activation={act!r}" in repr(bn))


def test_layer_state_keeps_the_activation():
    import pickle
    bn = cbn.BatchNorm(3, activation="leaky_relu", negative_slope=0.05)
    back = pickle.loads(pickle.dumps(bn))
    assert back.activation == "leaky_relu" and back.negative_slope == 0.05
    assert "negative_slope=0.05" in repr(back)
    with pytest.raises(ValueError, match="negative_slope is only used"):
        cbn.BatchNorm(3, activation="gelu", negative_slope=0.1)
    with pytest.raises(ValueError, match="out must not overlap residual"):
        layer = cbn.BatchNorm(3, activation="silu", dtype=np.float64)
        r = np.ones((4, 3))
        layer(np.arange(12.0).reshape(4, 3), residual=r, out=r)


@pytest.mark.parametrize("act", ACTS)
def test_sharded_pieces_equal_the_whole_op(rng, act):
    """normalize / backward_reduce / backward_elemt with the activation and residual, over two
    shards with merged statistics, give the whole fused op's output and dx."""
    x, dy, w, b = make_case(rng, (8, 5, 30), 1, np.float64)
    r = rng.standard_normal(x.shape)
    f = cbn.batch_norm_forward(x, w, b, activation=act, residual=r, negative_slope=_slope(act))
    parts = [slice(0, 3), slice(3, 8)]
    m = cbn.merge_moments(*[cbn.moments(x[p]) for p in parts])
    iv = m.invstd(1e-5)
    ys = [cbn.normalize(x[p], m.mean, iv, w, b, activation=act, residual=r[p],
                        negative_slope=_slope(act)) for p in parts]
    np.testing.assert_allclose(np.concatenate(ys), f.out, rtol=1e-13, atol=1e-13)

    def kw(p):
        extra = {"y": f.out[p]} if act in FROM_Y else ({"bias": b} if act else {})
        return dict(activation=act, residual=r[p], negative_slope=_slope(act), **extra)
    sums = [cbn.backward_reduce(dy[p], x[p], m.mean, invstd=iv, weight=w, **kw(p))
            for p in parts]
    sdy, sdyx = sum(s.sum_dy for s in sums), sum(s.sum_dy_xmu for s in sums)
    dxs = [cbn.backward_elemt(dy[p], x[p], m.mean, iv, w, sdy, sdyx, m.count, **kw(p))
           for p in parts]
    g = cbn.batch_norm_backward(dy, x, f.mean, f.invstd, w, activation=act, residual=r,
                                negative_slope=_slope(act),
                                **({"y": f.out} if act in FROM_Y else {"bias": b}))
    np.testing.assert_allclose(np.concatenate(dxs), g.dx, rtol=1e-12, atol=1e-13)
    np.testing.assert_allclose(sdy, g.dbias, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("act", ACTS)
def test_dask_functions_take_the_post_operation(rng, act):
    da = pytest.importorskip("dask.array")
    import cbn.dask as cd

    x, dy, w, b = make_case(rng, (8, 5, 30), 1, np.float64)
    r = rng.standard_normal(x.shape)
    X, R, DY = (da.from_array(a, chunks=c) for a, c in
                ((x, (3, 5, 10)), (r, (4, 5, 30)), (dy, (3, 5, 10))))
    f = cbn.batch_norm_forward(x, w, b, activation=act, residual=r, negative_slope=_slope(act))
    F = cd.batch_norm_forward(X, w, b, activation=act, residual=R, negative_slope=_slope(act))
    np.testing.assert_allclose(F.out.compute(), f.out, rtol=1e-13, atol=1e-13)
    kw = {"y": f.out} if act in FROM_Y else {"bias": b}
    g = cbn.batch_norm_backward(dy, x, f.mean, f.invstd, w, activation=act, residual=r,
                                negative_slope=_slope(act), **kw)
    kwd = {"y": da.from_array(f.out, chunks=(3, 5, 10))} if act in FROM_Y else {"bias": b}
    G = cd.batch_norm_backward(DY, X, F.mean, F.invstd, w, activation=act, residual=R,
                               negative_slope=_slope(act), **kwd)
    for got, want in zip((G.dx.compute(), G.dweight, G.dbias, G.dresidual.compute()), g):
        np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-13)
    rv = 1 / f.invstd ** 2 - 1e-5
    inf = cd.batch_norm_inference(X, f.mean, rv, w, b, activation=act, residual=R,
                                  negative_slope=_slope(act))
    np.testing.assert_array_equal(inf.compute(), cbn.batch_norm_inference(
        x, f.mean, rv, w, b, activation=act, residual=r, negative_slope=_slope(act)))


def test_guide_resnet_block_example():
    """The guide's "Fused epilogues" example (docs/guide/epilogues.md), executed as written,
    computes the unfused composition (float64 reference)."""
    import pathlib

    page = pathlib.Path(__file__).resolve().parents[2] / "docs" / "guide" / "epilogues.md"
    if not page.exists():
        pytest.skip("docs/ not beside the tests (installed test run)")
    text = page.read_text()
    code = text[text.index("```python") + len("```python"):]
    code = code[:code.index("```")]
    ns = {}
    exec(compile(code, str(page), "exec"), ns)
    conv_out, identity, dy = ns["conv_out"], ns["identity"], ns["dy"]
    fwd, bwd = _reference(conv_out, dy, ns["weight"].astype(np.float64),
                          ns["bias"].astype(np.float64), identity, 1, "relu")
    np.testing.assert_allclose(ns["dresidual"], bwd.dresidual, atol=1e-6)
    np.testing.assert_allclose(ns["dx"], bwd.dx, atol=2e-5)
    assert ns["y"].shape == conv_out.shape


@pytest.mark.parametrize("act", ACTS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_inference_fast_path_equals_the_python_route(rng, act, dtype):
    """Canonical arrays take the C fast path (with the residual); a list for running_mean takes
    the Python route: the same bits, also with out=residual and a residual of another dtype."""
    x, _, w, b = make_case(rng, (2, 6, 5), 1, dtype)
    r = rng.standard_normal(x.shape).astype(dtype)
    rm, rv = rng.standard_normal(6), rng.uniform(0.5, 2, 6)
    kw = dict(activation=act, residual=r, negative_slope=_slope(act))
    fast = cbn.batch_norm_inference(x, rm, rv, w, b, **kw)
    slow = cbn.batch_norm_inference(x, list(rm), rv, w, b, **kw)
    np.testing.assert_array_equal(fast, slow)
    r2 = r.copy()
    assert cbn.batch_norm_inference(x, rm, rv, w, b, **dict(kw, residual=r2), out=r2) is r2
    np.testing.assert_array_equal(r2, fast)
    other = r.astype(np.float64 if dtype == np.float32 else np.float32)
    np.testing.assert_array_equal(cbn.batch_norm_inference(x, rm, rv, w, b,
                                                           **dict(kw, residual=other)),
                                  cbn.batch_norm_inference(x, list(rm), rv, w, b,
                                                           **dict(kw, residual=other)))


@pytest.mark.parametrize("act", [a for a in ACTS if a is not None])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("with_residual", [True, False])
def test_backward_fast_path_equals_the_python_route(rng, act, dtype, with_residual):
    """Canonical arrays take the C fast path of the fused backward; weight as a list takes the
    Python route: the same bits for every gradient."""
    if act == "relu" and not with_residual:
        pytest.skip("the in-register ReLU")
    x, dy, w, b = make_case(rng, (3, 4, 7), 1, dtype)
    r = rng.standard_normal(x.shape).astype(dtype) if with_residual else None
    f = cbn.batch_norm_forward(x, w, b, activation=act, residual=r, negative_slope=_slope(act))
    kw = _backward_kw(act, f.out, b, r)
    fast = cbn.batch_norm_backward(dy, x, f.mean, f.invstd, w, activation=act, **kw)
    slow = cbn.batch_norm_backward(dy, x, f.mean, f.invstd, list(w), activation=act, **kw)
    assert type(fast) is type(slow) and len(fast) == (4 if with_residual else 3)
    for a, b_ in zip(fast, slow):
        np.testing.assert_array_equal(a, b_)


@pytest.mark.parametrize("with_residual", [True, False])
def test_leaky_relu_with_a_negative_slope_recomputes_its_input(rng, with_residual):
    """With slope < 0 the output's sign no longer tells the input's: backward recomputes z
    (bias required, y refused), in the functions, the layer and Dask, as torch's autograd."""
    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    x, dy, w, b = make_case(rng, (6, 5, 7, 9), 1, np.float64)
    r = rng.standard_normal(x.shape) if with_residual else None
    xt = torch.tensor(x, requires_grad=True)
    wt, bt = torch.tensor(w, requires_grad=True), torch.tensor(b, requires_grad=True)
    zt = F.batch_norm(xt, None, None, wt, bt, training=True)
    rt = None if r is None else torch.tensor(r, requires_grad=True)
    yt = F.leaky_relu(zt if rt is None else zt + rt, -0.3)
    yt.backward(torch.tensor(dy))
    want = [xt.grad, wt.grad, bt.grad] + ([] if rt is None else [rt.grad])
    f = cbn.batch_norm_forward(x, w, b, activation="leaky_relu", negative_slope=-0.3,
                               residual=r)
    g = cbn.batch_norm_backward(dy, x, f.mean, f.invstd, w, activation="leaky_relu",
                                negative_slope=-0.3, bias=b, residual=r)
    for got, t in zip(g, want):
        np.testing.assert_allclose(got, t.numpy(), rtol=1e-10, atol=1e-11)
    layer = cbn.BatchNorm(5, dtype=np.float64, activation="leaky_relu", negative_slope=-0.3)
    layer.weight[:], layer.bias[:] = w, b
    layer(x, residual=r)
    lg = layer.backward(dy)
    np.testing.assert_allclose(lg if r is None else lg.dx, xt.grad.numpy(), rtol=1e-10,
                               atol=1e-11)


def test_dask_relu_without_a_residual(rng):
    """The common bn + relu (no residual) in cbn.dask: the mask from y, as in memory."""
    da = pytest.importorskip("dask.array")
    import cbn.dask as cd

    x, dy, w, b = make_case(rng, (8, 5, 30), 1, np.float64)
    X, DY = da.from_array(x, chunks=(3, 5, 10)), da.from_array(dy, chunks=(3, 5, 10))
    F = cd.batch_norm_forward(X, w, b, activation="relu")
    f = cbn.batch_norm_forward(x, w, b, activation="relu")
    G = cd.batch_norm_backward(DY, X, F.mean, F.invstd, w, activation="relu", y=F.out)
    g = cbn.batch_norm_backward(dy, x, f.mean, f.invstd, w, activation="relu", y=f.out)
    assert len(G) == 3
    for got, want in zip((G.dx.compute(), G.dweight, G.dbias), g):
        np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-13)
    with pytest.raises(ValueError, match=r"y \(the forward output\) is required"):
        cd.batch_norm_backward(DY, X, F.mean, F.invstd, w, activation="relu")


@pytest.mark.parametrize("act", ["relu", "silu"])
def test_backward_dresidual_out_fast_path_equals_the_python_route(rng, act):
    # dresidual_out apart from every other array takes the C fast path; the same values with a
    # strided dy take the Python route; dresidual_out = dy itself (in place) is the Python
    # route's case: all three agree bit for bit
    shape = (4, 3, 5, 6)
    x = rng.standard_normal(shape).astype(np.float32)
    r = rng.standard_normal(shape).astype(np.float32)
    dy = rng.standard_normal(shape).astype(np.float32)
    w, b = rng.random(3) + 0.5, rng.standard_normal(3)
    y, mean, invstd = cbn.batch_norm_forward(x, w, b, activation=act, residual=r)
    kw = dict(activation=act, residual=r, bias=b)
    if act == "relu":
        kw = dict(activation=act, residual=r, y=y)
    dres = np.empty_like(x)
    fast = cbn.batch_norm_backward(dy, x, mean, invstd, w, dresidual_out=dres, **kw)
    assert fast[3] is dres
    strided = np.stack([dy, dy], axis=1)[:, 0]
    slow = cbn.batch_norm_backward(strided, x, mean, invstd, w,
                                   dresidual_out=np.empty_like(x), **kw)
    dy2 = dy.copy()
    inplace = cbn.batch_norm_backward(dy2, x, mean, invstd, w, dresidual_out=dy2, **kw)
    for a, b_, c in zip(fast, slow, inplace):
        np.testing.assert_array_equal(a, b_)
        np.testing.assert_array_equal(a, c)


@pytest.mark.parametrize("act", [None, "relu", "silu"])
def test_forward_with_residual_fast_path_equals_the_python_route(rng, act):
    # canonical arrays take the C fast path, a strided x the Python route: same bits, same
    # running statistics; out may be the residual itself
    shape = (4, 3, 5, 6)
    x = rng.standard_normal(shape).astype(np.float32)
    r = rng.standard_normal(shape).astype(np.float32)
    w, b = rng.random(3) + 0.5, rng.standard_normal(3)
    stats = [(np.zeros(3), np.ones(3)) for _ in range(3)]
    fast = cbn.batch_norm_forward(x, w, b, running_mean=stats[0][0], running_var=stats[0][1],
                                  activation=act, residual=r)
    strided = np.stack([x, x], axis=1)[:, 0]
    slow = cbn.batch_norm_forward(strided, w, b, running_mean=stats[1][0],
                                  running_var=stats[1][1], activation=act, residual=r)
    r2 = r.copy()
    into_r = cbn.batch_norm_forward(x, w, b, running_mean=stats[2][0], running_var=stats[2][1],
                                    activation=act, residual=r2, out=r2)
    assert into_r[0] is r2
    for a, b_, c in zip(fast, slow, into_r):
        np.testing.assert_array_equal(a, b_)
        np.testing.assert_array_equal(a, c)
    for s in stats[1:]:
        np.testing.assert_array_equal(s[0], stats[0][0])
        np.testing.assert_array_equal(s[1], stats[0][1])
