"""What the benchmarks share: the suite of shapes, their inputs, and interleaved timing."""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

SHAPES = {  # name: (T, N, C, S_max)
    "docs": (50, 16, 20, 30),
    "ocr": (100, 64, 100, 40),
    "char": (500, 32, 32, 150),
    "bpe1k": (250, 32, 1024, 80),
    "bpe5k": (250, 16, 5000, 80),
    "long": (2000, 8, 64, 500),
    "xlong": (10000, 4, 32, 2000),
}


@dataclass
class Problem:
    """One shape's inputs, as NumPy arrays: float32 log-probs (T, N, C) and padded targets."""

    log_probs: np.ndarray
    targets: np.ndarray
    input_lengths: np.ndarray
    target_lengths: np.ndarray


def make_problem(shape, seed=0) -> Problem:
    """Targets uniform in [1, C), lengths uniform in [S/2, S], all inputs of length T,
    log_softmax of standard normal logits, float32."""
    frames, batch, classes, max_target = shape
    rng = np.random.default_rng(seed)
    logits = rng.standard_normal((frames, batch, classes)).astype(np.float32)
    top = logits.max(-1, keepdims=True)
    log_probs = (logits - top - np.log(np.exp(logits - top).sum(-1, keepdims=True))).astype(np.float32)
    targets = rng.integers(1, classes, (batch, max_target)).astype(np.int64)
    target_lengths = rng.integers(max_target // 2, max_target + 1, batch).astype(np.int64)
    input_lengths = np.full(batch, frames, dtype=np.int64)
    return Problem(log_probs, targets, input_lengths, target_lengths)



ROUND_BUDGET_S = 2.0
"""Seconds a table cell's interleaved rounds may take: a fast shape gets more rounds than
``--repeats`` (docs: a few ms a round), whose median moves less from run to run."""
MAX_ROUNDS = 200


def interleaved_medians(calls: dict, repeats: int, warmup: int = 1, budget: float = 0.0) -> dict:
    """Median seconds per callable, running them round-robin ``repeats`` times, in a
    shuffled order each round; more rounds (up to :data:`MAX_ROUNDS`) while they fit in
    ``budget`` seconds, as one more untimed round after the warmup estimates them (the
    warmup's first calls may compile)."""
    for fn in calls.values():
        for _ in range(warmup):
            fn()
    if budget:
        start = time.perf_counter()
        for fn in calls.values():
            fn()
        per_round = time.perf_counter() - start
        repeats = max(repeats, min(MAX_ROUNDS, int(budget / max(per_round, 1e-9))))
    samples = {name: [] for name in calls}
    order = list(calls)
    shuffle = np.random.default_rng(0)
    for _ in range(repeats):
        # a new order each round: no provider always runs right after another (some peers'
        # thread pools keep spinning for a while after a call)
        shuffle.shuffle(order)
        for name in order:
            start = time.perf_counter()
            calls[name]()
            samples[name].append(time.perf_counter() - start)
    medians = Medians({name: statistics.median(values) for name, values in samples.items()})
    medians.rounds = repeats
    return medians


class Medians(dict):
    """Median seconds by callable, and ``rounds``: how many interleaved runs each had."""

    rounds: int


_PROBE = r"""
import gc, json, sys
sys.path.insert(0, {src!r})

def rss(field):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field):
                return int(line.split()[1]) * 1024

{setup}
run()  # compile and warm up
gc.collect()
base = rss("VmRSS:")
with open("/proc/self/clear_refs", "w") as f:
    f.write("5")  # reset the peak (VmHWM) to the current RSS
run()
print(json.dumps(rss("VmHWM:") - base))
"""


def peak_rss_growth(setup: str):
    """Growth of peak RSS (bytes) over one call of ``run``, which the Python code ``setup``
    defines, in a fresh process (after one call to compile and warm up), or None when the
    process fails."""
    code = _PROBE.format(src=str(Path(__file__).resolve().parent.parent), setup=setup)
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    if result.returncode != 0:
        return None
    return json.loads(result.stdout.strip().splitlines()[-1])


def provider_tensorflow(problem):
    """TensorFlow's ``tf.nn.ctc_loss`` (sparse labels, softmax inside: log-probs or logits
    alike) on ``problem.log_probs``: ``(losses, forward, forward_backward)``."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import tensorflow as tf

    lp = tf.constant(problem.log_probs)
    indices = [(n, k) for n in range(problem.targets.shape[0]) for k in range(problem.target_lengths[n])]
    values = [problem.targets[n, k] for n, k in indices]
    labels = tf.SparseTensor(np.array(indices, dtype=np.int64), np.array(values, dtype=np.int32),
                             (problem.targets.shape[0], problem.targets.shape[1]))
    il = tf.constant(problem.input_lengths.astype(np.int32))

    @tf.function
    def losses_fn(x):
        return tf.nn.ctc_loss(labels, x, None, il, logits_time_major=True, blank_index=0)

    @tf.function
    def grad_fn(x):
        with tf.GradientTape() as tape:
            tape.watch(x)
            loss = tf.reduce_sum(losses_fn(x))
        return tape.gradient(loss, x)

    losses = losses_fn(lp).numpy()
    return losses, lambda: losses_fn(lp).numpy(), lambda: grad_fn(lp).numpy()
