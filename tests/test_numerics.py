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


_NAN_WORKSPACES = """
import numpy as np
real_empty = np.empty
def nan_empty(shape, dtype=float, **kwargs):
    out = real_empty(shape, dtype=dtype, **kwargs)
    if out.dtype.kind == "f":
        out.fill(np.nan)
    return out
np.empty = nan_empty  # every workspace the kernels allocate starts as NaN
import sys
sys.path.insert(0, "tests")
import reference as ref
from ctckit._core import loss
from ctckit._core.loss import items as per_item
from conftest import log_softmax
one_scale_labels, stored_rows_limit = per_item.ONE_SCALE_LABELS, per_item.STORED_ROWS_LIMIT

rng = np.random.default_rng(11)
frames = 80
nan = lambda shape: np.full(shape, np.nan)
# peaky inputs (the block-scaled and log-space passes); ordinary ones with an empty and a
# short target (the one-scale passes), one item shorter than the batch; an infeasible item
# (40 labels in 30 frames: the early return). Outputs start as NaN as well: each item
# zeroes its own part on every frame, the scatter zeroes each row. The last two runs have
# no one-scale passes and keep the gradient's forward rows in segments of 5 frames (as
# long items do), recomputed from checkpoints.
for scale, lengths, input_lengths, segmented in ((30.0, [40, 40], [80, 80], False), (1.0, [0, 7], [80, 50], False),
                                                 (1.0, [3, 40], [80, 30], False), (30.0, [40, 40], [80, 80], True),
                                                 (1.0, [17, 40], [77, 80], True)):
    per_item.ONE_SCALE_LABELS, per_item.STORED_ROWS_LIMIT = (0, 0) if segmented else (one_scale_labels, stored_rows_limit)
    assert (per_item._segment_frames(80, 40) == 5) == segmented
    lp = log_softmax(scale * rng.standard_normal((frames, 2, 5)))
    targets = rng.integers(1, 5, (2, max(lengths)))
    labels = [list(row[:n]) for row, n in zip(targets, lengths)]
    feasible = [len(labels[n]) <= input_lengths[n] for n in range(2)]
    expected = np.array([ref.batch_nll(lp, labels, input_lengths)[n] if feasible[n] else np.inf for n in range(2)])
    expected_grad = ref.batch_grad(lp, [labels[n] if feasible[n] else [] for n in range(2)], input_lengths)
    expected_grad[:, [not f for f in feasible]] = 0.0
    offsets, item_frames, item_lengths = np.array([0, targets.shape[1]]), np.array(input_lengths), np.array(lengths)
    for mode in (loss.GRAD_NONE, loss.GRAD_DENSE, loss.GRAD_COMPACT):
        nll, status = nan(2), np.zeros(2, np.int8)
        grad = nan(lp.shape if mode == loss.GRAD_DENSE else (1, 1, 1))
        post = nan((frames, 2 * targets.shape[1] + 2) if mode == loss.GRAD_COMPACT else (1, 1))
        loss.ctc_loss_batch(lp, targets.reshape(-1), offsets, item_frames, item_lengths, 0, mode, False, np.ones(2), nll,
                            grad, post, status)
        np.testing.assert_allclose(nll, expected, rtol=1e-10)
        if mode == loss.GRAD_DENSE:
            np.testing.assert_allclose(grad, expected_grad, atol=1e-9)
        if mode == loss.GRAD_COMPACT:
            assert not np.isnan(post).any()  # the padding's columns too
            scattered = nan(lp.shape)
            loss.scatter_posteriors(post, targets.reshape(-1), offsets, item_frames, item_lengths, 0, np.ones(2), scattered)
            np.testing.assert_allclose(scattered, expected_grad, atol=1e-9)
print("ok")
"""


def test_workspaces_are_never_read_before_written():
    # The kernels allocate their workspaces with np.empty. Run them as plain Python
    # (NUMBA_DISABLE_JIT=1, which also covers the jitted code) with every workspace NaN.
    import os
    import subprocess
    import sys

    result = subprocess.run([sys.executable, "-c", _NAN_WORKSPACES], capture_output=True, text=True,
                            env={**os.environ, "NUMBA_DISABLE_JIT": "1"}, cwd=os.path.dirname(os.path.dirname(__file__)))
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip() == "ok"


