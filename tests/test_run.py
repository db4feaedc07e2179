"""`searchsr run` end to end on the tiny space: Optuna + Ray Tune + SQLite, continued, then `front`."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import optuna
import pytest
from PIL import Image

from searchsr.costcache import cache_size
from searchsr.storage import load_study, mask_url, open_storage
from searchsr.study import prepare_study
from searchsr.objectives import parse_objectives

ROOT = Path(__file__).resolve().parents[1]
METRICS = ("psnr", "ssim", "latency_ms", "latency_ratio", "flops", "params", "activations", "memory", "run_dir",
           "host", "node_id", "train_seconds")


def _searchsr(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "searchsr.cli", *args], capture_output=True, text=True, cwd=cwd,
                          timeout=600)


def _run_args(tmp: Path, trials: int, *extra: str) -> list[str]:
    return ["run", "--space", str(ROOT / "spaces" / "tiny.yaml"), "--schedule", "smoke", "--trials", str(trials),
            "--storage", f"sqlite:///{tmp}/s.db", "--runs-dir", str(tmp / "runs"), "--study", "t",
            "--latency-runs", "2", "--sampler", "random", "--objectives", "psnr,latency", *extra]


@pytest.mark.slow
def test_run_records_everything_and_continues(tmp_path: Path) -> None:
    first = _searchsr(*_run_args(tmp_path, 4))
    assert first.returncode == 0, first.stderr[-2000:]
    assert "Pareto front of study 't'" in first.stdout and "hypervolume" in first.stdout
    assert "next:\n  searchsr report --study t --storage" in first.stdout  # what to run on it next
    assert "Traceback" not in first.stderr
    assert "0 trial(s) so far, 4 new (1 queued first)" in first.stderr  # the queued XLITE has not run yet
    study = load_study("t", open_storage(f"sqlite:///{tmp_path}/s.db"))
    assert study.metric_names == ["psnr", "latency"]
    complete = study.get_trials(states=(optuna.trial.TrialState.COMPLETE,))
    assert len(study.trials) == 4 and len(complete) == 4
    xlite = [t for t in complete if t.user_attrs.get("preset") == "xlite"]
    assert len(xlite) == 1 and xlite[0].user_attrs["params"] == 17979
    for trial in complete:
        assert all(key in trial.user_attrs for key in METRICS), sorted(trial.user_attrs)
        assert trial.values == [trial.user_attrs["psnr"], trial.user_attrs["latency_ms"]]
        assert Path(trial.user_attrs["run_dir"], "weights.safetensors").is_file()
        assert trial.user_attrs["arch"]["nf"] in (8, 16)

    second = _searchsr(*_run_args(tmp_path, 2))  # same study: continues, xlite not queued again
    assert second.returncode == 0, second.stderr[-2000:]
    study = load_study("t", open_storage(f"sqlite:///{tmp_path}/s.db"))
    assert len(study.trials) == 6
    assert sum(t.user_attrs.get("preset") == "xlite" for t in study.trials) == 1

    out = _searchsr("front", "--study", "t", "--storage", f"sqlite:///{tmp_path}/s.db", "--json")
    records = json.loads(out.stdout)
    assert out.returncode == 0 and records and all({"number", "psnr", "latency", "arch"} <= set(r) for r in records)
    front_numbers = {t.number for t in study.best_trials}
    assert {r["number"] for r in records if r["front"]} == front_numbers
    xlite = [t.number for t in study.trials if t.user_attrs.get("preset") == "xlite"]
    assert {r["number"] for r in records} == front_numbers | set(xlite)  # the baseline row, on the front or not
    csv = _searchsr("front", "--study", "t", "--storage", f"sqlite:///{tmp_path}/s.db", "--csv")
    assert csv.stdout.splitlines()[0].startswith("trial,front,baseline,nf,N")
    rows = csv.stdout.splitlines()[1:]  # one rule for the table, --csv and --json: the same rows
    assert sorted(int(row.split(",")[0]) for row in rows) == sorted(r["number"] for r in records)


@pytest.mark.parametrize("change,message", [
    (("--objectives", "psnr,speed"), "unknown objective 'speed'"),
    (("--sampler", "cmaes"), "--sampler must be one of"),
    (("--space", "nope.yaml"), "nope.yaml"),
    (("--trials", "0"), "--trials must be >= 1"),
    (("--constraint", "latency < 3"), "--constraint"),
    (("--schedule", "forever"), "forever"),
    (("--study", "../escape"), "--study must be"),
    (("--train-dir", "/nonexistent/dir"), "/nonexistent/dir"),
    (("--early-stop", "asha"), "--early-stop: invalid choice"),
    (("--eta", "1"), "--eta must be >= 2"),
    (("--first-rung", "2"), "add --early-stop pareto"),
    (("--enqueue", "paper-9-9"), "unknown preset 'paper-9-9'"),
])
def test_run_rejects_bad_input_before_writing(tmp_path: Path, change: tuple[str, str], message: str) -> None:
    args = _run_args(tmp_path, 1)
    flag, value = change
    if flag in args:
        args[args.index(flag) + 1] = value
    else:
        args += [flag, value]
    out = _searchsr(*args)
    assert out.returncode == 2
    assert message in out.stderr and len(out.stderr.strip().splitlines()) == 1, out.stderr
    assert not (tmp_path / "s.db").exists() and not (tmp_path / "runs").exists()


def test_storage_errors_mask_passwords() -> None:
    url = "postgresql+psycopg://user:s3cret@127.0.0.1:1/nodb"
    assert "s3cret" not in mask_url(url) and "***" in mask_url(url)
    with pytest.raises(ValueError) as err:
        open_storage(url)
    assert "s3cret" not in str(err.value) and "cannot open storage" in str(err.value)


def test_continuing_with_other_objectives_is_refused(tmp_path: Path) -> None:
    storage = open_storage(f"sqlite:///{tmp_path}/s.db")
    prepare_study("x", storage, parse_objectives("psnr,latency"), "tpe", 0, 4)
    with pytest.raises(ValueError, match="optimises psnr,latency, not psnr,flops"):
        prepare_study("x", storage, parse_objectives("psnr,flops"), "tpe", 0, 4)


@pytest.mark.parametrize("change,message", [
    (("--objectives", "psnr,flops"), "optimises psnr,latency, not psnr,flops"),
    (("--space", str(ROOT / "tests" / "test_run.py")), "test_run.py"),
])
def test_bad_input_leaves_an_existing_storage_untouched(tmp_path: Path, change: tuple[str, str],
                                                        message: str) -> None:
    storage = open_storage(f"sqlite:///{tmp_path}/s.db")
    prepare_study("t", storage, parse_objectives("psnr,latency"), "random", 0, 1)
    storage.remove_session()
    storage.engine.dispose()
    before = (tmp_path / "s.db").read_bytes()
    args = _run_args(tmp_path, 1)
    args[args.index(change[0]) + 1] = change[1]
    out = _searchsr(*args)
    assert out.returncode == 2 and message in out.stderr and len(out.stderr.strip().splitlines()) == 1, out.stderr
    assert (tmp_path / "s.db").read_bytes() == before and not (tmp_path / "runs").exists()


def test_unreachable_storage_is_one_line(tmp_path: Path) -> None:
    args = _run_args(tmp_path, 1)
    args[args.index("--storage") + 1] = "postgresql+psycopg://me:pw@127.0.0.1:9/none"
    out = _searchsr(*args)
    assert out.returncode == 2 and "cannot open storage" in out.stderr and "pw@" not in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1 and not (tmp_path / "runs").exists()


def test_run_hands_workers_absolute_paths(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Ray workers run in their own working directories: relative user paths must not reach them."""
    from searchsr.cli import build_parser
    from searchsr.cli.search import settings_from_args

    for name in ("train", "val"):
        (tmp_path / name).mkdir()
        Image.fromarray(np.full((64, 64, 3), 128, np.uint8)).save(tmp_path / name / "a.png")
    (tmp_path / "mine.yaml").write_text((ROOT / "searchsr" / "schedules" / "smoke.yaml").read_text())
    monkeypatch.chdir(tmp_path)
    args = build_parser().parse_args(_run_args(Path("."), 1, "--train-dir", "train", "--val-dir", "val",
                                               "--schedule", "mine.yaml"))
    settings = settings_from_args(args)
    settings.check()
    config = settings.worker_config()
    assert config["train_dir"] == str(tmp_path / "train") and config["val_dir"] == str(tmp_path / "val")
    assert config["schedule"] == str(tmp_path / "mine.yaml") and config["runs_root"] == str(tmp_path / "runs" / "t")
    shipped = settings_from_args(build_parser().parse_args(_run_args(Path("."), 1))).worker_config()
    assert shipped["schedule"] == "smoke"


