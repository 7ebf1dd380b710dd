import os
import zlib

import numpy as np
import pytest

# The interface tests compare with a float64 reference at 1 ulp of the output dtype, the accuracy
# of the fp32 reference backend; they check the Python interface, not a backend's numerics (the C
# sweep runs every backend against FA3's pass rule). CUDA arrays still reach the cuda backend.
os.environ.setdefault("FA3C_BACKEND", "cpu-ref")

import fa3c  # noqa: E402


@pytest.fixture(scope="session")
def cpu_backend():
    """Name of the backend the default CPU context uses (the best available CPU backend)."""
    return fa3c.default_context().backend


@pytest.fixture(scope="session")
def ctx132(cpu_backend):
    """A context whose heuristics assume an H100's 132 SMs, so num_splits=0 does split."""
    with fa3c.Context(backend=cpu_backend, num_sm=132) as ctx:
        yield ctx


@pytest.fixture
def rng(request):
    # A seed per test id, so a failure reproduces alone.
    return np.random.default_rng(zlib.crc32(request.node.nodeid.encode()))
