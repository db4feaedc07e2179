"""The exported model folder: its files, the ONNX interface, and the readers that run it.

``searchsr export`` (``searchsr.export``) writes this folder and ``searchsr upscale``
(``searchsr.upscale``) reads it; this module is the contract between them (and with apps):

* ``arch.yaml``            the ``ArchConfig`` (``searchsr.config.load_arch`` reads it back).
* ``weights.safetensors``  the training-form state dict (BN included), metadata ``arch`` = the
  config as JSON: the same file a training run writes, loadable with ``load_weights``.
* ``model.onnx``           the public contract for apps: the whole BN-fused network, bicubic skip
  included. Input ``lr``: float32 NCHW RGB in [0, 1], shape (batch, 3, height, width) with
  batch, height and width dynamic (at least ``MIN_SIDE`` x ``MIN_SIDE``). Output ``sr``: float32
  NCHW RGB, shape (batch, 3, scale*height, scale*width), clamped to [0, 1] (the clamp is part of
  the graph, as the evaluation pipeline clamps before quantising). Opset ``OPSET``. Its
  ``metadata_props`` (``GraphMetadata``) give the scale, context radius and SE layout.
* ``model_tiles.onnx`` and ``model_se_stats.onnx`` (networks with squeeze-excite only): two
  helper graphs that make tiled inference exact. SE layers pool over the whole image, so a
  tile alone cannot know its gates; ``model_se_stats`` returns, for a tile, the float64 sum of
  every SE layer's input over the tile's core (``core_mask``, given the means of the earlier SE
  layers), and ``model_tiles`` runs a tile with all image-wide means given (``se_means``, one
  row per SE layer). This is ``searchsr.evaluate.forward_tiled``'s algorithm, as graphs.
* ``model_int8.onnx`` (``export --int8``): ``model.onnx`` statically quantized to INT8 (QDQ), same
  interface (float32 in and out), made by ``searchsr.quantize``; with squeeze-excite also
  ``model_int8_tiles.onnx`` and ``model_int8_se_stats.onnx``, the helpers quantized the same way. Its
  metadata adds ``precision`` = ``int8`` and the ONNX Runtime settings it was tuned for (``INT8_SESSION``).
* ``model.ts``             TorchScript (traced, BN-fused, same clamp), any input size.
* ``model_card.json`` / ``model_card.md``  what the model is and where it came from.

Readers: ``OnnxModel`` (ONNX Runtime, tiled through the helper graphs; ``int8=True`` runs the INT8 files) and ``TorchModel``
(``arch.yaml`` + ``weights.safetensors``, BN folded, ``searchsr.evaluate.upscale``). Weights
are only ever read with safetensors (never pickle); ``load_weights`` checks keys, shapes,
dtypes and finiteness against the architecture and reports any problem in one line.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors import safe_open

from searchsr.arch import MobileSR, build_model
from searchsr.config import ArchConfig, load_arch
from searchsr.data import to_tensor
from searchsr.errors import UsageError, first_line
from searchsr.evaluate import Tile, tiles, upscale
from searchsr.fuse import fuse_bn
from searchsr.runs import WEIGHTS_FILE  # the folder's weights are a training run's weights file

ARCH_FILE = "arch.yaml"
ONNX_FILE = "model.onnx"
TILES_FILE = "model_tiles.onnx"
STATS_FILE = "model_se_stats.onnx"
TS_FILE = "model.ts"
INT8_FILE = "model_int8.onnx"
INT8_TILES_FILE = "model_int8_tiles.onnx"
INT8_STATS_FILE = "model_int8_se_stats.onnx"
FP32_GRAPHS = (ONNX_FILE, TILES_FILE, STATS_FILE)  # the whole network, then its two tiling helpers
INT8_GRAPHS = (INT8_FILE, INT8_TILES_FILE, INT8_STATS_FILE)
CARD_JSON = "model_card.json"
CARD_MD = "model_card.md"

INPUT_NAME, OUTPUT_NAME = "lr", "sr"
SE_MEANS, CORE_MASK, SE_SUMS = "se_means", "core_mask", "se_sums"  # the helper graphs' extra tensors
META_PREFIX = "searchsr."  # ONNX metadata_props keys
OPSET = 17
MIN_SIDE = 2  # the bicubic skip's symmetric border needs 2 pixels
BACKENDS = ("onnx", "torch")
# metadata of an INT8 graph: its precision, and the session it was tuned for (JSON: graph optimization
# level and ONNX Runtime optimizers to leave out), which ``ort_session(..., int8=True)`` applies
PRECISION_KEY, INT8_SESSION = META_PREFIX + "precision", META_PREFIX + "ort_session"


@dataclass(frozen=True)
class GraphMetadata:
    """What every exported ONNX graph records in ``metadata_props`` (keys prefixed ``META_PREFIX``)."""

    scale: int
    context_radius: int  # LR pixels of context a tile needs on every side
    se_channels: tuple[int, ...]  # one per squeeze-excite layer, in module order
    arch: str = ""  # the ArchConfig as JSON

    @property
    def interface(self) -> str:
        return (f"{INPUT_NAME}: float32 NCHW RGB in [0,1], (batch, 3, height, width) -> {OUTPUT_NAME}: "
                f"float32 NCHW RGB in [0,1], (batch, 3, {self.scale}*height, {self.scale}*width)")

    def props(self) -> dict[str, str]:
        props = {"arch": self.arch, "scale": str(self.scale), "opset": str(OPSET),
                 "context_radius": str(self.context_radius), "min_side": str(MIN_SIDE),
                 "interface": self.interface, "se_layers": str(len(self.se_channels)),
                 "se_channels": json.dumps(list(self.se_channels))}
        return {META_PREFIX + key: value for key, value in props.items()}

    @classmethod
    def parse(cls, props: Mapping[str, str], path: Path) -> GraphMetadata:
        try:
            return cls(int(props[META_PREFIX + "scale"]), int(props[META_PREFIX + "context_radius"]),
                       tuple(int(c) for c in json.loads(props[META_PREFIX + "se_channels"])),
                       props.get(META_PREFIX + "arch", ""))
        except (KeyError, ValueError, TypeError) as err:
            raise UsageError(f"{path}: not written by searchsr export (metadata {err} missing)") from None


def load_weights(path: str | Path, cfg: ArchConfig | None = None) -> tuple[ArchConfig, MobileSR]:
    """Read a ``weights.safetensors`` (training run or export) into a fresh network, in eval mode.

    ``cfg`` defaults to the architecture stored in the file's metadata; when both exist they
    must agree. Never unpickles. Truncated or foreign files, missing/unexpected tensors, wrong
    shapes or dtypes and non-finite values raise a one-line ``UsageError`` naming the problem.
    """
    path = Path(path)
    if not path.is_file():
        raise UsageError(f"{path}: no such weights file")
    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
            tensors = {key: f.get_tensor(key) for key in f.keys()}
    except Exception as err:  # SafetensorError (truncated, not safetensors), OSError, ...
        raise UsageError(f"{path}: not a valid safetensors file, truncated or corrupt "
                         f"({first_line(err)})") from None
    stored = None
    if "arch" in metadata:
        try:
            stored = ArchConfig.from_json(metadata["arch"])
        except (ValueError, TypeError) as err:
            raise UsageError(f"{path}: metadata 'arch' is not a valid architecture ({first_line(err)})") from None
    if cfg is None:
        if stored is None:
            raise UsageError(f"{path}: no architecture given and none in the file's metadata")
        cfg = stored
    elif stored is not None and stored != cfg:
        raise UsageError(f"{path}: weights are for {stored.to_json()}, not {cfg.to_json()}")
    model = build_model(cfg)
    expected = model.state_dict()
    missing = [k for k in expected if k not in tensors]
    unexpected = [k for k in tensors if k not in expected]
    if missing or unexpected:
        parts = []
        for label, keys in (("missing", missing), ("unexpected", unexpected)):
            if keys:
                more = f" (+{len(keys) - 1} more)" if len(keys) > 1 else ""
                parts.append(f"{label} tensor {keys[0]!r}{more}")
        raise UsageError(f"{path}: weights do not match the architecture: {', '.join(parts)}")
    for key, want in expected.items():
        got = tensors[key]
        if tuple(got.shape) != tuple(want.shape):
            raise UsageError(f"{path}: tensor {key!r} has shape {tuple(got.shape)}, "
                             f"the architecture needs {tuple(want.shape)}")
        if got.dtype.is_floating_point != want.dtype.is_floating_point or got.dtype.is_complex:
            raise UsageError(f"{path}: tensor {key!r} has dtype {got.dtype}, expected {want.dtype}")
        if got.dtype.is_floating_point and not torch.isfinite(got).all():
            raise UsageError(f"{path}: tensor {key!r} contains NaN or infinite values")
    model.load_state_dict(tensors)
    return cfg, model.eval()


def graph_props(path: str | Path | bytes) -> dict[str, str]:
    """The ``metadata_props`` of an ONNX file (or serialized graph); an unreadable one is a one-line UsageError."""
    import onnx
    from google.protobuf.message import DecodeError

    try:
        proto = onnx.load_from_string(path) if isinstance(path, bytes) else onnx.load(str(path))
    except (DecodeError, OSError, ValueError) as err:
        where = "the ONNX graph" if isinstance(path, bytes) else str(path)
        raise UsageError(f"{where}: cannot load ONNX model ({first_line(err)})") from None
    return {p.key: p.value for p in proto.metadata_props}


def ort_session(path: str | Path | bytes, threads: int | None = None, int8: bool | None = False):
    """An ONNX Runtime CPU session of a file (or a serialized graph); a missing or corrupt file is a
    one-line ``UsageError``. What ``upscale`` runs and the ``onnxruntime`` latency backend times.

    ``int8=True`` applies the session settings an INT8 graph records (``INT8_SESSION``); ``None``
    does so when the graph's metadata says it is INT8."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    # Measured on a 12-megapixel upscale (XLITE, 256-px tiles): ORT_ENABLE_ALL's NCHWc layout
    # (3 and 8 channels padded to the SIMD block) and per-shape memory patterns raise the peak
    # by ~450 MB with no speed gain over EXTENDED with the arena kept and patterns off.
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    options.enable_mem_pattern = False
    disabled: list[str] = []
    if int8 is not False:
        props = graph_props(path)
        if int8 or props.get(PRECISION_KEY) == "int8":
            tuned = json.loads(props.get(INT8_SESSION) or "{}")
            if tuned.get("graph_optimization_level") == "all":  # INT8 convolutions run in NHWC only at this level
                options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
            disabled = list(tuned.get("disabled_optimizers", []))
    if threads:
        options.intra_op_num_threads = threads
    try:
        return ort.InferenceSession(path if isinstance(path, bytes) else str(path), options,
                                    providers=["CPUExecutionProvider"], disabled_optimizers=disabled or None)
    except Exception as err:  # onnxruntime raises its own pybind exception types
        where = "the ONNX graph" if isinstance(path, bytes) else str(path)
        raise UsageError(f"{where}: cannot load ONNX model ({first_line(err)})") from None


