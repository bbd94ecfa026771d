"""Bad input: a TypeError or ValueError that names the argument; nothing is modified.

The batch-norm functions first, then an audit of the layers (BatchNorm, FrozenBatchNorm) and the
sharded-batch functions (moments, merge_moments, normalize, backward_reduce/elemt) beyond the
error tests of test_layer.py, test_fold.py and test_moments.py; then "nothing modified on an
error" for the functions and the layer."""

import copy

import numpy as np
import pytest

import cbn

X = np.ones((4, 3, 5), np.float32)
C3 = np.ones(3)


@pytest.mark.parametrize("bad", [np.ones((4, 3), np.int64), np.ones((4, 3), bool),
                                 np.ones((4, 3), np.complex64), np.ones((4, 3), np.int8)])
@pytest.mark.parametrize("fn", ["forward", "inference", "batch_norm", "backward"])
def test_non_float_x_is_a_type_error(bad, fn):
    with pytest.raises(TypeError, match="x must be a float16, bfloat16, float32 or float64 array"):
        if fn == "forward":
            cbn.batch_norm_forward(bad)
        elif fn == "inference":
            cbn.batch_norm_inference(bad, C3, C3)
        elif fn == "batch_norm":
            cbn.batch_norm(bad, C3, C3, training=True)
        else:
            cbn.batch_norm_backward(np.ones(bad.shape, np.float32), bad, C3, C3)


def test_ndim_below_two():
    with pytest.raises(ValueError, match="x must have at least 2 dimensions"):
        cbn.batch_norm_forward(np.ones(5, np.float32))


@pytest.mark.parametrize("axis", [3, -4, 10])
def test_axis_out_of_range(axis):
    with pytest.raises(ValueError, match="axis"):
        cbn.batch_norm_forward(X, axis=axis)


def test_axis_not_an_integer():
    with pytest.raises(TypeError, match="axis must be an integer"):
        cbn.batch_norm_forward(X, axis=1.0)


@pytest.mark.parametrize("name", ["weight", "bias"])
def test_parameter_shape_and_dtype(name):
    with pytest.raises(ValueError, match=rf"{name} must have shape \(3,\)"):
        cbn.batch_norm_forward(X, **{name: np.ones(4)})
    with pytest.raises(TypeError, match=f"{name} must be a floating-point array"):
        cbn.batch_norm_forward(X, **{name: np.ones(3, np.complex64)})
    # integer array-likes are read as NumPy converts them (a read-only parameter)
    ints = cbn.batch_norm_forward(X, **{name: [1, 2, 3]}).out
    np.testing.assert_array_equal(ints, cbn.batch_norm_forward(X, **{name: [1.0, 2.0, 3.0]}).out)


@pytest.mark.parametrize("name", ["running_mean", "running_var"])
def test_running_stat_shape_and_read_only(name):
    with pytest.raises(ValueError, match=rf"{name} must have shape \(3,\)"):
        cbn.batch_norm_forward(X, **{name: np.ones(2)})
    ro = np.ones(3)
    ro.flags.writeable = False
    with pytest.raises(ValueError, match=f"{name} is read-only"):
        cbn.batch_norm_forward(X, **{name: ro})


def test_running_stats_untouched_when_a_later_argument_is_bad():
    rm, rv = np.zeros(3), np.ones(3)
    with pytest.raises(ValueError):
        cbn.batch_norm_forward(X, running_mean=rm, running_var=rv, weight=np.ones(7))
    np.testing.assert_array_equal(rm, 0)
    np.testing.assert_array_equal(rv, 1)


@pytest.mark.parametrize("eps", [0.0, -1e-5, float("nan"), float("inf")])
def test_eps(eps):
    with pytest.raises(ValueError, match="eps must be finite and > 0"):
        cbn.batch_norm_forward(X, eps=eps)
    with pytest.raises(ValueError, match="eps must be finite and > 0"):
        cbn.batch_norm_inference(X, C3, C3, eps=eps)


