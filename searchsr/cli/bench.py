"""``searchsr bench latency | concurrency | train``: benchmarks (speed, stability) whose figures go in
issue notes; the loops are ``searchsr.bench``'s, this module prints their results."""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

from searchsr.cli import options
from searchsr.errors import UsageError


def register(sub: argparse._SubParsersAction) -> None:
    bench = sub.add_parser("bench", parents=[options.common()],
                           help="benchmarks (speed, stability); figures go in issue notes")
    bench_sub = bench.add_subparsers(dest="bench", required=True, metavar="BENCH")
    common = [options.common(), options.json_output("print one JSON object (the figures) instead of text")]

    b = bench_sub.add_parser("latency", parents=[*common, options.device()],
                             help="CV of the median latency over repeated measurements, and the BN-fusion speed-up")
    b.add_argument("--archs", default="xlite,lite", help="comma-separated presets or files (default: xlite,lite)")
    b.add_argument("--lr-size", nargs=2, type=int, default=[256, 256], metavar=("H", "W"))
    b.add_argument("--repeats", type=int, default=5, help="independent measurements (default: 5)")
    b.add_argument("--runs", type=int, default=10, help="timed runs per measurement (default: 10)")
    b.add_argument("--threads", type=int, default=1, help="torch CPU threads (default: 1)")
    b.add_argument("--rel-half-width", type=float, default=0.02,
                   help="ratio to XLITE: add rounds until its 95%% interval is within this fraction (default: 0.02)")
    b.add_argument("--max-rounds", type=int, default=6, help="ratio to XLITE: at most this many rounds (default: 6)")
    b.set_defaults(func=cmd_latency)

    b = bench_sub.add_parser("concurrency", parents=common,
                             help="latency of one architecture across the trials of a concurrent study "
                                  "(goal: within 5%%)")
    b.add_argument("--arch", default="xlite", help="preset or config file timed in every trial (default: xlite)")
    b.add_argument("--trials", type=int, default=6, help="trials (default: 6)")
    b.add_argument("--concurrency", type=int, default=2, help="trials at once (default: 2)")
    b.add_argument("--schedule", default="short", help="training schedule of each trial (default: short)")
    b.add_argument("--latency-runs", type=int, default=10, help="timed runs per measurement (default: 10)")
    b.set_defaults(func=cmd_concurrency)

    b = bench_sub.add_parser("train", parents=common,
                             help="training steps/s: eager vs channels_last (vs torch.compile), eval time")
    b.add_argument("--archs", default="xlite,lite", help="presets or files (default: xlite,lite)")
    b.add_argument("--batch", type=int, default=16, help="patches per step (default: 16)")
    b.add_argument("--patch", type=int, default=48, help="LR patch side (default: 48)")
    b.add_argument("--steps", type=int, default=5, help="timed steps per variant (default: 5)")
    b.add_argument("--warmup", type=int, default=2, help="untimed steps first (default: 2)")
    b.add_argument("--compile", action="store_true", help="also time torch.compile (slow to compile)")
    b.add_argument("--eval-data", help="folder to time evaluation on (e.g. ../shared/data/set5)")
    b.set_defaults(func=cmd_train)

    b = bench_sub.add_parser("runtimes", parents=common,
                             help="each architecture on every latency backend (torch, onnxruntime), interleaved: "
                                  "ratios to eager PyTorch and whether the backends rank architectures alike")
    b.add_argument("--archs", default="xlite,lite", help="presets or files (default: xlite,lite)")
    b.add_argument("--lr-size", nargs=2, type=int, default=[256, 256], metavar=("H", "W"))
    b.add_argument("--repeats", type=int, default=3, help="independent measurements (default: 3)")
    b.add_argument("--runs", type=int, default=10, help="timed runs per measurement (default: 10)")
    b.add_argument("--threads", type=int, default=1, help="CPU threads of every runtime (default: 1)")
    b.add_argument("--backends", default="onnxruntime",
                   help="backends besides torch: onnxruntime, executorch (the mobile extra) (default: onnxruntime)")
    b.set_defaults(func=cmd_runtimes)

    b = bench_sub.add_parser("upscale", parents=common,
                             help="a 12-megapixel output (750x1000 LR, x4) on the deployment path: FP32 and INT8 on "
                                  "onnxruntime (tiled, as `upscale` runs) and executorch, seconds and peak memory")
    b.add_argument("--archs", default="xlite,lite", help="presets or files (default: xlite,lite)")
    b.add_argument("--runtimes", default="onnxruntime,executorch",
                   help="onnxruntime, executorch (the mobile extra) (default: both; executorch left out with a "
                        "note where the extra is missing)")
    b.add_argument("--lr-size", nargs=2, type=int, default=[750, 1000], metavar=("H", "W"),
                   help="LR input (default: 750 1000, a 3000x4000 output)")
    b.add_argument("--runs", type=int, default=3, help="timed runs per variant, after a warm-up (default: 3)")
    b.add_argument("--threads", type=int, default=1, help="CPU threads of every runtime (default: 1)")
    b.add_argument("--tile", type=int, default=256, help="onnxruntime's LR tile side (default: 256)")
    b.set_defaults(func=cmd_upscale)

    b = bench_sub.add_parser("data", parents=[*common, options.device()],
                             help="the training data path alone: batches of random aligned patches per second "
                                  "on the training device (default: the full schedule's 128 x 100x100)")
    b.add_argument("--train-dir", help="HR training images (default: embedded skimage photos)")
    b.add_argument("--batch", type=int, default=128, help="patches per batch (default: 128)")
    b.add_argument("--patch", type=int, default=100, help="LR patch side (default: 100)")
    b.add_argument("--batches", type=int, default=20, help="timed batches (default: 20)")
    b.set_defaults(func=cmd_data)

    b = bench_sub.add_parser("record", parents=[options.common(), options.ray_cluster()],
                             help="train every network of a finite space, recording PSNR at rungs: the table "
                                  "that bench search replays",
                             description="Train every architecture of a finite space (and a second seed of "
                                         "--repeat of them) through Ray Tune, and append one CSV row per "
                                         "(architecture, seed, step) to --out: PSNR-Y/SSIM-Y at each rung and "
                                         "at the end, training seconds to that step, exact costs. Resumable: "
                                         "rerun the same command.")
    b.add_argument("--space", default="table", help="a finite space (default: table, 48 networks)")
    b.add_argument("--schedule", default="short", help="training schedule (default: short)")
    b.add_argument("--rungs", help="steps to score at, e.g. 56,168,504 (default: the schedule's early-stopping "
                                   "rungs at eta 3)")
    b.add_argument("--out", required=True, type=Path, help="the table (CSV); an existing one is continued")
    b.add_argument("--train-dir", help="HR training images (default: embedded skimage photos)")
    b.add_argument("--val-dir", help="HR validation images (default: embedded skimage photos)")
    b.add_argument("--val-count", type=int, default=0, metavar="K",
                   help="hold out K images of --train-dir as the validation set (default: 0)")
    b.add_argument("--seed", type=int, default=0, help="training seed (default: 0)")
    b.add_argument("--repeat", type=int, default=8, help="networks also recorded with seed + 1 (default: 8)")
    b.add_argument("--runs-dir", type=Path, help="run folders (default: OUT without .csv, plus .runs)")
    b.add_argument("--concurrency", type=int, default=0, help="networks at once (default: CPUs / cpus-per-trial)")
    b.add_argument("--latency-runs", type=int, default=10, help="timed runs per latency measurement (default: 10)")
    b.set_defaults(func=cmd_record)

    b = bench_sub.add_parser("search", parents=common,
                             help="replay search methods against a recorded table, at equal compute, over seeds",
                             description="Replay each method (an Optuna sampler, with or without Pareto successive "
                                         "halving) against a table from bench record: a trial costs the recorded "
                                         "training seconds up to where it stopped. Reports each method's "
                                         "hypervolume at --budget (normalised to the table's true front) over "
                                         "--seeds, and the compute it needed to reach 0.9 of it.")
    b.add_argument("--table", required=True, type=Path, help="a table recorded by bench record (CSV)")
    b.add_argument("--space", default="table", help="the space the table was recorded on (default: table)")
    b.add_argument("--methods", default="random,tpe,gp,nsga2,auto",
                   help="samplers to compare: random, tpe, gp, nsga2, auto (default: all five)")
    b.add_argument("--early-stop", default="none", choices=("none", "pareto", "both"),
                   help="replay without, with (pareto) or both ways (default: none)")
    b.add_argument("--eta", type=int, default=3, help="early stopping keeps the top 1/eta at each rung (default: 3)")
    b.add_argument("--first-rung", type=int, default=0, metavar="STEPS",
                   help="early stopping uses the table's rungs from this step on (default: all of them)")
    b.add_argument("--budget", type=float, default=0.25,
                   help="compute per search, as a fraction of the table's full compute (default: 0.25)")
    b.add_argument("--seeds", type=int, default=10, help="searches per method (default: 10)")
    b.add_argument("--objectives", default="psnr,latency", help="objectives, as in run (default: psnr,latency)")
    b.add_argument("--constraint", action="append", default=[], metavar="EXPR", help="as in run (repeatable)")
    b.add_argument("--cap", type=float, default=2.0,
                   help="a search that has not reached 0.9 goes on up to this many times the full compute "
                        "(default: 2)")
    b.set_defaults(func=cmd_search)


