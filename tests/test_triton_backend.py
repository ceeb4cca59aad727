"""backend="triton": the Triton kernels against the Numba core, the reference and torch.

Without a GPU they run in Triton's interpreter on CPU tensors (``TRITON_INTERPRET=1``, set
in conftest), so shapes stay small; and every kernel is compiled for two GPU
architectures through Triton's own compiler, which needs no GPU.
"""

import os
import subprocess
import sys

import numpy as np
import pytest
import torch

if sys.platform != "linux":  # Triton ships for Linux only (the test extra installs it there)
    pytest.skip("triton is available on Linux only", allow_module_level=True)

import ctckit.torch as ct
import reference as ref
from cases import random_case
from conftest import TRITON_DEVICE
from ctckit import CTCInputError, _triton
from ctckit.torch import _choose_backend, _ctc_loss_op


def _run(case, backend, *, dtype=torch.float64, log_probs=None, reduction="none", zero_infinity=False, gradient="exact",
         concatenated=False, upstream=None):
    """(loss, gradient) on the CPU, the gradient w.r.t. log_probs for ``upstream``."""
    values = case.log_probs if log_probs is None else log_probs
    x = torch.tensor(values, dtype=dtype, requires_grad=True)
    targets = torch.tensor(case.concatenated if concatenated else case.padded)
    device = TRITON_DEVICE if backend == "triton" else "cpu"
    loss = ct.ctc_loss(x.to(device), targets, torch.tensor(case.input_lengths), torch.tensor(case.target_lengths),
                       case.blank, reduction, zero_infinity, gradient=gradient, backend=backend)
    upstream = torch.ones_like(loss) if upstream is None else upstream.to(device)
    grad, = torch.autograd.grad(loss, x, upstream) if loss.requires_grad else (torch.zeros_like(x),)
    return loss.detach().cpu(), grad


