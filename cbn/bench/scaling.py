"""Thread scaling: which (op, case) pairs to time, and cbn and the floor kernels timed at 1
and at n threads in the same rounds."""

import math

import numpy as np

from ._runtime import kernel_tuning
from .calls import CALL_BUILDERS
from .cases import ARRAYS, OPS, applies, make_data
from .floor import floor_call
from .results import ScalingResult
from .timing import FULL, spread, time_interleaved

#: The thread-scaling table takes the (op, case) pairs whose arrays (x, the output, and dy for
#: backward) fit in this fraction of the last-level cache, and that are large enough for cbn to
#: start a thread team.
SCALING_CACHE_FRACTION = 0.5


def _footprint(op, case):
    """Bytes of the arrays ``op`` reads or writes in full (x, the output, dy, ...)."""
    return case.nbytes * ARRAYS[op]


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
    tuning = kernel_tuning()
    if max_bytes is None:
        max_bytes = int(SCALING_CACHE_FRACTION * tuning["l3_bytes"])
    if min_elements is None:
        min_elements = tuning["parallel_min_elems"]
    return [(op, case) for op in ops for case in cases
            if applies(op, case) and _footprint(op, case) <= max_bytes
            and math.prod(case.shape) >= min_elements]


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
            d = make_data(case)
        y, scratch = np.empty_like(d.x), np.empty_like(d.x)  # shared by 1 and n threads
        build = CALL_BUILDERS[op]
        calls = {"cbn_1": build(case, d, 1, None, out=y)["cbn"],
                 "cbn_n": build(case, d, nt, None, out=y)["cbn"],
                 "floor_1": floor_call(op, d, scratch, 1),
                 "floor_n": floor_call(op, d, scratch, nt)}
        samples = time_interleaved(calls, settings.repeats, settings.min_time)
        out.append(ScalingResult(op, case, nt, {k: min(v) for k, v in samples.items()},
                                 {k: spread(v) for k, v in samples.items()}))
        if progress is not None:
            progress(done, len(pairs), f"scaling {op} {case.label}")
    return out
