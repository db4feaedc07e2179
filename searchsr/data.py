"""HR image sets, their MATLAB-bicubic LR counterparts, and random training patches.

Every SR benchmark degrades its ground truth the same way: mod-crop the HR image
to the scale, then ``imresize(hr, 1/scale)`` rounded to uint8 (``searchsr.imresize``).
An ``ImageSet`` holds those (HR, LR) pairs in memory; a training trial samples
aligned random patches from them (``PatchDataset``), evaluation scores whole images.

Images are kept as uint8 numpy arrays: HxWx3 for colour, HxW for grayscale, because
the benchmark scripts score a single-channel image on its gray value. Only the
network input is expanded to three channels (``to_tensor``).
"""

from __future__ import annotations

import functools
import hashlib
import os
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import skimage.data
import torch
from PIL import Image, ImageOps

from searchsr.errors import UsageError
from searchsr.imresize import imresize_uint8, mod_crop

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp")

# scikit-image's colour photographs that ship inside its wheel (no pooch download).
# The split is fixed so that zero-config runs are comparable with each other:
# the two smallest photos validate, the rest train.
SKIMAGE_TRAIN: dict[str, Callable[[], np.ndarray]] = {
    "astronaut": skimage.data.astronaut,
    "rocket": skimage.data.rocket,
    "hubble_deep_field": skimage.data.hubble_deep_field,
    "immunohistochemistry": skimage.data.immunohistochemistry,
    "retina": skimage.data.retina,
    "motorcycle_left": lambda: skimage.data.stereo_motorcycle()[0],
}
SKIMAGE_VAL: dict[str, Callable[[], np.ndarray]] = {
    "chelsea": skimage.data.chelsea,
    "coffee": skimage.data.coffee,
}


@dataclass(frozen=True)
class ImagePair:
    """One benchmark image: mod-cropped HR and its bicubic LR, both uint8."""

    name: str  # file name, reused for saved outputs
    hr: np.ndarray
    lr: np.ndarray
    path: str | None = None  # the HR file (None for the embedded photos): never overwritten by saved outputs


@dataclass(frozen=True)
class ImageSet:
    """A named collection of pairs for one scale; ``source`` is recorded in run configs."""

    source: str
    scale: int
    images: tuple[ImagePair, ...]


def make_pair(name: str, hr: np.ndarray, scale: int, path: str | None = None) -> ImagePair:
    """Mod-crop ``hr`` and compute its LR; errors name the image. ``path`` is the file it came from."""
    try:
        hr = mod_crop(hr, scale)
    except ValueError as err:
        raise UsageError(f"{name}: {err}") from None
    hr.setflags(write=False)
    lr = imresize_uint8(hr, 1 / scale)
    lr.setflags(write=False)
    return ImagePair(name, hr, lr, path)


