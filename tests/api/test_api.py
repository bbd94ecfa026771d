"""The public API surface: fast and general paths agree, docstrings, result types."""

import inspect

import numpy as np
import pytest

import cbn

from helpers import make_case

PUBLIC = [cbn.batch_norm, cbn.batch_norm_forward, cbn.batch_norm_backward,
          cbn.batch_norm_inference, cbn.show_config, cbn.config]


@pytest.mark.parametrize("fn", PUBLIC, ids=lambda f: f.__name__)
def test_public_functions_have_numpydoc_docstrings(fn):
    doc = inspect.getdoc(fn)
    assert doc, f"{fn.__name__} has no docstring"
    params = [p for p in inspect.signature(fn).parameters if p not in ("self",)]
    if params:
        assert "Parameters\n----------" in doc
        for p in params:
            assert p in doc, f"{fn.__name__}: parameter {p} undocumented"


@pytest.mark.parametrize("fn", PUBLIC[:4], ids=lambda f: f.__name__)
def test_main_functions_document_raises_and_examples(fn):
    doc = inspect.getdoc(fn)
    assert "Raises\n------" in doc and "Examples\n--------" in doc and ">>> " in doc


@pytest.mark.parametrize("shape,axis", [((4, 6, 9), 1), ((300, 37), 1), ((5, 6, 7, 11), -1),
                                        ((8, 64, 40, 40), 1), ((2, 3), 1)])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("pdtype", [np.float32, np.float64])
def test_fast_path_equals_general_path(rng, shape, axis, dtype, pdtype):
    """The C fast path (exact C-contiguous ndarrays) and the general Python path (forced here
    with a subclass instance of x, which the fast path declines) give bit-identical results and
    running-stat updates."""
    x, dy, w, b = make_case(rng, shape, axis, dtype)
    w, b = w.astype(pdtype), b.astype(pdtype)
    C = shape[axis]
    rm1, rv1 = rng.standard_normal(C).astype(pdtype), rng.uniform(0.5, 2, C).astype(pdtype)
    rm2, rv2 = rm1.copy(), rv1.copy()
    fast = cbn.batch_norm_forward(x, w, b, running_mean=rm1, running_var=rv1, momentum=0.25,
                                  axis=axis)
    xs = x.view(_Sub)
    slow = cbn.batch_norm_forward(xs, w, b, running_mean=rm2, running_var=rv2, momentum=0.25,
                                  axis=axis)
    for a, b_ in zip(fast, slow):
        np.testing.assert_array_equal(a, b_)
    np.testing.assert_array_equal(rm1, rm2)
    np.testing.assert_array_equal(rv1, rv2)
    gf = cbn.batch_norm_backward(dy, x, fast.mean, fast.invstd, w, axis=axis)
    gs = cbn.batch_norm_backward(dy, xs, fast.mean, fast.invstd, w, axis=axis)
    for a, b_ in zip(gf, gs):
        assert a.dtype == b_.dtype
        np.testing.assert_array_equal(a, b_)
    yf = cbn.batch_norm_inference(x, rm1, rv1, w, b, axis=axis)
    ys = cbn.batch_norm_inference(xs, rm1, rv1, w, b, axis=axis)
    np.testing.assert_array_equal(yf, ys)
    # with out=: the fast path writes into it directly
    out = np.empty_like(x)
    assert cbn.batch_norm_inference(x, rm1, rv1, w, b, axis=axis, out=out) is out
    np.testing.assert_array_equal(out, yf)


class _Sub(np.ndarray):
    """An ndarray subclass: the C fast path only takes exact ndarrays."""


def test_result_types():
    x = np.ones((3, 2, 4))
    x[0] = 2
    r = cbn.batch_norm_forward(x)
    assert isinstance(r, cbn.ForwardResult) and r._fields == ("out", "mean", "invstd")
    g = cbn.batch_norm_backward(x, x, r.mean, r.invstd)
    assert isinstance(g, cbn.BackwardResult) and g._fields == ("dx", "dweight", "dbias")


def test_array_likes_are_accepted():
    x = [[1.0, 2.0], [3.0, 5.0], [0.5, 0.25]]
    y = cbn.batch_norm_forward(x).out
    np.testing.assert_allclose(y, cbn.reference.batch_norm_forward(np.array(x)).out, rtol=1e-12)
    y = cbn.batch_norm_inference(x, [0.0, 1.0], [1.0, 4.0], axis=-1)
    np.testing.assert_allclose(y, cbn.reference.batch_norm_inference(
        np.array(x), np.array([0.0, 1.0]), np.array([1.0, 4.0]), axis=-1), rtol=1e-6)


def test_huge_integer_arguments_do_not_crash_the_fast_path():
    x = np.ones((4, 3), np.float32)
    x[0] = 0
    with pytest.raises(ValueError, match="axis"):
        cbn.batch_norm_forward(x, axis=2**70)
    with pytest.raises(ValueError, match="num_threads"):
        cbn.batch_norm_forward(x, num_threads=-2**70)
    # a huge thread request is valid (OpenMP caps the team): answers are still right
    y = cbn.batch_norm_forward(x, num_threads=2**40).out
    np.testing.assert_allclose(y, cbn.reference.batch_norm_forward(x.astype(np.float64)).out,
                               atol=1e-5)


@pytest.mark.parametrize("module", ["cbn._batch_norm", "cbn._moments", "cbn._layer", "cbn._fold"])
def test_docstring_examples_run(module):
    """The Examples sections are doctests: they run and print what they show."""
    import doctest
    import importlib

    mod = importlib.import_module(module)
    result = doctest.testmod(mod, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 0 and result.failed == 0
