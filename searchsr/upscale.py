"""``searchsr upscale``: super-resolve user images with an exported model folder, in bounded memory.

Two backends (``searchsr.bundle``) read the folder ``searchsr export`` wrote:

* ``onnx`` (default): ONNX Runtime on ``model.onnx``. An image larger than one tile runs in
  overlapping tiles through the exporter's two helper graphs: one sweep over the tiles per
  squeeze-excite layer measures that layer's image-wide mean (``model_se_stats.onnx``), then a
  last sweep runs every tile with all means known (``model_tiles.onnx``). This is
  ``searchsr.evaluate.forward_tiled``'s algorithm, so the result equals untiled inference up
  to float rounding, and each tile's output is quantised straight into the uint8 result.
* ``torch``: ``arch.yaml`` + ``weights.safetensors`` (never pickle), BN folded, channels-last,
  run by ``searchsr.evaluate.upscale`` (``forward_tiled``).

``int8`` (``--int8``) runs ``model_int8.onnx`` instead (``export --int8``, ``searchsr.quantize``), tiled
the same way through its INT8 helper graphs.

Tiles are ``tile`` x ``tile`` LR pixels plus the network's context on every side, so memory
depends on the tile, not the image (besides the image itself and the output). Grayscale
inputs are fed as three equal channels and written as grayscale (the mean of the output
channels, as ``searchsr eval`` scores them); an alpha channel is upscaled with MATLAB bicubic
and kept. Inputs are read as viewers show them (``searchsr.data.read_image``: EXIF orientation
applied, 16-bit samples reduced to their high byte). Outputs are PNGs named after the inputs; none
may replace an input or another output (``searchsr.evaluate.output_targets``).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from searchsr.bundle import MIN_SIDE, OnnxModel, TorchModel, load_model
from searchsr.data import open_oriented, read_image, to_uint8
from searchsr.defaults import DEFAULT_TILE
from searchsr.errors import UsageError
from searchsr.evaluate import check_tile, output_targets
from searchsr.files import atomic_output, check_writable_dir
from searchsr.imresize import imresize_uint8

def read_input(path: str | Path) -> tuple[np.ndarray, np.ndarray | None]:
    """uint8 HxW (gray) or HxWx3, and the alpha channel (HxW) when the image has one, both turned
    as the image is shown (EXIF orientation applied, ``searchsr.data.open_oriented``)."""
    path = Path(path)
    im = open_oriented(path)
    try:
        img = to_uint8(im)
        alpha = None
        if im.mode in ("RGBA", "RGBa", "LA", "La", "PA") or "transparency" in im.info:
            alpha = np.array(im.convert("RGBA").getchannel("A"))
    except (OSError, ValueError) as err:
        raise UsageError(f"{path}: cannot read image ({err})") from None
    return img, alpha


def _probe(path: Path) -> tuple[int, int]:
    """Width and height of a fully decoded image (a header alone does not show truncated data), so that
    a broken input fails before any output is written; anything unreadable is a UsageError."""
    if not path.exists():
        raise UsageError(f"{path}: no such file")
    if not path.is_file():
        raise UsageError(f"{path}: not a file")
    h, w = read_image(path).shape[:2]
    return w, h


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
    sr = model.upscale(img, tile)
    if alpha is None:
        return sr
    alpha_sr = imresize_uint8(alpha, model.scale)
    return np.dstack([sr, alpha_sr]) if sr.ndim == 3 else np.stack([sr, alpha_sr], axis=-1)


def upscale_files(model_dir: str | Path, inputs: Sequence[str | Path], out_dir: str | Path,
                  tile: int = DEFAULT_TILE, backend: str = "onnx",
                  on_done: Callable[[UpscaleResult], None] | None = None, int8: bool = False) -> list[UpscaleResult]:
    """Upscale every input into ``out_dir/<stem>.png``. Everything (model folder, inputs, output
    folder, tile) is checked before the first file is written; each PNG is written atomically."""
    check_tile(tile)
    if not inputs:
        raise UsageError("no input images")
    out_dir = Path(out_dir)
    paths = [Path(p) for p in inputs]
    for path in paths:
        w, h = _probe(path)
        if min(h, w) < MIN_SIDE:
            raise UsageError(f"{path}: {h}x{w} is too small (at least {MIN_SIDE}x{MIN_SIDE} pixels)")
    targets = dict(zip(paths, output_targets(paths, out_dir)))
    check_writable_dir(out_dir)
    model = load_model(model_dir, backend, int8=int8)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise UsageError(f"{out_dir}: cannot create the output folder ({err.strerror or err})") from None
    results = []
    for path, target in targets.items():
        start = time.perf_counter()
        img, alpha = read_input(path)
        sr = upscale_image(model, img, alpha, tile)
        with atomic_output(target) as f:  # a complete PNG or nothing under target
            Image.fromarray(sr).save(f, format="PNG")
        mode = {2: "L", 3: "RGB"}[img.ndim] + ("A" if alpha is not None else "")
        result = UpscaleResult(str(path), str(target), img.shape[:2], sr.shape[:2], mode,
                               time.perf_counter() - start)
        results.append(result)
        if on_done is not None:
            on_done(result)
    return results
