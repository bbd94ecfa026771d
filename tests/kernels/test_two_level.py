"""The two-level statistics of float16 and bfloat16 data (src/kernels_statistics.pxi):
float32 partials of 8 (runs) or 4 (columns) terms about a per-channel centre, a certificate per
channel, and a second pass where the certificate cannot prove the bound; and the two-level
backward sums (src/kernels_backward.pxi).

Every layout path is covered (channel-major rows of short runs, long runs in pieces, few
channels split into segments, the fused per-channel forward; channels-last tiles, the columns a
tile leaves over), at every SIMD level the CPU runs (the ``level`` fixture)."""

import numpy as np
import pytest

import cbn

from helpers import TWO_LEVEL

LAYOUTS = [
    ((16, 24, 7, 7), 1),      # channel-major short runs: the rows tasks
    ((2, 3, 70000), 1),       # runs longer than a block: pieces
    ((4, 1, 200, 200), 1),    # one channel: (channel, segment) tasks
    ((8, 32, 40, 40), 1),     # channel-major runs of 1600: the rows tasks, several blocks
    ((4096, 40), 1),          # channels-last: tiles and left-over columns
    ((64, 6, 6, 64), -1),     # channels-last NHWC, C = 64
    ((300, 5), 1),            # narrow channels-last: columns only
]
IDS = [f"{s}-ax{a}" for s, a in LAYOUTS]


def _formats():
    out = [np.float16]
    try:
        import ml_dtypes
        out.append(ml_dtypes.bfloat16)
    except ImportError:
        pass
    return out


FORMATS = _formats()
FORMAT_IDS = [np.dtype(d).name for d in FORMATS]


def _exact(x, axis):
    x64 = x.astype(np.float64)
    red = tuple(i for i in range(x.ndim) if i != axis % x.ndim)
    return x64.mean(axis=red), x64.var(axis=red), red


def _errors(x, axis, nt=2):
    m = cbn.moments(x, axis=axis, num_threads=nt)
    mean, var, _ = _exact(x, axis)
    std = np.sqrt(var)
    return np.abs(m.mean - mean) / std, np.abs(m.var() - var) / var


@pytest.mark.parametrize("dt", FORMATS, ids=FORMAT_IDS)
@pytest.mark.parametrize("shape,axis", LAYOUTS, ids=IDS)
@pytest.mark.parametrize("kind", ["normal", "offset", "skewed"])
def test_within_the_bound_and_two_level_on_ordinary_data(level, rng, shape, axis, dt, kind):
    """The variance within 2^-20 relative and the mean within 2^-20 standard deviations; and
    on ordinary data the fast path is really taken: its error is float32-sized, not the
    ~1e-15 of the float64 sums (a certificate that refused everything would pass the bound)."""
    z = rng.standard_normal(shape)
    x = {"normal": z, "offset": 300.0 + z, "skewed": np.exp(z)}[kind].astype(dt)
    mean_err, var_err = _errors(x, axis)
    assert mean_err.max() <= TWO_LEVEL and var_err.max() <= TWO_LEVEL, (mean_err, var_err)
    if kind != "offset":  # offset 16-bit data has few digits left: its float32 sums are exact
        assert var_err.max() > 1e-12, var_err


@pytest.mark.parametrize("dt", FORMATS, ids=FORMAT_IDS)
@pytest.mark.parametrize("offset", [10.0, 1e3])
def test_large_offsets_keep_the_promise(level, rng, dt, offset):
    """Offsets up to what the format keeps digits for: within 1e-6 in every layout."""
    for shape, axis in LAYOUTS:
        x = (offset + rng.standard_normal(shape) * offset / 100).astype(dt)
        mean, var, _ = _exact(x, axis)
        if (var == 0).any():
            continue
        _, var_err = _errors(x, axis)
        assert var_err.max() < 1e-6, (shape, var_err.max())


def _sample_positions_cm(shape, axis, x):
    """The flat offsets of the channel-major centre's sample (8 lines of 64 bytes) per
    channel: a copy of _pilot_cm's rule (CBN_PILOT_LINES)."""
    outer = int(np.prod(shape[:axis]))
    inner = int(np.prod(shape[axis + 1:]))
    n, per = outer * inner, 64 // x.itemsize
    for q in range(8):
        f = q * n // 8
        o, i = divmod(f, inner)
        yield o, i, min(per, inner - i)


