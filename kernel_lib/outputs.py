"""Output files: checked before any work, replaced only when complete (stdlib only).

Every file the bundle writes (submission, folds file, tune config, report, cache entries
and manifest) goes through :func:`atomic_output`: it is written to a temporary file in
the same folder and renamed over the target only when the writer (and any check it
runs) finished without error, so an interrupted or failed run leaves the previous file
as it was. Commands call :func:`check_output` on each output path before they start
work, so a bad path fails in a second, not after the whole inference.
"""

from __future__ import annotations

import os
import secrets
import sys
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

__all__ = ["atomic_output", "check_output", "note_output"]


def _same_file(a: Path, b: Path) -> bool:
    if a.resolve() == b.resolve():
        return True
    try:
        return a.exists() and b.exists() and os.path.samefile(a, b)
    except OSError:
        return False


def check_output(
    path: str | Path,
    inputs: Mapping[str, str | Path | None] | None = None,
    flag: str = "--out",
    make_folder: bool = True,
) -> str | None:
    """Check, before any work, that ``path`` can be written as a file.

    Args:
        path: the file to write.
        inputs: what the same command reads, by how the user named it (e.g.
            ``{"--truth": "train.csv"}``); ``None`` values are skipped. A folder input
            forbids writing directly into it only when given as a file path equal to it.
        flag: how messages name the output (the command-line option).
        make_folder: create a missing parent folder (else it is an error).

    Returns:
        A note when a folder was made for it (``"made folder X for --out"``), else None.

    Raises:
        ValueError: ``path`` is a folder, is one of the inputs, its folder is a file or
            cannot be made, or the folder is not writable; the message names the path
            and the fix.
    """
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"{flag} {path} is a folder; pass a file name, e.g. {path / 'out'}{path.suffix or ''}")
    for name, given in (inputs or {}).items():
        if given is not None and _same_file(path, Path(given)):
            raise ValueError(
                f"{flag} {path} is the {name} input; writing it would overwrite what this command reads: "
                "pass another file name"
            )
    folder = path.parent
    note = None
    if not folder.exists():
        if not make_folder:
            raise ValueError(f"{flag} {path}: folder {folder} does not exist; make it first or pass another path")
        try:
            folder.mkdir(parents=True)
        except FileExistsError:
            if not folder.is_dir():
                raise ValueError(f"{flag} {path}: {folder} is a file, not a folder; pass another path") from None
        except OSError as err:
            raise ValueError(
                f"{flag} {path}: could not make folder {folder} ({err.strerror or err}); pass another path"
            ) from None
        else:
            note = f"made folder {folder} for {flag}"
    elif not folder.is_dir():
        raise ValueError(f"{flag} {path}: {folder} is a file, not a folder; pass another path")
    probe = folder / f".{path.name}.{secrets.token_hex(4)}.probe"
    try:
        fd = os.open(probe, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
        os.close(fd)
        probe.unlink()
    except OSError as err:
        raise ValueError(
            f"{flag} {path}: cannot write in folder {folder} ({err.strerror or err}); pass a writable place"
        ) from None
    return note


@contextmanager
def atomic_output(path: str | Path, durable: bool = True) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success rename it to ``path``.

    Write the whole file to the yielded path (and check it, if wanted) inside the
    ``with`` block. When the block ends normally the file replaces ``path`` in one
    rename; when it raises (a failed check, a full disk, an interrupt) the temporary
    file is removed and ``path`` is left as it was. Missing parent folders are made.

    Args:
        path: the file to (re)place.
        durable: flush the file to disk before the rename (off for cache entries,
            which can be recomputed).

    Raises:
        ValueError: ``path`` is a folder, its folder cannot be made, or writing failed
            with an OS error (disk full, permission); the message says the previous
            file is untouched.
    """
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"cannot write {path}: it is a folder; pass a file name")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise ValueError(f"cannot write {path}: folder {path.parent} cannot be made ({err.strerror or err})") from None
    # same folder (one rename, same file system), hidden, and ending like the target so
    # that writers adding a suffix (numpy's .npz) keep the name given
    tmp = path.parent / f".{path.name}.{secrets.token_hex(4)}.tmp{path.suffix}"
    try:
        fd = os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666)  # mode as a plain open() gives
        os.close(fd)
    except OSError as err:
        raise ValueError(f"cannot write {path} ({err.strerror or err}); pass a writable place") from None
    try:
        yield tmp
        if durable:
            with tmp.open("rb+") as f:
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as err:
        tmp.unlink(missing_ok=True)
        untouched = "the previous file is untouched" if path.exists() else "nothing was written"
        raise ValueError(
            f"could not write {path} ({err.strerror or err}); {untouched}; free disk space or pass another place"
        ) from None
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def note_output(note: str | None) -> None:
    """Print a :func:`check_output` note (a folder made) on stderr, leaving stdout to
    what the command prints (JSON included)."""
    if note:
        print(f"note: {note}", file=sys.stderr)
