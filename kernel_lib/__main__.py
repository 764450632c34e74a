"""``python -m kernel_lib COMMAND ...``: the bundle's command line.

Each command lives in ``kernel_lib/commands/<name>.py`` with ``add_arguments(parser)``
and ``run(args) -> int``; command modules import heavy things (torch) inside ``run``.
:func:`main` imports only the module of the command it runs (``--help`` alone imports
none), so start-up costs what that command needs.
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
    "kaggle-push": "upload the bundle and model datasets, push the notebook, optionally wait and submit",
}


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The parser of every command, or with ``only``: of that command alone (the
    others are listed by name and help without importing their modules)."""
    parser = argparse.ArgumentParser(prog="python -m kernel_lib", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, help_text in COMMANDS.items():
        command = sub.add_parser(name, help=help_text, description=help_text)
        if only is not None and name != only:
            continue
        try:
            module = importlib.import_module(f"kernel_lib.commands.{name.replace('-', '_')}")
        except ModuleNotFoundError as err:
            if err.name != f"kernel_lib.commands.{name.replace('-', '_')}":
                raise
            continue  # command not built yet
        module.add_arguments(command)
        command.set_defaults(_run=module.run)
    return parser


def _command_of(argv: list[str]) -> str:
    """The command named in ``argv`` ("" for none, e.g. ``--help``): its first word."""
    return argv[0] if argv and argv[0] in COMMANDS else ""


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser(only=_command_of(argv)).parse_args(argv)
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