FAKE_DEVICE = """
import json, pathlib, sys, time
counter = pathlib.Path(sys.argv[1])
call = int(counter.read_text()) if counter.exists() else 0
counter.write_text(str(call + 1))
assert pathlib.Path(sys.argv[2]).read_bytes()[:1] and sys.argv[3:] == ["128", "128"]
if call == 2:
    print("garbage, no number here")
elif call == 3:
    time.sleep(60)
elif call == 4:
    sys.exit("device offline")
else:
    print(json.dumps({"median_ms": 10.0 + call, "runtime": "fakephone", "runtime_version": "9"}))
"""


@pytest.mark.slow
def test_a_latency_command_measures_and_its_failures_fail_only_their_trials(tmp_path: Path) -> None:
    # The meter's XLITE is call 0, the queued XLITE call 1; then garbage, a hang, an error, then good again.
    device = tmp_path / "device.py"
    device.write_text(FAKE_DEVICE)
    template = f"{sys.executable} {device} {tmp_path / 'calls'} {{model}} {{input_h}} {{input_w}}"
    out = _searchsr(*_run_args(tmp_path, 6, "--latency-backend", "command", "--latency-cmd", template,
                               "--latency-timeout", "3", "--concurrency", "1"))  # trials measured in order
    assert out.returncode == 0, out.stderr[-2000:]
    study = load_study("t", open_storage(f"sqlite:///{tmp_path}/s.db"))
    failed = [t.user_attrs["fail_reason"] for t in study.trials if t.state == optuna.trial.TrialState.FAIL]
    assert sorted(r.split(": ", 1)[1].split(" (")[0].split(":")[0] for r in failed) == [
        "latency command exited with code 1", "latency command printed no latency in its output",
        "latency command timed out after 3 s"], failed
    complete = study.get_trials(states=(optuna.trial.TrialState.COMPLETE,))
    assert complete and all(t.user_attrs["latency_backend"] == "command" for t in complete)
    assert {t.user_attrs["latency_runtime"] for t in complete} == {"fakephone"}
    xlite = [t for t in complete if t.user_attrs.get("preset") == "xlite"]
    assert xlite and xlite[0].user_attrs["latency_ratio"] == pytest.approx(11.0 / 10.0)  # call 1 over call 0


