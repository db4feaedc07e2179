"""``searchsr run | front | retrain``: a study's search, its Pareto front, and retraining the front."""

from __future__ import annotations

import argparse
import json

from searchsr.cli import options
from searchsr.defaults import DEFAULT_SPACE
from searchsr.errors import UsageError

RUN_BACKEND = ("onnxruntime for a new study, a continued study's own; command with --latency-cmd")
RETRAIN_BACKEND = ("the study's when it timed in this process (torch, onnxruntime, executorch), else onnxruntime; "
                   "command with --latency-cmd")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("run", parents=[options.common(), options.study(), options.ray_cluster(), options.training(),
                                       options.latency_backend(None, RUN_BACKEND)],
                       help="search: Optuna multi-objective study, trials run by Ray Tune",
                       description="Run N new trials of a study (created or continued): each trial trains "
                                   "the proxy schedule, scores PSNR-Y/SSIM-Y, counts FLOPs/params and "
                                   "measures latency; ends with the Pareto front.")
    p.add_argument("--space", default=DEFAULT_SPACE,
                   help=f"a shipped space (mbv3_sr, quick, table, tiny) or a space YAML file (default: {DEFAULT_SPACE}; "
                        "searchsr/spaces/mbv3_sr.yaml documents the format)")
    p.add_argument("--objectives", default="psnr,latency",
                   help="comma-separated subset of psnr, ssim, latency, flops, params, activations, memory, and "
                        "with --int8 psnr_int8, ssim_int8, latency_int8 (default: psnr,latency)")
    p.add_argument("--constraint", action="append", default=[], metavar="EXPR",
                   help="extra constraint like 'latency_ms <= 40' or 'params <= 100000' (repeatable)")
    p.add_argument("--trials", type=int, default=12, help="new trials in this invocation (default: 12)")
    p.add_argument("--sampler", default="auto",
                   help="auto, tpe, gp, nsga2 or random (default: auto: random with --early-stop pareto, else "
                        "TPE for a space with categorical or conditional parameters, else GP up to 250 trials, then "
                        "NSGA-II; README, 'Choosing a sampler')")
    p.add_argument("--seed", type=int, default=0, help="sampler and training seed (default: 0)")
    p.add_argument("--schedule", default="short", help="training schedule per trial (default: short)")
    p.add_argument("--train-dir", help="HR training images (default: embedded skimage photos)")
    p.add_argument("--val-dir", help="HR validation images (default: embedded skimage photos)")
    p.add_argument("--val-count", type=int, default=0, metavar="K",
                   help="hold out K images of --train-dir as the validation set, chosen by file name, so the "
                        "search never scores on what it trains on (instead of --val-dir; default: 0)")
    p.add_argument("--enqueue", default="xlite",
                   help="paper networks to put in the study first: 'paper' (every Table 2 point inside the space, "
                        "a warm start), or names: lite, xlite, paper-NF-N (default: xlite; '' for none)")
    p.add_argument("--gpus-per-trial", type=float, default=0,
                   help="GPUs per trial: a fraction packs trials onto one GPU (0.25: four at once), else a whole "
                        "number (default: 0)")
    p.add_argument("--concurrency", type=int, default=0, help="trials at once (default: CPUs / cpus-per-trial)")
    p.add_argument("--runs-dir", default="studies/runs", help="trial run folders (default: studies/runs)")
    p.add_argument("--latency-runs", type=int, default=10, help="timed runs per latency measurement (default: 10)")
    p.add_argument("--max-failures", type=int, default=0, help="stop after this many failed trials (0: never)")
    p.add_argument("--int8", action="store_true",
                   help="also quantize every trained trial as `export --int8` does and score it (psnr_int8, "
                        "ssim_int8), and time every network in INT8 on the latency backend (latency_int8_ms): "
                        "objectives psnr_int8, ssim_int8, latency_int8 (onnxruntime, executorch or command)")
    p.add_argument("--latency-predict-after", type=int, default=0, metavar="N",
                   help="once the study has N measured trials, predict latency from the cost model fitted on them "
                        "(searchsr latency fit) instead of measuring, while its cross-validated share within +-10%% "
                        "is at least --latency-predict-floor; every --latency-measure-every-th trial is still "
                        "measured (default: 0, never predict)")
    p.add_argument("--latency-predict-floor", type=float, default=0.95, metavar="SHARE",
                   help="share of cross-validated predictions within +-10%% needed to predict (default: 0.95)")
    p.add_argument("--latency-measure-every", type=int, default=5, metavar="K",
                   help="with predictions on, still measure every K-th trial (default: 5)")
    p.add_argument("--meter-resource", metavar="NAME",
                   help="time latency on a Ray node with this custom resource (ray start --resources "
                        "'{\"NAME\": 1}'), so every driver of a study times on the same kind of machine")
    p.add_argument("--early-stop", default="none", choices=("none", "pareto"),
                   help="pareto: Pareto successive halving; each trial is scored at rungs (--first-rung x eta^k "
                        "steps) and goes on only if it ranks in the top 1/eta of the trials that reached that "
                        "rung, by non-dominated sorting on PSNR there and the exact costs; stopped trials are "
                        "PRUNED, never on the front (default: none)")
    p.add_argument("--eta", type=int, default=3, help="early stopping keeps the top 1/eta at each rung (default: 3)")
    p.add_argument("--first-rung", type=int, default=0, metavar="STEPS",
                   help="the first rung's step (default: the schedule's steps / eta^3, e.g. 38 for short)")
    p.add_argument("--stale-after", type=int, default=60, metavar="SECONDS",
                   help="a RUNNING trial without heartbeat this long lost its driver: on the next run it is "
                        "marked FAIL and its parameters re-queued (default: 60)")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("front", parents=[options.common(), options.study()],
                       help="print a study's Pareto front (table, --json or --csv)",
                       description="The study's Pareto front (feasible, completed trials) and its hypervolume. "
                                   "The table, --json and --csv list the same rows: the front, plus the paper's "
                                   "XLITE/LITE as baselines where the study has them.")
    fmt = p.add_mutually_exclusive_group()
    fmt.add_argument("--json", action="store_true", help="a JSON list, one object per row")
    fmt.add_argument("--csv", action="store_true", help="CSV table")
    p.set_defaults(func=cmd_front)

    p = sub.add_parser("retrain", parents=[options.common(), options.study(), options.ray_cluster(),
                                           options.training(), options.latency_backend(None, RETRAIN_BACKEND)],
                       help="retrain front trials and LITE/XLITE with one schedule, compare, write back",
                       description="Retrain chosen trials' architectures and the paper's baselines with the same "
                                   "schedule and data (one Ray Tune trial per network, resumable: rerun to "
                                   "continue), score every --bench folder, and write comparison.csv/.md.")
    pick = p.add_mutually_exclusive_group()
    pick.add_argument("--trials", help="comma-separated trial numbers, e.g. 12,31")
    pick.add_argument("--front", action="store_true", help="every trial on the Pareto front")
    p.add_argument("--baselines", default="lite,xlite",
                   help="networks of the paper's tables retrained alongside: its presets lite, xlite and the "
                        "reference networks msrresnet, fsrcnn (default: lite,xlite)")
    p.add_argument("--schedule", default="full",
                   help="full (the paper's), medium (1.5x short, for CPUs), short, smoke or a YAML file "
                        "(default: full)")
    p.add_argument("--train-dir", help="HR training images (default: embedded skimage photos)")
    p.add_argument("--val-dir", help="HR validation images (default: embedded skimage photos)")
    p.add_argument("--bench", action="append", metavar="DIR",
                   help="benchmark folder scored after training (required, repeatable)")
    p.add_argument("--out", required=True, help="output folder (run folders, comparison.csv/.md)")
    p.add_argument("--seed", type=int, default=0, help="training seed (default: 0)")
    p.add_argument("--gpus-per-trial", type=float, default=0,
                   help="GPUs per network, the same for all; a fraction packs networks onto one GPU (default: where "
                        "there are GPUs, each network's own share by its training cost: LITE 1, XLITE 0.25)")
    p.set_defaults(func=cmd_retrain)


