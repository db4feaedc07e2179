"""``searchsr bench latency | concurrency | train``: benchmarks (speed, stability) whose figures go in
issue notes; the loops are ``searchsr.bench``'s, this module prints their results."""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

from searchsr.cli import options


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
