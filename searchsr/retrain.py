"""Retrain chosen trials (and the paper's LITE/XLITE) with one schedule, then compare.

One Ray Tune trial per network (where there are GPUs, each its share of one: ``searchsr.packing``),
each resumable from its run folder's checkpoint: rerunning the same command continues where it stopped.
Every network is scored on every benchmark folder and costed by the same ``CostMeter``
the search used. The comparison (``ComparisonRow`` objects -> pandas) is written as CSV
and Markdown, written back to the study as ``retrain_*`` user attributes, and the search
proxy's fidelity is reported as Kendall tau / Spearman rho between short-schedule PSNR
and retrained PSNR.
"""

from __future__ import annotations

import json
import math
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import optuna
import pandas as pd
from optuna.trial import TrialState
from scipy import stats

from searchsr.arch import build_model
from searchsr.config import BASELINES, AnyArch, ArchConfig, arch_from_dict
from searchsr.defaults import LATENCY_BACKEND
from searchsr.errors import RetrainFailed, UsageError
from searchsr.runs import existing_trial_dir, for_workers, ray_dir, trial_name
from searchsr.schedule import Schedule


@dataclass(frozen=True)
class Job:
    """One network to retrain: a study trial or a paper baseline."""

    name: str  # "trial_00012" or "lite": also the run folder's name (searchsr.runs)
    arch: AnyArch
    trial: int | None
    short_psnr: float | None  # the search's proxy score (None for a baseline not in the study)


@dataclass(frozen=True)
class Fidelity:
    """How far the search's ranking can be trusted: rank agreement, proxy vs retrained PSNR."""

    kendall_tau: float
    spearman_rho: float
    models: int
    benchmark: str


def select_jobs(study: optuna.Study, trials: list[int] | None, front: bool, baselines: list[str]) -> list[Job]:
    """Validate the request against the study; unknown or unfinished trials are errors."""
    by_number = {t.number: t for t in study.get_trials(deepcopy=False)}
    chosen = sorted(t.number for t in study.best_trials) if front else list(trials or [])
    if not chosen and not baselines:
        raise UsageError("nothing to retrain: give --trials, --front or --baselines")
    jobs = []
    for number in chosen:
        trial = by_number.get(number)
        if trial is None:
            raise UsageError(f"study {study.study_name!r} has no trial {number}")
        if trial.state != TrialState.COMPLETE or "arch" not in trial.user_attrs:
            raise UsageError(f"trial {number} is {trial.state.name}, not a completed search trial")
        jobs.append(Job(trial_name(number), ArchConfig.from_dict(trial.user_attrs["arch"]), number,
                        trial.user_attrs.get("psnr")))
    for name in baselines:  # the paper's presets and its reference networks (searchsr.baselines)
        if name not in BASELINES:
            raise UsageError(f"--baselines: unknown preset {name!r} (known: {', '.join(BASELINES)})")
        match = [t for t in by_number.values() if t.state == TrialState.COMPLETE
                 and t.user_attrs.get("arch") == BASELINES[name].to_dict()]
        if not any(job.arch == BASELINES[name] for job in jobs):
            jobs.append(Job(name, BASELINES[name], match[0].number if match else None,
                            match[0].user_attrs.get("psnr") if match else None))
    return jobs


def longest_first(jobs: list[Job]) -> list[Job]:
    """Jobs by FLOPs, heaviest first: Ray starts trials in this order, and starting the long pole
    (LITE) last would leave one worker training alone long after the others finished."""
    from searchsr.cost import count_cost

    return sorted(jobs, key=lambda job: -count_cost(build_model(job.arch), (48, 48)).flops)


def estimate_seconds(jobs: list[Job], schedule: Schedule, concurrency: int, threads: int,
                     probe_steps: int = 2) -> float:
    """Wall-time estimate: a few timed training steps per network on ``threads`` threads (as each
    trial will run), scaled to the schedule, then packed longest-first onto ``concurrency`` workers."""
    from searchsr.bench import time_train_steps

    seconds = [min(time_train_steps(job.arch, schedule.batch_size, schedule.patch_size, steps=probe_steps,
                                    warmup=1, threads=threads)) * schedule.steps for job in jobs]
    return makespan(seconds, concurrency)


