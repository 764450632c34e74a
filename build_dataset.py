#!/usr/bin/env python
"""Build the offline Kaggle dataset that the inference notebook installs from.

Steps (each reuses what is already built; run it again at any time):

1. wheels/: the repacked pure-Python detectron2 wheel (scripts/wheelhouse.py) and every
   wheel pinned in wheels/bundle.txt: binary wheels for each Kaggle Python (3.10, 3.11,
   3.12 by default) from the package index, pure wheels once, and wheels built from
   source for the pins that ship only as sdists (fvcore, antlr4). Every file's sha256
   is checked against wheels/SHA256SUMS (committed) and new ones are recorded there.
2. kernel_lib is built as a wheel from this checkout.
3. The dataset folder (--out) is staged: kernel_lib_bootstrap.py (kernel_lib/bootstrap.py,
   the offline install the notebooks run; written first, so that a notebook run where
   detectron2 and kernel_lib are already importable finds it even when a later step
   fails), wheels/ (all of the above), SHA256SUMS and dataset-metadata.json (id, title,
   one licence).
4. With --upload, the real `kaggle datasets create` runs on it (or `kaggle datasets
   version` when the dataset already exists, or with --new-version), with
   `--dir-mode zip` so that the wheels/ folder is uploaded.

Bad input ends with one `error: ...` line that names the problem and the fix (exit 2).
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

from packaging.tags import Tag, compatible_tags, cpython_tags
from packaging.utils import InvalidWheelFilename, canonicalize_name, parse_wheel_filename
from tqdm import tqdm

ROOT = Path(__file__).resolve().parent
WHEELHOUSE = ROOT / "scripts" / "wheelhouse.py"
BOOTSTRAP = ROOT / "kernel_lib" / "bootstrap.py"
BOOTSTRAP_NAME = "kernel_lib_bootstrap.py"
"""BOOTSTRAP's name at the dataset's root (kernel_lib.bootstrap.STAGED_NAME): what the notebooks run."""
PLACEHOLDER_USER = "your-kaggle-username"
DEFAULT_ID = f"{PLACEHOLDER_USER}/sartorius-offline-bundle"
DEFAULT_TITLE = "Sartorius offline bundle"
DEFAULT_LICENSE = "other"
DEFAULT_PYTHONS = ("3.10", "3.11", "3.12")
# Kaggle's image is Ubuntu 22.04 on x86_64 (glibc 2.35): any of these platform tags runs there.
PLATFORMS = ("manylinux_2_28_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64")
# The licence names `kaggle datasets create` accepts (Kaggle/kaggle-api docs/datasets_metadata.md).
KAGGLE_LICENSES = (
    "CC0-1.0", "CC-BY-SA-3.0", "CC-BY-SA-4.0", "CC-BY-NC-SA-4.0", "GPL-2.0", "ODbL-1.0", "DbCL-1.0",
    "copyright-authors", "other", "unknown", "CC-BY-4.0", "CC-BY-NC-4.0", "PDDL", "CC-BY-3.0",
    "CC-BY-3.0-IGO", "US-Government-Works", "CC-BY-NC-SA-3.0-IGO", "CDLA-Permissive-1.0",
    "CDLA-Sharing-1.0", "CC-BY-ND-4.0", "CC-BY-NC-ND-4.0", "ODC-BY-1.0", "LGPL-3.0", "AGPL-3.0",
    "FDL-1.3", "EU-ODP-Legal-Notice", "apache-2.0", "GPL-3.0",
)  # fmt: skip
DESCRIPTION = (
    "Offline install bundle for the Sartorius cell instance segmentation inference notebook: "
    "the kernel_lib wheel, a pure-Python detectron2 wheel (repacked from sal-detectron2 0.7.2 "
    "without _C.so; Apache-2.0) and the detectron2 dependencies Kaggle's image may lack, for "
    "CPython 3.10-3.12. Every wheel keeps its own licence (see its METADATA); kernel_lib is MIT. "
    "Install with: python <this dataset>/kernel_lib_bootstrap.py (pip install --no-index --find-links "
    "<this dataset>/wheels, never changing an installed package)"
)
# Wheels built from sdists get fixed timestamps, so a rebuild with the same tools is byte-identical.
SOURCE_DATE_EPOCH = "1732838400"  # 2024-11-29, as scripts/wheelhouse.py
SUMS_NAME = "SHA256SUMS"
SDIST_CACHE = ".cache/sdist"
KERNEL_LIB_CACHE = ".cache/kernel_lib"
_SLUG = re.compile(r"^[A-Za-z0-9][A-Za-z0-9-]*$")


class BuildError(Exception):
    """Bad input or a failed step; the message names the problem and the fix."""


@dataclass(frozen=True)
class Pin:
    """One ``name==version`` line of wheels/bundle.txt."""

    name: str
    version: str

    @property
    def key(self) -> str:
        return canonicalize_name(self.name)

    def __str__(self) -> str:
        return f"{self.name}=={self.version}"


# --------------------------------------------------------------------------- inputs


def read_pins(path: Path) -> list[Pin]:
    """The pins of ``path``: one ``name==version`` per line; ``#`` starts a comment."""
    if not path.is_file():
        raise BuildError(f"{path} does not exist; it lists the wheels to ship, one `name==version` per line")
    pins: list[Pin] = []
    for number, raw in enumerate(path.read_text().splitlines(), start=1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        match = re.fullmatch(r"([A-Za-z0-9][A-Za-z0-9._-]*)\s*==\s*([A-Za-z0-9][A-Za-z0-9.+!_-]*)", line)
        if not match:
            raise BuildError(f"{path}:{number}: expected `name==version` (an exact pin), got {line!r}")
        pins.append(Pin(match.group(1), match.group(2)))
    if not pins:
        raise BuildError(f"{path} lists no wheels; expected `name==version` lines")
    keys = [pin.key for pin in pins]
    duplicates = sorted({k for k in keys if keys.count(k) > 1})
    if duplicates:
        raise BuildError(f"{path} pins {', '.join(duplicates)} more than once; keep one line each")
    return pins


def check_pythons(versions: Sequence[str]) -> list[str]:
    """Validated ``3.N`` strings (CPython 3.10 or newer: kernel_lib's requires-python)."""
    out: list[str] = []
    for version in versions:
        match = re.fullmatch(r"3\.(\d{1,2})", version)
        if not match or int(match.group(1)) < 10:
            raise BuildError(
                f"--python: expected CPython versions 3.10 or newer, like 3.10 3.11 3.12 "
                f"(kernel_lib needs Python >= 3.10), got {version!r}"
            )
        if version not in out:
            out.append(version)
    return out


def dataset_metadata(dataset_id: str, title: str, licence: str) -> dict[str, object]:
    """dataset-metadata.json's content, checked the way `kaggle datasets create` checks it."""
    parts = dataset_id.split("/")
    if len(parts) != 2 or not all(_SLUG.match(p) for p in parts):
        raise BuildError(f"--id: expected USER/SLUG (letters, digits, dashes), got {dataset_id!r}")
    if not 6 <= len(parts[1]) <= 50:
        raise BuildError(f"--id: the dataset slug must be 6-50 characters, got {parts[1]!r} ({len(parts[1])})")
    if not 6 <= len(title) <= 50:
        raise BuildError(f"--title: must be 6-50 characters, got {title!r} ({len(title)})")
    if licence not in KAGGLE_LICENSES:
        raise BuildError(f"--license: expected one of {', '.join(KAGGLE_LICENSES)}; got {licence!r}")
    return {"title": title, "id": dataset_id, "licenses": [{"name": licence}], "description": DESCRIPTION}


@functools.cache
def load_wheelhouse() -> ModuleType:
    """scripts/wheelhouse.py, the one place that repacks detectron2."""
    spec = importlib.util.spec_from_file_location("kernel_lib_wheelhouse", WHEELHOUSE)
    if spec is None or spec.loader is None:
        raise BuildError(f"cannot load {WHEELHOUSE}; restore it from git")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# --------------------------------------------------------------------------- wheel files


def sha256_of(path: Path) -> str:
    """Hex sha256 of a file (the wheelhouse's, so both record hashes alike)."""
    return load_wheelhouse().sha256_of(path)


def python_tags(version: str) -> frozenset[Tag]:
    """Every wheel tag CPython ``version`` ("3.11") accepts on Kaggle's x86_64 Linux."""
    major, minor = (int(v) for v in version.split("."))
    tags = list(cpython_tags((major, minor), platforms=PLATFORMS))
    tags += compatible_tags((major, minor), interpreter=f"cp{major}{minor}", platforms=PLATFORMS)
    return frozenset(tags)


def wheel_tags(path: Path) -> tuple[str, str, frozenset[Tag]] | None:
    """(canonical name, version, tags) of a wheel file name, or None when it is not one."""
    try:
        name, version, _build, tags = parse_wheel_filename(path.name)
    except InvalidWheelFilename:
        return None
    return str(name), str(version), frozenset(tags)


def is_pure(path: Path) -> bool:
    info = wheel_tags(path)
    return info is not None and all(tag.platform == "any" and tag.abi == "none" for tag in info[2])


def find_wheel(folder: Path, pin: Pin, python: str) -> Path | None:
    """A wheel in ``folder`` for ``pin`` that CPython ``python`` can install, if any."""
    accepted = python_tags(python)
    for path in sorted(folder.glob("*.whl")):
        info = wheel_tags(path)
        if info and info[0] == pin.key and info[1] == pin.version and info[2] & accepted:
            return path
    return None


def run_pip(args: Sequence[str], what: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "pip", *args, "--disable-pip-version-check"]
    result = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if result.returncode != 0 and "No matching distribution" not in result.stderr:
        tail = "\n".join(line for line in result.stderr.splitlines() if "neither a file nor a directory" not in line)
        raise BuildError(
            f"{what} failed:\n  {' '.join(cmd)}\n{tail.strip()[-2000:]}\n"
            f"Fix: check network access to the package index (pip config), then run again."
        )
    return result


class Hashes:
    """wheels/SHA256SUMS: ``sha256  relative/path`` lines (``cd wheels && sha256sum -c
    --ignore-missing SHA256SUMS`` checks them)."""

    def __init__(self, folder: Path, rehash: bool) -> None:
        self.folder = folder
        self.path = folder / SUMS_NAME
        self.rehash = rehash
        self.recorded: dict[str, str] = {}
        self.current: dict[str, str] = {}
        self.notes: list[str] = []
        if self.path.is_file():
            for number, line in enumerate(self.path.read_text().splitlines(), start=1):
                if not line.strip():
                    continue
                parts = line.split(maxsplit=1)
                if len(parts) != 2 or not re.fullmatch(r"[0-9a-f]{64}", parts[0]):
                    raise BuildError(
                        f"{self.path}:{number}: expected `<sha256>  <file>`, got {line!r}; "
                        f"fix the line or delete the file and run with --rehash"
                    )
                self.recorded[parts[1].strip().lstrip("*")] = parts[0]

    def rel(self, path: Path) -> str:
        return path.relative_to(self.folder).as_posix()

    def matches(self, path: Path) -> bool | None:
        """True/False when ``path`` is recorded (and matches or not); None when it is new."""
        expected = self.recorded.get(self.rel(path))
        return None if expected is None else sha256_of(path) == expected

    def verify(self, path: Path, refetch: str) -> None:
        """Record ``path``; a hash other than the recorded one is an error unless --rehash."""
        rel, actual = self.rel(path), sha256_of(path)
        expected = self.recorded.get(rel)
        if expected is None:
            self.notes.append(f"recorded a new hash for {rel}")
        elif expected != actual and not self.rehash:
            raise BuildError(
                f"{path} has sha256 {actual}, but {self.path} records {expected}.\n"
                f"Fix: the file is corrupt or not the pinned release: delete it and run again ({refetch}); "
                f"if the change is intended, run with --rehash and commit {self.path.name}."
            )
        elif expected != actual:
            self.notes.append(f"--rehash: {rel} re-recorded")
        self.current[rel] = actual

    def accept(self, path: Path, why: str) -> None:
        """Record ``path`` as it is (a wheel rebuilt from a verified source)."""
        rel, actual = self.rel(path), sha256_of(path)
        if self.recorded.get(rel) not in (None, actual):
            self.notes.append(f"{rel}: {why}; new hash recorded")
        self.current[rel] = actual

    def write(self) -> bool:
        """Write the file when its content changes; True when it did."""
        text = "".join(f"{digest}  {rel}\n" for rel, digest in sorted(self.current.items()))
        if self.path.is_file() and self.path.read_text() == text:
            return False
        self.path.write_text(text)
        return True


def sdist_pin(name: str) -> tuple[str, str] | None:
    """(canonical name, version) of a source distribution's file name, or None."""
    for suffix in (".tar.gz", ".zip"):
        if name.endswith(suffix) and "-" in name:
            project, version = name[: -len(suffix)].rsplit("-", 1)
            return canonicalize_name(project), version
    return None


def fetch_sdist(pin: Pin, cache: Path, hashes: Hashes) -> Path:
    """The pinned source distribution in ``cache`` (downloaded once), hash-checked."""
    cache.mkdir(parents=True, exist_ok=True)

    def existing() -> Path | None:
        return next((p for p in sorted(cache.iterdir()) if sdist_pin(p.name) == (pin.key, pin.version)), None)

    path = existing()
    if path is None:
        run_pip(
            ["download", "--no-deps", "--no-binary=:all:", "--no-build-isolation", "-d", str(cache), str(pin)],
            f"downloading the source of {pin}",
        )
        path = existing()
        if path is None:
            raise BuildError(f"{pin} has neither a wheel nor a source distribution on the package index")
    hashes.verify(path, "the source is downloaded again")
    return path


def build_from_sdist(pin: Pin, folder: Path, hashes: Hashes) -> Path:
    """Build ``pin``'s pure wheel into ``folder`` from its hash-checked sdist."""
    sdist = fetch_sdist(pin, folder / SDIST_CACHE, hashes)
    env = {**os.environ, "SOURCE_DATE_EPOCH": SOURCE_DATE_EPOCH}
    with tempfile.TemporaryDirectory() as tmp:
        run_pip(
            ["wheel", "--no-deps", "--no-build-isolation", "--no-cache-dir", "-w", tmp, str(sdist)],
            f"building a wheel from {sdist.name}",
            env=env,
        )
        built = sorted(Path(tmp).glob("*.whl"))
        if len(built) != 1 or not is_pure(built[0]):
            names = ", ".join(p.name for p in built) or "nothing"
            raise BuildError(
                f"{pin} has no wheel on the index and its source built {names}, not one pure "
                f"py3-none-any wheel; pin a version that has wheels in wheels/bundle.txt"
            )
        target = folder / built[0].name
        shutil.move(str(built[0]), target)
    return target


def _download(pin: Pin, python: str, folder: Path) -> bool:
    """Download ``pin``'s wheel for CPython ``python``; False when the index has none."""
    result = run_pip(
        [
            "download", "--no-deps", "--only-binary=:all:", "--python-version", python,
            "--implementation", "cp", *[f"--platform={p}" for p in PLATFORMS],
            "-d", str(folder), str(pin),
        ],
        f"downloading {pin} for Python {python}",
    )  # fmt: skip
    return result.returncode == 0


def refresh_wheels(folder: Path, pins: Sequence[Pin], pythons: Sequence[str], rehash: bool) -> list[Path]:
    """Make ``folder`` hold a wheel of every pin for every Python, and the detectron2 wheel.

    Wheels are downloaded only when missing; pins without any wheel on the index are built
    once, as pure wheels, from their hash-checked sdists. Writes ``folder/SHA256SUMS``.

    Returns:
        The wheel files to ship (detectron2 first).
    """
    hashes = Hashes(folder, rehash)
    wheelhouse = load_wheelhouse()
    try:
        detectron2 = Path(wheelhouse.build_detectron2(folder))
    except wheelhouse.WheelError as err:
        raise BuildError(str(err)) from None
    hashes.verify(detectron2, "scripts/wheelhouse.py repacks it again")
    shipped: list[Path] = [detectron2]

    recorded_sources = {sdist_pin(Path(rel).name): rel for rel in hashes.recorded if rel.startswith(SDIST_CACHE)}
    from_source = {pin.key for pin in pins if (pin.key, pin.version) in recorded_sources}
    jobs = [(pin, python) for pin in pins for python in pythons]
    with tqdm(jobs, desc="wheels", unit="wheel", file=sys.stderr) as bar:
        for pin, python in bar:
            bar.set_postfix_str(f"{pin} cp{python.replace('.', '')}")
            path = find_wheel(folder, pin, python)
            if path in shipped:
                continue  # a pure wheel, already checked for an earlier Python
            if path is None and pin.key not in from_source:
                path = _downloaded(pin, python, folder)
                if path is None:
                    from_source.add(pin.key)  # only an sdist on the index
            if pin.key in from_source:
                path = _from_source(pin, path, folder, hashes, recorded_sources.get((pin.key, pin.version)), rehash)
            else:
                assert path is not None  # found, or downloaded above
                hashes.verify(path, "it is downloaded again")
            shipped.append(path)
    for note in hashes.notes:
        tqdm.write(f"note: {note}", file=sys.stderr)
    if hashes.write():
        tqdm.write(f"updated {hashes.path} (commit it)", file=sys.stderr)
    return shipped


def _downloaded(pin: Pin, python: str, folder: Path) -> Path | None:
    """The wheel of ``pin`` for ``python`` downloaded into ``folder``; None when the index
    has only its sdist."""
    if not _download(pin, python, folder):
        return None
    path = find_wheel(folder, pin, python)
    if path is None:
        raise BuildError(f"pip downloaded {pin} for Python {python}, but no matching wheel is in {folder}")
    return path


def _from_source(pin: Pin, path: Path | None, folder: Path, hashes: Hashes, source: str | None, rehash: bool) -> Path:
    """The pure wheel of a pin that has only an sdist: the one in ``folder`` when it matches
    its record (its recorded ``source`` stays recorded), else built again from the
    hash-checked sdist."""
    if path is None or (hashes.matches(path) is False and not rehash):
        if path is not None:
            path.unlink()  # differs from its record: build it again from the checked source
        path = build_from_sdist(pin, folder, hashes)
    elif source is not None:
        hashes.current[source] = hashes.recorded[source]
    hashes.accept(path, "rebuilt from its checked source by other build tools")
    return path


# --------------------------------------------------------------------------- kernel_lib


def _source_files(root: Path) -> list[Path]:
    files = [root / "pyproject.toml", root / "README.md"]
    files += sorted(p for p in (root / "kernel_lib").rglob("*") if p.is_file() and "__pycache__" not in p.parts)
    return files


def build_kernel_lib(root: Path, cache: Path) -> Path:
    """kernel_lib's wheel, built from a copy of ``root``'s sources (reused while they are unchanged)."""
    missing = [p for p in (root / "pyproject.toml", root / "kernel_lib" / "__init__.py") if not p.is_file()]
    if missing:
        raise BuildError(f"{missing[0]} is missing; run build_dataset.py from a complete checkout")
    digest = hashlib.sha256()
    for path in _source_files(root):
        digest.update(path.relative_to(root).as_posix().encode() + b"\0" + path.read_bytes() + b"\0")
    slot = cache / digest.hexdigest()[:16]
    found = sorted(slot.glob("kernel_lib-*.whl")) if slot.is_dir() else []
    if found:
        return found[0]
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "src"
        for path in _source_files(root):
            target = src / path.relative_to(root)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, target)
        env = {**os.environ, "SOURCE_DATE_EPOCH": SOURCE_DATE_EPOCH}
        run_pip(
            ["wheel", "--no-deps", "--no-build-isolation", "--no-cache-dir", "-w", str(Path(tmp) / "dist"), str(src)],
            "building the kernel_lib wheel",
            env=env,
        )
        built = sorted((Path(tmp) / "dist").glob("kernel_lib-*.whl"))
        if len(built) != 1:
            raise BuildError("pip wheel built no kernel_lib wheel; run `pip wheel --no-deps .` to see why")
        if cache.is_dir():
            shutil.rmtree(cache)  # keep only the wheel of the current sources
        slot.mkdir(parents=True)
        return Path(shutil.copy2(built[0], slot / built[0].name))


