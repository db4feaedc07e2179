"""Pareto successive halving in a search: the Ray Tune scheduler that stops trials at rungs, with the
rung state in the study's storage.

Ray Tune's own schedulers (ASHA, HyperBand) rank trials by one metric; this one ranks by all the
study's objectives (``searchsr.halving``). It runs on the driver, the only process that writes the
storage: each rung result a trial reports (``searchsr.trial``) is recorded on its Optuna trial as
the user attribute ``rungs`` (step -> PSNR, SSIM, training seconds and the cost objectives), and the
rung's members are read back from the storage at every decision. So the rung state survives a
killed driver, and several drivers on one study share it. Members are the trials of every state
but FAIL (a failed trial's retry reports its rungs again, marked ``replayed``, and is not judged
twice).

A stopped trial is told to Optuna as PRUNED by the searcher (``searchsr.recording``), never as
COMPLETE with its partial scores, which Ray's ``OptunaSearch`` would do.
"""

from __future__ import annotations

import json
from collections import Counter
from typing import Any

import optuna
from optuna.trial import TrialState
from ray.tune.schedulers import FIFOScheduler, TrialScheduler

from searchsr import internals
from searchsr.halving import RUNGS_ATTR, goes_on
from searchsr.objectives import Objective
from searchsr.trial import RUNG


def rung_entry(result: dict[str, Any], objectives: tuple[Objective, ...]) -> dict[str, float]:
    """What a rung records: its scores, the seconds spent to it and the exact cost objectives. A rung
    scores the FP32 network only: it stands for the INT8 scores too (quantized once, at the end)."""
    entry = {"psnr": float(result["rung_psnr"]), "ssim": float(result["rung_ssim"]),
             "psnr_int8": float(result["rung_psnr"]), "ssim_int8": float(result["rung_ssim"]),
             "train_seconds": float(result["train_seconds"])}
    entry.update({o.key: float(result[o.key]) for o in objectives if o.key not in entry})
    return entry


def losses(entry: dict[str, float], objectives: tuple[Objective, ...]) -> tuple[float, ...]:
    """A rung entry as a loss vector (every objective minimised)."""
    return tuple(-entry[o.key] if o.direction == "maximize" else entry[o.key] for o in objectives)


def rung_members(study: optuna.Study, step: int, objectives: tuple[Objective, ...]) -> dict[int, tuple[float, ...]]:
    """Every architecture of the study that reached rung ``step`` (FAIL excepted), as losses, keyed by the
    number of its first trial there: an architecture drawn twice is one member, not two."""
    members, seen = {}, set()
    for trial in sorted(study.get_trials(deepcopy=False), key=lambda t: t.number):
        entry = (trial.user_attrs.get(RUNGS_ATTR) or {}).get(str(step))
        arch = arch_key(trial)
        if entry is not None and trial.state != TrialState.FAIL and arch not in seen:
            members[trial.number] = losses(entry, objectives)
            seen.add(arch)
    return members


def arch_key(trial: optuna.trial.FrozenTrial) -> str:
    return json.dumps(trial.params, sort_keys=True)


def first_with_same_arch(study: optuna.Study, number: int, step: int) -> int:
    """The number under which trial ``number``'s architecture is a member of rung ``step``."""
    trials = sorted(study.get_trials(deepcopy=False), key=lambda t: t.number)
    key = arch_key(next(t for t in trials if t.number == number))
    return next(t.number for t in trials if arch_key(t) == key and t.state != TrialState.FAIL
                and str(step) in (t.user_attrs.get(RUNGS_ATTR) or {}))


def record_rung(study: optuna.Study, number: int, step: int, entry: dict[str, float]) -> None:
    storage = internals.study_storage(study)
    trial_id = storage.get_trial_id_from_study_id_trial_number(internals.study_id(study), number)
    rungs = dict(storage.get_trial(trial_id).user_attrs.get(RUNGS_ATTR) or {})
    rungs[str(step)] = entry
    storage.set_trial_user_attr(trial_id, RUNGS_ATTR, rungs)


class ParetoHalving(FIFOScheduler):
    """Stops a trial at a rung unless it ranks in the top ``1/eta`` of the trials that reached it.

    ``stopped`` maps the Tune ids of the trials it stopped to their rung step (the searcher tells
    those PRUNED); ``saved_seconds`` estimates the training their stop saved."""

    def __init__(self, study: optuna.Study, objectives: tuple[Objective, ...], eta: int, total_steps: int) -> None:
        super().__init__()
        self.study, self.objectives, self.eta, self.total_steps = study, objectives, eta, total_steps
        self.stopped: dict[str, int] = {}
        self.saved_seconds = 0.0

    def on_trial_result(self, tune_controller: Any, trial: Any, result: dict) -> str:
        if result.get("kind") != RUNG:
            return TrialScheduler.CONTINUE
        number, step = int(result["number"]), int(result["rung_step"])
        record_rung(self.study, number, step, rung_entry(result, self.objectives))
        if result.get("replayed"):  # judged when it first reached this rung
            return TrialScheduler.CONTINUE
        member = first_with_same_arch(self.study, number, step)
        if goes_on(rung_members(self.study, step, self.objectives), member, self.eta):
            return TrialScheduler.CONTINUE
        self.stopped[trial.trial_id] = step
        seconds = float(result["train_seconds"])
        self.saved_seconds += seconds * (self.total_steps / step - 1)  # at the rate it trained so far
        return TrialScheduler.STOP

    def summary(self) -> str | None:
        """How many trials stopped at which rung, and the training seconds that saved (about)."""
        if not self.stopped:
            return None
        counts = Counter(self.stopped.values())
        where = ", ".join(f"{counts[s]} at step {s}" for s in sorted(counts))
        return (f"early stopping: {len(self.stopped)} trial(s) stopped ({where} of {self.total_steps}), about "
                f"{self.saved_seconds:.0f} training seconds saved against training them fully")
