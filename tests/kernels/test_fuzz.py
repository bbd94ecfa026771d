"""Property tests (hypothesis): random shapes, channel axes, dtypes, memory layouts, thread
counts, parameter presence and dtypes, ``out=`` targets; forward (with the running-stat
update), backward (random ``needs``) and inference, each against ``cbn.reference`` computed in
float64 on the same values, within the dtype-justified tolerances of ``helpers.py``.

Profiles
--------
``cbn-fuzz-default`` (what CI runs): 60 derandomized examples per test, well under a minute.
``cbn-fuzz-long``: ``CBN_FUZZ_LONG=1`` selects 3,400 random examples per test (>= 10,000 in all)::

    CBN_FUZZ_LONG=1 CBN_FUZZ_REPORT=/tmp/fuzz.txt python -m pytest tests/kernels/test_fuzz.py -s -q

The number of cases run is printed at the end of the module (visible with ``-s``) and, if
``CBN_FUZZ_REPORT`` names a file, appended to it.

Each case also re-runs with ``num_threads=1`` when it drew 2 threads and asserts the results
are bit-identical (the determinism guarantee); a quarter of the cases are allowed up to
150k elements so that the 2-thread runs really use an OpenMP team (inputs below 64k elements
run on the calling thread).
"""

import collections
import os
import time

import numpy as np
import pytest

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

import cbn  # noqa: E402
from cbn import reference as ref  # noqa: E402
from cbn._dispatch import kernels as k  # noqa: E402

from helpers import assert_elementwise_close, assert_sum_close, eps_of, stats_error  # noqa: E402

# ------------------------------------------------------------------------------------ profiles

