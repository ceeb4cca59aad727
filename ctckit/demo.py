"""``ctckit demo``: train a small text recognizer from scratch with ctckit's CTC loss.

Synthetic text-line images (random strings of digits and lowercase letters, 3 to 10
characters, rendered with Pillow in the fonts Pillow and the system provide, with random
spacing and light noise) train a CRNN (convolutions, a bidirectional GRU, a linear
layer) with :class:`ctckit.torch.CTCLossFromLogits`, the CTC loss on the logits with the
log-softmax folded in (the recommended training path). At the end it reads validation
images with greedy and beam-search decoding, reports the character error rate (CER),
and writes ``loss.png`` (the loss curve) and ``alignment.png`` (a validation image with
the forced alignment's token spans). Nothing is downloaded.
"""

from __future__ import annotations

import argparse
import glob
import os
import sys
import time
from pathlib import Path

import numpy as np

from ._cli import SEED, int_option, require
from .demo_lm import edit_distance

CHARSET = "0123456789abcdefghijklmnopqrstuvwxyz"
BLANK = 0  # class k + 1 is CHARSET[k]
HEIGHT, WIDTH = 32, 160
FRAMES = WIDTH // 4


def _fonts():
    """Pillow's built-in scalable font and any system TrueType fonts (a few sizes each)."""
    from PIL import ImageFont

    fonts = [ImageFont.load_default(size=size) for size in (18, 20, 22)]
    for path in sorted(glob.glob("/usr/share/fonts/truetype/dejavu/DejaVuSans*.ttf"))[:4]:
        if "ExtraLight" in path:
            continue
        fonts += [ImageFont.truetype(path, size) for size in (17, 19)]
    return fonts


class TextLines:
    """Random text-line images and their labels; the same seed gives the same stream."""

    def __init__(self, seed: int):
        self.rng = np.random.default_rng(seed)
        self.fonts = _fonts()

    def sample(self, text: str | None = None, noise: float = 0.05):
        """``(pixels, labels, text)`` of one line: ``text``, or 3 to 10 random characters."""
        from PIL import Image, ImageDraw

        rng, fixed = self.rng, text is not None
        if text is None:
            length = int(rng.integers(3, 11))
            text = "".join(CHARSET[i] for i in rng.integers(0, len(CHARSET), length))
        font = self.fonts[int(rng.integers(len(self.fonts)))]
        image = Image.new("L", (WIDTH, HEIGHT), color=int(rng.integers(200, 256)))
        draw = ImageDraw.Draw(image)
        x = float(rng.integers(1, 8))
        ink = int(rng.integers(0, 70))
        for char in text:
            left, top, right, bottom = font.getbbox(char)
            draw.text((x, (HEIGHT - (bottom - top)) / 2 - top + rng.integers(-2, 3)), char, fill=ink, font=font)
            x += (right - left) + float(rng.uniform(0.5, 3.0))
        pixels = np.asarray(image, dtype=np.float32) / 255.0
        pixels += rng.normal(0.0, noise, pixels.shape).astype(np.float32)
        if x > WIDTH:  # too long for the line at this size: try again
            return self.sample(text if fixed else None, noise)
        return pixels, [CHARSET.index(c) + 1 for c in text], text

    def batch(self, size: int):
        images, labels, texts = zip(*(self.sample() for _ in range(size)))
        return np.stack(images)[:, None], list(labels), list(texts)


def build_model():
    from torch import nn

    class CRNN(nn.Module):
        """Convolutions down to one row of FRAMES columns, a BiGRU over them, logits."""

        def __init__(self, classes: int):
            super().__init__()
            def block(cin, cout, pool):
                return [nn.Conv2d(cin, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU(), nn.MaxPool2d(pool)]
            self.features = nn.Sequential(*block(1, 16, 2), *block(16, 32, 2), *block(32, 64, (2, 1)), *block(64, 64, (4, 1)))
            self.rnn = nn.GRU(64, 64, bidirectional=True, batch_first=False)
            self.head = nn.Linear(128, classes)

        def forward(self, images):  # (N, 1, H, W) -> (T, N, C) logits
            features = self.features(images).squeeze(2).permute(2, 0, 1)  # (T, N, 64)
            return self.head(self.rnn(features)[0])

    return CRNN(len(CHARSET) + 1)


class Training:
    """A fresh model, its optimizer, learning-rate schedule and data stream, trained one step
    at a time. Two built with the same seed start from the same weights and see the same
    images."""

    def __init__(self, loss_fn, steps: int, seed: int, batch: int):
        import torch

        torch.manual_seed(seed)
        self.model = build_model()
        self.data = TextLines(seed)
        self.loss_fn, self.batch = loss_fn, batch
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=2e-3, weight_decay=1e-4)
        self.schedule = torch.optim.lr_scheduler.OneCycleLR(self.optimizer, max_lr=3e-3, total_steps=steps, pct_start=0.15)
        self.losses = []
        self.step_seconds = []  # forward, loss, backward and update; drawing the images excluded
        self.model.train()

    def step(self) -> None:
        """One step on the next batch of the data stream."""
        import torch

        images, labels, _ = self.data.batch(self.batch)
        targets = torch.tensor([c for seq in labels for c in seq])
        target_lengths = torch.tensor([len(seq) for seq in labels])
        input_lengths = torch.full((self.batch,), FRAMES)
        start = time.perf_counter()
        logits = self.model(torch.from_numpy(images))
        loss = self.loss_fn(logits, targets, input_lengths, target_lengths)
        self.optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), 5.0)
        self.optimizer.step()
        self.schedule.step()
        self.step_seconds.append(time.perf_counter() - start)
        self.losses.append(float(loss.detach()))


