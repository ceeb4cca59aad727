import os
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


def log_softmax(x, axis=-1):
    return x - np.logaddexp.reduce(x, axis=axis, keepdims=True)


@pytest.fixture
def rng(request):
    """A generator seeded from the test's name: reproducible, different per test (a CRC,
    not ``hash``, which Python salts per process)."""
    return np.random.default_rng(zlib.crc32(request.node.nodeid.encode()))
