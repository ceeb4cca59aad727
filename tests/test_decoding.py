"""Forced alignment, token spans, greedy and beam search decoding, posteriors."""

import itertools

import numpy as np
import pytest
import torch

import ctckit.numpy as cn
import ctckit.torch as ct
import reference as ref
from conftest import log_softmax
from ctckit import CTCInputError


def _paths(frames, classes):
    return itertools.product(range(classes), repeat=frames)


def _labeling_log_probs(lp, blank):
    """Exact log-probability of every labeling, by enumerating all C^T paths."""
    totals = {}
    for path in _paths(*lp.shape):
        labels = tuple(ref.collapse(path, blank))
        score = lp[np.arange(lp.shape[0]), list(path)].sum()
        totals[labels] = np.logaddexp(totals.get(labels, -np.inf), score)
    return totals


@pytest.mark.parametrize("seed", range(6))
def test_viterbi_score_is_the_brute_force_maximum_and_collapses_to_target(seed):
    rng = np.random.default_rng(seed)
    frames, classes, blank = 5, 3, seed % 3
    lp = log_softmax(rng.standard_normal((frames, 1, classes)))
    non_blank = [c for c in range(classes) if c != blank]
    labels = list(rng.choice(non_blank, size=int(rng.integers(1, 3))))
    alignment, scores = cn.forced_align(lp[:, 0], labels, frames, len(labels), blank)
    best = max(lp[np.arange(frames), 0, list(p)].sum() for p in _paths(frames, classes) if ref.collapse(p, blank) == labels)
    assert scores.sum() == pytest.approx(best, abs=1e-12)
    assert ref.collapse(alignment.tolist(), blank) == labels
    np.testing.assert_allclose(scores, lp[np.arange(frames), 0, alignment])


def test_alignment_padding_and_batch(rng):
    lp = log_softmax(rng.standard_normal((12, 3, 6))).astype(np.float32)
    targets = np.array([[1, 2, 2], [3, 0, 0], [4, 5, 0]])
    alignments, scores = cn.forced_align(lp, targets, [12, 7, 9], [3, 1, 2])
    assert alignments.shape == (3, 12) and alignments.dtype == np.int64 and scores.dtype == np.float32
    assert (alignments[1, 7:] == -1).all() and (scores[1, 7:] == 0).all()
    for n, (length, labels) in enumerate(zip([12, 7, 9], [[1, 2, 2], [3], [4, 5]])):
        assert ref.collapse(alignments[n, :length].tolist(), 0) == labels


def test_alignment_ties_emit_each_label_as_early_as_possible():
    lp = np.log(np.full((4, 3), 1 / 3))
    alignment, _ = cn.forced_align(lp, [1, 2], 4, 2)
    assert alignment.tolist() == [1, 2, 0, 0]


def test_unalignable_item_names_index_T_L_R(rng):
    lp = log_softmax(rng.standard_normal((4, 2, 5)))
    with pytest.raises(CTCInputError, match=r"item 1 cannot be aligned: T = 4 frames, .* L = 3 labels with R = 2 repeats needs T >= L \+ R = 5"):
        cn.forced_align(lp, [[1, 2, 0], [3, 3, 3]], [4, 4], [2, 3])
    masked = lp.copy()
    masked[:, 0, 2] = -np.inf
    with pytest.raises(CTCInputError, match=r"item 0 cannot be aligned: every path"):
        cn.forced_align(masked, [[1, 2], [3, 4]], [4, 4], [2, 2])


def test_merge_tokens_on_hand_made_alignment():
    alignment = np.array([0, 3, 3, 0, 0, 3, 5, 5, 0, -1, -1])
    scores = np.log(np.array([0.9, 0.5, 0.7, 0.9, 0.9, 0.4, 0.2, 0.6, 0.9, 1.0, 1.0]))
    spans = cn.merge_tokens(alignment, scores)
    assert [(s.token, s.start, s.end) for s in spans] == [(3, 1, 3), (3, 5, 6), (5, 6, 8)]
    assert [s.score for s in spans] == pytest.approx([0.6, 0.4, 0.4])
    assert len(spans[0]) == 2


def test_greedy_is_argmax_then_collapse(rng):
    lp = log_softmax(rng.standard_normal((30, 4, 5)))
    lengths = [30, 12, 0, 25]
    decoded = cn.greedy_decode(lp, lengths, blank=2)
    for n in range(4):
        path = lp[: lengths[n], n].argmax(1).tolist()
        assert decoded[n] == ref.collapse(path, 2)
    assert cn.greedy_decode(lp[:, 0], blank=2) == decoded[0]


