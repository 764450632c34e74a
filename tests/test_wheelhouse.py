"""The detectron2 repack: pinned hash, pure wheel, no stray packages."""

from __future__ import annotations

import zipfile
from pathlib import Path

import pytest

from kernel_lib.testing import load_script

ROOT = Path(__file__).resolve().parents[1]
wheelhouse = load_script(ROOT / "scripts" / "wheelhouse.py", "wheelhouse")


def test_wrong_hash_stops_with_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / wheelhouse.SOURCE_FILE).write_bytes(b"not the real wheel")
    with pytest.raises(wheelhouse.WheelError, match="expected 491af0c7") as info:
        wheelhouse.fetch_source(tmp_path)
    assert "delete it and run again" in str(info.value)


def test_repack_is_pure_and_reproducible(tmp_path: Path) -> None:
    source_dir = ROOT / "wheels" / ".cache"
    if not (source_dir / wheelhouse.SOURCE_FILE).is_file():
        pytest.skip("source wheel not cached: run scripts/setup_env.sh first")
    source = wheelhouse.fetch_source(source_dir)
    first = wheelhouse.repack(source, tmp_path / "a")
    second = wheelhouse.repack(source, tmp_path / "b")
    assert first.name == "sal_detectron2-0.7.2+pure-py3-none-any.whl"
    assert wheelhouse.sha256_of(first) == wheelhouse.sha256_of(second)
    with zipfile.ZipFile(first) as z:
        names = z.namelist()
        metadata = z.read(f"{wheelhouse.DIST_INFO}/METADATA").decode()
        wheel = z.read(f"{wheelhouse.DIST_INFO}/WHEEL").decode()
    assert not any(n.endswith(".so") for n in names)
    assert {n.split("/")[0] for n in names} == {"detectron2", wheelhouse.DIST_INFO}
    assert "detectron2/modeling/roi_heads/mask_head.py" in names
    assert "Tag: py3-none-any" in wheel and "Root-Is-Purelib: true" in wheel
    assert "numpy<2" not in metadata and "black" not in metadata
    assert wheelhouse.pure_wheel_ok(first)
