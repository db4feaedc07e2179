"""``--latency-predict-after`` (``searchsr.latencypolicy``): trials are measured until the study has enough,
then predicted while the cross-validated predictor is good enough, every k-th still measured with the
prediction kept beside it; a predictor below the floor predicts nothing."""

from __future__ import annotations

import re

import optuna
import pytest
from optuna.trial import TrialState, create_trial

from searchsr.errors import UsageError
from searchsr.latencypolicy import LatencyPlanner, PredictPolicy
from tests.test_latencyfit import law, noisy, random_archs


def _study(archs: list[dict], latencies: list[float], source: str = "measured") -> optuna.Study:
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(directions=["maximize", "minimize"])
    for arch, ms in zip(archs, latencies):
        study.add_trial(create_trial(state=TrialState.PRUNED, user_attrs={
            "arch": arch, "latency_ms": ms, "latency_lr_size": "128x128", "latency_source": source}))
    return study


def test_measures_until_enough_then_predicts_and_still_checks_every_kth() -> None:
    archs = random_archs(40)
    study = _study(archs[:12], noisy([law(a) for a in archs[:12]]))
    planner = LatencyPlanner(PredictPolicy(after=15, every=5), yardstick_ms=10.0)
    assert planner.plan(study, 12, archs[20]) is None  # 12 measured: not yet
    for arch in archs[12:20]:
        study.add_trial(create_trial(state=TrialState.COMPLETE, values=[30.0, law(arch)],
                                     user_attrs={"arch": arch, "latency_ms": law(arch)}))
    predicted = planner.plan(study, 21, archs[30])
    assert predicted["measure"] is False and predicted["latency_source"] == "predicted"
    assert predicted["latency_ms"] == pytest.approx(law(archs[30]), rel=0.1)
    assert predicted["latency_ratio"] == pytest.approx(predicted["latency_ms"] / 10.0)
    assert predicted["latency_predictor_share"] >= 0.95 and predicted["latency_predictor_trials"] == 20
    checked = planner.plan(study, 25, archs[31])  # every 5th: measured, the prediction recorded beside it
    assert checked["measure"] is True and "latency_ms" not in checked
    assert checked["latency_predicted_ms"] == pytest.approx(law(archs[31]), rel=0.1)


def test_predictions_never_train_the_predictor_and_a_poor_one_predicts_nothing() -> None:
    import numpy as np

    archs = random_archs(30)
    rng = np.random.default_rng(0)
    study = _study(archs[:20], list(rng.uniform(5, 100, 20)))  # latencies the features cannot explain
    planner = LatencyPlanner(PredictPolicy(after=10), yardstick_ms=10.0)
    plan = planner.plan(study, 21, archs[25])
    assert plan["measure"] is True and plan["latency_predictor_share"] < 0.95
    only_predicted = _study(archs[:20], [law(a) for a in archs[:20]], source="predicted")
    assert LatencyPlanner(PredictPolicy(after=10), 10.0).plan(only_predicted, 21, archs[25]) is None
    assert LatencyPlanner(PredictPolicy(after=0), 10.0).plan(study, 21, archs[25]) is None  # off


@pytest.mark.parametrize("policy,says", [(PredictPolicy(after=3), "must be 0 (never) or >= 10"),
                                         (PredictPolicy(after=20, floor=1.5), "--latency-predict-floor"),
                                         (PredictPolicy(after=20, every=0), "--latency-measure-every")])
def test_bad_policies_are_one_line(policy: PredictPolicy, says: str) -> None:
    with pytest.raises(UsageError, match=re.escape(says)):
        policy.check()
