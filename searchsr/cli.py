"""``searchsr`` command line: one entry point, one subcommand per job.

Bad input is a one-line ``searchsr: error: ...`` on stderr with exit code 2 and no
traceback; subcommands validate everything before they write anything.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from searchsr.arch import build_model
from searchsr.config import ArchConfig, apply_overrides, load_arch
from searchsr.evaluate import DEFAULT_TILE


class UsageError(ValueError):
    """Bad user input: reported in one line, exit code 2."""


def _arch_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--arch", default="xlite",
                        help="preset (lite = nf 72/N 16, xlite = nf 16/N 8) or a YAML/JSON config file "
                             "(default: xlite)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config field, e.g. --set nf=32 --set se=false (repeatable); "
                             f"fields: {', '.join(ArchConfig.__dataclass_fields__)}")


def _resolve_arch(args: argparse.Namespace) -> ArchConfig:
    return apply_overrides(load_arch(args.arch), args.overrides)


def _lr_size(values: Sequence[int]) -> tuple[int, int]:
    h, w = values
    if h < 4 or w < 4:
        raise UsageError(f"--lr-size must be at least 4x4, got {h}x{w}")
    return h, w


def cmd_profile(args: argparse.Namespace) -> int:
    from searchsr.cost import count_cost, measure_latency, peak_memory_bytes, prepare_for_timing

    cfg = _resolve_arch(args)
    lr_size = _lr_size(args.lr_size)
    model = build_model(cfg)
    result = {"arch": cfg.to_dict(), **count_cost(model, lr_size).to_dict()}
    result["memory_bytes"] = peak_memory_bytes(prepare_for_timing(model), lr_size)
    if args.latency:
        (stats,) = measure_latency([prepare_for_timing(model)], lr_size, runs=args.runs,
                                   threads=args.threads, device=args.device)
        result.update(latency_ms_median=stats.median_ms, latency_ms_iqr=stats.iqr_ms,
                      latency_runs=stats.runs, latency_threads=stats.threads, device=stats.device)
    if args.json:
        print(json.dumps(result))
        return 0
    h, w = lr_size
    rows = [("params", f"{result['params']:,}"),
            ("FLOPs", f"{result['flops'] / 1e9:.3f} G"),
            ("MACs", f"{result['macs'] / 1e9:.3f} G"),
            ("activations", f"{result['activations'] / 1e6:.2f} M"),
            ("peak memory (fused)", f"{result['memory_bytes'] / 2**20:.1f} MiB")]
    if args.latency:
        rows.append(("latency (fused)", f"{result['latency_ms_median']:.2f} ms median, "
                                        f"IQR {result['latency_ms_iqr']:.2f} ms, {args.threads} thread(s), "
                                        f"{result['device']}"))
    print(f"{cfg.to_json()}  LR {h}x{w} -> x{cfg.scale}")
    for name, value in rows:
        print(f"  {name:<20} {value}")
    return 0


def cmd_bench_latency(args: argparse.Namespace) -> int:
    """Stability of the latency measurement and the BN-fusion speed-up (a benchmark, not a test)."""
    from searchsr.config import PRESETS
    from searchsr.cost import measure_latency, prepare_for_timing

    lr_size = _lr_size(args.lr_size)
    names = [n.strip() for n in args.archs.split(",") if n.strip()]
    models = {n: build_model(load_arch(n)) for n in names}
    reference = prepare_for_timing(build_model(PRESETS["xlite"]))
    report = {}
    for name, model in models.items():
        fused, unfused = prepare_for_timing(model), model.eval()
        medians, speedups, ratios = [], [], []
        for _ in range(args.repeats):
            f, u, ref = measure_latency([fused, unfused, reference], lr_size, runs=args.runs,
                                        threads=args.threads, device=args.device)
            medians.append(f.median_ms)
            speedups.append(u.median_ms / f.median_ms)
            ratios.append(f.median_ms / ref.median_ms)
        cv = statistics.stdev(medians) / statistics.mean(medians) if len(medians) > 1 else 0.0
        report[name] = {"medians_ms": medians, "cv_of_median": cv,
                        "fusion_speedup": statistics.median(speedups),
                        "ratio_to_xlite": statistics.median(ratios),
                        "cv_of_ratio": (statistics.stdev(ratios) / statistics.mean(ratios)
                                        if len(ratios) > 1 else 0.0)}
        if not args.json:
            print(f"{name}: median {statistics.median(medians):.2f} ms over {args.repeats}x{args.runs} runs, "
                  f"CV of median {100 * cv:.2f}%, fused speed-up {report[name]['fusion_speedup']:.3f}x, "
                  f"x{report[name]['ratio_to_xlite']:.3f} XLITE (CV {100 * report[name]['cv_of_ratio']:.2f}%)",
                  flush=True)
    if args.json:
        print(json.dumps(report))
    return 0


def _eval_upscaler(args: argparse.Namespace) -> tuple[Callable, int, str]:
    """The upscaler --arch/--checkpoint name, its scale, and a label for the report."""
    import torch

    from searchsr.evaluate import bicubic_upscaler, model_upscaler
    from searchsr.train import load_trained, resolve_device

    if args.arch == "bicubic":
        if args.overrides:
            raise UsageError("--set does not apply to --arch bicubic")
        scale = args.scale or 4
        return bicubic_upscaler(scale), scale, "bicubic"
    if args.checkpoint:
        if args.overrides:
            raise UsageError("--set does not apply to --checkpoint (the run fixes the architecture)")
        cfg, model = load_trained(args.checkpoint)
        label = f"checkpoint {args.checkpoint}"
    else:
        cfg = _resolve_arch(args)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            model = build_model(cfg)
        label = f"{args.arch} (untrained, seed 0)"
    if args.scale is not None and args.scale != cfg.scale:
        raise UsageError(f"--scale {args.scale} differs from the network's x{cfg.scale}")
    model = model.to(resolve_device(args.device))
    return model_upscaler(model, args.tile), cfg.scale, label


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


def cmd_train(args: argparse.Namespace) -> int:
    from searchsr.data import load_images
    from searchsr.schedule import load_schedule
    from searchsr.train import DivergedError, train

    cfg = _resolve_arch(args)
    schedule = load_schedule(args.schedule)
    train_set = load_images(args.train_dir, "train", cfg.scale)
    val_set = load_images(args.val_dir, "val", cfg.scale)
    command = {k: v for k, v in vars(args).items() if k != "func"}
    try:
        result = train(cfg, schedule, train_set, val_set, args.out, seed=args.seed, resume=args.resume,
                       progress=not args.no_progress, device=args.device, amp=args.amp, tile=args.tile,
                       command=command)
    except DivergedError as err:
        print(f"searchsr: error: {err}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(result.to_dict()))
        return 0
    val, bicubic = result.val, result.bicubic
    print(f"{cfg.to_json()}  {schedule.name}: {result.step} steps in {result.seconds:.1f} s on {result.device}")
    print(f"validation on {val_set.source}: PSNR-Y {val.psnr_y:.2f} dB, SSIM-Y {val.ssim_y:.4f} "
          f"({val.psnr_y - bicubic.psnr_y:+.2f} dB vs bicubic {bicubic.psnr_y:.2f} dB / {bicubic.ssim_y:.4f})")
    print(f"run folder: {args.out}")
    return 0


def _for_workers(path: str | None) -> str | None:
    """Absolute form of a user path: Ray workers run in their own working directories."""
    return None if path is None else str(Path(path).resolve())


def _for_workers_schedule(spec: str) -> str:
    from searchsr.schedule import shipped_schedules

    return spec if spec in shipped_schedules() else str(Path(spec).resolve())


def _space_scales(space) -> list[int]:
    """Every upscaling factor a trial of ``space`` can train at."""
    param = space.params.get("scale")
    if param is None:
        return [ArchConfig().scale]
    return sorted({*param.probes(), *((ArchConfig().scale,) if param.when else ())})


def _check_search_images(train_dir: str | None, val_dir: str | None, scales: Sequence[int],
                         patch_size: int) -> None:
    """What each trial will do with the folders, done once up front: every image readable, large
    enough for a training patch (train) and for scoring (val), at every scale. The embedded
    default photos always are."""
    from searchsr.data import check_patch_size, load_images
    from searchsr.evaluate import check_scorable

    for folder, split, check in ((train_dir, "train", lambda s: check_patch_size(s, patch_size)),
                                 (val_dir, "val", check_scorable)):
        if folder is None:
            continue
        for scale in scales:
            images = load_images(folder, split, scale)
            try:
                check(images)
            except ValueError as err:
                raise ValueError(f"--{split}-dir {folder}: {err}") from None


def _search_settings(args: argparse.Namespace):
    """Everything ``run`` needs, validated before any storage, folder or Ray is touched."""
    from pathlib import Path

    from searchsr.export import writable_ancestor
    from searchsr.schedule import load_schedule
    from searchsr.space import Constraint, load_space, parse_objectives
    from searchsr.study import SAMPLERS, check_study_name, preset_params
    from searchsr.tuner import SearchSettings

    space = load_space(args.space)
    objectives = parse_objectives(args.objectives)
    extra = []
    for text in args.constraint:
        try:
            extra.append(Constraint.parse(text))
        except ValueError as err:
            raise ValueError(f"--constraint: {err}") from None
    if args.sampler not in SAMPLERS:
        raise ValueError(f"--sampler must be one of {', '.join(SAMPLERS)}, got {args.sampler!r}")
    for name, value, low in (("--trials", args.trials, 1), ("--cpus-per-trial", args.cpus_per_trial, 1),
                             ("--concurrency", args.concurrency, 0), ("--seed", args.seed, 0),
                             ("--max-failures", args.max_failures, 0), ("--stale-after", args.stale_after, 2)):
        if value < low:
            raise ValueError(f"{name} must be >= {low}, got {value}")
    if args.gpus_per_trial < 0:
        raise ValueError(f"--gpus-per-trial must be >= 0, got {args.gpus_per_trial}")
    check_study_name(args.study)
    runs_root = Path(args.runs_dir) / args.study
    if runs_root.exists() and not runs_root.is_dir():
        raise ValueError(f"--runs-dir: {runs_root} exists and is not a folder")
    writable_ancestor(runs_root, runs_root)
    schedule = load_schedule(args.schedule)
    _check_search_images(args.train_dir, args.val_dir, _space_scales(space), schedule.patch_size)
    enqueue = tuple(n.strip() for n in args.enqueue.split(",") if n.strip()) if args.enqueue else ()
    preset_params(space, enqueue)  # before the storage is touched
    return SearchSettings(space=space, objectives=objectives, constraints=space.constraints + tuple(extra),
                          study=args.study, storage=args.storage, sampler=args.sampler, seed=args.seed,
                          trials=args.trials, schedule=_for_workers_schedule(args.schedule),
                          train_dir=_for_workers(args.train_dir), val_dir=_for_workers(args.val_dir),
                          runs_root=runs_root, enqueue=enqueue,
                          cpus_per_trial=args.cpus_per_trial, gpus_per_trial=args.gpus_per_trial,
                          concurrency=args.concurrency, address=args.address, latency_runs=args.latency_runs,
                          max_failures=args.max_failures, stale_after=args.stale_after, verbose=args.verbose)


def _print_front(study, as_json: bool = False, as_csv: bool = False) -> None:
    from searchsr.pareto import compute_front, front_records, front_table

    front = compute_front(study)
    if as_json:
        print(json.dumps(front_records(front), default=str))
        return
    table = front_table(front)
    if as_csv:
        print(table.to_csv(index=False), end="")
        return
    names = ", ".join(f"{o.name} ({o.direction[:3]})" for o in front.objectives)
    print(f"Pareto front of study {study.study_name!r}: {len(front.points)} of {front.complete_trials} "
          f"complete feasible trials; objectives {names}")
    if not table.empty:
        print(table.to_string(index=False, float_format=lambda v: f"{v:.4g}", na_rep="-"))
    ref = ", ".join(f"{k}={v:.4g}" for k, v in front.reference_point.items())
    print(f"hypervolume {front.hypervolume:.6g} (reference point: {ref or 'none'})")


def cmd_run(args: argparse.Namespace) -> int:
    from searchsr.tuner import TooManyFailures, run_search

    try:
        study = run_search(_search_settings(args))
    except TooManyFailures as err:
        print(f"searchsr: {err}", file=sys.stderr)
        return 1
    _print_front(study)
    return 0


def cmd_front(args: argparse.Namespace) -> int:
    from searchsr.study import check_study_name, load_study, open_storage

    study = load_study(check_study_name(args.study), open_storage(args.storage, create=False))
    _print_front(study, as_json=args.json, as_csv=args.csv)
    return 0


def cmd_dashboard(args: argparse.Namespace) -> int:
    from searchsr.dashboard import run_dashboard
    from searchsr.study import check_study_name

    if not 0 <= args.port <= 65535:
        raise UsageError(f"--port must be 0..65535, got {args.port}")
    if args.study is not None:
        check_study_name(args.study)
    code = run_dashboard(args.storage, args.study, args.host, args.port, say=lambda m: print(m, flush=True))
    # The server has stopped and closed its storage; skip interpreter finalization, which was seen to
    # hang in a library exit hook when the parent started us with SIGINT ignored (a stuck server
    # after a clean stop is worse than skipped atexit hooks, and this command holds no other state).
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def cmd_report(args: argparse.Namespace) -> int:
    from searchsr.dashboard import ReadOnlyStorage, name_objectives
    from searchsr.report import check_out, compute_report, render, write_report
    from searchsr.study import check_study_name, load_study, mask_url

    check_study_name(args.study)
    check_out(args.out)  # fail before reading the study
    storage = ReadOnlyStorage(args.storage)  # a report never writes to (or locks) a live study
    study = load_study(args.study, storage)
    frozen = [s for s in storage.get_all_studies() if s.study_name == args.study]
    for message in name_objectives(args.storage, storage, frozen, save=False):
        print(message, file=sys.stderr)
    data = compute_report(study, mask_url(args.storage))
    path = write_report(render(data), args.out)
    print(f"report of study {args.study!r} ({len(data.trials)} complete trials, {len(data.front.points)} on the "
          f"front) written to {path}")
    return 0


def cmd_bench_concurrency(args: argparse.Namespace) -> int:
    """The same architecture timed in every trial of a concurrent study: how much does latency vary?"""
    import tempfile
    from pathlib import Path

    from searchsr.config import PRESETS
    from searchsr.space import load_space, parse_objectives
    from searchsr.study import load_study, open_storage
    from searchsr.tuner import SearchSettings, run_search

    arch = load_arch(args.arch)
    with tempfile.TemporaryDirectory(prefix="searchsr-bench-") as tmp:
        space_file = Path(tmp) / "fixed.yaml"
        space_file.write_text("params:\n" + "".join(f"  {k}: {json.dumps(v)}\n" for k, v in arch.to_dict().items()))
        storage = f"sqlite:///{tmp}/bench.db"
        settings = SearchSettings(space=load_space(space_file), objectives=parse_objectives("psnr,latency"),
                                  constraints=(), study="bench", storage=storage, sampler="random", seed=0,
                                  trials=args.trials, schedule=args.schedule, train_dir=None, val_dir=None,
                                  runs_root=Path(tmp) / "runs", concurrency=args.concurrency,
                                  latency_runs=args.latency_runs)
        run_search(settings)
        trials = load_study("bench", open_storage(storage)).get_trials(deepcopy=False)
        latencies = [t.user_attrs["latency_ms"] for t in trials if "latency_ms" in t.user_attrs]
    if len(latencies) < 2:
        raise ValueError(f"only {len(latencies)} trial(s) completed; nothing to compare")
    median = statistics.median(latencies)
    report = {"arch": arch.to_dict(), "latencies_ms": latencies, "median_ms": median,
              "spread": (max(latencies) - min(latencies)) / median,
              "cv": statistics.stdev(latencies) / statistics.mean(latencies), "xlite_preset": arch == PRESETS["xlite"]}
    if args.json:
        print(json.dumps(report))
    else:
        print(f"{len(latencies)} trials of {args.arch} ({args.concurrency or 'max'} at once, {args.schedule}): "
              f"latency {', '.join(f'{v:.1f}' for v in latencies)} ms; (max-min)/median {100 * report['spread']:.2f}%, "
              f"CV {100 * report['cv']:.2f}%")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from searchsr.export import check_out_dir, export_model, load_run, parse_formats, summary

    formats = parse_formats(args.format)
    if args.checkpoint:
        if args.trial is not None or args.storage is not None:
            raise UsageError("--trial and --storage go with --study, not --checkpoint")
    elif args.trial is None:
        raise UsageError("--study needs --trial K (the trial number to export)")
    else:
        from searchsr.study import check_study_name

        check_study_name(args.study)
    check_out_dir(Path(args.out))  # fail before loading anything
    if args.checkpoint:
        cfg, model, provenance = load_run(args.checkpoint)
    else:
        from searchsr.study import DEFAULT_STORAGE, load_study, open_storage, trial_run_dir

        study = load_study(args.study, open_storage(args.storage or DEFAULT_STORAGE, create=False))
        cfg, model, provenance = load_run(trial_run_dir(study, args.trial))
        provenance["source"] = {**provenance["source"], "kind": "study", "study": args.study, "trial": args.trial}
    card = export_model(cfg, model, args.out, formats, provenance)
    print(json.dumps(card) if args.json else summary(card, args.out))
    return 0


def cmd_upscale(args: argparse.Namespace) -> int:
    from searchsr.upscale import upscale_files

    def report(r) -> None:
        (h, w), (sh, sw) = r.lr_size, r.sr_size
        print(f"{r.input} -> {r.output}: {w}x{h} -> {sw}x{sh} {r.mode} ({r.seconds:.1f} s)", flush=True)

    results = upscale_files(args.model, args.inputs, args.out, tile=args.tile, backend=args.backend,
                            on_done=None if args.json else report)
    if args.json:
        print(json.dumps([r.to_dict() for r in results]))
    return 0


def cmd_retrain(args: argparse.Namespace) -> int:
    from pathlib import Path

    from searchsr.retrain import RetrainSettings, run_retrain
    from searchsr.study import check_study_name

    check_study_name(args.study)
    trials = None
    if args.trials:
        try:
            trials = [int(t) for t in args.trials.split(",") if t.strip()]
        except ValueError:
            raise UsageError(f"--trials takes trial numbers like 12,31, got {args.trials!r}") from None
    if args.cpus_per_trial < 1:
        raise UsageError(f"--cpus-per-trial must be >= 1, got {args.cpus_per_trial}")
    baselines = [b.strip() for b in args.baselines.split(",") if b.strip()]
    table, fidelity, csv_path = run_retrain(RetrainSettings(
        study=args.study, storage=args.storage, trials=trials, front=args.front, baselines=baselines,
        schedule=_for_workers_schedule(args.schedule), train_dir=_for_workers(args.train_dir),
        val_dir=_for_workers(args.val_dir), bench=args.bench or [],
        out=Path(args.out), seed=args.seed, cpus_per_trial=args.cpus_per_trial, gpus_per_trial=args.gpus_per_trial,
        address=args.address, verbose=args.verbose))
    print(table.drop(columns=["arch"]).to_string(index=False, float_format=lambda v: f"{v:.4g}", na_rep="-"))
    if fidelity:
        print(f"proxy fidelity on {fidelity.benchmark} ({fidelity.models} models): Kendall tau "
              f"{fidelity.kendall_tau:.3f}, Spearman rho {fidelity.spearman_rho:.3f}")
    else:
        print("proxy fidelity: fewer than 3 models with both a search and a retrained score")
    print(f"written: {csv_path} and {csv_path.with_suffix('.md')}")
    return 0


def cmd_bench_train(args: argparse.Namespace) -> int:
    """Training steps/s per configuration (eager, channels_last, torch.compile) and Set5-style eval time."""
    import time

    import torch
    import torch.nn.functional as F

    from searchsr.data import load_images
    from searchsr.evaluate import evaluate, model_upscaler

    report: dict = {}
    for name in [n.strip() for n in args.archs.split(",") if n.strip()]:
        cfg = load_arch(name)
        lr = torch.rand(args.batch, 3, args.patch, args.patch)
        hr = torch.rand(args.batch, 3, args.patch * cfg.scale, args.patch * cfg.scale)
        variants = {"eager": (False, False), "channels_last": (True, False)}
        if args.compile:
            variants["channels_last+compile"] = (True, True)
        report[name] = {}
        for variant, (channels_last, compiled) in variants.items():
            torch.manual_seed(0)
            model = build_model(cfg).train()
            fmt = torch.channels_last if channels_last else torch.contiguous_format
            model = model.to(memory_format=fmt)
            step_model = torch.compile(model) if compiled else model
            optimizer = torch.optim.Adam(model.parameters(), lr=5e-3, betas=(0.9, 0.99))
            x, y = lr.to(memory_format=fmt), hr.to(memory_format=fmt)
            times = []
            for _ in range(args.warmup + args.steps):
                t0 = time.perf_counter()
                optimizer.zero_grad(set_to_none=True)
                F.l1_loss(step_model(x), y).backward()
                optimizer.step()
                times.append(time.perf_counter() - t0)
            steps_per_s = 1 / statistics.median(times[args.warmup:])
            report[name][variant] = steps_per_s
            print(f"{name} {variant}: {steps_per_s:.3f} steps/s (batch {args.batch}, {args.patch}x{args.patch} LR, "
                  f"{torch.get_num_threads()} threads)", flush=True)
        if args.eval_data:
            images = load_images(args.eval_data, "val", cfg.scale)
            result = evaluate(model_upscaler(build_model(cfg).eval()), images)
            report[name]["eval_seconds"] = result.seconds
            print(f"{name} eval on {args.eval_data}: {result.seconds:.2f} s for {result.images} images", flush=True)
    if args.json:
        print(json.dumps(report))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="searchsr",
        description="Search the MobileNetV3 super-resolution family (Wang et al., ECCV-W 2020) "
                    "for the best x4 network under a latency/FLOP budget.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("profile", help="parameters, FLOPs, activations, memory (and latency) of one network",
                       description="Count a network's cost the way the paper does (FLOPs for a 256x256 "
                                   "LR input by default); --latency also times the BN-fused network.")
    _arch_args(p)
    p.add_argument("--lr-size", nargs=2, type=int, default=[256, 256], metavar=("H", "W"),
                   help="LR input size (default: 256 256, the paper's)")
    p.add_argument("--latency", action="store_true", help="also measure latency (eval, BN fused)")
    p.add_argument("--runs", type=int, default=20, help="timed runs after 3 warm-up runs (default: 20)")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads while timing (default: 1)")
    p.add_argument("--device", default="cuda" if _cuda() else "cpu", help="cpu or cuda (default: cuda if present)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=cmd_profile)

    p = sub.add_parser("train", help="train one network (Sec. 4.1: L1, Adam, halving lr) into a run folder",
                       description="Train a network on random LR/HR patches and validate it (PSNR-Y/SSIM-Y "
                                   "against bicubic). Without --train-dir/--val-dir the scikit-image sample "
                                   "photos are used (fixed split, nothing downloaded).")
    _arch_args(p)
    p.add_argument("--schedule", default="short",
                   help="smoke, short (search proxy), full (the paper's) or a YAML file (default: short)")
    p.add_argument("--train-dir", help="folder of HR training images (default: embedded skimage photos)")
    p.add_argument("--val-dir", help="folder of HR validation images (default: embedded skimage photos)")
    p.add_argument("--out", required=True, help="run folder; must be new or empty unless --resume")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    p.add_argument("--seed", type=int, default=0, help="initialisation and patch sampling seed (default: 0)")
    p.add_argument("--device", help="cpu or cuda (default: cuda if present)")
    p.add_argument("--amp", action="store_true", help="mixed precision (CUDA only)")
    p.add_argument("--tile", type=int, default=DEFAULT_TILE,
                   help=f"LR tile side for validating large images (default: {DEFAULT_TILE})")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--json", action="store_true", help="print the result as one JSON object")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("eval", help="PSNR-Y/SSIM-Y of bicubic, a network or a trained run on a folder",
                       description="Score x4 (or --scale) super-resolution of every image in --data: LR made "
                                   "by MATLAB bicubic, Y channel, crop border = scale, mean over images.")
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--arch", help="bicubic, a preset (lite, xlite; untrained) or a YAML/JSON config file")
    which.add_argument("--checkpoint", metavar="RUN", help="a finished run folder written by `searchsr train`")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a field of --arch (repeatable)")
    p.add_argument("--data", required=True, help="folder of HR images")
    p.add_argument("--scale", type=int, help="upscaling factor (default: the network's; 4 for bicubic)")
    p.add_argument("--save-dir", help="write each SR output here as PNG, named after its HR file")
    p.add_argument("--device", help="cpu or cuda (default: cuda if present)")
    p.add_argument("--tile", type=int, default=DEFAULT_TILE,
                   help=f"LR tile side; larger images run in overlapping tiles (default: {DEFAULT_TILE})")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("run", help="search: Optuna multi-objective study, trials run by Ray Tune",
                       description="Run N new trials of a study (created or continued): each trial trains "
                                   "the proxy schedule, scores PSNR-Y/SSIM-Y, counts FLOPs/params and "
                                   "measures latency; ends with the Pareto front.")
    p.add_argument("--space", default="spaces/mbv3_sr.yaml", help="search-space YAML (default: spaces/mbv3_sr.yaml)")
    p.add_argument("--objectives", default="psnr,latency",
                   help="comma-separated subset of psnr, ssim, latency, flops, params, activations, memory "
                        "(default: psnr,latency)")
    p.add_argument("--constraint", action="append", default=[], metavar="EXPR",
                   help="extra constraint like 'latency_ms <= 40' or 'params <= 100000' (repeatable)")
    p.add_argument("--trials", type=int, default=12, help="new trials in this invocation (default: 12)")
    p.add_argument("--study", default="searchsr", help="study name (default: searchsr)")
    p.add_argument("--storage", default="sqlite:///studies/searchsr.db",
                   help="SQLAlchemy URL (default: sqlite:///studies/searchsr.db; postgresql+psycopg://... "
                        "for a cluster)")
    p.add_argument("--sampler", default="tpe", help="nsga2, tpe or random (default: tpe)")
    p.add_argument("--seed", type=int, default=0, help="sampler and training seed (default: 0)")
    p.add_argument("--schedule", default="short", help="training schedule per trial (default: short)")
    p.add_argument("--train-dir", help="HR training images (default: embedded skimage photos)")
    p.add_argument("--val-dir", help="HR validation images (default: embedded skimage photos)")
    p.add_argument("--enqueue", default="xlite", help="paper presets to put in the study, e.g. lite,xlite "
                                                      "(default: xlite; '' for none)")
    p.add_argument("--cpus-per-trial", type=int, default=1, help="CPUs (and torch threads) per trial (default: 1)")
    p.add_argument("--gpus-per-trial", type=float, default=0, help="GPUs per trial (default: 0)")
    p.add_argument("--concurrency", type=int, default=0, help="trials at once (default: CPUs / cpus-per-trial)")
    p.add_argument("--address", default=os.environ.get("RAY_ADDRESS") or None,
                   help="join a running Ray cluster, e.g. 10.0.0.1:6379 (default: $RAY_ADDRESS, else start a "
                        "private local Ray even where `ray start` runs one)")
    p.add_argument("--runs-dir", default="studies/runs", help="trial run folders (default: studies/runs)")
    p.add_argument("--latency-runs", type=int, default=10, help="timed runs per latency measurement (default: 10)")
    p.add_argument("--max-failures", type=int, default=0, help="stop after this many failed trials (0: never)")
    p.add_argument("--stale-after", type=int, default=60, metavar="SECONDS",
                   help="a RUNNING trial without heartbeat this long lost its driver: on the next run it is "
                        "marked FAIL and its parameters re-queued (default: 60)")
    p.add_argument("--verbose", action="store_true", help="show Ray's own logs and progress")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("front", help="print a study's Pareto front (table, --json or --csv)")
    p.add_argument("--study", default="searchsr", help="study name (default: searchsr)")
    p.add_argument("--storage", default="sqlite:///studies/searchsr.db", help="SQLAlchemy URL")
    fmt = p.add_mutually_exclusive_group()
    fmt.add_argument("--json", action="store_true", help="a JSON list, one object per front trial")
    fmt.add_argument("--csv", action="store_true", help="CSV table")
    p.set_defaults(func=cmd_front)

    p = sub.add_parser("dashboard", help="optuna-dashboard on a study's storage, read-only (safe during a search)",
                       description="Serve optuna-dashboard on the storage, opened read-only so that viewing a "
                                   "live SQLite study never blocks the search writing it. Bound to loopback "
                                   "by default; Ctrl-C stops it.")
    p.add_argument("--study", help="open this study's page (default: the list of all studies)")
    p.add_argument("--storage", default="sqlite:///studies/searchsr.db", help="SQLAlchemy URL")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default: 127.0.0.1)")
    p.add_argument("--port", type=int, default=8080, help="port (default: 8080; 0: any free port)")
    p.set_defaults(func=cmd_dashboard)

    p = sub.add_parser("report", help="one self-contained HTML report of a study (plotly, works offline)",
                       description="Pareto fronts per objective pair with the paper's LITE/XLITE marked, PSNR "
                                   "vs FLOPs/params against the paper's Table 2 family, parallel coordinates, "
                                   "hypervolume over trials, parameter importances and the retrain table.")
    p.add_argument("--study", required=True, help="study name")
    p.add_argument("--storage", default="sqlite:///studies/searchsr.db", help="SQLAlchemy URL")
    p.add_argument("--out", required=True, help="HTML file to write, e.g. dashboards/NAME.html")
    p.set_defaults(func=cmd_report)

    p = sub.add_parser("export", help="write a trained network as YAML, safetensors, ONNX and TorchScript, "
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
    p.add_argument("--storage", help="SQLAlchemy URL of the study's storage (with --study)")
    p.add_argument("--out", required=True, help="output folder; must be new or empty")
    p.add_argument("--format", default="yaml,safetensors,onnx,torchscript",
                   help="comma-separated subset of yaml,safetensors,onnx,torchscript (default: all)")
    p.add_argument("--json", action="store_true", help="print the model card as one JSON object")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("upscale", help="super-resolve images with an exported model folder (tiled, bounded memory)",
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
    p.add_argument("--json", action="store_true", help="print one JSON list, an object per image")
    p.set_defaults(func=cmd_upscale)

    p = sub.add_parser("retrain", help="retrain front trials and LITE/XLITE with one schedule, compare, write back",
                       description="Retrain chosen trials' architectures and the paper's baselines with the same "
                                   "schedule and data (one Ray Tune trial per network, resumable: rerun to "
                                   "continue), score every --bench folder, and write comparison.csv/.md.")
    p.add_argument("--study", default="searchsr", help="study name (default: searchsr)")
    p.add_argument("--storage", default="sqlite:///studies/searchsr.db", help="SQLAlchemy URL")
    pick = p.add_mutually_exclusive_group()
    pick.add_argument("--trials", help="comma-separated trial numbers, e.g. 12,31")
    pick.add_argument("--front", action="store_true", help="every trial on the Pareto front")
    p.add_argument("--baselines", default="lite,xlite", help="paper presets retrained alongside (default: lite,xlite)")
    p.add_argument("--schedule", default="full",
                   help="full (the paper's), medium (1.5x short, for CPUs), short, smoke or a YAML file "
                        "(default: full)")
    p.add_argument("--train-dir", help="HR training images (default: embedded skimage photos)")
    p.add_argument("--val-dir", help="HR validation images (default: embedded skimage photos)")
    p.add_argument("--bench", action="append", metavar="DIR", help="benchmark folder scored after training (repeatable)")
    p.add_argument("--out", required=True, help="output folder (run folders, comparison.csv/.md)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--cpus-per-trial", type=int, default=1)
    p.add_argument("--gpus-per-trial", type=float, default=0, help="GPUs per network (default: 1 where there are GPUs)")
    p.add_argument("--address", default=os.environ.get("RAY_ADDRESS") or None,
                   help="join a running Ray cluster (default: $RAY_ADDRESS, else a private local Ray)")
    p.add_argument("--verbose", action="store_true")
    p.set_defaults(func=cmd_retrain)

    bench = sub.add_parser("bench", help="benchmarks (speed, stability); figures go in issue notes")
    bench_sub = bench.add_subparsers(dest="bench", required=True, metavar="BENCH")
    b = bench_sub.add_parser("latency", help="CV of the median latency over repeated measurements, "
                                             "and the BN-fusion speed-up")
    b.add_argument("--archs", default="xlite,lite", help="comma-separated presets or files (default: xlite,lite)")
    b.add_argument("--lr-size", nargs=2, type=int, default=[256, 256], metavar=("H", "W"))
    b.add_argument("--repeats", type=int, default=5, help="independent measurements (default: 5)")
    b.add_argument("--runs", type=int, default=10, help="timed runs per measurement (default: 10)")
    b.add_argument("--threads", type=int, default=1, help="torch CPU threads (default: 1)")
    b.add_argument("--device", default="cuda" if _cuda() else "cpu")
    b.add_argument("--json", action="store_true")
    b.set_defaults(func=cmd_bench_latency)
    b = bench_sub.add_parser("concurrency", help="latency of one architecture across the trials of a concurrent "
                                                 "study (goal: within 5%)")
    b.add_argument("--arch", default="xlite", help="preset or config file timed in every trial (default: xlite)")
    b.add_argument("--trials", type=int, default=6, help="trials (default: 6)")
    b.add_argument("--concurrency", type=int, default=2, help="trials at once (default: 2)")
    b.add_argument("--schedule", default="short", help="training schedule of each trial (default: short)")
    b.add_argument("--latency-runs", type=int, default=10, help="timed runs per measurement (default: 10)")
    b.add_argument("--json", action="store_true")
    b.set_defaults(func=cmd_bench_concurrency)
    b = bench_sub.add_parser("train", help="training steps/s: eager vs channels_last (vs torch.compile), eval time")
    b.add_argument("--archs", default="xlite,lite", help="presets or files (default: xlite,lite)")
    b.add_argument("--batch", type=int, default=16)
    b.add_argument("--patch", type=int, default=48, help="LR patch side (default: 48)")
    b.add_argument("--steps", type=int, default=5, help="timed steps per variant (default: 5)")
    b.add_argument("--warmup", type=int, default=2)
    b.add_argument("--compile", action="store_true", help="also time torch.compile (slow to compile)")
    b.add_argument("--eval-data", help="folder to time evaluation on (e.g. ../shared/data/set5)")
    b.add_argument("--json", action="store_true")
    b.set_defaults(func=cmd_bench_train)
    return parser


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def _quiet_libraries() -> None:
    """Optuna's experimental-feature warnings and INFO lines are for its developers, not our users."""
    import warnings

    import optuna

    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    warnings.filterwarnings("ignore", category=FutureWarning, module="optuna")
    # enqueued paper presets may sit outside a space's ranges, on purpose (see searchsr.space)
    warnings.filterwarnings("ignore", message=r"Fixed parameter .* is out of range")
    # we record heartbeats ourselves for the trials Ray runs (see searchsr.study)
    warnings.filterwarnings("ignore", message="Heartbeat of storage is supposed to be used with Study.optimize")
    optuna.logging.set_verbosity(optuna.logging.WARNING)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    _quiet_libraries()
    func: Callable[[argparse.Namespace], int] = args.func
    try:
        return func(args)
    except (ValueError, FileNotFoundError, PermissionError, IsADirectoryError) as err:
        print(f"searchsr: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as err:  # Ray Tune traps Ctrl-C itself; run/retrain re-raise with what was kept
        print(f"searchsr: interrupted{f': {err}' if str(err) else ''}", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
