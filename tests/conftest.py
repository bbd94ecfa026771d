"""pytest fixtures for the cbn test suite (every group: kernels/, api/, features/, system/;
see README.md here)."""

import re
import zlib

import numpy as np
import pytest

from cbn import _dispatch


@pytest.fixture
def rng(request):
    # a per-test seed derived from the test id: reproducible, different across cases; the group
    # directory is left out of the id (tests/kernels/test_x.py::t seeds as tests/test_x.py::t),
    # so a test keeps its data when its file moves from one group to another
    test_id = re.sub(r"^tests/(?:kernels|api|features|system)/", "tests/", request.node.nodeid)
    return np.random.default_rng(zlib.crc32(test_id.encode()))


@pytest.fixture(params=_dispatch.LEVELS)
def level(request):
    """Run cbn's public functions on one SIMD level (skipped where not built or not run by
    this CPU); yields its name."""
    if request.param not in _dispatch.supported_levels():
        pytest.skip(f"{request.param}: not built or not supported by this CPU")
    with _dispatch.use_level(request.param):
        yield request.param
