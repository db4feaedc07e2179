"""The study's Pareto front as small typed objects (drawn elsewhere: cli tables, reports).

The front is Optuna's (``study.best_trials``: complete, feasible under the recorded
constraints, non-dominated). Hypervolume uses Optuna's implementation on the objectives
turned into losses (maximised ones negated) against this reference point: for each
objective the worst value among all complete feasible trials, moved 10% of the
observed span (at least 1e-9 relative) further out, so every front point contributes
and the figure can be recomputed from the study alone.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

import numpy as np
import optuna
import pandas as pd
from optuna.trial import FrozenTrial, TrialState

from searchsr.errors import UsageError
from searchsr.internals import compute_hypervolume
from searchsr.objectives import OBJECTIVES, Objective


@dataclass(frozen=True)
class FrontPoint:
    number: int
    values: dict[str, float]  # objective name -> value
    arch: dict
    preset: str | None  # "lite"/"xlite" for the paper's enqueued networks
    metrics: dict = field(default_factory=dict)  # every recorded user attribute


@dataclass(frozen=True)
class Front:
    objectives: tuple[Objective, ...]
    points: tuple[FrontPoint, ...]
    baselines: tuple[FrontPoint, ...]  # the paper's networks, on the front or not
    hypervolume: float
    reference_point: dict[str, float]
    complete_trials: int


# The LR input sizes a search costs at (``searchsr.meter``); trials record theirs as ``latency_lr_size`` and
# ``cost_lr_size``, and those recorded before they did were measured at these.
LATENCY_LR_SIZE = "128x128"  # latency and peak memory
COST_LR_SIZE = "256x256"  # FLOPs, MACs and activations (the paper's convention); params do not depend on it


@dataclass(frozen=True)
class InputSizes:
    """The LR input sizes behind a set of trials' figures, as users read them (``128x128``)."""

    latency: str  # latency and memory
    cost: str  # FLOPs and activations

    @classmethod
    def of(cls, metrics: Iterable[Mapping]) -> InputSizes:
        """The sizes recorded by these trials' metrics (older trials: the defaults); several joined by '/'."""
        rows = list(metrics)
        return cls(_joined(rows, "latency_lr_size", LATENCY_LR_SIZE), _joined(rows, "cost_lr_size", COST_LR_SIZE))

    def describe(self) -> str:
        return (f"latency and memory at {self.latency} LR, FLOPs and activations at {self.cost} LR "
                "(params do not depend on the input size)")


def _joined(rows: list[Mapping], key: str, default: str) -> str:
    return "/".join(dict.fromkeys(str(m.get(key, default)) for m in rows)) or default


def study_objectives(study: optuna.Study) -> tuple[Objective, ...]:
    names = study.metric_names or [f"objective{i}" for i in range(len(study.directions))]
    unknown = [n for n in names if n not in OBJECTIVES]
    if unknown:
        raise UsageError(f"study {study.study_name!r} has objectives searchsr does not know: {unknown}")
    return tuple(Objective(n, *OBJECTIVES[n]) for n in names)


def _point(trial: FrozenTrial, objectives: tuple[Objective, ...]) -> FrontPoint:
    return FrontPoint(trial.number, {o.name: v for o, v in zip(objectives, trial.values)},
                      trial.user_attrs.get("arch", {}), trial.user_attrs.get("preset"), dict(trial.user_attrs))


def _feasible(trial: FrozenTrial) -> bool:
    return all(c <= 0 for c in trial.constraints.values())


def _losses(trials: list[FrozenTrial], objectives: tuple[Objective, ...]) -> np.ndarray:
    sign = np.array([-1.0 if o.direction == "maximize" else 1.0 for o in objectives])
    return np.array([t.values for t in trials], dtype=float).reshape(len(trials), len(objectives)) * sign


def reference_point(trials: list[FrozenTrial], objectives: tuple[Objective, ...]) -> np.ndarray:
    """Loss-space reference: the worst feasible value per objective, 10% of the span beyond."""
    losses = _losses(trials, objectives)
    worst, best = losses.max(axis=0), losses.min(axis=0)
    margin = np.maximum(0.1 * (worst - best), 1e-9 * np.maximum(np.abs(worst), 1.0))
    return worst + margin