@pytest.mark.parametrize("momentum", [-0.1, 1.5, float("nan")])
def test_momentum(momentum):
    with pytest.raises(ValueError, match=r"momentum must be in \[0, 1\]"):
        cbn.batch_norm_forward(X, running_mean=np.zeros(3), momentum=momentum)


def test_out_checks():
    with pytest.raises(ValueError, match="out must have shape"):
        cbn.batch_norm_forward(X, out=np.empty((4, 3, 6), np.float32))
    with pytest.raises(TypeError, match="out must have dtype float32"):
        cbn.batch_norm_forward(X, out=np.empty(X.shape, np.float64))
    ro = np.empty_like(X)
    ro.flags.writeable = False
    with pytest.raises(ValueError, match="out is read-only"):
        cbn.batch_norm_inference(X, C3, C3, out=ro)
    with pytest.raises(TypeError, match="out must be a numpy.ndarray"):
        cbn.batch_norm_inference(X, C3, C3, out=[1, 2])


def test_eval_requires_running_stats_and_rejects_negative_variance():
    with pytest.raises(ValueError, match="running_mean and running_var are required"):
        cbn.batch_norm(X, training=False)
    with pytest.raises(ValueError, match="running_var must be >= 0"):
        cbn.batch_norm_inference(X, C3, np.array([1.0, -1e-3, 1.0]))


def test_backward_argument_checks():
    f = cbn.batch_norm_forward(X)
    with pytest.raises(ValueError, match="mean must have shape"):
        cbn.batch_norm_backward(X, X, np.zeros(4), f.invstd)
    with pytest.raises(ValueError, match="invstd must have shape"):
        cbn.batch_norm_backward(X, X, f.mean, np.zeros((3, 1)))
    with pytest.raises(ValueError, match="dy must have the shape of x"):
        cbn.batch_norm_backward(X[:2], X, f.mean, f.invstd)
    with pytest.raises(TypeError, match="dy must have the dtype of x"):
        cbn.batch_norm_backward(X.astype(np.float64), X, f.mean, f.invstd)
    with pytest.raises(TypeError, match="needs must be a tuple of three booleans"):
        cbn.batch_norm_backward(X, X, f.mean, f.invstd, needs=(True,))
    with pytest.raises(TypeError, match="invstd must be an array of shape"):
        cbn.batch_norm_backward(X, X, f.mean, None)


@pytest.mark.parametrize("needs", ["abc", b"abc", (True, 2, True), (True, "yes", False),
                                   (None, True, True), 3, (True,) * 5])
def test_needs_must_be_three_flags(needs):
    f = cbn.batch_norm_forward(X)
    with pytest.raises(TypeError, match="needs"):
        cbn.batch_norm_backward(X, X, f.mean, f.invstd, needs=needs)


@pytest.mark.parametrize("activation", [None, "relu", "relu6", "silu"])
def test_a_fourth_flag_needs_a_residual(activation):
    """needs=(..., dresidual): True is an error without a residual, whichever path the
    activation takes; False is accepted."""
    f = cbn.batch_norm_forward(X, activation=activation)
    kw = {"y": f.out} if activation in ("relu", "relu6") else {"bias": None}
    with pytest.raises(ValueError, match="needs asks for dresidual, but no residual"):
        cbn.batch_norm_backward(X, X, f.mean, f.invstd, needs=(True, True, True, True),
                                activation=activation, **kw)
    r = cbn.batch_norm_backward(X, X, f.mean, f.invstd, needs=(True, True, False, False),
                                activation=activation, **kw)
    assert len(r) == 3 and r.dbias is None
    with pytest.raises(ValueError, match="dresidual_out is only used with a residual"):
        cbn.batch_norm_backward(X, X, f.mean, f.invstd, activation=activation,
                                dresidual_out=np.empty_like(X), **kw)


@pytest.mark.parametrize("needs", [[True, False, True], (1, 0, 1), np.array([True, False, True]),
                                   (np.True_, np.False_, np.True_)])
def test_needs_accepts_bool_like_sequences(needs):
    f = cbn.batch_norm_forward(X)
    dx, dw, db = cbn.batch_norm_backward(X, X, f.mean, f.invstd, needs=needs)
    assert dx is not None and dw is None and db is not None