def makespan(seconds: list[float], workers: int) -> float:
    """Wall time of jobs started longest-first, each on the worker that frees up first."""
    loads = [0.0] * max(1, min(workers, len(seconds)))
    for job_seconds in sorted(seconds, reverse=True):
        loads[loads.index(min(loads))] += job_seconds
    return max(loads)


def retrain_trial(config: dict[str, Any], meter: Any) -> None:
    """Ray Tune trainable: train (resuming), score on every benchmark, cost; reports once."""
    import torch
    from ray import tune

    from searchsr.data import load_folder, load_images
    from searchsr.evaluate import evaluate, model_upscaler
    from searchsr.raysession import meter_get
    from searchsr.schedule import load_schedule
    from searchsr.runs import CONFIG_FILE, RESULT_FILE
    from searchsr.train import load_trained, resolve_device, train

    cfg = arch_from_dict(config["arch"])
    torch.set_num_threads(max(1, int(config["cpus_per_trial"])))
    run_dir = Path(config["out"]) / config["name"]
    schedule = load_schedule(config["schedule"])
    if not (run_dir / RESULT_FILE).is_file():
        train_set = load_images(config["train_dir"], "train", cfg.scale)
        val_set = load_images(config["val_dir"], "val", cfg.scale)
        train(cfg, schedule, train_set, val_set, run_dir, seed=config["seed"],
              resume=(run_dir / CONFIG_FILE).is_file(), progress=False, precision=config["precision"],
              memory_format=config["memory_format"], compile=config["compile"])
    model = load_trained(run_dir)[1].to(resolve_device(None))  # scored on the GPU Ray assigned, if any
    scores = {}
    for bench in config["bench"]:
        result = evaluate(model_upscaler(model), load_folder(bench, cfg.scale))
        scores[Path(bench).name] = {"psnr_y": result.psnr_y, "ssim_y": result.ssim_y}
    costs = meter_get(meter.measure.remote(cfg.to_dict()))
    tune.report({"name": config["name"], "scores_json": json.dumps(scores), "costs_json": json.dumps(costs)})


def comparison_table(jobs: list[Job], scores: dict[str, dict], costs: dict[str, dict]) -> pd.DataFrame:
    """One row per network: benchmark PSNR-Y/SSIM-Y, costs, proxy PSNR, baselines it dominates."""
    rows = []
    for job in jobs:
        baseline = next((name for name, preset in BASELINES.items() if preset == job.arch), "")
        family = isinstance(job.arch, ArchConfig)  # a reference network has no nf/N of the family's
        row: dict[str, Any] = {"model": job.name, "trial": job.trial, "baseline": baseline,
                               "nf": job.arch.nf if family else None, "N": job.arch.n_blocks if family else None,
                               "arch": job.arch.to_json()}
        for bench, s in scores[job.name].items():
            row[f"{bench}_psnr_y"], row[f"{bench}_ssim_y"] = s["psnr_y"], s["ssim_y"]
        c = costs[job.name]
        row.update(params=c["params"], flops_g=c["flops"] / 1e9, latency_ms=c["latency_ms"],
                   latency_ratio_xlite=c["latency_ratio"], short_psnr=job.short_psnr)
        rows.append(row)
    table = pd.DataFrame(rows)
    psnr_cols = [c for c in table.columns if c.endswith("_psnr_y")]
    baseline_rows = table[table["baseline"] != ""]  # a front trial may be a preset itself (XLITE is enqueued)
    table["dominates"] = [", ".join(b["baseline"] for _, b in baseline_rows.iterrows()
                                    if b["model"] != r["model"] and _dominates(r, b, psnr_cols))
                          for _, r in table.iterrows()]
    return table


