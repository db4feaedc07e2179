"""The whole loop on a tiny study: search -> retrain 2 trials + XLITE -> compare -> export -> upscale."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import optuna
import pytest
import torch
from PIL import Image

from searchsr.retrain import proxy_fidelity
from searchsr.runs import trial_name
from searchsr.storage import load_study, open_storage

ROOT = Path(__file__).resolve().parents[1]


def _searchsr(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "searchsr.cli", *args], capture_output=True, text=True,
                          cwd=ROOT, timeout=900)


@pytest.mark.slow
def test_search_retrain_export_upscale(tmp_path: Path) -> None:
    storage = f"sqlite:///{tmp_path}/s.db"
    run = _searchsr("run", "--space", "spaces/tiny.yaml", "--schedule", "smoke", "--trials", "5", "--storage",
                    storage, "--runs-dir", str(tmp_path / "runs"), "--study", "t", "--latency-runs", "2",
                    "--sampler", "random", "--enqueue", "xlite")
    assert run.returncode == 0, run.stderr[-2000:]
    study = load_study("t", open_storage(storage))
    searched = [t for t in study.get_trials(states=(optuna.trial.TrialState.COMPLETE,))
                if t.user_attrs.get("preset") is None]
    front = [t.number for t in study.best_trials if t.user_attrs.get("preset") is None]
    chosen = (front + [t.number for t in searched if t.number not in front])[:2]
    import skimage.data

    bench = tmp_path / "bench"
    bench.mkdir()
    Image.fromarray(skimage.data.astronaut()[100:196, 150:262]).save(bench / "astronaut.png")
    Image.fromarray(skimage.data.chelsea()[50:130, 100:200]).save(bench / "chelsea.png")
    out = tmp_path / "retrain"
    retrain = _searchsr("retrain", "--study", "t", "--storage", storage, "--trials", ",".join(map(str, chosen)),
                        "--baselines", "xlite", "--schedule", "smoke", "--bench", str(bench),
                        "--out", str(out))
    assert retrain.returncode == 0, retrain.stderr[-2000:]
    import pandas as pd

    table = pd.read_csv(out / "comparison.csv")
    assert list(table["model"]) == [trial_name(n) for n in chosen] + ["xlite"]  # one run-folder layout
    for column in ("bench_psnr_y", "bench_ssim_y", "params", "flops_g", "latency_ms", "latency_ratio_xlite",
                   "short_psnr", "dominates"):
        assert column in table.columns
    assert table["bench_psnr_y"].notna().all() and table["short_psnr"].notna().all()
    fidelity = json.loads((out / "fidelity.json").read_text())
    assert fidelity["models"] == 3 and -1 <= fidelity["kendall_tau"] <= 1
    assert proxy_fidelity(table).kendall_tau == pytest.approx(fidelity["kendall_tau"])
    assert "Kendall tau" in retrain.stdout and "Kendall tau" in (out / "comparison.md").read_text()
    study = load_study("t", open_storage(storage))
    assert set(study.user_attrs["retrain_results"]) == {str(n) for n in chosen} | {"0"}

    export = _searchsr("export", "--study", "t", "--storage", storage, "--trial", str(chosen[0]),
                       "--out", str(tmp_path / "exported"))
    assert export.returncode == 0, export.stderr[-2000:]
    card = json.loads((tmp_path / "exported" / "model_card.json").read_text())
    assert str(out / trial_name(chosen[0])) in json.dumps(card)  # the retrained weights, not the search's

    image = skimage.data.coffee()[40:61, 60:90]
    Image.fromarray(image).save(tmp_path / "in.png")
    up = _searchsr("upscale", "--model", str(tmp_path / "exported"), str(tmp_path / "in.png"), "--out",
                   str(tmp_path / "up"))
    assert up.returncode == 0, up.stderr[-2000:]
    sr = np.asarray(Image.open(tmp_path / "up" / "in.png"))
    assert sr.shape == (84, 120, 3)
    from searchsr.export import load_run

    _, model, _ = load_run(out / trial_name(chosen[0]))
    with torch.inference_mode():
        ref = model.eval()(torch.from_numpy(image).permute(2, 0, 1)[None].float() / 255)[0].clamp(0, 1)
    ref = np.floor(ref.permute(1, 2, 0).numpy() * 255 + 0.5)
    assert np.abs(sr.astype(float) - ref).max() <= 1


def test_heaviest_network_starts_first_and_the_estimate_packs_workers() -> None:
    from searchsr.config import PRESETS, ArchConfig
    from searchsr.retrain import Job, estimate_seconds, longest_first, makespan
    from searchsr.schedule import load_schedule

    jobs = [Job("xlite", PRESETS["xlite"], None, None), Job("tiny", ArchConfig(nf=8, n_blocks=1), 3, None),
            Job("mid", ArchConfig(nf=24, n_blocks=4), 4, None)]
    assert [j.name for j in longest_first(jobs)] == ["mid", "xlite", "tiny"]
    assert makespan([2, 10, 3, 4], 2) == 10  # the long pole, not the sum over two workers (9.5)
    assert makespan([3, 3, 3], 2) == 6 and makespan([5], 4) == 5
    assert estimate_seconds(jobs, load_schedule("smoke"), 2, threads=1) > 0


def test_a_front_trial_that_is_a_preset_counts_as_that_baseline() -> None:
    from searchsr.config import PRESETS, ArchConfig
    from searchsr.retrain import Job, comparison_table

    jobs = [Job("trial_0", PRESETS["xlite"], 0, 30.2), Job("trial_3", ArchConfig(nf=8, n_blocks=2), 3, 30.3),
            Job("trial_4", ArchConfig(nf=24, n_blocks=2), 4, 30.1)]
    scores = {"trial_0": {"set5": {"psnr_y": 30.5, "ssim_y": 0.86}},
              "trial_3": {"set5": {"psnr_y": 30.6, "ssim_y": 0.87}},  # better and cheaper than XLITE
              "trial_4": {"set5": {"psnr_y": 30.7, "ssim_y": 0.87}}}  # better but slower
    cost = {"params": 1, "flops": 2e9, "latency_ms": 10.0, "latency_ratio": 1.0}
    costs = {"trial_0": cost, "trial_3": {**cost, "flops": 1e9, "latency_ms": 5.0},
             "trial_4": {**cost, "flops": 3e9, "latency_ms": 12.0}}
    table = comparison_table(jobs, scores, costs)
    assert list(table["baseline"]) == ["xlite", "", ""]
    assert list(table["dominates"]) == ["", "xlite", ""]


def test_reference_networks_as_retrain_baselines() -> None:
    """``retrain --baselines lite,msrresnet,fsrcnn``: the reference networks join the table as baselines."""
    from searchsr.cli import build_parser
    from searchsr.cli.options import csv_list
    from searchsr.config import PRESETS, FSRCNNConfig, MSRResNetConfig
    from searchsr.errors import UsageError
    from searchsr.retrain import comparison_table, longest_first, select_jobs

    args = build_parser().parse_args(["retrain", "--baselines", "lite, msrresnet,fsrcnn", "--out", "x"])
    assert build_parser().parse_args(["retrain", "--out", "x"]).baselines == "lite,xlite"  # today's default
    study = optuna.create_study()
    jobs = select_jobs(study, None, False, csv_list(args.baselines))
    assert [(j.name, j.arch, j.trial) for j in jobs] == [("lite", PRESETS["lite"], None),
                                                        ("msrresnet", MSRResNetConfig(), None),
                                                        ("fsrcnn", FSRCNNConfig(), None)]
    with pytest.raises(UsageError, match="known: lite, xlite, msrresnet, fsrcnn"):
        select_jobs(study, None, False, ["srcnn"])
    assert [j.name for j in longest_first(jobs)] == ["msrresnet", "lite", "fsrcnn"]
    scores = {j.name: {"set5": {"psnr_y": psnr, "ssim_y": 0.8}} for j, psnr in zip(jobs, (30.0, 30.1, 29.0))}
    costs = {j.name: {"params": 1, "flops": flops, "latency_ms": ms, "latency_ratio": 1.0}
             for j, flops, ms in zip(jobs, (58e9, 333e9, 10e9), (10.0, 60.0, 2.0))}
    table = comparison_table(jobs, scores, costs)
    assert list(table["baseline"]) == ["lite", "msrresnet", "fsrcnn"]
    assert table["nf"].isna().tolist() == [False, True, True] and json.loads(table["arch"][2])["model"] == "fsrcnn"
    assert list(table["dominates"]) == ["", "", ""]
