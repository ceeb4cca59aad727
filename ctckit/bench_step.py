"""The training step, benchmarked: logits -> loss -> backward to the logits.

What a training step costs around the model: from the last layer's output (float32
logits (T, N, C)) to their gradient. Each provider runs it as its users do:

- ``ctckit fused``: :func:`ctckit.torch.ctc_loss_from_logits` and ``backward()``;
- ``ctckit+log_softmax``: ``log_softmax`` then :func:`ctckit.torch.ctc_loss`;
- ``torch``: ``log_softmax`` then ``torch.nn.functional.ctc_loss``;
- ``ctckit.jax``: ``jax.value_and_grad`` of :func:`ctckit.jax.ctc_loss` (jitted), the
  drop-in for optax's;
- ``optax``: ``jax.value_and_grad`` of ``optax.ctc_loss``, which takes logits (jitted);
- ``tensorflow``: ``tf.nn.ctc_loss`` on logits (softmax inside) under a ``GradientTape``;
- ``ctckit.jax fwd``, ``optax fwd``: the two JAX losses alone (jitted), no gradient.

Each call starts from a fresh leaf, so the gradient is a new array each time, as in
training. The table prints medians of interleaved runs and the ratio of the fastest peer
(not ctckit's own log_softmax path) to the fused step, next to the physical floor: the
logits read once and their gradient written once at the copy bandwidth this machine
measures (:func:`copy_bandwidth`). Peak memory of a step is measured in a fresh process
per provider (:func:`peak_step_memory`).
"""

from __future__ import annotations

import dataclasses
import time

import numpy as np

from ._bench_common import ROUND_BUDGET_S, SHAPES, interleaved_medians, make_problem, peak_rss_growth, provider_tensorflow

STEP_PROVIDERS = ("ctckit fused", "ctckit+log_softmax", "ctckit.jax", "torch", "optax", "tensorflow", "ctckit.jax fwd",
                  "optax fwd")
FUSED, PEERS = "ctckit fused", ("torch", "optax", "tensorflow")


def make_step_problem(shape, seed=0):
    """Standard normal float32 logits (T, N, C) and the targets of :func:`ctckit.bench.make_problem`."""
    problem = make_problem(shape, seed)
    logits = np.random.default_rng(seed + 1).standard_normal(problem.log_probs.shape).astype(np.float32)
    return logits, problem


def _torch_step(logits, problem, loss_fn):
    import torch

    x0 = torch.from_numpy(logits)
    targets = torch.from_numpy(problem.targets)
    il, tl = torch.from_numpy(problem.input_lengths), torch.from_numpy(problem.target_lengths)
    with torch.no_grad():
        losses = loss_fn(x0, targets, il, tl, reduction="none").double().numpy()

    def step():
        x = x0.detach().requires_grad_()
        loss_fn(x, targets, il, tl, reduction="sum").backward()
        return x.grad

    return losses, step


def step_ctckit_fused(logits, problem):
    import ctckit.torch as ct

    return _torch_step(logits, problem, ct.ctc_loss_from_logits)


def step_ctckit_log_softmax(logits, problem):
    import ctckit.torch as ct

    return _torch_step(logits, problem, lambda x, *args, **kw: ct.ctc_loss(x.log_softmax(-1), *args, **kw))


def step_torch(logits, problem):
    import torch.nn.functional as F

    return _torch_step(logits, problem, lambda x, *args, **kw: F.ctc_loss(x.log_softmax(-1), *args, **kw))


