"""Microbenchmarks of kernel work against the bandwidth floor, each in one process.

    python tools/time_passes.py half [THREADS]
    python tools/time_passes.py widths [THREADS]

``half``: for float16 and bfloat16 data on the bench's 16-bit shapes, the statistics
(``cbn.moments``) against a plain streaming read of the same bytes, the training forward
against the forward's floor (a read, then a read and a write), the backward against its floor
(two reads, then two reads and a write) and the backward sums alone (``cbn.backward_reduce``).

``widths``: for (rows, C) arrays of ~25.7 MB (the bytes of asv's ``ChannelsLastWidths``
sweep), C from 64 to 2048, float32 and float64, the statistics over a read of x and the
backward sums over reads of x and dy.

Best of several calls after 3 untimed ones; the floor kernels are the bench's
(``cbn.bench.floor``).  ``python -m cbn bench`` is the product's benchmark.
"""

import sys
import time

import numpy as np

import cbn
from cbn.bench.floor import floor_kernels

SHAPES = [((32, 64, 56, 56), 1), ((4096, 1024), 1), ((32, 56, 56, 64), -1)]
BYTES = 32 * 56 * 56 * 64 * 4
WIDTHS = (64, 128, 256, 512, 1024, 2048)


def _best(f, reps=21):
    """Microseconds: the best of reps calls of f after 3 untimed ones."""
    for _ in range(3):
        f()
    best = float("inf")
    for _ in range(reps):
        t = time.perf_counter()
        f()
        best = min(best, time.perf_counter() - t)
    return best * 1e6


def _formats():
    out = [np.dtype(np.float16)]
    try:
        import ml_dtypes
        out.append(np.dtype(ml_dtypes.bfloat16))
    except ImportError:
        pass
    return out


def half(nt):
    """The 16-bit passes against their floors (module docstring)."""
    k, _ = floor_kernels()
    rng = np.random.default_rng(0)
    print(f"threads {nt}; times in us, (ratio) = cbn / floor")
    for shape, axis in SHAPES:
        for dt in _formats():
            x = rng.standard_normal(shape).astype(dt)
            dy = rng.standard_normal(shape).astype(dt)
            out = np.empty_like(x)
            xf, df, of = (a.reshape(-1).view(np.float32) for a in (x, dy, out))
            f = cbn.batch_norm_forward(x, axis=axis)
            t_read = _best(lambda: k.stream_sum(xf, nt))
            t_scale = _best(lambda: k.stream_scale(xf, of, nt))
            t_bfloor = _best(lambda: (k.stream_sum(xf, nt), k.stream_sum(df, nt),
                                      k.stream_triad(xf, df, of, nt)))
            t_mom = _best(lambda: cbn.moments(x, axis=axis, num_threads=nt))
            t_fwd = _best(lambda: cbn.batch_norm_forward(x, axis=axis, num_threads=nt, out=out))
            t_bwd = _best(lambda: cbn.batch_norm_backward(dy, x, f.mean, f.invstd, axis=axis,
                                                          num_threads=nt, out=out))
            t_sums = _best(lambda: cbn.backward_reduce(dy, x, f.mean, axis=axis,
                                                       num_threads=nt))
            print(f"{str(shape):18s} {dt.name:9s} moments {t_mom:6.0f} ({t_mom / t_read:.2f})"
                  f"  forward {t_fwd:6.0f} ({t_fwd / (t_read + t_scale):.2f})"
                  f"  backward {t_bwd:6.0f} ({t_bwd / t_bfloor:.2f})  sums {t_sums:6.0f}")


def widths(nt):
    """The channels-last reductions across widths against plain reads (module docstring)."""
    k, _ = floor_kernels()
    rng = np.random.default_rng(0)
    print(f"threads {nt}: statistics / a read of x, backward sums / reads of x and dy")
    for dt in (np.float32, np.float64):
        for C in WIDTHS:
            rows = BYTES // np.dtype(dt).itemsize // C
            x = rng.standard_normal((rows, C)).astype(dt)
            dy = rng.standard_normal((rows, C)).astype(dt)
            mean = x.astype(np.float64).mean(axis=0)
            xf, df = x.reshape(-1), dy.reshape(-1)
            read = _best(lambda: k.stream_sum(xf, nt), 15)
            reads = _best(lambda: (k.stream_sum(xf, nt), k.stream_sum(df, nt)), 15)
            stats = _best(lambda: cbn.moments(x, axis=-1, num_threads=nt), 15)
            sums = _best(lambda: cbn.backward_reduce(dy, x, mean, axis=-1, num_threads=nt), 15)
            print(f"{np.dtype(dt).name:8s} C={C:5d}  statistics {stats / read:.2f}"
                  f"  backward sums {sums / reads:.2f}")


if __name__ == "__main__":
    if len(sys.argv) < 2 or sys.argv[1] not in ("half", "widths"):
        sys.exit("usage: python tools/time_passes.py half|widths [THREADS]")
    {"half": half, "widths": widths}[sys.argv[1]](int(sys.argv[2]) if len(sys.argv) > 2 else 2)
