"""Forced alignment of long recordings: every back-pointer kept against bounded memory.

An item keeps one int8 back-pointer per frame and state, ``T * (2S+1)`` bytes; past
``ctckit._core.align.MAX_BACK_POINTER_BYTES`` (256 MiB) it is aligned by checkpointed
Viterbi instead, with the same result bit for bit. This script aligns synthetic peaky
recordings (a random path through a random target, each frame's log-probs putting the
path's class well above the others, C = 32, the blank in the middle), both ways where
both fit, the longest bounded only, and prints per case: the time of one call (median of
``--repeats``, in this process), the growth of peak RSS over one call (in a fresh process
per case and way, ``ctckit._bench_common.peak_rss_growth``), whether the two ways agree bit
for bit and whether the known path came back.

``--torchaudio PYTHON`` adds torchaudio's ``forced_align`` (CPU, every back-pointer kept)
on the cases that fit, run by that interpreter (torchaudio needs its own torch, e.g. in a
virtual environment of its own with ``torch==2.9.1 torchaudio==2.9.1``), fed the same
log-probs through ``.npy`` files.

Run: ``python benchmarks/bench_long_align.py`` (about two minutes on two cores; ``--quick``
leaves out the hour-long case).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import tempfile
import time

import numpy as np

import ctckit.numpy as cn
from ctckit._bench_common import peak_rss_growth
from ctckit._core import align

CLASSES, BLANK = 32, 16
CASES = [(20_000, 6_000, ("unbounded", "bounded")), (60_000, 20_000, ("unbounded", "bounded")),
         (180_000, 60_000, ("bounded",))]
"""(T, S, ways): 180,000 frames is an hour at 50 frames a second."""
BUDGETS = {"unbounded": 1 << 62, "bounded": 0}


def peaky_recording(frames, length, seed=0):
    """``(log_probs (T, C) float32, labels, path)``: a random target (a label repeats the one
    before it with probability 0.05) and a random path of ``frames`` frames that collapses to
    it; uniform noise in [0, 1) plus 5 on the path's class, so that the path is the alignment."""
    rng = np.random.default_rng(seed)
    others = np.array([c for c in range(CLASSES) if c != BLANK])
    labels = others[rng.integers(0, others.shape[0], length)]
    again = np.nonzero(rng.random(length) < 0.05)[0]
    for k in again[again > 0]:
        labels[k] = labels[k - 1]
    states = np.full(2 * length + 1, BLANK)
    states[1::2] = labels
    least = np.zeros(states.shape[0], dtype=np.int64)
    least[1::2] = 1
    least[2:-1:2] = labels[1:] == labels[:-1]
    counts = least + rng.multinomial(frames - int(least.sum()), np.full(states.shape[0], 1 / states.shape[0]))
    path = np.repeat(states, counts)
    logits = rng.random((frames, CLASSES), dtype=np.float32)
    logits[np.arange(frames), path] += 5.0
    log_probs = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    return log_probs.astype(np.float32), labels, path


_SETUP = """
import sys
sys.path.insert(0, {here!r})
import ctckit.numpy as cn
from ctckit._core import align
from bench_long_align import BLANK, peaky_recording
lp, labels, path = peaky_recording({frames}, {length})
align.MAX_BACK_POINTER_BYTES = {budget}
def run():
    cn.forced_align(lp, labels, {frames}, {length}, BLANK)
"""


_TORCHAUDIO = r"""
import json, sys, time
import numpy as np
import torch, torchaudio.functional as F

def rss(field):
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith(field))

folder, blank = sys.argv[1], int(sys.argv[2])
lp = torch.from_numpy(np.load(folder + "/lp.npy"))[None]
labels = torch.from_numpy(np.load(folder + "/labels.npy")).int()[None]
torch.set_num_threads(1)
F.forced_align(lp[:, :50], labels[:, :10], blank=blank)
base = rss("VmRSS:")
with open("/proc/self/clear_refs", "w") as f:
    f.write("5")
start = time.perf_counter()
alignment, _ = F.forced_align(lp, labels, blank=blank)
seconds = time.perf_counter() - start
growth = rss("VmHWM:") - base
np.save(folder + "/alignment.npy", alignment[0].numpy())
print(json.dumps([seconds, growth]))
"""


