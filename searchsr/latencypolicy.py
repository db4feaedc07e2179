"""Which trials measure their latency and which take a prediction: ``--latency-predict-after N``.

Measuring is the slow part of a trial on some backends (a phone over adb: a minute per network, one
network at a time). nn-Meter showed that on mobile CPUs a model of per-layer costs predicts latency
within +/-10% for 99% of networks; ``searchsr.latencyfit`` fits such a model on a study's own
measurements. This module decides, for each new trial on the driver:

* Until the study has ``after`` measured architectures, every trial is measured (a cached measurement counts:
  it was measured once).
* Then the predictor is fitted on them and cross-validated; while its share of predictions within
  ``tolerance`` (10%) is at least ``floor`` (95%, user-settable), a trial takes the prediction
  (``latency_source: predicted``) and times nothing.
* Every ``every``-th trial is still measured, and records what the predictor said for it
  (``latency_predicted_ms``), so the predictor stays honest: each measurement joins the next fit, and a
  share that falls below the floor switches prediction off until it recovers.

Predicted latencies are never kept in the measurement cache, and never train the predictor.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import optuna

PREDICTED = "predicted"
MIN_MEASURED = 10  # fewer trials than this cannot be cross-validated usefully


@dataclass(frozen=True)
class PredictPolicy:
    after: int  # measured trials before predictions start (0: never predict)
    floor: float = 0.95  # cross-validated share within tolerance needed to predict
    every: int = 5  # still measure every k-th trial
    tolerance: float = 0.10

    def check(self) -> None:
        from searchsr.errors import UsageError

        if self.after and self.after < MIN_MEASURED:
            raise UsageError(f"--latency-predict-after must be 0 (never) or >= {MIN_MEASURED}, got {self.after}")
        if not 0 < self.floor <= 1:
            raise UsageError(f"--latency-predict-floor must be in (0, 1], got {self.floor}")
        if self.every < 1:
            raise UsageError(f"--latency-measure-every must be >= 1, got {self.every}")


class LatencyPlanner:
    """The driver's decision per trial: measure (None) or these predicted fields. It holds no study (the
    searcher's trial function, which Ray Tune pickles, holds the planner: never the storage URL)."""

    def __init__(self, policy: PredictPolicy, yardstick_ms: float) -> None:
        self.policy, self.yardstick_ms = policy, yardstick_ms
        self.fitted_on = -1
        self.predictor: Any = None
        self.share = 0.0

    def _refit(self, study: optuna.Study) -> None:
        from searchsr.latencyfit import cross_validate, fit_predictor, measurements

        found = measurements(study.get_trials(deepcopy=False))
        if len(found.archs) == self.fitted_on:
            return
        self.fitted_on = len(found.archs)
        if found.distinct < max(self.policy.after, MIN_MEASURED):
            self.predictor, self.share = None, 0.0
            return
        fit = {"lr_size": found.lr_size, "tolerance": self.policy.tolerance}
        self.share = cross_validate(found.archs, found.latencies_ms, **fit).share_within(self.policy.tolerance)
        self.predictor = fit_predictor(found.archs, found.latencies_ms, **fit)

    def plan(self, study: optuna.Study, number: int, arch: dict[str, Any]) -> dict[str, Any] | None:
        """None: measure trial ``number`` of ``study``. Else the latency fields a predicted trial records."""
        if not self.policy.after:
            return None
        self._refit(study)
        if self.predictor is None:
            return None
        try:
            predicted = float(self.predictor.predict(arch))
        except (ValueError, TypeError):  # an invalid arch: its trial fails with the reason
            return None
        said = {"latency_predicted_ms": predicted, "latency_predictor_share": self.share,
                "latency_predictor_trials": self.fitted_on}
        if self.share < self.policy.floor or number % self.policy.every == 0:
            return {"measure": True, **said}  # measured, and the prediction kept beside it as a check
        return {"measure": False, **said, "latency_ms": predicted, "latency_ratio": predicted / self.yardstick_ms,
                "latency_source": PREDICTED}
