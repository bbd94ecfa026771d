"""The main table's measurements: every op on every case, all implementations interleaved."""

from ._runtime import resolve_threads
from .calls import IMPLS, import_torch, make_calls
from .cases import OPS, applies, make_data
from .results import Result
from .timing import FULL, spread, time_interleaved


def run_benchmark(cases, ops=OPS, *, num_threads=None, settings=FULL, use_torch=True,
                  use_peers=True, progress=None):
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
    use_peers : bool, default True
        Time numba and ONNX Runtime too where they are installed (:mod:`~cbn.bench.peers`).
    progress : callable, optional
        Called as ``progress(done, total, label)`` after each (case, op).

    Returns
    -------
    list of Result
        Ordered by op (in the order of ``ops``), then case; the fused ops on float32 cases only
        (:func:`~cbn.bench.cases.applies`).
    """
    nt = resolve_threads(num_threads)
    torch = import_torch() if use_torch else None
    saved_torch_threads = None
    if torch is not None:
        saved_torch_threads = torch.get_num_threads()
        torch.set_num_threads(nt)
    results = {op: [] for op in ops}
    total, done = sum(applies(op, c) for op in ops for c in cases), 0
    try:
        for case in cases:
            data = make_data(case)
            for op in (op for op in ops if applies(op, case)):
                calls = make_calls(op, case, data, nt, torch, peers=use_peers)
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