def _dominates(a: pd.Series, b: pd.Series, psnr_cols: list[str]) -> bool:
    """Better or equal on every benchmark PSNR and on latency and FLOPs, strictly better on one.
    Never without a PSNR column: being cheaper alone is not dominating (``run_retrain`` requires --bench)."""
    if not psnr_cols:
        return False
    better_eq = all(a[c] >= b[c] for c in psnr_cols) and a["latency_ms"] <= b["latency_ms"] \
        and a["flops_g"] <= b["flops_g"]
    strictly = any(a[c] > b[c] for c in psnr_cols) or a["latency_ms"] < b["latency_ms"] or a["flops_g"] < b["flops_g"]
    return better_eq and strictly


def proxy_fidelity(table: pd.DataFrame) -> Fidelity | None:
    """Rank agreement on the first benchmark; None with fewer than 3 models that have both scores."""
    psnr_cols = [c for c in table.columns if c.endswith("_psnr_y")]
    if not psnr_cols:
        return None
    pairs = table[["short_psnr", psnr_cols[0]]].dropna()
    if len(pairs) < 3:
        return None
    tau = stats.kendalltau(pairs["short_psnr"], pairs[psnr_cols[0]]).statistic
    rho = stats.spearmanr(pairs["short_psnr"], pairs[psnr_cols[0]]).statistic
    return Fidelity(float(tau), float(rho), len(pairs), psnr_cols[0].removesuffix("_psnr_y"))


def write_outputs(table: pd.DataFrame, fidelity: Fidelity | None, out: Path) -> tuple[Path, Path]:
    csv_path, md_path = out / "comparison.csv", out / "comparison.md"
    table.to_csv(csv_path, index=False)
    shown = table.drop(columns=["arch"])
    shown = shown.astype(object).where(shown.notna(), None)  # baselines have no trial: "-", not "nan"
    lines = [shown.to_markdown(index=False, floatfmt=".4g", missingval="-"), ""]
    lines.append(f"Proxy fidelity on {fidelity.benchmark} over {fidelity.models} models: Kendall tau "
                 f"{fidelity.kendall_tau:.3f}, Spearman rho {fidelity.spearman_rho:.3f}" if fidelity
                 else "Proxy fidelity: fewer than 3 models with both a search and a retrained score.")
    md_path.write_text("\n".join(lines) + "\n")
    (out / "fidelity.json").write_text(json.dumps(asdict(fidelity) if fidelity else None) + "\n")
    return csv_path, md_path


RESULTS_ATTR = "retrain_results"


def write_back(study: optuna.Study, table: pd.DataFrame, csv_path: Path) -> None:
    """Retrained metrics on the study (finished trials are read-only in Optuna's storage).

    ``retrain_results`` maps each trial number ever retrained to its latest row plus ``run_dir``, the run
    folder holding its retrained weights: a retrain merges into what earlier ones recorded (the newer result
    for a trial replaces the older; other trials are kept). ``retrain_table``/``retrain_out`` name the
    latest retrain's CSV and folder.
    """
    out = csv_path.parent.resolve()
    results = {str(int(row["trial"])): {**{k: v for k, v in row.items() if k != "arch" and not _is_nan(v)},
                                        "run_dir": str(out / row["model"])}
               for _, row in table.iterrows() if not _is_nan(row["trial"])}
    merged = merge_results(study.user_attrs.get(RESULTS_ATTR), json.loads(json.dumps(results, default=float)))
    study.set_user_attr(RESULTS_ATTR, merged)
    study.set_user_attr("retrain_table", str(csv_path.resolve()))
    study.set_user_attr("retrain_out", str(out))


def merge_results(earlier: Any, latest: dict[str, dict]) -> dict[str, dict]:
    """``latest`` over ``earlier`` per trial, ordered by trial number; an ``earlier`` that is not a
    mapping of trial numbers to results (absent, or damaged by hand) contributes nothing."""
    kept = {k: v for k, v in earlier.items() if str(k).isdigit() and isinstance(v, dict)} \
        if isinstance(earlier, dict) else {}
    return dict(sorted({**kept, **latest}.items(), key=lambda item: int(item[0])))


