"""cbn.dask: batch norm on Dask arrays equals in-memory cbn, chunk by chunk, in bounded memory."""

import importlib.util
import threading
import time

import numpy as np
import pytest

dask = pytest.importorskip("dask")
da = pytest.importorskip("dask.array")

import cbn  # noqa: E402
import cbn.dask as cd  # noqa: E402
from dask.callbacks import Callback  # noqa: E402
from dask.sizeof import sizeof  # noqa: E402


# a hard 60 s limit where pytest-timeout is installed (the test also checks its own duration)
_timeout60 = (pytest.mark.timeout(60) if importlib.util.find_spec("pytest_timeout")
              else (lambda f: f))


@pytest.fixture
def threads():
    with dask.config.set(scheduler="threads", num_workers=2):
        yield


def _data(shape, dtype, seed=0, offset=3.0):
    rng = np.random.default_rng(seed)
    return (offset + 2.0 * rng.standard_normal(shape)).astype(dtype)


def _tol(dtype):
    return dict(rtol=2e-5, atol=2e-5) if dtype == np.float32 else dict(rtol=1e-12, atol=1e-12)


# (shape, axis, chunks): chunking along the batch axis, spatial axes, or both
CASES = [
    ((10, 4, 6, 5), 1, (3, 4, 6, 5)),          # batch only
    ((10, 4, 6, 5), 1, (10, 4, 2, 3)),         # spatial only
    ((10, 4, 6, 5), 1, (4, -1, 4, 2)),         # batch and spatial, uneven
    ((9, 6, 5, 3), -1, (2, 3, 5, -1)),         # channels-last
    ((12, 5), 1, (5, -1)),                     # 2-d
]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape,axis,chunks", CASES)
def test_forward_backward_match_in_memory(threads, shape, axis, chunks, dtype):
    x = _data(shape, dtype)
    dy = _data(shape, dtype, seed=1, offset=0.0)
    C = shape[axis]
    rng = np.random.default_rng(2)
    w, b = rng.normal(size=C), rng.normal(size=C)
    X = da.from_array(x, chunks=chunks)
    rm, rv = np.zeros(C), np.ones(C)
    rm_e, rv_e = rm.copy(), rv.copy()

    r = cd.batch_norm_forward(X, w, b, eps=1e-4, running_mean=rm, running_var=rv, axis=axis)
    e = cbn.batch_norm_forward(x, w, b, eps=1e-4, running_mean=rm_e, running_var=rv_e, axis=axis)
    assert isinstance(r.out, da.Array) and r.out.chunks == X.chunks and r.out.dtype == x.dtype
    assert isinstance(r.mean, np.ndarray) and isinstance(r.invstd, np.ndarray)
    np.testing.assert_allclose(r.out.compute(), e.out, **_tol(dtype))
    np.testing.assert_allclose(r.mean, e.mean, rtol=1e-13, atol=1e-13)
    np.testing.assert_allclose(r.invstd, e.invstd, rtol=1e-12)
    np.testing.assert_allclose(rm, rm_e, rtol=1e-13, atol=1e-13)     # updated in place
    np.testing.assert_allclose(rv, rv_e, rtol=1e-12)

    # dy with other chunks than x is rechunked
    DY = da.from_array(dy, chunks=tuple(max(1, s // 2) for s in shape))
    g = cd.batch_norm_backward(DY, X, r.mean, r.invstd, w, axis=axis)
    ge = cbn.batch_norm_backward(dy, x, e.mean, e.invstd, w, axis=axis)
    assert isinstance(g.dx, da.Array) and g.dx.chunks == X.chunks
    np.testing.assert_allclose(g.dx.compute(), ge.dx, **_tol(dtype))
    np.testing.assert_allclose(g.dweight, ge.dweight, rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(g.dbias, ge.dbias, rtol=1e-10, atol=1e-10)
    assert g.dweight.dtype == ge.dweight.dtype and g.dbias.dtype == ge.dbias.dtype

    inf = cd.batch_norm_inference(X, rm, rv, w, b, eps=1e-4, axis=axis)
    np.testing.assert_allclose(inf.compute(),
                               cbn.batch_norm_inference(x, rm, rv, w, b, eps=1e-4, axis=axis),
                               **_tol(dtype))


def test_backward_needs_and_no_weight(threads):
    x = _data((8, 3, 4), np.float32)
    dy = _data((8, 3, 4), np.float32, seed=4, offset=0.0)
    X, DY = da.from_array(x, chunks=(3, 3, 2)), da.from_array(dy, chunks=(3, 3, 2))
    f = cbn.batch_norm_forward(x)
    e = cbn.batch_norm_backward(dy, x, f.mean, f.invstd)
    g = cd.batch_norm_backward(DY, X, f.mean, f.invstd, needs=(False, False, True))
    assert g.dx is None and g.dweight is None
    np.testing.assert_allclose(g.dbias, e.dbias, rtol=1e-6)
    g = cd.batch_norm_backward(DY, X, f.mean, f.invstd, needs=(False, True, False))
    assert g.dx is None and g.dbias is None
    np.testing.assert_allclose(g.dweight, e.dweight, rtol=1e-5, atol=1e-5)
    assert cd.batch_norm_backward(DY, X, f.mean, f.invstd, needs=(0, 0, 0)) == (None, None, None)


def test_float16_weight_gradients_are_float32_as_in_memory(threads):
    # float32 data, float16 weight: the parameter gradients are float32 in both APIs; in
    # float16 the dbias sum (8e4 per channel) would overflow past 65504
    x = _data((40000, 2), np.float32)
    dy = np.full_like(x, 2.0)
    w = np.array([1.5, 0.5], np.float16)
    f = cbn.batch_norm_forward(x, w)
    e = cbn.batch_norm_backward(dy, x, f.mean, f.invstd, w)
    g = cd.batch_norm_backward(da.from_array(dy, chunks=(7000, 2)),
                               da.from_array(x, chunks=(7000, 2)), f.mean, f.invstd, w)
    assert e.dweight.dtype == e.dbias.dtype == np.float32
    assert g.dweight.dtype == g.dbias.dtype == np.float32
    np.testing.assert_allclose(g.dbias, 80000.0, rtol=1e-6)
    np.testing.assert_allclose(g.dweight, e.dweight, rtol=1e-5, atol=1e-2)


def test_large_offset_float32_exact(threads):
    """Merged chunk moments keep float32 data with mean 1e6 and std 1 accurate."""
    rng = np.random.default_rng(11)
    x = (1e6 + rng.standard_normal((40, 3, 20))).astype(np.float32)
    X = da.from_array(x, chunks=(3, 3, 7))
    r = cd.batch_norm_forward(X, eps=1e-12)
    true_var = x.astype(np.float64).var(axis=(0, 2))
    var = 1.0 / r.invstd ** 2 - 1e-12
    assert (np.abs(var - true_var) / true_var).max() < 1e-6


def test_unknown_chunk_sizes(threads):
    x = _data((20, 3, 4), np.float64, offset=0.0)
    X = da.from_array(x, chunks=(6, 3, 4))
    keep = x[:, 0, 0] > 0
    Xs = X[da.from_array(keep, chunks=6)]            # nan chunk sizes along axis 0
    assert np.isnan(Xs.shape[0])
    r = cd.batch_norm_forward(Xs)
    e = cbn.batch_norm_forward(x[keep])
    np.testing.assert_allclose(r.out.compute(), e.out, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(r.mean, e.mean, rtol=1e-13, atol=1e-13)
    DY = Xs * 0.5 + 1.0
    g = cd.batch_norm_backward(DY, Xs, r.mean, r.invstd)
    ge = cbn.batch_norm_backward(x[keep] * 0.5 + 1.0, x[keep], e.mean, e.invstd)
    np.testing.assert_allclose(g.dx.compute(), ge.dx, rtol=1e-10, atol=1e-10)


def test_inference_channel_chunks(threads):
    x = _data((6, 8, 5), np.float32)
    rng = np.random.default_rng(9)
    rm, rv, w, b = rng.normal(size=8), rng.uniform(0.5, 2, 8), rng.normal(size=8), None
    X = da.from_array(x, chunks=(4, 3, 2))                 # channel axis in 3 chunks: fine here
    np.testing.assert_allclose(cd.batch_norm_inference(X, rm, rv, w, b).compute(),
                               cbn.batch_norm_inference(x, rm, rv, w, b), rtol=1e-6, atol=1e-6)


# ------------------------------------------------------------------------------------ errors

def test_chunked_channel_axis_is_an_error(threads):
    X = da.zeros((8, 6, 4), dtype=np.float32, chunks=(4, 3, 4))
    with pytest.raises(ValueError, match=r"axis=1.*rechunk\(\{1: -1\}\)"):
        cd.batch_norm_forward(X)
    with pytest.raises(ValueError, match=r"axis=2.*rechunk\(\{2: -1\}\)"):
        cd.batch_norm_forward(da.zeros((8, 4, 6), np.float32, chunks=(4, 4, 3)), axis=-1)
    with pytest.raises(ValueError, match="rechunk"):
        cd.batch_norm_backward(X, X, np.zeros(6), np.ones(6))
    # the suggested fix works
    cd.batch_norm_forward(X.rechunk({1: -1}))


def test_argument_errors(threads):
    x = np.zeros((4, 3, 2), np.float32)
    X = da.from_array(x, chunks=2)
    X1 = X.rechunk({1: -1})
    with pytest.raises(TypeError, match="x must be a dask.array.Array"):
        cd.batch_norm_forward(x)
    with pytest.raises(TypeError, match="float32 or float64"):
        cd.batch_norm_forward(X1.astype(np.int32))
    with pytest.raises(ValueError, match="at least 2 dimensions"):
        cd.batch_norm_forward(da.zeros(4, chunks=2))
    with pytest.raises(ValueError, match="weight must have shape"):
        cd.batch_norm_forward(X1, np.ones(4))
    with pytest.raises(ValueError, match="eps"):
        cd.batch_norm_forward(X1, eps=0)
    with pytest.raises(ValueError, match="momentum"):
        cd.batch_norm_forward(X1, running_mean=np.zeros(3), momentum=2)
    with pytest.raises(ValueError, match="more than 1 value"):
        cd.batch_norm_forward(da.zeros((1, 3), np.float32, chunks=(1, 3)))
    with pytest.raises(TypeError, match="dy must be a dask"):
        cd.batch_norm_backward(x, X1, np.zeros(3), np.ones(3))
    with pytest.raises(ValueError, match="dy must have the shape"):
        cd.batch_norm_backward(X1[:2], X1, np.zeros(3), np.ones(3))
    with pytest.raises(TypeError, match="dy must have the dtype"):
        cd.batch_norm_backward(X1.astype(np.float64), X1, np.zeros(3), np.ones(3))
    with pytest.raises(ValueError, match="running_var must be >= 0"):
        cd.batch_norm_inference(X, np.zeros(3), -np.ones(3))
    with pytest.raises(ValueError, match="split_every"):
        cd.batch_norm_forward(X1, split_every=1)


# ------------------------------------------------------------------------------------ memory

class _Recorder(Callback):
    """Records the size of every task result and the task count."""

    def __init__(self):
        super().__init__()
        self.sizes = []
        self.lock = threading.Lock()

    def _posttask(self, key, result, dsk, state, worker_id):
        with self.lock:
            self.sizes.append((sizeof(result), key))


def test_bounded_memory_chunk_by_chunk(threads):
    """No task output is ever larger than one chunk; each chunk is read once per pass.

    The input is generated lazily chunk by chunk, so an implementation that gathered the array
    (``x.compute()``, ``np.asarray(x)``, a rechunk to one chunk, a concatenating reduction)
    would show a task result of the whole array's size here, or read chunks more often.
    """
    nb, chunk = 12, (2, 4, 16, 16)
    shape = (nb * chunk[0],) + chunk[1:]
    chunk_bytes = int(np.prod(chunk)) * 4
    reads = []

    def gen(block_info=None):
        loc = block_info[None]["chunk-location"]
        reads.append(loc)
        rng = np.random.default_rng(loc[0])
        return (5.0 + rng.standard_normal(chunk)).astype(np.float32)

    X = da.map_blocks(gen, chunks=tuple((c,) * (s // c) for s, c in zip(shape, chunk)),
                      dtype=np.float32, meta=np.empty((0, 0, 0, 0), np.float32))
    assert X.numblocks == (nb, 1, 1, 1)

    rec = _Recorder()
    with rec:
        r = cd.batch_norm_forward(X, split_every=3)
    stats_reads = len(reads)
    assert stats_reads == nb, "the statistics pass must read every chunk exactly once"
    big = [s for s in rec.sizes if s[0] > chunk_bytes * 1.05]
    assert not big, f"tasks produced more than one chunk: {big[:3]}"
    # the statistics pass: nb generator tasks, nb moments tasks and a tree of merges
    assert len(rec.sizes) <= 2 * nb + (nb // 2 + 2)

    # the lazy output: one task per chunk on top of the input, no all-to-one task
    graph = dict(r.out.__dask_graph__())
    assert len(graph) == 2 * nb
    rec2 = _Recorder()
    with rec2:
        y = r.out.map_blocks(lambda b: b.sum(axis=(0, 2, 3), keepdims=True),
                             chunks=(1, 4, 1, 1)).compute()
    assert max(s for s, _ in rec2.sizes) <= chunk_bytes * 1.05
    assert len(reads) == 2 * nb
    assert np.abs(y.sum(axis=0).ravel()).max() < 1e-2 * np.prod(shape) / 4  # normalized: ~0 mean

    # backward: same bounds
    reads.clear()
    rec3 = _Recorder()
    with rec3:
        g = cd.batch_norm_backward(X * 0.0 + 1.0, X, r.mean, r.invstd)
    assert len(reads) == nb
    assert max(s for s, _ in rec3.sizes) <= chunk_bytes * 1.05
    assert len(dict(g.dx.__dask_graph__())) <= 4 * nb


# ------------------------------------------------------------------------------------ distributed

@_timeout60
def test_distributed_local_cluster():
    """2 worker processes x 1 thread: the same results as in memory, in well under 60 s."""
    distributed = pytest.importorskip("distributed")
    t0 = time.monotonic()
    x = _data((16, 5, 8, 8), np.float32, seed=21)
    dy = _data(x.shape, np.float32, seed=22, offset=0.0)
    w = np.linspace(0.5, 1.5, 5)
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                  dashboard_address=None, silence_logs=40) as cluster, \
            distributed.Client(cluster, timeout="30s") as client:
        X = da.from_array(x, chunks=(4, 5, 4, 8))
        DY = da.from_array(dy, chunks=(4, 5, 4, 8))
        rm, rv = np.zeros(5), np.ones(5)
        r = cd.batch_norm_forward(X, w, running_mean=rm, running_var=rv)
        g = cd.batch_norm_backward(DY, X, r.mean, r.invstd, w)
        out, dx = client.compute([r.out, g.dx], sync=False)
        out, dx = out.result(timeout=30), dx.result(timeout=30)
        # the work really ran on both worker processes
        assert len(client.scheduler_info()["workers"]) == 2
    rm_e, rv_e = np.zeros(5), np.ones(5)
    e = cbn.batch_norm_forward(x, w, running_mean=rm_e, running_var=rv_e)
    ge = cbn.batch_norm_backward(dy, x, e.mean, e.invstd, w)
    np.testing.assert_allclose(out, e.out, rtol=2e-5, atol=2e-5)
    np.testing.assert_allclose(dx, ge.dx, rtol=2e-5, atol=2e-5)
    np.testing.assert_allclose(r.mean, e.mean, rtol=1e-13)
    np.testing.assert_allclose(rv, rv_e, rtol=1e-12)
    np.testing.assert_allclose(g.dweight, ge.dweight, rtol=1e-9, atol=1e-9)
    assert time.monotonic() - t0 < 60
