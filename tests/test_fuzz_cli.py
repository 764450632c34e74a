"""Generated bad and odd inputs across the commands (issue 21), run in-process on tiny
files: outputs that are folders, devices, FIFOs, sockets, links, inputs or files inside
input folders; CSV and JSON inputs that are not files, not text, not CSV or not what
they should be; kaggle-push options, work folders, metadata and notebooks; submissions
with every kind of broken row. No model runs (the stand-in fold is refused, by name,
at loading where a case gets that far).

For each case: the exit status; no traceback; with status 2 exactly one ``error:``
line, naming the file or option at fault; and every file that existed before
byte-identical afterwards (a FIFO still a FIFO, a link still the same link), but for
the one output a successful case writes. Totals: docs/reliability.md.
"""

from __future__ import annotations

import os
import signal
import socket
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest

from kernel_lib.__main__ import main
from kernel_lib.config import Config
from kernel_lib.evaluate import CacheEntry, save_instances, write_cache_manifest
from kernel_lib.soft import SoftInstances

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "tests" / "data"
TRUTH_IDS = ("e9edcd9483e4", "b50a98297c83")  # astro 17 cells, cort 18 cells
CACHED = TRUTH_IDS[0]
CASE_SECONDS = 60  # a read that blocks (a FIFO opened for reading) fails the case instead of the run


@dataclass(frozen=True)
class Case:
    """One generated command line; ``{w}`` is the case's world folder."""

    family: str
    name: str
    args: tuple[str, ...]
    code: int
    names: tuple[str, ...] = ()  # texts the error line (else the output) holds, formatted like args
    writes: tuple[str, ...] = ()  # what an exit-0 case may write (files, or folders and all in them)
    needs: str = ""  # a special file the case needs ("dev": a device node; skipped where none can be made)
    cwd: str = ""  # run from this folder (formatted like args)
    xfail: str = ""  # a known fault outside this test's modules, and whose it is

    @property
    def id(self) -> str:
        return f"{self.family}:{self.name}"


# ----------------------------------------------------------------------------- the world


def _instances() -> SoftInstances:
    rng = np.random.default_rng(0)
    boxes = np.array([[10, 10, 60, 60], [100, 100, 180, 150], [300, 200, 340, 260]], np.float32)
    masks = rng.random((3, 28, 28)).astype(np.float32)
    return SoftInstances(boxes, np.array([0.9, 0.8, 0.7], np.float32), np.zeros(3, np.int64), masks, (520, 704))


def build_world(w: Path) -> bool:
    """The tiny inputs every case starts from; True when a device node could be made."""
    truth = pd.read_csv(DATA / "train.csv", dtype=str, keep_default_na=False)
    truth[truth["id"].isin(TRUTH_IDS)].to_csv(w / "train.csv", index=False)
    (w / "test").mkdir()
    (w / "train").mkdir()
    for image_id in TRUTH_IDS:  # the annotated images, linked (read, never written)
        (w / "train" / f"{image_id}.png").symlink_to(DATA / "train" / f"{image_id}.png")
    cv2.imwrite(str(w / "test" / "t0.png"), np.full((520, 704), 90, np.uint8))
    (w / "sample.csv").write_text("id,predicted\nt0,\n")
    (w / "sub.csv").write_text("id,predicted\nt0,1 2\n")
    (w / "old.csv").write_text("a file of the user's\n")
    (w / "folds.csv").write_text(f"id,cell_type,fold\n{TRUTH_IDS[0]},astro,0\n{TRUTH_IDS[1]},cort,1\n")
    fold = w / "models" / "fold0"
    fold.mkdir(parents=True)
    (fold / "config.yaml").write_text("MODEL: {}\n")
    (fold / "model_final.pth").write_bytes(b"stand-in weights")
    (fold / "meta.json").write_text('{"fold": 0}')
    (w / "models" / "models.json").write_text('{"models": [{"name": "fold0", "weight": 1.0}]}')
    cache = w / "cache"
    save_instances(cache / f"{CACHED}.npz", _instances(), "k")
    write_cache_manifest(cache, [CacheEntry(CACHED, cache / f"{CACHED}.npz", "k", ("fold0",), 0)], Config())
    Config().to_json(w / "config.json")
    bundle = w / "bundle"
    (bundle / "wheels").mkdir(parents=True)
    (bundle / "wheels" / "sal_detectron2-0.7.2+pure-py3-none-any.whl").write_bytes(b"stand-in")
    (bundle / "dataset-metadata.json").write_text('{"title": "Sartorius offline bundle", "id": "u/x"}')
    (w / "folder").mkdir()
    (w / "folder" / "inside.txt").write_text("kept")
    os.mkfifo(w / "fifo")
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(w / "sock"))
    sock.close()
    (w / "loop").symlink_to(w / "loop")
    (w / "dangling").symlink_to(w / "gone")
    try:
        os.mknod(w / "dev", 0o666 | stat.S_IFCHR, os.makedev(1, 3))  # a /dev/null of the case's own
    except OSError:
        return False
    return True


