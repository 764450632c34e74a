"""Kaggle's notebook file system: finding an attached input by its slug (no torch).

Kaggle mounts an attached competition or dataset under ``/kaggle/input`` in one of
three layouts, depending on how and when the notebook was made:

- ``/kaggle/input/<slug>/`` (the classic one; some attachments still appear here),
- ``/kaggle/input/competitions/<slug>/`` (competitions, notebooks pushed from the CLI),
- ``/kaggle/input/datasets/<owner>/<slug>/`` (datasets, notebooks pushed from the CLI).

:func:`find_input` looks in all three, so notebooks and commands never join
``/kaggle/input`` and a slug by hand.
"""

from __future__ import annotations

import os
from pathlib import Path

DEFAULT_INPUT_ROOT = Path("/kaggle/input")
INPUT_ROOT_ENV = "KAGGLE_INPUT"
"""Environment variable that replaces ``/kaggle/input`` (a local run: ``scripts/demo.sh``)."""

KAGGLE_PREFIX = "kaggle:"
"""Prefix of a command-line path given as an input slug: ``kaggle:SLUG[/sub/path]``."""

_LISTED = 40


def input_root() -> Path:
    """``$KAGGLE_INPUT`` when set, else ``/kaggle/input``."""
    return Path(os.environ.get(INPUT_ROOT_ENV) or DEFAULT_INPUT_ROOT)


def input_candidates(slug: str, root: Path, owner: str | None = None) -> list[Path]:
    """The folders that may hold input ``slug`` under ``root``, in the order they are
    tried: ``root/slug``, ``root/competitions/slug``, then ``root/datasets/<owner>/slug``
    for the given owner, or for every owner found (sorted) when ``owner`` is None."""
    out = [root / slug, root / "competitions" / slug]
    datasets = root / "datasets"
    if owner is not None:
        out.append(datasets / owner / slug)
    elif datasets.is_dir():
        out += sorted(p / slug for p in datasets.iterdir() if p.is_dir())
    return out


def _listing(root: Path) -> str:
    """What is under ``root``, two levels deep (three under ``datasets/``), for an error."""
    if not root.is_dir():
        return f"{root} does not exist"
    entries: list[str] = []
    for top in sorted(root.iterdir()):
        children = sorted(p for p in top.iterdir() if p.is_dir()) if top.is_dir() else []
        if top.name in ("competitions", "datasets") and children:
            for child in children:
                grand = sorted(p for p in child.iterdir() if p.is_dir()) if top.name == "datasets" else []
                entries += [f"{top.name}/{child.name}/{g.name}/" for g in grand] or [f"{top.name}/{child.name}/"]
        else:
            entries.append(f"{top.name}/" if top.is_dir() else top.name)
    if not entries:
        return f"{root} is empty"
    more = f", ... (+{len(entries) - _LISTED} more)" if len(entries) > _LISTED else ""
    return f"{root} holds: {', '.join(entries[:_LISTED])}{more}"


def find_input(slug: str, root: str | Path | None = None, owner: str | None = None) -> Path:
    """The folder of the attached competition or dataset ``slug`` under every Kaggle layout.

    Args:
        slug: the competition's or dataset's slug, e.g. ``"sartorius-fold-models"``
            (not ``owner/slug``: pass the owner separately).
        root: the input root (default :func:`input_root`: ``$KAGGLE_INPUT`` or
            ``/kaggle/input``).
        owner: for ``datasets/<owner>/<slug>``: only this owner's dataset (default: any).

    Returns:
        The first existing folder of :func:`input_candidates`.

    Raises:
        ValueError: a malformed slug; no such input (the message lists what is under
            the root and how to attach it); or the slug under ``datasets/`` of several
            owners (pass ``owner``).
    """
    if not slug or "/" in slug or slug in (".", ".."):
        raise ValueError(
            f"input slug: expected the last part of a Kaggle competition or dataset id, like "
            f"'sartorius-fold-models', got {slug!r} (pass the owner as owner=)"
        )
    base = input_root() if root is None else Path(root)
    found = [p for p in input_candidates(slug, base, owner) if p.is_dir()]
    owned = [p for p in found if p.parent.parent == base / "datasets"]
    if len(owned) > 1 and len(found) == len(owned):
        owners = ", ".join(p.parent.name for p in owned)
        raise ValueError(
            f"input {slug!r} is attached from several owners under {base / 'datasets'} ({owners}); "
            f"pass the owner (find_input({slug!r}, owner=...)) or detach the ones not meant"
        )
    if found:
        return found[0]
    tried = ", ".join(str(p) for p in input_candidates(slug, base, owner or "<owner>")[:3])
    raise ValueError(
        f"no Kaggle input {slug!r}: looked for {tried}; {_listing(base)}. "
        f"Fix: attach the competition or dataset to the notebook (kernel-metadata.json competition_sources / "
        f"dataset_sources, or 'Add Input' in the editor), or correct the slug"
    )


def resolve_cli_path(value: str, root: str | Path | None = None) -> Path:
    """A command-line path: ``kaggle:SLUG[/sub/path]`` becomes ``find_input(SLUG) / sub/path``
    (under every layout); anything else is returned as a plain path.

    Raises:
        ValueError: see :func:`find_input`.
    """
    if not value.startswith(KAGGLE_PREFIX):
        return Path(value)
    slug, _, rest = value[len(KAGGLE_PREFIX) :].strip("/").partition("/")
    folder = find_input(slug, root)
    return folder / rest if rest else folder


def cli_path(value: str) -> Path:
    """argparse ``type=`` for a path option that also takes ``kaggle:SLUG[/sub/path]``
    (see :func:`resolve_cli_path`); a missing input becomes argparse's own error."""
    import argparse

    try:
        return resolve_cli_path(value)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None
