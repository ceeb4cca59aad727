"""Forced alignment in bounded memory (checkpointed Viterbi): the same alignment and scores,
bit for bit, as the kernel that keeps every back-pointer, and a long recording aligned
in a fraction of the memory that would take. Then the wildcard label."""

import itertools

import numpy as np
import pytest

import reference as ref

import ctckit.numpy as cn
from ctckit import CTCInputError
from ctckit._core import align


def log_softmax(x):
    return x - np.logaddexp.reduce(x, axis=-1, keepdims=True)


def reference_viterbi(lp, labels, blank):
    """The best path of one (T, C) item, by the recursion over every state (no band),
    vectorised with NumPy: ties to the smallest jump, the final blank over the final label."""
    ext = np.full(2 * len(labels) + 1, blank)
    ext[1::2] = labels
    width = ext.shape[0]
    can_skip = np.zeros(width, dtype=bool)
    can_skip[3::2] = ext[3::2] != ext[1:-2:2]
    delta = np.full(width, -np.inf)
    delta[:2] = lp[0, ext[:2]].astype(np.float64)
    back = np.zeros((lp.shape[0], width), dtype=np.int64)
    for t in range(1, lp.shape[0]):
        stacked = np.stack([delta, np.r_[-np.inf, delta[:-1]], np.where(can_skip, np.r_[-np.inf, -np.inf, delta[:-2]], -np.inf)])
        back[t] = stacked.argmax(0)
        delta = stacked.max(0) + lp[t, ext].astype(np.float64)
    s = width - 2 if width > 1 and delta[-2] > delta[-1] else width - 1
    path = np.empty(lp.shape[0], dtype=np.int64)
    for t in range(lp.shape[0] - 1, -1, -1):
        path[t] = ext[s]
        s -= back[t, s]
    return path


def _both(monkeypatch, *args, budget=0):
    """``forced_align(*args)`` as it is (small items: every back-pointer kept), then with the
    budget lowered to ``budget`` bytes."""
    unbounded = cn.forced_align(*args)
    with monkeypatch.context() as patch:
        patch.setattr(align, "MAX_BACK_POINTER_BYTES", budget)
        bounded = cn.forced_align(*args)
    return unbounded, bounded


def _assert_bitwise(first, second):
    for a, b in zip(first, second):
        assert a.dtype == b.dtype and a.shape == b.shape
        assert a.tobytes() == b.tobytes()


def _targets(rng, size, length, classes, blank, repeats=0.0):
    """(size, length) labels in [0, C) without the blank; each label repeats the one before
    it with probability ``repeats``."""
    others = np.array([c for c in range(classes) if c != blank])
    targets = others[rng.integers(0, others.shape[0], (size, length))]
    for k in range(1, length):
        again = rng.random(size) < repeats
        targets[again, k] = targets[again, k - 1]
    return targets


def _needed(labels):
    return len(labels) + int(np.sum(labels[1:] == labels[:-1]))


