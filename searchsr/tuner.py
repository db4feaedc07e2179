"""Ray Tune runs the study's trials: one trial = train the proxy schedule, score, cost.

The Optuna side (storage, samplers, what gets recorded) is ``searchsr.study``; this
module owns the Ray side: the trainable, the single latency actor and the driver loop.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna

from searchsr.arch import build_model
from searchsr.config import PRESETS, ArchConfig
from searchsr.space import Constraint, Objective, SearchSpace
from searchsr.errors import TooManyFailures
from searchsr.study import FAILURE_FILE, enqueue_presets, make_searcher, mask_url, open_storage, prepare_study

LATENCY_SIZE = (128, 128)  # LR input for search-time latency; `searchsr profile` does any size


@dataclass(frozen=True)
class SearchSettings:
    space: SearchSpace
    objectives: tuple[Objective, ...]
    constraints: tuple[Constraint, ...]
    study: str
    storage: str
    sampler: str
    seed: int
    trials: int
    schedule: str
    train_dir: str | None
    val_dir: str | None
    runs_root: Path
    enqueue: tuple[str, ...] = ()
    cpus_per_trial: int = 1
    gpus_per_trial: float = 0
    concurrency: int = 0  # 0: as many as the CPUs allow
    address: str | None = None
    latency_runs: int = 10
    latency_threads: int = 1
    max_failures: int = 0  # 0: never stop because trials fail
    stale_after: int = 60  # seconds without heartbeat before a RUNNING trial counts as lost
    verbose: bool = False


class CostMeter:
    """The one place latency is measured: calls are serialized, XLITE is timed alongside.

    Runs as a Ray actor with ``max_concurrency=1`` so no two timings overlap, at normal
    CPU priority while trials train at nice 19 (the kernel hands the meter the CPU it
    needs); each measurement interleaves the candidate with XLITE to cancel what load
    remains (memory bandwidth), and ``latency_ms`` is that ratio times the XLITE median
    this actor measured at start (a fixed yardstick).
    """

    def __init__(self, threads: int, runs: int, lr_size: tuple[int, int] = LATENCY_SIZE) -> None:
        from searchsr.cost import measure_latency, prepare_for_timing

        self.threads, self.runs, self.lr_size = threads, runs, lr_size
        self.reference = prepare_for_timing(build_model(PRESETS["xlite"]))
        (stats,) = measure_latency([self.reference], lr_size, runs=3 * runs, threads=threads)
        self.reference_ms = stats.median_ms

    def measure(self, arch: dict[str, Any]) -> dict[str, Any]:
        from searchsr.cost import count_cost, latency_ratio, peak_memory_bytes, prepare_for_timing

        model = build_model(ArchConfig.from_dict(arch))
        cost = count_cost(model, (256, 256))
        fused = prepare_for_timing(model)
        ratio, own, _ = latency_ratio(fused, self.reference, lr_size=self.lr_size, runs=self.runs,
                                      threads=self.threads)
        latency_ms = ratio * self.reference_ms
        return {"flops": cost.flops, "macs": cost.macs, "params": cost.params, "activations": cost.activations,
                "memory": peak_memory_bytes(fused, self.lr_size), "latency_ratio": ratio,
                "latency_ms": latency_ms, "latency_iqr_ms": own.iqr_ms / own.median_ms * latency_ms,
                "xlite_ms": self.reference_ms}


def run_trial(config: dict[str, Any], meter: Any) -> dict[str, Any]:
    """Ray Tune trainable: train, score and cost one architecture; reports once."""
    import ray
    import torch
    from ray import tune

    from searchsr.data import load_images
    from searchsr.schedule import load_schedule
    from searchsr.train import train

    start = time.perf_counter()
    os.nice(19)  # training yields the CPU to the CostMeter's timings (it runs at normal priority)
    run_dir = Path(config["runs_root"]) / f"trial_{config['number']:05d}"
    try:
        cfg = ArchConfig.from_dict(config["arch"])
        torch.set_num_threads(max(1, int(config["cpus_per_trial"])))
        schedule = load_schedule(config["schedule"])
        train_set = load_images(config["train_dir"], "train", cfg.scale)
        val_set = load_images(config["val_dir"], "val", cfg.scale)
        result = train(cfg, schedule, train_set, val_set, run_dir, seed=config["seed"],
                       resume=(run_dir / "config.json").is_file(), progress=False)
        costs = ray.get(meter.measure.remote(cfg.to_dict()))
    except BaseException as err:
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / FAILURE_FILE).write_text(f"{type(err).__name__}: {err}\n")
        raise
    metrics = {"psnr": result.val.psnr_y, "ssim": result.val.ssim_y, "psnr_bicubic": result.bicubic.psnr_y,
               **costs, "train_seconds": result.seconds, "trial_seconds": time.perf_counter() - start,
               "steps": result.step, "arch_json": cfg.to_json(), "schedule": schedule.name, "device": result.device,
               "host": socket.gethostname(), "node_id": ray.get_runtime_context().get_node_id()}
    tune.report(metrics)
    return metrics


class _Progress:
    """One line per finished trial plus a progress bar (Ray's own reporter is silenced);
    counts failures so ``--max-failures`` can stop the experiment."""

    def __init__(self, total: int, objectives: tuple[Objective, ...], max_failures: int = 0) -> None:
        from ray.tune import Stopper
        from ray.tune import Callback
        from tqdm import tqdm

        bar = tqdm(total=total, unit="trial", dynamic_ncols=True, file=sys.stderr)
        keys = [o.key for o in objectives]

        class Callback_(Callback):
            def __getstate__(self) -> dict:  # Tune pickles callbacks; the bar stays with the driver
                return {}

            def on_trial_complete(self, iteration, trials, trial, **info) -> None:
                r = trial.last_result or {}
                values = ", ".join(f"{k}={r[k]:.4g}" for k in keys if k in r)
                arch = json.loads(r.get("arch_json", "{}"))
                bar.write(f"trial {trial.config.get('number')}: nf={arch.get('nf')} N={arch.get('n_blocks')} "
                          f"{values} ({r.get('trial_seconds', 0):.0f} s)")
                bar.update()

            def on_trial_error(self, iteration, trials, trial, **info) -> None:
                failures["count"] += 1
                bar.write(f"trial {trial.config.get('number')}: FAILED ({_reason(trial)})")
                bar.update()

        failures = {"count": 0}

        class FailureStopper(Stopper):
            def __call__(self, trial_id: str, result: dict) -> bool:
                return False

            def stop_all(self) -> bool:
                return bool(max_failures) and failures["count"] >= max_failures

        self.callback = Callback_()
        self.stopper = FailureStopper()
        self.failures = failures
        self.bar = bar


def _reason(trial: Any) -> str:
    path = Path(trial.config.get("runs_root", ".")) / f"trial_{trial.config.get('number', 0):05d}" / FAILURE_FILE
    return path.read_text().strip().splitlines()[0][:200] if path.is_file() else "worker died"


def start_ray(address: str | None, verbose: bool) -> bool:
    """Join ``address`` or start a private local Ray, quietly unless ``verbose``; True if we started it."""
    import ray

    if not verbose:
        os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")
        os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
        for name in ("ray", "ray.tune", "ray.train", "ray.data"):
            logging.getLogger(name).setLevel(logging.CRITICAL)  # failures get our own one-liners
    if ray.is_initialized():
        return False
    # "local": without it Ray would silently join any cluster `ray start` left on this machine.
    ray.init(address=address or "local", include_dashboard=False, log_to_driver=verbose,
             logging_level=logging.INFO if verbose else logging.ERROR, configure_logging=verbose)
    return True


def run_search(settings: SearchSettings) -> optuna.Study:
    """Run ``settings.trials`` new trials of the study (created or continued)."""
    import ray
    from ray import tune
    from ray.tune.search import ConcurrencyLimiter

    storage = open_storage(settings.storage, settings.stale_after)
    study = prepare_study(settings.study, storage, settings.objectives, settings.sampler, settings.seed,
                          settings.trials)
    enqueue_presets(study, settings.space, list(settings.enqueue))
    print(f"study {settings.study!r} in {mask_url(settings.storage)}: {len(study.trials)} trial(s) so far, "
          f"{settings.trials} new; objectives {','.join(o.name for o in settings.objectives)}, sampler "
          f"{settings.sampler}, schedule {settings.schedule}", file=sys.stderr)
    started_ray = start_ray(settings.address, settings.verbose)
    try:
        cpus = int(ray.cluster_resources().get("CPU", 1))
        concurrency = settings.concurrency or max(1, cpus // max(1, settings.cpus_per_trial))
        meter = ray.remote(num_cpus=0, max_concurrency=1)(CostMeter).remote(settings.latency_threads,
                                                                           settings.latency_runs)
        settings.runs_root.mkdir(parents=True, exist_ok=True)
        common = {"schedule": settings.schedule, "train_dir": settings.train_dir, "val_dir": settings.val_dir,
                  "runs_root": str(settings.runs_root.resolve()), "seed": settings.seed,
                  "cpus_per_trial": settings.cpus_per_trial}
        searcher = make_searcher(study, settings.space, settings.objectives, settings.constraints,
                                 settings.runs_root, common)
        progress = _Progress(settings.trials, settings.objectives, settings.max_failures)
        trainable = tune.with_resources(tune.with_parameters(run_trial, meter=meter),
                                        {"cpu": settings.cpus_per_trial, "gpu": settings.gpus_per_trial})
        tuner = tune.Tuner(
            trainable,
            tune_config=tune.TuneConfig(search_alg=ConcurrencyLimiter(searcher, max_concurrent=concurrency),
                                        num_samples=settings.trials, reuse_actors=False),
            run_config=tune.RunConfig(name=f"{settings.study}-{int(time.time())}-{os.getpid()}",
                                      storage_path=str((settings.runs_root / "ray").resolve()),
                                      verbose=2 if settings.verbose else 0, callbacks=[progress.callback],
                                      stop=progress.stopper,
                                      failure_config=tune.FailureConfig(
                                          max_failures=0, fail_fast=False)),
        )
        try:
            tuner.fit()
        finally:
            searcher.close()
            progress.bar.close()
        if settings.max_failures and progress.failures["count"] >= settings.max_failures:
            raise TooManyFailures(f"stopped: {progress.failures['count']} trials failed (--max-failures "
                                  f"{settings.max_failures}); see each trial's fail_reason (searchsr front shows "
                                  f"what completed)")
        if progress.bar.n < settings.trials:  # Ctrl-C: Tune stopped the running trials and returned
            cut = searcher.abandon_unfinished("interrupted (Ctrl-C) before it finished")
            raise KeyboardInterrupt(f"{progress.bar.n} of {settings.trials} new trials finished and are saved; "
                                    f"{cut} cut short are marked FAIL and queued again for the next run")
    finally:
        if started_ray:
            ray.shutdown()
    return study
