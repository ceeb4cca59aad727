"""The CTC loss on a GPU: ctckit's Triton kernels against torch's CUDA ctc_loss.

On the shapes of ``ctckit bench`` (float32, padded targets, all inputs of length T), in
one process: the providers' losses first (largest relative difference to ctckit), then
median milliseconds of forward and forward+backward (each call waits for the device;
providers interleaved in a shuffled order each round), then the peak of allocated GPU memory during one
forward+backward above what the inputs hold.

Providers: ``ctckit`` (``backend="triton"``), ``torch`` (native CUDA kernel, cuDNN
disabled) and ``cudnn`` (torch's cuDNN path, on the shapes it accepts: int32 lengths and
concatenated targets on the CPU, blank 0, labels at most 256 long).

``--memory`` prints, without a GPU, what each loss keeps between forward and backward
and its working memory, for ctckit (from :func:`ctckit._triton.memory_bytes`) and for
torch's native CUDA kernel (log_alpha (N, T, 2 S + 1) kept, log_beta and the gradient
allocated in the backward).

Run on a CUDA machine: ``python benchmarks/bench_gpu.py [--shapes docs ocr] [--repeats 15]``.
"""

from __future__ import annotations

import argparse
import json

import numpy as np

from ctckit.bench import SHAPES, interleaved_medians, make_problem

MIB = 2 ** 20


def memory_rows(shapes):
    """Bytes per shape: what each loss keeps from forward to backward, ctckit's working
    buffers of the forward (freed before it returns), and what each backward allocates."""
    from ctckit._triton import memory_bytes

    rows = []
    for name in shapes:
        frames, batch, classes, max_target = SHAPES[name]
        ours = memory_bytes(frames, batch, classes, batch * max_target, max_target, 4)
        gradient = frames * batch * classes * 4
        alpha = batch * frames * (2 * max_target + 1) * 4
        rows.append(dict(shape=name, ctckit_kept=ours["kept"], ctckit_compact=ours["compact"], ctckit_working=ours["working"],
                         ctckit_backward=gradient, torch_kept=alpha, torch_backward=alpha + gradient))
    return rows


def print_memory(rows):
    print("MiB       ctckit: kept              forward working  backward (gradient) | torch: kept (log_alpha)  backward (log_beta + gradient)")
    for row in rows:
        kind = "posteriors" if row["ctckit_compact"] else "gradient"
        print(f"{row['shape']:8s} {row['ctckit_kept'] / MIB:9.2f} ({kind:10s}) {row['ctckit_working'] / MIB:12.2f}"
              f" {row['ctckit_backward'] / MIB:15.2f}     | {row['torch_kept'] / MIB:17.2f} {row['torch_backward'] / MIB:21.2f}")


def _providers(problem, device):
    import torch
    import torch.nn.functional as F

    import ctckit.torch as ct

    lp = torch.from_numpy(problem.log_probs).to(device)
    targets = torch.from_numpy(problem.targets).to(device)
    il = torch.from_numpy(problem.input_lengths).to(device)
    tl = torch.from_numpy(problem.target_lengths).to(device)
    concatenated = torch.cat([torch.from_numpy(problem.targets[n, :length]) for n, length in enumerate(problem.target_lengths)])

    def native(x, reduction):
        with torch.backends.cudnn.flags(enabled=False):
            return F.ctc_loss(x, targets, il, tl, reduction=reduction)

    def cudnn(x, reduction):  # the arguments torch hands to cuDNN
        return F.ctc_loss(x, concatenated.int(), il.cpu().int(), tl.cpu().int(), reduction=reduction)

    calls = {"ctckit": lambda x, reduction: ct.ctc_loss(x, targets, il, tl, reduction=reduction, backend="triton"),
             "torch": native}
    if problem.targets.shape[1] <= 256 and device.type == "cuda":
        calls["cudnn"] = cudnn
    return lp, calls


def run(shapes, repeats, device_name):
    import torch

    device = torch.device(device_name)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    rows = []
    for name in shapes:
        problem = make_problem(SHAPES[name])
        lp, calls = _providers(problem, device)
        with torch.no_grad():
            losses = {p: fn(lp, "none").double().cpu().numpy() for p, fn in calls.items()}
        agreement = {p: float(np.max(np.abs(v - losses["ctckit"]) / np.abs(losses["ctckit"]))) for p, v in losses.items()}

        def forward(fn):
            with torch.no_grad():
                fn(lp, "sum")

        def forward_backward(fn):
            x = lp.detach().requires_grad_()
            fn(x, "sum").backward()

        row = dict(shape=name, dims=SHAPES[name], device=torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
                   agreement=agreement)
        for kind, step in (("forward_ms", forward), ("forward_backward_ms", forward_backward)):
            row[kind] = _interleaved(calls, step, repeats, sync)
        row["peak_mib"] = {}
        if device.type == "cuda":
            for p, fn in calls.items():
                sync()
                torch.cuda.reset_peak_memory_stats(device)
                base = torch.cuda.memory_allocated(device)
                forward_backward(fn)
                sync()
                row["peak_mib"][p] = (torch.cuda.max_memory_allocated(device) - base) / MIB
        rows.append(row)
        print(_line(row), flush=True)
    return rows


def _interleaved(calls, step, repeats, sync):
    """Median milliseconds per provider: :func:`ctckit.bench.interleaved_medians` on calls
    that wait for the device before returning (so launch and host work count too)."""

    def timed(fn):
        def run():
            step(fn)
            sync()
        return run

    sync()
    medians = interleaved_medians({p: timed(fn) for p, fn in calls.items()}, repeats)
    return {p: seconds * 1e3 for p, seconds in medians.items()}


def _line(row):
    parts = [f"{row['shape']:6s}"]
    for kind in ("forward_ms", "forward_backward_ms"):
        times = row[kind]
        peers = {p: t for p, t in times.items() if p != "ctckit"}
        best = min(peers, key=peers.get)
        parts.append(f"{kind[:-3]}: " + " ".join(f"{p} {t:.3f}" for p, t in times.items())
                     + f" fastest peer {best} x{peers[best] / times['ctckit']:.2f}")
    if row["peak_mib"]:
        parts.append("peak MiB " + " ".join(f"{p} {m:.1f}" for p, m in row["peak_mib"].items()))
    parts.append("max rel. diff " + " ".join(f"{p} {d:.1e}" for p, d in row["agreement"].items() if p != "ctckit"))
    return " | ".join(parts)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shapes", nargs="+", default=list(SHAPES), choices=list(SHAPES))
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--device", default="cuda", help="cuda (default), or cpu under TRITON_INTERPRET=1 (a smoke test)")
    parser.add_argument("--memory", action="store_true", help="only print the memory each loss keeps (no GPU needed)")
    parser.add_argument("--out", help="write the rows as JSON to this file")
    args = parser.parse_args(argv)
    rows = memory_rows(args.shapes)
    print_memory(rows)
    if not args.memory:
        rows = run(args.shapes, args.repeats, args.device)
    if args.out:
        with open(args.out, "w") as file:
            json.dump(rows, file, indent=1)


if __name__ == "__main__":
    main()