def snapshot(root: Path) -> dict[str, bytes | str]:
    """Every entry under ``root``: a regular file's bytes, else what it is."""
    out: dict[str, bytes | str] = {}
    for path in sorted(root.rglob("*")):
        if path.is_symlink():
            out[str(path)] = f"link to {os.readlink(path)}"
        elif stat.S_ISREG(path.lstat().st_mode):
            out[str(path)] = path.read_bytes()
        elif not path.is_dir():
            out[str(path)] = f"mode {oct(path.lstat().st_mode)}"
    return out


# ----------------------------------------------------------------------------- the cases

TRUTH = "{w}/train.csv"
CACHE = "{w}/cache"
TUNE = ("tune", "--truth", TRUTH, "--cache", CACHE, "--trials", "2", "--no-refine")
PREDICT = ("predict", "--test-dir", "{w}/test", "--models", "{w}/models", "--quiet")
EVALUATE = ("--images", "{w}/train", "--models", "{w}/models", "--cache", "{w}/ecache")  # never ./oof_cache
STAND_IN = "model fold0"  # predict got to loading the stand-in fold: refused by name, nothing written

# output paths: (name, path, what the error says)
SPECIAL_OUTPUTS = [
    ("folder", "{w}/folder", "is a folder"),
    ("fifo", "{w}/fifo", "is a FIFO (named pipe), not a regular file"),
    ("socket", "{w}/sock", "is a socket, not a regular file"),
    ("device", "{w}/dev", "is a character device, not a regular file"),
    ("link-loop", "{w}/loop", "is a symbolic link loop, not a regular file"),
    ("trailing-slash", "{w}/newdir/", "names a folder"),
    ("dot", "{w}/newdir/.", "names a folder"),
    ("dotdot", "{w}/folder/..", "names a folder"),
    ("under-a-file", "{w}/old.csv/x.csv", "{w}/old.csv is a file, not a folder"),
    ("empty", "", "is empty"),
]
OUTPUT_COMMANDS = {
    "folds": (("folds", "--truth", TRUTH, "--n-folds", "2", "--out"), "--out"),
    "tune": ((*TUNE, "--out"), "--out"),
    "tune-history": ((*TUNE, "--out", "{w}/best.json", "--history"), "--history"),
    "report": (("report", "--truth", TRUTH, "--cache", CACHE, "--out"), "--out"),
    "predict": ((*PREDICT, "--out"), "--out"),
}
# outputs that replace what the command reads: (command, name, path, what the error says)
INPUT_OUTPUTS = [
    ("folds", "truth", TRUTH, "is the --truth input"),
    ("tune", "truth", TRUTH, "is the --truth input"),
    ("tune", "cache-entry", f"{CACHE}/{CACHED}.npz", "is a file inside the --cache folder"),
    ("tune", "manifest", f"{CACHE}/manifest.json", "is the cache manifest input"),
    ("tune-history", "cache-entry", f"{CACHE}/{CACHED}.npz", "is a file inside the --cache folder"),
    ("tune-history", "out", "{w}/best.json", "is the --out input"),
    ("report", "truth", TRUTH, "is the --truth input"),
    ("report", "cache-entry", f"{CACHE}/{CACHED}.npz", "is a file inside the --cache folder"),
    ("report", "manifest", f"{CACHE}/manifest.json", "is the cache manifest input"),
    ("predict", "weights", "{w}/models/fold0/model_final.pth", "is a file inside the --models folder"),
    ("predict", "model-config", "{w}/models/fold0/config.yaml", "is a file inside the --models folder"),
    ("predict", "meta", "{w}/models/fold0/meta.json", "is a file inside the --models folder"),
    ("predict", "models-json", "{w}/models/models.json", "is a file inside the --models folder"),
    ("predict", "image", "{w}/test/t0.png", "is the --test-dir image t0.png input"),
]


