"""INT8 ONNX: ``model.onnx`` statically quantized with ONNX Runtime, calibrated on LR patches, scored like FP32.

``export --int8`` writes ``model_int8.onnx`` (and, for networks with squeeze-excite, the two tiling
helpers quantized the same way) from the BN-fused graphs it has just verified, and scores the FP32
and INT8 graphs on the same validation images with the SR protocol (``searchsr.evaluate``:
PSNR-Y / SSIM-Y, border = scale, MATLAB-bicubic LR) for the model card.

Choices, measured with ONNX Runtime 1.32 on this project's 2-core AVX-512-VNNI CPU at one thread, 256x256
LR input, random weights; ``benchmarks/int8_latency.py --variants all`` reproduces them (ratios are INT8 /
FP32 latency, FP32 in ``upscale``'s session; the defaults give XLITE 0.72x, LITE 0.41x). Accuracy: a
short-trained XLITE loses 0.02 dB PSNR-Y on Set5 (sun80 calibration) with the defaults.

* **QDQ format** (QuantizeLinear/DequantizeLinear pairs around float ops): a standard ONNX graph
  every runtime can read; ONNX Runtime's CPU provider fuses the pairs into QLinearConv,
  QLinearLeakyRelu, QLinearAdd, QLinearMul and QLinearGlobalAveragePool.
* **Weights QInt8 per output channel, activations QUInt8 per tensor, MinMax calibration**: U8S8 is
  MLAS's fast integer path; QInt8 activations (S8S8) ran at 0.88x (LITE) and 0.93x (XLITE). Per-channel
  weights cost no time (per-tensor: the same within noise) and keep depthwise filters of very different
  ranges apart; ``reduce_range`` (7-bit weights, for CPUs without VNNI) changed neither time nor PSNR.
* **Squeeze-excite pooling as GlobalAveragePool**: the exporter writes SE's spatial mean as
  ReduceMean, which has no quantized kernel, so its input would be dequantized at full size (LITE
  0.54x, XLITE 0.81x); GlobalAveragePool is the same arithmetic and runs as QLinearGlobalAveragePool.
* **The HR end stays float32**: the last upsampling stage's depthwise conv, the post-processing convs,
  ``to_rgb``, the bicubic skip, the final add and the clamp (``FLOAT_PREFIXES``). There the tail has
  nf/2 channels at HR size, where ONNX Runtime's INT8 kernels ran slower than FP32 (all INT8: LITE
  0.47x, XLITE 0.90x), and the output keeps float precision: the skip adds the exact bicubic image
  and the correction is not rounded to a calibration grid (all INT8 lost 0.05 dB instead of 0.02).
* **``quant_pre_process`` first**: it folds the exporter's shared bias constants into initializers
  (without it those convs are not fused into QLinearConv but run dequantized in float: LITE 0.98x,
  XLITE 0.95x) and infers shapes.
* **Session** (recorded in the graph, applied by ``searchsr.bundle.ort_session``): ORT_ENABLE_ALL, whose
  NHWC transform of QLinearConv is what makes INT8 fast (at EXTENDED, the FP32 session's level: LITE
  0.64x, XLITE 0.79x). Its NCHWc transform of the float tail pays off for a tail of 16 channels or
  more (LITE's 36: 0.41x, without 0.48x) and is left out below (XLITE's 8, padded to the 16-channel
  AVX-512 block: 0.72x, with it 0.79x).
* **Short tensor names**: the quantizer's names (``..._output_0_quantized_DequantizeLinear``) made a
  small network's INT8 file larger than its FP32 file; tensors other than ``lr``/``sr`` are renamed
  ``t0, t1, ...`` (node names are kept, for profiles).
"""

from __future__ import annotations

import json
import logging
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from searchsr.bundle import (CORE_MASK, FP32_GRAPHS, INPUT_NAME, INT8_GRAPHS, INT8_SESSION, META_PREFIX, MIN_SIDE,
                             OUTPUT_NAME, PRECISION_KEY, SE_MEANS, OnnxModel)
from searchsr.config import ArchConfig
from searchsr.data import ImageSet, load_folder, load_images, load_source, to_tensor
from searchsr.defaults import DEFAULT_TILE
from searchsr.errors import UsageError
from searchsr.evaluate import EvalResult, check_scorable, evaluate, tiles

CALIB_COUNT = 32  # LR patches ...
CALIB_SIZE = 64  # ... of 64x64 pixels, spread over the training images, each at a seeded random position
CALIB_SEED = 0
FLOAT_PREFIXES = ("/model/post_dw/", "/model/post_pw/", "/model/post_act/", "/model/to_rgb/", "/model/skip/")
NCHWC_MIN_WIDTH = 16  # float tail channels from which ORT's NCHWc layout pays off (AVX-512 block)


