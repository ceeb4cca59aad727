"""Forced alignment, token spans and decoding on NumPy arrays, shared by every frontend.

Every argument is checked here, before any kernel runs. The decoders read each item's
frames ``t < input_lengths[n]`` only, one item at a time (a dtype that the kernels do not
compute in is converted item by item), so whatever lies past an item's length is never
read.
"""

from __future__ import annotations

import heapq
import math
import operator
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

MAX_BEAM_SEARCH_BYTES = 1 << 30
"""The most memory one :func:`beam_search` call may need in the worst case (see
:func:`beam_search_bytes`); a call that could need more is refused before it starts."""

_NEG_INF = -math.inf


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


def batched_log_probs(log_probs) -> tuple[np.ndarray, bool, np.dtype]:
    """A (T, N, C) view of ``log_probs`` (nothing read or copied), whether it was batched,
    and the dtype the kernels compute it in: float32 or float64, for every float dtype that
    the loss accepts (:func:`ctckit._inputs.as_kernel_array`, asked of an empty array)."""
    try:
        array = np.asarray(log_probs)
    except (ValueError, TypeError, OverflowError) as error:  # ragged nested lists
        raise CTCInputError(f"log_probs must be a (T, N, C) or (T, C) array, got {type(log_probs).__name__}: {error}") from None
    compute = as_kernel_array(np.empty(0, dtype=array.dtype))[0].dtype
    if array.ndim not in (2, 3):
        raise CTCInputError(f"log_probs must be (T, N, C) or unbatched (T, C), got {array.ndim} dimensions with shape {array.shape}")
    if array.size == 0:
        raise CTCInputError(f"log_probs must not be empty, got shape {array.shape}")
    batched = array.ndim == 3
    return (array if batched else array[:, None, :]), batched, compute


def kernel_array(array: np.ndarray, lengths: np.ndarray, compute: np.dtype, contiguous: bool = False) -> np.ndarray:
    """``array`` if it is in the dtype ``compute`` (and C-contiguous, if asked), else a
    C-contiguous copy of each item's frames ``t < lengths[n]`` in that dtype (the rest left
    zero, and never read)."""
    if array.dtype == compute and (array.flags.c_contiguous or not contiguous):
        return array
    out = np.zeros(array.shape, dtype=compute)
    for n, length in enumerate(lengths):
        out[:length, n] = array[:length, n].astype(compute)
    return out


def decode_lengths(input_lengths, frames: int, batch: int, batched: bool) -> np.ndarray:
    """``input_lengths`` as int64 (N,), each in ``[0, T]``; ``None`` means T for every item."""
    if input_lengths is None:
        return np.full(batch, frames, dtype=np.int64)
    if isinstance(input_lengths, (int, np.integer)) and not isinstance(input_lengths, (bool, np.bool_)):
        if not 0 <= operator.index(input_lengths) <= frames:  # before a cast to int64 could wrap it around
            raise CTCInputError(f"input_lengths = {input_lengths} is outside [0, T] = [0, {frames}]")
    lengths = as_index_array(input_lengths, "input_lengths")
    if (batched and lengths.shape != (batch,)) or (not batched and lengths.shape not in ((), (1,))):
        raise CTCInputError(f"input_lengths must have shape {(batch,) if batched else '()'}, got {lengths.shape}")
    lengths = lengths.reshape(-1)
    outside = np.nonzero((lengths < 0) | (lengths > frames))[0]  # in the given dtype: nothing wraps around
    if outside.size:
        n = int(outside[0])
        raise CTCInputError(f"input_lengths[{n}] = {lengths[n]} is outside [0, T] = [0, {frames}] (batch index {n})")
    return np.ascontiguousarray(lengths, dtype=np.int64)


def _refuse_non_log_probs(array: np.ndarray, n: int, length: int, item: int | None = None) -> None:
    """Raise for the first NaN or +inf among ``array[:length, n]`` (item ``item``, n by
    default): decoding ranks by log-probabilities, which are finite or -inf."""
    frames = array[:length, n]
    bad = ~(frames < np.inf)
    if bad.any():
        item = n if item is None else item
        t, c = (int(i[0]) for i in np.nonzero(bad))
        raise CTCInputError(f"log_probs[{t}, {item}, {c}] = {frames[t, c]}: decoding needs log-probabilities "
                            f"(finite or -inf) on every used frame (batch index {item})")


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


