"""``searchsr`` command line: one entry point, one subcommand per job.

Bad input is a one-line ``searchsr: error: ...`` on stderr with exit code 2 and no
traceback; subcommands validate everything before they write anything.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from collections.abc import Callable, Sequence

from searchsr.arch import ArchConfig, apply_overrides, build_model, load_arch


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
    from searchsr.arch import PRESETS
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
    return parser


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    func: Callable[[argparse.Namespace], int] = args.func
    try:
        return func(args)
    except (ValueError, FileNotFoundError, PermissionError, IsADirectoryError) as err:
        print(f"searchsr: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("searchsr: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
