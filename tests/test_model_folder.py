"""Model folders (kernel_lib.model_folder): manifest and meta round-trips, weight checks,
digests, and that reading a folder for evaluation loads no torch."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from kernel_lib.model_folder import (
    file_digest,
    fold_of,
    folder_digest,
    read_manifest,
    read_meta,
    write_manifest,
    write_meta,
)


def _fold(root: Path, name: str, fold: int | None = None) -> Path:
    folder = root / name
    folder.mkdir(parents=True)
    (folder / "config.yaml").write_text("MODEL:\n  MASK_ON: true\n")
    (folder / "model_final.pth").write_bytes(b"weights of " + name.encode())
    if fold is not None:
        write_meta(folder, {"fold": fold})
    return folder


def test_manifest_round_trip_and_order(tmp_path: Path) -> None:
    _fold(tmp_path, "fold0", 0)
    _fold(tmp_path, "b_model", 3)
    # without models.json: every sub-folder, sorted, weight 1
    assert read_manifest(tmp_path) == [("b_model", 1.0), ("fold0", 1.0)]
    write_manifest(tmp_path, [("fold0", 2.0), ("b_model", 0.5)], note="hand-picked")
    assert read_manifest(tmp_path) == [("fold0", 2.0), ("b_model", 0.5)]
    assert json.loads((tmp_path / "models.json").read_text())["note"] == "hand-picked"
    assert read_meta(tmp_path / "b_model") == {"fold": 3}
    assert fold_of("b_model", read_meta(tmp_path / "b_model")) == 3
    assert fold_of("fold7_r50", {}) == 7 and fold_of("final", {}) is None


@pytest.mark.parametrize(
    "weight", [0, -1.0, float("inf"), float("nan"), True, "1", 1e39, 1e-300, 1.0000001e6, 0.99e-6, 10**7]
)
def test_bad_weights_are_refused_on_write_and_read(tmp_path: Path, weight: object) -> None:
    """A weight out of [1e-6, 1e6] overflowed (1e39) or vanished (1e-300) in the float32
    ensemble sums and gave an empty submission with exit 0."""
    _fold(tmp_path, "fold0", 0)
    message = r"\(fold0\): weight must be a finite number from 1e-06 to 1e\+06"
    with pytest.raises(ValueError, match=message.replace(r"\(fold0\)", "fold0")):
        write_manifest(tmp_path, [("fold0", weight)])  # type: ignore[list-item]
    text = json.dumps({"models": [{"name": "fold0", "weight": weight}]})  # inf, nan: Infinity, NaN
    (tmp_path / "models.json").write_text(text)
    with pytest.raises(ValueError, match=message):
        read_manifest(tmp_path)


@pytest.mark.parametrize("weight", [1e-6, 1e6, 1, 0.5])
def test_weights_at_the_bounds_are_kept(tmp_path: Path, weight: float) -> None:
    _fold(tmp_path, "fold0", 0)
    write_manifest(tmp_path, [("fold0", weight)])
    assert read_manifest(tmp_path) == [("fold0", float(weight))]


def test_write_manifest_refuses_missing_and_repeated_models(tmp_path: Path) -> None:
    _fold(tmp_path, "fold0", 0)
    with pytest.raises(ValueError, match=r"fold1/config\.yaml is missing"):
        write_manifest(tmp_path, [("fold0", 1.0), ("fold1", 1.0)])
    with pytest.raises(ValueError, match="listed twice"):
        write_manifest(tmp_path, [("fold0", 1.0), ("fold0", 1.0)])
    assert not (tmp_path / "models.json").exists()  # nothing half-written


def test_folder_digest_follows_every_file(tmp_path: Path) -> None:
    folder = _fold(tmp_path, "fold0", 0)
    first = folder_digest(folder)
    assert folder_digest(folder) == first
    write_meta(folder, {"fold": 1})
    second = folder_digest(folder)
    assert second != first
    (folder / "model_final.pth").write_bytes(b"other weights")
    assert folder_digest(folder) != second
    assert file_digest(folder / "model_final.pth") == file_digest(folder / "model_final.pth")
    (folder / "model_final.pth").unlink()
    with pytest.raises(ValueError, match=r"model_final\.pth is missing"):
        folder_digest(folder)


def test_reading_model_folders_for_evaluation_loads_no_torch(tmp_path: Path) -> None:
    _fold(tmp_path, "fold0", 0)
    code = (
        "import sys; from kernel_lib.model_folder import model_infos; "
        f"infos = model_infos({str(tmp_path)!r}); "
        "print(infos[0].name, infos[0].fold, 'torch' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["fold0", "0", "False"]


@pytest.mark.parametrize(
    ("file", "text", "message"),
    [
        ("fold0/meta.json", "{fold: 0", r"model fold0: .*fold0/meta\.json is not valid JSON \(Expecting"),
        ("fold0/meta.json", "[0]", r"model fold0: .*meta\.json: expected a JSON object, got list$"),
        ("models.json", "[]", r"models\.json: expected a JSON object, got list; fix it or delete it"),
        ("models.json", "{", r"models\.json is not valid JSON .*; fix it or delete it"),
    ],
)
def test_broken_json_files_name_the_file_and_the_fix(tmp_path: Path, file: str, text: str, message: str) -> None:
    folder = _fold(tmp_path, "fold0", 0)
    (tmp_path / file).write_text(text)
    with pytest.raises(ValueError, match=message):
        read_meta(folder) if file.endswith("meta.json") else read_manifest(tmp_path)