ONE_ARCH = """
params:
  nf: 8
  n_blocks: 1
  se: false
  act: relu
"""


@pytest.mark.slow
def test_an_architecture_is_measured_once_per_study(tmp_path: Path) -> None:
    # Every trial draws the same network, infeasible by a params bound (so nothing trains): the first
    # trial measures it, the others of the run and every trial of a rerun take the study's measurement.
    space = tmp_path / "one.yaml"
    space.write_text(ONE_ARCH)
    args = ["run", "--space", str(space), "--schedule", "smoke", "--storage", f"sqlite:///{tmp_path}/s.db",
            "--runs-dir", str(tmp_path / "runs"), "--study", "t", "--latency-runs", "2", "--sampler", "random",
            "--enqueue", "", "--constraint", "params <= 10", "--concurrency", "1"]
    for trials in ("3", "2"):
        out = _searchsr(*args, "--trials", trials)
        assert out.returncode == 0, out.stderr[-2000:]
    study = load_study("t", open_storage(f"sqlite:///{tmp_path}/s.db"))
    pruned = study.get_trials(states=(optuna.trial.TrialState.PRUNED,))
    assert len(pruned) == 5 and all("infeasible" in t.user_attrs for t in pruned)
    assert [t.user_attrs["latency_cached"] for t in sorted(pruned, key=lambda t: t.number)] == [
        False, True, True, True, True]
    assert len({t.user_attrs["latency_ms"] for t in pruned}) == 1  # one measurement, five trials
    assert cache_size(study) == 1


@pytest.mark.slow
def test_int8_scores_and_times_every_trial_quantized(tmp_path: Path) -> None:
    out = _searchsr(*_run_args(tmp_path, 2, "--int8"), "--objectives", "psnr_int8,latency_int8")
    assert out.returncode == 0, out.stderr[-2000:]
    assert "psnr_int8  latency_int8_ms" in out.stdout  # the front shows the quantized network's figures
    study = load_study("t", open_storage(f"sqlite:///{tmp_path}/s.db"))
    assert study.metric_names == ["psnr_int8", "latency_int8"]
    complete = study.get_trials(states=(optuna.trial.TrialState.COMPLETE,))
    assert len(complete) == 2
    for trial in complete:
        attrs = trial.user_attrs
        assert trial.values == [attrs["psnr_int8"], attrs["latency_int8_ms"]]
        assert abs(attrs["psnr_int8"] - attrs["psnr"]) < 0.3 and attrs["psnr_int8"] != attrs["psnr"]
        assert 0 < attrs["latency_int8_ms"] < 2 * attrs["latency_ms"]
        assert attrs["latency_backend"] == "onnxruntime"  # a new study's default