def test_out_is_left_untouched_without_dx():
    """Documented: out only receives dx, so it is not written when dx is not asked for."""
    f = cbn.batch_norm_forward(X)
    out = np.full_like(X, 7.0)
    dx, dw, db = cbn.batch_norm_backward(X, X, f.mean, f.invstd, out=out,
                                         needs=(False, True, True))
    assert dx is None and dw is not None and db is not None
    assert (out == 7.0).all()


@pytest.mark.parametrize("training", ["no", "", None, 2, 0.0, [True]])
def test_training_must_be_a_bool(training):
    rm, rv = np.zeros(3, np.float32), np.ones(3, np.float32)
    with pytest.raises(TypeError, match="training must be a bool"):
        cbn.batch_norm(X, rm, rv, training=training)
    assert (rm == 0).all() and (rv == 1).all()


@pytest.mark.parametrize("bad,exc", [(0, ValueError), (-2, ValueError), (1.5, TypeError),
                                     (True, TypeError), ("2", TypeError)])
def test_num_threads(bad, exc):
    with pytest.raises(exc, match="num_threads"):
        cbn.batch_norm_forward(X, num_threads=bad)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("where", [0, 17, 36])
def test_negative_running_var_is_found_at_any_channel(dtype, where):
    """The fast path's per-channel check covers every channel (vector body and tail)."""
    x = np.ones((4, 37, 3), np.float32)
    rv = np.ones(37, dtype)
    rv[where] = -1e-3
    with pytest.raises(ValueError, match="running_var must be >= 0"):
        cbn.batch_norm_inference(x, np.zeros(37, dtype), rv)
    rv[where] = np.nan  # not negative: the channel's output is NaN, the others are finite
    y = cbn.batch_norm_inference(x, np.zeros(37, dtype), rv)
    assert np.isnan(y[:, where]).all() and np.isfinite(np.delete(y, where, axis=1)).all()


# =================================================== the layers and the sharded-batch functions

X_VARIED = np.arange(24, dtype=np.float32).reshape(4, 3, 2) % 5  # (X above is all ones)


