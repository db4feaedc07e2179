"""Many trials per GPU (``searchsr.packing``): --gpus-per-trial checked, concurrency planned by CPUs and
GPUs, retrain's own GPU share per network, and the resources Ray actually gives each trial, on a local
Ray with a fake GPU (torch sees no CUDA here, so trials still train on the CPU: what is tested is the
planning and the resource request)."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from searchsr.config import PRESETS, ArchConfig
from searchsr.errors import UsageError
from searchsr.packing import (check_gpus_per_trial, describe_shares, gpu_share, gpu_shares, plan_concurrency,
                              share_of, step_load, trial_resources)

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("value", [0, 0.25, 0.3, 0.5, 1, 2, 4.0])
def test_fractions_and_whole_gpus_are_accepted(value: float) -> None:
    check_gpus_per_trial(value)


@pytest.mark.parametrize("value, says", [(1.5, "fraction of one GPU"), (-1, ">= 0, got -1"),
                                         (float("nan"), "a number"), (float("inf"), "a number")])
def test_other_gpu_counts_are_refused(value: float, says: str) -> None:
    with pytest.raises(UsageError, match=says):
        check_gpus_per_trial(value)


def test_concurrency_counts_gpus_too() -> None:
    assert plan_concurrency(0, 2, 1) == (2, None)  # no GPUs: the CPUs alone, no note
    count, note = plan_concurrency(0, 16, 1, gpus=1, gpus_per_trial=0.25)
    assert count == 4 and "1 GPU(s) at 0.25 per trial hold 4" in note
    assert plan_concurrency(0, 16, 1, gpus=1, gpus_per_trial=0.3)[0] == 3
    assert plan_concurrency(0, 16, 1, gpus=0.6, gpus_per_trial=0.2)[0] == 3  # not 2.9999...
    assert plan_concurrency(0, 16, 1, gpus=2, gpus_per_trial=1)[0] == 2
    assert plan_concurrency(0, 2, 1, gpus=1, gpus_per_trial=0.25)[0] == 2  # the CPUs limit it
    count, note = plan_concurrency(8, 16, 1, gpus=1, gpus_per_trial=0.5)
    assert count == 8 and "--concurrency 8" in note and "at most 2" in note and "0.5 per trial" in note


def test_lite_takes_a_gpu_xlite_shares_one() -> None:
    batch, patch = 8, 48  # the short/medium schedules'
    lite = step_load(PRESETS["lite"], batch, patch)
    assert gpu_share(PRESETS["lite"], batch, patch, lite) == 1
    assert gpu_share(PRESETS["xlite"], batch, patch, lite) == 0.25
    assert gpu_share(ArchConfig(nf=128, n_blocks=24), batch, patch, lite) == 1  # larger than LITE: still one


def test_share_grows_with_the_network() -> None:
    batch, patch = 2, 16
    lite = step_load(PRESETS["lite"], batch, patch)
    for nfs, depths in (((16, 32, 48, 64, 72, 96), (8,)), ((32,), (1, 4, 8, 12, 16, 24))):
        shares = [gpu_share(ArchConfig(nf=nf, n_blocks=n), batch, patch, lite) for nf in nfs for n in depths]
        assert shares == sorted(shares) and shares[0] < 1 and shares[-1] == 1, shares


def test_share_rounds_up_to_halves_and_quarters() -> None:
    lite = (100.0, 100.0)
    assert [share_of((x, 1.0), lite) for x in (1, 24, 25, 26, 50, 51, 100, 300)] == \
        [0.25, 0.25, 0.25, 0.5, 0.5, 1, 1, 1]
    assert share_of((1.0, 60.0), lite) == 1  # the larger of memory and FLOPs counts


def test_retrain_shares_given_estimated_or_none() -> None:
    archs = {"lite": PRESETS["lite"], "xlite": PRESETS["xlite"]}
    assert gpu_shares(archs, 0, 0, 2, 16) == {"lite": 0, "xlite": 0}  # no GPUs: CPU trials
    assert gpu_shares(archs, 0.5, 1, 2, 16) == {"lite": 0.5, "xlite": 0.5}  # --gpus-per-trial: for all
    shares = gpu_shares(archs, 0, 2, 2, 16)
    assert shares == {"lite": 1, "xlite": 0.25}
    line = describe_shares(shares, 0, 2)
    assert "lite 1, xlite 0.25" in line and "estimated" in line and "2 GPU(s) hold 8 of the smallest" in line


def _searchsr(*args: str, tmp: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "searchsr.cli", *args], capture_output=True, text=True, cwd=tmp,
                          timeout=300)


@pytest.mark.parametrize("command", [["run", "--space", str(ROOT / "spaces" / "tiny.yaml")],
                                     ["retrain", "--baselines", "xlite", "--bench", ".", "--out", "out"]])
def test_bad_gpus_per_trial_is_one_line(tmp_path: Path, command: list[str]) -> None:
    out = _searchsr(*command, "--storage", f"sqlite:///{tmp_path}/s.db", "--gpus-per-trial", "1.5", tmp=tmp_path)
    assert out.returncode == 2, out.stderr
    assert out.stderr.count("\n") == 1 and "--gpus-per-trial must be a fraction of one GPU" in out.stderr
    assert "got 1.5" in out.stderr and not (tmp_path / "s.db").exists() and not (tmp_path / "out").exists()


@pytest.fixture(scope="module")
def fake_gpu() -> Iterator[None]:
    """A private local Ray with 2 CPUs and one (fake) GPU; searchsr's own sessions join it."""
    import ray

    if ray.is_initialized():
        pytest.skip("a Ray session is already running in this process")
    ray.init(address="local", num_cpus=2, num_gpus=1, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
    try:
        yield
    finally:
        ray.shutdown()


def _fit(resources, names: list[str], tmp: Path) -> dict[str, dict]:
    """Trials named ``names`` under ``resources``, each reporting what Ray assigned it."""
    from ray import tune

    def _assigned(config: dict) -> None:  # nested: pickled by value, the workers cannot import this module
        import ray
        from ray import tune

        tune.report({"name": config["name"], "gpu_ids": ",".join(map(str, ray.get_gpu_ids())),
                     **{f"got_{k}": v for k, v in ray.get_runtime_context().get_assigned_resources().items()}})

    tuner = tune.Tuner(tune.with_resources(_assigned, resources), param_space={"name": tune.grid_search(names)},
                       run_config=tune.RunConfig(storage_path=str(tmp / "ray"), verbose=0))
    return {r.metrics["name"]: r.metrics for r in tuner.fit()}


def test_run_trials_get_half_a_gpu_each(fake_gpu: None, tmp_path: Path) -> None:
    """``run``'s request (the same ``trial_resources`` for every trial): 0.5 GPU each, both on GPU 0."""
    got = _fit(trial_resources(1, 0.5), ["a", "b"], tmp_path)
    assert {name: (m["got_GPU"], m["got_CPU"], m["gpu_ids"]) for name, m in got.items()} == \
        {"a": (0.5, 1.0, "0"), "b": (0.5, 1.0, "0")}


def test_retrain_trials_get_their_own_share(fake_gpu: None, tmp_path: Path) -> None:
    """``retrain``'s request: a callable of each trial's config, so every network asks for its own share."""
    shares = {"lite": 1.0, "xlite": 0.25, "trial_00003": 0.5}
    got = _fit(lambda config: trial_resources(1, shares[config["name"]]), list(shares), tmp_path)
    assert {name: m["got_GPU"] for name, m in got.items()} == shares


@pytest.mark.slow
def test_run_and_retrain_on_a_fake_gpu(fake_gpu: None, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """``searchsr run --gpus-per-trial 0.5``, then ``retrain`` with its own shares, end to end on the fake GPU
    (training itself on the CPU)."""
    import optuna
    import skimage.data
    from PIL import Image

    from searchsr.objectives import parse_objectives
    from searchsr.retrain import RetrainSettings, run_retrain
    from searchsr.search import SearchSettings, run_search
    from searchsr.space import load_space

    storage = f"sqlite:///{tmp_path}/s.db"
    study = run_search(SearchSettings(space=load_space(str(ROOT / "spaces" / "tiny.yaml")),
                                      objectives=parse_objectives("psnr,latency"), trials=2, storage=storage,
                                      runs_dir=tmp_path / "runs", schedule="smoke", sampler="random", latency_runs=2,
                                      gpus_per_trial=0.5))
    assert "2 trial(s) at once: the cluster's 2 CPU(s) at 1 per trial and 1 GPU(s) at 0.5 per trial hold 2" \
        in capsys.readouterr().err
    assert [t.state for t in study.trials] == [optuna.trial.TrialState.COMPLETE] * 2
    (tmp_path / "bench").mkdir()
    Image.fromarray(skimage.data.astronaut()[100:196, 150:262]).save(tmp_path / "bench" / "astronaut.png")
    table, _, _ = run_retrain(RetrainSettings(study=study.study_name, storage=storage, trials=[0], front=False,
                                              baselines=["lite", "xlite"], schedule="smoke", train_dir=None,
                                              val_dir=None, bench=[str(tmp_path / "bench")], out=tmp_path / "out",
                                              latency_runs=2))
    plan = capsys.readouterr().err
    assert "GPU share per network (estimated" in plan and "lite 1, xlite 0.25" in plan, plan
    assert sorted(table["model"]) == ["lite", "trial_00000", "xlite"]
