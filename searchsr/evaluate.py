"""Score an upscaler on an image set the way SR papers do: PSNR-Y / SSIM-Y, mean over images.

An *upscaler* maps an LR uint8 image to an SR uint8 image of the HR's shape. The
baseline is MATLAB bicubic (``bicubic_upscaler``); a network becomes one with
``model_upscaler``: LR uint8 -> float [0, 1] -> model -> clamp -> x255 -> round to
uint8, as the benchmark scripts quantise their outputs before scoring.

Large images are run in overlapping tiles so memory stays bounded. The family's
squeeze-excite layers pool over the *whole* image, so naive tiling would change the
result; ``forward_tiled`` instead measures each SE layer's image-wide mean in an
extra sweep over the tiles, then runs every tile with those means. The output then
equals the untiled one up to float rounding.
"""

from __future__ import annotations

import contextlib
import functools
import os
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn

from searchsr.blocks import BicubicUpsample, SqueezeExcite
from searchsr.data import ImageSet, to_tensor
from searchsr.defaults import DEFAULT_TILE  # LR pixels per tile side: LITE's tail then peaks around 1 GB
from searchsr.errors import UsageError
from searchsr.files import atomic_output, check_writable_dir
from searchsr.imresize import imresize_uint8
from searchsr.metrics import psnr_y, ssim_y

_SSIM_WINDOW = 11

Upscaler = Callable[[np.ndarray], np.ndarray]


@dataclass(frozen=True)
class ImageScore:
    name: str
    psnr_y: float
    ssim_y: float


@dataclass(frozen=True)
class EvalResult:
    """Means over the set (what tables report) and the per-image scores behind them."""

    psnr_y: float
    ssim_y: float
    images: int
    per_image: tuple[ImageScore, ...]
    seconds: float

    def to_dict(self) -> dict:
        return asdict(self)


def bicubic_upscaler(scale: int) -> Upscaler:
    """The baseline every SR table shows: MATLAB ``imresize(lr, scale, 'bicubic')``."""
    return functools.partial(imresize_uint8, scale=scale)


MIN_TILE = 16  # LR pixels: a smaller tile is mostly the network's context border


def check_tile(tile: int) -> int:
    """``tile`` if it is a usable LR tile side, else a one-line UsageError."""
    if tile < MIN_TILE:
        raise UsageError(f"--tile must be at least {MIN_TILE} LR pixels, got {tile}")
    return tile


def model_upscaler(model: nn.Module, tile: int = DEFAULT_TILE) -> Upscaler:
    """A network as an upscaler, run in eval mode on the device it is on."""
    return functools.partial(upscale, model, tile=check_tile(tile))


def upscale(model: nn.Module, lr: np.ndarray, tile: int = DEFAULT_TILE) -> np.ndarray:
    """SR uint8 for LR uint8. A gray input is fed as three equal channels and the
    output's channels are averaged back to gray, so it is scored like the gray HR."""
    x = to_tensor(lr)[None].to(next(model.parameters()).device)
    with _eval_mode(model), torch.inference_mode():
        y = forward_tiled(model, x, tile)[0].clamp(0, 1)
    y = y.mean(0) if lr.ndim == 2 else y.permute(1, 2, 0)
    return (y * 255 + 0.5).floor().to(torch.uint8).cpu().numpy()  # MATLAB rounding: half away from zero


@contextlib.contextmanager
def _eval_mode(model: nn.Module) -> Iterator[None]:
    """Evaluation may happen mid-training: restore the caller's mode afterwards."""
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


