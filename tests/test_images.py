"""Image loading on the real test images, and clear errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from kernel_lib.images import list_images, normalize_image, read_image, to_model_input, to_uint8


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


def test_per_image_normalisation_by_hand() -> None:
    # mean 100, std 10 -> (x - 100) / 10 * 32 + 128: 90 -> 96, 110 -> 160
    grey = np.array([[90, 110], [90, 110]], np.uint8)
    np.testing.assert_array_equal(normalize_image(grey, "per_image"), [[96, 160], [96, 160]])
    # beyond 4 standard deviations the result is clipped: 25 zeros and one 100 have mean
    # 100/26 and std 500/26, so 100 is 5 std out -> 128 + 160 = 288 -> 255; 0 -> 128 - 6.4 -> 122
    skewed = np.array([[0] * 25 + [100]], np.uint8)
    np.testing.assert_array_equal(normalize_image(skewed, "per_image"), [[122] * 25 + [255]])
    # a flat image has no spread to scale: every pixel goes to the target mean
    np.testing.assert_array_equal(normalize_image(np.full((2, 3), 7, np.uint8), "per_image"), np.full((2, 3), 128))
    plain = np.arange(6, dtype=np.uint8).reshape(2, 3)
    assert normalize_image(plain, "none") is plain


def test_per_image_normalisation_evens_out_real_images(data_dir: Path) -> None:
    """Standard deviations 6.8-11.4 grey levels before; after, 32 less what the clipping
    of the brightest halos and darkest rims (about 1.5% of the pixels) takes off."""
    for path in list_images(data_dir / "test"):
        grey = read_image(path)
        out = normalize_image(grey, "per_image")
        assert abs(out.mean() - 128) < 1.5 and 2 * grey.std() < out.std() <= 32
        assert np.mean((out == 0) | (out == 255)) < 0.02


def test_normalisation_errors() -> None:
    with pytest.raises(ValueError, match="expected one of none, per_image, got 'zscore'"):
        normalize_image(np.zeros((2, 2), np.uint8), "zscore")
    with pytest.raises(ValueError, match=r"expected a \(H, W\) grey image, got shape \(2, 2, 3\)"):
        normalize_image(np.zeros((2, 2, 3), np.uint8), "per_image")


def test_16_bit_pixels_map_to_the_nearest_8_bit_level_exactly() -> None:
    """Issue 21.7: every uint16 value goes to round(v / 257) (ties cannot occur: 257 is
    odd), so 257 * x gives back x; nothing depends on the rest of the image."""
    values = np.arange(65536, dtype=np.uint16)
    out = to_uint8(values)
    assert out.dtype == np.uint8
    np.testing.assert_array_equal(out, np.rint(values / 257.0).astype(np.uint8))
    levels = np.arange(256, dtype=np.uint8)
    np.testing.assert_array_equal(to_uint8(levels.astype(np.uint16) * 257), levels)
    np.testing.assert_array_equal(to_uint8(np.array([1000, 1001], np.uint16)), [4, 4])  # no stretch to 0..255
    same = np.array([[3, 250]], np.uint8)
    assert to_uint8(same) is same
    for dtype in (np.int16, np.int32, np.float32, np.float64):
        with pytest.raises(ValueError, match=rf"image x\.tif holds {np.dtype(dtype).name} pixels"):
            to_uint8(np.zeros((2, 2), dtype), "x.tif")