@pytest.mark.parametrize("seed", range(5))
def test_wide_beam_finds_the_exact_most_probable_labeling(seed):
    rng = np.random.default_rng(seed)
    frames, classes, blank = 5, 3, seed % 3
    lp = log_softmax(1.5 * rng.standard_normal((frames, classes)))
    exact = _labeling_log_probs(lp, blank)
    ranked = sorted(exact.items(), key=lambda kv: -kv[1])
    hyps = cn.beam_search(lp, beam_width=1000, blank=blank, top_k=4, token_min_log_prob=-np.inf,
                          beam_prune_log_prob=-np.inf)
    assert [tuple(h[0]) for h in hyps] == [r[0] for r in ranked[:4]]
    for labels, score in hyps:
        assert score == pytest.approx(exact[tuple(labels)], abs=1e-10)
        if labels:
            loss = cn.ctc_loss(lp, labels, frames, len(labels), blank, "sum")
            assert score == pytest.approx(-loss, abs=1e-10)


def _peaky(rng, frames, batch, classes, noise):
    """Outputs like a trained model's: blank-dominated, a label peaking every few frames."""
    logits = noise * rng.standard_normal((frames, batch, classes))
    logits[..., 0] += 3.0
    for t in range(1, frames, 3):
        logits[t, np.arange(batch), rng.integers(1, classes, batch)] += 4.0
    return log_softmax(logits)


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("beam_width,top_k,token_min,prune", [
    (1, 1, -10.0, -20.0), (3, 3, -10.0, -20.0), (8, 4, -np.inf, -np.inf), (16, 2, -3.0, -5.0)])
def test_python_search_with_neutral_lm_equals_the_fast_one(seed, beam_width, top_k, token_min, prune):
    # The Numba core and the Python path (taken whenever an lm is given) rank the same
    # candidates in the same order and prune alike, so they must agree hypothesis by hypothesis.
    rng = np.random.default_rng(seed)
    lp = _peaky(rng, 40, 3, 8, noise=1.0 + seed / 3) if seed % 2 else log_softmax(rng.standard_normal((40, 3, 8)))
    if seed >= 3:  # masked classes: a class never possible, frames where only the blank or one label is
        lp[:, :, seed] = -np.inf
        lp[5:9, 0, 1:] = -np.inf
        lp[12, 1, :] = -np.inf
        lp[12, 1, 2] = 0.0
        lp[20, 2, :] = -np.inf  # a frame where nothing is possible
    options = dict(beam_width=beam_width, top_k=top_k, token_min_log_prob=token_min, beam_prune_log_prob=prune)
    fast = cn.beam_search(lp, [40, 30, 25], **options)
    slow = cn.beam_search(lp, [40, 30, 25], lm=lambda prefix, label: 0.0, **options)
    for a, b in zip(fast, slow):
        assert [h[0] for h in a] == [h[0] for h in b]
        np.testing.assert_allclose([h[1] for h in a], [h[1] for h in b], atol=1e-9)
        assert all(type(h[1]) is float for h in a + b)


@pytest.mark.parametrize("seed", range(3))
def test_top_k_hypotheses_are_distinct_labelings_scored_by_their_kept_paths(seed):
    lp = _peaky(np.random.default_rng(seed), 30, 4, 6, noise=1.5)
    for n, hyps in enumerate(cn.beam_search(lp, beam_width=32, top_k=8, token_min_log_prob=-np.inf,
                                            beam_prune_log_prob=-np.inf)):
        labelings = [tuple(labels) for labels, _ in hyps]
        assert len(hyps) == 8 and len(set(labelings)) == 8
        scores = [score for _, score in hyps]
        assert scores == sorted(scores, reverse=True)
        for labels, score in hyps:  # the probability of the paths the beam kept: at most the total
            exact = -cn.ctc_loss(lp[:, n], labels, 30, len(labels), reduction="sum") if labels else lp[:, n, 0].sum()
            assert score <= exact + 1e-12


