"""cbn.BatchNorm: torch semantics step by step, framework conventions, state dicts, Keras import."""

import numpy as np
import pytest

import cbn
from cbn import reference as ref

RNG = np.random.default_rng(1234)


def _data(shape, dtype, offset=0.0, scale=1.0, rng=RNG):
    return (offset + scale * rng.standard_normal(shape)).astype(dtype)


def _tol(dtype):
    return dict(rtol=2e-5, atol=2e-5) if np.dtype(dtype) == np.float32 else dict(rtol=1e-10,
                                                                                atol=1e-10)


# ----------------------------------------------------------------------------- torch, step by step

TORCH_CASES = [
    ("BatchNorm1d", (16, 5)),
    ("BatchNorm1d", (6, 5, 7)),
    ("BatchNorm2d", (4, 5, 3, 6)),
    ("BatchNorm3d", (2, 5, 3, 2, 4)),
]

# mode per step: True = train, False = eval; "z" = zero_grad before the step
STEPS = [True, True, False, True, "z", False, True]


def _torch_has_bias_flag(torch):
    return "bias=" in repr(torch.nn.BatchNorm1d(1))


def _run_against_torch(cls_name, shape, dtype, momentum, affine, track, channels_last,
                       bias=True):
    torch = pytest.importorskip("torch")
    C = shape[1]
    tdt = torch.float32 if dtype == np.float32 else torch.float64
    bias_kw = {}
    if not bias:
        if not _torch_has_bias_flag(torch):
            pytest.skip("torch.nn.BatchNorm has no bias flag before 2.13")
        bias_kw = {"bias": False}
    tb = getattr(torch.nn, cls_name)(C, momentum=momentum, affine=affine,
                                     track_running_stats=track, **bias_kw).to(tdt)
    ndim = len(shape)
    # channel-last permutation of the torch layout and its inverse
    to_last = (0,) + tuple(range(2, ndim)) + (1,)
    to_first = tuple(np.argsort(to_last))
    bn = cbn.BatchNorm(C, momentum=momentum, affine=affine, track_running_stats=track,
                       bias=bias, dtype=dtype, axis=-1 if channels_last else 1)
    rng = np.random.default_rng(7)
    if affine:
        w = rng.uniform(0.5, 1.5, C).astype(dtype)
        b = rng.standard_normal(C).astype(dtype)
        with torch.no_grad():
            tb.weight.copy_(torch.from_numpy(w))
            if bias:
                tb.bias.copy_(torch.from_numpy(b))
        bn.weight[...] = w
        if bias:
            bn.bias[...] = b
    tol = _tol(dtype)
    for step, mode in enumerate(STEPS):
        if mode == "z":
            bn.zero_grad()
            if affine:
                tb.weight.grad = None
                if bias:
                    tb.bias.grad = None
            continue
        tb.train(mode)
        bn.train(mode)
        x = _data(shape, dtype, offset=3.0 + step, scale=2.0, rng=rng)
        dy = _data(shape, dtype, rng=rng)
        tx = torch.from_numpy(x).requires_grad_()
        ty = tb(tx)
        ty.backward(torch.from_numpy(dy))
        xin = np.ascontiguousarray(x.transpose(to_last)) if channels_last else x
        dyin = np.ascontiguousarray(dy.transpose(to_last)) if channels_last else dy
        y = bn(xin)
        dx = bn.backward(dyin)
        if channels_last:
            y = y.transpose(to_first)
            dx = dx.transpose(to_first)
        assert y.dtype == dtype and dx.dtype == dtype
        np.testing.assert_allclose(y, ty.detach().numpy(), **tol, err_msg=f"y step {step}")
        np.testing.assert_allclose(dx, tx.grad.numpy(), rtol=tol["rtol"] * 10,
                                   atol=tol["atol"] * 10, err_msg=f"dx step {step}")
        if affine:
            np.testing.assert_allclose(bn.grad_weight, tb.weight.grad.numpy(),
                                       rtol=tol["rtol"] * 10, atol=tol["atol"] * 50)
            if bias:
                np.testing.assert_allclose(bn.grad_bias, tb.bias.grad.numpy(),
                                           rtol=tol["rtol"] * 10, atol=tol["atol"] * 50)
            else:
                assert bn.bias is None and bn.grad_bias is None
            assert bn.grad_weight.dtype == dtype
        else:
            assert bn.weight is None and bn.grad_weight is None and bn.grad_bias is None
        if track:
            np.testing.assert_allclose(bn.running_mean, tb.running_mean.numpy(), **tol)
            np.testing.assert_allclose(bn.running_var, tb.running_var.numpy(), **tol)
            assert bn.running_mean.dtype == dtype
            assert int(bn.num_batches_tracked) == int(tb.num_batches_tracked)
            assert bn.num_batches_tracked.dtype == np.int64
            assert bn.num_batches_tracked.shape == ()
        else:
            assert bn.running_mean is None and bn.num_batches_tracked is None


