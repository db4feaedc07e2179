"""The search driver: ``run_search(settings)`` adds ``settings.trials`` trials to a study (created or
continued), Ray Tune running them, and returns the study.

The job in four parts, each a module readable on its own:

    storage + study lifecycle   searchsr.storage, searchsr.study   (Optuna side: the state)
    the Optuna-Ray bridge       searchsr.recording                 (asks the study, records results)
    one trial                   searchsr.trial, searchsr.meter     (Ray side: train, score, cost)
    this driver loop            settings -> study -> searcher -> Tune -> what was kept

``SearchSettings`` validates itself (``check``) before any storage, folder or Ray is touched, and
``check_continuation`` refuses, before anything is written, what would make a continued study's
trials incomparable (another schedule, data or space) or mix two studies' run folders. Then the
study's latency yardstick is settled (``searchsr.study``), the trials run, and Ctrl-C, SIGTERM or
``--max-failures`` cut the running trials cleanly: FAIL with the reason, re-queued.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
import ray

from searchsr.config import ArchConfig
from searchsr.defaults import DEFAULT_STORAGE, DEFAULT_STUDY, LATENCY_BACKEND
from searchsr.errors import NothingCompleted, Terminated, TooManyFailures, UsageError
from searchsr.halving import DEFAULT_ETA, default_first_rung, rung_steps
from searchsr.latencypolicy import LatencyPlanner, PredictPolicy
from searchsr.objectives import Constraint, Objective
from searchsr.packing import check_gpus_per_trial, plan_concurrency, trial_resources
from searchsr.space import SearchSpace
from searchsr.storage import STALE_AFTER_S, check_study_name, mask_url, open_storage


EARLY_STOP = ("none", "pareto")


@dataclass(frozen=True)
class SearchSettings:
    """Everything a search run needs; paths as the user gave them (``worker_config`` makes them absolute)."""

    space: SearchSpace
    objectives: tuple[Objective, ...]
    trials: int
    constraints: tuple[Constraint, ...] = ()  # besides the space's own
    study: str = DEFAULT_STUDY
    storage: str = DEFAULT_STORAGE
    sampler: str = "auto"
    seed: int = 0
    schedule: str = "short"
    train_dir: str | None = None
    val_dir: str | None = None
    val_count: int = 0  # > 0: hold out that many images of train_dir for validation (searchsr.data.held_out)
    runs_dir: str | Path = "studies/runs"
    enqueue: tuple[str, ...] = ()  # paper presets to queue (the CLI's default: xlite)
    cpus_per_trial: int = 1
    gpus_per_trial: float = 0
    concurrency: int = 0  # 0: as many as the CPUs allow
    address: str | None = None
    latency_runs: int = 10
    latency_threads: int = 1
    max_failures: int = 0  # 0: never stop because trials fail
    meter_resource: str | None = None  # a Ray node resource: the latency meter runs on such a node
    stale_after: int = STALE_AFTER_S  # seconds without heartbeat before a RUNNING trial counts as lost
    early_stop: str = "none"  # "pareto": Pareto successive halving (searchsr.rungs)
    eta: int = DEFAULT_ETA  # early stopping keeps the top 1/eta at each rung
    first_rung: int = 0  # 0: halving.default_first_rung(schedule steps, eta)
    precision: str = "fp32"  # of the training step (searchsr.tuning); validation is fp32
    memory_format: str = "auto"
    compile: bool = False
    latency_backend: str | None = None  # the runtime latency is timed on (searchsr.runtimes); None: with_backend
    latency_cmd: str | None = None  # with latency_backend "command"
    latency_timeout: float = 600.0
    predict: PredictPolicy = PredictPolicy(0)  # --latency-predict-after (searchsr.latencypolicy)
    int8: bool = False  # quantize every trained trial and time every network in INT8 too (searchsr.quantize)
    verbose: bool = False

    @property
    def runs_root(self) -> Path:
        """This study's run folders: one ``trial_NNNNN`` per trial (``searchsr.runs``)."""
        return Path(self.runs_dir) / self.study

    @property
    def all_constraints(self) -> tuple[Constraint, ...]:
        return self.space.constraints + self.constraints

    def rungs(self) -> tuple[int, ...]:
        """The steps at which early stopping may stop a trial; none without early stopping."""
        from searchsr.schedule import load_schedule

        if self.early_stop == "none":
            return ()
        steps = load_schedule(self.schedule).steps
        try:
            return rung_steps(steps, self.first_rung or default_first_rung(steps, self.eta), self.eta)
        except ValueError as err:
            raise UsageError(f"--first-rung/--eta: {err}") from None

    def check(self) -> None:
        """Every argument, folder, image and preset, checked up front: UsageError, nothing written."""
        from searchsr.data import check_val_count
        from searchsr.files import check_writable_dir
        from searchsr.raysession import check_address
        from searchsr.runtimes import check_backend
        from searchsr.schedule import load_schedule
        from searchsr.study import SAMPLERS, preset_params

        if self.sampler not in SAMPLERS:
            raise UsageError(f"--sampler must be one of {', '.join(SAMPLERS)}, got {self.sampler!r}")
        check_backend(self.latency_backend or ("command" if self.latency_cmd else LATENCY_BACKEND), self.latency_cmd,
                      self.latency_timeout)
        if self.precision == "fp16" and not self.gpus_per_trial:
            raise UsageError("--precision fp16 trains on GPUs only: add --gpus-per-trial, or use bf16 on CPUs")
        if self.early_stop not in EARLY_STOP:
            raise UsageError(f"--early-stop must be one of {', '.join(EARLY_STOP)}, got {self.early_stop!r}")
        for name, value, low in (("--trials", self.trials, 1), ("--cpus-per-trial", self.cpus_per_trial, 1),
                                 ("--concurrency", self.concurrency, 0), ("--seed", self.seed, 0),
                                 ("--max-failures", self.max_failures, 0), ("--stale-after", self.stale_after, 2),
                                 ("--latency-runs", self.latency_runs, 1), ("--eta", self.eta, 2),
                                 ("--first-rung", self.first_rung, 0)):
            if value < low:
                raise UsageError(f"{name} must be >= {low}, got {value}")
        check_gpus_per_trial(self.gpus_per_trial)
        self.predict.check()
        self.check_int8()
        if self.early_stop == "none" and (self.first_rung or self.eta != DEFAULT_ETA):
            raise UsageError("--eta and --first-rung set early stopping: add --early-stop pareto")
        check_study_name(self.study)
        check_address(self.address)
        check_writable_dir(self.runs_root, label=f"--runs-dir: {self.runs_root}")
        schedule = load_schedule(self.schedule)
        self.rungs()
        check_val_count(self.train_dir, self.val_dir, self.val_count)
        check_images(self.train_dir, self.val_dir or (self.train_dir if self.val_count else None),
                     space_scales(self.space), schedule.patch_size)
        preset_params(self.space, self.enqueue)

    def check_int8(self) -> None:
        from searchsr.runtimes import check_int8

        check_int8(self.int8, [o.name for o in self.objectives], self.latency_backend, bool(self.predict.after))

    def with_backend(self, storage: Any) -> SearchSettings:
        """The latency backend, when none was given: a continued study's own (older studies: torch), else
        onnxruntime, what ``export`` ships (command with a --latency-cmd); checked again as the one chosen."""
        from dataclasses import replace

        from searchsr.runtimes import check_backend
        from searchsr.storage import load_study, study_names
        from searchsr.study import recorded_backend

        if self.latency_backend is not None:
            return self
        if self.latency_cmd is not None:
            backend = "command"
        elif self.study in study_names(storage):
            backend = recorded_backend(load_study(self.study, storage))
        else:
            backend = LATENCY_BACKEND
        check_backend(backend, self.latency_cmd, self.latency_timeout)
        chosen = replace(self, latency_backend=backend)
        chosen.check_int8()
        return chosen

    def setup(self) -> dict[str, dict[str, str]]:
        """What makes this run's trials comparable with the study's others, each as a label for users
        and a key that must match (``searchsr.study.check_setup``)."""
        from searchsr.schedule import load_schedule

        schedule = load_schedule(self.schedule)
        return {"schedule": {"label": self.schedule, "key": _digest(repr({k: v for k, v in schedule.to_dict().items()
                                                                          if k != "name"}))},
                "train data": _data_fingerprint(self.train_dir, "train"),
                "validation data": (_data_fingerprint(self.val_dir, "val") if not self.val_count else
                                    _held_out_fingerprint(self.train_dir, self.val_count)),
                "space": {"label": self.space.source, "key": _digest(repr(sorted(self.space.params.items())))},
                "precision": {"label": self.precision, "key": self.precision, "before": "fp32"},
                "latency backend": {"label": self.latency_label, "key": self.latency_label, "before": "torch"}}

    @property
    def latency_label(self) -> str:
        return self.latency_backend if self.latency_cmd is None else f"{self.latency_backend} ({self.latency_cmd})"

    def worker_config(self) -> dict[str, Any]:
        """What every trial's worker needs besides its arch; absolute paths, since Ray workers run in
        their own working directories."""
        from searchsr.runs import for_workers
        from searchsr.schedule import schedule_for_workers

        return {"schedule": schedule_for_workers(self.schedule), "train_dir": for_workers(self.train_dir),
                "val_dir": for_workers(self.val_dir), "val_count": self.val_count,
                "runs_root": for_workers(self.runs_root), "seed": self.seed,
                "cpus_per_trial": self.cpus_per_trial, "rungs": list(self.rungs()),
                "precision": self.precision, "memory_format": self.memory_format, "compile": self.compile,
                "int8": self.int8, "constraints": [str(c) for c in self.all_constraints]}


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _data_fingerprint(folder: str | None, split: str) -> dict[str, str]:
    """A data folder by content (image names and sizes), so the same photos elsewhere still match."""
    from searchsr.data import list_images

    if folder is None:
        return {"label": f"the embedded scikit-image photos ({split} split)", "key": f"skimage-{split}"}
    files = [(p.name, p.stat().st_size) for p in list_images(Path(folder))]
    return {"label": f"{folder} ({len(files)} images)", "key": _digest(repr(files))}


