"""``ctckit demo --lm``: a word language model reads what the recognizer misreads.

After training, the demo's model reads images of words drawn from a vocabulary, with
more noise than it was trained on, so that it gets letters wrong. The same outputs are
decoded greedily and by :mod:`ctckit.decoder` with a word language model over the
vocabulary (an ARPA file written next to the PNGs): a misread word whose letters are
ambiguous is pulled towards a word of the vocabulary. It reports the word error rate
(WER: each image is one word) and the CER of both, and a few corrected words.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

VOCABULARY_SIZE = 400
LETTERS = "abcdefghijklmnopqrstuvwxyz"
NOISE = 0.1
"""Standard deviation of the pixel noise of the words' images (training images: 0.05)."""
ALPHA, BETA = 1.0, 0.0
"""The decoder's language-model weight and word bonus (one word a line: the bonus does not matter)."""


def vocabulary(seed: int, size: int = VOCABULARY_SIZE) -> list[str]:
    """``size`` distinct random words of 4 to 9 letters (the same for the same seed)."""
    rng = np.random.default_rng(seed + 30_000)
    words = set()
    while len(words) < size:
        words.add("".join(LETTERS[i] for i in rng.integers(0, len(LETTERS), int(rng.integers(4, 10)))))
    return sorted(words)


def write_word_arpa(words, path: Path) -> None:
    """An ARPA bigram model of one-word sentences: the word uniform over ``words`` after
    ``<s>``, then ``</s>``; ``<unk>`` 10^-6 (KenLM reads bigram models and longer)."""
    log_p = round(math.log10(1.0 / len(words)), 6)
    lines = ["\\data\\", f"ngram 1={len(words) + 3}", f"ngram 2={2 * len(words)}", "", "\\1-grams:", "-99\t<s>\t0",
             f"{log_p}\t</s>", "-6\t<unk>"]
    lines += [f"{log_p}\t{word}\t0" for word in words]
    lines += ["", "\\2-grams:"] + [f"{log_p}\t<s> {word}" for word in words] + [f"0\t{word} </s>" for word in words]
    path.write_text("\n".join(lines + ["", "\\end\\", ""]))


def edit_distance(a, b) -> int:
    """Levenshtein distance between two sequences."""
    row = list(range(len(b) + 1))
    for i, x in enumerate(a, 1):
        prev, row[0] = row[0], i
        for j, y in enumerate(b, 1):
            prev, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, prev + (x != y))
    return row[-1]


def _rates(read, truth) -> tuple[float, float]:
    """(WER, CER) of one-word lines."""
    words = sum(r != t for r, t in zip(read, truth)) / len(truth)
    chars = sum(edit_distance(r, t) for r, t in zip(read, truth)) / sum(len(t) for t in truth)
    return words, chars


def evaluate(model, lines, charset: str, blank: int, seed: int, size: int, out: Path) -> dict:
    """Read ``size`` noisy word images drawn by ``lines`` (the demo's ``TextLines``;
    class k + 1 is ``charset[k]``) greedily and with the language model; print and return
    both error rates."""
    import torch

    import ctckit.torch as ct
    from ctckit.decoder import build_ctcdecoder

    words = vocabulary(seed)
    path = out / "lm.arpa"
    write_word_arpa(words, path)
    rng = np.random.default_rng(seed + 20_000)
    truth = [words[i] for i in rng.integers(0, len(words), size)]
    images = np.stack([lines.sample(text=word, noise=NOISE)[0] for word in truth])[:, None]
    model.eval()
    with torch.no_grad():
        log_probs = model(torch.from_numpy(images)).log_softmax(-1)
    greedy = ["".join(charset[c - 1] for c in labels) for labels in ct.greedy_decode(log_probs, blank=blank)]
    decoder = build_ctcdecoder([""] + list(charset), str(path), alpha=ALPHA, beta=BETA, lm_backend="builtin")
    with_lm = decoder.decode_batch(None, [log_probs[:, n].numpy() for n in range(size)], beam_width=32)
    result = {"greedy": _rates(greedy, truth), "language model": _rates(with_lm, truth)}
    print(f"\nlanguage model ({size} images of words from a {len(words)}-word vocabulary, pixel noise {NOISE} "
          f"instead of 0.05; an ARPA model of the vocabulary, {path}):")
    for name, (wer, cer) in result.items():
        print(f"  {name:>15}: word error rate {wer:.1%}, CER {cer:.2%}")
    fixed = [n for n in range(size) if greedy[n] != truth[n] and with_lm[n] == truth[n]]
    broken = [n for n in range(size) if greedy[n] == truth[n] and with_lm[n] != truth[n]]
    print(f"  words the language model corrected: {len(fixed)}, made wrong: {len(broken)}")
    for n in fixed[:5]:
        print(f"  {truth[n]:>12} | greedy {greedy[n]:>12} | with the LM {with_lm[n]:>12}")
    return result
