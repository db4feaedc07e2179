"""Every use of Optuna's and Ray's private API, in one place, each with why.

Private names can change in any minor release; pyproject.toml bounds optuna (< 6), optuna-dashboard
(< 1) and ray (< 3) to the major versions this was written against (optuna 5.0, ray 2.60), and the
tests exercise every function here. When a release breaks one, this file is the only one to fix.
"""

from __future__ import annotations

from typing import Any

import optuna
import sqlalchemy.exc
from optuna.storages import RDBStorage
from optuna.study import Study
from optuna.trial import FrozenTrial

# The hypervolume of a set of loss vectors: optuna.visualization computes it from a study, but only
# this function takes an explicit reference point and arbitrary points (e.g. a front over time).
from optuna._hypervolume import compute_hypervolume  # noqa: E402,F401  (re-exported)
# optuna-dashboard's storage API hands around FrozenStudy objects; a read-only storage subclass
# (searchsr.dashboard) returns them too.
from optuna.study._frozen import FrozenStudy  # noqa: E402,F401  (re-exported)


METRIC_NAMES_ATTR = "study:metric_names"
"""The study system attribute holding ``set_metric_names`` (``optuna.study.study._SYSTEM_ATTR_METRIC_NAMES``):
the read-only dashboard storage supplies inferred names under it for studies that have none."""

FIXED_PARAMS_ATTR = "fixed_params"
"""The trial system attribute holding an enqueued trial's parameters until it runs: a preset queued
but not yet run must not be queued again."""


def study_storage(study: Study) -> RDBStorage:
    """The storage a study was loaded from: Optuna keeps it private, Ray's OptunaSearch needs it passed."""
    return study._storage


def study_id(study: Study | FrozenStudy) -> int:
    """The study's row id in the storage (the storage API is keyed by it)."""
    return study._study_id


def trial_id(trial: optuna.Trial | FrozenTrial) -> int:
    """The trial's row id in the storage (heartbeats and user attributes are keyed by it)."""
    return trial._trial_id


def stale_trial_ids(study: Study) -> list[int]:
    """RUNNING trials whose heartbeat is older than the storage's grace period. Optuna exposes only
    ``fail_stale_trials``, which fails them without a way to record why first."""
    return study._storage._get_stale_trial_ids(study._study_id)


def grace_period(storage: RDBStorage) -> int | None:
    """The storage's heartbeat grace period (seconds), for the reason recorded on a stale trial."""
    return getattr(storage, "_backend", storage).grace_period


def claim_study_key(study: Study, key: str) -> bool:
    """Insert study system attribute ``key`` unless it exists: True for exactly one caller per study
    and key, however many drivers on however many machines ask at once. The unique (study, key)
    constraint of Optuna's table decides; the public ``set_system_attr`` swallows that conflict."""
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


def searcher_use_study(searcher: Any, study: Study) -> None:
    """Ray's ``OptunaSearch`` creates its own ``Study`` object on the storage (``_ot_study``); make it
    ask and tell through ours, whose sampler carries the seed this driver claimed."""
    searcher._ot_study = study


def searcher_trials(searcher: Any) -> dict[str, optuna.Trial]:
    """Ray's ``OptunaSearch``: Tune trial id -> the Optuna trial it asked for (``_ot_trials``)."""
    return searcher._ot_trials


def searcher_completed(searcher: Any) -> set[str]:
    """Ray's ``OptunaSearch``: the Tune trial ids it has already told Optuna about."""
    return searcher._completed_trials


SEARCHER_STATE = ("_ot_study", "_storage", "_ot_trials")
"""``OptunaSearch`` attributes that hold the storage (whose URL carries the password): kept out of
the searcher Tune pickles into its experiment folder."""
