"""ctckit.decoder against pyctcdecode: word error rate, agreement and time per line.

Synthetic OCR-like lines: sentences of a word bigram chain over a small vocabulary,
rendered as peaky, noisy CTC posteriors (a known path of characters, blanks and spaces;
Gaussian noise on the logits; some characters confused with another letter nearly as
strongly, so that greedy decoding makes character errors, some of which a language model
can fix). A bigram ARPA model is estimated from other sentences of the same chain.

pyctcdecode 0.5 pins numpy<2, so it runs in its own virtual environment (created at
``--venv`` on first use from ``--wheel``, with kenlm from ``--kenlm`` if given) in a
subprocess that reads the posteriors from an .npz file. Both decoders get the same ARPA
model, labels, beam width and pruning (pyctcdecode's ``decode`` defaults). Times are the
CPU time of the decoding process (``time.process_time``), the best of a few passes, each
pass pyctcdecode's and then ctckit's, so that other work on the machine disturbs them less
and a slower minute slows both.

    python benchmarks/bench_lm_decoder.py [--lines 300] [--venv /tmp/pyctcdecode-venv]

``--demo`` takes the lines from ``ctckit demo``'s recognizer instead: it trains the demo's
model (about 3 minutes on 2 cores; ``--demo-weights`` loads or saves its state dict), and
its outputs on noisy images of words from a vocabulary (``ctckit.demo_lm``: one word an
image, pixel noise 0.1 instead of the training's 0.05) are decoded with the ARPA model of
that vocabulary, as ``ctckit demo --lm`` does.
"""

import argparse
import collections
import json
import math
import os
import subprocess
import tempfile
import time

import numpy as np

LABELS = [""] + list(" abcdefghijklmnopqrstuvwxyz")

_PYCTCDECODE = r"""
import json, sys, time
import numpy as np
from pyctcdecode import build_ctcdecoder
data = np.load(sys.argv[1])
options = json.loads(sys.argv[2])
logits = np.split(data["logits"], np.cumsum(data["lengths"])[:-1])
out = {}
for name, path in (("lm", options["arpa"]), ("plain", None)):
    decoder = build_ctcdecoder(options["labels"], path, alpha=options["alpha"], beta=options["beta"])
    decoder.decode(logits[0])
    passes = []
    for _ in range(options["passes"]):
        start = time.process_time()
        texts = [decoder.decode(x) for x in logits]
        passes.append(time.process_time() - start)
    out[name] = {"texts": texts, "seconds": min(passes)}
print(json.dumps(out))
"""


def make_chain(rng, words=150, successors=6):
    """A vocabulary of pronounceable words and, for each, a few likely next words."""
    consonants, vowels = "bcdfghklmnprstvz", "aeiou"
    vocabulary = set()
    while len(vocabulary) < words:
        length = int(rng.integers(2, 5))
        vocabulary.add("".join(rng.choice(list(consonants)) + rng.choice(list(vowels)) for _ in range(length))[: int(rng.integers(3, 9))])
    vocabulary = sorted(vocabulary)
    follow = {w: list(rng.choice(vocabulary, successors, replace=False)) for w in vocabulary + ["<s>"]}
    return vocabulary, follow


def sentence(rng, follow, low=4, high=9):
    words, previous = [], "<s>"
    for _ in range(int(rng.integers(low, high))):
        previous = str(rng.choice(follow[previous]))
        words.append(previous)
    return words


def write_bigram_arpa(sentences, path, discount=0.5):
    """A back-off bigram ARPA model: add-one unigrams, absolutely discounted bigrams."""
    unigram, bigram = collections.Counter(), collections.Counter()
    for words in sentences:
        sequence = ["<s>"] + list(words) + ["</s>"]
        unigram.update(sequence[1:])
        bigram.update(zip(sequence[:-1], sequence[1:]))
    vocabulary = sorted(unigram) + ["<unk>"]
    total = sum(unigram.values()) + len(vocabulary)
    p1 = {w: (unigram[w] + 1) / total for w in vocabulary}
    history, seen = collections.Counter(), collections.defaultdict(list)
    for (u, w), count in sorted(bigram.items()):
        history[u] += count
        seen[u].append(w)
    lines, backoff = [], {}
    for u in sorted(seen):
        lines += [f"{math.log10((bigram[u, w] - discount) / history[u]):.6f}\t{u} {w}" for w in seen[u]]
        backoff[u] = discount * len(seen[u]) / history[u] / (1 - sum(p1[w] for w in seen[u]))
    out = ["\\data\\", f"ngram 1={len(vocabulary) + 1}", f"ngram 2={len(lines)}", "", "\\1-grams:",
           f"-99\t<s>\t{math.log10(backoff['<s>']):.6f}"]
    out += [f"{math.log10(p1[w]):.6f}\t{w}" + (f"\t{math.log10(backoff.get(w, 1.0)):.6f}" if w != "</s>" else "") for w in vocabulary]
    out += ["", "\\2-grams:"] + lines + ["", "\\end\\", ""]
    with open(path, "w", encoding="utf-8") as file:
        file.write("\n".join(out))


