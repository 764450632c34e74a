"""Bad input (issue 12): outputs replaced only when complete and valid, paths checked
before any work, images of another frame or given twice refused, strict config types,
and the metric, cache and ``score --json`` on degenerate input. No model runs here."""

from __future__ import annotations

import errno
import json
import shutil
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest

from kernel_lib.__main__ import main
from kernel_lib.config import Config, PostprocessConfig
from kernel_lib.evaluate import (
    CacheEntry,
    evaluate,
    load_cached,
    load_instances,
    save_instances,
    write_manifest,
)
from kernel_lib.folds import make_folds, write_folds
from kernel_lib.images import list_images, read_image
from kernel_lib.metric import score_submission
from kernel_lib.outputs import atomic_output, check_output
from kernel_lib.report import write_report
from kernel_lib.soft import SoftInstances
from kernel_lib.submission import validate_submission, write_submission

GOOD = "id,predicted\na,1 2\nb,\n"
"""A valid two-image submission (a 520x704 frame): what must survive a failed write."""


def _only_file(folder: Path) -> list[str]:
    """Every entry of ``folder``, hidden ones included (no temporary file left behind)."""
    return sorted(p.name for p in folder.iterdir())


def _png(path: Path, shape: tuple[int, int] = (520, 704)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), np.full(shape, 90, np.uint8))
    return path


def _refuse_constants(name: str) -> None:
    raise ValueError(f"not JSON: {name}")


# ------------------------------------------------------------------ 1. atomic outputs


def test_invalid_submission_leaves_the_previous_one_untouched(tmp_path: Path) -> None:
    path = tmp_path / "submission.csv"
    path.write_text(GOOD)
    # a run beyond the 520x704 frame (an image of another size would give one)
    with pytest.raises(ValueError, match=r"not written \(the previous file is untouched\).*beyond"):
        write_submission({"a": ["1 2"], "b": ["366080 5"]}, path)
    assert path.read_text() == GOOD
    assert _only_file(tmp_path) == ["submission.csv"]
    # a valid one replaces it
    write_submission({"a": ["3 1"]}, path, ids=["a", "b"])
    assert path.read_text() == "id,predicted\na,3 1\nb,\n"
    assert _only_file(tmp_path) == ["submission.csv"]


def test_interrupt_or_full_disk_while_writing_keeps_the_old_file(tmp_path: Path) -> None:
    path = tmp_path / "out.csv"
    path.write_text(GOOD)
    with pytest.raises(KeyboardInterrupt), atomic_output(path) as tmp:
        tmp.write_text("id,predicted\na,")
        raise KeyboardInterrupt
    assert path.read_text() == GOOD
    full_disk = pytest.raises(ValueError, match=r"could not write .*out\.csv \(No space left on device\); the previous")
    with full_disk, atomic_output(path) as tmp:
        tmp.write_text("half")
        raise OSError(errno.ENOSPC, "No space left on device")
    assert path.read_text() == GOOD
    assert _only_file(tmp_path) == ["out.csv"]


def _half_then_fail(monkeypatch: pytest.MonkeyPatch, owner: object, name: str) -> None:
    """Make ``owner.name`` (a writer) write a few bytes to its file, then fail as a full disk."""

    def broken(self: object, target: object, *args: object, **kwargs: object) -> None:
        Path(str(target)).write_bytes(b"trunc")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(owner, name, broken)


