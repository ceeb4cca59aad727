"""float32 inputs give float64-quality answers: peaky inputs, long sequences, no false inf."""

import numpy as np
import pytest

import ctckit.numpy as cn
import reference as ref
from conftest import log_softmax


def _problem(rng, frames, classes, length, scale, batch=2):
    lp = log_softmax(scale * rng.standard_normal((frames, batch, classes))).astype(np.float32)
    targets = rng.integers(1, classes, (batch, length))
    return lp, targets, [frames] * batch, [length] * batch


def _relative_errors(lp, targets, il, tl):
    loss, grad = cn.ctc_loss_and_grad(lp, targets, il, tl, reduction="none")
    loss_only = cn.ctc_loss(lp, targets, il, tl, reduction="none")
    lp64 = lp.astype(np.float64)
    labels = [list(row) for row in targets]
    exact = ref.batch_nll(lp64, labels, il)
    exact_grad = ref.batch_grad(lp64, labels, il)
    assert np.isfinite(exact).all()
    return (
        np.max(np.abs(loss - exact) / np.abs(exact)),
        np.max(np.abs(loss_only - exact) / np.abs(exact)),
        np.max(np.abs(grad - exact_grad)) / np.max(np.abs(exact_grad)),
    )


@pytest.mark.parametrize("frames,classes,length,scale", [
    (100, 10, 30, 1e4),   # log-probs down to about -1e4: peaky outputs
    (300, 5, 60, 3e3),
    (500, 32, 150, 1.0),
    (2000, 64, 500, 1.0),  # where torch's float32 kernel is about 1e-2 off
    (2000, 16, 400, 1e4),
])
def test_float32_within_1e_5_of_float64_reference(frames, classes, length, scale):
    rng = np.random.default_rng(frames + classes)
    loss_err, loss_only_err, grad_err = _relative_errors(*_problem(rng, frames, classes, length, scale))
    assert loss_err < 1e-5 and loss_only_err < 1e-5
    assert grad_err < 1e-5


def test_very_long_sequences_give_no_false_inf():
    # T=10000, S=2000: rescaling alone loses the relevant states (eq. 14 catches it).
    rng = np.random.default_rng(7)
    lp, targets, il, tl = _problem(rng, 10000, 32, 2000, 1.0, batch=1)
    loss = cn.ctc_loss(lp, targets, il, tl, reduction="none")
    exact = ref.batch_nll(lp.astype(np.float64), [list(targets[0])], il)
    assert np.isfinite(loss).all()
    np.testing.assert_allclose(loss, exact, rtol=1e-5)


def test_one_to_one_alignment_closed_form(rng):
    lp = log_softmax(rng.standard_normal((8, 1, 12)))
    labels = rng.permutation(np.arange(1, 12))[:8]
    loss, grad = cn.ctc_loss_and_grad(lp, labels[None], [8], [8], reduction="sum")
    assert loss == pytest.approx(-lp[np.arange(8), 0, labels].sum(), rel=1e-13)
    expected = np.zeros_like(lp)
    expected[np.arange(8), 0, labels] = -1.0
    np.testing.assert_allclose(grad, expected, atol=1e-12)


def test_minimal_alignment_of_repeats_is_forced(rng):
    # "a a" in 3 frames has exactly one path: a, blank, a.
    lp = log_softmax(rng.standard_normal((3, 1, 4)))
    loss = cn.ctc_loss(lp, [[2, 2]], [3], [2], reduction="sum")
    assert loss == pytest.approx(-(lp[0, 0, 2] + lp[1, 0, 0] + lp[2, 0, 2]), rel=1e-13)


@pytest.mark.parametrize("frames,classes", [(1, 2), (3, 3), (4, 3), (5, 3)])
def test_kernel_equals_brute_force(frames, classes):
    rng = np.random.default_rng(frames * classes)
    lp = log_softmax(rng.standard_normal((frames, 1, classes)))
    for blank in range(classes):
        non_blank = [c for c in range(classes) if c != blank]
        for length in range(frames + 1):
            labels = list(rng.choice(non_blank, size=length))
            got = cn.ctc_loss(lp, np.array([labels + [0]], dtype=np.int64), [frames], [length], blank, "sum")
            want = ref.brute_force_nll(lp[:, 0], labels, blank)
            if np.isinf(want):
                assert got == np.inf
            else:
                assert got == pytest.approx(want, rel=1e-12)


@pytest.mark.parametrize("seed", range(8))
def test_targets_spanning_many_blocks_match_reference(seed):
    # Targets of 40-140 labels cross several blocks of states (ctckit._core.loss.BLOCK);
    # repeats, masked classes, peaky frames and ragged lengths all meet the boundaries.
    from ctckit._core.loss import BLOCK

    rng = np.random.default_rng(seed)
    batch, classes, blank = 3, int(rng.integers(3, 40)), int(rng.integers(0, 3))
    non_blank = [c for c in range(classes) if c != blank]
    labels = []
    for _ in range(batch):
        seq = [int(rng.choice(non_blank))]
        while len(seq) < int(rng.integers(BLOCK + 8, 4 * BLOCK + 12)):
            seq.append(seq[-1] if rng.random() < 0.25 else int(rng.choice(non_blank)))
        labels.append(seq)
    needed = [len(l) + sum(a == b for a, b in zip(l, l[1:])) for l in labels]
    input_lengths = np.array([n + int(rng.integers(0, 3 * BLOCK)) for n in needed])
    input_lengths[-1] = needed[-1] - 1  # one infeasible item
    frames = int(input_lengths.max())
    scale = [1.0, 4.0, 30.0][seed % 3]
    lp = log_softmax(scale * rng.standard_normal((frames, batch, classes)))
    if seed % 2:
        lp[rng.random(lp.shape) < 0.05] = -np.inf  # masked entries, some on needed labels
    padded = np.zeros((batch, max(map(len, labels))), dtype=np.int64)
    for n, seq in enumerate(labels):
        padded[n, : len(seq)] = seq
    target_lengths = [len(l) for l in labels]
    loss, grad = cn.ctc_loss_and_grad(lp, padded, input_lengths, target_lengths, blank, reduction="none")
    loss_only = cn.ctc_loss(lp, padded, input_lengths, target_lengths, blank, reduction="none")
    expected = ref.batch_nll(lp, labels, input_lengths, blank)
    assert np.isinf(expected[-1])
    np.testing.assert_array_equal(np.isinf(loss), np.isinf(expected))
    finite = np.isfinite(expected)
    np.testing.assert_allclose(loss[finite], expected[finite], rtol=1e-10)
    np.testing.assert_allclose(loss_only[finite], expected[finite], rtol=1e-10)
    np.testing.assert_allclose(grad, ref.batch_grad(lp, labels, input_lengths, blank), atol=1e-9)
