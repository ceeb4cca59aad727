"""The NumPy frontend: ctckit's CTC functions on NumPy arrays (or lists).

Same names and arguments as :mod:`ctckit.torch`; importing this module does not
import torch.
"""

from __future__ import annotations

import numpy as np

from . import _core, _decode
from ._core.half_rounding import float16_from_float32
from ._decode import TokenSpan
from ._inputs import as_kernel_array, as_logits_array, check_gradient, check_options, prepare, reduction_weights
from ._words import WordSpan, align_words, to_dicts, to_srt, to_webvtt, word_spans

__all__ = ["ctc_loss", "ctc_loss_and_grad", "ctc_loss_from_logits", "ctc_loss_and_grad_from_logits", "forced_align", "merge_tokens", "greedy_decode", "beam_search",
           "ctc_posteriors", "TokenSpan", "WordSpan", "word_spans", "align_words", "to_dicts", "to_srt", "to_webvtt"]


def _losses_and_grad(log_probs, targets, input_lengths, target_lengths, blank, reduction, zero_infinity, want_grad, gradient):
    torch_grad = check_gradient(gradient)
    blank, reduction, zero_infinity = check_options(blank, reduction, zero_infinity)
    array, out_dtype = as_kernel_array(log_probs)
    shapes, batch = prepare(array.shape, targets, input_lengths, target_lengths, blank, reduction)
    batched_view = array if shapes.batched else array[:, None, :]
    weights = reduction_weights(batch.target_lengths, reduction)
    nll, grad = _core.negative_log_likelihood(batched_view, batch, blank, grad="dense" if want_grad else "none",
                                              torch_grad=torch_grad, scale=weights)
    if zero_infinity:
        nll[nll == np.inf] = 0.0
    if reduction == "none":
        loss = nll if shapes.batched else nll.reshape(())
    else:
        loss = np.asarray(np.dot(weights, nll))
    loss = _loss_in_dtype(loss, out_dtype)
    if grad is not None:
        grad = _in_dtype(grad if shapes.batched else grad[:, 0, :], out_dtype)
    return loss, grad


def ctc_loss(log_probs, targets, input_lengths, target_lengths, blank=0, reduction="mean", zero_infinity=False):
    r"""The CTC loss of each item, reduced as torch does.

    Args:
        log_probs: (T, N, C) or unbatched (T, C) log-probabilities (e.g. a log-softmax),
            float16, float32 or float64, or one of ml_dtypes' bfloat16 and float8 types
            (computed in float32).
        targets: padded (N, S), concatenated (sum(target_lengths),), or unbatched (S,)
            or (1, S) integer labels in [0, C), never ``blank``; padding is ignored.
        input_lengths, target_lengths: N integers (lists, or arrays of any shape with N
            elements, as torch), or a single int when unbatched.
        blank: index of the blank class (an int).
        reduction: ``"none"`` (losses (N,), or 0-d unbatched), ``"sum"``, or ``"mean"``
            (batch mean of ``loss_n / max(target_length_n, 1)``).
        zero_infinity: a bool: replace infinite losses (targets too long for their input)
            and their gradients by zero.

    Returns:
        An array in the dtype of ``log_probs``.

    .. math::  \mathrm{loss}_n = -\log \sum_{\pi \in \mathcal{B}^{-1}(l_n)} \prod_{t} y^t_{\pi_t}
    """
    loss, _ = _losses_and_grad(log_probs, targets, input_lengths, target_lengths, blank, reduction, zero_infinity, False, "exact")
    return loss


def ctc_loss_and_grad(log_probs, targets, input_lengths, target_lengths, blank=0, reduction="mean", zero_infinity=False, *, gradient="exact"):
    """``(loss, grad)``: :func:`ctc_loss` and its gradient w.r.t. ``log_probs``.

    ``grad`` has the shape and dtype of ``log_probs``; for ``reduction="none"`` it is the
    gradient of the *sum* of the losses. ``gradient="exact"`` (default) is the true
    derivative, minus the posterior occupation of each class, nonzero only at the blank
    and the target's labels; ``gradient="torch"`` adds ``exp(log_probs)`` as PyTorch's
    kernel does (right only when ``log_probs`` comes from a log-softmax, whose backward
    then yields the same logit gradient).
    """
    return _losses_and_grad(log_probs, targets, input_lengths, target_lengths, blank, reduction, zero_infinity, True, gradient)


def _loss_in_dtype(loss: np.ndarray, dtype) -> np.ndarray:
    """The float64 ``loss`` in the caller's dtype: a loss past float16's range (65504) is
    ``inf``, as torch gives it, without NumPy's overflow warning (an error under ``-W error``)."""
    with np.errstate(over="ignore"):
        return loss.astype(dtype)


