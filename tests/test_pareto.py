"""Front objects computed from a study: membership, baselines, hypervolume."""

from __future__ import annotations

import optuna
import pytest
from optuna.distributions import IntDistribution
from optuna.trial import TrialState, create_trial

from searchsr.pareto import compute_front, front_records, front_table, hypervolume_history, reference_point


def _study(points: list[tuple[float, float, dict]]) -> optuna.Study:
    study = optuna.create_study(directions=["maximize", "minimize"])
    study.set_metric_names(["psnr", "latency"])
    for i, (psnr, latency, attrs) in enumerate(points):
        constraints = attrs.pop("_constraints", None)
        trial = create_trial(values=[psnr, latency], params={"nf": 8 * (i + 1)},
                             distributions={"nf": IntDistribution(8, 200)},
                             user_attrs={"psnr": psnr, "latency_ms": latency, "arch": {"nf": 8 * (i + 1)}, **attrs},
                             system_attrs={} if constraints is None else {"constraints:latency_ms <= 1": constraints[0]})
        study.add_trial(trial)
    study.add_trial(create_trial(state=TrialState.FAIL))
    return study


def test_front_membership_baselines_and_hypervolume() -> None:
    study = _study([(30.0, 10.0, {"preset": "xlite"}),  # 0 front
                    (32.0, 40.0, {}),                    # 1 front
                    (29.0, 20.0, {}),                    # 2 dominated by 0
                    (31.0, 15.0, {}),                    # 3 front
                    (33.0, 5.0, {"_constraints": [1.0]})])  # 4 best but infeasible
    front = compute_front(study)
    assert [p.number for p in front.points] == [0, 1, 3]
    assert [b.number for b in front.baselines] == [0] and front.points[0].preset == "xlite"
    assert front.complete_trials == 4
    # reference: worst psnr 29 - 0.1*3, worst latency 40 + 0.1*30
    assert front.reference_point == pytest.approx({"psnr": 28.7, "latency": 43.0})
    # staircase area in (loss = -psnr, latency) space, computed by hand
    expected = (30 - 28.7) * (43 - 10) + (31 - 30) * (43 - 15) + (32 - 31) * (43 - 40)
    assert front.hypervolume == pytest.approx(expected)
    table = front_table(front)
    assert list(table["trial"]) == [0, 1, 3] and list(table["baseline"]) == ["xlite", "", ""]
    records = front_records(front)
    assert records[1]["number"] == 1 and records[1]["psnr"] == 32.0 and records[1]["arch"] == {"nf": 16}
    assert [r["number"] for r in records] == list(table["trial"]) and all(r["front"] for r in records)


def test_off_front_baseline_is_listed_in_every_format() -> None:
    study = _study([(29.0, 20.0, {"preset": "xlite"}), (30.0, 10.0, {})])  # xlite dominated by trial 1
    front = compute_front(study)
    assert [p.number for p in front.points] == [1]
    assert list(front_table(front)["trial"]) == [1, 0]
    assert [(r["number"], r["front"], r["baseline"]) for r in front_records(front)] == [(1, True, None),
                                                                                      (0, False, "xlite")]


def test_hypervolume_history_is_non_decreasing() -> None:
    study = _study([(29.0, 20.0, {}), (30.0, 10.0, {}), (28.0, 30.0, {}), (32.0, 40.0, {}), (31.0, 15.0, {})])
    history = hypervolume_history(study)
    values = [hv for _, hv in history]
    assert len(values) == 5 and values[0] > 0
    assert all(b >= a for a, b in zip(values, values[1:]))
    assert values[-1] == pytest.approx(compute_front(study).hypervolume)


def test_empty_study_has_empty_front() -> None:
    study = optuna.create_study(directions=["maximize", "minimize"])
    study.set_metric_names(["psnr", "latency"])
    front = compute_front(study)
    assert front.points == () and front.hypervolume == 0.0 and front_table(front).empty


def test_reference_point_is_beyond_every_trial() -> None:
    study = _study([(30.0, 10.0, {}), (30.0, 10.0, {})])
    trials = study.get_trials(states=(TrialState.COMPLETE,))
    ref = reference_point(trials, compute_front(study).objectives)
    assert ref[0] > -30.0 and ref[1] > 10.0