# --------------------------------------------------------------------------- staging and upload


def _check_out(out: Path) -> None:
    if out.exists() and not out.is_dir():
        raise BuildError(f"--out {out} is a file; pass a folder for the dataset")
    if (out / ".git").exists() or out.resolve() == ROOT:
        raise BuildError(f"--out {out} is a source checkout; pass a separate folder, e.g. build/kaggle-dataset")


def stage_bootstrap(out: Path, source: Path = BOOTSTRAP) -> Path:
    """Copy the offline install (``source``, kernel_lib/bootstrap.py) to ``out/kernel_lib_bootstrap.py``."""
    _check_out(out)
    if not source.is_file():
        raise BuildError(f"{source} is missing; run build_dataset.py from a complete checkout")
    out.mkdir(parents=True, exist_ok=True)
    target = out / BOOTSTRAP_NAME
    if not target.is_file() or target.read_bytes() != source.read_bytes():
        shutil.copyfile(source, target)
    return target


def stage(out: Path, wheels: Iterable[Path], metadata: dict[str, object]) -> Path:
    """Write the dataset folder: ``kernel_lib_bootstrap.py``, ``wheels/``, ``SHA256SUMS``,
    ``dataset-metadata.json``."""
    bootstrap = stage_bootstrap(out)
    target = out / "wheels"
    target.mkdir(parents=True, exist_ok=True)
    wanted = {path.name: path for path in wheels}
    for stale in target.glob("*.whl"):
        if stale.name not in wanted:
            stale.unlink()
    lines = []
    for name, path in sorted(wanted.items()):
        digest = sha256_of(path)
        copy = target / name
        if not copy.is_file() or sha256_of(copy) != digest:
            shutil.copyfile(path, copy)
        lines.append(f"{digest}  wheels/{name}\n")
    lines.append(f"{sha256_of(bootstrap)}  {BOOTSTRAP_NAME}\n")
    (out / SUMS_NAME).write_text("".join(lines))
    (out / "dataset-metadata.json").write_text(json.dumps(metadata, indent=2) + "\n")
    return out


