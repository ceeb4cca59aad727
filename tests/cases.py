"""Random CTC problems covering every input form torch accepts."""

from dataclasses import dataclass

import numpy as np

from conftest import log_softmax


@dataclass
class Case:
    log_probs: np.ndarray  # (T, N, C)
    labels: list  # per item, list of ints
    input_lengths: np.ndarray
    target_lengths: np.ndarray
    blank: int
    padded: np.ndarray  # (N, S) with garbage padding
    concatenated: np.ndarray

    @property
    def shape(self):
        return self.log_probs.shape


def random_case(rng, frames=None, batch=None, classes=None, max_target=None, *, repeats=0.3,
                infeasible=0.0, scale=1.0, dtype=np.float64, blank=None):
    """A random batch; labels repeat with probability ``repeats``; a fraction
    ``infeasible`` of the items get targets too long for their input."""
    frames = frames or int(rng.integers(1, 40))
    batch = batch or int(rng.integers(1, 6))
    classes = classes or int(rng.integers(2, 12))
    blank = int(rng.integers(0, classes)) if blank is None else blank
    non_blank = np.array([c for c in range(classes) if c != blank])
    input_lengths = rng.integers(0, frames + 1, batch)
    input_lengths[rng.integers(0, batch)] = frames  # at least one full-length item
    labels = []
    for n in range(batch):
        if rng.random() < infeasible:
            length = int(input_lengths[n]) + 1
        else:
            upper = max(0, int(input_lengths[n]) // 2) if max_target is None else min(max_target, int(input_lengths[n]) // 2)
            length = int(rng.integers(0, upper + 1))
        seq = []
        for _ in range(length):
            if seq and rng.random() < repeats:
                seq.append(seq[-1])
            else:
                seq.append(int(rng.choice(non_blank)))
        labels.append(seq)
    target_lengths = np.array([len(s) for s in labels], dtype=np.int64)
    width = max(1, int(target_lengths.max(initial=0)) + int(rng.integers(0, 3)))
    padded = rng.integers(-5, classes + 5, (batch, width))  # garbage padding, ignored
    for n, seq in enumerate(labels):
        padded[n, : len(seq)] = seq
    concatenated = np.array([c for seq in labels for c in seq], dtype=np.int64)
    log_probs = log_softmax(scale * rng.standard_normal((frames, batch, classes))).astype(dtype)
    return Case(log_probs, labels, input_lengths.astype(np.int64), target_lengths, blank, padded, concatenated)
