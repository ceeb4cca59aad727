"""ctckit: an exact, fast CTC loss (Graves et al., 2006) with PyTorch and NumPy frontends.

Frontends: :mod:`ctckit.torch` (drop-in for ``torch.nn.functional.ctc_loss``) and
:mod:`ctckit.numpy`. Importing :mod:`ctckit` imports neither torch nor the kernels.
:func:`set_num_threads` sets how many threads the kernels use (default: the CPUs this
process may run on, or ``CTCKIT_NUM_THREADS``); results do not depend on it.
"""

from ._threads import get_num_threads, set_num_threads
from .errors import CTCInputError

__version__ = "0.1.0"
__all__ = ["CTCInputError", "get_num_threads", "set_num_threads", "__version__"]