def output_cases() -> Iterator[Case]:
    for command, (args, flag) in OUTPUT_COMMANDS.items():
        for name, path, says in SPECIAL_OUTPUTS:
            yield Case("out", f"{command}-{name}", (*args, path), 2, (f"{flag} {path}".strip(), says))
        for cmd, name, path, says in INPUT_OUTPUTS:
            if cmd == command:
                yield Case("out", f"{command}-{name}", (*args, path), 2, (f"{flag} {path} {says}",))
        if command == "predict":  # the checks pass; the stand-in fold is refused; the old file stays
            for name, path in [("existing-file", "{w}/old.csv"), ("dangling-link", "{w}/dangling"),
                               ("new-file-in-models", "{w}/models/sub.csv")]:  # fmt: skip
                yield Case("out", f"predict-{name}", (*args, path), 2, (STAND_IN,))
        else:  # a file the command does not read is the user's to replace; a link is replaced, not followed
            for name, path in [("existing-file", "{w}/old.csv"), ("dangling-link", "{w}/dangling"),
                               ("new-file-in-cache", f"{CACHE}/new.out")]:  # fmt: skip
                writes = (path, "{w}/best.json") if command == "tune-history" else (path,)
                yield Case("out", f"{command}-{name}", (*args, path), 0, writes=writes)
    # evaluate's --cache is a folder it fills: what is not one is refused
    evaluate = ("evaluate", "--truth", TRUTH, "--images", "{w}/train", "--models", "{w}/models", "--cache")
    for name, path, says in [
        ("file", "{w}/old.csv", "is a file, not a folder"),
        ("fifo", "{w}/fifo", "is a FIFO (named pipe), not a folder"),
        ("device", "{w}/dev", "is a character device, not a folder"),
        ("link-loop", "{w}/loop", "is a symbolic link loop, not a folder"),
    ]:
        yield Case("out", f"evaluate-cache-{name}", (*evaluate, path), 2, (f"--cache {path} {says}",))


CSV_INPUTS = {
    "validate": ("validate", "{in}"),
    "validate-sample": ("validate", "{w}/sub.csv", "--sample", "{in}"),
    "score-truth": ("score", "--truth", "{in}", "--pred", "{w}/sub.csv"),
    "score-pred": ("score", "--truth", TRUTH, "--pred", "{in}"),
    "folds-truth": ("folds", "--truth", "{in}", "--n-folds", "2", "--out", "{w}/new-folds.csv"),
    "tune-truth": ("tune", "--truth", "{in}", "--cache", CACHE, "--trials", "2", "--out", "{w}/best.json"),
    "report-truth": ("report", "--truth", "{in}", "--cache", CACHE, "--out", "{w}/r.html"),
    "evaluate-truth": ("evaluate", "--truth", "{in}", *EVALUATE),
    "evaluate-folds": ("evaluate", "--truth", TRUTH, *EVALUATE, "--folds", "{in}"),
    "predict-sample": (*PREDICT, "--sample", "{in}", "--out", "{w}/s.csv"),
}
# (name, path or content written to {w}/in.csv, what the error says)
CSV_KINDS: list[tuple[str, str | bytes, str]] = [
    ("missing", "{w}/absent.csv", "does not exist"),
    ("folder", "{w}/folder", "is a folder"),
    ("fifo", "{w}/fifo", "is a FIFO (named pipe)"),
    ("socket", "{w}/sock", "is a socket"),
    ("device", "{w}/dev", "is a character device"),
    ("link-loop", "{w}/loop", "is a symbolic link loop"),
    ("dangling-link", "{w}/dangling", "is a symbolic link to nothing"),
    ("zero-bytes", b"", "not a readable CSV"),
    ("binary", bytes(range(256)) * 4, ""),
    ("latin-1", "id,predicted,annotation\n\xe9t\xe9,1 2,1 2\n".encode("latin-1"), "not a readable CSV"),
    ("wrong-columns", b"image,rle\nx,1 2\n", "missing column"),
    ("tabs", b"id\tpredicted\tannotation\nx\t1 2\t1 2\n", "missing column"),
]


