"""Ship a trained network: config, weights, BN-fused ONNX and TorchScript, verified, with a model card.

``searchsr export --checkpoint RUN --out DIR`` writes into DIR:

* ``arch.yaml``            the ``ArchConfig`` (``searchsr.arch.load_arch`` reads it back).
* ``weights.safetensors``  the training-form state dict (BN included), metadata ``arch`` = the
  config as JSON: the same format a training run writes, loadable with ``load_weights``.
* ``model.onnx``           the public contract for apps: the whole BN-fused network, bicubic skip
  included. Input ``lr``: float32 NCHW RGB in [0, 1], shape (batch, 3, height, width) with
  batch, height and width dynamic (at least 2x2). Output ``sr``: float32 NCHW RGB, shape
  (batch, 3, scale*height, scale*width), clamped to [0, 1] (the clamp is part of the graph,
  as the evaluation pipeline clamps before quantising). Opset ``OPSET``.
* ``model_tiles.onnx`` and ``model_se_stats.onnx`` (networks with squeeze-excite only): two
  helper graphs that make tiled inference exact (``searchsr upscale``). SE layers pool over
  the whole image, so a tile alone cannot know its gates; ``model_se_stats`` returns, for a
  tile, the float64 sum of every SE layer's input over the tile's core (given the means of
  the earlier SE layers), and ``model_tiles`` runs a tile with all image-wide means given.
  This is ``searchsr.evaluate.forward_tiled``'s algorithm, as graphs.
* ``model.ts``             TorchScript (traced, BN-fused, same clamp), any input size.
* ``model_card.json`` / ``model_card.md``  what the model is and where it came from.

Every file is written into a hidden temporary folder next to DIR; the ONNX graphs (run by
ONNX Runtime from the written files) and the TorchScript module (loaded back from disk) are
compared with the PyTorch model on real photographs (scikit-image's astronaut, and an odd
sized crop of its coffee photo, which also proves the dynamic height/width), and the folder
is moved into place only if every maximum absolute difference is at most ``TOLERANCE``.
Otherwise nothing is left behind.

Exporter: PyTorch's TorchScript-based ONNX exporter (``dynamo=False``), opset 17. It works
with the project's dependencies on every supported PyTorch (>= 2.3), exports in about a
second, and needs one change to the module, made on the export copy only: the bicubic skip's
kernel is tiled over the 3 input channels ahead of time (``BicubicUpsample`` tiles it at run
time from the input's channel count, which that exporter cannot turn into a static kernel;
the arithmetic is identical). The dynamo exporter also produces a correct graph but needs
the extra ``onnxscript`` package and takes about 8 s per graph on this machine.

Weights are only ever read with safetensors (never pickle); ``load_weights`` checks keys,
shapes, dtypes and finiteness against the architecture and reports any problem in one line.
"""

from __future__ import annotations

import copy
import datetime
import hashlib
import io
import json
import os
import platform
import shlex
import shutil
import sys
import tempfile
import warnings
from collections.abc import Iterable, Sequence
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from searchsr.arch import MobileSR, build_model
from searchsr.config import ArchConfig
from searchsr.blocks import BicubicUpsample, SqueezeExcite, _symmetric_pad
from searchsr.errors import UsageError, VerificationError
from searchsr.evaluate import _se_gate, context_radius
from searchsr.fuse import fuse_bn

FORMATS = ("yaml", "safetensors", "onnx", "torchscript")
OPSET = 17
TOLERANCE = 1e-4  # max |ONNX/TorchScript - PyTorch| on [0, 1] outputs
MIN_SIDE = 2  # the bicubic skip's symmetric border needs 2 pixels

ARCH_FILE = "arch.yaml"
WEIGHTS_FILE = "weights.safetensors"
ONNX_FILE = "model.onnx"
TILES_FILE = "model_tiles.onnx"
STATS_FILE = "model_se_stats.onnx"
TS_FILE = "model.ts"
CARD_JSON = "model_card.json"
CARD_MD = "model_card.md"

INPUT_NAME, OUTPUT_NAME = "lr", "sr"
META_PREFIX = "searchsr."  # ONNX metadata_props keys


