"""Offline install of detectron2 and kernel_lib from the bundle dataset (standard library only).

``build_dataset.py`` stages this file at the bundle dataset's root as
``kernel_lib_bootstrap.py`` (:data:`STAGED_NAME`), beside ``wheels/``. The notebooks'
first cell finds it under ``/kaggle/input`` and runs it: ``runpy.run_path(path)["main"]()``.
It runs before kernel_lib is installed, so it imports nothing but the standard library
(and nothing from kernel_lib).

What :func:`main` does, skipping it all when detectron2 and kernel_lib are already importable:

1. finds the bundle's ``wheels/`` folder (:func:`find_wheels`): beside this file first, then
   under every Kaggle input layout (``<slug>/``, ``competitions/<slug>/``,
   ``datasets/<owner>/<slug>/``, then anywhere below the input root); a ``wheels.zip`` that
   Kaggle left as an archive is unpacked into a temporary folder. No bundle: a
   :class:`FileNotFoundError` listing what the input root holds.
2. pins every bundled package the image already has to its installed version
   (:func:`kept_versions`, a pip constraints file): pip then never upgrades, downgrades or
   removes it, and stops with a conflict instead;
3. runs ``pip install --no-index --find-links wheels/`` (:func:`pip_commands`): sal-detectron2
   with its dependencies (those the image lacks come from the same folder), kernel_lib with
   ``--no-deps`` (numpy, pandas, OpenCV and tqdm are the image's own).

``python kernel_lib_bootstrap.py`` does the same from a shell; ``KAGGLE_INPUT`` replaces
``/kaggle/input``.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import re
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path

STAGED_NAME = "kernel_lib_bootstrap.py"
"""The name this file has at the bundle dataset's root (what the notebooks look for)."""
INPUT_ROOT_ENV = "KAGGLE_INPUT"
DEFAULT_INPUT_ROOT = Path("/kaggle/input")
LAYOUTS = ("*", "competitions/*", "datasets/*/*")
"""Where Kaggle mounts an input under the input root, in the order they are tried:
``<slug>/``, ``competitions/<slug>/``, ``datasets/<owner>/<slug>/``."""
DETECTRON2_WHEEL = "sal_detectron2-*.whl"
ARCHIVE = "wheels.zip"
PACKAGES = ("detectron2", "kernel_lib")
"""The modules the bundle brings, in the order they are installed."""
_LISTED = 40

Runner = Callable[..., object]


def input_root() -> Path:
    """``$KAGGLE_INPUT`` when set, else ``/kaggle/input``."""
    return Path(os.environ.get(INPUT_ROOT_ENV) or DEFAULT_INPUT_ROOT)


def missing_packages(names: Iterable[str] = PACKAGES) -> list[str]:
    """The modules of ``names`` that cannot be imported here."""
    return [name for name in names if importlib.util.find_spec(name) is None]


def normalize(name: str) -> str:
    """A distribution name as pip compares them (PEP 503): ``Sal_Detectron2`` -> ``sal-detectron2``."""
    return re.sub(r"[-_.]+", "-", name).lower()


def _in_layouts(root: Path, pattern: str) -> list[Path]:
    return [path for layout in LAYOUTS for path in sorted(root.glob(f"{layout}/{pattern}"))]


def listing(root: Path) -> str:
    """What ``root`` holds in Kaggle's layouts (at most 40 entries), for error messages."""
    seen = sorted({str(path.relative_to(root)) for layout in LAYOUTS for path in root.glob(layout)})
    more = ", ..." if len(seen) > _LISTED else ""
    return ", ".join(seen[:_LISTED]) + more if seen else "nothing"


def unpack(archive: Path, into: Path | None = None) -> Path:
    """The folder holding the detectron2 wheel once ``archive`` is extracted (into a new
    temporary folder unless ``into``: Kaggle's inputs are read-only).

    Raises:
        FileNotFoundError: the archive holds no sal_detectron2 wheel.
    """
    target = into or Path(tempfile.mkdtemp(prefix="bundle-wheels-"))
    with zipfile.ZipFile(archive) as opened:
        opened.extractall(target)
    found = sorted(target.rglob(DETECTRON2_WHEEL))
    if not found:
        raise FileNotFoundError(f"{archive} holds no {DETECTRON2_WHEEL}; rebuild the bundle with build_dataset.py")
    return found[0].parent


