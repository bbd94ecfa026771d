"""The SyncBN recipe in examples/syncbn_multiprocessing.py runs and matches single-process cbn."""

import importlib
import pathlib
import sys

import numpy as np
import pytest

EXAMPLES = pathlib.Path(__file__).resolve().parents[2] / "examples"  # tests/features/ -> root


@pytest.fixture(scope="module")
def syncbn():
    if not (EXAMPLES / "syncbn_multiprocessing.py").exists():  # pragma: no cover
        pytest.skip("examples/ is not available (installed package without the source tree)")
    # on sys.path (not loaded from a file spec) so that spawned workers can import it too
    sys.path.insert(0, str(EXAMPLES))
    try:
        yield importlib.import_module("syncbn_multiprocessing")
    finally:
        sys.path.remove(str(EXAMPLES))


@pytest.mark.parametrize("axis,dtype", [(1, np.float32), (-1, np.float64)])
def test_syncbn_two_processes(syncbn, axis, dtype):
    diffs = syncbn.main(nprocs=2, shape=(6, 4, 5, 3), axis=axis, dtype=dtype, verbose=False)
    assert set(diffs) == {"out", "dx", "mean", "invstd", "dweight", "dbias", "running_mean",
                          "running_var"}


def test_syncbn_uneven_shards_and_large_offset(syncbn):
    # 5 samples over 3 processes (2, 2, 1), float32 with mean 1e4 and std 3
    syncbn.main(nprocs=3, shape=(5, 3, 7), dtype=np.float32, offset=1e4, verbose=False)


def test_syncbn_reports_worker_errors(syncbn):
    x = np.zeros((4, 3, 2), np.float32)
    with pytest.raises(RuntimeError, match="rank"):
        # weight of the wrong length: every worker fails in normalize
        syncbn.run_syncbn(x, x, np.ones(2), None, np.zeros(3), np.ones(3), nprocs=2, timeout=60)
