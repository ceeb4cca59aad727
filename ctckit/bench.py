"""Benchmark of the CTC loss: ctckit against torch, optax and TensorFlow on the CPU.

``python -m ctckit.bench`` (or ``ctckit bench``) first checks that the providers agree on
the losses, then times forward and forward+backward, interleaving the providers so that
machine noise hits them alike, and prints medians and ratios peer / ctckit. It also
measures peak memory (a fresh process per provider and shape), ctckit's scaling in T, S,
N and C, and the first call in a fresh process. Results go to stdout and, with ``--out``,
to JSON, markdown and a PNG plot (when matplotlib is installed).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

from ._bench_common import (  # noqa: F401 (bench's names)
    MAX_ROUNDS, ROUND_BUDGET_S, SHAPES, Problem, interleaved_medians, make_problem, peak_rss_growth, provider_tensorflow,
)
from ._cli import int_option, require
from .bench_step import run_step, run_step_memory, step_markdown

MEMORY_SHAPES = ("bpe5k", "long", "xlong")
PROVIDERS = ("ctckit", "torch", "optax", "tensorflow")
MIN_REPEATS = 5  # the fewest timed runs whose median still shrugs off two outliers


# ---------------------------------------------------------------------------- providers
# Each returns (losses, forward, forward_backward): per-item losses as NumPy, and two
# callables that run the computation to completion.


def _torch_provider(problem, loss_fn):
    import torch

    lp = torch.from_numpy(problem.log_probs)
    targets = torch.from_numpy(problem.targets)
    il, tl = torch.from_numpy(problem.input_lengths), torch.from_numpy(problem.target_lengths)
    with torch.no_grad():
        losses = loss_fn(lp, targets, il, tl, reduction="none").numpy()

    def forward():
        with torch.no_grad():
            loss_fn(lp, targets, il, tl, reduction="sum")

    def forward_backward():
        x = lp.detach().requires_grad_()
        loss_fn(x, targets, il, tl, reduction="sum").backward()

    return losses, forward, forward_backward


def provider_ctckit(problem):
    import ctckit.torch

    return _torch_provider(problem, ctckit.torch.ctc_loss)


def provider_torch(problem):
    import torch.nn.functional as F

    return _torch_provider(problem, F.ctc_loss)


def provider_optax(problem):
    import jax
    import jax.numpy as jnp
    import optax

    logits = jnp.asarray(np.ascontiguousarray(problem.log_probs.transpose(1, 0, 2)))  # (N, T, C)
    frames, max_target = problem.log_probs.shape[0], problem.targets.shape[1]
    logit_pad = jnp.asarray((np.arange(frames)[None, :] >= problem.input_lengths[:, None]).astype(np.float32))
    labels = jnp.asarray(problem.targets.astype(np.int32))
    label_pad = jnp.asarray((np.arange(max_target)[None, :] >= problem.target_lengths[:, None]).astype(np.float32))
    # the batch as arguments, as in a training step (closed over, XLA folds it in as constants)
    losses_fn = jax.jit(lambda x, *batch: optax.ctc_loss(x, *batch, blank_id=0))
    grad_fn = jax.jit(jax.value_and_grad(lambda x, *batch: optax.ctc_loss(x, *batch, blank_id=0).sum()))
    batch = (logit_pad, labels, label_pad)
    losses = np.asarray(losses_fn(logits, *batch))
    return (losses, lambda: losses_fn(logits, *batch).block_until_ready(),
            lambda: grad_fn(logits, *batch)[1].block_until_ready())


def load_provider(name, problem):
    """(losses, forward, forward_backward), or raise ImportError when not installed."""
    return globals()[f"provider_{name}"](problem)


# ------------------------------------------------------------------------------ timing


def run_speed(shapes, providers, repeats, log=print):
    rows = []
    for shape_name in shapes:
        problem = make_problem(SHAPES[shape_name])
        loaded, skipped = {}, {}
        for name in providers:
            try:
                loaded[name] = load_provider(name, problem)
            except ImportError as error:
                skipped[name] = f"not installed ({error.name})"
        reference = loaded["ctckit"][0]
        agreement = {name: float(np.max(np.abs(l[0] - reference) / np.abs(reference))) for name, l in loaded.items()}
        fwd = interleaved_medians({n: l[1] for n, l in loaded.items()}, repeats, budget=ROUND_BUDGET_S)
        both = interleaved_medians({n: l[2] for n, l in loaded.items()}, repeats, budget=ROUND_BUDGET_S)
        row = dict(shape=shape_name, dims=SHAPES[shape_name], repeats=min(fwd.rounds, both.rounds), skipped=skipped,
                   agreement=agreement,
                   forward_ms={n: v * 1e3 for n, v in fwd.items()}, forward_backward_ms={n: v * 1e3 for n, v in both.items()})
        rows.append(row)
        log(_speed_line(row))
    return rows


def _speed_line(row):
    parts = [f"{row['shape']:6s} ({row['repeats']} runs)"]
    for kind in ("forward_ms", "forward_backward_ms"):
        times = row[kind]
        ours = times["ctckit"]
        peers = {n: t for n, t in times.items() if n != "ctckit"}
        best = min(peers, key=peers.get) if peers else None
        ratio = f" fastest peer {best} x{peers[best] / ours:.1f}" if best else ""
        parts.append(f"{kind[:-3]}: " + " ".join(f"{n} {t:.2f}" for n, t in times.items()) + ratio)
    if row["skipped"]:
        parts.append("skipped: " + ", ".join(f"{n} ({why})" for n, why in row["skipped"].items()))
    return " | ".join(parts)


def providers_that_ran(report) -> list:
    """The providers timed on at least one shape, in the order of PROVIDERS."""
    return [p for p in PROVIDERS if any(p in row["forward_ms"] for row in report["speed"])]


def skipped_providers(report) -> dict:
    """{provider: why} for the providers that were asked for but never ran."""
    ran = providers_that_ran(report)
    return {name: why for row in report["speed"] for name, why in row["skipped"].items() if name not in ran}


# ------------------------------------------------------------------------------ memory

def peak_memory(provider, shape_name):
    """Growth of peak RSS (bytes) over one forward+backward in a fresh process, or None."""
    return peak_rss_growth(f"from ctckit.bench import SHAPES, make_problem, load_provider\n"
                           f"_, _, run = load_provider({provider!r}, make_problem(SHAPES[{shape_name!r}]))")


def run_memory(shapes, providers, log=print):
    table = {}
    for shape_name in shapes:
        table[shape_name] = {p: peak_memory(p, shape_name) for p in providers}
        log(f"{shape_name:6s} peak RSS growth of fwd+bwd (MiB): " + " ".join(
            f"{p} {'-' if v is None else f'{v / 2**20:.0f}'}" for p, v in table[shape_name].items()))
    return table


# ----------------------------------------------------------------------- scaling, cold start


def run_scaling(repeats, log=print):
    """ctckit fwd+bwd time as T, S, N and C each double from a base shape."""
    base = (500, 8, 64, 100)
    variants = {"base": base, "2T": (1000, 8, 64, 100), "2S": (500, 8, 64, 200),
                "2N": (500, 16, 64, 100), "2C": (500, 8, 128, 100)}
    calls = {name: load_provider("ctckit", make_problem(shape))[2] for name, shape in variants.items()}
    medians = interleaved_medians(calls, repeats)
    out = {name: dict(dims=variants[name], ms=medians[name] * 1e3, ratio=medians[name] / medians["base"]) for name in variants}
    log("scaling (ctckit fwd+bwd, base T N C S = 500 8 64 100): " + " ".join(
        f"{name} {v['ms']:.2f} ms (x{v['ratio']:.2f})" for name, v in out.items()))
    return out


_COLD = r"""
import sys, time
frames, batch, length = (int(x) for x in sys.argv[1:4])
start = time.perf_counter()
import torch
imported_torch = time.perf_counter()
import ctckit.torch
imported = time.perf_counter()
lp = torch.randn(frames, batch, 20).log_softmax(2).requires_grad_()
ctckit.torch.ctc_loss(lp, torch.randint(1, 20, (batch, length)), [frames] * batch, [length] * batch).backward()
done = time.perf_counter()
print(done - start, imported_torch - start, imported - imported_torch, done - imported)
"""
_COLD_NUMPY = r"""
import sys, time
frames, batch, length = (int(x) for x in sys.argv[1:4])
start = time.perf_counter()
import numpy as np
imported_numpy = time.perf_counter()
import ctckit.numpy
imported = time.perf_counter()
rng = np.random.default_rng(0)
logits = rng.standard_normal((frames, batch, 20)).astype(np.float32)
log_probs = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
ctckit.numpy.ctc_loss_and_grad(log_probs, rng.integers(1, 20, (batch, length)), [frames] * batch, [length] * batch)
done = time.perf_counter()
print(done - start, imported_numpy - start, imported - imported_numpy, done - imported)
"""
_COLD_SHORT = (50, 4, 10)  # T, N, L: short targets, the one-scale passes only
_COLD_LONG = (600, 2, 300)  # past ONE_SCALE_LABELS: the block-scaled passes as well


def _first_call(shape, cache, script=_COLD):
    """Seconds of the first call in a fresh process: (total, import of the framework (torch,
    or numpy for ``_COLD_NUMPY``), import of ctckit's frontend, the call)."""
    env = {**os.environ, "NUMBA_CACHE_DIR": cache}
    result = subprocess.run([sys.executable, "-c", script, *map(str, shape)], capture_output=True, text=True, env=env)
    if result.returncode != 0:
        raise RuntimeError(result.stderr[-2000:])
    return [float(x) for x in result.stdout.split()]


def run_cold_start(log=print):
    """First call in a fresh process (including imports), with an empty and a warm Numba
    cache, and its parts: importing torch, importing ctckit.torch, the call itself. Short
    targets compile the one-scale passes only; an empty-cache call with long targets (a
    fresh cache) compiles the block-scaled passes as well. The NumPy frontend's first loss
    and gradient with the warm cache shows what is left without torch's import."""
    import tempfile

    try:
        with tempfile.TemporaryDirectory() as cache:
            runs = [_first_call(_COLD_SHORT, cache) for _ in range(3)]
            numpy_runs = [_first_call(_COLD_SHORT, cache, _COLD_NUMPY) for _ in range(2)]
        with tempfile.TemporaryDirectory() as cache:
            long_cold = _first_call(_COLD_LONG, cache)
    except RuntimeError as error:
        log(f"first call in a fresh process: failed ({str(error).strip().splitlines()[-1:]})")
        return dict(error=str(error))
    warm = min(runs[1:])
    out = dict(cold_compile_s=runs[0][0], cold_compile_long_s=long_cold[0], warm_cache_s=warm[0],
               warm_torch_import_s=warm[1], warm_ctckit_import_s=warm[2], warm_first_call_s=warm[3])
    warm_numpy = min(numpy_runs)
    out.update(warm_numpy_frontend_s=warm_numpy[0], warm_numpy_import_s=warm_numpy[1],
               warm_ctckit_numpy_import_s=warm_numpy[2], warm_numpy_first_call_s=warm_numpy[3])
    log(f"first call in a fresh process incl. imports: empty cache {runs[0][0]:.1f} s (long targets {long_cold[0]:.1f} s), "
        f"warm cache {warm[0]:.2f} s (import torch {warm[1]:.2f} s, import ctckit.torch {warm[2]:.2f} s, "
        f"first fwd+bwd {warm[3]:.2f} s); NumPy frontend, warm cache {warm_numpy[0]:.2f} s (import numpy "
        f"{warm_numpy[1]:.2f} s, import ctckit.numpy {warm_numpy[2]:.2f} s, first loss and gradient {warm_numpy[3]:.2f} s)")
    return out


# ------------------------------------------------------------------------------ reports


def markdown(report) -> str:
    lines = ["| shape | T N C S | provider | fwd ms | fwd+bwd ms | fwd ratio | fwd+bwd ratio | max rel. loss diff |",
             "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: |"]
    for row in report["speed"]:
        ours_f, ours_b = row["forward_ms"]["ctckit"], row["forward_backward_ms"]["ctckit"]
        for name in row["forward_ms"]:
            f, b = row["forward_ms"][name], row["forward_backward_ms"][name]
            ratio = ("" if name == "ctckit" else f"{f / ours_f:.1f}x", "" if name == "ctckit" else f"{b / ours_b:.1f}x")
            lines.append(f"| {row['shape']} | {' '.join(map(str, row['dims']))} | {name} | {f:.2f} | {b:.2f} | "
                         f"{ratio[0]} | {ratio[1]} | {row['agreement'][name]:.1e} |")
    skipped = skipped_providers(report)
    if skipped:
        lines += ["", "Skipped: " + "; ".join(f"{name}, {why}" for name, why in skipped.items()) + "."]
    if report.get("memory"):
        ran = [p for p in PROVIDERS if any(p in values for values in report["memory"].values())]
        lines += ["", "| shape | " + " | ".join(f"{p} peak MiB" for p in ran) + " |", "| --- |" + " ---: |" * len(ran)]
        for shape_name, values in report["memory"].items():
            cells = ["-" if values.get(p) is None else f"{values[p] / 2**20:.0f}" for p in ran]
            lines.append(f"| {shape_name} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot(report, path):
    """Forward and forward+backward times per shape of the providers that ran, as a PNG;
    False when matplotlib is not installed."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    shapes = [row["shape"] for row in report["speed"]]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4), sharey=True)
    for ax, kind in zip(axes, ("forward_ms", "forward_backward_ms")):
        for name in providers_that_ran(report):
            ys = [row[kind].get(name, np.nan) for row in report["speed"]]
            ax.plot(shapes, ys, marker="o", label=name)
        ax.set_yscale("log")
        ax.set_title(kind.replace("_ms", "").replace("_", "+") + " (ms, log scale)")
        ax.grid(True, which="both", alpha=0.3)
    axes[0].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


DESCRIPTION = ("The CTC loss of ctckit against torch, optax and TensorFlow on the CPU: checks that the providers "
               "agree on the losses, then times forward and forward+backward, interleaving the providers, and "
               "prints medians and ratios (peer time / ctckit time); then the training step from logits to "
               "their gradient (ctckit's fused loss on logits against the peers); also peak memory, ctckit's "
               "scaling in T, S, N and C, and the first call in a fresh process.")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ctckit bench", description=DESCRIPTION)
    parser.add_argument("--shapes", default=",".join(SHAPES), help=f"comma-separated shape names (default {','.join(SHAPES)})")
    parser.add_argument("--providers", default=",".join(PROVIDERS),
                        help=f"comma-separated, ctckit among them (default {','.join(PROVIDERS)}); one not installed is skipped")
    parser.add_argument("--repeats", type=int_option(MIN_REPEATS), default=9,
                        help=f"timed runs per provider, interleaved; their median is reported (default 9, at least "
                             f"{MIN_REPEATS}; more for fast shapes, as many as fit in about {ROUND_BUDGET_S:.0f} s)")
    parser.add_argument("--threads", type=int_option(1, 256), default=os.cpu_count() or 1,
                        help=f"CPU threads of torch and ctckit (default {os.cpu_count() or 1}, the number of CPUs)")
    parser.add_argument("--no-memory", action="store_true", help="skip the peak memory tables")
    parser.add_argument("--no-step", action="store_true",
                        help="skip the training-step table (logits -> loss -> gradient w.r.t. the logits)")
    parser.add_argument("--no-extras", action="store_true", help="skip the scaling table and the cold start")
    parser.add_argument("--out", type=Path, help="folder for results.json, results.md and results.png")
    return parser


def main(argv=None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    shapes = args.shapes.split(",")
    providers = args.providers.split(",")
    for given, known, option in ((shapes, SHAPES, "--shapes"), (providers, PROVIDERS, "--providers")):
        unknown = [name for name in given if name not in known]
        if unknown:
            parser.error(f"{option}: unknown {', '.join(unknown)}; choose from {', '.join(known)}")
    if "ctckit" not in providers:
        parser.error("--providers must include ctckit (the ratios are relative to it)")
    require("bench", ["torch"], "torch,bench")
    import torch

    import ctckit

    torch.set_num_threads(args.threads)
    ctckit.set_num_threads(args.threads)
    report = dict(threads=args.threads, machine=dict(cpus=os.cpu_count()))
    print(f"CTC loss, float32, {args.threads} threads; median of {args.repeats} interleaved runs or more (as many as "
          f"fit in about {ROUND_BUDGET_S:.0f} s a table cell, at most {MAX_ROUNDS}) (ms); ratio = fastest peer / ctckit")
    report["speed"] = run_speed(shapes, providers, args.repeats)
    if not args.no_step:
        print()
        report["training_step"] = run_step(shapes, providers, args.repeats)
    if not args.no_memory:
        report["memory"] = run_memory([s for s in MEMORY_SHAPES if s in shapes], providers_that_ran(report))
        if not args.no_step:
            rows = report["training_step"]["rows"]
            ran = [p for p in rows[0]["ms"] if not p.endswith(" fwd")] if rows else []  # the steps' memory
            report["training_step"]["memory"] = run_step_memory(shapes, ran)  # every shape: the step's target is on each
    if not args.no_extras:
        report["scaling"] = run_scaling(args.repeats)
        report["cold_start"] = run_cold_start()
    table = markdown(report)
    if "training_step" in report:
        table += "\n".join(step_markdown(report["training_step"])) + "\n"
    print()
    print(table)
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "results.json").write_text(json.dumps(report, indent=1))
        (args.out / "results.md").write_text(table)
        if plot(report, args.out / "results.png"):
            print(f"plot: {args.out / 'results.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
