"""``python -m cbn bench``: time cbn against NumPy, torch and the memory-bandwidth floor.

For every case (shape x dtype x channel axis) and op (training ``forward``, ``backward``,
``inference``) four implementations are timed in the same process, interleaved round by round
so that slow drift of the machine (frequency, other jobs) hits them alike:

* ``cbn``: :mod:`cbn` with its output preallocated (``out=``), so allocation is not timed;
* ``numpy``: :mod:`cbn.reference`, plain NumPy, timed as a whole call (it allocates);
* ``torch``: ``torch.nn.functional.batch_norm`` / ``native_batch_norm_backward``, timed as a
  whole call (no ``out=`` there), if torch is importable;
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
"""

import argparse
import gc
import json
import math
import sys
import time
from dataclasses import dataclass, field

import numpy as np

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
]

#: The ops, in report order.
OPS = ("forward", "backward", "inference")
#: The dtypes a case can have.
DTYPES = ("float32", "float64")
#: The implementations, in column order.
IMPLS = ("cbn", "numpy", "torch", "floor")

#: (shape, channel axis) of the full case list: NCHW, 2-D NC, tiny, and channels-last NHWC.
SHAPES = (
    ((32, 64, 56, 56), 1),
    ((8, 256, 14, 14), 1),
    ((1, 64, 112, 112), 1),
    ((4096, 1024), 1),
    ((256, 64), 1),
    ((1, 16, 8, 8), 1),
    ((32, 56, 56, 64), -1),
)
#: Indices into :data:`SHAPES` used by ``--quick``: big NCHW, in-cache NCHW (for the
#: thread-scaling table), 2-D NC, tiny, channels-last.
QUICK_SHAPES = (0, 1, 3, 5, 6)

#: Cases at least this large (bytes of ``x``) count in the "within 1.2x of floor" summary.
FLOOR_SUMMARY_MIN_BYTES = 8_000_000
#: A case is "at the floor" when cbn takes at most this many times the floor.
FLOOR_TOLERANCE = 1.2
#: The summary warns when at least 1 / NOISY_SUMMARY_FRACTION of the cases (and 2) are noisy.
NOISY_SUMMARY_FRACTION = 4

#: A row is marked noisy when the median round of an implementation is this much slower than
#: its best round.
NOISE_THRESHOLD = 1.3

#: The thread-scaling table takes the (op, case) pairs whose arrays (x, the output, and dy for
#: backward) fit in this fraction of the last-level cache, and that are large enough for cbn to
#: start a thread team.
SCALING_CACHE_FRACTION = 0.5

EPS = 1e-5
MOMENTUM = 0.1


@dataclass(frozen=True)
class Settings:
    """How hard to time: rounds per implementation and the minimum length of a round.

    Attributes
    ----------
    repeats : int
        Rounds; the reported time is the best round.
    min_time : float
        Seconds a round lasts at least (fast calls are repeated within a round).
    """

    repeats: int
    min_time: float


FULL = Settings(repeats=7, min_time=0.01)
QUICK = Settings(repeats=3, min_time=0.002)


@dataclass(frozen=True)
class Case:
    """One input configuration.

    Attributes
    ----------
    shape : tuple of int
        Shape of ``x``.
    dtype : str
        ``"float32"`` or ``"float64"``.
    axis : int
        The channel axis (``-1`` for channels-last).
    """

    shape: tuple
    dtype: str = "float32"
    axis: int = 1

    @property
    def nbytes(self):
        """Bytes of one array of this case (``x``)."""
        return math.prod(self.shape) * np.dtype(self.dtype).itemsize

    @property
    def channel_axis(self):
        """The channel axis as a non-negative index."""
        return self.axis % len(self.shape)

    @property
    def channels(self):
        """Number of channels C."""
        return self.shape[self.channel_axis]

    @property
    def shape_label(self):
        """The shape written ``32x64x56x56``."""
        return "x".join(str(s) for s in self.shape)

    @property
    def label(self):
        """Short description, e.g. ``32x64x56x56 float32 axis=1``."""
        return f"{self.shape_label} {self.dtype} axis={self.axis}"


def _case_fields(op, case):
    """The JSON fields naming an (op, case) pair."""
    return {"op": op, "shape": list(case.shape), "dtype": case.dtype, "axis": case.axis}


