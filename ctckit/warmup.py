"""``ctckit warmup``: compile every kernel a user can reach ahead of time, into Numba's cache.

ctckit's kernels compile on their first call for the types they get (10-20 s each kind of
call on 2 cores) and Numba caches the machine code on disk, so only the first process pays.
A container image or a CI job starts with an empty cache each time, unless it is built
with one: this command runs the public functions of the NumPy frontend (and of the torch
frontend, if torch is installed) on tiny inputs chosen so that every kernel compiles:

- the loss with and without its gradient, in float32 and float64 (the types the kernels
  compute in; float16, bfloat16 and the float8 types are computed in float32);
- items for each round of a batch: short targets (the one-scale passes), long ones (the
  block-scaled passes) and a peaky input whose paths underflow both (the log-space round);
- log-probs that are C-contiguous and strided ones (a ``(T, N, C)`` view of a batch-first
  ``(N, T, C)`` array, as ``.transpose(0, 1)`` of a model's output gives): Numba compiles a
  kernel for each memory layout of its array arguments;
- the dense gradient and, with torch, the compact posteriors and their scatter;
- the loss on logits (float32, float64 and float16 logits, the last read as their bits);
- ``forced_align``, ``greedy_decode``, ``beam_search``, ``ctc_posteriors``, and
  :mod:`ctckit.decoder`'s search with a word language model;
- the drivers on one thread, on Numba's OpenMP threads (short calls) and on ctckit's own
  pool (long calls).

Each step reports its seconds and how many kernels it compiled (nothing, when the cache
already has them). The inputs are tiny: the time is the compilation's.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Callable

import numpy as np

DTYPES = (np.float32, np.float64)
LAYOUTS = ("contiguous", "strided")


@dataclass(frozen=True)
class Step:
    name: str
    run: Callable[[], None]


def _layout(log_probs: np.ndarray, layout: str) -> np.ndarray:
    """``log_probs`` (T, N, C) as it is, or the same values as a strided view of an (N, T, C)
    array (N > 1: a view with N = 1 counts as contiguous)."""
    if layout == "contiguous":
        return np.ascontiguousarray(log_probs)
    view = np.ascontiguousarray(log_probs.transpose(1, 0, 2)).transpose(1, 0, 2)
    assert not view.flags.c_contiguous
    return view


def _log_softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))


def short_batch(dtype, layout="contiguous"):
    """Two items of 3 and 2 labels over 12 frames: the one-scale passes."""
    rng = np.random.default_rng(0)
    log_probs = _log_softmax(rng.standard_normal((12, 2, 6))).astype(dtype)
    return _layout(log_probs, layout), np.array([[1, 2, 3], [4, 5, 0]]), np.array([12, 10]), np.array([3, 2])


def long_batch(dtype, layout="contiguous"):
    """Two items of 256 labels (alternating, no repeats) over 300 frames: too long for the
    one-scale passes (fewer than 256 labels), so the block-scaled passes."""
    rng = np.random.default_rng(1)
    log_probs = _log_softmax(rng.standard_normal((300, 2, 4))).astype(dtype)
    targets = np.tile(np.arange(256) % 2 + 1, (2, 1))
    return _layout(log_probs, layout), targets, np.array([300, 280]), np.array([256, 256])


def peaky_batch(dtype, layout="contiguous"):
    """Two items of 10 labels over 40 frames whose most probable path lags 40 nats a frame
    behind the others for 20 frames (e^-800, below float64's range): the rescaled passes
    of both earlier rounds lose it, notice, and hand the items to the log-space round."""
    labels, half = 10, 20
    log_probs = np.full((2 * half, 2, labels + 2), -1000.0)
    for t in range(half):
        log_probs[t, :, 1 + t // 2] = log_probs[half + t, :, 1 + t // 2] = 0.0
        log_probs[t, :, 0], log_probs[half + t, :, 0] = -40.0, -100.0
    targets = np.tile(np.arange(1, labels + 1), (2, 1))
    return _layout(log_probs.astype(dtype), layout), targets, np.array([2 * half] * 2), np.array([labels] * 2)


def pool_batch():
    """A batch estimated above the OpenMP threshold of :mod:`ctckit._core.pool`: it runs
    on ctckit's own threads, cut into chunks (about 50 ms of work)."""
    from ._core.loss.batch import FRAME_NS, LABEL_NS
    from ._core.pool import OPENMP_COST

    frames, labels = 64, 8
    size = int(math.ceil(1.25 * OPENMP_COST / (frames * (FRAME_NS + LABEL_NS * labels))))
    rng = np.random.default_rng(2)
    log_probs = _log_softmax(rng.standard_normal((frames, size, 10)).astype(np.float32))
    targets = rng.integers(1, 10, (size, labels))
    return log_probs, targets, np.full(size, frames), np.full(size, labels)


def _on_threads(*counts: int):
    """Run a step's calls once per thread count: 1 runs the serial drivers on the calling
    thread, 2 the OpenMP loop (short calls; where Numba has an OpenMP or TBB layer)."""
    import ctckit

    def decorate(calls):
        def run():
            before = ctckit.get_num_threads()
            try:
                for threads in counts:
                    ctckit.set_num_threads(threads)
                    calls()
            finally:
                ctckit.set_num_threads(before)

        return run

    return decorate


def numpy_steps(dtype, layout) -> list[Step]:
    name = np.dtype(dtype).name
    where = "" if layout == "contiguous" else ", strided"
    steps = []
    for kind, make in (("short targets: one-scale passes", short_batch), ("long targets: block-scaled passes", long_batch),
                       ("peaky log-probs: log-space round", peaky_batch)):
        @_on_threads(1, 2)
        def loss(make=make):
            import ctckit.numpy as cn

            log_probs, targets, input_lengths, target_lengths = make(dtype, layout)
            cn.ctc_loss(log_probs, targets, input_lengths, target_lengths, reduction="none")
            cn.ctc_loss_and_grad(log_probs, targets, input_lengths, target_lengths)

        steps.append(Step(f"loss and gradient, {name}{where}, {kind}", loss))

    @_on_threads(1, 2)
    def decode():
        import ctckit.numpy as cn

        log_probs, targets, input_lengths, target_lengths = short_batch(dtype, layout)
        alignments, scores = cn.forced_align(log_probs, targets, input_lengths, target_lengths)
        cn.merge_tokens(alignments[0], scores[0])
        cn.greedy_decode(log_probs, input_lengths)
        cn.beam_search(log_probs, input_lengths, beam_width=4, top_k=2)
        cn.ctc_posteriors(log_probs, targets, input_lengths, target_lengths)

    steps.append(Step(f"forced_align, decoding, posteriors, {name}{where}", decode))

    @_on_threads(1, 2)
    def from_logits():
        import ctckit.numpy as cn

        # short targets: an item at a time (gather, recursions, gradient); long ones: the three passes
        for batch in (short_batch, long_batch):
            logits, targets, input_lengths, target_lengths = batch(dtype, layout)
            for values in (logits, logits.astype(np.float16)) if dtype == np.float32 else (logits,):  # float16: its bits
                cn.ctc_loss_from_logits(values, targets, input_lengths, target_lengths)
                cn.ctc_loss_and_grad_from_logits(values, targets, input_lengths, target_lengths)

    steps.append(Step(f"loss on logits, {name}{where}" + (" and float16" if dtype == np.float32 else ""), from_logits))
    return steps


_TINY_ARPA = """\\data\\
ngram 1=5
ngram 2=3

\\1-grams:
-99\t<s>\t-0.3
-0.6\tab\t-0.2
-0.6\tba\t-0.2
-0.9\t</s>
-1.2\t<unk>

\\2-grams:
-0.2\t<s> ab
-0.3\tab ba
-0.2\tba </s>

\\end\\
"""


def decoder_step() -> Step:
    """:mod:`ctckit.decoder`: the search with a word language model (a tiny ARPA model)."""

    @_on_threads(1)
    def run():
        import os
        import tempfile

        from .decoder import build_ctcdecoder

        with tempfile.TemporaryDirectory() as folder:
            path = os.path.join(folder, "tiny.arpa")
            with open(path, "w") as file:
                file.write(_TINY_ARPA)
            decoder = build_ctcdecoder(["", " ", "a", "b"], path, lm_backend="builtin")
        logits = np.log(np.random.default_rng(3).dirichlet(np.ones(4), size=12))
        decoder.decode_beams(logits, beam_width=8, hotwords=["ab"])
        build_ctcdecoder(["", " ", "a", "b"]).decode(logits, beam_width=8)

    return Step("decoding with a word language model", run)


def torch_steps(dtype, layout) -> list[Step]:
    """The torch frontend: the same loss kernels through ``.numpy()`` views, and the
    backward of compact posteriors (scattered into a dense gradient) or of the dense one."""
    name = np.dtype(dtype).name
    where = "" if layout == "contiguous" else ", strided"

    @_on_threads(1, 2)
    def loss():
        import torch

        import ctckit.torch as ct

        log_probs, targets, input_lengths, target_lengths = short_batch(dtype, layout)
        args = (torch.from_numpy(targets), torch.from_numpy(input_lengths), torch.from_numpy(target_lengths))
        for gradient in ("exact", "torch"):  # compact posteriors (C = 6 here), then the dense gradient
            x = torch.from_numpy(log_probs).requires_grad_()
            ct.ctc_loss(x, *args, gradient=gradient).backward()
        ct.forced_align(torch.from_numpy(log_probs), *args)
        logits = torch.from_numpy(log_probs).requires_grad_()
        ct.ctc_loss_from_logits(logits, *args).backward()

    return [Step(f"torch: loss, compact and dense gradients, loss on logits, {name}{where}", loss)]


def pool_step() -> Step:
    def run():
        import ctckit
        import ctckit.numpy as cn

        before = ctckit.get_num_threads()
        ctckit.set_num_threads(2)
        try:
            cn.ctc_loss(*pool_batch())
        finally:
            ctckit.set_num_threads(before)

    return Step("a long call on ctckit's thread pool", run)


def groups(with_torch: bool | None = None) -> list[list[Step]]:
    """Every step, in groups that compile different kernels (one per layout and dtype) and
    can run in parallel processes; ``with_torch``: None for "if torch is installed"."""
    if with_torch is None:
        import importlib.util

        with_torch = importlib.util.find_spec("torch") is not None
    out = []
    for layout in LAYOUTS:
        for dtype in DTYPES:
            out.append(numpy_steps(dtype, layout) + (torch_steps(dtype, layout) if with_torch else []))
    out[-1].append(pool_step())
    out[0].append(decoder_step())
    return out


class _CompileCounter:
    """Counts top-level compilations of ctckit's kernels (Numba's ``"numba:compile"``
    events; a load from the cache raises none)."""

    def __init__(self):
        from numba.core import event

        counter = self
        self.count = 0
        self._local = threading.local()

        class Listener(event.Listener):
            def on_start(self, ev):
                depth = getattr(counter._local, "depth", 0)
                counter._local.depth = depth + 1
                module = getattr(ev.data["dispatcher"].py_func, "__module__", "") or ""
                if depth == 0 and module.startswith("ctckit."):
                    counter.count += 1

            def on_end(self, ev):
                counter._local.depth -= 1

        self.listener = Listener()

    def __enter__(self):
        from numba.core import event

        event.register("numba:compile", self.listener)
        return self

    def __exit__(self, *exc):
        from numba.core import event

        event.unregister("numba:compile", self.listener)


class _Progress:
    """One line per step on stderr, under a tqdm bar when tqdm is installed and stderr is a
    terminal (a log, as CI keeps, gets the lines alone)."""

    def __init__(self, total: int, quiet: bool):
        self.total, self.quiet, self.done = total, quiet, 0
        self.bar = None
        if not quiet and sys.stderr.isatty():
            try:
                from tqdm import tqdm
            except ImportError:
                pass
            else:
                self.bar = tqdm(total=total, desc="ctckit warmup", unit="step", file=sys.stderr, dynamic_ncols=True,
                                bar_format="{l_bar}{bar}| {n_fmt}/{total_fmt} [{elapsed}]")

    def finished(self, name: str, seconds: float, compiled: int) -> None:
        self.done += 1
        if self.quiet:
            return
        what = f"{compiled} kernel{'s' if compiled != 1 else ''} compiled" if compiled else "all cached"
        line = f"[{self.done:>{len(str(self.total))}}/{self.total}] {name}: {seconds:.1f} s, {what}"
        if self.bar is not None:
            self.bar.write(line, file=sys.stderr)
            self.bar.update(1)
        else:
            print(line, file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def cache_folders() -> list[str]:
    """The folders Numba caches ctckit's kernels in (one per source folder)."""
    from numba.core.dispatcher import Dispatcher

    from . import numpy as _kernels  # noqa: F401  (imports every module that defines a kernel)
    from ._compile_notice import cache_folder

    folders = set()
    for name, module in list(sys.modules.items()):
        if name.startswith("ctckit.") and module is not None:
            for value in vars(module).values():
                if isinstance(value, Dispatcher) and type(getattr(value, "_cache", None)).__name__ != "NullCache":
                    folders.add(cache_folder(value))
    return sorted(folders)


def report(compiled: int, seconds: float, jobs: int) -> str:
    """What was done, where the cache is, and how to keep it."""
    from ._compile_notice import where_cached

    folders = cache_folders()
    processes = f", {jobs} processes at once" if jobs > 1 else ""
    lines = [f"ctckit warmup: {compiled} kernel{'s' if compiled != 1 else ''} compiled in {seconds:.1f} s{processes}.",
             f"Numba's cache for ctckit is in {where_cached(folders[0]) if folders else '?'}:"]
    lines += [f"  {folder}" for folder in folders]
    lines += [
        "A later process that uses this cache loads the kernels from it instead of compiling them. To keep it:",
        "- a container image: run `ctckit warmup` in the image's build, after installing ctckit, with NUMBA_CACHE_DIR",
        "  unset (the cache goes into the __pycache__ folders next to ctckit's source files) or set to a folder in",
        "  the image, and set the same at run time; or copy these folders into an image where ctckit is installed at",
        "  the same path. Numba uses a cache folder only if the running process may write to it (otherwise it",
        "  compiles again): keep the folders writable by the image's user.",
        "- CI: keep NUMBA_CACHE_DIR's folder in the CI's cache, keyed on the versions of Python, Numba and ctckit.",
        "The machine code is for this CPU model: on another one Numba compiles again, unless NUMBA_CPU_NAME=generic is",
        "set at build and at run time (code for a baseline CPU of this architecture, possibly slower).",
    ]
    return "\n".join(lines)


def _run_group(steps: list[Step], finished: Callable[[str, float, int], None]) -> int:
    """Run ``steps`` in this process; ``finished(name, seconds, compiled)`` after each."""
    from . import _compile_notice

    with _compile_notice.silenced(), _CompileCounter() as counter:
        for step in steps:
            before, began = counter.count, time.perf_counter()
            step.run()
            finished(step.name, time.perf_counter() - began, counter.count - before)
    return counter.count


_STEP_LINE = "ctckit-warmup-step "


def _worker(group: int, with_torch: bool) -> int:
    """A worker process: run one group, one JSON line per step on stdout."""
    def finished(name, seconds, compiled):
        print(_STEP_LINE + json.dumps({"name": name, "seconds": seconds, "compiled": compiled}), flush=True)

    _run_group(groups(with_torch)[group], finished)
    return 0


def default_jobs() -> int:
    """Processes that compile at once: one per CPU this process may run on, at most one
    per group (each takes up to about 1 GiB while compiling)."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cpus = os.cpu_count() or 1
    return max(1, min(cpus, len(LAYOUTS) * len(DTYPES)))


def run(quiet: bool = False, jobs: int | None = None, with_torch: bool | None = None) -> int:
    """Compile every kernel (see the module's docstring), in ``jobs`` processes at once
    (Numba compiles one kernel at a time in a process); returns how many compiled."""
    import importlib.util

    from . import numpy as _kernels  # noqa: F401  (defines every kernel: which can be cached)
    from ._compile_notice import NOT_CACHED
    from ._core.disk_cache import UNCACHED

    if UNCACHED:  # what would be compiled could not be kept: the warmup would be lost
        raise SystemExit(f"ctckit warmup: {NOT_CACHED}")
    if with_torch is None:
        with_torch = importlib.util.find_spec("torch") is not None
    todo = groups(with_torch)
    jobs = default_jobs() if jobs is None else jobs
    progress = _Progress(sum(map(len, todo)), quiet)
    lock = threading.Lock()
    compiled = []

    def finished(name, seconds, count):
        with lock:
            progress.finished(name, seconds, count)
            compiled.append(count)

    start = time.perf_counter()
    try:
        if jobs == 1:
            for group in todo:
                _run_group(group, finished)
        else:
            failures = []

            def work(index: int) -> None:
                command = [sys.executable, "-m", "ctckit.warmup", "--group", str(index)]
                command += ["--torch"] if with_torch else []
                with subprocess.Popen(command, stdout=subprocess.PIPE, text=True) as worker:
                    for line in worker.stdout:
                        if line.startswith(_STEP_LINE):
                            step = json.loads(line[len(_STEP_LINE):])
                            finished(step["name"], step["seconds"], step["compiled"])
                        else:  # whatever else the worker printed
                            sys.stdout.write(line)
                if worker.returncode:
                    failures.append(f"group {index} exited with {worker.returncode}")

            with ThreadPoolExecutor(max_workers=jobs) as executor:
                list(executor.map(work, range(len(todo))))
            if failures:
                raise SystemExit("ctckit warmup failed: " + "; ".join(failures))
    finally:
        progress.close()
    total = sum(compiled)
    if not quiet:
        print(report(total, time.perf_counter() - start, jobs), flush=True)
    return total


if __name__ == "__main__":  # a worker of run(): python -m ctckit.warmup --group K [--torch]
    import argparse

    parser = argparse.ArgumentParser(prog="python -m ctckit.warmup")
    parser.add_argument("--group", type=int, required=True)
    parser.add_argument("--torch", action="store_true")
    arguments = parser.parse_args()
    sys.exit(_worker(arguments.group, arguments.torch))
