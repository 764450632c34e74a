"""kernel_lib.bootstrap: the offline install the bundle dataset ships (standard library only).

Fake ``/kaggle/input`` trees under tmp_path: the bundle's wheels in each input layout,
beside the staged file, nested deeper, as a ``wheels.zip``, or missing (a clear error);
the pip commands and the constraints that keep the image's versions, with pip itself
replaced by a recorder. The real pip runs in tests/test_install.py and tests/test_bundle.py.
"""

from __future__ import annotations

import ast
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from kernel_lib import bootstrap
from kernel_lib.testing import load_script

ROOT = Path(__file__).resolve().parents[1]
SOURCE = ROOT / "kernel_lib" / "bootstrap.py"
D2 = "sal_detectron2-0.7.2-py3-none-any.whl"
KL = "kernel_lib-0.1.0-py3-none-any.whl"
BUNDLE = "sartorius-offline-bundle"


def wheels_in(folder: Path, *names: str) -> Path:
    """``folder`` holding empty files named like the bundle's wheels (finding never opens them)."""
    folder.mkdir(parents=True, exist_ok=True)
    for name in names or (D2, KL, "iopath-0.1.9-py3-none-any.whl", "Omegaconf-2.3.1-py3-none-any.whl"):
        (folder / name).write_bytes(b"")
    return folder


def zipped(archive: Path, *names: str, under: str = "") -> Path:
    archive.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(archive, "w") as opened:
        for name in names:
            opened.writestr(f"{under}{name}", b"")
    return archive


class Pip:
    """Records the commands install() runs, and the constraints file each one names."""

    def __init__(self) -> None:
        self.commands: list[list[str]] = []
        self.constraints: list[str] = []

    def __call__(self, command: list[str], check: bool) -> None:
        assert check is True  # a failed pip must raise
        self.commands.append(command)
        self.constraints.append(Path(command[command.index("--constraint") + 1]).read_text())


# --------------------------------------------------------------------------- finding the wheels


@pytest.mark.parametrize(
    "layout",
    [(BUNDLE,), ("competitions", BUNDLE), ("datasets", "someone", BUNDLE)],
    ids=["<slug>", "competitions/<slug>", "datasets/<owner>/<slug>"],
)
def test_wheels_are_found_in_each_layout(tmp_path: Path, layout: tuple[str, ...]) -> None:
    (tmp_path / "competitions" / "sartorius-cell-instance-segmentation" / "test").mkdir(parents=True)
    wheels = wheels_in(tmp_path.joinpath(*layout, "wheels"))
    assert bootstrap.find_wheels(tmp_path) == (wheels, None)


def test_the_layouts_come_in_order_then_anywhere_below(tmp_path: Path) -> None:
    deep = wheels_in(tmp_path / "datasets" / "someone" / BUNDLE / "extra" / "wheels")
    assert bootstrap.find_wheels(tmp_path) == (deep, None)  # in no layout: found anywhere below
    new = wheels_in(tmp_path / "datasets" / "someone" / BUNDLE / "wheels")
    assert bootstrap.find_wheels(tmp_path) == (new, None)
    classic = wheels_in(tmp_path / BUNDLE / "wheels")
    assert bootstrap.find_wheels(tmp_path) == (classic, None)
    wheels_in(tmp_path / "other" / "wheels", KL)  # a wheels/ folder without detectron2 is not the bundle
    assert bootstrap.find_wheels(tmp_path) == (classic, None)


def test_the_bundle_beside_the_staged_file_comes_first(tmp_path: Path) -> None:
    first = wheels_in(tmp_path / "input" / BUNDLE / "wheels")  # first in layout order
    here = tmp_path / "input" / "datasets" / "someone" / "my-bundle"
    mine = wheels_in(here / "wheels")
    assert bootstrap.find_wheels(tmp_path / "input", here) == (mine, None)
    assert bootstrap.find_wheels(tmp_path / "input", tmp_path / "elsewhere") == (first, None)


def test_wheels_zip_is_unpacked_into_a_writable_folder(tmp_path: Path) -> None:
    archive = zipped(tmp_path / "datasets" / "someone" / BUNDLE / "wheels.zip", D2, KL)
    wheels, source = bootstrap.find_wheels(tmp_path)
    assert source == archive
    assert not wheels.is_relative_to(tmp_path)  # Kaggle's inputs are read-only: a temporary folder
    assert sorted(p.name for p in wheels.iterdir()) == sorted([D2, KL])


