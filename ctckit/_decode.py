"""Forced alignment, token spans and decoding on NumPy arrays, shared by every frontend."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np

from . import _core
from ._core.align import viterbi_batch
from ._core.beam import beam_search_batch
from ._core.loss import min_frames_needed
from ._inputs import as_index_array, as_kernel_array, check_blank, prepare
from .errors import CTCInputError

LanguageModel = Callable[[tuple, int], float]
_logaddexp = np.logaddexp


@dataclass(frozen=True)
class TokenSpan:
    """One token of an alignment.

    Attributes:
        token: the label.
        start: its first frame.
        end: one past its last frame (``end - start`` frames).
        score: the mean per-frame probability, ``exp(log-prob)``, over the span.
    """

    token: int
    start: int
    end: int
    score: float

    def __len__(self) -> int:
        return self.end - self.start


def batched_log_probs(log_probs) -> tuple[np.ndarray, bool]:
    """(T, N, C) float32/float64 view (or copy for other float dtypes) and whether it was batched."""
    array, _ = as_kernel_array(log_probs)
    if array.ndim not in (2, 3):
        raise CTCInputError(f"log_probs must be (T, N, C) or unbatched (T, C), got {array.ndim} dimensions with shape {array.shape}")
    if array.size == 0:
        raise CTCInputError(f"log_probs must not be empty, got shape {array.shape}")
    batched = array.ndim == 3
    return (array if batched else array[:, None, :]), batched


def decode_lengths(input_lengths, frames: int, batch: int, batched: bool) -> np.ndarray:
    if input_lengths is None:
        return np.full(batch, frames, dtype=np.int64)
    lengths = as_index_array(input_lengths, "input_lengths")
    expected = (batch,) if batched else ((), (1,))
    if (batched and lengths.shape != expected) or (not batched and lengths.shape not in expected):
        raise CTCInputError(f"input_lengths must have shape {(batch,) if batched else '()'}, got {lengths.shape}")
    lengths = np.ascontiguousarray(lengths.reshape(-1), dtype=np.int64)
    for n, value in enumerate(lengths):
        if not 0 <= value <= frames:
            raise CTCInputError(f"input_lengths[{n}] = {value} is outside [0, T] = [0, {frames}] (batch index {n})")
    return lengths


def alignable_batch(log_probs_shape, targets, input_lengths, target_lengths, blank):
    """``(Shapes, Batch)`` of a forced alignment; raises for an item too short for its target."""
    shapes, batch = prepare(log_probs_shape, targets, input_lengths, target_lengths, blank, "none")
    for n in range(shapes.batch):
        labels = batch.targets[batch.offsets[n]:batch.offsets[n] + batch.target_lengths[n]]
        length = int(batch.target_lengths[n])
        needed = int(min_frames_needed(labels, length))
        if needed > batch.input_lengths[n]:
            raise CTCInputError(
                f"item {n} cannot be aligned: T = {int(batch.input_lengths[n])} frames, but its target of "
                f"L = {length} labels with R = {needed - length} repeats needs T >= L + R = {needed} (batch index {n})")
    return shapes, batch


def check_aligned(best: np.ndarray) -> None:
    """Raise for the first item whose best path has probability zero."""
    for n in np.nonzero(~(best > -np.inf))[0]:
        raise CTCInputError(f"item {n} cannot be aligned: every path to its target has probability zero "
                            f"(a needed class is -inf on every frame it could use) (batch index {n})")


def forced_align(log_probs, targets, input_lengths, target_lengths, blank=0):
    """``(alignments, scores)``: see :func:`ctckit.numpy.forced_align`."""
    array, batched = batched_log_probs(log_probs)
    frames, size, _ = array.shape
    _, batch = alignable_batch(array.shape if batched else array[:, 0].shape, targets, input_lengths, target_lengths, blank)
    alignments = np.full((size, frames), -1, dtype=np.int64)
    scores = np.zeros((size, frames), dtype=array.dtype)
    best = np.empty(size)
    viterbi_batch(array, batch.targets, batch.offsets, batch.input_lengths, batch.target_lengths, int(blank), alignments, scores, best)
    check_aligned(best)
    return (alignments, scores) if batched else (alignments[0], scores[0])


def merge_tokens(alignment, scores, blank=0) -> list[TokenSpan]:
    """Token spans of one alignment: see :func:`ctckit.numpy.merge_tokens`."""
    alignment = np.asarray(alignment)
    scores = np.asarray(scores, dtype=np.float64)
    if alignment.ndim != 1 or scores.shape != alignment.shape:
        raise CTCInputError(f"merge_tokens takes one 1-D alignment and scores of the same shape, got {alignment.shape} and {scores.shape}")
    blank = check_blank(blank)
    spans = []
    t, frames = 0, alignment.shape[0]
    while t < frames:
        token = int(alignment[t])
        end = t + 1
        while end < frames and alignment[end] == token:
            end += 1
        if token != blank and token >= 0:
            spans.append(TokenSpan(token, t, end, float(np.exp(scores[t:end]).mean())))
        t = end
    return spans


def greedy_decode(log_probs, input_lengths=None, blank=0) -> list[list[int]]:
    """Best class per frame, repeats merged, blanks removed: see :func:`ctckit.numpy.greedy_decode`."""
    array, batched = batched_log_probs(log_probs)
    frames, size, classes = array.shape
    blank = check_blank(blank, classes)
    lengths = decode_lengths(input_lengths, frames, size, batched)
    best = array.argmax(axis=2)  # (T, N)
    out = []
    for n in range(size):
        path = best[: lengths[n], n]
        keep = np.ones(path.shape[0], dtype=bool)
        keep[1:] = path[1:] != path[:-1]
        out.append([int(c) for c in path[keep & (path != blank)]])
    return out if batched else out[0]


def beam_search(log_probs, input_lengths=None, beam_width=16, blank=0, top_k=1, *, token_min_log_prob=-10.0,
                beam_prune_log_prob=-20.0, lm: LanguageModel | None = None, lm_weight=0.5, hotwords: Sequence[Sequence[int]] | None = None,
                hotword_weight=2.0):
    """CTC prefix beam search: see :func:`ctckit.numpy.beam_search`."""
    array, batched = batched_log_probs(log_probs)
    frames, size, classes = array.shape
    blank = check_blank(blank, classes)
    lengths = decode_lengths(input_lengths, frames, size, batched)
    for name, value in (("beam_width", beam_width), ("top_k", top_k)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
            raise CTCInputError(f"{name} must be a positive int, got {value!r}")
    token_min_log_prob = float(token_min_log_prob)
    beam_prune_log_prob = float(beam_prune_log_prob)
    if not beam_prune_log_prob <= 0:
        raise CTCInputError(f"beam_prune_log_prob must be <= 0 (a margin below the best hypothesis), got {beam_prune_log_prob!r}")
    if lm is None and not hotwords:
        out_labels = np.zeros((size, top_k, frames), dtype=np.int64)
        out_lengths = np.zeros((size, top_k), dtype=np.int64)
        out_scores = np.zeros((size, top_k))
        found = np.zeros(size, dtype=np.int64)
        beam_search_batch(array, lengths, blank, int(beam_width), token_min_log_prob, beam_prune_log_prob, int(top_k), out_labels, out_lengths, out_scores, found)
        results = [[([int(c) for c in out_labels[n, r, : out_lengths[n, r]]], float(out_scores[n, r])) for r in range(found[n])]
                   for n in range(size)]
    else:
        scorer = _Scorer(lm, lm_weight, hotwords, hotword_weight)
        results = [_beam_search_python(array[: lengths[n], n], blank, int(beam_width), token_min_log_prob, beam_prune_log_prob,
                                       int(top_k), scorer)
                   for n in range(size)]
    return results if batched else results[0]


def ctc_posteriors(log_probs, targets, input_lengths, target_lengths, blank=0):
    """Per-frame class occupation probabilities: see :func:`ctckit.numpy.ctc_posteriors`."""
    array, batched = batched_log_probs(log_probs)
    shapes, batch = prepare(array.shape if batched else array[:, 0].shape, targets, input_lengths, target_lengths, blank, "none")
    # the exact gradient of sum_n scale_n * loss_n is -scale_n * posteriors: take scale -1
    _, posteriors = _core.negative_log_likelihood(array, batch, int(blank), grad="dense", scale=-np.ones(array.shape[1]))
    return posteriors if batched else posteriors[:, 0]


class _Scorer:
    """Scores beyond the acoustic ones: ``lm_weight * lm(prefix, label)`` summed over a
    prefix's extensions, and hotwords. A hotword completed inside a prefix earns
    ``hotword_weight`` per label, for good; a hotword only begun at the prefix's end earns
    the same provisionally (while the search runs), which vanishes if the match breaks."""

    def __init__(self, lm, lm_weight, hotwords, hotword_weight):
        self.lm, self.lm_weight, self.weight = lm, float(lm_weight), float(hotword_weight)
        self.words = {tuple(int(c) for c in w) for w in (hotwords or []) if len(w)}
        self.partials = {w[:i] for w in self.words for i in range(1, len(w))}
        self.longest = max((len(w) for w in self.words), default=0)

    def extend(self, prefix: tuple, label: int, kept: float) -> float:
        """The kept score of ``prefix + (label,)`` from ``kept``, the kept score of ``prefix``."""
        if self.lm is not None:
            kept += self.lm_weight * float(self.lm(prefix, label))
        extended = prefix + (label,)
        done = [i for i in range(1, min(self.longest, len(extended)) + 1) if extended[-i:] in self.words]
        return kept + (self.weight * max(done) if done else 0.0)

    def provisional(self, prefix: tuple) -> float:
        """Bonus of the longest unfinished hotword that ``prefix`` ends with."""
        for i in range(min(self.longest - 1, len(prefix)), 0, -1):
            if prefix[-i:] in self.partials:
                return self.weight * i
        return 0.0


def _beam_search_python(lp, blank, beam_width, token_min_log_prob, beam_prune_log_prob, top_k, scorer):
    """The recursions of :mod:`ctckit._core.beam` with a language model and hotwords
    (:class:`_Scorer`), with the same candidate order and pruning. During the search
    hypotheses are ranked by acoustic log-probability plus kept and provisional scores; the
    result by acoustic plus kept scores, which is also the score reported."""
    beams = {(): (0.0, -math.inf, 0.0)}  # prefix -> (log p_b, log p_nb, kept extra score)

    def ranked(items, final):
        score = lambda item: _logaddexp(item[1][0], item[1][1]) + item[1][2] + (0.0 if final else scorer.provisional(item[0]))
        scored = sorted(((score(item), item) for item in items), key=lambda pair: -pair[0])
        floor = scored[0][0] + beam_prune_log_prob if scored and scored[0][0] > -math.inf else -math.inf
        kept = [item for value, item in scored if value > -math.inf and not value < floor]
        return kept or [scored[0][1]]  # every candidate impossible: keep the first, as the core does

    for t in range(lp.shape[0]):
        row = lp[t].astype(np.float64)
        labels = [c for c in np.nonzero(row >= token_min_log_prob)[0].tolist() if c != blank]
        if not labels:
            masked = row.copy()
            masked[blank] = -np.inf
            labels = [int(masked.argmax())]
        nxt: dict = {}

        def add(prefix, b, nb, kept):
            old = nxt.get(prefix, (-math.inf, -math.inf, kept))
            nxt[prefix] = (_logaddexp(old[0], b), _logaddexp(old[1], nb), old[2])

        for prefix, (b, nb, kept) in beams.items():  # the beams first, then new prefixes
            add(prefix, _logaddexp(b, nb) + row[blank], nb + row[prefix[-1]] if prefix else -math.inf, kept)
        for prefix, (b, nb, kept) in beams.items():
            total = _logaddexp(b, nb)
            for c in labels:
                source = b if prefix and c == prefix[-1] else total
                extended = prefix + (c,)
                add(extended, -math.inf, source + row[c], nxt[extended][2] if extended in nxt else scorer.extend(prefix, c, kept))
        beams = dict(ranked(nxt.items(), final=False)[:beam_width])
    return [(list(prefix), _logaddexp(b, nb) + kept) for prefix, (b, nb, kept) in ranked(beams.items(), final=True)[:top_k]]
