"""The search driver: ``run_search(settings)`` adds ``settings.trials`` trials to a study (created or
continued), Ray Tune running them, and returns the study.

The job in four parts, each a module readable on its own:

    storage + study lifecycle   searchsr.storage, searchsr.study   (Optuna side: the state)
    the Optuna-Ray bridge       searchsr.recording                 (asks the study, records results)
    one trial                   searchsr.trial, searchsr.meter     (Ray side: train, score, cost)
    this driver loop            settings -> study -> searcher -> Tune -> what was kept

``SearchSettings`` validates itself (``check``) before any storage, folder or Ray is touched.
"""

from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna

from searchsr.config import ArchConfig
from searchsr.defaults import DEFAULT_STORAGE, DEFAULT_STUDY
from searchsr.errors import TooManyFailures, UsageError
from searchsr.objectives import Constraint, Objective
from searchsr.space import SearchSpace
from searchsr.storage import STALE_AFTER_S, check_study_name, mask_url, open_storage


@dataclass(frozen=True)
class SearchSettings:
    """Everything a search run needs; paths as the user gave them (``worker_config`` makes them absolute)."""

    space: SearchSpace
    objectives: tuple[Objective, ...]
    trials: int
    constraints: tuple[Constraint, ...] = ()  # besides the space's own
    study: str = DEFAULT_STUDY
    storage: str = DEFAULT_STORAGE
    sampler: str = "tpe"
    seed: int = 0
    schedule: str = "short"
    train_dir: str | None = None
    val_dir: str | None = None
    runs_dir: str | Path = "studies/runs"
    enqueue: tuple[str, ...] = ()  # paper presets to queue (the CLI's default: xlite)
    cpus_per_trial: int = 1
    gpus_per_trial: float = 0
    concurrency: int = 0  # 0: as many as the CPUs allow
    address: str | None = None
    latency_runs: int = 10
    latency_threads: int = 1
    max_failures: int = 0  # 0: never stop because trials fail
    stale_after: int = STALE_AFTER_S  # seconds without heartbeat before a RUNNING trial counts as lost
    verbose: bool = False

    @property
    def runs_root(self) -> Path:
        """This study's run folders: one ``trial_NNNNN`` per trial (``searchsr.runs``)."""
        return Path(self.runs_dir) / self.study

    @property
    def all_constraints(self) -> tuple[Constraint, ...]:
        return self.space.constraints + self.constraints

    def check(self) -> None:
        """Every argument, folder, image and preset, checked up front: UsageError, nothing written."""
        from searchsr.files import check_writable_dir
        from searchsr.raysession import check_address
        from searchsr.schedule import load_schedule
        from searchsr.study import SAMPLERS, preset_params

        if self.sampler not in SAMPLERS:
            raise UsageError(f"--sampler must be one of {', '.join(SAMPLERS)}, got {self.sampler!r}")
        for name, value, low in (("--trials", self.trials, 1), ("--cpus-per-trial", self.cpus_per_trial, 1),
                                 ("--concurrency", self.concurrency, 0), ("--seed", self.seed, 0),
                                 ("--max-failures", self.max_failures, 0), ("--stale-after", self.stale_after, 2),
                                 ("--latency-runs", self.latency_runs, 1),
                                 ("--gpus-per-trial", self.gpus_per_trial, 0)):
            if value < low:
                raise UsageError(f"{name} must be >= {low}, got {value}")
        check_study_name(self.study)
        check_address(self.address)
        check_writable_dir(self.runs_root, label=f"--runs-dir: {self.runs_root}")
        schedule = load_schedule(self.schedule)
        check_images(self.train_dir, self.val_dir, space_scales(self.space), schedule.patch_size)
        preset_params(self.space, self.enqueue)

    def worker_config(self) -> dict[str, Any]:
        """What every trial's worker needs besides its arch; absolute paths, since Ray workers run in
        their own working directories."""
        from searchsr.runs import for_workers
        from searchsr.schedule import schedule_for_workers

        return {"schedule": schedule_for_workers(self.schedule), "train_dir": for_workers(self.train_dir),
                "val_dir": for_workers(self.val_dir), "runs_root": for_workers(self.runs_root), "seed": self.seed,
                "cpus_per_trial": self.cpus_per_trial}


