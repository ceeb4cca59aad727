"""The ``ctckit`` command: ``ctckit demo`` (train a text recognizer), ``ctckit example``
(the loss on torch's documentation example), ``ctckit bench`` (the loss benchmark),
``ctckit warmup`` (compile every kernel ahead of time, :mod:`ctckit.warmup`).
Its options' helpers are in :mod:`ctckit._cli`."""

from __future__ import annotations

import argparse
import sys
import time

from ._cli import SEED, int_option, require

def _example(args) -> int:
    """The example of torch's ``ctc_loss`` documentation, on ctckit, checked against torch."""
    require("example", ["torch"], "torch")
    import numpy as np
    import torch
    import torch.nn.functional as F

    import ctckit.numpy as cn
    import ctckit.torch as ct

    torch.manual_seed(args.seed)
    T, N, C, S, S_min = 50, 16, 20, 30, 10
    log_probs = torch.randn(T, N, C).log_softmax(2).detach().requires_grad_()
    targets = torch.randint(1, C, (N, S), dtype=torch.long)
    input_lengths = torch.full((N,), T, dtype=torch.long)
    target_lengths = torch.randint(S_min, S, (N,), dtype=torch.long)

    start = time.perf_counter()
    loss = ct.ctc_loss(log_probs, targets, input_lengths, target_lengths)
    loss.backward()
    first_call = time.perf_counter() - start
    ours_grad = log_probs.grad.clone()
    log_probs.grad = None
    reference = F.ctc_loss(log_probs, targets, input_lengths, target_lengths)
    reference.backward()

    exact, _ = cn.ctc_loss_and_grad(log_probs.detach().double().numpy(), targets.numpy(), input_lengths.numpy(), target_lengths.numpy())
    nonzero = int((ours_grad != 0).sum())
    print(f"CTC loss on a (T, N, C) = ({T}, {N}, {C}) batch, targets padded to S = {S}")
    print(f"  ctckit (float32)           {loss.item():.7f}   first call incl. compile/cache load: {first_call:.2f} s")
    print(f"  torch  (float32)           {reference.item():.7f}")
    print(f"  ctckit (float64 reference) {float(exact):.7f}")
    print(f"  exact gradient: {nonzero} of {ours_grad.numel()} entries nonzero (the blank and each target's labels)")
    torch_convention = log_probs.detach().clone().requires_grad_()
    ct.ctc_loss(torch_convention, targets, input_lengths, target_lengths, gradient="torch").backward()
    print(f"  gradient='torch' vs torch's own gradient: max difference "
          f"{(torch_convention.grad - log_probs.grad).abs().max().item():.1e}")
    ok = abs(loss.item() - float(exact)) <= 1e-5 * abs(float(exact)) and np.isfinite(loss.item())
    print("OK" if ok else "MISMATCH")
    return 0 if ok else 1


def _warmup(args) -> int:
    from .warmup import run

    run(quiet=args.quiet, jobs=args.jobs)
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="ctckit", description="ctckit: exact, fast CTC for PyTorch and NumPy")
    commands = parser.add_subparsers(dest="command", required=True)
    example = commands.add_parser("example", help="the CTC loss on torch's documentation example, checked against torch",
                                  description="The CTC loss on the example of torch's ctc_loss documentation, "
                                              "checked against torch and a float64 computation.")
    example.add_argument("--seed", type=SEED, default=0, help="random seed (default 0)")
    example.set_defaults(run=_example)
    bench = commands.add_parser("bench", help="speed and memory against torch, optax and TensorFlow", add_help=False)
    bench.set_defaults(run=None)
    demo = commands.add_parser("demo", help="train a text recognizer with the CTC loss on synthetic images", add_help=False)
    demo.set_defaults(run=None)
    warmup = commands.add_parser("warmup", help="compile every kernel ahead of time into Numba's cache (images, CI)",
                                 description="Compile every kernel a user can reach (loss and gradient, float32 and "
                                             "float64, every round of a batch, decoding, both frontends, every kind "
                                             "of driver) into Numba's on-disk cache, so that no later process "
                                             "compiles: for container images and CI. Takes about two minutes on 2 "
                                             "cores, seconds when the cache is warm.")
    warmup.add_argument("--jobs", type=int_option(1), default=None,
                        help="processes that compile at once (default: one per CPU, at most 4; each may take 1 GiB)")
    warmup.add_argument("--quiet", action="store_true", help="print nothing but errors (no progress, no report)")
    warmup.set_defaults(run=_warmup)
    args, rest = parser.parse_known_args(argv)
    if args.command == "bench":
        from .bench import main as bench_main

        return bench_main(rest)
    if args.command == "demo":
        from .demo import main as demo_main

        return demo_main(rest)
    if rest:
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
