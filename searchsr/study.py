"""The search: an Optuna multi-objective study whose trials Ray Tune runs.

Flow: space file -> ``sample_values`` (Optuna define-by-run, inside Ray's ``OptunaSearch``) ->
one Ray Tune trial = train the ``short`` schedule + score PSNR-Y/SSIM-Y -> costs from the
single ``CostMeter`` actor -> the driver writes every metric as user attributes and tells
Optuna. Design choices, each against a known pitfall:

* Single writer. Workers never touch the storage (SQLite allows one writer; PostgreSQL
  credentials stay on the driver). ``RecordingOptunaSearch`` writes user attributes and
  constraints on the driver *before* ``tell``, because Ray's OptunaSearch only passes the
  objective values and a finished Optuna trial refuses further writes.
* Latency that means something under concurrency. Trials train side by side, but every
  timing runs in one Ray actor (``CostMeter``), so two timings never overlap, with a
  fixed thread count, and always interleaved with XLITE: ``latency_ratio`` (to XLITE) is
  steady even while other trials load the machine, and ``latency_ms`` is that ratio times
  the XLITE reference the meter timed once, before any trial started.
* Crash and resume, from the Optuna study (not ``Tuner.restore``: the storage is the
  state, and it is shared by every driver). The driver records an Optuna heartbeat for
  each trial it owns; a rerun fails the trials whose heartbeat went stale (a killed
  driver), records why, and re-queues their parameters (Optuna's heartbeat mechanism
  with our ``requeue`` callback), so nothing completed is touched or repeated.
* Samplers are rebuilt on every run, seeded with ``seed + number of trials so far``:
  the same seed again would replay the first run's random draws. Drivers that start
  together see the same count, so each seed is claimed in the study and taken once.
* Parallel random start-up (ray#52535): concurrency defaults to what the CPUs allow and
  TPE's start-up count is capped by the trials requested, so a small run still models.
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any
from urllib.parse import quote

import optuna
import sqlalchemy.exc
from optuna.exceptions import UpdateFinishedTrialError
from optuna.storages import RDBStorage
from optuna.trial import FrozenTrial
from sqlalchemy.engine import make_url

from searchsr.errors import UsageError
from searchsr.space import Constraint, Objective, SearchSpace, sample_values, set_constraints, to_params

DEFAULT_STORAGE = "sqlite:///studies/searchsr.db"
DEFAULT_STUDY = "searchsr"
STALE_AFTER_S = 60  # a RUNNING trial without heartbeat this long lost its driver
MAX_RETRIES = 3
FAILURE_FILE = "failure.txt"
SAMPLERS = ("nsga2", "tpe", "random")
MAX_STUDY_NAME = 128
OPEN_ATTEMPTS = 8  # drivers creating a new storage's tables at the same moment: the losers try again


def mask_url(url: str) -> str:
    """A storage URL fit for logs and errors: the password replaced by ***."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except sqlalchemy.exc.ArgumentError:
        return "<invalid storage URL>"


def check_study_name(name: str) -> str:
    """A study name is also a folder name (``--runs-dir/<study>``, Ray's experiment): no path tricks."""
    if (not name or len(name) > MAX_STUDY_NAME or name.startswith(".")
            or not all(c.isalnum() or c in "-_." for c in name)):
        raise UsageError(f"--study must be letters, digits, '-', '_' or '.' (not first), at most "
                         f"{MAX_STUDY_NAME} characters, got {name!r}")
    return name


def check_sqlite_file(path: Path) -> None:
    """Refuse a file that is not a healthy SQLite database (random bytes, truncated, damaged pages)
    before any storage is opened on it; reads only (``mode=ro``), so the file stays byte for byte.
    A file with a hot journal (a writer was killed mid-commit) is left to SQLite's own recovery,
    which needs a writable connection."""
    if any(Path(f"{path}{suffix}").exists() for suffix in ("-journal", "-wal")):
        return
    try:
        with contextlib.closing(sqlite3.connect(f"file:{quote(str(path.resolve()))}?mode=ro", uri=True,
                                                  timeout=30)) as con:  # a live search may be committing
            problems = [row[0] for row in con.execute("PRAGMA quick_check(3)")]
    except sqlite3.Error as err:
        raise UsageError(f"{path}: not a usable SQLite database ({err})") from None
    if problems != ["ok"]:
        raise UsageError(f"{path}: damaged SQLite database ({' '.join('; '.join(problems).split())[:200]})")