def check_aligned(best: np.ndarray, log_probs: np.ndarray | None = None, batch=None, blank: int = 0) -> None:
    """Raise for the first item whose best path has probability zero; given the (T, N, C)
    ``log_probs`` and the :class:`Batch`, say so when NaN on the item's classes is why."""
    for n in np.nonzero(~(best > -np.inf))[0]:
        if log_probs is not None:
            labels = batch.targets[batch.offsets[n]:batch.offsets[n] + batch.target_lengths[n]]
            labels = labels[labels < log_probs.shape[2]]  # not the wildcard's label
            used = log_probs[: batch.input_lengths[n], n][:, np.append(labels, blank)]
            if np.isnan(used).any():
                raise CTCInputError(f"item {n} cannot be aligned: its log_probs hold NaN on the frames and classes "
                                    f"its paths use (batch index {n})")
        raise CTCInputError(f"item {n} cannot be aligned: every path to its target has probability zero "
                            f"(a needed class is -inf on every frame it could use) (batch index {n})")


def _wildcard_label(wildcard, classes: int, blank, compute: np.dtype) -> tuple[int, float]:
    """``(label, score)`` for the kernels: ``(-1, 0.0)`` without a wildcard, else ``C`` and
    ``wildcard`` rounded to the dtype the kernels read ``log_probs`` in."""
    if wildcard is None:
        return -1, 0.0
    with np.errstate(over="ignore"):
        score = float(compute.type(_real(wildcard, "wildcard")))
    if not math.isfinite(score):
        raise CTCInputError(f"wildcard must be a finite log-score (in {compute.name}), got {wildcard!r:.40}")
    if check_blank(blank) == classes:
        raise CTCInputError(f"blank must be in [0, C) = [0, {classes}), got {blank} (C is the wildcard's label)")
    return classes, score


def forced_align(log_probs, targets, input_lengths, target_lengths, blank=0, *, wildcard=None):
    """``(alignments, scores)``: see :func:`ctckit.numpy.forced_align`."""
    array, batched, compute = batched_log_probs(log_probs)
    frames, size, classes = array.shape
    label, score = _wildcard_label(wildcard, classes, blank, compute)
    classes += int(label >= 0)  # targets may hold the wildcard's label C
    _, batch = alignable_batch((frames, size, classes) if batched else (frames, classes), targets, input_lengths, target_lengths, blank)
    given = array.dtype  # the scores' (float16 and the like are computed in float32)
    array = kernel_array(array, batch.input_lengths, compute)
    alignments = np.full((size, frames), -1, dtype=np.int64)
    scores = np.zeros((size, frames), dtype=array.dtype)
    best = np.empty(size)
    viterbi_batch(array, batch.targets, batch.offsets, batch.input_lengths, batch.target_lengths, int(blank), alignments, scores, best,
                  label, score)
    check_aligned(best, array, batch, int(blank))
    scores = scores.astype(given, copy=False)
    return (alignments, scores) if batched else (alignments[0], scores[0])


def merge_tokens(alignment, scores, blank=0) -> list[TokenSpan]:
    """Token spans of one alignment: see :func:`ctckit.numpy.merge_tokens`."""
    blank = check_blank(blank)
    if blank < 0:
        raise CTCInputError(f"blank must be a class index (>= 0), got {blank}")
    try:
        alignment, scores = np.asarray(alignment), np.asarray(scores)
    except (ValueError, TypeError) as error:
        raise CTCInputError(f"merge_tokens takes a 1-D alignment and scores of the same shape: {error}") from None
    if alignment.ndim != 1 or scores.shape != alignment.shape:
        raise CTCInputError(f"merge_tokens takes one 1-D alignment and scores of the same shape, got {alignment.shape} and {scores.shape}")
    if alignment.dtype.kind not in "iu" and not (alignment.size == 0 and alignment.dtype.kind == "f"):
        raise TypeError(f"alignment must hold integer class indices, got dtype {alignment.dtype}")
    if scores.dtype.kind not in "fiu":
        raise TypeError(f"scores must hold real log-probs, got dtype {scores.dtype}")
    if alignment.size and alignment.min() < -1:
        t = int(np.argmax(alignment < -1))
        raise CTCInputError(f"alignment[{t}] = {alignment[t]}: a frame's class must be >= 0, or -1 for padding")
    spans = []
    t, frames = 0, alignment.shape[0]
    while t < frames:
        token = int(alignment[t])
        end = t + 1
        while end < frames and alignment[end] == token:
            end += 1
        if token != blank and token >= 0:
            spans.append(TokenSpan(token, t, end, float(np.exp(scores[t:end].astype(np.float64)).mean())))
        t = end
    return spans


