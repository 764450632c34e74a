"""The inference notebook, executed with nbclient against a local /kaggle-like tree.

Two random-weight fold models (kernel_lib.demo_models), the three shipped test images,
sample_submission.csv and the bundle's kernel_lib_bootstrap.py; the notebook's install
cell runs that bootstrap, which installs nothing (this .venv already has detectron2 and
kernel_lib), then the notebook runs the pipeline once, validates the submission, writes
the timing table and draws the overlays. The install cell's search for the bootstrap is
tested here on its own; the bootstrap in tests/test_bootstrap.py, the real offline
install in tests/test_install.py and tests/test_bundle.py.
"""

from __future__ import annotations

import ast
import dataclasses
import importlib.util
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import cv2
import nbformat
import pandas as pd
import pytest

import kernel_lib
from kernel_lib.config import IMAGE_SHAPE, Config, EnsembleConfig, config_for_models
from kernel_lib.testing import load_script

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK = ROOT / "notebooks" / "sartorius-inference.ipynb"
COMPETITION = "sartorius-cell-instance-segmentation"
BOOTSTRAP = "kernel_lib_bootstrap.py"
MAX_CODE_LINES = 60
"""The inference notebook stays thin: at most this many code lines (non-blank, non-comment lines of its code cells)."""


def code_cells() -> list[str]:
    notebook = json.loads(NOTEBOOK.read_text())
    return ["".join(cell["source"]) for cell in notebook["cells"] if cell["cell_type"] == "code"]


def code_lines(cells: list[str]) -> int:
    return sum(1 for cell in cells for line in cell.splitlines() if line.strip() and not line.strip().startswith("#"))


def stage_bootstrap(dataset: Path) -> Path:
    """build_dataset.py's staging of kernel_lib/bootstrap.py at a bundle dataset's root."""
    return load_script(ROOT / "build_dataset.py", "build_dataset_for_notebook").stage_bootstrap(dataset)


def test_committed_notebook_is_generated_clean_and_thin() -> None:
    result = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "make_notebooks.py"), "--check"], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr  # matches notebooks/sartorius-inference.py
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(notebook)
    for cell in notebook.cells:
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None
    cells = code_cells()
    assert cells[0].startswith("# 1. Install") and BOOTSTRAP in cells[0] and "runpy.run_path(" in cells[0]
    assert cells[1].startswith("# 2. Parameters")
    assert 'os.environ.get("KAGGLE_INPUT", "/kaggle/input")' in cells[1]
    assert 'os.environ.get("KAGGLE_WORKING", "/kaggle/working")' in cells[1]
    text = "\n".join(cells)
    assert text.count("run_inference(") == 1  # the one library call
    assert not re.search(r"^\s*(def|class) ", text, re.MULTILINE)  # no logic of its own
    assert code_lines(cells) <= MAX_CODE_LINES, code_lines(cells)
    # names imported from the package itself are its public surface (kernel_lib.__all__)
    imported = [
        alias.name
        for cell in cells
        for node in ast.walk(ast.parse(cell))
        if isinstance(node, ast.ImportFrom) and node.module == "kernel_lib"
        for alias in node.names
    ]
    assert "config_for_models" in imported and set(imported) <= set(kernel_lib.__all__)


def _generator() -> ModuleType:
    return load_script(ROOT / "scripts" / "make_notebooks.py", "make_notebooks")


