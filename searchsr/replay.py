"""``searchsr bench search``: search methods replayed against a recorded table, at equal compute.

A table (``searchsr.record``) holds, for every architecture of a finite space, its PSNR at each rung
and at the end of the schedule, the training seconds spent up to each, and its exact costs. A
replay runs one method (an Optuna sampler, with or without Pareto successive halving) as a search
would, one trial at a time, but looks each trained result up instead of training:

* a trial costs the recorded training seconds up to where it stopped (the end, or the rung early
  stopping stopped it at); an architecture that breaks a cost constraint costs nothing (costs first);
  an architecture drawn again costs what it trains beyond its earlier trial: nothing if that one
  finished (its result is reused), the steps past its rung if it was stopped and now goes on (as
  ``run`` does: ``searchsr.trial``);
* the run goes on until its spent seconds reach the budget (a fraction of the table's full
  compute: every architecture trained once) and, to measure the compute needed to reach 0.9, on
  up to ``cap`` times the full compute;
* the found front holds completed trials only, scored with their final recorded values.

Quality is the hypervolume of the found front normalised by that of the table's true front (1.0:
the whole true front found), objectives scaled to [0, 1] over the table, reference point 1.1.
Only the first seed's rows are replayed; a table's second-seed rows state its noise (``noise``).
"""

from __future__ import annotations

import math
import statistics
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import optuna

from searchsr import internals
from searchsr.config import ArchConfig
from searchsr.errors import UsageError
from searchsr.halving import DEFAULT_ETA, goes_on, nondominated_fronts
from searchsr.objectives import Constraint, Objective
from searchsr.record import read_table, table_arch
from searchsr.space import SearchSpace, enumerate_space, sample_values
from searchsr.study import auto_sampler, make_sampler

REFERENCE = 1.1  # the hypervolume's reference point, per objective, on the [0, 1] scale
HV_GOAL = 0.9
MAX_DRAWS = 6  # a replay stops after this many draws per table network (repeats and infeasible ones cost nothing)


@dataclass(frozen=True)
class Entry:
    """One architecture of the table: its scores by step (the last is the schedule's end) and costs."""

    curve: dict[int, dict[str, float]]  # step -> psnr, ssim, train_seconds
    costs: dict[str, float]

    def seconds(self, step: int) -> float:
        """Training seconds spent up to ``step`` (0 before any)."""
        return self.curve[step]["train_seconds"] if step else 0.0

    @property
    def final(self) -> dict[str, float]:
        return {**self.curve[max(self.curve)], **self.costs}


@dataclass(frozen=True)
class Table:
    entries: dict[str, Entry]  # ArchConfig JSON -> entry
    noise: dict[str, float]  # PSNR differences between the two seeds of the networks recorded twice

    @property
    def full_compute(self) -> float:
        """Training seconds to train every architecture once, to the end."""
        return sum(e.final["train_seconds"] for e in self.entries.values())

    @property
    def rungs(self) -> tuple[int, ...]:
        return tuple(sorted(set.intersection(*(set(e.curve) for e in self.entries.values())) - {self.last}))

    @property
    def last(self) -> int:
        return max(max(e.curve) for e in self.entries.values())


def load_table(path: Path) -> Table:
    rows = read_table(path)
    if not rows:
        raise UsageError(f"--table {path}: no such table, or it is empty")
    by_seed: dict[int, dict[str, dict[int, dict[str, Any]]]] = {}
    costs: dict[str, dict[str, float]] = {}
    for row in rows:
        key = ArchConfig.from_dict(table_arch(row)).to_json()
        by_seed.setdefault(int(row["seed"]), {}).setdefault(key, {})[int(row["step"])] = {
            k: float(row[k]) for k in ("psnr", "ssim", "train_seconds")}
        costs.setdefault(key, {k: float(row[k]) for k in ("latency_ms", "flops", "params", "activations", "memory")})
    first, *others = sorted(by_seed)
    entries = {k: Entry(curve, costs[k]) for k, curve in by_seed[first].items()}
    steps = {max(e.curve) for e in entries.values()}
    if len(steps) != 1:
        raise UsageError(f"--table {path}: unfinished networks (last steps {sorted(steps)}): finish recording it "
                         "(rerun bench record)")
    diffs = [abs(curve[max(curve)]["psnr"] - entries[k].final["psnr"])
             for seed in others for k, curve in by_seed[seed].items() if k in entries and max(curve) in steps]
    noise = {"pairs": len(diffs), "psnr_abs_diff_mean": statistics.fmean(diffs) if diffs else math.nan,
             "psnr_abs_diff_max": max(diffs, default=math.nan)}
    return Table(entries, noise)


def _scaled(values: dict[str, float], objectives: Sequence[Objective], bounds: dict[str, tuple[float, float]]
            ) -> tuple[float, ...]:
    """Objective values as losses on [0, 1] over the table (0: the table's best)."""
    out = []
    for o in objectives:
        low, high = bounds[o.key]
        x = (values[o.key] - low) / (high - low) if high > low else 0.0
        out.append(1.0 - x if o.direction == "maximize" else x)
    return tuple(out)


def hypervolume(points: list[tuple[float, ...]], n_objectives: int) -> float:
    if not points:
        return 0.0
    front = [points[i] for i in nondominated_fronts(points)[0]]
    return float(internals.compute_hypervolume(np.array(front), np.full(n_objectives, REFERENCE)))