def greedy_decode(log_probs, input_lengths=None, blank=0) -> list[list[int]]:
    """Best class per frame, repeats merged, blanks removed: see :func:`ctckit.numpy.greedy_decode`."""
    array, batched, compute = batched_log_probs(log_probs)
    frames, size, classes = array.shape
    blank = check_blank(blank, classes)
    lengths = decode_lengths(input_lengths, frames, size, batched)
    out = []
    for n in range(size):
        used = array[: lengths[n], n].astype(compute, copy=False)
        path = used.argmax(axis=1)  # a row with NaN gives the NaN's index
        if not (used[np.arange(path.shape[0]), path] < np.inf).all():
            _refuse_non_log_probs(used[:, None], 0, lengths[n], n)
        keep = np.ones(path.shape[0], dtype=bool)
        keep[1:] = path[1:] != path[:-1]
        out.append(path[keep & (path != blank)].tolist())
    return out if batched else out[0]


def _positive_int(value, name: str) -> int:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    value = operator.index(value)
    if value < 1:
        raise CTCInputError(f"{name} must be a positive int, got {value}")
    return value


def _real(value, name: str, *, low=-math.inf, high=math.inf, meaning="") -> float:
    """``value`` as a float in ``[low, high]`` (never NaN)."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__}")
    try:
        number = float(value)
    except OverflowError:  # an int beyond float's range
        number = math.inf if value > 0 else -math.inf
    if not low <= number <= high:
        bounds = ("a number, not NaN" if low == -math.inf and high == math.inf else f"<= {high:g}" if low == -math.inf
                  else f">= {low:g}" if high == math.inf else f"in [{low:g}, {high:g}]")
        raise CTCInputError(f"{name} must be {bounds}{meaning}, got {value!r:.40}")
    return number


def prefix_count(labels: int, length: int, cap: int) -> int:
    """The number of labelings of at most ``length`` labels drawn from ``labels`` classes,
    ``sum_{l <= length} labels ** l``, or ``cap`` if that is smaller."""
    if labels <= 1:
        return min(cap, 1 + labels * length)
    total, power = 0, 1
    for _ in range(length + 1):
        total += power
        if total >= cap:
            return cap
        power *= labels
    return total


def beam_search_bytes(batch: int, frames: int, classes: int, beam_width: int, top_k: int, in_python: bool) -> int:
    """Worst-case bytes of one :func:`beam_search` call over ``frames`` frames (the longest
    item): its results, ``8 N top_k (T + 2)``, plus one item's search (each thread runs one
    at a time). The core's: at most ``1 + T beam_width`` trie nodes (a kept prefix becomes
    one), about 160 bytes each, 192 bytes per beam and 16 per class. The Python search's
    (with ``lm`` or hotwords): every beam's tuple of up to T labels, 8 bytes each, and
    about 400 bytes per beam."""
    results = 8 * batch * top_k * (frames + 2)
    if in_python:
        return results + beam_width * (8 * frames + 400) + 16 * classes
    return _core_search_bytes(results, min(1 + frames * beam_width, prefix_count(classes - 1, frames, 1 + frames * beam_width)),
                              beam_width, classes)


def _core_search_bytes(results: int, nodes: int, beam_width: int, classes: int) -> int:
    """The core search's bytes (:func:`beam_search_bytes`) with ``nodes`` trie nodes."""
    return results + 160 * nodes + 192 * beam_width + 16 * classes


