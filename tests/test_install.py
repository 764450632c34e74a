"""The notebook's install cell and the detectron2 metadata against images newer than the bundle.

1. The install cell (run as a script by a fresh venv's Python, offline) on a bundle whose
   wheels are stand-ins, beside the real kernel_lib_bootstrap.py (kernel_lib/bootstrap.py,
   staged by build_dataset.py): the cell finds and runs the bootstrap under the new input
   layout, which unpacks a ``wheels.zip`` that Kaggle left as an archive and never changes
   a package the image already has, even when the bundle ships an older release of it
   (the real bundle ships iopath 0.1.9 and omegaconf 2.3.1; images may have 0.1.10 and
   2.4.0).
2. The real detectron2 and kernel_lib in an environment with setuptools >= 82 (no
   ``pkg_resources``), iopath 0.1.10 and omegaconf 2.4.0 from the package index: the
   configs build, demo models are written and loaded. Skipped when the index is unreachable.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType

import pytest

from kernel_lib.testing import load_script

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK = ROOT / "notebooks" / "sartorius-inference.ipynb"


def load_wheelhouse() -> ModuleType:
    return load_script(ROOT / "scripts" / "wheelhouse.py", "wheelhouse_for_install")


def stage_bootstrap(dataset: Path) -> Path:
    return load_script(ROOT / "build_dataset.py", "build_dataset_for_install").stage_bootstrap(dataset)


def install_cell() -> str:
    notebook = json.loads(NOTEBOOK.read_text())
    [cell] = [c for c in notebook["cells"] if "".join(c["source"]).startswith("# 1. Install")]
    return "".join(cell["source"])


def stand_in_wheel(folder: Path, name: str, version: str, requires: Sequence[str] = (), module: str = "") -> Path:
    """A minimal valid wheel of ``name`` ``version`` holding ``module/__init__.py``."""
    module = module or name.replace("-", "_")
    dist = f"{name.replace('-', '_')}-{version}.dist-info"
    files = {
        f"{module}/__init__.py": f"__version__ = {version!r}\n".encode(),
        f"{dist}/METADATA": "\n".join(
            ["Metadata-Version: 2.1", f"Name: {name}", f"Version: {version}"]
            + [f"Requires-Dist: {r}" for r in requires]
            + [""]
        ).encode(),
        f"{dist}/WHEEL": b"Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    }
    records = []
    for path, data in files.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
        records.append(f"{path},sha256={digest},{len(data)}")
    records.append(f"{dist}/RECORD,,")
    target = folder / f"{name.replace('-', '_')}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(target, "w") as archive:
        for path, data in files.items():
            archive.writestr(path, data)
        archive.writestr(f"{dist}/RECORD", "\n".join(records) + "\n")
    return target


def requirement_names(requires: list[str]) -> list[str]:
    from packaging.requirements import Requirement

    return [Requirement(r).name for r in requires]


@pytest.fixture(scope="module")
def base_venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh venv with pip and nothing else (copied per test)."""
    venv = tmp_path_factory.mktemp("base") / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=180, capture_output=True)
    return venv


def offline_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PIP_", "PYTHON", "VIRTUAL_ENV"))}
    env.update(PIP_NO_INDEX="1", PIP_CONFIG_FILE=os.devnull, PIP_DISABLE_PIP_VERSION_CHECK="1")
    return env


def versions(python: Path, names: list[str]) -> dict[str, str | None]:
    code = (
        "import importlib.metadata as md, json, sys\n"
        "out = {}\n"
        "for n in sys.argv[1:]:\n"
        "    try: out[n] = md.version(n)\n"
        "    except md.PackageNotFoundError: out[n] = None\n"
        "print(json.dumps(out))\n"
    )
    result = subprocess.run([python, "-c", code, *names], capture_output=True, text=True, check=True, timeout=60)
    return json.loads(result.stdout)


@pytest.fixture
def image(base_venv: Path, tmp_path: Path) -> Path:
    """A stand-in for a newer Kaggle image: iopath 0.1.10 and omegaconf 2.4.0 installed."""
    venv = tmp_path / "image"
    shutil.copytree(base_venv, venv, symlinks=True)
    preinstalled = tmp_path / "preinstalled"
    preinstalled.mkdir()
    wheels = [stand_in_wheel(preinstalled, "iopath", "0.1.10"), stand_in_wheel(preinstalled, "omegaconf", "2.4.0")]
    subprocess.run(
        [venv / "bin" / "python", "-m", "pip", "install", "-q", "--no-deps", *map(str, wheels)],
        check=True,
        capture_output=True,
        env=offline_env(),
        timeout=120,
    )
    return venv


