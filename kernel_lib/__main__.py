"""``python -m kernel_lib COMMAND ...``: the bundle's command line.

Each command lives in ``kernel_lib/commands/<name>.py`` with ``add_arguments(parser)``
and ``run(args) -> int``; command modules import heavy things (torch) inside ``run``.
Bad input ends with one ``error: ...`` line naming the file and the fix (exit 2),
never a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import sys

COMMANDS: dict[str, str] = {
    "score": "score a submission against train.csv with the competition metric",
    "validate": "check a submission's format, bounds, overlaps and ids",
    "predict": "run the fold-model ensemble on a test folder and write submission.csv",
    "evaluate": "out-of-fold evaluation of fold models on annotated images (cached)",
    "tune": "search per-cell-type post-processing on cached out-of-fold instances",
    "folds": "write a stratified K-fold split (by cell type) of train.csv",
    "report": "HTML report of an evaluation: per cell type, per threshold, worst images",
    "train": "train one fold model (detectron2 Mask R-CNN) in the layout predict reads",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m kernel_lib", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, help_text in COMMANDS.items():
        try:
            module = importlib.import_module(f"kernel_lib.commands.{name}")
        except ModuleNotFoundError as err:
            if err.name != f"kernel_lib.commands.{name}":
                raise
            continue  # command not built yet
        command = sub.add_parser(name, help=help_text, description=help_text)
        module.add_arguments(command)
        command.set_defaults(_run=module.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args._run(args) or 0)
    except (ValueError, FileNotFoundError, NotADirectoryError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
