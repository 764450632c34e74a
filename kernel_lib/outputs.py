"""Output files: checked before any work, replaced only when complete (stdlib only).

Every file the bundle writes (submission, folds file, tune config, report, cache entries
and manifest) goes through :func:`atomic_output`: it is written to a temporary file in
the same folder and renamed over the target only when the writer (and any check it
runs) finished without error, so an interrupted or failed run leaves the previous file
as it was. Commands call :func:`check_output` on each output path before they start
work, so a bad path fails in a second, not after the whole inference.

What an output may be (docs/reliability.md): a regular file or nothing yet. A folder, a
device (``/dev/null``, ``/dev/full``), a FIFO or a socket is refused by name, never
replaced; so is a path ending in ``/`` (a folder meant). An output may not be one of the
command's inputs, nor replace an existing file inside an input folder (a fold's
``model_final.pth``, a cache entry): a new file there is fine.
"""

from __future__ import annotations

import errno
import os
import secrets
import stat
import sys
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

__all__ = ["atomic_output", "check_input_file", "check_output", "file_kind", "note_output"]


def file_kind(path: str | Path) -> str | None:
    """What ``path`` is, in words, when it is not a regular file: ``"a folder"``,
    ``"a FIFO (named pipe)"``, ``"a character device"``, ``"a block device"``,
    ``"a socket"``, ``"a symbolic link to nothing"``, ``"a symbolic link loop"``;
    ``"missing"`` when nothing is there; ``None`` for a regular file (symbolic links
    followed)."""
    try:
        mode = os.stat(path).st_mode
    except OSError as err:
        if os.path.islink(path):
            return "a symbolic link loop" if err.errno == errno.ELOOP else "a symbolic link to nothing"
        if err.errno in (errno.ENOENT, errno.ENOTDIR):
            return "missing"
        return f"unreadable ({err.strerror or err})"
    if stat.S_ISREG(mode):
        return None
    for test, words in (
        (stat.S_ISDIR, "a folder"),
        (stat.S_ISFIFO, "a FIFO (named pipe)"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
        (stat.S_ISSOCK, "a socket"),
    ):
        if test(mode):
            return words
    return "not a regular file"


def check_input_file(path: str | Path, flag: str, fix: str) -> Path:
    """``path`` as an input file: a regular file (or a link to one).

    Raises:
        FileNotFoundError: nothing is there.
        ValueError: it is empty (``""``), a folder, a device, a FIFO, a socket or a broken link; the
            message says which, names ``flag`` and the path, and ends with ``fix``.
    """
    if not os.fspath(path):
        raise ValueError(f"{flag} is empty; {fix}")
    path = Path(path)
    kind = file_kind(path)
    if kind == "missing":
        raise FileNotFoundError(f"{flag} {path} does not exist; {fix}")
    if kind is not None:
        raise ValueError(f"{flag} {path} is {kind}, not a file; {fix}")
    return path


def _inside(path: Path, folder: Path) -> bool:
    try:
        return path.resolve().is_relative_to(folder.resolve())
    except (OSError, RuntimeError):  # a link loop on the way
        return False


def _same_file(a: Path, b: Path) -> bool:
    try:
        if a.resolve() == b.resolve():
            return True
        return a.exists() and b.exists() and os.path.samefile(a, b)
    except (OSError, RuntimeError):  # a link loop
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
            forbids replacing any existing file inside it (at any depth); a new file
            there is allowed.
        flag: how messages name the output (the command-line option).
        make_folder: create a missing parent folder (else it is an error).

    Returns:
        A note when a folder was made for it (``"made folder X for --out"``), else None.

    Raises:
        ValueError: ``path`` ends with ``/``, is a folder, a device, a FIFO or a socket,
            is one of the inputs or an existing file inside an input folder, its folder
            is a file or cannot be made, or the folder is not writable; the message
            names the path and the fix.
    """
    given_text = os.fspath(path)
    path = Path(path)
    if not given_text:
        raise ValueError(f"{flag} is empty; pass a file name")
    if os.path.basename(given_text) in ("", ".", ".."):
        # "newdir/": a folder is meant; which file to write in it is not guessed
        raise ValueError(
            f"{flag} {given_text} names a folder (it ends with {given_text[-1]!r}); pass a file name, "
            f"e.g. {path / 'out'}{path.suffix or ''}"
        )
    kind = file_kind(path)
    if kind == "a folder":
        raise ValueError(f"{flag} {path} is a folder; pass a file name, e.g. {path / 'out'}{path.suffix or ''}")
    if kind not in (None, "missing", "a symbolic link to nothing"):
        raise ValueError(
            f"{flag} {path} is {kind}, not a regular file; outputs are only written as regular files "
            "(nothing else is replaced): pass a file name"
        )
    for name, given in (inputs or {}).items():
        if given is None:
            continue
        given = Path(given)
        if _same_file(path, given):
            raise ValueError(
                f"{flag} {path} is the {name} input; writing it would overwrite what this command reads: "
                "pass another file name"
            )
        if os.path.lexists(path) and given.is_dir() and _inside(path, given):
            raise ValueError(
                f"{flag} {path} is a file inside the {name} folder {given}; writing it would replace what this "
                "command reads: pass a file name outside that folder"
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
        ValueError: ``path`` is a folder, a device, a FIFO or a socket, its folder
            cannot be made, or writing failed
            with an OS error (disk full, permission); the message says the previous
            file is untouched.
    """
    path = Path(path)
    kind = file_kind(path)
    if kind not in (None, "missing", "a symbolic link to nothing"):
        raise ValueError(f"cannot write {path}: it is {kind}, not a regular file; pass a file name")
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