@dataclass
class Result:
    """The timings of one op on one case.

    Attributes
    ----------
    op : str
        ``"forward"``, ``"backward"`` or ``"inference"``.
    case : Case
        The input configuration.
    times : dict
        Seconds per call for each implementation in :data:`IMPLS`; None when not measured
        (torch missing or unable to take the layout).
    spreads : dict
        Median over best time of each measured implementation (see :func:`spread`).
    """

    op: str
    case: Case
    times: dict = field(default_factory=dict)
    spreads: dict = field(default_factory=dict)

    @property
    def noisy(self):
        """True when some implementation's rounds varied more than :data:`NOISE_THRESHOLD`."""
        return any(s > NOISE_THRESHOLD for s in self.spreads.values())

    def speedup(self, impl):
        """How many times faster cbn is than ``impl`` (None if either time is missing).

        Parameters
        ----------
        impl : str
            ``"numpy"`` or ``"torch"``.

        Returns
        -------
        float or None
        """
        other, mine = self.times.get(impl), self.times.get("cbn")
        if other is None or mine is None:
            return None
        return other / mine

    @property
    def floor_ratio(self):
        """The cbn time over the floor time (1.0 means at memory bandwidth)."""
        floor, mine = self.times.get("floor"), self.times.get("cbn")
        if floor is None or mine is None:
            return None
        return mine / floor

    def to_dict(self):
        """The result as plain JSON-ready data.

        Returns
        -------
        dict
        """
        return {
            **_case_fields(self.op, self.case),
            "nbytes": self.case.nbytes,
            "times_s": dict(self.times),
            "speedup_vs_numpy": self.speedup("numpy"),
            "speedup_vs_torch": self.speedup("torch"),
            "floor_ratio": self.floor_ratio,
            "spreads": dict(self.spreads),
            "noisy": self.noisy,
        }


@dataclass
class ScalingResult:
    """How much faster ``threads`` threads run one op on one case than a single thread does.

    cbn and the floor kernels are each timed at 1 and at ``threads`` threads, all four
    interleaved in the same rounds, so the two speedups are comparable: the floor kernels' is
    what this machine's caches and memory give a plain OpenMP loop over the same bytes.

    Attributes
    ----------
    op : str
        ``"forward"``, ``"backward"`` or ``"inference"``.
    case : Case
        The input configuration.
    threads : int
        The thread count compared with 1.
    times : dict
        Seconds per call, keys ``"cbn_1"``, ``"cbn_n"``, ``"floor_1"``, ``"floor_n"``.
    spreads : dict
        Median over best time of each of them (see :func:`spread`).
    """

    op: str
    case: Case
    threads: int
    times: dict = field(default_factory=dict)
    spreads: dict = field(default_factory=dict)

    @property
    def noisy(self):
        """True when some timing's rounds varied more than :data:`NOISE_THRESHOLD`."""
        return any(s > NOISE_THRESHOLD for s in self.spreads.values())

    def speedup(self, impl="cbn"):
        """Time at 1 thread over time at ``threads`` threads.

        Parameters
        ----------
        impl : {"cbn", "floor"}, default "cbn"

        Returns
        -------
        float
        """
        return self.times[f"{impl}_1"] / self.times[f"{impl}_n"]

    @property
    def relative(self):
        """cbn's speedup over the floor kernels' speedup (1.0: cbn scales as a plain loop)."""
        return self.speedup("cbn") / self.speedup("floor")

    def to_dict(self):
        """The result as plain JSON-ready data.

        Returns
        -------
        dict
        """
        return {
            **_case_fields(self.op, self.case),
            "threads": self.threads,
            "times_s": dict(self.times),
            "speedup": self.speedup("cbn"),
            "floor_speedup": self.speedup("floor"),
            "relative": self.relative,
            "spreads": dict(self.spreads),
            "noisy": self.noisy,
        }


# ------------------------------------------------------------------------------------ cases
def default_cases(quick=False, dtypes=DTYPES):
    """The benchmark's case list.

    Parameters
    ----------
    quick : bool, default False
        Only the shapes :data:`QUICK_SHAPES`.
    dtypes : sequence of str, default ``("float32", "float64")``
        The dtypes to include.

    Returns
    -------
    list of Case
    """
    shapes = [SHAPES[i] for i in QUICK_SHAPES] if quick else list(SHAPES)
    return [Case(tuple(shape), dtype, axis) for dtype in dtypes for shape, axis in shapes]


