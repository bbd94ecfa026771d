"""Masked and weighted statistics (#18): moments, forward, backward and running statistics over
the positions a mask or weights select, against the float64 reference (itself checked by
finite differences), on every layout, dtype, SIMD level and thread count."""

import numpy as np
import pytest

import cbn
from cbn import reference as ref

# (shape, axis) covering every path of the kernels: channel-major rows of short runs, runs
# split into pieces, channels-last rows (one block and several), a middle axis, NC
LAYOUTS = [((6, 5, 7, 9), 1), ((16, 3, 3000), 1), ((2, 3, 40000), 1), ((64, 20, 300), -1),
           ((3000, 37), 1), ((3, 4, 5), 2), ((40, 6, 1), 1)]
DTYPES = [np.float64, np.float32, np.float16]


def _positions(shape, axis):
    axis %= len(shape)
    return shape[:axis] + shape[axis + 1:]


def _weights(rng, shape, axis, kind, per_element, p0=0.3):
    """A mask (kind "mask") or float weights with zeros, of the positions' or the full shape."""
    s = shape if per_element else _positions(shape, axis)
    if kind == "mask":
        return rng.random(s) >= p0
    w = rng.random(s) * 3
    w[rng.random(s) < p0] = 0
    return w.astype(np.float32 if kind == "float32" else np.float64)


def _kw(kind, w):
    return {"mask": w} if kind == "mask" else {"sample_weight": w}


def _data(rng, shape, dtype, offset=0.0):
    return (rng.standard_normal(shape) * 2 + offset).astype(dtype)


@pytest.mark.parametrize("shape,axis", LAYOUTS)
@pytest.mark.parametrize("kind", ["mask", "float32", "float64"])
@pytest.mark.parametrize("per_element", [False, True])
@pytest.mark.parametrize("dtype", DTYPES)
def test_moments_match_the_reference_and_ignore_padding(rng, shape, axis, kind, per_element,
                                                        dtype):
    x = _data(rng, shape, dtype, 10.0)
    w = _weights(rng, shape, axis, kind, per_element)
    wf = ref.sample_weights(x, axis, **_kw(kind, w))
    poisoned = x.copy()
    poisoned[wf == 0] = np.nan  # padding is never read into a statistic
    m = cbn.moments(poisoned, axis=axis, **_kw(kind, w))
    red = tuple(i for i in range(x.ndim) if i != axis % x.ndim)
    x64 = x.astype(np.float64)
    total = wf.sum(axis=red)
    mean = (wf * x64).sum(axis=red) / total
    m2 = (wf * (x64 - np.expand_dims(mean, red)) ** 2).sum(axis=red)
    np.testing.assert_allclose(m.count, total, rtol=1e-13)
    np.testing.assert_allclose(m.mean, mean, rtol=1e-12)
    np.testing.assert_allclose(m.m2, m2, rtol=1e-10)
    assert m.count.dtype == np.float64 and m.count.shape == (shape[axis],)


