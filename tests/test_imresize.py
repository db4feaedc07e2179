"""Properties that pin ``imresize`` to MATLAB's bicubic algorithm."""

import numpy as np
import pytest
import torch

from searchsr.imresize import cubic, imresize, imresize_uint8, mod_crop

RNG = np.random.default_rng(0)


@pytest.mark.parametrize("value", [0.3, 1 / 3, 100.0, 255.0, -7.1])
@pytest.mark.parametrize("scale", [1 / 4, 1 / 3, 1 / 2, 0.7, 2, 3, 4])
def test_constant_image_stays_constant(value, scale):
    # Weights are normalised per output pixel, so a constant survives up to
    # float64 rounding of the weighted sum (measured: a few ulp, 1.1e-13 at 255).
    img = np.full((37, 53, 3), value)
    out = imresize(img, scale)
    np.testing.assert_allclose(out, value, rtol=1e-14, atol=0)


@pytest.mark.parametrize("factor", [2, 3, 4])
def test_interior_matches_torch_antialiased_bicubic(factor):
    # PyTorch's antialiased bicubic uses the same a = -0.5 kernel stretched by
    # the factor; it only differs at the borders (it truncates and renormalises
    # the kernel instead of mirroring). Kernel support is 2 output pixels, so
    # drop 2 per side. Measured max interior difference: 1.1e-13 on 0..255 data.
    img = RNG.random((96, 120, 3)) * 255
    out = imresize(img, 1 / factor)
    ref = torch.nn.functional.interpolate(
        torch.from_numpy(img).permute(2, 0, 1)[None],
        size=(96 // factor, 120 // factor),
        mode="bicubic",
        antialias=True,
        align_corners=False,
    )[0].permute(1, 2, 0).numpy()
    np.testing.assert_allclose(out[2:-2, 2:-2], ref[2:-2, 2:-2], rtol=0, atol=1e-9)
    # The border really differs (mirror vs truncation), so the crop is needed.
    assert np.abs(out - ref).max() > 1e-3


def _hand_weights(u: float, taps: list[int]) -> np.ndarray:
    """Downscale-by-2 weights h(0.5 (u - j)) * 0.5 for 1-based taps j, normalised."""
    w = np.array([0.5 * cubic(0.5 * (u - j)) for j in taps])
    return w / w.sum()


def test_symmetric_border_by_hand():
    n = 12
    img = RNG.random((n, n))
    out = imresize(img, 0.5)
    # First output pixel: u = 1/0.5 + 0.5 (1 - 2) = 1.5, kernel width 8,
    # taps floor(1.5 - 4) + 0..9 = -3..6; the outer two have zero weight.
    # Mirror (1-based): -3->4, -2->3, -1->2, 0->1, then 1..6 unchanged.
    w = _hand_weights(1.5, list(range(-3, 7)))
    rows = np.array([4, 3, 2, 1, 1, 2, 3, 4, 5, 6]) - 1
    assert out[0, 0] == pytest.approx(w @ img[np.ix_(rows, rows)] @ w, rel=1e-12)
    # Last output pixel (6th): u = 6/0.5 - 0.5 = 11.5, taps 8..17;
    # 13 -> 12, 14 -> 11, 15 -> 10, 16 -> 9, 17 -> 8.
    w = _hand_weights(11.5, list(range(8, 18)))
    rows = np.array([8, 9, 10, 11, 12, 12, 11, 10, 9, 8]) - 1
    assert out[-1, -1] == pytest.approx(w @ img[np.ix_(rows, rows)] @ w, rel=1e-12)


@pytest.mark.parametrize(
    "shape, scale, expected",
    [((13, 17), 1 / 4, (4, 5)), ((13, 17, 3), 0.3, (4, 6, 3)), ((5, 7), 4, (20, 28)), ((9, 6), 1 / 3, (3, 2))],
)
def test_output_shape_is_ceil(shape, scale, expected):
    assert imresize(RNG.random(shape), scale).shape == expected


def test_output_shape_argument_resizes_each_dimension():
    img = RNG.random((20, 30))
    out = imresize(img, output_shape=(40, 10))
    assert out.shape == (40, 10)
    # Keeping a dimension (scale 1) is exactly the identity along it.
    np.testing.assert_array_equal(imresize(img, output_shape=(20, 30)), img)


def test_upscaling_reproduces_linear_ramp_in_interior():
    # Cubic convolution reproduces linear functions; MATLAB maps output pixel
    # j (0-based) to input coordinate (j + 0.5) / 4 - 0.5. Mirroring breaks
    # linearity near the edges, so skip 12 output pixels (3 input pixels) per side.
    a, b = 3.0, 1.7
    ramp = a + b * np.arange(20, dtype=np.float64)
    img = np.tile(ramp, (6, 1))
    out = imresize(img, 4)
    j = np.arange(out.shape[1])
    expected = a + b * ((j + 0.5) / 4 - 0.5)
    np.testing.assert_allclose(out[:, 12:-12], np.tile(expected, (24, 1))[:, 12:-12], rtol=1e-13)
    assert np.abs(out[0, 0] - expected[0]) > 1e-3  # the border is mirrored, not extrapolated


def test_imresize_uint8_rounds_and_clips():
    # A sharp edge overshoots (negative lobes of the cubic) on upscaling;
    # uint8 output must saturate instead of wrapping, and equal the rounded float result.
    img = np.zeros((8, 8, 3), dtype=np.uint8)
    img[:, 4:] = 255
    out = imresize_uint8(img, 2)
    ref = imresize(img.astype(np.float64), 2)
    assert ref.max() > 255 and ref.min() < 0
    assert out.dtype == np.uint8
    np.testing.assert_array_equal(out, np.clip(np.floor(ref + 0.5), 0, 255))
    with pytest.raises(ValueError, match="float64"):
        imresize_uint8(img.astype(np.float64), 2)


def test_mod_crop_is_top_left_anchored():
    img = np.arange(10 * 7).reshape(10, 7)
    out = mod_crop(img, 4)
    assert out.shape == (8, 4)
    np.testing.assert_array_equal(out, img[:8, :4])
    with pytest.raises(ValueError, match="2.5"):
        mod_crop(img, 2.5)


def test_bad_arguments_raise():
    img = RNG.random((8, 8))
    with pytest.raises(ValueError, match="exactly one"):
        imresize(img)
    with pytest.raises(ValueError, match="-1"):
        imresize(img, -1)
    with pytest.raises(ValueError, match=r"\(8,\)"):
        imresize(np.zeros(8), 0.5)