@pytest.mark.parametrize("dt", FORMATS, ids=FORMAT_IDS)
def test_a_refused_centre_is_summed_again(level, rng, dt):
    """Channel-major.  Channel 1's sampled centre is far from its mean (the sample sits on the
    only large values; the float32 squares of the rest round): refused, it is summed again
    about its computed mean and certified -- two-level, within the bound.  Constant channels
    are exact: 5 (a centre of at least 2^-50) and, in float16, 0 by the certificate's
    exact-zero rule; bfloat16's 0 is refused twice and summed in float64.  The ordinary channels stay two-level;
    the results do not depend on the thread count."""
    C = 5
    x = rng.standard_normal((16, C, 1000))  # above the parallel threshold: 2 threads run 2
    for o, i, m in _sample_positions_cm(x.shape, 1, np.zeros(1, dt)):
        x[o, 1, i:i + m] += 1e3
    x[:, 2] = 0.0
    x[:, 3] = 5.0
    x = x.astype(dt)
    m1 = cbn.moments(x, num_threads=1)
    m2 = cbn.moments(x, num_threads=2)
    np.testing.assert_array_equal(m1.mean, m2.mean)
    np.testing.assert_array_equal(m1.m2, m2.m2)
    mean, var, _ = _exact(x, 1)
    assert m1.var()[2] == 0 and m1.mean[2] == 0 and m1.var()[3] == 0 and m1.mean[3] == 5.0
    for c in (0, 1, 4):  # two-level: float32-sized errors, within the bound
        assert 1e-12 < abs(m1.var()[c] - var[c]) / var[c] <= TWO_LEVEL
        assert abs(m1.mean[c] - mean[c]) <= TWO_LEVEL * np.sqrt(var[c])


