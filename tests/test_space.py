"""Search-space files load or fail with one clear line; sampling, enqueueing and constraints behave with Optuna."""

from __future__ import annotations

import warnings
from pathlib import Path

import optuna
import pytest

from searchsr.config import PRESETS, ArchConfig
from searchsr.objectives import OBJECTIVES, Constraint, constraint_values, parse_objectives, set_constraints
from searchsr.space import (
    Categorical,
    Fixed,
    Int,
    SearchSpace,
    load_space,
    sample,
    to_params,
)

SPACES = Path(__file__).resolve().parents[1] / "spaces"
optuna.logging.set_verbosity(optuna.logging.WARNING)


def _run(space: SearchSpace, n_trials: int, study: optuna.Study | None = None) -> tuple[optuna.Study, list[ArchConfig]]:
    """Optimize a dummy objective; return the study and the config each trial sampled, in order."""
    study = study or optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    configs: list[ArchConfig] = []

    def objective(trial: optuna.Trial) -> float:
        configs.append(sample(space, trial))
        return 0.0

    study.optimize(objective, n_trials=n_trials)
    return study, configs


def test_shipped_spaces_load() -> None:
    full = load_space(SPACES / "mbv3_sr.yaml")
    assert full.params["nf"] == Int(16, 72, step=8)
    assert full.params["se_ratio"] == Categorical((2, 4, 8), when=(("se", True),))
    assert full.params["scale"] == Fixed(4)
    assert [str(c) for c in full.constraints] == ["params <= 1e+06"]
    tiny = load_space(SPACES / "tiny.yaml")
    assert tiny.params["nf"] == Int(8, 16, step=8)
    assert tiny.params["n_blocks"] == Int(1, 2)
    assert tiny.constraints == ()


