"""The text report: environment and header, one table per op, the summary block and the
thread-scaling table."""

import numpy as np

import cbn

from .calls import import_torch
from .peers import import_numba, import_onnxruntime
from .cases import OPS
from .floor import floor_kernels
from .scaling import SCALING_CACHE_FRACTION
from .summary import FLOOR_SUMMARY_MIN_BYTES, FLOOR_TOLERANCE, summarize, summarize_scaling
from .timing import NOISE_THRESHOLD

#: The summary warns when at least 1 / NOISY_SUMMARY_FRACTION of the cases (and 2) are noisy.
NOISY_SUMMARY_FRACTION = 4


def format_time(seconds):
    """A duration with a unit that keeps 3-4 significant digits (``"-"`` for None).

    Parameters
    ----------
    seconds : float or None
        The duration; None for "not measured".

    Returns
    -------
    str
    """
    if seconds is None:
        return "-"
    if seconds < 1e-5:
        return f"{seconds * 1e6:.2f} us"
    if seconds < 1e-3:
        return f"{seconds * 1e6:.1f} us"
    if seconds < 1.0:
        return f"{seconds * 1e3:.2f} ms"
    return f"{seconds:.3f} s"


def _fmt_ratio(value, suffix=""):
    """A ratio with two decimals, or ``"-"``."""
    return "-" if value is None else f"{value:.2f}{suffix}"


_COLUMNS = (("shape", "<", 16), ("dtype", "<", 8), ("axis", ">", 4), ("MB", ">", 7),
            ("cbn", ">", 10), ("numpy", ">", 10), ("torch", ">", 10), ("vs numpy", ">", 9),
            ("vs torch", ">", 9), ("cbn/floor", ">", 9))
#: The optional peers' columns (shown when some row of the run measured them): name, header
#: of the time column, header of the ratio column.
_PEER_COLUMNS = (("numba", "numba", "vs numba"), ("onnxruntime", "ort", "vs ort"))


def _table_row(cells, columns=_COLUMNS):
    """Join cells under the alignment of ``columns`` (``(name, align, width)`` triples)."""
    pairs = zip(cells, columns, strict=True)
    return "  ".join(f"{c:{align}{width}}" for c, (_, align, width) in pairs)


def format_table(op, results):
    """One op's table: a row per case (the numba and ONNX Runtime columns when measured).

    Parameters
    ----------
    op : str
        The op, for the title.
    results : list of Result
        That op's results.

    Returns
    -------
    str
    """
    peers = [p for p in _PEER_COLUMNS if any(r.times.get(p[0]) is not None for r in results)]
    columns = (_COLUMNS[:7] + tuple((head, ">", 10) for _, head, _ in peers) + _COLUMNS[7:9]
               + tuple((vs, ">", 9) for _, _, vs in peers) + _COLUMNS[9:])
    lines = [f"{op}", _table_row([name for name, _, _ in columns], columns)]
    lines.append("-" * len(lines[-1]))
    for r in results:
        c = r.case
        lines.append(_table_row([
            c.shape_label, c.dtype, str(c.axis), f"{c.nbytes / 1e6:.1f}",
            format_time(r.times.get("cbn")), format_time(r.times.get("numpy")),
            format_time(r.times.get("torch")),
            *[format_time(r.times.get(name)) for name, _, _ in peers],
            _fmt_ratio(r.speedup("numpy"), "x"), _fmt_ratio(r.speedup("torch"), "x"),
            *[_fmt_ratio(r.speedup(name), "x") for name, _, _ in peers],
            _fmt_ratio(r.floor_ratio),
        ], columns) + ("  *" if r.noisy else ""))
    if any(r.noisy for r in results):
        lines.append(f"* rounds varied by more than {NOISE_THRESHOLD - 1:.0%} (busy machine?): "
                     "rerun, add --repeats, or try --threads 1")
    return "\n".join(lines)


