"""Words from token spans (times, confidence), plain dicts and subtitles."""

import json
import math

import numpy as np
import pytest
import torch

import ctckit.numpy as cn
import ctckit.torch as ct
from conftest import log_softmax
from ctckit import CTCInputError
from ctckit.numpy import TokenSpan, WordSpan

CHARS = ["-", "|", "a", "b", "c"]  # blank 0, separator "|" (1)
#                      a  a     b  |  |     c  c  c     |  a
ALIGNMENT = np.array([0, 2, 2, 0, 3, 1, 1, 0, 4, 4, 4, 0, 1, 2, 0, -1])
PROBS = np.array([0.9, 0.75, 0.75, 0.9, 0.5, 0.9, 0.9, 0.9, 0.25, 0.5, 0.75, 0.9, 0.9, 0.125, 0.9, 1.0])


def _spans(alignment=ALIGNMENT, probs=PROBS):
    return cn.merge_tokens(alignment, np.log(probs))


def _close(words, expected):
    """``words`` equal to ``expected`` tuples (text, start, end, start_time, end_time, confidence), floats to 1e-12."""
    assert len(words) == len(expected)
    for word, (text, start, end, t0, t1, confidence) in zip(words, expected):
        assert (word.text, word.start, word.end) == (text, start, end)
        assert (word.start_time, word.end_time, word.confidence) == pytest.approx((t0, t1, confidence), abs=1e-12)


def test_words_by_separator_on_a_hand_made_alignment():
    words = cn.word_spans(_spans(), separator=1, labels=CHARS, frame_duration=0.02)
    _close(words, [("ab", 1, 5, 0.02, 0.10, (0.75 * 2 + 0.5) / 3),
                   ("c", 8, 11, 0.16, 0.22, (0.25 + 0.5 + 0.75) / 3),
                   ("a", 13, 14, 0.26, 0.28, 0.125)])
    assert len(words[0]) == 4 and all(0 <= w.confidence <= 1 for w in words)
    assert cn.word_spans(_spans(), separator="|", labels=CHARS, frame_duration=0.02) == words  # by its label
    by_index = cn.word_spans(_spans(), separator=1)  # no labels, no times
    assert [(w.text, w.start, w.end, w.start_time, w.end_time) for w in by_index] == [
        ((2, 3), 1, 5, None, None), ((4,), 8, 11, None, None), ((2,), 13, 14, None, None)]


def test_separators_at_the_ends_and_in_a_row_make_no_empty_word():
    spans = [TokenSpan(1, 0, 1, 1.0), TokenSpan(2, 1, 2, 1.0), TokenSpan(1, 2, 3, 1.0), TokenSpan(1, 3, 4, 1.0),
             TokenSpan(3, 4, 5, 0.5), TokenSpan(1, 5, 6, 1.0)]
    assert [(w.text, w.start, w.end) for w in cn.word_spans(spans, separator=1, labels=CHARS)] == [("a", 1, 2), ("b", 4, 5)]
    assert cn.word_spans([], separator=1) == []
    assert cn.word_spans([TokenSpan(1, 0, 3, 1.0)], separator=1) == []


def test_words_by_word_start_marker_on_a_hand_made_alignment():
    pieces = ["<b>", "\u2581the", "\u2581c", "at", "\u2581", "S", "un"]
    #                         the   the      c     at at     _  S  S  un
    alignment = np.array([0, 1, 1, 0, 2, 0, 3, 3, 0, 4, 5, 5, 6, 0])
    probs = np.array([0.9, 0.5, 1.0, 0.9, 0.25, 0.9, 0.5, 1.0, 0.9, 1.0, 0.5, 0.5, 0.25, 0.9])
    words = cn.word_spans(_spans(alignment, probs), word_start="\u2581", labels=pieces, frame_rate=25)
    _close(words, [("the", 1, 3, 0.04, 0.12, 0.75),
                   ("cat", 4, 8, 0.16, 0.32, (0.25 + 0.5 + 1.0) / 3),
                   ("Sun", 9, 13, 0.36, 0.52, (1.0 + 0.5 + 0.5 + 0.25) / 4)])
    # tokens before the first marker make a word of their own; a marker elsewhere in a label is text
    spans = [TokenSpan(3, 0, 1, 1.0), TokenSpan(2, 1, 2, 1.0), TokenSpan(7, 2, 3, 1.0)]
    words = cn.word_spans(spans, word_start="\u2581", labels=pieces + ["a\u2581b"])
    assert [(w.text, w.start, w.end) for w in words] == [("at", 0, 1), ("ca\u2581b", 1, 3)]


