"""Time cbn.dask.batch_norm_forward on a LocalCluster next to in-memory cbn.batch_norm_forward.

The input (float32, default (112, 64, 224, 224) = 1.44 GB) is generated on the workers chunk by
chunk and persisted there, so the timings measure batch norm, not data generation or transfer:

* ``dask stats``  : ``cbn.dask.batch_norm_forward(X)`` -- the eager pass (per-chunk moments +
  tree merge; only O(C) vectors come back);
* ``dask output`` : ``r.out.persist()`` + wait -- the per-chunk normalize pass, result kept on
  the workers;
* ``dask total``  : the two together (what a forward costs);
* ``in-memory``   : ``cbn.batch_norm_forward(x)`` on the same values gathered into this process,
  with all OpenMP threads.

The same comparison with Dask's threaded scheduler in this process (no serialization) is
printed too.  Run::

    python examples/dask_timing.py                          # 2 workers x 1 thread
    python examples/dask_timing.py --shape 32 64 112 112 --repeat 5
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import numpy as np


def _gen_block(block_info=None, *, seed):
    loc = block_info[None]["chunk-location"]
    shape = block_info[None]["chunk-shape"]
    rng = np.random.default_rng([seed, *loc])
    x = rng.standard_normal(shape, dtype=np.float32)
    x *= 2.0
    x += 3.0
    return x


def _best(times):
    return f"min {min(times):7.3f} s  median {statistics.median(times):7.3f} s"


def main(shape=(112, 64, 224, 224), chunk_batch=8, n_workers=2, repeat=3, seed=0):
    import dask
    import dask.array as da
    from distributed import Client, LocalCluster, wait

    import cbn
    import cbn.dask as cd

    nbytes = int(np.prod(shape)) * 4
    chunks = (chunk_batch,) + tuple(shape[1:])
    print(f"x: float32 {shape} = {nbytes / 1e9:.2f} GB, chunks {chunks} "
          f"({int(np.prod(chunks)) * 4 / 1e6:.0f} MB, {-(-shape[0] // chunk_batch)} chunks)")
    print(f"cpu count {os.cpu_count()}, load average {os.getloadavg()}")
    results = {}
    with LocalCluster(n_workers=n_workers, threads_per_worker=1, processes=True,
                      dashboard_address=None, silence_logs=40) as cluster, \
            Client(cluster) as client:
        X = da.map_blocks(_gen_block, seed=seed, dtype=np.float32,
                          chunks=da.core.normalize_chunks(chunks, shape),
                          meta=np.empty((0,) * len(shape), np.float32))
        X = X.persist()
        wait(X)
        t_stats, t_out, t_tot = [], [], []
        for _ in range(repeat):
            t0 = time.perf_counter()
            r = cd.batch_norm_forward(X)          # eager statistics pass
            t1 = time.perf_counter()
            out = r.out.persist()
            wait(out)
            t2 = time.perf_counter()
            del out
            t_stats.append(t1 - t0)
            t_out.append(t2 - t1)
            t_tot.append(t2 - t0)
        results["cluster"] = (t_stats, t_out, t_tot)
        mean_d, invstd_d = r.mean, r.invstd
        print(f"LocalCluster {n_workers} workers x 1 thread (num_threads=1 per chunk task):")
        print(f"  dask stats   {_best(t_stats)}")
        print(f"  dask output  {_best(t_out)}")
        print(f"  dask total   {_best(t_tot)}   ({nbytes / 1e9 / min(t_tot):.2f} GB/s of x)")
        t0 = time.perf_counter()
        x = X.compute()
        print(f"  (gathering x into the client: {time.perf_counter() - t0:.2f} s)")
        del X

    t_mem = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        f = cbn.batch_norm_forward(x)
        t_mem.append(time.perf_counter() - t0)
        del f
    f = cbn.batch_norm_forward(x)
    print(f"in-memory cbn.batch_norm_forward (OpenMP threads: {cbn._kernels.max_threads()}):")
    print(f"  in-memory    {_best(t_mem)}   ({nbytes / 1e9 / min(t_mem):.2f} GB/s of x)")
    print(f"  max |mean diff| {np.abs(f.mean - mean_d).max():.3g}, "
          f"max |invstd rel diff| {np.abs(f.invstd / invstd_d - 1).max():.3g}")
    del f

    Xt = da.from_array(x, chunks=chunks)
    t_thr = []
    with dask.config.set(scheduler="threads", num_workers=n_workers):
        for _ in range(repeat):
            t0 = time.perf_counter()
            r = cd.batch_norm_forward(Xt)
            out = r.out.persist()
            t_thr.append(time.perf_counter() - t0)
            del out
    print(f"dask threaded scheduler, {n_workers} threads, same process:")
    print(f"  dask total   {_best(t_thr)}   ({nbytes / 1e9 / min(t_thr):.2f} GB/s of x)")
    return dict(cluster=results["cluster"], in_memory=t_mem, threads=t_thr)


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shape", type=int, nargs="+", default=[112, 64, 224, 224])
    ap.add_argument("--chunk-batch", type=int, default=8)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=3)
    a = ap.parse_args()
    main(tuple(a.shape), a.chunk_batch, a.workers, a.repeat)