def find_wheels(root: Path, here: Path | None = None) -> tuple[Path, Path | None]:
    """The bundle's wheel folder and the archive it was unpacked from (None when it was a folder).

    Tried in order: ``here/wheels/`` and ``here/wheels.zip`` (the bundle this file was
    staged in), a ``wheels/`` folder holding the detectron2 wheel in each of :data:`LAYOUTS`
    under ``root``, that wheel anywhere below ``root``, then a ``wheels.zip`` in each layout.

    Raises:
        FileNotFoundError: none of them; the message lists what ``root`` holds and the fix.
    """
    if here is not None:
        beside = sorted((here / "wheels").glob(DETECTRON2_WHEEL))
        if beside:
            return beside[0].parent, None
        if (here / ARCHIVE).is_file():
            return unpack(here / ARCHIVE), here / ARCHIVE
    found = _in_layouts(root, f"wheels/{DETECTRON2_WHEEL}") or sorted(root.rglob(DETECTRON2_WHEEL))
    if found:
        return found[0].parent, None
    archives = _in_layouts(root, ARCHIVE)
    if archives:  # the dataset's wheels/ folder arrived as an archive
        return unpack(archives[0]), archives[0]
    raise FileNotFoundError(
        f"no sal_detectron2 wheel (nor {ARCHIVE} holding one) under {root}, which holds: {listing(root)}. "
        "Add the bundle dataset made by build_dataset.py to this notebook (kernel-metadata.json dataset_sources)"
    )


def installed_versions() -> dict[str, str]:
    """Every installed distribution: normalized name -> version."""
    return {normalize(dist.metadata["Name"] or ""): dist.version for dist in importlib.metadata.distributions()}


def bundled_names(wheels: Path) -> set[str]:
    """The normalized distribution names of the wheels in ``wheels``."""
    return {normalize(path.name.split("-")[0]) for path in wheels.glob("*.whl")}


def kept_versions(wheels: Path, installed: Mapping[str, str] | None = None) -> list[str]:
    """``name==version`` for every bundled package already installed (sorted): the
    constraints that keep the image's packages as they are."""
    installed = installed_versions() if installed is None else installed
    return sorted(f"{name}=={installed[name]}" for name in bundled_names(wheels) & installed.keys())


def pip_commands(wheels: Path, constraints: Path, missing: Sequence[str], python: str | None = None) -> list[list[str]]:
    """The pip commands that install ``missing`` (a subset of :data:`PACKAGES`) offline from ``wheels``."""
    pip = [python or sys.executable, "-m", "pip", "install", "--quiet", "--no-index", "--find-links", str(wheels)]
    pip += ["--constraint", str(constraints)]
    commands = []
    if "detectron2" in missing:  # its dependencies that the image lacks come from the same folder
        commands.append([*pip, "sal-detectron2"])
    if "kernel_lib" in missing:  # numpy, pandas, opencv and tqdm are the image's own
        commands.append([*pip, "--no-deps", "kernel_lib"])
    return commands


def install(
    root: Path | None = None,
    here: Path | None = None,
    run: Runner = subprocess.run,
    installed: Mapping[str, str] | None = None,
    missing: Sequence[str] | None = None,
) -> list[str]:
    """Install what of detectron2 and kernel_lib is missing; returns what it installed.

    Args:
        root: the input root (default :func:`input_root`).
        here: the folder this file was staged in (its bundle is tried first).
        run: runs each pip command (``subprocess.run``; it must raise when pip fails).
        installed: name -> version of the installed distributions (default: read them).
        missing: the modules to install (default: those of :data:`PACKAGES` not importable).

    Raises:
        FileNotFoundError: no bundle (see :func:`find_wheels`).
        subprocess.CalledProcessError: pip failed, e.g. a conflict with the image's versions.
    """
    missing = missing_packages() if missing is None else list(missing)
    if not missing:
        print("detectron2 and kernel_lib are already importable: nothing to install")
        return []
    wheels, archive = find_wheels(input_root() if root is None else root, here)
    if archive is not None:
        print(f"unpacked {archive} into {wheels}")
    kept = kept_versions(wheels, installed)
    constraints = Path(tempfile.mkdtemp(prefix="bundle-")) / "constraints.txt"
    constraints.write_text("".join(f"{line}\n" for line in kept))
    for command in pip_commands(wheels, constraints, missing):
        run(command, check=True)
    importlib.invalidate_caches()
    print(f"installed {', '.join(missing)} from {wheels}; kept as the image has them: {', '.join(kept) or 'none'}")
    return missing


def main() -> None:
    """:func:`install` with this file's folder tried first (the notebooks' entry point; it
    returns nothing, so that the notebook cell ending with this call shows only what it printed)."""
    install(here=Path(__file__).resolve().parent)


if __name__ == "__main__":
    main()