def settings_from_args(args: argparse.Namespace):
    """``run``'s arguments as ``SearchSettings`` (parsed here, validated by ``SearchSettings.check``)."""
    from searchsr.latencypolicy import PredictPolicy
    from searchsr.objectives import parse_constraints, parse_objectives
    from searchsr.search import SearchSettings
    from searchsr.space import load_space

    return SearchSettings(space=load_space(args.space), objectives=parse_objectives(args.objectives),
                          constraints=parse_constraints(args.constraint), trials=args.trials, study=args.study,
                          storage=args.storage, sampler=args.sampler, seed=args.seed, schedule=args.schedule,
                          train_dir=args.train_dir, val_dir=args.val_dir, val_count=args.val_count,
                          runs_dir=args.runs_dir,
                          enqueue=tuple(options.csv_list(args.enqueue)), cpus_per_trial=args.cpus_per_trial,
                          gpus_per_trial=args.gpus_per_trial, concurrency=args.concurrency, address=args.address,
                          latency_runs=args.latency_runs, max_failures=args.max_failures,
                          stale_after=args.stale_after, meter_resource=args.meter_resource,
                          early_stop=args.early_stop, eta=args.eta, first_rung=args.first_rung,
                          precision=args.precision, memory_format=args.memory_format, compile=args.compile,
                          latency_backend=args.latency_backend, latency_cmd=args.latency_cmd,
                          latency_timeout=args.latency_timeout, verbose=args.verbose, int8=args.int8,
                          predict=PredictPolicy(args.latency_predict_after, args.latency_predict_floor,
                                                args.latency_measure_every))


