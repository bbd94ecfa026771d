"""Memory layouts and out=: Fortran order, permuted (channels-last memory as NCHW), strided
views, in-place aliasing; all equal to the C-contiguous result, bit for bit."""

import numpy as np
import pytest

import cbn


def _variants(x):
    """The same logical array in several memory layouts."""
    yield "C", x
    yield "F", np.asfortranarray(x)
    if x.ndim == 4:
        yield "channels_last_memory", x.transpose(0, 2, 3, 1).copy().transpose(0, 3, 1, 2)
    big = np.zeros(tuple(2 * s for s in x.shape), x.dtype)
    view = big[tuple(slice(None, None, 2) for _ in x.shape)]
    view[...] = x
    yield "strided", view
    yield "reversed", np.ascontiguousarray(x[..., ::-1])[..., ::-1]


def _all_ops(x, dy, axis, out=None):
    C = x.shape[axis]
    w = np.linspace(0.5, 2, C)
    b = np.linspace(-1, 1, C)
    f = cbn.batch_norm_forward(x, w, b, axis=axis)
    g = cbn.batch_norm_backward(dy, x, f.mean, f.invstd, w, axis=axis)
    i = cbn.batch_norm_inference(x, f.mean, 1 / f.invstd**2, w, b, axis=axis)
    return (*f, *g, i)


@pytest.mark.parametrize("shape,axis", [((3, 4, 5, 6), 1), ((3, 4, 5, 6), -1), ((7, 5), 1),
                                        ((2, 3, 4, 5, 6), 2)])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_layouts_give_the_same_answer(rng, shape, axis, dtype):
    x = rng.standard_normal(shape).astype(dtype)
    dy = rng.standard_normal(shape).astype(dtype)
    expected = _all_ops(x, dy, axis)
    dy_variants = dict(_variants(dy))
    for name, xv in _variants(x):
        got = _all_ops(xv, dy_variants[name], axis)
        for e, g in zip(expected, got):
            # outputs are bit-identical when the kernel sees the same (outer, C, inner) view;
            # a transposed view changes the reduction grouping, so allow float rounding there
            np.testing.assert_allclose(g, e, rtol=2e-5 if dtype == np.float32 else 1e-12,
                                       atol=1e-5 if dtype == np.float32 else 1e-12,
                                       err_msg=name)


def test_output_keeps_the_input_layout(rng):
    x = np.asfortranarray(rng.standard_normal((4, 3, 5)))
    y = cbn.batch_norm_forward(x).out
    assert y.flags.f_contiguous
    xcl = rng.standard_normal((2, 4, 5, 3)).transpose(0, 3, 1, 2)  # channels-last memory
    y = cbn.batch_norm_inference(xcl, np.zeros(3), np.ones(3))
    assert y.strides == xcl.strides


@pytest.mark.parametrize("shape,axis", [((4, 6, 50), 1), ((300, 6), 1), ((4, 5, 6, 8), -1)])
def test_out_argument_and_in_place(rng, shape, axis):
    x = rng.standard_normal(shape).astype(np.float32)
    C = shape[axis]
    expected = cbn.batch_norm_forward(x, axis=axis)
    out = np.empty_like(x)
    r = cbn.batch_norm_forward(x, axis=axis, out=out)
    assert r.out is out
    np.testing.assert_array_equal(out, expected.out)
    xc = x.copy()
    r = cbn.batch_norm_forward(xc, axis=axis, out=xc)  # in place
    assert r.out is xc
    np.testing.assert_array_equal(xc, expected.out)
    rm, rv = np.zeros(C), np.full(C, 2.0)
    expected_i = cbn.batch_norm_inference(x, rm, rv, axis=axis)
    xc = x.copy()
    assert cbn.batch_norm_inference(xc, rm, rv, axis=axis, out=xc) is xc
    np.testing.assert_array_equal(xc, expected_i)
    # a Fortran-ordered out for a C-ordered x still gets the right values
    outf = np.asfortranarray(np.empty_like(x))
    assert cbn.batch_norm_inference(x, rm, rv, axis=axis, out=outf) is outf
    np.testing.assert_array_equal(outf, expected_i)


def test_backward_out_may_alias_dy_or_x(rng):
    x = rng.standard_normal((5, 4, 30))
    dy = rng.standard_normal((5, 4, 30))
    f = cbn.batch_norm_forward(x)
    expected = cbn.batch_norm_backward(dy, x, f.mean, f.invstd)
    d = dy.copy()
    assert cbn.batch_norm_backward(d, x, f.mean, f.invstd, out=d).dx is d
    np.testing.assert_array_equal(d, expected.dx)
    xx = x.copy()
    assert cbn.batch_norm_backward(dy, xx, f.mean, f.invstd, out=xx).dx is xx
    np.testing.assert_array_equal(xx, expected.dx)


