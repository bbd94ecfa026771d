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


def plot_speedups(path, results, env, plt=None):
    """Bar chart of cbn's speedup over numpy and torch, one panel per op (log scale).

    Parameters
    ----------
    path : str or path-like
        Image file to write (format from the extension, e.g. ``.png``).
    results : list of Result
        From :func:`run_benchmark`.
    env : dict
        From :func:`environment`, for the title.
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
    height = 3.2 * len(ops)
    fig, axes = plt.subplots(len(ops), 1, figsize=(max(6.0, 0.9 * n_cases + 2), height),
                             squeeze=False)
    for ax, op in zip(axes[:, 0], ops, strict=True):
        _plot_op(ax, op, [r for r in results if r.op == op])
    fig.suptitle(f"cbn {env['cbn']} speedup ({env['simd_level']}, {env['threads']} threads)")
    fig.tight_layout(rect=(0.0, 0.0, 1.0, 1.0 - 0.45 / height))  # half an inch for the title
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _plot_op(ax, op, results):
    """Draw one op's grouped bars (vs numpy, vs torch) on ``ax``."""
    from matplotlib.ticker import FuncFormatter, NullFormatter

    pos = np.arange(len(results))
    width = 0.4
    for k, (impl, color) in enumerate((("numpy", "tab:blue"), ("torch", "tab:orange"))):
        vals = [r.speedup(impl) or math.nan for r in results]
        ax.bar(pos + (k - 0.5) * width, vals, width, label=f"vs {impl}", color=color)
    ax.axhline(1.0, color="black", linewidth=0.8)
    ax.set_yscale("log")
    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}x"))
    ax.yaxis.set_minor_formatter(NullFormatter())
    ax.set_ylabel("speedup (x)")
    ax.set_title(op)
    ax.set_xticks(pos)
    ax.set_xticklabels([f"{r.case.shape_label}\n{r.case.dtype} ax={r.case.axis}"
                        for r in results], fontsize=7)
    ax.legend(fontsize=8)
