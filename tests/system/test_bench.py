"""Tests of ``python -m cbn bench`` (cbn/bench/): it runs, reports and writes its files.

Speed is never asserted; only that the timings exist, are positive and are reported.  The
tests pass with and without torch installed (torch columns are then ``-``).
"""

import argparse
import importlib.util
import io
import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest

from cbn import bench as _bench
from cbn._dispatch import kernels as k
from cbn.bench import Case, Result, Settings
from cbn.bench import cases as _bench_cases
from cbn.bench.calls import import_torch

HAS_TORCH = importlib.util.find_spec("torch") is not None
HAS_MATPLOTLIB = importlib.util.find_spec("matplotlib") is not None

#: Tiny cases: NCHW, 2-D float64, channels-last.
TINY = [Case((2, 3, 4, 4)), Case((6, 5), "float64"), Case((2, 4, 4, 3), "float32", -1),
        Case((3, 6, 4), "float32", -1)]  # the last a padded sequence (N, T, C)
#: One round, no minimum round length: as fast as the bench can go.
FAST = Settings(repeats=1, min_time=0.0)


def parse(argv):
    """The bench options parsed as ``python -m cbn bench`` would."""
    parser = argparse.ArgumentParser()
    _bench.add_arguments(parser)
    return parser.parse_args(argv)


@pytest.fixture(scope="module")
def results():
    return _bench.run_benchmark(TINY, num_threads=1, settings=FAST)


def test_rows_cover_every_op_and_case(results):
    """Every op on every case, the fused ops on the float32 cases only."""
    from cbn.bench.cases import applies

    assert [(r.op, r.case) for r in results] == [(op, c) for op in _bench.OPS for c in TINY
                                                 if applies(op, c)]
    fused = {r.op for r in results if r.op in _bench.FUSED_OPS}
    assert fused == set(_bench.FUSED_OPS)
    assert all(r.case.dtype == "float32" for r in results if r.op in _bench.FUSED_OPS)


def test_times_are_positive(results):
    for r in results:
        for impl in ("cbn", "numpy", "floor"):
            assert r.times[impl] > 0, (r.op, r.case, impl)
        if HAS_TORCH:
            assert r.times["torch"] > 0, (r.op, r.case)
        else:
            assert r.times["torch"] is None


def test_ratios_are_consistent_and_finite(results):
    for r in results:
        assert math.isfinite(r.floor_ratio) and r.floor_ratio > 0
        assert r.floor_ratio == pytest.approx(r.times["cbn"] / r.times["floor"])
        assert r.speedup("numpy") == pytest.approx(r.times["numpy"] / r.times["cbn"])
        assert all(s >= 1.0 for s in r.spreads.values())


def test_without_torch_columns_are_empty():
    res = _bench.run_benchmark(TINY[:1], ops=("inference",), num_threads=1, settings=FAST,
                               use_torch=False)
    assert res[0].times["torch"] is None and res[0].speedup("torch") is None
    report = _bench.format_report(res, _bench.environment(1, FAST, use_torch=False))
    assert "- (torch not measured)" in report


@pytest.mark.skipif(not HAS_TORCH, reason="torch not installed")
def test_torch_thread_count_is_restored():
    import torch

    before = torch.get_num_threads()
    _bench.run_benchmark(TINY[:1], ops=("inference",), num_threads=1, settings=FAST)
    assert torch.get_num_threads() == before


def test_report_has_header_tables_and_summary(results):
    env = _bench.environment(1, FAST)
    report = _bench.format_report(results, env)
    import cbn

    assert f"cbn {cbn.__version__}" in report
    assert f"SIMD {cbn.config()['simd_level']}" in report
    assert "threads 1" in report and "torch " in report
    for op in _bench.OPS:
        assert f"\n{op}\n" in report
    for case in TINY:
        assert case.shape_label in report
    for line in ("geometric-mean speedup vs torch", "geometric-mean speedup vs numpy",
                 "worst case vs torch", "of the floor"):
        assert line in report


def test_summary_figures():
    case_big = Case((1000, 1000), "float64")  # 8 MB: counts for the floor summary
    case_small = Case((2, 3))
    rows = [
        Result("forward", case_big, {"cbn": 1.0, "numpy": 4.0, "torch": 2.0, "floor": 0.9}),
        Result("backward", case_big, {"cbn": 1.0, "numpy": 1.0, "torch": 0.5, "floor": 0.5}),
        Result("inference", case_small, {"cbn": 1.0, "numpy": 1.0, "torch": None,
                                         "floor": 0.1}),
    ]
    s = _bench.summarize(rows)
    assert s["cases"] == 3
    assert s["geomean_vs_torch"] == pytest.approx(1.0)  # sqrt(2 * 0.5)
    assert s["geomean_vs_numpy"] == pytest.approx(4.0 ** (1 / 3))
    assert s["worst_vs_torch"]["speedup"] == pytest.approx(0.5)
    assert s["worst_vs_torch"]["case"].startswith("backward 1000x1000")
    assert (s["floor_cases"], s["within_floor"]) == (2, 1)


