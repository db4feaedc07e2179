"""Image loading edge cases, the LR cache, and aligned patch sampling."""

import os

import numpy as np
import pytest
from PIL import Image
from scipy.ndimage import gaussian_filter

from searchsr.data import SKIMAGE_TRAIN, SKIMAGE_VAL, load_folder, load_skimage, read_image, to_tensor
from searchsr.imresize import imresize_uint8

RNG = np.random.default_rng(3)


def photo(h, w, channels=3):
    """Smooth random texture: like a photo, every misalignment shows."""
    img = gaussian_filter(RNG.random((h, w, channels)) * 255, sigma=(1.5, 1.5, 0))
    img = (img - img.min()) / (img.max() - img.min()) * 255
    img = np.round(img).astype(np.uint8)
    return img[:, :, 0] if channels == 1 else img


def test_modes_grayscale_rgba_palette(tmp_path):
    gray = photo(20, 24, 1)
    Image.fromarray(gray).save(tmp_path / "g.png")
    rgba = np.dstack([photo(20, 24), np.full((20, 24), 7, np.uint8)])
    Image.fromarray(rgba, "RGBA").save(tmp_path / "a.PNG")
    Image.fromarray(photo(20, 24)).convert("P").save(tmp_path / "p.bmp")

    assert read_image(tmp_path / "g.png").shape == (20, 24)  # gray stays 2-D for scoring
    np.testing.assert_array_equal(read_image(tmp_path / "g.png"), gray)
    np.testing.assert_array_equal(read_image(tmp_path / "a.PNG"), rgba[:, :, :3])  # alpha dropped
    assert read_image(tmp_path / "p.bmp").shape == (20, 24, 3)
    # The network always sees three channels; a gray image gets three equal ones.
    t = to_tensor(gray)
    assert t.shape == (3, 20, 24)
    assert (t[0] == t[1]).all() and (t[1] == t[2]).all()
    assert t[0, 3, 5].item() == pytest.approx(gray[3, 5] / 255)


def test_corrupt_file_names_the_file(tmp_path):
    Image.fromarray(photo(16, 16)).save(tmp_path / "good.png")
    (tmp_path / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    with pytest.raises(ValueError, match="broken.jpg"):
        load_folder(tmp_path, 4)


def test_truncated_file_names_the_file(tmp_path):
    Image.fromarray(photo(64, 64)).save(tmp_path / "cut.png")
    data = (tmp_path / "cut.png").read_bytes()
    (tmp_path / "cut.png").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="cut.png"):
        read_image(tmp_path / "cut.png")


def test_empty_or_missing_folder_names_the_folder(tmp_path):
    (tmp_path / "notes.txt").write_text("not an image")
    with pytest.raises(ValueError, match=f"{tmp_path}: no images"):
        load_folder(tmp_path, 4)
    with pytest.raises(ValueError, match="missing: not a directory"):
        load_folder(tmp_path / "missing", 4)


def test_image_smaller_than_scale_names_the_file(tmp_path):
    Image.fromarray(photo(3, 30)).save(tmp_path / "thin.png")
    with pytest.raises(ValueError, match="thin.png"):
        load_folder(tmp_path, 4)


def test_folder_pairs_are_modcropped_matlab_bicubic(tmp_path):
    hr = photo(37, 42)
    Image.fromarray(hr).save(tmp_path / "b.png")
    Image.fromarray(photo(20, 20, 1)).save(tmp_path / "a.JPEG")
    images = load_folder(tmp_path, 4)
    assert [p.name for p in images.images] == ["a.JPEG", "b.png"]  # sorted, case-insensitive suffix
    pair = images.images[1]
    np.testing.assert_array_equal(pair.hr, hr[:36, :40])
    np.testing.assert_array_equal(pair.lr, imresize_uint8(hr[:36, :40], 1 / 4))
    assert images.images[0].lr.shape == (5, 5)


def test_lr_cache_is_keyed_by_modification_time(tmp_path):
    path = tmp_path / "x.png"
    Image.fromarray(photo(32, 32)).save(path)
    first = load_folder(tmp_path, 4).images[0]
    assert load_folder(tmp_path, 4).images[0] is first  # computed once
    assert load_folder(tmp_path, 2).images[0].lr.shape == (16, 16, 3)  # per scale
    Image.fromarray(photo(32, 32)).save(path)
    os.utime(path, ns=(1, 1))  # a rewritten file must not hit the stale entry
    second = load_folder(tmp_path, 4).images[0]
    assert second is not first
    assert not np.array_equal(second.hr, first.hr)


def test_embedded_split_is_fixed_and_disjoint():
    assert set(SKIMAGE_TRAIN).isdisjoint(SKIMAGE_VAL)
    val = load_skimage("val", 4)
    assert [p.name for p in val.images] == ["chelsea.png", "coffee.png"]
    assert val.images[0].hr.shape == (300, 448, 3)
    assert val.source.startswith("skimage:val")
    with pytest.raises(ValueError, match="test"):
        load_skimage("test", 4)