def kaggle_command() -> list[str]:
    local = Path(sys.executable).parent / "kaggle"
    if local.is_file():
        return [str(local)]
    found = shutil.which("kaggle")
    if found is None:
        raise BuildError("the `kaggle` command is not installed; run `bash scripts/setup_env.sh` (it installs kaggle)")
    return [found]


def run_kaggle(args: Sequence[str]) -> tuple[int, str]:
    """Run the kaggle CLI, echoing its output; (exit status, output)."""
    cmd = [*kaggle_command(), *args]
    print("$ kaggle " + " ".join(args), flush=True)
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    assert proc.stdout is not None
    lines = []
    for line in proc.stdout:
        print(line, end="", flush=True)
        lines.append(line)
    return proc.wait(), "".join(lines)


def upload(out: Path, dataset_id: str, new_version: bool, notes: str, public: bool) -> str:
    """Create the dataset, or a new version of it; returns which was done."""
    if dataset_id.split("/")[0] == PLACEHOLDER_USER:
        raise BuildError(
            f"--id {dataset_id} still has the placeholder user name; pass --id YOUR_KAGGLE_USERNAME/SLUG "
            f"(and put the same id in kernel-metadata.json's dataset_sources)"
        )
    if not new_version:
        status, text = run_kaggle(["datasets", "status", dataset_id])
        if status == 0:
            new_version = True
        elif not re.search(r"\b404\b|not found", text, re.IGNORECASE):
            raise BuildError(f"`kaggle datasets status {dataset_id}` failed (see above); check your Kaggle credentials")
    if new_version:
        args = ["datasets", "version", "-p", str(out), "-m", notes, "--dir-mode", "zip"]
    else:
        args = ["datasets", "create", "-p", str(out), "--dir-mode", "zip"] + (["--public"] if public else [])
    status, text = run_kaggle(args)
    if status != 0 or re.search(r"\berror\b", text, re.IGNORECASE):
        raise BuildError(f"`kaggle {' '.join(args[:2])}` did not succeed (its output is above)")
    return "version" if new_version else "create"


