"""Issue 12: training memory refused up front, latency/memory figures labelled with their input size,
latency ratios repeated until their confidence interval is tight."""

from __future__ import annotations

import json
import re
import resource
import subprocess
import sys
from pathlib import Path

import optuna
import pytest
from optuna.distributions import IntDistribution
from optuna.trial import create_trial

from searchsr.arch import build_model
from searchsr.cli.search import print_front
from searchsr.config import PRESETS, ArchConfig
from searchsr.cost import LatencyStats, arch_cost, median_ci, prepare_for_timing, ratio_until_stable, stable_ratio
from searchsr.memory import check_fits_training, training_memory
from searchsr.errors import UsageError
from searchsr.figures import axes, figures
from searchsr.page import render
from searchsr.pareto import InputSizes, compute_front, front_records, front_sizes, front_table
from searchsr.report import compute_report
from searchsr.schedule import load_schedule

HUGE = ArchConfig(nf=100000, n_blocks=1)
MESSAGE = re.compile(r"^nf=100000, N=1 needs at least (\d+\.\d) GiB to train at batch 8 x 48x48; "
                     r"this machine has (\d+\.\d) GiB of memory available$")

# ------------------------------------------------------------------ 1. training memory


def test_training_memory_counts_state_layer_outputs_and_data() -> None:
    xlite = training_memory(PRESETS["xlite"], 16, 48)
    assert xlite.state_bytes == 4 * 4 * 17979  # weights, gradients, Adam's two moments; 17979 params (Table 2)
    assert xlite.data_bytes == 4 * 16 * 3 * (48 * 48 + 192 * 192)
    assert xlite.total == xlite.state_bytes + xlite.activation_bytes + xlite.data_bytes
    # 0.4-1 GiB: a measured XLITE step at 16 x 48x48 grows the peak RSS by ~0.49 GiB
    assert 0.4 * 2**30 < xlite.total < 1.0 * 2**30
    # no BN, no SE, no skip: the stored outputs are the conv outputs (count_cost's activations) plus the two
    # pixel-shuffle outputs (4c p^2 and 16c p^2); each kept for backward with its gradient, per sample
    plain = ArchConfig(nf=4, n_blocks=1, bn=False, se=False, bicubic_skip=False)
    outputs = arch_cost(plain, (16, 16)).activations + 20 * plain.tail * 16 * 16
    assert training_memory(plain, 3, 16).activation_bytes == 4 * 2 * 3 * outputs
    assert training_memory(plain, 6, 16).activation_bytes == 2 * training_memory(plain, 3, 16).activation_bytes


def test_a_network_too_large_to_train_is_refused_without_allocating() -> None:
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with pytest.raises(UsageError) as info:
        check_fits_training(HUGE, 8, 48)
    grown_mib = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    need, have = map(float, MESSAGE.match(str(info.value)).groups())
    assert need > 1000 > 24 >= have * 0.9 and grown_mib < 256  # counted on the meta device, nothing allocated
    with pytest.raises(UsageError, match=r"needs at least 0\.3 GiB to train at batch 8 x 48x48; this machine has "
                                         r"0\.1 GiB of memory available"):
        check_fits_training(PRESETS["xlite"], 8, 48, available=100 * 2**20)


@pytest.mark.parametrize("preset", ["xlite", "lite"])
def test_the_papers_networks_fit_the_search_schedule(preset: str) -> None:
    short = load_schedule("short")
    check_fits_training(PRESETS[preset], short.batch_size, short.patch_size)  # this 24 GiB machine
    check_fits_training(PRESETS[preset], short.batch_size, short.patch_size, available=4 * 2**30)


def test_a_trial_too_large_to_train_fails_with_the_reason_before_training(tmp_path: Path) -> None:
    """In a subprocess: ``run_trial`` lowers its own priority (nice 19)."""
    config = {"runs_root": str(tmp_path), "number": 7, "arch": HUGE.to_dict(), "cpus_per_trial": 1,
              "schedule": "short", "train_dir": str(tmp_path / "absent"), "val_dir": str(tmp_path / "absent"),
              "seed": 0}
    code = ("import json, sys\nfrom searchsr.trial import run_trial\n"
            "try:\n    run_trial(json.loads(sys.argv[1]), meter=None)\n"
            "except Exception as err:\n    print(type(err).__name__)\n")
    out = subprocess.run([sys.executable, "-c", code, json.dumps(config)], capture_output=True, text=True,
                         timeout=120)
    assert out.stdout.strip() == "UsageError", out.stderr
    files = list(tmp_path.rglob("*"))
    failure = next(p for p in files if p.name == "failure.txt")
    assert MESSAGE.match(failure.read_text().strip().removeprefix("UsageError: "))
    assert [p.name for p in files if p.is_file()] == ["failure.txt"]  # no config, checkpoint or metrics