def test_frame_rate_and_frame_duration_give_the_same_times():
    by_rate = cn.word_spans(_spans(), separator=1, frame_rate=50)
    by_duration = cn.word_spans(_spans(), separator=1, frame_duration=0.02)
    times = lambda words: [t for w in words for t in (w.start_time, w.end_time)]
    assert times(by_rate) == pytest.approx(times(by_duration), abs=1e-15) == [0.02, 0.1, 0.16, 0.22, 0.26, 0.28]
    assert by_rate[1].start_time == 8 / 50 and by_duration[1].end_time == 11 * 0.02


def _peaky(path, classes, p=0.9):
    """(T, C) log-probs whose every frame gives the path's class probability ``p``."""
    probs = np.full((len(path), classes), (1 - p) / (classes - 1))
    probs[np.arange(len(path)), path] = p
    return np.log(probs)


def _known_path(tokens, rng):
    """A path emitting ``tokens`` (1 to 3 frames each, blanks between at random, at least one
    between repeats) and each token's frames."""
    path, frames = [0] * int(rng.integers(0, 3)), []
    for k, token in enumerate(tokens):
        length = int(rng.integers(1, 4))
        frames.append((len(path), len(path) + length))
        repeat = k + 1 < len(tokens) and tokens[k + 1] == token
        path += [token] * length + [0] * int(rng.integers(repeat, 3))
    return path, frames


@pytest.mark.parametrize("seed", range(4))
def test_a_known_path_comes_back_through_forced_align_merge_tokens_and_word_spans(seed):
    rng = np.random.default_rng(seed)
    labels = ["-", " ", "h", "i", "t", "e", "r"]
    text = "hi there" if seed % 2 else " hi  there "
    tokens = [labels.index(c) for c in text]
    path, frames = _known_path(tokens, rng)
    log_probs = _peaky(path, len(labels))
    alignment, scores = cn.forced_align(log_probs, tokens, len(path), len(tokens))
    assert alignment.tolist() == path
    words = cn.word_spans(cn.merge_tokens(alignment, scores), separator=" ", labels=labels, frame_duration=0.04)
    starts = [k for k, c in enumerate(text) if c != " " and (k == 0 or text[k - 1] == " ")]
    ends = [k for k, c in enumerate(text) if c != " " and (k + 1 == len(text) or text[k + 1] == " ")]
    _close(words, [(text[a:b + 1], frames[a][0], frames[b][1], frames[a][0] * 0.04, frames[b][1] * 0.04, 0.9)
                   for a, b in zip(starts, ends)])
    assert cn.align_words(log_probs, tokens, separator=" ", labels=labels, frame_duration=0.04) == words


def test_align_words_with_word_start_markers(rng):
    pieces = ["<b>", "\u2581hi", "\u2581the", "re"]
    path, frames = _known_path([1, 2, 3], rng)
    words = cn.align_words(_peaky(path, 4, p=0.8), [1, 2, 3], word_start="\u2581", labels=pieces, frame_rate=100)
    _close(words, [("hi", *frames[0], frames[0][0] / 100, frames[0][1] / 100, 0.8),
                   ("there", frames[1][0], frames[2][1], frames[1][0] / 100, frames[2][1] / 100, 0.8)])


def _word(text, start_time, end_time, confidence=1.0):
    return WordSpan(text, round(start_time * 50), round(end_time * 50), start_time, end_time, confidence)


WORDS = [_word("Hello,", 0.0, 0.5), _word("world", 0.5, 0.9995), _word("a<b>&c", 3.0, 3.25), _word("x-->y", 3.25, 3.5),
         _word("late\nline", 360000.0004, 360001.0015)]


def test_srt_output_is_the_expected_text():
    assert cn.to_srt(WORDS) == (
        "1\n00:00:00,000 --> 00:00:01,000\nHello, world\n\n"
        "2\n00:00:03,000 --> 00:00:03,500\na<b>&c x->y\n\n"
        "3\n100:00:00,000 --> 100:00:01,002\nlate line\n")


