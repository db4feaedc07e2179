"""Issue 11, point 7: error paths that are not a row of the hostile-input table (which checks one line,
exit 2 and nothing written for the others)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from searchsr.cli import main


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_profile_latency_on_absent_cuda_is_one_line(capsys: pytest.CaptureFixture) -> None:
    assert main(["profile", "--latency", "--device", "cuda"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--device cuda" in err and "CUDA" in err, err


def test_default_space_works_outside_the_checkout(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from searchsr.cli import build_parser
    from searchsr.cli.search import settings_from_args

    monkeypatch.chdir(tmp_path)  # no spaces/ folder here
    settings = settings_from_args(build_parser().parse_args(["run"]))
    assert "nf" in settings.space.params and settings.space.source.endswith("mbv3_sr.yaml")
    with pytest.raises(ValueError, match=r"nope\.yaml.*shipped spaces: mbv3_sr, quick, table, tiny"):
        settings_from_args(build_parser().parse_args(["run", "--space", "nope.yaml"]))


def test_concurrency_beyond_the_cpus_is_said() -> None:
    from searchsr.search import plan_concurrency

    assert plan_concurrency(0, 2, 1) == (2, None)
    assert plan_concurrency(0, 8, 3) == (2, None)
    assert plan_concurrency(2, 2, 1) == (2, None)
    count, note = plan_concurrency(8, 2, 1)
    assert count == 8 and "--concurrency 8" in note and "at most 2" in note


def test_latency_measurement_reports_progress() -> None:
    from searchsr.arch import build_model
    from searchsr.config import ArchConfig
    from searchsr.cost import WARMUP_RUNS, measure_latency

    ticks = []
    measure_latency([build_model(ArchConfig(nf=8, n_blocks=1))], (16, 16), runs=4, on_run=lambda: ticks.append(1))
    assert len(ticks) == WARMUP_RUNS + 4


def test_damaged_run_files_are_one_line(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_bytes(b"\xff{not json")
    (run / "weights.safetensors").write_bytes(b"")
    assert main(["eval", "--checkpoint", str(run), "--data", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "config.json: not readable JSON" in err, err
    assert main(["train", "--set", "nf=8", "--set", "n_blocks=1", "--schedule", "smoke", "--out", str(run),
                 "--resume", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "not readable JSON" in err, err


def test_a_study_with_other_unnamed_objectives_is_refused(tmp_path: Path) -> None:
    import optuna

    from searchsr.objectives import parse_objectives
    from searchsr.storage import open_storage
    from searchsr.study import prepare_study

    storage = open_storage(f"sqlite:///{tmp_path}/s.db")
    optuna.create_study(study_name="old", storage=storage, directions=["minimize", "minimize"])  # no metric names
    with pytest.raises(ValueError, match="study 'old' optimises 2 unnamed objective"):
        prepare_study("old", storage, parse_objectives("psnr,latency"), "random", 0, 2)


def test_export_finds_weights_retrained_under_the_old_folder_name(tmp_path: Path) -> None:
    import optuna

    from searchsr.study import trial_run_dir

    study = optuna.create_study(directions=["maximize", "minimize"])
    study.add_trial(optuna.trial.create_trial(values=[30.0, 5.0], user_attrs={"run_dir": str(tmp_path / "search")}))
    study.set_user_attr("retrain_out", str(tmp_path / "retrained"))
    assert trial_run_dir(study, 0) == tmp_path / "search"
    (tmp_path / "retrained" / "trial_0").mkdir(parents=True)  # retrain's folder name before trial_00000
    (tmp_path / "retrained" / "trial_0" / "weights.safetensors").write_bytes(b"")
    assert trial_run_dir(study, 0) == tmp_path / "retrained" / "trial_0"
    (tmp_path / "retrained" / "trial_00000").mkdir()
    (tmp_path / "retrained" / "trial_00000" / "weights.safetensors").write_bytes(b"")
    assert trial_run_dir(study, 0) == tmp_path / "retrained" / "trial_00000"


def test_run_ends_with_the_next_commands_on_that_study() -> None:
    from searchsr.cli.search import next_steps

    default = next_steps("searchsr", "sqlite:///studies/searchsr.db")
    assert "searchsr report --study searchsr --out dashboards/searchsr.html" in default
    assert "--storage" not in default and "retrain --study searchsr --front --bench DIR" in default
    other = next_steps("x", "postgresql+psycopg://u:secret@h/db")
    assert "secret" not in other and "dashboard --study x --storage 'postgresql+psycopg://u:***@h/db'" in other
    assert "export --study x --storage 'postgresql+psycopg://u:***@h/db' --trial K" in other
