"""One home for every argument rule: the C fast path and the Python route agree.

Every value rule lives once, in src/_core.pyx ("argument rules"): a cdef function that the fast
paths (``_core.fast_*``) apply to canonical input, and a def wrapper with the rule's message
that cbn/_validation.py calls.  These tests hold the two routes to that:

* for canonical input, the fast path recognises a value (returns a result, not None) exactly
  when the rule accepts it -- so what the fast path takes is a subset of what the rule allows;
* the public functions give the same exception type and message, or bit-identical results,
  whichever route they take.  The Python route is forced with a non-canonical but equivalent
  argument: an ndarray subclass instance of ``x`` (the fast path takes exact ndarrays only), a
  Fortran-ordered ``x``, NumPy scalars for eps / momentum / axis / num_threads, strided vectors;
* the shared formulas (running-statistic update, inference scale, parameter gradients) give
  the same bits on both routes, and the running-statistic update's C and NumPy routes agree bit
  for bit on float32/float64 statistics;
* each error message is written once in the sources.
"""

import math
import pathlib
import re

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

import cbn
from cbn import _core
from cbn import _validation as v

SHAPE = (4, 3, 5)
C = 3


class _Sub(np.ndarray):
    """An ndarray subclass: equivalent data, but not canonical (the fast path declines it)."""


def _x(dtype=np.float32, shape=SHAPE, seed=0):
    rng = np.random.default_rng(seed)
    return (rng.standard_normal(shape) * 2 + 1).astype(dtype)


def _outcome(call):
    """("ok", result) or ("raise", exception type, message)."""
    try:
        return ("ok", call())
    except (TypeError, ValueError) as e:
        return ("raise", type(e), str(e))


def _bits(a):
    if a is None:
        return None
    a = np.ascontiguousarray(a)
    raw = np.frombuffer(a.tobytes(), np.uint8).reshape(a.shape + (a.dtype.itemsize,))
    if a.dtype == np.longdouble and np.finfo(np.longdouble).nmant == 63:
        raw = raw[..., :10]  # x87 extended precision: the rest is padding
    return (a.dtype.str, a.shape, raw.tobytes())


def _same(r1, r2):
    """Two outcomes: the same exception type and message, or bit-identical results."""
    assert r1[0] == r2[0], (r1, r2)
    if r1[0] == "raise":
        assert r1[1:] == r2[1:]
        return
    a, b = r1[1], r2[1]
    if isinstance(a, tuple):
        assert len(a) == len(b)
        for p, q in zip(a, b):
            assert _bits(p) == _bits(q)
    else:
        assert _bits(a) == _bits(b)


def _rule_accepts(check, value):
    try:
        check(value)
        return True
    except ValueError:
        return False


# ------------------------------------------------------------------------------------ fast calls

def _fast_forward(x, eps=1e-5, momentum=0.1, axis=1, num_threads=None, rm=None, rv=None,
                  w=None, b=None, out=None):
    return _core.fast_forward(x, w, b, eps, rm, rv, momentum, axis, num_threads, out, False,
                              False)


def _fast_inference(x, rm, rv, eps=1e-5, axis=1, num_threads=None, out=None):
    return _core.fast_inference(x, rm, rv, None, None, eps, axis, num_threads, out, False)


def _fast_backward(dy, x, mean, invstd, w=None, axis=1, num_threads=None, out=None):
    return _core.fast_backward(dy, x, mean, invstd, w, axis, num_threads, out, None)


# ------------------------------------------------------------------------------------ eps

EPS_VALUES = [1e-5, 1.0, 5e-324, 2.2250738585072014e-308, 1e308, 1.5e308,
              1.7976931348623157e308, 0.0, -0.0, -1e-5, -5e-324, math.nan, math.inf, -math.inf]


@pytest.mark.parametrize("eps", EPS_VALUES)
def test_eps_fast_path_recognises_exactly_what_the_rule_accepts(eps):
    x = _x()
    ok = _rule_accepts(v.check_eps, eps)
    assert (_fast_forward(x, eps=eps) is not None) == ok
    assert (_fast_inference(x, np.zeros(C), np.ones(C), eps=eps) is not None) == ok