class OnnxModel:
    """An exported folder's ONNX graphs, run by ONNX Runtime on the CPU.

    An input larger than one tile runs in overlapping tiles: one sweep over the tiles per
    squeeze-excite layer measures that layer's image-wide mean (``model_se_stats.onnx``), then
    a last sweep runs every tile with all means known (``model_tiles.onnx``). ``int8=True`` runs
    the INT8 graphs (``model_int8*.onnx``) the same way.
    """

    def __init__(self, folder: str | Path, threads: int | None = None, int8: bool = False) -> None:
        folder = Path(folder)
        full, tiles_file, stats_file = INT8_GRAPHS if int8 else FP32_GRAPHS
        if not (folder / full).is_file():
            hint = ("re-export with `searchsr export --int8`" if int8
                    else "export with --format including onnx, or use --backend torch")
            raise UsageError(f"{folder}: no {full} ({hint})")
        self._open(ort_session(folder / full, threads, int8), folder / full)
        if self.n_se:
            missing = [f for f in (tiles_file, stats_file) if not (folder / f).is_file()]
            if missing:
                raise UsageError(f"{folder}: no {' or '.join(missing)}, which exact tiled inference of a network "
                                 "with squeeze-excite needs (re-export the model, or use --backend torch)")
            self.tiles_session = ort_session(folder / tiles_file, threads, int8)
            self.stats_session = ort_session(folder / stats_file, threads, int8)
            # With one SE layer the exporter drops se_means from the stats graph: no earlier mean is used.
            self.stats_inputs = {i.name for i in self.stats_session.get_inputs()}

    @classmethod
    def from_graph(cls, graph: str | Path | bytes, threads: int | None = None) -> OnnxModel:
        """One graph (FP32 or INT8, a file or its bytes) without its tiling helpers: a network with
        squeeze-excite then runs every image whole (tiles would change its SE means)."""
        model = cls.__new__(cls)
        model._open(ort_session(graph, threads, int8=None), Path("<graph>" if isinstance(graph, bytes) else graph))
        return model

    def _open(self, session, path: Path) -> None:
        self.full = session
        meta = GraphMetadata.parse(session.get_modelmeta().custom_metadata_map, path)
        self.scale, self.radius, self.n_se = meta.scale, meta.context_radius, len(meta.se_channels)
        self.channels = meta.se_channels[0] if meta.se_channels else 0
        self.tiles_session = self.stats_session = None

    def tiles(self, x: np.ndarray, tile: int) -> Iterator[tuple[tuple[slice, slice], np.ndarray]]:
        """For a float32 1x3xHxW input: (output slices, output block 1x3xhxw) covering the output once."""
        if x.ndim != 4 or x.shape[:2] != (1, 3) or x.dtype != np.float32:
            raise UsageError(f"expected a float32 1x3xHxW input, got {x.dtype} {x.shape}")
        h, w = x.shape[-2:]
        s = self.scale
        if (h <= tile and w <= tile) or (self.n_se and self.tiles_session is None):
            yield (slice(0, s * h), slice(0, s * w)), self.full.run([OUTPUT_NAME], {INPUT_NAME: x})[0]
            return
        grid = tiles(h, w, tile, self.radius)
        if not self.n_se:
            for t in grid:
                y = self.full.run([OUTPUT_NAME], {INPUT_NAME: np.ascontiguousarray(t.window(x))})[0]
                yield t.target(s), y[(..., *t.core(s))]
            return
        means = self.se_means(x, grid)
        for t in grid:
            window = np.ascontiguousarray(t.window(x))
            y = self.tiles_session.run([OUTPUT_NAME], {INPUT_NAME: window, SE_MEANS: means})[0]
            yield t.target(s), y[(..., *t.core(s))]

    def se_means(self, x: np.ndarray, grid: list[Tile]) -> np.ndarray:
        """Image-wide mean of every SE layer's input (one row per layer), one sweep over the tiles per
        layer: layer k's input depends on the gates, hence the means, of layers 0..k-1."""
        h, w = x.shape[-2:]
        means = np.zeros((self.n_se, self.channels), np.float32)
        for k in range(self.n_se):
            total = np.zeros(self.channels, np.float64)
            for t in grid:
                window = np.ascontiguousarray(t.window(x))
                mask = np.zeros((1, 1, *window.shape[-2:]), np.float32)
                mask[(..., *t.core())] = 1  # each pixel counted once, by the tile that owns it
                feeds = {INPUT_NAME: window, SE_MEANS: means, CORE_MASK: mask}
                sums = self.stats_session.run([SE_SUMS], {k: v for k, v in feeds.items()
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
        """uint8 HxW[x3] -> uint8 (sH)x(sW)[x3], by ``searchsr.evaluate.upscale`` (tiled, exact)."""
        return upscale(self.model, img, tile)


def load_model(folder: str | Path, backend: str = "onnx", threads: int | None = None,
               int8: bool = False) -> OnnxModel | TorchModel:
    """The exported model in ``folder`` for ``backend`` (onnx or torch; ``int8``: the INT8 ONNX graphs);
    bad folders are one-line errors."""
    folder = Path(folder)
    if not folder.is_dir():
        raise UsageError(f"{folder}: no such model folder")
    if backend == "onnx":
        return OnnxModel(folder, threads, int8)
    if int8:
        raise UsageError(f"--int8 runs {INT8_FILE} with ONNX Runtime: use it with --backend onnx")
    if backend == "torch":
        return TorchModel(folder)
    raise UsageError(f"backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