@pytest.mark.parametrize("seed", range(8))
def test_bounded_equals_unbounded_and_the_reference_on_random_batches(seed, monkeypatch):
    rng = np.random.default_rng(seed)
    frames, size, classes = int(rng.integers(20, 120)), 4, int(rng.integers(3, 12))
    blank = int(rng.integers(0, classes))
    dtype = (np.float32, np.float64)[seed % 2]
    lp = log_softmax(rng.standard_normal((frames, size, classes)) * 3).astype(dtype)
    target_lengths = rng.integers(0, frames // 3, size)
    targets = _targets(rng, size, int(target_lengths.max()) + 1, classes, blank, repeats=0.3)
    input_lengths = np.array([max(_needed(targets[n, :target_lengths[n]]), int(rng.integers(1, frames + 1))) for n in range(size)])
    unbounded, bounded = _both(monkeypatch, lp, targets, input_lengths, target_lengths, blank)
    _assert_bitwise(unbounded, bounded)
    for n in range(size):
        expected = reference_viterbi(lp[:input_lengths[n], n], targets[n, :target_lengths[n]], blank)
        np.testing.assert_array_equal(bounded[0][n, :input_lengths[n]], expected)
        assert (bounded[0][n, input_lengths[n]:] == -1).all()


@pytest.mark.parametrize("segment", [1, 2, 3, 5, 16, 39, 40, 41, 1000])
def test_every_segment_length_gives_the_unbounded_result(segment):
    # the kernels themselves, with the checkpoint spacing forced: frame 0, segment ends at
    # T-1, segments longer than the item, one frame per segment
    rng = np.random.default_rng(segment)
    frames, classes, blank = 41, 6, 2
    lp = log_softmax(rng.standard_normal((frames, 1, classes)) * 2).astype(np.float32)
    labels = _targets(rng, 1, 12, classes, blank, repeats=0.3)[0]
    cancel = np.zeros(1, dtype=np.int64)
    results = []
    for kernel, extra in ((align._viterbi_item, ()), (align._viterbi_item_bounded, (segment,))):
        alignment, scores = np.full(frames, -1, dtype=np.int64), np.zeros(frames, dtype=np.float32)
        best = kernel(lp, 0, frames, blank, labels, -1, 0.0, alignment, scores, cancel, *extra)
        results.append((alignment, scores, np.float64(best)))
    _assert_bitwise(*results)
    assert results[0][2] == pytest.approx(results[0][1].astype(np.float64).sum(), abs=1e-9)


def test_all_tied_log_probs_choose_the_same_earliest_path(monkeypatch):
    # every path equally probable: the choice is the tie-breaking alone; each label as early
    # as possible, then the final blank to the end
    frames, classes, blank = 30, 5, 2
    lp = np.full((frames, 3, classes), np.log(1 / classes), dtype=np.float32)
    targets = np.array([[1, 3, 3, 4], [4, 4, 4, 4], [0, 1, 0, 3]])
    unbounded, bounded = _both(monkeypatch, lp, targets, [30, 30, 9], [4, 4, 4], blank)
    _assert_bitwise(unbounded, bounded)
    assert bounded[0][0].tolist() == [1, 3, 2, 3, 4] + [2] * 25
    assert bounded[0][1].tolist() == [4, 2, 4, 2, 4, 2, 4] + [2] * 23
    assert bounded[0][2, :9].tolist() == [0, 1, 0, 3, 2, 2, 2, 2, 2]


def test_ties_between_all_three_predecessors_go_to_staying(monkeypatch):
    # the blank impossible at the last frame: the path ends in the last label, which it can
    # enter from itself, from the blank before it or from the label before that, every way
    # equally probable: it stays, so it entered as early as it could
    frames, classes, blank = 6, 4, 0
    lp = np.full((frames, 2, classes), np.log(1 / classes))
    lp[-1, :, blank] = -np.inf
    unbounded, bounded = _both(monkeypatch, lp, [[1, 2], [3, 3]], [6, 6], [2, 2], blank)
    _assert_bitwise(unbounded, bounded)
    assert bounded[0].tolist() == [[1, 2, 2, 2, 2, 2], [3, 0, 3, 3, 3, 3]]


def test_ties_with_minus_inf_and_masked_classes(monkeypatch, rng):
    # ties between -inf predecessors, and classes impossible on some frames
    frames, classes, blank = 60, 7, 3
    lp = np.round(log_softmax(rng.standard_normal((frames, 2, classes))), 1)  # many equal sums
    lp[rng.random(lp.shape) < 0.15] = -np.inf
    lp[:, :, blank] = np.maximum(lp[:, :, blank], -1.0)
    targets = np.array([[1, 1, 2, 4, 4, 4, 6, 0], [5, 0, 5, 0, 1, 1, 2, 2]])
    try:
        unbounded, bounded = _both(monkeypatch, lp, targets, [60, 45], [8, 8], blank)
    except CTCInputError:
        pytest.fail("a feasible draw was expected")
    _assert_bitwise(unbounded, bounded)
    for n, length in enumerate([60, 45]):
        np.testing.assert_array_equal(bounded[0][n, :length], reference_viterbi(lp[:length, n], targets[n], blank))


def test_an_impossible_item_raises_the_same_error_either_way(monkeypatch, rng):
    lp = log_softmax(rng.standard_normal((20, 1, 4)))
    lp[:, 0, 2] = -np.inf  # label 2 never possible
    for budget in (align.MAX_BACK_POINTER_BYTES, 0):
        with monkeypatch.context() as patch:
            patch.setattr(align, "MAX_BACK_POINTER_BYTES", budget)
            with pytest.raises(CTCInputError, match=r"item 0 cannot be aligned: every path"):
                cn.forced_align(lp, [[1, 2]], [20], [2])


@pytest.mark.parametrize("labels", [[1], [2, 2], [1, 2, 1, 2], [3, 3, 3, 1, 1], [1, 2, 3, 4, 5, 6]])
def test_minimal_length_items_take_their_only_path(labels, monkeypatch, rng):
    # T = L + R: one path, each label one frame and one blank between repeats
    blank, classes = 0, 7
    frames = _needed(np.array(labels))
    lp = log_softmax(rng.standard_normal((frames, classes))).astype(np.float32)
    unbounded, bounded = _both(monkeypatch, lp, labels, frames, len(labels), blank)
    _assert_bitwise(unbounded, bounded)
    only = [labels[0]]
    for previous, label in zip(labels, labels[1:]):
        only += [blank, label] if label == previous else [label]
    assert bounded[0].tolist() == only
    np.testing.assert_array_equal(bounded[1], lp[np.arange(frames), only])


def test_empty_targets_and_single_frames(monkeypatch, rng):
    lp = log_softmax(rng.standard_normal((7, 3, 4)))
    unbounded, bounded = _both(monkeypatch, lp, [[0, 0], [2, 0], [3, 1]], [7, 1, 2], [0, 1, 2], 0)
    _assert_bitwise(unbounded, bounded)
    assert bounded[0][0].tolist() == [0] * 7 and bounded[0][1, 0] == 2 and bounded[0][2, :2].tolist() == [3, 1]


def test_a_batch_mixing_bounded_and_unbounded_items(monkeypatch, rng):
    # a budget between the items' sizes: the long items go the bounded way, the short not
    frames, size, classes, blank = 400, 6, 9, 4
    lp = log_softmax(rng.standard_normal((frames, size, classes)) * 2).astype(np.float32)
    input_lengths = np.array([400, 50, 390, 10, 300, 5])
    target_lengths = np.array([120, 10, 100, 3, 80, 1])
    targets = _targets(rng, size, 120, classes, blank, repeats=0.2)
    cells = input_lengths * (2 * target_lengths + 1)
    budget = 2000
    assert (cells > budget).any() and (cells <= budget).any()
    unbounded, mixed = _both(monkeypatch, lp, targets, input_lengths, target_lengths, blank, budget=budget)
    _assert_bitwise(unbounded, mixed)
    with monkeypatch.context() as patch:  # and on ctckit's threads (the call above: on Numba's, or the caller's)
        patch.setattr(align, "MAX_BACK_POINTER_BYTES", budget)
        patch.setattr("ctckit._core.pool.OPENMP_COST", 0)
        patch.setattr("ctckit._core.pool.SERIAL_COST", 0)
        _assert_bitwise(unbounded, cn.forced_align(lp, targets, input_lengths, target_lengths, blank))


def peaky_recording(frames, length, classes=32, blank=16, seed=0):
    """``(log_probs (T, C) float32, labels, path)``: a random target of ``length`` labels
    (no blank; the blank in the middle of the class range) and a random path of ``frames``
    frames that collapses to it; each frame's log-probs put the path's class at least 4
    above every other class (uniform noise in [0, 1) plus 5), so that path is the unique
    best of all paths, and so the forced alignment."""
    rng = np.random.default_rng(seed)
    labels = _targets(rng, 1, length, classes, blank, repeats=0.05)[0]
    states = np.full(2 * length + 1, blank)
    states[1::2] = labels
    least = np.zeros(states.shape[0], dtype=np.int64)
    least[1::2] = 1
    least[2:-1:2] = labels[1:] == labels[:-1]
    counts = least + rng.multinomial(frames - int(least.sum()), np.full(states.shape[0], 1 / states.shape[0]))
    path = np.repeat(states, counts)
    logits = rng.random((frames, classes), dtype=np.float32)
    logits[np.arange(frames), path] += 5.0
    return log_softmax(logits).astype(np.float32), labels, path


def test_a_long_recording_recovers_its_known_path_in_bounded_memory():
    # 60,000 frames, 20,000 labels: every back-pointer would take 2.4 GB
    frames, length = 60_000, 20_000
    lp, labels, path = peaky_recording(frames, length)
    assert frames * (2 * length + 1) > align.MAX_BACK_POINTER_BYTES
    alignment, scores = cn.forced_align(lp, labels, frames, length, blank=16)
    np.testing.assert_array_equal(alignment, path)
    np.testing.assert_array_equal(scores, lp[np.arange(frames), path])


_MEASURE = """
import numpy as np
import ctckit.numpy as cn
from ctckit._core import align
from test_align_bounded import peaky_recording
lp, labels, path = peaky_recording({frames}, {length})
align.MAX_BACK_POINTER_BYTES = {budget}
def run():
    assert (cn.forced_align(lp, labels, {frames}, {length}, blank=16)[0] == path).all()
"""


def test_the_budget_bounds_the_peak_memory():
    # 20,000 frames, 6,000 labels: 240 MB of back-pointers under the default budget
    # (measured: about 200 MB of peak growth); lowered to 1 MiB, checkpoints every 400
    # frames and one segment of back-pointers (measured: about 10 MB)
    import sys
    from pathlib import Path

    from ctckit._bench_common import peak_rss_growth

    frames, length = 20_000, 6_000
    setup = f"import sys; sys.path.insert(0, {str(Path(__file__).parent)!r})\n"
    growth = {budget: peak_rss_growth(setup + _MEASURE.format(frames=frames, length=length, budget=budget))
              for budget in (align.MAX_BACK_POINTER_BYTES, 1 << 20)}
    assert None not in growth.values(), f"the measuring process failed ({sys.executable})"
    assert growth[align.MAX_BACK_POINTER_BYTES] > 120e6
    assert growth[1 << 20] < 40e6


# The wildcard: label C, scored ``wildcard`` on every frame, as a constant class appended to
# log_probs.


def _with_wildcard_class(lp, score):
    column = np.full(lp.shape[:-1] + (1,), score, dtype=lp.dtype)
    return np.concatenate([lp, column], axis=-1)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("budget", [None, 0])
def test_a_wildcard_is_a_constant_class_appended_to_log_probs(dtype, budget, monkeypatch, rng):
    frames, size, classes, blank = 80, 4, 6, 3
    lp = log_softmax(rng.standard_normal((frames, size, classes)) * 3).astype(dtype)
    targets = np.array([[6, 1, 2, 6, 4, 5, 6], [1, 6, 6, 2, 0, 0, 0], [6, 0, 0, 0, 0, 0, 0], [1, 2, 4, 5, 0, 1, 0]])
    input_lengths, target_lengths = [80, 40, 7, 3], [7, 4, 1, 0]
    score = -2.3  # not a float32: rounded to one, as the appended column is
    if budget is not None:
        monkeypatch.setattr(align, "MAX_BACK_POINTER_BYTES", budget)
    got = cn.forced_align(lp, targets, input_lengths, target_lengths, blank, wildcard=score)
    expected = cn.forced_align(_with_wildcard_class(lp, score), targets, input_lengths, target_lengths, blank)
    _assert_bitwise(got, expected)
    assert (got[0] == classes).sum() >= 6 and (got[1][got[0] == classes] == dtype(score)).all()


@pytest.mark.parametrize("score", [-2.3, -0.1])
def test_the_wildcard_score_is_rounded_as_the_appended_column_would_be(score):
    # every class scores float32(score) too: a wildcard that scored the unrounded value
    # would win or lose every tie that the tie-breaking decides here
    lp = np.full((12, 4), score, dtype=np.float32)
    got = cn.forced_align(lp, [1, 4, 2], 12, 3, 0, wildcard=score)
    _assert_bitwise(got, cn.forced_align(_with_wildcard_class(lp, score), [1, 4, 2], 12, 3, 0))


@pytest.mark.parametrize("seed", range(8))
def test_a_wildcard_alignment_is_the_brute_force_best_path(seed):
    rng = np.random.default_rng(seed)
    frames, classes = 6, 3
    blank = seed % classes
    score = float(rng.choice([0.0, -0.7, -2.0]))
    lp = log_softmax(rng.standard_normal((frames, classes)) * 2)
    non_blank = [c for c in range(classes) if c != blank]
    labels = [int(c) for c in rng.choice(non_blank + [classes], size=int(rng.integers(1, 4)))]
    if classes not in labels:
        labels[int(rng.integers(0, len(labels)))] = classes
    if _needed(np.array(labels)) > frames:
        labels = labels[:2]
    full = _with_wildcard_class(lp, score)
    best = max(full[np.arange(frames), list(p)].sum() for p in itertools.product(range(classes + 1), repeat=frames)
               if ref.collapse(p, blank) == labels)
    alignment, scores = cn.forced_align(lp, labels, frames, len(labels), blank, wildcard=score)
    assert ref.collapse(alignment.tolist(), blank) == labels
    np.testing.assert_array_equal(scores, full[np.arange(frames), alignment])
    assert scores.sum() == pytest.approx(best, abs=1e-12)


def test_a_wildcard_takes_an_untranscribed_stretch(rng):
    # frames 10-18 speak labels 3, 4, 5, which the target leaves out: the wildcard (label 8)
    # takes those frames, blanks included (a blank would split it in two), and every other
    # frame keeps its class
    path = np.array([1, 1, 1, 0, 0, 2, 2, 2, 0, 0] + [3, 3, 0, 4, 4, 0, 5, 5, 5, 0] + [6, 6, 6, 0, 0, 7, 7, 7, 0, 0])
    logits = rng.random((30, 8))
    logits[np.arange(30), path] += 5.0  # the path's class about -0.1, every other below -4
    lp = log_softmax(logits)
    alignment, scores = cn.forced_align(lp, [1, 2, 8, 6, 7], 30, 5, 0, wildcard=-2.0)
    expected = path.copy()
    expected[10:19] = 8
    assert alignment.tolist() == expected.tolist()
    assert (scores[10:19] == -2.0).all()


@pytest.mark.parametrize("wildcard, blank, targets, message", [
    (np.nan, 0, [[1, 5]], r"wildcard must be a number, not NaN"),
    (np.inf, 0, [[1, 5]], r"wildcard must be a finite log-score \(in float32\)"),
    (-1e300, 0, [[1, 5]], r"wildcard must be a finite log-score \(in float32\)"),
    (-1.0, 5, [[1, 2]], r"blank must be in \[0, C\) = \[0, 5\), got 5 \(C is the wildcard's label\)"),
    (None, 0, [[1, 5]], r"targets\[0, 1\] \(batch index 0\) = 5 is outside"),
    (-1.0, 0, [[1, 6]], r"targets\[0, 1\] \(batch index 0\) = 6 is outside"),
])
def test_wildcard_arguments_are_checked(wildcard, blank, targets, message, rng):
    lp = log_softmax(rng.standard_normal((10, 1, 5))).astype(np.float32)
    with pytest.raises(CTCInputError, match=message):
        cn.forced_align(lp, targets, [10], [2], blank, wildcard=wildcard)
    with pytest.raises(TypeError, match="wildcard must be a real number"):
        cn.forced_align(lp, [[1, 2]], [10], [2], wildcard="0")


def test_the_torch_frontend_takes_the_wildcard_too():
    torch = pytest.importorskip("torch")
    import ctckit.torch as ct

    rng = np.random.default_rng(5)
    log_probs = np.log(rng.dirichlet(np.ones(5), size=(30, 2))).astype(np.float32)
    targets, lengths, target_lengths = np.array([[1, 5, 2], [3, 4, 0]]), np.array([30, 25]), np.array([3, 2])
    want = cn.forced_align(log_probs, targets, lengths, target_lengths, wildcard=-1.0)
    got = ct.forced_align(torch.from_numpy(log_probs), torch.from_numpy(targets), torch.from_numpy(lengths),
                          torch.from_numpy(target_lengths), wildcard=-1.0)
    np.testing.assert_array_equal(got[0].numpy(), want[0])
    np.testing.assert_array_equal(got[1].numpy(), want[1])
    assert (want[0][0] == 5).sum() >= 1  # the wildcard took frames
    with pytest.raises(CTCInputError, match="wildcard"):
        ct.forced_align(torch.from_numpy(log_probs), targets, lengths, target_lengths, wildcard=float("nan"))