def render(rng, text, noise=1.0, peak=8.0, confusion=0.1):
    """(T, C) log-probabilities of ``text`` along a random path, with noise and confusions."""
    path = []
    for char in text:
        label = LABELS.index(char)
        path += [label] * int(rng.integers(1, 4)) + [0] * int(rng.integers(0, 3))
    logits = rng.normal(0.0, noise, (len(path), len(LABELS)))
    logits[np.arange(len(path)), path] += peak
    t = 0
    while t < len(path):
        end = t
        while end < len(path) and path[end] == path[t]:
            end += 1
        if path[t] > 1 and rng.random() < confusion:  # a letter confused with another, about as strong
            other = int(rng.integers(2, len(LABELS)))
            logits[t:end, other] += peak + rng.normal(0.0, 1.0)
        t = end
    logits -= logits.max(axis=1, keepdims=True)
    return logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))


def word_errors(reference, hypothesis):
    """Word-level edit distance."""
    a, b = reference.split(), hypothesis.split()
    row = list(range(len(b) + 1))
    for i in range(1, len(a) + 1):
        previous, row[0] = row[0], i
        for j in range(1, len(b) + 1):
            previous, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, previous + (a[i - 1] != b[j - 1]))
    return row[-1]


def ensure_venv(venv, wheel, kenlm):
    python = os.path.join(venv, "bin", "python")
    if not os.path.exists(python):
        subprocess.run(["python3", "-m", "venv", venv], check=True)
        packages = [wheel, "numpy<2"] + ([kenlm] if kenlm else [])
        subprocess.run([python, "-m", "pip", "install", "-q", *packages], check=True)
    return python


def synthetic_lines(arguments, folder):
    """``(labels, arpa, references, logits)``: sentences of a bigram chain as noisy posteriors."""
    rng = np.random.default_rng(arguments.seed)
    _, follow = make_chain(rng)
    arpa = os.path.join(folder, "bigram.arpa")
    write_bigram_arpa([sentence(rng, follow) for _ in range(3000)], arpa)
    references = [" ".join(sentence(rng, follow)) for _ in range(arguments.lines)]
    return LABELS, arpa, references, [render(rng, text) for text in references]