def _held_out_fingerprint(folder: str, count: int) -> dict[str, str]:
    from searchsr.data import held_out, list_images

    files = [(p.name, p.stat().st_size) for p in held_out(list_images(Path(folder)), count)]
    return {"label": f"{count} image(s) held out of {folder}", "key": _digest(repr(files))}


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


def run_search(settings: SearchSettings) -> optuna.Study:
    """Run ``settings.trials`` new trials of the study (created or continued)."""
    from ray import tune
    from ray.tune.search import ConcurrencyLimiter

    from searchsr.raysession import (TrialProgress, check_resources, cluster_cpus, cluster_gpus, ray_session,
                                     meter_get, sigterm_as_interrupt, start_meter)
    from searchsr.costcache import cache_size
    from searchsr.recording import make_searcher
    from searchsr.rungs import ParetoHalving
    from searchsr.schedule import load_schedule
    from searchsr.runs import ray_dir
    from searchsr.study import (describe_yardstick, enqueue_presets, prepare_study, record_setup, settle_yardstick,
                                study_uid)
    from searchsr.trial import describe_done, describe_error, run_trial

    settings.check()
    storage = open_storage(settings.storage, settings.stale_after)
    settings = settings.with_backend(storage)
    setup = settings.setup()
    check_continuation(storage, settings, setup)  # reads only: a refusal writes nothing
    with ray_session(settings.address, settings.verbose), sigterm_as_interrupt() as signals:
        check_resources(settings.cpus_per_trial, settings.gpus_per_trial)
        concurrency, note = plan_concurrency(settings.concurrency, cluster_cpus(), settings.cpus_per_trial,
                                             cluster_gpus(), settings.gpus_per_trial)
        meter = start_meter(settings.latency_threads, settings.latency_runs, settings.meter_resource,
                            settings.latency_backend, settings.latency_cmd, settings.latency_timeout, settings.int8)
        study = prepare_study(settings.study, storage, settings.objectives, settings.sampler, settings.seed,
                              settings.trials, settings.space, settings.early_stop != "none")
        record_setup(study, setup)
        mark_runs_folder(settings.runs_root, study_uid(study), settings.study)
        yardstick, first_time = settle_yardstick(study, meter_get(meter.own_yardstick.remote()))
        ray.get(meter.use_yardstick.remote(yardstick["xlite_ms"]))
        enqueue_presets(study, settings.space, settings.enqueue)
        trials = study.get_trials(deepcopy=False)
        queued = sum(t.state == optuna.trial.TrialState.WAITING for t in trials)
        say(f"study {settings.study!r} in {mask_url(settings.storage)}: {len(trials) - queued} trial(s) so far, "
            f"{settings.trials} new{f' ({queued} queued first)' if queued else ''}; objectives "
            f"{','.join(o.name for o in settings.objectives)}, sampler {describe_sampler(settings.sampler, study)}, "
            f"schedule {settings.schedule}, latency on {settings.latency_backend}")
        kept = cache_size(study)
        for line in (note, first_time, f"latency yardstick: {describe_yardstick(yardstick)}",
                     f"{kept} cost measurement(s) kept in the study: those architectures are not measured again"
                     if kept else ""):
            if line:
                say(line)
        halving = ParetoHalving(study, settings.objectives, settings.eta, load_schedule(settings.schedule).steps) \
            if settings.early_stop == "pareto" else None
        if halving is not None:
            say(f"early stopping: Pareto successive halving at steps {', '.join(map(str, settings.rungs()))} "
                f"(top 1/{settings.eta} of each rung go on)")
        searcher = make_searcher(study, settings.space, settings.objectives, settings.all_constraints,
                                 settings.runs_root.resolve(), settings.worker_config(),
                                 halving.stopped if halving is not None else None,
                                 meter_get(meter.scope.remote()),
                                 LatencyPlanner(settings.predict, yardstick["xlite_ms"]))
        progress = TrialProgress(settings.trials, "trial", describe_done(settings.objectives), describe_error,
                                 settings.max_failures)
        # Rung and infeasible results carry no PSNR; the searcher never tells them as objective values.
        os.environ["TUNE_DISABLE_STRICT_METRIC_CHECKING"] = "1"
        trainable = tune.with_resources(tune.with_parameters(run_trial, meter=meter),
                                        trial_resources(settings.cpus_per_trial, settings.gpus_per_trial))
        tuner = tune.Tuner(
            trainable,
            tune_config=tune.TuneConfig(search_alg=ConcurrencyLimiter(searcher, max_concurrent=concurrency),
                                        num_samples=settings.trials, reuse_actors=False, scheduler=halving),
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
            cut = searcher.abandon_unfinished(f"stopped by --max-failures {settings.max_failures}")
            cut_text = f"; {cut} running trial(s) cut, marked FAIL and queued again" if cut else ""
            raise TooManyFailures(f"stopped: {progress.failures} trials failed (--max-failures "
                                  f"{settings.max_failures}){cut_text}; see each trial's fail_reason (searchsr front "
                                  "shows what completed)")
        if progress.finished < settings.trials:  # Ctrl-C or SIGTERM: Tune stopped the running trials
            why = "terminated (SIGTERM)" if signals.terminated else "interrupted (Ctrl-C)"
            cut = searcher.abandon_unfinished(f"{why} before it finished")
            message = (f"{progress.finished} of {settings.trials} new trials finished and are saved; {cut} cut short "
                       "are marked FAIL and queued again for the next run")
            raise Terminated(message) if signals.terminated else KeyboardInterrupt(message)
        if halving is not None and halving.summary():
            say(halving.summary())
        if progress.failures == settings.trials:
            raise NothingCompleted(f"none of the {settings.trials} new trials completed: each FAILED (see the lines "
                                   "above, or each trial's fail_reason)")
    return study


def check_continuation(storage: Any, settings: SearchSettings, setup: dict[str, dict[str, str]]) -> None:
    """Before anything is written: a study continued with another schedule, data or space is refused,
    and so is a runs folder that holds another study's trials (a deleted storage, another --storage)."""
    from searchsr.files import read_json
    from searchsr.storage import study_names
    from searchsr.study import UID_ATTR, check_setup

    marker = settings.runs_root / RUNS_MARKER  # read first: a driver starting alongside writes it only after
    data = read_json(marker) if marker.is_file() else {}  # its study and uid exist
    owner = data.get("uid") if isinstance(data, dict) else None
    study = optuna.load_study(study_name=settings.study, storage=storage) \
        if settings.study in study_names(storage) else None
    if study is not None:
        check_setup(study, setup)
    if owner is not None:
        foreign = owner != (study.user_attrs.get(UID_ATTR) if study is not None else None)
    else:  # no marker: a new study must not inherit trial folders; an older study adopts its own
        foreign = study is None and any(settings.runs_root.glob("trial_*"))
    if foreign:
        raise UsageError(f"--runs-dir: {settings.runs_root} holds the trial folders of another study named "
                         f"{settings.study!r} (another storage, or a deleted one): use another --runs-dir or --study")


RUNS_MARKER = ".searchsr-study.json"  # in a study's runs folder: whose trials these are


def mark_runs_folder(runs_root: Path, uid: str, study: str) -> None:
    from searchsr.files import atomic_write

    runs_root.mkdir(parents=True, exist_ok=True)
    if not (runs_root / RUNS_MARKER).is_file():
        atomic_write(runs_root / RUNS_MARKER, json.dumps({"study": study, "uid": uid}) + "\n")


def describe_sampler(name: str, study: optuna.Study) -> str:
    chosen = type(study.sampler).__name__
    return f"auto ({chosen})" if name == "auto" else chosen


def say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)
