"""``searchsr report``: one self-contained HTML page about a study (plotly inlined, works offline).

Computation, drawing and the page are apart: this module's ``compute_report(study) -> ReportData``
gathers the numbers (trials, Pareto front, hypervolume history, parameter importances, the
paper's Table 2 family, the retrain table) and is tested alone; ``searchsr.figures.figures(data)``
turns them into plotly figures and ``searchsr.page.render(data)`` into the page, which
``searchsr.page.write_report`` writes atomically.

PSNR caveat, stated on the page too: searched trials are scored after the short *proxy*
schedule on the embedded photos, while the paper's Table 2 numbers are Set5 PSNR-Y after
the full DIV2K schedule; the family curve is therefore drawn on its own (right) axis as a
reference for shape and cost, not as a target the proxy values should reach.
"""

from __future__ import annotations

import csv
import warnings
from collections import Counter
from dataclasses import dataclass
from datetime import datetime, timezone
from importlib import resources
from pathlib import Path
from typing import Any

import optuna
import pandas as pd
from optuna.importance import PedAnovaImportanceEvaluator, get_param_importances
from optuna.trial import TrialState

from searchsr.halving import RUNGS_ATTR, STOPPED_ATTR
from searchsr.objectives import Objective
from searchsr.trial import INFEASIBLE  # the attribute naming the cost constraints a PRUNED trial broke
from searchsr.pareto import (COST_LR_SIZE, LATENCY_LR_SIZE, Front, InputSizes, compute_front, hypervolume_history,
                             study_objectives)

MIN_IMPORTANCE_TRIALS = 10  # below this PED-ANOVA's top-10% regime is padded to 2 trials: noise
STABLE_IMPORTANCE_TRIALS = 50  # its authors ask for >= 5 trials in the top 10%
RETRAIN_TABLE_ATTR = "retrain_table"
RETRAIN_RESULTS_ATTR = "retrain_results"  # every trial ever retrained, merged over retrains (searchsr.retrain)
RETRAIN_PREFIX = "retrain_"


@dataclass(frozen=True)
class TrialRow:
    """A complete trial as the report sees it."""

    number: int
    values: dict[str, float]  # objective name -> value
    metrics: dict[str, Any]  # user attributes except the arch
    params: dict[str, Any]  # what the sampler chose
    arch: dict[str, Any]
    preset: str | None  # "lite"/"xlite": the paper's networks, enqueued
    on_front: bool
    feasible: bool

    @property
    def retrain(self) -> dict[str, Any]:
        return {k: v for k, v in self.metrics.items() if k.startswith(RETRAIN_PREFIX)}


@dataclass(frozen=True)
class Curve:
    """A trial's validation PSNR at each rung it reached (early stopping), and at the end if it finished."""

    number: int
    points: tuple[tuple[int, float], ...]  # (step, PSNR-Y)
    outcome: str  # "complete" | "stopped" (PRUNED at a rung)
    on_front: bool


def compute_curves(trials: list[optuna.trial.FrozenTrial], on_front: set[int]) -> tuple[Curve, ...]:
    """The rung curves of every trial that recorded rungs (``searchsr.rungs``), finished or stopped."""
    curves = []
    for t in trials:
        rungs = t.user_attrs.get(RUNGS_ATTR)
        if not isinstance(rungs, dict) or t.state not in (TrialState.COMPLETE, TrialState.PRUNED):
            continue
        points = sorted((int(step), float(r["psnr"])) for step, r in rungs.items())
        if t.state == TrialState.COMPLETE and "psnr" in t.user_attrs and "steps" in t.user_attrs:
            points.append((int(t.user_attrs["steps"]), float(t.user_attrs["psnr"])))
        curves.append(Curve(t.number, tuple(points), "complete" if t.state == TrialState.COMPLETE else "stopped",
                            t.number in on_front))
    return tuple(curves)


def outcomes(trials: list[optuna.trial.FrozenTrial]) -> dict[str, int]:
    """Why trials did not complete: stopped at a rung, or infeasible by their costs (never trained)."""
    pruned = [t for t in trials if t.state == TrialState.PRUNED]
    return {"stopped at a rung": sum(STOPPED_ATTR in t.user_attrs for t in pruned),
            "infeasible, not trained": sum(INFEASIBLE in t.user_attrs for t in pruned)}


@dataclass(frozen=True)
class FamilyPoint:
    """One row of the paper's Table 2 (full schedule, DIV2K-trained, Set5 PSNR-Y/SSIM-Y)."""

    nf: int
    n_blocks: int
    flops_g: float
    params_k: float
    set5_psnr: float
    set5_ssim: float


@dataclass(frozen=True)
class Importance:
    objective: str
    values: dict[str, float]  # param -> importance, summing to 1; empty when skipped
    note: str  # why skipped, or how far to trust the values


@dataclass(frozen=True, eq=False)
class RetrainTable:
    path: str
    frame: pd.DataFrame
    earlier: int = 0  # rows after the CSV's: trials only an earlier retrain scored (from retrain_results)


@dataclass(frozen=True, eq=False)
class ReportData:
    study: str
    storage: str  # masked URL, for the page header
    objectives: tuple[Objective, ...]
    front: Front
    trials: tuple[TrialRow, ...]  # complete trials, by number
    states: dict[str, int]  # trial state -> count
    hypervolume: tuple[tuple[int, float], ...]  # (trial number, hypervolume after it)
    params: tuple[str, ...]  # searched parameters, in first-seen order
    importances: tuple[Importance, ...]
    family: tuple[FamilyPoint, ...]
    retrain: RetrainTable | None
    created: str
    sizes: InputSizes = InputSizes(LATENCY_LR_SIZE, COST_LR_SIZE)  # LR inputs of latency/memory and FLOPs
    yardstick: str = "none stored"  # the study's XLITE latency every latency_ms is a multiple of
    curves: tuple[Curve, ...] = ()  # rung learning curves (studies run with --early-stop)
    outcomes: dict[str, int] | None = None  # PRUNED trials by why (see ``outcomes``)


