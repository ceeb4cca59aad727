"""The host side: what the torch frontend (:data:`ctckit._torch_backends.TRITON`) calls to
run the kernels on a batch.

:class:`DeviceBatch` puts a validated batch on the device with its label ranks (the
ordered passes that let :mod:`.loss_kernels` add repeated labels without atomics) and
the block size (the next power of two of ``2L + 1``, one lane per extended-label state;
the warps grow with it). :func:`workspace_shapes` and :func:`memory_bytes` size the
float64 working buffers (the ring, the checkpoints every ``ceil(sqrt(T))`` frames, one
segment of rows) and what the forward keeps for the backward.

:func:`negative_log_likelihood` launches the alpha pass and, for a gradient, the beta
pass (:mod:`.loss_kernels`: eqs. 6-11, 14, 16); :func:`scatter_gradient` the scatter of
compact posteriors; :func:`loss_from_logits` and :func:`logit_gradient` the loss on
logits around them (:mod:`.logits_kernels`); :func:`viterbi` the forced alignment
(:mod:`.align_kernels`).
"""

from __future__ import annotations

import math

import numpy as np
import torch
import triton

from .._core import compact_columns
from .._inputs import Batch
from .._core import align
from .align_kernels import _viterbi_bounded_kernel, _viterbi_kernel
from .logits_kernels import _gather_kernel, _logit_gradient_kernel
from .loss_kernels import _alpha_kernel, _beta_kernel, _scatter_kernel

_MIN_BLOCK = 16


def _block(max_length: int) -> int:
    return max(_MIN_BLOCK, triton.next_power_of_2(2 * max_length + 1))


def _warps(block: int) -> int:
    return 4 if block <= 512 else 8 if block <= 2048 else 16


def label_ranks(batch: Batch) -> tuple[np.ndarray, int]:
    """``rank[k]``: how often target label ``k`` occurred earlier in its item's target, and
    the number of rank passes (1 + the largest rank; 0 without labels)."""
    lengths = batch.target_lengths
    count = int(lengths.sum())
    rank = np.zeros(batch.targets.shape[0], dtype=np.int64)
    if count == 0:
        return rank, 0
    item = np.repeat(np.arange(lengths.shape[0]), lengths)
    positions = batch.offsets[item] + np.arange(count) - np.repeat(np.cumsum(lengths) - lengths, lengths)
    labels = batch.targets[positions]
    order = np.lexsort((positions, labels, item))  # by item, then label, then position
    keys = np.stack([item[order], labels[order]])
    starts = np.flatnonzero(np.concatenate([[True], (keys[:, 1:] != keys[:, :-1]).any(0)]))
    group_start = np.repeat(starts, np.diff(np.append(starts, count)))
    rank[positions[order]] = np.arange(count) - group_start
    return rank, int(rank.max()) + 1


class DeviceBatch:
    """A validated :class:`Batch` on the device, with the label ranks and the block size."""

    def __init__(self, batch: Batch, device: torch.device):
        to = lambda array: torch.from_numpy(np.ascontiguousarray(array)).to(device)
        rank, self.passes = label_ranks(batch)
        self.targets, self.offsets = to(batch.targets), to(batch.offsets)
        self.input_lengths, self.target_lengths, self.rank = to(batch.input_lengths), to(batch.target_lengths), to(rank)
        self.size = batch.input_lengths.shape[0]
        self.max_length = int(batch.target_lengths.max(initial=0))
        self.block = _block(self.max_length)

    def index_args(self):
        return self.targets, self.offsets, self.input_lengths, self.target_lengths


def _segment(frames: int) -> int:
    """Frames per recomputed segment: sqrt(T) keeps checkpoints plus one segment smallest."""
    return max(1, math.isqrt(max(frames - 1, 0)) + 1)


