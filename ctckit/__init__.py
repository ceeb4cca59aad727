"""ctckit: an exact, fast CTC loss (Graves et al., 2006) with PyTorch and NumPy frontends.

Frontends: :mod:`ctckit.torch` (drop-in for ``torch.nn.functional.ctc_loss``) and
:mod:`ctckit.numpy`. Importing :mod:`ctckit` imports neither torch nor the kernels.
:func:`set_num_threads` sets how many threads the kernels use (default: the CPUs this
process may run on, or ``CTCKIT_NUM_THREADS``); results do not depend on it.
A kernel's first compilation says so on stderr (:class:`CompileWarning`); ``ctckit warmup``
compiles every kernel ahead of time.
"""

from ._threads import get_num_threads, set_num_threads
from .errors import CTCInputError

__version__ = "0.1.0"
__all__ = ["CTCInputError", "CompileWarning", "get_num_threads", "set_num_threads", "__version__"]


def __getattr__(name):
    """``CompileWarning`` (the notice that a kernel is compiling), imported on first use:
    its module imports Numba, which ``import ctckit`` does not."""
    if name == "CompileWarning":
        from ._compile_notice import CompileWarning

        return CompileWarning
    raise AttributeError(f"module 'ctckit' has no attribute {name!r}")