def test_webvtt_output_is_the_expected_text():
    assert cn.to_webvtt(WORDS) == (
        "WEBVTT\n\n"
        "00:00:00.000 --> 00:00:01.000\nHello, world\n\n"
        "00:00:03.000 --> 00:00:03.500\na&lt;b&gt;&amp;c x--&gt;y\n\n"
        "100:00:00.000 --> 100:00:01.002\nlate line\n")
    assert cn.to_webvtt([]) == "WEBVTT\n" and cn.to_srt([]) == ""


@pytest.mark.parametrize("seconds,stamp", [
    (0.9995, "00:00:01,000"), (0.0005, "00:00:00,001"), (0.0004999, "00:00:00,000"), (1.0015, "00:00:01,002"),
    (2.0025, "00:00:02,003"), (59.9995, "00:01:00,000"), (3599.9995, "01:00:00,000"), (0.1 + 0.2, "00:00:00,300"),
    (359999.9995, "100:00:00,000"), (123.4564, "00:02:03,456"), (3_600_000.0, "1000:00:00,000"), (7, "00:00:07,000"),
])
def test_times_are_rounded_half_up_to_the_millisecond(seconds, stamp):
    assert cn.to_srt([WordSpan("a", 0, 1, seconds, seconds, 1.0)]) == f"1\n{stamp} --> {stamp}\na\n"
    dotted = stamp.replace(",", ".")
    assert cn.to_webvtt([WordSpan("a", 0, 1, seconds, seconds, 1.0)]) == f"WEBVTT\n\n{dotted} --> {dotted}\na\n"


def _cue_texts(srt):
    return [block.split("\n")[2] for block in srt.strip("\n").split("\n\n")]


def test_cues_split_at_max_words_max_duration_and_max_gap():
    words = [_word(str(k), k * 0.5, k * 0.5 + 0.4) for k in range(6)]  # pauses of 0.1 s
    assert _cue_texts(cn.to_srt(words, max_words=4)) == ["0 1 2 3", "4 5"]
    assert _cue_texts(cn.to_srt(words, max_words=None, max_duration=1.4)) == ["0 1 2", "3 4 5"]
    assert _cue_texts(cn.to_srt(words, max_words=None, max_duration=None, max_gap=0.05)) == ["0", "1", "2", "3", "4", "5"]
    assert _cue_texts(cn.to_srt(words, max_words=None, max_duration=None, max_gap=None)) == ["0 1 2 3 4 5"]
    long = [_word("long", 0.0, 9.0), _word("next", 9.0, 9.5)]
    assert _cue_texts(cn.to_srt(long, max_duration=5.0)) == ["long", "next"]


def test_segments_given_as_lists_are_the_cues_as_they_are():
    words = [_word(str(k), k * 0.5, k * 0.5 + 0.4) for k in range(5)]
    srt = cn.to_srt([words[:3], [], words[3:]], max_words=1)
    assert srt == "1\n00:00:00,000 --> 00:00:01,400\n0 1 2\n\n2\n00:00:01,500 --> 00:00:02,400\n3 4\n"
    assert cn.to_webvtt([words[:1], words[1:]]).count("-->") == 2


def test_a_cue_with_no_text_is_left_out_and_numbering_stays_consecutive():
    words = [_word("a", 0.0, 0.5), _word(" ", 3.0, 3.5), _word("b", 6.0, 6.5)]
    assert cn.to_srt(words) == "1\n00:00:00,000 --> 00:00:00,500\na\n\n2\n00:00:06,000 --> 00:00:06,500\nb\n"


def test_to_dicts_round_trips_through_json():
    words = cn.word_spans(_spans(), separator=1, labels=CHARS, frame_duration=0.02)
    dicts = cn.to_dicts(words)
    assert json.loads(json.dumps(dicts)) == dicts
    assert [WordSpan(**d) for d in json.loads(json.dumps(dicts))] == words
    assert set(dicts[0]) == {"text", "start", "end", "start_time", "end_time", "confidence"}
    by_index = cn.word_spans(_spans(), separator=1)
    loaded = json.loads(json.dumps(cn.to_dicts(by_index)))
    assert loaded[0]["text"] == [2, 3] and loaded[0]["start_time"] is None
    assert [WordSpan(**{**d, "text": tuple(d["text"])}) for d in loaded] == by_index


SPANS = [TokenSpan(2, 0, 2, 0.5), TokenSpan(1, 2, 3, 1.0), TokenSpan(4, 3, 5, 0.25)]