def test_wheels_zip_beside_the_staged_file_and_one_holding_a_folder(tmp_path: Path) -> None:
    here = tmp_path / "input" / BUNDLE
    archive = zipped(here / "wheels.zip", D2, KL, under="wheels/")
    wheels, source = bootstrap.find_wheels(tmp_path / "input", here)
    assert source == archive and wheels.name == "wheels" and (wheels / D2).is_file()


def test_unpacked_folder_is_preferred_to_an_archive(tmp_path: Path) -> None:
    zipped(tmp_path / BUNDLE / "wheels.zip", D2)
    wheels = wheels_in(tmp_path / "datasets" / "someone" / BUNDLE / "wheels")
    assert bootstrap.find_wheels(tmp_path) == (wheels, None)


def test_archive_without_detectron2_is_a_clear_error(tmp_path: Path) -> None:
    zipped(tmp_path / BUNDLE / "wheels.zip", KL)
    with pytest.raises(FileNotFoundError, match=r"wheels\.zip holds no sal_detectron2-\*\.whl; rebuild the bundle"):
        bootstrap.find_wheels(tmp_path)


def test_missing_bundle_lists_what_the_input_root_holds(tmp_path: Path) -> None:
    (tmp_path / "competitions" / "sartorius-cell-instance-segmentation").mkdir(parents=True)
    (tmp_path / "datasets" / "someone" / "sartorius-fold-models").mkdir(parents=True)
    with pytest.raises(FileNotFoundError) as info:
        bootstrap.find_wheels(tmp_path, tmp_path / "datasets" / "someone" / "sartorius-fold-models")
    message = str(info.value)
    assert f"no sal_detectron2 wheel (nor wheels.zip holding one) under {tmp_path}" in message
    assert "competitions/sartorius-cell-instance-segmentation" in message
    assert "datasets/someone/sartorius-fold-models" in message
    assert "build_dataset.py" in message and "dataset_sources" in message  # the fix
    with pytest.raises(FileNotFoundError, match="which holds: nothing"):
        bootstrap.find_wheels(tmp_path / "no-such-root")


def test_listing_is_bounded(tmp_path: Path) -> None:
    for n in range(45):
        (tmp_path / f"input-{n:02d}").mkdir()
    listed = bootstrap.listing(tmp_path)
    assert listed.startswith("input-00, input-01") and listed.endswith("input-39, ...")