def test_beam_pruning_drops_hypotheses_far_below_the_best():
    probs = np.full((4, 3), 1e-6)
    probs[:, 0] = 1 - 2e-6  # all blank, the alternatives e^-13 per frame below
    lp = np.log(probs)
    kept = lambda prune: len(cn.beam_search(lp, beam_width=16, top_k=16, token_min_log_prob=-np.inf,
                                            beam_prune_log_prob=prune))
    assert kept(-5.0) == 1  # only the empty labeling is within e^-5 of the best
    assert kept(-20.0) == 3  # [], [1], [2] (e^-12.4 below)
    assert kept(-np.inf) == 15  # every labeling that fits 4 frames; [1, 1, 1] needs 5


def test_language_model_and_hotwords_change_the_result():
    probs = np.full((6, 4), 0.1)
    probs[:, 0] = 0.7  # mostly blank...
    probs[1], probs[3] = [0.1, 0.7, 0.1, 0.1], [0.1, 0.1, 0.7, 0.1]  # ...acoustically "1 2"
    lp = np.log(probs)
    assert cn.beam_search(lp, beam_width=16)[0][0] == [1, 2]
    likes_three = lambda prefix, label: 3.0 if label == 3 else 0.0
    assert 3 in cn.beam_search(lp, beam_width=16, lm=likes_three, lm_weight=1.0)[0][0]
    boosted = cn.beam_search(lp, beam_width=16, hotwords=[[3, 3]], hotword_weight=4.0)[0][0]
    assert any(boosted[i:i + 2] == [3, 3] for i in range(len(boosted)))


def test_posteriors_sum_to_one_and_are_minus_the_exact_gradient(rng):
    lp = log_softmax(rng.standard_normal((20, 3, 7)))
    targets, il, tl = np.array([[1, 2, 3], [4, 4, 0], [5, 0, 0]]), [20, 15, 2], [3, 2, 1]
    post = cn.ctc_posteriors(lp, targets, il, tl)
    for n in range(3):
        np.testing.assert_allclose(post[: il[n], n].sum(1), 1.0, atol=1e-12)
        assert (post[il[n]:, n] == 0).all()
    _, grad = cn.ctc_loss_and_grad(lp, targets, il, tl, reduction="sum")
    np.testing.assert_allclose(post, -grad, atol=1e-15)


def test_torch_frontend_matches_numpy(rng):
    lp = log_softmax(rng.standard_normal((15, 2, 6))).astype(np.float32)
    targets, il, tl = np.array([[1, 2], [3, 0]]), np.array([15, 10]), np.array([2, 1])
    a_np, s_np = cn.forced_align(lp, targets, il, tl)
    a_t, s_t = ct.forced_align(torch.from_numpy(lp), torch.from_numpy(targets), torch.from_numpy(il), torch.from_numpy(tl))
    assert torch.equal(a_t, torch.from_numpy(a_np)) and s_t.dtype == torch.float32
    assert ct.merge_tokens(a_t[0], s_t[0]) == cn.merge_tokens(a_np[0], s_np[0])
    assert ct.greedy_decode(torch.from_numpy(lp), torch.from_numpy(il)) == cn.greedy_decode(lp, il)
    assert ct.beam_search(torch.from_numpy(lp), torch.from_numpy(il), beam_width=4) == cn.beam_search(lp, il, beam_width=4)
    np.testing.assert_allclose(ct.ctc_posteriors(torch.from_numpy(lp), torch.from_numpy(targets), il, tl).numpy(),
                               cn.ctc_posteriors(lp, targets, il, tl), atol=1e-7)


@pytest.mark.parametrize("call,message", [
    (lambda lp: cn.beam_search(lp, beam_width=0), r"beam_width must be a positive int, got 0"),
    (lambda lp: cn.beam_search(lp, top_k=-1), r"top_k must be a positive int"),
    (lambda lp: cn.beam_search(lp, beam_prune_log_prob=1.0), r"beam_prune_log_prob must be <= 0"),
    (lambda lp: cn.greedy_decode(lp, blank=9), r"blank must be in \[0, C\) = \[0, 5\), got 9"),
    (lambda lp: cn.greedy_decode(lp, [10, 11]), r"input_lengths\[1\] = 11 is outside \[0, T\] = \[0, 10\] \(batch index 1\)"),
    (lambda lp: cn.beam_search(lp[..., :0]), r"log_probs must not be empty"),
    (lambda lp: cn.forced_align(lp, [[1, 7], [1, 2]], [10, 10], [2, 2]), r"targets\[0, 1\] \(batch index 0\) = 7 is outside"),
    (lambda lp: cn.merge_tokens(np.zeros((2, 3)), np.zeros((2, 3))), r"merge_tokens takes one 1-D alignment"),
])
def test_decoding_bad_input(call, message, rng):
    lp = log_softmax(rng.standard_normal((10, 2, 5)))
    with pytest.raises(CTCInputError, match=message):
        call(lp)