@pytest.mark.parametrize("call,error,message", [
    (lambda: cn.word_spans(SPANS, separator=1, word_start="\u2581", labels=CHARS), CTCInputError,
     r"give one of separator .* got separator = 1 and word_start = '\u2581'"),
    (lambda: cn.word_spans(SPANS), CTCInputError, r"give one of separator .* got separator = None and word_start = None"),
    (lambda: cn.word_spans(SPANS, word_start="\u2581"), CTCInputError, r"word_start needs labels"),
    (lambda: cn.word_spans(SPANS, word_start="", labels=CHARS), CTCInputError, r"word_start must be a non-empty str"),
    (lambda: cn.word_spans(SPANS, word_start=1, labels=CHARS), TypeError, r"word_start must be a str"),
    (lambda: cn.word_spans(SPANS, separator=1, labels=CHARS[:4]), CTCInputError,
     r"labels has 4 entries, too few for token_spans\[2\]\.token = 4"),
    (lambda: cn.word_spans(SPANS, separator=1, labels="-|abc"), TypeError, r"labels must be a list of strings"),
    (lambda: cn.word_spans(SPANS, separator=1, labels=["-", "|", None, "b", "c"]), TypeError, r"labels\[2\] must be a str"),
    (lambda: cn.word_spans(SPANS, separator="|"), CTCInputError, r"separator = '\|' is a label: it needs labels"),
    (lambda: cn.word_spans(SPANS, separator="#", labels=CHARS), CTCInputError, r"separator = '#' is none of the labels"),
    (lambda: cn.word_spans(SPANS, separator=-1), CTCInputError, r"separator must be a class index \(>= 0\), got -1"),
    (lambda: cn.word_spans(SPANS, separator=1.0), TypeError, r"separator must be a class index \(int\) or a label"),
    (lambda: cn.word_spans(SPANS, separator=1, frame_duration=-0.02), CTCInputError, r"frame_duration must be a finite number > 0, got -0.02"),
    (lambda: cn.word_spans(SPANS, separator=1, frame_duration=0), CTCInputError, r"frame_duration must be a finite number > 0, got 0"),
    (lambda: cn.word_spans(SPANS, separator=1, frame_duration=math.nan), CTCInputError, r"frame_duration must be .*, got nan"),
    (lambda: cn.word_spans(SPANS, separator=1, frame_duration=math.inf), CTCInputError, r"frame_duration must be .*, got inf"),
    (lambda: cn.word_spans(SPANS, separator=1, frame_rate=-50), CTCInputError, r"frame_rate must be a finite number > 0, got -50"),
    (lambda: cn.word_spans(SPANS, separator=1, frame_duration="0.02"), TypeError, r"frame_duration must be a real number"),
    (lambda: cn.word_spans(SPANS, separator=1, frame_duration=0.02, frame_rate=50), CTCInputError,
     r"give frame_duration or frame_rate, not both"),
    (lambda: cn.word_spans([SPANS[1], SPANS[0]], separator=1), CTCInputError,
     r"token_spans\[1\] starts at frame 0, before token_spans\[0\] ends \(3\)"),
    (lambda: cn.word_spans([TokenSpan(2, 0, 2, 0.5), TokenSpan(3, 1, 4, 0.5)], separator=1), CTCInputError,
     r"token_spans\[1\] starts at frame 1, before token_spans\[0\] ends \(2\)"),
    (lambda: cn.word_spans([TokenSpan(2, 3, 3, 0.5)], separator=1), CTCInputError,
     r"token_spans\[0\] must have frames 0 <= start < end, got start = 3, end = 3"),
    (lambda: cn.word_spans([TokenSpan(2, 0, 1, 1.5)], separator=1), CTCInputError, r"token_spans\[0\]\.score must be a probability"),
    (lambda: cn.word_spans([TokenSpan(2, 0, 1, math.nan)], separator=1), CTCInputError, r"token_spans\[0\]\.score must be a probability"),
    (lambda: cn.word_spans([TokenSpan(2, 0.0, 1, 1.0)], separator=1), TypeError, r"token_spans\[0\] must hold int token"),
    (lambda: cn.word_spans([(2, 0, 1, 1.0)], separator=1), TypeError, r"token_spans\[0\] must be a TokenSpan"),
    (lambda: cn.word_spans(SPANS[0], separator=1), TypeError, r"token_spans must be a list of TokenSpan"),
    (lambda: cn.align_words(np.zeros((4, 1, 3)), [1], separator=2), CTCInputError, r"log_probs must be \(T, C\), got shape \(4, 1, 3\)"),
    (lambda: cn.align_words(np.zeros((4, 3)), [[1]], separator=2), CTCInputError, r"targets must be \(S,\), got shape \(1, 1\)"),
    (lambda: cn.align_words(np.zeros((4, 3)), [1, 1, 1], separator=2), CTCInputError, r"item 0 cannot be aligned"),
    (lambda: cn.align_words(np.zeros((4, 3)), [1], word_start="\u2581"), CTCInputError, r"word_start needs labels"),
    (lambda: cn.to_srt([WordSpan("a", 0, 1, None, None, 1.0)]), CTCInputError, r"words\[0\] has no times"),
    (lambda: cn.to_srt([WordSpan((2,), 0, 1, 0.0, 0.1, 1.0)]), TypeError, r"words\[0\]\.text must be a str"),
    (lambda: cn.to_webvtt([_word("a", 1.0, 1.5), _word("b", 0.5, 0.7)]), CTCInputError, r"words\[1\] starts at 0.5 s, before"),
    (lambda: cn.to_srt([_word("a", 1.0, 0.5)]), CTCInputError, r"words\[0\] ends \(0.5\) before it starts \(1.0\)"),
    (lambda: cn.to_srt([_word("a", -1.0, 0.5)]), CTCInputError, r"words\[0\]\.start_time must be a finite number >= 0"),
    (lambda: cn.to_srt([WordSpan("a", 0, 1, 0.0, math.inf, 1.0)]), CTCInputError, r"words\[0\]\.end_time must be a finite number >= 0"),
    (lambda: cn.to_srt([[_word("a", 0.0, 1.0)], [WordSpan("b", 0, 1, None, None, 1.0)]]), CTCInputError, r"words\[1\]\[0\] has no times"),
    (lambda: cn.to_srt(WORDS, max_words=0), CTCInputError, r"max_words must be a positive int or None, got 0"),
    (lambda: cn.to_srt(WORDS, max_words=2.0), TypeError, r"max_words must be an int or None"),
    (lambda: cn.to_srt(WORDS, max_duration=-1), CTCInputError, r"max_duration must be a finite number > 0, got -1"),
    (lambda: cn.to_webvtt(WORDS, max_gap=math.nan), CTCInputError, r"max_gap must be a finite number >= 0, got nan"),
    (lambda: cn.to_srt(["a"]), TypeError, r"words\[0\] must be a list of WordSpan"),
    (lambda: cn.to_srt([[_word("a", 0.0, 1.0)], "b"]), TypeError, r"words\[1\] must be a list of WordSpan"),
    (lambda: cn.to_srt("text"), TypeError, r"words must be a list of WordSpan"),
    (lambda: cn.to_dicts([SPANS[0]]), TypeError, r"words\[0\] must be a WordSpan"),
])
def test_bad_input_names_the_argument(call, error, message):
    with pytest.raises(error, match=message):
        call()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_torch_frontend_matches_numpy(dtype, rng):
    labels = ["-", "|", "a", "b"]
    log_probs = torch.from_numpy(log_softmax(rng.standard_normal((20, 4)))).to(dtype).requires_grad_()
    targets = torch.tensor([2, 1, 3, 3, 1, 2])
    options = dict(separator="|", labels=labels, frame_rate=50)
    expected = cn.align_words(log_probs.detach().float().numpy() if dtype != torch.float64 else log_probs.detach().numpy(),
                              targets.numpy(), **options)
    assert ct.align_words(log_probs, targets, **options) == expected and [w.text for w in expected] == ["a", "bb", "a"]
    alignment, scores = ct.forced_align(log_probs.detach(), targets, 20, 6)
    assert ct.word_spans(ct.merge_tokens(alignment, scores), **options) == cn.word_spans(
        cn.merge_tokens(alignment.numpy(), scores.to(torch.float64).numpy()), **options)
    assert ct.to_srt(expected) == cn.to_srt(expected) and ct.to_dicts(expected) == cn.to_dicts(expected)
    assert ct.WordSpan is cn.WordSpan and ct.to_webvtt is cn.to_webvtt