# ------------------------------------------------------------------ 3. stable latency ratios


def _stats(samples: list[float]) -> LatencyStats:
    return LatencyStats(0.0, 0.0, min(samples), len(samples), 1, "cpu", tuple(samples))


def test_median_ci_uses_the_binomial_order_statistics() -> None:
    """Ranks from the tables of distribution-free median intervals (95%): n=10 -> 2..9, 20 -> 6..15, 60 -> 22..39."""
    for n, (low, high) in {6: (1, 6), 10: (2, 9), 20: (6, 15), 60: (22, 39)}.items():
        ci = median_ci([float(v) for v in range(n, 0, -1)])
        assert (ci.low, ci.high, ci.exact, ci.median) == (low, high, True, (n + 1) / 2)
    few = median_ci([3.0, 1.0, 2.0, 5.0, 4.0])  # no 95% interval from 5 samples: the range, not exact
    assert (few.low, few.high, few.exact) == (1.0, 5.0, False)


class FakeRounds:
    """``measure_round`` for ``ratio_until_stable``: each round the same per-pair ratios against a 10 ms reference."""

    def __init__(self, ratios: list[float]) -> None:
        self.ratios, self.first_flags = ratios, []

    def __call__(self, first: bool) -> tuple[LatencyStats, LatencyStats]:
        self.first_flags.append(first)
        return _stats([10.0 * r for r in self.ratios]), _stats([10.0] * len(self.ratios))


def test_tight_pairs_stop_after_one_round() -> None:
    rounds = FakeRounds([1.50, 1.51, 1.49, 1.50, 1.50, 1.52, 1.48, 1.50, 1.51, 1.49])
    est = ratio_until_stable(rounds, rel_half_width=0.02, max_rounds=6)
    assert (est.rounds, est.pairs, est.converged, rounds.first_flags) == (1, 10, True, [True])
    assert est.ratio == pytest.approx(1.50) and (est.ci_low, est.ci_high) == pytest.approx((1.49, 1.51))
    assert est.own.runs == est.ref.runs == 10 and est.own.median_ms == pytest.approx(15.0)


def test_spread_pairs_stop_once_pooled_rounds_are_tight_enough() -> None:
    # 6 pairs: the range 0.9..1.1 (half-width 10%); 12 pairs: x(3)..x(10) = 0.95..1.05 (5%)
    rounds = FakeRounds([0.9, 0.95, 1.0, 1.0, 1.05, 1.1])
    est = ratio_until_stable(rounds, rel_half_width=0.06, max_rounds=6)
    assert (est.rounds, est.pairs, est.converged, rounds.first_flags) == (2, 12, True, [True, False])
    assert (est.ci_low, est.ci_high) == pytest.approx((0.95, 1.05))


def test_noisy_pairs_run_to_max_rounds_unconverged() -> None:
    rounds = FakeRounds([0.6, 1.4, 0.8, 1.2, 1.0, 0.7, 1.3, 0.9, 1.1, 1.0])
    est = ratio_until_stable(rounds, rel_half_width=0.02, max_rounds=4)
    assert (est.rounds, est.pairs, est.converged) == (4, 40, False)
    assert est.ci_low < est.ratio < est.ci_high and est.ci_high - est.ci_low > 0.04 * est.ratio
    with pytest.raises(UsageError, match="rel_half_width"):
        ratio_until_stable(rounds, rel_half_width=0.0, max_rounds=4)
    with pytest.raises(UsageError, match="max_rounds"):
        ratio_until_stable(rounds, rel_half_width=0.02, max_rounds=0)