def cmd_run(args: argparse.Namespace) -> int:
    from searchsr.search import run_search

    options.quiet_optuna()
    settings = settings_from_args(args)
    print_front(run_search(settings))
    print(next_steps(settings.study, settings.storage))
    return 0


def next_steps(study: str, storage: str) -> str:
    """What a user runs next on a study, ready to copy (the storage's password masked)."""
    from searchsr.defaults import DEFAULT_STORAGE
    from searchsr.storage import mask_url

    where = f"--study {study}" + ("" if storage == DEFAULT_STORAGE else f" --storage '{mask_url(storage)}'")
    return ("next:\n"
            f"  searchsr report {where} --out dashboards/{study}.html\n"
            f"  searchsr dashboard {where}\n"
            f"  searchsr retrain {where} --front --bench DIR --out runs/retrain-{study}\n"
            f"  searchsr export {where} --trial K --out exported/{study}-K")


def cmd_front(args: argparse.Namespace) -> int:
    from searchsr.storage import check_study_name, load_study, open_storage

    options.quiet_optuna()
    study = load_study(check_study_name(args.study), open_storage(args.storage, create=False))
    print_front(study, as_json=args.json, as_csv=args.csv)
    return 0


def print_front(study, as_json: bool = False, as_csv: bool = False) -> None:
    from searchsr.pareto import compute_front, front_records, front_sizes, front_table
    from searchsr.report import yardstick_text

    front = compute_front(study)
    if as_json:
        print(json.dumps(front_records(front), default=str))
        return
    table = front_table(front)
    if as_csv:
        print(table.to_csv(index=False), end="")
        return
    names = ", ".join(f"{o.name} ({o.direction[:3]})" for o in front.objectives)
    sizes = front_sizes(front)
    print(f"Pareto front of study {study.study_name!r}: {len(front.points)} of {front.complete_trials} "
          f"complete feasible trials; objectives {names}")
    print(sizes.describe())
    print(f"latency yardstick: {yardstick_text(study)}")
    if not table.empty:
        if "/" not in sizes.latency + sizes.cost:  # one size each: the line above says it
            table = table.drop(columns=["latency_lr_size", "cost_lr_size"])
        print(table.to_string(index=False, float_format=lambda v: f"{v:.4g}", na_rep="-"))
    ref = ", ".join(f"{k}={v:.4g}" for k, v in front.reference_point.items())
    print(f"hypervolume {front.hypervolume:.6g} (reference point: {ref or 'none'})")


def cmd_retrain(args: argparse.Namespace) -> int:
    from pathlib import Path

    from searchsr.retrain import RetrainSettings, run_retrain
    from searchsr.storage import check_study_name

    options.quiet_optuna()
    check_study_name(args.study)
    trials = None
    if args.trials:
        try:
            trials = [int(t) for t in options.csv_list(args.trials)]
        except ValueError:
            raise UsageError(f"--trials takes trial numbers like 12,31, got {args.trials!r}") from None
    table, fidelity, csv_path = run_retrain(RetrainSettings(
        study=args.study, storage=args.storage, trials=trials, front=args.front,
        baselines=options.csv_list(args.baselines), schedule=args.schedule, train_dir=args.train_dir,
        val_dir=args.val_dir, bench=args.bench or [], out=Path(args.out), seed=args.seed,
        cpus_per_trial=args.cpus_per_trial, gpus_per_trial=args.gpus_per_trial, address=args.address,
        precision=args.precision, memory_format=args.memory_format, compile=args.compile,
        latency_backend=args.latency_backend, latency_cmd=args.latency_cmd, latency_timeout=args.latency_timeout,
        verbose=args.verbose))
    print(table.drop(columns=["arch"]).to_string(index=False, float_format=lambda v: f"{v:.4g}", na_rep="-"))
    if fidelity:
        print(f"proxy fidelity on {fidelity.benchmark} ({fidelity.models} models): Kendall tau "
              f"{fidelity.kendall_tau:.3f}, Spearman rho {fidelity.spearman_rho:.3f}")
    else:
        print("proxy fidelity: fewer than 3 models with both a search and a retrained score")
    print(f"written: {csv_path} and {csv_path.with_suffix('.md')}")
    return 0