def bundle(folder: Path, detectron2_requires: list[str]) -> Path:
    """Stand-ins of the bundle's wheels: sal-detectron2 requiring ``detectron2_requires``,
    one wheel per requirement (the older iopath / omegaconf the real bundle ships), kernel_lib;
    the real bootstrap beside the folder, as build_dataset.py stages it."""
    folder.mkdir(parents=True)
    stage_bootstrap(folder.parent)
    stand_in_wheel(folder, "sal-detectron2", "0.7.2+pure", detectron2_requires, module="detectron2")
    stand_in_wheel(folder, "kernel_lib", "0.1.0")
    shipped = {"iopath": "0.1.9", "omegaconf": "2.3.1", "fvcore": "0.1.5.post20221221"}
    for name in requirement_names(detectron2_requires):
        stand_in_wheel(folder, name, shipped.get(name.lower(), "99.0"), module=f"m_{name.lower().replace('-', '_')}")
    return folder


def run_cell(python: Path, kaggle_input: Path, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**offline_env(), "KAGGLE_INPUT": str(kaggle_input)}
    return subprocess.run([python, "-c", install_cell()], capture_output=True, text=True, env=env, cwd=cwd, timeout=300)


def test_install_cell_unpacks_wheels_zip_in_the_new_layout_and_keeps_newer_packages(
    image: Path, tmp_path: Path
) -> None:
    requires = load_wheelhouse().REQUIRES
    wheels = bundle(tmp_path / "staged" / "wheels", requires)
    dataset = tmp_path / "input" / "datasets" / "some-user" / "sartorius-offline-bundle"
    stage_bootstrap(dataset)
    with zipfile.ZipFile(dataset / "wheels.zip", "w") as archive:  # as uploaded with --dir-mode zip, not unpacked
        for path in sorted(wheels.iterdir()):
            archive.write(path, path.name)
    python = image / "bin" / "python"

    result = run_cell(python, tmp_path / "input", tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"unpacked {dataset / 'wheels.zip'}" in result.stdout
    assert "installed detectron2, kernel_lib from" in result.stdout
    assert "kept as the image has them: iopath==0.1.10, omegaconf==2.4.0" in result.stdout
    after = versions(python, ["iopath", "omegaconf", "sal-detectron2", "kernel_lib", "fvcore"])
    assert after == {
        "iopath": "0.1.10",
        "omegaconf": "2.4.0",
        "sal-detectron2": "0.7.2+pure",
        "kernel_lib": "0.1.0",
        "fvcore": "0.1.5.post20221221",
    }
    again = run_cell(python, tmp_path / "input", tmp_path)
    assert again.returncode == 0 and "already importable: nothing to install" in again.stdout


def test_install_cell_stops_rather_than_downgrade(image: Path, tmp_path: Path) -> None:
    """detectron2's own caps (iopath<0.1.10, omegaconf<2.4) against the newer image: pip
    would downgrade both; the cell's constraints make it stop with a conflict instead."""
    bundle(tmp_path / "input" / "sartorius-offline-bundle" / "wheels", ["iopath<0.1.10", "omegaconf<2.4"])
    python = image / "bin" / "python"
    result = run_cell(python, tmp_path / "input", tmp_path)
    assert result.returncode != 0
    assert "conflict" in result.stderr.lower() or "ResolutionImpossible" in result.stderr
    assert versions(python, ["iopath", "omegaconf", "sal-detectron2"]) == {
        "iopath": "0.1.10",
        "omegaconf": "2.4.0",
        "sal-detectron2": None,
    }


def test_install_cell_names_what_it_found_when_the_bundle_is_missing(image: Path, tmp_path: Path) -> None:
    (tmp_path / "input" / "competitions" / "sartorius-cell-instance-segmentation").mkdir(parents=True)
    (tmp_path / "input" / "datasets" / "some-user" / "sartorius-fold-models").mkdir(parents=True)
    result = run_cell(image / "bin" / "python", tmp_path / "input", tmp_path)
    assert result.returncode != 0
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("FileNotFoundError: no kernel_lib_bootstrap.py under")
    assert "competitions/sartorius-cell-instance-segmentation" in last
    assert "datasets/some-user/sartorius-fold-models" in last
    # the bootstrap without its wheels: its own error, naming what is there
    stage_bootstrap(tmp_path / "input" / "datasets" / "some-user" / "sartorius-offline-bundle")
    result = run_cell(image / "bin" / "python", tmp_path / "input", tmp_path)
    last = result.stderr.strip().splitlines()[-1]
    assert result.returncode != 0 and "no sal_detectron2 wheel (nor wheels.zip holding one)" in last
    assert "datasets/some-user/sartorius-offline-bundle" in last


def test_detectron2_metadata_has_no_caps_that_force_a_downgrade() -> None:
    from packaging.requirements import Requirement

    requires = {Requirement(r).name.lower(): Requirement(r) for r in load_wheelhouse().REQUIRES}
    assert "hydra-core" not in requires  # caps omegaconf<2.4; detectron2 needs it only in LazyConfig overrides
    for name, requirement in requires.items():
        assert all(spec.operator in (">=", ">") for spec in requirement.specifier), f"{name}: {requirement}"


# --------------------------------------------------------------------------- the real packages


SHADOWED = ("setuptools", "pkg_resources", "_distutils_hack", "distutils-precedence.pth", "iopath", "omegaconf")


@pytest.mark.slow
def test_kernel_lib_and_detectron2_without_pkg_resources_and_with_newer_iopath_omegaconf(
    tmp_path: Path, bare_venv: tuple[Path, Path]
) -> None:
    """A venv that sees this project's packages (symlinked from .venv) except setuptools,
    pkg_resources, iopath and omegaconf, which come from the index: setuptools >= 82 (no
    pkg_resources), iopath 0.1.10, omegaconf 2.4.0."""
    python, site = bare_venv
    ours = Path(sysconfig.get_paths()["purelib"])
    for entry in ours.iterdir():
        if not entry.name.lower().startswith(SHADOWED):
            (site / entry.name).symlink_to(entry)
    fetch = subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", "--target", str(site),
         "setuptools>=82", "iopath==0.1.10", "omegaconf==2.4.0"],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    if fetch.returncode != 0:
        if "No matching distribution" in fetch.stderr or "connection" in fetch.stderr.lower():
            pytest.skip(f"the package index is unreachable: {fetch.stderr.strip()[-300:]}")
        pytest.fail(fetch.stderr)
    code = f"""
import importlib.metadata as md, importlib.util
assert importlib.util.find_spec("pkg_resources") is None, "pkg_resources is importable"
versions = {{n: md.version(n) for n in ("setuptools", "iopath", "omegaconf")}}
assert int(versions["setuptools"].split(".")[0]) >= 82, versions
assert versions["iopath"] == "0.1.10" and versions["omegaconf"] == "2.4.0", versions
from kernel_lib.d2config import sartorius_config
from kernel_lib.demo_models import make_demo_models
from kernel_lib.config import EnsembleConfig, InferenceConfig
from kernel_lib.model import load_models
import kernel_lib.train
cfg = sartorius_config("R50")
assert cfg.MODEL.ROI_HEADS.NUM_CLASSES == 3
make_demo_models({str(tmp_path / "models")!r}, n_folds=1, min_size_test=128, max_size_test=160)
models = load_models({str(tmp_path / "models")!r}, EnsembleConfig(), InferenceConfig(device="cpu"))
print("ok", len(models), versions)
"""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "VIRTUAL_ENV"))}
    result = subprocess.run([python, "-c", code], capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr[-3000:]
    assert result.stdout.startswith("ok 1")


def test_no_source_imports_pkg_resources_or_the_model_zoo_module() -> None:
    """kernel_lib, the scripts and the notebooks find zoo configs through d2config.zoo_config_file."""
    import re

    pattern = re.compile(r"^\s*(import pkg_resources|from pkg_resources|from detectron2 import model_zoo"
                         r"|import detectron2\.model_zoo|from detectron2\.model_zoo)", re.MULTILINE)  # fmt: skip
    texts = {p: p.read_text() for p in [*ROOT.glob("kernel_lib/**/*.py"), *ROOT.glob("scripts/*.py")]}
    for path in ROOT.glob("notebooks/*.ipynb"):
        texts[path] = "\n".join("".join(c["source"]) for c in json.loads(path.read_text())["cells"])
    offenders = [str(p.relative_to(ROOT)) for p, text in texts.items() if pattern.search(text)]
    assert len(texts) > 20 and offenders == []
    assert pattern.search(texts[ROOT / "notebooks" / "sartorius-inference.ipynb"] + "\nimport pkg_resources\n")
