"""Property tests of alignment and decoding under hostile arguments, in both frontends.

Each example draws every argument either valid or not (wrong types, dtypes, shapes, ranges,
byte orders, strides, ragged lists, huge ints, NaN), and knows which. A call whose
arguments are all valid must return what a plain reference gives: a NumPy argmax over
the used frames, brute force over every labeling or path of a tiny input, the float64
recursions of ``reference.py``. Any other call must raise :class:`ctckit.CTCInputError`
or ``TypeError`` naming one of the invalid arguments; nothing else, and never a crash.
"""

import itertools

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import ctckit.numpy as cn
import ctckit.torch as ct
import reference as ref
from conftest import log_softmax
from ctckit import CTCInputError

SETTINGS = settings(max_examples=200, deadline=None, derandomize=True, database=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
NUMPY_DTYPES = {"float64": True, "float32": True, "float16": True, ">f8": True, ">f4": True, "longdouble": True,
                "int64": False, "complex128": False, "bool": False, "str": False}
TORCH_DTYPES = {torch.float32: True, torch.float64: True, torch.float16: True, torch.bfloat16: True,
                torch.float8_e4m3fn: True, torch.float8_e5m2: True, torch.int64: False, torch.bool: False,
                torch.complex64: False}
TOLERANCE = {torch.float16: 2e-3, torch.bfloat16: 1e-2, torch.float8_e4m3fn: 0.1, torch.float8_e5m2: 0.2}
HUGE = [2**31, 2**40, 2**63 - 1, 2**63, 2**70, -(2**70)]


def _either(valid, invalid, odds=20):
    """``(value, True)`` from ``valid`` most of the time, else ``(value, False)`` from ``invalid``."""
    # (hypothesis favours the ends of a range: the odd one out is drawn from its middle)
    return st.integers(0, odds).flatmap(lambda k: invalid.map(lambda v: (v, False)) if k == odds // 2 else valid.map(lambda v: (v, True)))


@st.composite
def log_probs_cases(draw, frontend, nan_is_invalid=True):
    """A dict: ``values`` (float64 (T, N, C), what the decoders must see), ``lengths``, ``log_probs``
    and ``input_lengths`` as passed, ``batched``, and ``invalid``: the names of the invalid arguments."""
    frames, classes = draw(st.integers(1, 4)), draw(st.integers(1, 4))
    batched = draw(st.booleans())
    size = draw(st.integers(1, 3)) if batched else 1
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    values = log_softmax(draw(st.sampled_from([0.5, 2.0, 6.0])) * rng.standard_normal((frames, size, classes)))
    for t, c in draw(st.lists(st.tuples(st.none() | st.integers(0, frames - 1), st.integers(0, classes - 1)), max_size=3)):
        values[slice(None) if t is None else t, :, c] = -np.inf  # masked classes, or one masked cell
    lengths = [draw(st.integers(0, frames)) for _ in range(size)]
    invalid = set()
    poison = draw(st.sampled_from([None, None, np.nan, np.inf, 1e30]))
    for n, length in enumerate(lengths):
        if poison is not None:
            values[length:, n] = poison  # never read
    if draw(st.integers(0, 24)) == 12 and max(lengths) > 0:
        n = int(np.argmax(lengths))
        values[draw(st.integers(0, lengths[n] - 1)), n, draw(st.integers(0, classes - 1))] = draw(st.sampled_from([np.nan, np.inf]))
    given_values = values if batched else values[:, 0]
    if frontend == "numpy":
        name, _ = draw(_either(st.sampled_from([k for k, ok in NUMPY_DTYPES.items() if ok]),
                               st.sampled_from([k for k, ok in NUMPY_DTYPES.items() if not ok]), odds=10))
        with np.errstate(over="ignore", invalid="ignore"):
            log_probs = given_values.astype(str if name == "str" else np.longdouble if name == "longdouble" else name)
            if NUMPY_DTYPES[name]:
                values = (log_probs if batched else log_probs[:, None]).astype(np.float64)
        layout = draw(st.sampled_from(["C", "C", "C", "F", "strided", "list", "list", "ragged"]))
        if layout == "F":
            log_probs = np.asfortranarray(log_probs)
        elif layout == "strided":
            wide = np.zeros(log_probs.shape[:-1] + (2 * log_probs.shape[-1],), dtype=log_probs.dtype)
            wide[..., ::2] = log_probs
            log_probs = wide[..., ::2]
        elif layout == "list" and name in ("float64", "float32"):
            log_probs = log_probs.tolist()
        elif layout == "ragged" and frames > 1:
            log_probs = log_probs.tolist()
            log_probs[0] = log_probs[0][:-1] if batched else log_probs[0] + [0.0]
            invalid.add("log_probs")
        if not NUMPY_DTYPES[name]:
            invalid.add("log_probs")
    else:
        dtype, _ = draw(_either(st.sampled_from([k for k, ok in TORCH_DTYPES.items() if ok]),
                                st.sampled_from([k for k, ok in TORCH_DTYPES.items() if not ok]), odds=10))
        tensor = torch.from_numpy(given_values)
        log_probs = tensor.to(dtype) if dtype.is_floating_point else tensor.nan_to_num().to(dtype)
        if TORCH_DTYPES[dtype]:
            seen = log_probs.double().numpy()
            values = seen if batched else seen[:, None]
        else:
            invalid.add("log_probs")
        if draw(st.booleans()):
            log_probs = log_probs.transpose(0, -1).contiguous().transpose(0, -1)  # other strides, same values
    lengths_form = draw(st.sampled_from(["none", "list", "list", "int64", "int32", "uint64", "tensor", "tensor", "bad"]))
    if lengths_form == "none":
        input_lengths, lengths = None, [frames] * size
    elif lengths_form == "bad":
        input_lengths = draw(st.sampled_from([[frames + 1] * size, [-1] * size, [float(frames)] * size, [True] * size,
                                              [frames] * (size + 1), "3", [HUGE[draw(st.integers(0, 5))]] * size]))
        invalid.add("input_lengths")
    else:
        input_lengths = {"list": list, "int64": np.array, "int32": lambda v: np.array(v, dtype=np.int32),
                         "uint64": lambda v: np.array(v, dtype=np.uint64), "tensor": torch.tensor}[lengths_form](lengths)
        if not batched and draw(st.booleans()):
            input_lengths = lengths[0]
        if isinstance(input_lengths, torch.Tensor) and frontend == "numpy":  # the NumPy frontend takes no tensors...
            if draw(st.integers(0, 4)) == 2:
                invalid.add("input_lengths")
            else:  # ...but arrays of every integer dtype
                input_lengths = np.asarray(input_lengths).astype(draw(st.sampled_from([np.int8, np.uint16, ">i8"])))
    clean = all((values[:length, n] < np.inf).all() for n, length in enumerate(lengths))  # no NaN, no +inf used
    if nan_is_invalid and not clean:  # (float8_e4m3fn has no inf: -inf becomes NaN)
        invalid.add("log_probs")
    return dict(values=values, lengths=lengths, log_probs=log_probs, input_lengths=input_lengths, batched=batched,
                invalid=invalid, classes=classes, frames=frames, clean=clean)


def _blanks(classes):
    return _either(st.integers(0, classes - 1),
                   st.sampled_from([-1, classes, 2**70, True, 1.0, "0", None, np.uint64(2**63)]))


def _expect_error(call, invalid):
    """The call must raise CTCInputError or TypeError naming one of ``invalid``."""
    with pytest.raises((CTCInputError, TypeError)) as caught:
        call()
    message = str(caught.value)
    assert any(name in message for name in invalid), f"{message!r} names none of {sorted(invalid)}"


def _frontend(frontend):
    return cn if frontend == "numpy" else ct


def _labelings(lp, blank):
    """Exact log-probability of every labeling of a (T, C) item, over all C^T paths."""
    totals = {}  # (no frames: the one empty path, of log-probability 0)
    for path in itertools.product(range(lp.shape[1]), repeat=lp.shape[0]):
        score = lp[np.arange(lp.shape[0]), list(path)].sum()
        labels = tuple(ref.collapse(path, blank))
        totals[labels] = np.logaddexp(totals.get(labels, -np.inf), score)
    return totals


@SETTINGS
@given(st.sampled_from(["numpy", "torch"]).flatmap(lambda f: st.tuples(st.just(f), log_probs_cases(f))), st.data())
def test_greedy_decode(case, data):
    frontend, case = case
    blank, blank_ok = data.draw(_blanks(case["classes"]))
    invalid = case["invalid"] | ({"blank"} if not blank_ok else set())
    call = lambda: _frontend(frontend).greedy_decode(case["log_probs"], case["input_lengths"], blank)
    if invalid:
        return _expect_error(call, invalid)
    got = call()
    expected = [ref.collapse(case["values"][:length, n].argmax(axis=1).tolist(), blank) for n, length in enumerate(case["lengths"])]
    assert got == (expected if case["batched"] else expected[0])


def _beam_options(data, classes, frames, blank):
    """Options and the names of those that are invalid; ``exact`` when the beam keeps every prefix unpruned."""
    unpruned = data.draw(st.booleans())  # half the time a search that must be exact (given a wide enough beam)
    widths = st.sampled_from([200, 2**31, 2**63 - 1, np.uint64(2**63)]) if unpruned else st.integers(1, 70)
    width, width_ok = data.draw(_either(widths, st.sampled_from([0, -3, 2.0, "8", True, None])))
    top_k, top_k_ok = data.draw(_either(st.integers(1, 6) | st.sampled_from([2**40, 2**63 - 1]), st.sampled_from([0, 1.5, "1", False])))
    token_min, token_ok = data.draw(_either(st.sampled_from([-np.inf, -(10**400)] if unpruned else [-10.0, -2.0, 0.0, -np.inf]),
                                            st.sampled_from([np.nan, "x", None, [1.0]])))
    prune, prune_ok = data.draw(_either(st.sampled_from([-np.inf] if unpruned else [-20.0, -1.0, 0.0, -np.inf]),
                                        st.sampled_from([1.0, np.nan, 10**400, "-1"])))
    options = dict(beam_width=width, top_k=top_k, token_min_log_prob=token_min, beam_prune_log_prob=prune)
    invalid = {name for name, ok in (("beam_width", width_ok), ("top_k", top_k_ok), ("token_min_log_prob", token_ok),
                                     ("beam_prune_log_prob", prune_ok)) if not ok}
    kind = data.draw(st.sampled_from(["core"] * 6 + ["neutral lm"] * 3 + ["hotwords"] * 2 + ["bad lm", "bad hotwords", "bad weight"]))
    if kind == "neutral lm":
        options["lm"] = lambda prefix, label: 0.0
    elif kind == "hotwords" and any(c != blank for c in range(classes)):
        word = [max(c for c in range(classes) if c != blank)]
        options["hotwords"], options["hotword_weight"] = [word], 0.0  # a zero weight: the same search
    elif kind == "bad lm":
        options["lm"] = data.draw(st.sampled_from(["lm", 3, 0.5]))
        invalid.add("lm")
    elif kind == "bad hotwords":
        options["hotwords"] = data.draw(st.sampled_from([[[classes]], [[-1]], "ab", [1, 2], [[1.5]], [[2**70]]]))
        invalid.add("hotwords")
    elif kind == "bad weight":
        name = data.draw(st.sampled_from(["lm_weight", "hotword_weight"]))
        options[name] = data.draw(st.sampled_from([np.nan, np.inf, "1", None] + ([-1.0] if name == "lm_weight" else [])))
        options["lm"] = lambda prefix, label: 0.0
        invalid.add(name)
    fits = isinstance(width, (int, np.integer)) and not isinstance(width, bool) and int(width) >= sum((classes - 1) ** i for i in range(frames + 1))
    exact = fits and unpruned and token_ok and prune_ok  # (-(10**400) is -inf as a float)
    return options, invalid, exact


@SETTINGS
@given(st.sampled_from(["numpy", "torch"]).flatmap(lambda f: st.tuples(st.just(f), log_probs_cases(f))), st.data())
def test_beam_search(case, data):
    frontend, case = case
    blank, blank_ok = data.draw(_blanks(case["classes"]))
    options, invalid, exact = _beam_options(data, case["classes"], case["frames"], blank if blank_ok else None)
    invalid |= case["invalid"] | ({"blank"} if not blank_ok else set())
    call = lambda: _frontend(frontend).beam_search(case["log_probs"], case["input_lengths"], blank=blank, **options)
    if invalid:
        return _expect_error(call, invalid)
    got = call()
    got = got if case["batched"] else [got]
    top_k = int(options["top_k"])
    for n, hyps in enumerate(got):
        labelings = _labelings(case["values"][: case["lengths"][n], n], blank)
        finite = sorted((score for score in labelings.values() if score > -np.inf), reverse=True)
        assert 1 <= len(hyps) <= top_k and len({tuple(labels) for labels, _ in hyps}) == len(hyps)
        for labels, score in hyps:
            assert type(score) is float and all(type(c) is int and 0 <= c < case["classes"] and c != blank for c in labels)
            assert score <= labelings.get(tuple(labels), -np.inf) + 1e-9  # the paths kept: at most the total
        assert [score for _, score in hyps] == sorted((score for _, score in hyps), reverse=True)
        if not finite:  # every labeling impossible: one hypothesis, of probability zero
            assert len(hyps) == 1 and hyps[0][1] == -np.inf
        elif exact:
            np.testing.assert_allclose([score for _, score in hyps], finite[:top_k], rtol=0, atol=1e-9)
            for labels, score in hyps:
                assert score == pytest.approx(labelings[tuple(labels)], abs=1e-9)
    if "lm" not in options and "hotwords" not in options:  # the Python search must agree
        slow = _frontend(frontend).beam_search(case["log_probs"], case["input_lengths"], blank=blank, lm=lambda p, c: 0.0, **options)
        slow = slow if case["batched"] else [slow]
        for a, b in zip(got, slow):
            assert [h[0] for h in a] == [h[0] for h in b]
            np.testing.assert_allclose([h[1] for h in a], [h[1] for h in b], rtol=0, atol=1e-9)


@st.composite
def target_cases(draw, classes, size, batched, blank):
    """``(targets, target_lengths, labels per item, invalid names)``."""
    labels_ok = [c for c in range(classes) if c != blank]
    labels = [draw(st.lists(st.sampled_from(labels_ok), max_size=2)) if labels_ok else [] for _ in range(size)]
    invalid = set()
    if draw(st.integers(0, 8)) == 4 and labels[0]:
        labels[0][0] = draw(st.sampled_from([blank, classes, -1]))
        invalid.add("targets")
    width = max(max(len(item) for item in labels), 1)
    padded = np.array([item + [0] * (width - len(item)) for item in labels], dtype=np.int64)
    target_lengths = [len(item) for item in labels]
    form = draw(st.sampled_from(["padded", "concatenated", "list", "bad"]))
    if not batched:
        targets = padded[0, : target_lengths[0]]
        target_lengths = target_lengths[0] if draw(st.booleans()) else [target_lengths[0]]
    elif form == "padded":
        targets = padded
    elif form == "concatenated":
        targets = np.concatenate([np.array(item, dtype=np.int64) for item in labels])
    else:
        targets = padded.tolist()
    if form == "bad":
        bad = draw(st.sampled_from(["float", "lengths"]))
        if bad == "float":
            targets = np.asarray(targets, dtype=np.float64)
            invalid.add("targets")
        else:
            target_lengths = [width + 1] * size if batched else width + 1
            invalid |= {"target_lengths", "targets"}
    return targets, target_lengths, labels, invalid


def _best_path(lp, labels, blank):
    """The most probable path that collapses to ``labels`` (its score), by brute force; -inf if none."""
    scores = [lp[np.arange(lp.shape[0]), list(p)].sum() for p in itertools.product(range(lp.shape[1]), repeat=lp.shape[0])
              if ref.collapse(p, blank) == list(labels)]
    return max(scores, default=-np.inf)


@SETTINGS
@given(st.sampled_from(["numpy", "torch"]).flatmap(lambda f: st.tuples(st.just(f), log_probs_cases(f, nan_is_invalid=False))),
       st.data())
def test_forced_align_and_posteriors(case, data):
    frontend, case = case
    blank, blank_ok = data.draw(_blanks(case["classes"]))
    size = case["values"].shape[1]
    targets, target_lengths, labels, invalid = data.draw(target_cases(case["classes"], size, case["batched"], blank if blank_ok else 0))
    invalid |= case["invalid"] | ({"blank"} if not blank_ok else set())
    if case["input_lengths"] is None:  # the loss's functions need lengths
        case["input_lengths"] = case["lengths"] if case["batched"] else case["lengths"][0]
    module = _frontend(frontend)
    align = lambda: module.forced_align(case["log_probs"], targets, case["input_lengths"], target_lengths, blank)
    posteriors = lambda: module.ctc_posteriors(case["log_probs"], targets, case["input_lengths"], target_lengths, blank)
    if invalid:
        _expect_error(align, invalid)
        return _expect_error(posteriors, invalid)
    values, lengths = case["values"], case["lengths"]
    if not case["clean"]:  # NaN or +inf on a used frame: a result (NaN propagates, as in the loss) or an error
        for call in (align, posteriors):
            try:
                call()
            except CTCInputError as error:
                assert "cannot be aligned" in str(error) and call is align
        return
    best = [_best_path(values[: lengths[n], n], labels[n], blank) for n in range(size)]
    tolerance = TOLERANCE.get(getattr(case["log_probs"], "dtype", None), 1e-5)
    if not all(score > -np.inf for score in best):
        with pytest.raises(CTCInputError, match=r"item \d+ cannot be aligned"):
            align()
    else:
        alignments, scores = (_float64(x) for x in align())
        alignments, scores = (alignments, scores) if case["batched"] else (alignments[None], scores[None])
        for n in range(size):
            assert ref.collapse(alignments[n, : lengths[n]].astype(int).tolist(), blank) == labels[n]
            assert (alignments[n, lengths[n]:] == -1).all() and (scores[n, lengths[n]:] == 0).all()
            assert scores[n].sum() == pytest.approx(best[n], abs=1e-5)
            spans = module.merge_tokens(alignments[n].astype(np.int64), scores[n], blank)
            assert [s.token for s in spans] == [c for c in ref.collapse(alignments[n].astype(int).tolist(), blank) if c >= 0]
    got = _float64(posteriors())
    got = got if case["batched"] else got[:, None]
    for n in range(size):
        expected = -ref.ctc_grad(values[: lengths[n], n], labels[n], blank) if lengths[n] else np.zeros((0, values.shape[2]))
        np.testing.assert_allclose(got[: lengths[n], n], expected, rtol=0, atol=tolerance)
        assert (got[lengths[n]:, n] == 0).all()


def _float64(x):
    return x.double().numpy() if isinstance(x, torch.Tensor) else np.asarray(x, dtype=np.float64)


@SETTINGS
@given(st.sampled_from(["numpy", "torch"]), st.data())
def test_merge_tokens(frontend, data):
    frames = data.draw(st.integers(0, 8))
    alignment = data.draw(st.lists(st.integers(-1, 4), min_size=frames, max_size=frames))
    scores = data.draw(st.lists(st.floats(-20, 0), min_size=frames, max_size=frames))
    blank, blank_ok = data.draw(_either(st.integers(0, 4), st.sampled_from([-1, True, "0", 1.0])))
    invalid = set() if blank_ok else {"blank"}
    form = data.draw(st.sampled_from(["list", "int32", "uint8", "tensor", "bad shape", "float alignment", "str scores",
                                      "ragged", "below -1"]))
    given_alignment, given_scores = alignment, scores
    if form == "int32":
        given_alignment = np.array(alignment, dtype=np.int32)
    elif form == "uint8" and -1 not in alignment:
        given_alignment = np.array(alignment, dtype=np.uint8)
    elif form == "tensor":
        given_alignment, given_scores = torch.tensor(alignment, dtype=torch.long), torch.tensor(scores, dtype=torch.float32)
    elif form == "bad shape":
        given_alignment = [alignment, alignment]
        invalid.add("alignment")
    elif form == "float alignment" and frames:
        given_alignment = np.array(alignment, dtype=np.float64)
        invalid.add("alignment")
    elif form == "str scores" and frames:
        given_scores = [str(s) for s in scores]
        invalid.add("scores")
    elif form == "ragged" and frames:
        given_alignment = [alignment, [0]]
        invalid.add("alignment")
    elif form == "below -1" and frames:
        given_alignment = alignment[:-1] + [-(2**40)]
        invalid.add("alignment")
    call = lambda: _frontend(frontend).merge_tokens(given_alignment, given_scores, blank)
    if invalid:
        return _expect_error(call, invalid | {"merge_tokens"})
    spans = call()
    expected, t = [], 0
    if form == "tensor":
        scores = torch.tensor(scores, dtype=torch.float32).double().tolist()
    while t < frames:
        end = t + 1
        while end < frames and alignment[end] == alignment[t]:
            end += 1
        if alignment[t] >= 0 and alignment[t] != blank:
            expected.append((alignment[t], t, end, float(np.exp(np.array(scores[t:end])).mean())))
        t = end
    assert [(s.token, s.start, s.end) for s in spans] == [e[:3] for e in expected]
    np.testing.assert_allclose([s.score for s in spans], [e[3] for e in expected], rtol=1e-6)
