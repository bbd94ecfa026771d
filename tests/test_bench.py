"""Tests of ``python -m cbn bench`` (cbn/_bench.py): it runs, reports and writes its files.

Speed is never asserted; only that the timings exist, are positive and are reported.  The
tests pass with and without torch installed (torch columns are then ``-``).
"""

import argparse
import importlib
import importlib.util
import io
import json
import math
import os
import subprocess
import sys

import pytest

from cbn import _bench
from cbn._bench import Case, Result, Settings

HAS_TORCH = importlib.util.find_spec("torch") is not None
HAS_MATPLOTLIB = importlib.util.find_spec("matplotlib") is not None

#: Tiny cases: NCHW, 2-D float64, channels-last.
TINY = [Case((2, 3, 4, 4)), Case((6, 5), "float64"), Case((2, 4, 4, 3), "float32", -1)]
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
    assert [(r.op, r.case) for r in results] == [(op, c) for op in _bench.OPS for c in TINY]


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


def test_default_cases():
    full = _bench.default_cases()
    assert len(full) == 14 and {c.dtype for c in full} == {"float32", "float64"}
    assert Case((32, 56, 56, 64), "float32", -1) in full
    quick = _bench.default_cases(quick=True, dtypes=("float32",))
    assert len(quick) == 4 and any(c.axis == -1 for c in quick)


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


def test_plot_without_matplotlib_is_a_clear_error(monkeypatch, capsys, tmp_path):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # makes `import matplotlib` fail
    args = parse(["--quick", "--plot", str(tmp_path / "x.png")])
    assert _bench.run(args, cases=TINY[:1], out=io.StringIO()) == 2
    assert "--plot needs matplotlib: pip install matplotlib" in capsys.readouterr().err
    assert not (tmp_path / "x.png").exists()


@pytest.mark.parametrize("argv", [["--ops", "forward,sideways"], ["--threads", "0"],
                                  ["--dtypes", "float16"], ["--repeats", "x"]])
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
    for option in ("--quick", "--threads", "--ops", "--dtypes", "--plot", "--json"):
        assert option in proc.stdout


def test_floor_kernels_are_the_best_variant_whatever_cbn_simd_selects(tmp_path):
    """The floor measures the machine: with CBN_SIMD capping cbn at the baseline, the floor
    still uses the best variant, and the header says both."""
    from cbn import _build_info, _dispatch

    baseline = importlib.import_module("cbn._kernels_baseline")
    best = next(v for v in _dispatch.LEVELS if v in _build_info.VARIANTS
                and baseline.cpu_supports(v))
    assert _dispatch.best_supported()[1] == best
    assert _dispatch.best_supported()[0].variant() == best
    code = ("import cbn; from cbn import _bench, _dispatch; "
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