def csv_cases() -> Iterator[Case]:
    for command, args in CSV_INPUTS.items():
        for kind, given, says in CSV_KINDS:
            path = given if isinstance(given, str) else "{w}/in.csv"
            filled = tuple(a.replace("{in}", path) for a in args)
            if isinstance(given, bytes):
                filled = ("write-in", given.hex(), *filled)
            names = (f"{path} {says}",) if isinstance(given, str) else (path,)
            yield Case("csv", f"{command}-{kind}", filled, 2, names, needs="dev" if kind == "device" else "")


CONFIG_COMMANDS = {
    "predict": (*PREDICT, "--out", "{w}/s.csv", "--config"),
    "tune": (*TUNE, "--out", "{w}/best.json", "--config"),
    "report": ("report", "--truth", TRUTH, "--cache", CACHE, "--out", "{w}/r.html", "--config"),
    "evaluate": ("evaluate", "--truth", TRUTH, *EVALUATE, "--config"),
}
CONFIG_KINDS: list[tuple[str, str | bytes, str, str]] = [
    ("missing", "{w}/absent.json", "does not exist", ""),
    ("folder", "{w}/folder", "is a folder, not a file", ""),
    ("fifo", "{w}/fifo", "is a FIFO (named pipe), not a file", ""),
    ("device", "{w}/dev", "is a character device, not a file", ""),
    ("dangling-link", "{w}/dangling", "is a symbolic link to nothing", ""),
    ("zero-bytes", b"", "", ""),
    ("not-json", b"{", "", ""),
    ("json-list", b"[]", "", ""),
    ("unknown-key", b'{"nope": 1}', "", ""),
    ("wrong-type", b'{"postprocess": {"mask_threshold": "high"}}', "", ""),
    ("nan", b'{"postprocess": {"mask_threshold": NaN}}', "", ""),
    ("duplicate-key", b'{"postprocess": {}, "postprocess": {}}', "", ""),
]


def config_cases() -> Iterator[Case]:
    for command, args in CONFIG_COMMANDS.items():
        for kind, given, says, xfail in CONFIG_KINDS:
            path = given if isinstance(given, str) else "{w}/in.json"
            filled = (*args, path)
            if isinstance(given, bytes):
                filled = ("write-in-json", given.hex(), *filled)
            names = (f"{path} {says}",) if says else (path,)
            yield Case("config", f"{command}-{kind}", filled, 2, names, needs="dev" if kind == "device" else "",
                       xfail=xfail)  # fmt: skip


PUSH = ("kaggle-push", "--models", "{w}/models", "--bundle", "{w}/bundle", "--notes", "n")


