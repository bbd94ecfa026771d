"""``python -m cbn bench``: time cbn against NumPy, torch and the memory-bandwidth floor.

For every case (shape x dtype x channel axis) and op (training ``forward``, ``backward``,
``inference``) four implementations are timed in the same process, interleaved round by round
so that slow drift of the machine (frequency, other jobs) hits them alike:

* ``cbn``: :mod:`cbn` with its output preallocated (``out=``), so allocation is not timed;
* ``numpy``: :mod:`~cbn.bench.numpy_peer`, plain NumPy in the input's dtype, timed as a whole
  call (it allocates);
* ``torch``: ``torch.nn.functional.batch_norm`` / ``native_batch_norm_backward``, timed as a
  whole call (no ``out=`` there), if torch is importable;
* ``numba``, ``onnxruntime``: the optional peers of :mod:`~cbn.bench.peers` (numba with its
  outputs preallocated; ONNX Runtime a whole ``run``), if importable;
* ``floor``: streaming OpenMP kernels that move the same bytes as the op with no arithmetic to
  speak of -- the best any batch-norm kernel can do on this machine.  Inference reads and
  writes ``x`` once (``stream_scale``); forward reads ``x`` twice and writes once
  (``stream_sum`` + ``stream_scale``); backward reads ``x`` and ``dy`` twice and writes once
  (``stream_sum(x)`` + ``stream_sum(dy)`` + ``stream_triad(x, dy)``).

Each timing is the best of ``repeats`` rounds; a round calls the implementation enough times to
last at least ``min_time`` seconds (``time.perf_counter``) and reports the time per call.

With more than one thread, a second table shows thread scaling: for the (op, case) pairs whose
arrays fit in cache and that are large enough for a thread team (:func:`scaling_pairs`), cbn and
the floor kernels are each timed at 1 and at n threads, the four interleaved in the same rounds
(:func:`run_scaling`).  The floor kernels' speedup is what the machine gives a plain OpenMP loop
over the same bytes, the yardstick for cbn's.

The building blocks (:func:`default_cases`, :func:`run_benchmark`, :func:`run_scaling`,
:func:`format_report`, :func:`summarize`, :func:`write_json`, :func:`plot_speedups`) are usable
from Python, e.g. to time a case list of your own.

Modules, in the order a run uses them:

* :mod:`~cbn.bench.cases`: the ops, dtypes and shapes, :class:`Case`, :func:`default_cases`
  and the random inputs of a case;
* :mod:`~cbn.bench.timing`: :class:`Settings`, the interleaved rounds, the spread of a timing;
* :mod:`~cbn.bench.calls`: the cbn, NumPy and torch callables of each op (torch adapters);
* :mod:`~cbn.bench.peers`: the optional peers, straightforward parallel numba kernels and ONNX
  Runtime's BatchNormalization node;
* :mod:`~cbn.bench.floor`: the floor callables; :func:`~cbn.bench.floor.floor_kernels` is the
  one access to the floor's kernel module;
* :mod:`~cbn.bench._runtime`: the one access to cbn's dispatched kernel module (tuning, threads);
* :mod:`~cbn.bench.results`: :class:`Result`, :class:`ScalingResult` and their JSON form;
* :mod:`~cbn.bench.runner`: :func:`run_benchmark`, the main table's timings;
* :mod:`~cbn.bench.scaling`: :func:`scaling_pairs` and :func:`run_scaling`, the thread scaling;
* :mod:`~cbn.bench.summary`: the figures over a run (:func:`summarize`,
  :func:`summarize_scaling`);
* :mod:`~cbn.bench.report`: the environment, header, tables and the whole text report;
* :mod:`~cbn.bench.outputs`: :func:`write_json` and :func:`plot_speedups`;
* :mod:`~cbn.bench.progress`: :class:`ProgressBar`;
* :mod:`~cbn.bench.busy`: :func:`~cbn.bench.busy.busy_reason`, the busy-machine check before a run;
* :mod:`~cbn.bench.cli`: the ``bench`` options (:func:`add_arguments`) and :func:`run`.
"""

# The public names of the modules, importable from the package as they were from the single
# module cbn/_bench.py that it replaced.
from ._runtime import resolve_threads
from .calls import EPS, IMPLS, MOMENTUM, make_calls
from .cases import DTYPES, FUSED_OPS, OPS, QUICK_SHAPES, SHAPES, Case, default_cases
from .cli import add_arguments, run
from .outputs import plot_speedups, write_json
from .progress import ProgressBar
from .report import (
    NOISY_SUMMARY_FRACTION,
    environment,
    format_header,
    format_report,
    format_scaling,
    format_summary,
    format_table,
    format_time,
)
from .results import Result, ScalingResult
from .runner import run_benchmark
from .scaling import SCALING_CACHE_FRACTION, run_scaling, scaling_pairs
from .summary import FLOOR_SUMMARY_MIN_BYTES, FLOOR_TOLERANCE, summarize, summarize_scaling
from .timing import FULL, NOISE_THRESHOLD, QUICK, Settings, spread, time_interleaved

__all__ = [
    "Case",
    "Result",
    "ScalingResult",
    "ProgressBar",
    "default_cases",
    "run_benchmark",
    "scaling_pairs",
    "run_scaling",
    "summarize",
    "summarize_scaling",
    "format_report",
    "format_scaling",
    "write_json",
    "plot_speedups",
    "add_arguments",
    "run",
    # the rest of the single module's public names, which tests and scripts use
    "OPS",
    "FUSED_OPS",
    "DTYPES",
    "IMPLS",
    "SHAPES",
    "QUICK_SHAPES",
    "FLOOR_SUMMARY_MIN_BYTES",
    "FLOOR_TOLERANCE",
    "NOISY_SUMMARY_FRACTION",
    "NOISE_THRESHOLD",
    "SCALING_CACHE_FRACTION",
    "EPS",
    "MOMENTUM",
    "Settings",
    "FULL",
    "QUICK",
    "time_interleaved",
    "spread",
    "make_calls",
    "resolve_threads",
    "format_time",
    "format_table",
    "format_summary",
    "environment",
    "format_header",
]
