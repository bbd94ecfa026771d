"""Fork safety: a child forked after the parent used an OpenMP thread team runs serially
instead of hanging in libgomp (concurrent threads: test_threads.py)."""

import multiprocessing
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import cbn
from cbn._dispatch import kernels as k


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