def push_cases() -> Iterator[Case]:
    work = ("--work", "{w}/kernel")
    for name, extra, says in [
        ("user-newline", ("--user", "bob\n"), "--user: expected"),
        ("user-empty", ("--user", ""), "--user: expected"),
        ("user-placeholder", ("--user", "your-kaggle-username"), "--user: expected"),
        ("user-space", ("--user", "bob smith"), "--user: expected"),
        ("user-slash", ("--user", "bob/x"), "--user: expected"),
        ("slug-short", ("--user", "bob", "--models-slug", "abc"), "--models-slug: expected 6-50"),
        ("slug-long", ("--user", "bob", "--bundle-slug", "x" * 51), "--bundle-slug: expected 6-50"),
        ("slug-newline", ("--user", "bob", "--kernel-slug", "my-kernel\n"), "--kernel-slug: expected 6-50"),
        ("slug-bang", ("--user", "bob", "--kernel-slug", "my-kernel!"), "--kernel-slug: expected 6-50"),
        ("timeout-nan", ("--user", "bob", "--timeout", "nan"), "finite numbers"),
        ("timeout-inf", ("--user", "bob", "--timeout", "inf"), "finite numbers"),
        ("timeout-zero", ("--user", "bob", "--timeout", "0"), "--timeout > 0"),
        ("timeout-negative", ("--user", "bob", "--timeout", "-5"), "--timeout > 0"),
        ("poll-negative", ("--user", "bob", "--poll", "-1"), "--poll must be >= 0"),
        ("poll-nan", ("--user", "bob", "--poll", "nan"), "finite numbers"),
        ("accelerator-empty", ("--user", "bob", "--accelerator", ""), "--accelerator: expected"),
        ("accelerator-space", ("--user", "bob", "--accelerator", "T4 x2"), "--accelerator: expected"),
        ("accelerator-newline", ("--user", "bob", "--accelerator", "NvidiaTeslaT4\n"), "--accelerator: expected"),
        ("submit-no-message", ("--user", "bob", "--submit"), "--submit needs -m MESSAGE"),
        ("submit-blank-message", ("--user", "bob", "--submit", "-m", "  "), "--submit needs -m MESSAGE"),
        ("models-missing", ("--user", "bob", "--models", "{w}/absent"), "--models {w}/absent: expected a folder"),
        ("models-file", ("--user", "bob", "--models", "{w}/old.csv"), "--models {w}/old.csv: expected a folder"),
        ("bundle-missing", ("--user", "bob", "--bundle", "{w}/absent"), "--bundle {w}/absent: no staged bundle"),
    ]:
        yield Case("push", name, (*PUSH, *work, *extra), 2, (says,))
    for dry in ((), ("--dry-run",)):
        tag = "-dry" if dry else ""
        for name, path, says in [
            ("models", "{w}/models", "is the --models"),
            ("models-parent", "{w}", "holds the --models"),
            ("cwd", ".", "--work . exists and was not made by kaggle-push"),
            ("inside-bundle", "{w}/bundle/k", "is inside the --bundle"),
            ("user-folder", "{w}/folder", "exists and was not made by kaggle-push"),
            ("file", "{w}/old.csv", "is a file, not a folder"),
            ("fifo", "{w}/fifo", "is a FIFO (named pipe), not a folder"),
        ]:
            yield Case("push", f"work-{name}{tag}", (*PUSH, "--user", "bob", "--work", path, *dry), 2, (says,),
                       cwd="{w}/folder")  # fmt: skip
        writes = () if dry else ("{w}/kernel", "{w}/models/dataset-metadata.json", "{w}/bundle/dataset-metadata.json")
        yield Case("push", f"work-new{tag}", (*PUSH, "--user", "bob", *work, *dry), 0, writes=writes)
    meta = "{w}/models/dataset-metadata.json"
    for name, content, says in [
        ("list", b"[1]", "holds a JSON list, not an object"),
        ("string", b'"x"', "holds a JSON str, not an object"),
        ("number", b"7", "holds a JSON int, not an object"),
        ("duplicate-key", b'{"title": "A", "title": "B"}', "key 'title' appears twice"),
        ("nan", b'{"title": NaN}', "NaN is not JSON"),
        ("latin-1", b'{"title": "\xe9"}', "is not UTF-8 text"),
        ("truncated", b'{"title": ', "is not valid JSON"),
        ("deep", b"[" * 100_000 + b"]" * 100_000, "nested too deeply"),
    ]:
        yield Case("push", f"metadata-{name}", ("write", meta, content.hex(), *PUSH, "--user", "bob", *work), 2,
                   (meta, says))  # fmt: skip
    for name, kind in [("metadata-folder", "a folder"), ("metadata-fifo", "a FIFO (named pipe)")]:
        make = "make-folder" if kind == "a folder" else "make-fifo"
        yield Case("push", name, (make, meta, *PUSH, "--user", "bob", *work), 2, (f"{meta} is {kind}",))
    for name, content, suffix, says in [
        ("text", b"print('hi')\n", ".py", "is not a Jupyter notebook (.ipynb)"),
        ("not-json", b"{", ".ipynb", "is not valid JSON"),
        ("list", b"[]", ".ipynb", "is not a Jupyter notebook"),
        ("no-cells", b'{"nbformat": 4}', ".ipynb", "is not a Jupyter notebook"),
        ("cell-not-object", b'{"nbformat": 4, "cells": [1]}', ".ipynb", "is not a Jupyter notebook"),
        ("source-number", b'{"nbformat": 4, "cells": [{"source": 5}]}', ".ipynb", "a cell's source is not text"),
        ("no-parameter", b'{"nbformat": 4, "cells": []}', ".ipynb", "expected one code cell"),
        ("latin-1", b'{"nbformat": 4, "cells": [], "x": "\xe9"}', ".ipynb", "is not UTF-8 text"),
        ("duplicate-key", b'{"nbformat": 4, "nbformat": 4, "cells": []}', ".ipynb", "appears twice"),
    ]:
        path = "{w}/nb" + suffix
        yield Case("push", f"notebook-{name}", ("write", path, content.hex(), *PUSH, "--user", "bob", *work,
                                                "--notebook", path), 2, (path, says))  # fmt: skip
    for name, path, says in [
        ("missing", "{w}/absent.ipynb", "does not exist"),
        ("folder", "{w}/folder", "is a folder, not a file"),
        ("fifo", "{w}/fifo", "is a FIFO (named pipe), not a file"),
    ]:
        yield Case("push", f"notebook-{name}", (*PUSH, "--user", "bob", *work, "--notebook", path), 2,
                   (f"--notebook {path} {says}",))  # fmt: skip


