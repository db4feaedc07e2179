"""``searchsr upscale``: super-resolve user images with an exported model folder, in bounded memory.

Two backends read the folder ``searchsr export`` wrote:

* ``onnx`` (default): ONNX Runtime on ``model.onnx``. An image larger than one tile runs in
  overlapping tiles through the exporter's two helper graphs: one sweep over the tiles per
  squeeze-excite layer measures that layer's image-wide mean (``model_se_stats.onnx``), then a
  last sweep runs every tile with all means known (``model_tiles.onnx``). This is
  ``searchsr.evaluate.forward_tiled``'s algorithm, so the result equals untiled inference up
  to float rounding, and each tile's output is quantised straight into the uint8 result.
* ``torch``: ``arch.yaml`` + ``weights.safetensors`` (never pickle), BN folded, channels-last,
  run by ``searchsr.evaluate.upscale`` (``forward_tiled``).

Tiles are ``tile`` x ``tile`` LR pixels plus the network's context on every side, so memory
depends on the tile, not the image (besides the image itself and the output). Grayscale
inputs are fed as three equal channels and written as grayscale (the mean of the output
channels, as ``searchsr eval`` scores them); an alpha channel is upscaled with MATLAB bicubic
and kept. Outputs are PNGs named after the inputs.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from searchsr.errors import UsageError
from searchsr.evaluate import DEFAULT_TILE, _tiles
from searchsr.export import (writable_ancestor, ARCH_FILE, INPUT_NAME, META_PREFIX, MIN_SIDE, ONNX_FILE, OUTPUT_NAME, STATS_FILE,
                             TILES_FILE, WEIGHTS_FILE, ort_session)

BACKENDS = ("onnx", "torch")
MIN_TILE = 16


class OnnxModel:
    """An exported folder's ONNX graphs, run by ONNX Runtime on the CPU."""

    def __init__(self, folder: str | Path, threads: int | None = None) -> None:
        folder = Path(folder)
        if not (folder / ONNX_FILE).is_file():
            raise UsageError(f"{folder}: no {ONNX_FILE} (export with --format including onnx, or use --backend torch)")
        self.full = ort_session(folder / ONNX_FILE, threads)
        meta = self.full.get_modelmeta().custom_metadata_map
        try:
            self.scale = int(meta[META_PREFIX + "scale"])
            self.radius = int(meta[META_PREFIX + "context_radius"])
            self.n_se = int(meta[META_PREFIX + "se_layers"])
            channels = json.loads(meta[META_PREFIX + "se_channels"])
        except (KeyError, ValueError) as err:
            raise UsageError(f"{folder / ONNX_FILE}: not written by searchsr export (metadata {err} missing)") from None
        self.channels = channels[0] if channels else 0
        self.tiles_session = self.stats_session = None
        if self.n_se:
            missing = [f for f in (TILES_FILE, STATS_FILE) if not (folder / f).is_file()]
            if missing:
                raise UsageError(f"{folder}: no {' or '.join(missing)}, which exact tiled inference of a network "
                                 "with squeeze-excite needs (re-export the model, or use --backend torch)")
            self.tiles_session = ort_session(folder / TILES_FILE, threads)
            self.stats_session = ort_session(folder / STATS_FILE, threads)
            # With one SE layer the exporter drops se_means from the stats graph: no earlier mean is used.
            self.stats_inputs = {i.name for i in self.stats_session.get_inputs()}

    def tiles(self, x: np.ndarray, tile: int) -> Iterator[tuple[tuple[slice, slice], np.ndarray]]:
        """For a float32 1x3xHxW input: (output slices, output block 1x3xhxw) covering the output once."""
        if x.ndim != 4 or x.shape[:2] != (1, 3) or x.dtype != np.float32:
            raise UsageError(f"expected a float32 1x3xHxW input, got {x.dtype} {x.shape}")
        h, w = x.shape[-2:]
        s = self.scale
        if h <= tile and w <= tile:
            yield (slice(0, s * h), slice(0, s * w)), self.full.run([OUTPUT_NAME], {INPUT_NAME: x})[0]
            return
        tiles = _tiles(h, w, tile, self.radius)
        if not self.n_se:
            for t in tiles:
                y = self.full.run([OUTPUT_NAME], {INPUT_NAME: np.ascontiguousarray(t.window(x))})[0]
                yield t.target(s), y[(..., *t.core(s))]
            return
        means = self.se_means(x, tiles)
        for t in tiles:
            window = np.ascontiguousarray(t.window(x))
            y = self.tiles_session.run([OUTPUT_NAME], {INPUT_NAME: window, "se_means": means})[0]
            yield t.target(s), y[(..., *t.core(s))]

    def se_means(self, x: np.ndarray, tiles: list) -> np.ndarray:
        """Image-wide mean of every SE layer's input (one row per layer), one sweep over the tiles per
        layer: layer k's input depends on the gates, hence the means, of layers 0..k-1."""
        h, w = x.shape[-2:]
        means = np.zeros((self.n_se, self.channels), np.float32)
        for k in range(self.n_se):
            total = np.zeros(self.channels, np.float64)
            for t in tiles:
                window = np.ascontiguousarray(t.window(x))
                mask = np.zeros((1, 1, *window.shape[-2:]), np.float32)
                mask[(..., *t.core())] = 1  # each pixel counted once, by the tile that owns it
                feeds = {INPUT_NAME: window, "se_means": means, "core_mask": mask}
                sums = self.stats_session.run(["se_sums"], {k: v for k, v in feeds.items()
                                                            if k in self.stats_inputs})[0]
                total += sums[k]
            means[k] = (total / (h * w)).astype(np.float32)
        return means

    def forward(self, x: np.ndarray, tile: int) -> np.ndarray:
        """The whole float32 output (1x3x(sH)x(sW)), assembled from tiles."""
        out = np.empty((1, 3, self.scale * x.shape[2], self.scale * x.shape[3]), np.float32)
        for target, block in self.tiles(x, tile):
            out[(..., *target)] = block
        return out

    def upscale(self, img: np.ndarray, tile: int) -> np.ndarray:
        """uint8 HxW[x3] -> uint8 (sH)x(sW)[x3], quantised tile by tile (no float copy of the output)."""
        from searchsr.data import to_tensor

        x = to_tensor(img)[None].numpy()
        h, w = img.shape[:2]
        out = np.empty((self.scale * h, self.scale * w, *img.shape[2:]), np.uint8)
        for (ys, xs), block in self.tiles(x, tile):
            block = np.clip(block[0], 0, 1)
            block = block.mean(0) if img.ndim == 2 else block.transpose(1, 2, 0)
            out[ys, xs] = np.floor(block * np.float32(255) + np.float32(0.5))  # MATLAB rounding, as in evaluate
        return out