def open_oriented(path: Path) -> Image.Image:
    """The image in ``path``, decoded and turned the way viewers show it: its EXIF orientation applied
    (phone cameras store portrait photos sideways and say so in EXIF; benchmark sets carry none).

    Images over PIL's ``Image.MAX_IMAGE_PIXELS`` are refused (PIL only warns up to twice that
    and then decodes: hundreds of MB per image before any check of ours could run).
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as img:
                img.load()
                ImageOps.exif_transpose(img, in_place=True)  # no copy; keeps img.format
                return img
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
        raise UsageError(f"{path}: cannot read image ({err})") from None


def to_uint8(img: Image.Image) -> np.ndarray:
    """uint8 HxW (gray) or HxWx3 (everything else: RGBA, palette, CMYK -> RGB).

    16-bit samples keep their high byte (``v >> 8``), gray and colour alike: Pillow decodes 16-bit colour
    that way, so a 16-bit gray image and the same image in 16-bit RGB give the same values. 32-bit
    integer and float images are refused (they have no agreed 8-bit meaning).
    """
    if img.mode.startswith("I;16"):
        return (np.array(img).astype(np.uint16) >> 8).astype(np.uint8)
    if img.mode == "I" and img.format == "PNG":  # 16-bit gray PNG in Pillow versions before I;16
        return (np.array(img).clip(0, 65535).astype(np.uint16) >> 8).astype(np.uint8)
    if img.mode in ("I", "F") or img.mode.startswith("I;"):
        raise ValueError(f"unsupported image mode {img.mode} (32-bit or float samples; use 8 or 16 bits)")
    return np.array(img.convert("L" if img.mode in ("1", "L", "LA") else "RGB"))


def read_image(path: Path) -> np.ndarray:
    """uint8 HxW (gray) or HxWx3 as the image is shown (``open_oriented``, ``to_uint8``)."""
    img = open_oriented(path)
    try:
        return to_uint8(img)
    except ValueError as err:
        raise UsageError(f"{path}: cannot read image ({err})") from None


def list_images(folder: Path) -> list[Path]:
    """Image files directly in ``folder`` (case-insensitive suffix), sorted by name."""
    if not folder.is_dir():
        raise UsageError(f"{folder}: not a directory")
    paths = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not paths:
        raise UsageError(f"{folder}: no images ({', '.join(IMAGE_SUFFIXES)})")
    return paths


@functools.lru_cache(maxsize=None)
def _cached_pair(path: str, mtime_ns: int, scale: int) -> ImagePair:
    """The LR is computed once per file version and scale (repeated trials in one process)."""
    return make_pair(Path(path).name, read_image(Path(path)), scale, path)


def load_folder(folder: str | Path, scale: int, paths: list[Path] | None = None, label: str = "") -> ImageSet:
    """Every image in ``folder`` (or the chosen ``paths`` of it) as (HR, LR) pairs for ``scale``."""
    folder = Path(folder).resolve()
    chosen = list_images(folder) if paths is None else paths
    pairs = tuple(_cached_pair(str(p), p.stat().st_mtime_ns, scale) for p in chosen)
    return ImageSet(f"{folder}{label}", scale, pairs)


def held_out(paths: list[Path], count: int) -> list[Path]:
    """The ``count`` images of a folder held out for validation: chosen by a hash of the file name,
    so the choice is the same on every machine and run, spread over the folder, and does not move
    when other images are added (an image is held out or not by its own name)."""
    ranked = sorted(paths, key=lambda p: (hashlib.sha256(p.name.encode()).hexdigest(), p.name))
    return sorted(ranked[:count])


def load_split(train_dir: str | Path | None, val_dir: str | Path | None, scale: int,
               val_count: int = 0) -> tuple[ImageSet, ImageSet]:
    """Training and validation images. ``val_count`` > 0 holds that many images of ``train_dir`` out
    for validation (never trained on) instead of reading ``val_dir``."""
    if not val_count:
        return load_images(train_dir, "train", scale), load_images(val_dir, "val", scale)
    check_val_count(train_dir, val_dir, val_count)
    paths = list_images(Path(train_dir))
    val = held_out(paths, val_count)
    train = [p for p in paths if p not in val]
    return (load_folder(train_dir, scale, train, f" (minus {val_count} held out)"),
            load_folder(train_dir, scale, val, f" ({val_count} held out for validation)"))


def check_val_count(train_dir: str | Path | None, val_dir: str | Path | None, val_count: int) -> None:
    """``--val-count`` needs a ``--train-dir`` with more images than it holds out, and no ``--val-dir``."""
    if val_count < 0:
        raise UsageError(f"--val-count must be >= 0, got {val_count}")
    if not val_count:
        return
    if train_dir is None:
        raise UsageError("--val-count holds out images of --train-dir: give --train-dir")
    if val_dir is not None:
        raise UsageError("--val-count and --val-dir both choose the validation images: give one")
    total = len(list_images(Path(train_dir)))
    if val_count >= total:
        raise UsageError(f"--val-count {val_count}: --train-dir {train_dir} has {total} image(s), and at least one "
                         "must stay for training")


def load_skimage(split: str, scale: int) -> ImageSet:
    """The embedded default data: ``split`` is ``train`` or ``val`` (see ``SKIMAGE_TRAIN``/``SKIMAGE_VAL``)."""
    loaders = {"train": SKIMAGE_TRAIN, "val": SKIMAGE_VAL}.get(split)
    if loaders is None:
        raise UsageError(f"skimage split must be train or val, got {split!r}")
    pairs = tuple(make_pair(f"{name}.png", load(), scale) for name, load in loaders.items())
    return ImageSet(f"skimage:{split} ({', '.join(loaders)})", scale, pairs)


def load_images(folder: str | Path | None, split: str, scale: int) -> ImageSet:
    """A user folder, or the embedded ``split`` when no folder is given (the CLI's defaults)."""
    return load_skimage(split, scale) if folder is None else load_folder(folder, scale)


def to_tensor(img: np.ndarray) -> torch.Tensor:
    """uint8 HxW[x3] -> float 3xHxW in [0, 1]; gray is replicated to the network's three channels."""
    if img.ndim == 2:
        img = np.repeat(img[:, :, None], 3, axis=2)
    return torch.from_numpy(np.ascontiguousarray(img.transpose(2, 0, 1), dtype=np.float32)).div_(255)


def check_patch_size(images: ImageSet, patch_size: int) -> None:
    """Every LR image must hold a training patch; errors name the image."""
    for pair in images.images:
        h, w = pair.lr.shape[:2]
        if min(h, w) < patch_size:
            raise UsageError(f"{pair.name}: LR image {h}x{w} is smaller than the "
                             f"{patch_size}x{patch_size} training patch (HR {images.scale}x that)")


class PatchDataset(torch.utils.data.Dataset):
    """``length`` random aligned (LR, HR) patch pairs with flips and 90-degree rotations.

    Sample ``i`` draws from its own generator seeded by ``(seed, i)``, so every sample
    is a pure function of its index: a run resumed at step ``k`` reads exactly the
    samples the uninterrupted run would, with no RNG state to save, and the result is
    the same with any number of loader workers.
    """

    def __init__(self, images: ImageSet, patch_size: int, seed: int, length: int) -> None:
        check_patch_size(images, patch_size)
        self.images = images.images
        self.scale = images.scale
        self.patch_size = patch_size
        self.seed = seed
        self.length = length

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        rng = np.random.default_rng([self.seed, index])
        pair = self.images[rng.integers(len(self.images))]
        p, s = self.patch_size, self.scale
        h, w = pair.lr.shape[:2]
        y, x = rng.integers(h - p + 1), rng.integers(w - p + 1)
        lr = pair.lr[y : y + p, x : x + p]
        hr = pair.hr[s * y : s * (y + p), s * x : s * (x + p)]
        hflip, vflip, transpose = rng.integers(2, size=3)
        return to_tensor(augment(lr, hflip, vflip, transpose)), to_tensor(augment(hr, hflip, vflip, transpose))


def augment(img: np.ndarray, hflip: bool, vflip: bool, transpose: bool) -> np.ndarray:
    """One of the 8 flips/rotations of the square; applied identically to LR and HR."""
    if hflip:
        img = img[:, ::-1]
    if vflip:
        img = img[::-1]
    if transpose:
        img = img.swapaxes(0, 1)
    return img


def default_workers() -> int:
    """Loader processes: patch cropping is cheap, so on a machine with two cores or fewer a
    worker would only steal a core from the training threads."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return 0 if cores <= 2 else min(4, cores - 1)


def patch_loader(dataset: PatchDataset, batch_size: int, start_step: int,
                 device: torch.device) -> torch.utils.data.DataLoader:
    """Batches for steps ``start_step, start_step + 1, ...``: sample indices run on from the resumed step."""
    return torch.utils.data.DataLoader(
        dataset, batch_size=batch_size, sampler=range(start_step * batch_size, len(dataset)),
        num_workers=default_workers(), pin_memory=device.type == "cuda", drop_last=True)
