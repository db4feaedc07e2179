"""Y-channel PSNR/SSIM, checked by hand, against skimage, and on Set5/Set14."""

from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from skimage.metrics import structural_similarity

from searchsr.imresize import imresize_uint8, mod_crop
from searchsr.metrics import psnr_y, rgb_to_y, ssim_y

RNG = np.random.default_rng(1)
DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def _noisy_pair(shape):
    hr = RNG.integers(0, 256, size=shape, dtype=np.uint8)
    noise = RNG.normal(0, 12, size=shape)
    sr = np.clip(np.round(hr + noise), 0, 255).astype(np.uint8)
    return sr, hr


def test_rgb_to_y_bt601_studio_range():
    rgb = np.array([[[0, 0, 0], [255, 255, 255], [255, 0, 0], [0, 255, 0]]], dtype=np.uint8)
    np.testing.assert_allclose(rgb_to_y(rgb), [[16.0, 235.0, 81.481, 144.553]], rtol=1e-12)
    gray = np.array([[0, 17], [255, 3]], dtype=np.uint8)
    np.testing.assert_array_equal(rgb_to_y(gray), gray.astype(np.float64))


def test_psnr_identical_is_inf():
    _, hr = _noisy_pair((20, 20, 3))
    assert psnr_y(hr, hr, crop_border=2) == float("inf")


def test_psnr_by_hand():
    hr = np.full((6, 6), 100, dtype=np.uint8)
    sr = hr.copy()
    sr[2, 3] = 110  # inside the crop: MSE = 100 / 16 over the 4x4 centre
    assert psnr_y(sr, hr, crop_border=1) == pytest.approx(10 * np.log10(255**2 / 6.25), abs=1e-12)
    assert psnr_y(sr, hr, crop_border=1) == pytest.approx(40.1720, abs=1e-4)
    sr[0, 0] = 0  # outside the crop: ignored
    assert psnr_y(sr, hr, crop_border=1) == pytest.approx(40.1720, abs=1e-4)
    # RGB: +10 in green moves Y by 10 * 128.553 / 255 on one of 16 pixels.
    hr3 = np.full((6, 6, 3), 100, dtype=np.uint8)
    sr3 = hr3.copy()
    sr3[2, 3, 1] = 110
    mse = (10 * 128.553 / 255) ** 2 / 16
    assert psnr_y(sr3, hr3, crop_border=1) == pytest.approx(10 * np.log10(255**2 / mse), abs=1e-9)


def test_ssim_identical_is_one():
    _, hr = _noisy_pair((40, 50, 3))
    assert ssim_y(hr, hr, crop_border=4) == pytest.approx(1.0, abs=1e-12)


@pytest.mark.parametrize("shape, crop", [((64, 80, 3), 4), ((48, 40), 0), ((33, 57, 3), 3)])
def test_ssim_matches_skimage(shape, crop):
    # skimage filters with reflect padding but then drops (win_size - 1) / 2 = 5
    # pixels per side before averaging, which is exactly MATLAB's 'valid' map;
    # its sigma=1.5, truncate=3.5 Gaussian is the same 11x11 window. So the two
    # agree to float rounding (measured ~1e-15); tolerance 1e-10.
    sr, hr = _noisy_pair(shape)
    h, w = shape[:2]
    y_sr = rgb_to_y(sr)[crop : h - crop, crop : w - crop]
    y_hr = rgb_to_y(hr)[crop : h - crop, crop : w - crop]
    ref = structural_similarity(
        y_sr, y_hr, gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=255
    )
    assert 0.1 < ref < 0.99
    assert ssim_y(sr, hr, crop_border=crop) == pytest.approx(ref, abs=1e-10)


def test_bad_inputs_raise():
    sr, hr = _noisy_pair((20, 20, 3))
    with pytest.raises(ValueError, match=r"\(20, 19, 3\)"):
        psnr_y(sr[:, :19], hr, crop_border=0)
    with pytest.raises(ValueError, match="crop_border=10"):
        psnr_y(sr, hr, crop_border=10)
    with pytest.raises(ValueError, match="got -1"):
        ssim_y(sr, hr, crop_border=-1)
    with pytest.raises(ValueError, match="smaller than the 11px"):
        ssim_y(sr, hr, crop_border=5)


def _load(path: Path) -> np.ndarray:
    """8-bit gray stays 2-D (scored as Y directly, as the MATLAB scripts do)."""
    img = Image.open(path)
    return np.array(img if img.mode == "L" else img.convert("RGB"))


# Literature bicubic x4 values (MATLAB imresize, Y channel, crop 4).
@pytest.mark.parametrize("name, psnr, ssim", [("set5", 28.42, 0.810), ("set14", 26.00, 0.703)])
def test_bicubic_x4_baseline(name, psnr, ssim):
    folder = DATA / name
    paths = sorted(folder.glob("*.png"))
    if not paths:
        pytest.skip(f"{folder} not available")
    psnrs, ssims = [], []
    for path in paths:
        hr = mod_crop(_load(path), 4)
        sr = imresize_uint8(imresize_uint8(hr, 1 / 4), 4)
        assert sr.shape == hr.shape
        psnrs.append(psnr_y(sr, hr, crop_border=4))
        ssims.append(ssim_y(sr, hr, crop_border=4))
    assert np.mean(psnrs) == pytest.approx(psnr, abs=0.02)
    assert np.mean(ssims) == pytest.approx(ssim, abs=0.002)
