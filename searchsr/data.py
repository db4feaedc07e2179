"""HR image sets and their MATLAB-bicubic LR counterparts.

Every SR benchmark degrades its ground truth the same way: mod-crop the HR image
to the scale, then ``imresize(hr, 1/scale)`` rounded to uint8 (``searchsr.imresize``).
An ``ImageSet`` holds those (HR, LR) pairs as read-only arrays, mapped from the
machine's image cache (``searchsr.imagecache``: one copy per machine); a training
run samples aligned random patches from them (``searchsr.patches``), evaluation
scores whole images.

Images are kept as uint8 numpy arrays: HxWx3 for colour, HxW for grayscale, because
the benchmark scripts score a single-channel image on its gray value. Only the
network input is expanded to three channels (``to_tensor``).
"""

from __future__ import annotations

import functools
import hashlib
import re
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import skimage
import skimage.data
import torch
from PIL import Image, ImageOps

from searchsr.errors import UsageError
from searchsr.imagecache import cached_arrays, file_identity
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


@functools.lru_cache(maxsize=64)
def _cached_pairs(paths: tuple[str, ...], stamps: tuple[tuple[int, int], ...], scale: int) -> tuple[ImagePair, ...]:
    """The pairs of ``paths``: from the machine's image cache (``searchsr.imagecache``: decoded and
    downscaled once per machine, one shared read-only copy), and once per process per file version."""
    files = [Path(p) for p in paths]

    def compute() -> list[tuple[np.ndarray, np.ndarray]]:
        return [(pair.hr, pair.lr) for pair in (make_pair(f.name, read_image(f), scale) for f in files)]

    return tuple(ImagePair(f.name, hr, lr, str(f))
                 for f, (hr, lr) in zip(files, cached_arrays(file_identity(files), scale, compute)))


def load_folder(folder: str | Path, scale: int, paths: list[Path] | None = None, label: str = "") -> ImageSet:
    """Every image in ``folder`` (or the chosen ``paths`` of it) as (HR, LR) pairs for ``scale``."""
    folder = Path(folder).resolve()
    chosen = list_images(folder) if paths is None else paths
    stats = [p.stat() for p in chosen]
    pairs = _cached_pairs(tuple(str(p) for p in chosen), tuple((s.st_size, s.st_mtime_ns) for s in stats), scale)
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


_HELD_OUT = re.compile(r"^(?P<folder>.*) \((?:minus (?P<train>\d+) held out|(?P<val>\d+) held out for validation)\)$")


def load_source(source: str | None, scale: int) -> ImageSet | None:
    """The images an ``ImageSet.source`` (as a run's ``config.json`` records it) names, loaded again for
    ``scale``: the embedded photos (``skimage:train ...``), a folder, or one side of a ``--val-count`` split.
    None when there is no source or its folder is not on this machine."""
    if not source:
        return None
    if source.startswith("skimage:"):
        return load_skimage(source.removeprefix("skimage:").split(" ", 1)[0], scale)
    split = _HELD_OUT.match(source)
    if split and not Path(source).is_dir():
        folder = Path(split["folder"])
        if not folder.is_dir():
            return None
        train, val = load_split(folder, None, scale, int(split["train"] or split["val"]))
        return train if split["train"] else val
    return load_folder(source, scale) if Path(source).is_dir() else None


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
    """The embedded default data: ``split`` is ``train`` or ``val`` (see ``SKIMAGE_TRAIN``/``SKIMAGE_VAL``);
    the pairs come from the machine's image cache like a folder's (keyed by scikit-image's version)."""
    loaders = {"train": SKIMAGE_TRAIN, "val": SKIMAGE_VAL}.get(split)
    if loaders is None:
        raise UsageError(f"skimage split must be train or val, got {split!r}")
    return ImageSet(f"skimage:{split} ({', '.join(loaders)})", scale, _skimage_pairs(split, scale))


@functools.lru_cache(maxsize=8)
def _skimage_pairs(split: str, scale: int) -> tuple[ImagePair, ...]:
    loaders = SKIMAGE_TRAIN if split == "train" else SKIMAGE_VAL
    names = [f"{name}.png" for name in loaders]

    def compute() -> list[tuple[np.ndarray, np.ndarray]]:
        return [(pair.hr, pair.lr) for pair in (make_pair(n, load(), scale) for n, load in zip(names, loaders.values()))]

    identity = [(n, f"scikit-image {skimage.__version__}") for n in names]
    return tuple(ImagePair(n, hr, lr) for n, (hr, lr) in zip(names, cached_arrays(identity, scale, compute)))


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
