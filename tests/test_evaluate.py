"""Upscaling, SE-exact tiled inference and scoring."""

import numpy as np
import pytest
import torch
from PIL import Image

from searchsr.arch import build_model
from searchsr.config import ArchConfig
from searchsr.data import ImageSet, load_folder, make_pair
from searchsr.evaluate import (bicubic_upscaler, context_radius, evaluate, forward_tiled, model_upscaler,
                               upscale)
from searchsr.imresize import imresize_uint8
from searchsr.metrics import psnr_y, ssim_y

RNG = np.random.default_rng(4)


def _model(**changes):
    """A small member of the family in eval mode whose output really depends on its input.

    PyTorch's default init shrinks the signal layer by layer, so a fresh network's output
    is nearly its biases; He init and non-trivial BN statistics make the body (and its
    SE gates) matter, as after training. The last conv is scaled so the residual has an
    image's magnitude (about +-1), which the 1e-5 tolerances refer to.
    """
    torch.manual_seed(0)
    model = build_model(ArchConfig(nf=8, n_blocks=3, **changes)).eval()
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.Conv2d):
                torch.nn.init.kaiming_normal_(m.weight)
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.normal_(0, 0.1)
                m.running_var.uniform_(0.5, 2.0)
        model.to_rgb.weight.mul_(0.1)
    return model


def test_tiled_equals_untiled_with_squeeze_excite():
    model = _model()
    x = torch.rand(1, 3, 45, 61)
    with torch.inference_mode():
        whole = model(x)
        tiled = forward_tiled(model, x, tile=16)  # 3 x 4 tiles
        naive = model(x[..., :16, :16])  # a tile alone: its SE pools see only the tile
    assert tiled.shape == whole.shape == (1, 3, 180, 244)
    assert (tiled - whole).abs().max().item() < 1e-5
    # Without the image-wide SE means the tile's interior would be visibly different.
    assert (naive[..., 20:44, 20:44] - whole[..., 20:44, 20:44]).abs().max().item() > 1e-3
    assert not any(m._forward_hooks for m in model.modules())  # hooks removed afterwards


def test_tiled_equals_untiled_kernel7_without_se():
    model = _model(kernel_size=7, se=False)
    assert context_radius(model) == 4 * 3 + 2 + 1 + 2  # 4 blocks x 3, 2 up-stage dw, post dw, skip
    x = torch.rand(1, 3, 40, 33)
    with torch.inference_mode():
        assert (forward_tiled(model, x, tile=16) - model(x)).abs().max().item() < 1e-5


def test_upscale_quantises_and_keeps_gray_gray():
    model = _model()
    rgb = RNG.integers(0, 256, (20, 24, 3), dtype=np.uint8)
    out = upscale(model, rgb)
    assert out.dtype == np.uint8 and out.shape == (80, 96, 3)
    with torch.inference_mode():
        ref = model(torch.from_numpy(rgb).permute(2, 0, 1)[None].float() / 255)[0].permute(1, 2, 0)
    expected = np.floor(ref.clamp(0, 1).numpy() * 255 + 0.5)
    assert np.abs(out.astype(int) - expected).max() <= 1  # float rounding at exact .5 only
    gray = rgb[:, :, 0]
    assert upscale(model, gray).shape == (80, 96)


def test_upscale_restores_training_mode():
    model = _model().train()
    upscale(model, RNG.integers(0, 256, (16, 16, 3), dtype=np.uint8))
    assert model.training


def test_evaluate_bicubic_matches_direct_scores(tmp_path):
    for name in ("a.png", "b.png"):
        Image.fromarray(RNG.integers(0, 256, (48, 52, 3), dtype=np.uint8)).save(tmp_path / name)
    images = load_folder(tmp_path, 4)
    result = evaluate(bicubic_upscaler(4), images, save_dir=tmp_path / "out")
    psnrs = [psnr_y(imresize_uint8(p.lr, 4), p.hr, 4) for p in images.images]
    ssims = [ssim_y(imresize_uint8(p.lr, 4), p.hr, 4) for p in images.images]
    assert result.images == 2
    assert result.psnr_y == pytest.approx(np.mean(psnrs), abs=1e-12)
    assert result.ssim_y == pytest.approx(np.mean(ssims), abs=1e-12)
    assert [s.name for s in result.per_image] == ["a.png", "b.png"]
    saved = np.array(Image.open(tmp_path / "out" / "a.png"))
    np.testing.assert_array_equal(saved, imresize_uint8(images.images[0].lr, 4))


def test_model_evaluation_scores_the_quantised_output():
    model = _model()
    pair = make_pair("x.png", RNG.integers(0, 256, (64, 64, 3), dtype=np.uint8), 4)
    result = evaluate(model_upscaler(model, tile=16), ImageSet("mem", 4, (pair,)))
    assert result.psnr_y == pytest.approx(psnr_y(upscale(model, pair.lr), pair.hr, 4), abs=1e-9)


def test_too_small_to_score_and_wrong_scale():
    tiny = make_pair("tiny.png", RNG.integers(0, 256, (16, 40, 3), dtype=np.uint8), 4)
    with pytest.raises(ValueError, match="tiny.png: HR 16x40 is too small"):
        evaluate(bicubic_upscaler(4), ImageSet("mem", 4, (tiny,)))
    pair = make_pair("x.png", RNG.integers(0, 256, (64, 64, 3), dtype=np.uint8), 4)
    with pytest.raises(ValueError, match="scale x4"):
        evaluate(bicubic_upscaler(2), ImageSet("mem", 4, (pair,)))
    with pytest.raises(ValueError, match="tile must be at least 16"):
        model_upscaler(_model(), tile=8)