def _neutral_lm(prefix, label):
    return 0.0


@pytest.mark.parametrize("blank", [0, 2])
@pytest.mark.parametrize("options", [{}, {"lm": _neutral_lm}, {"hotwords": [[1]]},
                                     {"lm": lambda prefix, label: 1.0, "hotwords": [[1, 1]], "lm_weight": 1.0}])
def test_a_hypothesis_never_contains_the_blank(blank, options):
    lp = np.full((4, 3), -np.inf)
    lp[:, blank] = 0.0  # only the blank is possible: the one labeling is the empty one, probability 1
    assert cn.beam_search(lp, top_k=3, blank=blank, **options) == [([], 0.0)]


def test_a_frame_where_every_class_is_impossible_leaves_one_hypothesis_of_probability_zero(rng):
    lp = log_softmax(rng.standard_normal((6, 2, 4)))
    lp[3, 0] = -np.inf
    for options in ({}, {"lm": _neutral_lm}):
        hyps = cn.beam_search(lp, top_k=3, token_min_log_prob=-np.inf, **options)
        best_before = cn.beam_search(lp[:3, 0], top_k=1, token_min_log_prob=-np.inf, **options)[0][0]
        assert hyps[0] == [(best_before, -np.inf)]  # the best beam before that frame, with probability zero
        assert hyps[1] == cn.beam_search(lp[:, 1], top_k=3, token_min_log_prob=-np.inf, **options)


def test_a_prefix_whose_last_label_is_impossible_at_a_frame_only_ends_in_a_blank_there():
    # label 1 is impossible at frame 1: [1] has no path 1 1 1, only 1 blank blank and the like
    lp = np.log(np.array([[0.1, 0.8, 0.1], [0.5, 1.0, 0.5], [0.1, 0.8, 0.1]]))
    lp[1, 1] = -np.inf
    exact = _labeling_log_probs(lp, 0)
    hyps = cn.beam_search(lp, beam_width=64, top_k=20, token_min_log_prob=-np.inf, beam_prune_log_prob=-np.inf)
    assert sorted(labels for labels, _ in hyps) == sorted(list(k) for k, v in exact.items() if v > -np.inf)
    for labels, score in hyps:
        assert score == pytest.approx(exact[tuple(labels)], abs=1e-12)
    assert cn.beam_search(lp, beam_width=64, top_k=20, token_min_log_prob=-np.inf, beam_prune_log_prob=-np.inf,
                          lm=_neutral_lm) == hyps


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_nan_or_inf_on_a_used_frame_is_refused_and_past_the_length_never_read(bad, rng):
    lp = log_softmax(rng.standard_normal((8, 2, 5)))
    lp[5:, 1] = bad  # past item 1's length
    expected_greedy = [cn.greedy_decode(lp[:, 0]), cn.greedy_decode(lp[:5, 1])]
    assert cn.greedy_decode(lp, [8, 5]) == expected_greedy
    for options in ({}, {"lm": _neutral_lm}):
        assert cn.beam_search(lp, [8, 5], top_k=2, **options) == [cn.beam_search(lp[:, 0], top_k=2, **options),
                                                                  cn.beam_search(lp[:5, 1], top_k=2, **options)]
    lp[2, 1, 3] = bad
    message = rf"log_probs\[2, 1, 3\] = {bad}: decoding needs log-probabilities \(finite or -inf\) .* \(batch index 1\)"
    for call in (lambda: cn.greedy_decode(lp, [8, 5]), lambda: cn.beam_search(lp, [8, 5]),
                 lambda: cn.beam_search(lp, [8, 5], lm=_neutral_lm)):
        with pytest.raises(CTCInputError, match=message):
            call()


def test_forced_align_names_nan_on_its_paths(rng):
    lp = log_softmax(rng.standard_normal((6, 1, 4)))
    lp[2, 0, 0] = np.nan  # the blank, which every path of [1, 2] in 6 frames must use somewhere
    with pytest.raises(CTCInputError, match=r"item 0 cannot be aligned: its log_probs hold NaN"):
        cn.forced_align(lp, [[1, 2]], [6], [2])