# ------------------------------------------------------------------------------------ timing
_MAX_NUMBER = 100_000


def _calibrate(fn, min_time):
    """Warm ``fn`` up and return how many calls make a round of at least ``min_time`` s."""
    fn()
    t0 = time.perf_counter()
    fn()
    once = max(time.perf_counter() - t0, 1e-9)
    return int(min(_MAX_NUMBER, max(1, math.ceil(min_time / once))))


def _time_round(fn, number):
    """Seconds per call of ``fn`` over ``number`` back-to-back calls."""
    t0 = time.perf_counter()
    for _ in range(number):
        fn()
    return (time.perf_counter() - t0) / number


def time_interleaved(calls, repeats, min_time):
    """Seconds per call of each callable in every round, rounds interleaved.

    Every round times each implementation once, starting with a different one each round,
    so that drift and the order of the calls affect all of them alike.  The garbage collector
    is off while timing, as in :mod:`timeit`.

    Parameters
    ----------
    calls : dict of str to callable
        Zero-argument callables to time.
    repeats : int
        Number of rounds.
    min_time : float
        Minimum duration of one round of one implementation, in seconds.

    Returns
    -------
    dict of str to list of float
        The seconds per call of each implementation, one value per round; report the
        minimum (the least disturbed round).
    """
    names = list(calls)
    numbers = {name: _calibrate(calls[name], min_time) for name in names}
    samples = {name: [] for name in names}
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        for r in range(repeats):
            k = r % len(names)
            for name in names[k:] + names[:k]:
                samples[name].append(_time_round(calls[name], numbers[name]))
    finally:
        if gc_was_enabled:
            gc.enable()
    return samples


def spread(samples):
    """Median over minimum of a list of timings (1.0: every round alike).

    Parameters
    ----------
    samples : list of float
        Seconds per call, one per round.

    Returns
    -------
    float
    """
    return float(np.median(samples)) / min(samples)


# ------------------------------------------------------------------------------------ the calls
@dataclass
class _Data:
    """Inputs of one case, shared by all implementations."""

    x: np.ndarray
    dy: np.ndarray
    weight: np.ndarray
    bias: np.ndarray
    running_mean: np.ndarray
    running_var: np.ndarray


def _make_data(case, seed=0):
    """Random inputs for ``case`` (normal data, weight near 1, running var 1)."""
    rng = np.random.default_rng(seed)
    dt = np.dtype(case.dtype)
    C = case.channels
    return _Data(
        x=rng.standard_normal(case.shape, dtype=dt),
        dy=rng.standard_normal(case.shape, dtype=dt),
        weight=rng.uniform(0.5, 1.5, C).astype(dt),
        bias=rng.standard_normal(C).astype(dt),
        running_mean=np.zeros(C, dt),
        running_var=np.ones(C, dt),
    )


def _import_torch():
    """torch, or None when it cannot be imported."""
    try:
        import torch
    except (ImportError, OSError):
        return None
    return torch


def _torch_layout(torch, arr, axis):
    """A torch view of ``arr`` with the channel at dim 1, sharing memory (None if impossible).

    Channels-last arrays become channels_last-strided NCHW tensors, as torch expects them.
    """
    a = axis % arr.ndim
    if a == 0:
        return None
    t = torch.from_numpy(arr)
    if a == 1:
        return t
    rest = [i for i in range(1, arr.ndim) if i != a]
    return t.permute(0, a, *rest)


def _floor_call(op, d, scratch, nt):
    """The streaming-kernel callable that moves the bytes of ``op``.  The kernels come from the
    best SIMD variant the CPU runs, not the one ``CBN_SIMD`` selects for cbn: the floor is the
    machine's bandwidth, the same whichever variant is being measured."""
    from ._dispatch import kernels as k  # its floor kernels run at the best level

    x = d.x.reshape(-1)
    dy = d.dy.reshape(-1)
    out = scratch.reshape(-1)
    if op == "inference":
        return lambda: k.stream_scale(x, out, nt)
    if op == "forward":
        return lambda: (k.stream_sum(x, nt), k.stream_scale(x, out, nt))
    return lambda: (k.stream_sum(x, nt), k.stream_sum(dy, nt), k.stream_triad(x, dy, out, nt))