def workspace_shapes(frames: int, size: int, block: int, grad: bool) -> dict:
    """The float64 working buffers of one loss call (freed when it returns), by name."""
    if not grad:
        return {"ring": (size, 2, block)}
    segment = _segment(frames)
    return {"ring": (size, 2, block), "checkpoints": (size, -(-frames // segment), block), "rows": (size, segment, block)}


def memory_bytes(frames: int, size: int, classes: int, num_targets: int, max_length: int, itemsize: int,
                 torch_grad: bool = False) -> dict:
    """Bytes of a loss call with a gradient on (T, N, C) log-probs of ``itemsize`` bytes:
    ``kept``, what the forward keeps for the backward (the dense gradient or the compact
    posteriors, whichever is smaller; dense for torch's convention), and ``working``, the
    float64 buffers of the forward (:func:`workspace_shapes`)."""
    compact = not torch_grad and num_targets + size < size * classes
    kept = frames * (num_targets + size if compact else size * classes) * itemsize
    working = sum(math.prod(shape) for shape in workspace_shapes(frames, size, _block(max_length), True).values()) * 8
    return {"kept": kept, "working": working, "compact": compact}


def negative_log_likelihood(log_probs: torch.Tensor, batch: DeviceBatch, blank: int, grad: str, torch_grad: bool):
    """Per-item ``-log p(l_n | x_n)`` (float64, (N,)) and, by ``grad`` (``"none"``,
    ``"dense"``, ``"compact"``), nothing, the gradient of the summed loss or the compact
    posteriors, as :func:`ctckit._core.negative_log_likelihood` returns them.

    Working memory, all float64 and freed on return: a two-row ring per item, and with a
    gradient ``ceil(T / K) + K`` alpha rows per item (checkpoints and one segment of
    ``K = ceil(sqrt(T))`` frames), each ``next_pow2(2 S + 1)`` states wide."""
    frames, size, classes = log_probs.shape
    device, block = log_probs.device, batch.block
    store = grad != "none"
    work = {name: torch.empty(shape, dtype=torch.float64, device=device)
            for name, shape in workspace_shapes(frames, size, block, store).items()}
    ring = work["ring"]
    checkpoint, rows = work.get("checkpoints", ring), work.get("rows", ring)  # (unused without a gradient)
    segment, checkpoints = (rows.shape[1], checkpoint.shape[1]) if store else (frames, 1)
    log_p = torch.empty(size, dtype=torch.float64, device=device)
    strides = log_probs.stride()
    _alpha_kernel[(size,)](log_probs, *strides, *batch.index_args(), blank, ring, checkpoint, segment, checkpoints, log_p,
                           BLOCK=block, STORE=store, num_warps=_warps(block))
    nll = torch.where(log_p == float("-inf"), float("inf"), 0.0 - log_p)  # NaN stays NaN; 0.0 - 0.0 is not -0.0
    if not store:
        return nll, None
    if grad == "dense":
        out = log_probs.new_zeros(log_probs.shape)
        out_strides = out.stride()
    else:
        out = log_probs.new_zeros((frames, batch.targets.numel() + size))
        out_strides = (out.stride(0), 0, out.stride(1))
    _beta_kernel[(size,)](log_probs, *strides, *batch.index_args(), blank, ring, checkpoint, segment, checkpoints, rows,
                          log_p, batch.rank, batch.passes, classes, out, *out_strides,
                          BLOCK=block, BLOCK_C=min(1024, triton.next_power_of_2(classes)), COMPACT=grad == "compact",
                          TORCH_GRAD=torch_grad, num_warps=_warps(block))
    return nll, out


def scatter_gradient(posteriors: torch.Tensor, batch: DeviceBatch, blank: int, scale: torch.Tensor, classes: int) -> torch.Tensor:
    """The dense gradient of ``sum_n scale[n] * nll[n]`` from compact posteriors."""
    frames = posteriors.shape[0]
    grad = posteriors.new_zeros((frames, batch.size, classes))
    block_l = max(_MIN_BLOCK, triton.next_power_of_2(batch.max_length))
    scale = scale.to(device=posteriors.device, dtype=torch.float64).contiguous()
    _scatter_kernel[(batch.size,)](posteriors, posteriors.stride(0), posteriors.stride(1), *batch.index_args(),
                                   batch.rank, batch.passes, blank, scale, grad, *grad.stride(),
                                   BLOCK_L=block_l, num_warps=_warps(block_l))
    return grad


def _class_block(classes: int) -> int:
    return min(1024, triton.next_power_of_2(classes))


def loss_from_logits(logits: torch.Tensor, batch: Batch, blank: int, need_grad: bool, width: int, gradient_dtype):
    """The loss of ``log_softmax(logits)`` ((T, N, C), classes last) and, with ``need_grad``,
    ``(lse, posteriors, class_of_column)`` for :func:`logit_gradient`, as
    :func:`ctckit._core.negative_log_likelihood_from_logits` returns them (``posteriors`` in
    ``gradient_dtype``, K = ``width``), on the device: the used classes' log-softmax
    (:func:`._gather_kernel`), then the loss kernels on it."""
    frames, size, classes = logits.shape
    device = logits.device
    columns, class_of_column = compact_columns(batch.targets, batch.offsets, batch.target_lengths, classes, blank, width)
    class_of_column = torch.from_numpy(class_of_column).to(device)
    lengths = torch.from_numpy(batch.input_lengths).to(device)
    lse = torch.empty((frames, size), dtype=torch.float64, device=device)
    compact = torch.empty((frames, size, width), dtype=torch.float64, device=device)
    block_w = max(_MIN_BLOCK, triton.next_power_of_2(width))
    _gather_kernel[(frames * size,)](logits, *logits.stride(), classes, size, lengths, class_of_column, width, lse, compact,
                                     BLOCK_C=_class_block(classes), BLOCK_W=block_w)
    by_column = DeviceBatch(Batch(columns, batch.offsets, batch.input_lengths, batch.target_lengths), device)
    nll, posteriors = negative_log_likelihood(compact, by_column, 0, "dense" if need_grad else "none", False)
    nll = nll.clamp_min_(0.0)  # -log P >= 0 on logits; rounding may leave -1e-8 (see ctckit._core._never_negative)
    if not need_grad:
        return nll, None
    return nll, (lse, posteriors.to(gradient_dtype), class_of_column)


def logit_gradient(logits: torch.Tensor, saved, batch: Batch, nll: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """The gradient of ``sum_n scale[n] * loss_n`` w.r.t. the logits, in their dtype,
    C-contiguous: zero for an infeasible item, NaN on the frames of an item whose loss is NaN."""
    lse, posteriors, class_of_column = saved
    frames, size, classes = logits.shape
    device = logits.device
    scale = scale.to(device=device, dtype=torch.float64)
    scale = torch.where(torch.isinf(nll), 0.0, torch.where(torch.isnan(nll), float("nan"), scale)).contiguous()
    lengths = torch.from_numpy(batch.input_lengths).to(device)
    out = torch.empty(logits.shape, dtype=logits.dtype, device=device)
    width = class_of_column.shape[1]
    _logit_gradient_kernel[(frames * size,)](logits, *logits.stride(), classes, size, lengths, class_of_column.contiguous(),
                                             width, lse.contiguous(), posteriors.contiguous(), scale, out, *out.stride(),
                                             BLOCK_C=_class_block(classes),
                                             BLOCK_W=max(_MIN_BLOCK, triton.next_power_of_2(width)))
    return out


def viterbi(log_probs: torch.Tensor, batch: DeviceBatch, blank: int):
    """``(alignments (N, T) int64, scores (N, T) in the dtype of log_probs, best (N,) float64)``:
    frames past an item's length hold -1 and 0; an item without a path gets ``best = -inf``."""
    frames, size, _ = log_probs.shape
    device, block = log_probs.device, batch.block
    alignments = torch.full((size, frames), -1, dtype=torch.int64, device=device)
    scores = log_probs.new_zeros((size, frames))
    best = torch.empty(size, dtype=torch.float64, device=device)
    ring = torch.empty((size, 2, block), dtype=torch.float64, device=device)
    if size * frames * block <= align.MAX_BACK_POINTER_BYTES:  # read at each call, as the core does
        back = torch.empty((size, frames, block), dtype=torch.int8, device=device)
        _viterbi_kernel[(size,)](log_probs, *log_probs.stride(), *batch.index_args(), blank, ring, back, frames,
                                 alignments, scores, best, BLOCK=block, num_warps=_warps(block))
        return alignments, scores, best
    segment = align.segment_frames(frames)
    checkpoints_max = max(frames - 1, 0) // segment + 1
    checkpoints = torch.empty((size, checkpoints_max, block), dtype=torch.float64, device=device)
    back = torch.empty((size, segment, block), dtype=torch.int8, device=device)
    _viterbi_bounded_kernel[(size,)](log_probs, *log_probs.stride(), *batch.index_args(), blank, ring, checkpoints, back,
                                     frames, segment, checkpoints_max, alignments, scores, best, BLOCK=block,
                                     num_warps=_warps(block))
    return alignments, scores, best