@pytest.mark.parametrize("cls_name,shape", TORCH_CASES)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("momentum", [0.1, None])
def test_torch_sequence(cls_name, shape, dtype, momentum):
    _run_against_torch(cls_name, shape, dtype, momentum, True, True, False)


@pytest.mark.parametrize("affine", [True, False])
@pytest.mark.parametrize("track", [True, False])
@pytest.mark.parametrize("momentum", [0.1, None])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_torch_flags(affine, track, momentum, dtype):
    _run_against_torch("BatchNorm2d", (4, 3, 5, 5), dtype, momentum, affine, track, False)


@pytest.mark.parametrize("cls_name,shape", TORCH_CASES[1:])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("momentum", [0.1, None])
def test_torch_channels_last(cls_name, shape, dtype, momentum):
    _run_against_torch(cls_name, shape, dtype, momentum, True, True, True)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_torch_no_bias(dtype):
    _run_against_torch("BatchNorm2d", (4, 3, 5, 5), dtype, 0.1, True, True, False, bias=False)


def test_torch_momentum_zero_and_one():
    for m in (0.0, 1.0):
        _run_against_torch("BatchNorm2d", (4, 3, 2, 2), np.float64, m, True, True, False)


def test_state_dict_torch_round_trip():
    torch = pytest.importorskip("torch")
    tb = torch.nn.BatchNorm2d(4)
    tb.train()
    for _ in range(3):
        tb(torch.randn(8, 4, 3, 3) * 2 + 1)
    with torch.no_grad():
        tb.weight.uniform_(0.5, 2)
        tb.bias.normal_()
    sd = {k: v.numpy() for k, v in tb.state_dict().items()}
    bn = cbn.BatchNorm(4)
    assert bn.load_state_dict(sd) == ([], [])
    for k, val in tb.state_dict().items():
        np.testing.assert_array_equal(getattr(bn, k), val.numpy())
    assert int(bn.num_batches_tracked) == 3
    x = _data((5, 4, 3, 3), np.float32)
    tb.eval()
    bn.eval()
    np.testing.assert_allclose(bn(x), tb(torch.from_numpy(x)).detach().numpy(), rtol=1e-6,
                               atol=1e-6)
    # tensors directly, and back into torch
    bn2 = cbn.BatchNorm(4)
    bn2.load_state_dict(tb.state_dict())
    np.testing.assert_array_equal(bn2.running_var, tb.running_var.numpy())
    tb2 = torch.nn.BatchNorm2d(4)
    tb2.load_state_dict({k: torch.from_numpy(val) for k, val in bn.state_dict().items()})
    assert int(tb2.num_batches_tracked) == 3
    np.testing.assert_array_equal(tb2.running_mean.numpy(), bn.running_mean)


def test_state_dict_keys_match_torch():
    torch = pytest.importorskip("torch")
    for affine in (True, False):
        for track in (True, False):
            tb = torch.nn.BatchNorm1d(3, affine=affine, track_running_stats=track)
            bn = cbn.BatchNorm(3, affine=affine, track_running_stats=track)
            assert list(bn.state_dict()) == list(tb.state_dict())
    if _torch_has_bias_flag(torch):
        tb = torch.nn.BatchNorm1d(3, bias=False)
        assert list(cbn.BatchNorm(3, bias=False).state_dict()) == list(tb.state_dict())


def test_repr_like_torch():
    torch = pytest.importorskip("torch")
    kws = [{}, {"momentum": None}, {"eps": 1e-3, "affine": False}, {"track_running_stats": False}]
    if "bias=" in repr(torch.nn.BatchNorm2d(1)):  # torch >= 2.13
        kws.append({"bias": False})
    for kw in kws:
        t = repr(torch.nn.BatchNorm2d(16, **kw)).replace("BatchNorm2d", "BatchNorm")
        assert repr(cbn.BatchNorm(16, **kw)) == t