def test_noisy_rows_are_marked():
    r = Result("inference", Case((2, 3)), {"cbn": 1.0, "numpy": 1.0, "torch": None,
                                           "floor": 1.0}, {"cbn": 2.0, "numpy": 1.0})
    assert r.noisy
    assert "*" in _bench.format_table("inference", [r]).splitlines()[3]


@pytest.mark.parametrize("n_noisy,warns", [(0, False), (1, False), (2, True), (8, True)])
def test_summary_warns_when_many_rows_are_noisy(n_noisy, warns):
    quiet = {"cbn": 1.0, "numpy": 1.0}
    rows = [Result("inference", Case((2, 3)), {"cbn": 1.0, "numpy": 1.0, "floor": 1.0},
                   {"cbn": 2.0} if i < n_noisy else quiet) for i in range(8)]
    s = _bench.summarize(rows)
    assert s["noisy_cases"] == n_noisy
    assert ("unreliable" in _bench.format_summary(s)) == warns


def test_16_bit_cases_run_with_float32_parameters_and_torch():
    """A 16-bit case: data of the format, parameters in float32; every implementation runs
    and the floor streams the same bytes."""
    case = Case((4, 8, 16, 16), "float16", 1)
    d = _bench_cases.make_data(case)
    assert d.x.dtype == np.float16 and d.weight.dtype == np.float32
    for op in ("forward", "backward", "inference", "frozen"):
        calls = _bench.make_calls(op, case, d, 1, torch=import_torch())
        for name, call in calls.items():
            call()
        assert "numba" not in calls and "onnxruntime" not in calls


def test_default_cases():
    full = _bench.default_cases()
    wide = [c for c in full if c.dtype in ("float32", "float64")]
    assert len(wide) == 20  # 10 shapes x float32, float64
    assert Case((64, 14, 14, 256), "float64", -1) in full and Case((64, 7, 7, 512), "float32",
                                                                    -1) in full
    halves = [c for c in full if c.dtype in ("float16", "bfloat16")]
    assert {c.shape for c in halves} == {(32, 64, 56, 56), (4096, 1024), (32, 56, 56, 64)}
    assert "float16" in {c.dtype for c in halves}
    assert ("bfloat16" in {c.dtype for c in halves}) == _bench_cases.available("bfloat16")
    assert Case((32, 56, 56, 64), "float32", -1) in full
    quick = _bench.default_cases(quick=True, dtypes=("float32",))
    assert len(quick) == 6 and any(c.axis == -1 for c in quick)
    # the quick run keeps a case for the thread-scaling table (in cache, big enough for a team)
    assert _bench.scaling_pairs(quick, max_bytes=4 * 2**20, min_elements=65536)


def test_cli_run_writes_json_and_report(tmp_path):
    path = tmp_path / "bench.json"
    out = io.StringIO()
    args = parse(["--quick", "--repeats", "1", "--threads", "1", "--ops", "inference,backward",
                  "--json", str(path)])
    assert _bench.run(args, cases=TINY[:2], out=out) == 0
    data = json.loads(path.read_text())
    assert data["environment"]["threads"] == 1
    assert [r["op"] for r in data["results"]] == ["inference"] * 2 + ["backward"] * 2
    for r in data["results"]:
        assert r["times_s"]["cbn"] > 0 and r["times_s"]["floor"] > 0
        assert r["floor_ratio"] > 0
    assert "\ninference\n" in out.getvalue() and "\nforward\n" not in out.getvalue()


def test_progress_keeps_a_final_line(capsys):
    args = parse(["--quick", "--repeats", "1", "--threads", "1", "--ops", "inference"])
    assert _bench.run(args, cases=TINY[:1], out=io.StringIO()) == 0
    assert "bench: 1/1" in capsys.readouterr().err


def test_progress_bar_draws_on_a_terminal():
    class Tty(io.StringIO):
        def isatty(self):
            return True

    stream = Tty()
    bar = _bench.ProgressBar(4, stream=stream)
    bar(1, 4, "forward 2x3")
    bar.close()
    text = stream.getvalue()
    assert "\r[" in text and "1/4" in text
    assert "bench: 1/4 op x case timings in " in text and text.endswith(" s\n")


