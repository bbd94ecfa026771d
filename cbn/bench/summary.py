"""The figures over a run (geometric means, worst case, cases at the floor), shared by the
text report and the JSON file."""

import math

from .calls import PEERS

#: Cases at least this large (bytes of ``x``) count in the "within 1.2x of floor" summary.
FLOOR_SUMMARY_MIN_BYTES = 8_000_000
#: A case is "at the floor" when cbn takes at most this many times the floor.
FLOOR_TOLERANCE = 1.2


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
        ``peers``: for each peer of :data:`~cbn.bench.calls.PEERS` measured in some result,
        ``{"geomean": float, "worst": {"speedup", "case"}, "cases": int}``; ``floor_cases``
        (results whose ``x`` is at least :data:`FLOOR_SUMMARY_MIN_BYTES`),
        ``within_floor`` (those of them with a floor ratio <= :data:`FLOOR_TOLERANCE`) and
        ``noisy_cases`` (results whose rounds varied more than :data:`NOISE_THRESHOLD`).
    """
    vs_torch = [{"speedup": r.speedup("torch"), "case": f"{r.op} {r.case.label}"}
                for r in results if r.speedup("torch") is not None]
    big = [r for r in results
           if r.case.nbytes >= FLOOR_SUMMARY_MIN_BYTES and r.floor_ratio is not None]
    peers = {}
    for peer in PEERS:
        cells = [{"speedup": r.speedup(peer), "case": f"{r.op} {r.case.label}"}
                 for r in results if r.speedup(peer) is not None]
        if cells:
            peers[peer] = {"geomean": _geomean([c["speedup"] for c in cells]),
                           "worst": min(cells, key=lambda c: c["speedup"]),
                           "cases": len(cells)}
    return {
        "cases": len(results),
        "peers": peers,
        "geomean_vs_torch": _geomean([w["speedup"] for w in vs_torch]),
        "geomean_vs_numpy": _geomean([r.speedup("numpy") for r in results]),
        "worst_vs_torch": min(vs_torch, key=lambda w: w["speedup"], default=None),
        "floor_cases": len(big),
        "within_floor": sum(r.floor_ratio <= FLOOR_TOLERANCE for r in big),
        "noisy_cases": sum(r.noisy for r in results),
    }


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
