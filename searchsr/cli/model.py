"""``searchsr profile | train | eval``: one network's costs, training and scores."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path

from searchsr.cli import options
from searchsr.config import AnyArch, apply_overrides, load_arch
from searchsr.defaults import DEFAULT_TILE
from searchsr.errors import UsageError

MIN_LR_SIDE = 4


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("profile", parents=[options.common(), options.arch(), options.device(), options.json_output(),
                                           options.latency_backend("torch")],
                       help="parameters, FLOPs, activations, memory (and latency) of one network",
                       description="Count a network's cost the way the paper does (FLOPs for a 256x256 "
                                   "LR input by default); --latency also times the BN-fused network.")
    p.add_argument("--lr-size", nargs=2, type=int, default=[256, 256], metavar=("H", "W"),
                   help="LR input size (default: 256 256, the paper's)")
    p.add_argument("--latency", action="store_true", help="also measure latency (eval, BN fused)")
    p.add_argument("--runs", type=int, default=20, help="timed runs after 3 warm-up runs (default: 20)")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads while timing (default: 1)")
    p.set_defaults(func=cmd_profile)

    p = sub.add_parser("train", parents=[options.common(), options.arch(), options.device(), options.training(),
                                         options.json_output("print the result as one JSON object")],
                       help="train one network (Sec. 4.1: L1, Adam, halving lr) into a run folder",
                       description="Train a network on random LR/HR patches and validate it (PSNR-Y/SSIM-Y "
                                   "against bicubic). Without --train-dir/--val-dir the scikit-image sample "
                                   "photos are used (fixed split, nothing downloaded).")
    p.add_argument("--schedule", default="short",
                   help="smoke, short (search proxy), medium, full (the paper's) or a YAML file (default: short)")
    p.add_argument("--train-dir", help="folder of HR training images (default: embedded skimage photos)")
    p.add_argument("--val-dir", help="folder of HR validation images (default: embedded skimage photos)")
    p.add_argument("--val-count", type=int, default=0, metavar="K",
                   help="hold out K images of --train-dir for validation, chosen by file name (instead of "
                        "--val-dir; default: 0)")
    p.add_argument("--out", required=True, help="run folder; must be new or empty unless --resume")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    p.add_argument("--seed", type=int, default=0, help="initialisation and patch sampling seed (default: 0)")
    p.add_argument("--amp", dest="precision", action="store_const", const="fp16",
                   help=argparse.SUPPRESS)  # before --precision: --amp was fp16 autocast
    p.add_argument("--tile", type=int, default=DEFAULT_TILE,
                   help=f"LR tile side for validating large images (default: {DEFAULT_TILE})")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("eval", parents=[options.common(), options.arch(with_arch=False), options.device(),
                                        options.json_output()],
                       help="PSNR-Y/SSIM-Y of bicubic, a network or a trained run on a folder",
                       description="Score x4 (or --scale) super-resolution of every image in --data: LR made "
                                   "by MATLAB bicubic, Y channel, crop border = scale, mean over images.")
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--arch", help="bicubic, a preset (lite, xlite) or reference network (msrresnet, fsrcnn), "
                                      "untrained, or a YAML/JSON config file")
    which.add_argument("--checkpoint", metavar="RUN", help="a finished run folder written by `searchsr train`")
    p.add_argument("--data", required=True, help="folder of HR images")
    p.add_argument("--scale", type=int, help="upscaling factor (default: the network's; 4 for bicubic)")
    p.add_argument("--save-dir", help="write each SR output here as PNG, named after its HR file")
    p.add_argument("--tile", type=int, default=DEFAULT_TILE,
                   help=f"LR tile side; larger images run in overlapping tiles (default: {DEFAULT_TILE})")
    p.set_defaults(func=cmd_eval)


def resolve_arch(args: argparse.Namespace) -> AnyArch:
    return apply_overrides(load_arch(args.arch), args.overrides)


def lr_size(values: list[int]) -> tuple[int, int]:
    h, w = values
    if h < MIN_LR_SIDE or w < MIN_LR_SIDE:
        raise UsageError(f"--lr-size must be at least {MIN_LR_SIDE}x{MIN_LR_SIDE}, got {h}x{w}")
    return h, w


def _at_least(name: str, value: int, low: int) -> None:
    if value < low:
        raise UsageError(f"{name} must be >= {low}, got {value}")


def cmd_profile(args: argparse.Namespace) -> int:
    from searchsr.arch import build_model
    from searchsr.cost import WARMUP_RUNS, count_cost, measure_latency, peak_memory_bytes, prepare_for_timing
    from searchsr.memory import check_fits_memory
    from searchsr.runtimes import check_backend, command_latency, runner, runtime_info
    from searchsr.train import resolve_device

    cfg = resolve_arch(args)
    size = lr_size(args.lr_size)
    _at_least("--runs", args.runs, 1)
    _at_least("--threads", args.threads, 1)
    device = str(resolve_device(args.device)) if args.latency else None
    check_backend(args.latency_backend, args.latency_cmd, args.latency_timeout)
    if args.latency and args.latency_backend in ("onnxruntime", "executorch") and device != "cpu":
        raise UsageError(f"--latency-backend {args.latency_backend} times a CPU runtime: add --device cpu")
    check_fits_memory(cfg, size)
    model = build_model(cfg)
    result = {"arch": cfg.to_dict(), **count_cost(model, size).to_dict()}
    result["memory_bytes"] = peak_memory_bytes(prepare_for_timing(model), size)
    if args.latency and args.latency_backend == "command":
        ms, details = command_latency(model, cfg, args.latency_cmd, args.latency_timeout, size)
        result.update(latency_ms_median=ms, latency_ms_iqr=float(details.get("iqr_ms", 0) or 0),
                      latency_runs=details.get("runs"), latency_threads=details.get("threads"), device="command",
                      **{f"latency_{k}": v for k, v in runtime_info("command", 0, details).to_dict().items()
                         if k != "threads"})
    elif args.latency:
        from tqdm import tqdm

        with tqdm(total=WARMUP_RUNS + args.runs, desc=f"timing on {device}", unit="run", leave=False, file=sys.stderr,
                  disable=None) as bar:
            (stats,) = measure_latency([runner(model, cfg, args.latency_backend, args.threads, size)], size,
                                       runs=args.runs, threads=args.threads, device=device, on_run=bar.update)
        result.update(latency_ms_median=stats.median_ms, latency_ms_iqr=stats.iqr_ms,
                      latency_runs=stats.runs, latency_threads=stats.threads, device=stats.device,
                      **{f"latency_{k}": v for k, v in runtime_info(args.latency_backend, args.threads).to_dict().items()
                         if k != "threads"})
    if args.json:
        print(json.dumps(result))
        return 0
    h, w = size
    rows = [("params", f"{result['params']:,}"),
            ("FLOPs", f"{result['flops'] / 1e9:.3f} G"),
            ("MACs", f"{result['macs'] / 1e9:.3f} G"),
            ("activations", f"{result['activations'] / 1e6:.2f} M"),
            ("peak memory (fused)", f"{result['memory_bytes'] / 2**20:.1f} MiB")]
    if args.latency:
        rows.append(("latency (fused)", f"{result['latency_ms_median']:.2f} ms median, "
                                        f"IQR {result['latency_ms_iqr']:.2f} ms, {args.threads} thread(s), "
                                        f"{result['latency_runtime']} {result['latency_version']}"))
    print(f"{cfg.to_json()}  LR {h}x{w} -> x{cfg.scale}")
    for name, value in rows:
        print(f"  {name:<20} {value}")
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from searchsr.data import load_split
    from searchsr.evaluate import check_tile
    from searchsr.schedule import load_schedule
    from searchsr.train import train

    cfg = resolve_arch(args)
    check_tile(args.tile)
    schedule = load_schedule(args.schedule)
    train_set, val_set = load_split(args.train_dir, args.val_dir, cfg.scale, args.val_count)
    command = {k: v for k, v in vars(args).items() if k not in ("func", "debug")}
    result = train(cfg, schedule, train_set, val_set, args.out, seed=args.seed, resume=args.resume,
                   progress=not args.no_progress, device=args.device, precision=args.precision,
                   memory_format=args.memory_format, compile=args.compile, tile=args.tile, command=command)
    if args.json:
        print(json.dumps(result.to_dict()))
        return 0
    val, bicubic = result.val, result.bicubic
    print(f"{cfg.to_json()}  {schedule.name}: {result.step} steps in {result.seconds:.1f} s on {result.device} "
          f"({result.precision}, {result.memory_format})")
    print(f"validation on {val_set.source}: PSNR-Y {val.psnr_y:.2f} dB, SSIM-Y {val.ssim_y:.4f} "
          f"({val.psnr_y - bicubic.psnr_y:+.2f} dB vs bicubic {bicubic.psnr_y:.2f} dB / {bicubic.ssim_y:.4f})")
    print(f"run folder: {args.out}")
    return 0


def _eval_upscaler(args: argparse.Namespace) -> tuple[Callable, int, str]:
    """The upscaler --arch/--checkpoint name, its scale, and a label for the report."""
    import torch

    from searchsr.arch import build_model
    from searchsr.evaluate import bicubic_upscaler, check_tile, model_upscaler
    from searchsr.train import load_trained, resolve_device

    if args.arch == "bicubic":
        if args.overrides:
            raise UsageError("--set does not apply to --arch bicubic")
        scale = args.scale or 4
        return bicubic_upscaler(scale), scale, "bicubic"
    check_tile(args.tile)
    device = resolve_device(args.device)
    if args.checkpoint:
        if args.overrides:
            raise UsageError("--set does not apply to --checkpoint (the run fixes the architecture)")
        cfg, model = load_trained(args.checkpoint)
        label = f"checkpoint {args.checkpoint}"
    else:
        cfg = resolve_arch(args)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            model = build_model(cfg)
        label = f"{args.arch} (untrained, seed 0)"
    if args.scale is not None and args.scale != cfg.scale:
        raise UsageError(f"--scale {args.scale} differs from the network's x{cfg.scale}")
    return model_upscaler(model.to(device), args.tile), cfg.scale, label


def cmd_eval(args: argparse.Namespace) -> int:
    from searchsr.data import load_folder
    from searchsr.evaluate import evaluate

    upscaler, scale, label = _eval_upscaler(args)
    images = load_folder(args.data, scale)
    result = evaluate(upscaler, images, Path(args.save_dir) if args.save_dir else None)
    if args.json:
        print(json.dumps({"arch": label, "data": images.source, "scale": scale, **result.to_dict()}))
        return 0
    for score in result.per_image:
        print(f"  {score.name:<24} PSNR-Y {score.psnr_y:6.2f} dB  SSIM-Y {score.ssim_y:.4f}")
    print(f"{label} x{scale} on {images.source}: PSNR-Y {result.psnr_y:.2f} dB, SSIM-Y {result.ssim_y:.4f} "
          f"(mean of {result.images} images, {result.seconds:.1f} s)")
    return 0
