"""Ship a trained network: config, weights, BN-fused ONNX and TorchScript, verified, with a model card.

``searchsr export --checkpoint RUN --out DIR`` writes into DIR the folder ``searchsr.bundle``
describes (``arch.yaml``, ``weights.safetensors``, ``model.onnx`` and its tiling helpers,
``model.ts``, ``model_card.json`` / ``model_card.md``), in the formats asked for; ``--int8`` adds
``model_int8.onnx`` (``searchsr.quantize``: statically quantized from the verified ``model.onnx``,
calibrated on LR patches of the run's training images, scored against FP32 on its validation images).

Every file is written into a hidden temporary folder next to DIR; the ONNX graphs (run by
ONNX Runtime from the written files) and the TorchScript module (loaded back from disk) are
compared with the PyTorch model on real photographs (scikit-image's astronaut, and an odd
sized crop of its coffee photo, which also proves the dynamic height/width), and the folder
is moved into place only if every maximum absolute difference is at most ``TOLERANCE``.
Otherwise nothing is left behind.

Exporter: PyTorch's TorchScript-based ONNX exporter (``dynamo=False``), opset 17. It works
with the project's dependencies on every supported PyTorch (>= 2.3), exports in about a
second, and needs one change to the module, made on the export copy only: the bicubic skip's
kernel is tiled over the 3 input channels ahead of time (``searchsr.deploy.StaticBicubic``).
The dynamo exporter also produces a correct graph but needs the extra ``onnxscript`` package
and takes about 8 s per graph on this machine.
"""

from __future__ import annotations

import copy
import io
import json
import os
import shutil
import tempfile
import warnings
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from searchsr.arch import MobileSR, build_model
from searchsr.bundle import (ARCH_FILE, CARD_JSON, CARD_MD, CORE_MASK, INPUT_NAME, ONNX_FILE, OPSET, OUTPUT_NAME,
                             SE_MEANS, SE_SUMS, STATS_FILE, TILES_FILE, TS_FILE, WEIGHTS_FILE, GraphMetadata,
                             OnnxModel, load_weights, ort_session)
from searchsr.card import make_card, render_card
from searchsr.config import AnyArch, ArchConfig
from searchsr.data import ImageSet
from searchsr.deploy import Clamped, TiledGraph, deployable, se_input_means
from searchsr.errors import UsageError, VerificationError
from searchsr.evaluate import context_radius, tiles
from searchsr.files import check_new_or_empty_dir, read_json, umask
from searchsr.runs import CONFIG_FILE, RESULT_FILE, read_run_config

FORMATS = ("yaml", "safetensors", "onnx", "torchscript")
TOLERANCE = 1e-4  # max |ONNX/TorchScript - PyTorch| on [0, 1] outputs
VERIFY_TILE = 48  # LR pixels: the verification photos span several tiles


# --------------------------------------------------------------------------- the run to export


def load_run(run_dir: str | Path) -> tuple[ArchConfig, MobileSR, dict[str, Any]]:
    """Architecture, final weights and provenance of a finished ``searchsr train`` run folder.

    The folder is checked by ``searchsr.runs.read_run_config`` and the weights by
    ``searchsr.bundle.load_weights`` (keys, shapes, finiteness): every bad input is one line; the
    run's config/result come back for the card.
    """
    run_dir = Path(run_dir)
    config, cfg = read_run_config(run_dir)
    if not isinstance(cfg, ArchConfig):
        raise UsageError(f"{run_dir}: export takes the family's networks; {cfg.name} is a reference network "
                         "(score it with `searchsr eval --checkpoint`)")
    cfg, model = load_weights(run_dir / WEIGHTS_FILE, cfg)
    return cfg, model, run_provenance(run_dir, config)


def run_provenance(run_dir: str | Path, config: dict[str, Any] | None = None) -> dict[str, Any]:
    """What a model card records about a training run: schedule, data, seed, command, metrics."""
    run_dir = Path(run_dir)
    if config is None:
        config = read_json(run_dir / CONFIG_FILE)
    result = read_json(run_dir / RESULT_FILE) if (run_dir / RESULT_FILE).is_file() else None
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
            "precision": config.get("precision") or ("fp16" if config.get("amp") else "fp32"),
            "training_command": config.get("command"), "metrics": metrics}


def parse_formats(text: str | Sequence[str]) -> tuple[str, ...]:
    """``yaml,safetensors,onnx,torchscript`` (any subset, any order) -> canonical order."""
    items = [t.strip().lower() for t in (text.split(",") if isinstance(text, str) else text)]
    items = [t for t in items if t]
    unknown = [t for t in items if t not in FORMATS]
    if unknown or not items:
        raise UsageError(f"--format takes a comma-separated subset of {','.join(FORMATS)}, got {text!r}")
    return tuple(f for f in FORMATS if f in items)