def test_partially_overlapping_out_is_safe(rng):
    buf = rng.standard_normal(2 * 4 * 10 + 3)
    x = buf[:80].reshape(2, 4, 10)
    expected = cbn.batch_norm_inference(x.copy(), np.zeros(4), np.ones(4))
    out = buf[3:83].reshape(2, 4, 10)  # shifted by 3 elements: overlaps x
    cbn.batch_norm_inference(x, np.zeros(4), np.ones(4), out=out)
    np.testing.assert_array_equal(out, expected)


def test_inputs_are_not_modified(rng):
    x = rng.standard_normal((6, 3, 7)).astype(np.float32)
    dy = rng.standard_normal((6, 3, 7)).astype(np.float32)
    w, b = rng.standard_normal(3), rng.standard_normal(3)
    saved = [a.copy() for a in (x, dy, w, b)]
    f = cbn.batch_norm_forward(x, w, b)
    mean, invstd = f.mean.copy(), f.invstd.copy()
    cbn.batch_norm_backward(dy, x, f.mean, f.invstd, w)
    cbn.batch_norm_inference(x, f.mean, f.invstd, w, b)
    for a, s in zip((x, dy, w, b, f.mean, f.invstd), saved + [mean, invstd]):
        np.testing.assert_array_equal(a, s)


@pytest.mark.parametrize("pdtype", [np.float16, np.float32, np.float64, np.longdouble])
def test_parameters_and_running_stats_of_any_float_dtype(rng, pdtype):
    x = rng.standard_normal((8, 3, 5))
    w, b = rng.standard_normal(3), rng.standard_normal(3)
    rm, rv = np.zeros(3, pdtype), np.ones(3, pdtype)
    y = cbn.batch_norm_forward(x, w.astype(pdtype), b.astype(pdtype), running_mean=rm,
                               running_var=rv).out
    y_ref = cbn.reference.batch_norm_forward(x, w.astype(pdtype).astype(np.float64),
                                             b.astype(pdtype).astype(np.float64)).out
    np.testing.assert_allclose(y, y_ref, rtol=1e-12, atol=1e-12)
    assert rm.dtype == pdtype and rv.dtype == pdtype
    red = (0, 2)
    # the update is computed in float64 and stored in the stat's own dtype
    tol = 8 * max(float(np.finfo(pdtype).eps), float(np.finfo(np.float64).eps))
    np.testing.assert_allclose(rm.astype(np.float64), 0.1 * x.mean(axis=red), rtol=tol,
                               atol=tol * np.abs(x).mean())


@pytest.mark.parametrize("axis", [1, -1])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_out_at_any_offset_in_a_page(rng, axis, dtype):
    """The kernels place their per-channel coefficient buffers relative to the output's address
    (half a page away, see cbn_alloc_beside): outputs at every few bytes of a 4 KB page,
    including ones aligned only to the item size, give the same bits as a fresh output."""
    shape = (9, 1024, 3) if axis == 1 else (9, 3, 1024)
    x = (rng.standard_normal(shape) * 2 + 5).astype(dtype)
    dy = rng.standard_normal(shape).astype(dtype)
    C = x.shape[axis]
    w = rng.uniform(0.5, 2, C)
    b = rng.standard_normal(C)
    f = cbn.batch_norm_forward(x, w, b, axis=axis)
    dx = cbn.batch_norm_backward(dy, x, f.mean, f.invstd, w, axis=axis).dx
    var = 1 / f.invstd**2 - 1e-5
    yi = cbn.batch_norm_inference(x, f.mean, var, w, b, axis=axis)
    item = np.dtype(dtype).itemsize
    buf = np.empty(x.size + 4096 // item + 16, dtype)
    for off in range(0, 4096 // item, 37):
        out = buf[off:off + x.size].reshape(shape)
        assert cbn.batch_norm_forward(x, w, b, axis=axis, out=out).out is out
        np.testing.assert_array_equal(out, f.out)
        cbn.batch_norm_backward(dy, x, f.mean, f.invstd, w, axis=axis, out=out)
        np.testing.assert_array_equal(out, dx)
        cbn.batch_norm_inference(x, f.mean, var, w, b, axis=axis, out=out)
        np.testing.assert_array_equal(out, yi)
