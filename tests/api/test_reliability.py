"""NaN/Inf policy, fork safety, concurrent Python threads."""

import multiprocessing
import subprocess
import sys
import textwrap
import threading

import numpy as np
import pytest

import cbn
from cbn._dispatch import kernels as k

LAYOUTS = [((6, 4, 50), 1), ((300, 4), 1), ((4, 5, 6, 4), -1), ((4, 4, 30000), 1)]


@pytest.mark.parametrize("shape,axis", LAYOUTS)
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_nonfinite_values_poison_only_their_channel(rng, shape, axis, bad, dtype):
    x = rng.standard_normal(shape).astype(dtype)
    dy = rng.standard_normal(shape).astype(dtype)
    C = shape[axis]
    idx = [0] * len(shape)
    idx[axis] = 2  # channel 2 gets one bad value
    x[tuple(idx)] = bad
    others = [c for c in range(C) if c != 2]
    clean = np.take(x, others, axis=axis)
    y, mean, invstd = cbn.batch_norm_forward(x, axis=axis)
    assert np.isnan(mean[2]) or np.isinf(mean[2])
    assert not np.isfinite(invstd[2]) or np.isnan(np.take(y, [2], axis=axis)).all()
    assert np.isnan(np.take(y, [2], axis=axis)).all()
    ref = cbn.batch_norm_forward(clean, axis=axis)
    np.testing.assert_array_equal(np.take(y, others, axis=axis), ref.out)
    np.testing.assert_array_equal(mean[others], ref.mean)
    dx, dw, db = cbn.batch_norm_backward(dy, x, mean, invstd, axis=axis)
    g = cbn.batch_norm_backward(np.take(dy, others, axis=axis), clean, ref.mean, ref.invstd, axis=axis)
    np.testing.assert_array_equal(np.take(dx, others, axis=axis), g.dx)
    np.testing.assert_array_equal(dw[others], g.dweight)
    rm, rv = np.zeros(C), np.ones(C)
    yi = cbn.batch_norm_inference(x, rm, rv, axis=axis)
    assert np.isfinite(np.take(yi, others, axis=axis)).all()


@pytest.mark.parametrize("shape,axis", LAYOUTS)
@pytest.mark.parametrize("stat_dtype", [np.float32, np.float64, np.float16])
def test_skip_nonfinite_keeps_running_stats_of_bad_channels(rng, shape, axis, stat_dtype):
    x = rng.standard_normal(shape)
    idx = [0] * len(shape)
    idx[axis] = 1
    x[tuple(idx)] = np.nan
    C = shape[axis]
    rm, rv = np.arange(C, dtype=stat_dtype), np.ones(C, stat_dtype)
    rm_plain, rv_plain = rm.copy(), rv.copy()
    cbn.batch_norm_forward(x, running_mean=rm, running_var=rv, axis=axis, skip_nonfinite=True)
    cbn.batch_norm_forward(x, running_mean=rm_plain, running_var=rv_plain, axis=axis)
    assert rm[1] == 1 and rv[1] == 1  # untouched
    assert np.isnan(rm_plain[1]) and np.isnan(rv_plain[1])  # the torch behaviour
    good = [c for c in range(C) if c != 1]
    np.testing.assert_array_equal(rm[good], rm_plain[good])
    np.testing.assert_array_equal(rv[good], rv_plain[good])
    # the functional form passes it through
    rm2, rv2 = np.arange(C, dtype=stat_dtype), np.ones(C, stat_dtype)
    cbn.batch_norm(x, rm2, rv2, training=True, axis=axis, skip_nonfinite=True)
    np.testing.assert_array_equal(rm2, rm)


_FRESH_FORK = textwrap.dedent("""
    import os, signal, sys
    import numpy as np
    import cbn
    from cbn._dispatch import kernels as k
    x = np.ones((8, 64, 40, 40), np.float32)
    if sys.argv[1] == "floor":  # the benchmark's floor kernels, and nothing else
        k.stream_scale(x.reshape(-1), np.empty(x.size, np.float32), 2)
    else:
        cbn.batch_norm_forward(x, num_threads=2)
    pid = os.fork()
    if pid == 0:
        signal.alarm(60)  # a hung child dies instead of blocking the test
        k.last_team_size(reset=True)
        cbn.batch_norm_forward(x, num_threads=2)
        os._exit(0 if k.in_forked_child() and k.last_team_size() == 1 else 3)
    print("status", os.waitpid(pid, 0)[1])
""")


@pytest.mark.skipif(k.max_threads() < 2, reason="needs an OpenMP team of 2")
@pytest.mark.parametrize("first_use", ["forward", "floor"])
def test_fork_after_first_team_in_a_fresh_process(first_use):
    """Every kernel that starts a thread team -- the benchmark floor kernels too -- marks the
    process, so a child forked afterwards runs serially instead of hanging in libgomp."""
    out = subprocess.run([sys.executable, "-c", _FRESH_FORK, first_use], capture_output=True,
                         text=True, timeout=180)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["status", "0"], out.stdout


def _child_work(queue):
    x = np.random.default_rng(1).standard_normal((8, 64, 40, 40)).astype(np.float32)
    k.last_team_size(reset=True)
    y = cbn.batch_norm_forward(x, num_threads=2)
    queue.put((float(np.abs(y.mean).max()), k.in_forked_child(), k.last_team_size()))


def test_fork_after_threaded_use_completes():
    """GNU libgomp can hang in a forked child after the parent used a thread team
    (scikit-learn #7650); cbn detects the child and runs serially there."""
    x = np.ones((8, 64, 40, 40), np.float32)
    x[0] = 2
    k.last_team_size(reset=True)
    cbn.batch_norm_forward(x, num_threads=2)  # the parent has now used an OpenMP team
    assert k.last_team_size() == min(2, k.max_threads()) or k.max_threads() == 1
    ctx = multiprocessing.get_context("fork")
    queue = ctx.Queue()
    p = ctx.Process(target=_child_work, args=(queue,))
    p.start()
    p.join(60)
    if p.is_alive():
        p.kill()
        pytest.fail("the forked child hung")
    assert p.exitcode == 0
    mean_max, forked, team = queue.get(timeout=5)
    assert mean_max < 0.1
    assert forked and team == 1
    assert not k.in_forked_child()  # the parent is unaffected


def test_python_threads_concurrently_give_serial_results(rng):
    """8 Python threads calling cbn at once on different arrays give the serial results."""
    arrays = [rng.standard_normal((4, 16, 30, 30)).astype(np.float32) + i for i in range(8)]
    expected = [cbn.batch_norm_forward(a).out for a in arrays]
    results = [None] * 8
    barrier = threading.Barrier(8)

    def work(i):
        barrier.wait()
        for _ in range(5):
            results[i] = cbn.batch_norm_forward(arrays[i]).out

    threads = [threading.Thread(target=work, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for e, r in zip(expected, results):
        np.testing.assert_array_equal(e, r)