@pytest.mark.parametrize("eps", EPS_VALUES)
@pytest.mark.parametrize("fn", ["forward", "inference"])
def test_eps_both_routes_agree(eps, fn):
    x = _x()
    rm, rv = np.zeros(C), np.linspace(0.5, 2.0, C)

    def call(xx, e):
        if fn == "forward":
            return lambda: tuple(cbn.batch_norm_forward(xx, eps=e))
        return lambda: cbn.batch_norm_inference(xx, rm, rv, eps=e)

    fast = _outcome(call(x, eps))
    _same(fast, _outcome(call(x.view(_Sub), eps)))  # Python route, same eps object
    slow = _outcome(call(x, np.float64(eps)))       # Python route by the eps type
    fortran = _outcome(call(np.asfortranarray(x), eps))  # Python route, another kernel view
    assert fortran[0] == fast[0]
    if fast[0] == "ok":
        _same(fast, slow)
    else:  # the message names what was given
        _same(fast, fortran)
        assert fast[1:] == (ValueError, f"eps must be finite and > 0, got {eps!r}")
        assert slow[1:] == (ValueError, f"eps must be finite and > 0, got {np.float64(eps)!r}")


def test_eps_messages():
    with pytest.raises(ValueError, match=r"^eps must be finite and > 0, got nan$"):
        cbn.batch_norm_forward(_x(), eps=math.nan)
    with pytest.raises(TypeError, match="eps must be a real number, got str"):
        cbn.batch_norm_forward(_x(), eps="1e-5")


# ------------------------------------------------------------------------------------ momentum

MOMENTUM_VALUES = [0.0, -0.0, 1.0, 0.1, 5e-324, 1.0 - 2.0 ** -53, 1.0 + 2.0 ** -52, -1e-300,
                   -0.1, 1.5, math.nan, math.inf, -math.inf]


@pytest.mark.parametrize("momentum", MOMENTUM_VALUES)
def test_momentum_fast_path_recognises_exactly_what_the_rule_accepts(momentum):
    x = _x()
    ok = _rule_accepts(v.check_momentum, momentum)
    rm, rv = np.zeros(C), np.ones(C)
    assert (_fast_forward(x, momentum=momentum, rm=rm, rv=rv) is not None) == ok
    # declined before anything is written
    if not ok:
        assert (rm == 0).all() and (rv == 1).all()


@pytest.mark.parametrize("momentum", MOMENTUM_VALUES)
@pytest.mark.parametrize("stat_dtype", [np.float32, np.float64])
def test_momentum_both_routes_agree(momentum, stat_dtype):
    x = _x()

    def call(xx, m):
        rm = np.linspace(-1, 1, C).astype(stat_dtype)
        rv = np.linspace(0.5, 2, C).astype(stat_dtype)

        def f():
            r = cbn.batch_norm_forward(xx, running_mean=rm, running_var=rv, momentum=m)
            return tuple(r) + (rm, rv)
        return f

    fast = _outcome(call(x, momentum))
    _same(fast, _outcome(call(x.view(_Sub), momentum)))
    slow = _outcome(call(x, np.float64(momentum)))
    if fast[0] == "ok":
        _same(fast, slow)
    else:
        assert slow[1:] == (ValueError,
                            f"momentum must be in [0, 1], got {np.float64(momentum)!r}")


@pytest.mark.parametrize("momentum", [None, "fast", math.nan, 7.0, [0.1]])
def test_momentum_is_not_read_without_running_statistics(momentum):
    """The rule "momentum is read only with a running statistic" holds on both routes (the
    Python route used to convert it anyway: TypeError for None)."""
    x = _x()
    fast = cbn.batch_norm_forward(x, momentum=momentum)
    slow = cbn.batch_norm_forward(x.view(_Sub), momentum=momentum)
    _same(("ok", tuple(fast)), ("ok", tuple(slow)))
    assert _core.momentum_applies(None, None) is False
    assert _core.momentum_applies(np.zeros(C), None) is True


# ------------------------------------------------------------------------------------ threads

THREAD_VALUES = [None, 1, 2, 3, _core.THREADS_CAP - 1, _core.THREADS_CAP,
                 _core.THREADS_CAP + 1, 2 ** 31, 2 ** 40, 2 ** 70, 0, -1, -(2 ** 31),
                 -(2 ** 70)]


