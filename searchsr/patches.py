"""Random aligned training patches, gathered where the network trains.

The paper trains on batches of 128 random 100x100 LR patches with their x4 HR patches,
flipped and rotated (Sec. 4.1). Cropping, augmenting and converting those in Python
on the CPU (245 MB of float32 HR per batch) would set the pace of a GPU run, so here:

* the training set's uint8 HR and LR images are placed on the training device once
  (``PatchSampler``); where they would take more than ``max_share`` of the device's
  memory they stay in host memory (the machine's shared, memory-mapped copy) and each
  batch is gathered there, pinned, and copied over asynchronously;
* each step's random choices (``draw``: image, position, one of the 8 orientations per
  sample, uniform over images) come from a generator seeded by ``(seed, step)``, so a
  batch is a pure function of its step: the same seed gives the same batches on every
  device, and a run resumed at step ``k`` reads exactly the batches the uninterrupted
  run would, with no RNG state to save;
* the gather runs where the images are: on a CPU, per sample a slice and its transpose (views)
  and one flipping copy straight into a reused float batch (``gather_sliced``); on an
  accelerator, one indexing of the packed pixels whatever the batch size (``gather_indexed``),
  then one uint8 -> float conversion. Nothing per pixel runs in Python or NumPy, and both
  give the same patches (tested).

Batches come out as float NCHW in [0, 1] with channels-last strides (the images are
HWC), gray images replicated to three channels as ``searchsr.data.to_tensor`` does.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
import torch

from searchsr.data import ImageSet, check_patch_size

ORIENTATIONS = 8  # bit 4: transpose; then bit 1: flip left-right, bit 2: flip up-down
DEFAULT_MAX_SHARE = 0.3  # of the device's memory, above which the images stay on the host


@dataclass(frozen=True)
class Draw:
    """One batch's random choices: per sample the image, the LR patch's top-left corner and
    the orientation (``ORIENTATIONS``)."""

    image: np.ndarray
    y: np.ndarray
    x: np.ndarray
    orientation: np.ndarray


def draw(seed: int, step: int, batch_size: int, lr_sizes: np.ndarray, patch_size: int) -> Draw:
    """The choices of step ``step`` (a pure function of its arguments); ``lr_sizes`` is (images, 2) H, W."""
    rng = np.random.default_rng([seed, step])
    image = rng.integers(len(lr_sizes), size=batch_size)
    y = rng.integers(lr_sizes[image, 0] - patch_size + 1)
    x = rng.integers(lr_sizes[image, 1] - patch_size + 1)
    return Draw(image, y, x, rng.integers(ORIENTATIONS, size=batch_size))


def _image_tensor(array: np.ndarray) -> torch.Tensor:
    """uint8 HxWx3 sharing ``array``'s memory; a gray HxW image is seen (not copied) as three channels."""
    with warnings.catch_warnings():  # the cache's arrays are read-only; nothing here writes to them
        warnings.filterwarnings("ignore", "The given NumPy array is not writable")
        t = torch.from_numpy(array)
    return t[:, :, None].expand(-1, -1, 3) if t.ndim == 2 else t


def placement(images: ImageSet, device: torch.device, max_share: float) -> torch.device:
    """Where the images live: on ``device`` if they take at most ``max_share`` of its memory, else the host."""
    if device.type != "cuda":
        return device
    size = sum(3 * pair.lr.shape[0] * pair.lr.shape[1] * (1 + images.scale**2) for pair in images.images)
    return device if size <= max_share * torch.cuda.get_device_properties(device).total_memory else torch.device("cpu")


@dataclass(frozen=True)
class Packed:
    """Images of one kind (HR or LR) packed into one flat uint8 buffer of HWC pixels on an accelerator."""

    pixels: torch.Tensor  # (total pixels, 3)
    offsets: torch.Tensor  # (images,) first pixel of each image
    widths: torch.Tensor  # (images,)

    @classmethod
    def of(cls, images: list[torch.Tensor], device: torch.device) -> Packed:
        """``images`` (uint8 HxWx3, wherever they are) copied one by one into one buffer on ``device``."""
        sizes = torch.tensor([img.shape[0] * img.shape[1] for img in images])
        offsets = torch.cumsum(sizes, 0) - sizes
        pixels = torch.empty(int(sizes.sum()), 3, dtype=torch.uint8, device=device)
        for img, start, size in zip(images, offsets.tolist(), sizes.tolist()):
            pixels[start : start + size].copy_(img.reshape(-1, 3))
        return cls(pixels, offsets.to(device), torch.tensor([img.shape[1] for img in images], device=device))


