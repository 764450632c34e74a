"""Fetch, verify and repack detectron2 as a pure-Python wheel (standard library only).

The one place that makes the detectron2 wheel, used by ``scripts/setup_env.sh`` (local
.venv) and ``build_dataset.py`` (the Kaggle bundle), so both install the same file.

detectron2 is not on PyPI under its own name (the PyPI ``detectron2`` is a
placeholder; it is never installed by name). The source is the PyPI wheel
``sal-detectron2==0.7.2``: detectron2's 2024 main-branch Python code plus a cp310
CUDA ``_C.so``. Its sha256 is pinned. The repack:

- drops ``detectron2/_C*.so`` (Mask R-CNN and Cascade Mask R-CNN run on torchvision's
  ops; only rotated boxes and deformable conv need ``_C``);
- drops the top-level ``tools/`` package it also carries (it would shadow any
  ``tools`` module on the user's path);
- rewrites the metadata: version ``0.7.2+pure``, tag ``py3-none-any``, and a
  Requires-Dist list of what detectron2 really imports, with lower bounds only (no
  ``numpy<2``, ``black``, ``tensorboard``, ``hydra-core``, nor caps on iopath/omegaconf:
  see :data:`REQUIRES`);
- writes a fresh RECORD, with fixed timestamps so the repacked file is reproducible.

Usage: ``python scripts/wheelhouse.py detectron2 --out wheels/`` prints the path of the
repacked wheel (reused when already there and intact).
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import subprocess
import sys
import zipfile
from pathlib import Path

SOURCE_NAME = "sal-detectron2"
SOURCE_VERSION = "0.7.2"
SOURCE_FILE = "sal_detectron2-0.7.2-cp310-none-any.whl"
SOURCE_SHA256 = "491af0c7f79bdb2d178e46f6cb16a97c4ac968d45c41ea3f6b6435d59bbee561"

PURE_VERSION = "0.7.2+pure"
PURE_FILE = f"sal_detectron2-{PURE_VERSION}-py3-none-any.whl"
DIST_INFO = f"sal_detectron2-{PURE_VERSION}.dist-info"

REQUIRES = [
    "Pillow>=7.1",
    "matplotlib",
    "pycocotools>=2.0.2",
    "termcolor>=1.1",
    "yacs>=0.1.8",
    "tabulate",
    "cloudpickle",
    "tqdm>4.29.0",
    "fvcore>=0.1.5",
    "iopath>=0.1.7",
    "omegaconf>=2.1",
    "packaging",
]
"""What the repacked wheel requires: lower bounds only, so that installing it never
downgrades a newer release the image already has. detectron2's own metadata asks for
``fvcore<0.1.6``, ``iopath<0.1.10``, ``omegaconf<2.4`` and ``hydra-core>=1.1``; none of
those caps is needed by the code it imports (``fvcore`` 0.1.5 is the last release;
``iopath`` 0.1.10 keeps ``PathManager``/``file_lock``; ``omegaconf`` 2.4 keeps
``DictConfig``, ``ListConfig``, ``OmegaConf``, ``SCMode``; tests/test_install.py runs
detectron2 with iopath 0.1.10 and omegaconf 2.4.0). ``hydra-core`` is left out: detectron2
imports it only inside ``LazyConfig.apply_overrides`` (never used here), and hydra-core 1.3
caps ``omegaconf<2.4``, which would force a downgrade of a newer omegaconf."""

_FIXED_TIME = (2024, 11, 29, 0, 0, 0)


class WheelError(RuntimeError):
    """The source wheel could not be fetched or did not match its pinned hash."""


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def fetch_source(cache: Path) -> Path:
    """Download the pinned sal-detectron2 wheel into ``cache`` (reused when present)
    and check its sha256.

    Raises:
        WheelError: the download failed or the file's hash is not the pinned one.
    """
    cache.mkdir(parents=True, exist_ok=True)
    path = cache / SOURCE_FILE
    if not path.is_file():
        cmd = [
            sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
            "--python-version", "3.10", "--implementation", "cp",
            "-d", str(cache), f"{SOURCE_NAME}=={SOURCE_VERSION}",
        ]  # fmt: skip
        result = subprocess.run(cmd, capture_output=True, text=True)
        if result.returncode != 0 or not path.is_file():
            raise WheelError(
                f"could not download {SOURCE_NAME}=={SOURCE_VERSION} from the package index:\n"
                f"{result.stderr.strip()[-2000:]}\n"
                f"Fix: check network access to PyPI, or place {SOURCE_FILE} in {cache}."
            )
    actual = sha256_of(path)
    if actual != SOURCE_SHA256:
        raise WheelError(
            f"{path} has sha256 {actual}, expected {SOURCE_SHA256} (pinned).\n"
            f"The file is corrupt or not the pinned release: delete it and run again; "
            f"never install the index's 'detectron2' by name."
        )
    return path


def _record_hash(data: bytes) -> str:
    return "sha256=" + base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()


def _keep(name: str) -> bool:
    if not name.startswith("detectron2/"):
        return False  # dist-info (rewritten below) and the stray top-level tools/
    return not (name.startswith("detectron2/_C") and name.endswith(".so"))


def pure_metadata() -> str:
    """The repacked wheel's METADATA text."""
    return "\n".join(
        [
            "Metadata-Version: 2.1",
            "Name: sal-detectron2",
            f"Version: {PURE_VERSION}",
            "Summary: detectron2 (main branch, 2024) repacked from sal-detectron2 0.7.2 without _C.so",
            "Home-page: https://github.com/facebookresearch/detectron2",
            "License: Apache-2.0",
            "Requires-Python: >=3.8",
            *[f"Requires-Dist: {req}" for req in REQUIRES],
            "",
        ]
    )