def _progress_bar(steps: int, name: str, progress: bool):
    if not progress:
        return None
    from tqdm import tqdm

    return tqdm(total=steps, desc=name, unit="step", file=sys.stdout, mininterval=0.5)


def train(loss_fn, steps: int, seed: int, batch: int, log_every: int, progress: bool):
    """Train a fresh model; returns (model, losses per step, wall seconds)."""
    training = Training(loss_fn, steps, seed, batch)
    bar = _progress_bar(steps, getattr(loss_fn, "name", "train"), progress)
    start = time.perf_counter()
    for step in range(steps):
        training.step()
        if bar is not None:
            bar.update(1)
            if step % log_every == 0 or step == steps - 1:
                bar.set_postfix(loss=f"{np.mean(training.losses[-log_every:]):.3f}", refresh=False)
    if bar is not None:
        bar.close()
    return training.model, training.losses, time.perf_counter() - start


def train_interleaved(loss_fns: dict, steps: int, seed: int, batch: int, log_every: int, progress: bool) -> dict:
    """Train one fresh model per loss function (same seed: same weights, same images), in the
    same process, alternating steps, and which goes first each step, so that machine noise
    hits them alike. Returns {name: Training}."""
    trainings = {name: Training(loss_fn, steps, seed, batch) for name, loss_fn in loss_fns.items()}
    order = list(trainings)
    bar = _progress_bar(steps, " + ".join(order), progress)
    for step in range(steps):
        for name in order if step % 2 == 0 else order[::-1]:
            trainings[name].step()
        if bar is not None:
            bar.update(1)
            if step % log_every == 0 or step == steps - 1:
                bar.set_postfix({name: f"{np.mean(t.losses[-log_every:]):.3f}" for name, t in trainings.items()}, refresh=False)
    if bar is not None:
        bar.close()
    return trainings


def evaluate(model, seed: int, size: int):
    """CER of greedy decoding on a fixed validation set, and the data for the report."""
    import torch

    import ctckit.torch as ct

    images, labels, texts = TextLines(seed + 10_000).batch(size)
    model.eval()
    with torch.no_grad():
        log_probs = model(torch.from_numpy(images)).log_softmax(-1)
    greedy = ct.greedy_decode(log_probs, blank=BLANK)
    errors = sum(edit_distance(g, l) for g, l in zip(greedy, labels))
    cer = errors / sum(len(l) for l in labels)
    return cer, images, labels, texts, log_probs, greedy


def _text(labels) -> str:
    return "".join(CHARSET[c - 1] for c in labels)


