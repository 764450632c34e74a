"""HTML report: per cell type, per threshold, worst images drawn, all in one file."""

from __future__ import annotations

import base64
import re
from pathlib import Path

import cv2
import numpy as np
import pytest

from kernel_lib.__main__ import main
from kernel_lib.config import CELL_TYPES
from kernel_lib.evaluate import evaluate_cache
from kernel_lib.report import render_html, write_report
from kernel_lib.testing import write_synthetic_cache
from kernel_lib.truth import read_truth


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory, data_dir: Path) -> Path:
    path = tmp_path_factory.mktemp("report") / "cache"
    write_synthetic_cache(data_dir / "train.csv", path, seed=1)
    return path


def _pictures(text: str) -> list[np.ndarray]:
    return [
        cv2.imdecode(np.frombuffer(base64.b64decode(b), np.uint8), cv2.IMREAD_COLOR)
        for b in re.findall(r"data:image/png;base64,([A-Za-z0-9+/=]+)", text)
    ]


def test_report_contents(cache: Path, data_dir: Path, tmp_path: Path) -> None:
    evaluation, predictions = evaluate_cache(data_dir / "train.csv", cache, progress=False)
    truth = read_truth(data_dir / "train.csv", ids=predictions)
    text = render_html(evaluation, predictions, truth, data_dir / "train", worst=3)
    path = write_report(tmp_path / "sub" / "r.html", text)
    text = path.read_text()
    report = evaluation.report
    assert f"score {report.score:.4f}" in text
    for cell_type in CELL_TYPES:
        assert f">{cell_type}</td>" in text
        assert f"{report.per_cell_type[cell_type]:.4f}" in text
    for t, v in report.per_threshold.items():
        assert f'<td class="l">{t:.2f}</td><td class="">{v:.4f}</td>' in text
    # the three worst images, worst first, each truth | prediction side by side
    pictures = _pictures(text)
    assert [p.shape for p in pictures] == [(520, 2 * 704 + 8, 3)] * 3
    worst = report.per_image.sort_values(["score", "id"])["id"].head(3).tolist()
    captions = re.findall(r"<figcaption>(\w+) ", text)
    assert captions == worst
    # every image listed
    assert all(i in text for i in report.per_image["id"])


def test_no_overlays_and_missing_images(cache: Path, data_dir: Path, tmp_path: Path) -> None:
    evaluation, predictions = evaluate_cache(data_dir / "train.csv", cache, progress=False)
    truth = read_truth(data_dir / "train.csv", ids=predictions)
    assert _pictures(render_html(evaluation, predictions, truth, None)) == []
    assert _pictures(render_html(evaluation, predictions, truth, data_dir / "train", worst=0)) == []
    text = render_html(evaluation, predictions, truth, tmp_path, worst=2)  # a folder without the images
    assert text.count("no image in") == 2
    with pytest.raises(ValueError, match="worst"):
        render_html(evaluation, predictions, truth, None, worst=-1)


def test_report_command(cache: Path, data_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "report.html"
    args = ["report", "--truth", str(data_dir / "train.csv"), "--cache", str(cache), "--out", str(out)]
    assert main([*args, "--images", str(data_dir / "train"), "--worst", "1"]) == 0
    assert f"wrote {out}" in capsys.readouterr().out
    assert len(_pictures(out.read_text())) == 1
    assert main(["report", "--truth", str(data_dir / "train.csv"), "--cache", str(tmp_path / "none")]) == 2