class PatchSampler:
    """Batches of ``batch_size`` random aligned (LR, HR) patches of ``images``; ``batch(step)`` is pure."""

    def __init__(self, images: ImageSet, patch_size: int, batch_size: int, seed: int,
                 device: torch.device, max_share: float = DEFAULT_MAX_SHARE) -> None:
        check_patch_size(images, patch_size)
        self.patch_size, self.batch_size, self.seed = patch_size, batch_size, seed
        self.scale = images.scale
        self.device = device
        self.home = placement(images, device, max_share)  # where images live and batches are gathered
        self.lr = [_image_tensor(pair.lr) for pair in images.images]  # views of the shared host copy
        self.hr = [_image_tensor(pair.hr) for pair in images.images]
        self.lr_sizes = np.array([pair.lr.shape[:2] for pair in images.images], dtype=np.int64)
        self._buffers: dict[int, torch.Tensor] = {}
        self.packed = (Packed.of(self.lr, self.home), Packed.of(self.hr, self.home)) \
            if self.home.type != "cpu" else None

    @property
    def on_device(self) -> bool:
        """Whether the images live on the training device (else batches are gathered on the host)."""
        return self.home == self.device

    def draw(self, step: int) -> Draw:
        return draw(self.seed, step, self.batch_size, self.lr_sizes, self.patch_size)

    def batch(self, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Step ``step``'s (LR, HR) float batches on the training device."""
        d = self.draw(step)
        if self.packed is not None:
            return tuple(self._to_float(gather_indexed(packed, d, self.patch_size, s))
                         for packed, s in zip(self.packed, (1, self.scale)))
        dtype = torch.float32 if self.device.type == "cpu" else torch.uint8  # uint8 crosses to a GPU
        return tuple(self._to_float(gather_sliced(images, d, self.patch_size, s, self._buffer(s, dtype)))
                     for images, s in ((self.lr, 1), (self.hr, self.scale)))

    def _buffer(self, scale: int, dtype: torch.dtype) -> torch.Tensor:
        """The host batch of this scale, reused from step to step: touching a fresh 245 MB batch (the full
        schedule's HR) costs more page faults than filling it. A batch is valid until the next ``batch``."""
        p = self.patch_size * scale
        if scale not in self._buffers:
            self._buffers[scale] = torch.empty(self.batch_size, 3, p, p, dtype=dtype, memory_format=torch.channels_last)
        return self._buffers[scale]

    def _to_float(self, batch: torch.Tensor) -> torch.Tensor:
        """(N, 3, P, P) uint8 where gathered -> float in [0, 1] on the training device."""
        if batch.device != self.device:
            batch = batch.pin_memory().to(self.device, non_blocking=True)
        return (batch if batch.is_floating_point() else batch.float()).div_(255)


def gather_sliced(images: list[torch.Tensor], d: Draw, patch_size: int, scale: int,
                  out: torch.Tensor | None = None) -> torch.Tensor:
    """(N, 3, P, P) patches with channels-last strides, values 0..255 in ``out``'s dtype (default: a new
    uint8 batch): per sample a slice (a view), its transpose (a view) and flip, copied (and converted)
    into the batch. Fastest on a CPU."""
    p = patch_size * scale
    if out is None:
        out = torch.empty(len(d.image), 3, p, p, dtype=torch.uint8, memory_format=torch.channels_last)
    for b, (k, y, x, o) in enumerate(zip(d.image.tolist(), (d.y * scale).tolist(), (d.x * scale).tolist(),
                                         d.orientation.tolist())):
        view = images[k][y : y + p, x : x + p]
        view = view.transpose(0, 1) if o & 4 else view
        flips = [dim for bit, dim in ((1, 1), (2, 0)) if o & bit]
        out[b].copy_((view.flip(flips) if flips else view).permute(2, 0, 1))
    return out


def gather_indexed(packed: Packed, d: Draw, patch_size: int, scale: int) -> torch.Tensor:
    """The same patches as ``gather_sliced`` (uint8) by one indexing of the packed pixels: every
    output pixel's source index is computed on the device, so a batch costs a few kernels whatever
    its size. Fastest on an accelerator."""
    dev, p = packed.pixels.device, patch_size * scale
    image = torch.as_tensor(d.image, device=dev)
    y, x, o = (torch.as_tensor(v, device=dev) for v in (d.y * scale, d.x * scale, d.orientation))
    i = torch.arange(p, device=dev)
    rows = torch.where((o & 2).bool()[:, None], p - 1 - i, i)[:, :, None]  # (N, P, 1): up-down flip
    cols = torch.where((o & 1).bool()[:, None], p - 1 - i, i)[:, None, :]  # (N, 1, P): left-right flip
    transposed = (o & 4).bool()[:, None, None]
    r, c = torch.where(transposed, cols, rows), torch.where(transposed, rows, cols)
    width = packed.widths[image][:, None, None]
    index = packed.offsets[image][:, None, None] + (y[:, None, None] + r) * width + x[:, None, None] + c
    return packed.pixels[index].permute(0, 3, 1, 2)  # (N, P, P, 3) -> NCHW, channels-last strides