# ----------------------------------------------------------------------------- without torch


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("axis", [1, -1])
def test_training_sequence_vs_reference(dtype, axis):
    C = 4
    shape = (6, C, 5) if axis == 1 else (6, 5, C)
    bn = cbn.BatchNorm(C, momentum=0.2, axis=axis, dtype=np.float64)
    rng = np.random.default_rng(3)
    bn.weight[...] = w = rng.uniform(0.5, 2, C)
    bn.bias[...] = b = rng.standard_normal(C)
    rm, rv = np.zeros(C), np.ones(C)
    gw, gb = np.zeros(C), np.zeros(C)
    for step in range(3):
        x = _data(shape, dtype, offset=step, scale=1 + step, rng=rng)
        dy = _data(shape, dtype, rng=rng)
        y = bn(x)
        dx = bn.backward(dy)
        r = ref.batch_norm_forward(x.astype(np.float64), w, b, eps=1e-5, running_mean=rm,
                                   running_var=rv, momentum=0.2, axis=axis)
        g = ref.batch_norm_backward(dy.astype(np.float64), x.astype(np.float64), r.mean,
                                    r.invstd, w, axis=axis)
        gw += g.dweight
        gb += g.dbias
        tol = _tol(dtype)
        np.testing.assert_allclose(y, r.out, **tol)
        np.testing.assert_allclose(dx, g.dx, rtol=tol["rtol"] * 10, atol=tol["atol"] * 10)
        np.testing.assert_allclose(bn.running_mean, rm, rtol=1e-12, atol=1e-7)
        np.testing.assert_allclose(bn.running_var, rv, rtol=1e-6 if dtype == np.float32 else 1e-12)
        np.testing.assert_allclose(bn.grad_weight, gw, rtol=1e-5, atol=1e-4)
        np.testing.assert_allclose(bn.grad_bias, gb, rtol=1e-5, atol=1e-4)
        assert int(bn.num_batches_tracked) == step + 1
    # eval: the running statistics
    x = _data(shape, dtype, rng=rng)
    bn.eval()
    np.testing.assert_allclose(
        bn(x), ref.batch_norm_inference(x.astype(np.float64), rm, rv, w, b, axis=axis),
        **_tol(dtype) if dtype == np.float64 else dict(rtol=1e-5, atol=1e-5))
    assert int(bn.num_batches_tracked) == 3


def test_cumulative_moving_average():
    bn = cbn.BatchNorm(3, momentum=None, dtype=np.float64)
    xs = [_data((10, 3, 4), np.float64, offset=i, scale=i + 1) for i in range(4)]
    for x in xs:
        bn(x)
    means = [x.mean(axis=(0, 2)) for x in xs]
    uvars = [x.var(axis=(0, 2), ddof=1) for x in xs]
    np.testing.assert_allclose(bn.running_mean, np.mean(means, axis=0), rtol=1e-12)
    np.testing.assert_allclose(bn.running_var, np.mean(uvars, axis=0), rtol=1e-12)


@pytest.mark.parametrize("convention,default", [("keras", 0.99), ("onnx", 0.9)])
@pytest.mark.parametrize("explicit", [False, True])
def test_keras_onnx_convention(convention, default, explicit):
    m = 0.7 if explicit else default
    kw = {"momentum": m} if explicit else {}
    bn = cbn.BatchNorm(3, convention=convention, dtype=np.float64, **kw)
    assert bn.momentum == m
    mm, mv = np.zeros(3), np.ones(3)
    for i in range(3):
        x = _data((8, 3, 5), np.float64, offset=i, scale=2)
        y = bn(x)
        # Keras docs: moving_mean = moving_mean * momentum + mean(batch) * (1 - momentum),
        #             moving_var = moving_var * momentum + var(batch) * (1 - momentum)
        # (ONNX BatchNormalization training mode: the same, with the population variance)
        mean = x.mean(axis=(0, 2))
        var = x.var(axis=(0, 2))
        mm = mm * m + mean * (1 - m)
        mv = mv * m + var * (1 - m)
        np.testing.assert_allclose(bn.running_mean, mm, rtol=1e-13, atol=1e-15)
        np.testing.assert_allclose(bn.running_var, mv, rtol=1e-13)
        np.testing.assert_allclose(
            y, (x - mean[:, None]) / np.sqrt(var[:, None] + 1e-5), rtol=1e-12, atol=1e-12)
    assert int(bn.num_batches_tracked) == 3


