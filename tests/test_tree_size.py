"""The tracked tree fits a 64 MiB device upload with room to spare: at most 40 MiB.

It was 118.5 MiB with two sets of fold weights in float16; the shipped folds are now
stored in the compact int8 format (kernel_lib.weights) and the superseded set lives
only in git history (docs/benchmarks.md, "Compact weights"). Anything large belongs in a
Kaggle dataset or git history, not in the tree.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LIMIT = 40 * 2**20


def _tracked_files() -> list[Path]:
    if shutil.which("git") is None:
        pytest.skip("git not installed")
    done = subprocess.run(["git", "-C", str(ROOT), "ls-files", "-z"], capture_output=True, timeout=60, check=False)
    if done.returncode != 0 or not (ROOT / ".git").exists():
        pytest.skip("not a git checkout")
    return [ROOT / name for name in done.stdout.decode().split("\0") if name]


def test_tracked_tree_is_at_most_40_mib() -> None:
    files = _tracked_files()
    sizes = {path: path.stat().st_size for path in files if path.is_file() and not path.is_symlink()}
    total = sum(sizes.values())
    largest = sorted(sizes.items(), key=lambda item: -item[1])[:5]
    listing = ", ".join(f"{path.relative_to(ROOT)} {size / 2**20:.1f} MiB" for path, size in largest)
    assert total <= LIMIT, f"tracked files hold {total / 2**20:.1f} MiB > {LIMIT / 2**20:.0f} MiB; largest: {listing}"
