"""Fingerprints of ctckit's results on the benchmark's shapes, to keep refactors honest.

``python tests/result_hashes.py`` prints them as JSON (run it on two versions of the code
to compare them); ``python tests/result_hashes.py --store`` writes them to
``result_hashes.json``, which ``test_result_hashes.py`` checks. Each case records the
SHA-256 of the losses and of the gradient (float32, both frontends' conventions), and the
sum of the losses, which holds to 1e-9 on any CPU (the bits may differ where LLVM picks
other vector instructions).
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import numpy as np

from ctckit import bench

STORE = Path(__file__).with_name("result_hashes.json")
SHAPES = {**bench.SHAPES, "bpe5k": (250, 8, 5000, 80)}  # the benchmark's shapes, bpe5k's batch halved


def _problem(shape, seed=0):
    problem = bench.make_problem(shape, seed)
    return problem.log_probs, problem.targets, problem.input_lengths, problem.target_lengths


def _mixed(seed=1):
    """One batch through all three rounds: short items (one scale), long targets (blocks),
    peaky log-probs that underflow blocks, an infeasible item, varied input lengths."""
    rng = np.random.default_rng(seed)
    frames, classes = 1200, 24
    lengths = np.array([1200, 900, 50, 1200, 1100, 40, 700, 3])
    labels = np.array([400, 300, 10, 0, 500, 39, 120, 5])
    logits = rng.standard_normal((frames, lengths.shape[0], classes)) * 3.0
    logits[:, 4] *= 4000.0  # peaky: log-probs down to about -1e4
    log_probs = (logits - np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1, keepdims=True))
                 - logits.max(-1, keepdims=True)).astype(np.float32)
    targets = rng.integers(1, classes, (lengths.shape[0], labels.max()))
    return log_probs, targets, lengths, labels


def _digest(array) -> str:
    return hashlib.sha256(np.ascontiguousarray(array).tobytes()).hexdigest()[:16]


def fingerprints() -> dict:
    import ctckit
    import ctckit.numpy as cn

    if hasattr(ctckit, "set_num_threads"):  # older versions: Numba's threads
        ctckit.set_num_threads(2)
    cases = {name: _problem(shape) for name, shape in SHAPES.items()}
    cases["mixed"] = _mixed()
    out = {}
    for name, (log_probs, targets, input_lengths, target_lengths) in cases.items():
        losses = cn.ctc_loss(log_probs, targets, input_lengths, target_lengths, reduction="none")
        _, exact = cn.ctc_loss_and_grad(log_probs, targets, input_lengths, target_lengths, reduction="sum")
        _, torch_style = cn.ctc_loss_and_grad(log_probs, targets, input_lengths, target_lengths, reduction="mean",
                                              gradient="torch")
        finite = losses[np.isfinite(losses)]
        out[name] = dict(losses=_digest(losses), exact_gradient=_digest(exact), torch_gradient=_digest(torch_style),
                         loss_sum=float(finite.astype(np.float64).sum()), infinite=int((~np.isfinite(losses)).sum()))
    torch_frontend = _torch_frontend(cases)
    if torch_frontend:
        for name, values in torch_frontend.items():
            out[name].update(values)
    return out


def _torch_frontend(cases) -> dict:
    try:
        import torch
    except ImportError:
        return {}
    import ctckit.torch as ct

    out = {}
    for name in ("ocr", "long", "mixed"):
        log_probs, targets, input_lengths, target_lengths = cases[name]
        x = torch.from_numpy(log_probs).requires_grad_()
        loss = ct.ctc_loss(x, torch.from_numpy(targets), torch.from_numpy(input_lengths), torch.from_numpy(target_lengths),
                           reduction="sum")
        loss.backward()
        out[name] = dict(torch_frontend_loss=_digest(loss.detach().numpy()), torch_frontend_gradient=_digest(x.grad.numpy()))
    return out


def host_cpu() -> str:
    import llvmlite.binding

    return llvmlite.binding.get_host_cpu_name()


if __name__ == "__main__":
    result = dict(cpu=host_cpu(), cases=fingerprints())
    text = json.dumps(result, indent=1, sort_keys=True)
    if "--store" in sys.argv[1:]:
        STORE.write_text(text + "\n")
    print(text)