@pytest.mark.parametrize("convention", ["keras", "onnx"])
def test_keras_convention_cumulative(convention):
    bn = cbn.BatchNorm(2, momentum=None, convention=convention, dtype=np.float64)
    xs = [_data((5, 2), np.float64, offset=i) for i in range(3)]
    for x in xs:
        bn(x)
    np.testing.assert_allclose(bn.running_var, np.mean([x.var(0) for x in xs], axis=0),
                               rtol=1e-13)


def test_keras_convention_variance_precision():
    # variance far below eps: 1/invstd**2 - eps would lose every digit; the layer must not
    bn = cbn.BatchNorm(2, eps=1e-3, momentum=0.0, convention="keras", dtype=np.float64)
    x = 1.0 + 1e-7 * np.random.default_rng(5).standard_normal((1000, 2))
    bn(x)
    np.testing.assert_allclose(bn.running_var, x.var(axis=0), rtol=1e-12)
    np.testing.assert_allclose(bn.running_mean, x.mean(axis=0), rtol=1e-15)
    # float32 layer, float32 data with a large offset
    bn = cbn.BatchNorm(2, eps=1e-3, momentum=0.0, convention="onnx")
    x32 = (1000.0 + 1e-2 * np.random.default_rng(6).standard_normal((4096, 2))).astype(
        np.float32)
    bn(x32)
    np.testing.assert_allclose(bn.running_var, x32.astype(np.float64).var(axis=0), rtol=1e-6)


def test_torch_convention_float32_running_stats_exactness():
    # factor 1/k cumulative average in float32 storage stays within float32 rounding
    bn = cbn.BatchNorm(2, momentum=None)
    xs = [_data((64, 2), np.float32, offset=100.0) for _ in range(5)]
    for x in xs:
        bn(x)
    want = np.mean([x.astype(np.float64).mean(0) for x in xs], axis=0)
    np.testing.assert_allclose(bn.running_mean, want, rtol=3e-7)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("axis", [1, -1])