# A child process lays log-probs out item after item, each item's frames in a row, so that
# the last item's frames t >= its length lie on a page that cannot be read: any read there
# kills the child (SIGSEGV).
_GUARDED_CHILD = r"""
import ctypes, json, mmap, sys
import numpy as np
import ctckit.numpy as cn

values = np.asarray(json.loads(sys.argv[1]))
lengths, dtype = json.loads(sys.argv[2]), np.dtype(sys.argv[3])
frames, size, classes = values.shape
page = mmap.PAGESIZE
buffer = mmap.mmap(-1, 2 * page)
address = ctypes.addressof(ctypes.c_char.from_buffer(buffer))
libc = ctypes.CDLL(None, use_errno=True)
libc.mprotect.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int)
if libc.mprotect(ctypes.c_void_p(address + page), page, 0) != 0:
    raise OSError(ctypes.get_errno(), "mprotect")
memory = np.frombuffer(buffer, dtype=dtype, count=page // dtype.itemsize)
start = memory.shape[0] - (frames * classes * (size - 1) + lengths[-1] * classes)
for n in range(size):
    used = values[: frames if n < size - 1 else lengths[-1], n].ravel()
    memory[start + n * frames * classes: start + n * frames * classes + used.shape[0]] = used
item = dtype.itemsize
lp = np.lib.stride_tricks.as_strided(memory[start:], shape=(frames, size, classes),
                                     strides=(classes * item, frames * classes * item, item))
targets, target_lengths = [[1, 2], [3, 0]], [2, 1]
out = {
    "greedy": cn.greedy_decode(lp, lengths),
    "beam": cn.beam_search(lp, lengths, top_k=3),
    "beam_lm": cn.beam_search(lp, lengths, top_k=3, lm=lambda prefix, label: 0.0),
    "align": cn.forced_align(lp, targets, lengths, target_lengths)[0].tolist(),
    "posteriors": cn.ctc_posteriors(lp, targets, lengths, target_lengths)[: lengths[-1], -1].tolist(),
}
print(json.dumps(out))
"""


@pytest.mark.parametrize("dtype", ["float32", "float64", "float16"])
def test_frames_past_the_length_are_never_read(dtype, rng):
    import json
    import subprocess
    import sys

    lp = log_softmax(rng.standard_normal((7, 2, 5))).astype(dtype)
    lengths = [7, 4]
    child = subprocess.run([sys.executable, "-c", _GUARDED_CHILD, json.dumps(lp.astype(float).tolist()),
                            json.dumps(lengths), dtype], capture_output=True, text=True, timeout=300)
    assert child.returncode == 0, f"the child died (return code {child.returncode}): {child.stderr[-2000:]}"
    got = json.loads(child.stdout)
    safe = lp.copy()
    safe[4:, 1] = np.nan
    targets, target_lengths = [[1, 2], [3, 0]], [2, 1]
    assert got["greedy"] == cn.greedy_decode(safe, lengths)
    assert [[(h[0], h[1]) for h in hyps] for hyps in got["beam"]] == cn.beam_search(safe, lengths, top_k=3)
    assert [[(h[0], h[1]) for h in hyps] for hyps in got["beam_lm"]] == cn.beam_search(safe, lengths, top_k=3, lm=_neutral_lm)
    assert got["align"] == cn.forced_align(safe, targets, lengths, target_lengths)[0].tolist()
    np.testing.assert_allclose(got["posteriors"], cn.ctc_posteriors(safe, targets, lengths, target_lengths)[:4, 1], atol=1e-6)


@pytest.mark.parametrize("beam_width", [2**31, 2**40, 2**63 - 1, np.uint64(2**63)])
def test_a_beam_beyond_the_memory_bound_is_refused_before_anything_is_allocated(beam_width, rng):
    lp = log_softmax(rng.standard_normal((30, 8)))
    message = (r"beam_width = \d+ and top_k = 1 on N = 1 items of up to T = 30 frames and C = 8 classes could need "
               r"[\d.]+ GiB, more than the 1 GiB limit: lower beam_width \(at most \d+ fits")
    for options in ({}, {"lm": _neutral_lm}):
        with pytest.raises(CTCInputError, match=message):
            cn.beam_search(lp, beam_width=beam_width, **options)


