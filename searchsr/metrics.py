"""PSNR and SSIM on the Y channel, as SR papers report them.

The published numbers come from MATLAB scripts: convert RGB to BT.601 Y
(``rgb2ycbcr``, range 16-235), crop ``crop_border`` pixels from every side,
then PSNR with peak 255 and Wang et al.'s ``ssim_index`` (11x11 Gaussian,
sigma 1.5, 'valid' filtering). Y is kept in float64, unrounded, as in BasicSR.
"""

from __future__ import annotations

import numpy as np
from scipy.ndimage import correlate1d

from searchsr.errors import UsageError

_Y_WEIGHTS = np.array([65.481, 128.553, 24.966]) / 255.0
_C1 = (0.01 * 255) ** 2
_C2 = (0.03 * 255) ** 2


def rgb_to_y(img: np.ndarray) -> np.ndarray:
    """BT.601 luma in [16, 235] for RGB in [0, 255]; a 2-D image is already gray.

    Gray images are returned unchanged (as float64) because the MATLAB
    benchmark scripts score single-channel images directly.
    """
    img = np.asarray(img, dtype=np.float64)
    if img.ndim == 2:
        return img
    if img.ndim != 3 or img.shape[2] != 3:
        raise UsageError(f"expected an HxW or HxWx3 image, got shape {img.shape}")
    return 16.0 + img @ _Y_WEIGHTS


def _y_pair(sr: np.ndarray, hr: np.ndarray, crop_border: int) -> tuple[np.ndarray, np.ndarray]:
    """Y channels of both images with ``crop_border`` pixels removed per side."""
    if sr.shape != hr.shape:
        raise UsageError(f"shape mismatch: sr {sr.shape} vs hr {hr.shape}")
    if crop_border < 0:
        raise UsageError(f"crop_border must be >= 0, got {crop_border}")
    h, w = hr.shape[:2]
    if 2 * crop_border >= min(h, w):
        raise UsageError(f"crop_border={crop_border} leaves nothing of a {h}x{w} image")
    c = crop_border
    sr_y, hr_y = rgb_to_y(sr), rgb_to_y(hr)
    return sr_y[c : h - c, c : w - c], hr_y[c : h - c, c : w - c]


def psnr_y(sr: np.ndarray, hr: np.ndarray, crop_border: int) -> float:
    """PSNR (dB, peak 255) on Y; ``inf`` for identical images."""
    sr_y, hr_y = _y_pair(sr, hr, crop_border)
    mse = np.mean((sr_y - hr_y) ** 2)
    if mse == 0:
        return float("inf")
    return float(10.0 * np.log10(255.0**2 / mse))


def _gaussian_window(size: int = 11, sigma: float = 1.5) -> np.ndarray:
    """1-D normalised Gaussian; its outer product is MATLAB's fspecial window."""
    x = np.arange(size) - (size - 1) / 2
    g = np.exp(-(x**2) / (2 * sigma**2))
    return g / g.sum()


def _filter_valid(img: np.ndarray, window: np.ndarray) -> np.ndarray:
    """Separable 2-D correlation keeping only fully-covered ('valid') pixels."""
    r = len(window) // 2
    out = correlate1d(correlate1d(img, window, axis=0), window, axis=1)
    return out[r:-r, r:-r]


def ssim_y(sr: np.ndarray, hr: np.ndarray, crop_border: int) -> float:
    """Mean SSIM on Y, as MATLAB ``ssim_index`` / BasicSR ``_ssim``."""
    x, y = _y_pair(sr, hr, crop_border)
    window = _gaussian_window()
    if min(x.shape) < len(window):
        raise UsageError(f"cropped image {x.shape} is smaller than the {len(window)}px SSIM window")
    mu_x, mu_y = _filter_valid(x, window), _filter_valid(y, window)
    var_x = _filter_valid(x * x, window) - mu_x**2
    var_y = _filter_valid(y * y, window) - mu_y**2
    cov = _filter_valid(x * y, window) - mu_x * mu_y
    ssim_map = ((2 * mu_x * mu_y + _C1) * (2 * cov + _C2)) / (
        (mu_x**2 + mu_y**2 + _C1) * (var_x + var_y + _C2)
    )
    return float(ssim_map.mean())
