"""pytest fixtures for the cbn test suite."""

import zlib

import numpy as np
import pytest


@pytest.fixture
def rng(request):
    # a per-test seed derived from the test id: reproducible, different across cases
    return np.random.default_rng(zlib.crc32(request.node.nodeid.encode()))
