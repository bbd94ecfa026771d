"""The files a run writes: the raw results as JSON, and the speedup chart (matplotlib)."""

import json
import math

import numpy as np

from .summary import summarize, summarize_scaling

#: What ``--plot`` says without matplotlib (the CLI prints it, plot_speedups raises it).
PLOT_ERROR = "--plot needs matplotlib: pip install matplotlib"


def write_json(path, results, env, scaling=None):
    """Write the raw results and the environment as JSON.

    Parameters
    ----------
    path : str or path-like
        The file to write.
    results : list of Result
        From :func:`run_benchmark`.
    env : dict
        From :func:`environment`.
    scaling : list of ScalingResult, optional
        From :func:`run_scaling`; written under ``"scaling"`` (with its summary under
        ``"scaling_summary"``) when given.
    """
    summary = summarize(results)
    payload = {"environment": env, "summary": summary,
               "results": [r.to_dict() for r in results]}
    if scaling is not None:
        payload["scaling_summary"] = summarize_scaling(scaling)
        payload["scaling"] = [r.to_dict() for r in scaling]
    with open(path, "w") as f:
        json.dump(payload, f, indent=2)
        f.write("\n")


def require_matplotlib():
    """Import matplotlib with a non-interactive backend; None when it is not installed."""
    try:
        import matplotlib
    except ImportError:
        return None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


#: Bar colours per compared implementation (vs numpy first, then the peers).
_COLOURS = {"numpy": "tab:blue", "torch": "tab:orange", "numba": "tab:green",
            "onnxruntime": "tab:purple", "cbn": "tab:red", "floor": "tab:gray"}
#: The speedup panels' ticks: the bench's thresholds (1.2x, 1.5x, 2x) among round values.
_SPEEDUP_TICKS = (0.25, 0.5, 0.8, 1.0, 1.2, 1.5, 2.0, 3.0, 5.0, 10.0, 20.0, 50.0, 100.0, 200.0)


def times_path(path):
    """The file of the second figure (absolute times) beside the speedup chart at ``path``:
    ``name_times.ext``."""
    path = str(path)
    stem, dot, ext = path.rpartition(".")
    return f"{stem}_times.{ext}" if dot else f"{path}_times"


def plot_speedups(path, results, env, plt=None):
    """Two figures: cbn's speedups and cbn/floor, and the absolute times.

    The first, at ``path``, has one row per op: on the left cbn's speedup over numpy and each
    peer that was timed (log scale, bars drawn from the 1x line: below it when the other is
    faster, ticks at the bench's 1.2x/1.5x/2x, each bar's value printed on it), on the right
    cbn/floor per case (the 1.2x target drawn).  Cases whose rounds varied by more than the
    noise threshold are marked ``*`` in their label.  The second, at :func:`times_path`, has
    the time per call of every implementation (log scale).

    Parameters
    ----------
    path : str or path-like
        Image file to write (format from the extension, e.g. ``.png``).
    results : list of Result
        From :func:`run_benchmark`.
    env : dict
        From :func:`environment`, for the titles.
    plt : module, optional
        ``matplotlib.pyplot``; imported when None.

    Raises
    ------
    ImportError
        If matplotlib is not installed.
    """
    if plt is None:
        plt = require_matplotlib()
        if plt is None:
            raise ImportError(PLOT_ERROR)
    ops = list(dict.fromkeys(r.op for r in results))
    n_cases = max(sum(r.op == op for r in results) for op in ops)
    height = 3.4 * len(ops)
    width = max(7.0, 1.1 * n_cases + 2)
    title = f"cbn {env['cbn']} ({env['simd_level']}, {env['threads']} threads)"
    fig, axes = plt.subplots(len(ops), 2, figsize=(width + 0.35 * n_cases + 2, height),
                             squeeze=False, gridspec_kw={"width_ratios": (3, 1)})
    for row, op in zip(axes, ops, strict=True):
        rs = [r for r in results if r.op == op]
        _plot_speedups(row[0], op, rs)
        _plot_floor(row[1], op, rs)
    _finish(plt, fig, f"{title}: speedup, cbn/floor ('*': noisy rounds)", height, path)
    fig, axes = plt.subplots(len(ops), 1, figsize=(width, height), squeeze=False)
    for ax, op in zip(axes[:, 0], ops, strict=True):
        _plot_times(ax, op, [r for r in results if r.op == op])
    _finish(plt, fig, f"{title}: time per call", height, times_path(path))


