"""Bad input (issue 12): outputs replaced only when complete and valid, paths checked
before any work, images of another frame or given twice refused, strict config types,
and the metric, cache and ``score --json`` on degenerate input. No model runs here."""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
import socket
import stat
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest

from kernel_lib.__main__ import main
from kernel_lib.config import CONFIG_ENV, TUNED_CONFIG, Config, PostprocessConfig, config_for_models, load_config
from kernel_lib.evaluate import (
    CacheEntry,
    evaluate,
    load_cached,
    load_instances,
    save_instances,
    write_cache_manifest,
)
from kernel_lib.folds import make_folds, read_folds, write_folds
from kernel_lib.images import list_images, read_image
from kernel_lib.metric import score_submission
from kernel_lib.outputs import atomic_output, check_output
from kernel_lib.report import write_report
from kernel_lib.soft import SoftInstances
from kernel_lib.submission import validate_submission, write_submission
from kernel_lib.tables import read_csv

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
    manifest = write_cache_manifest(
        tmp_path / "cache", [CacheEntry("a", tmp_path / "cache" / "a.npz", "k", (), 0)], Config()
    )
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
        write_cache_manifest(tmp_path / "cache", [], Config())
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


# ------------------------------------------- issue 21: nothing a user owns is lost
#
# Each command below runs in-process; `_refused` asserts the one-line error (exit 2, no
# traceback) and that every file that existed before is byte-identical afterwards.


def _snapshot(*roots: Path) -> dict[str, bytes | str]:
    """Every entry under ``roots``: a regular file's bytes, else what it is (a FIFO, a
    link and its target), so a replaced device or FIFO shows."""
    out: dict[str, bytes | str] = {}
    for root in roots:
        for path in [root, *sorted(root.rglob("*"))] if root.is_dir() else [root]:
            if path.is_symlink():
                out[str(path)] = f"link to {os.readlink(path)}"
            elif path.is_file():
                out[str(path)] = path.read_bytes()
            elif path.exists():
                out[str(path)] = oct(path.stat().st_mode)
    return out


def _refused(capsys: pytest.CaptureFixture[str], args: list[str], *must: str, code: int = 2) -> str:
    """Run ``args``: exit ``code`` (2: one ``error:`` line holding every ``must``), no traceback."""
    capsys.readouterr()
    assert main(args) == code
    captured = capsys.readouterr()
    err = captured.err
    assert "Traceback" not in err + captured.out
    if code == 2:
        errors = [line for line in err.splitlines() if line.startswith("error:")]
        assert len(errors) == 1, err
        for text in must:
            assert text in errors[0], (text, errors[0])
        return errors[0]
    return captured.out


@pytest.fixture
def push_inputs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Path]:
    """A staged bundle, a models folder of two stand-in folds, and `kaggle` replaced by a
    recorder that answers like a successful CLI (no process, no network)."""
    bundle = tmp_path / "bundle"
    (bundle / "wheels").mkdir(parents=True)
    (bundle / "wheels" / "sal_detectron2-0.7.2+pure-py3-none-any.whl").write_bytes(b"stand-in")
    (bundle / "dataset-metadata.json").write_text(
        json.dumps({"title": "Sartorius offline bundle", "id": "u/x", "licenses": [{"name": "other"}]})
    )
    models = tmp_path / "runs" / "models"
    for fold in ("fold0", "fold1"):
        (models / fold).mkdir(parents=True)
        (models / fold / "config.yaml").write_text("MODEL: {}\n")
        (models / fold / "model_final.pth").write_bytes(f"weights of {fold}".encode())
    (models / "models.json").write_text(json.dumps({"models": [{"name": "fold0"}, {"name": "fold1"}]}))
    calls: list[list[str]] = []

    def fake_kaggle(args: list[str], check: bool = True) -> tuple[int, str]:
        calls.append(list(args))
        return 0, "Kernel version 3 successfully pushed.\n" if args[:2] == ["kernels", "push"] else "ready\n"

    monkeypatch.setattr("kernel_lib.commands.kaggle_push.run_kaggle", fake_kaggle)
    return {"bundle": bundle, "models": models, "runs": tmp_path / "runs", "tmp": tmp_path, "calls": calls}  # type: ignore[dict-item]


