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
    options = dict(beam_width=beam_width, top_k=top_k, token_min_log_prob=token_min, beam_prune_log_prob=prune)
    fast = cn.beam_search(lp, [40, 30, 20], **options)
    slow = cn.beam_search(lp, [40, 30, 20], lm=lambda prefix, label: 0.0, **options)
    for a, b in zip(fast, slow):
        assert [h[0] for h in a] == [h[0] for h in b]
        np.testing.assert_allclose([h[1] for h in a], [h[1] for h in b], atol=1e-9)


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