def _in_dtype(values: np.ndarray, dtype) -> np.ndarray:
    """``values`` (float32 or float64, C order) as ``dtype``; float16 rounded by the core,
    as NumPy takes 65 ns a value whose half is subnormal (most of a float16 gradient's)."""
    if dtype == np.float16 and values.dtype == np.float32:
        return float16_from_float32(values)
    return values.astype(dtype, copy=False)


def _from_logits(logits, targets, input_lengths, target_lengths, blank, reduction, zero_infinity, dim, want_grad):
    blank, reduction, zero_infinity = check_options(blank, reduction, zero_infinity)
    array, fmt, dtype = as_logits_array(logits, dim)
    shapes, batch = prepare(array.shape, targets, input_lengths, target_lengths, blank, reduction, "logits")
    batched_view = array if shapes.batched else array[:, None, :]
    weights = reduction_weights(batch.target_lengths, reduction)
    grad = None
    if not want_grad:
        nll, _ = _core.negative_log_likelihood_from_logits(batched_view, fmt, batch, blank, False)
    else:
        nll, _, grad = _core.loss_and_gradient_from_logits(batched_view, fmt, batch, blank, weights)
        grad = np.moveaxis(_in_dtype(grad if shapes.batched else grad[:, 0, :], dtype), -1, dim)
    if zero_infinity:
        nll[nll == np.inf] = 0.0
    loss = (nll if shapes.batched else nll.reshape(())) if reduction == "none" else np.asarray(np.dot(weights, nll))
    return _loss_in_dtype(loss, dtype), grad


def ctc_loss_from_logits(logits, targets, input_lengths, target_lengths, blank=0, reduction="mean", zero_infinity=False,
                         *, dim=-1):
    r""":func:`ctc_loss` of ``log_softmax(logits)``, computed without making the log-softmax.

    ``logits``: (T, N, C) or unbatched (T, C) unnormalised scores, float16, bfloat16,
    float32 or float64 (read as they are; sums in float64), with the classes on dimension
    ``dim`` (the others, in order, are T and N): the loss is that of
    ``log_softmax(np.moveaxis(logits, dim, -1))``. The other arguments and the result are
    those of :func:`ctc_loss`. Only the log-softmax of the blank's and the labels' classes
    is ever made (see :func:`ctc_loss_and_grad_from_logits` for the gradient).

    .. math:: \mathrm{loss}_n = -\log \sum_{\pi \in \mathcal{B}^{-1}(l_n)} \prod_{t}
        \frac{e^{x_{t,n,\pi_t}}}{\sum_c e^{x_{t,n,c}}}
    """
    loss, _ = _from_logits(logits, targets, input_lengths, target_lengths, blank, reduction, zero_infinity, dim, False)
    return loss


def ctc_loss_and_grad_from_logits(logits, targets, input_lengths, target_lengths, blank=0, reduction="mean",
                                  zero_infinity=False, *, dim=-1):
    """``(loss, grad)``: :func:`ctc_loss_from_logits` and its exact gradient w.r.t. the logits,
    ``scale_n * (softmax(x) - posterior occupation of each class)`` on the frames an item
    uses (``scale_n`` from the reduction; ``reduction="none"``: the gradient of the sum),
    zero on padding frames and for targets that cannot be aligned (their loss is ``inf``,
    with or without ``zero_infinity``), NaN on the frames of an item whose loss is NaN.
    ``grad`` has the shape and dtype of ``logits``; classes masked with ``-inf`` get 0."""
    return _from_logits(logits, targets, input_lengths, target_lengths, blank, reduction, zero_infinity, dim, True)


def forced_align(log_probs, targets, input_lengths, target_lengths, blank=0, *, wildcard=None):
    r"""The single most probable path (Viterbi) that collapses to each target.

    Arguments as in :func:`ctc_loss` (targets padded or concatenated, lengths as arrays,
    lists or ints, int32 or int64).

    Args:
        wildcard: ``None``, or a finite log-score ``w`` that makes ``C`` (one past the last
            class) a wildcard label: put it in a target where the transcript leaves
            something out (a stretch it does not transcribe, e.g. between words or at the
            edges). Exactly as if ``log_probs`` had a class C with log-prob ``w`` on every
            frame: a wildcard is a label like any other (it takes one frame or more, a blank
            or another label between two of them, and counts in ``T >= L + R``), each of
            its frames scores ``w`` whatever the frame's log-probs, and ``alignments`` shows
            C there. ``w = 0`` (probability one) is ctc-forced-aligner's ``<star>``: as no
            class scores more, the wildcard takes as many frames as it can reach; a lower
            ``w`` tends to leave the frames where the transcript's labels or the blank
            score above ``w`` to them.

    Returns:
        ``(alignments, scores)``: ``alignments`` int64 (N, T) (``(T,)`` unbatched), the class
        each frame emits on the best path, ``-1`` on frames ``t >= input_lengths[n]``;
        ``scores`` (N, T) in the dtype of ``log_probs``, the log-prob of that class at that
        frame, 0 on padding frames, so ``scores[n].sum()`` is the path's log-probability.

    Ties go to the smallest jump (each label is emitted as early as possible); an item
    whose target needs more frames than it has (``T < L + R``, R the repeats) raises
    :class:`ctckit.CTCInputError` naming its batch index, T, L and R.

    .. math:: \delta_t(s) = \log y^t_{l'_s} + \max(\delta_{t-1}(s), \delta_{t-1}(s-1), [\delta_{t-1}(s-2)])

    Memory: one int8 back-pointer per frame and state, ``T (2S+1)`` bytes an item; an item
    that would need more than 256 MiB is aligned by checkpointed Viterbi instead, in about
    ``2 (2S+1) sqrt(8T)`` bytes (an hour at 50 frames a second with 60,000 labels: 290 MB
    instead of 21.6 GB) and twice the arithmetic, with the same result, bit for bit.
    """
    return _decode.forced_align(log_probs, targets, input_lengths, target_lengths, blank, wildcard=wildcard)


