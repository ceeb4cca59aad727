import os
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parent))


def _has_cuda() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return torch.cuda.is_available()


# Without a CUDA device the Triton kernels run in Triton's interpreter, on CPU tensors.
# It must be chosen before the kernels are defined (the first import of ctckit._triton).
if not _has_cuda():
    os.environ.setdefault("TRITON_INTERPRET", "1")
TRITON_DEVICE = "cpu" if os.environ.get("TRITON_INTERPRET") == "1" else "cuda"
BACKEND_DEVICE = {"numba": "cpu", "torch": "cpu", "triton": TRITON_DEVICE}


def pytest_sessionstart(session):
    """Fill Numba's cache before the first test, in two processes at once (``ctckit
    warmup``): the tests then load the kernels from the cache instead of compiling them
    one at a time on one core (a fresh clone: about 2 minutes, against 5 spread over the
    tests; a warm cache: a few seconds). ``CTCKIT_TEST_WARMUP=0`` skips it; a warmup that
    fails is reported and the tests run anyway (they compile what they need)."""
    if os.environ.get("CTCKIT_TEST_WARMUP", "1") == "0":
        return
    result = subprocess.run([sys.executable, "-m", "ctckit", "warmup", "--jobs", "2", "--quiet"], capture_output=True,
                            text=True, env={k: v for k, v in os.environ.items() if k != "CTCKIT_QUIET_COMPILE"})
    if result.returncode != 0:
        print(f"ctckit warmup failed (the tests compile what they need):\n{result.stderr[-2000:]}", file=sys.stderr)


def log_softmax(x, axis=-1):
    return x - np.logaddexp.reduce(x, axis=axis, keepdims=True)


@pytest.fixture
def rng(request):
    """A generator seeded from the test's name: reproducible, different per test (a CRC,
    not ``hash``, which Python salts per process)."""
    return np.random.default_rng(zlib.crc32(request.node.nodeid.encode()))