def test_folds_config_report_and_manifest_are_replaced_only_when_complete(
    tmp_path: Path, data_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folds = make_folds(data_dir / "train.csv", n_folds=2)
    folds_csv = write_folds(folds, tmp_path / "folds.csv")
    config_json = tmp_path / "best.json"
    Config().to_json(config_json)
    manifest = write_manifest(tmp_path / "cache", [CacheEntry("a", tmp_path / "cache" / "a.npz", "k", (), 0)], Config())
    report = tmp_path / "report.html"
    report.write_text("<html>old</html>")
    before = {p: p.read_bytes() for p in (folds_csv, config_json, manifest, report)}

    _half_then_fail(monkeypatch, pd.DataFrame, "to_csv")
    with pytest.raises(ValueError, match=r"folds\.csv.*the previous file is untouched"):
        write_folds(folds, folds_csv)
    monkeypatch.undo()

    writes = []

    def half_write_text(self: Path, text: str, *args: object, **kwargs: object) -> int:
        writes.append(self)
        with self.open("w") as f:
            f.write(text[:5])
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(Path, "write_text", half_write_text)
    with pytest.raises(ValueError, match=r"best\.json"):
        Config(postprocess=PostprocessConfig(mask_threshold=0.4)).to_json(config_json)
    with pytest.raises(ValueError, match=r"manifest\.json"):
        write_manifest(tmp_path / "cache", [], Config())
    with pytest.raises(ValueError, match=r"report\.html"):
        write_report(report, "<html>new</html>")
    monkeypatch.undo()
    assert len(writes) == 3 and all(w.name.startswith(".") for w in writes)  # each went to a temporary file
    assert {p: p.read_bytes() for p in before} == before
    assert _only_file(tmp_path) == ["best.json", "cache", "folds.csv", "report.html"]
    assert _only_file(tmp_path / "cache") == ["manifest.json"]


def test_failed_predict_keeps_the_previous_submission(
    tmp_path: Path, data_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """An image of another size stops ``predict`` before any model runs; the previous
    submission is left as it was."""
    test_dir = tmp_path / "test"
    shutil.copytree(data_dir / "test", test_dir)
    _png(test_dir / "big.png", (1024, 1024))
    out = tmp_path / "submission.csv"
    out.write_text(GOOD)
    code = main(["predict", "--test-dir", str(test_dir), "--models", str(tmp_path / "no-models"), "--out", str(out)])
    assert code == 2
    err = capsys.readouterr().err
    assert "big.png is 1024x1024 (height x width), expected 520x704" in err
    assert out.read_text() == GOOD


# ------------------------------------------------------------ 2. image frames and ids


def test_list_images_refuses_other_frames_and_two_files_per_id(tmp_path: Path) -> None:
    folder = tmp_path / "imgs"
    _png(folder / "a.png")
    (folder / "._a.png").write_bytes(b"\x00\x05\x16\x07 macOS resource fork")  # skipped, never read
    (folder / ".hidden.png").write_bytes(b"")
    assert [p.name for p in list_images(folder)] == ["a.png"]

    _png(folder / "t.png", (704, 520))  # turned by 90 degrees
    with pytest.raises(ValueError, match=r"t\.png is 704x520 \(height x width\), expected 520x704.*90 degrees"):
        list_images(folder)
    assert [p.name for p in list_images(folder, shape=None)] == ["a.png", "t.png"]
    with pytest.raises(ValueError, match=r"t\.png is 704x520 .* expected 520x704"):
        read_image(folder / "t.png")
    assert read_image(folder / "t.png", shape=None).shape == (704, 520)
    (folder / "t.png").unlink()

    _png(folder / "a.jpg")
    with pytest.raises(ValueError, match=r"1 id\(s\) have more than one file \(a\.jpg and a\.png\)"):
        list_images(folder)


def test_list_images_names_a_file_given_as_folder(tmp_path: Path) -> None:
    file = _png(tmp_path / "x.png")
    with pytest.raises(ValueError, match="is a file, not a folder"):
        list_images(file)


# ------------------------------------------------------------- 3. output paths first


@pytest.fixture
def truth(tmp_path: Path, data_dir: Path) -> Path:
    path = tmp_path / "train.csv"
    shutil.copy(data_dir / "train.csv", path)
    return path


@pytest.mark.parametrize(
    "command",
    [
        ["folds", "--truth", "{truth}", "--out", "{truth}"],
        ["tune", "--truth", "{truth}", "--cache", "{tmp}/cache", "--out", "{truth}"],
        ["report", "--truth", "{truth}", "--cache", "{tmp}/cache", "--out", "{truth}"],
    ],
)
def test_an_output_that_is_an_input_is_refused_before_work(
    command: list[str], truth: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    before = truth.read_bytes()
    args = [a.format(truth=truth, tmp=tmp_path) for a in command]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert f"--out {truth} is the --truth input" in err and "pass another file name" in err
    assert truth.read_bytes() == before


@pytest.mark.parametrize("which", ["sample", "config", "image"])
def test_predict_out_may_not_be_an_input(
    which: str, tmp_path: Path, data_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    sample = tmp_path / "sample_submission.csv"
    shutil.copy(data_dir / "sample_submission.csv", sample)
    config = tmp_path / "config.json"
    Config().to_json(config)
    test_dir = tmp_path / "test"
    shutil.copytree(data_dir / "test", test_dir)
    image = test_dir / "7ae19de7bc2a.png"
    target = {"sample": sample, "config": config, "image": image}[which]
    before = target.read_bytes()
    args = ["predict", "--test-dir", str(test_dir), "--models", str(tmp_path / "models"), "--out", str(target)]
    assert main([*args, "--sample", str(sample), "--config", str(config)]) == 2
    err = capsys.readouterr().err
    name = {"sample": "the --sample input", "config": "the --config input", "image": "--test-dir image"}[which]
    assert name in err
    assert target.read_bytes() == before


def test_output_folders_made_and_bad_places_refused(
    truth: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "new" / "deeper" / "folds.csv"
    assert main(["folds", "--truth", str(truth), "--out", str(out), "--n-folds", "2"]) == 0
    assert f"note: made folder {out.parent} for --out" in capsys.readouterr().err
    assert out.is_file()

    with pytest.raises(ValueError, match="is a folder; pass a file name"):
        check_output(tmp_path)
    with pytest.raises(ValueError, match=r"train\.csv is a file, not a folder"):
        check_output(truth / "folds.csv")
    assert check_output(tmp_path / "fine.csv", {"--truth": truth, "--config": None}) is None
    assert _only_file(tmp_path) == ["new", "train.csv"]  # the write probe left nothing


def test_predict_refuses_ids_a_submission_cannot_hold_before_models(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    test_dir = tmp_path / "test"
    _png(test_dir / "a,b.png")
    args = ["predict", "--test-dir", str(test_dir), "--models", str(tmp_path / "no-models")]
    assert main([*args, "--out", str(tmp_path / "s.csv")]) == 2
    err = capsys.readouterr().err
    assert "cannot be written as a submission row" in err and "'a,b'" in err
    assert not (tmp_path / "s.csv").exists()


# --------------------------------------------------- 6. truth ids with only empty rows


def test_score_submission_truth_id_with_only_empty_rows() -> None:
    truth = pd.DataFrame(
        {"id": ["a", "a", "b"], "annotation": ["", "", "1 2"], "cell_type": ["astro", "astro", "cort"]}
    )
    pred = pd.DataFrame({"id": ["a", "b"], "predicted": ["", "1 2"]})
    report = score_submission(truth, pred)
    # a: no truth and no prediction -> 1; b: perfect -> 1
    assert report.per_image.set_index("id")["score"].to_dict() == {"a": 1.0, "b": 1.0}
    assert report.per_image.set_index("id")["cell_type"].to_dict() == {"a": "astro", "b": "cort"}
    # a prediction on an image without truth: every threshold a false positive -> 0
    report = score_submission(truth, pd.DataFrame({"id": ["a"], "predicted": ["5 3"]}), ids=["a"])
    assert report.score == 0.0


# ------------------------------------------------------------- 7. truncated cache entry


def _instances() -> SoftInstances:
    rng = np.random.default_rng(0)
    masks = rng.random((3, 28, 28)).astype(np.float32)
    boxes = np.array([[10, 10, 60, 60], [100, 100, 180, 150], [300, 200, 340, 260]], np.float32)
    return SoftInstances(boxes, np.array([0.9, 0.8, 0.7], np.float32), np.zeros(3, np.int64), masks, (520, 704))


def test_truncated_cache_entry_is_named_with_the_fix(tmp_path: Path) -> None:
    path = tmp_path / "abc.npz"
    save_instances(path, _instances(), "k")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match=r"cache entry .*abc\.npz is unreadable .*delete it and run evaluate again"):
        load_instances(path, "k")
    with pytest.raises(ValueError, match=r"abc\.npz is unreadable"):
        load_cached([CacheEntry("abc", path, "k", ("fold0",), 0)])


def test_evaluate_predicts_a_truncated_entry_again_and_says_so(
    tmp_path: Path, data_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    image_id = "5d066f4c3eef"
    images = tmp_path / "images"
    images.mkdir()
    shutil.copy(data_dir / "train" / f"{image_id}.png", images)
    models = tmp_path / "models" / "fold0"
    models.mkdir(parents=True)
    (models / "config.yaml").write_text("stand-in: only hashed here\n")
    (models / "model_final.pth").write_bytes(b"stand-in")
    calls: list[list[str]] = []

    def fake_predict(models, paths, config, progress):
        calls.append([p.stem for p in paths])
        return {p.stem: _instances() for p in paths}

    monkeypatch.setattr("kernel_lib.evaluate._predict_group", fake_predict)
    cache = tmp_path / "cache"
    args = (data_dir / "train.csv", images, tmp_path / "models")
    first = evaluate(*args, cache_dir=cache, progress=False)
    entry = cache / f"{image_id}.npz"
    data = entry.read_bytes()
    entry.write_bytes(data[:100])
    again = evaluate(*args, cache_dir=cache, progress=False)
    assert calls == [[image_id], [image_id]]
    assert (again.cached, again.predicted) == (0, 1)
    assert any(f"cache entry {entry} was unreadable" in n and "predicted again" in n for n in again.notes)
    assert entry.read_bytes() == data  # rewritten whole
    assert again.report.to_dict() == first.report.to_dict()


# ------------------------------------------------------------------ 8. score --json NaN


def test_score_json_with_nothing_to_score_is_null(
    truth: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pred = tmp_path / "empty.csv"
    pred.write_text("id,predicted\n")
    args = ["score", "--truth", str(truth), "--pred", str(pred), "--only-predicted"]
    assert main([*args, "--json"]) == 0
    printed = json.loads(capsys.readouterr().out, parse_constant=_refuse_constants)
    assert printed["score"] is None and printed["n_images"] == 0
    assert all(v is None for v in printed["per_threshold"].values())
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "score: none, no image was scored" in out and "--only-predicted" in out and "has no id" in out
    assert "nan" not in out.lower()


def test_validate_and_write_agree_on_a_written_submission(tmp_path: Path) -> None:
    path = write_submission({"a": ["1 2", "10 3"], "b": []}, tmp_path / "s.csv")
    assert validate_submission(path) == []
