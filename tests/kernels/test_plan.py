"""The plans the kernels run (src/cbn_plan.h, reported by ``cbn._core.plan``).

A plan is a pure function of the geometry, the thread count and the cache budget.  These tests
pin which strategy each layout takes, the thread rules, and that the plan is what actually runs
(the team size probe), so that a change of strategy is a visible, deliberate change.
"""

import os

import numpy as np
import pytest

import cbn
from cbn import _dispatch

K = _dispatch.kernels
#: Plans for a team of two: a serial build (-Dopenmp=disabled) plans for one thread.
needs_team = pytest.mark.skipif(K.max_threads() < 2, reason="needs an OpenMP team of 2 "
                                "(a serial build plans for one thread)")
F32, F64 = np.float32, np.float64


def _plan(shape, axis=1, dtype=F32, threads=2, op="forward"):
    return K.plan(shape, axis, dtype, threads, op)


@pytest.mark.parametrize("op", ["forward", "backward", "moments", "inference", "dx_from_sums"])
def test_plan_is_a_pure_function(op):
    first = _plan((8, 64, 40, 40), op=op)
    assert all(_plan((8, 64, 40, 40), op=op) == first for _ in range(3))


@needs_team
def test_short_channel_major_runs_are_reduced_in_memory_order():
    p = _plan((8, 256, 14, 14))
    assert (p["reduce"], p["elementwise"], p["fused"]) == ("cm_rows", "cm_shares", False)
    # enough (segment, channel range) tasks for the threads, ranges covering every channel
    assert p["reduce_tasks"] == p["segments"] * p["channel_ranges"] >= 2
    assert p["channel_ranges"] * p["channel_range_width"] >= 256


@needs_team
def test_few_long_channels_split_into_segments_and_pieces():
    p = _plan((1, 1, 70001), threads=2, op="backward")
    assert p["reduce"] == "cm_segments" and p["reduce_tasks"] == p["segments"] > 1
    assert p["elementwise"] == "cm_pieces" and p["elementwise_tasks"] == 2


@needs_team
def test_long_runs_fuse_exactly_when_a_channel_fits_the_budget():
    budget = K.tuning()["fuse_budget_bytes"]
    block = K.tuning()["block_bytes"] // 4  # float32 elements per block
    for outer in (1, 2, 4, 8, 16, 64):
        shape = (outer, 4, 2 * block)
        n_bytes = outer * 2 * block * 4
        assert _plan(shape)["fused"] == (n_bytes <= budget), shape
        assert _plan(shape, op="backward")["fused"] == (2 * n_bytes <= budget), shape
        assert not _plan(shape, op="inference")["fused"]
        assert not _plan(shape, op="moments")["fused"]
    assert not _plan((4, 1, 2 * block))["fused"]  # fewer channels than threads


@pytest.mark.parametrize("shape,axis", [((64, 7, 7, 512), -1), ((4096, 1024), 1)])
def test_channels_last_takes_row_blocks(shape, axis):
    p = _plan(shape, axis)
    assert (p["reduce"], p["elementwise"]) == ("cl", "cl_rows")
    assert p["rows_per_task"] % 4 == 0
    assert p["rows_per_task"] * p["elementwise_tasks"] >= p["outer"]


def test_thread_rules():
    assert _plan((2, 4, 8), threads=2)["threads"] == 1  # below the parallel threshold
    assert _plan((8, 64, 40, 40), threads=1)["threads"] == 1
    # capped at the processors this process may run on (omp_get_num_procs)
    procs = len(os.sched_getaffinity(0)) if K.openmp_info()[0] else 1
    assert _plan((8, 64, 40, 40), threads=64)["threads"] == min(64, procs)
    # never more threads than tasks: one long channel of one run splits into segments only
    p = _plan((1, 1, 70001), threads=2)
    assert p["threads"] <= max(p["reduce_tasks"], 1)


def test_plan_threads_are_the_team_that_runs(rng):
    if not K.openmp_info()[0]:
        pytest.skip("serial build")
    x = rng.standard_normal((8, 64, 40, 40)).astype(F32)
    for threads in (1, 2):
        K.last_team_size(reset=True)
        cbn.batch_norm_forward(x, num_threads=threads)
        expect = _plan(x.shape, threads=threads)["threads"]
        assert K.last_team_size() == expect


def test_plan_rejects_bad_arguments():
    with pytest.raises(ValueError, match="op must be one of"):
        _plan((8, 4, 4), op="sideways")
    with pytest.raises(ValueError, match="axis=5 is out of range"):
        K.plan((8, 4, 4), 5, F32, 2, "forward")
    with pytest.raises(ValueError, match="at least 2 dimensions"):
        K.plan((8,), 0, F64, 2, "forward")


def test_activation_names_are_the_kernels_codes():
    """The one list of fused activations: the names ``activation=`` takes map to the kernels'
    codes (cbn_epilogue.h); an unknown name is an error that lists them."""
    assert K.ACTIVATIONS == {"relu": 1, "relu6": 2, "leaky_relu": 3, "silu": 4, "gelu": 5,
                             "gelu_tanh": 6}
    x = np.ones((4, 3, 5), F32)
    for name in K.ACTIVATIONS:
        cbn.batch_norm_forward(x, activation=name)
    with pytest.raises(ValueError, match=r"activation must be None or 'relu' or 'relu6' or "
                                         r"'leaky_relu' or 'silu' or 'gelu' or 'gelu_tanh', "
                                         r"got 'swish'"):
        cbn.batch_norm_forward(x, activation="swish")