def cmd_latency(args: argparse.Namespace) -> int:
    from searchsr.bench import LatencyBench, bench_latency
    from searchsr.cli.model import lr_size
    from searchsr.train import resolve_device

    def show(name: str, r: LatencyBench) -> None:
        h, w = args.lr_size
        cis = ", ".join(f"[{lo:.3f}, {hi:.3f}]" for lo, hi in r.ratio_ci)
        print(f"{name} at {h}x{w} LR: median {statistics.median(r.medians_ms):.2f} ms over {args.repeats}x{args.runs} "
              f"runs, CV of median {100 * r.cv_of_median:.2f}%, fused speed-up {r.fusion_speedup:.3f}x, "
              f"x{r.ratio_to_xlite:.3f} XLITE (CV {100 * r.cv_of_ratio:.2f}% over repeats; one round's ratio: CV "
              f"{100 * r.cv_of_single_round_ratio:.2f}%); 95% intervals {cis}, rounds "
              f"{', '.join(map(str, r.ratio_rounds))}, {r.ratio_converged}/{len(r.ratio_rounds)} within "
              f"+-{100 * args.rel_half_width:g}%", flush=True)

    report = bench_latency(options.csv_list(args.archs), lr_size(args.lr_size), args.repeats, args.runs,
                           args.threads, str(resolve_device(args.device)), on_result=None if args.json else show,
                           rel_half_width=args.rel_half_width, max_rounds=args.max_rounds)
    if args.json:
        print(json.dumps({name: r.to_dict() for name, r in report.items()}))
    return 0


