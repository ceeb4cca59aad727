"""Words from token spans: grouping, times in seconds, a confidence; and what to write them
as: plain dicts (JSON) and subtitles (SRT, WebVTT).

Shared by the NumPy and torch frontends; nothing here imports a framework.
"""

from __future__ import annotations

import math
import operator
import re
from dataclasses import dataclass
from decimal import ROUND_HALF_UP, Decimal
from typing import Sequence

import numpy as np

from ._decode import TokenSpan, forced_align, merge_tokens
from .errors import CTCInputError


@dataclass(frozen=True)
class WordSpan:
    """One word of an alignment.

    Attributes:
        text: the word: its tokens' labels joined (without the word-start marker) when
            ``labels`` were given, else the tuple of its token indices.
        start: the first frame of its first token.
        end: one past the last frame of its last token (``end - start`` frames).
        start_time: ``start`` in seconds, or None when no frame duration or rate was given.
        end_time: ``end`` in seconds, or None likewise.
        confidence: in [0, 1], the mean over the frames of its tokens of the aligned
            token's probability (see :func:`word_spans`).
    """

    text: str | tuple[int, ...]
    start: int
    end: int
    start_time: float | None
    end_time: float | None
    confidence: float

    def __len__(self) -> int:
        return self.end - self.start


def _is_int(value) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


def _number(value, name: str, *, positive: bool = True, optional: bool = True) -> float | None:
    """``value`` as a finite float, > 0 (``positive``) or >= 0; None passes if ``optional``."""
    if value is None and optional:
        return None
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__}")
    number = float(value)
    if not (math.isfinite(number) and (number > 0 if positive else number >= 0)):
        raise CTCInputError(f"{name} must be a finite number {'> 0' if positive else '>= 0'}, got {value!r}")
    return number


def _checked_spans(token_spans) -> list[TokenSpan]:
    """``token_spans`` as a list, each a :class:`TokenSpan` of frames ``0 <= start < end``,
    a score in [0, 1], after the previous one's end."""
    if isinstance(token_spans, (str, bytes)) or not isinstance(token_spans, Sequence):
        raise TypeError(f"token_spans must be a list of TokenSpan (from merge_tokens), got {type(token_spans).__name__}")
    spans, previous_end = list(token_spans), 0
    for i, span in enumerate(spans):
        if not isinstance(span, TokenSpan):
            raise TypeError(f"token_spans[{i}] must be a TokenSpan (from merge_tokens), got {type(span).__name__}")
        if not all(_is_int(v) for v in (span.token, span.start, span.end)):
            raise TypeError(f"token_spans[{i}] must hold int token, start and end, got {span}")
        if not 0 <= span.start < span.end:
            raise CTCInputError(f"token_spans[{i}] must have frames 0 <= start < end, got start = {span.start}, end = {span.end}")
        if span.start < previous_end:
            raise CTCInputError(f"token_spans[{i}] starts at frame {span.start}, before token_spans[{i - 1}] ends "
                                f"({previous_end}): spans must be in increasing order and not overlap")
        if not 0 <= span.score <= 1:
            raise CTCInputError(f"token_spans[{i}].score must be a probability in [0, 1], got {span.score}")
        previous_end = span.end
    return spans


def _checked_labels(labels) -> list | None:
    if labels is None:
        return None
    if isinstance(labels, (str, bytes)) or not isinstance(labels, (Sequence, np.ndarray)):
        raise TypeError(f"labels must be a list of strings, one per class, got {type(labels).__name__}")
    return list(labels)


def _label(labels: list, token: int, i: int) -> str:
    if not token < len(labels):
        raise CTCInputError(f"labels has {len(labels)} entries, too few for token_spans[{i}].token = {token}")
    text = labels[token]
    if not isinstance(text, str):
        raise TypeError(f"labels[{token}] must be a str, got {type(text).__name__}")
    return text


