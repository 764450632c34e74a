"""The ``score`` and ``validate`` commands, run in-process through ``kernel_lib.__main__``."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from kernel_lib.__main__ import main


def self_submission(data_dir: Path, tmp_path: Path, every: int = 1) -> Path:
    truth = pd.read_csv(data_dir / "train.csv")
    sub = truth.rename(columns={"annotation": "predicted"})[["id", "predicted"]].iloc[::every]
    path = tmp_path / "sub.csv"
    sub.to_csv(path, index=False)
    return path


def test_score_table(data_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    sub = self_submission(data_dir, tmp_path)
    assert main(["score", "--truth", str(data_dir / "train.csv"), "--pred", str(sub)]) == 0
    out = capsys.readouterr().out
    assert out.startswith("score 1.0000 over 7 image(s)")
    for cell_type in ("shsy5y", "astro", "cort"):
        assert cell_type in out
    assert "0.50   1.0000" in out and "0.95   1.0000" in out


def test_score_json(data_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    truth = pd.read_csv(data_dir / "train.csv")
    sub = self_submission(data_dir, tmp_path, every=2)
    assert main(["score", "--truth", str(data_dir / "train.csv"), "--pred", str(sub), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert isinstance(result["score"], float) and isinstance(result["n_images"], int)
    assert result["n_images"] == 7
    assert set(result["per_cell_type"]) == set(truth["cell_type"])
    assert 0.3 < result["score"] < 0.7  # about every other cell found
    assert set(result["per_threshold"]) == {f"{0.5 + 0.05 * i:.2f}" for i in range(10)}


def test_score_only_predicted(data_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    truth = pd.read_csv(data_dir / "train.csv")
    one = truth[truth["id"] == "ea362f1a9844"].rename(columns={"annotation": "predicted"})[["id", "predicted"]]
    sub = tmp_path / "one.csv"
    one.to_csv(sub, index=False)
    args = ["score", "--truth", str(data_dir / "train.csv"), "--pred", str(sub), "--json"]
    assert main(args) == 0
    assert json.loads(capsys.readouterr().out)["score"] == pytest.approx(1 / 7)  # 6 images without prediction
    assert main([*args, "--only-predicted"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["score"] == 1.0 and result["n_images"] == 1


def test_score_unknown_ids_and_bad_files(data_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    truth = str(data_dir / "train.csv")
    sample = str(data_dir / "sample_submission.csv")
    assert main(["score", "--truth", truth, "--pred", sample]) == 2
    assert "3 id(s) not in" in capsys.readouterr().err
    assert main(["score", "--truth", sample, "--pred", sample]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "sample_submission.csv: missing column(s) ['annotation']" in err
    png = str(data_dir / "test" / "7ae19de7bc2a.png")
    assert main(["score", "--truth", truth, "--pred", png]) == 2
    err = capsys.readouterr().err
    assert "not a readable CSV" in err and "Traceback" not in err
    bad = tmp_path / "bad.csv"
    bad.write_text("id,predicted\n0f08d640930b,1 2 3\n")
    assert main(["score", "--truth", truth, "--pred", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "image 0f08d640930b, data row 1: odd number" in err
    assert main(["score", "--truth", truth, "--pred", str(bad), "--width", "500"]) == 2
    assert "width 704 for id" in capsys.readouterr().err


def test_validate_valid_and_invalid(data_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    sample = str(data_dir / "sample_submission.csv")
    assert main(["validate", sample, "--sample", sample]) == 0
    assert "valid" in capsys.readouterr().out
    sub = tmp_path / "sub.csv"
    sub.write_text("id,predicted\n7ae19de7bc2a,1 10\n7ae19de7bc2a,5 3\nd48ec7815252,9 4 1 1\nzzz,\n")
    assert main(["validate", str(sub), "--sample", sample, "--height", "4", "--width", "5"]) == 1
    lines = capsys.readouterr().out.splitlines()
    assert lines == [
        "7ae19de7bc2a: masks overlap on 3 pixel(s), first at (y=0, x=4) (rows 1 and 2)",
        "d48ec7815252: bad RLE: run 2: start 1 not after the previous start 9 (unsorted) (row 3)",
        "d8bfd1dafdc4: id of the sample submission missing (sample " + sample + ")",
        "zzz: id not in the sample submission (row 4)",
    ]


def test_validate_bad_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "x.csv"
    bad.write_text("image,rle\na,1 1\n")
    assert main(["validate", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "missing column(s) ['id', 'predicted']" in err and "header 'id,predicted'" in err


def test_a_value_error_from_outside_kernel_lib_is_a_bug_not_bad_input(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The library's own ValueError is the user's one-line error (exit 2); one that numpy
    raises from a call the library failed to check shows its traceback (exit 1)."""
    import numpy as np

    import kernel_lib.commands.validate as validate

    def broken(args: object) -> int:
        np.reshape(np.zeros(3), (2, 2))  # raises inside numpy
        return 0

    monkeypatch.setattr(validate, "run", broken)
    assert main(["validate", str(tmp_path / "any.csv")]) == 1
    err = capsys.readouterr().err
    assert "Traceback" in err and "a bug, not bad input: ValueError from" in err and "numpy" in err

    monkeypatch.undo()
    assert main(["validate", str(tmp_path / "missing.csv")]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.startswith("error: ") and "missing.csv" in err


def test_every_command_module_imports() -> None:
    """A command whose module fails to import stops the command line (no silent drop):
    each command's parser is built from its module and parses its required options."""
    from kernel_lib.__main__ import COMMANDS, build_parser

    required = {
        "score": ["--truth", "t.csv", "--pred", "s.csv"],
        "validate": ["s.csv"],
        "predict": ["--test-dir", "T", "--models", "M"],
        "evaluate": ["--truth", "t.csv", "--images", "I", "--models", "M"],
        "tune": ["--truth", "t.csv"],
        "folds": ["--truth", "t.csv", "--out", "f.csv"],
        "report": ["--truth", "t.csv"],
        "train": ["--data", "D", "--folds", "f.csv", "--fold", "0", "--out", "M"],
        "pseudo": ["--images", "I", "--models", "M"],
        "kaggle-push": ["--models", "M", "--user", "u"],
    }
    assert set(required) == set(COMMANDS)
    for name in COMMANDS:
        args = build_parser(only=name).parse_args([name, *required[name]])
        assert callable(args._run), name


LIBRARY_NOISE = (
    "`torch.jit.script` is deprecated",
    "torch.meshgrid: in an upcoming release",
    "pkg_resources is deprecated",
    "is_fx_tracing will return true",
)


def test_library_warnings_the_user_cannot_act_on_are_silenced() -> None:
    """Issue 21.11: every error after model loading came after ~6 lines of torch,
    detectron2 and fvcore warnings about their own code. The same imports and calls
    model loading makes, in a fresh process: silent after quiet_library_warnings, while
    any other warning still shows."""
    import subprocess
    import sys

    script = (
        "import sys, warnings\n"
        "if sys.argv[1] == 'quiet':\n"
        "    from kernel_lib.__main__ import quiet_library_warnings\n"
        "    quiet_library_warnings()\n"
        "import detectron2.model_zoo, detectron2.modeling, torch, torch.fx._symbolic_trace as fx\n"
        "torch.meshgrid(torch.arange(2), torch.arange(2))\n"
        "fx.is_fx_tracing()\n"
        "warnings.warn('a warning of ours', UserWarning)\n"
    )
    runs = {}
    for mode in ("loud", "quiet"):
        done = subprocess.run([sys.executable, "-c", script, mode], capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr
        runs[mode] = done.stderr
    heard = [text for text in LIBRARY_NOISE if text in runs["loud"]]
    if not heard:
        pytest.skip("these library versions print none of the warnings")
    assert [text for text in LIBRARY_NOISE if text in runs["quiet"]] == [], runs["quiet"]
    assert "a warning of ours" in runs["quiet"]


def test_main_silences_library_warnings_and_names_a_permission_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """main() silences them before any command runs; a PermissionError from anywhere
    (a file the user may not read or write) is one error line, exit 2, no traceback."""
    import errno
    import warnings

    import kernel_lib.commands.validate as validate

    def denied(args: object) -> int:
        warnings.warn(
            "`torch.jit.script` is deprecated. Please switch to `torch.compile`.", FutureWarning, stacklevel=2
        )
        warnings.warn("a warning of ours", UserWarning, stacklevel=2)
        raise PermissionError(errno.EACCES, "Permission denied", str(tmp_path / "s.csv"))

    monkeypatch.setattr(validate, "run", denied)
    with warnings.catch_warnings(record=True) as shown:
        warnings.simplefilter("always")
        assert main(["validate", str(tmp_path / "s.csv")]) == 2
    assert [str(w.message) for w in shown] == ["a warning of ours"]
    err = capsys.readouterr().err
    assert err.splitlines() == [
        f"error: permission denied on {tmp_path / 's.csv'} (Permission denied); make it readable (or writable, "
        "for an output) or pass another path"
    ]
