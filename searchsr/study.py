"""A study's lifecycle: create or continue it, seed its sampler, queue the paper's networks, recover
trials a dead driver left RUNNING, and find a finished trial's weights.

The storage is the state, shared by every driver (not Ray's ``Tuner.restore``). Design choices,
each against a known pitfall:

* Samplers are rebuilt on every run, seeded with ``seed + number of trials so far``: the same
  seed again would replay the first run's random draws. Drivers that start together see the
  same count, so each seed is claimed in the study and taken once.
* Presets are queued once per study, whichever of several drivers gets there first (a claim).
* Crash and resume: a driver records a heartbeat for each trial it owns (``searchsr.recording``);
  a rerun fails the trials whose heartbeat went stale (a killed driver), records why, and
  re-queues their parameters (up to ``MAX_RETRIES`` times), so nothing completed is repeated.
* TPE's start-up count is capped by the trials requested, so a small run still models
  (parallel random start-up, ray#52535).
"""

from __future__ import annotations

import os
import socket
import time
import uuid
from pathlib import Path
from typing import Any

import optuna
from optuna.exceptions import UpdateFinishedTrialError
from optuna.storages import RDBStorage
from optuna.trial import FrozenTrial, TrialState

from searchsr import internals
from searchsr.config import PAPER_POINTS
from searchsr.errors import UsageError
from searchsr.halving import STOPPED_ATTR
from searchsr.objectives import Objective
from searchsr.runs import WEIGHTS_FILE, existing_trial_dir
from searchsr.space import Categorical, SearchSpace, contains, to_params
from searchsr.storage import load_study, study_names

MAX_RETRIES = 3
SAMPLERS = ("auto", "tpe", "gp", "nsga2", "random")
GP_MAX_TRIALS = 250  # GPSampler's cost grows as n^3: past this, auto picks TPE/NSGA-II (AutoSampler's bound)


def auto_sampler(space: SearchSpace, n_trials: int, n_objectives: int, early_stop: bool = False) -> str:
    """``--sampler auto``: the sampler for this space, budget and early stopping, by the policy of Optuna's
    AutoSampler (OptunaHub) where it applies, checked on our recorded table (README, "Choosing a sampler"):

    * early stopping -> random search, ASHA's own pairing (Li et al.; MO-ASHA, Salinas et al.): the
      model-based samplers learn little from stopped (PRUNED) trials (GP and NSGA-II read only
      COMPLETE ones), and on the table random search with early stopping beat them all;
    * a space with categorical or conditional parameters (ours: se, act, bn; se_ratio when se) -> TPE,
      which models both (GP treats categories as unordered points, NSGA-II starts random);
    * an all-numeric space -> GP up to ``GP_MAX_TRIALS`` trials, beyond that NSGA-II (TPE for one objective).
    """
    if early_stop:
        return "random"
    if any(param.when or isinstance(param, Categorical) for param in space.params.values()):
        return "tpe"
    if n_trials <= GP_MAX_TRIALS:
        return "gp"
    return "nsga2" if n_objectives > 1 else "tpe"


