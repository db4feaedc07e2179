"""The model card of an exported folder: what the model is, where it came from, how it was checked.

``make_card`` gathers it (written as ``model_card.json``), ``render_card`` turns it into
``model_card.md`` and ``summary`` into what ``searchsr export`` prints. The card's
``provenance`` is the caller's (``searchsr.export.run_provenance`` builds it from a run folder).
"""

from __future__ import annotations

import datetime
import hashlib
import json
import platform
import shlex
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from searchsr.bundle import (CARD_JSON, CARD_MD, INPUT_NAME, MIN_SIDE, ONNX_FILE, OPSET, OUTPUT_NAME, STATS_FILE,
                             TILES_FILE, TS_FILE)
from searchsr.config import ArchConfig
from searchsr.runs import RESULT_FILE

FORMAT = "searchsr-model-card/1"
COST_CONVENTION = "the paper's: FLOPs = 2 x MACs incl. bias, BN and activation elements (searchsr.cost)"


def sha256(path: Path) -> str:
    """Hex SHA-256 of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def versions() -> dict[str, str]:
    """Python and the packages that made (and can run) the export."""
    from importlib import metadata

    out = {"python": platform.python_version(), "torch": torch.__version__, "numpy": np.__version__}
    for name in ("onnx", "onnxruntime", "safetensors", "searchsr"):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


def make_card(name: str, cfg: ArchConfig, cost: dict[str, Any], params_fused: int, provenance: dict[str, Any],
              formats: Sequence[str], radius: int, tolerance: float, checks: list[dict[str, Any]],
              folder: Path, written: Sequence[str], int8: dict[str, Any] | None = None) -> dict[str, Any]:
    """The card of the export in ``folder``, whose ``written`` files it lists with sizes and digests.
    ``radius`` is the context a tile needs; ``checks`` are the verification's comparisons; ``int8`` is
    ``searchsr.quantize.write_int8``'s section (INT8 vs FP32 scores, calibration, settings), if any."""
    card = {
        "format": FORMAT,
        "name": name,
        "created_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "arch": cfg.to_dict(),
        "scale": cfg.scale,
        "cost": {**cost, "convention": COST_CONVENTION, "params_fused": params_fused},
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
                  "file": ONNX_FILE, "tiling_helpers": [f for f in written if f in (TILES_FILE, STATS_FILE)],
                  "context_radius_lr_px": radius} if ONNX_FILE in written else None),
        "torchscript": {"file": TS_FILE, "method": "torch.jit.trace"} if "torchscript" in formats else None,
        "int8": int8,
        "verification": {"tolerance": tolerance, "runtime": "onnxruntime CPUExecutionProvider",
                         "max_abs_diff": max((c["max_abs_diff"] for c in checks), default=None),
                         "checks": checks},
        "versions": versions(),
        "files": {f: {"bytes": (folder / f).stat().st_size, "sha256": sha256(folder / f)} for f in written},
    }
    return json.loads(json.dumps(card))  # exactly what the JSON file holds


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
        lines += ["", f"Metrics: none recorded (no {RESULT_FILE})."]
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
    if card.get("int8"):
        lines += render_int8(card["int8"])
    ver = card["verification"]
    lines += ["", "## Verification", "",
              f"Max |exported - PyTorch| on [0, 1] outputs, tolerance {ver['tolerance']:g} "
              f"({ver['runtime']}):", "", "| file | input | max abs diff |", "| --- | --- | --- |"]
    lines += [f"| {c['file']} | {c['input']} | {c['max_abs_diff']:.3g} |" for c in ver["checks"]]
    lines += ["", "## Files", "", "| file | bytes | sha256 |", "| --- | --- | --- |"]
    lines += [f"| {name} | {info['bytes']:,} | `{info['sha256']}` |" for name, info in card["files"].items()]
    lines += ["", "## Versions", "", ", ".join(f"{k} {v}" for k, v in card["versions"].items()), ""]
    return "\n".join(lines)


def render_int8(int8: dict[str, Any]) -> list[str]:
    """The card's INT8 section, as Markdown lines."""
    val, cal, q = int8["validation"], int8["calibration"], int8["quantization"]
    lines = ["", "## INT8", "",
             (f"`{int8['file']}`{''.join(f', `{f}`' for f in int8['tiling_helpers'])}: ONNX Runtime static "
              f"quantization ({q['format']}, weights {q['weights']} {'per channel' if q['per_channel'] else 'per tensor'}, "
              f"activations {q['activations']}, {q['method']} calibration, reduce_range {q['reduce_range']}); "
              f"float32: {q['float32_nodes']}. Session: `{json.dumps(q['ort_session'])}`; "
              f"onnxruntime {int8['onnxruntime']}. {int8['bytes']:,} bytes ({int8['size_ratio']:.2f}x of FP32's "
              f"{int8['fp32_bytes']:,})."), "",
             (f"Calibration: {cal['patches']} LR patches of {cal['patch_size_lr']}x{cal['patch_size_lr']} px, "
              f"seed {cal['seed']}, from `{cal['images']}` ({cal['image_count']} images)."), "",
             f"Validation on `{val['images']}` ({val['image_count']} images; {val['protocol']}):", "",
             "| graph | PSNR-Y (dB) | SSIM-Y |", "| --- | --- | --- |",
             f"| FP32 | {val['fp32']['psnr_y']:.3f} | {val['fp32']['ssim_y']:.4f} |",
             f"| INT8 | {val['int8']['psnr_y']:.3f} | {val['int8']['ssim_y']:.4f} |",
             f"| INT8 - FP32 | {val['psnr_y_diff_db']:+.3f} | {val['ssim_y_diff']:+.4f} |"]
    return lines + [f"- note: {note}" for note in int8.get("notes") or []]


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
    if card.get("int8"):
        int8, val = card["int8"], card["int8"]["validation"]
        lines.append(f"  int8: {int8['file']} {int8['bytes']:,} bytes ({int8['size_ratio']:.2f}x FP32); PSNR-Y "
                     f"{val['int8']['psnr_y']:.2f} dB vs FP32 {val['fp32']['psnr_y']:.2f} dB "
                     f"({val['psnr_y_diff_db']:+.3f} dB) on {val['image_count']} validation images")
    return "\n".join(lines)