def _is_nan(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


@dataclass(frozen=True)
class RetrainSettings:
    study: str
    storage: str
    trials: list[int] | None
    front: bool
    baselines: list[str]
    schedule: str
    train_dir: str | None
    val_dir: str | None
    bench: list[str]
    out: Path
    seed: int = 0
    cpus_per_trial: int = 1
    gpus_per_trial: float = 0
    address: str | None = None
    latency_runs: int = 10
    precision: str = "fp32"  # of the training step (searchsr.tuning)
    memory_format: str = "auto"
    compile: bool = False
    latency_backend: str | None = None  # the runtime latency is timed on (searchsr.runtimes); None: the study's
    latency_cmd: str | None = None  # with latency_backend "command"
    latency_timeout: float = 600.0
    verbose: bool = False


def run_retrain(settings: RetrainSettings) -> tuple[pd.DataFrame, Fidelity | None, Path]:
    """Validate, estimate, retrain in parallel under Ray Tune, compare, write, write back."""
    from ray import tune

    from searchsr.data import check_patch_size, load_folder, load_images
    from searchsr.evaluate import check_scorable
    from searchsr.files import check_writable_dir
    from searchsr.packing import check_gpus_per_trial, describe_shares, gpu_fits, gpu_shares, trial_resources
    from searchsr.runs import RESULT_FILE
    from searchsr.runtimes import IN_PROCESS, check_backend
    from searchsr.raysession import (TrialProgress, check_address, check_resources, cluster_cpus, cluster_gpus,
                                     ray_session, start_meter)
    from searchsr.schedule import load_schedule, schedule_for_workers
    from searchsr.storage import load_study, open_storage
    from searchsr.study import recorded_backend

    if settings.cpus_per_trial < 1:
        raise UsageError(f"--cpus-per-trial must be >= 1, got {settings.cpus_per_trial}")
    check_gpus_per_trial(settings.gpus_per_trial)
    check_backend(settings.latency_backend or ("command" if settings.latency_cmd else LATENCY_BACKEND),
                  settings.latency_cmd, settings.latency_timeout)
    check_writable_dir(settings.out, label=f"--out {settings.out}")
    check_address(settings.address)
    study = load_study(settings.study, open_storage(settings.storage, create=False))
    if settings.latency_backend is None:  # the study's runtime, where it timed in this process
        backend = "command" if settings.latency_cmd else recorded_backend(study)
        settings = replace(settings, latency_backend=backend if backend in IN_PROCESS or settings.latency_cmd
                           else LATENCY_BACKEND)
        check_backend(settings.latency_backend, settings.latency_cmd, settings.latency_timeout)
    jobs = [replace(job, name=existing_trial_dir(settings.out, job.trial).name)
            if job.trial is not None and job.name == trial_name(job.trial) else job  # a baseline not in the study
            for job in select_jobs(study, settings.trials, settings.front, settings.baselines)]
    schedule = load_schedule(settings.schedule)
    if not settings.bench:
        raise UsageError("give at least one --bench folder: retrain compares networks by benchmark PSNR "
                         "against cost, and without one it could only rank them by cost")
    for scale in sorted({job.arch.scale for job in jobs}):  # what every Ray trial will do, checked up front
        check_patch_size(load_images(settings.train_dir, "train", scale), schedule.patch_size)
        check_scorable(load_images(settings.val_dir, "val", scale))
        for bench in settings.bench:
            check_scorable(load_folder(bench, scale))
    settings.out.mkdir(parents=True, exist_ok=True)
    with ray_session(settings.address, settings.verbose):
        gpus = cluster_gpus()  # without --gpus-per-trial, each network asks for its own share of a GPU
        shares = gpu_shares({j.name: j.arch for j in jobs}, settings.gpus_per_trial, gpus, schedule.batch_size,
                            schedule.patch_size)
        check_resources(settings.cpus_per_trial, max(shares.values()))
        slots = cluster_cpus() // settings.cpus_per_trial
        concurrency = max(1, min(len(jobs), slots, gpu_fits(gpus, min(shares.values())) or slots))
        if settings.precision == "fp16" and not gpus:
            raise UsageError("--precision fp16 trains on GPUs only and the Ray cluster has none: use bf16 or fp32")
        pending = [j for j in jobs if not (settings.out / j.name / RESULT_FILE).is_file()]
        if pending and gpus:
            say(describe_shares(shares, settings.gpus_per_trial, gpus))
        if pending and not gpus:
            eta = estimate_seconds(pending, schedule, concurrency, settings.cpus_per_trial)
            say(f"retraining {len(pending)} of {len(jobs)} network(s) with schedule {schedule.name} on CPU, "
                f"{concurrency} at a time: estimated {eta / 3600:.1f} h ({eta:.0f} s) before evaluation")
        meter = start_meter(1, settings.latency_runs, backend=settings.latency_backend, command=settings.latency_cmd,
                            command_timeout_s=settings.latency_timeout)
        config = {"out": for_workers(settings.out), "schedule": schedule_for_workers(settings.schedule),
                  "train_dir": for_workers(settings.train_dir), "val_dir": for_workers(settings.val_dir),
                  "bench": [for_workers(b) for b in settings.bench],
                  "seed": settings.seed, "cpus_per_trial": settings.cpus_per_trial,
                  "precision": settings.precision, "memory_format": settings.memory_format,
                  "compile": settings.compile,
                  "name": tune.grid_search([j.name for j in longest_first(jobs)])}
        arch_by_name = {j.name: j.arch.to_dict() for j in jobs}
        trainable = tune.with_resources(
            tune.with_parameters(_with_arch, meter=meter, arch_by_name=arch_by_name),
            lambda trial_config: trial_resources(settings.cpus_per_trial, shares[trial_config["name"]]))
        progress = TrialProgress(len(jobs), "network", _describe_done, _describe_error, lines=sys.stderr)
        tuner = tune.Tuner(trainable, param_space=config,
                           tune_config=tune.TuneConfig(max_concurrent_trials=concurrency),
                           run_config=tune.RunConfig(name=f"retrain-{int(time.time())}", verbose=0,
                                                     callbacks=[progress.callback],
                                                     storage_path=str(ray_dir(settings.out))))
        try:
            grid = tuner.fit()
        finally:
            progress.close()
        failed = [r for r in grid if r.error]
        if failed:
            raise RetrainFailed(f"{len(failed)} retraining trial(s) failed; rerun the command to resume them "
                                f"(first error: {str(failed[0].error).splitlines()[-1][:300]})")
        finished = [r for r in grid if "scores_json" in (r.metrics or {})]
        if len(finished) < len(jobs):  # Ctrl-C: Tune stopped the running trials and returned
            raise KeyboardInterrupt(f"{len(finished)} of {len(jobs)} networks finished; rerun the same command to "
                                    "resume the others from their checkpoints")
        scores = {r.metrics["name"]: json.loads(r.metrics["scores_json"]) for r in grid}
        costs = {r.metrics["name"]: json.loads(r.metrics["costs_json"]) for r in grid}
    table = comparison_table(jobs, scores, costs)
    fidelity = proxy_fidelity(table)
    csv_path, _ = write_outputs(table, fidelity, settings.out)
    write_back(study, table, csv_path)
    return table, fidelity, csv_path


def _describe_done(trial: Any) -> str:
    scores = json.loads((trial.last_result or {}).get("scores_json", "{}"))
    shown = ", ".join(f"{bench} {s['psnr_y']:.2f} dB" for bench, s in scores.items())
    return f"{trial.config.get('name')}: {shown or 'done'}"


def _describe_error(trial: Any) -> str:
    return f"{trial.config.get('name')}: FAILED (rerun the command to resume it)"


def _with_arch(config: dict[str, Any], meter: Any, arch_by_name: dict[str, dict]) -> None:
    retrain_trial({**config, "arch": arch_by_name[config["name"]]}, meter)