SUBMISSIONS: list[tuple[str, bytes, int, str]] = [
    # name, content, validate's status, the problem it names
    ("valid", b"id,predicted\nt0,1 2\n", 0, "valid"),
    ("crlf", b"id,predicted\r\nt0,1 2\r\n", 0, "valid"),
    ("empty-instances", b"id,predicted\nt0,\nt1,\n", 0, "valid"),
    ("header-only", b"id,predicted\n", 1, "no row"),
    ("huge-number", b"id,predicted\nt0,9223372036854775000 9000\n", 1, "beyond the 520x704 frame"),
    ("very-long-number", b"id,predicted\nt0,1 " + b"9" * 400 + b"\n", 1, "beyond the 520x704 frame"),
    ("past-frame", b"id,predicted\nt0,366080 5\n", 1, "beyond the 520x704 frame"),
    ("negative", b"id,predicted\nt0,-1 2\n", 1, "non-integer"),
    ("float", b"id,predicted\nt0,1.5 2\n", 1, "non-integer"),
    ("odd", b"id,predicted\nt0,1 2 3\n", 1, "odd number"),
    ("zero-length", b"id,predicted\nt0,5 0\n", 1, "length 0 < 1"),
    ("zero-start", b"id,predicted\nt0,0 3\n", 1, "start 0 < 1"),
    ("unsorted", b"id,predicted\nt0,9 2 1 2\n", 1, "unsorted"),
    ("self-overlap", b"id,predicted\nt0,1 5 3 2\n", 1, "duplicated pixels"),
    ("overlap", b"id,predicted\nt0,1 5\nt0,3 2\n", 1, "masks overlap"),
    ("extra-field", b"id,predicted\nt0,1 2,x\n", 1, "3 field(s), expected 2"),
    ("extra-field-later", b"id,predicted\nt0,1 2\nt1,1 2,x\n", 1, "3 field(s), expected 2"),
    ("missing-field", b"id,predicted\nt0,1 2\nt1\n", 1, "1 field(s), expected 2"),
    ("newline-id", b'id,predicted\n"t\n0",1 2\n', 1, "line break"),
    ("quote-id", b'id,predicted\n"t""0",1 2\n', 1, "a quote"),
    ("empty-id", b"id,predicted\n,1 2\n", 1, "empty id"),
    ("two-empty-rows", b"id,predicted\nt0,\nt0,\n", 1, "2 empty rows"),
    ("empty-next-to-instance", b"id,predicted\nt0,\nt0,1 2\n", 1, "empty predicted row next to"),
    ("extra-column", b"id,predicted,x\nt0,1 2,y\n", 1, "unexpected column"),
    ("unicode-digits", "id,predicted\nt0,\u0661 2\n".encode(), 1, "non-integer"),
]

SCORED = {"valid", "crlf", "empty-instances", "header-only", "overlap", "two-empty-rows", "empty-next-to-instance",
          "extra-column"}  # fmt: skip


def submission_cases() -> Iterator[Case]:
    for name, content, code, says in SUBMISSIONS:
        content = content.replace(b"t0", TRUTH_IDS[0].encode()).replace(b"t1", TRUTH_IDS[1].encode())
        write = ("write", "{w}/in.csv", content.hex())
        yield Case("submission", f"validate-{name}", (*write, "validate", "{w}/in.csv"), code, (says,))
        # score scores what it can read (overlaps, extra columns, duplicated empty rows: validate's
        # business) and refuses, naming the file, what it cannot: a bad RLE, a shifted row, an unknown id
        score_code = 0 if name in SCORED else 2
        yield Case("submission", f"score-{name}", (*write, "score", "--truth", TRUTH, "--pred", "{w}/in.csv"),
                   score_code, ("{w}/in.csv",) if score_code == 2 else ())  # fmt: skip


def all_cases() -> list[Case]:
    return [*output_cases(), *csv_cases(), *config_cases(), *push_cases(), *submission_cases()]


CASES = all_cases()