@pytest.mark.parametrize("shape,axis", LAYOUTS)
@pytest.mark.parametrize("per_element", [False, True])
def test_results_are_the_same_for_any_thread_count_and_level(rng, level, shape, axis,
                                                              per_element):
    x = _data(rng, shape, np.float32, 3.0)
    for kind in ("mask", "float64"):
        kw = _kw(kind, _weights(rng, shape, axis, kind, per_element))
        one = cbn.moments(x, axis=axis, num_threads=1, **kw)
        two = cbn.moments(x, axis=axis, num_threads=2, **kw)
        for a, b in zip(one, two):
            assert np.array_equal(a, b)
        f1 = cbn.batch_norm_forward(x, axis=axis, num_threads=1, **kw)
        f2 = cbn.batch_norm_forward(x, axis=axis, num_threads=2, **kw)
        assert np.array_equal(f1.out, f2.out) and np.array_equal(f1.invstd, f2.invstd)
        r = ref.batch_norm_forward(x.astype(np.float64), axis=axis, **kw)
        np.testing.assert_allclose(f1.out, r.out, rtol=1e-5, atol=1e-5)
        dy = x[::-1].copy() if x.shape[0] > 1 else -x
        for mo in ("normalize", "keep"):
            g1 = cbn.batch_norm_backward(dy, x, f1.mean, f1.invstd, axis=axis, num_threads=1,
                                         masked_output=mo, **kw)
            g2 = cbn.batch_norm_backward(dy, x, f1.mean, f1.invstd, axis=axis, num_threads=2,
                                         masked_output=mo, **kw)
            for a, b in zip(g1, g2):
                assert np.array_equal(a, b)
            gr = ref.batch_norm_backward(dy.astype(np.float64), x.astype(np.float64), f1.mean,
                                         f1.invstd, axis=axis, masked_output=mo, **kw)
            np.testing.assert_allclose(g1.dx, gr.dx, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("shape,axis", [((6, 5, 7, 9), 1), ((2, 3, 40000), 1),
                                        ((3000, 37), 1)])
def test_a_mask_is_the_weights_zero_and_one(rng, shape, axis):
    """Bit-identical where the kernels share a loop (channel-major runs: the products by 1 are
    exact and the lanes the same); channels-last rows round alike up to FMA contraction."""
    x = _data(rng, shape, np.float32)
    for per_element in (False, True):
        m = _weights(rng, shape, axis, "mask", per_element)
        a = cbn.moments(x, axis=axis, mask=m)
        b = cbn.moments(x, axis=axis, sample_weight=m.astype(np.float64))
        exact = shape[axis % len(shape)] != shape[-1]
        for p, q in zip(a, b):
            if exact:
                assert np.array_equal(p, q)
            else:
                np.testing.assert_allclose(p, q, rtol=1e-14)


@pytest.mark.parametrize("axis,shape", [(1, (16, 4, 4096)), (-1, (512, 64, 8)),
                                        (1, (4096, 8))])
def test_float32_with_a_huge_offset_keeps_the_variance(rng, axis, shape):
    """The unmasked promise: |mean| / std = 1e6 in float32, variance within 1e-6."""
    x = (1e6 + rng.standard_normal(shape)).astype(np.float32)
    w = _weights(rng, shape, axis, "float64", False)
    m = cbn.moments(x, axis=axis, sample_weight=w)
    wf = ref.sample_weights(x, axis, sample_weight=w)
    red = tuple(i for i in range(x.ndim) if i != axis % x.ndim)
    x64 = x.astype(np.float64)
    mean = (wf * x64).sum(axis=red) / wf.sum(axis=red)
    var = (wf * (x64 - np.expand_dims(mean, red)) ** 2).sum(axis=red) / wf.sum(axis=red)
    np.testing.assert_allclose(m.m2 / m.count, var, rtol=1e-6)


@pytest.mark.parametrize("shape,axis", [((6, 5, 7, 9), 1), ((64, 20, 30), -1), ((300, 7), 1),
                                        ((2, 3, 40000), 1)])
@pytest.mark.parametrize("kind", ["mask", "float64"])
@pytest.mark.parametrize("per_element", [False, True])
@pytest.mark.parametrize("masked_output", ["normalize", "zero", "keep"])
def test_forward_and_backward_match_the_reference(rng, shape, axis, kind, per_element,
                                                  masked_output):
    x = _data(rng, shape, np.float64, 5.0)
    dy = rng.standard_normal(shape)
    C = shape[axis]
    wt, bs = rng.random(C) + 0.5, rng.standard_normal(C)
    kw = dict(_kw(kind, _weights(rng, shape, axis, kind, per_element)),
              masked_output=masked_output, axis=axis)
    rm, rv = rng.standard_normal(C), rng.random(C) + 0.5
    rm_ref, rv_ref = rm.copy(), rv.copy()
    f = cbn.batch_norm_forward(x, wt, bs, running_mean=rm, running_var=rv, **kw)
    r = ref.batch_norm_forward(x, wt, bs, running_mean=rm_ref, running_var=rv_ref, **kw)
    np.testing.assert_allclose(f.out, r.out, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(f.mean, r.mean, rtol=1e-12)
    np.testing.assert_allclose(f.invstd, r.invstd, rtol=1e-12)
    np.testing.assert_allclose(rm, rm_ref, rtol=1e-12)
    np.testing.assert_allclose(rv, rv_ref, rtol=1e-12)
    g = cbn.batch_norm_backward(dy, x, f.mean, f.invstd, wt, **kw)
    gr = ref.batch_norm_backward(dy, x, f.mean, f.invstd, wt, **kw)
    for a, b in zip(g, gr):
        np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-10)


@pytest.mark.parametrize("masked_output", ["normalize", "zero", "keep"])
@pytest.mark.parametrize("activation,residual", [(None, False), ("relu", False),
                                                 ("silu", True)])
def test_the_reference_gradient_is_the_derivative_of_the_forward(rng, masked_output,
                                                                 activation, residual):
    """Central differences of sum(dy * forward(x)) (float64), per element."""
    shape, axis = (5, 3, 4), 1
    x = rng.standard_normal(shape)
    dy = rng.standard_normal(shape)
    w = rng.random((5, 4)) * 2
    w[0, 0] = w[2, 1] = 0
    wt, bs = rng.random(3) + 0.5, rng.standard_normal(3)
    res = rng.standard_normal(shape) if residual else None
    kw = dict(sample_weight=w, masked_output=masked_output, activation=activation,
              residual=res)

    def loss(z):
        return float((ref.batch_norm_forward(z, wt, bs, **kw).out * dy).sum())

    f = ref.batch_norm_forward(x, wt, bs, **kw)
    y = f.out if activation == "relu" else None  # relu's derivative is read from its output
    g = ref.batch_norm_backward(dy, x, f.mean, f.invstd, wt, y=y, bias=bs, **kw)
    fast = cbn.batch_norm_backward(dy, x, f.mean, f.invstd, wt, y=y, bias=bs, **kw)
    h = 1e-6
    num = np.empty(shape)
    for i in np.ndindex(shape):
        up, down = x.copy(), x.copy()
        up[i] += h
        down[i] -= h
        num[i] = (loss(up) - loss(down)) / (2 * h)
    np.testing.assert_allclose(g.dx, num, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(fast.dx, g.dx, rtol=1e-10, atol=1e-12)
    for a, b in zip(fast[1:], g[1:]):
        np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16"])
@pytest.mark.parametrize("shape,axis", [((8, 16, 12, 12), 1), ((32, 50, 64), -1)])
def test_lower_precision_inputs(rng, dtype, shape, axis):
    if dtype == "bfloat16":
        dtype = pytest.importorskip("ml_dtypes").bfloat16
    dtype = np.dtype(dtype)
    x = _data(rng, shape, np.float32, 1.0).astype(dtype)
    dy = rng.standard_normal(shape).astype(np.float32).astype(dtype)
    m = _weights(rng, shape, axis, "mask", False)
    for mo in ("normalize", "zero", "keep"):
        f = cbn.batch_norm_forward(x, axis=axis, mask=m, masked_output=mo)
        r = ref.batch_norm_forward(x.astype(np.float64), axis=axis, mask=m, masked_output=mo)
        assert f.out.dtype == dtype
        tol = {2: 2e-3 if dtype == np.float16 else 1.6e-2}.get(dtype.itemsize, 1e-5)
        np.testing.assert_allclose(f.out.astype(np.float64), r.out, rtol=tol, atol=tol)
        g = cbn.batch_norm_backward(dy, x, f.mean, f.invstd, axis=axis, mask=m,
                                    masked_output=mo)
        gr = ref.batch_norm_backward(dy.astype(np.float64), x.astype(np.float64), f.mean,
                                     f.invstd, axis=axis, mask=m, masked_output=mo)
        assert g.dx.dtype == dtype
        np.testing.assert_allclose(g.dx.astype(np.float64), gr.dx, rtol=tol * 4, atol=tol * 4)


def test_layouts_and_broadcast_masks(rng):
    """Fortran order, a strided view and a mask broadcast from (N, 1) over (N, T)."""
    x = _data(rng, (8, 10, 6), np.float64)
    m = rng.random((8, 1)) < 0.6
    m[0] = True
    expect = ref.batch_norm_forward(x, axis=-1, mask=np.broadcast_to(m, (8, 10)))
    for xv in (x, np.asfortranarray(x), np.ascontiguousarray(x[:, ::-1])[:, ::-1]):
        got = cbn.batch_norm_forward(xv, axis=-1, mask=m)
        np.testing.assert_allclose(got.out, expect.out, rtol=1e-12, atol=1e-13)
    full = rng.random((8, 10, 6)) < 0.5
    got = cbn.batch_norm_forward(np.asfortranarray(x), axis=-1, mask=full)
    np.testing.assert_allclose(got.out, ref.batch_norm_forward(x, axis=-1, mask=full).out,
                               rtol=1e-12, atol=1e-13)
    # a per-element mask the same for every channel gives the per-position statistics
    same = np.broadcast_to(m[:, :, None], (8, 10, 6))
    np.testing.assert_allclose(cbn.batch_norm_forward(x, axis=-1, mask=same).out,
                               cbn.batch_norm_forward(x, axis=-1, mask=m).out, rtol=1e-13,
                               atol=1e-14)


def test_out_in_place_and_keep(rng):
    x = _data(rng, (4, 3, 50), np.float32)
    m = rng.random((4, 50)) < 0.5
    expect = cbn.batch_norm_forward(x, mask=m, masked_output="keep").out
    buf = x.copy()
    got = cbn.batch_norm_forward(buf, mask=m, masked_output="keep", out=buf).out
    assert got is buf
    np.testing.assert_array_equal(got, expect)


def test_merge_of_masked_shards_is_the_whole(rng):
    x = _data(rng, (30, 4, 20), np.float32, 100.0)
    w = _weights(rng, x.shape, 1, "float64", True)
    whole = cbn.moments(x, sample_weight=w)
    parts = [cbn.moments(x[i:i + 7], sample_weight=w[i:i + 7]) for i in range(0, 30, 7)]
    merged = cbn.merge_moments(*parts)
    np.testing.assert_allclose(merged.count, whole.count, rtol=1e-14)
    np.testing.assert_allclose(merged.mean, whole.mean, rtol=1e-14)
    np.testing.assert_allclose(merged.m2, whole.m2, rtol=1e-12)
    # an unmasked shard (an integer count) merges with masked ones
    mixed = cbn.merge_moments(cbn.moments(x[:5]), cbn.moments(x[5:], mask=np.ones((25, 20), bool)))
    np.testing.assert_allclose(mixed.mean, cbn.moments(x).mean, rtol=1e-14)
    np.testing.assert_allclose(mixed.var(1), cbn.moments(x).var(1), rtol=1e-12)


def test_a_channel_without_weight(rng):
    x = _data(rng, (6, 3, 10), np.float64)
    m = np.ones(x.shape, bool)
    m[:, 1] = False
    rm, rv = np.zeros(3), np.ones(3)
    with pytest.raises(ValueError, match="more than 1 value per channel.*channel\\(s\\) \\[1\\]"):
        cbn.batch_norm_forward(x, running_mean=rm, running_var=rv, mask=m)
    assert np.array_equal(rm, np.zeros(3)) and np.array_equal(rv, np.ones(3))
    f = cbn.batch_norm_forward(x, running_mean=rm, running_var=rv, mask=m, skip_nonfinite=True,
                               masked_output="zero")
    assert np.isnan(f.mean[1]) and rm[1] == 0 and rv[1] == 1 and rm[0] != 0
    assert np.all(f.out[:, 1] == 0)
    g = cbn.batch_norm_backward(np.ones_like(x), x, f.mean, f.invstd, mask=m,
                                masked_output="zero")
    assert np.all(g.dx[:, 1] == 0) and np.isfinite(g.dx).all()
    one = np.zeros((6, 10), bool)
    one[0, 0] = True
    with pytest.raises(ValueError, match="more than 1 value per channel"):
        cbn.batch_norm_forward(x, mask=one)
    with pytest.raises(ValueError, match="weight sum of 0.5"):
        cbn.batch_norm_forward(x, sample_weight=np.full((6, 10), 0.5 / 60))


@pytest.mark.parametrize("bad,kw,err,match", [
    ("shape", dict(mask=np.ones((6, 9), bool)), ValueError, "mask of shape \\(6, 9\\) fits neither"),
    ("dtype", dict(mask=np.ones((6, 10), np.int8)), TypeError, "mask must be a boolean array"),
    ("negative", dict(sample_weight=-np.ones((6, 10))), ValueError, "must be >= 0"),
    ("nan", dict(sample_weight=np.full((6, 10), np.nan)), ValueError, "must be finite"),
    ("bool weights", dict(sample_weight=np.ones((6, 10), bool)), TypeError, "pass it as mask="),
    ("both", dict(mask=np.ones((6, 10), bool), sample_weight=np.ones((6, 10))), ValueError,
     "not both"),
    ("option", dict(mask=np.ones((6, 10), bool), masked_output="pad"), ValueError,
     "masked_output must be one of"),
    ("option alone", dict(masked_output="zero"), ValueError, "applies with mask="),
])
def test_bad_masks_are_clear_errors_and_change_nothing(rng, bad, kw, err, match):
    x = _data(rng, (6, 3, 10), np.float64)
    rm, rv = np.zeros(3), np.ones(3)
    keep = x.copy()
    with pytest.raises(err, match=match):
        cbn.batch_norm_forward(x, running_mean=rm, running_var=rv, out=x, **kw)
    assert np.array_equal(x, keep) and np.array_equal(rm, np.zeros(3))
    with pytest.raises(err, match=match):
        cbn.batch_norm_backward(x, x, np.zeros(3), np.ones(3), **kw)


def test_evaluation_mode_and_masked_arrays_refuse_a_mask(rng):
    x = _data(rng, (6, 3, 10), np.float64)
    with pytest.raises(ValueError, match="training mode only"):
        cbn.batch_norm(x, np.zeros(3), np.ones(3), training=False,
                       mask=np.ones((6, 10), bool))
    ma = np.ma.masked_array(x, mask=x > 1)
    with pytest.raises(ValueError, match="MaskedArray.*not both"):
        cbn.batch_norm_forward(ma, mask=np.ones((6, 10), bool))


@pytest.mark.parametrize("per_position", [False, True])
def test_masked_arrays_are_honoured(rng, per_position):
    """A numpy.ma.MaskedArray's mask (True: hidden) is the complement of mask=; outputs hide
    the same values; hidden outliers change nothing."""
    x = _data(rng, (6, 3, 10), np.float64)
    hidden = rng.random((6, 1, 10) if per_position else x.shape) < 0.3
    hidden = np.broadcast_to(hidden, x.shape).copy()
    wild = np.where(hidden, 1e6, x)
    ma = np.ma.masked_array(wild, mask=hidden)
    expect = cbn.batch_norm_forward(x, mask=~hidden)
    f = cbn.batch_norm_forward(ma)
    assert isinstance(f.out, np.ma.MaskedArray) and np.array_equal(f.out.mask, hidden)
    np.testing.assert_allclose(f.mean, expect.mean, rtol=1e-14)
    np.testing.assert_allclose(f.out[~hidden], expect.out[~hidden], rtol=1e-12)
    np.testing.assert_allclose(cbn.moments(ma).mean, expect.mean, rtol=1e-14)
    dy = rng.standard_normal(x.shape)
    g = cbn.batch_norm_backward(dy, ma, f.mean, f.invstd)
    ge = cbn.batch_norm_backward(dy, wild, f.mean, f.invstd, mask=~hidden)
    assert isinstance(g.dx, np.ma.MaskedArray)
    np.testing.assert_allclose(g.dx.data, ge.dx, rtol=1e-12)
    y = cbn.batch_norm_inference(ma, np.zeros(3), np.ones(3))
    assert isinstance(y, np.ma.MaskedArray) and np.array_equal(y.mask, hidden)
    bn = cbn.BatchNorm(3, dtype=np.float64)
    out = bn(ma)
    assert isinstance(out, np.ma.MaskedArray)
    np.testing.assert_allclose(bn.running_mean, 0.1 * expect.mean, rtol=1e-13)
    assert isinstance(bn.backward(dy), np.ma.MaskedArray)


def test_against_torch_autograd(rng):
    """torch has no masked batch norm: the weighted one composed of its ops, in float64."""
    torch = pytest.importorskip("torch")
    x = _data(rng, (7, 4, 9), np.float64, 3.0)
    dy = rng.standard_normal(x.shape)
    w = rng.random((7, 9))
    w[w < 0.3] = 0
    wt, bs = rng.random(4) + 0.5, rng.standard_normal(4)
    xt = torch.tensor(x, requires_grad=True)
    wtt = torch.tensor(wt, requires_grad=True)
    bst = torch.tensor(bs, requires_grad=True)
    ww = torch.tensor(w)[:, None, :]
    total = ww.sum() * torch.ones(4, dtype=torch.float64)
    mean = (ww * xt).sum((0, 2)) / total
    var = (ww * (xt - mean[None, :, None]) ** 2).sum((0, 2)) / total
    y = ((xt - mean[None, :, None]) / torch.sqrt(var[None, :, None] + 1e-5)
         * wtt[None, :, None] + bst[None, :, None])
    y.backward(torch.tensor(dy))
    f = cbn.batch_norm_forward(x, wt, bs, sample_weight=w)
    g = cbn.batch_norm_backward(dy, x, f.mean, f.invstd, wt, sample_weight=w)
    np.testing.assert_allclose(f.out, y.detach().numpy(), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(g.dx, xt.grad.numpy(), rtol=1e-10, atol=1e-11)
    np.testing.assert_allclose(g.dweight, wtt.grad.numpy(), rtol=1e-10)
    np.testing.assert_allclose(g.dbias, bst.grad.numpy(), rtol=1e-10)


# ------------------------------------------------------------------------------ the layer
@pytest.mark.parametrize("convention", ["torch", "keras"])
@pytest.mark.parametrize("masked_output", ["normalize", "zero", "keep"])
@pytest.mark.parametrize("kind", ["mask", "float64"])
def test_layer_training_steps(rng, convention, masked_output, kind):
    """Two training steps and backward, against the functional reference; the mask is kept
    for backward."""
    shape, axis = (8, 10, 4), -1
    bn = cbn.BatchNorm(4, axis=axis, convention=convention, dtype=np.float64)
    bn.weight[:] = rng.random(4) + 0.5
    rm, rv = np.zeros(4), np.ones(4)
    momentum = 0.1 if convention == "torch" else 0.01  # the torch-semantics factor
    for step in range(2):
        x = _data(rng, shape, np.float64, 2.0)
        dy = rng.standard_normal(shape)
        kw = dict(_kw(kind, _weights(rng, shape, axis, kind, False)), masked_output=masked_output)
        y = bn(x, **kw)
        r = ref.batch_norm_forward(x, bn.weight, bn.bias, axis=axis, **kw)
        np.testing.assert_allclose(y, r.out, rtol=1e-12, atol=1e-13)
        wf = ref.sample_weights(x, axis, **{k: a for k, a in kw.items() if k != "masked_output"})
        total, mean, var = ref._weighted_stats(x, wf, (0, 1))
        batch_var = var * total / (total - 1) if convention == "torch" else var
        rm = (1 - momentum) * rm + momentum * mean
        rv = (1 - momentum) * rv + momentum * batch_var
        np.testing.assert_allclose(bn.running_mean, rm, rtol=1e-12)
        np.testing.assert_allclose(bn.running_var, rv, rtol=1e-12)
        bn.zero_grad()
        dx = bn.backward(dy)
        g = ref.batch_norm_backward(dy, x, r.mean, r.invstd, bn.weight, axis=axis, **kw)
        np.testing.assert_allclose(dx, g.dx, rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(bn.grad_weight, g.dweight, rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(bn.grad_bias, g.dbias, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("masked_output", ["normalize", "zero", "keep"])
def test_layer_evaluation_with_a_mask(rng, masked_output):
    """Evaluation mode with running statistics: the mask does not change the statistics (as
    Keras); masked_output still applies, and backward is the gradient of that output."""
    x = _data(rng, (6, 3, 5), np.float64)
    dy = rng.standard_normal(x.shape)
    m = rng.random((6, 5)) < 0.6
    bn = cbn.BatchNorm(3, dtype=np.float64)
    bn.running_mean[:] = rng.standard_normal(3)
    bn.running_var[:] = rng.random(3) + 0.5
    bn.weight[:] = rng.random(3) + 0.5
    bn.eval()
    plain = cbn.batch_norm_inference(x, bn.running_mean, bn.running_var, bn.weight, bn.bias)
    pad = ~m[:, None, :]
    expect = np.where(pad, {"normalize": plain, "zero": 0.0, "keep": x}[masked_output], plain)
    np.testing.assert_allclose(bn(x, mask=m, masked_output=masked_output), expect, rtol=1e-14)
    dx = bn.backward(dy)
    scale = (bn.weight / np.sqrt(bn.running_var + bn.eps))[None, :, None]
    g = dy if masked_output == "normalize" else np.where(pad, 0.0, dy)
    want = g * scale if masked_output != "keep" else np.where(pad, dy, g * scale)
    np.testing.assert_allclose(dx, want, rtol=1e-13)
    xhat = (x - bn.running_mean[None, :, None]) / np.sqrt(bn.running_var + bn.eps)[None, :, None]
    np.testing.assert_allclose(bn.grad_weight, (g * xhat).sum((0, 2)), rtol=1e-12)


def test_layer_matches_keras_with_a_mask(rng):
    """Keras 3's BatchNormalization(mask=...) on a padded (N, T, C) batch, several training
    steps: outputs and moving statistics (Keras divides by sum(mask) + 1e-7: float32
    tolerance)."""
    import os
    os.environ.setdefault("KERAS_BACKEND", "numpy")  # Keras 3 on NumPy (it imports jax)
    keras = pytest.importorskip("keras")
    N, T, C = 8, 12, 5
    kl = keras.layers.BatchNormalization(epsilon=1e-3)
    bn = cbn.BatchNorm(C, axis=-1, convention="keras", eps=1e-3)
    for step in range(3):
        x = _data(rng, (N, T, C), np.float32, 1.5)
        lengths = rng.integers(2, T + 1, N)
        m = np.arange(T)[None, :] < lengths[:, None]
        x[~m] = 1e4  # padding values far off: they must not enter the statistics
        yk = np.asarray(kl(x, training=True, mask=m))
        y = bn(x, mask=m)
        np.testing.assert_allclose(y, yk, rtol=1e-4, atol=1e-4)  # padding normalized too
        np.testing.assert_allclose(bn.running_mean, np.asarray(kl.moving_mean), rtol=1e-5,
                                   atol=1e-6)
        np.testing.assert_allclose(bn.running_var, np.asarray(kl.moving_variance), rtol=1e-5)


@pytest.mark.parametrize("masked_output", ["normalize", "zero", "keep"])
def test_the_syncbn_recipe_with_a_mask(rng, masked_output):
    """moments -> merge_moments -> normalize, backward_reduce -> sum -> backward_elemt over
    three shards equals the masked functions on the whole batch."""
    x = _data(rng, (12, 3, 8), np.float64, 1.0)
    dy = rng.standard_normal(x.shape)
    w = _weights(rng, x.shape, 1, "float64", True)
    wt = rng.random(3) + 0.5
    kw = dict(sample_weight=w, masked_output=masked_output)
    f = cbn.batch_norm_forward(x, wt, None, **kw)
    g = cbn.batch_norm_backward(dy, x, f.mean, f.invstd, wt, **kw)
    shards = [slice(0, 5), slice(5, 6), slice(6, 12)]
    m = cbn.merge_moments(*[cbn.moments(x[s], sample_weight=w[s]) for s in shards])
    np.testing.assert_allclose(m.mean, f.mean, rtol=1e-13)
    np.testing.assert_allclose(m.invstd(), f.invstd, rtol=1e-13)
    sums = [cbn.backward_reduce(dy[s], x[s], m.mean, sample_weight=w[s],
                                masked_output=masked_output) for s in shards]
    sdy = sum(p.sum_dy for p in sums)
    sdyx = sum(p.sum_dy_xmu for p in sums)
    dx = np.concatenate([cbn.backward_elemt(dy[s], x[s], m.mean, m.invstd(), wt, sdy, sdyx,
                                            m.count, sample_weight=w[s],
                                            masked_output=masked_output) for s in shards])
    np.testing.assert_allclose(dx, g.dx, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(sdyx * m.invstd(), g.dweight, rtol=1e-10)
    np.testing.assert_allclose(sdy, g.dbias, rtol=1e-10, atol=1e-12)


# ------------------------------------------------------------------------------ Dask
@pytest.mark.parametrize("masked_output", ["normalize", "zero", "keep"])
@pytest.mark.parametrize("per_element", [False, True])
def test_dask_matches_in_memory(rng, masked_output, per_element):
    da = pytest.importorskip("dask.array")
    import cbn.dask as cd
    x = _data(rng, (20, 4, 30), np.float64, 2.0)
    dy = rng.standard_normal(x.shape)
    m = _weights(rng, x.shape, 1, "mask", per_element)
    wt = rng.random(4) + 0.5
    kw = dict(mask=m, masked_output=masked_output)
    rm, rv = np.zeros(4), np.ones(4)
    rm2, rv2 = rm.copy(), rv.copy()
    f = cbn.batch_norm_forward(x, wt, None, running_mean=rm, running_var=rv, **kw)
    xd = da.from_array(x, chunks=(7, 4, 11))
    md = da.from_array(m, chunks=(5, 4, 13) if per_element else (6, 8))
    fd = cd.batch_norm_forward(xd, wt, None, running_mean=rm2, running_var=rv2, mask=md,
                               masked_output=masked_output)
    np.testing.assert_allclose(fd.out.compute(), f.out, rtol=1e-12, atol=1e-13)
    np.testing.assert_allclose(fd.mean, f.mean, rtol=1e-13)
    np.testing.assert_allclose(rm2, rm, rtol=1e-13)
    np.testing.assert_allclose(rv2, rv, rtol=1e-13)
    g = cbn.batch_norm_backward(dy, x, f.mean, f.invstd, wt, **kw)
    gd = cd.batch_norm_backward(da.from_array(dy, chunks=(7, 4, 11)), xd, f.mean, f.invstd, wt,
                                mask=m, masked_output=masked_output)  # a NumPy mask works too
    np.testing.assert_allclose(gd.dx.compute(), g.dx, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(gd.dweight, g.dweight, rtol=1e-10)
    np.testing.assert_allclose(gd.dbias, g.dbias, rtol=1e-10, atol=1e-12)


def test_dask_bad_masks(rng):
    da = pytest.importorskip("dask.array")
    import cbn.dask as cd
    xd = da.from_array(_data(rng, (20, 4, 30), np.float64), chunks=(7, 4, 11))
    with pytest.raises(ValueError, match="fits neither"):
        cd.batch_norm_forward(xd, mask=np.ones((20, 29), bool))
    with pytest.raises(TypeError, match="boolean"):
        cd.batch_norm_forward(xd, mask=np.ones((20, 30)))
    with pytest.raises(ValueError, match=">= 0"):
        cd.batch_norm_forward(xd, sample_weight=-np.ones((20, 30)))
    with pytest.raises(ValueError, match="not both"):
        cd.batch_norm_forward(xd, mask=np.ones((20, 30), bool), sample_weight=np.ones((20, 30)))


@pytest.mark.parametrize("masked_output", ["normalize", "zero", "keep"])
def test_dask_fused_activation_and_residual_with_a_mask(rng, masked_output):
    da = pytest.importorskip("dask.array")
    import cbn.dask as cd
    x = _data(rng, (20, 4, 30), np.float64, 0.5)
    dy = rng.standard_normal(x.shape)
    res = rng.standard_normal(x.shape)
    m = _weights(rng, x.shape, 1, "mask", False)
    wt, bs = rng.random(4) + 0.5, rng.standard_normal(4)
    kw = dict(mask=m, masked_output=masked_output, activation="silu")
    f = cbn.batch_norm_forward(x, wt, bs, residual=res, **kw)
    g = cbn.batch_norm_backward(dy, x, f.mean, f.invstd, wt, bias=bs, residual=res, **kw)
    ch = (7, 4, 11)
    gd = cd.batch_norm_backward(da.from_array(dy, chunks=ch), da.from_array(x, chunks=ch),
                                f.mean, f.invstd, wt, bias=bs,
                                residual=da.from_array(res, chunks=ch), **kw)
    np.testing.assert_allclose(gd.dx.compute(), g.dx, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(gd.dresidual.compute(), g.dresidual, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(gd.dweight, g.dweight, rtol=1e-10)


# ------------------------------------------------------------------------------ review cases
@pytest.mark.parametrize("masked_output", ["zero", "keep"])
@pytest.mark.parametrize("shape,axis", [((4, 3, 5), 1), ((4, 5, 3), -1)])
def test_nan_in_padding_stays_out_of_the_gradients(rng, masked_output, shape, axis):
    """With the padding zeroed or kept, its output does not depend on x: NaN there changes
    no gradient (functions, SyncBN blocks, the layer in both modes)."""
    x = _data(rng, shape, np.float64)
    dy = rng.standard_normal(shape)
    m = np.ones(_positions(shape, axis), bool)
    m[:, 3:] = False
    wild = x.copy()
    wild[np.broadcast_to(np.expand_dims(~m, axis % 3), shape)] = np.nan
    kw = dict(mask=m, masked_output=masked_output, axis=axis)
    f = cbn.batch_norm_forward(x, **kw)
    clean = cbn.batch_norm_backward(dy, x, f.mean, f.invstd, **kw)
    got = cbn.batch_norm_backward(dy, wild, f.mean, f.invstd, **kw)
    for a, b in zip(got, clean):
        np.testing.assert_array_equal(a, b)
    s = cbn.backward_reduce(dy, wild, f.mean, **kw)
    np.testing.assert_allclose(s.sum_dy_xmu * f.invstd, clean.dweight, rtol=1e-12)
    count = cbn.moments(wild, mask=m, axis=axis).count
    dx = cbn.backward_elemt(dy, wild, f.mean, f.invstd, None, *s, count, **kw)
    np.testing.assert_allclose(dx, clean.dx, rtol=1e-12, atol=1e-14)
    bn = cbn.BatchNorm(shape[axis], axis=axis, dtype=np.float64)
    bn(wild, mask=m, masked_output=masked_output)
    assert np.isfinite(bn.backward(dy)).all() and np.isfinite(bn.grad_weight).all()
    bn.eval()
    bn(wild, mask=m, masked_output=masked_output)
    bn.zero_grad()
    assert np.isfinite(bn.backward(dy)).all() and np.isfinite(bn.grad_weight).all()


def test_keep_with_out_over_dy(rng):
    x = _data(rng, (4, 3, 5), np.float64)
    dy = rng.standard_normal(x.shape)
    res = rng.standard_normal(x.shape)
    m = rng.random((4, 5)) < 0.6
    kw = dict(mask=m, masked_output="keep")
    f = cbn.batch_norm_forward(x, **kw)
    want = cbn.batch_norm_backward(dy, x, f.mean, f.invstd, **kw)
    d = dy.copy()
    got = cbn.batch_norm_backward(d, x, f.mean, f.invstd, out=d, **kw)
    np.testing.assert_array_equal(got.dx, want.dx)
    wantr = cbn.batch_norm_backward(dy, x, f.mean, f.invstd, residual=res, **kw)
    d = dy.copy()
    gotr = cbn.batch_norm_backward(d, x, f.mean, f.invstd, residual=res, dresidual_out=d, **kw)
    np.testing.assert_array_equal(gotr.dx, wantr.dx)
    np.testing.assert_array_equal(gotr.dresidual, wantr.dresidual)
    s = cbn.backward_reduce(dy, x, f.mean, **kw)
    d = dy.copy()
    cbn.backward_elemt(d, x, f.mean, f.invstd, None, *s, cbn.moments(x, mask=m).count,
                       out=d, **kw)
    np.testing.assert_allclose(d, want.dx, rtol=1e-12, atol=1e-14)
    bn = cbn.BatchNorm(3, dtype=np.float64)
    bn(x, **kw)
    d = dy.copy()
    np.testing.assert_array_equal(bn.backward(d, out=d), want.dx)


@pytest.mark.parametrize("masked_output", ["zero", "keep"])
def test_an_empty_channel_has_zero_parameter_gradients(rng, masked_output):
    x = _data(rng, (6, 3, 10), np.float64)
    m = np.ones(x.shape, bool)
    m[:, 1] = False
    kw = dict(mask=m, masked_output=masked_output)
    f = cbn.batch_norm_forward(x, skip_nonfinite=True, **kw)
    g = cbn.batch_norm_backward(rng.standard_normal(x.shape), x, f.mean, f.invstd, np.ones(3),
                                **kw)
    assert g.dweight[1] == 0 and g.dbias[1] == 0 and np.isfinite(g.dweight).all()


def test_odd_inputs_of_the_review(rng):
    x = _data(rng, (4, 3, 5), np.float64)
    raw = np.array([[2, 0, 1, 1, 2]] * 4, np.uint8)  # bool views of other bytes than 0, 1
    a, b = cbn.moments(x, mask=raw.view(bool)), cbn.moments(x, mask=raw != 0)
    for p, q in zip(a, b):
        np.testing.assert_array_equal(p, q)
    with pytest.raises(ValueError, match=r"fewer dimensions.*\(4, 1\) for one weight per"):
        cbn.moments(x, sample_weight=np.ones(4))
    with pytest.raises(ValueError, match="overflow"):
        cbn.batch_norm_forward(x, sample_weight=np.full((4, 5), 1e307))
    ml = pytest.importorskip("ml_dtypes")
    w = rng.random((4, 5))
    np.testing.assert_allclose(cbn.moments(x, sample_weight=w.astype(ml.bfloat16)).mean,
                               cbn.moments(x, sample_weight=w.astype(ml.bfloat16)
                                           .astype(np.float32)).mean, rtol=0)


def test_normalize_applies_the_padding_option(rng):
    x = _data(rng, (6, 3, 10), np.float64)
    m = rng.random((6, 10)) < 0.7
    mo = cbn.moments(x, mask=m)
    for opt in ("zero", "keep"):
        y = cbn.normalize(x, mo.mean, mo.invstd(), mask=m, masked_output=opt)
        np.testing.assert_allclose(y, cbn.batch_norm_forward(x, mask=m, masked_output=opt).out,
                                   rtol=1e-13, atol=1e-14)


def test_dask_unknown_chunk_sizes_with_a_mask(rng):
    da = pytest.importorskip("dask.array")
    import cbn.dask as cd
    X = da.from_array(_data(rng, (4, 3, 5), np.float64), chunks=(2, 3, 5))
    xu = X[X[:, 0, 0] > -100]
    with pytest.raises(ValueError, match="compute_chunk_sizes"):
        cd.batch_norm_forward(xu, mask=np.ones((4, 5), bool))
