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
    (dict(il=torch.tensor([6, 5])), r"input_lengths must have N = 3 elements, .* got shape \(2,\)"),
    (dict(tl=torch.tensor([[4, 2], [1, 1]])), r"target_lengths must have N = 3 elements, .* got shape \(2, 2\)"),
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
    (dict(targets=[[1, 2], [3], [2, 1]]), r"targets must be a rectangular sequence of ints"),
    (dict(il=[[6], [5, 4], [4]]), r"input_lengths must be a rectangular sequence of ints"),
    (dict(targets=[[2**70, 2], [1, 1], [2, 0]]), r"targets holds 1180591620717411303424"),
    (dict(tl=[-1, 2**64 - 1, 1]), r"target_lengths holds 18446744073709551615"),
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
    (dict(blank=np.float64(0)), r"blank must be an int, got float64"),
    (dict(zero_infinity="False"), r"zero_infinity must be a bool, got str"),
    (dict(zero_infinity=1), r"zero_infinity must be a bool, got int"),
    (dict(zero_infinity=None), r"zero_infinity must be a bool, got NoneType"),
    (dict(zero_infinity=torch.tensor(True)), r"zero_infinity must be a bool, got Tensor"),
    (dict(reduction=1), r"reduction must be a string, one of \('none', 'mean', 'sum'\), got int"),
    (dict(reduction=None), r"reduction must be a string"),
    (dict(reduction=np.array(["mean"])), r"reduction must be a string"),
]


@FRONTENDS
@pytest.mark.parametrize("kwargs,message", TYPE_ERRORS)
def test_bad_types_raise_type_error(frontend, kwargs, message):
    with pytest.raises(TypeError, match=message):
        call(frontend, **kwargs)


def test_options_are_checked_by_the_module_too():
    with pytest.raises(TypeError, match=r"zero_infinity must be a bool, got str"):
        ct.CTCLoss(zero_infinity="False")  # was taken as true, and printed as such
    with pytest.raises(TypeError, match=r"reduction must be a string"):
        ct.CTCLoss(reduction=0)
    with pytest.raises(TypeError, match=r"blank must be an int"):
        ct.CTCLoss(blank=1.0)
    with pytest.raises(TypeError, match=r"backend must be a string"):
        ct.CTCLoss(backend=None)
    module = ct.CTCLoss(zero_infinity=np.bool_(True), blank=np.int64(0))
    assert module.zero_infinity is True and type(module.blank) is int
    assert "zero_infinity=True" in repr(module)


@FRONTENDS
def test_numpy_bool_zero_infinity_is_a_bool(frontend):
    lp = LP.clone()
    tl = TL.clone()
    tl[0] = 4  # with il 1: 4 labels in 1 frame is infeasible
    il = torch.tensor([1, 5, 4])
    losses = call(frontend, lp=lp, il=il, tl=tl, reduction="none", zero_infinity=np.bool_(True))
    assert float(losses[0]) == 0.0
    assert float(call(frontend, lp=lp, il=il, tl=tl, reduction="none", zero_infinity=np.bool_(False))[0]) == np.inf


def _captured_batches(monkeypatch):
    """The Batch each loss call hands to the kernels."""
    import ctckit._core as core

    seen, kernel = [], core.negative_log_likelihood

    def spy(log_probs, batch, *args, **kwargs):
        seen.append(batch)
        return kernel(log_probs, batch, *args, **kwargs)

    monkeypatch.setattr(core, "negative_log_likelihood", spy)
    return seen


@pytest.mark.parametrize("concatenated", [False, True])
def test_the_kernels_read_copies_of_the_index_arrays(monkeypatch, concatenated):
    """A caller (another thread, say) that changes its index arrays after the check cannot
    change what the kernels read: they get ctckit's copies, even of contiguous int64
    arrays and of tensors (whose numpy() shares their memory)."""
    seen = _captured_batches(monkeypatch)
    targets = torch.tensor([1, 2, 3, 4, 1, 1, 2]) if concatenated else TARGETS.clone()
    tensors = (targets, IL.clone(), TL.clone())
    arrays = tuple(np.ascontiguousarray(t.numpy().astype(np.int64)) for t in tensors)
    cn.ctc_loss_and_grad(LP.numpy(), *arrays)
    ct.ctc_loss(LP.clone().requires_grad_(), *tensors).backward()
    ct.ctc_loss(LP, *tensors)  # no gradient
    assert len(seen) == 3
    for batch, originals in zip(seen, (arrays, [t.numpy() for t in tensors], [t.numpy() for t in tensors])):
        for kept in (batch.targets, batch.offsets, batch.input_lengths, batch.target_lengths):
            for original in originals:
                assert not np.shares_memory(kept, original)