def load_family() -> tuple[FamilyPoint, ...]:
    """The paper's Table 2, shipped as package data (``searchsr/paper/table2_family.csv``)."""
    text = resources.files("searchsr").joinpath("paper/table2_family.csv").read_text()
    rows = csv.DictReader(line for line in text.splitlines() if line and not line.startswith("#"))
    return tuple(FamilyPoint(int(r["nf"]), int(r["N"]), float(r["flops_g"]), float(r["params_k"]),
                             float(r["set5_psnr"]), float(r["set5_ssim"])) for r in rows)


def compute_importances(study: optuna.Study, objectives: tuple[Objective, ...]) -> tuple[Importance, ...]:
    """PED-ANOVA importances per objective (the evaluator optuna-dashboard uses; no scikit-learn)."""
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if len(complete) < MIN_IMPORTANCE_TRIALS:
        note = (f"skipped: {len(complete)} complete trial(s), importances need at least "
                f"{MIN_IMPORTANCE_TRIALS}")
        return tuple(Importance(o.name, {}, note) for o in objectives)
    caveat = (f"rough: {len(complete)} complete trials (PED-ANOVA is stable from about "
              f"{STABLE_IMPORTANCE_TRIALS})" if len(complete) < STABLE_IMPORTANCE_TRIALS else "")
    result = []
    for i, objective in enumerate(objectives):
        sign = -1.0 if objective.direction == "maximize" else 1.0  # PED-ANOVA wants lower = better
        try:
            with warnings.catch_warnings():  # it warns whenever a target is given; ours is already negated
                warnings.filterwarnings("ignore", message="PedAnovaImportanceEvaluator computes")
                values = get_param_importances(study, evaluator=PedAnovaImportanceEvaluator(),
                                               target=lambda t, i=i, sign=sign: sign * t.values[i])
            result.append(Importance(objective.name, {k: float(v) for k, v in values.items()}, caveat))
        except (ValueError, RuntimeError) as err:
            result.append(Importance(objective.name, {}, f"skipped: {str(err).splitlines()[0]}"))
    return tuple(result)


def load_retrain_table(study: optuna.Study) -> RetrainTable | None:
    """The retrain comparison CSV named by the study attribute ``retrain_table``, if it is there."""
    path = study.user_attrs.get(RETRAIN_TABLE_ATTR)
    if not isinstance(path, str) or not Path(path).expanduser().is_file():
        return None
    try:
        frame = pd.read_csv(Path(path).expanduser())
    except (OSError, ValueError, pd.errors.ParserError) as err:
        return RetrainTable(path, pd.DataFrame({"error": [f"unreadable: {str(err).splitlines()[0]}"]}))
    earlier = earlier_retrained(study.user_attrs.get(RETRAIN_RESULTS_ATTR), frame)
    if earlier.empty:
        return RetrainTable(path, frame)
    return RetrainTable(path, pd.concat([frame, earlier], ignore_index=True), len(earlier))


def earlier_retrained(results: Any, latest: pd.DataFrame) -> pd.DataFrame:
    """The recorded results (``retrain_results``: trial number -> row) of trials absent from the latest
    retrain's table, by trial number; empty when there are none or the attribute is not a mapping."""
    if not isinstance(results, dict) or "trial" not in latest.columns:
        return pd.DataFrame()
    shown = set(pd.to_numeric(latest["trial"], errors="coerce").dropna().astype(int))
    rows = {int(key): row for key, row in results.items() if str(key).isdigit() and isinstance(row, dict)}
    return pd.DataFrame([row for number, row in sorted(rows.items()) if number not in shown])


def compute_report(study: optuna.Study, storage: str = "") -> ReportData:
    objectives = study_objectives(study)
    front = compute_front(study)
    on_front = {p.number for p in front.points}
    all_trials = study.get_trials(deepcopy=False)
    rows = tuple(
        TrialRow(t.number, {o.name: float(v) for o, v in zip(objectives, t.values)},
                 {k: v for k, v in t.user_attrs.items() if k != "arch"}, dict(t.params),
                 dict(t.user_attrs.get("arch") or {}), t.user_attrs.get("preset"), t.number in on_front,
                 all(c <= 0 for c in t.constraints.values()))
        for t in all_trials if t.state == TrialState.COMPLETE)
    states = dict(Counter(t.state.name.lower() for t in all_trials))
    params = tuple(dict.fromkeys(k for r in rows for k in r.params))
    return ReportData(study.study_name, storage, objectives, front, rows, states,
                      tuple(hypervolume_history(study)), params, compute_importances(study, objectives),
                      load_family(), load_retrain_table(study),
                      datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
                      InputSizes.of(r.metrics for r in rows), yardstick_text(study),
                      compute_curves(all_trials, on_front), outcomes(all_trials))


def yardstick_text(study: optuna.Study) -> str:
    from searchsr.study import YARDSTICK_ATTR, describe_yardstick

    yardstick = study.user_attrs.get(YARDSTICK_ATTR)
    return describe_yardstick(yardstick) if isinstance(yardstick, dict) else "none stored"