def test_results_beyond_the_memory_bound_are_refused():
    lp = np.full((600, 300, 30), np.log(1 / 30), dtype=np.float32)
    with pytest.raises(CTCInputError, match=r"top_k = 1000 .* could need .* GiB"):
        cn.beam_search(lp, beam_width=1000, top_k=1000)


@pytest.mark.parametrize("blank", [0, 1])
def test_beam_width_and_top_k_beyond_every_labeling_are_clamped(blank, rng):
    lp = log_softmax(1.5 * rng.standard_normal((4, 3)))
    exact = sorted(_labeling_log_probs(lp, blank).items(), key=lambda kv: -kv[1])
    assert len(exact) == 15  # every labeling of at most 4 labels from 2 that fits 4 frames
    for options in ({}, {"lm": _neutral_lm}):
        hyps = cn.beam_search(lp, beam_width=2**63 - 1, blank=blank, top_k=2**40, token_min_log_prob=-np.inf,
                              beam_prune_log_prob=-np.inf, **options)
        assert [tuple(labels) for labels, _ in hyps] == [labels for labels, _ in exact]
        np.testing.assert_allclose([score for _, score in hyps], [score for _, score in exact], atol=1e-12)


def test_a_beam_of_a_few_thousand_is_usable_and_exact(rng):
    lp = log_softmax(rng.standard_normal((7, 4)))  # 3280 labelings of at most 7 labels from 3
    exact = sorted(_labeling_log_probs(lp, 0).items(), key=lambda kv: -kv[1])[:5]
    hyps = cn.beam_search(lp, beam_width=4096, top_k=5, token_min_log_prob=-np.inf, beam_prune_log_prob=-np.inf)
    assert [tuple(labels) for labels, _ in hyps] == [labels for labels, _ in exact]
    np.testing.assert_allclose([score for _, score in hyps], [score for _, score in exact], atol=1e-12)


def test_ties_go_to_the_earlier_candidate(rng):
    # uniform frames: after frame 1 [], [1], [2], [3] tie, the beam [] first; after frame 2, [1]
    # (kept by two paths) leads, and the current beams come before the new prefixes they tie with
    lp = np.log(np.full((2, 4), 0.25))
    for options in ({}, {"lm": _neutral_lm}):
        search = lambda frames, width: cn.beam_search(lp[:frames], beam_width=width, top_k=width, token_min_log_prob=-np.inf,
                                                      beam_prune_log_prob=-np.inf, **options)
        assert [labels for labels, _ in search(1, 2)] == [[], [1]]
        assert [labels for labels, _ in search(1, 3)] == [[], [1], [2]]
        assert [labels for labels, _ in search(2, 2)] == [[1], []]
        hyps = search(2, 6)  # the first frame keeps all four: [1], [2], [3] tie, then [] and the new ones
        assert [labels for labels, _ in hyps] == [[1], [2], [3], [], [1, 2], [1, 3]]
        assert len({score for _, score in hyps[:3]}) == 1 and len({score for _, score in hyps[3:]}) == 1


@pytest.mark.parametrize("options,error,message", [
    ({"beam_width": 2.0}, TypeError, r"beam_width must be an int, got float"),
    ({"beam_width": True}, TypeError, r"beam_width must be an int, got bool"),
    ({"top_k": "3"}, TypeError, r"top_k must be an int, got str"),
    ({"top_k": 0}, CTCInputError, r"top_k must be a positive int, got 0"),
    ({"token_min_log_prob": "x"}, TypeError, r"token_min_log_prob must be a real number, got str"),
    ({"token_min_log_prob": np.nan}, CTCInputError, r"token_min_log_prob must be a number, not NaN, got nan"),
    ({"beam_prune_log_prob": 10**400}, CTCInputError, r"beam_prune_log_prob must be <= 0 \(a margin below the best"),
    ({"beam_prune_log_prob": None}, TypeError, r"beam_prune_log_prob must be a real number, got NoneType"),
    ({"lm_weight": -1.0}, CTCInputError, r"lm_weight must be >= 0, got -1.0"),
    ({"lm_weight": np.inf}, CTCInputError, r"lm_weight must be finite"),
    ({"hotword_weight": [2.0]}, TypeError, r"hotword_weight must be a real number, got list"),
    ({"hotword_weight": np.nan}, CTCInputError, r"hotword_weight must be a number, not NaN"),
    ({"lm": "bigram"}, TypeError, r"lm must be a callable"),
    ({"hotwords": [[1, 0]]}, CTCInputError, r"hotwords\[0\]\[1\] = 0 must be a label in \[0, C\) = \[0, 5\), not the blank \(0\)"),
    ({"hotwords": [[2], [9]]}, CTCInputError, r"hotwords\[1\]\[0\] = 9 must be a label"),
    ({"hotwords": [1, 2]}, CTCInputError, r"hotwords\[0\] must be a 1-D sequence of labels"),
    ({"hotwords": "ab"}, TypeError, r"hotwords must be a sequence of label sequences, got str"),
    ({"hotwords": [[1.5]]}, TypeError, r"hotwords\[0\] must hold integers"),
    ({"lm": lambda prefix, label: float("nan")}, CTCInputError, r"lm returned nan for label \d after 0 labels"),
    ({"lm": lambda prefix, label: "high"}, TypeError, r"lm must return a float, got str"),
])
def test_beam_search_options_are_checked(options, error, message, rng):
    lp = log_softmax(rng.standard_normal((10, 2, 5)))
    with pytest.raises(error, match=message):
        cn.beam_search(lp, **options)