# --------------------------------------------------------------------------- calibration data


def calibration_inputs(images: str | Path | ImageSet | None, scale: int, count: int = CALIB_COUNT,
                       size: int = CALIB_SIZE, seed: int = CALIB_SEED) -> list[np.ndarray]:
    """``count`` LR patches (float32 1x3xhxw in [0, 1], h, w = ``size`` or the whole side of a smaller
    image) of the HR training images ``images`` (a folder, an ``ImageSet``, or None: the embedded
    training photos), made like training LR (mod-crop, MATLAB bicubic). The same arguments give the
    same patches: patch ``i`` of ``count`` comes from image ``i * n // count`` of ``n`` (``i % n`` when
    ``count`` > ``n``), at a position drawn from ``seed``."""
    image_set = images if isinstance(images, ImageSet) else load_images(images, "train", scale)
    if image_set.scale != scale:
        raise UsageError(f"calibration images are prepared for x{image_set.scale}, the network is x{scale}")
    if count < 1 or size < 2:
        raise UsageError(f"calibration needs at least 1 patch of at least 2x2 pixels, got {count} of {size}")
    rng = np.random.default_rng(seed)
    patches = []
    for i in range(count):
        n = len(image_set.images)
        pair = image_set.images[i % n if count > n else i * n // count]
        (h, w), (ph, pw) = pair.lr.shape[:2], (min(size, pair.lr.shape[0]), min(size, pair.lr.shape[1]))
        if min(ph, pw) < MIN_SIDE:
            raise UsageError(f"{pair.name}: LR image {h}x{w} is too small to calibrate on (at least {MIN_SIDE}x{MIN_SIDE})")
        y, x = int(rng.integers(0, h - ph + 1)), int(rng.integers(0, w - pw + 1))
        patches.append(to_tensor(pair.lr[y : y + ph, x : x + pw])[None].numpy())
    return patches


# --------------------------------------------------------------------------- quantization


@dataclass(frozen=True)
class QuantSettings:
    """How ``quantize_onnx`` quantizes (the defaults are the measured best; see the module doc)."""

    activations: str = "QUInt8"  # or QInt8
    per_channel: bool = True
    reduce_range: bool = False
    float_tail: bool = True  # the HR end (FLOAT_PREFIXES, the last stage's depthwise conv) stays float32
    pool_rewrite: bool = True  # SE's ReduceMean -> GlobalAveragePool
    preprocess: bool = True  # onnxruntime.quantization.shape_inference.quant_pre_process
    method: str = "MinMax"  # onnxruntime.quantization.CalibrationMethod

    def to_dict(self) -> dict[str, Any]:
        return {"format": "QDQ", "weights": "QInt8", **asdict(self)}


class _Feeds:
    """An onnxruntime ``CalibrationDataReader``: the calibration feeds, once."""

    def __init__(self, feeds: list[dict[str, np.ndarray]]) -> None:
        self._feeds = iter(feeds)

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._feeds, None)


def quantize_onnx(model_bytes: bytes, calibration: Sequence[np.ndarray | Mapping[str, np.ndarray]],
                  settings: QuantSettings = QuantSettings()) -> bytes:
    """A searchsr ONNX graph (``model.onnx`` or a tiling helper, serialized) statically quantized to
    INT8, calibrated on ``calibration``: ``lr`` arrays, or whole feeds for graphs with more inputs.
    The result keeps the interface and metadata, adds ``precision`` and the tuned session settings."""
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    source = onnx.load_from_string(model_bytes)
    if settings.pool_rewrite:
        _pool_as_global_average(source)
    feeds = [dict(x) if isinstance(x, Mapping) else {INPUT_NAME: x} for x in calibration]
    with tempfile.TemporaryDirectory(prefix="searchsr-int8-") as tmp:
        src, pre, out = (str(Path(tmp) / name) for name in ("fp32.onnx", "pre.onnx", "int8.onnx"))
        onnx.save(source, src)
        if settings.preprocess:
            quant_pre_process(src, pre, skip_symbolic_shape=True)
            src = pre
        graph = onnx.load(src).graph
        exclude = _float_nodes(graph) if settings.float_tail else []
        logging.disable(logging.WARNING)  # the quantizer logs advice through the root logger
        try:
            quantize_static(src, out, _Feeds(feeds), quant_format=QuantFormat.QDQ,
                            activation_type=getattr(QuantType, settings.activations), weight_type=QuantType.QInt8,
                            per_channel=settings.per_channel, reduce_range=settings.reduce_range,
                            nodes_to_exclude=exclude, calibrate_method=getattr(CalibrationMethod, settings.method))
        finally:
            logging.disable(logging.NOTSET)
        result = onnx.load(out)
    _compact_names(result.graph)
    props = {p.key: p.value for p in source.metadata_props}
    props[PRECISION_KEY] = "int8"
    props[INT8_SESSION] = json.dumps(_session_settings(props, settings))
    del result.metadata_props[:]
    for key, value in props.items():
        entry = result.metadata_props.add()
        entry.key, entry.value = key, value
    result.doc_string = f"INT8 (QDQ, ONNX Runtime static quantization) of: {source.doc_string}"
    result.producer_name = "searchsr"
    onnx.checker.check_model(result)
    return result.SerializeToString()