@pytest.mark.parametrize("n", THREAD_VALUES)
def test_thread_rule_and_its_cap(n):
    x = _x()
    ok = _rule_accepts(v.check_threads, n)
    assert (_fast_forward(x, num_threads=n) is not None) == ok
    assert (_fast_inference(x, np.zeros(C), np.ones(C), num_threads=n) is not None) == ok
    f = cbn.batch_norm_forward(x)
    assert (_fast_backward(x, x, f.mean, f.invstd, num_threads=n) is not None) == ok
    if ok:
        expected = 0 if n is None else min(n, _core.THREADS_CAP)
        assert v.check_threads(n) == expected
        if n is not None:
            assert v.check_threads(np.int64(n) if n < 2 ** 63 else n) == expected
    else:
        with pytest.raises(ValueError, match=rf"^num_threads must be >= 1, got {n}$"):
            v.check_threads(n)


@pytest.mark.parametrize("n", [1, 2, _core.THREADS_CAP + 1, 2 ** 70, 0, -(2 ** 70), 1.5, True,
                               "2"])
def test_threads_both_routes_agree(n):
    x = _x()
    fast = _outcome(lambda: tuple(cbn.batch_norm_forward(x, num_threads=n)))
    _same(fast, _outcome(lambda: tuple(cbn.batch_norm_forward(x.view(_Sub), num_threads=n))))
    if type(n) is int and -(2 ** 63) <= n < 2 ** 63:
        slow = _outcome(lambda: tuple(cbn.batch_norm_forward(x, num_threads=np.int64(n))))
        _same(fast, slow)


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.none(), st.integers(min_value=-(2 ** 80), max_value=2 ** 80)))
def test_thread_subset_implies_rule(n):
    """Whatever int or None the fast path recognises, the rule accepts, and vice versa."""
    x = _x(shape=(2, 3))
    assert (_fast_forward(x, num_threads=n) is not None) == _rule_accepts(v.check_threads, n)


# ------------------------------------------------------------------------------------ axis / shape

@pytest.mark.parametrize("shape", [(4, 3), (4, 3, 5), (2, 3, 4, 5)])
def test_axis_fast_path_recognises_exactly_what_the_rule_accepts(shape):
    x = _x(shape=shape)
    nd = len(shape)
    for axis in list(range(-nd - 2, nd + 2)) + [2 ** 31, -(2 ** 31), 2 ** 70, -(2 ** 70)]:
        ok = _rule_accepts(lambda a: v.check_axis(a, nd), axis)
        fast = _fast_forward(x, axis=axis)
        assert (fast is not None) == ok, axis
        if ok:
            a = v.check_axis(axis, nd)
            assert a == (axis % nd) and fast.mean.shape == (shape[a],)
        pub = _outcome(lambda: tuple(cbn.batch_norm_forward(x, axis=axis)))
        _same(pub, _outcome(lambda: tuple(cbn.batch_norm_forward(x.view(_Sub), axis=axis))))
        if abs(axis) < 2 ** 63:
            _same(pub, _outcome(lambda: tuple(cbn.batch_norm_forward(x, axis=np.int64(axis)))))


@settings(max_examples=300, deadline=None)
@given(st.integers(min_value=-(2 ** 80), max_value=2 ** 80))
def test_axis_subset_implies_rule(axis):
    x = _x(shape=(2, 3, 2))
    assert (_fast_forward(x, axis=axis) is not None) == _rule_accepts(
        lambda a: v.check_axis(a, 3), axis)


@pytest.mark.parametrize("shape", [(), (5,)])
def test_ndim_rule_both_routes(shape):
    x = np.ones(shape, np.float32)
    assert _fast_forward(x) is None
    msg = f"x must have at least 2 dimensions (batch and channel), got shape {shape}"
    for xx in (x, x.view(_Sub)):
        for call in (lambda: cbn.batch_norm_forward(xx),
                     lambda: cbn.batch_norm_inference(xx, np.ones(1), np.ones(1)),
                     lambda: cbn.batch_norm_backward(xx, xx, np.ones(1), np.ones(1))):
            assert _outcome(call)[1:] == (ValueError, msg)


@pytest.mark.parametrize("shape", [(2, 3), (1, 7, 4), (5, 1, 1, 2), (3, 0, 4), (0, 3),
                                   (2, 3, 4, 5, 6)])
def test_geometry_is_the_product_split(shape):
    for axis in range(len(shape)):
        assert _core.geometry(shape, axis) == (math.prod(shape[:axis]), shape[axis],
                                               math.prod(shape[axis + 1:]))