@FRONTENDS
@pytest.mark.parametrize("dtype", [np.uint64, ">u8"])
def test_uint64_values_past_int64_are_reported_unwrapped(frontend, dtype):
    targets = TARGETS.numpy().astype(dtype)
    targets[1, 1] = 2**64 - 1
    with pytest.raises(CTCInputError, match=r"targets\[1, 1\] \(batch index 1\) = 18446744073709551615 is outside"):
        call(frontend, targets=targets)
    il = IL.numpy().astype(dtype)
    il[2] = 2**63
    with pytest.raises(CTCInputError, match=r"input_lengths\[2\] = 9223372036854775808 exceeds the number of frames"):
        call(frontend, il=il)
    tl = TL.numpy().astype(dtype)
    tl[0] = 2**64 - 2
    with pytest.raises(CTCInputError, match=r"target_lengths\[0\] = 18446744073709551614 exceeds the padded"):
        call(frontend, tl=tl)
    concatenated = torch.tensor([1, 2, 3, 4, 1, 1, 2])
    with pytest.raises(CTCInputError, match=rf"sum\(target_lengths\) = {2**64 - 2 + 3} elements, got 7"):
        call(frontend, targets=concatenated, tl=tl)


def test_uint64_tensors_and_python_ints_past_int64_are_reported_unwrapped():
    with pytest.raises(CTCInputError, match=r"targets\[0, 1\] \(batch index 0\) = 18446744073709551615 is outside"):
        ct.ctc_loss(LP, torch.tensor([[1, 2**64 - 1, 3, 4], [1, 1, 0, 0], [2, 0, 0, 0]], dtype=torch.uint64), IL, TL)
    with pytest.raises(CTCInputError, match=r"targets\[0, 1\] \(batch index 0\) = 18446744073709551615 is outside"):
        cn.ctc_loss(LP.numpy(), [[1, 2**64 - 1, 3, 4], [1, 1, 0, 0], [2, 0, 0, 0]], IL.numpy(), TL.numpy())
    with pytest.raises(CTCInputError, match=r"input_lengths\[0\] = 9223372036854775808 exceeds"):
        ct.ctc_loss(LP[:, 0], TARGETS[0], 2**63, 4)


def test_uint64_padding_past_int64_is_not_read():
    targets = TARGETS.numpy().astype(np.uint64)
    targets[2, 1:] = 2**64 - 1  # padding of item 2
    expected = call("torch", reduction="none")
    torch.testing.assert_close(call("torch", targets=targets, reduction="none"), expected)
    np.testing.assert_allclose(call("numpy", targets=targets, reduction="none"), expected.numpy())


def test_ragged_log_probs_name_the_argument():
    with pytest.raises(CTCInputError, match=r"log_probs must be a rectangular array"):
        cn.ctc_loss([[[0.0, -1.0]], [[0.0]]], [[1]], [2], [1])
    with pytest.raises(TypeError, match=r"log_probs must be a torch.Tensor, got list"):
        ct.ctc_loss([[[0.0, -1.0]], [[0.0]]], [[1]], [2], [1])


@pytest.mark.parametrize("function", ["forced_align", "ctc_posteriors", "greedy_decode", "beam_search"])
def test_torch_decoders_require_a_tensor_of_log_probs(function):
    args = {"forced_align": (TARGETS, IL, TL), "ctc_posteriors": (TARGETS, IL, TL)}.get(function, ())
    with pytest.raises(TypeError, match=r"log_probs must be a torch.Tensor, got list"):
        getattr(ct, function)(LP.tolist(), *args)
    with pytest.raises(TypeError, match=r"log_probs must be a floating-point tensor"):
        getattr(ct, function)(LP.long(), *args)


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
    with pytest.raises(TypeError, match=r"gradient must be a string"):
        ct.ctc_loss(LP, TARGETS, IL, TL, gradient=0)
    with pytest.raises(TypeError, match=r"gradient must be a string"):
        cn.ctc_loss_and_grad(LP.numpy(), TARGETS.numpy(), IL.numpy(), TL.numpy(), gradient=["exact"])
    with pytest.raises(TypeError, match=r"backend must be a string"):
        ct.ctc_loss(LP, TARGETS, IL, TL, backend=np.array(["auto"]))


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