def test_stable_ratio_of_real_models_has_an_interval_around_it() -> None:
    small = prepare_for_timing(build_model(ArchConfig(nf=8, n_blocks=1)))
    large = prepare_for_timing(build_model(ArchConfig(nf=32, n_blocks=4)))
    est = stable_ratio(small, large, lr_size=(24, 24), runs=6, threads=1, rel_half_width=0.02, max_rounds=2)
    assert est.ci_low <= est.ratio <= est.ci_high and est.ratio < 1
    assert 1 <= est.rounds <= 2 and est.pairs == 6 * est.rounds == est.own.runs == est.ref.runs
    assert est.converged == (est.ci_high - est.ci_low <= 2 * 0.02 * est.ratio)

# ------------------------------------------------------------------ 2. sizes of latency/memory and FLOPs


def _sized_study(sizes: list[dict]) -> optuna.Study:
    """psnr/latency trials, each recording the given size attributes (an empty dict: a pre-issue-12 trial)."""
    study = optuna.create_study(study_name="sizes", directions=["maximize", "minimize"])
    study.set_metric_names(["psnr", "latency"])
    for i, attrs in enumerate(sizes):
        psnr, latency = 28.0 + i, 10.0 * (i + 1)  # every trial on the front
        study.add_trial(create_trial(
            values=[psnr, latency], params={"nf": 8 * (i + 1)}, distributions={"nf": IntDistribution(8, 64)},
            user_attrs={"psnr": psnr, "latency_ms": latency, "flops": 1e9 * (i + 1), "memory": 2**20,
                        "arch": {"nf": 8 * (i + 1), "n_blocks": 2}, **attrs}))
    return study


RECORDED = {"latency_lr_size": "128x128", "cost_lr_size": "256x256"}
LINE = "latency and memory at 128x128 LR, FLOPs and activations at 256x256 LR"


def test_front_table_and_records_say_the_input_sizes() -> None:
    front = compute_front(_sized_study([RECORDED, {}, {"latency_lr_size": "64x64", "cost_lr_size": "256x256"}]))
    table = front_table(front)
    assert {"latency_ms", "flops_g"} <= set(table.columns)  # kept, sizes added
    assert list(table["latency_lr_size"]) == ["128x128", "128x128", "64x64"]  # the older trial: the default
    assert list(table["cost_lr_size"]) == ["256x256"] * 3
    records = front_records(front)
    assert [(r["latency_lr_size"], r["cost_lr_size"]) for r in records] == list(zip(table["latency_lr_size"],
                                                                                 table["cost_lr_size"]))
    assert records[0]["latency_ms"] == 10.0 and "flops" in records[0]
    assert front_sizes(front) == InputSizes("128x128/64x64", "256x256")


def test_printed_front_says_the_input_sizes(capsys: pytest.CaptureFixture) -> None:
    study = _sized_study([RECORDED, {}])
    print_front(study)
    out = capsys.readouterr().out.splitlines()
    assert out[1].startswith(LINE) and out[2] == "latency yardstick: none stored" and "latency_ms" in out[3]
    print_front(study, as_csv=True)
    header = capsys.readouterr().out.splitlines()[0].split(",")
    assert header[-2:] == ["latency_lr_size", "cost_lr_size"] and "latency_ms" in header
    print_front(study, as_json=True)
    assert {r["latency_lr_size"] for r in json.loads(capsys.readouterr().out)} == {"128x128"}


def test_report_labels_latency_and_memory_with_their_input_size() -> None:
    data = compute_report(_sized_study([{"latency_lr_size": "96x96", "cost_lr_size": "256x256"}] * 2))
    assert data.sizes == InputSizes("96x96", "256x256")
    pareto = next(fig for key, _t, _w, fig in figures(data) if key.startswith("pareto-"))
    assert pareto.layout.xaxis.title.text == "latency (ms at 96x96 LR, BN-fused, CPU)"
    assert "latency 10 ms at 96x96 LR" in pareto.data[0].text[0]
    assert axes(data.sizes)["memory"][0] == "peak memory (MiB at 96x96 LR)"
    assert axes(data.sizes)["flops"][0] == "GFLOPs (256x256 LR)"
    page = render(data)
    assert "latency and memory at 96x96 LR, FLOPs and activations at 256x256 LR" in page
    assert compute_report(_sized_study([{}, {}])).sizes == InputSizes("128x128", "256x256")  # older trials
