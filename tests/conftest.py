"""Shared fixtures: the shipped test data and, when present, the larger annotated pack."""

from __future__ import annotations

import os
import subprocess
import sys
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


@pytest.fixture
def bare_venv(tmp_path: Path) -> tuple[Path, Path]:
    """A fresh venv without pip at ``tmp_path/venv``: (its python, its site-packages folder)."""
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    python = venv / "bin" / "python"
    site = subprocess.run(
        [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    return python, Path(site)
