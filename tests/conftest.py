"""Shared fixtures: the shipped test data and, when present, the larger annotated pack."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "tests" / "data"


def mini_pack_dir() -> Path | None:
    """The larger annotated pack: $SARTORIUS_DATA, else ../shared/data/sartorius-mini."""
    env = os.environ.get("SARTORIUS_DATA")
    path = Path(env) if env else ROOT.parent / "shared" / "data" / "sartorius-mini"
    return path if (path / "train.csv").is_file() else None


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """tests/data: 3 test images, sample_submission.csv, 7 annotated images + train.csv."""
    return DATA


@pytest.fixture(scope="session")
def mini_dir() -> Path:
    """The 95-image annotated pack; skips the test when it is absent."""
    path = mini_pack_dir()
    if path is None:
        pytest.skip(
            "larger annotated pack not found: set SARTORIUS_DATA to a competition-like folder (train.csv, train/)"
        )
    return path
