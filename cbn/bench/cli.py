"""``python -m cbn bench``: the options, and :func:`run`, which times, prints and writes."""

import argparse
import sys

from ._runtime import resolve_threads
from .busy import busy_reason
from .cases import DTYPES, OPS, available, default_cases
from .outputs import PLOT_ERROR, plot_speedups, require_matplotlib, times_path, write_json
from .progress import ProgressBar
from .report import environment, format_report
from .runner import run_benchmark
from .scaling import run_scaling, scaling_pairs
from .timing import FULL, QUICK, Settings

#: The error of ``--dtypes bfloat16`` without ml_dtypes.
BF16_ERROR = '--dtypes bfloat16 needs ml_dtypes: pip install "cbn[bf16]"'


def _csv_of(choices):
    """An argparse type: a comma-separated subset of ``choices``, order kept."""
    def parse(text):
        items = [s.strip() for s in text.split(",") if s.strip()]
        bad = [s for s in items if s not in choices]
        if bad or not items:
            raise argparse.ArgumentTypeError(
                f"expected a comma-separated list of {', '.join(choices)}; got {text!r}")
        return tuple(dict.fromkeys(items))
    return parse


def _positive_int(text):
    """An argparse type: an integer >= 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {value}")
    return value


def add_arguments(parser):
    """Register the ``bench`` options on ``parser``.

    Parameters
    ----------
    parser : argparse.ArgumentParser
        The ``bench`` sub-command's parser.
    """
    parser.description = ("Time cbn against NumPy (in the input dtype), the peers that are installed "
                          "(torch, numba, onnxruntime) and the memory-bandwidth floor measured "
                          "in the same run.")
    parser.add_argument("--quick", action="store_true",
                        help="fewer rounds and a subset (float32, 6 shapes): under a minute")
    parser.add_argument("--threads", type=_positive_int, default=None, metavar="N",
                        help="threads for cbn, torch and the floor kernels (default: all)")
    parser.add_argument("--ops", type=_csv_of(OPS), default=OPS, metavar="LIST",
                        help="comma-separated ops (default: all, " + ",".join(OPS) + ")")
    parser.add_argument("--dtypes", type=_csv_of(DTYPES), default=None, metavar="LIST",
                        help="comma-separated dtypes (default: all of " + ",".join(DTYPES) +
                             ", the 16-bit ones on three shapes, bfloat16 if ml_dtypes is "
                             "installed; --quick: float32)")
    parser.add_argument("--repeats", type=_positive_int, default=None, metavar="K",
                        help="rounds per timing, best kept (default: 7; --quick: 3)")
    parser.add_argument("--no-torch", action="store_true", help="do not time torch")
    parser.add_argument("--no-peers", action="store_true",
                        help="do not time numba and onnxruntime (timed when installed)")
    parser.add_argument("--no-scaling", action="store_true",
                        help="skip the thread-scaling table (n threads vs 1 on the cases that "
                             "fit in cache, next to the floor kernels' scaling)")
    parser.add_argument("--plot", metavar="FILE.png", default=None,
                        help="write bar charts: the speedups and cbn/floor, and the times per "
                             "call beside it (FILE_times.png; needs matplotlib)")
    parser.add_argument("--json", metavar="FILE", default=None, help="write the raw results")


def _settings_for(args):
    """The Settings selected by ``--quick`` and ``--repeats``."""
    base = QUICK if args.quick else FULL
    if args.repeats is None:
        return base
    return Settings(repeats=args.repeats, min_time=base.min_time)


def _measure(args, cases, nt, settings, use_torch, use_peers=True):
    """The main timings and the scaling ones (None with ``--no-scaling``), under one progress
    bar that counts both."""
    pairs = [] if args.no_scaling or nt < 2 else scaling_pairs(cases, args.ops)
    n_main = len(cases) * len(args.ops)
    bar = ProgressBar(n_main + len(pairs))
    scaling = None
    try:
        results = run_benchmark(cases, args.ops, num_threads=nt, settings=settings,
                                use_torch=use_torch, use_peers=use_peers, progress=bar)
        if not args.no_scaling:
            scaling = run_scaling(pairs, num_threads=nt, settings=settings,
                                  progress=lambda d, t, label: bar(n_main + d, bar.total, label))
    finally:
        bar.close()
    return results, scaling


def run(args, cases=None, out=None):
    """Run the benchmark from parsed arguments and print the report.

    Parameters
    ----------
    args : argparse.Namespace
        As registered by :func:`add_arguments`.
    cases : sequence of Case, optional
        Overrides the case list chosen by ``--quick`` / ``--dtypes``.
    out : file-like, optional
        Where to print the report; default ``sys.stdout``.

    Returns
    -------
    int
        Exit code: 0 on success, 2 when ``--plot`` is asked for without matplotlib or
        ``--dtypes bfloat16`` without ml_dtypes.
    """
    out = out if out is not None else sys.stdout
    plt = None
    if args.plot:
        plt = require_matplotlib()
        if plt is None:
            print(PLOT_ERROR, file=sys.stderr)
            return 2
    if cases is None:
        if args.dtypes and "bfloat16" in args.dtypes and not available("bfloat16"):
            print(BF16_ERROR, file=sys.stderr)
            return 2
        dtypes = args.dtypes or (("float32",) if args.quick else DTYPES)
        cases = default_cases(quick=args.quick, dtypes=dtypes)
    settings = _settings_for(args)
    nt = resolve_threads(args.threads)
    use_torch = not args.no_torch
    use_peers = not getattr(args, "no_peers", False)
    env = environment(nt, settings, use_torch, use_peers)
    busy = busy_reason(nt)
    if busy is not None:  # before the run: the report's noise marks come only at its end
        print(busy, file=sys.stderr)
    results, scaling = _measure(args, cases, nt, settings, use_torch, use_peers)
    print(format_report(results, env, scaling), file=out)
    if args.json:
        write_json(args.json, results, env, scaling)
        print(f"\nraw results written to {args.json}", file=out)
    if args.plot:
        plot_speedups(args.plot, results, env, plt=plt)
        print(f"speedup chart written to {args.plot}, times to {times_path(args.plot)}",
              file=out)
    return 0
