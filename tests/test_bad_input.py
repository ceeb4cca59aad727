"""Every bad input raises a clear error naming the argument (and batch index) before any kernel."""

import numpy as np
import pytest
import torch

import ctckit.numpy as cn
import ctckit.torch as ct
from ctckit import CTCInputError

T, N, C, S = 6, 3, 5, 4
LP = torch.randn(T, N, C).log_softmax(2)
TARGETS = torch.tensor([[1, 2, 3, 4], [1, 1, 0, 0], [2, 0, 0, 0]])
IL = torch.tensor([6, 5, 4])
TL = torch.tensor([4, 2, 1])


def call(frontend, lp=LP, targets=TARGETS, il=IL, tl=TL, **kwargs):
    if frontend == "numpy":
        convert = lambda x: x.numpy() if isinstance(x, torch.Tensor) else x
        return cn.ctc_loss(convert(lp), convert(targets), convert(il), convert(tl), **kwargs)
    return ct.ctc_loss(lp, targets, il, tl, **kwargs)


FRONTENDS = pytest.mark.parametrize("frontend", ["torch", "numpy"])

VALUE_ERRORS = [
    (dict(lp=torch.randn(T, N, C, 2)), r"log_probs must be \(T, N, C\) or unbatched \(T, C\), got 4 dimensions"),
    (dict(lp=torch.randn(T)), r"log_probs must be .* got 1 dimensions"),
    (dict(lp=torch.randn(0, N, C)), r"log_probs must not be empty"),
    (dict(lp=torch.randn(T, N, 0)), r"log_probs must not be empty"),
    (dict(il=torch.tensor([6, 5])), r"input_lengths must have shape \(N,\) = \(3,\)"),
    (dict(tl=torch.tensor([[4, 2, 1]])), r"target_lengths must have shape \(N,\) = \(3,\)"),
    (dict(targets=torch.zeros(2, 4, dtype=torch.long)), r"targets padded as \(N, S\) must have N = 3 rows"),
    (dict(targets=torch.zeros(3, 4, 1, dtype=torch.long)), r"targets must be \(N, S\) or concatenated"),
    (dict(il=torch.tensor([6, -1, 4])), r"input_lengths\[1\] = -1 is negative \(batch index 1\)"),
    (dict(tl=torch.tensor([4, 2, -3])), r"target_lengths\[2\] = -3 is negative \(batch index 2\)"),
    (dict(il=torch.tensor([6, 7, 4])), r"input_lengths\[1\] = 7 exceeds the number of frames T = 6 \(batch index 1\)"),
    (dict(tl=torch.tensor([4, 5, 1])), r"target_lengths\[1\] = 5 exceeds the padded target length S = 4 \(batch index 1\)"),
    (dict(targets=torch.tensor([1, 2, 3, 4, 1, 1])), r"concatenated targets must have sum\(target_lengths\) = 7 elements, got 6"),
    (dict(targets=torch.tensor([[1, 2, 3, 4], [1, 9, 0, 0], [2, 0, 0, 0]])), r"targets\[1, 1\] \(batch index 1\) = 9 is outside \[0, C\) = \[0, 5\)"),
    (dict(targets=torch.tensor([[1, 2, 3, 4], [1, 1, 0, 0], [-2, 0, 0, 0]])), r"targets\[2, 0\] \(batch index 2\) = -2 is outside"),
    (dict(targets=torch.tensor([[1, 2, 0, 4], [1, 1, 0, 0], [2, 0, 0, 0]])), r"targets\[0, 2\] \(batch index 0\) = 0 equals blank \(0\)"),
    (dict(targets=torch.tensor([1, 2, 3, 4, 1, 1, 7])), r"targets\[6\] \(batch index 2\) = 7 is outside"),
    (dict(blank=5), r"blank must be in \[0, C\) = \[0, 5\), got 5"),
    (dict(blank=-1), r"blank must be in \[0, C\)"),
    (dict(reduction="avg"), r"reduction must be one of \('none', 'mean', 'sum'\), got 'avg'"),
]


@FRONTENDS
@pytest.mark.parametrize("kwargs,message", VALUE_ERRORS)
def test_bad_values_raise_ctc_input_error(frontend, kwargs, message):
    with pytest.raises(CTCInputError, match=message):
        call(frontend, **kwargs)


TYPE_ERRORS = [
    (dict(lp=torch.zeros(T, N, C, dtype=torch.long)), r"log_probs must be a floating-point"),
    (dict(targets=TARGETS.float()), r"targets must have an integer dtype"),
    (dict(il=IL.float()), r"input_lengths must have an integer dtype"),
    (dict(tl=[4.0, 2.0, 1.0]), r"target_lengths must hold integers, got a sequence of float64"),
    (dict(il=[6, True, 4]), r"input_lengths must hold integers"),
    (dict(blank=0.0), r"blank must be an int, got float"),
    (dict(blank=True), r"blank must be an int, got bool"),
]


@FRONTENDS
@pytest.mark.parametrize("kwargs,message", TYPE_ERRORS)
def test_bad_types_raise_type_error(frontend, kwargs, message):
    with pytest.raises(TypeError, match=message):
        call(frontend, **kwargs)


def test_padding_beyond_target_length_is_not_checked():
    targets = TARGETS.clone()
    targets[2, 1:] = 1000  # padding: never read
    assert torch.isfinite(call("torch", targets=targets, reduction="sum"))


@FRONTENDS
def test_concatenated_lengths_whose_int64_sum_wraps_around_are_caught(frontend):
    """(2^63 - 1) + (2^63 - 1) + 9 is 7 modulo 2^64, the number of targets: a check that
    summed in int64 would accept these lengths and read far outside ``targets``."""
    huge = 2**63 - 1
    targets = torch.tensor([1, 2, 3, 4, 1, 1, 2])
    with pytest.raises(CTCInputError, match=rf"sum\(target_lengths\) = {2 * huge + 9} elements, got 7"):
        call(frontend, targets=targets, il=torch.tensor([6, 6, 6]), tl=torch.tensor([huge, huge, 9]))


def test_unbatched_lengths_must_be_single():
    with pytest.raises(CTCInputError, match=r"input_lengths must be a single length for unbatched log_probs"):
        ct.ctc_loss(LP[:, 0], TARGETS[0], [6, 6], 4)


def test_bad_gradient_option():
    with pytest.raises(CTCInputError, match=r"gradient must be one of \('exact', 'torch'\)"):
        ct.ctc_loss(LP, TARGETS, IL, TL, gradient="approx")
    with pytest.raises(CTCInputError, match=r"gradient must be one of"):
        cn.ctc_loss_and_grad(LP.numpy(), TARGETS.numpy(), IL.numpy(), TL.numpy(), gradient="approx")
    with pytest.raises(CTCInputError, match=r"reduction must be one of"):
        ct.CTCLoss(reduction="avg")


def test_errors_are_raised_before_any_kernel(monkeypatch):
    import ctckit._core as core

    def forbidden(*args, **kwargs):
        raise AssertionError("the kernel ran on bad input")

    monkeypatch.setattr(core, "ctc_loss_batch", forbidden)
    for kwargs, message in VALUE_ERRORS:
        with pytest.raises(CTCInputError, match=message):
            call("torch", **kwargs)


def test_error_class_is_a_value_error():
    assert issubclass(CTCInputError, ValueError)
    with pytest.raises(ValueError):
        cn.ctc_loss(np.zeros((2, 3)), [1], 3, 1)