def open_storage(url: str, stale_after: int = STALE_AFTER_S, create: bool = True) -> RDBStorage:
    """An RDB storage with heartbeats; any failure is one line with the URL masked.

    ``create=False`` (commands that only read a study) refuses a missing SQLite file
    instead of leaving an empty database behind.
    """
    try:
        parsed = make_url(url)
    except sqlalchemy.exc.ArgumentError:
        raise UsageError(f"--storage: not an SQLAlchemy URL: {mask_url(url)}") from None
    if parsed.get_backend_name() == "sqlite" and parsed.database not in (None, "", ":memory:"):
        database = Path(parsed.database)
        if not create and not (database.is_file() and database.stat().st_size):
            raise UsageError(f"no study storage at {parsed.database}")
        if database.is_file():
            check_sqlite_file(database)  # never let Optuna write into a damaged file
        database.parent.mkdir(parents=True, exist_ok=True)
    for attempt in range(1, OPEN_ATTEMPTS + 1):
        try:
            return RDBStorage(url, heartbeat_interval=max(1, stale_after // 4), grace_period=stale_after,
                              heartbeat_stale_trial_callback=requeue, engine_kwargs={"pool_pre_ping": True})
        except Exception as err:  # sqlalchemy/driver errors name the URL, password included
            if attempt < OPEN_ATTEMPTS and _lost_schema_race(err):
                time.sleep(0.1 * attempt)
                continue
            first = str(err).splitlines()[0] if str(err) else type(err).__name__
            raise UsageError(f"cannot open storage {mask_url(url)}: {first.replace(url, mask_url(url))}") from None


def _lost_schema_race(err: Exception) -> bool:
    """Another driver was creating Optuna's tables in the same new storage at that moment: PostgreSQL
    reports a unique violation in its catalog, SQLite a table that "already exists". Creating them skips
    what exists, so the next attempt succeeds once the winner is done."""
    return isinstance(err, sqlalchemy.exc.IntegrityError) or (
        isinstance(err, sqlalchemy.exc.DBAPIError) and "already exists" in str(err))


def requeue(study: optuna.Study, trial: FrozenTrial) -> None:
    """Give a trial that lost its driver another go with the same parameters (up to MAX_RETRIES)."""
    retries = int(trial.user_attrs.get("retries", 0))
    if retries < MAX_RETRIES:
        attrs = {"retry_of": trial.number, "retries": retries + 1}
        if "preset" in trial.user_attrs:
            attrs["preset"] = trial.user_attrs["preset"]
        study.enqueue_trial(trial.params, user_attrs=attrs)


def fail_stale_trials(study: optuna.Study) -> None:
    """RUNNING trials whose heartbeat stopped (a killed or lost driver): FAIL with the reason, re-queued."""
    storage = study._storage
    grace = storage.get_heartbeat_interval() and getattr(storage, "_backend", storage).grace_period
    reason = f"no heartbeat for {grace} s: the driver running it was killed or lost"
    for trial_id in storage._get_stale_trial_ids(study._study_id):
        try:
            storage.set_trial_user_attr(trial_id, "fail_reason", reason)
        except UpdateFinishedTrialError:  # another driver got there first
            pass
    optuna.storages.fail_stale_trials(study)


def make_sampler(name: str, seed: int, n_trials: int) -> optuna.samplers.BaseSampler:
    if name == "nsga2":
        return optuna.samplers.NSGAIISampler(seed=seed, population_size=max(4, min(50, n_trials)))
    if name == "tpe":
        return optuna.samplers.TPESampler(seed=seed, n_startup_trials=max(2, min(10, n_trials // 2)),
                                          multivariate=True)
    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    raise UsageError(f"--sampler must be one of {', '.join(SAMPLERS)}, got {name!r}")


def load_study(study_name: str, storage: RDBStorage, sampler: optuna.samplers.BaseSampler | None = None
               ) -> optuna.Study:
    try:
        return optuna.load_study(study_name=study_name, storage=storage, sampler=sampler)
    except KeyError:
        raise UsageError(f"no study named {study_name!r} in this storage") from None


def prepare_study(name: str, storage: RDBStorage, objectives: tuple[Objective, ...], sampler: str,
                  seed: int, n_trials: int) -> optuna.Study:
    """Create or continue the study; an existing one must have the same objectives.

    The sampler's seed is ``seed`` + trials so far, claimed so that drivers starting on the study at the
    same moment take different seeds: the same seed would make them draw the same architectures.
    """
    directions = [o.direction for o in objectives]
    names = [o.name for o in objectives]
    existing = {s.study_name: s for s in optuna.get_all_study_summaries(storage)}
    if name in existing:
        study = load_study(name, storage)
        if study.metric_names and list(study.metric_names) != names:
            raise UsageError(f"study {name!r} optimises {','.join(study.metric_names)}, not {','.join(names)}: "
                             f"use another --study or the same --objectives")
        offset = len(study.trials)
    else:
        offset = 0
    study = optuna.create_study(study_name=name, storage=storage, directions=directions, load_if_exists=True,
                                sampler=make_sampler(sampler, seed + offset, n_trials))
    while not _claim(study, f"searchsr:seed:{seed + offset}"):
        offset += 1
        study.sampler = make_sampler(sampler, seed + offset, n_trials)
    study.set_metric_names(names)
    fail_stale_trials(study)
    return study


def make_searcher(study: optuna.Study, space: SearchSpace, objectives: tuple[Objective, ...],
                  constraints: tuple[Constraint, ...], runs_root: Path, common: dict[str, Any]):
    """Ray's OptunaSearch on our study, recording attributes and heartbeats on the driver."""
    from ray.tune.search.optuna import OptunaSearch

    def define_by_run(trial: optuna.Trial) -> dict[str, Any]:
        # Validated by the worker: a hand-enqueued invalid arch fails its trial, not the study.
        return {"arch": sample_values(space, trial), "number": trial.number, **common}

    class Searcher(OptunaSearch):
        # The study comes in as an argument and lives on the instance only, never in this class's
        # closure: Tune cloudpickles the class along with the instance (see __getstate__).
        def __init__(self, study: optuna.Study) -> None:
            super().__init__(space=define_by_run, metric=[o.key for o in objectives],
                             mode=["max" if o.direction == "maximize" else "min" for o in objectives],
                             sampler=study.sampler, study_name=study.study_name, storage=study._storage)
            self._ot_study = study
            self._stop = threading.Event()
            threading.Thread(target=self._beat, daemon=True, name="optuna-heartbeat").start()

        def _beat(self) -> None:
            storage = self._ot_study._storage
            while not self._stop.wait(storage.get_heartbeat_interval() / 2):
                for ot_trial in list(self._ot_trials.values()):
                    if ot_trial.number not in self._finished_numbers():
                        storage.record_heartbeat(ot_trial._trial_id)

        def _finished_numbers(self) -> set[int]:
            return {self._ot_trials[t].number for t in self._completed_trials}

        def suggest(self, trial_id: str) -> dict | None:
            config = super().suggest(trial_id)
            self._ot_study._storage.record_heartbeat(self._ot_trials[trial_id]._trial_id)
            return config

        def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
            ot_trial = self._ot_trials.get(trial_id)
            if ot_trial is not None and trial_id not in self._completed_trials:
                record_trial(ot_trial, result, error, constraints, runs_root)
            super().on_trial_complete(trial_id, result=result if not error else None, error=error)

        def abandon_unfinished(self, reason: str) -> int:
            """Trials cut short (Ctrl-C): FAIL with ``reason`` and re-queued now, not after --stale-after."""
            cut = [(t, ot) for t, ot in self._ot_trials.items() if t not in self._completed_trials]
            for trial_id, ot_trial in cut:
                ot_trial.set_user_attr("fail_reason", reason)
                self._ot_study.tell(ot_trial, state=optuna.trial.TrialState.FAIL)
                self._completed_trials.add(trial_id)
                requeue(self._ot_study, self._ot_study._storage.get_trial(ot_trial._trial_id))
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
            left_out = ("_stop", "_ot_study", "_storage", "_ot_trials")
            return {k: v for k, v in self.__dict__.items() if k not in left_out}

        def __setstate__(self, state: dict[str, Any]) -> None:
            self.__dict__.update(state, _stop=threading.Event())

    return Searcher(study)


METRIC_KEYS = ("psnr", "ssim", "psnr_bicubic", "latency_ms", "latency_iqr_ms", "latency_ratio", "xlite_ms",
               "flops", "macs", "params", "activations", "memory", "train_seconds", "trial_seconds", "steps")


def record_trial(ot_trial: optuna.Trial, result: dict | None, error: bool, constraints: tuple[Constraint, ...],
                 runs_root: Path) -> None:
    """Every metric (objective or not), the arch, run folder and host, as user attributes."""
    run_dir = runs_root / f"trial_{ot_trial.number:05d}"
    ot_trial.set_user_attr("run_dir", str(run_dir))
    if error or not result:
        reason_file = run_dir / FAILURE_FILE
        reason = reason_file.read_text().strip() if reason_file.is_file() else "worker died (no reason recorded)"
        ot_trial.set_user_attr("fail_reason", reason[:2000])
        return
    for key in METRIC_KEYS:
        if key in result:
            ot_trial.set_user_attr(key, result[key])
    for key in ("schedule", "host", "node_id", "device"):
        if key in result:
            ot_trial.set_user_attr(key, result[key])
    if "arch_json" in result:  # Tune flattens nested dicts in results, so the arch travels as JSON
        ot_trial.set_user_attr("arch", json.loads(result["arch_json"]))
    set_constraints(ot_trial, constraints, result)


def preset_params(space: SearchSpace, names: list[str] | tuple[str, ...]) -> dict[str, dict[str, Any]]:
    """The Optuna params of each named paper preset in ``space``; ValueError for an unknown preset
    or one the space cannot produce (``run`` calls this before touching the storage)."""
    from searchsr.config import PRESETS

    params = {}
    for name in names:
        if name not in PRESETS:
            raise UsageError(f"--enqueue: unknown preset {name!r} (known: {', '.join(PRESETS)})")
        try:
            params[name] = to_params(space, PRESETS[name])
        except ValueError as err:
            raise UsageError(f"--enqueue {name}: {err}") from None
    return params


def enqueue_presets(study: optuna.Study, space: SearchSpace, names: list[str]) -> list[str]:
    """Queue the paper's networks (once per study) so the front is always compared with them.

    Drivers starting together would all see the preset missing and all queue it (Optuna's
    ``skip_if_exists`` is check-then-insert too), so each preset is claimed first: one driver wins.
    """
    trials = study.get_trials(deepcopy=False)
    queued = []
    for name, params in preset_params(space, names).items():
        if any(params in (t.params, t.system_attrs.get("fixed_params")) for t in trials):
            continue  # queued before claims were recorded
        if _claim(study, f"searchsr:preset:{name}"):
            study.enqueue_trial(params, user_attrs={"preset": name})
            queued.append(name)
    return queued


def _claim(study: optuna.Study, key: str) -> bool:
    """True for exactly one caller per study and key, however many drivers ask at once.

    The unique (study, key) constraint of Optuna's study system attributes decides, on any SQL
    backend and across machines; ``set_system_attr`` cannot be used, it swallows that conflict.
    """
    from optuna.storages._rdb.models import StudySystemAttributeModel

    session = getattr(study._storage, "_backend", study._storage).scoped_session()
    try:
        session.add(StudySystemAttributeModel(study_id=study._study_id, key=key, value_json="true"))
        session.commit()
        return True
    except sqlalchemy.exc.IntegrityError:
        session.rollback()
        return False
    finally:
        session.close()


def trial_run_dir(study: optuna.Study, number: int) -> Path:
    """The run folder holding a trial's weights: its retrained one when ``retrain`` made it, else the search's."""
    trials = {t.number: t for t in study.get_trials(deepcopy=False)}
    if number not in trials:
        raise UsageError(f"study {study.study_name!r} has no trial {number}")
    trial = trials[number]
    if trial.state != optuna.trial.TrialState.COMPLETE or "run_dir" not in trial.user_attrs:
        raise UsageError(f"trial {number} is {trial.state.name}: only completed trials have trained weights")
    retrained = study.user_attrs.get("retrain_out")
    if retrained and (Path(retrained) / f"trial_{number}" / "weights.safetensors").is_file():
        return Path(retrained) / f"trial_{number}"
    return Path(trial.user_attrs["run_dir"])