@pytest.mark.parametrize("call,error,message", [
    (lambda lp: cn.greedy_decode(lp, [10, 2**70]), CTCInputError, r"input_lengths"),
    (lambda lp: cn.greedy_decode(lp, np.array([10, 2**63], dtype=np.uint64)), CTCInputError,
     r"input_lengths\[1\] = 9223372036854775808 is outside \[0, T\] = \[0, 10\] \(batch index 1\)"),
    (lambda lp: cn.greedy_decode(lp[:, 0], np.uint64(2**63)), CTCInputError, r"input_lengths = 9223372036854775808 is outside"),
    (lambda lp: cn.beam_search(lp, [10.0, 3.0]), TypeError, r"input_lengths must hold integers"),
    (lambda lp: cn.greedy_decode(lp, [3]), CTCInputError, r"input_lengths must have shape \(2,\)"),
    (lambda lp: cn.greedy_decode(lp, blank=True), TypeError, r"blank must be an int, got bool"),
    (lambda lp: cn.beam_search(lp, blank=-1), CTCInputError, r"blank must be in \[0, C\) = \[0, 5\), got -1"),
    (lambda lp: cn.greedy_decode([[0.0, 1.0], [2.0]]), CTCInputError, r"log_probs must be a \(T, N, C\) or \(T, C\) array"),
    (lambda lp: cn.beam_search(lp.astype(np.int64)), TypeError, r"log_probs must be a floating-point array, got dtype int64"),
    (lambda lp: cn.greedy_decode(lp.astype(np.complex64)), TypeError, r"log_probs must be a floating-point array"),
    (lambda lp: cn.merge_tokens([0, 1, 1], ["a", "b", "c"]), TypeError, r"scores must hold real log-probs"),
    (lambda lp: cn.merge_tokens([0.0, 1.0], [0.0, 0.0]), TypeError, r"alignment must hold integer class indices"),
    (lambda lp: cn.merge_tokens([[0, 1], [1]], [0.0, 0.0]), CTCInputError, r"merge_tokens takes a 1-D alignment"),
    (lambda lp: cn.merge_tokens([0, -2, 1], [0.0] * 3), CTCInputError, r"alignment\[1\] = -2: a frame's class must be >= 0"),
    (lambda lp: cn.merge_tokens([0, 1], [0.0, 0.0], blank=-1), CTCInputError, r"blank must be a class index"),
    (lambda lp: cn.merge_tokens([0, 1], [0.0, 0.0], blank="0"), TypeError, r"blank must be an int"),
])
def test_decoder_arguments_are_checked(call, error, message, rng):
    lp = log_softmax(rng.standard_normal((10, 2, 5)))
    with pytest.raises(error, match=message):
        call(lp)


