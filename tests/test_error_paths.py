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
    with pytest.raises(ValueError, match=r"nope\.yaml.*shipped spaces: mbv3_sr, quick, tiny"):
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
