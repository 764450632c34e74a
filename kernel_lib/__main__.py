"""``python -m kernel_lib COMMAND ...``: the bundle's command line.

Each command lives in ``kernel_lib/commands/<name>.py`` with ``add_arguments(parser)``
and ``run(args) -> int``; command modules import heavy things (torch) inside ``run``.
:func:`main` imports only the module of the command it runs (``--help`` alone imports
none), so start-up costs what that command needs.
Bad input ends with one ``error: ...`` line naming the file and the fix (exit 2),
never a traceback: the library raises ``ValueError`` with such a message for what the
user can fix. A ``ValueError`` raised outside kernel_lib (numpy, torch, ... called with
something the library failed to check) is a bug, not a user error: it is shown with
its traceback and exit status 1. A ``PermissionError`` (a file or folder the user may
not read or write) is one ``error:`` line too. Warnings that torch, detectron2 and fvcore
print about their own code, which the user cannot act on, are silenced
(:func:`quiet_library_warnings`), so an error after model loading is not buried.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
import traceback
import warnings
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent

COMMANDS: dict[str, str] = {
    "score": "score a submission against train.csv with the competition metric",
    "validate": "check a submission's format, bounds, overlaps and ids",
    "predict": "run the fold-model ensemble on a test folder and write submission.csv",
    "evaluate": "out-of-fold evaluation of fold models on annotated images (cached)",
    "tune": "search per-cell-type post-processing on cached out-of-fold instances",
    "folds": "write a stratified K-fold split (by cell type) of train.csv",
    "report": "HTML report of an evaluation: per cell type, per threshold, worst images",
    "train": "train one fold model (detectron2 Mask R-CNN) in the layout predict reads",
    "pseudo": "pseudo-label unlabelled images with the ensemble, as train.csv rows to train on",
    "kaggle-push": "upload the bundle and model datasets, push the notebook, optionally wait and submit",
}


LIBRARY_WARNINGS: tuple[tuple[type[Warning], str], ...] = (
    (FutureWarning, r"`torch\.jit\.script` is deprecated"),  # detectron2's and fvcore's own scripted helpers
    (UserWarning, r"torch\.meshgrid: in an upcoming release, it will be required to pass the indexing argument"),
    (UserWarning, r"pkg_resources is deprecated as an API"),  # detectron2.model_zoo imports it
)
"""(category, message pattern) of the warnings :func:`quiet_library_warnings` silences:
each is about a library's own code, printed on every run, and nothing the user can change."""

FX_TRACING_LOGGER = "torch.fx._symbolic_trace"
FX_TRACING_MESSAGE = "is_fx_tracing will return true for both"
"""torch logs this (not a warning) once detectron2 asks whether it is being traced."""


def _not_fx_tracing_notice(record: logging.LogRecord) -> bool:
    return not str(record.msg).startswith(FX_TRACING_MESSAGE)


def quiet_library_warnings() -> None:
    """Silence :data:`LIBRARY_WARNINGS` and torch's fx-tracing log line, by category and
    message only (every other warning still shows); idempotent."""
    for category, pattern in LIBRARY_WARNINGS:
        warnings.filterwarnings("ignore", message=pattern, category=category)
    logger = logging.getLogger(FX_TRACING_LOGGER)
    if _not_fx_tracing_notice not in logger.filters:
        logger.addFilter(_not_fx_tracing_notice)


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The parser of every command, or with ``only``: of that command alone (the
    others are listed by name and help without importing their modules)."""
    parser = argparse.ArgumentParser(prog="python -m kernel_lib", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, help_text in COMMANDS.items():
        command = sub.add_parser(name, help=help_text, description=help_text)
        if only is not None and name != only:
            continue
        module = importlib.import_module(f"kernel_lib.commands.{name.replace('-', '_')}")
        module.add_arguments(command)
        command.set_defaults(_run=module.run)
    return parser


def _raise_site(err: BaseException) -> tuple[str, int] | None:
    """(file, line) of the innermost frame of ``err``'s traceback (where it was raised)."""
    tb = err.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    return (tb.tb_frame.f_code.co_filename, tb.tb_lineno) if tb is not None else None


def raised_by_kernel_lib(err: BaseException) -> bool:
    """Whether ``err`` was raised in kernel_lib code (a message the library wrote for the
    user) rather than in a library it calls."""
    site = _raise_site(err)
    return site is None or Path(site[0]).resolve().is_relative_to(PACKAGE)


def _command_of(argv: list[str]) -> str:
    """The command named in ``argv`` ("" for none, e.g. ``--help``): its first word."""
    return argv[0] if argv and argv[0] in COMMANDS else ""


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    quiet_library_warnings()
    args = build_parser(only=_command_of(argv)).parse_args(argv)
    try:
        return int(args._run(args) or 0)
    except (FileNotFoundError, NotADirectoryError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except PermissionError as err:
        where = f" {err.filename}" if err.filename else ""
        print(
            f"error: permission denied on{where} ({err.strerror or err}); make it readable (or writable, for an "
            "output) or pass another path",
            file=sys.stderr,
        )
        return 2
    except ValueError as err:
        if not raised_by_kernel_lib(err):
            traceback.print_exc()
            file, line = _raise_site(err) or ("?", 0)
            print(
                f"error: a bug, not bad input: {type(err).__name__} from {file}:{line} "
                "(kernel_lib let through something it should have checked); please report it with the traceback above",
                file=sys.stderr,
            )
            return 1
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
