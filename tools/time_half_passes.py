"""Time the 16-bit training passes against their byte floors, in one process.

    python tools/time_half_passes.py [THREADS]

For float16 and bfloat16 data on the bench's 16-bit shapes: the statistics (``cbn.moments``)
against a plain streaming read of the same bytes, the training forward against the forward's
floor (a read, then a read and a write), the backward against its floor (two reads, then two
reads and a write) and the backward sums alone (``cbn.backward_reduce``).  Best of 21 calls
each, after 3 untimed ones; the floor kernels are the bench's (``cbn.bench.floor``).  A
microbenchmark for kernel work (the two-level statistics, the conversions); ``python -m cbn
bench --dtypes float16,bfloat16`` is the product's benchmark.
"""

import sys
import time

import numpy as np

import cbn
from cbn.bench.floor import floor_kernels

SHAPES = [((32, 64, 56, 56), 1), ((4096, 1024), 1), ((32, 56, 56, 64), -1)]


def _best(f, reps=21):
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


def main(nt):
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


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 2)
