"""``searchsr bench record``: train every architecture of a finite space and record its training curve.

The result is a table (CSV) with one row per (architecture, seed, step): PSNR-Y/SSIM-Y at each
rung and at the schedule's end, the training seconds spent up to that step, and the exact costs.
``searchsr bench search`` (``searchsr.replay``) replays search methods against it: many seeds of
many methods for the price of one training run per architecture, as tabular HPO benchmarks
(NAS-Bench-201, LCBench) do.

Each network is a Ray Tune trial of ``searchsr.trial.run_trial`` (the search's own trainable, so the
curves are what a search trial sees), its rung results written to the table by a driver callback
as they arrive. Resumable: rerun the same command and the networks the table finished are skipped,
the others continue from their run folders' checkpoints. A second seed for ``repeat`` networks
spread over the space lets the table state its own noise.
"""

from __future__ import annotations

import csv
import time
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from ray import tune

from searchsr.config import ArchConfig
from searchsr.errors import Terminated, UsageError
from searchsr.space import SearchSpace, enumerate_space

ARCH_COLUMNS = tuple(f.name for f in fields(ArchConfig))
COLUMNS = (*ARCH_COLUMNS, "seed", "step", "psnr", "ssim", "train_seconds", "latency_ms", "flops", "params",
           "activations", "memory", "schedule")
MAX_NETWORKS = 500  # a table is trained in full: a larger space is a mistake, not a plan


@dataclass(frozen=True)
class RecordSettings:
    space: SearchSpace
    out: Path  # the table (CSV); appended to, so a rerun resumes
    rungs: tuple[int, ...]
    schedule: str = "short"
    train_dir: str | None = None
    val_dir: str | None = None
    val_count: int = 0
    seed: int = 0
    repeat: int = 8  # networks recorded with a second seed (seed + 1)
    runs_dir: Path | None = None  # default: next to the table, <out>.runs
    cpus_per_trial: int = 1
    concurrency: int = 0
    address: str | None = None
    latency_runs: int = 10
    verbose: bool = False

    @property
    def runs_root(self) -> Path:
        return self.runs_dir or self.out.with_suffix(".runs")