def format_summary(summary):
    """The summary block printed after the tables.

    Parameters
    ----------
    summary : dict
        From :func:`summarize`.

    Returns
    -------
    str
    """
    worst = summary["worst_vs_torch"]
    no_torch = "- (torch not measured)"
    lines = [
        f"summary over {summary['cases']} cases",
        "  geometric-mean speedup vs torch : "
        + (no_torch if summary["geomean_vs_torch"] is None
           else f"{summary['geomean_vs_torch']:.2f}x"),
        "  geometric-mean speedup vs numpy : "
        + _fmt_ratio(summary["geomean_vs_numpy"], "x"),
        "  worst case vs torch             : "
        + (no_torch if worst is None else f"{worst['speedup']:.2f}x  ({worst['case']})"),
    ]
    for peer, p in summary.get("peers", {}).items():
        if peer == "torch":
            continue
        lines += [f"  geometric-mean speedup vs {peer} : {p['geomean']:.2f}x  "
                  f"({p['cases']} cases)",
                  f"  worst case vs {peer} : {p['worst']['speedup']:.2f}x  ({p['worst']['case']})"]
    lines += [
        f"  within {FLOOR_TOLERANCE}x of the floor        : "
        f"{summary['within_floor']} of {summary['floor_cases']} cases with x >= "
        f"{FLOOR_SUMMARY_MIN_BYTES / 1e6:.0f} MB",
    ]
    noisy = summary.get("noisy_cases", 0)
    if noisy >= 2 and noisy * NOISY_SUMMARY_FRACTION >= summary["cases"]:
        lines.append(f"  warning: {noisy} of {summary['cases']} cases varied by more than "
                     f"{NOISE_THRESHOLD - 1:.0%} between rounds -- the machine was busy and the "
                     "ratios above are unreliable; rerun on an idle machine")
    return "\n".join(lines)


_SCALING_COLUMNS = (("op", "<", max(len(op) for op in OPS)), ("shape", "<", 16), ("dtype", "<", 8), ("axis", ">", 4),
                    ("MB", ">", 7), ("cbn 1T", ">", 10), ("cbn nT", ">", 10),
                    ("cbn", ">", 7), ("floor", ">", 7), ("cbn/floor", ">", 9))


def format_scaling(scaling, threads):
    """The thread-scaling table and its summary lines.

    Parameters
    ----------
    scaling : list of ScalingResult
        From :func:`run_scaling`.
    threads : int
        The thread count of the run (shown when the table is empty).

    Returns
    -------
    str
    """
    if threads < 2:
        return "thread scaling: not measured (1 thread; run with --threads 2 or more)"
    if not scaling:
        return ("thread scaling: no case both fits in cache and is large enough for a thread "
                "team (see cbn.bench.scaling_pairs)")

    lines = [f"thread scaling: {threads} threads vs 1, cases whose arrays fit in "
             f"{SCALING_CACHE_FRACTION:g} of the last-level cache",
             "cbn, floor: time at 1 thread over time at n; cbn/floor: cbn's speedup over the "
             "floor kernels' (1.00: cbn scales as a plain OpenMP loop over the same bytes)",
             _table_row([name.replace("nT", f"{threads}T") for name, _, _ in _SCALING_COLUMNS],
                        _SCALING_COLUMNS)]
    lines.append("-" * len(lines[-1]))
    for r in scaling:
        c = r.case
        lines.append(_table_row([
            r.op, c.shape_label, c.dtype, str(c.axis), f"{c.nbytes / 1e6:.1f}",
            format_time(r.times["cbn_1"]), format_time(r.times["cbn_n"]),
            _fmt_ratio(r.speedup("cbn"), "x"), _fmt_ratio(r.speedup("floor"), "x"),
            _fmt_ratio(r.relative),
        ], _SCALING_COLUMNS) + ("  *" if r.noisy else ""))
    if any(r.noisy for r in scaling):
        lines.append(f"* rounds varied by more than {NOISE_THRESHOLD - 1:.0%} (busy machine?)")
    sm = summarize_scaling(scaling)
    w = sm["worst"]
    lines += ["",
              f"  smallest speedup, {threads} threads vs 1 : {w['speedup']:.2f}x  ({w['case']}; "
              f"floor kernels {w['floor_speedup']:.2f}x)",
              f"  cbn speedup / floor speedup    : min {sm['min_relative']:.2f}, "
              f"geometric mean {sm['geomean_relative']:.2f}"]
    return "\n".join(lines)


