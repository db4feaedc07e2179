"""Many trials per GPU: what a trial asks Ray for, and how many run at once.

* ``check_gpus_per_trial``: ``--gpus-per-trial`` is a fraction of one GPU (0 < g <= 1: 0.25 packs four
  trials onto a GPU) or a whole number of GPUs, as Ray accepts; anything else is a one-line UsageError.
* ``plan_concurrency``: trials at once for ``run``, limited by the cluster's CPUs and, with GPUs per
  trial, by its GPUs (1 GPU at 0.25 per trial: 4), with a note saying what limits it.
* ``gpu_share``: ``retrain``'s own estimate of a network's share of a GPU when the user gives none: its
  training step's memory and FLOPs at the schedule's batch and patch size, relative to LITE's, rounded
  up to 1, 1/2 or 1/4 (LITE and larger networks take a whole GPU, XLITE-size networks a quarter).
* ``trial_resources``: one trial's Ray Tune resource request (a ``PlacementGroupFactory``).

Torch inside a trial needs nothing from here: Ray sets ``CUDA_VISIBLE_DEVICES`` to the GPU it assigned,
so ``cuda`` (``searchsr.train.resolve_device``) is that GPU; trials sharing it share its memory.
"""

from __future__ import annotations

import math
from typing import Any

from searchsr.config import PRESETS, AnyArch
from searchsr.errors import UsageError


SMALLEST_SHARE = 0.25  # at most 4 trials per GPU: each carries its own CUDA context and data loading
EPS = 1e-9  # 1 / 0.25 and friends are exact, 0.3 * 3 is not


def check_gpus_per_trial(value: float) -> None:
    """0 (no GPU), a fraction 0 < g <= 1, or a whole number of GPUs: what Ray can schedule."""
    if not math.isfinite(value):
        raise UsageError(f"--gpus-per-trial must be a number, got {value}")
    if value < 0:
        raise UsageError(f"--gpus-per-trial must be >= 0, got {value:g}")
    if value > 1 and value != int(value):
        raise UsageError(f"--gpus-per-trial must be a fraction of one GPU (0 < g <= 1, e.g. 0.25: four trials "
                         f"share a GPU) or a whole number of GPUs, got {value:g}")


def gpu_fits(gpus: float, gpus_per_trial: float) -> int:
    """Trials of ``gpus_per_trial`` each that the cluster's ``gpus`` hold at once."""
    return int(gpus / gpus_per_trial + EPS) if gpus_per_trial > 0 else 0


def plan_concurrency(requested: int, cpus: int, cpus_per_trial: int, gpus: float = 0,
                     gpus_per_trial: float = 0) -> tuple[int, str | None]:
    """Trials to run at once (0 requested: as many as the cluster holds) and a note: with GPUs per trial,
    how the GPUs pack them; and whenever more were asked for than the cluster runs at once (Ray would
    queue them silently)."""
    cpu_fits = max(1, cpus // cpus_per_trial)
    limits = f"the cluster's {cpus} CPU(s) at {cpus_per_trial} per trial"
    fits = cpu_fits
    if gpus_per_trial > 0:
        fits = max(1, min(cpu_fits, gpu_fits(gpus, gpus_per_trial)))
        limits += f" and {gpus:g} GPU(s) at {gpus_per_trial:g} per trial"
    if requested > fits:
        return requested, f"note: --concurrency {requested}, but {limits} run at most {fits} trial(s) at once " \
                          "(Ray queues the rest)"
    count = requested or fits
    if gpus_per_trial > 0:
        return count, f"{count} trial(s) at once: {limits} hold {fits}"
    return count, None


def step_load(cfg: AnyArch, batch: int, patch: int) -> tuple[float, float]:
    """(bytes, FLOPs) of one training step at ``batch`` LR patches of ``patch`` x ``patch``: the memory
    counted on the meta device (``searchsr.memory``), the forward FLOPs x 3 (forward and backward)."""
    from searchsr.cost import arch_cost
    from searchsr.memory import training_memory

    return float(training_memory(cfg, batch, patch).total), 3.0 * batch * arch_cost(cfg, (patch, patch)).flops


def share_of(load: tuple[float, float], lite_load: tuple[float, float]) -> float:
    """A GPU share from a step's (bytes, FLOPs) relative to LITE's: the larger ratio, rounded up to
    1/2^k and at least ``SMALLEST_SHARE``; 1 for LITE and anything larger."""
    ratio = max(own / lite for own, lite in zip(load, lite_load))
    share = 1.0
    while share / 2 >= max(ratio, SMALLEST_SHARE) - EPS:
        share /= 2
    return share


def gpu_share(cfg: AnyArch, batch: int, patch: int, lite_load: tuple[float, float] | None = None) -> float:
    """``cfg``'s share of one GPU for training at ``batch`` x ``patch``^2 LR patches: LITE takes a whole
    GPU, XLITE a quarter (``share_of``). ``lite_load``: LITE's ``step_load`` at the same batch and
    patch, to count it once for many networks."""
    return share_of(step_load(cfg, batch, patch), lite_load or step_load(PRESETS["lite"], batch, patch))


def trial_resources(cpus: int, gpus: float) -> Any:
    """One trial's Ray Tune resource request: ``cpus`` CPUs and ``gpus`` GPUs (a fraction shares one)."""
    from ray.tune import PlacementGroupFactory

    return PlacementGroupFactory([{"CPU": cpus, **({"GPU": gpus} if gpus else {})}])


def gpu_shares(archs: dict[str, AnyArch], requested: float, gpus: float, batch: int,
               patch: int) -> dict[str, float]:
    """GPUs per network for ``retrain``: ``requested`` (``--gpus-per-trial``) for all where given, none
    on a cluster without GPUs, else each network's own ``gpu_share``."""
    if requested or not gpus:
        return {name: float(requested) for name in archs}
    lite = step_load(PRESETS["lite"], batch, patch)
    return {name: gpu_share(cfg, batch, patch, lite) for name, cfg in archs.items()}


def describe_shares(shares: dict[str, float], requested: float, gpus: float) -> str:
    """The GPU part of ``retrain``'s plan, one line: each network's share and how many fit at once."""
    how = "--gpus-per-trial" if requested else "estimated: training memory and FLOPs per step relative to LITE"
    each = ", ".join(f"{name} {share:g}" for name, share in shares.items())
    return (f"GPU share per network ({how}): {each}; {gpus:g} GPU(s) hold "
            f"{gpu_fits(gpus, min(shares.values()))} of the smallest at once")
