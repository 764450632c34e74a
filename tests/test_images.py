"""Image loading on the real test images, and clear errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from kernel_lib.images import list_images, read_image, to_model_input


def test_real_test_images(data_dir: Path) -> None:
    paths = list_images(data_dir / "test")
    assert [p.stem for p in paths] == ["7ae19de7bc2a", "d48ec7815252", "d8bfd1dafdc4"]
    grey = read_image(paths[0])
    assert grey.shape == (520, 704) and grey.dtype == np.uint8
    bgr = to_model_input(grey)
    assert bgr.shape == (520, 704, 3)
    np.testing.assert_array_equal(bgr[..., 0], grey)
    np.testing.assert_array_equal(bgr[..., 2], grey)


def test_errors_name_the_file(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="does not exist"):
        list_images(tmp_path / "missing")
    with pytest.raises(ValueError, match="holds no"):
        list_images(tmp_path)
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not a png")
    with pytest.raises(ValueError, match=r"bad\.png could not be decoded"):
        read_image(bad)