# --------------------------------------------------------------------------- loading


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def load_weights(path: str | Path, cfg: ArchConfig | None = None) -> tuple[ArchConfig, MobileSR]:
    """Read a ``weights.safetensors`` (training run or export) into a fresh network, in eval mode.

    ``cfg`` defaults to the architecture stored in the file's metadata; when both exist they
    must agree. Never unpickles. Truncated or foreign files, missing/unexpected tensors, wrong
    shapes or dtypes and non-finite values raise a one-line ``ValueError`` naming the problem.
    """
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise UsageError(f"{path}: no such weights file")
    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
            tensors = {key: f.get_tensor(key) for key in f.keys()}
    except Exception as err:  # SafetensorError (truncated, not safetensors), OSError, ...
        raise UsageError(f"{path}: not a valid safetensors file, truncated or corrupt "
                         f"({_first_line(err)})") from None
    stored = None
    if "arch" in metadata:
        try:
            stored = ArchConfig.from_json(metadata["arch"])
        except (ValueError, TypeError) as err:
            raise UsageError(f"{path}: metadata 'arch' is not a valid architecture ({_first_line(err)})") from None
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


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise UsageError(f"{path}: not readable JSON ({_first_line(err)})") from None


def load_run(run_dir: str | Path) -> tuple[ArchConfig, MobileSR, dict[str, Any]]:
    """Architecture, final weights and provenance of a finished ``searchsr train`` run folder.

    Like ``searchsr.train.load_trained`` but every bad input (missing, truncated or tampered
    files) is a one-line ``ValueError``, and the run's config/result come back for the card.
    """
    from searchsr.train import CONFIG, WEIGHTS

    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise UsageError(f"{run_dir}: no such run folder")
    if not (run_dir / CONFIG).is_file():
        raise UsageError(f"{run_dir}: not a run folder (no {CONFIG})")
    if not (run_dir / WEIGHTS).is_file():
        raise UsageError(f"{run_dir}: no {WEIGHTS}: training has not finished (resume it with --resume)")
    config = _read_json(run_dir / CONFIG)
    if not isinstance(config, dict) or not isinstance(config.get("arch"), dict):
        raise UsageError(f"{run_dir / CONFIG}: no 'arch' mapping")
    try:
        cfg = ArchConfig.from_dict(config["arch"])
    except (ValueError, TypeError) as err:
        raise UsageError(f"{run_dir / CONFIG}: {_first_line(err)}") from None
    cfg, model = load_weights(run_dir / WEIGHTS, cfg)
    return cfg, model, run_provenance(run_dir, config)


def run_provenance(run_dir: str | Path, config: dict[str, Any] | None = None) -> dict[str, Any]:
    """What a model card records about a training run: schedule, data, seed, command, metrics."""
    from searchsr.train import CONFIG, RESULT

    run_dir = Path(run_dir)
    if config is None:
        config = _read_json(run_dir / CONFIG)
    result = _read_json(run_dir / RESULT) if (run_dir / RESULT).is_file() else None
    metrics = None
    if isinstance(result, dict):
        def scores(part: Any) -> dict[str, Any] | None:
            if not isinstance(part, dict):
                return None
            return {k: part.get(k) for k in ("psnr_y", "ssim_y", "images")}

        metrics = {"val": scores(result.get("val")), "bicubic": scores(result.get("bicubic")),
                   "val_data": (config.get("data") or {}).get("val"),
                   "steps": result.get("step"), "train_seconds": result.get("seconds"),
                   "final_loss": result.get("loss"), "device": result.get("device")}
    return {"source": {"kind": "checkpoint", "run_dir": str(run_dir.resolve())},
            "schedule": config.get("schedule"), "data": config.get("data"), "seed": config.get("seed"),
            "amp": config.get("amp"), "training_command": config.get("command"), "metrics": metrics}


def parse_formats(text: str | Sequence[str]) -> tuple[str, ...]:
    """``yaml,safetensors,onnx,torchscript`` (any subset, any order) -> canonical order."""
    items = [t.strip().lower() for t in (text.split(",") if isinstance(text, str) else text)]
    items = [t for t in items if t]
    unknown = [t for t in items if t not in FORMATS]
    if unknown or not items:
        raise UsageError(f"--format takes a comma-separated subset of {','.join(FORMATS)}, got {text!r}")
    return tuple(f for f in FORMATS if f in items)