def _jax_step(logits, problem, loss_fn, forward=False):
    import jax
    import jax.numpy as jnp

    x = jnp.asarray(np.ascontiguousarray(logits.transpose(1, 0, 2)))  # (N, T, C)
    frames, max_target = logits.shape[0], problem.targets.shape[1]
    logit_pad = jnp.asarray((np.arange(frames)[None, :] >= problem.input_lengths[:, None]).astype(np.float32))
    labels = jnp.asarray(problem.targets.astype(np.int32))
    label_pad = jnp.asarray((np.arange(max_target)[None, :] >= problem.target_lengths[:, None]).astype(np.float32))
    # the labels and paddings are arguments, as a training step's batch is: closed over, they
    # would be constants that XLA folds into the compiled function (optax's ocr forward took
    # 4.6 ms so, 9.8 ms with them as arguments; see benchmarks/NOTES.md, section 46)
    losses_fn = jax.jit(lambda z, *batch: loss_fn(z, *batch, blank_id=0))
    grad_fn = jax.jit(jax.value_and_grad(lambda z, *batch: loss_fn(z, *batch, blank_id=0).sum()))
    batch = (logit_pad, labels, label_pad)
    if forward:  # the losses alone, under jit
        return np.asarray(losses_fn(x, *batch), dtype=np.float64), lambda: losses_fn(x, *batch).block_until_ready()
    return np.asarray(losses_fn(x, *batch), dtype=np.float64), lambda: grad_fn(x, *batch)[1].block_until_ready()


def step_ctckit_jax(logits, problem):
    import ctckit.jax

    return _jax_step(logits, problem, ctckit.jax.ctc_loss)


def step_optax(logits, problem):
    import optax

    return _jax_step(logits, problem, optax.ctc_loss)


def forward_ctckit_jax(logits, problem):
    import ctckit.jax

    return _jax_step(logits, problem, ctckit.jax.ctc_loss, forward=True)


def forward_optax(logits, problem):
    import optax

    return _jax_step(logits, problem, optax.ctc_loss, forward=True)


def step_tensorflow(logits, problem):
    losses, _, forward_backward = provider_tensorflow(dataclasses.replace(problem, log_probs=logits))
    return losses.astype(np.float64), forward_backward


_LOADERS = {"ctckit fused": step_ctckit_fused, "ctckit+log_softmax": step_ctckit_log_softmax,
            "ctckit.jax": step_ctckit_jax, "torch": step_torch,
            "optax": step_optax, "tensorflow": step_tensorflow, "ctckit.jax fwd": forward_ctckit_jax,
            "optax fwd": forward_optax}


def load_step(name, logits, problem):
    """``(losses, step)``, or raise ImportError when the provider is not installed."""
    return _LOADERS[name](logits, problem)