def test_a_refused_centre_channels_last(level, rng):
    """Channels-last, a refused centre is summed in float64 at once (a second pass there walks
    a column through every row): the centre's 64 sampled rows (CBN_PILOT_ROWS) hold the only
    large values of channel 1, whose moments are then float64-accurate."""
    rows, C = 4096, 40
    x = rng.standard_normal((rows, C))
    x[[q * rows // 64 for q in range(64)], 1] += 1e3
    x = x.astype(np.float16)
    m = cbn.moments(x, num_threads=2)
    mean, var, _ = _exact(x, 1)
    np.testing.assert_allclose(m.var()[1], var[1], rtol=1e-12)
    np.testing.assert_allclose(m.mean[1], mean[1], rtol=1e-13)
    np.testing.assert_array_equal(m.m2, cbn.moments(x, num_threads=1).m2)


def test_subnormal_scale_data(level, rng):
    """bfloat16 data at 1e-40 (float32's subnormal range): no relative bound holds for float32
    squares there, so the channel is refused and summed in float64."""
    ml_dtypes = pytest.importorskip("ml_dtypes")
    x = (rng.standard_normal((64, 2, 300)) * 1e-40).astype(ml_dtypes.bfloat16)
    m = cbn.moments(x)
    mean, var, _ = _exact(x, 1)
    np.testing.assert_allclose(m.var(), var, rtol=1e-12)


@pytest.mark.parametrize("dt", FORMATS, ids=FORMAT_IDS)
def test_per_channel_and_segment_paths_agree(rng, dt):
    """One channel: at 1 thread its segments run in one per-channel task, at 2 threads as
    (channel, segment) tasks merged afterwards -- the same arithmetic, bit for bit, also when
    the sampled centre is refused and the channel summed again about its mean; the forward
    and the moments agree."""
    import os
    if (os.cpu_count() or 1) < 2:
        pytest.skip("needs 2 CPUs for a 2-thread plan")
    shape = (4, 1, 200, 200)
    for refused in (False, True):
        x = rng.standard_normal(shape)
        if refused:
            for o, i, m in _sample_positions_cm(shape, 1, np.zeros(1, dt)):
                x.reshape(4, 1, -1)[o, 0, i:i + m] += 1e3
        x = x.astype(dt)
        m1, m2 = (cbn.moments(x, num_threads=t) for t in (1, 2))
        np.testing.assert_array_equal(m1.mean, m2.mean)
        np.testing.assert_array_equal(m1.m2, m2.m2)
        f = cbn.batch_norm_forward(x, num_threads=2)
        np.testing.assert_array_equal(f.mean, m2.mean)
        mean, var, _ = _exact(x, 1)
        assert 1e-12 < abs(m1.var()[0] - var[0]) / var[0] <= TWO_LEVEL


@pytest.mark.parametrize("dt", FORMATS, ids=FORMAT_IDS)
@pytest.mark.parametrize("layout", [((16, 3, 4096), 1), ((8192, 3), 1)], ids=["cm", "cl"])
def test_backward_sums_that_overflow_float32(rng, dt, layout):
    """Finite 16-bit data whose products overflow a float32 partial (bfloat16 keeps float32's
    range: dy 1e30 times x - mean 1e10): the channel's sums are taken again in float64, finite
    and as float64's; float16 cannot reach that range (its products stay below 1e10)."""
    shape, axis = layout
    x = rng.standard_normal(shape) * (1e10 if dt != np.float16 else 100.0)
    dy = rng.standard_normal(shape) * (1e30 if dt != np.float16 else 100.0)
    x, dy = x.astype(dt), dy.astype(dt)
    a = axis % x.ndim
    red = tuple(i for i in range(x.ndim) if i != a)
    bshape = [x.shape[a] if i == a else 1 for i in range(x.ndim)]
    mean = x.astype(np.float64).mean(axis=red)
    s = cbn.backward_reduce(dy, x, mean, axis=axis)
    g = dy.astype(np.float64)
    terms = g * (x.astype(np.float64) - mean.reshape(bshape))
    assert np.all(np.isfinite(s.sum_dy)) and np.all(np.isfinite(s.sum_dy_xmu))
    assert np.all(np.abs(s.sum_dy - g.sum(axis=red)) <= TWO_LEVEL * np.abs(g).sum(axis=red))
    assert np.all(np.abs(s.sum_dy_xmu - terms.sum(axis=red))
                  <= TWO_LEVEL * np.abs(terms).sum(axis=red))


@pytest.mark.parametrize("dt", FORMATS, ids=FORMAT_IDS)
@pytest.mark.parametrize("shape,axis", LAYOUTS, ids=IDS)
@pytest.mark.parametrize("relu", [False, True])
def test_backward_sums_within_their_bound(level, rng, shape, axis, dt, relu):
    """The backward sums of 16-bit data are two-level (src/kernels_backward.pxi): sum g and
    sum g (x - mean) within 2^-20 of the sums of their terms' magnitudes, against float64 sums
    of the same values (g = dy, or dy where the ReLU's output is positive); the product sum's
    error is float32-sized (the fast path is taken); threads do not change a bit (the inputs
    big enough for a team)."""
    x = (rng.standard_normal(shape) * 2 + 0.5).astype(dt)
    dy = rng.standard_normal(shape).astype(dt)
    a = axis % x.ndim
    red = tuple(i for i in range(x.ndim) if i != a)
    bshape = [x.shape[a] if i == a else 1 for i in range(x.ndim)]
    mean = x.astype(np.float64).mean(axis=red)
    kw = {}
    g = dy.astype(np.float64)
    if relu:
        y = rng.standard_normal(shape).astype(dt)
        kw = dict(activation="relu", y=y)
        g = np.where(y.astype(np.float64) > 0, g, 0.0)
    s = cbn.backward_reduce(dy, x, mean, axis=axis, num_threads=2, **kw)
    if x.size >= 1 << 16:  # smaller inputs never start a thread team
        s1 = cbn.backward_reduce(dy, x, mean, axis=axis, num_threads=1, **kw)
        np.testing.assert_array_equal(s.sum_dy, s1.sum_dy)
        np.testing.assert_array_equal(s.sum_dy_xmu, s1.sum_dy_xmu)
    terms = g * (x.astype(np.float64) - mean.reshape(bshape))
    err_g = np.abs(s.sum_dy - g.sum(axis=red))
    err_d = np.abs(s.sum_dy_xmu - terms.sum(axis=red))
    assert np.all(err_g <= TWO_LEVEL * np.abs(g).sum(axis=red) + 1e-300), err_g.max()
    assert np.all(err_d <= TWO_LEVEL * np.abs(terms).sum(axis=red) + 1e-300), err_d.max()
    assert (err_d / np.abs(terms).sum(axis=red)).max() > 1e-13