@pytest.mark.parametrize("frames,length,want_grad", [(2000, 500, True), (2000, 500, False), (10000, 2000, True), (10000, 2000, False)])
def test_ordinary_long_inputs_stay_on_the_rescaled_path(frames, length, want_grad):
    # Exactness never depends on this (a rejected item is recomputed in log space), speed
    # does: ordinary log-softmax outputs must not be rejected, however long.
    from ctckit._core import loss

    rng = np.random.default_rng(frames)
    lp = log_softmax(rng.standard_normal((frames, 1, 32))).astype(np.float32)
    targets = rng.integers(1, 32, length)
    mode = loss.GRAD_COMPACT if want_grad else loss.GRAD_NONE
    nll, status = np.empty(1), np.empty(1, np.int8)
    post = np.zeros((frames, length + 1) if want_grad else (1, 1), np.float32)
    loss.ctc_loss_batch(lp, targets, np.zeros(1, np.int64), np.array([frames]), np.array([length]), 0, mode, False,
                        np.ones(1), nll, np.zeros((1, 1, 1), np.float32), post, status)
    assert np.isfinite(nll).all()
    assert status[0] == loss.STATUS_OK
    # The loss-only pass checks these (a state falls below 1e-290 of its block near
    # t = 1000) with a backward pass down to the frame before: still exact.
    assert nll[0] == pytest.approx(ref.ctc_nll(lp[:, 0].astype(np.float64), targets.tolist()), rel=1e-12)


def test_vectorised_exp_matches_libm():
    from ctckit._core.vexp import vexp_shifted
    src = np.concatenate([-np.linspace(0, 750, 20001), [-np.inf, np.nan, 3.0]])
    out = np.empty_like(src)
    vexp_shifted(src, 0.5, out)
    expected = np.exp(np.minimum(src - 0.5, 0.0))
    expected[src - 0.5 < -708] = 0.0
    finite = np.isfinite(src)
    np.testing.assert_allclose(out[finite], expected[finite], rtol=5e-16, atol=0)
    assert out[-3] == 0.0 and np.isnan(out[-2]) and out[-1] == 1.0  # -inf, NaN, positive clamped to 0