def cmd_concurrency(args: argparse.Namespace) -> int:
    from searchsr.bench import bench_concurrency

    options.quiet_optuna()
    r = bench_concurrency(args.arch, args.trials, args.concurrency, args.schedule, args.latency_runs)
    if args.json:
        print(json.dumps(r.to_dict()))
        return 0
    print(f"{len(r.latencies_ms)} trials of {args.arch} ({args.concurrency or 'max'} at once, {args.schedule}): "
          f"latency {', '.join(f'{v:.1f}' for v in r.latencies_ms)} ms; (max-min)/median {100 * r.spread:.2f}%, "
          f"CV {100 * r.cv:.2f}%")
    return 0


def cmd_runtimes(args: argparse.Namespace) -> int:
    from searchsr.bench import bench_runtimes
    from searchsr.cli.model import lr_size

    r = bench_runtimes(options.csv_list(args.archs), lr_size(args.lr_size), args.repeats, args.runs, args.threads,
                       options.csv_list(args.backends))
    if args.json:
        print(json.dumps(r.to_dict()))
        return 0
    h, w = args.lr_size
    for name, by_backend in r.ms.items():
        cells = ", ".join(f"{b} {v:.1f} ms (x{r.ratio_to_torch[name][b]:.3f} torch, spread "
                          f"{100 * r.spread[name][b]:.1f}%)" for b, v in by_backend.items())
        print(f"{name} at {h}x{w} LR, {args.threads} thread(s): {cells}")
    for backend, tau in r.kendall_tau.items():
        print(f"rank agreement torch vs {backend} over {len(r.ms)} architectures: Kendall tau {tau:.3f}")
    return 0


