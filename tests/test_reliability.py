"""A search survives being killed: nothing completed is lost or repeated, lost trials are re-queued."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from conftest import session_processes, wait_mid_study
from searchsr.storage import load_study, open_storage

ROOT = Path(__file__).resolve().parents[1]


def _args(tmp: Path, trials: int) -> list[str]:
    return [sys.executable, "-m", "searchsr.cli", "run", "--space", str(ROOT / "spaces" / "tiny.yaml"),
            "--schedule", "smoke", "--trials", str(trials), "--storage", f"sqlite:///{tmp}/s.db",
            "--runs-dir", str(tmp / "runs"), "--study", "crash", "--latency-runs", "2", "--sampler", "random",
            "--concurrency", "2", "--stale-after", "4", "--enqueue", ""]


def _states(tmp: Path) -> list[optuna.trial.FrozenTrial]:
    try:
        return load_study("crash", open_storage(f"sqlite:///{tmp}/s.db")).get_trials(deepcopy=False)
    except ValueError:
        return []


def _wait_for_completed_and_running(tmp: Path, driver: subprocess.Popen) -> None:
    wait_mid_study(lambda: [t.state for t in _states(tmp)], driver)


@pytest.mark.slow
def test_sigkill_then_rerun_loses_and_duplicates_nothing(tmp_path: Path) -> None:
    driver = subprocess.Popen(_args(tmp_path, 8), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                              start_new_session=True)
    _wait_for_completed_and_running(tmp_path, driver)
    os.killpg(driver.pid, signal.SIGKILL)  # driver and the local Ray it started
    driver.wait()
    before = {t.number: t for t in _states(tmp_path)}
    completed = {n: t for n, t in before.items() if t.state == TrialState.COMPLETE}
    lost = {n: t for n, t in before.items() if t.state == TrialState.RUNNING}
    assert completed and lost
    time.sleep(5)  # past --stale-after

    rerun = subprocess.run(_args(tmp_path, 3), capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    after = {t.number: t for t in _states(tmp_path)}
    for number, trial in completed.items():  # untouched
        assert after[number].state == TrialState.COMPLETE
        assert (after[number].values, after[number].user_attrs) == (trial.values, trial.user_attrs)
    for number, trial in lost.items():
        assert after[number].state == TrialState.FAIL
        assert "no heartbeat" in after[number].user_attrs["fail_reason"]
        retries = [t for t in after.values() if t.user_attrs.get("retry_of") == number]
        assert len(retries) == 1 and retries[0].params == trial.params  # re-queued exactly once
        assert retries[0].state == TrialState.COMPLETE
    new_complete = [t for n, t in after.items() if n not in before and t.state == TrialState.COMPLETE]
    assert len(new_complete) == 3  # --trials 3: the re-queued ones first
    assert not [t for t in after.values() if t.state in (TrialState.RUNNING, TrialState.WAITING)]


@pytest.mark.slow
def test_failing_trials_are_recorded_and_max_failures_stops(tmp_path: Path) -> None:
    (tmp_path / "space.yaml").write_text("params:\n  nf: {int: [8, 16], step: 8}\n  n_blocks: 1\n")
    (tmp_path / "diverge.yaml").write_text("steps: 4\nbatch_size: 2\npatch_size: 16\nlr: 1.0e+30\nmilestones: [2]\n"
                                           "log_every: 1\n")
    out = subprocess.run([sys.executable, "-m", "searchsr.cli", "run", "--space", str(tmp_path / "space.yaml"),
                          "--schedule", str(tmp_path / "diverge.yaml"), "--trials", "4", "--concurrency", "1",
                          "--max-failures", "2", "--storage", f"sqlite:///{tmp_path}/s.db", "--runs-dir",
                          str(tmp_path / "runs"), "--study", "crash", "--latency-runs", "2", "--enqueue", ""],
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 1 and "2 trials failed (--max-failures 2)" in out.stderr, out.stderr[-2000:]
    assert "Traceback" not in out.stderr
    failed = [t for t in _states(tmp_path) if t.state == TrialState.FAIL]
    assert len(failed) == 2 and len(_states(tmp_path)) == 2
    assert all("DivergedError" in t.user_attrs["fail_reason"] for t in failed)


def _tiny_run(tmp: Path, trials: int, *extra: str) -> list[str]:
    return [sys.executable, "-m", "searchsr.cli", "run", "--space", str(ROOT / "spaces" / "tiny.yaml"),
            "--schedule", "smoke", "--trials", str(trials), "--storage", f"sqlite:///{tmp}/s.db",
            "--runs-dir", str(tmp / "runs"), "--study", "crash", "--latency-runs", "2", "--sampler", "random",
            "--concurrency", "1", "--enqueue", "", *extra]


@pytest.mark.slow
def test_architectures_that_raise_or_exhaust_memory_fail_alone(tmp_path: Path) -> None:
    """Users enqueue their own configs through Optuna; Optuna accepts out-of-range values, so a
    trial can carry an invalid arch (ValueError) or one too big to allocate (a real OOM)."""
    from searchsr.objectives import parse_objectives
    from searchsr.study import prepare_study

    study = prepare_study("crash", open_storage(f"sqlite:///{tmp_path}/s.db"), parse_objectives("psnr,latency"),
                          "random", 0, 0)
    base = {"n_blocks": 1, "se": False, "act": "relu"}
    study.enqueue_trial({**base, "nf": -8})
    study.enqueue_trial({**base, "nf": 400_000})  # ~1e12 weights: far beyond any machine's memory
    out = subprocess.run(_tiny_run(tmp_path, 3), capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "Traceback" not in out.stderr
    trials = sorted(_states(tmp_path), key=lambda t: t.number)
    assert [t.state for t in trials] == [TrialState.FAIL, TrialState.FAIL, TrialState.COMPLETE]
    # the invalid arch is a user error (searchsr.errors.UsageError, a ValueError)
    assert "UsageError" in trials[0].user_attrs["fail_reason"] and "-8" in trials[0].user_attrs["fail_reason"]
    assert "memory" in trials[1].user_attrs["fail_reason"].lower()
    assert "trial 0: FAILED (UsageError: nf must be" in out.stdout, out.stdout


@pytest.mark.slow
def test_a_worker_killed_mid_training_fails_its_trial_and_the_study_goes_on(tmp_path: Path) -> None:
    """SIGKILL of the trial's worker process: what the kernel's OOM killer does."""
    driver = subprocess.Popen(_tiny_run(tmp_path, 3), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              start_new_session=True)
    deadline, victim = time.monotonic() + 240, None
    while victim is None and time.monotonic() < deadline:
        victim = next((pid for pid, title in session_processes(driver.pid).items()  # Tune trial actors
                       if b"ImplicitFunc" in title), None)
        time.sleep(0.2)
    assert victim is not None, "no trial worker ever started"
    os.kill(victim, signal.SIGKILL)
    stdout, stderr = driver.communicate(timeout=600)
    assert driver.returncode == 0, stderr[-2000:]
    trials = _states(tmp_path)
    failed = [t for t in trials if t.state == TrialState.FAIL]
    assert len(trials) == 3 and len(failed) == 1, [t.state for t in trials]
    assert "died" in failed[0].user_attrs["fail_reason"], failed[0].user_attrs["fail_reason"]
    assert sum(t.state == TrialState.COMPLETE for t in trials) == 2


@pytest.mark.slow
def test_ctrl_c_keeps_what_finished_and_requeues_what_was_cut(tmp_path: Path) -> None:
    driver = subprocess.Popen(_tiny_run(tmp_path, 6), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              start_new_session=True)
    _wait_for_completed_and_running(tmp_path, driver)
    os.killpg(driver.pid, signal.SIGINT)  # what a terminal's Ctrl-C does: the driver and its local Ray
    _, stderr = driver.communicate(timeout=300)
    assert driver.returncode == 130, stderr[-2000:]
    assert stderr.strip().splitlines()[-1].startswith("searchsr: interrupted: ") and "Traceback" not in stderr
    trials = _states(tmp_path)
    cut = [t for t in trials if t.state == TrialState.FAIL]
    assert cut and all("interrupted" in t.user_attrs["fail_reason"] for t in cut)
    assert not [t for t in trials if t.state == TrialState.RUNNING]
    waiting = [t for t in trials if t.state == TrialState.WAITING]
    assert sorted(t.user_attrs["retry_of"] for t in waiting) == sorted(t.number for t in cut)