def repack(source: Path, out_dir: Path) -> Path:
    """Write the pure-Python wheel into ``out_dir`` and return its path."""
    out_dir.mkdir(parents=True, exist_ok=True)
    target = out_dir / PURE_FILE
    tmp = target.with_suffix(".tmp")
    metadata = pure_metadata()
    wheel = "Wheel-Version: 1.0\nGenerator: kernel_lib wheelhouse\nRoot-Is-Purelib: true\nTag: py3-none-any\n"
    records: list[str] = []
    with zipfile.ZipFile(source) as zin, zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as zout:

        def write(name: str, data: bytes) -> None:
            info = zipfile.ZipInfo(name, date_time=_FIXED_TIME)
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = 0o644 << 16
            zout.writestr(info, data)
            records.append(f"{name},{_record_hash(data)},{len(data)}")

        for name in sorted(zin.namelist()):
            if _keep(name) and not name.endswith("/"):
                write(name, zin.read(name))
        licence = next((n for n in zin.namelist() if n.endswith(".dist-info/LICENSE")), None)
        if licence:
            write(f"{DIST_INFO}/LICENSE", zin.read(licence))
        write(f"{DIST_INFO}/METADATA", metadata.encode())
        write(f"{DIST_INFO}/WHEEL", wheel.encode())
        write(f"{DIST_INFO}/top_level.txt", b"detectron2\n")
        record_name = f"{DIST_INFO}/RECORD"
        records.append(f"{record_name},,")
        info = zipfile.ZipInfo(record_name, date_time=_FIXED_TIME)
        info.external_attr = 0o644 << 16
        zout.writestr(info, ("\n".join(records) + "\n").encode())
    tmp.replace(target)
    return target


def pure_wheel_ok(path: Path) -> bool:
    """True when ``path`` is a complete repacked wheel of the current metadata (opens, no
    _C.so, has RECORD, METADATA as :func:`pure_metadata` writes it)."""
    try:
        with zipfile.ZipFile(path) as z:
            names = z.namelist()
            if f"{DIST_INFO}/RECORD" not in names or any(n.endswith(".so") for n in names):
                return False
            return z.read(f"{DIST_INFO}/METADATA").decode() == pure_metadata() and z.testzip() is None
    except (OSError, zipfile.BadZipFile):
        return False


def build_detectron2(out_dir: Path, cache: Path | None = None) -> Path:
    """The repacked detectron2 wheel in ``out_dir``, built if missing or broken."""
    target = out_dir / PURE_FILE
    if target.is_file() and pure_wheel_ok(target):
        return target
    source = fetch_source(cache or out_dir / ".cache")
    return repack(source, out_dir)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    d2 = sub.add_parser("detectron2", help="fetch, verify and repack the detectron2 wheel")
    d2.add_argument("--out", type=Path, default=Path("wheels"), help="folder for the repacked wheel (default wheels/)")
    d2.add_argument(
        "--cache", type=Path, default=None, help="folder for the downloaded source wheel (default OUT/.cache)"
    )
    args = parser.parse_args(argv)
    try:
        print(build_detectron2(args.out, args.cache))
    except WheelError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