def _boundaries(separator, word_start, labels: list | None) -> tuple[set | None, str | None]:
    """The separators' class indices (or None) and the word-start marker (or None), checked."""
    if (separator is None) == (word_start is None):
        raise CTCInputError("give one of separator (the class that separates words) or word_start (the marker that "
                            f"begins a word's first token), got separator = {separator!r} and word_start = {word_start!r}")
    if word_start is not None:
        if not isinstance(word_start, str):
            raise TypeError(f"word_start must be a str (e.g. '\u2581'), got {type(word_start).__name__}")
        if not word_start:
            raise CTCInputError("word_start must be a non-empty str")
        if labels is None:
            raise CTCInputError("word_start needs labels, the text of each class, to find the tokens that begin a word")
        return None, word_start
    if isinstance(separator, str):
        if labels is None:
            raise CTCInputError(f"separator = {separator!r} is a label: it needs labels (or give its class index)")
        classes = {k for k, label in enumerate(labels) if label == separator}
        if not classes:
            raise CTCInputError(f"separator = {separator!r} is none of the labels")
        return classes, None
    if not _is_int(separator):
        raise TypeError(f"separator must be a class index (int) or a label (str), got {type(separator).__name__}")
    if separator < 0:
        raise CTCInputError(f"separator must be a class index (>= 0), got {separator}")
    return {operator.index(separator)}, None


def _seconds_per_frame(frame_duration, frame_rate) -> tuple[float | None, bool]:
    """``(value, divide)``: a frame's time is ``t * value`` (``frame_duration``) or
    ``t / value`` (``frame_rate``); ``(None, False)`` without either."""
    duration = _number(frame_duration, "frame_duration")
    rate = _number(frame_rate, "frame_rate")
    if duration is not None and rate is not None:
        raise CTCInputError(f"give frame_duration or frame_rate, not both (got {frame_duration!r} and {frame_rate!r})")
    return (rate, True) if rate is not None else (duration, False)


def word_spans(token_spans, *, separator=None, word_start=None, labels=None, frame_duration=None,
               frame_rate=None) -> list[WordSpan]:
    """The words of one alignment's token spans (as :func:`merge_tokens` returns them).

    Words are delimited in one of two ways:

    - ``separator``: a class index (or, with ``labels``, a label such as ``"|"`` or ``" "``):
      its spans end the current word and belong to no word;
    - ``word_start``: a marker, e.g. SentencePiece's ``"\u2581"``: a token whose label
      starts with it begins a new word (needs ``labels``); the marker is not in the text.

    Args:
        token_spans: a list of :class:`TokenSpan`, in increasing frame order.
        labels: the text of each class (a list of str, indexed by class), to give each word
            its text; without it a word's text is the tuple of its token indices.
        frame_duration: seconds per frame (e.g. ``320 / 16000`` for wav2vec 2.0), or
        frame_rate: frames per second; at most one, a positive finite number. Without
            either, ``start_time`` and ``end_time`` are None.

    Returns:
        A list of :class:`WordSpan`. A word's ``confidence`` is the frame-weighted mean of
        its tokens' scores, ``sum_i score_i len_i / sum_i len_i``: with spans from
        :func:`merge_tokens`, the mean of ``exp(scores[t])`` over the frames its tokens
        occupy, i.e. the model's probability of the aligned token per frame (blank frames
        inside the word carry no evidence of its tokens and are left out). An arithmetic
        mean rather than the geometric one (``exp`` of the mean log-prob): one doubtful
        frame lowers the word's confidence by its share instead of pulling it to zero, and a
        one-token word's confidence is its token's score.

    Raises :class:`ctckit.CTCInputError` (:class:`TypeError` for wrong types) naming the
    argument: both or neither of ``separator`` and ``word_start``, ``word_start`` without
    ``labels``, ``labels`` too short for a token, a bad frame duration or rate, spans out of
    order or overlapping, a score outside [0, 1].
    """
    spans = _checked_spans(token_spans)
    labels = _checked_labels(labels)
    separators, marker = _boundaries(separator, word_start, labels)
    per_frame, divide = _seconds_per_frame(frame_duration, frame_rate)
    texts = [None if labels is None else _label(labels, span.token, i) for i, span in enumerate(spans)]

    def seconds(frame: int) -> float | None:
        if per_frame is None:
            return None
        return frame / per_frame if divide else frame * per_frame

    words, current = [], []

    def close() -> None:
        if not current:
            return
        first, last = spans[current[0]], spans[current[-1]]
        if labels is None:
            text = tuple(spans[i].token for i in current)
        else:
            head = texts[current[0]]
            if marker is not None and head.startswith(marker):
                head = head[len(marker):]
            text = head + "".join(texts[i] for i in current[1:])
        frames = sum(len(spans[i]) for i in current)
        confidence = min(1.0, sum(spans[i].score * len(spans[i]) for i in current) / frames)
        words.append(WordSpan(text, first.start, last.end, seconds(first.start), seconds(last.end), float(confidence)))
        current.clear()

    for i, span in enumerate(spans):
        if separators is not None and span.token in separators:
            close()
            continue
        if marker is not None and texts[i].startswith(marker):
            close()
        current.append(i)
    close()
    return words


