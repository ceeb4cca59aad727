"""The float64 oracle itself, checked against brute force and closed forms."""

import numpy as np
import pytest
from conftest import log_softmax

import reference as ref


@pytest.mark.parametrize("frames,classes,blank", [(1, 2, 0), (3, 3, 0), (4, 3, 2), (5, 3, 1), (6, 2, 0)])
def test_reference_equals_brute_force(frames, classes, blank):
    rng = np.random.default_rng(frames * 10 + classes + blank)
    lp = log_softmax(rng.standard_normal((frames, classes)))
    non_blank = [c for c in range(classes) if c != blank]
    for length in range(0, frames + 1):
        for _ in range(3):
            labels = list(rng.choice(non_blank, size=length))
            assert ref.ctc_nll(lp, labels, blank) == pytest.approx(ref.brute_force_nll(lp, labels, blank), rel=1e-12, abs=1e-12)


def test_reference_gradient_matches_finite_differences(rng):
    lp = rng.standard_normal((6, 4))  # not normalised: the exact gradient must still hold
    labels = [1, 1, 3]
    grad = ref.ctc_grad(lp, labels, blank=0)
    eps = 1e-6
    numeric = np.zeros_like(lp)
    for index in np.ndindex(lp.shape):
        up, down = lp.copy(), lp.copy()
        up[index] += eps
        down[index] -= eps
        numeric[index] = (ref.ctc_nll(up, labels) - ref.ctc_nll(down, labels)) / (2 * eps)
    np.testing.assert_allclose(grad, numeric, atol=1e-7)


def test_reference_one_to_one_alignment_closed_form(rng):
    # T == L with no repeats: the only path is the target itself (optax's oracle).
    lp = log_softmax(rng.standard_normal((5, 7)))
    labels = [3, 1, 4, 6, 2]
    assert ref.ctc_nll(lp, labels) == pytest.approx(-lp[np.arange(5), labels].sum(), rel=1e-13)
    expected = np.zeros_like(lp)
    expected[np.arange(5), labels] = -1.0
    np.testing.assert_allclose(ref.ctc_grad(lp, labels), expected, atol=1e-12)


def test_reference_infeasible_is_inf():
    lp = np.zeros((2, 3))
    assert ref.ctc_nll(lp, [1, 1]) == np.inf  # repeats need a blank between them: 3 frames
    assert ref.brute_force_nll(lp, [1, 1]) == np.inf
