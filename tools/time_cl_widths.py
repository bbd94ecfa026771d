"""Channels-last reductions across row widths against a plain read, in one process.

    python tools/time_cl_widths.py [THREADS]

For (rows, C) arrays of ~25.7 MB (the bytes of asv's ``ChannelsLastWidths`` sweep), C from 64
to 2048, float32 and float64: the statistics (``cbn.moments``) over a streaming read of x and
the backward sums (``cbn.backward_reduce``) over reads of x and dy, with the bench's floor
kernels (``cbn.bench.floor``).  Best of 15 calls after 3 untimed ones.
"""

import sys
import time

import numpy as np

import cbn
from cbn.bench.floor import floor_kernels

BYTES = 32 * 56 * 56 * 64 * 4
WIDTHS = (64, 128, 256, 512, 1024, 2048)


def _best(f, reps=15):
    for _ in range(3):
        f()
    best = float("inf")
    for _ in range(reps):
        t = time.perf_counter()
        f()
        best = min(best, time.perf_counter() - t)
    return best


def main(nt):
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
            read = _best(lambda: k.stream_sum(xf, nt))
            reads = _best(lambda: (k.stream_sum(xf, nt), k.stream_sum(df, nt)))
            stats = _best(lambda: cbn.moments(x, axis=-1, num_threads=nt))
            sums = _best(lambda: cbn.backward_reduce(dy, x, mean, axis=-1, num_threads=nt))
            print(f"{np.dtype(dt).name:8s} C={C:5d}  statistics {stats / read:.2f}"
                  f"  backward sums {sums / reads:.2f}")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 2)
