"""``searchsr export | upscale``: a trained network leaves searchsr, and runs on users' images."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from searchsr.cli import options
from searchsr.defaults import DEFAULT_STORAGE, DEFAULT_TILE
from searchsr.errors import UsageError


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("export", parents=[options.common(),
                                          options.json_output("print the model card as one JSON object")],
                       help="write a trained network as YAML, safetensors, ONNX and TorchScript, "
                            "verified, with a model card",
                       description="Export a finished run (or a study's trial) into a new folder: arch.yaml, "
                                   "weights.safetensors, BN-fused model.onnx (input lr float32 NCHW RGB in [0,1], "
                                   "any height/width; output sr at the network's scale) and model.ts, plus "
                                   "model_card.json/.md. ONNX and TorchScript are checked against PyTorch on real "
                                   "photos (max |diff| <= 1e-4); nothing is written if they disagree.")
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--checkpoint", metavar="RUN", help="a finished run folder written by `searchsr train`")
    which.add_argument("--study", metavar="NAME", help="a search study (with --trial)")
    p.add_argument("--trial", type=int, metavar="K", help="trial number in --study")
    p.add_argument("--storage",
                   help=f"SQLAlchemy URL of the study's storage (with --study; default: {DEFAULT_STORAGE})")
    p.add_argument("--out", required=True, help="output folder; must be new or empty")
    p.add_argument("--format", default="yaml,safetensors,onnx,torchscript",
                   help="comma-separated subset of yaml,safetensors,onnx,torchscript (default: all)")
    p.add_argument("--int8", action="store_true",
                   help="also write model_int8.onnx: model.onnx statically quantized by ONNX Runtime (QDQ, per-channel "
                        "INT8 weights, UINT8 activations), calibrated on LR patches of the run's training images; the "
                        "card reports FP32 and INT8 PSNR-Y/SSIM-Y on the run's validation images (embedded photos "
                        "when the run's folders are not here)")
    p.add_argument("--calib-dir", metavar="DIR",
                   help="with --int8: calibrate on the HR images in DIR instead of the run's training images")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("upscale", parents=[options.common(),
                                           options.json_output("print one JSON list, an object per image")],
                       help="super-resolve images with an exported model folder (tiled, bounded memory)",
                       description="Upscale images by the model's scale with a folder written by `searchsr export`. "
                                   "Large images run in overlapping tiles whose squeeze-excite statistics are "
                                   "measured over the whole image, so tiling does not change the result. Outputs "
                                   "are PNGs named after the inputs; gray stays gray, alpha is upscaled bicubically.")
    p.add_argument("--model", required=True, metavar="DIR", help="folder written by `searchsr export`")
    p.add_argument("inputs", nargs="+", metavar="IN", help="image files (PNG, JPEG, BMP, ...)")
    p.add_argument("--out", required=True, metavar="DIR", help="output folder (created if missing)")
    p.add_argument("--tile", type=int, default=DEFAULT_TILE,
                   help=f"LR tile side; larger images run in overlapping tiles (default: {DEFAULT_TILE})")
    p.add_argument("--backend", choices=("onnx", "torch"), default="onnx",
                   help="onnx: ONNX Runtime on model.onnx; torch: arch.yaml + weights.safetensors (default: onnx)")
    p.add_argument("--int8", action="store_true",
                   help="run model_int8.onnx (written by `export --int8`), tiled like model.onnx through its INT8 "
                        "helper graphs; faster on CPUs, the card gives its PSNR-Y cost")
    p.set_defaults(func=cmd_upscale)


def cmd_export(args: argparse.Namespace) -> int:
    from searchsr.card import summary
    from searchsr.export import check_out_dir, export_model, load_run, parse_formats

    formats = parse_formats(args.format)
    if args.calib_dir is not None and not args.int8:
        raise UsageError("--calib-dir chooses the INT8 calibration images: it goes with --int8")
    if args.int8 and "onnx" not in formats:
        raise UsageError("--int8 quantizes model.onnx: give a --format that includes onnx")
    if args.checkpoint:
        if args.trial is not None or args.storage is not None:
            raise UsageError("--trial and --storage go with --study, not --checkpoint")
    elif args.trial is None:
        raise UsageError("--study needs --trial K (the trial number to export)")
    else:
        from searchsr.storage import check_study_name

        check_study_name(args.study)
    check_out_dir(Path(args.out))  # fail before loading anything
    if args.checkpoint:
        cfg, model, provenance = load_run(args.checkpoint)
    else:
        from searchsr.storage import load_study, open_storage
        from searchsr.study import trial_run_dir

        options.quiet_optuna()
        study = load_study(args.study, open_storage(args.storage or DEFAULT_STORAGE, create=False))
        cfg, model, provenance = load_run(trial_run_dir(study, args.trial))
        provenance["source"] = {**provenance["source"], "kind": "study", "study": args.study, "trial": args.trial}
    card = export_model(cfg, model, args.out, formats, provenance, int8=args.int8,
                        calibration=args.calib_dir)
    print(json.dumps(card) if args.json else summary(card, args.out))
    return 0


def cmd_upscale(args: argparse.Namespace) -> int:
    from searchsr.upscale import upscale_files

    def report(r) -> None:
        (h, w), (sh, sw) = r.lr_size, r.sr_size
        print(f"{r.input} -> {r.output}: {w}x{h} -> {sw}x{sh} {r.mode} ({r.seconds:.1f} s)", flush=True)

    results = upscale_files(args.model, args.inputs, args.out, tile=args.tile, backend=args.backend,
                            on_done=None if args.json else report, int8=args.int8)
    if args.json:
        print(json.dumps([r.to_dict() for r in results]))
    return 0
