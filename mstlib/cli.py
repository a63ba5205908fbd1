"""``python -m mstlib``: one command line for data, FLOPs, masks, training, sweeps and evaluation.

Each subcommand lives in the module that does the work (``add_arguments(parser)`` and ``main(args)``);
this file only wires them, importing a module when its command is used so ``--help`` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from typing import Sequence

from .errors import MstError

#: command -> (module, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "data": ("mstlib.data.commands", "prepare, describe, verify and pack pretraining corpora"),
    "flops": ("mstlib.describe:flops", "training FLOPs of a run, per phase and against dense"),
    "masks": ("mstlib.describe:masks", "per-matrix shapes, nonzeros and densities at a sparsity"),
    "config": ("mstlib.presets", "print the full config of a preset and method"),
    "train": ("mstlib.commands:train", "train one run into the run store"),
    "sweep": ("mstlib.commands:sweep", "train a list of runs, one process per visible GPU, skipping done ones"),
    "eval": ("mstlib.evaluate", "zero-shot and few-shot evaluation of a trained run"),
    "gpu": ("mstlib.gpu", "run a GPU call's plan file: stage, run per GPU, pack results and logs into $OUT"),
    "bench": ("mstlib.benchmark", "time dense, MST and attention variants side by side"),
}


def _entry(target: str, name: str):
    """``module`` gives ``module.name``; ``module:prefix`` gives ``module.prefix_name`` (one module, two commands)."""
    module, _, prefix = target.partition(":")
    return getattr(importlib.import_module(module), f"{prefix}_{name}" if prefix else name)


def build_parser(load: str | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m mstlib",
        description="Mixed Sparsity Training, reproduced: the mstlib command line.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module, help_) in COMMANDS.items():
        p = sub.add_parser(name, help=help_, description=help_)
        if name == load:
            _entry(module, "add_arguments")(p)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    command = next((a for a in argv if not a.startswith("-")), None)
    parser = build_parser(command if command in COMMANDS else None)
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    run = _entry(COMMANDS[args.command][0], "main")
    try:
        return int(run(args) or 0)
    except MstError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
