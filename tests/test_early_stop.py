"""Costs first and Pareto successive halving: the ranking by hand, then `run --early-stop pareto`
end to end (pruned trials, infeasible trials never trained, the front) and through a SIGKILL."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from searchsr.halving import (crowding_distances, default_first_rung, goes_on, nondominated_fronts, pareto_order,
                              rung_steps)
from searchsr.report import compute_report
from searchsr.storage import load_study, open_storage
from searchsr.trial import violated

ROOT = Path(__file__).resolve().parents[1]


def test_rungs_are_first_rung_times_powers_of_eta_below_the_schedule() -> None:
    assert rung_steps(1500, 56, 3) == (56, 168, 504)
    assert rung_steps(1000, 37, 3) == (37, 111, 333)
    assert rung_steps(100, 10, 2) == (10, 20, 40)  # 80 would save too little
    assert default_first_rung(1500) == 56 and rung_steps(4, default_first_rung(4), 2) == (1, 2)
    for bad in ((1500, 0, 3), (1500, 1500, 3), (1500, 10, 1)):
        with pytest.raises(ValueError):
            rung_steps(*bad)


def test_fronts_and_crowding_by_hand() -> None:
    points = [(1, 5), (2, 2), (5, 1), (3, 3), (4, 4), (6, 6)]  # losses
    assert nondominated_fronts(points) == [[0, 1, 2], [3], [4], [5]]
    assert crowding_distances([(1, 5), (2, 2), (5, 1)]) == [math.inf, 1.0 * (5 - 1) / 4 + (5 - 1) / 4, math.inf]
    # extremes of the first front, then its middle, then the later fronts in order
    assert pareto_order(dict(enumerate(points))) == [0, 2, 1, 3, 4, 5]


def test_goes_on_keeps_the_top_third_and_always_the_first_arrival() -> None:
    assert goes_on({7: (0.0, 1.0)}, 7)  # alone at the rung
    assert not goes_on({1: (-30.0, 5.0), 2: (-29.0, 6.0)}, 2)  # dominated: 1 of 2 goes on
    assert goes_on({1: (-30.0, 5.0), 2: (-29.0, 6.0)}, 1)
    assert not goes_on({1: (-30.0, 5.0), 2: (-29.0, 4.0)}, 2)  # a trade-off of two extremes: the earlier first
    assert goes_on({1: (-30.0, 5.0), 2: (-29.0, 4.0), 3: (-20.0, 9.0)}, 2, eta=1.5)
    members = {n: (-20.0 - n, 10.0 + n) for n in range(6)}  # one front of 6: only the 2 extremes go on
    assert [n for n in members if goes_on(members, n, eta=3)] == [0, 5]
    dominated = {n: (-20.0 + n, 10.0 + n) for n in range(9)}  # a chain: 0 dominates all; top 3 of 9
    assert [n for n in dominated if goes_on(dominated, n, eta=3)] == [0, 1, 2]


def test_rungs_that_do_not_fit_the_schedule_are_one_line(tmp_path: Path) -> None:
    out = subprocess.run([*_run(tmp_path, 1), "--first-rung", "4"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 2 and "the first rung must be between 1 and the schedule's 4 steps" in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1 and not (tmp_path / "s.db").exists()


def test_violated_names_each_broken_cost_constraint_and_leaves_psnr_for_later() -> None:
    costs = {"params": 5000, "latency_ms": 12.5}
    assert violated(["params <= 3000", "latency_ms <= 20", "psnr >= 30"], costs) == ["params <= 3000 (is 5000)"]
    assert violated(["params >= 6000"], costs) == ["params >= 6000 (is 5000)"]


def _run(tmp: Path, trials: int, *extra: str, schedule: str = "smoke") -> list[str]:
    return [sys.executable, "-m", "searchsr.cli", "run", "--space", str(ROOT / "spaces" / "tiny.yaml"),
            "--schedule", schedule, "--trials", str(trials), "--storage", f"sqlite:///{tmp}/s.db",
            "--runs-dir", str(tmp / "runs"), "--study", "es", "--latency-runs", "2", "--sampler", "random",
            "--enqueue", "", "--early-stop", "pareto", *extra]


def _trials(tmp: Path) -> list[optuna.trial.FrozenTrial]:
    try:
        return load_study("es", open_storage(f"sqlite:///{tmp}/s.db")).get_trials(deepcopy=False)
    except ValueError:
        return []


@pytest.mark.slow
def test_early_stop_prunes_at_rungs_and_never_trains_the_infeasible(tmp_path: Path) -> None:
    # objectives on exact costs (params) and one trial at a time: the decisions are deterministic
    out = subprocess.run(_run(tmp_path, 16, "--objectives", "psnr,params", "--concurrency", "1", "--eta", "2",
                              "--first-rung", "1", "--constraint", "params <= 3000"),
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    trials = _trials(tmp_path)
    reused = [t for t in trials if "same_as" in t.user_attrs]  # an architecture drawn again: not retrained
    complete = [t for t in trials if t.state == TrialState.COMPLETE and t not in reused]
    infeasible = [t for t in trials if "infeasible" in t.user_attrs]
    stopped = [t for t in trials if "stopped_at" in t.user_attrs]
    assert len(trials) == 16 and complete and infeasible and stopped and reused, [(t.state, t.user_attrs)
                                                                                  for t in trials]
    assert len(complete) + len(infeasible) + len(stopped) + len(reused) == 16
    for trial in reused:
        (earlier,) = [t for t in trials if t.number == trial.user_attrs["same_as"]]
        assert earlier.params == trial.params and trial.values == earlier.values
        assert trial.user_attrs["train_seconds"] == 0 and trial.user_attrs["run_dir"] == earlier.user_attrs["run_dir"]
    for trial in infeasible:  # costs first: recorded, never trained, off the front
        assert trial.state == TrialState.PRUNED and trial.user_attrs["train_seconds"] == 0
        assert trial.user_attrs["params"] > 3000 and trial.constraints["params <= 3000"] > 0
        assert not Path(trial.user_attrs["run_dir"]).exists()
    for trial in stopped:  # stopped at a rung, with the PSNR of every rung it reached
        assert trial.state == TrialState.PRUNED and trial.user_attrs["params"] <= 3000
        rungs = trial.user_attrs["rungs"]
        assert sorted(map(int, rungs)) == list(range(1, trial.user_attrs["stopped_at"] + 1))
        assert all(r["psnr"] > 10 and r["params"] == trial.user_attrs["params"] for r in rungs.values())
        assert not (Path(trial.user_attrs["run_dir"]) / "weights.safetensors").exists()
        assert trial.user_attrs["arch"]["n_blocks"] >= 1  # named: `latency fit` learns from stopped trials too
    for trial in complete:  # every completed trial trained the whole schedule, through both rungs
        assert trial.user_attrs["steps"] == 4 and sorted(trial.user_attrs["rungs"]) == ["1", "2"]
        assert (Path(trial.user_attrs["run_dir"]) / "weights.safetensors").is_file()
    assert "trial(s) stopped" in out.stderr and "infeasible, not trained: params <= 3000" in out.stdout
    front = subprocess.run([sys.executable, "-m", "searchsr.cli", "front", "--study", "es", "--storage",
                            f"sqlite:///{tmp_path}/s.db", "--json"], capture_output=True, text=True, timeout=120)
    numbers = {r["number"] for r in json.loads(front.stdout)}
    assert numbers and numbers <= {t.number for t in complete}  # neither pruned nor reused trials
    report = compute_report(load_study("es", open_storage(f"sqlite:///{tmp_path}/s.db")))
    assert report.outcomes == {"stopped at a rung": len(stopped), "infeasible, not trained": len(infeasible)}
    curves = {c.number: c for c in report.curves}  # the learning curves the report draws
    assert {n for n, c in curves.items() if c.outcome == "stopped"} == {t.number for t in stopped}
    assert all([s for s, _ in curves[t.number].points] == [1, 2, 4] for t in complete)


@pytest.mark.slow
def test_sigkill_mid_rung_then_rerun_resumes_from_the_checkpoint(tmp_path: Path) -> None:
    (tmp_path / "rungs.yaml").write_text("steps: 240\nbatch_size: 2\npatch_size: 16\nlr: 5.0e-3\n"
                                         "milestones: [200]\nlog_every: 10\ncheckpoint_every: 20\n")
    args = _run(tmp_path, 4, "--concurrency", "2", "--first-rung", "10", "--stale-after", "4",
                schedule=str(tmp_path / "rungs.yaml"))
    driver = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:  # a running trial past its first rung
        if any(t.state == TrialState.RUNNING and t.user_attrs.get("rungs") for t in _trials(tmp_path)):
            break
        time.sleep(0.2)
    os.killpg(driver.pid, signal.SIGKILL)
    driver.wait()
    before = {t.number: t for t in _trials(tmp_path)}
    lost = {n: t for n, t in before.items() if t.state == TrialState.RUNNING and t.user_attrs.get("rungs")}
    assert lost, "no trial was killed past a rung"
    time.sleep(5)  # past --stale-after

    rerun = subprocess.run(args, capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    after = {t.number: t for t in _trials(tmp_path)}
    for number, trial in before.items():
        if trial.state in (TrialState.COMPLETE, TrialState.PRUNED):  # nothing finished is touched
            assert after[number].user_attrs == trial.user_attrs
    for number, trial in lost.items():
        assert after[number].state == TrialState.FAIL
        (retry,) = [t for t in after.values() if t.user_attrs.get("retry_of") == number]
        assert retry.params == trial.params and retry.state in (TrialState.COMPLETE, TrialState.PRUNED)
        for step, entry in trial.user_attrs["rungs"].items():  # replayed from the copied run, not retrained:
            again = retry.user_attrs["rungs"][step]  # the very seconds it took the first time (latency is
            assert [again[k] for k in ("psnr", "ssim", "train_seconds")] == [  # measured again)
                entry[k] for k in ("psnr", "ssim", "train_seconds")]
    assert not [t for t in after.values() if t.state in (TrialState.RUNNING, TrialState.WAITING)]