def _pool_as_global_average(proto) -> None:
    """Rewrite every ReduceMean over H and W (keepdims) as GlobalAveragePool: the same arithmetic."""
    from onnx import helper

    for node in proto.graph.node:
        if node.op_type == "ReduceMean" and len(node.input) == 1:
            attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
            if list(attrs.get("axes", [])) == [2, 3] and attrs.get("keepdims", 1) == 1:
                node.op_type = "GlobalAveragePool"
                del node.attribute[:]


def _float_nodes(graph) -> list[str]:
    """Nodes that stay float32: the HR end (the last upsampling stage's depthwise conv, ``FLOAT_PREFIXES``),
    everything they feed (final add, clamp), and what the SE statistics graph computes from ``core_mask``."""
    names = [n.name for n in graph.node]
    stages = sorted({name.split("/")[3] for name in names if name.startswith("/model/upsample/upsample.")})
    prefixes = (*FLOAT_PREFIXES, *([f"/model/upsample/{stages[-1]}/dw/"] if stages else []))
    chosen = {n.name for n in graph.node if n.name.startswith(prefixes)}
    if any(o.name == OUTPUT_NAME for o in graph.output) and not any(n.startswith("/model/to_rgb/") for n in chosen):
        raise RuntimeError("the exported graph has no /model/to_rgb/ nodes: the exporter's naming changed")
    tensors = {CORE_MASK} | {o for n in graph.node if n.name in chosen for o in n.output}
    for node in graph.node:  # topological order: one pass reaches everything downstream
        if node.name in chosen or any(i in tensors for i in node.input):
            chosen.add(node.name)
            tensors.update(node.output)
    return sorted(chosen)


def _session_settings(props: Mapping[str, str], settings: QuantSettings) -> dict[str, Any]:
    """The ONNX Runtime session the INT8 graph is tuned for (see the module doc)."""
    arch = props.get(META_PREFIX + "arch") or ""
    width = ArchConfig.from_json(arch).tail if arch else NCHWC_MIN_WIDTH
    narrow = settings.float_tail and width < NCHWC_MIN_WIDTH
    return {"graph_optimization_level": "all", "disabled_optimizers": ["NchwcTransformer"] if narrow else []}


def _compact_names(graph) -> None:
    """Rename every tensor but the graph's inputs and outputs ``t0, t1, ...`` (see the module doc)."""
    keep = {v.name for v in (*graph.input, *graph.output)}
    names: dict[str, str] = {}

    def short(name: str) -> str:
        return name if not name or name in keep else names.setdefault(name, f"t{len(names)}")

    for tensor in graph.initializer:
        tensor.name = short(tensor.name)
    for node in graph.node:
        node.input[:] = [short(n) for n in node.input]
        node.output[:] = [short(n) for n in node.output]
    del graph.value_info[:]


# --------------------------------------------------------------------------- scoring


def evaluate_onnx(model: OnnxModel | bytes | str | Path, images: ImageSet, tile: int = DEFAULT_TILE,
                  threads: int | None = None) -> EvalResult:
    """PSNR-Y / SSIM-Y of an ONNX model on ``images`` with ``searchsr.evaluate.evaluate`` (border = scale,
    outputs rounded to uint8 as ``upscale`` writes them): an exported folder's ``OnnxModel`` (FP32 or
    ``int8=True``, tiled like ``upscale``), or one graph, FP32 or INT8, as a file or its bytes."""
    engine = model if isinstance(model, OnnxModel) else OnnxModel.from_graph(model, threads)
    return evaluate(lambda lr: engine.upscale(lr, tile), images)


