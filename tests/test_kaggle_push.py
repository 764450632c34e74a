"""`python -m kernel_lib kaggle-push` end to end: the real `kaggle` CLI against the local
stub of Kaggle's API (tests/kaggle_stub.py). What is uploaded, pushed and submitted is
asserted on the request bodies the CLI sends."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from kaggle_stub import USER, StubKaggle

ROOT = Path(__file__).resolve().parents[1]
COMPETITION = "sartorius-cell-instance-segmentation"
KAGGLE = Path(sys.executable).parent / "kaggle"
DEADLINE_S = 900.0  # each CLI start takes about 1 s; on a loaded machine much longer


@pytest.fixture
def inputs(tmp_path: Path) -> dict[str, Path]:
    """A staged bundle folder and a models folder of two fold folders (stand-in files)."""
    if not KAGGLE.is_file():
        pytest.fail(f"the kaggle CLI is not installed next to {sys.executable}; run bash scripts/setup_env.sh")
    bundle = tmp_path / "bundle"
    (bundle / "wheels").mkdir(parents=True)
    (bundle / "wheels" / "sal_detectron2-0.7.2+pure-py3-none-any.whl").write_bytes(b"stand-in detectron2")
    (bundle / "wheels" / "kernel_lib-0.1.0-py3-none-any.whl").write_bytes(b"stand-in kernel_lib")
    (bundle / "SHA256SUMS").write_text("0" * 64 + "  wheels/kernel_lib-0.1.0-py3-none-any.whl\n")
    meta = {"title": "Sartorius offline bundle", "id": "your-kaggle-username/sartorius-offline-bundle"}
    (bundle / "dataset-metadata.json").write_text(json.dumps({**meta, "licenses": [{"name": "other"}]}))
    models = tmp_path / "models"
    for fold in ("fold0", "fold1"):
        (models / fold).mkdir(parents=True)
        (models / fold / "config.yaml").write_text("MODEL: {}\n")
        (models / fold / "model_final.pth").write_bytes(f"weights of {fold}".encode())
    (models / "models.json").write_text(json.dumps({"models": [{"name": "fold0"}, {"name": "fold1"}]}))
    return {"bundle": bundle, "models": models, "work": tmp_path / "kernel", "home": tmp_path / "home"}


def kaggle_push(stub: StubKaggle, inputs: dict[str, Path], *extra: str) -> subprocess.CompletedProcess[str]:
    home = inputs["home"]
    home.mkdir(exist_ok=True)
    command = [
        sys.executable, "-m", "kernel_lib", "kaggle-push", "--models", str(inputs["models"]), "--user", USER,
        "--bundle", str(inputs["bundle"]), "--work", str(inputs["work"]), *extra,
    ]  # fmt: skip
    return subprocess.run(command, env=stub.env(home), capture_output=True, text=True, timeout=900, cwd=ROOT)


def test_push_creates_both_datasets_pushes_waits_and_submits(inputs: dict[str, Path]) -> None:
    with StubKaggle(kernel_statuses=["RUNNING", "COMPLETE"], deadline_s=DEADLINE_S) as stub:
        result = kaggle_push(stub, inputs, "--submit", "-m", "2 folds, roi ensemble", "--poll", "0")
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    for command in (
        f"$ kaggle datasets status {USER}/sartorius-offline-bundle",
        f"$ kaggle datasets create -p {inputs['bundle']} --dir-mode zip",
        f"$ kaggle datasets create -p {inputs['models']} --dir-mode zip",
        f"$ kaggle kernels push -p {inputs['work']}",
        f"$ kaggle kernels status {USER}/sartorius-inference",
        f"$ kaggle competitions submit {COMPETITION} -f submission.csv -k {USER}/sartorius-inference -v 1",
    ):
        assert command in out, command
    posts = [r.call.split("/")[-1] for r in stub.requests if r.method == "POST"]
    assert posts.count("CreateDataset") == 2 and posts.count("GetKernelSessionStatus") == 2
    assert posts.index("SaveKernel") > max(i for i, p in enumerate(posts) if p == "CreateDataset")
    assert posts.index("CreateCodeSubmission") > max(i for i, p in enumerate(posts) if p == "GetKernelSessionStatus")

    created = {r.json()["slug"]: r.json() for r in stub.calls("DatasetApiService/CreateDataset")}
    assert set(created) == {"sartorius-offline-bundle", "sartorius-fold-models"}
    assert all(c["ownerSlug"] == USER for c in created.values())
    names = {r.json()["name"] for r in stub.calls("BlobApiService/StartBlobUpload")}
    assert {"fold0.zip", "fold1.zip", "models.json", "wheels.zip", "SHA256SUMS"} <= names

    kernel = stub.calls("KernelsApiService/SaveKernel")[0].json()
    assert kernel["slug"] == f"{USER}/sartorius-inference"
    assert kernel["machineShape"] == "NvidiaTeslaT4" and kernel["enableGpu"] is True
    assert kernel["enableInternet"] is False and kernel["competitionDataSources"] == [COMPETITION]
    assert kernel["datasetDataSources"] == [f"{USER}/sartorius-offline-bundle", f"{USER}/sartorius-fold-models"]
    sent = json.loads(kernel["text"])
    assert "kernel_lib.pipeline.run_inference(" in kernel["text"] and sent["cells"]

    submit = stub.calls("CompetitionApiService/CreateCodeSubmission")[0].json()
    assert submit["competitionName"] == COMPETITION and submit["kernelSlug"] == "sartorius-inference"
    assert submit["kernelVersion"] == 1 and submit["fileName"] == "submission.csv"
    assert submit["submissionDescription"] == "2 folds, roi ensemble"
    assert json.loads((inputs["models"] / "dataset-metadata.json").read_text())["id"] == f"{USER}/sartorius-fold-models"


def test_existing_datasets_get_a_new_version_and_another_models_slug_reaches_the_notebook(
    inputs: dict[str, Path],
) -> None:
    existing = {f"{USER}/sartorius-offline-bundle", f"{USER}/my-fold-models"}
    with StubKaggle(existing=existing, deadline_s=DEADLINE_S) as stub:
        result = kaggle_push(stub, inputs, "--models-slug", "my-fold-models", "--notes", "fold 1 retrained")
    assert result.returncode == 0, result.stdout + result.stderr
    versions = stub.calls("DatasetApiService/CreateDatasetVersion")
    assert len(versions) == 2 and not stub.calls("DatasetApiService/CreateDataset")
    assert all(v.json()["body"]["versionNotes"] == "fold 1 retrained" for v in versions)
    kernel = stub.calls("KernelsApiService/SaveKernel")[0].json()
    assert f"{USER}/my-fold-models" in kernel["datasetDataSources"]
    assert 'MODELS_DATASET = "my-fold-models"' in "".join(
        "".join(cell["source"]) for cell in json.loads(kernel["text"])["cells"]
    )
    assert not stub.calls("GetKernelSessionStatus")  # no --wait


def test_a_failed_run_stops_before_submitting_with_the_status(inputs: dict[str, Path]) -> None:
    with StubKaggle(
        kernel_statuses=["ERROR"], failure_message="CUDA error: no kernel image", deadline_s=DEADLINE_S
    ) as stub:
        result = kaggle_push(stub, inputs, "--submit", "-m", "x", "--poll", "0")
    assert result.returncode == 2
    assert "error: the notebook run" in result.stderr and "ended with status ERROR" in result.stderr
    assert "CUDA error: no kernel image" in result.stdout  # the CLI's own report, echoed
    assert not stub.calls("CreateCodeSubmission")


def test_the_first_failing_command_stops_with_the_cli_message(inputs: dict[str, Path]) -> None:
    (inputs["bundle"] / "dataset-metadata.json").write_text(
        json.dumps({"title": "Bad", "id": "x/y", "licenses": [{"name": "other"}]})  # title under 6 characters
    )
    with StubKaggle(deadline_s=DEADLINE_S) as stub:
        result = kaggle_push(stub, inputs)
    assert result.returncode == 2
    assert "`kaggle datasets create` failed" in result.stderr
    assert "between 6 and 50 characters" in result.stderr  # what the CLI said
    assert not stub.calls("SaveKernel") and not stub.calls("CreateDataset")


def test_dry_run_prints_the_commands_and_sends_nothing(inputs: dict[str, Path]) -> None:
    with StubKaggle(deadline_s=DEADLINE_S) as stub:
        result = kaggle_push(stub, inputs, "--dry-run", "--submit", "-m", "msg")
    assert result.returncode == 0, result.stderr
    assert stub.requests == []
    assert not inputs["work"].exists() and not (inputs["models"] / "dataset-metadata.json").exists()
    lines = [line for line in result.stdout.splitlines() if line.startswith("$ kaggle")]
    assert [line.split()[2:4] for line in lines] == [
        ["datasets", "status"], ["datasets", "version"], ["datasets", "create"],
        ["datasets", "status"], ["datasets", "version"], ["datasets", "create"],
        ["kernels", "push"], ["kernels", "status"], ["competitions", "submit"],
    ]  # fmt: skip
    assert '"machine_shape": "NvidiaTeslaT4"' in result.stdout


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--user", "your-kaggle-username"], "--user: expected your Kaggle user name"),
        (["--submit"], "--submit needs -m MESSAGE"),
        (["--models-slug", "abc"], "--models-slug: expected 6-50"),
    ],
)
def test_bad_options_stop_before_any_command(inputs: dict[str, Path], extra: list[str], message: str) -> None:
    with StubKaggle(deadline_s=DEADLINE_S) as stub:
        result = kaggle_push(stub, inputs, *extra)
    assert result.returncode == 2 and message in result.stderr
    assert "$ kaggle" not in result.stdout and stub.requests == []


def test_missing_bundle_and_models_name_the_fix(inputs: dict[str, Path], tmp_path: Path) -> None:
    with StubKaggle(deadline_s=DEADLINE_S) as stub:
        no_bundle = kaggle_push(stub, {**inputs, "bundle": tmp_path / "nothing"})
        no_models = kaggle_push(stub, {**inputs, "models": tmp_path / "nothing"})
    assert "stage it first: python build_dataset.py" in no_bundle.stderr
    assert "expected a folder of fold folders" in no_models.stderr
    assert stub.requests == []