# ------------------------------------------------------------------------------------ batch count

@pytest.mark.parametrize("shape,axis", [((1, 3), 1), ((1, 3, 1), 1), ((3, 1), 0), ((0, 3), 1),
                                        ((2, 3, 0), 1), ((2, 3), 1), ((1, 3, 2), 1)])
def test_batch_count_rule_both_routes(shape, axis):
    x = np.arange(math.prod(shape), dtype=np.float32).reshape(shape)
    n = x.size // shape[axis] if shape[axis] else 0
    fast = _fast_forward(x, axis=axis)
    assert (fast is not None) == (n > 1)  # the fast path leaves n <= 1 to the Python route
    rm, rv = np.zeros(shape[axis]), np.ones(shape[axis])
    pub = _outcome(lambda: tuple(cbn.batch_norm_forward(x, axis=axis, running_mean=rm)))
    _same(pub, _outcome(lambda: tuple(cbn.batch_norm_forward(x.view(_Sub), axis=axis))))
    if n == 1:
        assert pub[1:] == (ValueError, "Expected more than 1 value per channel when training, "
                                       f"got input size {shape}")
    if n == 0:
        assert (rm == 0).all()  # the empty batch leaves the running statistics alone


def test_batch_count_message_without_a_shape():
    with pytest.raises(ValueError, match=r"^Expected more than 1 value per channel when "
                                         r"training, got 1$"):
        v.check_batch_count(1)
    v.check_batch_count(0)
    v.check_batch_count(2 ** 70)


# ------------------------------------------------------------------------------------ running_var

VAR_VALUES = [1.0, 0.0, -0.0, 5e-324, -5e-324, -1e-3, math.nan, math.inf, -math.inf]


@pytest.mark.parametrize("bad", VAR_VALUES)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_running_var_rule_both_routes(bad, dtype):
    x = _x(np.float32, (4, 37, 3))
    rm = np.zeros(37, dtype)
    rv = np.ones(37, dtype)
    rv[17] = bad
    ok = _rule_accepts(v.check_running_var, rv.astype(np.float64))
    assert ok == (not (np.float64(dtype(bad)) < 0))
    # a NaN variance is no error, so the fast path takes it (it used to leave it to the
    # Python route, claiming that the Python route raises, which it does not)
    assert (_fast_inference(x, rm, rv) is not None) == ok
    fast = _outcome(lambda: cbn.batch_norm_inference(x, rm, rv))
    _same(fast, _outcome(lambda: cbn.batch_norm_inference(x.view(_Sub), rm, rv)))
    strided = np.repeat(rv, 2)[::2]
    _same(fast, _outcome(lambda: cbn.batch_norm_inference(x, rm, strided)))
    if not ok:
        assert fast[1:] == (ValueError, "running_var must be >= 0 everywhere")
        with pytest.raises(ValueError, match="running_var must be >= 0 everywhere"):
            cbn.fold(rm, rv)
    else:
        y = fast[1]
        assert np.isnan(y[:, 17]).all() == bool(np.isnan(bad))


# ------------------------------------------------------------------------------------ scale formula

def test_inference_scale_is_weight_over_sqrt_var_plus_eps(rng):
    var = np.concatenate([rng.uniform(0, 10, 200), [0.0, 5e-324, 1e-300, 1e300, np.inf, np.nan]])
    w = rng.standard_normal(var.size)
    for eps in (1e-5, 1e-3, 5e-324, 1.5e308):
        ref = w / np.sqrt(var + eps)
        assert _bits(_core.inference_scale(w, var, eps)) == _bits(ref)
        assert _bits(_core.inference_scale(None, var, eps)) == _bits(1.0 / np.sqrt(var + eps))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("pdtype", [np.float32, np.float64])
def test_inference_both_routes_and_frozen_layer_bit_identical(rng, dtype, pdtype):
    x = _x(dtype, (3, 6, 7, 5))
    rm = rng.standard_normal(6).astype(pdtype)
    rv = rng.uniform(0, 3, 6).astype(pdtype)
    w = rng.standard_normal(6).astype(pdtype)
    b = rng.standard_normal(6).astype(pdtype)
    fast = cbn.batch_norm_inference(x, rm, rv, w, b, eps=1e-3)
    slow = cbn.batch_norm_inference(np.asfortranarray(x), rm, rv, w, b, eps=np.float64(1e-3))
    assert _bits(fast) == _bits(slow)
    frozen = cbn.FrozenBatchNorm.from_stats(rm, rv, w, b, eps=1e-3)
    assert _bits(frozen.scale) == _bits(_core.inference_scale(w.astype(np.float64),
                                                              rv.astype(np.float64), 1e-3))
    assert _bits(frozen(x)) == _bits(fast)