def compute_front(study: optuna.Study) -> Front:
    objectives = study_objectives(study)
    complete = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)) if _feasible(t)]
    # an architecture drawn again reuses its earlier trial's result (``same_as``): listed once
    best = sorted((t for t in study.best_trials if "same_as" not in t.user_attrs), key=lambda t: t.number) \
        if complete else []
    if complete:
        ref = reference_point(complete, objectives)
        hv = compute_hypervolume(_losses(best, objectives), ref)
        sign = np.array([-1.0 if o.direction == "maximize" else 1.0 for o in objectives])
        ref_values = {o.name: float(v) for o, v in zip(objectives, ref * sign)}
    else:
        hv, ref_values = 0.0, {}
    baselines = tuple(_point(t, objectives) for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
                      if t.user_attrs.get("preset"))
    return Front(objectives, tuple(_point(t, objectives) for t in best), baselines, float(hv), ref_values,
                 len(complete))


def hypervolume_history(study: optuna.Study) -> list[tuple[int, float]]:
    """Hypervolume of the front after each complete feasible trial, against the final reference."""
    objectives = study_objectives(study)
    complete = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)) if _feasible(t)]
    if not complete:
        return []
    ref = reference_point(complete, objectives)
    history = []
    for i in range(1, len(complete) + 1):
        history.append((complete[i - 1].number, float(compute_hypervolume(_losses(complete[:i], objectives), ref))))
    return history


def front_rows(front: Front) -> list[FrontPoint]:
    """What a front listing shows, in every format: the front's trials, then the paper's networks
    that are not on it (marked ``front: false``)."""
    on_front = {p.number for p in front.points}
    return list(front.points) + [b for b in front.baselines if b.number not in on_front]


def front_sizes(front: Front) -> InputSizes:
    """The LR input sizes behind the figures of ``front_rows``."""
    return InputSizes.of(p.metrics for p in front_rows(front))


def front_table(front: Front) -> pd.DataFrame:
    """``front_rows`` with the columns users compare (the printed table and ``--csv``); the last two say
    the LR input size of ``latency_ms`` (and memory) and of ``flops_g``."""
    on_front = {p.number for p in front.points}
    rows = []
    for p in front_rows(front):
        m, sizes = p.metrics, InputSizes.of([p.metrics])
        rows.append({"trial": p.number, "front": p.number in on_front, "baseline": p.preset or "",
                     "nf": p.arch.get("nf"), "N": p.arch.get("n_blocks"), "expansion": p.arch.get("expansion"),
                     "se": p.arch.get("se"), "bn": p.arch.get("bn"), "act": p.arch.get("act"),
                     "psnr_y": m.get("psnr"), "ssim_y": m.get("ssim"), "latency_ms": m.get("latency_ms"),
                     "latency_ratio": m.get("latency_ratio"), "flops_g": _scaled(m.get("flops"), 1e9),
                     "params_k": _scaled(m.get("params"), 1e3), "latency_lr_size": sizes.latency,
                     "cost_lr_size": sizes.cost})
        if "psnr_int8" in m or "latency_int8_ms" in m:  # --int8: the quantized network's figures beside
            rows[-1].update(psnr_int8=m.get("psnr_int8"), latency_int8_ms=m.get("latency_int8_ms"))
    table = pd.DataFrame(rows)
    int8 = [c for c in ("psnr_int8", "latency_int8_ms") if c in table]
    return table[[*table.columns[:11], *int8, *[c for c in table.columns[11:] if c not in int8]]] if int8 else table


def _scaled(value: float | None, unit: float) -> float | None:
    return None if value is None else value / unit


def front_records(front: Front) -> list[dict]:
    """``front --json``: ``front_rows`` as objects: number, objective values, arch, whether on the front,
    every recorded metric, and the LR input sizes of latency/memory and FLOPs/activations."""
    on_front = {p.number for p in front.points}
    return [{"number": p.number, **p.values, "arch": p.arch, "baseline": p.preset, "front": p.number in on_front,
             **{k: v for k, v in p.metrics.items() if k not in ("arch", "preset") and k not in p.values},
             "latency_lr_size": InputSizes.of([p.metrics]).latency, "cost_lr_size": InputSizes.of([p.metrics]).cost}
            for p in front_rows(front)]
