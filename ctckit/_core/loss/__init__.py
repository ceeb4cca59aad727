r"""CTC loss and its gradient w.r.t. the log-probabilities (Graves et al., 2006).

Symbols as in the paper, with shape letters as in the rest of ctckit:

* ``y[t, k]``: probability of class ``k`` at frame ``t`` (``log_probs`` holds ``log y``);
* ``l``: the target, ``L`` labels; ``l'``: the extended target, blanks around and between
  the labels, ``L' = 2L + 1`` states; state ``s`` is the blank when even, label
  ``(s - 1) / 2`` when odd;
* ``alpha[t, s]`` (eqs. 6-7): total probability of the path prefixes ending in state ``s``
  at frame ``t``, emissions up to and including ``t``;
* ``b[t, s]``: total probability of the path suffixes from state ``s`` at frame ``t`` to the
  end, emissions *after* ``t`` (the paper's beta divided by ``y[t, l'_s]``, eqs. 10-11,
  which avoids the division of eq. 14 where ``y`` is zero);
* ``P = p(l | x)`` (eq. 8); for every frame ``t``, ``P = sum_s alpha[t, s] b[t, s]`` (eq. 14);
* ``gamma[t, s] = alpha[t, s] b[t, s] / P``, the posterior occupation of state ``s``.

The loss is ``-log P``. Its exact gradient w.r.t. ``log y[t, k]`` is minus the posterior
occupation of class ``k`` at frame ``t`` (eq. 16 before the softmax is folded in):
``-sum_{s: l'_s = k} gamma[t, s]``, nonzero only at the blank and the target's labels.
PyTorch's kernel returns ``y[t, k]`` minus that instead, the gradient w.r.t. the logits
of a softmax; the ``torch_grad`` flag reproduces it.

Numerics. Each item is computed in *rescaled probability space* with float64
accumulators (Graves 2006, section 4.1 and eq. 9): frame ``t``'s emissions are divided by
their largest value among the states, ``exp(log y - m_t)`` (the shifts add up in one
log-shift per row), and the states are cut into blocks of ``BLOCK`` labels, each block
normalised by a power of two (exactly) with its own exponent.
That is a few multiply-adds per cell instead of a log-sum-exp. One scale per row is not
enough: over long inputs the forward mass runs far ahead of where the complete paths are
(at T = 10^4, S = 2000, the states that matter sit 1e-308 below the row's largest); per
block, neighbouring states never differ by that much. Only the states that are reachable
from the start and can still reach the end (a band) are computed. Three guards keep the
result exact:

1. a block whose normalising sum underflows (peaky inputs: log-probs of -1e4) is
   recomputed in log space from the previous, normalised row;
2. a state that can still matter but fell below 1e-300 of its block may have lost
   precision: the loss-only pass then checks its likelihood against the backward one;
3. the gradient pass checks eq. 14, that ``log sum_s alpha b`` plus the scales equals
   ``log P`` at every frame.

An item that fails a check is recomputed by the plain log-space kernels (the loss,
and with the gradient), in a round of its own.

The gradient needs every forward row in the backward pass. A long item's rows (past
``STORED_ROWS_LIMIT``) are kept for one segment of about sqrt(T) / 2 frames at a time: the
forward pass keeps each segment's first row (a checkpoint), and the backward pass
recomputes a segment's rows from it just before it needs them, the same rows bit for bit.

Short items (fewer than ``ONE_SCALE_LABELS`` labels, ``ONE_SCALE_CELLS`` frames times
labels at most) first go to leaner passes with one scale per row, folded into the next
frame's emissions (section "one scale per row" below), under the same guards; an item
that fails one goes to the block-scaled passes.

A batch runs in up to three rounds: the one-scale passes, the block-scaled passes over
the items the first left, log space over those the second rejected.

The files, from the bottom up (each imports only those above it):

* :mod:`.trellis`: the extended target, its band and emissions, the row primitives, the
  constants and status codes;
* :mod:`.posteriors`: the gradient or compact posteriors a pass writes, and their scatter
  into a dense gradient;
* :mod:`.blocks`: block-scaled rows (the per-block recursions, carries, log-space blocks);
* :mod:`.block_passes`: the block-scaled passes over an item, with checkpointed rows;
* :mod:`.one_scale`: the leaner passes for short items;
* :mod:`.log_space`: the plain log-space passes;
* :mod:`.items`: one item's kernels, one per round, and their workspace;
* :mod:`.batch`: a batch's rounds, the drivers, and the per-item kernels' addresses.

Reference: A. Graves, S. Fernandez, F. Gomez, J. Schmidhuber. Connectionist Temporal
Classification: Labelling Unsegmented Sequence Data with Recurrent Neural Networks.
ICML 2006.
"""

from .batch import ctc_loss_batch
from .posteriors import scatter_posteriors
from .trellis import (
    BLOCK, GRAD_COMPACT, GRAD_DENSE, GRAD_NONE, STATUS_OK, STATUS_ONE_SCALE, STATUS_PENDING, STATUS_RECOMPUTED,
    min_frames_needed,
)

__all__ = ["BLOCK", "GRAD_COMPACT", "GRAD_DENSE", "GRAD_NONE", "STATUS_OK", "STATUS_ONE_SCALE", "STATUS_PENDING",
           "STATUS_RECOMPUTED", "ctc_loss_batch", "min_frames_needed", "scatter_posteriors"]
