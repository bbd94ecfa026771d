"""Whether the machine looks busy before a run starts: other work makes every ratio noisy, and
the noise marks of the report only come at the end.

Two signs, either enough: the 1-minute load average is at least the number of CPUs (other
processes kept every CPU busy; a run of cbn's own just before inflates it too, so the message
says what it saw), or a short calibration -- the floor's read kernel over an in-cache array on
the run's threads, 40 times -- varies by more than :data:`BUSY_SPREAD` between its median and
its best call (on an idle machine it stays within a few percent).
"""

import os
import time

import numpy as np

from .floor import floor_kernels

#: The calibration's median over best call above which the machine counts as busy.
BUSY_SPREAD = 1.5
#: Elements of the calibration array (1 MB of float32: in cache, ~10-50 us per call).
_CALIBRATION_ELEMENTS = 262_144


def busy_reason(num_threads, *, calls=40, loadavg=None):
    """A sentence saying why the machine looks busy, or None when it looks idle.

    Parameters
    ----------
    num_threads : int
        The threads the run will use (the calibration uses as many).
    calls : int, default 40
        Calibration calls.
    loadavg : callable, optional
        Returns the (1, 5, 15)-minute load averages; default :func:`os.getloadavg` (skipped
        where the platform has none).

    Returns
    -------
    str or None
    """
    reasons = []
    cpus = os.cpu_count() or 1
    try:
        load1 = (loadavg or os.getloadavg)()[0]
    except (OSError, AttributeError):
        load1 = None
    if load1 is not None and load1 >= cpus:
        reasons.append(f"load average {load1:.2f} over the last minute on {cpus} CPUs")
    k, _ = floor_kernels()
    x = np.ones(_CALIBRATION_ELEMENTS, np.float32)
    k.stream_sum(x, num_threads)
    times = []
    for _ in range(calls):
        t0 = time.perf_counter()
        k.stream_sum(x, num_threads)
        times.append(time.perf_counter() - t0)
    spread = float(np.median(times) / max(min(times), 1e-9))
    if spread > BUSY_SPREAD:
        reasons.append(f"a calibration loop's median call took {spread:.1f}x its best")
    if not reasons:
        return None
    return ("warning: the machine looks busy (" + "; ".join(reasons) + "): the ratios will be "
            "noisy -- rerun on an idle machine, add --repeats, or try --threads 1")