def _finish(plt, fig, title, height, path):
    fig.suptitle(title)
    fig.tight_layout(rect=(0.0, 0.0, 1.0, 1.0 - 0.45 / height))  # half an inch for the title
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _labels(ax, results, narrow=False):
    """Tick labels: shape ('*' when its rounds were noisy), dtype and axis; slanted, on one
    line, for a narrow panel."""
    pos = np.arange(len(results))
    ax.set_xticks(pos)
    labels = [f"{r.case.shape_label}{' *' if r.noisy else ''}{' ' if narrow else chr(10)}"
              f"{r.case.dtype} ax={r.case.axis}" for r in results]
    if narrow:
        ax.set_xticklabels(labels, fontsize=6, rotation=60, ha="right")
    else:
        ax.set_xticklabels(labels, fontsize=7)
    return pos


def _compared(results):
    """numpy and the peers with a time in at least one of the results, in IMPLS order."""
    return [i for i in ("numpy", "torch", "numba", "onnxruntime")
            if any(r.speedup(i) is not None for r in results)]


def _plot_speedups(ax, op, results):
    """One op's grouped speedup bars on ``ax``, drawn from 1x (log scale), values printed."""
    from matplotlib.ticker import FixedLocator, FuncFormatter, NullLocator

    pos = _labels(ax, results)
    impls = _compared(results)
    width = 0.8 / max(1, len(impls))
    values = []
    for k, impl in enumerate(impls):
        vals = np.array([r.speedup(impl) or math.nan for r in results])
        x = pos + (k - (len(impls) - 1) / 2) * width
        ax.bar(x, vals - 1.0, width, bottom=1.0, label=f"vs {impl}", color=_COLOURS[impl])
        for xi, v in zip(x, vals, strict=True):
            if math.isfinite(v):
                ax.annotate(f"{v:.2g}", (xi, v), ha="center", fontsize=5.5,
                            va="bottom" if v >= 1 else "top",
                            xytext=(0, 1 if v >= 1 else -1), textcoords="offset points")
        values.extend(v for v in vals if math.isfinite(v))
    ax.axhline(1.0, color="black", linewidth=0.8)
    ax.set_yscale("log")
    if values:
        ax.set_ylim(min(0.8, min(values) / 1.3), max(2.5, max(values) * 1.6))
    ax.yaxis.set_major_locator(FixedLocator(_SPEEDUP_TICKS))
    ax.yaxis.set_minor_locator(NullLocator())
    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}x"))
    ax.grid(axis="y", linewidth=0.3, alpha=0.5)
    ax.set_ylabel("speedup (x)")
    ax.set_title(f"{op}: cbn's speedup (below 1x: the other is faster)", fontsize=9)
    ax.legend(fontsize=7, ncol=len(impls))


def _plot_floor(ax, op, results):
    """One op's cbn/floor per case on ``ax`` (1.0 = memory bandwidth; the 1.2 target drawn)."""
    pos = _labels(ax, results, narrow=True)
    vals = np.array([r.floor_ratio or math.nan for r in results])
    ax.bar(pos, vals, 0.6, color=_COLOURS["floor"])
    for xi, v in zip(pos, vals, strict=True):
        if math.isfinite(v):
            ax.annotate(f"{v:.2f}", (xi, v), ha="center", va="bottom", fontsize=5.5,
                        xytext=(0, 1), textcoords="offset points")
    ax.axhline(1.0, color="black", linewidth=0.8)
    ax.axhline(1.2, color="tab:red", linewidth=0.8, linestyle="--")
    finite = vals[np.isfinite(vals)]
    ax.set_ylim(0.0, max(1.6, float(finite.max()) * 1.15) if finite.size else 1.6)
    ax.set_title(f"{op}: cbn/floor", fontsize=9)


def _plot_times(ax, op, results):
    """One op's time per call for every implementation timed (log scale)."""
    from matplotlib.ticker import FuncFormatter

    pos = _labels(ax, results)
    impls = [i for i in ("cbn", "numpy", "torch", "numba", "onnxruntime", "floor")
             if any(r.times.get(i) for r in results)]
    width = 0.8 / max(1, len(impls))
    for k, impl in enumerate(impls):
        vals = [(r.times.get(impl) or math.nan) * 1e6 for r in results]
        ax.bar(pos + (k - (len(impls) - 1) / 2) * width, vals, width, label=impl,
               color=_COLOURS[impl])
    ax.set_yscale("log")
    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    ax.set_ylabel("us per call")
    ax.set_title(op, fontsize=9)
    ax.legend(fontsize=7, ncol=len(impls))
