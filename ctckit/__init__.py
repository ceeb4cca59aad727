"""ctckit: an exact, fast CTC loss (Graves et al., 2006) with PyTorch and NumPy frontends.

Frontends: :mod:`ctckit.torch` (drop-in for ``torch.nn.functional.ctc_loss``) and
:mod:`ctckit.numpy`. Importing :mod:`ctckit` imports neither torch nor the kernels.
"""

from .errors import CTCInputError

__version__ = "0.1.0"
__all__ = ["CTCInputError", "__version__"]