def cmd_upscale(args: argparse.Namespace) -> int:
    import importlib.util

    from searchsr.cli.model import lr_size
    from searchsr.config import load_arch
    from searchsr.upscalebench import time_upscale

    runtimes = options.csv_list(args.runtimes)
    unknown = [r for r in runtimes if r not in ("onnxruntime", "executorch")]
    if unknown or not runtimes:
        raise UsageError(f"--runtimes takes onnxruntime, executorch; got {args.runtimes!r}")
    for name, value in (("--runs", args.runs), ("--threads", args.threads), ("--tile", args.tile)):
        if value < 1:
            raise UsageError(f"{name} must be >= 1, got {value}")
    archs = options.csv_list(args.archs)
    for name in archs:
        load_arch(name)  # an unknown preset or a bad file: one line, before minutes of work
    size = lr_size(args.lr_size)
    if "executorch" in runtimes and importlib.util.find_spec("executorch") is None:
        print("executorch left out: the mobile extra is not installed (pip install -e \".[mobile]\")",
              file=sys.stderr)
        runtimes = [r for r in runtimes if r != "executorch"]
    results, problems = [], []
    for name in archs:
        for runtime in runtimes:
            for precision in ("fp32", "int8"):
                print(f"{name} {runtime} {precision} ...", file=sys.stderr, flush=True)
                got = time_upscale(name, runtime, precision, args.threads, args.tile, args.runs, size)
                (results if not isinstance(got, str) else problems).append(
                    got if not isinstance(got, str) else f"{name} {runtime} {precision}: {got}")
    if args.json:
        print(json.dumps({"timings": [r.to_dict() for r in results], "failed": problems}))
        return 0
    fp32 = {(r.arch, r.runtime): r.seconds for r in results if r.precision == "fp32"}
    ort = {(r.arch, r.precision): r.seconds for r in results if r.runtime == "onnxruntime"}
    for r in results:
        vs = [f"x{r.seconds / fp32[r.arch, r.runtime]:.2f} FP32" if r.precision == "int8" and (r.arch, r.runtime)
              in fp32 else "", f"x{r.seconds / ort[r.arch, r.precision]:.2f} onnxruntime"
              if r.runtime != "onnxruntime" and (r.arch, r.precision) in ort else ""]
        print(f"{r.arch:6s} {r.runtime:11s} {r.precision} {'tiled' if r.tiled else 'whole'}: {r.seconds:7.2f} s "
              f"{' '.join(v for v in vs if v):28s} peak +{r.peak_mb:.0f} MB (process {r.peak_total_mb:.0f} MB)")
    print(f"{size[0]}x{size[1]} LR -> {4 * size[0]}x{4 * size[1]}, {args.threads} thread(s), median of {args.runs}")
    for line in problems:
        print(f"failed: {line}")
    return 1 if problems else 0


def cmd_data(args: argparse.Namespace) -> int:
    from searchsr.bench import bench_data
    from searchsr.train import resolve_device

    r = bench_data(args.train_dir, args.batch, args.patch, args.batches, str(resolve_device(args.device)))
    if args.json:
        print(json.dumps(r.to_dict()))
        return 0
    print(f"{r.source}: {r.set_mb:.1f} MB of uint8 images on {r.home}; batches of {args.batch} x {args.patch}x"
          f"{args.patch} LR (x4 HR) on {r.device}: {r.ms_per_batch:.1f} ms each, {r.samples_per_s:.0f} samples/s")
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    import torch

    from searchsr.bench import bench_train
    from searchsr.data import list_images

    def show(name: str, variant: str, value: float) -> None:
        if variant == "eval_seconds":
            print(f"{name} eval on {args.eval_data}: {value:.2f} s for {len(list_images(Path(args.eval_data)))} "
                  "images", flush=True)
        else:
            print(f"{name} {variant}: {value:.3f} steps/s (batch {args.batch}, {args.patch}x{args.patch} LR, "
                  f"{torch.get_num_threads()} threads)", flush=True)

    report = bench_train(options.csv_list(args.archs), args.batch, args.patch, args.steps, args.warmup, args.compile,
                         args.eval_data, on_result=None if args.json else show)
    if args.json:
        print(json.dumps(report))
    return 0


