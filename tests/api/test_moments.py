"""The scale-out building blocks: moments, merge_moments, normalize, backward_reduce/elemt."""

import pickle

import numpy as np
import pytest

import cbn
from cbn import reference as ref

RNG = np.random.default_rng(20261121)


def _np_moments(x, axis):
    x64 = np.asarray(x, dtype=np.float64)
    axis = axis % x.ndim
    red = tuple(i for i in range(x.ndim) if i != axis)
    n = x.size // x.shape[axis]
    return n, x64.mean(axis=red), x64.var(axis=red) * n


def _data(shape, dtype, offset=0.0, scale=1.0, rng=RNG):
    return (offset + scale * rng.standard_normal(shape)).astype(dtype)


SHAPES_AXES = [
    ((7, 3), 1),
    ((6, 5, 9), 1),
    ((4, 3, 6, 5), 1),
    ((4, 6, 5, 3), -1),
    ((4, 6, 5, 3), 2),
    ((3, 2, 1000), 1),      # few channels, long rows (segment path)
    ((500, 17), 1),         # channels-last, many rows
]


# ------------------------------------------------------------------------------------ moments

@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape,axis", SHAPES_AXES)
def test_moments_match_numpy(shape, axis, dtype):
    x = _data(shape, dtype, offset=2.0, scale=3.0)
    m = cbn.moments(x, axis=axis)
    n, mean, m2 = _np_moments(x, axis)
    assert isinstance(m, cbn.Moments)
    assert type(m.count) is int and m.count == n
    assert m.mean.dtype == np.float64 and m.m2.dtype == np.float64
    np.testing.assert_allclose(m.mean, mean, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(m.m2, m2, rtol=1e-10)
    np.testing.assert_allclose(m.var(), m2 / n, rtol=1e-10)
    np.testing.assert_allclose(m.var(ddof=1), m2 / (n - 1), rtol=1e-10)


def test_moments_match_forward_stats():
    x = _data((8, 4, 7, 7), np.float32, offset=5.0)
    f = cbn.batch_norm_forward(x, eps=1e-3)
    m = cbn.moments(x)
    np.testing.assert_allclose(m.mean, f.mean, rtol=0, atol=1e-14)
    np.testing.assert_allclose(m.invstd(1e-3), f.invstd, rtol=1e-14)
    r = ref.batch_norm_forward(x.astype(np.float64), eps=1e-3)
    np.testing.assert_allclose(m.invstd(1e-3), r.invstd, rtol=1e-10)


def test_moments_layouts_and_threads():
    base = _data((5, 4, 6, 3), np.float64)
    m_c = cbn.moments(base, axis=1)
    m_f = cbn.moments(np.asfortranarray(base), axis=1)
    nhwc = np.ascontiguousarray(base.transpose(0, 2, 3, 1)).transpose(0, 3, 1, 2)
    m_cl = cbn.moments(nhwc, axis=1)
    m_strided = cbn.moments(np.repeat(base, 2, axis=0)[::2], axis=1)
    m_1 = cbn.moments(base, axis=1, num_threads=1)
    for m in (m_f, m_cl, m_strided, m_1):
        assert m.count == m_c.count
        np.testing.assert_allclose(m.mean, m_c.mean, rtol=1e-14, atol=1e-15)
        np.testing.assert_allclose(m.m2, m_c.m2, rtol=1e-13)
    # threads do not change the bits
    np.testing.assert_array_equal(m_1.mean, cbn.moments(base, axis=1, num_threads=2).mean)
    np.testing.assert_array_equal(m_1.m2, cbn.moments(base, axis=1, num_threads=2).m2)


def test_moments_empty_is_neutral():
    x = np.empty((0, 3, 4), np.float32)
    m = cbn.moments(x)
    assert m.count == 0
    np.testing.assert_array_equal(m.mean, 0.0)
    np.testing.assert_array_equal(m.m2, 0.0)
    assert np.isnan(m.var()).all()
    y = _data((5, 3, 4), np.float32)
    mm = cbn.merge_moments(m, cbn.moments(y), m)
    ref_m = cbn.moments(y)
    assert mm.count == 20
    np.testing.assert_array_equal(mm.mean, ref_m.mean)
    np.testing.assert_array_equal(mm.m2, ref_m.m2)


def test_moments_pickle_and_tuple():
    m = cbn.moments(_data((4, 3), np.float64))
    m2 = pickle.loads(pickle.dumps(m))
    assert isinstance(m2, cbn.Moments) and m2.count == m.count
    _count, mean, _m2 = m
    np.testing.assert_array_equal(mean, m2.mean)


# ------------------------------------------------------------------------------------ merge

def _random_splits(n, k, rng, allow_empty=True):
    """k cut points in [0, n] (sorted, repeats allowed when allow_empty) -> k+1 pieces."""
    cuts = np.sort(rng.integers(0, n + 1, size=k))
    if not allow_empty:
        cuts = np.unique(np.clip(cuts, 1, n - 1))
    return np.split(np.arange(n), cuts)


def _tree_merge(parts, rng):
    """Merge parts in a random grouping (random binary tree, random fan-in)."""
    parts = list(parts)
    while len(parts) > 1:
        i = int(rng.integers(0, len(parts) - 1))
        k = int(rng.integers(2, min(4, len(parts) - i) + 1)) if len(parts) - i >= 2 else 2
        parts[i:i + k] = [cbn.merge_moments(*parts[i:i + k])]
    return parts[0]


@pytest.mark.parametrize("seed", range(12))
def test_merge_random_shards_any_grouping(seed):
    rng = np.random.default_rng(seed)
    axis = [1, -1, 0][seed % 3]
    dtype = [np.float32, np.float64][seed % 2]
    shape = [(int(rng.integers(5, 40)), 4, 6), (int(rng.integers(5, 40)), 3, 5, 2)][seed % 2]
    x = _data(shape, dtype, offset=float(rng.normal(0, 10)), scale=float(rng.uniform(0.1, 5)),
              rng=rng)
    ax = axis % x.ndim
    split_axis = 0 if ax != 0 else x.ndim - 1
    pieces = _random_splits(x.shape[split_axis], int(rng.integers(1, 8)), rng)
    shards = [np.take(x, idx, axis=split_axis) for idx in pieces]
    parts = [cbn.moments(s, axis=axis) for s in shards]
    whole = cbn.moments(x, axis=axis)
    n, mean, m2 = _np_moments(x, axis)
    for merged in (cbn.merge_moments(*parts), _tree_merge(parts, rng),
                   _tree_merge(parts[::-1], rng)):
        assert merged.count == whole.count == n
        np.testing.assert_allclose(merged.mean, whole.mean, rtol=1e-13, atol=1e-13)
        np.testing.assert_allclose(merged.m2, whole.m2, rtol=1e-12)
        np.testing.assert_allclose(merged.mean, mean, rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(merged.m2, m2, rtol=1e-10)


def test_merge_with_explicit_empty_shards_and_tuples():
    x = _data((10, 3, 4), np.float64)
    e = np.empty((0, 3, 4))
    parts = [cbn.moments(e), tuple(cbn.moments(x[:4])), cbn.moments(e),
             (24, *cbn.moments(x[4:])[1:])]
    # an empty part's mean/m2 are never read: NaN there is harmless
    parts.append(cbn.Moments(0, np.full(3, np.nan), np.full(3, np.nan)))
    m = cbn.merge_moments(*parts)
    w = cbn.moments(x)
    assert m.count == 40
    np.testing.assert_allclose(m.mean, w.mean, rtol=1e-14, atol=1e-15)
    np.testing.assert_allclose(m.m2, w.m2, rtol=1e-13)
    all_empty = cbn.merge_moments(cbn.moments(e), cbn.moments(e))
    assert all_empty.count == 0 and all_empty.mean.shape == (3,)


def test_merge_single_part_is_a_copy():
    m = cbn.moments(_data((4, 3), np.float64))
    mm = cbn.merge_moments(m)
    assert mm.count == m.count
    np.testing.assert_array_equal(mm.mean, m.mean)
    assert not np.shares_memory(mm.mean, m.mean)


def test_merge_large_offset_float32():
    """float32 data with mean 1e6, std 1, split into uneven shards: relative var error < 1e-6."""
    rng = np.random.default_rng(7)
    x = (1e6 + rng.standard_normal((64, 3, 50))).astype(np.float32)
    x64 = x.astype(np.float64)            # the same values, exactly
    true_var = x64.var(axis=(0, 2))       # numpy's two-pass in float64 on the exact values
    shards = np.split(x, [1, 2, 10, 10, 33, 63], axis=0)
    merged = cbn.merge_moments(*(cbn.moments(s) for s in shards))
    rel = np.abs(merged.var() - true_var) / true_var
    assert rel.max() < 1e-6, rel
    np.testing.assert_allclose(merged.mean, x64.mean(axis=(0, 2)), rtol=1e-15)
    # the naive sum / sum-of-squares all-reduce fails on the same data (what merge avoids)
    s1 = sum(s.astype(np.float64).sum(axis=(0, 2)) for s in shards)
    s2 = sum((s.astype(np.float64) ** 2).sum(axis=(0, 2)) for s in shards)
    n = x.size // 3
    naive = s2 / n - (s1 / n) ** 2
    assert (np.abs(naive - true_var) / true_var).max() > 1e-6


def test_merge_validation():
    m = cbn.moments(_data((4, 3), np.float64))
    with pytest.raises(ValueError, match="at least one"):
        cbn.merge_moments()
    with pytest.raises(TypeError, match=r"parts\[1\]"):
        cbn.merge_moments(m, 3)
    with pytest.raises(ValueError, match=r"parts\[1\]\.mean"):
        cbn.merge_moments(m, cbn.moments(_data((4, 5), np.float64)))
    with pytest.raises(ValueError, match=r"parts\[0\]\.count"):
        cbn.merge_moments((-1, m.mean, m.m2))
    with pytest.raises(TypeError, match=r"parts\[0\]\.count"):
        cbn.merge_moments((1.5, m.mean, m.m2))
    with pytest.raises(TypeError, match=r"parts\[0\]\.m2"):
        cbn.merge_moments((4, m.mean, np.arange(3) * 1j))


def test_moments_validation():
    with pytest.raises(TypeError, match="x must be a float16, bfloat16, float32 or float64"):
        cbn.moments(np.arange(12).reshape(4, 3))
    with pytest.raises(ValueError, match="at least 2 dimensions"):
        cbn.moments(np.zeros(4))
    with pytest.raises(ValueError, match="axis=3"):
        cbn.moments(np.zeros((4, 3)), axis=3)
    with pytest.raises(ValueError, match="num_threads"):
        cbn.moments(np.zeros((4, 3)), num_threads=0)
    with pytest.raises(ValueError, match="eps"):
        cbn.moments(np.ones((4, 3))).invstd(0.0)


# ------------------------------------------------------------------------------------ normalize

@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape,axis", SHAPES_AXES[:5])
def test_normalize_equals_inference(shape, axis, dtype):
    x = _data(shape, dtype, offset=1.0, scale=2.0)
    C = x.shape[axis]
    mean, var = RNG.normal(size=C), RNG.uniform(0.5, 2, size=C)
    w, b = RNG.normal(size=C), RNG.normal(size=C)
    eps = 1e-4
    invstd = 1.0 / np.sqrt(var + eps)
    expect = cbn.batch_norm_inference(x, mean, var, w, b, eps=eps, axis=axis)
    got = cbn.normalize(x, mean, invstd, w, b, axis=axis)
    assert got.dtype == x.dtype and got.shape == x.shape
    tol = 1e-6 if dtype == np.float32 else 1e-13
    np.testing.assert_allclose(got, expect, rtol=tol, atol=tol)
    # no affine
    np.testing.assert_allclose(cbn.normalize(x, mean, invstd, axis=axis),
                               cbn.batch_norm_inference(x, mean, var, eps=eps, axis=axis),
                               rtol=tol, atol=tol)


def test_normalize_out_and_in_place():
    x = _data((4, 3, 5), np.float32)
    m = cbn.moments(x)
    expect = cbn.batch_norm_forward(x).out
    out = np.empty_like(x)
    r = cbn.normalize(x, m.mean, m.invstd(), out=out)
    assert r is out
    np.testing.assert_allclose(out, expect, rtol=1e-6, atol=1e-6)
    xc = x.copy()
    r = cbn.normalize(xc, m.mean, m.invstd(), out=xc)
    assert r is xc
    np.testing.assert_allclose(xc, expect, rtol=1e-6, atol=1e-6)
    # a transposed out takes a copy-back
    out_f = np.empty(x.shape, x.dtype, order="F")
    np.testing.assert_allclose(cbn.normalize(x, m.mean, m.invstd(), out=out_f), expect,
                               rtol=1e-6, atol=1e-6)


def test_normalize_validation():
    x = np.zeros((4, 3, 2), np.float32)
    with pytest.raises(ValueError, match="mean must have shape"):
        cbn.normalize(x, np.zeros(2), np.ones(3))
    with pytest.raises(ValueError, match="invstd must have shape"):
        cbn.normalize(x, np.zeros(3), np.ones(4))
    with pytest.raises(TypeError, match="weight"):
        cbn.normalize(x, np.zeros(3), np.ones(3), weight=np.arange(3) * 1j)
    with pytest.raises(TypeError, match="out must have dtype"):
        cbn.normalize(x, np.zeros(3), np.ones(3), out=np.zeros(x.shape))


# ------------------------------------------------------------------------------------ backward

@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("axis", [1, -1])
@pytest.mark.parametrize("with_weight", [True, False])
def test_backward_over_shards_equals_whole(dtype, axis, with_weight):
    rng = np.random.default_rng(3)
    x = _data((13, 4, 5, 6), dtype, offset=3.0, rng=rng)
    dy = _data(x.shape, dtype, rng=rng)
    C = x.shape[axis]
    w = rng.normal(size=C).astype(np.float32) if with_weight else None
    eps = 1e-5
    f = cbn.batch_norm_forward(x, w, eps=eps, axis=axis)
    whole = cbn.batch_norm_backward(dy, x, f.mean, f.invstd, w, axis=axis)
    pieces = np.split(np.arange(13), [0, 3, 3, 9])  # includes empty shards
    xs = [x[p] for p in pieces]
    dys = [dy[p] for p in pieces]
    # forward from merged moments
    m = cbn.merge_moments(*(cbn.moments(s, axis=axis) for s in xs))
    np.testing.assert_allclose(m.mean, f.mean, rtol=1e-13, atol=1e-13)
    np.testing.assert_allclose(m.invstd(eps), f.invstd, rtol=1e-12)
    outs = [cbn.normalize(s, m.mean, m.invstd(eps), w, axis=axis) for s in xs]
    tol = 2e-5 if dtype == np.float32 else 1e-12
    np.testing.assert_allclose(np.concatenate(outs), f.out, rtol=tol, atol=tol)
    # backward: reduce -> all-reduce (sum) -> elemt
    sums = [cbn.backward_reduce(g, s, m.mean, axis=axis) for g, s in zip(dys, xs)]
    assert all(isinstance(s, cbn.BackwardSums) for s in sums)
    sdy = sum(s.sum_dy for s in sums)
    sdyx = sum(s.sum_dy_xmu for s in sums)
    iv = m.invstd(eps)
    dxs = [cbn.backward_elemt(g, s, m.mean, iv, w, sdy, sdyx, m.count, axis=axis)
           for g, s in zip(dys, xs)]
    np.testing.assert_allclose(np.concatenate(dxs), whole.dx, rtol=tol, atol=tol)
    np.testing.assert_allclose(sdyx * iv, whole.dweight, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(sdy, whole.dbias, rtol=1e-5, atol=1e-5)
    # and against the float64 NumPy oracle
    r = ref.batch_norm_backward(dy.astype(np.float64), x.astype(np.float64), f.mean, f.invstd,
                                None if w is None else w.astype(np.float64), axis=axis)
    np.testing.assert_allclose(np.concatenate(dxs), r.dx, rtol=tol * 10, atol=tol * 10)
    np.testing.assert_allclose(sdy, r.dbias, rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(sdyx * iv, r.dweight, rtol=1e-10, atol=1e-10)


def test_backward_elemt_out_aliases():
    rng = np.random.default_rng(5)
    x = _data((6, 3, 4), np.float64, rng=rng)
    dy = _data(x.shape, np.float64, rng=rng)
    m = cbn.moments(x)
    s = cbn.backward_reduce(dy, x, m.mean)
    expect = cbn.backward_elemt(dy, x, m.mean, m.invstd(), None, *s, m.count)
    dy2 = dy.copy()
    r = cbn.backward_elemt(dy2, x, m.mean, m.invstd(), None, *s, m.count, out=dy2)
    assert r is dy2
    np.testing.assert_allclose(dy2, expect, rtol=1e-14, atol=1e-14)
    x2 = x.copy()
    r = cbn.backward_elemt(dy, x2, m.mean, m.invstd(), None, *s, m.count, out=x2)
    np.testing.assert_allclose(x2, expect, rtol=1e-14, atol=1e-14)


def test_backward_validation():
    x = np.zeros((4, 3, 2), np.float32)
    dy = np.zeros_like(x)
    mean = np.zeros(3)
    with pytest.raises(ValueError, match="dy must have the shape"):
        cbn.backward_reduce(dy[:2], x, mean)
    with pytest.raises(TypeError, match="dy must have the dtype"):
        cbn.backward_reduce(dy.astype(np.float64), x, mean)
    with pytest.raises(ValueError, match="mean must have shape"):
        cbn.backward_reduce(dy, x, np.zeros(4))
    args = (dy, x, mean, np.ones(3), None, np.zeros(3), np.zeros(3))
    with pytest.raises(ValueError, match="count"):
        cbn.backward_elemt(*args, 7)            # fewer than the local 8 values per channel
    with pytest.raises(TypeError, match="count"):
        cbn.backward_elemt(*args, "8")
    with pytest.raises(ValueError, match="sum_dy_xmu must have shape"):
        cbn.backward_elemt(dy, x, mean, np.ones(3), None, np.zeros(3), np.zeros(2), 8)
    with pytest.raises(ValueError, match="invstd must have shape"):
        cbn.backward_elemt(dy, x, mean, np.ones(2), None, np.zeros(3), np.zeros(3), 8)
    # an integral float count is accepted (it may come out of a float all-reduce)
    cbn.backward_elemt(*args, 16.0)