def _bad_layer_calls():
    """(description, call, exception, message pattern): errors of BatchNorm, FrozenBatchNorm
    and the sharded-batch functions not already in test_layer / test_fold / test_moments."""
    x, dy = X_VARIED.copy(), X_VARIED.copy()
    return [
        ("layer: 1-d x", lambda: cbn.BatchNorm(3)(np.ones(3, np.float32)),
         ValueError, "x must have at least 2 dimensions"),
        ("layer eval: non-float x", lambda: cbn.BatchNorm(3).eval()(np.ones((2, 3), np.int32)),
         TypeError, "x must be a float16, bfloat16, float32 or float64"),
        ("layer eval: wrong C", lambda: cbn.BatchNorm(4).eval()(x),
         ValueError, "num_features=4"),
        ("layer: out of the wrong shape", lambda: cbn.BatchNorm(3)(x, out=np.empty((4, 3))),
         ValueError, "out must have shape"),
        ("layer: out of the wrong dtype", lambda: cbn.BatchNorm(3)(x, out=np.empty(x.shape)),
         TypeError, "out must have dtype"),
        ("layer: axis out of range for x", lambda: cbn.BatchNorm(3, axis=3)(x),
         ValueError, "axis=3"),
        ("frozen: non-float dy", lambda: cbn.FrozenBatchNorm(C3, C3).backward(X_VARIED.astype(int)),
         TypeError, "dy must be a float16, bfloat16, float32 or float64"),
        ("frozen: dy of wrong C", lambda: cbn.FrozenBatchNorm(C3, C3).backward(np.ones((2, 4))),
         ValueError, "num_features=3"),
        ("frozen: 1-d x", lambda: cbn.FrozenBatchNorm(C3, C3)(np.ones(3)),
         ValueError, "x must have at least 2 dimensions"),
        ("frozen: non-float scale", lambda: cbn.FrozenBatchNorm(np.ones(3, complex), C3),
         TypeError, "scale must be a floating-point"),
        ("frozen: out of the wrong dtype",
         lambda: cbn.FrozenBatchNorm(C3, C3)(x, out=np.empty(x.shape)),
         TypeError, "out must have dtype"),
        ("frozen.from_stats: 2-d running_mean",
         lambda: cbn.FrozenBatchNorm.from_stats(np.zeros((3, 1)), C3),
         ValueError, "running_mean must be a vector"),
        ("frozen.from_stats: non-float running_var",
         lambda: cbn.FrozenBatchNorm.from_stats(np.zeros(3), np.ones(3, complex)),
         TypeError, "running_var must be a floating-point"),
        ("frozen.from_stats: negative running_var",
         lambda: cbn.FrozenBatchNorm.from_stats(np.zeros(3), -C3),
         ValueError, "running_var must be >= 0"),
        ("frozen.from_stats: eps", lambda: cbn.FrozenBatchNorm.from_stats(np.zeros(3), C3, eps=0),
         ValueError, "eps"),
        ("frozen.from_layer: no running stats",
         lambda: cbn.FrozenBatchNorm.from_layer(cbn.BatchNorm(3, track_running_stats=False)),
         ValueError, "running statistics"),
        ("moments: axis not an integer", lambda: cbn.moments(x, axis=1.0),
         TypeError, "axis must be an integer"),
        ("moments: num_threads not an integer", lambda: cbn.moments(x, num_threads=1.5),
         TypeError, "num_threads"),
        ("merge_moments: non-float mean",
         lambda: cbn.merge_moments((2, np.zeros(3, complex), np.zeros(3))),
         TypeError, r"parts\[0\]\.mean must be a floating-point"),
        ("merge_moments: 2-d mean", lambda: cbn.merge_moments((2, np.zeros((3, 1)), C3)),
         ValueError, r"parts\[0\]\.mean must be a 1-d array"),
        ("merge_moments: bool count", lambda: cbn.merge_moments((True, C3, C3)),
         TypeError, r"parts\[0\]\.count"),
        ("merge_moments: m2 of wrong length", lambda: cbn.merge_moments((2, C3, np.ones(4))),
         ValueError, r"parts\[0\]\.m2 must have shape \(3,\)"),
        ("normalize: non-float x", lambda: cbn.normalize(X_VARIED.astype(int), C3, C3),
         TypeError, "x must be a float16, bfloat16, float32 or float64"),
        ("normalize: 1-d x", lambda: cbn.normalize(np.ones(3), C3, C3),
         ValueError, "x must have at least 2 dimensions"),
        ("normalize: non-float bias", lambda: cbn.normalize(x, C3, C3, bias=np.zeros(3, complex)),
         TypeError, "bias must be a floating-point"),
        ("normalize: bias of wrong length", lambda: cbn.normalize(x, C3, C3, bias=np.zeros(4)),
         ValueError, r"bias must have shape \(3,\)"),
        ("normalize: mean None", lambda: cbn.normalize(x, None, C3),
         TypeError, r"mean must be an array of shape \(3,\), got None"),
        ("normalize: out of the wrong shape", lambda: cbn.normalize(x, C3, C3, out=x[:2]),
         ValueError, "out must have shape"),
        ("backward_reduce: non-float x", lambda: cbn.backward_reduce(dy, X_VARIED.astype(int), C3),
         TypeError, "x must be a float16, bfloat16, float32 or float64"),
        ("backward_reduce: non-float dy", lambda: cbn.backward_reduce(X_VARIED.astype(int), x, C3),
         TypeError, "dy must be a float16, bfloat16, float32 or float64"),
        ("backward_reduce: non-float mean", lambda: cbn.backward_reduce(dy, x, np.zeros(3, complex)),
         TypeError, "mean must be a floating-point"),
        ("backward_elemt: weight of wrong length",
         lambda: cbn.backward_elemt(dy, x, C3, C3, np.ones(4), C3, C3, 8),
         ValueError, r"weight must have shape \(3,\)"),
        ("backward_elemt: non-float sum_dy",
         lambda: cbn.backward_elemt(dy, x, C3, C3, None, np.zeros(3, complex), C3, 8),
         TypeError, "sum_dy must be a floating-point"),
        ("backward_elemt: bool count",
         lambda: cbn.backward_elemt(dy, x, C3, C3, None, C3, C3, True),
         TypeError, "count must be a non-negative integer"),
        ("backward_elemt: negative count",
         lambda: cbn.backward_elemt(dy, x, C3, C3, None, C3, C3, -8),
         ValueError, "count must be >= 0"),
        ("backward_elemt: dy of wrong dtype",
         lambda: cbn.backward_elemt(dy.astype(np.float64), x, C3, C3, None, C3, C3, 8),
         TypeError, "dy must have the dtype of x"),
        ("backward_elemt: out of the wrong dtype",
         lambda: cbn.backward_elemt(dy, x, C3, C3, None, C3, C3, 8, out=np.empty(x.shape)),
         TypeError, "out must have dtype"),
    ]