def cmd_record(args: argparse.Namespace) -> int:
    from searchsr.halving import default_first_rung, rung_steps
    from searchsr.record import RecordSettings, record
    from searchsr.schedule import load_schedule
    from searchsr.space import load_space

    steps = load_schedule(args.schedule).steps
    try:
        rungs = tuple(int(r) for r in options.csv_list(args.rungs)) if args.rungs else \
            rung_steps(steps, default_first_rung(steps))
    except ValueError:
        raise UsageError(f"--rungs must be comma-separated steps, got {args.rungs!r}") from None
    recorded, failed = record(RecordSettings(
        space=load_space(args.space), out=args.out, rungs=rungs, schedule=args.schedule, train_dir=args.train_dir,
        val_dir=args.val_dir, val_count=args.val_count, seed=args.seed, repeat=args.repeat, runs_dir=args.runs_dir,
        cpus_per_trial=args.cpus_per_trial, concurrency=args.concurrency, address=args.address,
        latency_runs=args.latency_runs, verbose=args.verbose))
    print(f"{recorded} network(s) recorded into {args.out}" + (f"; {failed} failed (rerun to retry them)"
                                                                 if failed else ""))
    return 1 if failed else 0


def cmd_search(args: argparse.Namespace) -> int:
    from searchsr.objectives import parse_constraints, parse_objectives
    from searchsr.replay import check_space, load_table, replay, summarize
    from searchsr.space import load_space
    from searchsr.study import SAMPLERS

    options.quiet_optuna()
    methods = options.csv_list(args.methods)
    unknown = [m for m in methods if m not in SAMPLERS]
    if unknown or not methods:
        raise UsageError(f"--methods: unknown method {unknown[0] if unknown else ''!r} (known: {', '.join(SAMPLERS)})")
    for name, value, low in (("--seeds", args.seeds, 1), ("--eta", args.eta, 2)):
        if value < low:
            raise UsageError(f"{name} must be >= {low}, got {value}")
    if not 0 < args.budget <= args.cap:
        raise UsageError(f"--budget must be > 0 and at most --cap ({args.cap:g}), got {args.budget:g}")
    objectives, constraints = parse_objectives(args.objectives), parse_constraints(args.constraint)
    table, space = load_table(args.table), load_space(args.space)
    check_space(table, space)
    ways = {"none": (False,), "pareto": (True,), "both": (False, True)}[args.early_stop]
    results = {}
    for method in methods:
        for early in ways:
            runs = [replay(table, space, method, seed, args.budget, objectives, constraints, early, args.eta,
                           args.cap, first_rung=args.first_rung) for seed in range(args.seeds)]
            results[method + ("+pareto" if early else "")] = summarize(runs, args.budget, args.seeds)
    if args.json:
        print(json.dumps(results, indent=2))
        return 0
    noise = table.noise
    print(f"{args.table}: {len(table.entries)} networks, full compute {table.full_compute:.0f} training s; rungs "
          f"{','.join(map(str, table.rungs))}; second-seed PSNR differences over {noise['pairs']} networks: mean "
          f"{noise['psnr_abs_diff_mean']:.3f} dB, max {noise['psnr_abs_diff_max']:.3f} dB")
    base = results.get("random", {}).get("hv_mean")
    print(f"budget {args.budget:g} of the full compute, {args.seeds} seeds; HV normalised to the table's true front")
    print(f"{'method':<14} {'HV mean':>8} {'HV std':>7} {'x random':>8} {'to 0.9':>7} {'networks':>8} {'trials':>7} "
          f"{'pruned':>7}")
    for name, r in results.items():
        ratio = f"{r['hv_mean'] / base:.2f}" if base else "-"
        goal = f"{r['compute_to_0.9']:.3f}" if r["compute_to_0.9"] is not None else f"{r['reached_0.9']}/{args.seeds}"
        print(f"{name:<14} {r['hv_mean']:>8.3f} {r['hv_std']:>7.3f} {ratio:>8} {goal:>7} {r['networks_mean']:>8.1f} "
              f"{r['trials_mean']:>7.1f} "
              f"{r['pruned_mean']:>7.1f}")
    print("networks: distinct architectures trained within the budget; trials: draws, repeats included (a repeat "
          "costs only what it trains beyond its earlier trial)")
    print("to 0.9: median fraction of the full compute spent when the front reached 0.9 of the true one "
          "(n/seeds: only n seeds got there within --cap)")
    return 0