def plot_losses(curves: dict, path: Path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 3.6))
    for name, losses in curves.items():
        smooth = np.convolve(losses, np.ones(25) / 25, mode="valid") if len(losses) > 50 else losses
        ax.plot(smooth, label=name)
    ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel("CTC loss (mean per target label)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def draw_alignment(image, log_probs, labels, path: Path):
    """The image, 4x enlarged, with each token span of the forced alignment boxed and named."""
    from PIL import Image, ImageDraw

    import ctckit.torch as ct

    alignment, scores = ct.forced_align(log_probs, labels, FRAMES, len(labels), blank=BLANK)
    spans = ct.merge_tokens(alignment, scores, blank=BLANK)
    scale = 4
    pixels = (np.clip(image[0], 0, 1) * 255).astype(np.uint8)
    canvas = Image.fromarray(pixels).convert("RGB").resize((WIDTH * scale, HEIGHT * scale), Image.NEAREST)
    full = Image.new("RGB", (WIDTH * scale, HEIGHT * scale + 40), "white")
    full.paste(canvas, (0, 0))
    draw = ImageDraw.Draw(full)
    column = WIDTH // FRAMES * scale
    for span in spans:
        x0, x1 = span.start * column, span.end * column
        draw.rectangle([x0, 1, x1 - 1, HEIGHT * scale - 2], outline=(220, 30, 30), width=2)
        draw.text((x0 + 2, HEIGHT * scale + 6), f"{CHARSET[span.token - 1]} {span.score:.2f}", fill=(200, 0, 0))
    full.save(path)
    return spans


DESCRIPTION = ("Train a small text recognizer from scratch with ctckit's CTC loss on synthetic text-line images, "
               "read validation images with greedy and beam-search decoding, report the character error rate, "
               "and write loss.png and alignment.png.")


def _parser() -> argparse.ArgumentParser:
    threads = min(2, os.cpu_count() or 1)
    parser = argparse.ArgumentParser(prog="ctckit demo", description=DESCRIPTION)
    parser.add_argument("--steps", type=int_option(1), default=1500, help="training steps (default 1500)")
    parser.add_argument("--batch", type=int_option(1), default=32, help="images per step (default 32)")
    parser.add_argument("--seed", type=SEED, default=0, help="random seed of the model and the data (default 0)")
    parser.add_argument("--out", type=Path, default=Path("demo-out"), help="folder for the PNGs (default demo-out)")
    parser.add_argument("--threads", type=int_option(1, 256), default=threads, help=f"CPU threads (default {threads})")
    parser.add_argument("--val", type=int_option(1), default=256, help="validation images (default 256)")
    parser.add_argument("--compare-torch", action="store_true",
                        help="also train the same model with torch's ctc_loss, the two alternating step by step, "
                             "and compare their median time per step and their CER")
    parser.add_argument("--lm", action="store_true",
                        help="then read noisier images of words from a vocabulary greedily and with a word language "
                             "model (ctckit.decoder), and compare their word error rates")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    return parser


def main(argv=None) -> int:
    args = _parser().parse_args(argv)
    require("demo", ["torch", "PIL", "matplotlib"] + ([] if args.no_progress else ["tqdm"]), "demo")
    import torch
    import torch.nn.functional as F

    import ctckit
    import ctckit.torch as ct

    torch.set_num_threads(args.threads)
    ctckit.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    ours = ct.CTCLossFromLogits(blank=BLANK, zero_infinity=True)
    ours.name = "ctckit"
    print(f"Training a CRNN on synthetic text lines for {args.steps} steps of {args.batch} images "
          f"({args.threads} threads, seed {args.seed}) with ctckit.torch.CTCLossFromLogits"
          + (", and the same model with torch's ctc_loss, alternating steps" if args.compare_torch else ""))
    if args.compare_torch:
        def torch_loss(logits, *inputs):
            return F.ctc_loss(logits.log_softmax(-1), *inputs, blank=BLANK, zero_infinity=True)

        trainings = train_interleaved({"ctckit": ours, "torch": torch_loss}, args.steps, args.seed, args.batch, 50,
                                      not args.no_progress)
        model, losses = trainings["ctckit"].model, trainings["ctckit"].losses
    else:
        model, losses, seconds = train(ours, args.steps, args.seed, args.batch, 50, not args.no_progress)
        print(f"trained in {seconds:.1f} s ({args.steps / seconds:.1f} steps/s); "
              f"loss {np.mean(losses[:20]):.3f} -> {np.mean(losses[-20:]):.3f}")

    cer, images, labels, texts, log_probs, greedy = evaluate(model, args.seed, args.val)
    shown = min(6, args.val)
    beams = ct.beam_search(log_probs[:, :shown], beam_width=8, blank=BLANK)
    print(f"\nvalidation ({args.val} images): CER {cer:.2%} (greedy)")
    print(f"{'truth':>12} | {'greedy':>12} | {'beam search':>12}")
    for n in range(shown):
        print(f"{texts[n]:>12} | {_text(greedy[n]):>12} | {_text(beams[n][0][0]):>12}")

    curves = {"ctckit.torch.CTCLossFromLogits": losses}
    if args.compare_torch:
        curves["torch.nn.functional.ctc_loss"] = trainings["torch"].losses
        _print_comparison(trainings, cer, evaluate(trainings["torch"].model, args.seed, args.val)[0])
    plot_losses(curves, args.out / "loss.png")
    spans = draw_alignment(images[0], log_probs[:, 0], labels[0], args.out / "alignment.png")
    print(f"\nforced alignment of '{texts[0]}': " + ", ".join(f"{CHARSET[s.token - 1]}@{s.start}-{s.end}" for s in spans))
    print(f"wrote {args.out / 'loss.png'} and {args.out / 'alignment.png'}")
    if args.lm:
        from . import demo_lm

        demo_lm.evaluate(model, TextLines(args.seed + 20_000), CHARSET, BLANK, args.seed, args.val, args.out)
    return 0


def _print_comparison(trainings: dict, ours_cer: float, torch_cer: float) -> None:
    ours, theirs = trainings["ctckit"], trainings["torch"]
    ours_ms, torch_ms = (1e3 * float(np.median(t.step_seconds)) for t in (ours, theirs))
    print(f"\nctckit against torch's ctc_loss: the same model, seed and images, trained in turn step by step "
          f"({len(ours.losses)} steps each)")
    print(f"  median time per step (forward, loss, backward, update): ctckit {ours_ms:.1f} ms, torch {torch_ms:.1f} ms; "
          f"torch / ctckit = {torch_ms / ours_ms:.2f}")
    print(f"  validation CER (greedy): ctckit {ours_cer:.2%}, torch {torch_cer:.2%}; "
          f"final loss ctckit {np.mean(ours.losses[-20:]):.3f}, torch {np.mean(theirs.losses[-20:]):.3f}")


if __name__ == "__main__":
    sys.exit(main())