class TorchModel:
    """An exported folder's ``arch.yaml`` + ``weights.safetensors`` as a BN-fused PyTorch network."""

    def __init__(self, folder: str | Path) -> None:
        import torch

        from searchsr.config import load_arch
        from searchsr.export import load_weights
        from searchsr.fuse import fuse_bn

        folder = Path(folder)
        missing = [f for f in (ARCH_FILE, WEIGHTS_FILE) if not (folder / f).is_file()]
        if missing:
            raise UsageError(f"{folder}: no {' or '.join(missing)} (export with --format including yaml,safetensors, "
                             "or use --backend onnx)")
        cfg = load_arch(str(folder / ARCH_FILE))
        cfg, model = load_weights(folder / WEIGHTS_FILE, cfg)
        self.scale = cfg.scale
        self.model = fuse_bn(model).to(memory_format=torch.channels_last)

    def upscale(self, img: np.ndarray, tile: int) -> np.ndarray:
        from searchsr.evaluate import upscale

        return upscale(self.model, img, tile)


def load_model(folder: str | Path, backend: str = "onnx", threads: int | None = None) -> OnnxModel | TorchModel:
    """The exported model in ``folder`` for ``backend`` (onnx or torch); bad folders are one-line errors."""
    folder = Path(folder)
    if not folder.is_dir():
        raise UsageError(f"{folder}: no such model folder")
    if backend == "onnx":
        return OnnxModel(folder, threads)
    if backend == "torch":
        return TorchModel(folder)
    raise UsageError(f"backend must be one of {', '.join(BACKENDS)}, got {backend!r}")


def read_input(path: str | Path) -> tuple[np.ndarray, np.ndarray | None]:
    """uint8 HxW (gray) or HxWx3, and the alpha channel (HxW) when the image has one."""
    from searchsr.data import read_image

    path = Path(path)
    img = read_image(path)
    alpha = None
    try:
        with Image.open(path) as im:
            if im.mode in ("RGBA", "RGBa", "LA", "La", "PA") or "transparency" in im.info:
                alpha = np.array(im.convert("RGBA").getchannel("A"))
    except (OSError, ValueError) as err:
        raise UsageError(f"{path}: cannot read image ({err})") from None
    return img, alpha


