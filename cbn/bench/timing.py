"""Timing: how hard to time (:class:`Settings`), rounds interleaved across implementations,
and the spread of the rounds that marks a timing as noisy."""

import gc
import math
import time
from dataclasses import dataclass

import numpy as np

#: A row is marked noisy when the median round of an implementation is this much slower than
#: its best round.
NOISE_THRESHOLD = 1.3


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


#: The settings of a full run and of ``--quick``.
FULL = Settings(repeats=7, min_time=0.01)
QUICK = Settings(repeats=3, min_time=0.002)

#: The most calls in one round, however fast a call is (bounds a round with ``min_time`` 0).
_MAX_NUMBER = 100_000

#: Untimed calls of an implementation, for at least this long, before each of its rounds.  The
#: implementation timed before it may leave its own thread pool spinning (torch's OpenMP
#: workers and ONNX Runtime's intra-op threads keep polling after a call) while this one's
#: threads have gone to sleep: measured, cbn inference on (32, 64, 56, 56) float32 at 2 threads
#: right after ONNX Runtime ran 2.3x its time alone, 1.06x after 4 ms of untimed calls, 1.00x
#: after 9 ms; after torch, (4096, 1024): 1.28x, 1.04x after 2 ms, 1.00x after 5 ms.
SETTLE_SECONDS = 0.010


def _calibrate(fn, min_time):
    """Warm ``fn`` up and return how many calls make a round of at least ``min_time`` s."""
    fn()
    t0 = time.perf_counter()
    fn()
    once = max(time.perf_counter() - t0, 1e-9)
    return int(min(_MAX_NUMBER, max(1, math.ceil(min_time / once))))


def _settle(fn, seconds):
    """Call ``fn`` untimed, at least once, for ``seconds``."""
    end = time.perf_counter() + seconds
    fn()
    while time.perf_counter() < end:
        fn()


def _time_round(fn, number):
    """Seconds per call of ``fn`` over ``number`` back-to-back calls."""
    t0 = time.perf_counter()
    for _ in range(number):
        fn()
    return (time.perf_counter() - t0) / number


def time_interleaved(calls, repeats, min_time):
    """Seconds per call of each callable in every round, rounds interleaved.

    Every round times each implementation once, starting with a different one each round,
    so that drift and the order of the calls affect all of them alike; each timed round
    follows ``SETTLE_SECONDS`` of untimed calls of the same implementation (another one's
    thread pool may still be spinning).  The garbage collector is off while timing, as in
    :mod:`timeit`.

    Parameters
    ----------
    calls : dict of str to callable
        Zero-argument callables to time; one with a ``prepare`` attribute (a zero-argument
        callable) has it called, untimed, before each of its rounds.
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
    for fn in calls.values():
        if getattr(fn, "prepare", None) is not None:
            fn.prepare()
    numbers = {name: _calibrate(calls[name], min_time) for name in names}
    samples = {name: [] for name in names}
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        for r in range(repeats):
            k = r % len(names)
            for name in names[k:] + names[:k]:
                prepare = getattr(calls[name], "prepare", None)
                if prepare is not None:  # the implementation's own set-up, untimed
                    prepare()
                if numbers[name] > 1:  # a call of a round's length dwarfs the disturbance
                    _settle(calls[name], SETTLE_SECONDS)
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