def check_out_dir(out_dir: Path) -> Path:
    """Check ``out_dir`` can be created (new, or an empty folder) and return its nearest existing ancestor."""
    return check_new_or_empty_dir(out_dir, "exists and is not empty (export into a new folder)")


# --------------------------------------------------------------------------- writing the files


def _onnx_bytes(module: nn.Module, args: tuple, input_names: list[str], output_names: list[str],
                dynamic_axes: dict[str, dict[int, str]], meta: GraphMetadata, doc: str) -> bytes:
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
    for key, value in meta.props().items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.checker.check_model(proto)
    return proto.SerializeToString()


def model_onnx(model: nn.Module, cfg: AnyArch) -> bytes:
    """``model.onnx`` as ``export`` writes it (BN fused, clamped, bicubic skip included), in memory: what
    the ``onnxruntime`` latency backend times (``searchsr.runtimes``)."""
    deploy = deployable(model)
    return _model_graph(deploy, cfg, GraphMetadata(cfg.scale, context_radius(deploy),
                                                   tuple(TiledGraph(deploy, stats=False).channels), cfg.to_json()))


def _model_graph(deploy: nn.Module, cfg: AnyArch, meta: GraphMetadata) -> bytes:
    height, width = f"height_x{cfg.scale}", f"width_x{cfg.scale}"
    return _onnx_bytes(
        Clamped(deploy), (torch.rand(1, 3, 32, 24),), [INPUT_NAME], [OUTPUT_NAME],
        {INPUT_NAME: {0: "batch", 2: "height", 3: "width"}, OUTPUT_NAME: {0: "batch", 2: height, 3: width}},
        meta, f"searchsr super-resolution network x{cfg.scale}, BN fused, bicubic skip included: {meta.interface}")


def _write_onnx(deploy: nn.Module, cfg: ArchConfig, tmp: Path, radius: int) -> list[str]:
    """Write model.onnx (and the SE tiling helpers); returns the file names written."""
    example = torch.rand(1, 3, 32, 24)
    tiled = TiledGraph(deploy, stats=False)
    meta = GraphMetadata(cfg.scale, radius, tuple(tiled.channels), cfg.to_json())
    height, width = f"height_x{cfg.scale}", f"width_x{cfg.scale}"
    (tmp / ONNX_FILE).write_bytes(_model_graph(deploy, cfg, meta))
    if tiled.n_se == 0:
        return [ONNX_FILE]
    if len(set(tiled.channels)) != 1:
        raise UsageError(f"squeeze-excite layers of unequal width {tiled.channels} cannot share one {SE_MEANS} input")
    means = torch.rand(tiled.n_se, tiled.channels[0])
    mask = torch.ones(1, 1, 32, 24)
    (tmp / TILES_FILE).write_bytes(_onnx_bytes(
        tiled, (example, means), [INPUT_NAME, SE_MEANS], [OUTPUT_NAME],
        {INPUT_NAME: {2: "height", 3: "width"}, OUTPUT_NAME: {2: height, 3: width}},
        meta, f"tiling helper: the network with every squeeze-excite mean given ({SE_MEANS}, one row per layer)"))
    (tmp / STATS_FILE).write_bytes(_onnx_bytes(
        TiledGraph(deploy, stats=True), (example, means, mask), [INPUT_NAME, SE_MEANS, CORE_MASK], [SE_SUMS],
        {INPUT_NAME: {2: "height", 3: "width"}, CORE_MASK: {2: "height", 3: "width"}},
        meta, f"tiling helper: float64 sum over {CORE_MASK} of every squeeze-excite layer's input, "
              "given the means of the earlier layers"))
    return [ONNX_FILE, TILES_FILE, STATS_FILE]


def _write_files(tmp: Path, cfg: ArchConfig, model: nn.Module, deploy: nn.Module, radius: int,
                 formats: tuple[str, ...]) -> list[str]:
    """Write ``formats`` of ``model`` (training form) and ``deploy`` (BN-fused) into ``tmp``; returns the names."""
    from safetensors.torch import save_file

    written: list[str] = []
    if "yaml" in formats:
        (tmp / ARCH_FILE).write_text(cfg.to_yaml())
        written.append(ARCH_FILE)
    if "safetensors" in formats:
        state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
        save_file(state, str(tmp / WEIGHTS_FILE), metadata={"arch": cfg.to_json(), "format": "searchsr-weights"})
        written.append(WEIGHTS_FILE)
    if "onnx" in formats:
        written += _write_onnx(deploy, cfg, tmp, radius)
    if "torchscript" in formats:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            traced = torch.jit.trace(Clamped(deploy), torch.rand(1, 3, 32, 24), check_trace=False)
            torch.jit.save(traced, str(tmp / TS_FILE))
        written.append(TS_FILE)
    return written


