"""float16 inputs: native kernels (loads widened to float32 in registers, float32 arithmetic,
float64 statistics, stores rounded once to float16), float16 outputs, float32/float64
parameters and statistics."""

import numpy as np
import pytest

import cbn
from cbn import reference as ref

from helpers import assert_stats_like, make_case

F16_ULP_AT_1 = float(np.finfo(np.float16).eps)  # 2**-10

CASES = [((8, 16, 20, 20), 1), ((3000, 48), 1), ((1, 3, 300000), 1), ((4, 10, 10, 6), -1),
         ((5, 7, 9), 2), ((2, 3), 1)]


def _close_f16(actual, expected):
    """Within one float16 rounding of the exact result (half an ulp of |expected|), plus a
    float32-arithmetic allowance."""
    expected = np.asarray(expected, np.float64)
    tol = F16_ULP_AT_1 * np.maximum(np.abs(expected), 2.0 ** -14) + 1e-5 * (1 + np.abs(expected))
    err = np.abs(actual.astype(np.float64) - expected)
    assert np.all(err <= tol), float((err - tol).max())


@pytest.mark.parametrize("shape,axis", CASES)
@pytest.mark.parametrize("threads", [1, 2])
def test_float16_forward_inference_backward(rng, shape, axis, threads):
    x, dy, w, b = make_case(rng, shape, axis, np.float16)
    C = shape[axis]
    w, b = w.astype(np.float32), b.astype(np.float32)
    rm, rv = np.zeros(C, np.float32), np.ones(C, np.float32)
    rm_ref, rv_ref = rm.astype(np.float64), rv.astype(np.float64)
    f = cbn.batch_norm_forward(x, w, b, running_mean=rm, running_var=rv, axis=axis,
                               num_threads=threads)
    x64 = x.astype(np.float64)
    r = ref.batch_norm_forward(x64, w.astype(np.float64), b.astype(np.float64), running_mean=rm_ref,
                               running_var=rv_ref, axis=axis)
    assert f.out.dtype == np.float16 and f.mean.dtype == np.float64
    assert rm.dtype == np.float32 and rv.dtype == np.float32  # statistics keep their dtype
    _close_f16(f.out, r.out)
    assert_stats_like(f.mean, f.invstd, r.mean, r.invstd)
    np.testing.assert_allclose(rm, rm_ref, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(rv, rv_ref, rtol=1e-6)
    y = cbn.batch_norm_inference(x, rm, rv, w, b, axis=axis, num_threads=threads)
    assert y.dtype == np.float16
    _close_f16(y, ref.batch_norm_inference(x64, rm.astype(np.float64), rv.astype(np.float64),
                                           w.astype(np.float64), b.astype(np.float64), axis=axis))
    g = cbn.batch_norm_backward(dy, x, f.mean, f.invstd, w, axis=axis, num_threads=threads)
    gr = ref.batch_norm_backward(dy.astype(np.float64), x64, f.mean, f.invstd,
                                 w.astype(np.float64), axis=axis)
    assert g.dx.dtype == np.float16 and g.dweight.dtype == np.float32
    _close_f16(g.dx, gr.dx)
    np.testing.assert_allclose(g.dweight, gr.dweight, rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(g.dbias, gr.dbias, rtol=1e-5, atol=1e-4)


def test_float16_gradients_of_parameters_do_not_overflow(rng):
    # 200k values of 1.0 per channel: the sum (2e5) is beyond float16's range (65504)
    x = rng.standard_normal((100000, 2)).astype(np.float16)
    dy = np.ones_like(x)
    f = cbn.batch_norm_forward(x)
    g = cbn.batch_norm_backward(dy, x, f.mean, f.invstd)
    assert g.dbias.dtype == np.float32
    np.testing.assert_allclose(g.dbias, 100000.0)


def test_float16_relu_layer_and_thread_independence(rng):
    x, dy, _, _ = make_case(rng, (6, 5, 40, 40), 1, np.float16)
    f = cbn.batch_norm_forward(x, activation="relu")
    plain = cbn.batch_norm_forward(x)
    np.testing.assert_array_equal(f.out, np.where(plain.out < 0, 0, plain.out).astype(np.float16))
    g = cbn.batch_norm_backward(dy, x, f.mean, f.invstd, activation="relu", y=f.out)
    g2 = cbn.batch_norm_backward(np.where(f.out > 0, dy, 0).astype(np.float16), x, f.mean, f.invstd)
    np.testing.assert_array_equal(g.dx, g2.dx)
    r1 = cbn.batch_norm_forward(x, num_threads=1)
    r2 = cbn.batch_norm_forward(x, num_threads=2)
    for a, b in zip(r1, r2):
        np.testing.assert_array_equal(a, b)
    bn = cbn.BatchNorm(5)
    y = bn(x)
    assert y.dtype == np.float16 and bn.running_mean.dtype == np.float32
    dx = bn.backward(dy)
    assert dx.dtype == np.float16 and bn.grad_weight.dtype == np.float32
    bn.eval()
    assert bn(x).dtype == np.float16 and bn.freeze()(x).dtype == np.float16


def test_float16_needs_no_full_size_temporaries():
    """The kernels read and write float16 directly: a call allocates its output and per-channel
    vectors, nothing the size of x in float32 (NumPy reports its allocations to tracemalloc)."""
    import tracemalloc
    x = np.random.default_rng(0).standard_normal((4, 64, 128, 128)).astype(np.float16)  # 8 MB
    dy = np.ones_like(x)
    f = cbn.batch_norm_forward(x)  # warm up (imports, caches)
    for call in (lambda: cbn.batch_norm_forward(x),
                 lambda: cbn.batch_norm_inference(x, f.mean, f.invstd, activation="silu"),
                 lambda: cbn.batch_norm_backward(dy, x, f.mean, f.invstd)):
        tracemalloc.start()
        call()
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        assert peak < x.nbytes + (1 << 20), peak


@pytest.mark.parametrize("shape", [(2, 4, 300000), (3, 2, 2 ** 18 + 5)])
def test_float16_long_rows(rng, shape):
    """Long channel-major runs (the per-channel and piece plans): as the float64 reference on
    the same values (to float16 rounding)."""
    x = (rng.standard_normal(shape) * 3 + 1).astype(np.float16)
    dy = rng.standard_normal(shape).astype(np.float16)
    f = cbn.batch_norm_forward(x)
    e = cbn.reference.batch_norm_forward(x.astype(np.float64))
    assert_stats_like(f.mean, f.invstd, e.mean, e.invstd)
    np.testing.assert_allclose(f.out.astype(np.float64), e.out, rtol=2e-3, atol=2e-3)
    g = cbn.batch_norm_backward(dy, x, f.mean, f.invstd)
    ge = cbn.reference.batch_norm_backward(dy.astype(np.float64), x.astype(np.float64), f.mean,
                                           f.invstd)
    # the parameter gradients come back in float32 (the dtype of float16 layers' parameters)
    np.testing.assert_allclose(g.dbias, ge.dbias, rtol=2e-7)
    np.testing.assert_allclose(g.dweight, ge.dweight, rtol=2e-7, atol=1e-4)
    np.testing.assert_allclose(g.dx.astype(np.float64), ge.dx, rtol=2e-3, atol=2e-3)


def test_float16_matches_torch_running_stats():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(1)
    x = (rng.standard_normal((16, 8, 12, 12)) * 2 + 1).astype(np.float16)
    rm, rv = np.zeros(8, np.float32), np.ones(8, np.float32)
    y = cbn.batch_norm(x, rm, rv, training=True, momentum=0.1)
    trm, trv = torch.zeros(8), torch.ones(8)
    ty = torch.nn.functional.batch_norm(torch.from_numpy(x).float(), trm, trv, training=True,
                                        momentum=0.1).half()
    np.testing.assert_allclose(y.astype(np.float32), ty.numpy().astype(np.float32), atol=4e-3)
    np.testing.assert_allclose(rm, trm.numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(rv, trv.numpy(), rtol=1e-5)


# --------------------------------------------------------------------------- both 16-bit formats
def _formats():
    out = [np.float16]
    try:
        import ml_dtypes
    except ImportError:
        return out
    return out + [ml_dtypes.bfloat16]


FORMATS = _formats()
FORMAT_IDS = [np.dtype(d).name for d in FORMATS]


def _eps(dt):
    return 2.0 ** -10 if np.dtype(dt) == np.float16 else 2.0 ** -7


def _close(actual, expected, dt):
    """Within one rounding to the format (half its ulp, taken as eps * |expected| with the
    ulp of the format's smallest normal below it), plus float32 arithmetic."""
    expected = np.asarray(expected, np.float64)
    tol = _eps(dt) * np.maximum(np.abs(expected), 2.0 ** -14) + 1e-5 * (1 + np.abs(expected))
    err = np.abs(actual.astype(np.float64) - expected)
    assert np.all(err <= tol), float((err - tol).max())


@pytest.mark.parametrize("dt", FORMATS, ids=FORMAT_IDS)
def test_every_entry_and_building_block_takes_both_formats(rng, dt):
    """One rule everywhere: the functions, the building blocks (moments, normalize,
    backward_reduce, backward_elemt), the layers in every mode and cbn.dask take float16 and
    bfloat16 data, with outputs of the data's format and float64 statistics."""
    shape, axis = (6, 5, 9, 11), 1
    x, dy, w, b = make_case(rng, shape, axis, np.float64)
    x, dy = x.astype(dt), dy.astype(dt)
    x64, dy64 = x.astype(np.float64), dy.astype(np.float64)
    e = ref.batch_norm_forward(x64, w, b, axis=axis)
    m = cbn.moments(x, axis=axis)
    assert_stats_like(m.mean, m.invstd(), e.mean, e.invstd)
    y = cbn.normalize(x, m.mean, m.invstd(), w, b, axis=axis)
    assert y.dtype == x.dtype
    _close(y, e.out, dt)
    s = cbn.backward_reduce(dy, x, m.mean, axis=axis)
    ge = ref.batch_norm_backward(dy64, x64, e.mean, e.invstd, w, axis=axis)
    np.testing.assert_allclose(s.sum_dy, ge.dbias, rtol=1e-9, atol=1e-9)
    dx = cbn.backward_elemt(dy, x, m.mean, m.invstd(), w, s.sum_dy, s.sum_dy_xmu, m.count,
                            axis=axis)
    assert dx.dtype == x.dtype
    _close(dx, ge.dx, dt)
    bn = cbn.BatchNorm(5)
    assert bn(x).dtype == x.dtype
    assert bn.backward(dy).dtype == x.dtype and bn.grad_weight.dtype == np.float32
    bn.eval()
    assert bn(x).dtype == x.dtype and bn.backward(dy).dtype == x.dtype  # eval-mode backward
    frozen = cbn.FrozenBatchNorm(np.ones(5), np.zeros(5), activation="relu")
    yr = frozen(x)
    g = frozen.backward(dy, y=yr)
    assert g.dtype == x.dtype
    np.testing.assert_array_equal(g.astype(np.float64), np.where(yr.astype(np.float64) > 0,
                                                                 dy64, 0.0))
    da = pytest.importorskip("dask.array")
    import cbn.dask as cd
    xd = da.from_array(x, chunks=(3, 5, 9, 11))
    fd = cd.batch_norm_forward(xd, w, b, axis=axis)
    out = fd.out.compute()
    assert out.dtype == x.dtype
    _close(out, e.out, dt)
    assert_stats_like(np.asarray(fd.mean), np.asarray(fd.invstd), e.mean, e.invstd)


@pytest.mark.parametrize("dt", FORMATS, ids=FORMAT_IDS)
@pytest.mark.parametrize("shape,axis", CASES)
def test_both_formats_forward_inference_backward(rng, dt, shape, axis):
    x, dy, w, b = make_case(rng, shape, axis, np.float64)
    x, dy = x.astype(dt), dy.astype(dt)
    x64 = x.astype(np.float64)
    f = cbn.batch_norm_forward(x, w, b, axis=axis)
    e = ref.batch_norm_forward(x64, w, b, axis=axis)
    assert f.out.dtype == x.dtype
    _close(f.out, e.out, dt)
    g = cbn.batch_norm_backward(dy, x, f.mean, f.invstd, w, axis=axis)
    ge = ref.batch_norm_backward(dy.astype(np.float64), x64, f.mean, f.invstd, w, axis=axis)
    _close(g.dx, ge.dx, dt)
    np.testing.assert_allclose(g.dweight, ge.dweight, rtol=1e-6, atol=1e-5)


def test_bfloat16_matches_torch_bfloat16_batch_norm():
    """torch's CPU batch norm on bfloat16 input with float32 parameters: float32 arithmetic,
    bfloat16 output -- at most one bfloat16 rounding apart."""
    torch = pytest.importorskip("torch")
    bf16 = pytest.importorskip("ml_dtypes").bfloat16
    rng = np.random.default_rng(3)
    x = (rng.standard_normal((8, 16, 12, 12)) * 2 + 1).astype(np.float32)
    w, b = rng.standard_normal(16).astype(np.float32), rng.standard_normal(16).astype(np.float32)
    rm, rv = np.zeros(16, np.float32), np.ones(16, np.float32)
    xb = x.astype(bf16)
    xt = torch.from_numpy(xb.astype(np.float32)).to(torch.bfloat16)
    trm, trv = torch.zeros(16), torch.ones(16)
    for training in (True, False):
        y = cbn.batch_norm(xb, rm, rv, w, b, training=training, momentum=0.1)
        ty = torch.nn.functional.batch_norm(xt, trm, trv, torch.from_numpy(w),
                                            torch.from_numpy(b), training=training,
                                            momentum=0.1)
        assert y.dtype == bf16
        want = ty.float().numpy()
        np.testing.assert_allclose(y.astype(np.float32), want,
                                   atol=2 ** -7 * 2, rtol=2 ** -7)
        np.testing.assert_allclose(rm, trm.numpy(), rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(rv, trv.numpy(), rtol=1e-5)


def test_bfloat16_weight_gives_float32_gradients_in_a_fresh_process():
    """The gradient-dtype rule knows bfloat16 from a weight too, before any bfloat16 data."""
    pytest.importorskip("ml_dtypes")
    import subprocess
    import sys
    code = ("import numpy as np, ml_dtypes, cbn\n"
            "x = np.random.default_rng(0).standard_normal((8, 3)).astype(np.float32)\n"
            "f = cbn.batch_norm_forward(x)\n"
            "w = np.ones(3, ml_dtypes.bfloat16)\n"
            "print(cbn.batch_norm_backward(x, x, f.mean, f.invstd, w).dweight.dtype)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout.strip()
    assert out == "float32"