# --------------------------------------------------------------------------- command line


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="build_dataset.py",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=ROOT / "build" / "kaggle-dataset",
        help="the dataset folder to stage (default build/kaggle-dataset)",
    )
    parser.add_argument(
        "--wheels",
        type=Path,
        default=ROOT / "wheels",
        help="where wheels are downloaded and built and SHA256SUMS is kept; reused between runs (default wheels/)",
    )
    parser.add_argument(
        "--bundle",
        type=Path,
        default=None,
        help="the pins to ship besides detectron2, one name==version a line (default wheels/bundle.txt)",
    )
    parser.add_argument(
        "--python",
        nargs="+",
        default=list(DEFAULT_PYTHONS),
        metavar="X.Y",
        help="CPython versions to ship binary wheels for (default: 3.10 3.11 3.12, the Pythons Kaggle may run)",
    )
    parser.add_argument(
        "--id",
        default=DEFAULT_ID,
        help=f"the Kaggle dataset, USER/SLUG (default {DEFAULT_ID}: replace the user name before --upload)",
    )
    parser.add_argument(
        "--title", default=DEFAULT_TITLE, help=f"dataset title, 6-50 characters (default {DEFAULT_TITLE!r})"
    )
    parser.add_argument(
        "--license",
        default=DEFAULT_LICENSE,
        help=f"the dataset's one licence, a Kaggle name (default {DEFAULT_LICENSE!r}: each wheel keeps its own)",
    )
    parser.add_argument(
        "--rehash",
        action="store_true",
        help="accept wheels whose sha256 differs from wheels/SHA256SUMS and record the new hashes",
    )
    parser.add_argument(
        "--upload",
        action="store_true",
        help="after staging, run `kaggle datasets create` (or `version` when the dataset exists) with --dir-mode zip",
    )
    parser.add_argument(
        "--new-version",
        action="store_true",
        help="with --upload: run `kaggle datasets version` without first asking Kaggle whether the dataset exists",
    )
    parser.add_argument(
        "-m",
        "--message",
        default="rebuilt by build_dataset.py",
        help="version notes for `kaggle datasets version`",
    )
    parser.add_argument(
        "--public", action="store_true", help="with --upload: create the dataset public (default private)"
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        metadata = dataset_metadata(args.id, args.title, args.license)
        pythons = check_pythons(args.python)
        wheels_dir: Path = args.wheels
        if wheels_dir.exists() and not wheels_dir.is_dir():
            raise BuildError(f"--wheels {wheels_dir} is a file; pass a folder")
        wheels_dir.mkdir(parents=True, exist_ok=True)
        pins = read_pins(args.bundle or ROOT / "wheels" / "bundle.txt")
        stage_bootstrap(args.out)  # first: enough for a notebook run that has detectron2 and kernel_lib already
        shipped = refresh_wheels(wheels_dir, pins, pythons, args.rehash)
        kernel_lib = build_kernel_lib(ROOT, wheels_dir / KERNEL_LIB_CACHE)
        out = stage(args.out, [*shipped, kernel_lib], metadata)
        size = sum(p.stat().st_size for p in (out / "wheels").glob("*.whl"))
        print(
            f"dataset staged in {out}: {BOOTSTRAP_NAME} and {len(shipped) + 1} wheels, {size / 1e6:.1f} MB "
            f"({', '.join(pythons)})"
        )
        if args.upload:
            done = upload(out, args.id, args.new_version, args.message, args.public)
            print(f"uploaded: kaggle datasets {done} {args.id}")
    except BuildError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except OSError as err:  # a folder that cannot be written, a full disk, ...
        print(f"error: {err}; check the paths given to --out and --wheels", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