def test_generator_writes_stable_notebooks_and_check_names_the_command(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    generator = _generator()
    sources = tuple(tmp_path / source.name for source in generator.SOURCES)
    for original, copy in zip(generator.SOURCES, sources):
        shutil.copy(original, copy)
    monkeypatch.setattr(generator, "ROOT", tmp_path)
    monkeypatch.setattr(generator, "SOURCES", sources)
    assert generator.main(["--check"]) == 1  # nothing written yet
    assert "run python scripts/make_notebooks.py" in capsys.readouterr().err
    assert generator.main([]) == 0
    for original, copy in zip(generator.SOURCES, sources):  # the committed notebooks, byte for byte
        assert copy.with_suffix(".ipynb").read_text() == original.with_suffix(".ipynb").read_text()
    notebook = json.loads(sources[0].with_suffix(".ipynb").read_text())
    assert [cell["id"] for cell in notebook["cells"]] == [f"cell-{n}" for n in range(len(notebook["cells"]))]
    assert notebook["metadata"] == generator.METADATA  # no jupytext metadata
    assert generator.main(["--check"]) == 0

    sources[1].write_text(sources[1].read_text().replace("N_FOLDS = 5", "N_FOLDS = 4"))
    capsys.readouterr()
    assert generator.main(["--check"]) == 1
    err = capsys.readouterr().err
    assert f"{sources[1].with_suffix('.ipynb')} is out of date" in err and "run python scripts/make_notebooks.py" in err
    assert "sartorius-inference" not in err  # only the stale one is named

    # the install cell is written once (the inference notebook's): an edit there reaches both
    sources[0].write_text(sources[0].read_text().replace("import runpy\n", "import runpy  # run it\n", 1))
    assert generator.main([]) == 0
    cells = [json.loads(source.with_suffix(".ipynb").read_text())["cells"] for source in sources]
    installs = ["".join(next(c for c in nb if c["cell_type"] == "code")["source"]) for nb in cells]
    assert installs[0] == installs[1] and "import runpy  # run it" in installs[1]
    # the training notebook's source must keep its placeholder cell
    sources[1].write_text(sources[1].read_text().replace(generator.INSTALL_PLACEHOLDER, "# 1. Something else"))
    capsys.readouterr()
    assert generator.main([]) == 1
    assert "where the install cell goes" in capsys.readouterr().err


# --------------------------------------------------------------------------- the install cell


def fake_bootstrap(dataset: Path, name: str) -> Path:
    """A kernel_lib_bootstrap.py whose main() says which one ran."""
    dataset.mkdir(parents=True, exist_ok=True)
    path = dataset / BOOTSTRAP
    path.write_text(f"def main():\n    print('bootstrap {name} ran from', __file__)\n    return []\n")
    return path


def run_install_cell(kaggle_input: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KAGGLE_INPUT", str(kaggle_input))
    exec(code_cells()[0], {})


@pytest.mark.parametrize(
    "layout",
    [("sartorius-offline-bundle",), ("competitions", "some-bundle"), ("datasets", "someone", "my-bundle")],
    ids=["<slug>", "competitions/<slug>", "datasets/<owner>/<slug>"],
)
def test_install_cell_runs_the_bootstrap_in_each_layout(
    layout: tuple[str, ...], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "competitions" / COMPETITION / "test").mkdir(parents=True)
    path = fake_bootstrap(tmp_path.joinpath(*layout), "staged")
    fake_bootstrap(tmp_path / "datasets" / "someone" / "zz-bundle" / "nested", "nested")  # only a fallback
    run_install_cell(tmp_path, monkeypatch)
    assert capsys.readouterr().out == f"bootstrap staged ran from {path}\n"


def test_install_cell_takes_the_first_layout_then_looks_anywhere_below(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    nested = fake_bootstrap(tmp_path / "datasets" / "someone" / "bundle" / "inner", "nested")
    run_install_cell(tmp_path, monkeypatch)  # in no layout: found anywhere below
    assert capsys.readouterr().out == f"bootstrap nested ran from {nested}\n"
    fake_bootstrap(tmp_path / "datasets" / "someone" / "bundle", "new")
    classic = fake_bootstrap(tmp_path / "bundle", "classic")
    run_install_cell(tmp_path, monkeypatch)
    assert capsys.readouterr().out == f"bootstrap classic ran from {classic}\n"


def test_install_cell_runs_the_real_bootstrap(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The staged kernel_lib/bootstrap.py, in this .venv (which has detectron2 and kernel_lib)."""
    pytest.importorskip("detectron2")
    stage_bootstrap(tmp_path / "datasets" / "someone" / "sartorius-offline-bundle")
    run_install_cell(tmp_path, monkeypatch)
    assert capsys.readouterr().out == "detectron2 and kernel_lib are already importable: nothing to install\n"


def test_install_cell_without_the_bundle_lists_the_inputs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "competitions" / COMPETITION).mkdir(parents=True)
    (tmp_path / "datasets" / "someone" / "sartorius-fold-models").mkdir(parents=True)
    with pytest.raises(FileNotFoundError) as info:
        run_install_cell(tmp_path, monkeypatch)
    message = str(info.value)
    assert f"no {BOOTSTRAP} under {tmp_path}" in message
    assert f"competitions/{COMPETITION}" in message and "datasets/someone/sartorius-fold-models" in message
    assert "build_dataset.py" in message and "dataset_sources" in message  # the fix
    with pytest.raises(FileNotFoundError, match="which holds: nothing"):
        run_install_cell(tmp_path / "no-such-root", monkeypatch)


# --------------------------------------------------------------------------- the parameters cell and a full run


LAYOUTS = {
    # the classic mount: every input at /kaggle/input/<slug>/
    "classic": (COMPETITION, "sartorius-fold-models"),
    # notebooks pushed from today's CLI: competitions/<slug>/ and datasets/<owner>/<slug>/
    "new": (f"competitions/{COMPETITION}", "datasets/some-user/sartorius-fold-models"),
    # both at once: a dataset attachment that still appears at /kaggle/input/<slug>/
    "mixed": (f"competitions/{COMPETITION}", "sartorius-fold-models"),
}


@pytest.mark.parametrize("layout", LAYOUTS)
def test_parameters_cell_finds_the_inputs_in_every_layout(
    layout: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    competition_at, models_at = LAYOUTS[layout]
    (tmp_path / competition_at / "test").mkdir(parents=True)
    (tmp_path / models_at).mkdir(parents=True)
    monkeypatch.setenv("KAGGLE_INPUT", str(tmp_path))
    monkeypatch.delenv("KERNEL_LIB_CONFIG", raising=False)
    namespace: dict[str, object] = {}
    exec(code_cells()[1], namespace)
    assert namespace["TEST_DIR"] == tmp_path / competition_at / "test"
    assert namespace["SAMPLE_CSV"] == tmp_path / competition_at / "sample_submission.csv"
    assert namespace["MODELS_DIR"] == tmp_path / models_at


def test_parameters_cell_without_the_models_dataset_lists_the_inputs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "competitions" / COMPETITION).mkdir(parents=True)
    monkeypatch.setenv("KAGGLE_INPUT", str(tmp_path))
    with pytest.raises(ValueError, match=rf"no Kaggle input 'sartorius-fold-models'.*competitions/{COMPETITION}/"):
        exec(code_cells()[1], {})


def test_parameters_cell_takes_the_config_predict_takes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """KERNEL_LIB_CONFIG, else best_config.json beside the models, else the defaults: config_for_models."""
    (tmp_path / COMPETITION / "test").mkdir(parents=True)
    models = tmp_path / "sartorius-fold-models"
    models.mkdir()
    monkeypatch.setenv("KAGGLE_INPUT", str(tmp_path))
    monkeypatch.delenv("KERNEL_LIB_CONFIG", raising=False)

    def parameters() -> dict[str, object]:
        namespace: dict[str, object] = {}
        exec(code_cells()[1], namespace)
        config, used = config_for_models(models)
        assert namespace["CONFIG_JSON"] == used
        assert namespace["config"] == config.replace(
            inference=dataclasses.replace(config.inference, time_budget_s=8 * 3600.0)
        )
        return namespace

    assert parameters()["CONFIG_JSON"] is None
    tuned = models / "best_config.json"
    Config(ensemble=EnsembleConfig(method="wmf")).to_json(tuned)
    assert parameters()["CONFIG_JSON"] == tuned
    named = tmp_path / "named.json"
    Config(ensemble=EnsembleConfig(method="vote")).to_json(named)
    monkeypatch.setenv("KERNEL_LIB_CONFIG", str(named))
    assert parameters()["CONFIG_JSON"] == named


@pytest.fixture(params=["classic", "new"])
def kaggle_tree(
    request: pytest.FixtureRequest, tmp_path: Path, data_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> dict[str, Path]:
    """/kaggle/input (competition + two fold models) in the classic or the new layout
    (together they hold every kind of mount) and /kaggle/working under tmp_path."""
    if (
        importlib.util.find_spec("kernel_lib.pipeline") is None
        or importlib.util.find_spec("kernel_lib.demo_models") is None
    ):
        pytest.skip("kernel_lib.pipeline / kernel_lib.demo_models are not in this checkout yet")
    from kernel_lib.demo_models import make_demo_models

    inputs, working = tmp_path / "input", tmp_path / "working"
    competition_at, models_at = LAYOUTS[request.param]
    competition = inputs / competition_at
    (competition / "test").mkdir(parents=True)
    for image in sorted((data_dir / "test").glob("*.png")):
        shutil.copy(image, competition / "test" / image.name)
    shutil.copy(data_dir / "sample_submission.csv", competition / "sample_submission.csv")
    make_demo_models(inputs / models_at, n_folds=2, min_size_test=320, max_size_test=448)
    stage_bootstrap(inputs / models_at.replace("sartorius-fold-models", "sartorius-offline-bundle"))
    working.mkdir()
    config = tmp_path / "config.json"  # quick on the CPU: one view, at most 100 detections per image
    config.write_text(
        json.dumps(
            {
                "ensemble": {"tta": ["identity"], "detections_per_image": 100},
                "inference": {"device": "cpu", "batch_size": 3, "num_workers": 0},
            }
        )
    )
    monkeypatch.setenv("KAGGLE_INPUT", str(inputs))
    monkeypatch.setenv("KAGGLE_WORKING", str(working))
    monkeypatch.setenv("KERNEL_LIB_CONFIG", str(config))
    return {"input": inputs, "working": working, "competition": competition, "models": inputs / models_at}


def test_notebook_runs_on_a_kaggle_like_tree_and_writes_a_valid_submission(kaggle_tree: dict[str, Path]) -> None:
    from nbclient import NotebookClient

    from kernel_lib.submission import validate_submission

    notebook = nbformat.read(NOTEBOOK, as_version=4)
    NotebookClient(
        notebook, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(kaggle_tree["working"])}}
    ).execute()

    working, competition = kaggle_tree["working"], kaggle_tree["competition"]
    submission = working / "submission.csv"
    sample = competition / "sample_submission.csv"
    assert validate_submission(submission, sample=sample) == []
    written = pd.read_csv(submission, keep_default_na=False)
    assert set(written["id"]) == set(pd.read_csv(sample)["id"])

    outputs = ["".join(o.get("text", "")) for cell in notebook.cells for o in cell.get("outputs", [])]
    assert any("already importable: nothing to install" in text for text in outputs)
    assert any(f"{submission} is valid" in text for text in outputs)
    assert any(f"models: {kaggle_tree['models']}" in text for text in outputs)  # found in its layout

    timings = pd.read_csv(working / "timings.csv")
    assert list(timings.columns) == ["stage", "seconds", "per image (s)"]
    assert len(timings) >= 1 and (timings["seconds"] >= 0).all()

    overlays = sorted((working / "overlays").glob("*.png"))
    assert [p.stem for p in overlays] == sorted(p.stem for p in (competition / "test").glob("*.png"))
    for path in overlays:
        picture = cv2.imread(str(path))
        assert picture is not None and picture.shape == (*IMAGE_SHAPE, 3)
    shown = [o for o in notebook.cells[-1].outputs if o.get("output_type") == "display_data"]
    assert len(shown) == len(overlays) and all("image/png" in o["data"] for o in shown)
