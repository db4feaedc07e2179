"""Training patches gathered on the device (searchsr.patches): aligned, all 8 symmetries, uniform over
images, a pure function of (seed, step), and the accelerator's indexed gather equal to the CPU's slices."""

import numpy as np
import pytest
import torch
from PIL import Image
from scipy.ndimage import gaussian_filter
from scipy.stats import chisquare

from searchsr.data import load_folder
from searchsr.imresize import imresize_uint8
from searchsr.patches import ORIENTATIONS, Packed, PatchSampler, draw, gather_indexed, gather_sliced

RNG = np.random.default_rng(3)
CPU = torch.device("cpu")


def photo(h, w, channels=3):
    """Smooth random texture: like a photo, every misalignment shows."""
    img = gaussian_filter(RNG.random((h, w, channels)) * 255, sigma=(1.5, 1.5, 0))
    img = np.round((img - img.min()) / (img.max() - img.min()) * 255).astype(np.uint8)
    return img[:, :, 0] if channels == 1 else img


def _folder_set(tmp_path, shapes, channels=3):
    for i, shape in enumerate(shapes):
        Image.fromarray(photo(*shape, channels)).save(tmp_path / f"{i}.png")
    return load_folder(tmp_path, 4)


def _u8(batch):
    """float (N, 3, P, P) in [0, 1] -> uint8 (N, P, P, 3)."""
    return np.round(batch.permute(0, 2, 3, 1).numpy() * 255).astype(np.uint8)


def _orient(img, o):
    """The reference orientation: transpose (bit 4), then flip left-right (1) and up-down (2)."""
    img = img.swapaxes(0, 1) if o & 4 else img
    img = img[:, ::-1] if o & 1 else img
    return img[::-1] if o & 2 else img


def test_each_sample_is_its_drawn_crop_in_its_drawn_orientation(tmp_path):
    images = _folder_set(tmp_path, [(96, 120), (80, 84)])
    sampler = PatchSampler(images, 12, 16, seed=5, device=CPU)
    for step in range(4):
        d, (lr, hr) = sampler.draw(step), sampler.batch(step)
        assert lr.shape == (16, 3, 12, 12) and hr.shape == (16, 3, 48, 48)
        assert lr.is_contiguous(memory_format=torch.channels_last) and lr.dtype == torch.float32
        for b, (k, y, x, o) in enumerate(zip(d.image, d.y, d.x, d.orientation)):
            pair = images.images[k]
            np.testing.assert_array_equal(_u8(lr)[b], _orient(pair.lr[y : y + 12, x : x + 12], o))
            np.testing.assert_array_equal(_u8(hr)[b], _orient(pair.hr[4 * y : 4 * y + 48, 4 * x : 4 * x + 48], o))


def test_patches_are_aligned_under_every_augmentation(tmp_path):
    # Flips and transposes commute with imresize, so a correctly aligned pair has
    # LR == imresize(HR patch) away from the patch border (where the kernel's mirror
    # padding differs from the real neighbours). One HR pixel of shift breaks it.
    images = _folder_set(tmp_path, [(96, 120), (80, 80)])
    sampler = PatchSampler(images, 12, 16, seed=5, device=CPU)
    for step in range(4):
        lr, hr = (_u8(t) for t in sampler.batch(step))
        for lr_u8, hr_u8 in zip(lr, hr):
            down = imresize_uint8(hr_u8, 1 / 4).astype(int)
            assert np.abs(down[3:-3, 3:-3] - lr_u8[3:-3, 3:-3]).max() <= 1
            shifted = imresize_uint8(np.roll(hr_u8, 1, axis=1), 1 / 4).astype(int)
            assert np.abs(shifted[3:-3, 3:-3] - lr_u8[3:-3, 3:-3]).max() > 1


def test_the_eight_symmetries_and_the_images_are_drawn_uniformly(tmp_path):
    # A patch covering the whole LR image isolates the augmentation.
    images = _folder_set(tmp_path, [(32, 32)])
    sampler = PatchSampler(images, 8, 25, seed=0, device=CPU)
    variants = {patch.tobytes() for step in range(8) for patch in _u8(sampler.batch(step)[0])}
    assert len(variants) == 8

    sizes = np.array([[30, 40], [9, 9], [200, 300], [12, 80]])  # uniform over images, whatever their size
    draws = [draw(0, step, 128, sizes, 8) for step in range(40)]
    images_drawn = np.bincount(np.concatenate([d.image for d in draws]), minlength=4)
    orientations = np.bincount(np.concatenate([d.orientation for d in draws]), minlength=ORIENTATIONS)
    assert chisquare(images_drawn).pvalue > 1e-3 and chisquare(orientations).pvalue > 1e-3
    assert all(((d.y <= sizes[d.image, 0] - 8) & (d.x <= sizes[d.image, 1] - 8)).all() for d in draws)
    corners = np.concatenate([d.y[d.image == 1] for d in draws])
    assert set(corners) == {0, 1}  # a 9-pixel side holds an 8-pixel patch at 0 and 1, both drawn


def test_a_batch_is_a_pure_function_of_seed_and_step(tmp_path):
    images = _folder_set(tmp_path, [(64, 64), (72, 80)])
    a, b = PatchSampler(images, 8, 4, seed=1, device=CPU), PatchSampler(images, 8, 4, seed=1, device=CPU)
    c = PatchSampler(images, 8, 4, seed=2, device=CPU)
    later = [t.clone() for t in a.batch(7)]
    b.batch(0)
    assert all(torch.equal(x, y) for x, y in zip(later, b.batch(7)))  # any order: resume reads the same
    assert not torch.equal(later[1], c.batch(7)[1])
    assert not torch.equal(later[1], a.batch(6)[1])


def test_indexed_gather_equals_the_sliced_one(tmp_path):
    # The accelerator's path (one indexing of packed pixels) runs here on the CPU against the CPU's.
    (tmp_path / "colour").mkdir(), (tmp_path / "gray").mkdir()
    colour = _folder_set(tmp_path / "colour", [(64, 88), (80, 72)])
    gray = _folder_set(tmp_path / "gray", [(64, 64), (96, 68)], 1)
    for images in (colour, gray):
        sampler = PatchSampler(images, 10, 32, seed=3, device=CPU)
        for views in (sampler.lr, sampler.hr):
            packed = Packed.of(views, CPU)
            scale = 1 if views is sampler.lr else 4
            for step in range(3):
                d = sampler.draw(step)
                indexed = gather_indexed(packed, d, 10, scale)
                assert indexed.is_contiguous(memory_format=torch.channels_last)
                assert torch.equal(indexed, gather_sliced(views, d, 10, scale))


def test_image_smaller_than_patch_names_the_file(tmp_path):
    images = _folder_set(tmp_path, [(64, 64), (40, 64)])
    with pytest.raises(ValueError, match="1.png: LR image 10x16 is smaller than the 12x12"):
        PatchSampler(images, 12, 4, seed=0, device=CPU)


def test_images_stay_where_they_are_on_a_cpu(tmp_path):
    # On a CPU the sampler reads the shared, memory-mapped copy: no private copy of the set.
    images = _folder_set(tmp_path, [(64, 64)])
    sampler = PatchSampler(images, 8, 2, seed=0, device=CPU)
    assert sampler.on_device and sampler.packed is None
    assert sampler.hr[0].data_ptr() == images.images[0].hr.ctypes.data