BAD = _bad_layer_calls()


@pytest.mark.parametrize("i", range(len(BAD)), ids=[b[0] for b in BAD])
def test_bad_input_is_a_type_or_value_error_naming_the_argument(i):
    _, call, exc, pattern = BAD[i]
    with pytest.raises(exc, match=pattern):
        call()


def test_backward_before_forward_is_a_runtime_error():
    """The one documented non-argument error: a call out of order (as torch's autograd)."""
    with pytest.raises(RuntimeError, match="backward called before forward"):
        cbn.BatchNorm(3).backward(X_VARIED)


# ---------------------------------------------------------------- nothing modified on an error

def _snapshot(*arrays):
    return [None if a is None else np.array(a, copy=True) for a in arrays]


def _assert_unchanged(arrays, saved):
    for a, s in zip(arrays, saved):
        if a is not None:
            np.testing.assert_array_equal(a, s)
            assert a.dtype == s.dtype


STAT_DTYPES = [np.float32, np.float64, np.float16]


@pytest.mark.parametrize("stat_dtype", STAT_DTYPES)
@pytest.mark.parametrize("x_layout", ["C", "F"])
def test_functions_modify_nothing_before_an_error(stat_dtype, x_layout):
    """A failing call leaves the running statistics, the parameters, ``out`` and the inputs
    exactly as they were, whichever argument is bad (fast C path and Python path)."""
    x = np.asarray(X_VARIED.astype(np.float64), order=x_layout)
    C = 3
    rm, rv = np.arange(C, dtype=stat_dtype), np.full(C, 2, stat_dtype)
    w, b = np.full(C, 1.5), np.full(C, 0.5)
    out = np.full(x.shape, 7.0)
    dy = np.ones_like(x)
    mean, invstd = np.zeros(C), np.ones(C)
    arrays = (x, rm, rv, w, b, out, dy, mean, invstd)
    saved = _snapshot(*arrays)
    bad = [
        (ValueError, lambda: cbn.batch_norm_forward(x, w, np.ones(4), running_mean=rm,
                                                    running_var=rv, out=out)),
        (TypeError, lambda: cbn.batch_norm_forward(x, w, b, running_mean=rm, running_var=rv,
                                                   out=np.empty(x.shape, np.float32))),
        (ValueError, lambda: cbn.batch_norm_forward(x[:1, :, :1], running_mean=rm,
                                                    running_var=rv)),
        (ValueError, lambda: cbn.batch_norm_forward(x, w, b, running_mean=rm, running_var=rv,
                                                    momentum=2.0, out=out)),
        (ValueError, lambda: cbn.batch_norm_forward(x, w, b, running_mean=rm, running_var=rv,
                                                    eps=0.0, out=out)),
        (ValueError, lambda: cbn.batch_norm_forward(x, w, b, running_mean=rm, running_var=rv,
                                                    num_threads=0, out=out)),
        (ValueError, lambda: cbn.batch_norm(x, rm, rv, w, np.ones(2), training=True, out=out)),
        (ValueError, lambda: cbn.batch_norm(x, rm, rv, w, b, training=True, axis=5, out=out)),
        (ValueError, lambda: cbn.batch_norm_inference(x, rm, -rv, w, b, out=out)),
        (ValueError, lambda: cbn.batch_norm_inference(x, rm, rv, w, np.ones(4), out=out)),
        (ValueError, lambda: cbn.batch_norm_backward(dy, x, mean, invstd, np.ones(4), out=out)),
        (TypeError, lambda: cbn.batch_norm_backward(dy, x, mean, invstd, w, needs=(1,), out=out)),
        (ValueError, lambda: cbn.normalize(x, mean, invstd, w, np.ones(4), out=out)),
        (ValueError, lambda: cbn.backward_elemt(dy, x, mean, invstd, w, b, np.ones(4), 8,
                                                out=out)),
        (ValueError, lambda: cbn.backward_elemt(dy, x, mean, invstd, w, b, b, 3, out=out)),
    ]
    for exc, call in bad:
        with pytest.raises(exc):
            call()
        _assert_unchanged(arrays, saved)