def _params() -> list[object]:
    return [
        # not strict: the owner's fix turns the case into a pass without breaking this file
        pytest.param(c, id=c.id, marks=[pytest.mark.xfail(reason=c.xfail, strict=False)] if c.xfail else [])
        for c in CASES
    ]


# ----------------------------------------------------------------------------- running one


def _prepare(args: tuple[str, ...], w: Path) -> list[str]:
    """Apply the leading set-up words (write PATH HEX, write-in HEX, make-folder PATH, ...)."""
    rest = [a.replace("{w}", str(w)) for a in args]
    while rest and rest[0] in ("write", "write-in", "write-in-json", "make-folder", "make-fifo"):
        word = rest.pop(0)
        if word == "write":
            path, data = Path(rest.pop(0)), bytes.fromhex(rest.pop(0))
            path.write_bytes(data)
        elif word in ("write-in", "write-in-json"):
            (w / ("in.json" if word == "write-in-json" else "in.csv")).write_bytes(bytes.fromhex(rest.pop(0)))
        elif word == "make-folder":
            Path(rest.pop(0)).mkdir()
        else:
            os.mkfifo(rest.pop(0))
    return rest


class _Timeout(Exception):
    pass


def _alarm(signum: int, frame: object) -> None:
    raise _Timeout(f"the case ran over {CASE_SECONDS} s (a blocking read?)")


@pytest.fixture
def world(tmp_path: Path) -> tuple[Path, bool]:
    w = tmp_path / "w"
    w.mkdir()
    return w, build_world(w)


@pytest.mark.parametrize("case", _params())
def test_fuzz_case(
    case: Case,
    world: tuple[Path, bool],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    w, has_device = world
    uses_device = case.needs == "dev" or "{w}/dev" in case.args
    if uses_device and not has_device:
        pytest.skip("no device node can be made here (not root)")
    monkeypatch.delenv("KERNEL_LIB_CONFIG", raising=False)
    calls: list[list[str]] = []

    def fake_kaggle(args: list[str], check: bool = True) -> tuple[int, str]:
        calls.append(list(args))
        return 0, "Kernel version 1 successfully pushed.\n" if args[:2] == ["kernels", "push"] else "ready\n"

    monkeypatch.setattr("kernel_lib.commands.kaggle_push.run_kaggle", fake_kaggle)
    args = _prepare(case.args, w)
    if case.cwd:
        monkeypatch.chdir(case.cwd.replace("{w}", str(w)))
    before = snapshot(w)
    capsys.readouterr()
    previous = signal.signal(signal.SIGALRM, _alarm)
    signal.alarm(CASE_SECONDS)
    try:
        code = main(args)
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
    captured = capsys.readouterr()
    text = captured.out + captured.err
    assert "Traceback" not in text, text
    assert code == case.code, text
    names = [n.replace("{w}", str(w)) for n in case.names]
    if code == 2:
        errors = [line for line in captured.err.splitlines() if line.startswith("error:")]
        assert len(errors) == 1, captured.err
        assert all(n in errors[0] for n in names), (names, errors[0])
    else:
        assert all(n in text for n in names), (names, text)
    after = snapshot(w)
    changed = {Path(k) for k in set(before) | set(after) if before.get(k) != after.get(k)}
    allowed = [Path(p.replace("{w}", str(w))) for p in case.writes] if code == 0 else []
    assert all(any(k == a or k.is_relative_to(a) for a in allowed) for k in changed), changed
    for path in allowed:
        assert path.is_dir() or stat.S_ISREG(path.lstat().st_mode), path
    if code == 2:
        assert calls == []  # nothing reached Kaggle


def test_the_repository_and_folders_around_it_are_never_a_work_folder() -> None:
    """Checked on the function alone: a command line that got it wrong would delete them."""
    from kernel_lib.commands.kaggle_push import check_work

    for work in (ROOT, ROOT.parent, Path("/")):
        with pytest.raises(ValueError, match="is the repository or a folder around it"):
            check_work(work, {})


def test_fuzz_covers_every_command_with_enough_cases() -> None:
    commands = {next(a for a in c.args if a in _COMMAND_NAMES) for c in CASES}
    assert commands == _COMMAND_NAMES - {"train"}
    assert len(CASES) >= 150


_COMMAND_NAMES = {"score", "validate", "predict", "evaluate", "tune", "folds", "report", "train", "kaggle-push"}
