"""`bench search`: the replay's numbers on a tiny hand-made table, computed by hand."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import optuna
import pytest

from searchsr.config import ArchConfig
from searchsr.objectives import parse_objectives
from searchsr.record import COLUMNS
from searchsr.replay import hypervolume, load_table, replay
from searchsr.space import load_space

ROOT = Path(__file__).resolve().parents[1]
OBJECTIVES = parse_objectives("psnr,latency")
# Three networks (nf 8, 16, 24): A dominates nobody, B trades PSNR for speed, C is dominated.
#        nf   final psnr  latency  train s   rung-10 psnr  rung-10 s
NETS = {"A": (8, 30.0, 10.0, 10.0, 25.0, 2.0),
        "B": (16, 28.0, 5.0, 20.0, 24.0, 4.0),
        "C": (24, 27.0, 20.0, 30.0, 20.0, 6.0)}
# Scaled losses (psnr 27..30, latency 5..20): A (0, 1/3), B (2/3, 0), C (1, 1); reference 1.1 each.
TRUE_HV = 1.1 * (1.1 - 1 / 3) + (1.1 - 2 / 3) * 1.1 - (1.1 - 2 / 3) * (1.1 - 1 / 3)


def _write_table(path: Path, seeds: dict[int, dict[str, float]] | None = None) -> Path:
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, COLUMNS)
        writer.writeheader()
        for nf, psnr, latency, seconds, rung_psnr, rung_seconds in NETS.values():
            arch = ArchConfig(nf=nf, n_blocks=1).to_dict()
            costs = {"latency_ms": latency, "flops": nf * 1e6, "params": nf * 100, "activations": 1, "memory": 1}
            for step, p, s in ((10, rung_psnr, rung_seconds), (100, psnr, seconds)):
                writer.writerow({**arch, "seed": 0, "step": step, "psnr": p, "ssim": 0.5, "train_seconds": s,
                                 **costs, "schedule": "smoke"})
        for nf, psnr in (seeds or {}).items():
            writer.writerow({**ArchConfig(nf=nf, n_blocks=1).to_dict(), "seed": 1, "step": 100, "psnr": psnr,
                             "ssim": 0.5, "train_seconds": 1, "latency_ms": 1, "flops": 1, "params": 1,
                             "activations": 1, "memory": 1, "schedule": "smoke"})
    return path


def _space(tmp: Path):
    (tmp / "space.yaml").write_text("params:\n  nf: {int: [8, 24], step: 8}\n  n_blocks: 1\n")
    return load_space(tmp / "space.yaml")


class _InOrder(optuna.samplers.BaseSampler):
    """Draws the given widths in order: a replay whose every number can be worked out by hand."""

    def __init__(self, order: list[str]) -> None:
        self.order = [NETS[n][0] for n in order]

    def infer_relative_search_space(self, study: Any, trial: Any) -> dict:
        return {}

    def sample_relative(self, study: Any, trial: Any, search_space: dict) -> dict:
        return {}

    def sample_independent(self, study: Any, trial: Any, name: str, distribution: Any) -> Any:
        return self.order[trial.number % len(self.order)]


def test_hypervolume_and_the_table_by_hand(tmp_path: Path) -> None:
    table = load_table(_write_table(tmp_path / "t.csv", seeds={8: 29.5, 16: 28.0}))
    assert table.full_compute == 60 and table.rungs == (10,) and table.last == 100
    assert table.noise == {"pairs": 2, "psnr_abs_diff_mean": 0.25, "psnr_abs_diff_max": 0.5}
    assert hypervolume([(0, 1 / 3), (2 / 3, 0), (1, 1)], 2) == pytest.approx(TRUE_HV)
    assert hypervolume([(0, 1 / 3)], 2) == pytest.approx(1.1 * (1.1 - 1 / 3))


def test_replay_spends_the_budget_in_order_and_finds_the_front(tmp_path: Path) -> None:
    table, space = load_table(_write_table(tmp_path / "t.csv")), _space(tmp_path)
    # C (30 s) fills the budget of half the compute; A and B come after it: found at 60 s = the full compute
    run = replay(table, space, "random", 0, 0.5, OBJECTIVES, sampler=_InOrder(["C", "A", "B"]))
    assert run.hv == pytest.approx(0.1 * 0.1 / TRUE_HV) and run.trials == 1
    assert run.compute_to_goal == pytest.approx(1.0)
    # A first: 1.1 * (1.1 - 1/3) / TRUE_HV = 0.854 < 0.9 at 10 s; B at 30 s completes the front
    run = replay(table, space, "random", 0, 1.0, OBJECTIVES, sampler=_InOrder(["A", "B", "C"]))
    assert run.hv == pytest.approx(1.0) and run.compute_to_goal == pytest.approx(0.5) and run.trials == 3
    # a budget that buys the table many times over finds all of it whatever the sampler
    assert replay(table, space, "random", 3, 5.0, OBJECTIVES, cap=5.0).hv == pytest.approx(1.0)
    # never reaching 0.9 within the cap: no compute figure
    assert replay(table, space, "random", 0, 0.1, OBJECTIVES, cap=0.1,
                  sampler=_InOrder(["C"])).compute_to_goal is None


def test_replay_with_early_stopping_pays_only_up_to_the_rung(tmp_path: Path) -> None:
    table, space = load_table(_write_table(tmp_path / "t.csv")), _space(tmp_path)
    # A alone at the rung goes on (10 s); C is dominated there by A: stopped at its rung (6 s, not 30);
    # B is on the rung's first front with A (2 of 3 go on at eta 2): trained (20 s). 36 s in all.
    run = replay(table, space, "random", 0, 36 / 60, OBJECTIVES, early_stop=True, eta=2,
                 sampler=_InOrder(["A", "C", "B"]))
    assert (run.trials, run.pruned) == (3, 1)
    assert run.hv == pytest.approx(1.0) and run.compute_to_goal == pytest.approx(36 / 60)


def test_cost_constraints_cost_nothing_and_stay_off_the_front(tmp_path: Path) -> None:
    from searchsr.objectives import parse_constraints

    table, space = load_table(_write_table(tmp_path / "t.csv")), _space(tmp_path)
    # latency <= 12 rules out C (20 ms) before training: it costs 0 s, and the true front is A, B still
    run = replay(table, space, "random", 0, 0.5, OBJECTIVES, parse_constraints(["latency_ms <= 12"]),
                 sampler=_InOrder(["C", "A", "B"]))
    assert (run.trials, run.infeasible) == (3, 1) and run.hv == pytest.approx(1.0)
    assert run.compute_to_goal == pytest.approx(0.5)


def test_bench_search_json_and_bad_input(tmp_path: Path) -> None:
    path = _write_table(tmp_path / "t.csv")
    (tmp_path / "space.yaml").write_text("params:\n  nf: {int: [8, 24], step: 8}\n  n_blocks: 1\n")
    args = [sys.executable, "-m", "searchsr.cli", "bench", "search", "--table", str(path), "--space",
            str(tmp_path / "space.yaml"), "--seeds", "3", "--budget", "1.0", "--early-stop", "both"]
    out = subprocess.run([*args, "--methods", "random,tpe", "--json"], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    results = json.loads(out.stdout)
    assert set(results) == {"random", "random+pareto", "tpe", "tpe+pareto"}
    for r in results.values():
        assert {"hv_mean", "hv_std", "compute_to_0.9"} <= set(r) and (r["budget"], r["seeds"]) == (1.0, 3)
        assert 0 < r["hv_mean"] <= 1.0 + 1e-9
    for bad, message in ((["--methods", "cmaes"], "unknown method 'cmaes'"), (["--budget", "0"], "--budget"),
                         (["--space", "tiny"], "not in the table")):
        out = subprocess.run([*args, *bad], capture_output=True, text=True, timeout=120)
        assert out.returncode == 2 and message in out.stderr and "Traceback" not in out.stderr, out.stderr


def test_an_architecture_drawn_again_costs_only_what_it_trains_beyond_its_earlier_trial(tmp_path: Path) -> None:
    table, space = load_table(_write_table(tmp_path / "t.csv")), _space(tmp_path)
    # A (10 s); A again: its result reused (0 s); B (20 s): the front at 30 s = half the full compute
    run = replay(table, space, "random", 0, 1.0, OBJECTIVES, sampler=_InOrder(["A", "A", "B"]))
    assert run.networks == 2 and run.hv == pytest.approx(1.0) and run.compute_to_goal == pytest.approx(0.5)
    # C stopped at its rung (6 s); drawn again it is judged again there, ranks last again: 0 s more
    run = replay(table, space, "random", 0, 1.0, OBJECTIVES, early_stop=True, eta=2,
                 sampler=_InOrder(["A", "C", "B", "C"]))
    assert run.networks == 3 and run.compute_to_goal == pytest.approx(36 / 60)


def test_the_shipped_table_covers_its_space_and_states_its_noise() -> None:
    from searchsr.replay import check_space

    table = load_table(ROOT / "benchmarks" / "tables" / "table_short_sun80.csv")
    check_space(table, load_space("table"))  # every network of spaces/table.yaml is in it
    assert len(table.entries) == 48 and table.rungs == (37, 111, 333) and table.last == 1000
    assert table.noise["pairs"] >= 8 and table.noise["psnr_abs_diff_max"] < 0.5
    assert all(e.seconds(37) < e.seconds(111) < e.seconds(333) < e.seconds(1000) for e in table.entries.values())