@pytest.mark.parametrize("dtype", [np.float16, ">f4", ">f8", np.longdouble])
def test_decoders_take_every_float_dtype_the_loss_takes(dtype, rng):
    lp = log_softmax(rng.standard_normal((9, 2, 5))).astype(dtype)
    compute = np.float32 if np.dtype(dtype).itemsize < 4 else np.float64  # as the loss: byte-swapped float32 in float64
    same = lp.astype(compute)
    targets, lengths, target_lengths = [[1, 2], [3, 0]], [9, 6], [2, 1]
    cn.ctc_loss(lp, targets, lengths, target_lengths)  # the loss takes it
    assert cn.greedy_decode(lp, lengths) == cn.greedy_decode(same, lengths)
    assert cn.beam_search(lp, lengths, top_k=3) == cn.beam_search(same, lengths, top_k=3)
    alignment, scores = cn.forced_align(lp, targets, lengths, target_lengths)
    np.testing.assert_array_equal(alignment, cn.forced_align(same, targets, lengths, target_lengths)[0])
    np.testing.assert_array_equal(cn.ctc_posteriors(lp, targets, lengths, target_lengths),
                                  cn.ctc_posteriors(same, targets, lengths, target_lengths))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float8_e4m3fn, torch.float8_e5m2])
def test_torch_decoders_take_every_float_dtype_the_loss_takes(dtype, rng):
    lp = torch.from_numpy(log_softmax(rng.standard_normal((9, 2, 5)))).to(dtype)
    ct.ctc_loss(lp, torch.tensor([[1, 2], [3, 0]]), [9, 6], [2, 1])
    same = lp.float()
    assert ct.greedy_decode(lp, [9, 6]) == ct.greedy_decode(same, [9, 6])
    assert ct.beam_search(lp, [9, 6], top_k=2) == ct.beam_search(same, [9, 6], top_k=2)


def test_the_partial_selection_keeps_the_best_in_candidate_order(rng):
    from ctckit._core.beam import _compact

    patterns = [lambda size: rng.integers(0, 4, size), lambda size: rng.standard_normal(size), np.arange,
                lambda size: -np.arange(size), lambda size: np.minimum(np.arange(size), size - np.arange(size)),
                lambda size: np.arange(size) % 7, lambda size: np.zeros(size)]
    for trial in range(300):
        size = int(rng.integers(2, 400))
        width = int(rng.integers(1, size))
        totals = patterns[trial % len(patterns)](size).astype(np.float64)
        best = sorted(range(size), key=lambda a: (-totals[a], a))[:width]  # ties to the earlier candidate
        kept_totals, origins, labels = totals.copy(), np.arange(size), -np.arange(size)
        threshold = _compact(kept_totals, origins, labels, size, width, np.empty(size))
        assert origins[:width].tolist() == sorted(best) and labels[:width].tolist() == [-a for a in sorted(best)]
        np.testing.assert_array_equal(kept_totals[:width], totals[sorted(best)])
        assert threshold == totals[best[-1]]


@pytest.mark.parametrize("dtype", ["float16", "bfloat16", "float32", "float64"])
def test_forced_align_scores_come_in_the_dtype_of_log_probs(dtype):
    """As the docstring says, and as ctckit.torch does (half types are computed in float32)."""
    import ml_dtypes

    numpy_dtype = np.dtype(getattr(ml_dtypes, dtype) if dtype == "bfloat16" else dtype)
    log_probs = log_softmax(np.random.default_rng(6).standard_normal((8, 2, 5))).astype(numpy_dtype)
    args = ([[1, 2], [3, 3]], [8, 7], [2, 2])
    alignments, scores = cn.forced_align(log_probs, *args)
    assert scores.dtype == numpy_dtype
    compute = np.float32 if numpy_dtype.itemsize < 4 else numpy_dtype
    wide_alignments, wide_scores = cn.forced_align(log_probs.astype(compute), *args)
    np.testing.assert_array_equal(alignments, wide_alignments)
    np.testing.assert_array_equal(scores, wide_scores.astype(numpy_dtype))
    torch_scores = ct.forced_align(torch.from_numpy(log_probs.astype(np.float32)).to(getattr(torch, dtype)),
                                   torch.tensor(args[0]), torch.tensor(args[1]), torch.tensor(args[2]))[1]
    assert str(torch_scores.dtype) == f"torch.{dtype}"


def test_a_frontend_that_calls_its_targets_labels_is_named_so():
    from ctckit._inputs import check_shapes, check_values

    shapes = check_shapes((5, 1, 4), (1, 2), (1,), (1,), "logits")
    with pytest.raises(TypeError, match="^labels must have an integer dtype"):
        check_values(shapes, np.ones((1, 2), np.float32), np.array([5]), np.array([2]), 0, labels="labels")