@pytest.mark.parametrize("convention,momentum", [("torch", 0.1), ("keras", None),
                                                 ("onnx", 0.9)])
def test_layer_state_unchanged_by_failing_calls(convention, momentum):
    bn = cbn.BatchNorm(3, momentum=momentum, convention=convention, dtype=np.float64)
    x = X_VARIED.astype(np.float64)
    bn(x)
    bn.backward(np.ones_like(x))  # some state: stats, counter, accumulated gradients
    state = copy.deepcopy({k_: getattr(bn, k_) for k_ in
                           ("weight", "bias", "running_mean", "running_var",
                            "num_batches_tracked", "grad_weight", "grad_bias")})
    out = np.full(x.shape, 7.0)
    failing = [
        (ValueError, lambda: bn(x, out=out[:2])),
        (TypeError, lambda: bn(x, out=out.astype(np.float32))),
        (ValueError, lambda: bn(x[:1, :, :1])),                  # one value per channel
        (ValueError, lambda: bn(np.ones((4, 5, 2)))),            # wrong C
        (TypeError, lambda: bn(x.astype(np.int64))),
        (ValueError, lambda: bn.backward(np.ones((4, 3, 3)))),   # dy of the wrong shape
        (TypeError, lambda: bn.backward(np.ones(x.shape, np.float32))),
        (ValueError, lambda: bn.backward(np.ones_like(x), out=out[:1])),
    ]
    for exc, call in failing:
        with pytest.raises(exc):
            call()
        for name, value in state.items():
            np.testing.assert_array_equal(getattr(bn, name), value, err_msg=name)
        np.testing.assert_array_equal(out, 7.0)
    # and the layer still works: backward refers to the last *successful* forward
    dx = bn.backward(np.ones_like(x))
    assert dx.shape == x.shape


# ------------------------------------------------------------------------ bugs found (fixed)

def test_running_stat_that_is_not_an_ndarray_is_a_clear_error():
    rm = [0.0, 0.0, 0.0]
    with pytest.raises((TypeError, ValueError), match="running_mean"):
        cbn.batch_norm_forward(X_VARIED, running_mean=rm)
    assert rm == [0.0, 0.0, 0.0]


@pytest.mark.parametrize("arg", ["running_mean", "running_var", "weight"])
def test_frozen_from_stats_nonfinite_names_the_argument(arg):
    kw = dict(running_mean=np.zeros(3), running_var=np.ones(3), weight=np.ones(3))
    kw[arg] = np.array([1.0, np.nan if arg != "running_mean" else np.inf, 1.0])
    with pytest.raises(ValueError, match=arg):
        cbn.FrozenBatchNorm.from_stats(**kw)