def _inference_calls(case, d, nt, torch, out=None):
    """Callables for the inference op, keyed by implementation (floor excluded)."""
    import cbn

    y = np.empty_like(d.x) if out is None else out
    rm, rv, w, b = d.running_mean, d.running_var, d.weight, d.bias
    calls = {
        "cbn": lambda: cbn.batch_norm_inference(d.x, rm, rv, w, b, eps=EPS, axis=case.axis,
                                                out=y, num_threads=nt),
        "numpy": lambda: cbn.reference.batch_norm_inference(d.x, rm, rv, w, b, eps=EPS,
                                                            axis=case.axis),
    }
    xt = None if torch is None else _torch_layout(torch, d.x, case.axis)
    if xt is not None:
        F = torch.nn.functional
        trm, trv, tw, tb = (torch.from_numpy(a) for a in (rm, rv, w, b))
        calls["torch"] = lambda: F.batch_norm(xt, trm, trv, tw, tb, False, MOMENTUM, EPS)
    return calls


def _forward_calls(case, d, nt, torch, out=None):
    """Callables for the training forward op (running statistics updated by all)."""
    import cbn

    y = np.empty_like(d.x) if out is None else out
    w, b = d.weight, d.bias
    rm_c, rv_c = d.running_mean.copy(), d.running_var.copy()
    rm_n, rv_n = d.running_mean.copy(), d.running_var.copy()
    calls = {
        "cbn": lambda: cbn.batch_norm_forward(d.x, w, b, eps=EPS, running_mean=rm_c,
                                              running_var=rv_c, momentum=MOMENTUM,
                                              axis=case.axis, out=y, num_threads=nt),
        "numpy": lambda: cbn.reference.batch_norm_forward(d.x, w, b, eps=EPS, running_mean=rm_n,
                                                          running_var=rv_n, momentum=MOMENTUM,
                                                          axis=case.axis),
    }
    xt = None if torch is None else _torch_layout(torch, d.x, case.axis)
    if xt is not None:
        F = torch.nn.functional
        trm, trv = torch.from_numpy(d.running_mean.copy()), torch.from_numpy(d.running_var.copy())
        tw, tb = torch.from_numpy(w), torch.from_numpy(b)
        calls["torch"] = lambda: F.batch_norm(xt, trm, trv, tw, tb, True, MOMENTUM, EPS)
    return calls


def _backward_calls(case, d, nt, torch, out=None):
    """Callables for the backward op (all three gradients), from saved forward statistics."""
    import cbn

    dx = np.empty_like(d.x) if out is None else out
    w = d.weight
    _, mean, invstd = cbn.batch_norm_forward(d.x, w, d.bias, eps=EPS, axis=case.axis)
    calls = {
        "cbn": lambda: cbn.batch_norm_backward(d.dy, d.x, mean, invstd, w, axis=case.axis,
                                               out=dx, num_threads=nt),
        "numpy": lambda: cbn.reference.batch_norm_backward(d.dy, d.x, mean, invstd, w,
                                                           axis=case.axis),
    }
    xt = None if torch is None else _torch_layout(torch, d.x, case.axis)
    if xt is not None:
        aten = torch.ops.aten
        dyt = _torch_layout(torch, d.dy, case.axis)
        tw, tb = torch.from_numpy(w), torch.from_numpy(d.bias)
        trm, trv = torch.from_numpy(d.running_mean.copy()), torch.from_numpy(d.running_var.copy())
        _, save_mean, save_invstd = aten.native_batch_norm(xt, tw, tb, trm, trv, True,
                                                           MOMENTUM, EPS)
        mask = [True, True, True]
        calls["torch"] = lambda: aten.native_batch_norm_backward(
            dyt, xt, tw, trm, trv, save_mean, save_invstd, True, EPS, mask)
    return calls


_CALL_BUILDERS = {"inference": _inference_calls, "forward": _forward_calls,
                  "backward": _backward_calls}