def test_input_root_comes_from_kaggle_input(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("KAGGLE_INPUT", str(tmp_path))
    assert bootstrap.input_root() == tmp_path
    monkeypatch.setenv("KAGGLE_INPUT", "")
    assert bootstrap.input_root() == Path("/kaggle/input")


# --------------------------------------------------------------------------- constraints and pip


def test_constraints_pin_every_bundled_package_the_image_has(tmp_path: Path) -> None:
    wheels = wheels_in(tmp_path)
    assert bootstrap.bundled_names(wheels) == {"sal-detectron2", "kernel-lib", "iopath", "omegaconf"}
    installed = {"iopath": "0.1.10", "omegaconf": "2.4.0", "numpy": "2.0.2", "torch": "2.10.0"}
    assert bootstrap.kept_versions(wheels, installed) == ["iopath==0.1.10", "omegaconf==2.4.0"]
    assert bootstrap.kept_versions(wheels, {"numpy": "2.0.2"}) == []
    assert bootstrap.normalize("Sal_Detectron2") == "sal-detectron2" == bootstrap.normalize("sal.detectron2")


def test_installed_versions_reads_this_environment() -> None:
    import importlib.metadata

    installed = bootstrap.installed_versions()
    assert installed["pytest"] == importlib.metadata.version("pytest")
    assert all(name == bootstrap.normalize(name) for name in installed)


def test_pip_commands_are_offline_constrained_and_only_for_what_is_missing(tmp_path: Path) -> None:
    wheels, constraints = tmp_path / "wheels", tmp_path / "constraints.txt"
    common = ["python3", "-m", "pip", "install", "--quiet", "--no-index", "--find-links", str(wheels)]
    common += ["--constraint", str(constraints)]
    both = bootstrap.pip_commands(wheels, constraints, ["detectron2", "kernel_lib"], python="python3")
    assert both == [[*common, "sal-detectron2"], [*common, "--no-deps", "kernel_lib"]]
    assert bootstrap.pip_commands(wheels, constraints, ["kernel_lib"], "python3") == [both[1]]
    assert bootstrap.pip_commands(wheels, constraints, ["detectron2"], "python3") == [both[0]]
    assert bootstrap.pip_commands(wheels, constraints, []) == []
    assert bootstrap.pip_commands(wheels, constraints, ["kernel_lib"])[0][0] == sys.executable


def test_install_runs_pip_with_the_image_versions_as_constraints(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    wheels = wheels_in(tmp_path / "input" / "datasets" / "someone" / BUNDLE / "wheels")
    pip = Pip()
    installed = {"iopath": "0.1.10", "omegaconf": "2.4.0", "numpy": "2.0.2"}
    done = bootstrap.install(tmp_path / "input", run=pip, installed=installed, missing=["detectron2", "kernel_lib"])
    assert done == ["detectron2", "kernel_lib"]
    assert [c[-1] for c in pip.commands] == ["sal-detectron2", "kernel_lib"]
    assert "--no-deps" in pip.commands[1] and "--no-deps" not in pip.commands[0]
    assert all(c[c.index("--find-links") + 1] == str(wheels) and "--no-index" in c for c in pip.commands)
    assert pip.constraints == ["iopath==0.1.10\nomegaconf==2.4.0\n"] * 2
    out = capsys.readouterr().out
    assert f"installed detectron2, kernel_lib from {wheels}; kept as the image has them: iopath==0.1.10, " in out


def test_install_unpacks_an_archive_and_says_so(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    archive = zipped(tmp_path / "competitions" / BUNDLE / "wheels.zip", D2, KL)
    pip = Pip()
    bootstrap.install(tmp_path, run=pip, installed={}, missing=["kernel_lib"])
    out = capsys.readouterr().out
    assert f"unpacked {archive} into " in out and "kept as the image has them: none" in out
    assert len(pip.commands) == 1 and pip.constraints == [""]


def test_nothing_to_install_looks_for_no_bundle(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pip = Pip()
    assert bootstrap.install(tmp_path / "no-such-input", run=pip, missing=[]) == []
    assert pip.commands == []
    assert capsys.readouterr().out == "detectron2 and kernel_lib are already importable: nothing to install\n"
    assert bootstrap.missing_packages(["kernel_lib", "no_such_module_xyz"]) == ["no_such_module_xyz"]


def test_a_failing_pip_stops_the_install(tmp_path: Path) -> None:
    wheels_in(tmp_path / BUNDLE / "wheels")

    def failing(command: list[str], check: bool) -> None:
        raise subprocess.CalledProcessError(1, command)

    with pytest.raises(subprocess.CalledProcessError):
        bootstrap.install(tmp_path, run=failing, installed={}, missing=["detectron2"])


# --------------------------------------------------------------------------- the staged file


def test_it_imports_only_the_standard_library() -> None:
    tree = ast.parse(SOURCE.read_text())
    modules = {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
    modules |= {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.module}
    tops = {name.split(".")[0] for name in modules}
    assert tops <= set(sys.stdlib_module_names) | {"__future__"}, tops - set(sys.stdlib_module_names)


def test_staged_file_runs_as_a_script_without_site_packages(tmp_path: Path) -> None:
    """``python -I -S kernel_lib_bootstrap.py``: no site-packages, so nothing is importable;
    with no bundle anywhere it stops with the clear error."""
    build_dataset = load_script(ROOT / "build_dataset.py", "build_dataset_for_bootstrap")
    staged = build_dataset.stage_bootstrap(tmp_path / "dataset")
    assert staged.name == bootstrap.STAGED_NAME == build_dataset.BOOTSTRAP_NAME
    assert staged.read_bytes() == SOURCE.read_bytes()
    (tmp_path / "input" / "competitions" / "sartorius-cell-instance-segmentation").mkdir(parents=True)
    env = {**os.environ, "KAGGLE_INPUT": str(tmp_path / "input")}
    result = subprocess.run(
        [sys.executable, "-I", "-S", str(staged)], capture_output=True, text=True, env=env, timeout=60
    )
    assert result.returncode == 1
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("FileNotFoundError: no sal_detectron2 wheel")
    assert "competitions/sartorius-cell-instance-segmentation" in last


def test_runpy_entry_point_installs_from_the_folder_it_was_staged_in(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What the notebook cell does, ``runpy.run_path(staged)["main"]()``: install() with the
    staged file's folder tried first."""
    import runpy

    build_dataset = load_script(ROOT / "build_dataset.py", "build_dataset_for_bootstrap")
    dataset = tmp_path / "input" / "datasets" / "someone" / BUNDLE
    staged = build_dataset.stage_bootstrap(dataset)
    namespace = runpy.run_path(str(staged))
    calls: list[dict[str, object]] = []
    monkeypatch.setitem(namespace["main"].__globals__, "install", lambda **kwargs: calls.append(kwargs) or [])
    assert namespace["main"]() is None  # the notebook cell ends with this call: it shows nothing
    assert calls == [{"here": dataset.resolve()}]