@dataclass(frozen=True)
class ReplayRun:
    hv: float  # normalised hypervolume at the budget
    compute_to_goal: float | None  # fraction of the table's full compute spent when HV reached HV_GOAL
    trials: int  # trials within the budget (draws of an architecture seen before included)
    networks: int  # distinct architectures trained (some steps at least) within the budget
    pruned: int  # of those, stopped at a rung
    infeasible: int


def replay(table: Table, space: SearchSpace, method: str, seed: int, budget: float, objectives: Sequence[Objective],
           constraints: Sequence[Constraint] = (), early_stop: bool = False, eta: int = DEFAULT_ETA,
           cap: float = 3.0, sampler: optuna.samplers.BaseSampler | None = None, first_rung: int = 0) -> ReplayRun:
    """One search of ``method`` on ``table`` (``budget``, ``cap``: fractions of its full compute);
    ``sampler``, when given, replaces the one ``method`` names (tests drive a replay with a fixed order);
    early stopping uses the table's rungs from ``first_rung`` on."""
    ladder = tuple(step for step in table.rungs if step >= first_rung)
    finals = {k: e.final for k, e in table.entries.items()}
    bounds = {o.key: (min(f[o.key] for f in finals.values()), max(f[o.key] for f in finals.values()))
              for o in objectives}
    true_hv = hypervolume([_scaled(f, objectives, bounds) for f in finals.values()
                           if all(c.value(f) <= 0 for c in constraints)], len(objectives))
    name = auto_sampler(space, len(table.entries), len(objectives), early_stop) if method == "auto" else method
    study = optuna.create_study(directions=[o.direction for o in objectives],
                                sampler=sampler or make_sampler(name, seed, len(table.entries)))
    rungs: dict[int, dict[int, tuple[float, ...]]] = {step: {} for step in ladder}
    first: dict[str, int] = {}  # architecture -> its first trial: one rung member however often drawn
    reached: dict[str, int] = {}  # architecture -> the step its training reached (a rung, or the end)
    trained: set[str] = set()
    found: list[tuple[float, ...]] = []
    spent, full = 0.0, table.full_compute
    hv_at_budget, to_goal, counted, pruned, infeasible = 0.0, None, 0, 0, 0
    for number in range(MAX_DRAWS * len(table.entries)):  # draws of the known (no cost) are bounded too
        if spent >= cap * full or spent >= budget * full and to_goal is not None:
            break
        trial = study.ask()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            key = ArchConfig.from_dict(sample_values(space, trial)).to_json()
        entry = table.entries[key]
        final = entry.final
        feasible = all(c.value(final) <= 0 for c in constraints if c.metric in entry.costs)
        start = reached.get(key, 0)  # drawn again: continues from where it stopped, or reuses its result
        stop_at = None
        if feasible and early_stop and start < table.last:
            member = first.setdefault(key, number)
            for step in (s for s in ladder if s >= start):  # its stop rung is judged again
                rungs[step].setdefault(member, _scaled({**entry.curve[step], **entry.costs}, objectives, bounds))
                if not goes_on(rungs[step], member, eta):
                    stop_at = step
                    break
        end = stop_at or table.last
        cost = entry.seconds(end) - entry.seconds(start) if feasible else 0.0
        if feasible:
            reached[key] = end
        spent += cost
        within = spent <= budget * full
        counted += within
        if within and cost > 0:
            trained.add(key)
        for c in constraints:
            if c.metric in final:
                trial.set_constraint(str(c), c.value(final))
        if not feasible or stop_at is not None:
            pruned += within and stop_at is not None
            infeasible += within and not feasible
            study.tell(trial, state=optuna.trial.TrialState.PRUNED)
            continue
        study.tell(trial, [final[o.key] for o in objectives])
        if all(c.value(final) <= 0 for c in constraints):
            found.append(_scaled(final, objectives, bounds))
        hv = hypervolume(found, len(objectives)) / true_hv
        if within:
            hv_at_budget = hv
        if to_goal is None and hv >= HV_GOAL - 1e-12:
            to_goal = spent / full
    return ReplayRun(hv_at_budget, to_goal, counted, len(trained), pruned, infeasible)


def summarize(runs: list[ReplayRun], budget: float, seeds: int) -> dict[str, Any]:
    """Mean and spread over seeds; ``compute_to_0.9`` is the median over seeds, null unless every seed got there."""
    hvs = [r.hv for r in runs]
    reached = [r.compute_to_goal for r in runs if r.compute_to_goal is not None]
    return {"hv_mean": statistics.fmean(hvs), "hv_std": statistics.stdev(hvs) if len(hvs) > 1 else 0.0,
            "compute_to_0.9": statistics.median(reached) if len(reached) == len(runs) else None,
            "reached_0.9": len(reached), "trials_mean": statistics.fmean(r.trials for r in runs),
            "networks_mean": statistics.fmean(r.networks for r in runs),
            "pruned_mean": statistics.fmean(r.pruned for r in runs), "budget": budget, "seeds": seeds}


def check_space(table: Table, space: SearchSpace) -> None:
    """Every architecture the space can draw must be in the table (a replay looks each one up)."""
    missing = [cfg for cfg in enumerate_space(space) if cfg.to_json() not in table.entries]
    if missing:
        raise UsageError(f"--space {space.source}: {len(missing)} of its networks are not in the table "
                         f"(e.g. {missing[0].to_json()}): give the space the table was recorded on")