def _version(get):
    """The version string of an optional peer (None when it is not installed)."""
    got = get()
    if got is None:
        return None
    return (got[0] if isinstance(got, tuple) else got).__version__


def environment(num_threads, settings, use_torch=True, use_peers=True):
    """What the report header shows: versions, SIMD level, threads, timing method.

    Parameters
    ----------
    num_threads : int
        Threads in use.
    settings : Settings
        The timing settings.
    use_torch : bool, default True
        Whether torch is timed (``--no-torch`` clears it).
    use_peers : bool, default True
        Whether numba and ONNX Runtime are timed where installed (``--no-peers`` clears it).

    Returns
    -------
    dict
    """
    cfg = cbn.config()
    torch = import_torch()
    return {
        "cbn": cfg["version"],
        "simd_level": cfg["simd_level"],
        "floor_simd_level": floor_kernels()[1],
        "openmp_runtime": cfg["openmp_runtime"],
        "threads": num_threads,
        "max_threads": cfg["default_threads"],
        "torch": None if torch is None else torch.__version__,
        "torch_timed": bool(use_torch and torch is not None),
        "numba": _version(import_numba) if use_peers else None,
        "onnxruntime": _version(import_onnxruntime) if use_peers else None,
        "numpy": np.__version__,
        "python": cfg["python"],
        "repeats": settings.repeats,
        "min_time_s": settings.min_time,
    }


def format_header(env):
    """The header lines of the report.

    Parameters
    ----------
    env : dict
        From :func:`environment`.

    Returns
    -------
    str
    """
    if env["torch"] is None:
        torch = "not installed (torch columns show -)"
    elif not env["torch_timed"]:
        torch = f"{env['torch']} (not timed: --no-torch)"
    else:
        torch = env["torch"]
    simd = env["simd_level"]
    floor_level = env.get("floor_simd_level", simd)
    if floor_level != simd:
        simd = f"{simd} (CBN_SIMD; floor kernels {floor_level})"
    return "\n".join([
        f"cbn {env['cbn']}  |  SIMD {simd}  |  threads {env['threads']} "
        f"(of {env['max_threads']}, {env['openmp_runtime']})  |  torch {torch}  |  "
        f"numpy {env['numpy']}  |  python {env['python']}",
        f"peers: numba {env.get('numba') or '-'}  |  onnxruntime {env.get('onnxruntime') or '-'}"
        " (not installed or --no-peers: -; numba kernels: cbn.bench.peers)",
        f"timing: best of {env['repeats']} interleaved rounds of >= {env['min_time_s'] * 1e3:g} ms"
        " each (time.perf_counter), time per call",
        "cbn and numba: output preallocated, not timed; numpy (in x's dtype; frozen: x * a + b)"
        ", torch and onnxruntime: whole call, output allocation included",
        "floor: streaming kernels over the same bytes -- inference scale(x); forward sum(x) +"
        " scale(x); backward sum(x) + sum(dy) + triad(x, dy)",
        "vs numpy / vs a peer: its time over cbn's (>1: cbn faster); cbn/floor: 1.00 ="
        " memory bandwidth",
    ])


def format_report(results, env, scaling=None):
    """The whole text report: header, one table per op, summary, thread scaling.

    Parameters
    ----------
    results : list of Result
        From :func:`run_benchmark`.
    env : dict
        From :func:`environment`.
    scaling : list of ScalingResult, optional
        From :func:`run_scaling`; None leaves the scaling block out.

    Returns
    -------
    str
    """
    ops = list(dict.fromkeys(r.op for r in results))
    blocks = [format_header(env)]
    blocks += [format_table(op, [r for r in results if r.op == op]) for op in ops]
    blocks.append(format_summary(summarize(results)))
    if scaling is not None:
        blocks.append(format_scaling(scaling, env["threads"]))
    return "\n\n".join(blocks)
