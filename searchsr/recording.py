"""The Optuna-Ray bridge: Ray Tune asks the study for trials and the driver records their results.

``make_searcher`` wraps Ray's ``OptunaSearch`` on our study. Design choices, each against a known
pitfall:

* Single writer. Workers never touch the storage (SQLite allows one writer; PostgreSQL
  credentials stay on the driver). The searcher writes every metric, the arch, the run folder
  and the host as user attributes, and the constraints, on the driver *before* ``tell``, because
  Ray's OptunaSearch only passes the objective values and a finished Optuna trial refuses writes.
* Heartbeats. A thread records an Optuna heartbeat for each trial this driver owns, so another
  driver (or a rerun) can tell a live trial from one whose driver died (``searchsr.study``).
* Lost trials of other drivers are looked for between trials (``STALE_CHECK_S``), not only at start;
  each trial records its ``driver`` (host, pid, start time) so a dead local driver is seen at once.
* Ctrl-C. ``abandon_unfinished`` fails and re-queues the trials cut short at once, rather than
  leaving them RUNNING until their heartbeat goes stale.
* Three endings, told by the result's ``kind`` (``searchsr.trial``): a ``final`` result is COMPLETE;
  an ``infeasible`` one (a constraint broken by the costs, never trained) and a trial the early-stopping
  scheduler stopped at a rung (``searchsr.rungs``) are PRUNED, with their costs and constraints, so
  they stay off the front (COMPLETE trials only) and TPE still counts them as infeasible or worse.
  Ray's ``OptunaSearch`` would tell a stopped trial COMPLETE with its partial values. A trial cut
  short with only rung results (Ctrl-C) is left to ``abandon_unfinished``.
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Any

import optuna

from searchsr import internals
from searchsr.costcache import cached_costs, cost_key, remember_costs
from searchsr.halving import STOPPED_ATTR
from searchsr.objectives import Constraint, Objective, set_constraints
from searchsr.runs import failure_reason, trial_dir
from searchsr.space import SearchSpace, sample_values
from searchsr.study import driver_identity, fail_stale_trials, requeue, same_architecture
from searchsr.trial import FINAL, INFEASIBLE, SAME

METRIC_KEYS = ("psnr", "ssim", "psnr_bicubic", "latency_ms", "latency_iqr_ms", "latency_ratio", "xlite_ms",
               "xlite_ms_measured", "latency_ratio_ci_low", "latency_ratio_ci_high", "latency_ratio_converged",
               "latency_rounds", "latency_ratio_bound", "latency_predicted_ms", "latency_predictor_share",
               "latency_predictor_trials", "psnr_int8", "ssim_int8", "latency_int8_ms", "latency_int8_ratio",
               "flops", "macs", "params", "activations", "memory", "train_seconds", "trial_seconds", "steps")
INFO_KEYS = ("schedule", "host", "node_id", "device", "latency_host", "latency_threads", "latency_lr_size",
             "latency_backend", "latency_runtime", "latency_runtime_version", "latency_precision",
             "cost_lr_size", "latency_source", "latency_cached", INFEASIBLE)
STALE_CHECK_S = 10  # how often a driver looks for trials other drivers lost, between its own trials


def record_trial(ot_trial: optuna.Trial, result: dict | None, error: bool, constraints: tuple[Constraint, ...],
                 runs_root: Path) -> None:
    """Every metric (objective or not), the arch, run folder and host, as user attributes."""
    run_dir = trial_dir(runs_root, ot_trial.number)
    ot_trial.set_user_attr("run_dir", str(run_dir))
    if error or not result:
        ot_trial.set_user_attr("fail_reason", failure_reason(run_dir)[:2000])
        return
    for key in (*METRIC_KEYS, *INFO_KEYS):
        if key in result:
            ot_trial.set_user_attr(key, result[key])
    if "arch_json" in result:  # Tune flattens nested dicts in results, so the arch travels as JSON
        ot_trial.set_user_attr("arch", json.loads(result["arch_json"]))
    set_constraints(ot_trial, [c for c in constraints if c.metric in result], result)  # psnr: once trained


def reuse(study: optuna.Study, ot_trial: optuna.Trial, number: int) -> None:
    """A trial of an architecture the study already finished: its result, told again (nothing trained)."""
    earlier = next(t for t in study.get_trials(deepcopy=False) if t.number == number)
    for key, value in earlier.user_attrs.items():
        if key not in ("driver", "retry_of", "retries", "preset", "rungs"):
            ot_trial.set_user_attr(key, value)
    ot_trial.set_user_attr("same_as", number)
    ot_trial.set_user_attr("train_seconds", 0.0)
    for name, value in earlier.constraints.items():
        ot_trial.set_constraint(name, value)
    study.tell(ot_trial, earlier.values)


def keep_measurement(study: optuna.Study, result: dict | None) -> None:
    """A trial's fresh measurement (``costs_json``: not from the cache), kept in the study's cache."""
    if result and result.get("costs_json") and result.get("cost_key"):
        remember_costs(study, result["cost_key"], json.loads(result["costs_json"]))


def make_searcher(study: optuna.Study, space: SearchSpace, objectives: tuple[Objective, ...],
                  constraints: tuple[Constraint, ...], runs_root: Path, common: dict[str, Any],
                  stopped: dict[str, int] | None = None, cost_scope: dict[str, Any] | None = None,
                  planner: Any = None):
    """Ray's OptunaSearch on our study, recording attributes and heartbeats on the driver. Each trial's
    config is its sampled ``arch``, its ``number`` in the study, its costs where the study's cache has
    them (``cost_scope``: the meter's, ``searchsr.costcache``), else whether to measure its latency or take
    a prediction (``planner``: ``searchsr.latencypolicy.LatencyPlanner``), and ``common`` (what every
    trial needs).
    ``stopped`` is the early-stopping scheduler's record of the trials it stopped (Tune id -> rung step)."""
    from ray.tune.search.optuna import OptunaSearch

    driver = driver_identity()

    def define_by_run(trial: optuna.Trial) -> dict[str, Any]:
        # Validated by the worker: a hand-enqueued invalid arch fails its trial, not the study.
        trial.set_user_attr("driver", driver)  # a rerun on this host fails it at once if this driver dies
        arch = sample_values(space, trial)
        same = same_architecture(trial.study, trial)
        key = cost_key(arch, cost_scope) if cost_scope is not None else None
        costs = cached_costs(trial.study, key)
        plan = planner.plan(trial.study, trial.number, arch) if planner is not None and costs is None else None
        return {"arch": arch, "number": trial.number, "retry_of": trial.user_attrs.get("retry_of"),
                "same_as": same[0] if same else None, "same_state": same[1] if same else None,
                "cost_key": key, "costs": costs, "latency_plan": plan, **common}

    class RecordingSearch(OptunaSearch):
        # The study comes in as an argument and lives on the instance only, never in this class's
        # closure: Tune cloudpickles the class along with the instance (see __getstate__).
        def __init__(self, study: optuna.Study) -> None:
            super().__init__(space=define_by_run, metric=[o.key for o in objectives],
                             mode=["max" if o.direction == "maximize" else "min" for o in objectives],
                             sampler=study.sampler, study_name=study.study_name,
                             storage=internals.study_storage(study))
            self.study = study
            internals.searcher_use_study(self, study)
            self._stop = threading.Event()
            self._checked = time.monotonic()
            threading.Thread(target=self._beat, daemon=True, name="optuna-heartbeat").start()

        def _unfinished(self) -> dict[str, optuna.Trial]:
            done = internals.searcher_completed(self)
            return {k: t for k, t in internals.searcher_trials(self).items() if k not in done}

        def _beat(self) -> None:
            storage = internals.study_storage(self.study)
            while not self._stop.wait(storage.get_heartbeat_interval() / 2):
                for ot_trial in list(self._unfinished().values()):
                    storage.record_heartbeat(internals.trial_id(ot_trial))

        def suggest(self, trial_id: str) -> dict | None:
            if time.monotonic() - self._checked > STALE_CHECK_S:  # as Optuna's optimize() does between trials
                self._checked = time.monotonic()
                fail_stale_trials(self.study)
            config = super().suggest(trial_id)
            ot_trial = internals.searcher_trials(self).get(trial_id)
            if ot_trial is not None:
                internals.study_storage(self.study).record_heartbeat(internals.trial_id(ot_trial))
            return config

        def on_trial_result(self, trial_id: str, result: dict) -> None:
            """Rung results are the scheduler's (``searchsr.rungs``); Optuna's ``Trial.report`` is not used.
            A first result may carry a fresh measurement: the study keeps it."""
            keep_measurement(self.study, result)

        def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
            ot_trial = internals.searcher_trials(self).get(trial_id)
            done = internals.searcher_completed(self)
            if ot_trial is None or trial_id in done:
                return
            kind = (result or {}).get("kind")
            at_rung = (stopped or {}).get(trial_id)
            keep_measurement(self.study, result)
            if kind == SAME and not error:
                reuse(self.study, ot_trial, int(result["same_as"]))
                done.add(trial_id)
                return
            if not error and kind != FINAL and at_rung is None and kind != INFEASIBLE:
                return  # cut short (Ctrl-C, --max-failures): abandon_unfinished fails and re-queues it
            record_trial(ot_trial, result, error, constraints, runs_root)
            if error or kind == FINAL:
                super().on_trial_complete(trial_id, result=result if not error else None, error=error)
                return
            if at_rung is not None:
                ot_trial.set_user_attr(STOPPED_ATTR, at_rung)
            self.study.tell(ot_trial, state=optuna.trial.TrialState.PRUNED)
            done.add(trial_id)

        def abandon_unfinished(self, reason: str) -> int:
            """Trials cut short (Ctrl-C): FAIL with ``reason`` and re-queued now, not after --stale-after."""
            cut = self._unfinished()
            storage = internals.study_storage(self.study)
            for trial_id, ot_trial in cut.items():
                ot_trial.set_user_attr("fail_reason", reason)
                self.study.tell(ot_trial, state=optuna.trial.TrialState.FAIL)
                internals.searcher_completed(self).add(trial_id)
                requeue(self.study, storage.get_trial(internals.trial_id(ot_trial)))
            return len(cut)

        def close(self) -> None:
            self._stop.set()

        def save(self, checkpoint_path: str) -> None:
            """Nothing to save: the Optuna storage is the state (resume = rerun the command)."""

        def restore(self, checkpoint_path: str) -> None:
            """See ``save``."""

        def __getstate__(self) -> dict[str, Any]:
            """Tune pickles its searcher into ``tuner.pkl`` (for ``Tuner.restore``, which resuming here does
            not use): leave out the thread's event and all that holds the storage, whose URL has the password."""
            left_out = ("_stop", "study", *internals.SEARCHER_STATE)
            return {k: v for k, v in self.__dict__.items() if k not in left_out}

        def __setstate__(self, state: dict[str, Any]) -> None:
            self.__dict__.update(state, _stop=threading.Event())

    return RecordingSearch(study)
