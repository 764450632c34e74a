"""The real `kaggle` CLI (2.x) against a local stub of Kaggle's API (tests/kaggle_stub.py).

What is pushed and uploaded is asserted on the request bodies the CLI sends: the
committed kernel-metadata.json and notebook, and a dataset folder staged by
build_dataset.py. Invalid metadata must be refused before any request is made.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path
from types import ModuleType

import pytest
from kaggle_stub import USER, StubKaggle

from kernel_lib.testing import load_script

ROOT = Path(__file__).resolve().parents[1]
KAGGLE = Path(sys.executable).parent / "kaggle"
COMPETITION = "sartorius-cell-instance-segmentation"
TIMEOUT_S = 60


def load_build_dataset() -> ModuleType:
    return load_script(ROOT / "build_dataset.py", "build_dataset")


@pytest.fixture(scope="module")
def bd() -> ModuleType:
    return load_build_dataset()


def kaggle(args: list[str], stub: StubKaggle, home: Path) -> subprocess.CompletedProcess[str]:
    if not KAGGLE.is_file():
        pytest.fail(f"the kaggle CLI is not installed next to {sys.executable}; run bash scripts/setup_env.sh")
    return subprocess.run(
        [str(KAGGLE), *args], env=stub.env(home), capture_output=True, text=True, timeout=TIMEOUT_S, cwd=home
    )


def staged_dataset(bd: ModuleType, tmp_path: Path, dataset_id: str) -> tuple[Path, dict[str, bytes]]:
    """A dataset folder staged by build_dataset.stage from two small stand-in wheels."""
    src = tmp_path / "src"
    src.mkdir()
    contents = {
        "alpha-1.0-py3-none-any.whl": b"stand-in wheel alpha",
        "beta-2.0-cp311-cp311-manylinux2014_x86_64.whl": b"stand-in wheel beta " * 50,
    }
    for name, data in contents.items():
        (src / name).write_bytes(data)
    meta = bd.dataset_metadata(dataset_id, "Sartorius offline bundle", "other")
    out = bd.stage(tmp_path / "dataset", sorted(src.iterdir()), meta)
    return out, contents


# --------------------------------------------------------------------------- kernels push


def test_kernels_push_sends_gpu_on_internet_off_sources_and_the_notebook(tmp_path: Path, bd: ModuleType) -> None:
    meta = json.loads((ROOT / "kernel-metadata.json").read_text())
    notebook = json.loads((ROOT / meta["code_file"]).read_text())
    with StubKaggle() as stub:
        result = kaggle(["kernels", "push", "-p", str(ROOT)], stub, tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Kernel version 1 successfully pushed" in result.stdout
    assert [r.call for r in stub.requests] == ["kernels.KernelsApiService/SaveKernel"]
    body = stub.requests[0].json()
    assert body["enableGpu"] is True
    assert body["machineShape"] == "NvidiaTeslaT4"  # T4 x2, named: enable_gpu alone has landed on a P100
    assert body["enableInternet"] is False
    assert body["isPrivate"] is True
    assert body["kernelType"] == "notebook"
    assert body["language"] == "python"
    assert body["slug"] == meta["id"]
    assert body["competitionDataSources"] == [COMPETITION]
    assert body["datasetDataSources"] == meta["dataset_sources"]
    assert bd.DEFAULT_ID in body["datasetDataSources"]  # the bundle build_dataset.py makes by default
    assert len(body["datasetDataSources"]) == 2  # the bundle and the model weights
    sent = json.loads(body["text"])
    assert [cell["source"] for cell in sent["cells"]] == ["".join(cell["source"]) for cell in notebook["cells"]]
    assert "kernel_lib.pipeline.run_inference(" in body["text"]
    assert all(not cell.get("outputs") for cell in sent["cells"])


BAD_KERNEL_METADATA = {
    "title under five characters": ({"title": "Abc"}, "Title must be at least five characters"),
    "unknown language": ({"language": "julia"}, "valid language"),
    "unknown kernel type": ({"kernel_type": "app"}, "valid kernel type"),
    "dataset source without owner": ({"dataset_sources": ["sartorius-offline-bundle"]}, "dataset"),
    "missing code file": ({"code_file": "notebooks/missing.ipynb"}, "Source file not found"),
    "version in the id": ({"id": f"{USER}/sartorius-inference/3"}, "cannot contain a version"),
}


@pytest.mark.parametrize("case", BAD_KERNEL_METADATA, ids=list(BAD_KERNEL_METADATA))
def test_kernels_push_refuses_invalid_metadata_before_any_request(tmp_path: Path, case: str) -> None:
    change, message = BAD_KERNEL_METADATA[case]
    meta = {**json.loads((ROOT / "kernel-metadata.json").read_text()), **change}
    folder = tmp_path / "kernel"
    (folder / "notebooks").mkdir(parents=True)
    (folder / "notebooks" / "sartorius-inference.ipynb").write_bytes(
        (ROOT / "notebooks" / "sartorius-inference.ipynb").read_bytes()
    )
    (folder / "kernel-metadata.json").write_text(json.dumps(meta))
    with StubKaggle() as stub:
        result = kaggle(["kernels", "push", "-p", str(folder)], stub, tmp_path)
    assert result.returncode != 0
    assert message.lower() in (result.stdout + result.stderr).lower()
    assert stub.requests == []


# --------------------------------------------------------------------------- datasets create / version


def test_datasets_create_uploads_the_staged_folder_with_wheels_zipped(tmp_path: Path, bd: ModuleType) -> None:
    out, contents = staged_dataset(bd, tmp_path, f"{USER}/sartorius-offline-bundle")
    with StubKaggle() as stub:
        result = kaggle(["datasets", "create", "-p", str(out), "--dir-mode", "zip"], stub, tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Your private Dataset is being created" in result.stdout
    calls = [r.call for r in stub.requests if r.method == "POST"]
    assert calls[0] == "datasets.DatasetApiService/GetDatasetStatus"  # "is the slug free?"
    assert calls[-1] == "datasets.DatasetApiService/CreateDataset"
    starts = stub.calls("BlobApiService/StartBlobUpload")
    # metadata is not a file; the install module sits at the root, beside the zipped wheels
    assert sorted(r.json()["name"] for r in starts) == ["SHA256SUMS", "kernel_lib_bootstrap.py", "wheels.zip"]
    create = stub.calls("DatasetApiService/CreateDataset")[0].json()
    assert create["ownerSlug"] == USER
    assert create["slug"] == "sartorius-offline-bundle"
    assert create["title"] == "Sartorius offline bundle"
    assert create["licenseName"] == "other"
    assert create["isPrivate"] is True
    assert sorted(f["token"] for f in create["files"]) == sorted(stub.uploads)
    token_of = {r.json()["name"]: f"blob{i}" for i, r in enumerate(starts, start=1)}
    with zipfile.ZipFile(io.BytesIO(stub.uploads[token_of["wheels.zip"]])) as archive:
        assert sorted(archive.namelist()) == sorted(contents)
        assert {name: archive.read(name) for name in contents} == contents
    sums = stub.uploads[token_of["SHA256SUMS"]].decode()
    assert sums == (out / "SHA256SUMS").read_text()
    assert len(sums.splitlines()) == len(contents) + 1  # the wheels and the install module
    assert stub.uploads[token_of["kernel_lib_bootstrap.py"]] == (out / "kernel_lib_bootstrap.py").read_bytes()


@pytest.mark.parametrize("exists", [False, True], ids=["new dataset: create", "existing dataset: version"])
def test_build_dataset_upload_creates_or_versions(
    tmp_path: Path, bd: ModuleType, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], exists: bool
) -> None:
    dataset_id = f"{USER}/sartorius-offline-bundle"
    out, _ = staged_dataset(bd, tmp_path, dataset_id)
    with StubKaggle(existing={dataset_id} if exists else set()) as stub:
        env = stub.env(tmp_path)
        for key in list(os.environ):
            if key not in env:
                monkeypatch.delenv(key)
        for key, value in env.items():
            monkeypatch.setenv(key, value)
        done = bd.upload(out, dataset_id, new_version=False, notes="notes for v2", public=False)
    assert done == ("version" if exists else "create")
    posts = [r.call.split("/")[-1] for r in stub.requests if r.method == "POST"]
    # `datasets status` asks first; `datasets create` itself asks again before uploading.
    expected_end = "CreateDatasetVersion" if exists else "CreateDataset"
    assert posts[0] == "GetDatasetStatus"
    assert posts[-1] == expected_end
    assert posts.count("StartBlobUpload") == 3  # SHA256SUMS, kernel_lib_bootstrap.py, wheels.zip
    final = stub.calls(expected_end)[0].json()
    if exists:
        assert final["ownerSlug"] == USER and final["datasetSlug"] == "sartorius-offline-bundle"
        assert final["body"]["versionNotes"] == "notes for v2"
        assert len(final["body"]["files"]) == 3
    else:
        assert final["isPrivate"] is True and len(final["files"]) == 3
    assert f"$ kaggle datasets {done}" in capsys.readouterr().out


BAD_DATASET_METADATA = {
    "two licences": ({"licenses": [{"name": "CC0-1.0"}, {"name": "other"}]}, "exactly one license"),
    "title under six characters": ({"title": "Short"}, "between 6 and 50 characters"),
    "slug under six characters": ({"id": f"{USER}/abc"}, "slug must be between 6 and 50"),
}


@pytest.mark.parametrize("case", BAD_DATASET_METADATA, ids=list(BAD_DATASET_METADATA))
def test_datasets_create_refuses_invalid_metadata_before_any_request(tmp_path: Path, bd: ModuleType, case: str) -> None:
    change, message = BAD_DATASET_METADATA[case]
    out, _ = staged_dataset(bd, tmp_path, f"{USER}/sartorius-offline-bundle")
    meta = {**json.loads((out / "dataset-metadata.json").read_text()), **change}
    (out / "dataset-metadata.json").write_text(json.dumps(meta))
    with StubKaggle() as stub:
        result = kaggle(["datasets", "create", "-p", str(out), "--dir-mode", "zip"], stub, tmp_path)
    assert result.returncode != 0
    assert message.lower() in (result.stdout + result.stderr).lower()
    assert stub.requests == []


@pytest.mark.parametrize(
    ("dataset_id", "title", "licence", "message"),
    [
        (f"{USER}/sartorius-offline-bundle", "Sartorius offline bundle", "MIT", "--license: expected one of"),
        (f"{USER}/sartorius-offline-bundle", "Short", "other", "--title: must be 6-50 characters"),
        (f"{USER}/abc", "Sartorius offline bundle", "other", "slug must be 6-50 characters"),
        ("sartorius-offline-bundle", "Sartorius offline bundle", "other", "--id: expected USER/SLUG"),
    ],
)
def test_build_dataset_refuses_invalid_metadata(
    bd: ModuleType, dataset_id: str, title: str, licence: str, message: str
) -> None:
    with pytest.raises(bd.BuildError, match=message):
        bd.dataset_metadata(dataset_id, title, licence)


def test_build_dataset_upload_refuses_the_placeholder_user_before_any_request(
    tmp_path: Path, bd: ModuleType, monkeypatch: pytest.MonkeyPatch
) -> None:
    out, _ = staged_dataset(bd, tmp_path, bd.DEFAULT_ID)
    with StubKaggle() as stub:
        for key, value in stub.env(tmp_path).items():
            monkeypatch.setenv(key, value)
        with pytest.raises(bd.BuildError, match="placeholder user name"):
            bd.upload(out, bd.DEFAULT_ID, new_version=False, notes="x", public=False)
    assert stub.requests == []