def _push(inputs: dict[str, Path], work: Path | str, *extra: str) -> list[str]:
    return [
        "kaggle-push", "--models", str(inputs["models"]), "--bundle", str(inputs["bundle"]), "--user", "bob",
        "--work", str(work), *extra,
    ]  # fmt: skip


@pytest.mark.parametrize("dry_run", [False, True])
@pytest.mark.parametrize("which", ["models", "runs", "cwd", "own-folder", "bundle-inside"])
def test_kaggle_push_never_rewrites_a_work_folder_it_did_not_make(
    which: str,
    dry_run: bool,
    push_inputs: dict[str, Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Issue 21.1: `--work runs` emptied runs/ (the models in it) before any Kaggle command."""
    own = tmp_path / "mine"
    own.mkdir()
    (own / "notes.txt").write_text("my notes")
    monkeypatch.chdir(own)
    work = {
        "models": push_inputs["models"],
        "runs": push_inputs["runs"],
        "cwd": Path("."),
        "own-folder": own,
        "bundle-inside": push_inputs["bundle"] / "kernel",
    }[which]
    before = _snapshot(tmp_path)
    line = _refused(capsys, _push(push_inputs, work, *(["--dry-run"] if dry_run else [])), f"--work {work}")
    assert "pass a new folder" in line
    assert _snapshot(tmp_path) == before
    assert push_inputs["calls"] == []  # type: ignore[comparison-overlap]


def test_kaggle_push_marks_its_work_folder_reuses_it_and_deletes_nothing(
    push_inputs: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    work = tmp_path / "kernel"
    assert main(_push(push_inputs, work, "--dry-run")) == 0
    assert not work.exists()  # a dry run writes nothing
    assert main(_push(push_inputs, work)) == 0
    assert sorted(p.name for p in work.iterdir()) == [
        ".kaggle-push-work",
        "kernel-metadata.json",
        "sartorius-inference.ipynb",
    ]
    (work / "scratch.txt").write_text("kept")
    assert main(_push(push_inputs, work)) == 0  # its own folder: rewritten in place
    assert (work / "scratch.txt").read_text() == "kept"
    assert json.loads((work / "kernel-metadata.json").read_text())["id"] == "bob/sartorius-inference"


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--user", "bob\n"], "--user: expected your Kaggle user name"),
        (["--kernel-slug", "my-kernel\n"], "--kernel-slug: expected 6-50"),
        (["--timeout", "nan"], "--timeout > 0 seconds (finite numbers), got 60.0 and nan"),
        (["--poll", "inf"], "finite numbers"),
        (["--accelerator", ""], "--accelerator: expected a machine shape name"),
        (["--accelerator", "T4 x2"], "--accelerator: expected a machine shape name"),
    ],
)
def test_kaggle_push_bad_options_are_one_clear_error(
    extra: list[str], message: str, push_inputs: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    before = _snapshot(push_inputs["tmp"])
    extra = [*extra, "--poll", "60"] if "--poll" not in extra else extra
    _refused(capsys, _push(push_inputs, push_inputs["tmp"] / "kernel", *extra), message)
    assert _snapshot(push_inputs["tmp"]) == before and push_inputs["calls"] == []  # type: ignore[comparison-overlap]


@pytest.mark.parametrize(
    ("where", "text", "message"),
    [
        ("models", "[1, 2]", "holds a JSON list, not an object"),
        ("bundle", '"just a string"', "holds a JSON str, not an object"),
        ("models", '{"title": "A", "title": "B"}', "key 'title' appears twice"),
        ("bundle", '{"title": NaN}', "NaN is not JSON"),
        ("models", "\xff\xfe{}", "not UTF-8"),
        ("models", "[" * 100000 + "]" * 100000, "dataset-metadata.json"),
    ],
)
def test_kaggle_push_refuses_dataset_metadata_it_cannot_read(
    where: str, text: str, message: str, push_inputs: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    path = push_inputs[where] / "dataset-metadata.json"
    path.write_bytes(text.encode("latin-1"))
    before = _snapshot(push_inputs["tmp"])
    for dry in ([], ["--dry-run"]):
        _refused(capsys, _push(push_inputs, push_inputs["tmp"] / "kernel", *dry), str(path), message)
    assert _snapshot(push_inputs["tmp"]) == before and push_inputs["calls"] == []  # type: ignore[comparison-overlap]


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("notes.txt", "not a notebook", "is not a Jupyter notebook (.ipynb)"),
        ("broken.ipynb", "{not json", "is not valid JSON"),
        ("list.ipynb", "[]", "is not a Jupyter notebook (a JSON object with nbformat and cells)"),
        ("cells.ipynb", '{"nbformat": 4, "cells": [1]}', "is not a Jupyter notebook"),
        ("source.ipynb", '{"nbformat": 4, "cells": [{"source": 5}]}', "a cell's source is not text"),
        ("none.ipynb", '{"nbformat": 4, "cells": []}', "expected one code cell setting MODELS_DATASET"),
        ("folder.ipynb", None, "is a folder, not a file"),
    ],
)
def test_kaggle_push_refuses_a_notebook_that_is_not_one(
    name: str,
    content: str | None,
    message: str,
    push_inputs: dict[str, Path],
    capsys: pytest.CaptureFixture[str],
) -> None:
    notebook = push_inputs["tmp"] / name
    if content is None:
        notebook.mkdir()
    else:
        notebook.write_text(content)
    before = _snapshot(push_inputs["tmp"])
    args = _push(push_inputs, push_inputs["tmp"] / "kernel", "--notebook", str(notebook))
    _refused(capsys, args, str(notebook), message)
    assert _snapshot(push_inputs["tmp"]) == before and push_inputs["calls"] == []  # type: ignore[comparison-overlap]


@pytest.fixture
def fold_models(tmp_path: Path) -> Path:
    """A models folder of one stand-in fold (the checks below run before any model loads)."""
    models = tmp_path / "models"
    (models / "fold0").mkdir(parents=True)
    (models / "fold0" / "config.yaml").write_text("MODEL: {}\n")
    (models / "fold0" / "model_final.pth").write_bytes(b"the trained weights")
    (models / "fold0" / "meta.json").write_text('{"fold": 0}')
    (models / "models.json").write_text('{"models": [{"name": "fold0", "weight": 1.0}]}')
    return models


@pytest.mark.parametrize("target", ["fold0/model_final.pth", "fold0/config.yaml", "fold0/meta.json", "models.json"])
def test_predict_out_never_replaces_a_file_of_the_models(
    target: str, fold_models: Path, data_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Issue 21.2: `predict --out MODELS/fold0/model_final.pth` exited 0 and destroyed the fold."""
    before = _snapshot(tmp_path)
    out = fold_models / target
    args = ["predict", "--test-dir", str(data_dir / "test"), "--models", str(fold_models), "--out", str(out)]
    _refused(capsys, args, f"--out {out} is a file inside the --models folder {fold_models}")
    assert _snapshot(tmp_path) == before


def test_predict_out_may_be_a_new_file_in_an_input_folder_but_not_replace_an_image(
    fold_models: Path, data_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    test_dir = tmp_path / "test"
    shutil.copytree(data_dir / "test", test_dir)
    (test_dir / "notes.txt").write_text("mine")
    before = _snapshot(tmp_path)
    args = ["predict", "--test-dir", str(test_dir), "--models", str(fold_models), "--out", str(test_dir / "notes.txt")]
    _refused(capsys, args, "is a file inside the --test-dir folder")
    assert _snapshot(tmp_path) == before
    # a new file there passes the output check (and fails later, at the stand-in models)
    assert check_output(test_dir / "submission.csv", {"--test-dir": test_dir}) is None


@pytest.fixture
def filled_cache(tmp_path: Path, data_dir: Path) -> Path:
    cache = tmp_path / "cache"
    image_id = "5d066f4c3eef"
    save_instances(cache / f"{image_id}.npz", _instances(), "k")
    write_cache_manifest(cache, [CacheEntry(image_id, cache / f"{image_id}.npz", "k", ("fold0",), 0)], Config())
    return cache


@pytest.mark.parametrize("command", ["tune", "report"])
@pytest.mark.parametrize("target", ["5d066f4c3eef.npz", "manifest.json"])
def test_tune_and_report_out_never_replace_a_cache_file(
    command: str, target: str, filled_cache: Path, truth: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Issue 21.2: `tune --out CACHE/<id>.npz` replaced a cache entry with a config."""
    before = _snapshot(tmp_path)
    out = filled_cache / target
    args = [command, "--truth", str(truth), "--cache", str(filled_cache), "--out", str(out)]
    _refused(capsys, args, f"--out {out}")
    assert _snapshot(tmp_path) == before


def _special(tmp_path: Path, kind: str) -> Path:
    """A FIFO, a listening unix socket's file, or (root only) a character device node in tmp_path."""
    path = tmp_path / f"special-{kind}"
    if kind == "fifo":
        os.mkfifo(path)
    elif kind == "socket":
        sock = socket.socket(socket.AF_UNIX)
        sock.bind(str(path))
        sock.close()
    else:
        try:
            os.mknod(path, 0o666 | stat.S_IFCHR, os.makedev(1, 3))  # what /dev/null is
        except (PermissionError, OSError) as err:
            pytest.skip(f"cannot make a device node here ({err})")
    return path


@pytest.mark.parametrize("kind", ["fifo", "socket", "device"])
@pytest.mark.parametrize("command", ["folds", "predict", "tune"])
def test_an_output_that_is_a_device_fifo_or_socket_is_refused(
    kind: str,
    command: str,
    truth: Path,
    fold_models: Path,
    data_dir: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Issue 21.3: such an --out was replaced by a regular file (as root, /dev/null itself)."""
    out = _special(tmp_path, kind)
    before = _snapshot(tmp_path)
    args = {
        "folds": ["folds", "--truth", str(truth)],
        "predict": ["predict", "--test-dir", str(data_dir / "test"), "--models", str(fold_models)],
        "tune": ["tune", "--truth", str(truth), "--cache", str(tmp_path / "cache")],
    }[command]
    words = {"fifo": "a FIFO (named pipe)", "socket": "a socket", "device": "a character device"}[kind]
    _refused(capsys, [*args, "--out", str(out)], f"--out {out} is {words}, not a regular file")
    assert _snapshot(tmp_path) == before


@pytest.mark.parametrize("device", ["/dev/null", "/dev/full"])
def test_system_devices_are_refused_as_outputs_without_touching_them(device: str) -> None:
    """Checked through check_output alone: as root, the old code replaced the device."""
    if not Path(device).exists():
        pytest.skip(f"{device} absent")
    with pytest.raises(ValueError, match=f"--out {device} is a character device, not a regular file"):
        check_output(device)
    with pytest.raises(ValueError, match="is a character device"), atomic_output(device) as tmp:
        tmp.write_text("never")
    assert stat.S_ISCHR(os.stat(device).st_mode)


def test_an_out_ending_with_a_slash_is_refused_not_written_as_a_file(
    truth: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Issue 21.8: `--out newdir/` wrote a file named newdir. A trailing slash means a
    folder; the file to write in it is not guessed: refused, nothing made."""
    for given in (f"{tmp_path}/newdir/", f"{tmp_path}/newdir/.", f"{tmp_path}/x/.."):
        _refused(capsys, ["folds", "--truth", str(truth), "--out", given], f"--out {given} names a folder")
    assert _only_file(tmp_path) == ["train.csv"]


def test_predict_refuses_a_sample_without_ids_and_keeps_the_submission(
    fold_models: Path, data_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Issue 21.8: a header-only --sample wrote a 0-row submission over the previous one."""
    sample = tmp_path / "sample.csv"
    sample.write_text("id,predicted\n")
    out = tmp_path / "submission.csv"
    out.write_text(GOOD)
    before = _snapshot(tmp_path)
    args = ["predict", "--test-dir", str(data_dir / "test"), "--models", str(fold_models), "--out", str(out)]
    _refused(capsys, [*args, "--sample", str(sample)], f"--sample {sample} lists no id")
    assert _snapshot(tmp_path) == before
    with pytest.raises(ValueError, match=r"not written \(the previous file is untouched\): no image id"):
        write_submission({}, out, ids=[])
    assert out.read_text() == GOOD


@pytest.mark.parametrize("link", ["dangling", "loop", "folder"])
def test_predict_names_an_image_that_is_a_broken_link(
    link: str, fold_models: Path, data_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Issue 21.8: a dangling or looping .png link was skipped without a word (its id missing)."""
    test_dir = tmp_path / "test"
    shutil.copytree(data_dir / "test", test_dir)
    bad = test_dir / "0000aaaa.png"
    if link == "dangling":
        bad.symlink_to(tmp_path / "gone.png")
    elif link == "loop":
        bad.symlink_to(bad)
    else:
        bad.mkdir()
    words = {"dangling": "a symbolic link to nothing", "loop": "a symbolic link loop", "folder": "a folder"}[link]
    out = tmp_path / "s.csv"
    args = ["predict", "--test-dir", str(test_dir), "--models", str(fold_models), "--out", str(out)]
    _refused(capsys, args, f"0000aaaa.png ({words})", "fix or remove them")
    assert not out.exists()


def test_tune_refuses_a_cache_without_images(truth: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Issue 21.8: tune on a manifest of no image wrote a config."""
    cache = tmp_path / "cache"
    write_cache_manifest(cache, [], Config())
    out = tmp_path / "best.json"
    _refused(capsys, ["tune", "--truth", str(truth), "--cache", str(cache), "--out", str(out)], "lists no image")
    assert not out.exists()


def test_report_refuses_an_images_folder_that_is_not_one(
    truth: Path, filled_cache: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Issue 21.8: `report --images MISSING` exited 0 with no overlays."""
    out = tmp_path / "report.html"
    args = ["report", "--truth", str(truth), "--cache", str(filled_cache), "--out", str(out)]
    _refused(capsys, [*args, "--images", str(tmp_path / "nowhere")], "--images", "nowhere does not exist")
    _refused(capsys, [*args, "--images", str(truth)], "is a file, not a folder")
    assert not out.exists()


@pytest.mark.parametrize(
    ("text", "what"),
    [
        ("id,predicted\na,9223372036854775000 9000\n", "a: bad RLE: number 9223372036854775000 beyond the 520x704"),
        ("id,predicted\na,1 2,extra\nb,\n", "a: 3 field(s), expected 2"),
        ("id,predicted\na,1 2,3 4\nb,\n", "a: 3 field(s), expected 2"),
        ('id,predicted\n"a\nb",1 2\n', "'a\\nb': id with a comma, a quote or a line break"),
    ],
)
def test_validate_finds_what_it_called_valid(
    text: str, what: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Issue 21.6: each of these was "valid" (a run past int64, pandas making the first
    column the index, an id with a newline)."""
    path = tmp_path / "s.csv"
    path.write_text(text)
    out = _refused(capsys, ["validate", str(path)], code=1)
    assert what in out


@pytest.mark.parametrize("kind", ["folder", "fifo", "device", "zero"])
def test_a_csv_input_that_is_not_a_file_is_named_for_what_it_is(
    kind: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Issue 21.11: a folder, a FIFO or /dev/zero as a CSV was said not to exist (a FIFO
    would block the read)."""
    if kind == "zero":
        path, words = Path("/dev/zero"), "a character device"
    elif kind == "folder":
        path, words = tmp_path, "a folder"
    else:
        path = _special(tmp_path, kind)
        words = {"fifo": "a FIFO (named pipe)", "device": "a character device"}[kind]
    _refused(capsys, ["validate", str(path)], f"{path} is {words}, not a CSV file")
    _refused(capsys, ["score", "--truth", str(path), "--pred", str(path)], f"{path} is {words}")
    _refused(capsys, ["folds", "--truth", str(path), "--out", str(tmp_path / "f.csv")], f"--truth {path} is {words}")


# ------------------------------------------- issue 21, items 5, 7, 9-11: images, configs, CSVs, folds


def _deny(path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Make ``path`` unreadable: ``chmod 000``, and where that does not stop this user
    (root reads anything) the read itself fails as it would (``Path.read_bytes`` and
    ``Path.iterdir`` on that path raise PermissionError)."""
    path.chmod(0)
    if not os.access(path, os.R_OK):
        return
    denied = PermissionError(errno.EACCES, "Permission denied", str(path))
    read_bytes, iterdir = Path.read_bytes, Path.iterdir

    def no_read(self: Path) -> bytes:
        if self == path:
            raise denied
        return read_bytes(self)

    def no_list(self: Path) -> Iterator[Path]:
        if self == path:
            raise denied
        return iterdir(self)

    monkeypatch.setattr(Path, "read_bytes", no_read)
    monkeypatch.setattr(Path, "iterdir", no_list)


def test_a_16_bit_copy_of_an_image_reads_as_the_image(data_dir: Path, tmp_path: Path) -> None:
    """Issue 21.7: the 16-bit copy (x257) of a test image gave another submission (380
    vs 367 instances): each image was min-max stretched. Now scaled by the bit depth."""
    for source in sorted((data_dir / "test").glob("*.png")):
        eight = read_image(source)
        assert (eight.min(), eight.max()) != (0, 255)  # a stretch would change it
        copy = tmp_path / "16" / source.name
        copy.parent.mkdir(exist_ok=True)
        cv2.imwrite(str(copy), eight.astype(np.uint16) * 257)
        assert cv2.imread(str(copy), cv2.IMREAD_UNCHANGED).dtype == np.uint16
        np.testing.assert_array_equal(read_image(copy), eight)
        colour = tmp_path / "16c" / source.name  # a 16-bit BGR copy: scaled first, then made grey
        colour.parent.mkdir(exist_ok=True)
        cv2.imwrite(str(colour), np.repeat(eight[:, :, None], 3, axis=2).astype(np.uint16) * 257)
        np.testing.assert_array_equal(read_image(colour), eight)
    assert [p.stem for p in list_images(tmp_path / "16")] == [p.stem for p in list_images(data_dir / "test")]


def test_images_of_signed_or_float_pixels_are_refused(tmp_path: Path) -> None:
    """No scale is known for them (they were min-max stretched, each its own way)."""
    path = tmp_path / "f.tiff"
    cv2.imwrite(str(path), np.full((520, 704), 0.5, np.float32))
    with pytest.raises(ValueError, match=r"image .*f\.tiff holds float32 pixels; only 8-bit and 16-bit unsigned"):
        read_image(path)


@pytest.mark.parametrize("kind", ["dangling", "loop", "folder", "fifo"])
def test_list_images_names_an_image_name_that_is_not_an_image_file(
    kind: str, truth: Path, fold_models: Path, data_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Item 8 of issue 21 in the library: such an entry was skipped without a word by
    ``list_images`` (evaluate, pseudo and training lost its id); predict checked itself."""
    images = tmp_path / "images"
    images.mkdir()
    for name in ("e9edcd9483e4.png", "b50a98297c83.png"):
        (images / name).symlink_to(data_dir / "train" / name)
    bad = images / "0000aaaa.png"
    if kind == "dangling":
        bad.symlink_to(tmp_path / "gone.png")
    elif kind == "loop":
        bad.symlink_to(bad)
    elif kind == "folder":
        bad.mkdir()
    else:
        os.mkfifo(bad)
    words = {
        "dangling": "a symbolic link to nothing",
        "loop": "a symbolic link loop",
        "folder": "a folder",
        "fifo": "a FIFO (named pipe)",
    }[kind]
    with pytest.raises(ValueError, match=rf"0000aaaa\.png \({re.escape(words)}\).*their ids would be left out"):
        list_images(images)
    before = _snapshot(tmp_path)
    args = ["evaluate", "--truth", str(truth), "--images", str(images), "--models", str(fold_models), "--no-cache"]
    _refused(capsys, args, f"image folder {images}", f"0000aaaa.png ({words})")
    assert _snapshot(tmp_path) == before


@pytest.mark.parametrize("content", [b"", b"\x89PNG\r\n\x1a\n", b"not a png at all"])
def test_an_empty_or_headerless_png_is_refused_before_the_models_load(
    content: bytes, fold_models: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Issue 21.9/21.11: a zero-byte or headerless PNG was found only when read, after the
    models loaded, and called "not a valid PNG"; now list_images decodes a file whose
    header it cannot read, and says what the file is."""
    test_dir = tmp_path / "test"
    _png(test_dir / "good.png")
    (test_dir / "bad.png").write_bytes(content)
    what = "is empty (0 bytes)" if not content else f"could not be decoded as an image (a .png file of {len(content)}"
    with pytest.raises(ValueError, match=re.escape(f"{test_dir / 'bad.png'} {what}")):
        list_images(test_dir)
    out = tmp_path / "s.csv"
    args = ["predict", "--test-dir", str(test_dir), "--models", str(fold_models), "--out", str(out)]
    line = _refused(capsys, args, f"image {test_dir / 'bad.png'} {what}")
    assert "valid PNG" not in line and not out.exists()


def test_an_unreadable_image_says_so_not_that_it_is_invalid(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Issue 21.11: an image without read permission was called "not a valid PNG"."""
    path = _png(tmp_path / "a.png")
    _deny(path, monkeypatch)
    with pytest.raises(ValueError, match=r"a\.png: cannot read it \(Permission denied\); make it readable"):
        read_image(path)
    tif = tmp_path / "b.tif"
    tif.write_bytes(b"II*\x00 not really a TIFF")
    with pytest.raises(ValueError, match=r"b\.tif could not be decoded as an image \(a \.tif file of 22 bytes"):
        read_image(tif)


def test_an_unreadable_image_folder_is_one_error(
    fold_models: Path, truth: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Issue 21.10: an unreadable test folder ended in a PermissionError traceback."""
    images = tmp_path / "images"
    _png(images / "a.png")
    _deny(images, monkeypatch)
    with pytest.raises(ValueError, match=r"image folder .*images: cannot list it \(Permission denied\)"):
        list_images(images)
    args = ["evaluate", "--truth", str(truth), "--images", str(images), "--models", str(fold_models), "--no-cache"]
    _refused(capsys, args, f"image folder {images}: cannot list it (Permission denied)")
    images.chmod(0o755)


def _config_args(kind: str, config: Path, fold_models: Path, data_dir: Path, tmp_path: Path) -> list[str]:
    if kind == "predict":
        return ["predict", "--test-dir", str(data_dir / "test"), "--models", str(fold_models),
                "--out", str(tmp_path / "s.csv"), "--config", str(config)]  # fmt: skip
    return ["tune", "--truth", str(data_dir / "train.csv"), "--cache", str(tmp_path / "cache"),
            "--out", str(tmp_path / "best.json"), "--config", str(config)]  # fmt: skip


@pytest.mark.parametrize("command", ["predict", "tune"])
@pytest.mark.parametrize(
    ("text", "says"),
    [
        ('{"ensemble": {"scales": []}}', "ensemble.scales: expected at least one scale"),
        ('{"ensemble": {"tta": ["identity", "hflip", "identity"]}}', "ensemble.tta: 'identity' is listed more"),
        ('{"ensemble": {"scales": [1.0, 0.75, 1]}}', "ensemble.scales: 1 is listed more than once"),
        ('{"ensemble": {"method": "wmf"}, "ensemble": {"method": "vote"}}', "key 'ensemble' appears twice"),
        ('{"postprocess": {"mask_threshold": 0.4, "mask_threshold": 0.6}}', "key 'mask_threshold' appears twice"),
        (b'{"ensemble": {"method": "wmf"}, "note": "caf\xe9"}', "is not UTF-8 text (byte 44)"),
        ("[" * 100_000, "JSON nested too deeply"),
        ('{"postprocess": {"mask_threshold": ' + "[" * 900 + "]" * 900 + "}}", "postprocess.mask_threshold: expected"),
    ],
    ids=["no-scale", "tta-twice", "scale-twice", "section-twice", "key-twice", "latin-1", "deep", "deep-value"],
)
def test_a_config_that_would_fail_late_or_with_a_traceback_is_refused_when_read(
    command: str,
    text: str | bytes,
    says: str,
    fold_models: Path,
    data_dir: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Issue 21.9/21.10 (config parts) and 21.8's duplicated keys: `"scales": []` was an
    IndexError after the models loaded, a duplicated view an error naming no file, a key
    given twice taken silently (the last won), a Latin-1 config a UnicodeDecodeError and
    deep nesting a RecursionError; each is now one line naming the file (and the field)."""
    config = tmp_path / "c.json"
    config.write_bytes(text if isinstance(text, bytes) else text.encode())
    with pytest.raises(ValueError) as caught:
        load_config(config)
    assert str(config) in str(caught.value) and says in str(caught.value) and len(str(caught.value)) < 400
    before = _snapshot(tmp_path)
    _refused(capsys, _config_args(command, config, fold_models, data_dir, tmp_path), str(config), says)
    assert _snapshot(tmp_path) == before


def test_an_unreadable_config_is_one_error(
    fold_models: Path,
    data_dir: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Issue 21.10: a --config without read permission ended in a PermissionError traceback."""
    config = tmp_path / "c.json"
    Config().to_json(config)
    _deny(config, monkeypatch)
    says = f"config file {config}: cannot read it (Permission denied); fix it or omit --config"
    for command in ("predict", "tune"):
        _refused(capsys, _config_args(command, config, fold_models, data_dir, tmp_path), says)


@pytest.mark.parametrize("kind", ["fifo", "folder", "device", "dangling"])
def test_a_config_named_by_the_environment_or_beside_the_models_is_named_for_what_it_is(
    kind: str, fold_models: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Issue 21 (config_for_models): a FIFO, folder or device named by KERNEL_LIB_CONFIG
    was said not to exist; a FIFO or broken link as best_config.json beside the models was
    passed over silently (the defaults used instead of the tuned config). None is opened."""
    if kind == "folder":
        path, words = tmp_path / "cfg", "a folder"
        path.mkdir()
    elif kind == "dangling":
        path, words = tmp_path / "cfg", "a symbolic link to nothing"
        path.symlink_to(tmp_path / "gone.json")
    else:
        path = _special(tmp_path, kind)
        words = {"fifo": "a FIFO (named pipe)", "device": "a character device"}[kind]
    monkeypatch.setenv(CONFIG_ENV, str(path))
    with pytest.raises(ValueError, match=re.escape(f"{path} (named by {CONFIG_ENV}) is {words}, not a file")):
        config_for_models(fold_models)
    monkeypatch.delenv(CONFIG_ENV)
    if kind == "folder":  # a folder named best_config.json is no config: the defaults
        return
    beside = fold_models / TUNED_CONFIG
    if kind == "dangling":
        beside.symlink_to(path)
    else:
        os.rename(path, beside)
    with pytest.raises(ValueError, match=re.escape(f"{beside} (beside the models) is {words}, not a file")):
        config_for_models(fold_models)


@pytest.mark.parametrize("kind", ["folder", "fifo", "zero"])
def test_read_csv_names_what_is_not_a_file_without_opening_it(kind: str, tmp_path: Path) -> None:
    """Issue 21.11 in the library: tables.read_csv (make_folds(path), read_folds,
    evaluate.read_truth) called a folder, a FIFO or /dev/zero "does not exist"; the commands
    checked first, library callers did not."""
    if kind == "zero":
        path, words = Path("/dev/zero"), "a character device"
    elif kind == "folder":
        path, words = tmp_path, "a folder"
    else:
        path, words = _special(tmp_path, "fifo"), "a FIFO (named pipe)"
    with pytest.raises(ValueError, match=re.escape(f"train csv {path} is {words}, not a CSV file")):
        make_folds(path)
    with pytest.raises(ValueError, match=re.escape(f"folds file {path} is {words}, not a CSV file")):
        read_folds(path)
    with pytest.raises(ValueError, match=re.escape(f"{path} is {words}, not a CSV file; fix")):
        read_csv(path, "fix")


@pytest.mark.parametrize(
    ("option", "value", "says"),
    [("--seed", "-1", "--seed: expected a whole number >= 0, got -1"), ("--n-folds", "1", "--n-folds: expected at")],
)
def test_folds_options_out_of_range_are_one_error(
    option: str, value: str, says: str, truth: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Issue 21.10: `folds --seed -1` ended in numpy's ValueError, shown as a bug."""
    out = tmp_path / "folds.csv"
    _refused(capsys, ["folds", "--truth", str(truth), "--out", str(out), option, value], says)
    assert not out.exists()


def test_predict_batch_size_0_is_reported_under_its_option(
    fold_models: Path, data_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Issue 21.11: `--batch-size 0` was reported as `batch_size` (the config field)."""
    args = ["predict", "--test-dir", str(data_dir / "test"), "--models", str(fold_models),
            "--out", str(tmp_path / "s.csv"), "--batch-size", "0"]  # fmt: skip
    _refused(capsys, args, "--batch-size: expected a value in [1, 64], got 0")