BAD = {
    # id: (file text, substrings the message must contain besides the file name)
    "malformed_yaml": ("params:\n  nf: {int: [8, 16]\n  n_blocks: 3\n", ["line 3", "invalid YAML"]),
    "empty_file": ("", ["top level"]),
    "not_a_mapping": ("- nf\n", ["top level"]),
    "unknown_top_key": ("params: {nf: 16}\nconstrains: []\n", ["constrains"]),
    "missing_params": ("constraints: []\n", ["params"]),
    "unknown_param_key": ("params:\n  nf: {int: [8, 16], stepp: 8}\n", ["params.nf", "stepp"]),
    "two_kinds": ("params:\n  nf: {int: [8, 16], choices: [8]}\n", ["params.nf", "exactly one"]),
    "log_on_choices": ("params:\n  act: {choices: [relu], log: true}\n", ["params.act", "log"]),
    "unknown_field": ("params:\n  width: {int: [8, 16]}\n", ["params.width", "ArchConfig"]),
    "newline_in_key": ('params:\n  "wid\\nth": 3\n', ["params.wid th"]),
    "wrong_type_bound": ("params:\n  n_blocks: {int: [1, many]}\n", ["params.n_blocks", "'many'"]),
    "wrong_type_float_for_int": ("params:\n  n_blocks: {int: [1, 4.0]}\n", ["params.n_blocks", "4.0"]),
    "wrong_type_step": ("params:\n  expansion: {float: [1, 2], step: x}\n", ["params.expansion", "step"]),
    "wrong_type_bool_bound": ("params:\n  n_blocks: {int: [false, 4]}\n", ["params.n_blocks", "False"]),
    "wrong_type_log": ("params:\n  n_blocks: {int: [1, 4], log: yes please}\n", ["params.n_blocks", "log"]),
    "float_for_int_field": ("params:\n  nf: {float: [8, 16]}\n", ["params.nf", "8.0"]),
    "yaml11_exponent": ("params:\n  expansion: {float: [1e0, 2.0]}\n", ["params.expansion", "1.0e-3"]),
    "bare_list": ("params:\n  kernel_size: [3, 5]\n", ["params.kernel_size", "choices"]),
    "empty_range": ("params:\n  n_blocks: {int: []}\n", ["params.n_blocks", "[low, high]"]),
    "inverted_range": ("params:\n  n_blocks: {int: [8, 2]}\n", ["params.n_blocks", "inverted"]),
    "step_off_grid": ("params:\n  nf: {int: [8, 20], step: 8}\n", ["params.nf", "multiple of step"]),
    "log_low_zero": ("params:\n  n_blocks: {int: [0, 8], log: true}\n", ["params.n_blocks", "log"]),
    "log_float_low_zero": ("params:\n  expansion: {float: [0.0, 4.0], log: true}\n", ["params.expansion", "log"]),
    "log_and_step": ("params:\n  expansion: {float: [1.0, 4.0], log: true, step: 0.5}\n", ["params.expansion", "step"]),
    "empty_choices": ("params:\n  act: {choices: []}\n", ["params.act", "non-empty"]),
    "duplicate_choices": ("params:\n  act: {choices: [relu, relu]}\n", ["params.act", "duplicate"]),
    "odd_nf": ("params:\n  nf: {int: [8, 16]}\n", ["params.nf", "9"]),
    "odd_nf_choice": ("params:\n  nf: {choices: [8, 12, 15]}\n", ["params.nf", "15"]),
    "arch_rejects_kernel": ("params:\n  kernel_size: {choices: [3, 4]}\n", ["params.kernel_size", "4"]),
    "arch_rejects_act": ("params:\n  act: {choices: [relu, gelu]}\n", ["params.act", "gelu"]),
    "arch_rejects_fixed": ("params:\n  scale: 8\n", ["params.scale", "8"]),
    "arch_rejects_bool_as_int": ("params:\n  se: {choices: [1, 0]}\n", ["params.se"]),
    "se_ratio_vs_width": (
        "params:\n  nf: {int: [4, 16], step: 4}\n  expansion: 1.0\n  se_ratio: {choices: [4, 8]}\n",
        ["params.se_ratio", "nf=4", "se_ratio=8"],
    ),
    "condition_unknown_param": (
        "params:\n  se_ratio: {choices: [2, 4], when: {sse: true}}\n", ["params.se_ratio.when.sse"]),
    "condition_declared_below": (
        "params:\n  se_ratio: {choices: [2, 4], when: {se: true}}\n  se: {choices: [true, false]}\n",
        ["params.se_ratio.when.se"],
    ),
    "condition_unreachable_value": (
        "params:\n  se: {choices: [false]}\n  se_ratio: {choices: [2, 4], when: {se: true}}\n",
        ["params.se_ratio.when.se", "True"],
    ),
    "condition_value_wrong_type": (
        "params:\n  se: {choices: [true, false]}\n  se_ratio: {choices: [2], when: {se: 1}}\n",
        ["params.se_ratio.when.se", "1"],
    ),
    "condition_not_mapping": ("params:\n  se: true\n  se_ratio: {choices: [2], when: se}\n", ["params.se_ratio", "when"]),
    "constraints_not_list": ("params: {nf: 16}\nconstraints: latency_ms <= 40\n", ["constraints"]),
    "bad_constraint_operator": ("params: {nf: 16}\nconstraints: ['latency_ms < 40']\n", ["constraints[0]", "<="]),
    "bad_constraint_bound": ("params: {nf: 16}\nconstraints: ['params <= 40', 'flops <= lots']\n",
                             ["constraints[1]", "lots"]),
    "unknown_constraint_metric": ("params: {nf: 16}\nconstraints: ['fps >= 30']\n", ["constraints[0]", "fps"]),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_space_is_one_line_naming_file_and_key(tmp_path: Path, case: str) -> None:
    text, needles = BAD[case]
    path = tmp_path / f"{case}.yaml"
    path.write_text(text)
    with pytest.raises(ValueError) as info:
        load_space(path)
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(f"{path}: ")
    for needle in needles:
        assert needle in message


def test_missing_file_is_a_value_error(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="nowhere.yaml: cannot read"):
        load_space(tmp_path / "nowhere.yaml")


def test_sampling_stays_inside_the_space() -> None:
    space = load_space(SPACES / "mbv3_sr.yaml")
    study, configs = _run(space, 40)
    assert len(configs) == 40
    for cfg in configs:
        assert cfg.nf in range(16, 73, 8)
        assert 4 <= cfg.n_blocks <= 16
        assert cfg.expansion in {1.0, 1.5, 2.0, 2.5, 3.0, 3.5, 4.0}
        assert cfg.kernel_size in (3, 5)
        assert cfg.se_ratio in ((2, 4, 8) if cfg.se else (4,))
        assert cfg.act in ("leakyrelu", "relu", "prelu", "hardswish", "silu")
        assert (cfg.scale, cfg.bicubic_skip) == (4, True)
    # random sampling over 40 trials reaches more than one value of every searched knob
    for name in ("nf", "n_blocks", "expansion", "kernel_size", "se", "bn", "act"):
        assert len({getattr(c, name) for c in configs}) > 1, name
    # fixed params are not suggested; the trial records exactly what it sampled
    for trial, cfg in zip(study.trials, configs):
        assert "scale" not in trial.params and "bicubic_skip" not in trial.params
        assert ArchConfig.from_dict({**cfg.to_dict(), **trial.params}) == cfg


def test_conditional_param_only_suggested_when_its_condition_holds() -> None:
    space = load_space(SPACES / "tiny.yaml")
    study, configs = _run(space, 30)
    assert {c.se for c in configs} == {True, False}
    for trial, cfg in zip(study.trials, configs):
        assert ("se_ratio" in trial.params) == cfg.se
        if not cfg.se:
            assert cfg.se_ratio == ArchConfig().se_ratio
    fixed = optuna.trial.FixedTrial({"nf": 8, "n_blocks": 1, "se": False, "act": "relu"})
    assert sample(space, fixed) == ArchConfig(nf=8, n_blocks=1, se=False, act="relu")
    assert "se_ratio" not in fixed.params


def test_a_condition_chain_falls_back_to_defaults() -> None:
    # bn searched only with SE; se_ratio only without BN. se=False leaves bn at its default
    # (True), and the condition below sees that default, so se_ratio is not searched either.
    space = SearchSpace({
        "se": Categorical((True, False)),
        "bn": Categorical((True, False), when=(("se", True),)),
        "se_ratio": Categorical((2,), when=(("bn", False),)),
    })
    assert sample(space, optuna.trial.FixedTrial({"se": False})) == ArchConfig(se=False)
    assert sample(space, optuna.trial.FixedTrial({"se": True, "bn": True})) == ArchConfig()
    assert sample(space, optuna.trial.FixedTrial({"se": True, "bn": False, "se_ratio": 2})) == ArchConfig(
        bn=False, se_ratio=2)


@pytest.mark.parametrize("space_file", ["mbv3_sr.yaml", "tiny.yaml"])
def test_enqueued_presets_are_reproduced_exactly(space_file: str) -> None:
    space = load_space(SPACES / space_file)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    presets = [PRESETS["lite"], PRESETS["xlite"]]
    for cfg in presets:
        study.enqueue_trial(to_params(space, cfg))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        study, configs = _run(space, 2, study)
    assert configs == presets
    # tiny's nf/n_blocks ranges do not hold LITE: Optuna warns and still uses the value
    out_of_range = [w for w in caught if "out of range" in str(w.message)]
    assert bool(out_of_range) == (space_file == "tiny.yaml")
    # the params use exactly the keys a trial suggests, so skip_if_exists recognises them,
    # whether the earlier trial was enqueued or sampled
    study, sampled = _run(space, 3, study)
    for trial, cfg in zip(study.trials, configs + sampled):
        assert to_params(space, cfg).keys() == trial.params.keys()
        study.enqueue_trial(to_params(space, cfg), skip_if_exists=True)
    assert len(study.trials) == 5


@pytest.mark.parametrize("sampler", [optuna.samplers.TPESampler(seed=0, n_startup_trials=4),
                                     optuna.samplers.NSGAIISampler(seed=0, population_size=4)])
def test_samplers_stay_in_range_after_an_out_of_range_enqueue(sampler: optuna.samplers.BaseSampler) -> None:
    space = load_space(SPACES / "tiny.yaml")
    study = optuna.create_study(sampler=sampler)
    study.enqueue_trial(to_params(space, PRESETS["lite"]))
    with pytest.warns(UserWarning, match="out of range"):
        study, configs = _run(space, 24, study)
    assert configs[0] == PRESETS["lite"]
    assert all(c.nf in (8, 16) and c.n_blocks in (1, 2) for c in configs[1:])


def test_to_params_keeps_the_choice_type_and_omits_inactive_params() -> None:
    space = SearchSpace({"se": Categorical((True, False)), "se_ratio": Categorical((2, 4), when=(("se", True),)),
                         "expansion": Categorical((1.5, 2, 3))})
    params = to_params(space, ArchConfig(se=False, expansion=2.0))
    assert params == {"se": False, "expansion": 2}
    assert type(params["expansion"]) is int  # as trial.params holds it, so skip_if_exists matches


@pytest.mark.parametrize("cfg,needle", [
    (ArchConfig(act="silu"), "act='silu'"),             # categorical value not among the choices
    (ArchConfig(kernel_size=5), "kernel_size=5"),       # differs from a fixed value
    (ArchConfig(se=False, se_ratio=8), "se_ratio=8"),   # inactive param off its default
])
def test_to_params_rejects_what_the_space_cannot_produce(cfg: ArchConfig, needle: str) -> None:
    with pytest.raises(ValueError, match=needle):
        to_params(load_space(SPACES / "tiny.yaml"), cfg)


def test_optuna_enqueue_out_of_range() -> None:
    """The Optuna behaviour to_params relies on: numbers pass with a warning, bad choices fail."""
    study = optuna.create_study()
    study.enqueue_trial({"n": 100, "x": 0.25})
    trial = study.ask()
    with pytest.warns(UserWarning, match="out of range"):
        assert trial.suggest_int("n", 8, 16, step=8) == 100
    with pytest.warns(UserWarning, match="out of range"):
        assert trial.suggest_float("x", 1.0, 4.0, step=0.5) == 0.25
    study.enqueue_trial({"c": 7})
    with pytest.raises(ValueError):
        study.ask().suggest_categorical("c", [1, 2])


def test_constraint_values_sign() -> None:
    below, above = Constraint.parse("latency_ms <= 40"), Constraint.parse(" psnr>=30.5 ")
    assert (below.metric, below.op, below.bound) == ("latency_ms", "<=", 40.0)
    assert Constraint.parse("flops <= 3e9").bound == 3e9
    assert constraint_values((below, above), {"latency_ms": 30.0, "psnr": 31.0}) == [-10.0, -0.5]
    assert constraint_values((below, above), {"latency_ms": 50.0, "psnr": 29.5}) == [10.0, 1.0]
    assert constraint_values((), {}) == []
    with pytest.raises(ValueError, match="psnr"):
        constraint_values((above,), {"latency_ms": 1.0})


def _constrained_study(constraints: tuple[Constraint, ...], use_set_constraint: bool) -> optuna.Study:
    """NSGA-II on x in 0..20 with metric params = x, both objectives trading x off."""
    if use_set_constraint:
        sampler = optuna.samplers.NSGAIISampler(seed=0, population_size=4)
    else:
        with pytest.warns(FutureWarning, match="constraints_func"):  # deprecated in Optuna 5.0
            sampler = optuna.samplers.NSGAIISampler(
                seed=0, population_size=4, constraints_func=lambda t: constraint_values(constraints, t.user_attrs))
    study = optuna.create_study(directions=["minimize", "minimize"], sampler=sampler)

    def objective(trial: optuna.Trial) -> tuple[float, float]:
        x = trial.suggest_int("x", 0, 20)
        trial.set_user_attr("params", x)
        if use_set_constraint:
            set_constraints(trial, constraints, trial.user_attrs)
        return x, 20 - x

    study.optimize(objective, n_trials=30)
    return study


@pytest.mark.parametrize("use_set_constraint", [True, False])
def test_constraints_keep_infeasible_trials_off_the_front(use_set_constraint: bool) -> None:
    study = _constrained_study((Constraint.parse("params <= 10"),), use_set_constraint)
    assert any(t.user_attrs["params"] > 10 for t in study.trials)
    key = "params <= 10" if use_set_constraint else "0"  # constraints_func values are stored as a list
    assert all(t.constraints == {key: t.user_attrs["params"] - 10.0} for t in study.trials)
    assert study.best_trials and all(t.user_attrs["params"] <= 10 for t in study.best_trials)


def test_parse_objectives() -> None:
    psnr, latency = parse_objectives("psnr, latency")
    assert (psnr.name, psnr.direction, psnr.key) == ("psnr", "maximize", "psnr")
    assert (latency.name, latency.direction, latency.key) == ("latency", "minimize", "latency_ms")
    every = parse_objectives(",".join(OBJECTIVES))
    assert {o.name: o.direction for o in every} == {
        "psnr": "maximize", "ssim": "maximize", "latency": "minimize", "flops": "minimize",
        "params": "minimize", "activations": "minimize", "memory": "minimize", "psnr_int8": "maximize",
        "ssim_int8": "maximize", "latency_int8": "minimize"}
    with pytest.raises(ValueError, match="unknown objective 'fps'.*psnr, ssim, latency"):
        parse_objectives("psnr,fps")
    with pytest.raises(ValueError, match="'psnr' given twice"):
        parse_objectives("psnr,latency,psnr")
    with pytest.raises(ValueError, match="unknown objective ''"):
        parse_objectives("")