@pytest.mark.skipif(not HAS_MATPLOTLIB, reason="matplotlib not installed")
def test_plot_writes_a_png(tmp_path, results):
    path = tmp_path / "speedup.png"
    _bench.plot_speedups(path, results, _bench.environment(1, FAST))
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    times = tmp_path / "speedup_times.png"  # the second figure: times per call
    assert times.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_plot_without_matplotlib_is_a_clear_error(monkeypatch, capsys, tmp_path):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # makes `import matplotlib` fail
    args = parse(["--quick", "--plot", str(tmp_path / "x.png")])
    assert _bench.run(args, cases=TINY[:1], out=io.StringIO()) == 2
    assert "--plot needs matplotlib: pip install matplotlib" in capsys.readouterr().err
    assert not (tmp_path / "x.png").exists()


@pytest.mark.parametrize("argv", [["--ops", "forward,sideways"], ["--threads", "0"],
                                  ["--dtypes", "float8"], ["--repeats", "x"]])
def test_bad_options_are_rejected(argv, capsys):
    with pytest.raises(SystemExit) as exc:
        parse(argv)
    assert exc.value.code == 2


def test_ops_option_keeps_order_and_drops_duplicates():
    assert parse(["--ops", "inference,forward,inference"]).ops == ("inference", "forward")