def make_calls(op, case, data, num_threads, torch=None):
    """Zero-argument callables of every implementation for ``op`` on ``case``.

    Parameters
    ----------
    op : str
        ``"forward"``, ``"backward"`` or ``"inference"``.
    case : Case
        The input configuration.
    data : _Data
        Its inputs (from ``_make_data``).
    num_threads : int
        Threads for cbn and the floor kernels.
    torch : module, optional
        The torch module; None leaves torch out.

    Returns
    -------
    dict of str to callable
        Keys among :data:`IMPLS`, in column order.
    """
    calls = _CALL_BUILDERS[op](case, data, num_threads, torch)
    calls["floor"] = _floor_call(op, data, np.empty_like(data.x), num_threads)
    return {name: calls[name] for name in IMPLS if name in calls}


def run_benchmark(cases, ops=OPS, *, num_threads=None, settings=FULL, use_torch=True,
                  progress=None):
    """Time every op on every case.

    Parameters
    ----------
    cases : sequence of Case
        The input configurations (see :func:`default_cases`); any shape works, e.g.
        ``[Case((2, 3, 4, 4))]``.
    ops : sequence of str, default all
        Among ``"forward"``, ``"backward"``, ``"inference"``.
    num_threads : int, optional
        Threads for cbn, torch and the floor kernels; None means all OpenMP threads.
    settings : Settings, default FULL
        Rounds and round length (:data:`FULL` or :data:`QUICK`).
    use_torch : bool, default True
        Time torch too when it is importable.  torch's thread count is restored afterwards.
    progress : callable, optional
        Called as ``progress(done, total, label)`` after each (case, op).

    Returns
    -------
    list of Result
        Ordered by op (in the order of ``ops``), then case.
    """
    nt = resolve_threads(num_threads)
    torch = _import_torch() if use_torch else None
    saved_torch_threads = None
    if torch is not None:
        saved_torch_threads = torch.get_num_threads()
        torch.set_num_threads(nt)
    results = {op: [] for op in ops}
    total, done = len(cases) * len(ops), 0
    try:
        for case in cases:
            data = _make_data(case)
            for op in ops:
                calls = make_calls(op, case, data, nt, torch)
                samples = time_interleaved(calls, settings.repeats, settings.min_time)
                times = {i: min(samples[i]) if i in samples else None for i in IMPLS}
                spreads = {i: spread(v) for i, v in samples.items()}
                results[op].append(Result(op, case, times, spreads))
                done += 1
                if progress is not None:
                    progress(done, total, f"{op} {case.label}")
            del data
    finally:
        if saved_torch_threads is not None:
            torch.set_num_threads(saved_torch_threads)
    return [r for op in ops for r in results[op]]


def _footprint(op, case):
    """Bytes of the arrays ``op`` reads or writes in full: x and the output (and dy)."""
    return case.nbytes * (3 if op == "backward" else 2)


def scaling_pairs(cases, ops=OPS, *, max_bytes=None, min_elements=None):
    """The (op, case) pairs of the thread-scaling table: in cache, and big enough for a team.

    Parameters
    ----------
    cases : sequence of Case
        Candidate configurations.
    ops : sequence of str, default all
        Candidate ops.
    max_bytes : int, optional
        Largest footprint (x, the output, and dy for backward) kept; default
        :data:`SCALING_CACHE_FRACTION` of the last-level cache size the kernels detected.
    min_elements : int, optional
        Fewest elements of ``x`` kept; default the size below which cbn runs without a thread
        team (``tuning()["parallel_min_elems"]``): smaller calls are serial by design.

    Returns
    -------
    list of (str, Case)
        Ordered by op (in the order of ``ops``), then case.
    """
    from ._dispatch import kernels

    tuning = kernels.tuning()
    if max_bytes is None:
        max_bytes = int(SCALING_CACHE_FRACTION * tuning["l3_bytes"])
    if min_elements is None:
        min_elements = tuning["parallel_min_elems"]
    return [(op, case) for op in ops for case in cases
            if _footprint(op, case) <= max_bytes and math.prod(case.shape) >= min_elements]