def _hotword_tuples(hotwords, classes: int, blank: int) -> list[tuple]:
    if hotwords is None:
        return []
    if isinstance(hotwords, (str, bytes)) or not hasattr(hotwords, "__iter__"):
        raise TypeError(f"hotwords must be a sequence of label sequences, got {type(hotwords).__name__}")
    words = []
    for i, word in enumerate(hotwords):
        if hasattr(word, "__array__") and not isinstance(word, np.ndarray):
            word = np.asarray(word)  # a tensor
        try:
            labels = as_index_array(word, f"hotwords[{i}]")
        except OverflowError:
            raise CTCInputError(f"hotwords[{i}] holds a label outside [0, C) = [0, {classes})") from None
        if labels.ndim != 1:
            raise CTCInputError(f"hotwords[{i}] must be a 1-D sequence of labels, got shape {labels.shape}")
        bad = np.nonzero((labels < 0) | (labels >= classes) | (labels == blank))[0]
        if bad.size:
            raise CTCInputError(f"hotwords[{i}][{int(bad[0])}] = {labels[bad[0]]} must be a label in [0, C) = [0, {classes}), "
                                f"not the blank ({blank})")
        words.append(tuple(int(c) for c in labels))
    return words


def _check_work(size: int, frames: int, classes: int, beam_width: int, top_k: int, in_python: bool) -> None:
    """Refuse a search that could need more than :data:`MAX_BEAM_SEARCH_BYTES`, saying which width fits."""
    if not in_python and _core_search_bytes(8 * size * top_k * (frames + 2), 1 + frames * beam_width, beam_width,
                                            classes) <= MAX_BEAM_SEARCH_BYTES:
        return  # fits with every kept prefix a node: no need to count the prefixes
    need = beam_search_bytes(size, frames, classes, beam_width, top_k, in_python)
    if need <= MAX_BEAM_SEARCH_BYTES:
        return
    fits = lambda width: beam_search_bytes(size, frames, classes, width, min(top_k, width), in_python) <= MAX_BEAM_SEARCH_BYTES
    low, high = 0, beam_width  # the widest beam that fits: fits(low), not fits(high)
    while high - low > 1:
        middle = (low + high) // 2
        low, high = (middle, high) if fits(middle) else (low, middle)
    advice = f"lower beam_width (at most {low} fits, with top_k <= beam_width) or top_k" if low else "split the batch"
    raise CTCInputError(
        f"beam_search with beam_width = {beam_width} and top_k = {top_k} on N = {size} items of up to T = {frames} "
        f"frames and C = {classes} classes could need {need / 2**30:.2f} GiB, more than the "
        f"{MAX_BEAM_SEARCH_BYTES / 2**30:.0f} GiB limit: {advice}")


def beam_search(log_probs, input_lengths=None, beam_width=16, blank=0, top_k=1, *, token_min_log_prob=-10.0,
                beam_prune_log_prob=-20.0, lm: LanguageModel | None = None, lm_weight=0.5, hotwords: Sequence[Sequence[int]] | None = None,
                hotword_weight=2.0):
    """CTC prefix beam search: see :func:`ctckit.numpy.beam_search`.

    ``beam_width`` is clamped to the number of labelings an item could have (the search
    could never keep more), and ``top_k`` to ``beam_width``. A call whose worst-case memory
    (:func:`beam_search_bytes`) exceeds :data:`MAX_BEAM_SEARCH_BYTES` raises
    :class:`ctckit.CTCInputError` before anything is allocated. NaN or ``+inf`` on a used
    frame raises too; ``-inf`` (a masked class) is fine. The core reads C-contiguous float32
    or float64 arrays: any other ``log_probs`` is copied first (each item's used frames).
    """
    array, batched, compute = batched_log_probs(log_probs)
    frames, size, classes = array.shape
    blank = check_blank(blank, classes)
    lengths = decode_lengths(input_lengths, frames, size, batched)
    beam_width, top_k = _positive_int(beam_width, "beam_width"), _positive_int(top_k, "top_k")
    token_min_log_prob = _real(token_min_log_prob, "token_min_log_prob")
    beam_prune_log_prob = _real(beam_prune_log_prob, "beam_prune_log_prob", high=0.0,
                                meaning=" (a margin below the best hypothesis)")
    lm_weight = _real(lm_weight, "lm_weight", low=0.0, high=math.inf)
    hotword_weight = _real(hotword_weight, "hotword_weight")
    for name, weight in (("lm_weight", lm_weight), ("hotword_weight", hotword_weight)):
        if not math.isfinite(weight):
            raise CTCInputError(f"{name} must be finite, got {weight}")
    if lm is not None and not callable(lm):
        raise TypeError(f"lm must be a callable lm(prefix: tuple, label: int) -> float, got {type(lm).__name__}")
    words = _hotword_tuples(hotwords, classes, blank)
    in_python = lm is not None or any(words)
    longest = int(lengths.max())
    beam_width = min(beam_width, prefix_count(classes - 1, longest, beam_width))
    top_k = min(top_k, beam_width)
    _check_work(size, longest, classes, beam_width, top_k, in_python)
    array = kernel_array(array, lengths, compute, contiguous=True)  # the core is compiled for two signatures only
    for n in range(size):
        _refuse_non_log_probs(array, n, lengths[n])
    if not in_python:
        out_labels = np.zeros((size, top_k, longest), dtype=np.int64)
        out_lengths = np.zeros((size, top_k), dtype=np.int64)
        out_scores = np.zeros((size, top_k))
        found = np.zeros(size, dtype=np.int64)
        beam_search_batch(array, lengths, blank, beam_width, token_min_log_prob, beam_prune_log_prob, top_k,
                          out_labels, out_lengths, out_scores, found)
        results = [[(out_labels[n, r, : out_lengths[n, r]].tolist(), float(out_scores[n, r])) for r in range(found[n])]
                   for n in range(size)]
    else:
        scorer = _Scorer(lm, lm_weight, words, hotword_weight)
        results = [_beam_search_python(array[: lengths[n], n], blank, beam_width, token_min_log_prob, beam_prune_log_prob,
                                       top_k, scorer)
                   for n in range(size)]
    return results if batched else results[0]