# ------------------------------------------------------------------------------------ gradients

@pytest.mark.parametrize("xdtype", [np.float32, np.float64])
@pytest.mark.parametrize("wdtype", [None, np.float16, np.float32, np.float64, np.longdouble])
def test_gradient_dtype_both_routes(rng, xdtype, wdtype):
    x = _x(xdtype, (5, 4, 6))
    dy = _x(xdtype, (5, 4, 6), seed=1)
    w = None if wdtype is None else rng.uniform(0.5, 1.5, 4).astype(wdtype)
    f = cbn.batch_norm_forward(x)
    expected = v.gradient_dtype(x.dtype, w)
    src = x.dtype if w is None else w.dtype
    assert expected == (np.dtype(np.float32) if src == np.float16 else src)
    fast = cbn.batch_norm_backward(dy, x, f.mean, f.invstd, w)
    slow = cbn.batch_norm_backward(dy, x.view(_Sub), f.mean, f.invstd, w)
    assert fast.dweight.dtype == slow.dweight.dtype == expected
    assert fast.dbias.dtype == slow.dbias.dtype == expected
    for a, b in zip(fast, slow):
        assert _bits(a) == _bits(b)
    fast_path = _fast_backward(dy, x, f.mean, f.invstd, w)
    assert (fast_path is not None) == (wdtype in (None, np.float32, np.float64))


def test_parameter_gradients_formula(rng):
    sdy, sdyx, iv = rng.standard_normal((3, 9))
    sdyx_before = sdyx.copy()
    dw, db = _core.parameter_gradients(sdy, sdyx, iv, np.dtype(np.float32))
    assert _bits(dw) == _bits((sdyx_before * iv).astype(np.float32))
    assert _bits(db) == _bits(sdy.astype(np.float32))
    assert _bits(sdyx) == _bits(sdyx_before)  # not consumed (cbn.dask's lazy dx reads it)
    assert _core.parameter_gradients(sdy, sdyx, iv, np.dtype(np.float64), False, False) == (
        None, None)


# ------------------------------------------------------------------------------------ out= overlap

def test_no_partial_overlap_rule():
    buf = np.zeros(40, np.float32)
    a = buf[:20]
    assert _core.no_partial_overlap(a, a)
    assert _core.no_partial_overlap(a, buf[20:])
    assert not _core.no_partial_overlap(a, buf[1:21])
    assert not _core.no_partial_overlap(buf[19:39], a)
    assert _core.no_partial_overlap(buf[:0], a) and _core.no_partial_overlap(a, buf[5:5])
    assert _core.no_partial_overlap(a, np.zeros(20, np.float32))


@pytest.mark.parametrize("op", ["forward", "inference", "backward"])
def test_out_overlap_both_routes(op):
    x0 = _x(np.float32, (4, 3, 5))
    f = cbn.batch_norm_forward(x0)
    rm, rv = np.zeros(C), np.ones(C)

    def run(x, out, dy=None):
        if op == "forward":
            return cbn.batch_norm_forward(x, out=out).out
        if op == "inference":
            return cbn.batch_norm_inference(x, rm, rv, out=out)
        return cbn.batch_norm_backward(x0 if dy is None else dy, x, f.mean, f.invstd, out=out).dx

    expected = run(x0, None)
    buf = np.zeros(2 * x0.size + 1, np.float32)
    xs = buf[1:1 + x0.size].reshape(x0.shape)
    for shift, fast_expected in ((0, True), (x0.size, True), (1, False)):
        xs[...] = x0
        out = buf[1 + shift:1 + shift + x0.size].reshape(x0.shape)
        fast = (_fast_forward(xs, out=out) if op == "forward" else
                _fast_inference(xs, rm, rv, out=out) if op == "inference" else
                _fast_backward(x0, xs, f.mean, f.invstd, out=out))
        assert (fast is not None) == fast_expected, shift
        xs[...] = x0
        got = run(xs, out)
        assert got is out and _bits(got) == _bits(expected)
        # the Python route decides the same
        xs[...] = x0
        got = run(xs.view(_Sub), out)
        assert got is out and _bits(got) == _bits(expected)
    if op == "backward":  # out partly overlapping dy
        dy = buf[:x0.size].reshape(x0.shape)
        dy[...] = x0
        x = x0.copy()
        out = buf[3:3 + x0.size].reshape(x0.shape)
        assert _fast_backward(dy, x, f.mean, f.invstd, out=out) is None
        dy[...] = x0
        assert _bits(run(x, out, dy)) == _bits(expected)