def run_scaling(pairs, *, num_threads, settings=FULL, progress=None):
    """Time cbn and the floor kernels at 1 and at ``num_threads`` threads, in the same rounds.

    Parameters
    ----------
    pairs : sequence of (str, Case)
        The (op, case) pairs, e.g. from :func:`scaling_pairs`.
    num_threads : int
        The thread count compared with one thread.
    settings : Settings, default FULL
        Rounds and round length.
    progress : callable, optional
        Called as ``progress(done, total, label)`` after each pair.

    Returns
    -------
    list of ScalingResult
    """
    nt = int(num_threads)
    out = []
    d, d_case = None, None
    for done, (op, case) in enumerate(pairs, 1):
        if case != d_case:
            d, d_case = None, case  # one case's arrays alive at a time
            d = _make_data(case)
        y, scratch = np.empty_like(d.x), np.empty_like(d.x)  # shared by 1 and n threads
        build = _CALL_BUILDERS[op]
        calls = {"cbn_1": build(case, d, 1, None, out=y)["cbn"],
                 "cbn_n": build(case, d, nt, None, out=y)["cbn"],
                 "floor_1": _floor_call(op, d, scratch, 1),
                 "floor_n": _floor_call(op, d, scratch, nt)}
        samples = time_interleaved(calls, settings.repeats, settings.min_time)
        out.append(ScalingResult(op, case, nt, {k: min(v) for k, v in samples.items()},
                                 {k: spread(v) for k, v in samples.items()}))
        if progress is not None:
            progress(done, len(pairs), f"scaling {op} {case.label}")
    return out


def resolve_threads(num_threads):
    """The thread count to use: ``num_threads``, or all OpenMP threads when None.

    Parameters
    ----------
    num_threads : int or None
        Requested thread count.

    Returns
    -------
    int
    """
    if num_threads is not None:
        return int(num_threads)
    from ._dispatch import kernels

    return max(1, kernels.max_threads())


# ------------------------------------------------------------------------------------ report
def _geomean(values):
    """Geometric mean of positive numbers (None for an empty list)."""
    values = [v for v in values if v is not None and v > 0]
    if not values:
        return None
    return math.exp(sum(math.log(v) for v in values) / len(values))


def summarize(results):
    """Aggregate figures over all results.

    Parameters
    ----------
    results : list of Result
        From :func:`run_benchmark`.

    Returns
    -------
    dict
        ``cases``; ``geomean_vs_torch`` and ``geomean_vs_numpy`` (None without data);
        ``worst_vs_torch`` as ``{"speedup": float, "case": "op case-label"}`` or None;
        ``floor_cases``
        (results whose ``x`` is at least :data:`FLOOR_SUMMARY_MIN_BYTES`),
        ``within_floor`` (those of them with a floor ratio <= :data:`FLOOR_TOLERANCE`) and
        ``noisy_cases`` (results whose rounds varied more than :data:`NOISE_THRESHOLD`).
    """
    vs_torch = [{"speedup": r.speedup("torch"), "case": f"{r.op} {r.case.label}"}
                for r in results if r.speedup("torch") is not None]
    big = [r for r in results
           if r.case.nbytes >= FLOOR_SUMMARY_MIN_BYTES and r.floor_ratio is not None]
    return {
        "cases": len(results),
        "geomean_vs_torch": _geomean([w["speedup"] for w in vs_torch]),
        "geomean_vs_numpy": _geomean([r.speedup("numpy") for r in results]),
        "worst_vs_torch": min(vs_torch, key=lambda w: w["speedup"], default=None),
        "floor_cases": len(big),
        "within_floor": sum(r.floor_ratio <= FLOOR_TOLERANCE for r in big),
        "noisy_cases": sum(r.noisy for r in results),
    }


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


def _table_row(cells, columns=_COLUMNS):
    """Join cells under the alignment of ``columns`` (``(name, align, width)`` triples)."""
    pairs = zip(cells, columns, strict=True)
    return "  ".join(f"{c:{align}{width}}" for c, (_, align, width) in pairs)