def _lagging_path_input(labels, half, lag_cost):
    """Log-probs (2 half, 1, labels + 2) and targets 1..labels: both halves' frames favour
    the labels in order, two frames each; the blank costs ``lag_cost`` nats a frame in the
    first half and 100 in the second."""
    lp = np.full((2 * half, 1, labels + 2), -1000.0)
    for t in range(half):
        lp[t, 0, 1 + t // 2] = lp[half + t, 0, 1 + t // 2] = 0.0
        lp[t, 0, 0], lp[half + t, 0, 0] = -lag_cost, -100.0
    return lp, np.arange(1, labels + 1)


@pytest.mark.parametrize("want_grad", [False, True])
def test_a_lagging_path_lost_to_underflow_is_caught_and_recomputed(want_grad):
    """Frames 0-19 favour emitting the labels at once (lagging behind costs 40 nats a frame:
    e^-800 of the leading states, below the float64 range); frames 20-39 favour the labels
    again and make staying at the end cost 100 nats a frame. The lagging path wins by far;
    the rescaled pass loses it, its check notices, and log space gives the exact loss."""
    from ctckit._core import loss

    labels, half = 10, 20
    lp, targets = _lagging_path_input(labels, half, lag_cost=40.0)
    mode = loss.GRAD_COMPACT if want_grad else loss.GRAD_NONE
    nll, status = np.empty(1), np.empty(1, np.int8)
    post = np.zeros((2 * half, labels + 1) if want_grad else (1, 1))
    loss.ctc_loss_batch(lp, targets, np.zeros(1, np.int64), np.array([2 * half]), np.array([labels]), 0, mode, False,
                        np.ones(1), nll, np.zeros((1, 1, 1)), post, status)
    assert status[0] == loss.STATUS_RECOMPUTED
    assert nll[0] == pytest.approx(ref.ctc_nll(lp[:, 0], targets.tolist()), rel=1e-14)


def _run_core(lp, targets, frames, length, mode):
    """One item through the core driver: (nll, status, gradient output)."""
    from ctckit._core import loss

    nll, status = np.empty(1), np.empty(1, np.int8)
    grad = np.zeros(lp.shape if mode == loss.GRAD_DENSE else (1, 1, 1), lp.dtype)
    post = np.zeros((frames, length + 1) if mode == loss.GRAD_COMPACT else (1, 1), lp.dtype)
    loss.ctc_loss_batch(lp, np.asarray(targets), np.zeros(1, np.int64), np.array([frames]), np.array([length]), 0, mode,
                        False, np.ones(1), nll, grad, post, status)
    return nll[0], status[0], grad if mode == loss.GRAD_DENSE else post


@pytest.mark.parametrize("frames,length", [(50, 0), (50, 1), (100, 40), (500, 150), (2000, 120)])
@pytest.mark.parametrize("mode", ["none", "dense"])
def test_short_items_take_the_one_scale_passes_and_stay_exact(frames, length, mode):
    # Speed depends on ordinary short items staying on the one-scale passes (the block-scaled
    # passes would give the same result, slower); exactness is checked against float64. At
    # T = 2000, L = 120 the loss-only pass meets a state at risk and checks itself backwards.
    from ctckit._core import loss

    rng = np.random.default_rng(frames + length)
    lp = log_softmax(rng.standard_normal((frames, 1, 32))).astype(np.float32)
    targets = rng.integers(1, 32, length)
    code = loss.GRAD_NONE if mode == "none" else loss.GRAD_DENSE
    nll, status, grad = _run_core(lp, targets, frames, length, code)
    assert status == loss.STATUS_ONE_SCALE
    lp64 = lp[:, 0].astype(np.float64)
    assert nll == pytest.approx(ref.ctc_nll(lp64, targets.tolist()), rel=1e-12)
    if mode == "dense":
        exact = ref.ctc_grad(lp64, targets.tolist())
        np.testing.assert_allclose(grad[:, 0], exact, rtol=0, atol=1e-6 * np.abs(exact).max())


@pytest.mark.parametrize("mode", ["none", "dense", "compact"])
def test_a_path_lost_by_one_scale_per_row_is_kept_by_the_blocks(mode):
    """Frames 0-199 emit the 100 labels at once for free, a blank costs 5 nats; frames
    200-399 emit them again, and now a blank costs 100 nats. The winning path waits on the
    first blank through the first half (e^-1000 behind the leading states by frame 200):
    one scale per row loses it (e^-709 is the end of float64) and gives up, the block-scaled
    passes keep it in block 0 with that block's own scale (the labels past 63 are in block
    1), and the result is exact without the log-space fallback. In dense mode, the frames
    the one-scale gradient pass wrote before giving up must not leak into the result."""
    from ctckit._core import loss

    labels, half = 100, 200
    lp, targets = _lagging_path_input(labels, half, lag_cost=5.0)
    code = {"none": loss.GRAD_NONE, "dense": loss.GRAD_DENSE, "compact": loss.GRAD_COMPACT}[mode]
    nll, status, out = _run_core(lp, targets, 2 * half, labels, code)
    assert status == loss.STATUS_OK
    assert nll == pytest.approx(ref.ctc_nll(lp[:, 0], targets.tolist()), rel=1e-12)
    if mode == "dense":
        np.testing.assert_allclose(out[:, 0], ref.ctc_grad(lp[:, 0], targets.tolist()), rtol=0, atol=1e-9)


def _core_batch(lp, targets, input_lengths, target_lengths, mode):
    """The core driver on a padded batch: (nll, status, dense gradient); compact posteriors
    are scattered into the dense gradient."""
    from ctckit._core import loss

    batch, width = targets.shape
    offsets = np.arange(batch, dtype=np.int64) * width
    frames, lengths = np.asarray(input_lengths, np.int64), np.asarray(target_lengths, np.int64)
    nll, status = np.empty(batch), np.empty(batch, np.int8)
    grad = np.empty(lp.shape if mode == loss.GRAD_DENSE else (1, 1, 1))
    post = np.empty((lp.shape[0], targets.size + batch) if mode == loss.GRAD_COMPACT else (1, 1))
    flat = np.ascontiguousarray(targets, np.int64).reshape(-1)
    loss.ctc_loss_batch(lp, flat, offsets, frames, lengths, 0, mode, False, np.ones(batch), nll, grad, post, status)
    if mode == loss.GRAD_COMPACT:
        grad = np.empty(lp.shape)
        loss.scatter_posteriors(post, flat, offsets, frames, lengths, 0, np.ones(batch), grad)
    return nll, status, grad


@pytest.mark.parametrize("scale", [1.0, 4.0])
@pytest.mark.parametrize("mode", ["dense", "compact"])
def test_long_items_recompute_their_forward_rows_in_segments_exactly(scale, mode):
    # Past loss.items.STORED_ROWS_LIMIT the gradient keeps one forward row per segment of about
    # sqrt(T) / 2 frames and recomputes each segment's rows during the backward pass. Two
    # items of different lengths (T = 601 and 450; neither divides into whole segments),
    # 280-300 labels (5 blocks of states), ordinary and peakier inputs.
    from ctckit._core import loss
    from ctckit._core.loss import items as per_item

    rng = np.random.default_rng(int(scale))
    lengths, input_lengths = [300, 280], [601, 450]
    for frames, length in zip(input_lengths, lengths):
        span = per_item._segment_frames(frames, length)
        assert span < frames and frames % span != 0
    lp = log_softmax(scale * rng.standard_normal((601, 2, 40)))
    targets = rng.integers(1, 40, (2, 300))
    labels = [list(row[:n]) for row, n in zip(targets, lengths)]
    code = loss.GRAD_DENSE if mode == "dense" else loss.GRAD_COMPACT
    nll, status, grad = _core_batch(lp, targets, input_lengths, lengths, code)
    assert (status == loss.STATUS_OK).all()  # the rescaled passes, not the log-space fallback
    np.testing.assert_allclose(nll, ref.batch_nll(lp, labels, input_lengths), rtol=1e-12)
    np.testing.assert_allclose(grad, ref.batch_grad(lp, labels, input_lengths), rtol=0, atol=1e-10)


@pytest.mark.parametrize("mode", ["none", "dense", "compact"])
def test_a_batch_of_long_targets_does_not_compile_the_first_round(monkeypatch, mode):
    # Before the one-scale round's kernel is compiled, a batch in which no item is short
    # enough for it starts every item in the block-scaled round: that round must then
    # also settle what the first round otherwise settles (an infeasible target). Once the
    # first round is compiled it runs on every batch, long targets included, with the
    # same results.
    from ctckit._core import addresses, loss
    from ctckit._core.loss import batch as rounds, items as per_item

    monkeypatch.setattr(addresses, "_addresses", {})  # as in a fresh process
    rng = np.random.default_rng(3)
    lp = log_softmax(rng.standard_normal((601, 2, 40)))
    targets = rng.integers(1, 40, (2, 300))
    lengths, input_lengths = [300, 280], [601, 200]  # item 1 needs more frames than it has
    assert min(lengths) >= per_item.ONE_SCALE_LABELS
    labels = [list(row[:n]) for row, n in zip(targets, lengths)]
    code = {"none": loss.GRAD_NONE, "dense": loss.GRAD_DENSE, "compact": loss.GRAD_COMPACT}[mode]
    first_round = rounds._GRADIENT_ROUNDS[0] if code != loss.GRAD_NONE else rounds._LOSS_ROUNDS[0]
    expected_nll = ref.batch_nll(lp, labels, input_lengths)
    assert np.isfinite(expected_nll[0]) and expected_nll[1] == np.inf
    results = []
    for batch in ("long targets only", "with a short item first"):
        if batch == "with a short item first":
            _core_batch(lp[:50, :1], targets[:1, :10], [50], [10], code)
        nll, status, grad = _core_batch(lp, targets, input_lengths, lengths, code)
        compiled = {function for function, _ in addresses._addresses}
        assert (first_round in compiled) == (batch == "with a short item first")
        assert (status == loss.STATUS_OK).all()
        np.testing.assert_allclose(nll, expected_nll, rtol=1e-12)
        if code != loss.GRAD_NONE:
            np.testing.assert_allclose(grad, ref.batch_grad(lp, labels, input_lengths), rtol=0, atol=1e-10)
        results.append((nll, grad))
    np.testing.assert_array_equal(results[0][0], results[1][0])
    np.testing.assert_array_equal(results[0][1], results[1][1])


def test_a_lost_path_in_a_segmented_item_is_recomputed_in_log_space():
    # The lagging path above (10 labels, frames 0-39), then 52960 frames that favour the
    # blank: long enough for the gradient's segments, with the lost path in the first one.
    # The last segment's backward pass succeeds; the first segment, recomputed from its
    # checkpoint, fails eq. 14, and the item goes to log space, with nothing of the failed
    # attempt left in the gradient.
    from ctckit._core import loss
    from ctckit._core.loss import items as per_item

    labels, frames = 10, 53000
    lagging, targets = _lagging_path_input(labels, 20, lag_cost=40.0)
    lp = np.full((frames, 1, labels + 2), -1000.0)
    lp[:, 0, 0] = 0.0
    lp[:40] = lagging
    assert 40 <= per_item._segment_frames(frames, labels) < frames  # several segments; frames 0-39 in the first
    nll, status, grad = _run_core(lp, targets, frames, labels, loss.GRAD_DENSE)
    assert status == loss.STATUS_RECOMPUTED
    assert nll == pytest.approx(ref.ctc_nll(lp[:, 0], targets.tolist()), rel=1e-14)
    np.testing.assert_allclose(grad[:, 0], ref.ctc_grad(lp[:, 0], targets.tolist()), rtol=0, atol=1e-9)

@pytest.mark.parametrize("mode", ["none", "dense", "compact"])
def test_one_scale_rows_on_the_band_of_complete_paths_match_the_reference(mode):
    # The one-scale passes compute, at frame t, only the states that lie on some complete
    # path (reachable from the start, and able to reach the end in the frames left), and
    # write only those labels' posteriors. Items whose band is tight at both ends: as many
    # labels as frames (a single path), repeats that need every frame but one, an input
    # shorter than the batch's, an empty target, and ordinary ones.
    from ctckit._core import loss

    rng = np.random.default_rng(21)
    frames, classes = 40, 9
    items = [
        (40, [1 + k % 2 for k in range(40)]),
        (40, [3] * 20),
        (25, list(rng.integers(1, classes, 20))),
        (40, []),
        (17, list(rng.integers(1, classes, 5))),
        (40, list(rng.integers(1, 4, 30))),
    ]
    lp = log_softmax(rng.standard_normal((frames, len(items), classes)))
    targets = np.zeros((len(items), frames), np.int64)
    for n, (_, labels) in enumerate(items):
        targets[n, :len(labels)] = labels
    input_lengths, target_lengths = [t for t, _ in items], [len(labels) for _, labels in items]
    code = {"none": loss.GRAD_NONE, "dense": loss.GRAD_DENSE, "compact": loss.GRAD_COMPACT}[mode]
    nll, status, grad = _core_batch(lp, targets, input_lengths, target_lengths, code)
    exact = [ref.ctc_nll(lp[:t, n], labels) for n, (t, labels) in enumerate(items)]
    assert np.isfinite(exact).all()
    np.testing.assert_allclose(nll, exact, rtol=1e-12)
    assert (status == loss.STATUS_ONE_SCALE).all()
    if mode != "none":
        exact_grad = np.zeros_like(lp)
        for n, (t, labels) in enumerate(items):
            exact_grad[:t, n] = ref.ctc_grad(lp[:t, n], labels)
        np.testing.assert_allclose(grad, exact_grad, rtol=0, atol=1e-12)


def test_unmanaged_views_share_the_owner_memory():
    from numba import njit

    from ctckit._core.intrinsics import keep_alive, unmanaged

    @njit
    def fill(size):
        owner = np.zeros(size)
        view = unmanaged(owner)
        rows = view[2:8].reshape((2, 3))  # views of an unmanaged view are unmanaged too
        for t in range(2):
            row = rows[t]
            for i in range(3):
                row[i] = 10 * t + i
        view[0] = view[1:].sum()
        keep_alive(owner)
        return owner

    out = fill(10)
    np.testing.assert_array_equal(out[2:8], [0, 1, 2, 10, 11, 12])
    assert out[0] == 36 and out[1] == 0 and out[8:].sum() == 0


def test_a_compiled_function_called_through_its_address():
    # The batch drivers call each round's per-item kernel through a pointer: arguments and
    # result must arrive intact, and an exception raised in the callee must reach Python.
    from numba import njit

    from ctckit._core.addresses import address_of
    from ctckit._core.intrinsics import call_compiled
    from ctckit._core.loss.batch import _ITEM_RESULT

    @njit
    def scaled_sum(values, factor, start):
        if factor < 0:
            raise ValueError("negative factor")
        return values[start:].sum() * factor, np.int64(values.shape[0] - start)

    @njit
    def caller(address, values, factor, start):
        return call_compiled((0.0, 0), address, (values, factor, start))

    values = np.arange(5.0)
    arguments = (values, 2.0, np.int64(1))
    address = address_of(scaled_sum, arguments, _ITEM_RESULT)
    assert caller(address, values, 2.0, np.int64(1)) == (20.0, 4)
    assert caller(address, values, 0.5, np.int64(3)) == (3.5, 2)
    with pytest.raises(ValueError, match="negative factor"):
        caller(address, values, -1.0, np.int64(0))


@pytest.mark.parametrize("frames,classes,length", [(20, 4, 4), (60, 8, 20), (800, 6, 300), (40, 50, 10), (700, 40, 300)])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_classes_no_target_uses_do_not_influence_anything(frames, classes, length, dtype):
    """Whatever finite (or infinite, or NaN) value a class that no target uses holds, the
    loss and the gradient are those of the clean input, bit for bit, in both paths: with
    fewer classes than labels (whole rows exponentiated) and more (labels gathered), one
    scale per row and blocks."""
    rng = np.random.default_rng(frames + classes)
    lp = log_softmax(rng.standard_normal((frames, 2, classes))).astype(dtype)
    used = [1, 2, 3] if classes > 4 else [1, 2]
    targets = rng.choice(used, (2, length))
    unused = [c for c in range(1, classes) if c not in used]
    expected = (cn.ctc_loss(lp, targets, [frames] * 2, [length] * 2, reduction="none"),
                *cn.ctc_loss_and_grad(lp, targets, [frames] * 2, [length] * 2, reduction="none"))
    assert np.isfinite(expected[0]).all()
    np.testing.assert_allclose(expected[0], ref.batch_nll(lp.astype(np.float64), [list(t) for t in targets], [frames] * 2),
                               rtol=1e-5 if dtype == np.float32 else 1e-12)
    for value in (1e4, 1e12, 1e20, 1e30, np.finfo(dtype).max, np.inf, np.nan):
        poisoned = lp.copy()
        poisoned[frames // 2, :, unused[-1]] = value
        poisoned[rng.integers(0, frames, frames // 3), 0, unused[0]] = value
        got = (cn.ctc_loss(poisoned, targets, [frames] * 2, [length] * 2, reduction="none"),
               *cn.ctc_loss_and_grad(poisoned, targets, [frames] * 2, [length] * 2, reduction="none"))
        for a, b in zip(got, expected):
            assert a.tobytes() == b.tobytes(), value
