"""Speed of forced alignment and beam search, against the references a user would reach for.

Forced alignment: ctckit's batched Viterbi against torchaudio's ``forced_align`` when
torchaudio is importable, else against a straightforward NumPy Viterbi (vectorised over
states, one item at a time). Beam search: ctckit against pyctcdecode without a language
model at the same beam width and token pruning, on the same outputs; reports how often
the best hypotheses agree and the speed ratio, on two kinds of outputs:

- a trained model's: the demo's OCR model (``ctckit.demo``, needs torch) trained for
  ``--model-steps`` steps, decoding 512 validation lines;
- synthetic peaky outputs with growing noise, where the search is hard; where the two
  disagree, the exact CTC loss says whose labeling is the more probable.

Run: ``python benchmarks/bench_align.py`` (``pip install pyctcdecode`` for beam search).
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np

import ctckit.numpy as cn


def _median_seconds(fn, repeats):
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def numpy_viterbi(lp, labels, blank=0):
    """Reference: Viterbi for one (T, C) item, vectorised over the states with NumPy."""
    ext = [blank]
    for c in labels:
        ext += [int(c), blank]
    ext = np.array(ext)
    frames, width = lp.shape[0], len(ext)
    can_skip = np.zeros(width, dtype=bool)
    can_skip[3::2] = ext[3::2] != ext[1:-2:2]
    delta = np.full(width, -np.inf)
    delta[:2] = lp[0, ext[:2]]
    back = np.zeros((frames, width), dtype=np.int8)
    for t in range(1, frames):
        stay, one, two = delta, np.r_[-np.inf, delta[:-1]], np.where(can_skip, np.r_[-np.inf, -np.inf, delta[:-2]], -np.inf)
        stacked = np.stack([stay, one, two])
        back[t] = stacked.argmax(0)
        delta = stacked.max(0) + lp[t, ext]
    s = width - 1 if delta[-1] >= delta[-2] else width - 2
    path = np.empty(frames, dtype=np.int64)
    for t in range(frames - 1, -1, -1):
        path[t] = ext[s]
        s -= int(back[t, s])
    return path


def bench_alignment(repeats):
    rng = np.random.default_rng(0)
    print("forced alignment, float32, all inputs of length T (ms per batch, median)")
    print(f"{'T N C S':>18} | {'ctckit':>8} | {'reference':>10} | ratio | reference")
    for frames, batch, classes, length in [(200, 16, 32, 60), (1000, 8, 32, 300), (3000, 4, 64, 800)]:
        lp = rng.standard_normal((frames, batch, classes)).astype(np.float32)
        lp -= np.log(np.exp(lp).sum(-1, keepdims=True))
        targets = rng.integers(1, classes, (batch, length))
        ours = _median_seconds(lambda: cn.forced_align(lp, targets, [frames] * batch, [length] * batch), repeats)
        try:
            import torch
            import torchaudio.functional as AF

            tlp = torch.from_numpy(lp)

            def reference():
                for n in range(batch):
                    AF.forced_align(tlp[:, n][None], torch.from_numpy(targets[n][None]).int(), blank=0)

            name = "torchaudio.forced_align, per item"
        except ImportError:
            def reference():
                for n in range(batch):
                    numpy_viterbi(lp[:, n], targets[n])

            name = "NumPy Viterbi, per item"
        theirs = _median_seconds(reference, max(3, repeats // 3))
        expected = numpy_viterbi(lp[:, 0], targets[0])
        assert (cn.forced_align(lp[:, 0], targets[0], frames, length)[0] == expected).all()
        print(f"{frames:>5} {batch:>3} {classes:>3} {length:>4} | {ours * 1e3:8.2f} | {theirs * 1e3:10.2f} | {theirs / ours:5.1f} | {name}")


def _trained_model_outputs(steps):
    """(log_probs (T, N, C) float32, alphabet) of the demo model after ``steps`` training steps."""
    import torch

    import ctckit.torch as ct
    from ctckit import demo

    model, _, seconds = demo.train(ct.CTCLoss(), steps, 0, 32, steps, False)
    images, labels, _ = demo.TextLines(10_000).batch(512)
    model.eval()
    with torch.no_grad():
        lp = model(torch.from_numpy(images)).numpy()
    greedy = cn.greedy_decode(lp)
    cer = sum(demo._edit_distance(g, l) for g, l in zip(greedy, labels)) / sum(map(len, labels))
    print(f"demo OCR model trained {steps} steps in {seconds:.0f} s; greedy CER on 512 validation lines {cer:.2%}")
    return lp, [""] + list(demo.CHARSET)


def bench_beam_on_trained_model(repeats, beam_widths, steps):
    try:
        import torch  # noqa: F401
        from pyctcdecode import build_ctcdecoder
    except ImportError as error:
        print(f"beam search on a trained model: {error.name} not installed: skipped")
        return
    lp, alphabet = _trained_model_outputs(steps)
    frames, batch, classes = lp.shape
    decoder = build_ctcdecoder(alphabet)
    token_min = -5.0  # pyctcdecode's default token_min_logp
    print(f"beam search on its outputs: {batch} items of T={frames}, C={classes} (ms per batch, median)")
    print(f"{'beam':>5} | {'ctckit':>8} | {'pyctcdecode':>11} | ratio | best hypotheses agree")
    for beam_width in beam_widths:
        def ours():
            return cn.beam_search(lp, beam_width=beam_width, token_min_log_prob=token_min)

        def theirs():
            return [decoder.decode(lp[:, n], beam_width=beam_width, token_min_logp=token_min) for n in range(batch)]

        ours_text = ["".join(alphabet[c] for c in hyps[0][0]) for hyps in ours()]
        agree = np.mean([a == b for a, b in zip(ours_text, theirs())])
        t_ours = _median_seconds(ours, repeats)
        t_theirs = _median_seconds(theirs, max(3, repeats // 3))
        print(f"{beam_width:>5} | {t_ours * 1e3:8.1f} | {t_theirs * 1e3:11.1f} | {t_theirs / t_ours:5.1f} | {agree:.2%}")


def bench_beam_search(repeats, beam_width):
    try:
        from pyctcdecode import build_ctcdecoder
    except ImportError:
        print("beam search: pyctcdecode not installed (pip install pyctcdecode): skipped")
        return
    alphabet = [""] + [chr(ord("a") + i) for i in range(26)] + [" ", "'"]
    index = {c: i for i, c in enumerate(alphabet)}
    classes, frames, batch = len(alphabet), 200, 32
    decoder = build_ctcdecoder(alphabet)
    token_min = -5.0  # pyctcdecode's default token_min_logp
    print(f"beam search on synthetic outputs, beam {beam_width}, {batch} items of T={frames}, C={classes} (ms per batch, median)")
    for noise in (0.5, 1.0, 1.5):
        rng = np.random.default_rng(1)
        # outputs like a trained model's: blank-dominated, each character of a random
        # transcript peaking on one or two frames, plus noise that leaves room for doubt
        logits = rng.standard_normal((frames, batch, classes)) * noise
        logits[:, :, 0] += 4.0
        for n in range(batch):
            for t in range(1, frames - 1, 3):
                c = rng.integers(1, classes)
                logits[t, n, c] += 5.5
                if rng.random() < 0.3:
                    logits[t + 1, n, c] += 5.5
        lp = (logits - np.log(np.exp(logits).sum(-1, keepdims=True))).astype(np.float32)

        def ours():
            return cn.beam_search(lp, beam_width=beam_width, token_min_log_prob=token_min)

        def theirs():
            return [decoder.decode(lp[:, n], beam_width=beam_width, token_min_logp=token_min) for n in range(batch)]

        ours_best = [hyps[0][0] for hyps in ours()]
        their_best = [[index[c] for c in text] for text in theirs()]
        # pyctcdecode's output is word-based (outer spaces stripped, runs of spaces merged):
        # compare texts normalised the same way
        words = lambda labels: " ".join("".join(alphabet[c] for c in labels).split())
        agree = [words(a) == words(b) for a, b in zip(ours_best, their_best)]
        # where they differ, which labeling is more probable under the model (exact CTC loss)?
        exact = lambda n, labels: -cn.ctc_loss(lp[:, n].astype(np.float64), labels, frames, len(labels), reduction="sum")
        ours_better = sum(exact(n, a) > exact(n, b) for n, (a, b, same) in enumerate(zip(ours_best, their_best, agree)) if not same)
        # a far wider search without beam pruning, as the best available estimate of the truth
        wide = [hyps[0][0] for hyps in cn.beam_search(lp, beam_width=1024, token_min_log_prob=token_min, beam_prune_log_prob=-np.inf)]
        ours_wide = np.mean([words(a) == words(w) for a, w in zip(ours_best, wide)])
        theirs_wide = np.mean([words(b) == words(w) for b, w in zip(their_best, wide)])
        t_ours = _median_seconds(ours, repeats)
        t_theirs = _median_seconds(theirs, max(3, repeats // 3))
        print(f"  noise {noise}: ctckit {t_ours * 1e3:.1f}, pyctcdecode {t_theirs * 1e3:.1f}, ratio {t_theirs / t_ours:.1f}x; "
              f"best hypotheses agree on {np.mean(agree):.0%}; where they differ, ctckit's is the more probable "
              f"labeling (exact CTC loss) in {ours_better} of {len(agree) - sum(agree)}; "
              f"equal to a 1024-wide search's: ctckit {ours_wide:.0%}, pyctcdecode {theirs_wide:.0%}")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--beam-width", type=int, default=16, help="beam width on the synthetic outputs")
    parser.add_argument("--beam-widths", type=int, nargs="+", default=[4, 16, 64], help="beam widths on the model's outputs")
    parser.add_argument("--model-steps", type=int, default=400, help="training steps of the demo model (0: skip that part)")
    args = parser.parse_args(argv)
    bench_alignment(args.repeats)
    if args.model_steps > 0:
        bench_beam_on_trained_model(args.repeats, args.beam_widths, args.model_steps)
    bench_beam_search(args.repeats, args.beam_width)


if __name__ == "__main__":
    main()
