"""Synchronized batch norm (SyncBN) across processes with cbn's scale-out building blocks.

Each of N worker processes holds one shard of the batch (split along the batch axis).  The
forward and backward passes need statistics of the *whole* batch, exchanged as small
per-channel vectors:

forward
    1. ``m_local = cbn.moments(x_local)``                    local (count, mean, M2)
    2. ``m = all_reduce(m_local, op=cbn.merge_moments)``     exact global moments
    3. ``out_local = cbn.normalize(x_local, m.mean, m.invstd(eps), weight, bias)``
       (and every process updates its running statistics identically)

backward
    4. ``s_local = cbn.backward_reduce(dy_local, x_local, m.mean)``
    5. ``s = all_reduce(s_local, op=sum)``                   global sum(dy), sum(dy*(x-mean))
    6. ``dx_local = cbn.backward_elemt(dy_local, x_local, m.mean, invstd, weight, *s, m.count)``
       ``dweight = s.sum_dy_xmu * invstd``; ``dbias = s.sum_dy`` (identical on every process)

The all-reduce here is the simplest correct one: each worker sends its part to the parent over
a pipe, the parent reduces all parts in rank order and sends the result back to every worker
(reduce at a root + broadcast).  In a real job you would use your framework's collective
(``torch.distributed.all_gather_object``, MPI ``allgather``, ...): all-gather the Moments and
call ``cbn.merge_moments`` locally, all-reduce-sum the two backward vectors.  Merging moments
instead of summing ``sum(x)`` and ``sum(x**2)`` keeps the variance exact on data with large
offsets.

The result is checked against single-process ``cbn.batch_norm_forward`` /
``cbn.batch_norm_backward`` on the concatenated batch.

Run::

    python examples/syncbn_multiprocessing.py            # 2 processes
    python examples/syncbn_multiprocessing.py --nprocs 4
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
from typing import Any, Callable, Dict, List

import numpy as np

import cbn

EPS = 1e-5
MOMENTUM = 0.1


# ------------------------------------------------------------------------------------ all-reduce

def _sum_backward(parts: List[cbn.BackwardSums]) -> cbn.BackwardSums:
    return cbn.BackwardSums(sum(p.sum_dy for p in parts), sum(p.sum_dy_xmu for p in parts))


#: The reductions the parent performs, by tag.
REDUCTIONS: Dict[str, Callable[[List[Any]], Any]] = {
    "moments": lambda parts: cbn.merge_moments(*parts),
    "backward": _sum_backward,
}


def all_reduce(conn, tag: str, value: Any) -> Any:
    """Worker side: send ``value`` to the parent, receive the reduction over all workers."""
    conn.send((tag, value))
    return conn.recv()


def serve_all_reduce(conns, tag: str) -> None:
    """Parent side: one all-reduce round over the workers' pipes, in rank order."""
    parts = []
    for rank, c in enumerate(conns):
        got_tag, value = c.recv()
        if got_tag == "error":
            raise RuntimeError(value)
        if got_tag != tag:
            raise RuntimeError(f"rank {rank} sent {got_tag!r} while {tag!r} was expected")
        parts.append(value)
    result = REDUCTIONS[tag](parts)
    for c in conns:
        c.send(result)


# ------------------------------------------------------------------------------------ worker

def worker(rank: int, conn, axis: int, num_threads: int) -> None:
    """One SyncBN participant: receives its shard, runs forward and backward, sends results."""
    try:
        x, dy, weight, bias, running_mean, running_var = conn.recv()
        # forward: local moments -> all-reduce (merge) -> normalize with the global statistics
        m = all_reduce(conn, "moments", cbn.moments(x, axis=axis, num_threads=num_threads))
        invstd = m.invstd(EPS)
        out = cbn.normalize(x, m.mean, invstd, weight, bias, axis=axis, num_threads=num_threads)
        running_mean[...] = (1 - MOMENTUM) * running_mean + MOMENTUM * m.mean
        running_var[...] = (1 - MOMENTUM) * running_var + MOMENTUM * m.var(ddof=1)
        # backward: local sums -> all-reduce (sum) -> dx of the local shard
        s = all_reduce(conn, "backward",
                       cbn.backward_reduce(dy, x, m.mean, axis=axis, num_threads=num_threads))
        dx = cbn.backward_elemt(dy, x, m.mean, invstd, weight, s.sum_dy, s.sum_dy_xmu, m.count,
                                axis=axis, num_threads=num_threads)
        dweight = s.sum_dy_xmu * invstd
        dbias = s.sum_dy
        conn.send(("result", dict(out=out, dx=dx, mean=m.mean, invstd=invstd, dweight=dweight,
                                  dbias=dbias, running_mean=running_mean,
                                  running_var=running_var)))
    except BaseException as exc:  # report instead of leaving the parent waiting
        conn.send(("error", f"rank {rank}: {type(exc).__name__}: {exc}"))
        raise
    finally:
        conn.close()


# ------------------------------------------------------------------------------------ driver