def format_table(op, results):
    """One op's table: a row per case.

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
    lines = [f"{op}", _table_row([name for name, _, _ in _COLUMNS])]
    lines.append("-" * len(lines[-1]))
    for r in results:
        c = r.case
        lines.append(_table_row([
            c.shape_label, c.dtype, str(c.axis), f"{c.nbytes / 1e6:.1f}",
            format_time(r.times.get("cbn")), format_time(r.times.get("numpy")),
            format_time(r.times.get("torch")), _fmt_ratio(r.speedup("numpy"), "x"),
            _fmt_ratio(r.speedup("torch"), "x"), _fmt_ratio(r.floor_ratio),
        ]) + ("  *" if r.noisy else ""))
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


def summarize_scaling(scaling):
    """Aggregate figures of the thread-scaling table.

    Parameters
    ----------
    scaling : list of ScalingResult
        From :func:`run_scaling`.

    Returns
    -------
    dict or None
        None for an empty list; else ``pairs``, ``threads``, ``worst`` (the pair with the
        smallest cbn speedup, as ``{"speedup", "floor_speedup", "case"}``), ``min_relative``
        and ``geomean_relative`` (cbn's speedup over the floor kernels'), ``noisy_pairs``.
    """
    if not scaling:
        return None
    worst = min(scaling, key=lambda r: r.speedup("cbn"))
    return {
        "pairs": len(scaling),
        "threads": worst.threads,
        "worst": {"speedup": worst.speedup("cbn"), "floor_speedup": worst.speedup("floor"),
                  "case": f"{worst.op} {worst.case.label}"},
        "min_relative": min(r.relative for r in scaling),
        "geomean_relative": _geomean([r.relative for r in scaling]),
        "noisy_pairs": sum(r.noisy for r in scaling),
    }


_SCALING_COLUMNS = (("op", "<", 9), ("shape", "<", 16), ("dtype", "<", 8), ("axis", ">", 4),
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
                "team (see cbn._bench.scaling_pairs)")

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


def environment(num_threads, settings, use_torch=True):
    """What the report header shows: versions, SIMD level, threads, timing method.

    Parameters
    ----------
    num_threads : int
        Threads in use.
    settings : Settings
        The timing settings.
    use_torch : bool, default True
        Whether torch is timed (``--no-torch`` clears it).

    Returns
    -------
    dict
    """
    import cbn
    from ._dispatch import kernels

    cfg = cbn.config()
    torch = _import_torch()
    return {
        "cbn": cfg["version"],
        "simd_level": cfg["simd_level"],
        "floor_simd_level": kernels.floor_variant(),
        "openmp_runtime": cfg["openmp_runtime"],
        "threads": num_threads,
        "max_threads": cfg["default_threads"],
        "torch": None if torch is None else torch.__version__,
        "torch_timed": bool(use_torch and torch is not None),
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
        f"timing: best of {env['repeats']} interleaved rounds of >= {env['min_time_s'] * 1e3:g} ms"
        " each (time.perf_counter), time per call",
        "cbn: output preallocated (out=), not timed; numpy (cbn.reference) and torch: whole call,"
        " output allocation included",
        "floor: streaming kernels over the same bytes -- inference scale(x); forward sum(x) +"
        " scale(x); backward sum(x) + sum(dy) + triad(x, dy)",
        "vs numpy / vs torch: their time over cbn's (>1: cbn faster); cbn/floor: 1.00 ="
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


# ------------------------------------------------------------------------------------ outputs
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


def _require_matplotlib():
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
        plt = _require_matplotlib()
        if plt is None:
            raise ImportError(_PLOT_ERROR)
    ops = list(dict.fromkeys(r.op for r in results))
    n_cases = max(sum(r.op == op for r in results) for op in ops)
    fig, axes = plt.subplots(len(ops), 1, figsize=(max(6.0, 0.9 * n_cases + 2), 3.2 * len(ops)),
                             squeeze=False)
    for ax, op in zip(axes[:, 0], ops, strict=True):
        _plot_op(ax, op, [r for r in results if r.op == op])
    fig.suptitle(f"cbn {env['cbn']} speedup ({env['simd_level']}, {env['threads']} threads)")
    fig.tight_layout()
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


# ------------------------------------------------------------------------------------ progress
class ProgressBar:
    r"""A one-line text progress bar on a stream (stderr), redrawn with ``\r``.

    Drawn only when the stream is a terminal; :meth:`close` always writes a final line.

    Parameters
    ----------
    total : int
        Number of steps.
    stream : file-like, default ``sys.stderr``
    width : int, default 30
        Characters of the bar.
    """

    def __init__(self, total, stream=None, width=30):
        self.total = max(1, total)
        self.stream = stream if stream is not None else sys.stderr
        self.width = width
        self.start = time.perf_counter()
        isatty = getattr(self.stream, "isatty", None)
        self.live = bool(isatty and isatty())
        self.done = 0

    def __call__(self, done, total, label):
        """Draw the bar at step ``done`` of ``total`` with ``label`` (the step just done)."""
        self.done = done
        if not self.live:
            return
        filled = int(self.width * done / max(1, total))
        bar = "#" * filled + "." * (self.width - filled)
        elapsed = time.perf_counter() - self.start
        line = f"[{bar}] {done}/{total} {elapsed:5.1f}s {label}"
        self.stream.write("\r" + line[:110].ljust(110))
        self.stream.flush()

    def close(self):
        """End the bar with a final line: steps done and elapsed time."""
        elapsed = time.perf_counter() - self.start
        prefix = "\r" + " " * 110 + "\r" if self.live else ""
        self.stream.write(f"{prefix}bench: {self.done}/{self.total} op x case timings in "
                          f"{elapsed:.1f} s\n")
        self.stream.flush()


# ------------------------------------------------------------------------------------ CLI
_PLOT_ERROR = "--plot needs matplotlib: pip install matplotlib"


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
    parser.description = ("Time cbn against NumPy (cbn.reference), torch (if installed) and the "
                          "memory-bandwidth floor measured in the same run.")
    parser.add_argument("--quick", action="store_true",
                        help="fewer rounds and a subset (float32, 5 shapes): under a minute")
    parser.add_argument("--threads", type=_positive_int, default=None, metavar="N",
                        help="threads for cbn, torch and the floor kernels (default: all)")
    parser.add_argument("--ops", type=_csv_of(OPS), default=OPS, metavar="LIST",
                        help="comma-separated ops (default: forward,backward,inference)")
    parser.add_argument("--dtypes", type=_csv_of(DTYPES), default=None, metavar="LIST",
                        help="comma-separated dtypes (default: float32,float64; "
                             "--quick: float32)")
    parser.add_argument("--repeats", type=_positive_int, default=None, metavar="K",
                        help="rounds per timing, best kept (default: 7; --quick: 3)")
    parser.add_argument("--no-torch", action="store_true", help="do not time torch")
    parser.add_argument("--no-scaling", action="store_true",
                        help="skip the thread-scaling table (n threads vs 1 on the cases that "
                             "fit in cache, next to the floor kernels' scaling)")
    parser.add_argument("--plot", metavar="FILE.png", default=None,
                        help="write a bar chart of the speedups (needs matplotlib)")
    parser.add_argument("--json", metavar="FILE", default=None, help="write the raw results")


def _settings_for(args):
    """The Settings selected by ``--quick`` and ``--repeats``."""
    base = QUICK if args.quick else FULL
    if args.repeats is None:
        return base
    return Settings(repeats=args.repeats, min_time=base.min_time)


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
        Exit code: 0 on success, 2 when ``--plot`` is asked for without matplotlib.
    """
    out = out if out is not None else sys.stdout
    plt = None
    if args.plot:
        plt = _require_matplotlib()
        if plt is None:
            print(_PLOT_ERROR, file=sys.stderr)
            return 2
    if cases is None:
        dtypes = args.dtypes or (("float32",) if args.quick else DTYPES)
        cases = default_cases(quick=args.quick, dtypes=dtypes)
    settings = _settings_for(args)
    nt = resolve_threads(args.threads)
    use_torch = not args.no_torch
    env = environment(nt, settings, use_torch)
    pairs = [] if args.no_scaling or nt < 2 else scaling_pairs(cases, args.ops)
    n_main = len(cases) * len(args.ops)
    bar = ProgressBar(n_main + len(pairs))
    scaling = None
    try:
        results = run_benchmark(cases, args.ops, num_threads=nt, settings=settings,
                                use_torch=use_torch, progress=bar)
        if not args.no_scaling:
            scaling = run_scaling(pairs, num_threads=nt, settings=settings,
                                  progress=lambda d, t, label: bar(n_main + d, bar.total, label))
    finally:
        bar.close()
    print(format_report(results, env, scaling), file=out)
    if args.json:
        write_json(args.json, results, env, scaling)
        print(f"\nraw results written to {args.json}", file=out)
    if args.plot:
        plot_speedups(args.plot, results, env, plt=plt)
        print(f"speedup chart written to {args.plot}", file=out)
    return 0