# ------------------------------------------------------------------------------------ running stats

def _stats_case(rng, C, dtype, nonfinite):
    mean = rng.standard_normal(C) * 10
    var = rng.uniform(0, 5, C)
    if nonfinite:
        mean[::7] = np.nan
        var[3::11] = np.inf
        var[5::13] = np.nan
    rm = (rng.standard_normal(C) * 3).astype(dtype)
    rv = rng.uniform(0.1, 4, C).astype(dtype)
    return mean, var, rm, rv


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("skip", [False, True])
@pytest.mark.parametrize("unbiased", [True, False])
@pytest.mark.parametrize("n", [2, 3, 7, 1000, 2 ** 40])
def test_update_running_c_and_numpy_routes_bit_identical(rng, dtype, skip, unbiased, n):
    for momentum in (0.0, 1.0, 0.1, 0.3, 1.0 / 3.0, 0.999, 5e-324):
        mean, var, rm, rv = _stats_case(rng, 97, dtype, nonfinite=True)
        rm_n, rv_n = rm.copy(), rv.copy()
        _core.update_running(rm, rv, mean, var, n, momentum, skip, unbiased)      # C route
        _core._update_running_numpy(rm_n, rv_n, mean, var, n, momentum, skip, unbiased)
        assert _bits(rm) == _bits(rm_n) and _bits(rv) == _bits(rv_n)
    # and they compute the documented formula
    mean, var, rm, rv = _stats_case(rng, 33, dtype, nonfinite=True)
    keep = ~(np.isfinite(mean) & np.isfinite(var)) if skip else np.zeros(33, bool)
    f = n / (n - 1.0) if unbiased else 1.0
    exp_m = np.where(keep, rm, ((1 - 0.3) * rm.astype(np.float64) + 0.3 * mean).astype(dtype))
    exp_v = np.where(keep, rv,
                     ((1 - 0.3) * rv.astype(np.float64) + 0.3 * (var * f)).astype(dtype))
    _core.update_running(rm, rv, mean, var, n, 0.3, skip, unbiased)
    assert _bits(rm) == _bits(exp_m.astype(dtype)) and _bits(rv) == _bits(exp_v.astype(dtype))


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.float16, np.longdouble])
@pytest.mark.parametrize("skip", [False, True])
def test_running_stats_of_any_layout_update_alike(rng, dtype, skip):
    """Public forward: contiguous statistics (C route for float32/float64), strided and
    byte-swapped ones (NumPy route), through the fast and the Python route of x: the same
    bits."""
    x = _x(np.float32, (6, 5, 4))
    x[0, 2, 0] = np.nan
    rm0 = rng.standard_normal(5).astype(dtype)
    rv0 = rng.uniform(0.5, 2, 5).astype(dtype)
    results = []
    for layout in ("contiguous", "strided", "swapped"):
        for xx in (x, x.view(_Sub)):
            if layout == "contiguous":
                rm, rv = rm0.copy(), rv0.copy()
            elif layout == "strided":
                rm, rv = np.repeat(rm0, 2)[::2], np.repeat(rv0, 2)[::2]
            else:
                if np.dtype(dtype).itemsize > 8:
                    continue
                rm = rm0.astype(np.dtype(dtype).newbyteorder())
                rv = rv0.astype(np.dtype(dtype).newbyteorder())
            cbn.batch_norm_forward(xx, running_mean=rm, running_var=rv, momentum=0.3,
                                   skip_nonfinite=skip)
            results.append((_bits(rm.astype(dtype)), _bits(rv.astype(dtype))))
    assert all(r == results[0] for r in results)


@pytest.mark.parametrize("convention,momentum", [("torch", 0.1), ("keras", 0.99),
                                                 ("onnx", 0.9)])