def host_array(value):
    """A tensor (anything with ``detach``, ``cpu`` and ``numpy``, as torch's) as a NumPy
    array on the host, float types narrower than float32 as float32; anything else as it
    is. Imports no framework."""
    if isinstance(value, np.ndarray):
        return value
    if all(hasattr(value, name) for name in ("detach", "cpu", "numpy", "is_floating_point", "element_size")):
        value = value.detach().cpu()
        if value.is_floating_point() and value.element_size() < 4:  # float16, bfloat16: NumPy has no bfloat16
            value = value.float()
        return value.numpy()
    return value


def align_words(log_probs, targets, blank=0, *, separator=None, word_start=None, labels=None, frame_duration=None,
                frame_rate=None) -> list[WordSpan]:
    """The words of one item: :func:`forced_align`, :func:`merge_tokens`, then :func:`word_spans`.

    ``log_probs``: (T, C) log-probabilities of one item (an array or a tensor, copied to the
    host); ``targets``: its (S,) labels, separators or word-start tokens included; the
    keyword arguments are those of :func:`word_spans`, checked before the alignment runs.
    """
    log_probs, targets = host_array(log_probs), host_array(targets)
    shape = np.shape(log_probs)
    if len(shape) != 2:
        raise CTCInputError(f"align_words aligns one item: log_probs must be (T, C), got shape {shape}")
    try:
        targets = np.asarray(targets)
    except (ValueError, TypeError) as error:
        raise CTCInputError(f"targets must be a 1-D sequence of labels (S,): {error}") from None
    if targets.ndim != 1:
        raise CTCInputError(f"align_words aligns one item: targets must be (S,), got shape {targets.shape}")
    options = dict(separator=separator, word_start=word_start, labels=labels, frame_duration=frame_duration,
                   frame_rate=frame_rate)
    word_spans([], **options)  # the options' errors before the alignment's work
    alignment, scores = forced_align(log_probs, targets, shape[0], targets.shape[0], blank)
    return word_spans(merge_tokens(alignment, scores, blank), **options)


def to_dicts(words) -> list[dict]:
    """``words`` (:class:`WordSpan`) as plain dicts, ready for ``json.dumps``: keys ``text``
    (a str, or a list of token indices), ``start``, ``end``, ``start_time``, ``end_time``,
    ``confidence``."""
    out = []
    for word in _word_list(words):
        text = word.text if isinstance(word.text, str) else [int(t) for t in word.text]
        out.append({"text": text, "start": int(word.start), "end": int(word.end),
                    "start_time": None if word.start_time is None else float(word.start_time),
                    "end_time": None if word.end_time is None else float(word.end_time),
                    "confidence": float(word.confidence)})
    return out


def _word_list(words, name: str = "words") -> list[WordSpan]:
    if isinstance(words, (str, bytes)) or not isinstance(words, Sequence):
        raise TypeError(f"{name} must be a list of WordSpan, got {type(words).__name__}")
    for i, word in enumerate(words):
        if not isinstance(word, WordSpan):
            raise TypeError(f"{name}[{i}] must be a WordSpan (from word_spans), got {type(word).__name__}")
    return list(words)


def _cues(words, max_words, max_duration, max_gap) -> list[list[WordSpan]]:
    """The cues: ``words`` grouped (or, given as a list of lists, each list one cue), checked
    to have times, in order."""
    if not isinstance(words, (str, bytes)) and isinstance(words, Sequence) and words and not isinstance(words[0], WordSpan):
        cues = [_word_list(cue, f"words[{i}]") for i, cue in enumerate(words)]
        grouped = True
    else:
        cues, grouped = [_word_list(words)], False
    max_words = None if max_words is None else _positive_int(max_words, "max_words")
    max_duration = _number(max_duration, "max_duration")
    max_gap = _number(max_gap, "max_gap", positive=False)
    previous = -math.inf
    for c, cue in enumerate(cues):
        for i, word in enumerate(cue):
            where = f"words[{c}][{i}]" if grouped else f"words[{i}]"
            if not isinstance(word.text, str):
                raise TypeError(f"{where}.text must be a str, got {type(word.text).__name__}: give labels to word_spans")
            if word.start_time is None or word.end_time is None:
                raise CTCInputError(f"{where} has no times: give frame_duration or frame_rate to word_spans")
            start = _number(word.start_time, f"{where}.start_time", positive=False, optional=False)
            end = _number(word.end_time, f"{where}.end_time", positive=False, optional=False)
            if end < start:
                raise CTCInputError(f"{where} ends ({end}) before it starts ({start})")
            if start < previous:
                raise CTCInputError(f"{where} starts at {start} s, before the word before it ({previous} s): words must be in order")
            previous = start
    if grouped:
        return [cue for cue in cues if cue]
    out = []
    for word in cues[0]:
        if out and ((max_words is not None and len(out[-1]) >= max_words)
                    or (max_duration is not None and word.end_time - out[-1][0].start_time > max_duration)
                    or (max_gap is not None and word.start_time - out[-1][-1].end_time > max_gap)):
            out.append([])
        if not out:
            out.append([])
        out[-1].append(word)
    return out


