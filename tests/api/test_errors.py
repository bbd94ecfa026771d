"""Bad input: a TypeError or ValueError that names the argument; nothing is modified."""

import numpy as np
import pytest

import cbn

X = np.ones((4, 3, 5), np.float32)
C3 = np.ones(3)


@pytest.mark.parametrize("bad", [np.ones((4, 3), np.int64), np.ones((4, 3), bool),
                                 np.ones((4, 3), np.complex64), np.ones((4, 3), np.int8)])
@pytest.mark.parametrize("fn", ["forward", "inference", "batch_norm", "backward"])
def test_non_float_x_is_a_type_error(bad, fn):
    with pytest.raises(TypeError, match="x must be a float16, float32 or float64 array"):
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
        cbn.batch_norm_forward(X, **{name: np.ones(3, np.int32)})


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
                                   (None, True, True), 3, (True, True, True, True)])
def test_needs_must_be_three_flags(needs):
    f = cbn.batch_norm_forward(X)
    with pytest.raises(TypeError, match="needs"):
        cbn.batch_norm_backward(X, X, f.mean, f.invstd, needs=needs)


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
