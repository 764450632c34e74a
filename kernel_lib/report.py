"""A self-contained HTML report of an evaluation (numpy + OpenCV, no torch).

One file, pictures embedded as base64 PNG: the score overall, per cell type (with the
truth-vs-predicted cell type counts), per IoU threshold, every image's score, and
overlays of the worst images, truth on the left and prediction on the right
(:func:`kernel_lib.visualize.side_by_side`).
"""

from __future__ import annotations

import base64
import html
import json
from collections.abc import Mapping
from pathlib import Path

import cv2
import numpy as np
import pandas as pd

from kernel_lib.config import CELL_TYPES
from kernel_lib.evaluate import Evaluation
from kernel_lib.images import read_image
from kernel_lib.masks import CropMasks
from kernel_lib.outputs import atomic_output
from kernel_lib.truth import Truth
from kernel_lib.visualize import side_by_side

_STYLE = """
body{font-family:system-ui,sans-serif;margin:24px;color:#222}
table{border-collapse:collapse;margin:8px 0 20px}
td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}
th{background:#f3f3f3}td.l,th.l{text-align:left}
.bar{display:inline-block;height:10px;background:#4a7bd0;vertical-align:middle}
figure{margin:0 0 24px}img{max-width:100%;border:1px solid #ccc}
.note{color:#555}
"""


def png_base64(image: np.ndarray) -> str:
    """(H, W) or (H, W, 3) BGR uint8 -> base64 PNG text."""
    ok, data = cv2.imencode(".png", image)
    if not ok:
        raise ValueError(f"could not encode a {image.shape} {image.dtype} image as PNG")
    return base64.b64encode(data.tobytes()).decode("ascii")


def _bar(value: float) -> str:
    width = round(200 * max(0.0, min(1.0, value))) if np.isfinite(value) else 0
    return f'<span class="bar" style="width:{width}px"></span>'


def _table(df: pd.DataFrame, left: tuple[str, ...] = (), raw: tuple[str, ...] = ("",)) -> str:
    """An HTML table; ``left`` columns left-aligned, ``raw`` columns inserted unescaped."""
    head = "".join(f'<th class="{"l" if c in left else ""}">{html.escape(str(c))}</th>' for c in df.columns)
    rows = []
    for record in df.itertuples(index=False):
        cells = []
        for column, value in zip(df.columns, record):
            if isinstance(value, float):
                text = f"{value:.4f}"
            else:
                text = str(value) if column in raw else html.escape(str(value))
            cells.append(f'<td class="{"l" if column in left else ""}">{text}</td>')
        rows.append("<tr>" + "".join(cells) + "</tr>")
    return f"<table><tr>{head}</tr>{''.join(rows)}</table>"


def render_html(
    evaluation: Evaluation,
    predictions: Mapping[str, CropMasks],
    truth: Mapping[str, Truth],
    images_dir: str | Path | None,
    worst: int = 6,
    title: str = "Out-of-fold evaluation",
) -> str:
    """The report as one HTML string.

    Args:
        evaluation: from :func:`kernel_lib.evaluate.evaluate` or ``evaluate_cache``.
        predictions: id -> final masks (after post-processing).
        truth: id -> annotations.
        images_dir: folder of the ``<id>.png`` images for the overlays (None: no overlays).
        worst: how many of the lowest-scoring images to draw (0: none).
        title: the page title.
    """
    if worst < 0:
        raise ValueError(f"worst: expected 0 or more images, got {worst}")
    report = evaluation.report
    per_image = report.per_image.sort_values(["score", "id"]).reset_index(drop=True)
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"]
    parts.append(f"<style>{_STYLE}</style></head><body><h1>{html.escape(title)}</h1>")
    parts.append(f"<p><b>score {report.score:.4f}</b> over {report.n_images} image(s)</p>")
    for note in evaluation.notes:
        parts.append(f'<p class="note">{html.escape(note)}</p>')
    pp = json.dumps(evaluation.config.to_dict()["postprocess"])
    parts.append(f'<p class="note">post-processing: <code>{html.escape(pp)}</code></p>')

    parts.append("<h2>Per cell type</h2>")
    rows = []
    for cell_type, score in report.per_cell_type.items():
        mine = per_image[per_image["cell_type"] == cell_type]
        counts = mine["predicted_type"].value_counts() if "predicted_type" in mine else pd.Series(dtype=int)
        row = {"cell type": cell_type, "images": len(mine), "score": float(score), "": _bar(score)}
        row.update({f"predicted {t}": int(counts.get(t, 0)) for t in CELL_TYPES})
        rows.append(row)
    parts.append(_table(pd.DataFrame(rows), left=("cell type", "")))
    parts.append(
        '<p class="note">Rows: the annotated cell type. "predicted" columns: the type the '
        "majority of predicted classes gave, which selects the per-type thresholds.</p>"
    )

    parts.append("<h2>Per IoU threshold</h2>")
    thresholds = pd.DataFrame(
        [{"IoU >": f"{t:.2f}", "precision": float(v), "": _bar(v)} for t, v in report.per_threshold.items()]
    )
    parts.append(_table(thresholds, left=("IoU >", "")))

    if worst and images_dir is not None:
        parts.append(f"<h2>Worst {min(worst, len(per_image))} image(s)</h2>")
        parts.append('<p class="note">left: truth, right: prediction (after post-processing)</p>')
        for record in per_image.head(worst).itertuples(index=False):
            image_id = str(record.id)
            path = _image_path(Path(images_dir), image_id)
            if path is None:
                parts.append(f'<p class="note">{html.escape(image_id)}: no image in {html.escape(str(images_dir))}</p>')
                continue
            picture = side_by_side(read_image(path), truth[image_id].masks, predictions[image_id])
            caption = (
                f"{image_id} ({record.cell_type}) score {record.score:.4f}: "
                f"{record.n_truth} truth, {record.n_pred} predicted"
            )
            parts.append(
                f"<figure><img alt='{html.escape(image_id)}' src='data:image/png;base64,{png_base64(picture)}'>"
                f"<figcaption>{html.escape(caption)}</figcaption></figure>"
            )

    parts.append("<h2>Every image</h2>")
    columns = [
        c for c in ("id", "cell_type", "predicted_type", "n_truth", "n_pred", "n_candidates", "score") if c in per_image
    ]
    parts.append(_table(per_image[columns], left=("id", "cell_type", "predicted_type")))
    parts.append("</body></html>")
    return "\n".join(parts)


def _image_path(folder: Path, image_id: str) -> Path | None:
    for suffix in (".png", ".tif", ".tiff", ".jpg", ".jpeg"):
        if (folder / f"{image_id}{suffix}").is_file():
            return folder / f"{image_id}{suffix}"
    return None


def write_report(path: str | Path, text: str) -> Path:
    """Write a report (:func:`render_html`'s text) to ``path``: folders created, the file
    replaced only when complete; returns the path."""
    path = Path(path)
    with atomic_output(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return path