def run_syncbn(x: np.ndarray, dy: np.ndarray, weight, bias, running_mean, running_var, *,
               nprocs: int = 2, axis: int = 1, batch_axis: int = 0, num_threads: int = 1,
               start_method: str = "spawn", timeout: float = 120.0) -> Dict[str, Any]:
    """Run SyncBN forward + backward on ``nprocs`` processes, each holding a shard of ``x``.

    Returns the workers' results reassembled: ``out`` and ``dx`` concatenated along
    ``batch_axis``; ``mean``, ``invstd``, ``dweight``, ``dbias``, ``running_mean`` and
    ``running_var`` from rank 0 after checking that every rank has the same values.
    """
    ctx = mp.get_context(start_method)
    shards = np.array_split(np.arange(x.shape[batch_axis]), nprocs)
    conns, procs = [], []
    try:
        for rank, idx in enumerate(shards):
            parent_end, child_end = ctx.Pipe()
            p = ctx.Process(target=worker, args=(rank, child_end, axis, num_threads),
                            name=f"syncbn-{rank}", daemon=True)
            p.start()
            child_end.close()
            conns.append(parent_end)
            procs.append(p)
        for idx, c in zip(shards, conns):   # each worker gets its shard (and its own copies)
            c.send((np.take(x, idx, axis=batch_axis), np.take(dy, idx, axis=batch_axis),
                    weight, bias, running_mean.copy(), running_var.copy()))
        for tag in ("moments", "backward"):
            _wait(conns, timeout)
            serve_all_reduce(conns, tag)
        results = []
        for rank, c in enumerate(conns):
            _wait([c], timeout)
            kind, value = c.recv()
            if kind != "result":
                raise RuntimeError(value)
            results.append(value)
        for p in procs:
            p.join(timeout)
    finally:
        for p in procs:
            if p.is_alive():
                p.terminate()
                p.join()
    r0 = results[0]
    for rank, r in enumerate(results[1:], 1):
        for key in ("mean", "invstd", "dweight", "dbias", "running_mean", "running_var"):
            if not np.array_equal(r[key], r0[key]):
                raise AssertionError(f"rank {rank} disagrees with rank 0 on {key}")
    merged = {k: r0[k] for k in ("mean", "invstd", "dweight", "dbias", "running_mean",
                                 "running_var")}
    merged["out"] = np.concatenate([r["out"] for r in results], axis=batch_axis)
    merged["dx"] = np.concatenate([r["dx"] for r in results], axis=batch_axis)
    return merged


def _wait(conns, timeout):
    from multiprocessing.connection import wait
    pending = list(conns)
    while pending:
        ready = wait(pending, timeout)
        if not ready:
            raise TimeoutError(f"SyncBN worker did not answer within {timeout} s")
        for c in ready:
            pending.remove(c)


def main(nprocs: int = 2, shape=(16, 8, 12, 12), axis: int = 1, dtype=np.float32,
         seed: int = 0, offset: float = 100.0, verbose: bool = True) -> Dict[str, float]:
    """Run SyncBN on ``nprocs`` processes and check it against single-process cbn.

    Returns the maximal absolute differences per output; raises AssertionError if one exceeds
    the tolerance of ``dtype``.
    """
    rng = np.random.default_rng(seed)
    x = (offset + 3.0 * rng.standard_normal(shape)).astype(dtype)
    dy = rng.standard_normal(shape).astype(dtype)
    C = shape[axis]
    weight = rng.normal(size=C)
    bias = rng.normal(size=C)
    rm0, rv0 = rng.normal(size=C), rng.uniform(0.5, 2.0, size=C)
    batch_axis = 0 if axis % len(shape) != 0 else len(shape) - 1

    got = run_syncbn(x, dy, weight, bias, rm0, rv0, nprocs=nprocs, axis=axis,
                     batch_axis=batch_axis)

    rm, rv = rm0.copy(), rv0.copy()
    f = cbn.batch_norm_forward(x, weight, bias, eps=EPS, running_mean=rm, running_var=rv,
                               momentum=MOMENTUM, axis=axis)
    b = cbn.batch_norm_backward(dy, x, f.mean, f.invstd, weight, axis=axis)
    expect = dict(out=f.out, dx=b.dx, mean=f.mean, invstd=f.invstd, dweight=b.dweight,
                  dbias=b.dbias, running_mean=rm, running_var=rv)
    n = x.size // C
    atol = {np.dtype(np.float32): 2e-5, np.dtype(np.float64): 1e-12}[np.dtype(dtype)]
    # the parameter gradients are sums over n values: scale their tolerance
    tol = dict(out=atol, dx=atol / n * 10 + atol, mean=1e-12 * max(1.0, abs(offset)),
               invstd=1e-12, dweight=atol * 10, dbias=atol * 10, running_mean=1e-12 * max(
                   1.0, abs(offset)), running_var=1e-10)
    diffs = {}
    for key, want in expect.items():
        d = float(np.max(np.abs(np.asarray(got[key], np.float64) - np.asarray(want, np.float64))))
        scale = max(1.0, float(np.max(np.abs(want))))
        diffs[key] = d
        if verbose:
            print(f"{key:>12}: max |syncbn - single| = {d:.3g}")
        if not d <= tol[key] * scale:
            raise AssertionError(f"{key}: SyncBN differs from single-process cbn by {d:.3g} "
                                 f"(tolerance {tol[key] * scale:.3g})")
    if verbose:
        print(f"SyncBN on {nprocs} processes matches single-process cbn "
              f"(shape {shape}, axis {axis}, {np.dtype(dtype).name})")
    return diffs


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--nprocs", type=int, default=2)
    ap.add_argument("--axis", type=int, default=1)
    ap.add_argument("--dtype", choices=["float32", "float64"], default="float32")
    args = ap.parse_args()
    main(nprocs=args.nprocs, axis=args.axis, dtype=np.dtype(args.dtype))