def _positive_int(value, name: str) -> int:
    if not _is_int(value):
        raise TypeError(f"{name} must be an int or None, got {type(value).__name__}")
    if value < 1:
        raise CTCInputError(f"{name} must be a positive int or None, got {value}")
    return operator.index(value)


def _timestamp(seconds: float, mark: str) -> str:
    """``HH:MM:SS<mark>mmm``, rounded half up to the millisecond from the shortest decimal
    form of ``seconds`` (0.9995 s gives 00:00:01.000); hours take more digits past 99."""
    millis = int(Decimal(repr(float(seconds))).quantize(Decimal("0.001"), rounding=ROUND_HALF_UP) * 1000)
    hours, millis = divmod(millis, 3_600_000)
    minutes, millis = divmod(millis, 60_000)
    secs, millis = divmod(millis, 1000)
    return f"{hours:02d}:{minutes:02d}:{secs:02d}{mark}{millis:03d}"


_ARROW = re.compile(r"-{2,}>")


def _cue_text(cue: list[WordSpan], webvtt: bool) -> str:
    """The words on one line: white space collapsed (a blank line would end the cue), the
    cue timing's arrow ``-->`` never inside; for WebVTT, ``&``, ``<``, ``>`` escaped."""
    text = " ".join(" ".join(word.text for word in cue).split())
    if webvtt:
        return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    return _ARROW.sub("->", text)


def _subtitles(words, max_words, max_duration, max_gap, webvtt: bool) -> str:
    mark = "." if webvtt else ","
    blocks = []
    for cue in _cues(words, max_words, max_duration, max_gap):
        text = _cue_text(cue, webvtt)
        if not text:
            continue
        timing = f"{_timestamp(cue[0].start_time, mark)} --> {_timestamp(cue[-1].end_time, mark)}"
        blocks.append(f"{timing}\n{text}\n" if webvtt else f"{len(blocks) + 1}\n{timing}\n{text}\n")
    return "\n".join(["WEBVTT\n", *blocks] if webvtt else blocks)


def to_srt(words, *, max_words=10, max_duration=5.0, max_gap=1.0) -> str:
    """SubRip (SRT) subtitles of ``words``: numbered cues, ``HH:MM:SS,mmm --> HH:MM:SS,mmm``,
    the text on one line, a blank line between cues.

    ``words``: a list of :class:`WordSpan` with times and text (:func:`word_spans` with
    ``labels`` and a frame duration or rate), in order, grouped into cues: a new cue begins
    when the current one has ``max_words`` words, when the word would make it last more
    than ``max_duration`` seconds, or after a pause of more than ``max_gap`` seconds (None
    turns a rule off); or a list of lists of :class:`WordSpan`, each list one cue as it is.
    Times are rounded half up to the millisecond; hours take more digits past 99. A cue
    lasts from its first word's start to its last word's end; ``-->`` in a word becomes
    ``->``.
    """
    return _subtitles(words, max_words, max_duration, max_gap, webvtt=False)


def to_webvtt(words, *, max_words=10, max_duration=5.0, max_gap=1.0) -> str:
    """WebVTT subtitles of ``words``: the ``WEBVTT`` header, then cues
    ``HH:MM:SS.mmm --> HH:MM:SS.mmm`` and their text, a blank line between; ``&``, ``<``
    and ``>`` escaped as character references. Cues as in :func:`to_srt`."""
    return _subtitles(words, max_words, max_duration, max_gap, webvtt=True)