def ctc_posteriors(log_probs, targets, input_lengths, target_lengths, blank=0):
    """Per-frame class occupation probabilities: see :func:`ctckit.numpy.ctc_posteriors`."""
    array, batched, compute = batched_log_probs(log_probs)
    _, batch = prepare(array.shape if batched else array[:, 0].shape, targets, input_lengths, target_lengths, blank, "none")
    array = kernel_array(array, batch.input_lengths, compute)
    # the exact gradient of sum_n scale_n * loss_n is -scale_n * posteriors: take scale -1
    _, posteriors = _core.negative_log_likelihood(array, batch, int(blank), grad="dense", scale=-np.ones(array.shape[1]))
    return posteriors if batched else posteriors[:, 0]


def _lae(a: float, b: float) -> float:
    """log(exp(a) + exp(b)), as the core computes it."""
    if a == _NEG_INF:
        return b
    if b == _NEG_INF:
        return a
    if a > b:
        return a + math.log1p(math.exp(b - a))
    return b + math.log1p(math.exp(a - b))


class _Scorer:
    """Scores beyond the acoustic ones: ``lm_weight * lm(prefix, label)`` summed over a
    prefix's extensions, and hotwords. A hotword completed inside a prefix earns
    ``hotword_weight`` per label, for good; a hotword only begun at the prefix's end earns
    the same provisionally (while the search runs), which vanishes if the match breaks."""

    def __init__(self, lm, lm_weight: float, words: list[tuple], hotword_weight: float):
        self.lm = lm if lm is not None and lm_weight != 0 else None
        self.lm_weight, self.weight = lm_weight, hotword_weight
        self.words = {w for w in words if w}
        self.partials = {w[:i] for w in self.words for i in range(1, len(w))}
        self.longest = max((len(w) for w in self.words), default=0)

    def _tail(self, prefix: tuple, label: int) -> tuple:
        """The last labels of ``prefix + (label,)`` that a hotword could span."""
        return prefix[max(0, len(prefix) - self.longest + 1):] + (label,)

    def extend(self, prefix: tuple, label: int, kept: float) -> float:
        """The kept score of ``prefix + (label,)`` from ``kept``, the kept score of ``prefix``."""
        if self.lm is not None:
            value = self.lm(prefix, label)
            try:
                value = float(value)
            except (TypeError, ValueError):
                raise TypeError(f"lm must return a float, got {type(value).__name__} for label {label}") from None
            if not value < math.inf:
                raise CTCInputError(f"lm returned {value} for label {label} after {len(prefix)} labels: "
                                    f"a log-score must be finite or -inf")
            kept += self.lm_weight * value
        if self.words:
            tail = self._tail(prefix, label)
            done = [i for i in range(1, len(tail) + 1) if tail[-i:] in self.words]
            kept += self.weight * max(done) if done else 0.0
        return kept

    def provisional(self, prefix: tuple, label: int | None = None) -> float:
        """Bonus of the longest unfinished hotword that ``prefix`` (+ ``label``) ends with."""
        if not self.partials:
            return 0.0
        tail = prefix[max(0, len(prefix) - self.longest + 1):] if label is None else self._tail(prefix, label)
        for i in range(min(self.longest - 1, len(tail)), 0, -1):
            if tail[-i:] in self.partials:
                return self.weight * i
        return 0.0