# --------------------------------------------------------------------------- deployable modules


class _StaticBicubic(nn.Module):
    """``BicubicUpsample`` with its kernel tiled over 3 channels ahead of time (see module doc)."""

    def __init__(self, skip: BicubicUpsample, channels: int = 3) -> None:
        super().__init__()
        self.scale = skip.scale
        self.channels = channels
        self.register_buffer("weight", skip.weight.repeat(channels, 1, 1, 1).clone(), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = _symmetric_pad(_symmetric_pad(x, 2, 2), 2, 3)
        return F.pixel_shuffle(F.conv2d(x, self.weight, groups=self.channels), self.scale)


class _Clamped(nn.Module):
    """The deployed network: model output clamped to [0, 1]."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, lr: torch.Tensor) -> torch.Tensor:
        return self.model(lr).clamp(0, 1)


def deployable(model: nn.Module) -> nn.Module:
    """CPU, eval, BN-fused copy with an export-friendly skip; the input model is untouched."""
    fused = fuse_bn(model).cpu().eval()
    if isinstance(getattr(fused, "skip", None), BicubicUpsample):
        fused.skip = _StaticBicubic(fused.skip)
    return fused


class _GivenMeanSE(nn.Module):
    """A squeeze-excite layer whose pooled input comes from outside (the image-wide mean)."""

    def __init__(self, se: SqueezeExcite, index: int, state: SimpleNamespace) -> None:
        super().__init__()
        self.se = se
        self.index = index
        self._state = (state,)  # a tuple: not registered as a submodule or buffer

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        state = self._state[0]
        state.order.append(self.index)
        if state.mask is not None:
            state.sums[self.index] = (x * state.mask).to(torch.float64).sum((0, 2, 3))
        mean = state.means[self.index].reshape(1, -1, 1, 1)
        return x * _se_gate(self.se, mean)


class _TiledGraph(nn.Module):
    """The deployed network with every SE mean given: ``(lr, se_means) -> sr`` (``stats=False``)
    or ``(lr, se_means, core_mask) -> se_sums`` (``stats=True``, float64, one row per SE layer)."""

    def __init__(self, deploy: nn.Module, stats: bool) -> None:
        super().__init__()
        self.model = copy.deepcopy(deploy)
        self.stats = stats
        self._state = (SimpleNamespace(means=None, mask=None, sums={}, order=[]),)
        names = [name for name, m in self.model.named_modules() if isinstance(m, SqueezeExcite)]
        for index, name in enumerate(names):
            parent_name, _, attr = name.rpartition(".")
            parent = self.model.get_submodule(parent_name) if parent_name else self.model
            setattr(parent, attr, _GivenMeanSE(getattr(parent, attr), index, self._state[0]))
        self.n_se = len(names)
        self.channels = [getattr(self.model.get_submodule(n), "se").reduce.in_channels for n in names]

    def forward(self, lr: torch.Tensor, se_means: torch.Tensor,
                core_mask: torch.Tensor | None = None) -> torch.Tensor:
        state = self._state[0]
        state.means, state.mask, state.sums, state.order = se_means, core_mask if self.stats else None, {}, []
        out = self.model(lr)
        if state.order != list(range(self.n_se)):
            raise RuntimeError(f"squeeze-excite layers ran in order {state.order}, not in module order")
        if self.stats:
            return torch.stack([state.sums[i] for i in range(self.n_se)])
        return out.clamp(0, 1)


# --------------------------------------------------------------------------- verification data


def verification_images() -> list[tuple[str, np.ndarray]]:
    """Real LR photographs (uint8 HxWx3): astronaut at x1/4 (128x128) and an odd-sized crop
    of coffee at x1/4 (97x143), both made with MATLAB bicubic like every benchmark LR."""
    import skimage.data

    from searchsr.imresize import imresize_uint8

    astronaut = imresize_uint8(skimage.data.astronaut(), 1 / 4)
    coffee = imresize_uint8(skimage.data.coffee(), 1 / 4)[:97, :143]
    return [(f"skimage astronaut LR {astronaut.shape[0]}x{astronaut.shape[1]}", astronaut),
            (f"skimage coffee LR crop {coffee.shape[0]}x{coffee.shape[1]}", coffee)]


def _as_input(img: np.ndarray) -> np.ndarray:
    """uint8 HxWx3 -> float32 1x3xHxW in [0, 1]."""
    return np.ascontiguousarray(img.transpose(2, 0, 1)[None], dtype=np.float32) / np.float32(255)


def ort_session(path: str | Path, threads: int | None = None):
    """An ONNX Runtime CPU session; a missing or corrupt file is a one-line ``ValueError``."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    # Measured on a 12-megapixel upscale (XLITE, 256-px tiles): ORT_ENABLE_ALL's NCHWc layout
    # (3 and 8 channels padded to the SIMD block) and per-shape memory patterns raise the peak
    # by ~450 MB with no speed gain over EXTENDED with the arena kept and patterns off.
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    options.enable_mem_pattern = False
    if threads:
        options.intra_op_num_threads = threads
    try:
        return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as err:  # onnxruntime raises its own pybind exception types
        raise UsageError(f"{path}: cannot load ONNX model ({_first_line(err)})") from None


# --------------------------------------------------------------------------- export


def _onnx_bytes(module: nn.Module, args: tuple, input_names: list[str], output_names: list[str],
                dynamic_axes: dict[str, dict[int, str]], metadata: dict[str, str], doc: str) -> bytes:
    import onnx

    buffer = io.BytesIO()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # deprecation notice, tracer warnings on shape arithmetic
        torch.onnx.export(module, args, buffer, dynamo=False, opset_version=OPSET, input_names=input_names,
                          output_names=output_names, dynamic_axes=dynamic_axes, do_constant_folding=True)
    proto = onnx.load_from_string(buffer.getvalue())
    proto.doc_string = doc
    proto.producer_name = "searchsr"
    del proto.metadata_props[:]
    for key, value in metadata.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = META_PREFIX + key, value
    onnx.checker.check_model(proto)
    return proto.SerializeToString()


def _write_onnx(deploy: nn.Module, cfg: ArchConfig, tmp: Path, radius: int) -> list[str]:
    """Write model.onnx (and the SE tiling helpers); returns the file names written."""
    meta = {"arch": cfg.to_json(), "scale": str(cfg.scale), "opset": str(OPSET),
            "context_radius": str(radius), "min_side": str(MIN_SIDE),
            "interface": f"{INPUT_NAME}: float32 NCHW RGB in [0,1], (batch, 3, height, width) -> "
                         f"{OUTPUT_NAME}: float32 NCHW RGB in [0,1], (batch, 3, {cfg.scale}*height, "
                         f"{cfg.scale}*width)"}
    example = torch.rand(1, 3, 32, 24)
    tiled = _TiledGraph(deploy, stats=False)
    meta["se_layers"] = str(tiled.n_se)
    meta["se_channels"] = json.dumps(tiled.channels)
    (tmp / ONNX_FILE).write_bytes(_onnx_bytes(
        _Clamped(deploy), (example,), [INPUT_NAME], [OUTPUT_NAME],
        {INPUT_NAME: {0: "batch", 2: "height", 3: "width"},
         OUTPUT_NAME: {0: "batch", 2: f"height_x{cfg.scale}", 3: f"width_x{cfg.scale}"}},
        meta, f"searchsr super-resolution network x{cfg.scale}, BN fused, bicubic skip included: "
              f"{meta['interface']}"))
    written = [ONNX_FILE]
    if tiled.n_se == 0:
        return written
    if len(set(tiled.channels)) != 1:
        raise UsageError(f"squeeze-excite layers of unequal width {tiled.channels} cannot share one se_means input")
    means = torch.rand(tiled.n_se, tiled.channels[0])
    mask = torch.ones(1, 1, 32, 24)
    (tmp / TILES_FILE).write_bytes(_onnx_bytes(
        tiled, (example, means), [INPUT_NAME, "se_means"], [OUTPUT_NAME],
        {INPUT_NAME: {2: "height", 3: "width"}, OUTPUT_NAME: {2: f"height_x{cfg.scale}", 3: f"width_x{cfg.scale}"}},
        meta, "tiling helper: the network with every squeeze-excite mean given (se_means, one row per layer)"))
    (tmp / STATS_FILE).write_bytes(_onnx_bytes(
        _TiledGraph(deploy, stats=True), (example, means, mask), [INPUT_NAME, "se_means", "core_mask"],
        ["se_sums"], {INPUT_NAME: {2: "height", 3: "width"}, "core_mask": {2: "height", 3: "width"}},
        meta, "tiling helper: float64 sum over core_mask of every squeeze-excite layer's input, "
              "given the means of the earlier layers"))
    return written + [TILES_FILE, STATS_FILE]


def _check_close(what: str, got: np.ndarray, want: np.ndarray) -> float:
    if got.shape != want.shape:
        raise VerificationError(f"{what}: output shape {got.shape}, PyTorch gives {want.shape}: not exported")
    diff = float(np.max(np.abs(got.astype(np.float64) - want.astype(np.float64))))
    if not diff <= TOLERANCE:  # also catches NaN
        raise VerificationError(f"{what}: max |difference| to PyTorch is {diff:.3g} > {TOLERANCE:g}: not exported")
    return diff


def _verify(tmp: Path, reference: nn.Module, formats: tuple[str, ...], has_tiles: bool) -> list[dict[str, Any]]:
    """Compare the written files with ``reference``: the PyTorch network as trained (eval mode,
    BN not fused, the original skip), clamped like the exports. Raises ``VerificationError``."""
    checks: list[dict[str, Any]] = []
    reference = _Clamped(reference).eval()
    inputs = [(name, _as_input(img)) for name, img in verification_images()]
    (name_a, x_a), (_, x_b) = inputs
    h, w = (min(a, b) // 2 * 2 - 1 for a, b in zip(x_a.shape[2:], x_b.shape[2:]))  # odd, fits both
    batch = np.concatenate([x_b[..., :h, :w], x_a[..., :h, :w]])  # two different images
    cases = inputs + [(f"batch of 2 at {h}x{w}", batch)]
    with torch.inference_mode():
        wants = [reference(torch.from_numpy(x)).numpy() for _, x in cases]

    def check(file: str, what: str, got: np.ndarray, want: np.ndarray) -> None:
        checks.append({"file": file, "input": what, "max_abs_diff": _check_close(f"{file} on {what}", got, want)})

    if "onnx" in formats:
        session = ort_session(tmp / ONNX_FILE)
        for (name, x), want in zip(cases, wants):
            check(ONNX_FILE, name, session.run([OUTPUT_NAME], {INPUT_NAME: x})[0], want)
        if has_tiles:
            from searchsr.evaluate import _tiles
            from searchsr.upscale import OnnxModel

            tile = 48
            engine = OnnxModel(tmp)
            check(f"{TILES_FILE} + {STATS_FILE}", f"{name_a}, tiles of {tile}", engine.forward(x_a, tile), wants[0])
            # The SE statistics themselves, which a barely trained network's output barely shows.
            got = engine.se_means(x_a, _tiles(*x_a.shape[-2:], tile, engine.radius))
            want = _se_input_means(reference, x_a)
            scale = max(1.0, float(np.abs(want).max()))
            checks.append({"file": STATS_FILE, "input": f"{name_a}, SE means over tiles of {tile} (relative)",
                           "max_abs_diff": _check_close(f"{STATS_FILE} on {name_a}", got / scale, want / scale)})
    if "torchscript" in formats:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            loaded = torch.jit.load(str(tmp / TS_FILE), map_location="cpu").eval()
        for (name, x), want in zip(cases, wants):
            with torch.inference_mode():
                check(TS_FILE, name, loaded(torch.from_numpy(x)).numpy(), want)
    return checks


def _se_input_means(model: nn.Module, x: np.ndarray) -> np.ndarray:
    """Each squeeze-excite layer's input mean (rows, in module order) in one untiled forward pass."""
    means: list[np.ndarray] = []
    hooks = [m.register_forward_hook(lambda _m, args, _o: means.append(args[0].mean((0, 2, 3)).numpy()))
             for m in model.modules() if isinstance(m, SqueezeExcite)]
    try:
        with torch.inference_mode():
            model(torch.from_numpy(x))
    finally:
        for hook in hooks:
            hook.remove()
    return np.stack(means)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _versions() -> dict[str, str]:
    from importlib import metadata

    out = {"python": platform.python_version(), "torch": torch.__version__, "numpy": np.__version__}
    for name in ("onnx", "onnxruntime", "safetensors", "searchsr"):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


def check_out_dir(out_dir: Path) -> Path:
    """Check ``out_dir`` can be created (new, or an empty folder) and return its nearest existing ancestor."""
    if out_dir.exists() or out_dir.is_symlink():
        if not out_dir.is_dir():
            raise UsageError(f"{out_dir}: exists and is not a folder")
        if any(out_dir.iterdir()):
            raise UsageError(f"{out_dir}: exists and is not empty (export into a new folder)")
    return writable_ancestor(out_dir, out_dir.parent)


def writable_ancestor(out_dir: Path, start: Path) -> Path:
    """The nearest existing folder at or above ``start``, which must be writable to create ``out_dir``."""
    ancestor = start
    while not ancestor.exists():
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise UsageError(f"{out_dir}: {ancestor} is not a folder")
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise UsageError(f"{out_dir}: {ancestor} is not writable")
    return ancestor


def export_model(cfg: ArchConfig, model: nn.Module, out_dir: str | Path,
                 formats: Iterable[str] = FORMATS, provenance: dict[str, Any] | None = None) -> dict[str, Any]:
    """Export ``model`` (an instance of ``build_model(cfg)`` with trained weights) into ``out_dir``.

    ``out_dir`` must be new or an empty folder. ``formats`` is any subset of ``FORMATS``.
    ``provenance`` goes into the model card as given; the keys the card renders are
    ``source`` (e.g. ``{"kind": "checkpoint", "run_dir": ...}`` or ``{"kind": "study", "study": ...,
    "trial": ...}``), ``metrics`` (``{"val": {"psnr_y", "ssim_y", "images"}, "bicubic": {...},
    "val_data": ...}``), ``schedule``, ``data``, ``seed`` and ``training_command``
    (``run_provenance`` builds them from a run folder). Returns the model card (also written as
    ``model_card.json``). Raises ``VerificationError`` (a ``ValueError``) and writes nothing when
    an exported graph differs from PyTorch by more than ``TOLERANCE``.
    """
    from safetensors.torch import save_file

    from searchsr.cost import count_cost, count_params

    formats = parse_formats(list(formats))
    provenance = dict(provenance or {})
    if not isinstance(model, MobileSR):
        raise UsageError(f"expected a searchsr MobileSR network, got {type(model).__name__}")
    expected = {k: tuple(v.shape) for k, v in build_model(cfg).state_dict().items()}
    actual = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    if expected != actual:
        raise UsageError(f"the model's tensors do not match {cfg.to_json()}")
    out_dir = Path(out_dir)
    ancestor = check_out_dir(out_dir)

    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    deploy = deployable(model)
    radius = context_radius(deploy)
    fast = copy.deepcopy(model).cpu().eval().to(memory_format=torch.channels_last)  # same math, ~2x faster on CPU
    cost = count_cost(fast, (256, 256))

    try:
        tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.export-", dir=ancestor))
    except OSError as err:
        raise UsageError(f"{out_dir}: cannot write in {ancestor} ({err.strerror or err})") from None
    try:
        written: list[str] = []
        if "yaml" in formats:
            (tmp / ARCH_FILE).write_text(cfg.to_yaml())
            written.append(ARCH_FILE)
        if "safetensors" in formats:
            save_file(state, str(tmp / WEIGHTS_FILE), metadata={"arch": cfg.to_json(), "format": "searchsr-weights"})
            written.append(WEIGHTS_FILE)
        onnx_files: list[str] = []
        if "onnx" in formats:
            onnx_files = _write_onnx(deploy, cfg, tmp, radius)
            written += onnx_files
        if "torchscript" in formats:
            with warnings.catch_warnings(), torch.no_grad():
                warnings.simplefilter("ignore")
                traced = torch.jit.trace(_Clamped(deploy), torch.rand(1, 3, 32, 24), check_trace=False)
                torch.jit.save(traced, str(tmp / TS_FILE))
            written.append(TS_FILE)
        try:
            checks = _verify(tmp, fast, formats, TILES_FILE in onnx_files)
        except VerificationError:
            raise
        except Exception as err:  # an exported graph that ONNX Runtime cannot even run
            raise VerificationError(f"verification could not run the exported model: "
                                    f"{type(err).__name__}: {str(err).splitlines()[0][:300]}") from None

        card = {
            "format": "searchsr-model-card/1",
            "name": out_dir.name,
            "created_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "arch": cfg.to_dict(),
            "scale": cfg.scale,
            "cost": {**cost.to_dict(), "convention": "the paper's: FLOPs = 2 x MACs incl. bias, BN and "
                                                      "activation elements (searchsr.cost)",
                     "params_fused": count_params(deploy)},
            "provenance": provenance,
            "export_command": list(sys.argv),
            "formats": list(formats),
            "interface": {
                "input": {"name": INPUT_NAME, "dtype": "float32", "layout": "NCHW", "channels": "RGB",
                          "range": [0, 1], "shape": ["batch", 3, "height", "width"], "min_side": MIN_SIDE},
                "output": {"name": OUTPUT_NAME, "dtype": "float32", "layout": "NCHW", "channels": "RGB",
                           "range": [0, 1], "clamped": True,
                           "shape": ["batch", 3, f"{cfg.scale}*height", f"{cfg.scale}*width"]},
                "bn_fused": True, "bicubic_skip": cfg.bicubic_skip,
            },
            "onnx": ({"opset": OPSET, "exporter": "torch.onnx.export, TorchScript-based (dynamo=False)",
                      "file": ONNX_FILE, "tiling_helpers": [f for f in onnx_files if f != ONNX_FILE],
                      "context_radius_lr_px": radius} if onnx_files else None),
            "torchscript": {"file": TS_FILE, "method": "torch.jit.trace"} if "torchscript" in formats else None,
            "verification": {"tolerance": TOLERANCE, "runtime": "onnxruntime CPUExecutionProvider",
                             "max_abs_diff": max((c["max_abs_diff"] for c in checks), default=None),
                             "checks": checks},
            "versions": _versions(),
            "files": {name: {"bytes": (tmp / name).stat().st_size, "sha256": _sha256(tmp / name)}
                      for name in written},
        }
        card = json.loads(json.dumps(card))  # the returned card is exactly what the JSON file holds
        (tmp / CARD_JSON).write_text(json.dumps(card, indent=2) + "\n")
        (tmp / CARD_MD).write_text(render_card(card))
        for path in tmp.iterdir():  # mkdtemp/safetensors create private files; use the usual modes
            os.chmod(path, 0o666 & ~_umask())
        os.chmod(tmp, 0o777 & ~_umask())
        try:
            out_dir.parent.mkdir(parents=True, exist_ok=True)
            os.replace(tmp, out_dir)  # atomic; replaces an empty folder, fails on a non-empty one
        except OSError as err:
            raise UsageError(f"{out_dir}: cannot move the export into place ({err.strerror or err})") from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return card


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _fmt(value: Any, digits: int = 4) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def render_card(card: dict[str, Any]) -> str:
    """The Markdown model card."""
    cfg, cost, prov = card["arch"], card["cost"], card.get("provenance") or {}
    lines = [f"# Model card: {card['name']}", "",
             f"x{card['scale']} super-resolution network of the MobileNetV3 SR family (searchsr), "
             f"exported {card['created_utc']}.", "",
             "## Architecture", "", "| field | value |", "| --- | --- |"]
    lines += [f"| {k} | {v} |" for k, v in cfg.items()]
    lines += ["", f"Parameters: {cost['params']:,} (BN fused: {cost['params_fused']:,}); "
                  f"FLOPs: {cost['flops'] / 1e9:.3f} G for a 256x256 LR input ({cost['convention']}).", ""]
    lines += ["## Provenance", ""]
    source = prov.get("source")
    if source:
        lines.append("Source: " + ", ".join(f"{k} `{v}`" for k, v in source.items()))
    metrics = prov.get("metrics")
    if metrics:
        val, bic = metrics.get("val") or {}, metrics.get("bicubic") or {}
        lines += ["", f"Validation on `{metrics.get('val_data')}` ({_fmt(val.get('images'))} images): "
                      f"PSNR-Y {_fmt(val.get('psnr_y'), 2)} dB, SSIM-Y {_fmt(val.get('ssim_y'))} "
                      f"(bicubic: {_fmt(bic.get('psnr_y'), 2)} dB / {_fmt(bic.get('ssim_y'))}); "
                      f"{_fmt(metrics.get('steps'))} steps on {_fmt(metrics.get('device'))}."]
        extra = {k: v for k, v in metrics.items()
                 if k not in ("val", "bicubic", "val_data", "steps", "device", "train_seconds", "final_loss")}
        if extra:
            lines.append(f"Other metrics: `{json.dumps(extra)}`")
    else:
        lines += ["", "Metrics: none recorded (no result.json)."]
    for key in ("schedule", "data", "seed", "training_command"):
        if prov.get(key) is not None:
            lines.append(f"- {key.replace('_', ' ')}: `{json.dumps(prov[key])}`")
    lines += ["", f"Export command: `{shlex.join(card['export_command'])}`", "", "## Interface", ""]
    inp, out = card["interface"]["input"], card["interface"]["output"]
    lines += [f"- input `{inp['name']}`: {inp['dtype']} {inp['layout']} {inp['channels']} in [0, 1], "
              f"shape (batch, 3, height, width), any height/width >= {inp['min_side']}",
              f"- output `{out['name']}`: {out['dtype']} {out['layout']} {out['channels']} in [0, 1] (clamped), "
              f"shape (batch, 3, {card['scale']}*height, {card['scale']}*width)",
              "- BatchNorm folded into the convolutions; the bicubic skip (MATLAB a = -0.5, symmetric "
              "border) is part of the graph"]
    if card.get("onnx"):
        onnx_info = card["onnx"]
        lines.append(f"- ONNX: `{onnx_info['file']}`, opset {onnx_info['opset']}, exporter "
                     f"{onnx_info['exporter']}")
        if onnx_info["tiling_helpers"]:
            lines.append(f"- exact tiled inference: {', '.join(f'`{f}`' for f in onnx_info['tiling_helpers'])} "
                         f"(squeeze-excite means measured image-wide; context {onnx_info['context_radius_lr_px']} "
                         "LR px per side)")
    if card.get("torchscript"):
        lines.append(f"- TorchScript: `{card['torchscript']['file']}` ({card['torchscript']['method']})")
    ver = card["verification"]
    lines += ["", "## Verification", "",
              f"Max |exported - PyTorch| on [0, 1] outputs, tolerance {ver['tolerance']:g} "
              f"({ver['runtime']}):", "", "| file | input | max abs diff |", "| --- | --- | --- |"]
    lines += [f"| {c['file']} | {c['input']} | {c['max_abs_diff']:.3g} |" for c in ver["checks"]]
    lines += ["", "## Files", "", "| file | bytes | sha256 |", "| --- | --- | --- |"]
    lines += [f"| {name} | {info['bytes']:,} | `{info['sha256']}` |" for name, info in card["files"].items()]
    lines += ["", "## Versions", "", ", ".join(f"{k} {v}" for k, v in card["versions"].items()), ""]
    return "\n".join(lines)


def summary(card: dict[str, Any], out_dir: str | Path) -> str:
    """What ``searchsr export`` prints."""
    files = list(card["files"]) + [CARD_JSON, CARD_MD]
    opset = f", ONNX opset {card['onnx']['opset']}" if card.get("onnx") else ""
    lines = [f"exported {json.dumps(card['arch'], sort_keys=True)} x{card['scale']}{opset} -> {out_dir}",
             f"  files: {', '.join(files)}"]
    per_file: dict[str, list[float]] = {}
    for check in card["verification"]["checks"]:
        per_file.setdefault(check["file"], []).append(check["max_abs_diff"])
    if per_file:
        verified = "; ".join(f"{name} {max(diffs):.2g} ({len(diffs)} input{'s' if len(diffs) > 1 else ''})"
                             for name, diffs in per_file.items())
        lines.append(f"  max |diff| to PyTorch on real photos (tolerance {card['verification']['tolerance']:g}): "
                     f"{verified}")
    return "\n".join(lines)