def plan(settings: RecordSettings, steps: int) -> list[dict[str, Any]]:
    """One job per (architecture, seed): every architecture once, ``repeat`` of them, spread evenly
    over the enumeration, a second time with the next seed."""
    archs = enumerate_space(settings.space)
    repeated = [archs[i * len(archs) // settings.repeat] for i in range(min(settings.repeat, len(archs)))]
    jobs = []
    for seed, chosen in ((settings.seed, archs), (settings.seed + 1, repeated)):
        for cfg in chosen:
            jobs.append({"arch": cfg.to_dict(), "number": archs.index(cfg), "seed": seed,
                         "runs_root": str((settings.runs_root / f"seed{seed}").resolve())})
    return jobs


def read_table(path: Path) -> list[dict[str, str]]:
    """A recorded table's rows; a file that is not one is refused (never appended to)."""
    if not path.is_file():
        return []
    with path.open(newline="") as f:
        reader = csv.DictReader(f)
        if tuple(reader.fieldnames or ()) != COLUMNS:
            raise UsageError(f"--out {path}: exists and is not a recorded table (its header differs): "
                             "give a new file, or the table to continue")
        return list(reader)


def row_key(arch: dict[str, Any], seed: Any, step: Any) -> tuple[str, int, int]:
    return ArchConfig.from_dict(arch).to_json(), int(seed), int(step)


def table_arch(row: dict[str, str]) -> dict[str, Any]:
    """A table row's architecture fields, typed as ArchConfig wants them."""
    kinds = {f.name: f.type for f in fields(ArchConfig)}
    parse = {"int": int, "float": float, "bool": lambda v: v == "True", "str": str}
    return {k: parse[kinds[k]](row[k]) for k in ARCH_COLUMNS}


def check(settings: RecordSettings, steps: int) -> list[dict[str, str]]:
    from searchsr.data import check_val_count
    from searchsr.files import check_writable_dir

    if not settings.rungs or any(not 0 < r < steps for r in settings.rungs) or list(settings.rungs) != sorted(
            set(settings.rungs)):
        raise UsageError(f"--rungs must be increasing steps between 1 and the schedule's {steps}, "
                         f"got {','.join(map(str, settings.rungs))}")
    count = len(enumerate_space(settings.space))
    if count > MAX_NETWORKS:
        raise UsageError(f"--space {settings.space.source}: {count} networks; bench record trains every one, at "
                         f"most {MAX_NETWORKS} (a smaller space, e.g. the shipped 'table' of 48)")
    if settings.repeat < 0:
        raise UsageError(f"--repeat must be >= 0, got {settings.repeat}")
    check_val_count(settings.train_dir, settings.val_dir, settings.val_count)
    check_writable_dir(settings.out.parent, label=f"--out: {settings.out.parent}")
    rows = read_table(settings.out)
    other = {r["schedule"] for r in rows} - {settings.schedule}
    if other:
        raise UsageError(f"--out {settings.out}: recorded with schedule {sorted(other)[0]!r}, not "
                         f"{settings.schedule!r}: one table, one schedule")
    return rows


def record(settings: RecordSettings) -> tuple[int, int]:
    """Train what the table lacks; returns (networks recorded now, networks that failed)."""
    import ray

    from searchsr.raysession import TrialProgress, ray_session, sigterm_as_interrupt, start_meter
    from searchsr.schedule import load_schedule, schedule_for_workers
    from searchsr.runs import for_workers, ray_dir
    from searchsr.search import say

    schedule = load_schedule(settings.schedule)
    rows = check(settings, schedule.steps)
    done = {row_key(table_arch(r), r["seed"], r["step"]) for r in rows}
    jobs = [j for j in plan(settings, schedule.steps) if row_key(j["arch"], j["seed"], schedule.steps) not in done]
    common = {"schedule": schedule_for_workers(settings.schedule), "train_dir": for_workers(settings.train_dir),
              "val_dir": for_workers(settings.val_dir), "val_count": settings.val_count,
              "cpus_per_trial": settings.cpus_per_trial, "rungs": list(settings.rungs), "constraints": []}
    say(f"{len(plan(settings, schedule.steps))} network(s) x seed in the table's plan, {len(jobs)} to train "
        f"(schedule {settings.schedule}, rungs {','.join(map(str, settings.rungs))}) into {settings.out}")
    if not jobs:
        return 0, 0
    if not settings.out.is_file():
        with settings.out.open("w", newline="") as f:
            csv.writer(f).writerow(COLUMNS)
    with ray_session(settings.address, settings.verbose), sigterm_as_interrupt() as signals:
        meter = start_meter(1, settings.latency_runs)
        ray.get(meter.use_yardstick.remote(ray.get(meter.own_yardstick.remote())["xlite_ms"]))
        writer = _TableWriter(settings.out, done, settings.schedule)
        progress = TrialProgress(len(jobs), "network", _describe, lambda t: f"{_name(t)}: FAILED")
        trainable = tune.with_resources(tune.with_parameters(_record_trial, meter=meter),
                                        {"cpu": settings.cpus_per_trial})
        tuner = tune.Tuner(trainable, param_space={"job": tune.grid_search([{**j, **common} for j in jobs])},
                           tune_config=tune.TuneConfig(max_concurrent_trials=settings.concurrency or None,
                                                       reuse_actors=False),
                           run_config=tune.RunConfig(name=f"record-{int(time.time())}",
                                                     storage_path=str(ray_dir(settings.runs_root)), verbose=0,
                                                     callbacks=[progress.callback, writer],
                                                     failure_config=tune.FailureConfig(max_failures=0)))
        try:
            tuner.fit()
        finally:
            progress.close()
        if progress.finished < len(jobs):  # Ctrl-C or SIGTERM: what finished is in the table
            message = (f"{progress.finished - progress.failures} of {len(jobs)} network(s) recorded into "
                       f"{settings.out}; rerun the same command to continue")
            raise Terminated(message) if signals.terminated else KeyboardInterrupt(message)
    return progress.finished - progress.failures, progress.failures


def _record_trial(config: dict[str, Any], meter: Any) -> dict[str, Any]:
    from searchsr.trial import run_trial

    return run_trial(config["job"], meter)


def _name(trial: Any) -> str:
    job = trial.config["job"]
    arch = job["arch"]
    return f"nf={arch['nf']} N={arch['n_blocks']} se={arch['se']} {arch['act']} seed {job['seed']}"


def _describe(trial: Any) -> str:
    r = trial.last_result or {}
    return f"{_name(trial)}: psnr {r.get('psnr', float('nan')):.3f} ({r.get('train_seconds', 0):.0f} s of training)"


class _TableWriter(tune.Callback):
    """A Tune callback (driver side) appending one table row per rung or final result, once each."""

    def __init__(self, path: Path, done: set, schedule: str) -> None:
        self.path, self.done, self.schedule = path, done, schedule

    def __getstate__(self) -> dict:  # Tune pickles callbacks; the writer stays with the driver
        return {}

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info: Any) -> None:
        from searchsr.trial import FINAL, RUNG

        if result.get("kind") not in (RUNG, FINAL):
            return
        job = trial.config["job"]
        final = result["kind"] == FINAL
        step = result["steps"] if final else result["rung_step"]
        key = row_key(job["arch"], job["seed"], step)
        if key in self.done:
            return
        arch = ArchConfig.from_dict(job["arch"]).to_dict()
        row = {**arch, "seed": job["seed"], "step": step, "psnr": result["psnr" if final else "rung_psnr"],
               "ssim": result["ssim" if final else "rung_ssim"], "train_seconds": result["train_seconds"],
               **{k: result[k] for k in ("latency_ms", "flops", "params", "activations", "memory")},
               "schedule": self.schedule}
        with self.path.open("a", newline="") as f:
            csv.DictWriter(f, COLUMNS).writerow(row)
        self.done.add(key)
