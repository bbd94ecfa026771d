"""The bench's optional peers (cbn/bench/peers.py) compute batch norm: the numba kernels and
ONNX Runtime's node against the float64 reference, in every layout; and their columns reach
the report and the summary."""

import numpy as np
import pytest

import cbn
from cbn import bench as _bench
from cbn.bench import Case, Result, Settings
from cbn.bench.calls import EPS, MOMENTUM
from cbn.bench.cases import make_data
from cbn.bench.peers import numba_calls, onnxruntime_call

CASES = [Case((3, 4, 5, 6)), Case((40, 7), "float64"), Case((2, 5, 5, 8), "float32", -1)]


def _close(got, want, dtype):
    scale = np.max(np.abs(want)) + 1.0
    tol = (2e-5 if dtype == "float32" else 1e-12) * scale
    np.testing.assert_allclose(np.asarray(got, np.float64), want, rtol=0, atol=tol)


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.label)
def test_numba_peer_kernels_are_batch_norm(case):
    pytest.importorskip("numba")
    d = make_data(case)
    ref = cbn.reference
    x64 = d.x.astype(np.float64)
    want = ref.batch_norm_inference(x64, d.running_mean, d.running_var, d.weight, d.bias,
                                    eps=EPS, axis=case.axis)
    for op in ("inference", "frozen"):
        _close(numba_calls(op, case, d, 1, EPS, MOMENTUM)(), want, case.dtype)
    y, mean, var = numba_calls("forward", case, d, 2, EPS, MOMENTUM)()
    want_y, want_mean, want_invstd = ref.batch_norm_forward(x64, d.weight, d.bias, eps=EPS,
                                                            axis=case.axis)
    _close(y, want_y, case.dtype)
    np.testing.assert_allclose(1 / np.sqrt(var + EPS), want_invstd, rtol=1e-10)
    dx, dw, db = numba_calls("backward", case, d, 2, EPS, MOMENTUM)()
    want_dx, want_dw, want_db = ref.batch_norm_backward(d.dy.astype(np.float64), x64,
                                                        want_mean, want_invstd, d.weight,
                                                        axis=case.axis)
    _close(dx, want_dx, case.dtype)
    np.testing.assert_allclose(dw, want_dw, rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(db, want_db, rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("case", CASES[:2], ids=lambda c: c.label)
def test_onnxruntime_peer_is_batch_norm_inference(case):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    d = make_data(case)
    (y,) = onnxruntime_call("inference", case, d, 1, EPS)()
    want = cbn.reference.batch_norm_inference(d.x.astype(np.float64), d.running_mean,
                                              d.running_var, d.weight, d.bias, eps=EPS,
                                              axis=case.axis)
    _close(y, want, case.dtype)
    assert onnxruntime_call("inference", CASES[2], make_data(CASES[2]), 1, EPS) is None
    assert onnxruntime_call("forward", case, d, 1, EPS) is None


def test_frozen_op_numpy_and_cbn_agree():
    case = Case((3, 4, 5, 6), "float64")
    d = make_data(case)
    calls = _bench.make_calls("frozen", case, d, 1, None, peers=False)
    np.testing.assert_allclose(calls["cbn"](), calls["numpy"](), rtol=1e-12, atol=1e-12)
    assert set(calls) == {"cbn", "numpy", "floor"}


def test_peer_columns_and_summary():
    case = Case((2, 3))
    results = [Result("inference", case, {"cbn": 1.0, "numpy": 2.0, "torch": None,
                                          "numba": 0.5, "onnxruntime": None, "floor": 1.0}),
               Result("frozen", case, {"cbn": 1.0, "numpy": 2.0, "torch": None,
                                       "numba": 2.0, "onnxruntime": 4.0, "floor": 1.0})]
    s = _bench.summarize(results)
    assert s["peers"]["numba"]["worst"] == {"speedup": 0.5, "case": f"inference {case.label}"}
    assert s["peers"]["numba"]["geomean"] == pytest.approx(1.0)
    assert s["peers"]["onnxruntime"]["cases"] == 1 and "torch" not in s["peers"]
    env = _bench.environment(1, Settings(1, 0.0), use_torch=False, use_peers=False)
    report = _bench.format_report(results, env)
    assert "vs numba" in report and "vs ort" in report
    assert "worst case vs numba : 0.50x" in report
    assert "peers: numba -  |  onnxruntime -" in report


def test_no_peers_leaves_them_out():
    res = _bench.run_benchmark([Case((2, 3, 4, 4))], ops=("inference",), num_threads=1,
                               settings=Settings(1, 0.0), use_torch=False, use_peers=False)
    assert res[0].times["numba"] is None and res[0].times["onnxruntime"] is None


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.label)
def test_numpy_column_is_batch_norm_in_the_input_dtype(case):
    from cbn.bench import numpy_peer as npb
    d = make_data(case)
    ref = cbn.reference
    x64, dy64 = d.x.astype(np.float64), d.dy.astype(np.float64)
    y = npb.inference(d.x, d.running_mean, d.running_var, d.weight, d.bias, EPS, case.axis)
    assert y.dtype == d.x.dtype
    _close(y, ref.batch_norm_inference(x64, d.running_mean, d.running_var, d.weight, d.bias,
                                       eps=EPS, axis=case.axis), case.dtype)
    rm, rv = d.running_mean.copy(), d.running_var.copy()
    rm_r, rv_r = d.running_mean.copy(), d.running_var.copy()
    y = npb.forward(d.x, d.weight, d.bias, EPS, rm, rv, MOMENTUM, case.axis, activation="relu",
                    residual=d.residual)
    want, mean, invstd = ref.batch_norm_forward(x64, d.weight, d.bias, eps=EPS,
                                                running_mean=rm_r, running_var=rv_r,
                                                momentum=MOMENTUM, axis=case.axis,
                                                activation="relu",
                                                residual=d.residual.astype(np.float64))
    assert y.dtype == d.x.dtype
    _close(y, want, case.dtype)
    np.testing.assert_allclose(rm, rm_r, rtol=1e-5)
    np.testing.assert_allclose(rv, rv_r, rtol=1e-5)
    got = npb.backward(d.dy, d.x, mean, invstd, d.weight, case.axis, y=want.astype(d.x.dtype))
    wantb = ref.batch_norm_backward(dy64, x64, mean, invstd, d.weight, axis=case.axis,
                                    activation="relu", y=want,
                                    residual=d.residual.astype(np.float64))
    for g, w_ in zip(got, wantb):
        _close(g, w_, case.dtype)


def test_numpy_column_backward_sums_16_bit_data_in_float32():
    """More elements per channel than float16 holds (65,504): the sums and the count stay
    finite, and dx is the float64 reference's to float16 rounding."""
    from cbn.bench import numpy_peer as npb
    rng = np.random.default_rng(3)
    x = rng.standard_normal((2, 2, 300, 300)).astype(np.float16)
    dy = (rng.standard_normal(x.shape) + 0.5).astype(np.float16)
    x64, dy64 = x.astype(np.float64), dy.astype(np.float64)
    mean = x64.mean(axis=(0, 2, 3))
    invstd = 1 / np.sqrt(x64.var(axis=(0, 2, 3)) + EPS)
    w = np.array([1.5, -0.5])
    with np.errstate(over="raise", invalid="raise"):
        dx, dweight, dbias = npb.backward(dy, x, mean, invstd, w, 1)
    want = cbn.reference.batch_norm_backward(dy64, x64, mean, invstd, w, axis=1)
    assert dx.dtype == np.float16
    np.testing.assert_allclose(dbias, want[2], rtol=1e-3)
    # each product g * xhat is rounded to float16: the sum is good to 2^-10 of its terms' sum
    terms = np.abs(dy64 * (x64 - mean[:, None, None]) * invstd[:, None, None]).sum(axis=(0, 2, 3))
    assert np.all(np.abs(dweight - want[1]) <= terms * 2.0 ** -10)
    np.testing.assert_allclose(dx.astype(np.float64), want[0], rtol=0, atol=2e-2)


@pytest.mark.parametrize("case", [Case((3, 6, 4), "float32", -1), Case((2, 3, 4, 4), "float64")],
                         ids=lambda c: c.label)
@pytest.mark.parametrize("kind", ["mask", "sample_weight"])
def test_masked_peers_are_the_weighted_batch_norm(case, kind):
    """The NumPy and torch columns of forward_masked / forward_weighted against the
    reference, and the cbn call against both."""
    from cbn.bench import numpy_peer as npb
    from cbn.bench.calls import make_calls
    d = make_data(case)
    wts = d.mask if kind == "mask" else d.sample_weight
    rm, rv = d.running_mean.copy(), d.running_var.copy()
    rm_r, rv_r = d.running_mean.copy(), d.running_var.copy()
    y = npb.forward_weighted(d.x, wts, d.weight, d.bias, EPS, rm, rv, MOMENTUM, case.axis)
    want = cbn.reference.batch_norm_forward(d.x.astype(np.float64), d.weight, d.bias, eps=EPS,
                                            running_mean=rm_r, running_var=rv_r,
                                            momentum=MOMENTUM, axis=case.axis, **{kind: wts})
    _close(y, want.out, case.dtype)
    np.testing.assert_allclose(rm, rm_r, rtol=1e-5)
    np.testing.assert_allclose(rv, rv_r, rtol=1e-5)
    op = "forward_masked" if kind == "mask" else "forward_weighted"
    calls = make_calls(op, case, d, 1, torch=_torch_or_none(), peers=False)
    _close(calls["cbn"]().out, want.out, case.dtype)
    if "torch" in calls:
        _close(calls["torch"]().numpy(), want.out, case.dtype)


def _torch_or_none():
    try:
        import torch
    except ImportError:
        return None
    return torch


def test_peers_leave_torch_on_the_bench_thread_count():
    torch = pytest.importorskip("torch")
    pytest.importorskip("numba")
    case = Case((2, 3, 4, 4))
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        calls = _bench.make_calls("inference", case, make_data(case), 1, torch)
        calls["numba"]()  # numba's OpenMP layer resets the shared pool as it runs
        calls["torch"].prepare()  # what each torch round runs first
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)


def test_busy_machine_is_reported_before_the_run():
    from cbn.bench.busy import busy_reason
    msg = busy_reason(1, calls=5, loadavg=lambda: (1000.0, 0.0, 0.0))
    assert msg.startswith("warning: the machine looks busy") and "load average 1000.00" in msg
    quiet = busy_reason(1, calls=5, loadavg=lambda: (0.0, 0.0, 0.0))
    assert quiet is None or "calibration" in quiet  # the spread itself may flag a busy box


def test_cli_prints_the_busy_warning_first(monkeypatch, capsys):
    import cbn.bench.cli as cli
    monkeypatch.setattr(cli, "busy_reason", lambda nt: "warning: the machine looks busy (x)")
    parser = __import__("argparse").ArgumentParser()
    _bench.add_arguments(parser)
    args = parser.parse_args(["--quick", "--repeats", "1", "--ops", "inference", "--no-torch",
                              "--no-peers", "--no-scaling"])
    cli.run(args, cases=[Case((2, 3, 4, 4))])
    err = capsys.readouterr().err
    assert err.index("warning: the machine looks busy") < len(err)