def test_python_m_cbn_info(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "cbn", "info"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("cbn ") and "simd level" in proc.stdout


def test_python_m_cbn_bench_help(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "cbn", "bench", "--help"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    for option in ("--quick", "--threads", "--ops", "--dtypes", "--plot", "--json",
                   "--no-scaling"):
        assert option in proc.stdout


def test_floor_kernels_are_the_best_variant_whatever_cbn_simd_selects(tmp_path):
    """The floor measures the machine: with CBN_SIMD capping cbn at the baseline, the floor
    still uses the best variant, and the header says both."""
    from cbn import _build_info, _dispatch

    best = next(v for v in _dispatch.LEVELS if v in _build_info.VARIANTS
                and _dispatch.kernels.cpu_supports(v))
    assert _dispatch.best_supported() == best
    code = ("import cbn; from cbn import bench as _bench, _dispatch; "
            "env = _bench.environment(1, _bench.Settings(1, 0.0), use_torch=False); "
            "print(cbn.config()['simd_level'], env['floor_simd_level']); "
            "print(_bench.format_header(env).splitlines()[0])")
    res = subprocess.run([sys.executable, "-W", "ignore", "-c", code], capture_output=True,
                         text=True, check=True, cwd=tmp_path,
                         env=dict(os.environ, CBN_SIMD="baseline"))
    levels, header = res.stdout.splitlines()
    assert levels.split() == ["baseline", best]
    if best != "baseline":
        assert f"SIMD baseline (CBN_SIMD; floor kernels {best})" in header
    else:
        assert "SIMD baseline  |" in header


# ------------------------------------------------------------------------------------ scaling
def test_scaling_pairs_keep_exactly_the_cached_cases_big_enough_for_a_team():
    from cbn._dispatch import kernels

    tuning = kernels.tuning()
    limit = _bench.SCALING_CACHE_FRACTION * tuning["l3_bytes"]
    cases = _bench.default_cases()
    pairs = _bench.scaling_pairs(cases)
    from cbn.bench.cases import ARRAYS, applies

    for op in _bench.OPS:
        for case in cases:
            fits = case.nbytes * ARRAYS[op] <= limit
            team = math.prod(case.shape) >= tuning["parallel_min_elems"]
            assert ((op, case) in pairs) == (fits and team and applies(op, case)), (op, case)
    assert [op for op, _ in pairs] == sorted((op for op, _ in pairs), key=_bench.OPS.index)


def test_scaling_pairs_limits():
    big, small = Case((4, 8, 16, 16)), Case((2, 3, 4, 4))
    pairs = _bench.scaling_pairs([big, small], max_bytes=2 * big.nbytes, min_elements=1000)
    # backward touches three arrays (x, dy, dx): over the limit; the small case has no team
    assert pairs == [("forward", big), ("inference", big), ("frozen", big), ("inference_silu", big)]
    assert _bench.scaling_pairs([big], ("backward",), max_bytes=3 * big.nbytes,
                                min_elements=1) == [("backward", big)]


@pytest.fixture(scope="module")
def scaling():
    pairs = [(op, TINY[0]) for op in _bench.OPS] + [("backward", TINY[2])]
    return _bench.run_scaling(pairs, num_threads=2, settings=FAST)


def test_scaling_times_and_ratios(scaling):
    assert [(r.op, r.case) for r in scaling] == (
        [(op, TINY[0]) for op in _bench.OPS] + [("backward", TINY[2])])
    for r in scaling:
        assert r.threads == 2
        assert set(r.times) == {"cbn_1", "cbn_n", "floor_1", "floor_n"}
        assert all(t > 0 for t in r.times.values())
        assert r.speedup() == pytest.approx(r.times["cbn_1"] / r.times["cbn_n"])
        assert r.speedup("floor") == pytest.approx(r.times["floor_1"] / r.times["floor_n"])
        assert r.relative == pytest.approx(r.speedup("cbn") / r.speedup("floor"))
        d = r.to_dict()
        assert d["threads"] == 2 and d["relative"] == pytest.approx(r.relative)


def test_scaling_report_and_summary():
    case = Case((8, 256, 14, 14))
    rows = [_bench.ScalingResult("forward", case, 2, {"cbn_1": 3.0, "cbn_n": 2.0,
                                                       "floor_1": 2.0, "floor_n": 1.0}),
            _bench.ScalingResult("inference", case, 2, {"cbn_1": 4.0, "cbn_n": 2.0,
                                                         "floor_1": 4.0, "floor_n": 2.5},
                                 {"cbn_n": 2.0})]
    s = _bench.summarize_scaling(rows)
    assert s["worst"]["speedup"] == pytest.approx(1.5)
    assert s["worst"]["floor_speedup"] == pytest.approx(2.0)
    assert s["worst"]["case"] == "forward 8x256x14x14 float32 axis=1"
    assert s["min_relative"] == pytest.approx(0.75)
    assert s["geomean_relative"] == pytest.approx((0.75 * 1.25) ** 0.5)
    assert s["noisy_pairs"] == 1 and _bench.summarize_scaling([]) is None
    text = _bench.format_scaling(rows, 2)
    lines = text.splitlines()
    assert "cbn 2T" in lines[2]
    assert lines[4].startswith("forward") and "1.50x" in lines[4] and "2.00x" in lines[4]
    assert lines[5].endswith("*") and "1.25" in lines[5]
    assert "1.50x  (forward 8x256x14x14 float32 axis=1; floor kernels 2.00x)" in text
    assert "not measured" in _bench.format_scaling([], 1)
    assert "no case" in _bench.format_scaling([], 2)


def test_cli_scaling_table_and_json(tmp_path, monkeypatch):
    path = tmp_path / "bench.json"
    monkeypatch.setattr(_bench.cli, "scaling_pairs",
                        lambda cases, ops: [(op, c) for op in ops for c in cases])
    out = io.StringIO()
    args = parse(["--quick", "--repeats", "1", "--threads", "2", "--ops", "inference",
                  "--no-torch", "--json", str(path)])
    assert _bench.run(args, cases=TINY[:2], out=out) == 0
    assert "thread scaling: 2 threads vs 1" in out.getvalue()
    data = json.loads(path.read_text())
    assert [(r["op"], r["shape"]) for r in data["scaling"]] == [
        ("inference", list(c.shape)) for c in TINY[:2]]
    assert data["scaling_summary"]["pairs"] == 2


@pytest.mark.parametrize("argv,expected", [
    (["--threads", "2", "--no-scaling"], None),
    (["--threads", "1"], "thread scaling: not measured"),
])
def test_cli_scaling_skipped(argv, expected, tmp_path):
    path = tmp_path / "bench.json"
    out = io.StringIO()
    args = parse(["--quick", "--repeats", "1", "--ops", "inference", "--no-torch",
                  "--json", str(path)] + argv)
    assert _bench.run(args, cases=TINY[:1], out=out) == 0
    if expected is None:
        assert "thread scaling" not in out.getvalue()
        assert "scaling" not in json.loads(path.read_text())
    else:
        assert expected in out.getvalue()


# ------------------------------------------------------------------------------ floor kernels
def test_stream_kernels_check_their_arrays():
    a = np.ones(100, np.float32)
    with pytest.raises(ValueError):
        k.stream_scale(a, np.empty(50, np.float32), 1)
    with pytest.raises(ValueError):
        k.stream_triad(a, np.ones(100), np.empty(100, np.float32), 1)
    with pytest.raises(TypeError):
        k.stream_sum(np.ones(10, np.int64), 1)
    with pytest.raises(ValueError):
        k.stream_sum(np.ones(20)[::2], 1)
    out = np.empty_like(a)
    k.stream_scale(a, out, 1)
    np.testing.assert_array_equal(out, 3.0)
    assert k.stream_sum(a, 2) == 100.0


def test_bfloat16_without_ml_dtypes_is_a_clear_error(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "ml_dtypes", None)  # makes `import ml_dtypes` fail
    assert _bench.run(parse(["--dtypes", "bfloat16"]), out=io.StringIO()) == 2
    assert 'needs ml_dtypes: pip install "cbn[bf16]"' in capsys.readouterr().err
    assert all(c.dtype != "bfloat16" for c in _bench.default_cases())