def merge_tokens(alignment, scores, blank=0):
    """The token spans of one alignment (1-D, as one row of :func:`forced_align`'s output).

    Returns a list of :class:`TokenSpan` ``(token, start, end, score)``: ``end`` exclusive,
    ``score`` the mean per-frame probability over the span; blanks and padding (``-1``)
    frames are dropped, and a new span starts at every change of label.
    """
    return _decode.merge_tokens(alignment, scores, blank)


def greedy_decode(log_probs, input_lengths=None, blank=0):
    """Best-path decoding: the most probable class per frame, repeats merged, blanks removed.

    Returns one list of label ints per item (a single list when unbatched). Reads only
    frames ``t < input_lengths[n]``; NaN or ``+inf`` there raises :class:`ctckit.CTCInputError`.
    """
    return _decode.greedy_decode(log_probs, input_lengths, blank)


def beam_search(log_probs, input_lengths=None, beam_width=16, blank=0, top_k=1, *, token_min_log_prob=-10.0,
                beam_prune_log_prob=-20.0, lm=None, lm_weight=0.5, hotwords=None, hotword_weight=2.0):
    """CTC prefix beam search.

    Returns, per item, up to ``top_k`` pairs ``(labels, log_prob)``, best first;
    ``log_prob`` (a Python float) is the log of the labeling's probability summed over the
    paths the search kept, a lower bound of its total. The defaults
    (``token_min_log_prob=-10``, ``beam_prune_log_prob=-20``) are not exact however wide the
    beam; only with both ``-inf`` and ``beam_width >= sum_{l <= T} (C - 1)^l`` is the first
    hypothesis the exact most probable labeling, with ``log_prob`` equal to minus its CTC
    loss. A hypothesis never contains the blank; NaN or ``+inf`` on a used frame raises
    :class:`ctckit.CTCInputError`.

    Args:
        beam_width: prefixes kept after each frame, a positive int; clamped to the number
            of labelings an item can have. A call whose worst-case memory
            (``ctckit._decode.beam_search_bytes``) exceeds 1 GiB raises
            :class:`ctckit.CTCInputError` before allocating anything.
        top_k: hypotheses returned per item, a positive int, clamped to ``beam_width``.
        token_min_log_prob: at each frame only labels with at least this log-prob extend a
            prefix (the most probable label always does).
        beam_prune_log_prob: after each frame, prefixes whose score is more than
            ``-beam_prune_log_prob`` below the best one's are dropped (``-inf``: never). On
            confident outputs this leaves few beams, and the search is that much faster.
        lm: optional ``lm(prefix: tuple, label: int) -> float``, a log-score for extending
            ``prefix`` by ``label`` (any n-gram or neural model), added times ``lm_weight``.
        hotwords: optional label sequences to boost: a completed hotword gains
            ``hotword_weight`` per label; while a hypothesis ends in a hotword's beginning it
            gains the same provisionally (lost if the match breaks).
        With ``lm`` or ``hotwords`` the search runs in Python and ``log_prob`` includes
        those scores.
    """
    return _decode.beam_search(log_probs, input_lengths, beam_width, blank, top_k, token_min_log_prob=token_min_log_prob,
                               beam_prune_log_prob=beam_prune_log_prob, lm=lm, lm_weight=lm_weight, hotwords=hotwords, hotword_weight=hotword_weight)


def ctc_posteriors(log_probs, targets, input_lengths, target_lengths, blank=0):
    """Per-frame occupation probabilities of each class given the target (eqs. 14-16), from
    the same forward-backward as the loss: minus its exact gradient. Shape and dtype of
    ``log_probs``; each used frame sums to one; zero for infeasible items and padding."""
    return _decode.ctc_posteriors(log_probs, targets, input_lengths, target_lengths, blank)