_COMMON = dict(deadline=None, print_blob=True,
               suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
settings.register_profile("cbn-fuzz-default", max_examples=60, derandomize=True, **_COMMON)
settings.register_profile("cbn-fuzz-long", max_examples=3400, derandomize=False, **_COMMON)
LONG = os.environ.get("CBN_FUZZ_LONG", "") not in ("", "0")
PROFILE = settings.get_profile("cbn-fuzz-long" if LONG else "cbn-fuzz-default")

SMALL_CAP = 20_000   # elements, most cases
BIG_CAP = 150_000    # elements, the "big" cases (above the 64k serial threshold)

COUNTS = collections.Counter()  # cases run per test (and per interesting feature)


@pytest.fixture(scope="module", autouse=True)
def _report_case_count():
    t0 = time.perf_counter()
    yield
    total = sum(v for key, v in COUNTS.items() if key.startswith("test_"))
    detail = ", ".join(f"{key}={v}" for key, v in sorted(COUNTS.items()))
    line = (f"cbn fuzz: profile={'long' if LONG else 'default'} cases={total} "
            f"time={time.perf_counter() - t0:.1f}s ({detail})")
    print("\n" + line)
    path = os.environ.get("CBN_FUZZ_REPORT")
    if path:
        with open(path, "a") as f:
            f.write(line + "\n")


# ---------------------------------------------------------------------------------- strategies

LAYOUTS = ["C", "F", "strided", "transposed", "reversed"]


@st.composite
def geometries(draw, min_per_channel=1):
    """(shape, axis): ndim 2-5, C 1-300, ragged other sizes, total size capped."""
    ndim = draw(st.integers(2, 5))
    axis = draw(st.integers(-ndim, ndim - 1))
    big = draw(st.integers(0, 3)) == 3
    cap = BIG_CAP if big else SMALL_CAP
    C = draw(st.integers(1, 300))
    dims = [draw(st.integers(1, 150 if big else 40)) for _ in range(ndim - 1)]
    # shrink the largest dimension until the whole array fits the cap
    while C * int(np.prod(dims)) > cap:
        i = int(np.argmax(dims))
        dims[i] = max(1, dims[i] // 2)
    if int(np.prod(dims)) < min_per_channel:
        dims[0] = min_per_channel
    ax = axis % ndim
    shape = tuple(dims[:ax]) + (C,) + tuple(dims[ax:])
    return shape, axis


def _in_layout(a, layout, perm_seed):
    """The same logical array ``a`` in the requested memory layout (always new memory)."""
    if layout == "C":
        return np.array(a, order="C", copy=True)
    if layout == "F":
        return np.array(a, order="F", copy=True)
    if layout == "strided":  # every other element along each axis: not contiguous in any order
        big = np.zeros(tuple(2 * s for s in a.shape), a.dtype)
        view = big[tuple(slice(None, None, 2) for _ in a.shape)]
        view[...] = a
        return view
    if layout == "transposed":  # memory contiguous in a random axis order (e.g. NHWC as NCHW)
        perm = np.random.default_rng(perm_seed).permutation(a.ndim)
        return np.array(a.transpose(perm), order="C", copy=True).transpose(np.argsort(perm))
    if layout == "reversed":  # negative strides on the last axis
        return np.array(a[..., ::-1], order="C", copy=True)[..., ::-1]
    raise AssertionError(layout)


def _data(rng, shape, axis, dtype, kind, spread):
    """x with per-channel offsets of the drawn ``kind``."""
    ax = axis % len(shape)
    C = shape[ax]
    bshape = [1] * len(shape)
    bshape[ax] = C
    if kind == "constant":  # zero variance in every channel
        return np.broadcast_to(rng.uniform(-2, 2, C).reshape(bshape), shape).astype(dtype)
    offset = {"centred": 0.0, "offset": 1.0, "large-offset": 100.0}[kind] * spread
    centres = rng.uniform(-offset, offset, C).reshape(bshape)
    return (rng.standard_normal(shape) * spread + centres).astype(dtype)


def _vector(rng, C, dtype, kind):
    if kind == "weight":
        v = rng.uniform(0.5, 1.5, C) * rng.choice([-1.0, 1.0], C)
    elif kind == "var":
        v = rng.uniform(0.2, 3.0, C)
    else:
        v = rng.standard_normal(C)
    return v.astype(dtype)


def _f64(a):
    return None if a is None else np.asarray(a, dtype=np.float64)


def _bshape(ndim, ax, C):
    return [C if i == ax else 1 for i in range(ndim)]


FLOATS = st.sampled_from([np.float32, np.float64])
OPT_DTYPE = st.sampled_from([None, np.float32, np.float64])  # None: argument not given
COMMON = dict(
    dtype=FLOATS,
    layout=st.sampled_from(LAYOUTS),
    threads=st.sampled_from([1, 2]),
    seed=st.integers(0, 2**32 - 1),
)


# ---------------------------------------------------------------------------------- forward

@settings(PROFILE)
@given(geom=geometries(min_per_channel=2), w_dt=OPT_DTYPE, b_dt=OPT_DTYPE, rm_dt=OPT_DTYPE,
       rv_dt=OPT_DTYPE, kind=st.sampled_from(["centred", "offset", "large-offset", "constant"]),
       spread=st.sampled_from([1e-3, 1.0, 1e3]), eps=st.sampled_from([1e-5, 1e-3, 0.1]),
       momentum=st.floats(0.0, 1.0), out_kind=st.sampled_from(["none", "fresh", "inplace"]),
       **COMMON)
def test_forward_property(geom, w_dt, b_dt, rm_dt, rv_dt, kind, spread, eps, momentum,
                          out_kind, dtype, layout, threads, seed):
    shape, axis = geom
    rng = np.random.default_rng(seed)
    ax = axis % len(shape)
    C = shape[ax]
    x0 = _data(rng, shape, axis, dtype, kind, spread)
    x = _in_layout(x0, layout, seed)
    w = None if w_dt is None else _vector(rng, C, w_dt, "weight")
    b = None if b_dt is None else _vector(rng, C, b_dt, "bias")
    rm = None if rm_dt is None else _vector(rng, C, rm_dt, "mean")
    rv = None if rv_dt is None else _vector(rng, C, rv_dt, "var")
    rm0, rv0 = (None if a is None else a.copy() for a in (rm, rv))
    out = {"none": None, "fresh": np.empty_like(x), "inplace": x}[out_kind]

    k.last_team_size(reset=True)
    y, mean, invstd = cbn.batch_norm_forward(x, w, b, eps=eps, running_mean=rm, running_var=rv,
                                             momentum=momentum, axis=axis, out=out,
                                             num_threads=threads)
    team = k.last_team_size()
    if out is not None:
        assert y is out
    assert y.dtype == dtype and y.shape == shape
    assert mean.dtype == np.float64 and mean.shape == (C,) and invstd.shape == (C,)

    # the oracle, in float64 on the same values
    x64 = x0.astype(np.float64)
    rm_ref, rv_ref = _f64(rm0), _f64(rv0)
    rm_ref = None if rm_ref is None else rm_ref.copy()
    rv_ref = None if rv_ref is None else rv_ref.copy()
    y_ref, mean_ref, invstd_ref = ref.batch_norm_forward(
        x64, _f64(w), _f64(b), eps=eps, running_mean=rm_ref, running_var=rv_ref,
        momentum=momentum, axis=axis)
    red = tuple(i for i in range(len(shape)) if i != ax)
    bsh = _bshape(len(shape), ax, C)
    assert_sum_close(mean, mean_ref, np.abs(x64).mean(axis=red))
    np.testing.assert_allclose(invstd, invstd_ref, rtol=1e-12)
    gain = invstd_ref * (1.0 if w is None else np.abs(_f64(w)))
    b_abs = 0.0 if b is None else np.abs(_f64(b)).max()
    shift = 0.0 if b is None else _f64(b).reshape(bsh)
    assert_elementwise_close(y, y_ref, dtype, np.abs(y_ref - shift) + b_abs,
                             stats_error=stats_error(x64, ax, gain))
    # running statistics: updated in float64, rounded once to their own dtype
    for got, want, dt in ((rm, rm_ref, rm_dt), (rv, rv_ref, rv_dt)):
        if got is None:
            continue
        assert got.dtype == dt
        tol = (2 * eps_of(dt) + 1e-11) * np.abs(want) + 64 * eps_of(np.float64) * (
            np.abs(x64).mean(axis=red) + np.abs(_f64(rm0 if got is rm else rv0)))
        assert np.all(np.abs(got.astype(np.float64) - want) <= tol), (got, want, tol)

    # determinism: 2 threads give the 1-thread result bit for bit
    if threads == 2:
        COUNTS["forward threads=2 team>1"] += team > 1
        rm1, rv1 = (None if a is None else a.copy() for a in (rm0, rv0))
        x1 = _in_layout(x0, layout, seed) if out_kind == "inplace" else x
        r1 = cbn.batch_norm_forward(x1, w, b, eps=eps, running_mean=rm1, running_var=rv1,
                                    momentum=momentum, axis=axis, num_threads=1)
        np.testing.assert_array_equal(r1.out, y)
        np.testing.assert_array_equal(r1.mean, mean)
        np.testing.assert_array_equal(r1.invstd, invstd)
        for a1, a in ((rm1, rm), (rv1, rv)):
            if a is not None:
                np.testing.assert_array_equal(a1, a)
    COUNTS["test_forward_property"] += 1


# ---------------------------------------------------------------------------------- backward

def _grad_close(actual, expected, abs_terms, gdt):
    """A float64 sum rounded once to ``gdt``: float64 summation error plus one rounding."""
    actual = np.asarray(actual, dtype=np.float64)
    tol = 64 * eps_of(np.float64) * abs_terms + eps_of(gdt) * np.abs(expected) + 1e-300
    assert np.all(np.abs(actual - expected) <= tol), (actual, expected, tol)


@settings(PROFILE)
@given(geom=geometries(), w_dt=OPT_DTYPE, stat_dt=FLOATS, dy_layout=st.sampled_from(LAYOUTS),
       needs=st.tuples(st.booleans(), st.booleans(), st.booleans()),
       kind=st.sampled_from(["centred", "offset", "large-offset"]),
       out_kind=st.sampled_from(["none", "fresh", "dy"]), **COMMON)
def test_backward_property(geom, w_dt, stat_dt, dy_layout, needs, kind, out_kind, dtype, layout,
                           threads, seed):
    shape, axis = geom
    rng = np.random.default_rng(seed)
    ax = axis % len(shape)
    C = shape[ax]
    x0 = _data(rng, shape, axis, dtype, kind, 1.0)
    dy0 = rng.standard_normal(shape).astype(dtype)
    x = _in_layout(x0, layout, seed)
    dy = _in_layout(dy0, dy_layout, seed + 1)
    w = None if w_dt is None else _vector(rng, C, w_dt, "weight")
    # statistics as saved by a forward pass (float64 from cbn, float32 from e.g. torch)
    x64, dy64 = x0.astype(np.float64), dy0.astype(np.float64)
    _, m, iv = ref.batch_norm_forward(x64, axis=axis)
    mean, invstd = m.astype(stat_dt), iv.astype(stat_dt)
    out = {"none": None, "fresh": np.empty_like(x), "dy": dy}[out_kind]

    dx, dw, db = cbn.batch_norm_backward(dy, x, mean, invstd, w, axis=axis, out=out,
                                         num_threads=threads, needs=needs)

    dx_ref, dw_ref, db_ref = ref.batch_norm_backward(dy64, x64, _f64(mean), _f64(invstd), _f64(w),
                                                     axis=axis)
    gdt = np.dtype(dtype if w is None else w.dtype)
    red = tuple(i for i in range(len(shape)) if i != ax)
    bsh = _bshape(len(shape), ax, C)
    mu, ivs = _f64(mean).reshape(bsh), _f64(invstd).reshape(bsh)
    xhat = (x64 - mu) * ivs
    if needs[2]:
        assert db.dtype == gdt and db.shape == (C,)
        _grad_close(db, db_ref, np.abs(dy64).sum(axis=red), gdt)
    else:
        assert db is None
    if needs[1]:
        assert dw.dtype == gdt and dw.shape == (C,)
        # dy * (x - mean) in float64 also rounds at the magnitude of x (offset data)
        _grad_close(dw, dw_ref, (np.abs(dy64) * (np.abs(xhat) + np.abs(x64) * ivs)).sum(axis=red),
                    gdt)
    else:
        assert dw is None
    if needs[0]:
        if out is not None:
            assert dx is out
        assert dx.dtype == dtype and dx.shape == shape
        kk = np.abs(ivs) * (1.0 if w is None else np.abs(_f64(w)).reshape(bsh))
        magnitude = kk * (np.abs(dy64) + np.abs(dy64).max()
                          + np.abs(xhat) * np.abs(dy64 * xhat).mean(axis=red, keepdims=True))
        assert_elementwise_close(dx, dx_ref, dtype, magnitude,
                                 stats_error=stats_error(dy64, ax, kk)
                                 + stats_error(x64, ax, kk * np.abs(dy64).max()))
    else:
        assert dx is None

    if threads == 2:
        dy1 = _in_layout(dy0, dy_layout, seed + 1) if out_kind == "dy" else dy
        r1 = cbn.batch_norm_backward(dy1, x, mean, invstd, w, axis=axis, num_threads=1,
                                     needs=needs)
        for a1, a in zip(r1, (dx, dw, db)):
            if a is not None:
                np.testing.assert_array_equal(a1, a)
    COUNTS["test_backward_property"] += 1


# ---------------------------------------------------------------------------------- inference

@settings(PROFILE)
@given(geom=geometries(), w_dt=OPT_DTYPE, b_dt=OPT_DTYPE, stat_dt=FLOATS,
       kind=st.sampled_from(["centred", "offset", "large-offset"]),
       eps=st.sampled_from([1e-5, 1e-3, 0.1]),
       out_kind=st.sampled_from(["none", "fresh", "inplace"]), **COMMON)
def test_inference_property(geom, w_dt, b_dt, stat_dt, kind, eps, out_kind, dtype, layout,
                            threads, seed):
    shape, axis = geom
    rng = np.random.default_rng(seed)
    ax = axis % len(shape)
    C = shape[ax]
    x0 = _data(rng, shape, axis, dtype, kind, 1.0)
    x = _in_layout(x0, layout, seed)
    x64 = x0.astype(np.float64)
    red = tuple(i for i in range(len(shape)) if i != ax)
    # running statistics near the data's (as after training), in their own dtype
    rm = (x64.mean(axis=red) + 0.1 * rng.standard_normal(C)).astype(stat_dt)
    rv = (x64.var(axis=red) * rng.uniform(0.5, 2.0, C) + 1e-3).astype(stat_dt)
    w = None if w_dt is None else _vector(rng, C, w_dt, "weight")
    b = None if b_dt is None else _vector(rng, C, b_dt, "bias")
    out = {"none": None, "fresh": np.empty_like(x), "inplace": x}[out_kind]

    y = cbn.batch_norm_inference(x, rm, rv, w, b, eps=eps, axis=axis, out=out,
                                 num_threads=threads)

    if out is not None:
        assert y is out
    assert y.dtype == dtype and y.shape == shape
    y_ref = ref.batch_norm_inference(x64, _f64(rm), _f64(rv), _f64(w), _f64(b), eps=eps,
                                     axis=axis)
    bsh = _bshape(len(shape), ax, C)
    scale = np.abs((1.0 if w is None else _f64(w)) / np.sqrt(_f64(rv) + eps)).reshape(bsh)
    b_abs = 0.0 if b is None else np.abs(_f64(b)).max()
    mu = _f64(rm).reshape(bsh)
    # the oracle's own float64 form x * scale + shift rounds at |x * scale| + |shift|
    oracle_err = 4 * eps_of(np.float64) * (np.abs(x64) * scale + np.abs(mu) * scale + b_abs)
    assert_elementwise_close(y, y_ref, dtype, np.abs(x64 - mu) * scale + b_abs,
                             stats_error=oracle_err)
    if threads == 2:
        x1 = _in_layout(x0, layout, seed) if out_kind == "inplace" else x
        y1 = cbn.batch_norm_inference(x1, rm, rv, w, b, eps=eps, axis=axis, num_threads=1)
        np.testing.assert_array_equal(y1, y)
    COUNTS["test_inference_property"] += 1
