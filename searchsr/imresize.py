"""MATLAB-compatible bicubic ``imresize`` in numpy.

SR papers build their low-resolution inputs with MATLAB's ``imresize`` and
report PSNR against them, so reproducing published numbers needs MATLAB's exact
algorithm: the a = -0.5 cubic kernel, stretched by ``1/scale`` when shrinking
(antialiasing), MATLAB's pixel-centre mapping, symmetric (edge-repeating)
borders, and resizing the dimension with the smaller scale first.

Each dimension is resized by a sparse matrix (one row of normalised weights per
output pixel) so a whole image is two sparse-dense products.
"""

from __future__ import annotations

import math

import numpy as np
import scipy.sparse

from searchsr.errors import UsageError


def cubic(x: np.ndarray, a: float = -0.5) -> np.ndarray:
    """Keys' cubic convolution kernel; MATLAB's bicubic uses a = -0.5."""
    ax = np.abs(np.asarray(x, dtype=np.float64))
    ax2, ax3 = ax * ax, ax * ax * ax
    near = (a + 2) * ax3 - (a + 3) * ax2 + 1
    far = a * ax3 - 5 * a * ax2 + 8 * a * ax - 4 * a
    return np.where(ax <= 1, near, np.where(ax <= 2, far, 0.0))


def _resize_matrix(in_len: int, out_len: int, scale: float) -> scipy.sparse.csr_matrix:
    """Weights mapping ``in_len`` samples to ``out_len`` along one dimension.

    A line-by-line port of MATLAB's ``contributions``: everything is 1-based
    until the final index conversion so it can be checked against the original.
    """
    kernel_width = 4.0
    if scale < 1:  # antialias: stretch the kernel to the output sampling rate
        kernel_width /= scale

        def kernel(x: np.ndarray) -> np.ndarray:
            return scale * cubic(scale * x)
    else:
        kernel = cubic

    x = np.arange(1, out_len + 1, dtype=np.float64)
    u = x / scale + 0.5 * (1 - 1 / scale)  # output pixel centre in input coordinates
    left = np.floor(u - kernel_width / 2)
    taps = math.ceil(kernel_width) + 2
    indices = left[:, None] + np.arange(taps)[None, :]
    weights = kernel(u[:, None] - indices)
    weights /= weights.sum(axis=1, keepdims=True)

    # Symmetric border: 0 -> 1, -1 -> 2, in_len + 1 -> in_len, ... (1-based).
    mirror = np.concatenate([np.arange(in_len), np.arange(in_len)[::-1]])
    indices = mirror[np.mod(indices.astype(np.int64) - 1, 2 * in_len)]

    keep = np.any(weights != 0, axis=0)  # MATLAB drops all-zero weight columns
    weights, indices = weights[:, keep], indices[:, keep]
    rows = np.repeat(np.arange(out_len), weights.shape[1])
    # Duplicate (row, col) pairs from mirroring are summed by the constructor.
    return scipy.sparse.csr_matrix(
        (weights.ravel(), (rows, indices.ravel())), shape=(out_len, in_len)
    )


def _resize_along(img: np.ndarray, axis: int, matrix: scipy.sparse.csr_matrix) -> np.ndarray:
    moved = np.moveaxis(img, axis, 0)
    flat = moved.reshape(moved.shape[0], -1)
    out = np.asarray(matrix @ flat).reshape((matrix.shape[0],) + moved.shape[1:])
    return np.moveaxis(out, 0, axis)


def imresize(
    img: np.ndarray,
    scale: float | None = None,
    output_shape: tuple[int, int] | None = None,
) -> np.ndarray:
    """Bicubic resize of an HxW or HxWxC array, matching MATLAB's ``imresize``.

    Give either ``scale`` (output size ``ceil(scale * size)``, the same factor
    for both dimensions) or ``output_shape`` (per-dimension factor
    ``out / in``). Works in float64 without clipping, so the caller decides how
    to quantise.
    """
    if (scale is None) == (output_shape is None):
        raise UsageError("give exactly one of scale or output_shape")
    if img.ndim not in (2, 3):
        raise UsageError(f"expected an HxW or HxWxC array, got shape {img.shape}")
    in_shape = img.shape[:2]
    if scale is not None:
        if scale <= 0:
            raise UsageError(f"scale must be positive, got {scale}")
        scales = (float(scale), float(scale))
        out_shape = tuple(math.ceil(scale * n) for n in in_shape)
    else:
        out_shape = tuple(int(n) for n in output_shape)
        if len(out_shape) != 2 or min(out_shape) < 1:
            raise UsageError(f"output_shape must be two positive ints, got {output_shape}")
        scales = tuple(o / i for o, i in zip(out_shape, in_shape))

    out = np.asarray(img, dtype=np.float64)
    # MATLAB resizes the dimension with the smallest scale first (stable sort).
    for axis in sorted(range(2), key=lambda d: scales[d]):
        matrix = _resize_matrix(in_shape[axis], out_shape[axis], scales[axis])
        out = _resize_along(out, axis, matrix)
    return out


def imresize_uint8(img: np.ndarray, scale: float) -> np.ndarray:
    """Resize a uint8 image as MATLAB does: compute in float, round, saturate."""
    if img.dtype != np.uint8:
        raise UsageError(f"expected a uint8 image, got dtype {img.dtype}")
    out = imresize(img.astype(np.float64), scale)
    # MATLAB's cast to uint8 rounds half away from zero and clips to [0, 255].
    return np.clip(np.floor(out + 0.5), 0, 255).astype(np.uint8)


def mod_crop(img: np.ndarray, scale: int) -> np.ndarray:
    """Crop H and W (top-left anchored) to multiples of ``scale``.

    SR benchmarks do this to the ground truth so that downscaling by ``scale``
    and upscaling back returns exactly the HR size.
    """
    if scale < 1 or int(scale) != scale:
        raise UsageError(f"scale must be a positive integer, got {scale}")
    scale = int(scale)
    h, w = img.shape[:2]
    if h < scale or w < scale:
        raise UsageError(f"image of shape {img.shape} is smaller than scale {scale}")
    return img[: h - h % scale, : w - w % scale]
