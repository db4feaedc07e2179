"""Studies you can trust (issue 12): one latency yardstick per study, resume right after a crash,
SIGTERM, and a study that refuses what would make its trials incomparable."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import optuna
import pytest
from optuna.trial import TrialState
from PIL import Image

from conftest import wait_mid_study
from searchsr.storage import load_study, open_storage

ROOT = Path(__file__).resolve().parents[1]
XLITE_SPACE = "params:\n" + "".join(f"  {k}: {json.dumps(v)}\n" for k, v in
                                    {"nf": 16, "n_blocks": 8, "scale": 4}.items())


def _run(tmp: Path, trials: int, *extra: str, space: str | None = None) -> list[str]:
    return [sys.executable, "-m", "searchsr.cli", "run", "--space", space or str(ROOT / "spaces" / "tiny.yaml"),
            "--schedule", "smoke", "--trials", str(trials), "--storage", f"sqlite:///{tmp}/s.db", "--runs-dir",
            str(tmp / "runs"), "--study", "t", "--latency-runs", "2", "--sampler", "random", "--enqueue", "", *extra]


def _trials(tmp: Path) -> list[optuna.trial.FrozenTrial]:
    return load_study("t", open_storage(f"sqlite:///{tmp}/s.db")).get_trials(deepcopy=False)


def _ok(proc: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


@pytest.mark.slow
def test_every_run_and_driver_of_a_study_uses_its_stored_yardstick(tmp_path: Path) -> None:
    space = tmp_path / "xlite.yaml"
    space.write_text(XLITE_SPACE)
    space.write_text(XLITE_SPACE.replace('  n_blocks: 8\n', '  n_blocks: {"int": [8, 10]}\n'))
    first = _ok(subprocess.run(_run(tmp_path, 1, space=str(space)), capture_output=True, text=True, timeout=600))
    assert "latency yardstick: XLITE" in first.stderr
    # two other depths queued, one for each driver: three networks, so none reuses another's result
    study = load_study("t", open_storage(f"sqlite:///{tmp_path}/s.db"))
    for n_blocks in sorted({8, 9, 10} - {study.trials[0].params["n_blocks"]}):
        study.enqueue_trial({"n_blocks": n_blocks})
    drivers = [subprocess.Popen(_run(tmp_path, 1, "--seed", str(seed), space=str(space)), stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True) for seed in (1, 2)]  # two drivers at once
    for driver in drivers:
        _, err = driver.communicate(timeout=600)
        assert driver.returncode == 0, err[-3000:]
    study = load_study("t", open_storage(f"sqlite:///{tmp_path}/s.db"))
    yardstick = study.user_attrs["yardstick"]["xlite_ms"]
    trials = [t for t in study.get_trials(deepcopy=False) if t.state == TrialState.COMPLETE]
    assert len(trials) == 3 and all(t.user_attrs["arch"]["nf"] == 16 for t in trials)
    for t in trials:  # three depths in three processes: milliseconds differ exactly as the ratios do
        assert t.user_attrs["xlite_ms"] == yardstick
        assert t.user_attrs["latency_ms"] == pytest.approx(t.user_attrs["latency_ratio"] * yardstick, rel=1e-12)
        assert t.user_attrs["latency_host"] and t.user_attrs["latency_lr_size"] == "128x128"
    # each driver's own XLITE time of the day is kept too: the drift the yardstick takes out
    assert len({t.user_attrs["xlite_ms_measured"] for t in trials}) >= 2
    front = _ok(subprocess.run([sys.executable, "-m", "searchsr.cli", "front", "--study", "t", "--storage",
                                f"sqlite:///{tmp_path}/s.db"], capture_output=True, text=True))
    assert f"latency yardstick: XLITE {yardstick:.2f} ms at 128x128 LR on " in front.stdout  # where users look
    from searchsr.report import compute_report

    assert compute_report(study).yardstick.startswith(f"XLITE {yardstick:.2f} ms")


def test_a_study_from_before_yardsticks_takes_its_earliest_xlite_time(tmp_path: Path) -> None:
    from searchsr.study import settle_yardstick

    study = optuna.create_study(storage=open_storage(f"sqlite:///{tmp_path}/s.db"), directions=["maximize"])
    for number, ms in ((0, 80.78), (1, 110.35)):
        study.add_trial(optuna.trial.create_trial(value=30.0, user_attrs={"xlite_ms": ms, "host": "h"}))
    measured = {"xlite_ms": 55.0, "host": "here", "threads": 1, "lr_size": "128x128", "measured": "now"}
    yardstick, note = settle_yardstick(study, measured)
    assert yardstick["xlite_ms"] == 80.78 and yardstick["from_trial"] == 0
    assert "no stored latency yardstick" in note and "80.78 ms (trial 0)" in note
    again, note = settle_yardstick(study, {**measured, "xlite_ms": 60.0})  # stored: later runs keep it
    assert again["xlite_ms"] == 80.78 and note is None
    fresh = optuna.create_study(storage=open_storage(f"sqlite:///{tmp_path}/s.db"), directions=["maximize"])
    assert settle_yardstick(fresh, measured) == (measured, None)


def _wait_mid_study(tmp: Path, driver: subprocess.Popen) -> None:
    def states() -> list[TrialState]:
        try:
            return [t.state for t in _trials(tmp)]
        except ValueError:  # the study does not exist yet
            return []
    wait_mid_study(states, driver)


@pytest.mark.slow
def test_sigkill_then_an_immediate_rerun_recovers_the_lost_trials(tmp_path: Path) -> None:
    """The default --stale-after (60 s) has not passed: the dead driver on this host is seen at once."""
    driver = subprocess.Popen(_run(tmp_path, 8, "--concurrency", "2"), stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL, start_new_session=True)
    _wait_mid_study(tmp_path, driver)
    os.killpg(driver.pid, signal.SIGKILL)
    driver.wait()
    before = {t.number: t for t in _trials(tmp_path)}
    lost = [n for n, t in before.items() if t.state == TrialState.RUNNING]
    assert lost
    rerun = _ok(subprocess.run(_run(tmp_path, 2), capture_output=True, text=True, timeout=600))
    after = {t.number: t for t in _trials(tmp_path)}
    for number in lost:
        assert after[number].state == TrialState.FAIL and "driver" in after[number].user_attrs["fail_reason"]
        retry = [t for t in after.values() if t.user_attrs.get("retry_of") == number]
        assert len(retry) == 1 and retry[0].params == before[number].params
    for number, trial in before.items():
        if trial.state == TrialState.COMPLETE:
            assert after[number].values == trial.values
    assert not [t for t in after.values() if t.state == TrialState.RUNNING]
    assert "(retry of " in rerun.stdout  # the run's trial line says so


@pytest.mark.slow
def test_sigterm_is_handled_like_ctrl_c(tmp_path: Path) -> None:
    driver = subprocess.Popen(_run(tmp_path, 6, "--concurrency", "2"), stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True)
    _wait_mid_study(tmp_path, driver)
    driver.send_signal(signal.SIGTERM)  # what timeout, SLURM and Kubernetes send: to the driver
    _, stderr = driver.communicate(timeout=300)
    assert driver.returncode == 143, stderr[-3000:]
    assert stderr.strip().splitlines()[-1].startswith("searchsr: terminated: ")
    assert "Traceback" not in stderr and "SIGTERM received" not in stderr and "PC: @" not in stderr
    trials = _trials(tmp_path)
    cut = [t for t in trials if t.state == TrialState.FAIL]
    assert cut and all("terminated (SIGTERM)" in t.user_attrs["fail_reason"] for t in cut)
    assert not [t for t in trials if t.state == TrialState.RUNNING]
    waiting = [t for t in trials if t.state == TrialState.WAITING]
    assert sorted(t.user_attrs["retry_of"] for t in waiting) == sorted(t.number for t in cut)


def _image_folder(path: Path, n: int) -> Path:
    path.mkdir()
    for i in range(n):
        Image.fromarray(np.full((224, 224, 3), 40 * i, np.uint8)).save(path / f"{i}.png")
    return path


@pytest.mark.slow
def test_a_study_is_continued_only_with_its_schedule_data_space_and_precision(tmp_path: Path) -> None:
    data = _image_folder(tmp_path / "data", 2)
    _ok(subprocess.run(_run(tmp_path, 1, "--train-dir", str(data), "--val-dir", str(data)), capture_output=True,
                       text=True, timeout=600))
    before = (tmp_path / "s.db").read_bytes()
    other = _image_folder(tmp_path / "other", 3)
    (tmp_path / "space.yaml").write_text("params:\n  nf: {choices: [8, 24]}\n  n_blocks: 1\n")
    for change, message in ((("--schedule", "short"), "schedule smoke; this run has schedule short"),
                            (("--val-dir", str(other)), "validation data"),
                            (("--space", str(tmp_path / "space.yaml")), "space"),
                            (("--precision", "bf16"), "precision fp32; this run has precision bf16")):
        out = subprocess.run(_run(tmp_path, 1, "--train-dir", str(data), "--val-dir", str(data), *change),
                             capture_output=True, text=True, timeout=600)
        assert out.returncode == 2 and message in out.stderr and "not be comparable" in out.stderr, out.stderr
        assert len(out.stderr.strip().splitlines()) == 1
        assert (tmp_path / "s.db").read_bytes() == before  # nothing written, no trial left RUNNING
    moved = tmp_path / "moved"
    data.rename(moved)  # the same photos in another folder are the same data
    _ok(subprocess.run(_run(tmp_path, 1, "--train-dir", str(moved), "--val-dir", str(moved)), capture_output=True,
                       text=True, timeout=600))
    assert all(Path(t.user_attrs["run_dir"]).is_absolute() for t in _trials(tmp_path))


@pytest.mark.slow
def test_runs_folder_of_another_study_is_refused(tmp_path: Path) -> None:
    _ok(subprocess.run(_run(tmp_path, 1), capture_output=True, text=True, timeout=600))
    (tmp_path / "s.db").unlink()  # a deleted storage; the same default study name and --runs-dir
    out = subprocess.run(_run(tmp_path, 1), capture_output=True, text=True, timeout=600)
    assert out.returncode == 2 and "holds the trial folders of another study" in out.stderr, out.stderr
    assert len(out.stderr.strip().splitlines()) == 1
    _ok(subprocess.run(_run(tmp_path, 1, "--runs-dir", str(tmp_path / "fresh")), capture_output=True, text=True,
                       timeout=600))


@pytest.mark.slow
def test_gpus_the_cluster_does_not_have_are_one_line(tmp_path: Path) -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    out = subprocess.run(_run(tmp_path, 1, "--gpus-per-trial", "1"), capture_output=True, text=True, timeout=300)
    assert out.returncode == 2 and "0 GPU(s)" in out.stderr and "asks for 1 CPU(s) and 1 GPU(s)" in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1, out.stderr
    assert not load_study_names(tmp_path)


def load_study_names(tmp: Path) -> list[str]:
    from searchsr.storage import study_names

    return study_names(open_storage(f"sqlite:///{tmp}/s.db")) if (tmp / "s.db").is_file() else []


@pytest.mark.slow
def test_a_run_where_every_trial_fails_exits_non_zero(tmp_path: Path) -> None:
    (tmp_path / "diverge.yaml").write_text("steps: 4\nbatch_size: 2\npatch_size: 16\nlr: 1.0e+30\nmilestones: [2]\n"
                                           "log_every: 1\n")
    out = subprocess.run(_run(tmp_path, 2, "--schedule", str(tmp_path / "diverge.yaml"), "--concurrency", "1"),
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 1 and "none of the 2 new trials completed" in out.stderr, out.stderr[-3000:]
    assert out.stderr.strip().splitlines()[-1].startswith("searchsr: error: none of the 2")
