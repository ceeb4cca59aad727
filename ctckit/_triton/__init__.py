r"""The CTC loss, its gradient and forced alignment as Triton kernels, for CUDA tensors.

One program per batch item walks the frames of its trellis; the lanes of the program
are the extended-label states ``s`` (blank at even ``s``, label ``(s - 1) / 2`` at odd
``s``), so a frame is one vector step. Recursions run in float64 log space (Graves et
al., 2006, eqs. 6-11), whatever the input dtype (float16, bfloat16, float32, float64):

.. math::
    \alpha_t(s) = \log y^t_{l'_s} + \mathrm{lse}\big(\alpha_{t-1}(s), \alpha_{t-1}(s-1),
                  [\alpha_{t-1}(s-2)]\big), \qquad
    \hat\beta_t(s) = \mathrm{lse}\big(\beta_{t+1}(s), \beta_{t+1}(s+1), [\beta_{t+1}(s+2)]\big)

with :math:`\beta_t = \hat\beta_t + \log y^t_{l'_s}` and the posterior of state ``s`` at
frame ``t`` :math:`\gamma_t(s) = \exp(\alpha_t(s) + \hat\beta_t(s) - \log p)`, which is
never ``-inf - (-inf)`` even where a class is masked.

A frame's neighbours ``s - 1`` and ``s - 2`` live in other lanes: each step stores the
row to a two-slot ring in global memory, waits at a barrier, and loads it shifted.

Memory: with a gradient, the alpha pass stores a float64 checkpoint row every
``K = ceil(sqrt(T))`` frames; the beta pass recomputes each segment of ``K`` frames from its
checkpoint, last segment first, and writes the dense gradient or the compact posteriors
(whichever is smaller) as it goes. Both run inside the loss's forward; only that result
is kept for the backward (:func:`memory_bytes`).

Deterministic: no atomics. Per-class sums over a frame's states are fixed-order
reductions; a label that occurs ``r`` times in a target is added in ``r`` ordered
passes (``rank[k]``: how often label ``k`` occurred earlier in its target), so no two
lanes ever write one gradient entry at once.

``TRITON_INTERPRET=1`` runs the same kernels on the CPU with CPU tensors (how the
tests run them without a GPU); it must be set before this package is first imported,
as the kernels are defined then.

Modules, device side first:

* :mod:`.trellis`: the ``@triton.jit`` helpers every kernel shares (log-sum-exp, casts,
  an item's lanes, its first and final states, one step of the alpha recursion);
* :mod:`.loss_kernels`: the alpha pass (loss and checkpoints), the beta pass (gradient
  or compact posteriors) and the scatter of compact posteriors into a gradient;
* :mod:`.logits_kernels`: the loss on logits around those: each frame's log-sum-exp with
  the log-softmax of the used classes, and the logit gradient;
* :mod:`.align_kernels`: the Viterbi pass and its back-trace (forced alignment);
* :mod:`.launch`: the host side, the only one the torch frontend calls
  (:data:`ctckit._torch_backends.TRITON`): block and warp sizes, label ranks, working
  buffers, and the functions that launch the kernels.
"""

from .align_kernels import _viterbi_bounded_kernel, _viterbi_kernel
from .launch import (DeviceBatch, label_ranks, logit_gradient, loss_from_logits, memory_bytes, negative_log_likelihood,
                     scatter_gradient, viterbi)
from .logits_kernels import _gather_kernel, _logit_gradient_kernel
from .loss_kernels import _alpha_kernel, _beta_kernel, _scatter_kernel

# The host functions, and the kernels themselves (to compile them without launching).
__all__ = ["DeviceBatch", "label_ranks", "logit_gradient", "loss_from_logits", "memory_bytes", "negative_log_likelihood",
           "scatter_gradient", "viterbi", "_alpha_kernel", "_beta_kernel", "_scatter_kernel", "_viterbi_kernel", "_viterbi_bounded_kernel",
           "_gather_kernel", "_logit_gradient_kernel"]