def make_sampler(name: str, seed: int, n_trials: int) -> optuna.samplers.BaseSampler:
    """A sampler by name (``auto`` is resolved by ``auto_sampler`` before); ``n_trials`` is the run's budget."""
    startup = max(2, min(10, n_trials // 2))  # so a small run still models (parallel random start-up, ray#52535)
    if name == "gp":
        return optuna.samplers.GPSampler(seed=seed, n_startup_trials=startup)
    if name == "nsga2":
        return optuna.samplers.NSGAIISampler(seed=seed, population_size=max(4, min(50, n_trials)))
    if name == "tpe":
        return optuna.samplers.TPESampler(seed=seed, n_startup_trials=startup, multivariate=True)
    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    raise UsageError(f"--sampler must be one of {', '.join(SAMPLERS)}, got {name!r}")


def prepare_study(name: str, storage: RDBStorage, objectives: tuple[Objective, ...], sampler: str,
                  seed: int, n_trials: int, space: SearchSpace | None = None, early_stop: bool = False
                  ) -> optuna.Study:
    """Create or continue the study; an existing one must have the same objectives. Fails (and
    re-queues) the trials a dead driver left RUNNING.

    ``sampler`` "auto" is resolved by ``auto_sampler`` (``study.sampler`` tells which). The sampler's
    seed is ``seed`` + trials so far, claimed so that drivers starting on the study at the
    same moment take different seeds: the same seed would make them draw the same architectures.
    """
    directions = [o.direction for o in objectives]
    names = [o.name for o in objectives]
    offset = 0
    if name in study_names(storage):
        study = load_study(name, storage)
        have = [d.name.lower() for d in study.directions]
        if study.metric_names and list(study.metric_names) != names or have != directions:
            shown = ",".join(study.metric_names or [f"{len(have)} unnamed objective(s): {' '.join(have)}"])
            raise UsageError(f"study {name!r} optimises {shown}, not {','.join(names)}: "
                             f"use another --study or the same --objectives")
        offset = len(study.trials)
    if sampler == "auto":  # by the space and the study's whole budget: the trials so far and these
        sampler = auto_sampler(space or SearchSpace({}), offset + n_trials, len(objectives), early_stop)
    study = optuna.create_study(study_name=name, storage=storage, directions=directions, load_if_exists=True,
                                sampler=make_sampler(sampler, seed + offset, n_trials))
    while not internals.claim_study_key(study, f"searchsr:seed:{seed + offset}"):
        offset += 1
        study.sampler = make_sampler(sampler, seed + offset, n_trials)
    study.set_metric_names(names)
    fail_stale_trials(study)
    return study


def requeue(study: optuna.Study, trial: FrozenTrial) -> None:
    """Give a trial that lost its driver another go with the same parameters (up to MAX_RETRIES)."""
    retries = int(trial.user_attrs.get("retries", 0))
    if retries < MAX_RETRIES:
        attrs = {"retry_of": trial.number, "retries": retries + 1}
        if "preset" in trial.user_attrs:
            attrs["preset"] = trial.user_attrs["preset"]
        study.enqueue_trial(trial.params, user_attrs=attrs)


def driver_identity() -> dict[str, Any]:
    """This process as the driver of the trials it runs: host, pid and the pid's start time (so a
    recycled pid is not mistaken for the driver)."""
    return {"host": socket.gethostname(), "pid": os.getpid(), "started": _process_start(os.getpid())}


def _process_start(pid: int) -> int | None:
    """Start time of ``pid`` in clock ticks since boot (Linux), None where unknown."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(stat.rsplit(")", 1)[1].split()[19])


def driver_gone(driver: Any) -> bool:
    """True when ``driver`` (a ``driver_identity``) ran on this host and that process no longer exists.
    A driver on another host is never judged from here: its heartbeat decides."""
    if not isinstance(driver, dict) or driver.get("host") != socket.gethostname():
        return False
    started = _process_start(int(driver.get("pid", -1)))
    return started is None or (driver.get("started") is not None and started != driver["started"])


def fail_stale_trials(study: optuna.Study) -> int:
    """RUNNING trials that lost their driver: FAIL with the reason and re-queued, each by exactly one
    driver however many look at once. A trial is lost when its heartbeat is older than the grace period
    (any host), or at once when its driver ran on this host and is gone (a rerun right after a crash).
    Returns how many this call failed."""
    storage = internals.study_storage(study)
    if not storage.get_heartbeat_interval():
        return 0
    grace = internals.grace_period(storage)
    lost = {trial_id: f"no heartbeat for {grace} s: the driver running it was killed or lost"
            for trial_id in internals.stale_trial_ids(study)}
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        driver = trial.user_attrs.get("driver")
        if internals.trial_id(trial) not in lost and driver_gone(driver):
            lost[internals.trial_id(trial)] = (f"no heartbeat since its driver (pid {driver['pid']} on "
                                               f"{driver['host']}) died")
    failed = 0
    for trial_id, reason in lost.items():
        try:
            storage.set_trial_user_attr(trial_id, "fail_reason", reason)
            won = storage.set_trial_state_values(trial_id, state=TrialState.FAIL)
        except UpdateFinishedTrialError:  # another driver got there first
            continue
        if won:
            requeue(study, storage.get_trial(trial_id))
            failed += 1
    return failed


def same_architecture(study: optuna.Study, trial: optuna.Trial) -> tuple[int, str] | None:
    """The earlier trial of ``trial``'s architecture that got furthest: ``(number, "complete")`` for one
    that finished (its result is reused, nothing is trained), ``(number, "stopped")`` for one early
    stopping stopped (the new trial continues from its checkpoint and is judged again at that rung), or
    None. Architectures are compared by their parameters; FAIL and infeasible trials do not count."""
    best = None
    for other in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED)):
        if other.number == trial.number or other.params != trial.params:
            continue
        if other.state == TrialState.COMPLETE:
            return other.number, "complete"
        stopped = other.user_attrs.get(STOPPED_ATTR)
        if stopped is not None and (best is None or stopped > best[0]):
            best = (stopped, other.number)
    return (best[1], "stopped") if best else None


def preset_params(space: SearchSpace, names: list[str] | tuple[str, ...]) -> dict[str, dict[str, Any]]:
    """The Optuna params of each named paper preset in ``space``; UsageError for an unknown preset
    or one the space cannot produce (``run`` calls this before touching the storage). ``paper`` stands
    for every Table 2 point that lies inside the space (a warm start: none outside it is forced in)."""
    params = {}
    for name in names:
        if name == "paper":
            params.update({n: to_params(space, cfg) for n, cfg in PAPER_POINTS.items() if contains(space, cfg)})
            continue
        if name not in PAPER_POINTS:
            raise UsageError(f"--enqueue: unknown preset {name!r} (known: paper, {', '.join(PAPER_POINTS)})")
        try:
            params[name] = to_params(space, PAPER_POINTS[name])
        except ValueError as err:
            raise UsageError(f"--enqueue {name}: {err}") from None
    return params


def enqueue_presets(study: optuna.Study, space: SearchSpace, names: list[str] | tuple[str, ...]) -> list[str]:
    """Queue the paper's networks (once per study) so the front is always compared with them.

    Drivers starting together would all see the preset missing and all queue it (Optuna's
    ``skip_if_exists`` is check-then-insert too), so each preset is claimed first: one driver wins.
    """
    trials = study.get_trials(deepcopy=False)
    queued = []
    for name, params in preset_params(space, names).items():
        if any(params in (t.params, t.system_attrs.get(internals.FIXED_PARAMS_ATTR)) for t in trials):
            continue  # queued before claims were recorded
        if internals.claim_study_key(study, f"searchsr:preset:{name}"):
            study.enqueue_trial(params, user_attrs={"preset": name})
            queued.append(name)
    return queued


def trial_run_dir(study: optuna.Study, number: int) -> Path:
    """The run folder holding a trial's weights: its retrained one when ``retrain`` made it, else the search's."""
    trials = {t.number: t for t in study.get_trials(deepcopy=False)}
    if number not in trials:
        raise UsageError(f"study {study.study_name!r} has no trial {number}")
    trial = trials[number]
    if trial.state != TrialState.COMPLETE or "run_dir" not in trial.user_attrs:
        raise UsageError(f"trial {number} is {trial.state.name}: only completed trials have trained weights")
    results = study.user_attrs.get("retrain_results")
    entry = results.get(str(number)) if isinstance(results, dict) else None
    run_dir = entry.get("run_dir") if isinstance(entry, dict) else None
    if isinstance(run_dir, str) and (Path(run_dir) / WEIGHTS_FILE).is_file():
        return Path(run_dir)  # retrained (by the latest retrain that covered this trial)
    retrained = study.user_attrs.get("retrain_out")
    if retrained and (existing_trial_dir(retrained, number) / WEIGHTS_FILE).is_file():
        return existing_trial_dir(retrained, number)
    return Path(trial.user_attrs["run_dir"])


YARDSTICK_ATTR = "yardstick"  # the study's XLITE latency: every trial's latency_ms = its ratio x this
SETUP_ATTR = "setup"  # what makes two trials of the study comparable: schedule, data, space
UID_ATTR = "uid"  # the study's identity, also written into its runs folder (searchsr.search)


def settle_yardstick(study: optuna.Study, measured: dict[str, Any]) -> tuple[dict[str, Any], str | None]:
    """The study's latency yardstick, and a line to tell the user when this call stored it.

    A study stores one once: the earliest recorded XLITE time where the study predates yardsticks
    (so its front keeps its milliseconds), else ``measured`` (this driver's meter). Drivers that
    start together agree: one claims the store, the others read what it stored.
    """
    stored = study.user_attrs.get(YARDSTICK_ATTR)
    if stored:
        return stored, None
    earlier = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)) if "xlite_ms" in t.user_attrs]
    if earlier:
        first = min(earlier, key=lambda t: t.number)
        candidate = {**measured, "xlite_ms": float(first.user_attrs["xlite_ms"]),
                     "host": first.user_attrs.get("host", "unknown"), "from_trial": first.number,
                     "measured": first.datetime_complete.isoformat(timespec="seconds")
                     if first.datetime_complete else "unknown"}
        note = (f"study {study.study_name!r} had no stored latency yardstick: it now uses its earliest recorded XLITE "
                f"time, {candidate['xlite_ms']:.2f} ms (trial {first.number}), for every trial from here on")
    else:
        candidate = measured
        note = None
    if internals.claim_study_key(study, "searchsr:yardstick"):
        study.set_user_attr(YARDSTICK_ATTR, candidate)
        return candidate, note
    for _ in range(100):  # another driver is storing it this moment
        stored = study.user_attrs.get(YARDSTICK_ATTR)
        if stored:
            return stored, None
        time.sleep(0.1)
    raise UsageError(f"study {study.study_name!r}: another driver claimed the latency yardstick but never stored "
                     "it (it died at that moment?): rerun")


def describe_yardstick(yardstick: dict[str, Any]) -> str:
    return (f"XLITE {yardstick['xlite_ms']:.2f} ms at {yardstick.get('lr_size', '128x128')} LR on "
            f"{yardstick.get('host', 'unknown')}, {yardstick.get('threads', 1)} thread(s), "
            f"{yardstick.get('measured', 'unknown')}")


def check_setup(study: optuna.Study, setup: dict[str, dict[str, str]]) -> None:
    """Refuse to continue ``study`` with a schedule, data or space other than the one it ran with:
    trials scored on other validation data, or trained longer, are not comparable on one front. A setting
    newer than the study's record counts as its ``before`` value (what every searchsr before it did)."""
    stored = dict(study.user_attrs.get(SETUP_ATTR) or {})
    if stored:
        stored.update({k: {"label": v["before"], "key": v["before"]} for k, v in setup.items()
                       if k not in stored and "before" in v})
    changed = [k for k in setup if k in stored and stored[k]["key"] != setup[k]["key"]]
    if changed:
        was = "; ".join(f"{k} {stored[k]['label']}" for k in changed)
        now = "; ".join(f"{k} {setup[k]['label']}" for k in changed)
        raise UsageError(f"study {study.study_name!r} ran with {was}; this run has {now}: its trials would not be "
                         "comparable on one front (use another --study, or the same settings)")


def recorded_backend(study: optuna.Study) -> str:
    """The latency backend ``study`` was measured on (a study from before backends: torch)."""
    stored = (study.user_attrs.get(SETUP_ATTR) or {}).get("latency backend")
    return stored["label"].split(" ", 1)[0] if stored else "torch"


def record_setup(study: optuna.Study, setup: dict[str, dict[str, str]]) -> None:
    stored = study.user_attrs.get(SETUP_ATTR) or {}
    if any(k not in stored for k in setup):
        study.set_user_attr(SETUP_ATTR, {**{k: {"label": v["label"], "key": v["key"]} for k, v in setup.items()},
                                         **stored})


def study_uid(study: optuna.Study) -> str:
    """The study's identity (stored once; a study from before identities gets one now)."""
    uid = study.user_attrs.get(UID_ATTR)
    if not uid:
        if internals.claim_study_key(study, "searchsr:uid"):
            study.set_user_attr(UID_ATTR, uuid.uuid4().hex)
        for _ in range(100):
            uid = study.user_attrs.get(UID_ATTR)
            if uid:
                break
            time.sleep(0.1)
    return uid