@pytest.mark.parametrize("seed", range(14))
def test_loss_and_gradient_match_the_core(seed):
    rng = np.random.default_rng(700 + seed)
    case = random_case(rng, classes=int(rng.integers(2, 40)), infeasible=0.2, scale=[1.0, 4.0][seed % 2])
    lp = case.log_probs.copy()
    if seed % 3 == 0:
        lp[rng.random(lp.shape) < 0.1] = -np.inf  # masked classes
    for n, length in enumerate(case.input_lengths):
        lp[length:, n] = np.nan  # padding frames are never read
    options = dict(reduction=["none", "mean", "sum"][seed % 3], zero_infinity=seed % 4 == 0,
                   gradient=["exact", "torch"][seed // 7], concatenated=bool(seed % 2))
    upstream = torch.rand(len(case.labels) if options["reduction"] == "none" else (), dtype=torch.float64) + 0.5
    loss_core, grad_core = _run(case, "numba", log_probs=lp, upstream=upstream, **options)
    loss_triton, grad_triton = _run(case, "triton", log_probs=lp, upstream=upstream, **options)
    torch.testing.assert_close(loss_triton, loss_core, rtol=1e-10, atol=1e-10, equal_nan=True)
    assert not torch.isnan(grad_triton).any()
    torch.testing.assert_close(grad_triton, grad_core, rtol=1e-9, atol=1e-10)


def test_saved_state_kinds_match_the_core(rng):
    """Dense gradient, compact posteriors and their scatter, op by op."""
    case = random_case(rng, frames=15, batch=3, classes=30, repeats=0.6)
    lp = torch.tensor(case.log_probs)
    args = (torch.tensor(case.padded), torch.tensor(case.input_lengths), torch.tensor(case.target_lengths), case.blank)
    for torch_grad in (False, True):
        nll_core, saved_core = _ctc_loss_op(lp, *args, torch_grad, True, "numba")
        nll_triton, saved_triton = _ctc_loss_op(lp.to(TRITON_DEVICE), *args, torch_grad, True, "triton")
        # the operator returns what it keeps flat: the dense gradient, or the compact posteriors
        assert saved_triton.shape == saved_core.shape == ((15 * 3 * 30,) if torch_grad else (15 * (case.padded.size + 3),))
        torch.testing.assert_close(nll_triton.cpu(), nll_core, rtol=1e-12, atol=0)
        torch.testing.assert_close(saved_triton.cpu(), saved_core, rtol=1e-10, atol=1e-12)


def test_labels_repeated_many_times_scatter_exactly(rng):
    """One class many times in a target: the rank-ordered passes add every occurrence."""
    frames, classes = 40, 4
    lp = torch.tensor(rng.standard_normal((frames, 2, classes))).log_softmax(2)
    targets = torch.tensor([[1, 2, 1, 2, 1, 1, 2, 3, 1, 2, 1, 1], [3, 3, 3, 3, 3, 3, 1, 1, 1, 1, 0, 0]])
    lengths = torch.tensor([12, 10])
    for classes_used, kind in ((classes, "dense"), (2000, "compact")):
        x = torch.cat([lp, torch.full((frames, 2, classes_used - classes), -30.0, dtype=torch.float64)], 2)
        grads = []
        for backend, device in (("numba", "cpu"), ("triton", TRITON_DEVICE)):
            leaf = x.clone().requires_grad_()
            ct.ctc_loss(leaf.to(device), targets, [frames, frames], lengths, reduction="sum", backend=backend).backward()
            grads.append(leaf.grad)
        torch.testing.assert_close(grads[1], grads[0], rtol=1e-10, atol=1e-12, msg=kind)
    expected = ref.batch_grad(lp.numpy(), [targets[0].tolist(), targets[1, :10].tolist()], [frames, frames], 0)
    torch.testing.assert_close(grads[1][:, :, :classes], torch.tensor(expected), rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_narrow_dtypes_are_read_directly_and_computed_exactly(dtype, rng):
    case = random_case(rng, frames=30, batch=3, classes=12)
    values = torch.tensor(case.log_probs).to(dtype)  # the same numbers for both backends
    wide, wide_grad = _run(case, "numba", log_probs=values.double().numpy(), reduction="sum")
    narrow, narrow_grad = _run(case, "triton", log_probs=values.double().numpy(), dtype=dtype, reduction="sum")
    assert narrow.dtype == dtype and narrow_grad.dtype == dtype
    torch.testing.assert_close(narrow.double(), wide.to(dtype).double(), rtol=0, atol=0)  # one rounding of the exact loss
    eps = torch.finfo(dtype).eps
    torch.testing.assert_close(narrow_grad.double(), wide_grad, rtol=2 * eps, atol=2 * eps)


def test_float32_long_sequence_is_float64_rounded_once(rng):
    """Float64 log space and float64 checkpoints: T = 300 (segments of 18 frames), L = 70
    (a block of 256 states), peaky frames. The float32 results are the float64 ones rounded."""
    case = random_case(rng, frames=300, batch=2, classes=20, max_target=70, scale=6.0)
    case.input_lengths[:] = 300
    values = case.log_probs.astype(np.float32).astype(np.float64)
    exact, exact_grad = _run(case, "numba", log_probs=values, reduction="sum")
    single, single_grad = _run(case, "triton", log_probs=values, dtype=torch.float32, reduction="sum")
    assert abs(single.item() - exact.item()) <= 1e-7 * exact.item()
    assert (single_grad.double() - exact_grad).abs().max() <= 2e-7


def test_edge_semantics_match_the_core():
    lp = torch.randn(6, 5, 4, dtype=torch.float64).log_softmax(2)
    lp[:, 2, 3] = -np.inf  # item 2: its label 3 can never be emitted
    lp[3, 1, 1] = np.nan  # item 1: a NaN in a used frame
    lp[0, 3, 1] = np.nan  # item 3: a NaN, but too short for its target: infinite, not NaN
    targets = torch.tensor([[1, 2, 2], [1, 2, 0], [3, 0, 0], [1, 1, 1], [0, 0, 0]])
    il, tl = [6, 6, 6, 4, 0], [3, 2, 1, 3, 0]  # item 3 needs 5 frames; item 4 is empty
    for gradient in ("exact", "torch"):
        results = []
        for backend, device in (("numba", "cpu"), ("triton", TRITON_DEVICE)):
            x = lp.clone().requires_grad_()
            losses = ct.ctc_loss(x.to(device), targets, il, tl, reduction="none", gradient=gradient, backend=backend)
            losses.sum().backward()
            results.append((losses.detach().cpu(), x.grad))
        (loss_core, grad_core), (loss_triton, grad_triton) = results
        torch.testing.assert_close(loss_triton, loss_core, equal_nan=True)
        assert torch.isnan(loss_triton[1]) and loss_triton[2] == loss_triton[3] == np.inf and loss_triton[4] == 0
        assert torch.isnan(grad_triton[:, 1]).all()
        assert (grad_triton[:, 2:] == 0).all()
        torch.testing.assert_close(grad_triton, grad_core, equal_nan=True)


def test_many_classes_use_class_chunks_in_the_torch_convention(rng):
    """C = 1500 > 1024: the exp(log_probs) term is written in chunks."""
    case = random_case(rng, frames=6, batch=2, classes=1500, max_target=2)
    loss_core, grad_core = _run(case, "numba", gradient="torch", reduction="sum")
    loss_triton, grad_triton = _run(case, "triton", gradient="torch", reduction="sum")
    torch.testing.assert_close(loss_triton, loss_core, rtol=1e-12, atol=0)
    torch.testing.assert_close(grad_triton, grad_core, rtol=1e-10, atol=1e-13)


def test_results_are_bitwise_reproducible(rng):
    case = random_case(rng, frames=25, batch=4, classes=7)
    first = _run(case, "triton", dtype=torch.float32, reduction="mean")
    second = _run(case, "triton", dtype=torch.float32, reduction="mean")
    assert torch.equal(first[0], second[0]) and torch.equal(first[1], second[1])


@pytest.mark.parametrize("need_grad", [False, True])
@pytest.mark.parametrize("classes", [6, 40])
def test_opcheck_with_the_triton_kernel(classes, need_grad, rng):
    case = random_case(rng, frames=8, batch=2, classes=classes)
    lp = torch.tensor(case.log_probs, device=TRITON_DEVICE, requires_grad=True)
    args = (torch.tensor(case.padded), torch.tensor(case.input_lengths), torch.tensor(case.target_lengths))
    torch.library.opcheck(_ctc_loss_op, (lp, *args, case.blank, False, need_grad, "triton"))


@pytest.mark.parametrize("seed", range(8))
def test_forced_align_matches_the_core(seed):
    rng = np.random.default_rng(900 + seed)
    case = random_case(rng, classes=int(rng.integers(2, 9)))
    lp = case.log_probs if seed % 2 else np.round(case.log_probs, 0)  # rounded: many ties
    targets = torch.tensor(case.concatenated if seed % 3 else case.padded)
    args = (targets, torch.tensor(case.input_lengths), torch.tensor(case.target_lengths), case.blank)
    alignments, scores = ct.forced_align(torch.tensor(lp, device=TRITON_DEVICE), *args, backend="triton")
    expected_alignments, expected_scores = ct.forced_align(torch.tensor(lp), *args, backend="numba")
    assert torch.equal(alignments.cpu(), expected_alignments)
    torch.testing.assert_close(scores.cpu(), expected_scores, rtol=0, atol=0)


@pytest.mark.parametrize("segment", [1, 2, 3, 7, 1000])
def test_forced_align_in_bounded_memory_gives_the_same_path(monkeypatch, segment):
    # The checkpointed kernel (back-pointers past the budget: here every batch), with
    # segments of every size against the unbounded core: ties, repeats, short items.
    from ctckit._core import align

    for seed in range(3):
        rng = np.random.default_rng(950 + 10 * segment + seed)
        case = random_case(rng, classes=int(rng.integers(2, 9)))
        lp = np.round(case.log_probs, 0) if seed == 1 else case.log_probs  # rounded: many ties
        args = (torch.tensor(case.padded), torch.tensor(case.input_lengths), torch.tensor(case.target_lengths), case.blank)
        expected_alignments, expected_scores = ct.forced_align(torch.tensor(lp), *args, backend="numba")
        with monkeypatch.context() as patch:
            patch.setattr(align, "MAX_BACK_POINTER_BYTES", 0)
            patch.setattr(align, "segment_frames", lambda frames: segment)
            alignments, scores = ct.forced_align(torch.tensor(lp, device=TRITON_DEVICE), *args, backend="triton")
        assert torch.equal(alignments.cpu(), expected_alignments)
        torch.testing.assert_close(scores.cpu(), expected_scores, rtol=0, atol=0)


def test_forced_align_unbatched_float32_and_errors():
    lp = torch.randn(10, 5).log_softmax(1)
    alignment, scores = ct.forced_align(lp.to(TRITON_DEVICE), torch.tensor([1, 2, 2]), 10, 3, backend="triton")
    expected = ct.forced_align(lp, torch.tensor([1, 2, 2]), 10, 3)
    assert alignment.shape == (10,) and scores.dtype == torch.float32
    assert torch.equal(alignment.cpu(), expected[0]) and torch.equal(scores.cpu(), expected[1])
    with pytest.raises(CTCInputError, match=r"item 0 cannot be aligned: T = 3 frames.*L \+ R = 4 \(batch index 0\)"):
        ct.forced_align(lp[:3, None].to(TRITON_DEVICE), torch.tensor([[2, 2, 3]]), [3], [3], backend="triton")
    masked = lp.clone()
    masked[:, 4] = -np.inf
    with pytest.raises(CTCInputError, match=r"item 0 cannot be aligned: every path .* \(batch index 0\)"):
        ct.forced_align(masked[:, None].to(TRITON_DEVICE), torch.tensor([[4]]), [10], [1], backend="triton")


def test_backend_choice(monkeypatch):
    assert _choose_backend("auto", torch.device("cpu")) == "numba"
    assert _choose_backend("auto", torch.device("cuda")) == "triton"
    assert _choose_backend("auto", torch.device("mps")) == "torch"
    assert _choose_backend("auto", torch.device("mps"), loss=False) == "numba"  # alignment on a CPU copy
    with pytest.raises(CTCInputError, match=r"backend must be one of \('auto', 'numba', 'triton'\), got 'torch'"):
        ct.forced_align(torch.zeros(3, 2), [1], 3, 1, backend="torch")
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(ValueError, match=r"backend 'triton' runs CPU tensors only in Triton's interpreter"):
        ct.ctc_loss(torch.zeros(3, 2), [1], 3, 1, backend="triton")


def test_label_ranks_count_earlier_occurrences_within_each_item():
    from ctckit._inputs import Batch
    targets = np.array([5, 5, 7, 5, 9, 9, 5, 5, 1, 2], dtype=np.int64)  # item 0: 4 labels, item 1: 3, padding
    batch = Batch(targets, np.array([0, 5]), np.array([9, 9]), np.array([4, 3]))
    rank, passes = _triton.label_ranks(batch)
    assert rank[:4].tolist() == [0, 1, 0, 2] and rank[5:8].tolist() == [0, 0, 1] and passes == 3


_COMPILE_FOR_GPUS = """
import sys
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from ctckit import _triton

arch, lp = int(sys.argv[1]), sys.argv[2]
f64 = "*fp64"
kernels = [
    (_triton._alpha_kernel, dict(lp_ptr=lp, ring_ptr=f64, checkpoint_ptr=f64, log_p_ptr=f64), dict(BLOCK=256, STORE=True)),
    (_triton._beta_kernel, dict(lp_ptr=lp, ring_ptr=f64, checkpoint_ptr=f64, rows_ptr=f64, log_p_ptr=f64, out_ptr=lp),
     dict(BLOCK=256, BLOCK_C=1024, COMPACT=False, TORCH_GRAD=True)),
    (_triton._beta_kernel, dict(lp_ptr=lp, ring_ptr=f64, checkpoint_ptr=f64, rows_ptr=f64, log_p_ptr=f64, out_ptr=lp),
     dict(BLOCK=4096, BLOCK_C=1024, COMPACT=True, TORCH_GRAD=False)),
    (_triton._scatter_kernel, dict(post_ptr=lp, scale_ptr=f64, grad_ptr=lp), dict(BLOCK_L=128)),
    (_triton._viterbi_kernel, dict(lp_ptr=lp, ring_ptr=f64, back_ptr="*i8", score_ptr=lp, best_ptr=f64), dict(BLOCK=256)),
    (_triton._viterbi_bounded_kernel, dict(lp_ptr=lp, ring_ptr=f64, checkpoint_ptr=f64, back_ptr="*i8", score_ptr=lp,
                                           best_ptr=f64), dict(BLOCK=256)),
    (_triton._gather_kernel, dict(x_ptr=lp, lse_ptr=f64, compact_ptr=f64), dict(BLOCK_C=1024, BLOCK_W=128)),
    (_triton._logit_gradient_kernel, dict(x_ptr=lp, lse_ptr=f64, post_ptr="*fp32", scale_ptr=f64, out_ptr=lp),
     dict(BLOCK_C=1024, BLOCK_W=128)),
]
for kernel, pointers, constexprs in kernels:
    signature = {name: ("*i64" if name.endswith("_ptr") else "i64") for name in kernel.arg_names}
    signature.update(pointers)
    signature.update({name: "constexpr" for name in constexprs})
    compiled = triton.compile(ASTSource(fn=kernel, signature=signature, constexprs=constexprs),
                              target=GPUTarget("cuda", arch, 32), options={"num_warps": 8})
    print(kernel.__name__, len(compiled.asm["cubin"]))
"""


@pytest.mark.parametrize("arch,log_probs", [(80, "*fp32"), (90, "*bf16")])
def test_every_kernel_compiles_for_gpus(arch, log_probs):
    """Triton's compiler, down to a cubin for sm_80 / sm_90 (no GPU needed): what the
    interpreter cannot check (types, layouts, barriers inside loops). In a fresh process,
    as the kernels of this one are the interpreter's."""
    env = {**os.environ, "TRITON_INTERPRET": "0", "TRITON_DEFAULT_FP_FUSION": "1"}
    result = subprocess.run([sys.executable, "-c", _COMPILE_FOR_GPUS, str(arch), log_probs], capture_output=True, text=True,
                            env=env, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    sizes = dict(line.split() for line in result.stdout.splitlines())
    assert set(sizes) == {"_alpha_kernel", "_beta_kernel", "_scatter_kernel", "_viterbi_kernel", "_viterbi_bounded_kernel",
                          "_gather_kernel", "_logit_gradient_kernel"}
    assert all(int(size) > 1000 for size in sizes.values())


def test_interpreter_is_what_the_cpu_tests_use():
    assert TRITON_DEVICE == "cuda" or os.environ["TRITON_INTERPRET"] == "1"


@pytest.mark.parametrize("classes,torch_grad", [(6, False), (40, False), (40, True)])
def test_memory_accounting_matches_what_the_forward_keeps(classes, torch_grad, rng):
    case = random_case(rng, frames=12, batch=3, classes=classes)
    lp = torch.tensor(case.log_probs, dtype=torch.float32, device=TRITON_DEVICE)
    _, saved = _ctc_loss_op(lp, torch.tensor(case.padded), torch.tensor(case.input_lengths), torch.tensor(case.target_lengths),
                            case.blank, torch_grad, True, "triton")
    planned = _triton.memory_bytes(12, 3, classes, case.padded.size, int(case.target_lengths.max()), 4, torch_grad)
    assert saved.numel() * saved.element_size() == planned["kept"]
    assert planned["compact"] == (saved.numel() != 12 * 3 * classes)  # flat: the compact posteriors' size, or the gradient's


@pytest.mark.parametrize("seed", range(6))
def test_loss_on_logits_matches_the_core(seed):
    """``ctc_loss_from_logits`` on the Triton kernels against the Numba core: masked
    classes, infeasible items, padding frames holding NaN (never read), every reduction;
    the gradient in the dtype of the logits."""
    rng = np.random.default_rng(900 + seed)
    case = random_case(rng, classes=int(rng.integers(2, 40)), infeasible=0.3, scale=4.0)
    logits = case.log_probs + rng.standard_normal(case.log_probs.shape[:2])[..., None]  # not normalised
    if seed % 2 == 0:
        logits[rng.random(logits.shape) < 0.1] = -np.inf
    for n, length in enumerate(case.input_lengths):
        logits[length:, n] = np.nan
    dtype = [torch.float64, torch.float32, torch.bfloat16][seed % 3]
    options = dict(blank=case.blank, reduction=["none", "mean", "sum"][seed % 3], zero_infinity=seed % 4 == 0)
    results = []
    for backend in ("numba", "triton"):
        x = torch.tensor(logits, dtype=torch.float64).to(dtype).requires_grad_()
        device = TRITON_DEVICE if backend == "triton" else "cpu"
        targets = torch.tensor(case.concatenated if seed % 2 else case.padded)
        loss = ct.ctc_loss_from_logits(x.to(device), targets, torch.tensor(case.input_lengths),
                                       torch.tensor(case.target_lengths), backend=backend, **options)
        grad, = torch.autograd.grad(loss.sum(), x)
        results.append((loss.detach().cpu().double(), grad))
    (loss_core, grad_core), (loss_triton, grad_triton) = results
    assert grad_triton.dtype == dtype and not torch.isnan(grad_triton).any()
    tolerance = {torch.float64: 1e-10, torch.float32: 1e-6, torch.bfloat16: 1e-2}[dtype]
    torch.testing.assert_close(loss_triton, loss_core, rtol=tolerance, atol=tolerance, equal_nan=True)
    torch.testing.assert_close(grad_triton.double(), grad_core.double(), rtol=tolerance, atol=tolerance)
