"""``ctckit warmup``: after it, a fresh process with the same Numba cache compiles nothing.

The warmup runs on the suite's own cache (``NUMBA_CACHE_DIR`` unset: the ``__pycache__``
folders next to ctckit's source files), which the tests before this file have mostly
filled: it compiles what they did not (a cold warmup takes about two minutes on 2 cores,
too long for every run of the suite). Every other process here runs against the cache it
filled.
"""

import importlib.util
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

HAS_TORCH = importlib.util.find_spec("torch") is not None

# Public calls of every kind, with shapes other than the warmup's; prints the ctckit
# kernels that compiled (Numba's "numba:compile" events: a load from the cache raises none).
PUBLIC_CALLS = """
    import threading
    import numpy as np
    from numba.core import event

    compiled, depth = [], threading.local()

    class Listener(event.Listener):
        def on_start(self, ev):
            depth.n = getattr(depth, "n", 0) + 1
            function = ev.data["dispatcher"].py_func
            if depth.n == 1 and function.__module__.startswith("ctckit."):
                compiled.append(function.__qualname__)

        def on_end(self, ev):
            depth.n -= 1

    event.register("numba:compile", Listener())

    import ctckit
    import ctckit.numpy as cn

    rng = np.random.default_rng(0)
    def log_probs(T, N, C, dtype):
        x = rng.standard_normal((T, N, C))
        return (x - np.logaddexp.reduce(x, axis=2, keepdims=True)).astype(dtype)

    for threads in (1, 2):
        ctckit.set_num_threads(threads)
        for dtype in (np.float32, np.float64, np.float16):
            lp = log_probs(50, 3, 7, dtype)
            targets, lengths, target_lengths = rng.integers(1, 7, (3, 9)), [50, 45, 40], [9, 4, 0]
            cn.ctc_loss(lp, targets, lengths, target_lengths)
            cn.ctc_loss_and_grad(lp, targets, lengths, target_lengths, reduction="sum", gradient="torch")
            cn.ctc_loss_and_grad(np.swapaxes(np.ascontiguousarray(np.swapaxes(lp, 0, 1)), 0, 1), targets, lengths,
                                 target_lengths)  # strided
            cn.ctc_loss_and_grad(log_probs(700, 2, 5, dtype), np.tile([1, 2, 3], (2, 100)), [700, 650], [300, 280])
            cn.ctc_loss(lp[:, 0], targets[0], 50, 9)  # unbatched
            alignments, scores = cn.forced_align(lp, targets, lengths, target_lengths)
            cn.merge_tokens(alignments[0], scores[0])
            cn.greedy_decode(lp, lengths)
            cn.beam_search(lp, lengths, beam_width=8)
            cn.ctc_posteriors(lp, targets, lengths, target_lengths)
            cn.ctc_loss_and_grad_from_logits(lp * 3, targets, lengths, target_lengths, reduction="sum")
            cn.ctc_loss_from_logits(np.swapaxes(np.ascontiguousarray(np.swapaxes(lp, 0, 1)), 0, 1), targets, lengths,
                                    target_lengths)  # strided
    # the README's NumPy example
    lp = np.log(np.full((50, 2, 5), 0.2))
    cn.ctc_loss(lp, [[1, 2, 2], [3, 0, 0]], [50, 40], [3, 1])
    cn.ctc_loss_and_grad(lp, [[1, 2, 2], [3, 0, 0]], [50, 40], [3, 1])
    if TORCH:
        import torch
        import ctckit.torch as ct

        for threads in (1, 2):
            ctckit.set_num_threads(threads)
            for dtype in (torch.float32, torch.float64):
                x = torch.randn(16, 50, 20, dtype=dtype).log_softmax(2).transpose(0, 1).detach().requires_grad_()
                targets = torch.randint(1, 20, (16, 30))
                lengths, target_lengths = torch.full((16,), 50), torch.randint(10, 30, (16,))
                ct.ctc_loss(x, targets, lengths, target_lengths).backward()              # strided, compact
                y = x.detach().contiguous().requires_grad_()
                ct.CTCLoss(gradient="torch")(y, targets, lengths, target_lengths).backward()  # dense
                ct.ctc_loss(y.detach()[:, :2, :3], targets[:2, :4] % 2 + 1, lengths[:2], torch.tensor([4, 3]))
                ct.forced_align(y.detach(), targets, lengths, target_lengths)
                ct.ctc_loss_from_logits(x, targets, lengths, target_lengths).backward()  # strided
                ct.CTCLossFromLogits()(y, targets, lengths, target_lengths).backward()
                ct.ctc_loss_from_logits(y.detach().bfloat16().requires_grad_(), targets, lengths, target_lengths).backward()
    print("compiled:", len(compiled), *compiled)
"""


def _environment(cache=None):
    skip = ("CTCKIT_QUIET_COMPILE", "PYTHONWARNINGS", "NUMBA_CACHE_DIR")
    return {key: value for key, value in os.environ.items() if key not in skip}


@pytest.fixture(scope="module")
def warmed():
    result = subprocess.run([sys.executable, "-m", "ctckit", "warmup"], capture_output=True, text=True,
                            env=_environment())
    assert result.returncode == 0, result.stderr
    return None, result


def test_warmup_reports_each_step_and_where_the_cache_is(warmed):
    cache, result = warmed
    steps = re.findall(r"^\[\s*(\d+)/(\d+)\] (.+): (\d+\.\d) s, (\d+ kernels? compiled|all cached)$",
                       result.stderr.replace("\r", "\n"), re.MULTILINE)
    assert steps and len(steps) == int(steps[0][1]), result.stderr
    assert sorted(int(step[0]) for step in steps) == list(range(1, len(steps) + 1))
    names = " | ".join(step[2] for step in steps)
    for what in ("float32", "float64", "one-scale", "block-scaled", "log-space", "strided", "forced_align",
                 "thread pool", "loss on logits", "float16") + (("torch",) if HAS_TORCH else ()):
        assert what in names, what
    compiled = sum(int(step[4].split()[0]) for step in steps if step[4] != "all cached")
    assert f"ctckit warmup: {compiled} kernel{'s' if compiled != 1 else ''} compiled" in result.stdout
    assert "Numba's cache for ctckit is in the __pycache__ folders next to ctckit's source files" in result.stdout
    folders = [line.strip() for line in result.stdout.splitlines() if line.startswith("  /")]
    assert folders and all(list(Path(folder).glob("*.nbi")) for folder in folders), result.stdout
    assert "CompileWarning" not in result.stderr  # the warmup reports its own progress


def test_after_warmup_a_fresh_process_compiles_nothing(warmed):
    cache, _ = warmed
    code = f"TORCH = {HAS_TORCH}\n" + textwrap.dedent(PUBLIC_CALLS)
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=_environment(cache))
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["compiled:", "0"], result.stdout
    assert "CompileWarning" not in result.stderr


def test_warmup_on_a_warm_cache_compiles_nothing_and_is_quiet_when_asked(warmed):
    cache, _ = warmed
    result = subprocess.run([sys.executable, "-m", "ctckit", "warmup", "--jobs", "1", "--quiet"], capture_output=True,
                            text=True, env=_environment(cache), check=True)
    assert result.stdout == "" and result.stderr == ""
    result = subprocess.run([sys.executable, "-m", "ctckit", "warmup", "--jobs", "1"], capture_output=True,
                            text=True, env=_environment(cache), check=True)
    assert "ctckit warmup: 0 kernels compiled" in result.stdout