def test_eval_backward_is_affine_gradient(dtype, axis):
    C = 3
    shape = (4, C, 6) if axis == 1 else (4, 6, C)
    bn = cbn.BatchNorm(C, axis=axis, dtype=np.float64)
    rng = np.random.default_rng(11)
    bn.running_mean[...] = rm = rng.standard_normal(C)
    bn.running_var[...] = rv = rng.uniform(0.5, 2, C)
    bn.weight[...] = w = rng.uniform(0.5, 2, C)
    bn.bias[...] = rng.standard_normal(C)
    bn.eval()
    x = _data(shape, dtype, rng=rng)
    dy = _data(shape, dtype, rng=rng)
    bn(x)
    dx = bn.backward(dy)
    bshape = [1] * 3
    bshape[axis] = C
    invstd = 1 / np.sqrt(rv + 1e-5)
    red = tuple(i for i in range(3) if i != axis % 3)
    np.testing.assert_allclose(dx, dy * (w * invstd).reshape(bshape), **_tol(dtype))
    xhat = (x - rm.reshape(bshape)) * invstd.reshape(bshape)
    np.testing.assert_allclose(bn.grad_weight, (dy * xhat).sum(red), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(bn.grad_bias, dy.astype(np.float64).sum(red), rtol=1e-5,
                               atol=1e-5)
    assert dx.dtype == dtype


def test_no_running_stats_uses_batch_stats_in_eval():
    bn = cbn.BatchNorm(3, track_running_stats=False, dtype=np.float64).eval()
    x = _data((10, 3), np.float64, offset=5)
    np.testing.assert_allclose(bn(x), ref.batch_norm_forward(x).out, rtol=1e-12, atol=1e-12)
    assert bn.running_mean is None and bn.running_var is None
    assert bn.num_batches_tracked is None
    assert bn.state_dict().keys() == {"weight", "bias"}
    with pytest.raises(ValueError, match="running statistics"):
        bn.freeze()


def test_affine_false():
    bn = cbn.BatchNorm(3, affine=False)
    assert bn.weight is None and bn.bias is None
    x = _data((6, 3), np.float32)
    bn(x)
    bn.backward(np.ones_like(x))
    assert bn.grad_weight is None and bn.grad_bias is None
    assert list(bn.state_dict()) == ["running_mean", "running_var", "num_batches_tracked"]


def test_grad_accumulation_and_zero_grad():
    bn = cbn.BatchNorm(2, dtype=np.float64)
    x = _data((5, 2), np.float64)
    dy = _data((5, 2), np.float64)
    assert bn.grad_weight is None
    bn(x)
    bn.backward(dy)
    g1 = bn.grad_weight.copy(), bn.grad_bias.copy()
    bn.backward(dy)
    np.testing.assert_allclose(bn.grad_weight, 2 * g1[0])
    np.testing.assert_allclose(bn.grad_bias, 2 * g1[1])
    bn.zero_grad()
    assert bn.grad_weight is None and bn.grad_bias is None


def test_modes_and_defaults():
    bn = cbn.BatchNorm(5)
    assert bn.training
    assert bn.eval() is bn and not bn.training
    assert bn.train() is bn and bn.training
    assert bn.train(False) is bn and not bn.training
    assert bn.weight.dtype == np.float32 and (bn.weight == 1).all() and (bn.bias == 0).all()
    assert (bn.running_mean == 0).all() and (bn.running_var == 1).all()
    assert bn.num_batches_tracked.dtype == np.int64 and bn.num_batches_tracked == 0
    assert bn.momentum == 0.1 and bn.eps == 1e-5 and bn.convention == "torch"
    bn.train()
    bn(_data((4, 5), np.float32, offset=3))
    bn.weight[...] = 3
    bn.reset_parameters()
    assert (bn.weight == 1).all() and (bn.running_mean == 0).all()
    assert bn.num_batches_tracked == 0


def test_float64_input_float32_layer():
    bn = cbn.BatchNorm(3)
    x = _data((7, 3), np.float64)
    y = bn(x)
    assert y.dtype == np.float64 and bn.running_mean.dtype == np.float32
    dx = bn.backward(np.ones_like(x))
    assert dx.dtype == np.float64 and bn.grad_weight.dtype == np.float32


def test_repr_extras():
    assert repr(cbn.BatchNorm(4, axis=-1, dtype=np.float64, convention="keras")) == (
        "BatchNorm(4, eps=1e-05, momentum=0.99, affine=True, bias=True, track_running_stats=True, "
        "axis=-1, dtype=float64, convention='keras')")


def test_freeze_matches_eval():
    bn = cbn.BatchNorm(3, axis=-1)
    for i in range(3):
        bn(_data((8, 4, 3), np.float32, offset=50 + i))
    frozen = bn.freeze()
    bn.eval()
    x = _data((2, 4, 3), np.float32, offset=50)
    np.testing.assert_array_equal(frozen(x), bn(x))
    bn.train()
    bn(_data((8, 4, 3), np.float32, offset=-9))  # frozen is a snapshot
    bn.eval()
    assert not np.array_equal(frozen(x), bn(x))


# ----------------------------------------------------------------------------- state dict


def test_state_dict_round_trip_and_copies():
    a = cbn.BatchNorm(3, dtype=np.float64)
    for i in range(2):
        a(_data((6, 3), np.float64, offset=i))
    a.weight[...] = [1, 2, 3]
    sd = a.state_dict()
    assert list(sd) == ["weight", "bias", "running_mean", "running_var", "num_batches_tracked"]
    sd["weight"][0] = 99  # a copy
    assert a.weight[0] == 1
    sd["weight"][0] = 1
    b = cbn.BatchNorm(3)  # float32: values are cast
    b.load_state_dict(sd)
    assert b.weight.dtype == np.float32
    np.testing.assert_allclose(b.running_mean, a.running_mean, rtol=1e-7)
    assert int(b.num_batches_tracked) == 2
    sd["running_var"][...] = 5
    assert not (b.running_var == 5).any()  # loaded by copy


def test_load_state_dict_errors():
    bn = cbn.BatchNorm(3)
    good = bn.state_dict()
    with pytest.raises(KeyError, match="missing key.*'running_var'"):
        bn.load_state_dict({k: v for k, v in good.items() if k != "running_var"})
    with pytest.raises(KeyError, match="unexpected key.*'foo'"):
        bn.load_state_dict({**good, "foo": np.zeros(3)})
    bad = {**good, "weight": np.ones(4, np.float32)}
    with pytest.raises(ValueError, match="size mismatch for 'weight'.*\\(3,\\).*\\(4,\\)"):
        bn.load_state_dict(bad)
    with pytest.raises(ValueError, match="size mismatch"):
        bn.load_state_dict(bad, strict=False)
    with pytest.raises(TypeError, match="num_batches_tracked"):
        bn.load_state_dict({**good, "num_batches_tracked": np.array(1.5)})
    # nothing was changed by the failed loads
    assert (bn.weight == 1).all()
    # non-strict reports, and loads what it can
    res = bn.load_state_dict({"weight": np.full(3, 2.0), "foo": 1}, strict=False)
    assert res.unexpected_keys == ["foo"]
    assert res.missing_keys == ["bias", "running_mean", "running_var"]
    assert (bn.weight == 2).all()
    # a missing num_batches_tracked is tolerated even when strict (old torch checkpoints)
    bn.load_state_dict({k: v for k, v in good.items() if k != "num_batches_tracked"})
    with pytest.raises(TypeError):
        bn.load_state_dict([1, 2])


def test_affine_false_state_dict_rejects_weight():
    bn = cbn.BatchNorm(2, affine=False)
    sd = cbn.BatchNorm(2).state_dict()
    with pytest.raises(KeyError, match="unexpected key.*'weight'.*'bias'"):
        bn.load_state_dict(sd)


# ----------------------------------------------------------------------------- Keras import


@pytest.mark.parametrize("center", [True, False])
@pytest.mark.parametrize("scale", [True, False])
def test_from_keras(center, scale):
    rng = np.random.default_rng(21)
    C = 4
    gamma = rng.uniform(0.5, 2, C).astype(np.float32)
    beta = rng.standard_normal(C).astype(np.float32)
    mm = rng.standard_normal(C).astype(np.float32)
    mv = rng.uniform(0.1, 3, C).astype(np.float32)
    weights = ([gamma] if scale else []) + ([beta] if center else []) + [mm, mv]
    bn = cbn.BatchNorm.from_keras(weights, center=center, scale=scale)
    assert bn.convention == "keras" and bn.eps == 1e-3 and bn.momentum == 0.99
    assert bn.axis == -1 and bn.affine == (center or scale)
    assert bn.dtype == np.float32
    x = _data((2, 3, 5, C), np.float32, rng=rng)
    g = gamma if scale else 1.0
    b = beta if center else 0.0
    want = g * (x - mm) / np.sqrt(mv.astype(np.float64) + 1e-3) + b  # Keras inference formula
    np.testing.assert_allclose(bn.eval()(x), want, rtol=1e-5, atol=1e-5)
    # Keras training update: moving = moving * momentum + batch * (1 - momentum)
    bn.train()
    bn(x)
    xb = x.astype(np.float64).reshape(-1, C)
    np.testing.assert_allclose(bn.running_mean, 0.99 * mm + 0.01 * xb.mean(0), rtol=1e-6,
                               atol=1e-7)
    np.testing.assert_allclose(bn.running_var, 0.99 * mv + 0.01 * xb.var(0), rtol=1e-6)


def test_from_keras_options_and_errors():
    w = [np.ones(3), np.zeros(3), np.zeros(3), np.ones(3)]
    bn = cbn.BatchNorm.from_keras(w, epsilon=1e-5, momentum=0.9, axis=1)
    assert bn.dtype == np.float64 and bn.axis == 1 and bn.momentum == 0.9 and bn.eps == 1e-5
    with pytest.raises(ValueError, match="expected 3 arrays"):
        cbn.BatchNorm.from_keras(w, center=False)
    with pytest.raises(ValueError, match="size mismatch"):
        cbn.BatchNorm.from_keras([np.ones(2), np.zeros(3), np.zeros(3), np.ones(3)])


# ----------------------------------------------------------------------------- errors


def test_wrong_channel_count_names_num_features():
    bn = cbn.BatchNorm(3)
    with pytest.raises(ValueError, match="num_features=3"):
        bn(np.zeros((4, 5), np.float32))
    bn.eval()
    with pytest.raises(ValueError, match="num_features=3"):
        bn(np.zeros((4, 5, 2), np.float32))
    bn = cbn.BatchNorm(3, axis=-1)
    with pytest.raises(ValueError, match="num_features=3"):
        bn(np.zeros((4, 3, 2), np.float32))


def test_constructor_errors():
    with pytest.raises(ValueError, match="convention"):
        cbn.BatchNorm(3, convention="tf")
    with pytest.raises(ValueError, match="num_features"):
        cbn.BatchNorm(0)
    with pytest.raises(TypeError, match="num_features"):
        cbn.BatchNorm(3.0)
    with pytest.raises(ValueError, match="momentum"):
        cbn.BatchNorm(3, momentum=1.5)
    with pytest.raises(ValueError, match="eps"):
        cbn.BatchNorm(3, eps=0)
    with pytest.raises(TypeError, match="dtype"):
        cbn.BatchNorm(3, dtype=np.float16)
    with pytest.raises(TypeError, match="axis"):
        cbn.BatchNorm(3, axis=1.0)


def test_runtime_errors():
    bn = cbn.BatchNorm(3)
    with pytest.raises(RuntimeError, match="before forward"):
        bn.backward(np.zeros((2, 3), np.float32))
    with pytest.raises(ValueError, match="more than 1 value per channel"):
        bn(np.zeros((1, 3), np.float32))
    assert bn.num_batches_tracked == 0  # a failed step is not counted
    with pytest.raises(TypeError):
        bn(np.zeros((2, 3), np.int32))
    x = np.zeros((2, 3), np.float32)
    with pytest.raises(ValueError, match="overlap"):
        bn(x, out=x)
    bn(x)
    with pytest.raises(ValueError, match="shape"):
        bn.backward(np.zeros((3, 3), np.float32))
    bn.eval()
    bn(x)
    with pytest.raises(TypeError, match="dtype"):
        bn.backward(np.zeros((2, 3), np.float64))
    with pytest.raises(ValueError, match="boolean"):
        bn.train(1)


def test_eval_in_place_output():
    bn = cbn.BatchNorm(3, dtype=np.float64).eval()
    bn.running_mean[...] = 1
    x = _data((4, 3), np.float64)
    want = bn(x.copy())
    y = bn(x, out=x)
    assert y is x
    np.testing.assert_array_equal(x, want)
    with pytest.raises(RuntimeError, match="overwritten"):
        bn.backward(np.ones_like(x))
    nb = cbn.BatchNorm(3, affine=False).eval()
    nb.running_var[...] = 4
    x = _data((4, 3), np.float32)
    nb(x, out=x)
    np.testing.assert_allclose(nb.backward(np.ones_like(x)), 1 / np.sqrt(4 + 1e-5), rtol=1e-6)


@pytest.mark.parametrize("convention", ["torch", "keras", "onnx"])
def test_empty_batch_counts_but_keeps_stats(convention):
    # torch: the output is empty, the statistics are unchanged, the batch is counted
    bn = cbn.BatchNorm(3, convention=convention)
    y = bn(np.zeros((0, 3, 2), np.float32))
    assert y.shape == (0, 3, 2)
    assert (bn.running_mean == 0).all() and (bn.running_var == 1).all()
    assert int(bn.num_batches_tracked) == 1
    dx = bn.backward(np.zeros((0, 3, 2), np.float32))
    assert dx.shape == (0, 3, 2) and (bn.grad_weight == 0).all()


def test_torch_empty_batch():
    torch = pytest.importorskip("torch")
    tb = torch.nn.BatchNorm2d(3)
    bn = cbn.BatchNorm(3)
    tx = torch.zeros(0, 3, 2, 2, requires_grad=True)
    tb(tx).sum().backward()
    bn(np.zeros((0, 3, 2, 2), np.float32))
    bn.backward(np.zeros((0, 3, 2, 2), np.float32))
    np.testing.assert_array_equal(bn.grad_weight, tb.weight.grad.numpy())
    np.testing.assert_array_equal(bn.grad_bias, tb.bias.grad.numpy())
    assert int(bn.num_batches_tracked) == int(tb.num_batches_tracked)
    np.testing.assert_array_equal(bn.running_var, tb.running_var.numpy())


def test_pickle_and_deepcopy():
    import copy
    import pickle

    bn = cbn.BatchNorm(3, convention="onnx", momentum=None)
    bn(_data((4, 3), np.float32))
    for clone in (pickle.loads(pickle.dumps(bn)), copy.deepcopy(bn)):
        assert repr(clone) == repr(bn)
        for k, v in bn.state_dict().items():
            np.testing.assert_array_equal(clone.state_dict()[k], v)
    frozen = bn.freeze()
    clone = pickle.loads(pickle.dumps(frozen))
    x = _data((2, 3), np.float32)
    np.testing.assert_array_equal(clone(x), frozen(x))


# ----------------------------------------------------------------------------- property test

try:
    from hypothesis import assume, given, settings
    from hypothesis import strategies as st
except ImportError:  # pragma: no cover - hypothesis is in the test extras
    given = None

if given is not None:
    @settings(max_examples=40, deadline=None)
    @given(
        shape=st.lists(st.integers(1, 4), min_size=2, max_size=4),
        axis_i=st.integers(0, 3),
        convention=st.sampled_from(["torch", "keras", "onnx"]),
        momentum=st.one_of(st.none(), st.floats(0.0, 1.0)),
        dtype=st.sampled_from([np.float32, np.float64]),
        seed=st.integers(0, 2**16),
    )
    def test_layer_step_vs_reference_property(shape, axis_i, convention, momentum, dtype,
                                              seed):
        _property_step(shape, axis_i, convention, momentum, dtype, seed)


def _property_step(shape, axis_i, convention, momentum, dtype, seed):
    axis = axis_i % len(shape) - len(shape) * (axis_i % 2)  # negative axes too
    C = shape[axis]
    n = int(np.prod(shape)) // C
    assume(n >= 2)
    rng = np.random.default_rng(seed)
    bn = cbn.BatchNorm(C, momentum=momentum, axis=axis, dtype=np.float64, convention=convention)
    bn.running_mean[...] = rm0 = rng.standard_normal(C)
    bn.running_var[...] = rv0 = rng.uniform(0.5, 2, C)
    x = rng.standard_normal(shape).astype(dtype)
    y = bn(x)
    x64 = x.astype(np.float64)
    red = tuple(i for i in range(x.ndim) if i != axis % x.ndim)
    mean, var = x64.mean(red), x64.var(red)
    f = 1.0 if momentum is None else (momentum if convention == "torch" else 1 - momentum)
    v_new = var * n / (n - 1) if convention == "torch" else var
    np.testing.assert_allclose(bn.running_mean, (1 - f) * rm0 + f * mean, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(bn.running_var, (1 - f) * rv0 + f * v_new, rtol=1e-5, atol=1e-6)
    want = ref.batch_norm_forward(x64, axis=axis).out
    np.testing.assert_allclose(y, want, rtol=1e-4, atol=1e-4 if dtype == np.float32 else 1e-9)


# ----------------------------------------------------------------------------- README example


def test_readme_deployment_example():
    # the "Deployment" example of the README, verbatim apart from the asserts
    rng = np.random.default_rng(0)
    W = rng.standard_normal((16, 8, 1, 1)).astype(np.float32)   # a 1x1 convolution, 8 -> 16
    b = rng.standard_normal(16).astype(np.float32)

    def conv1x1(x, W, b):
        return np.einsum("oc,nchw->nohw", W[:, :, 0, 0], x) + b[:, None, None]

    bn = cbn.BatchNorm(16)
    for _ in range(100):                                        # "training"
        bn(conv1x1(rng.standard_normal((32, 8, 8, 8)).astype(np.float32), W, b))
    bn.eval()

    Wf, bf = cbn.fold_into_conv(W, b, bn.running_mean, bn.running_var, bn.weight, bn.bias,
                                bn.eps)
    x = rng.standard_normal((4, 8, 8, 8)).astype(np.float32)
    y_pair = bn(conv1x1(x, W, b))
    y_fold = conv1x1(x, Wf, bf)
    assert np.allclose(y_fold, y_pair, rtol=1e-5, atol=1e-5)
    frozen = bn.freeze()
    assert np.array_equal(frozen(conv1x1(x, W, b)), y_pair)


def test_a_replaced_step_counter_still_counts():
    """num_batches_tracked replaced by the user (a NumPy scalar, an int32 array): the step
    counts as `+= 1` would; a read-only one is refused before anything changes."""
    x = np.random.default_rng(0).standard_normal((4, 3, 5))
    for counter, want in ((np.int64(0), 1), (np.array(0, np.int32), 1)):
        bn = cbn.BatchNorm(3, dtype=np.float64)
        bn.num_batches_tracked = counter
        bn(x)
        assert int(bn.num_batches_tracked) == want
    bn = cbn.BatchNorm(3, dtype=np.float64)
    ro = np.array(0, np.int32)
    ro.flags.writeable = False
    bn.num_batches_tracked = ro
    with pytest.raises(ValueError, match="num_batches_tracked"):
        bn(x)
    assert np.array_equal(bn.running_mean, np.zeros(3)) and int(bn.num_batches_tracked) == 0