def _probe(path: Path) -> tuple[int, int]:
    """Width and height of a fully decoded image (a header alone does not show truncated data), so that
    a broken input fails before any output is written; anything unreadable is a ValueError."""
    from searchsr.data import read_image

    if not path.exists():
        raise UsageError(f"{path}: no such file")
    if not path.is_file():
        raise UsageError(f"{path}: not a file")
    h, w = read_image(path).shape[:2]
    return w, h


def _writable_dir(out_dir: Path) -> None:
    if out_dir.exists() and not out_dir.is_dir():
        raise UsageError(f"{out_dir}: exists and is not a folder")
    writable_ancestor(out_dir, out_dir)


def _save_png(img: np.ndarray, path: Path) -> None:
    """Write atomically: a complete PNG or nothing under ``path``."""
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=".tmp", dir=path.parent)
    except OSError as err:
        raise UsageError(f"{path}: cannot write ({err.strerror or err})") from None
    try:
        with os.fdopen(fd, "wb") as f:
            Image.fromarray(img).save(f, format="PNG")
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except OSError as err:
        Path(tmp).unlink(missing_ok=True)
        raise UsageError(f"{path}: cannot write ({err.strerror or err})") from None
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@dataclass(frozen=True)
class UpscaleResult:
    input: str
    output: str
    lr_size: tuple[int, int]  # H, W
    sr_size: tuple[int, int]
    mode: str  # L, LA, RGB or RGBA
    seconds: float

    def to_dict(self) -> dict:
        return asdict(self)


def upscale_image(model: OnnxModel | TorchModel, img: np.ndarray, alpha: np.ndarray | None,
                  tile: int) -> np.ndarray:
    """SR of one uint8 image (HxW or HxWx3) with its optional alpha (bicubic-upscaled)."""
    from searchsr.imresize import imresize_uint8

    sr = model.upscale(img, tile)
    if alpha is None:
        return sr
    alpha_sr = imresize_uint8(alpha, model.scale)
    return np.dstack([sr, alpha_sr]) if sr.ndim == 3 else np.stack([sr, alpha_sr], axis=-1)


def upscale_files(model_dir: str | Path, inputs: Sequence[str | Path], out_dir: str | Path,
                  tile: int = DEFAULT_TILE, backend: str = "onnx",
                  on_done: Callable[[UpscaleResult], None] | None = None) -> list[UpscaleResult]:
    """Upscale every input into ``out_dir/<stem>.png``. Everything (model folder, inputs, output
    folder, tile) is checked before the first file is written; each PNG is written atomically."""
    if tile < MIN_TILE:
        raise UsageError(f"--tile must be at least {MIN_TILE} LR pixels, got {tile}")
    if not inputs:
        raise UsageError("no input images")
    out_dir = Path(out_dir)
    paths = [Path(p) for p in inputs]
    targets: dict[Path, Path] = {}
    for path in paths:
        w, h = _probe(path)
        if min(h, w) < MIN_SIDE:
            raise UsageError(f"{path}: {h}x{w} is too small (at least {MIN_SIDE}x{MIN_SIDE} pixels)")
        target = out_dir / f"{path.stem}.png"
        if target in targets.values():
            raise UsageError(f"{path}: output {target} would overwrite the output of another input")
        if target.resolve() in {p.resolve() for p in paths}:
            raise UsageError(f"{path}: output {target} would overwrite an input")
        targets[path] = target
    _writable_dir(out_dir)
    model = load_model(model_dir, backend)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise UsageError(f"{out_dir}: cannot create the output folder ({err.strerror or err})") from None
    results = []
    for path, target in targets.items():
        start = time.perf_counter()
        img, alpha = read_input(path)
        sr = upscale_image(model, img, alpha, tile)
        _save_png(sr, target)
        mode = {2: "L", 3: "RGB"}[img.ndim] + ("A" if alpha is not None else "")
        result = UpscaleResult(str(path), str(target), img.shape[:2], sr.shape[:2], mode,
                               time.perf_counter() - start)
        results.append(result)
        if on_done is not None:
            on_done(result)
    return results