def test_masked_arrays_are_honoured_or_refused_never_silently_unmasked():
    """np.asarray drops a MaskedArray's mask: a masked outlier would enter the statistics.
    The entries with masked statistics honour the mask (tests/features/test_masked.py); the
    others refuse one, naming mask=."""
    x = np.ma.masked_array(np.array([[1.0, -1.5], [-2.0, 1e6], [0.0, 1.0], [0.0, 0.5]]),
                           mask=[[0, 0], [0, 1], [0, 0], [0, 0]])
    np.testing.assert_allclose(cbn.moments(x).mean, [-0.25, 0.0], atol=1e-15)
    np.testing.assert_allclose(cbn.batch_norm_forward(x).mean, [-0.25, 0.0], atol=1e-15)
    frozen = cbn.FrozenBatchNorm.from_stats(np.zeros(2), np.ones(2))
    calls = {
        "x": [lambda: cbn.normalize(x, np.zeros(2), np.ones(2)), lambda: frozen(x)],
        "dy": [lambda: cbn.batch_norm_backward(x, x.data, np.zeros(2), np.ones(2))],
        "residual": [lambda: cbn.batch_norm_forward(x.data, residual=x)],
    }
    for name, fns in calls.items():
        for call in fns:
            with pytest.raises(TypeError, match=f"{name} is a numpy.ma.MaskedArray.*mask="):
                call()


def test_integer_statistics_are_read_but_not_updated_in_place():
    rm, rv = np.zeros(3, np.int64), np.ones(3, np.int64)
    y = cbn.batch_norm_inference(X, rm, rv)  # read only: converted as NumPy would
    np.testing.assert_array_equal(y, cbn.batch_norm_inference(X, rm.astype(float),
                                                              rv.astype(float)))
    with pytest.raises(TypeError, match="running_mean must be a floating-point array"):
        cbn.batch_norm_forward(X, running_mean=rm)  # updated in place: must stay float


def test_a_non_float_x_suggests_the_conversion():
    with pytest.raises(TypeError, match=r"got dtype int64 \(convert it first, e\.g\. "
                                        r"x\.astype\(np\.float32\)\)"):
        cbn.batch_norm_forward(np.ones((4, 3), np.int64))


def test_layer_array_attributes_are_validated_on_assignment():
    bn = cbn.BatchNorm(3)
    bn.weight = [1.0, 2.0, 3.0]  # a list becomes the layer's float array
    assert isinstance(bn.weight, np.ndarray) and bn.weight.dtype == np.float32
    bn.weight -= 0.5
    assert list(bn.state_dict()["weight"]) == [0.5, 1.5, 2.5]
    bn.bias = [1, 2, 3]  # integers convert
    assert bn.bias.dtype == np.float32
    mine = np.zeros(3)
    bn.running_mean = mine  # a float ndarray of the right shape is kept: updated in place
    bn(np.random.default_rng(0).standard_normal((8, 3)).astype(np.float32))
    assert bn.running_mean is mine and (mine != 0).all()
    with pytest.raises(ValueError, match=r"weight must have shape \(3,\)"):
        bn.weight = [1.0, 2.0]
    with pytest.raises(TypeError, match="running_var must be a float array"):
        bn.running_var = ["a", "b", "c"]
    with pytest.raises(TypeError, match="num_batches_tracked must be an integer scalar"):
        bn.num_batches_tracked = 1.5
    bn.num_batches_tracked = 7
    assert bn.num_batches_tracked.dtype == np.int64 and int(bn.num_batches_tracked) == 7
    bn.grad_weight = None  # None still removes an array


def test_cbn_dask_is_a_lazy_submodule(monkeypatch):
    import importlib.util
    import subprocess
    import sys
    code = "import cbn; print(cbn.dask.__name__)"
    if importlib.util.find_spec("dask") is not None:
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                             check=True).stdout.strip()
        assert out == "cbn.dask"
    blocked = ("import sys; sys.modules['dask'] = None\n"
               "import cbn\n"
               "try:\n    cbn.dask\nexcept ImportError as e:\n    print(e)\n")
    out = subprocess.run([sys.executable, "-c", blocked], capture_output=True, text=True,
                         check=True).stdout
    assert 'pip install "cbn[dask]"' in out
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        cbn.nope