def plan_concurrency(requested: int, cpus: int, cpus_per_trial: int) -> tuple[int, str | None]:
    """Trials to run at once (0 requested: as many as the CPUs hold), and a note when more were asked
    for than the cluster's CPUs can run (Ray would queue them silently)."""
    fits = max(1, cpus // cpus_per_trial)
    if requested > fits:
        return requested, (f"note: --concurrency {requested}, but the cluster's {cpus} CPU(s) at {cpus_per_trial} "
                           f"per trial run at most {fits} trial(s) at once (Ray queues the rest)")
    return requested or fits, None


def space_scales(space: SearchSpace) -> list[int]:
    """Every upscaling factor a trial of ``space`` can train at."""
    param = space.params.get("scale")
    if param is None:
        return [ArchConfig().scale]
    return sorted({*param.probes(), *((ArchConfig().scale,) if param.when else ())})


def check_images(train_dir: str | None, val_dir: str | None, scales: list[int], patch_size: int) -> None:
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
                raise UsageError(f"--{split}-dir {folder}: {err}") from None


def _describe_done(objectives: tuple[Objective, ...]):
    import json

    def describe(trial: Any) -> str:
        r = trial.last_result or {}
        values = ", ".join(f"{o.key}={r[o.key]:.4g}" for o in objectives if o.key in r)
        arch = json.loads(r.get("arch_json", "{}"))
        return (f"trial {trial.config.get('number')}: nf={arch.get('nf')} N={arch.get('n_blocks')} {values} "
                f"({r.get('trial_seconds', 0):.0f} s)")
    return describe


def _describe_error(trial: Any) -> str:
    from searchsr.runs import failure_reason, trial_dir

    reason = failure_reason(trial_dir(trial.config.get("runs_root", "."), trial.config.get("number", 0)))
    return f"trial {trial.config.get('number')}: FAILED ({reason.splitlines()[0][:200]})"


def run_search(settings: SearchSettings) -> optuna.Study:
    """Run ``settings.trials`` new trials of the study (created or continued)."""
    from ray import tune
    from ray.tune.search import ConcurrencyLimiter

    from searchsr.raysession import TrialProgress, cluster_cpus, ray_session, start_meter
    from searchsr.recording import make_searcher
    from searchsr.runs import ray_dir
    from searchsr.study import enqueue_presets, prepare_study
    from searchsr.trial import run_trial

    settings.check()
    storage = open_storage(settings.storage, settings.stale_after)
    study = prepare_study(settings.study, storage, settings.objectives, settings.sampler, settings.seed,
                          settings.trials)
    enqueue_presets(study, settings.space, settings.enqueue)
    trials = study.get_trials(deepcopy=False)
    queued = sum(t.state == optuna.trial.TrialState.WAITING for t in trials)
    say(f"study {settings.study!r} in {mask_url(settings.storage)}: {len(trials) - queued} trial(s) so far, "
        f"{settings.trials} new{f' ({queued} queued first)' if queued else ''}; objectives "
        f"{','.join(o.name for o in settings.objectives)}, sampler {settings.sampler}, schedule {settings.schedule}")
    with ray_session(settings.address, settings.verbose):
        concurrency, note = plan_concurrency(settings.concurrency, cluster_cpus(), settings.cpus_per_trial)
        if note:
            say(note)
        meter = start_meter(settings.latency_threads, settings.latency_runs)
        settings.runs_root.mkdir(parents=True, exist_ok=True)
        searcher = make_searcher(study, settings.space, settings.objectives, settings.all_constraints,
                                 settings.runs_root, settings.worker_config())
        progress = TrialProgress(settings.trials, "trial", _describe_done(settings.objectives), _describe_error,
                                 settings.max_failures)
        trainable = tune.with_resources(tune.with_parameters(run_trial, meter=meter),
                                        {"cpu": settings.cpus_per_trial, "gpu": settings.gpus_per_trial})
        tuner = tune.Tuner(
            trainable,
            tune_config=tune.TuneConfig(search_alg=ConcurrencyLimiter(searcher, max_concurrent=concurrency),
                                        num_samples=settings.trials, reuse_actors=False),
            run_config=tune.RunConfig(name=f"{settings.study}-{int(time.time())}-{os.getpid()}",
                                      storage_path=str(ray_dir(settings.runs_root)),
                                      verbose=2 if settings.verbose else 0, callbacks=[progress.callback],
                                      stop=progress.stopper,
                                      failure_config=tune.FailureConfig(max_failures=0, fail_fast=False)))
        try:
            tuner.fit()
        finally:
            searcher.close()
            progress.close()
        if progress.too_many_failures():
            raise TooManyFailures(f"stopped: {progress.failures} trials failed (--max-failures "
                                  f"{settings.max_failures}); see each trial's fail_reason (searchsr front shows "
                                  f"what completed)")
        if progress.finished < settings.trials:  # Ctrl-C: Tune stopped the running trials and returned
            cut = searcher.abandon_unfinished("interrupted (Ctrl-C) before it finished")
            raise KeyboardInterrupt(f"{progress.finished} of {settings.trials} new trials finished and are saved; "
                                    f"{cut} cut short are marked FAIL and queued again for the next run")
    return study


def say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)