# --------------------------------------------------------------------------- verification


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
    reference = Clamped(reference).eval()
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
            tile = VERIFY_TILE
            engine = OnnxModel(tmp)
            check(f"{TILES_FILE} + {STATS_FILE}", f"{name_a}, tiles of {tile}", engine.forward(x_a, tile), wants[0])
            # The SE statistics themselves, which a barely trained network's output barely shows.
            got = engine.se_means(x_a, tiles(*x_a.shape[-2:], tile, engine.radius))
            want = se_input_means(reference, x_a)
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


# --------------------------------------------------------------------------- export


def export_model(cfg: ArchConfig, model: nn.Module, out_dir: str | Path,
                 formats: Iterable[str] = FORMATS, provenance: dict[str, Any] | None = None,
                 int8: bool = False, calibration: str | Path | ImageSet | None = None) -> dict[str, Any]:
    """Export ``model`` (an instance of ``build_model(cfg)`` with trained weights) into ``out_dir``.

    ``out_dir`` must be new or an empty folder. ``formats`` is any subset of ``FORMATS``.
    ``provenance`` goes into the model card as given; the keys the card renders are
    ``source`` (e.g. ``{"kind": "checkpoint", "run_dir": ...}`` or ``{"kind": "study", "study": ...,
    "trial": ...}``), ``metrics`` (``{"val": {"psnr_y", "ssim_y", "images"}, "bicubic": {...},
    "val_data": ...}``), ``schedule``, ``data``, ``seed`` and ``training_command``
    (``run_provenance`` builds them from a run folder). ``int8`` also writes the INT8 graphs
    (``searchsr.quantize.write_int8``), calibrated on ``calibration`` (a folder of HR images or an
    ``ImageSet``), else on ``provenance["data"]["train"]``, else on the embedded photos, and adds the
    card's ``int8`` section. Returns the model card (also written as ``model_card.json``). Raises ``VerificationError`` (a ``ValueError``) and writes nothing when
    an exported graph differs from PyTorch by more than ``TOLERANCE``.
    """
    from searchsr.cost import count_cost, count_params

    formats = parse_formats(list(formats))
    provenance = dict(provenance or {})
    if int8 and "onnx" not in formats:
        raise UsageError("--int8 quantizes model.onnx: give a --format that includes onnx")
    if calibration is not None and not int8:
        raise UsageError("--calib-dir chooses the INT8 calibration images: it goes with --int8")
    if not isinstance(model, MobileSR):
        raise UsageError(f"expected a searchsr MobileSR network, got {type(model).__name__}")
    expected = {k: tuple(v.shape) for k, v in build_model(cfg).state_dict().items()}
    actual = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    if expected != actual:
        raise UsageError(f"the model's tensors do not match {cfg.to_json()}")
    out_dir = Path(out_dir)
    ancestor = check_out_dir(out_dir)
    if int8:  # every image loads (or fails in one line) before anything is written
        from searchsr.quantize import int8_data, write_int8

        int8_images = int8_data(cfg.scale, provenance.get("data"), calibration)

    deploy = deployable(model)
    radius = context_radius(deploy)
    fast = copy.deepcopy(model).cpu().eval().to(memory_format=torch.channels_last)  # same math, ~2x faster on CPU
    cost = count_cost(fast, (256, 256))

    try:
        tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.export-", dir=ancestor))
    except OSError as err:
        raise UsageError(f"{out_dir}: cannot write in {ancestor} ({err.strerror or err})") from None
    try:
        written = _write_files(tmp, cfg, model, deploy, radius, formats)
        try:
            checks = _verify(tmp, fast, formats, TILES_FILE in written)
        except VerificationError:
            raise
        except Exception as err:  # an exported graph that ONNX Runtime cannot even run
            raise VerificationError(f"verification could not run the exported model: "
                                    f"{type(err).__name__}: {str(err).splitlines()[0][:300]}") from None

        int8_card = None
        if int8:
            int8_files, int8_card = write_int8(tmp, int8_images)
            written += int8_files
        card = make_card(out_dir.name, cfg, cost.to_dict(), count_params(deploy), provenance, formats, radius,
                         TOLERANCE, checks, tmp, written, int8_card)
        (tmp / CARD_JSON).write_text(json.dumps(card, indent=2) + "\n")
        (tmp / CARD_MD).write_text(render_card(card))
        for path in tmp.iterdir():  # mkdtemp/safetensors create private files; use the usual modes
            os.chmod(path, 0o666 & ~umask())
        os.chmod(tmp, 0o777 & ~umask())
        try:
            out_dir.parent.mkdir(parents=True, exist_ok=True)
            os.replace(tmp, out_dir)  # atomic; replaces an empty folder, fails on a non-empty one
        except OSError as err:
            raise UsageError(f"{out_dir}: cannot move the export into place ({err.strerror or err})") from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return card