def test_layer_conventions_use_the_one_update(convention, momentum):
    x = _x(np.float32, (8, 3, 5))
    n = x.size // 3
    layer = cbn.BatchNorm(3, momentum=momentum, convention=convention)
    layer.running_mean[...] = [0.5, -1.0, 2.0]
    layer.running_var[...] = [0.25, 1.5, 3.0]
    rm, rv = layer.running_mean.copy(), layer.running_var.copy()
    layer(x)
    f = momentum if convention == "torch" else 1.0 - momentum
    if convention == "torch":  # the forward's update, unbiased variance
        cbn.batch_norm_forward(x, running_mean=rm, running_var=rv, momentum=f)
    else:  # the biased variance, through the same update
        bm, bv = np.zeros(3), np.zeros(3)
        cbn.batch_norm_forward(x, running_mean=bm, running_var=bv, momentum=1.0)
        var = bv * ((n - 1.0) / n)
        expected_m = ((1.0 - f) * rm.astype(np.float64) + f * bm).astype(np.float32)
        expected_v = ((1.0 - f) * rv.astype(np.float64) + f * var).astype(np.float32)
        _core.update_running(rm, rv, bm, var, n, f, False, unbiased=False)
        assert _bits(rm) == _bits(expected_m) and _bits(rv) == _bits(expected_v)
    assert _bits(layer.running_mean) == _bits(rm)
    assert _bits(layer.running_var) == _bits(rv)


def test_dask_running_stats_equal_in_memory_bit_for_bit():
    da = pytest.importorskip("dask.array")
    import cbn.dask as cd

    x = _x(np.float32, (8, 3, 6))
    for dtype in (np.float32, np.float64):
        rm, rv = np.zeros(3, dtype), np.ones(3, dtype)
        rm_e, rv_e = rm.copy(), rv.copy()
        cd.batch_norm_forward(da.from_array(x, chunks=(8, 3, 6)), running_mean=rm,
                              running_var=rv, momentum=0.3)
        cbn.batch_norm_forward(x, running_mean=rm_e, running_var=rv_e, momentum=0.3)
        np.testing.assert_allclose(rm, rm_e, rtol=1e-6)
        # one chunk: the same statistics, so the one update gives the same bits
        m = cbn.moments(x)
        rm_f, rv_f = np.zeros(3, dtype), np.ones(3, dtype)
        _core.update_running(rm_f, rv_f, m.mean, m.m2 / m.count, m.count, 0.3, False)
        assert _bits(rm) == _bits(rm_f) and _bits(rv) == _bits(rv_f)


# ------------------------------------------------------------------------------------ one message

_SRC = pathlib.Path(__file__).resolve().parents[2]  # the repository root
_SOURCES = sorted((_SRC / "cbn").glob("*.py")) + [_SRC / "src" / "_core.pyx"]

MESSAGES = [
    "eps must be finite and > 0",
    "momentum must be in [0, 1]",
    "num_threads must be >= 1",
    "is out of range for an array with",
    "must have at least 2 dimensions (batch and channel)",
    "Expected more than 1 value per channel when training",
    "running_var must be >= 0 everywhere",
    "must have the shape of {ref}",
    "must have the dtype of {ref}",
    "running_mean and running_var are required for inference",
    "y (the forward output) is required with activation='relu'",
    "must be finite everywhere",
    "must be an integer, got bool",
    "must be a float16, bfloat16, float32 or float64 array",
]


@pytest.mark.skipif(not (_SRC / "src" / "_core.pyx").exists(), reason="needs the source tree")
@pytest.mark.parametrize("message", MESSAGES)
def test_each_message_is_written_once(message):
    hits = [(p.name, i + 1) for p in _SOURCES
            for i, line in enumerate(p.read_text().splitlines()) if message in line]
    assert len(hits) == 1, hits


@pytest.mark.skipif(not (_SRC / "src" / "_core.pyx").exists(), reason="needs the source tree")
def test_rule_constants_are_written_once():
    """The thread cap exists once (THREADS_CAP); the fast path has no eps bound of its own."""
    text = {p.name: p.read_text() for p in _SOURCES}
    cap = [n for n, t in text.items() for _ in re.finditer(r"1 << 20|1048576", t)]
    assert cap == ["_core.pyx"], cap
    assert not any("1e308" in t for t in text.values())
    assert _core.THREADS_CAP == 1 << 20