def _scores(result: EvalResult) -> dict[str, Any]:
    return {"psnr_y": result.psnr_y, "ssim_y": result.ssim_y,
            "per_image": [{"name": s.name, "psnr_y": s.psnr_y, "ssim_y": s.ssim_y} for s in result.per_image]}


# --------------------------------------------------------------------------- export --int8


@dataclass(frozen=True)
class Int8Data:
    """The images ``export --int8`` calibrates on and scores with, and what was asked for."""

    calibration: ImageSet
    validation: ImageSet
    notes: tuple[str, ...]


def int8_data(scale: int, data: Mapping[str, Any] | None,
              calibration: str | Path | ImageSet | None = None) -> Int8Data:
    """Calibration: ``calibration`` (a folder of HR images or an ``ImageSet``), else the run's training images
    (its ``config.json`` ``data``), else the embedded training photos; validation: the run's validation
    images, else the embedded ones."""
    data = data or {}
    notes = []
    sets = {}
    for split in ("train", "val"):
        if split == "train" and calibration is not None:
            sets[split] = calibration if isinstance(calibration, ImageSet) else load_folder(calibration, scale)
            continue
        found = load_source(data.get(split), scale)
        if found is None and data.get(split):
            notes.append(f"the run's {split} images ({data[split]}) are not on this machine: used the embedded photos")
        sets[split] = found or load_images(None, split, scale)
    check_scorable(sets["val"])
    return Int8Data(sets["train"], sets["val"], tuple(notes))


def write_int8(folder: Path, images: Int8Data, settings: QuantSettings = QuantSettings(),
               count: int = CALIB_COUNT, size: int = CALIB_SIZE, seed: int = CALIB_SEED) -> tuple[list[str], dict]:
    """Quantize the FP32 graphs in ``folder`` (an export in progress) into its INT8 files and score both
    precisions; returns the names written and the model card's ``int8`` section."""
    import onnxruntime

    fp32 = OnnxModel(folder)
    patches = calibration_inputs(images.calibration, fp32.scale, count, size, seed)
    full, tiles_file, stats_file = INT8_GRAPHS
    (folder / full).write_bytes(quantize_onnx((folder / FP32_GRAPHS[0]).read_bytes(), patches, settings))
    written = [full]
    if fp32.n_se:  # the helpers see the same activations as the whole graph: its exact image-wide SE means
        feeds = []
        for x in patches:
            means = fp32.se_means(x, tiles(*x.shape[-2:], max(x.shape[-2:]), fp32.radius))
            feeds.append({INPUT_NAME: x, SE_MEANS: means, CORE_MASK: np.ones((1, 1, *x.shape[-2:]), np.float32)})
        for name, source, session in ((tiles_file, FP32_GRAPHS[1], fp32.tiles_session),
                                      (stats_file, FP32_GRAPHS[2], fp32.stats_session)):
            inputs = {i.name for i in session.get_inputs()}
            calib = [{k: v for k, v in feed.items() if k in inputs} for feed in feeds]
            (folder / name).write_bytes(quantize_onnx((folder / source).read_bytes(), calib, settings))
            written.append(name)
    int8 = OnnxModel(folder, int8=True)
    before, after = evaluate_onnx(fp32, images.validation), evaluate_onnx(int8, images.validation)
    fp32_bytes, int8_bytes = ((folder / f).stat().st_size for f in (FP32_GRAPHS[0], full))
    session = json.loads(int8.full.get_modelmeta().custom_metadata_map[INT8_SESSION])
    section = {
        "file": full, "tiling_helpers": written[1:], "bytes": int8_bytes, "fp32_bytes": fp32_bytes,
        "size_ratio": int8_bytes / fp32_bytes,
        "quantization": {"tool": "onnxruntime.quantization.quantize_static", **settings.to_dict(),
                         "float32_nodes": "bicubic skip, HR end (last upsampling depthwise conv, post_dw, post_pw, "
                                          "to_rgb), final add and clamp" if settings.float_tail else "none",
                         "ort_session": session},
        "calibration": {"images": images.calibration.source, "image_count": len(images.calibration.images),
                        "patches": count, "patch_size_lr": size, "seed": seed},
        "validation": {"images": images.validation.source, "image_count": after.images,
                       "protocol": "PSNR-Y / SSIM-Y (BT.601), crop border = scale, MATLAB-bicubic LR, "
                                   "outputs rounded to uint8",
                       "fp32": _scores(before), "int8": _scores(after),
                       "psnr_y_diff_db": after.psnr_y - before.psnr_y, "ssim_y_diff": after.ssim_y - before.ssim_y},
        "onnxruntime": onnxruntime.__version__, "notes": list(images.notes),
    }
    return written, section