def copy_bandwidth(nbytes: int = 256 * 2**20, repeats: int = 5) -> float:
    """Bytes per second moved by a copy between two arrays already in memory (read and
    write counted), the median of ``repeats``: the bandwidth a pass over memory gets."""
    source = np.ones(nbytes // 8)
    target = np.empty_like(source)
    np.copyto(target, source)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        np.copyto(target, source)
        times.append(time.perf_counter() - start)
    return 2 * nbytes / float(np.median(times))


def providers_for(names):
    """The step providers that correspond to the benchmark's ``--providers``."""
    wanted = set(names)
    return [p for p in STEP_PROVIDERS if (p.startswith("ctckit") and "ctckit" in wanted) or p.removesuffix(" fwd") in wanted]


def jax_ratio(row, forward=False):
    """optax's step time (or forward time) over ctckit.jax's, when both ran."""
    ms, suffix = row["ms"], " fwd" if forward else ""
    ours, theirs = "ctckit.jax" + suffix, "optax" + suffix
    return ms[theirs] / ms[ours] if theirs in ms and ours in ms else None


def run_step(shapes, providers, repeats, log=print):
    """The training-step table: per shape, each provider's median ms, the ratio of the
    fastest peer to the fused step, and the floor."""
    bandwidth = copy_bandwidth()
    log(f"training step (float32 logits -> loss -> gradient w.r.t. the logits), median ms; floor = the logits read once "
        f"and their gradient written once at {bandwidth / 1e9:.1f} GB/s (this machine's copy bandwidth)")
    rows = []
    for shape_name in shapes:
        logits, problem = make_step_problem(SHAPES[shape_name])
        loaded, skipped = {}, {}
        for name in providers_for(providers):
            try:
                loaded[name] = load_step(name, logits, problem)
            except ImportError as error:
                skipped[name] = f"not installed ({error.name})"
        reference = loaded[FUSED][0]
        agreement = {name: float(np.max(np.abs(l[0] - reference) / np.abs(reference))) for name, l in loaded.items()}
        medians = interleaved_medians({n: l[1] for n, l in loaded.items()}, repeats, budget=ROUND_BUDGET_S)
        floor_ms = 2 * logits.nbytes / bandwidth * 1e3
        row = dict(shape=shape_name, dims=SHAPES[shape_name], ms={n: v * 1e3 for n, v in medians.items()},
                   floor_ms=floor_ms, agreement=agreement, skipped=skipped, repeats=medians.rounds)
        peers = {n: row["ms"][n] for n in PEERS if n in row["ms"]}
        if peers:
            best = min(peers, key=peers.get)
            row["fastest_peer"], row["ratio"] = best, peers[best] / row["ms"][FUSED]
        rows.append(row)
        log(_step_line(row))
    return dict(bandwidth_gbs=bandwidth / 1e9, rows=rows)


def _step_line(row):
    times = " ".join(f"{n} {t:.2f}" for n, t in row["ms"].items())
    ratio = f" | fastest peer {row['fastest_peer']} x{row['ratio']:.1f}" if "ratio" in row else ""
    if jax_ratio(row) is not None:
        ratio += f" | optax / ctckit.jax x{jax_ratio(row):.1f}"
    if jax_ratio(row, forward=True) is not None:
        ratio += f", forward x{jax_ratio(row, forward=True):.1f}"
    skipped = (" | skipped: " + ", ".join(f"{n} ({why})" for n, why in row["skipped"].items())) if row["skipped"] else ""
    return f"{row['shape']:6s} step ({row['repeats']} runs): {times} | floor {row['floor_ms']:.2f}{ratio}{skipped}"


def step_markdown(step) -> list:
    """The training-step table as markdown lines."""
    names = [p for p in STEP_PROVIDERS if any(p in row["ms"] for row in step["rows"])]
    lines = ["", f"Training step (logits -> loss -> gradient), median ms; floor at {step['bandwidth_gbs']:.1f} GB/s:", "",
             "| shape | " + " | ".join(names) + " | floor | fastest peer / fused | optax / ctckit.jax: step, forward |",
             "| --- |" + " ---: |" * (len(names) + 3)]
    for row in step["rows"]:
        cells = [f"{row['ms'][n]:.2f}" if n in row["ms"] else "-" for n in names]
        ratio = f"{row['ratio']:.1f}x ({row['fastest_peer']})" if "ratio" in row else "-"
        jax = ", ".join("-" if r is None else f"{r:.1f}x" for r in (jax_ratio(row), jax_ratio(row, forward=True)))
        lines.append(f"| {row['shape']} | " + " | ".join(cells) + f" | {row['floor_ms']:.2f} | {ratio} | {jax} |")
    if step.get("memory"):
        ran = [p for p in names if any(values.get(p) is not None for values in step["memory"].values())]
        lines += ["", "| shape | " + " | ".join(f"{p} step peak MiB" for p in ran) + " |", "| --- |" + " ---: |" * len(ran)]
        for shape_name, values in step["memory"].items():
            cells = ["-" if values.get(p) is None else f"{values[p] / 2**20:.0f}" for p in ran]
            lines.append(f"| {shape_name} | " + " | ".join(cells) + " |")
    return lines


def peak_step_memory(provider, shape_name):
    """Growth of peak RSS (bytes) over one training step in a fresh process, or None."""
    return peak_rss_growth(f"from ctckit.bench_step import SHAPES, load_step, make_step_problem\n"
                           f"_, run = load_step({provider!r}, *make_step_problem(SHAPES[{shape_name!r}]))")


def run_step_memory(shapes, providers, log=print):
    table = {}
    for shape_name in shapes:
        table[shape_name] = {p: peak_step_memory(p, shape_name) for p in providers}
        log(f"{shape_name:6s} training step peak RSS growth (MiB): " + " ".join(
            f"{p} {'-' if v is None else f'{v / 2**20:.0f}'}" for p, v in table[shape_name].items()))
    return table
