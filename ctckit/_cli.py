"""The command line's shared helpers: range-checked integer options and the one-line
message for a missing optional dependency (used by ``ctckit``'s subcommands)."""

from __future__ import annotations

import argparse
import importlib

# module -> the name pip installs it under
_PIP_NAMES = {"torch": "torch", "PIL": "pillow", "matplotlib": "matplotlib", "tqdm": "tqdm"}


def int_option(minimum: int, maximum: int | None = None):
    """An argparse ``type`` for an integer option in ``[minimum, maximum]``: argparse then
    names the option in its error ("argument --threads: must be an integer >= 1, got 0")."""
    expected = f"an integer >= {minimum}" if maximum is None else f"an integer from {minimum} to {maximum}"

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be {expected}, got {text!r}") from None
        if value < minimum or (maximum is not None and value > maximum):
            raise argparse.ArgumentTypeError(f"must be {expected}, got {value}")
        return value

    return parse


SEED = int_option(0, 2**32 - 1)


def require(command: str, modules, extra: str) -> None:
    """Exit with one line (no traceback) when a module that ``ctckit command`` needs is not
    installed, saying what to install."""
    for module in modules:
        try:
            importlib.import_module(module)
        except ModuleNotFoundError as error:
            if (error.name or module).split(".")[0] != module:
                raise  # the module is there but one of its own dependencies is broken
            raise SystemExit(f"ctckit {command} needs {_PIP_NAMES.get(module, module)}: "
                             f"pip install -e '.[{extra}]' in a clone of ctckit") from None
