"""pytest fixtures for the cbn test suite (every group: kernels/, api/, features/, system/;
see README.md here)."""

import re
import zlib

import numpy as np
import pytest


@pytest.fixture
def rng(request):
    # a per-test seed derived from the test id: reproducible, different across cases; the group
    # directory is left out of the id (tests/kernels/test_x.py::t seeds as tests/test_x.py::t),
    # so a test keeps its data when its file moves from one group to another
    test_id = re.sub(r"^tests/(?:kernels|api|features|system)/", "tests/", request.node.nodeid)
    return np.random.default_rng(zlib.crc32(test_id.encode()))