def torchaudio_case(python, lp, labels):
    """``(seconds, peak growth in bytes, alignment)`` of torchaudio's ``forced_align`` on one
    item, run by ``python``; None when it fails."""
    with tempfile.TemporaryDirectory() as folder:
        np.save(folder + "/lp.npy", lp)
        np.save(folder + "/labels.npy", labels)
        result = subprocess.run([python, "-c", _TORCHAUDIO, folder, str(BLANK)], capture_output=True, text=True)
        if result.returncode != 0:
            print(f"torchaudio failed: {result.stderr.strip().splitlines()[-1:]}")
            return None
        seconds, growth = json.loads(result.stdout.strip().splitlines()[-1])
        return seconds, growth, np.load(folder + "/alignment.npy")


def align_with(budget, lp, labels):
    previous = align.MAX_BACK_POINTER_BYTES
    align.MAX_BACK_POINTER_BYTES = budget
    try:
        return cn.forced_align(lp, labels, lp.shape[0], labels.shape[0], BLANK)
    finally:
        align.MAX_BACK_POINTER_BYTES = previous


def main():
    from pathlib import Path

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3, help="timed calls per case and way (one for the longest)")
    parser.add_argument("--quick", action="store_true", help="leave out the 180,000-frame case")
    parser.add_argument("--torchaudio", metavar="PYTHON", help="an interpreter that imports torchaudio: compare with its forced_align")
    args = parser.parse_args()
    here = str(Path(__file__).resolve().parent)
    align_with(0, *peaky_recording(50, 10)[:2])  # compile (or load from the cache) first
    print(f"forced alignment of one item, C = {CLASSES}, float32 log-probs; time of one call (s), peak RSS growth (MiB)")
    print(f"{'T':>8} {'S':>7} {'back-pointers':>14} | {'way':>10} | {'time':>7} | {'peak':>7} | agree | path")
    for frames, length, ways in CASES:
        if args.quick and frames > 100_000:
            continue
        lp, labels, path = peaky_recording(frames, length)
        results = {}
        for way in ways:
            repeats = 1 if frames > 100_000 else args.repeats
            times = []
            for _ in range(repeats):
                start = time.perf_counter()
                results[way] = align_with(BUDGETS[way], lp, labels)
                times.append(time.perf_counter() - start)
            growth = peak_rss_growth(_SETUP.format(here=here, frames=frames, length=length, budget=BUDGETS[way]))
            same = all(a.tobytes() == b.tobytes() for a, b in zip(results[way], results[ways[0]]))
            peak = "failed" if growth is None else f"{growth / 2**20:7.0f}"
            print(f"{frames:>8} {length:>7} {frames * (2 * length + 1) / 2**20:>10.0f} MiB | {way:>10} | "
                  f"{statistics.median(times):7.2f} | {peak:>7} | {'yes' if same else 'NO':>5} | "
                  f"{'yes' if (results[way][0] == path).all() else 'NO'}")
        if args.torchaudio and "unbounded" in ways and (theirs := torchaudio_case(args.torchaudio, lp, labels)):
            seconds, growth, alignment = theirs
            same = (alignment == results[ways[0]][0]).all()
            print(f"{frames:>8} {length:>7} {frames * (2 * length + 1) / 2**20:>10.0f} MiB | {'torchaudio':>10} | "
                  f"{seconds:7.2f} | {growth / 2**20:7.0f} | {'yes' if same else 'NO':>5} | "
                  f"{'yes' if (alignment == path).all() else 'NO'}")


if __name__ == "__main__":
    main()