def demo_lines(arguments, folder):
    """``(labels, arpa, references, logits)``: the demo recognizer on noisy word images."""
    from pathlib import Path

    import torch

    import ctckit
    import ctckit.torch as ct
    from ctckit import demo, demo_lm

    torch.set_num_threads(2)
    ctckit.set_num_threads(2)
    model = demo.build_model()
    if arguments.demo_weights and os.path.exists(arguments.demo_weights):
        model.load_state_dict(torch.load(arguments.demo_weights))
    else:
        model, _, _ = demo.train(ct.CTCLossFromLogits(blank=demo.BLANK, zero_infinity=True), 1500, arguments.seed, 32, 50,
                                 False)
        if arguments.demo_weights:
            torch.save(model.state_dict(), arguments.demo_weights)
    words = demo_lm.vocabulary(arguments.seed)
    arpa = Path(folder) / "words.arpa"
    demo_lm.write_word_arpa(words, arpa)
    rng = np.random.default_rng(arguments.seed + 20_000)
    references = [words[i] for i in rng.integers(0, len(words), arguments.lines)]
    lines = demo.TextLines(arguments.seed + 20_000)
    images = np.stack([lines.sample(text=word, noise=demo_lm.NOISE)[0] for word in references])[:, None]
    model.eval()
    with torch.no_grad():
        log_probs = model(torch.from_numpy(images)).log_softmax(-1).double().numpy()
    return [""] + list(demo.CHARSET), str(arpa), references, [log_probs[:, n] for n in range(arguments.lines)]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lines", type=int, default=300)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--venv", default="/tmp/pyctcdecode-venv")
    parser.add_argument("--wheel", default="pyctcdecode==0.5.0", help="pyctcdecode to install (a file or a requirement)")
    parser.add_argument("--kenlm", default="kenlm", help="kenlm to install beside it (a file or a requirement)")
    parser.add_argument("--demo", action="store_true", help="decode the demo recognizer's outputs (see above)")
    parser.add_argument("--demo-weights", help="a state dict of the demo's model: loaded if it exists, else saved there")
    parser.add_argument("--alpha", type=float, default=0.5)
    parser.add_argument("--beta", type=float, default=1.5)
    parser.add_argument("--passes", type=int, default=3)
    parser.add_argument("--show", type=int, default=5, help="lines where ctckit and pyctcdecode differ to print")
    arguments = parser.parse_args()

    import ctckit._lm
    import ctckit.decoder
    import ctckit.numpy

    folder = tempfile.mkdtemp(prefix="bench_lm_")
    labels, arpa, references, logits = (demo_lines if arguments.demo else synthetic_lines)(arguments, folder)
    np.savez(os.path.join(folder, "logits.npz"), logits=np.concatenate(logits), lengths=[len(x) for x in logits])

    python = ensure_venv(arguments.venv, arguments.wheel, arguments.kenlm)
    options = {"labels": labels, "arpa": arpa, "alpha": arguments.alpha, "beta": arguments.beta, "passes": 1}
    builders = {"plain": lambda: ctckit.decoder.build_ctcdecoder(labels)}
    for backend in ("builtin", "kenlm"):
        if backend == "builtin" or ctckit._lm.kenlm_available():
            builders[backend] = lambda backend=backend: ctckit.decoder.build_ctcdecoder(
                labels, arpa, alpha=arguments.alpha, beta=arguments.beta, lm_backend=backend)
    runs, texts, cold, warm = [], {}, collections.defaultdict(list), collections.defaultdict(list)
    for _ in range(arguments.passes):  # pyctcdecode's pass, then ctckit's: a slower minute slows both
        run = subprocess.run([python, "-c", _PYCTCDECODE, os.path.join(folder, "logits.npz"), json.dumps(options)],
                             check=True, capture_output=True, text=True)
        runs.append(json.loads(run.stdout.strip().splitlines()[-1]))
        for name, build in builders.items():
            decode = build().decode  # a new decoder: an empty score cache
            decode(logits[0])
            for times in (cold[name], warm[name]):  # the same lines again with that decoder
                start = time.process_time()
                texts[name] = [decode(x) for x in logits]
                times.append((time.process_time() - start) / len(logits))
    theirs = {kind: {"texts": runs[-1][kind]["texts"], "seconds": min(r[kind]["seconds"] for r in runs)}
              for kind in ("plain", "lm")}

    greedy = [" ".join("".join(labels[c] for c in ctckit.numpy.greedy_decode(x)).split()) for x in logits]
    rows = [("greedy", greedy, None, "plain"), ("ctckit, no LM", texts["plain"], (min(cold["plain"]), min(warm["plain"])), "plain"),
            ("pyctcdecode, no LM", theirs["plain"]["texts"], [theirs["plain"]["seconds"] / len(logits)] * 2, "plain")]
    for backend in ("builtin", "kenlm"):
        if backend in texts:
            rows.append((f"ctckit, LM ({backend})", texts[backend], (min(cold[backend]), min(warm[backend])), "lm"))
    rows.append(("pyctcdecode, LM (kenlm)", theirs["lm"]["texts"], [theirs["lm"]["seconds"] / len(logits)] * 2, "lm"))
    words = sum(len(r.split()) for r in references)
    print(f"{len(logits)} lines, {words} words, {sum(len(x) for x in logits) / len(logits):.0f} frames per line on average, "
          f"beam_width 100, beam_prune_logp -10, token_min_logp -5, alpha {arguments.alpha}, beta {arguments.beta}; "
          f"time: CPU time of this process, best of {arguments.passes} passes")
    print("| decoder | WER % | same best text as pyctcdecode with the same LM setting (% lines) | ms per line, new decoder "
          "| pyctcdecode's time / this | ms per line, decoder reused | pyctcdecode's time / this |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for name, texts, seconds, kind in rows:
        wer = 100 * sum(word_errors(r, h) for r, h in zip(references, texts)) / words
        agree = 100 * np.mean([a == b for a, b in zip(texts, theirs[kind]["texts"])])
        times = ["-"] * 4
        if seconds is not None:
            theirs_per_line = theirs[kind]["seconds"] / len(logits)
            times = [f"{1000 * seconds[0]:.3f}", f"{theirs_per_line / seconds[0]:.1f}x",
                     f"{1000 * seconds[1]:.3f}", f"{theirs_per_line / seconds[1]:.1f}x"]
        print(f"| {name} | {wer:.2f} | {agree:.1f} | " + " | ".join(times) + " |")
    for name, texts, _, kind in rows:
        if name.startswith("ctckit, LM (builtin)"):
            differ = [i for i, (a, b) in enumerate(zip(texts, theirs[kind]["texts"])) if a != b]
            for i in differ[:arguments.show]:
                print(f"line {i}: reference {references[i]!r}\n  ctckit      {texts[i]!r}\n  pyctcdecode {theirs[kind]['texts'][i]!r}")


if __name__ == "__main__":
    main()