def context_radius(model: nn.Module) -> int:
    """LR pixels either side of a tile that its outputs can depend on (SE means fixed).

    Every conv's reach is counted as if at LR resolution, an over-estimate for the
    convs after pixel shuffle, plus the bicubic skip's two taps; summing parallel
    branches only over-estimates further. Over-estimating costs time, never accuracy.
    """
    radius = 0
    for module in model.modules():
        if isinstance(module, (nn.Conv2d, nn.ConvTranspose2d)):  # a deconv's reach in LR pixels is smaller
            radius += max((k // 2) * d for k, d in zip(module.kernel_size, module.dilation))
        elif isinstance(module, BicubicUpsample):
            radius += 2
    return radius


class _Stop(Exception):
    """Ends a tile's forward pass once the SE layer being measured has seen it."""


@dataclass(frozen=True)
class Tile:
    """A core region [y0, y1) x [x0, x1) and the context window [wy0, wy1) x [wx0, wx1) fed to the model."""

    y0: int
    y1: int
    x0: int
    x1: int
    wy0: int
    wy1: int
    wx0: int
    wx1: int

    def window(self, x: torch.Tensor) -> torch.Tensor:
        return x[..., self.wy0 : self.wy1, self.wx0 : self.wx1]

    def core(self, s: int = 1) -> tuple[slice, slice]:
        """The core inside the window output, for an output ``s`` times the input."""
        dy, dx = self.y0 - self.wy0, self.x0 - self.wx0
        return slice(s * dy, s * (dy + self.y1 - self.y0)), slice(s * dx, s * (dx + self.x1 - self.x0))

    def target(self, s: int) -> tuple[slice, slice]:
        return slice(s * self.y0, s * self.y1), slice(s * self.x0, s * self.x1)


def tiles(h: int, w: int, tile: int, halo: int) -> list[Tile]:
    """An h x w image cut into cores of at most ``tile`` x ``tile``, row by row, each with ``halo``
    pixels of context on every side (less at the image border)."""
    return [Tile(y0, min(y0 + tile, h), x0, min(x0 + tile, w),
                  max(0, y0 - halo), min(h, y0 + tile + halo), max(0, x0 - halo), min(w, x0 + tile + halo))
            for y0 in range(0, h, tile) for x0 in range(0, w, tile)]


def forward_tiled(model: nn.Module, x: torch.Tensor, tile: int) -> torch.Tensor:
    """``model(x)`` computed over tiles of at most ``tile`` x ``tile`` LR pixels plus context.

    One sweep per SE layer finds its image-wide mean (tiles stop at the first SE layer
    whose mean is still unknown and add their core's sum); a last sweep, with every
    mean known, assembles the output.
    """
    h, w = x.shape[-2:]
    if h <= tile and w <= tile:
        return model(x)
    grid = tiles(h, w, tile, context_radius(model))
    means: dict[nn.Module, torch.Tensor] = {}
    sums: dict[nn.Module, torch.Tensor] = {}
    current = grid[0]

    def hook(se: nn.Module, args: tuple[torch.Tensor], _output: torch.Tensor) -> torch.Tensor:
        (inp,) = args
        if inp.shape[-2:] != current.window(x).shape[-2:]:
            raise UsageError("tiled inference needs squeeze-excite layers at the input resolution")
        if se in means:
            return inp * se.excite(means[se])
        ys, xs = current.core()
        core_sum = inp[..., ys, xs].sum((2, 3), keepdim=True, dtype=torch.float64)
        sums[se] = sums[se] + core_sum if se in sums else core_sum
        raise _Stop

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, SqueezeExcite)]
    try:
        while True:
            sums.clear()
            out = None
            for current in grid:
                try:
                    y = model(current.window(x))
                except _Stop:
                    continue
                s = y.shape[-1] // current.window(x).shape[-1]
                if out is None:
                    out = y.new_empty(*y.shape[:2], s * h, s * w)
                out[(..., *current.target(s))] = y[(..., *current.core(s))]
            if not sums:
                return out
            ((se, total),) = sums.items()
            means[se] = (total / (h * w)).to(x.dtype)
    finally:
        for handle in handles:
            handle.remove()


def check_scorable(images: ImageSet) -> None:
    """Fail before any work if an image is too small for crop border + SSIM window."""
    for pair in images.images:
        h, w = pair.hr.shape[:2]
        if min(h, w) - 2 * images.scale < _SSIM_WINDOW:
            raise UsageError(f"{pair.name}: HR {h}x{w} is too small to score at x{images.scale} "
                             f"(needs {_SSIM_WINDOW + 2 * images.scale} px after the crop border)")


def output_targets(sources: Sequence[Path], out_dir: Path, inputs: Sequence[Path] | None = None) -> list[Path]:
    """``out_dir/<stem>.png`` for each of ``sources``, the one naming rule of ``eval --save-dir`` and ``upscale``.

    A one-line UsageError, before anything is written, when two sources would share an output or an output
    would replace one of ``inputs`` (default: ``sources``): outputs are compared with the inputs by resolved
    path (a symlinked or relative folder is the same folder) and, where they exist, by file identity (a hard
    or symbolic link to an input).
    """
    inputs = list(sources if inputs is None else inputs)
    resolved = {p.resolve() for p in inputs}
    identities = {_identity(p) for p in inputs} - {None}
    targets: list[Path] = []
    for source in sources:
        target = out_dir / f"{source.stem}.png"
        if target in targets:
            raise UsageError(f"{source}: output {target} would overwrite the output of another input")
        if target.resolve() in resolved or _identity(target) in identities:
            raise UsageError(f"{source}: output {target} would overwrite an input")
        targets.append(target)
    return targets


def _identity(path: Path) -> tuple[int, int] | None:
    """(device, inode) of the file ``path`` names (links followed), None if there is none."""
    try:
        st = os.stat(path)
    except (OSError, ValueError):
        return None
    return st.st_dev, st.st_ino


def evaluate(upscaler: Upscaler, images: ImageSet, save_dir: Path | None = None) -> EvalResult:
    """Mean PSNR-Y / SSIM-Y (crop border = scale); ``save_dir`` receives each output as ``<stem>.png``,
    refused up front when an output would replace one of the HR files or another output."""
    check_scorable(images)
    targets: list[Path | None] = [None] * len(images.images)
    if save_dir is not None:
        check_writable_dir(save_dir)
        targets = list(output_targets([Path(pair.path or pair.name) for pair in images.images], save_dir,
                                      [Path(pair.path) for pair in images.images if pair.path]))
        save_dir.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    scores = []
    for pair, target in zip(images.images, targets):
        sr = upscaler(pair.lr)
        if sr.shape != pair.hr.shape:
            raise UsageError(f"{pair.name}: output {sr.shape} does not match HR {pair.hr.shape} "
                             f"(is the network's scale x{images.scale}?)")
        scores.append(ImageScore(pair.name, psnr_y(sr, pair.hr, images.scale), ssim_y(sr, pair.hr, images.scale)))
        if target is not None:
            with atomic_output(target) as f:
                Image.fromarray(sr).save(f, format="PNG")
    return EvalResult(psnr_y=float(np.mean([s.psnr_y for s in scores])),
                      ssim_y=float(np.mean([s.ssim_y for s in scores])),
                      images=len(scores), per_image=tuple(scores), seconds=time.perf_counter() - start)