def _beam_search_python(lp, blank, beam_width, token_min_log_prob, beam_prune_log_prob, top_k, scorer):
    """The search of :mod:`ctckit._core.beam` with a language model and hotwords
    (:class:`_Scorer`): the same candidates in the same order, the same pruning. During the
    search candidates are ranked by acoustic log-probability plus kept and provisional
    scores; the result by acoustic plus kept scores, which is also the score reported."""
    beams = [((), 0.0, _NEG_INF, 0.0)]  # (prefix, log p_b, log p_nb, kept extra score), best first

    def select(candidates, width):
        """The ``width`` best of ``(score, ...)`` tuples, stably, and those within the margin of the best."""
        best = heapq.nlargest(width, (c for c in candidates if c[0] > _NEG_INF), key=lambda c: c[0])
        return [c for c in best if not c[0] < best[0][0] + beam_prune_log_prob]

    for t in range(lp.shape[0]):
        row = lp[t].astype(np.float64).tolist()
        labels = [c for c in range(len(row)) if c != blank and row[c] >= token_min_log_prob]
        if not labels:  # the best label, if it is possible
            top = max((c for c in range(len(row)) if c != blank), key=lambda c: row[c], default=None)
            labels = [top] if top is not None and row[top] > _NEG_INF else []
        is_label = set(labels)
        rank = {prefix: i for i, (prefix, *_) in enumerate(beams)}
        parent = [rank.get(prefix[:-1]) if prefix else None for prefix, *_ in beams]
        children = [set() for _ in beams]
        for j, i in enumerate(parent):
            if i is not None:
                children[i].add(beams[j][0][-1])

        def candidates():
            for j, (prefix, b, nb, kept) in enumerate(beams):  # the beams first, then new prefixes
                new_b, new_nb = _lae(b, nb) + row[blank], _NEG_INF
                if prefix:
                    new_nb = nb + row[prefix[-1]]
                    i = parent[j]
                    if i is not None and prefix[-1] in is_label:
                        _, pb, pnb, _ = beams[i]
                        source = pb if len(prefix) > 1 and prefix[-2] == prefix[-1] else _lae(pb, pnb)
                        new_nb = _lae(new_nb, source + row[prefix[-1]])
                yield _lae(new_b, new_nb) + kept + scorer.provisional(prefix), prefix, None, new_b, new_nb, kept
            for i, (prefix, b, nb, kept) in enumerate(beams):
                total, previous = _lae(b, nb), (prefix[-1] if prefix else -1)
                for c in labels:
                    if c not in children[i]:
                        score = (b if c == previous else total) + row[c]
                        extended = scorer.extend(prefix, c, kept)
                        yield score + extended + scorer.provisional(prefix, c), prefix, c, _NEG_INF, score, extended

        chosen = select(candidates(), beam_width)
        if not chosen:  # every candidate impossible: keep the first, with probability zero, as the core does
            beams = [(beams[0][0], _NEG_INF, _NEG_INF, beams[0][3])]
            continue
        beams = [(prefix if c is None else prefix + (c,), b, nb, kept) for _, prefix, c, b, nb, kept in chosen]
    final = select(((_lae(b, nb) + kept, prefix, b, nb, kept) for prefix, b, nb, kept in beams), top_k)
    if not final:
        return [(list(beams[0][0]), float(_lae(beams[0][1], beams[0][2]) + beams[0][3]))]
    return [(list(prefix), float(score)) for score, prefix, *_ in final]
