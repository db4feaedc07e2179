"""The sampler policy (--sampler auto) and the paper's warm start (--enqueue paper)."""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest

from searchsr.config import ArchConfig
from searchsr.errors import UsageError
from searchsr.objectives import parse_objectives
from searchsr.space import contains, load_space
from searchsr.storage import open_storage
from searchsr.study import auto_sampler, make_sampler, preset_params, prepare_study


NUMERIC = "params:\n  nf: {int: [8, 32], step: 8}\n  expansion: {float: [1.5, 3.0], step: 0.5}\n"


def test_auto_picks_random_with_early_stopping_tpe_for_categories_gp_for_numbers(tmp_path: Path) -> None:
    (tmp_path / "numeric.yaml").write_text(NUMERIC)
    numeric = load_space(tmp_path / "numeric.yaml")
    for name in ("tiny", "mbv3_sr", "table"):  # categorical (se, act, ...) or conditional (se_ratio when se)
        assert auto_sampler(load_space(name), 20, 2) == "tpe"
        assert auto_sampler(load_space(name), 20, 2, early_stop=True) == "random"
    assert auto_sampler(numeric, 48, 2) == "gp" and auto_sampler(numeric, 250, 2) == "gp"
    assert auto_sampler(numeric, 251, 2) == "nsga2" and auto_sampler(numeric, 251, 1) == "tpe"
    assert isinstance(make_sampler("gp", 0, 10), optuna.samplers.GPSampler)


def test_auto_counts_the_trials_a_study_already_has(tmp_path: Path) -> None:
    (tmp_path / "numeric.yaml").write_text(NUMERIC)
    numeric = load_space(tmp_path / "numeric.yaml")
    storage = open_storage(f"sqlite:///{tmp_path}/s.db")
    objectives = parse_objectives("psnr,latency")
    study = prepare_study("s", storage, objectives, "auto", 0, 10, numeric)
    assert isinstance(study.sampler, optuna.samplers.GPSampler)
    for _ in range(245):
        study.enqueue_trial({"nf": 8})  # trials so far count towards the study's budget
    study = prepare_study("s", storage, objectives, "auto", 0, 10, numeric)
    assert isinstance(study.sampler, optuna.samplers.NSGAIISampler)
    again = prepare_study("s", storage, objectives, "auto", 0, 10, numeric, early_stop=True)
    assert isinstance(again.sampler, optuna.samplers.RandomSampler)


def test_enqueue_paper_queues_the_table_2_points_inside_the_space() -> None:
    assert sorted(preset_params(load_space("table"), ["paper"])) == ["paper-32-8", "xlite"]
    assert len(preset_params(load_space("mbv3_sr"), ["paper"])) == 7
    assert preset_params(load_space("tiny"), ["paper"]) == {}  # none inside: nothing forced in
    assert preset_params(load_space("table"), ["paper-32-8"]) == {"paper-32-8": {"nf": 32, "n_blocks": 8,
                                                                                 "se": True, "act": "leakyrelu"}}
    with pytest.raises(UsageError, match="unknown preset 'paper-1-1'"):
        preset_params(load_space("table"), ["paper-1-1"])


def test_contains_is_the_space_s_own_grid() -> None:
    table = load_space("table")
    assert contains(table, ArchConfig(nf=24, n_blocks=4, se=False, act="hardswish"))
    assert not contains(table, ArchConfig(nf=12, n_blocks=4))  # between the steps
    assert not contains(table, ArchConfig(nf=40, n_blocks=4))  # out of the range
    assert not contains(table, ArchConfig(nf=16, n_blocks=3))  # not a choice
    assert not contains(table, ArchConfig(nf=16, n_blocks=4, expansion=3.0))  # a fixed field differs
