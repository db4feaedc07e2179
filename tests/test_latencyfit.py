"""The latency predictor (``searchsr.latencyfit``) and ``searchsr latency fit``: its counts are the built
network's, it recovers a known cost law, it cannot fake one the features do not express, and the CLI
reads only measured trials and fails in one line."""

from __future__ import annotations

import json
import subprocess
import sys
import warnings

import numpy as np
import optuna
import pytest
from optuna.trial import TrialState, create_trial

from searchsr.cli import main
from searchsr.config import ACTIVATIONS, ArchConfig
from searchsr.latencyfit import (
    ACT_FEATURES,
    FEATURES,
    MIN_TRIALS,
    LatencyPredictor,
    cross_validate,
    features,
    fit_predictor,
)
from searchsr.space import load_space, sample

LAW = {"depthwise_mmacs": 0.05, "pointwise_mmacs": 0.01, "act": 0.2}  # ms per M MACs / M elements
LAW_INTERCEPT = 2.0  # ms


def random_archs(n: int, seed: int = 1, space: str = "mbv3_sr") -> list[dict]:
    """``n`` distinct architectures drawn from a shipped space's legal values."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=seed))
    legal = load_space(space)
    archs: dict[str, dict] = {}
    while len(archs) < n:
        cfg = sample(legal, study.ask())
        archs.setdefault(cfg.to_json(), cfg.to_dict())
    return list(archs.values())


def law(arch: dict) -> float:
    """The synthetic device: depthwise and 1x1 MACs, activation elements and a fixed overhead."""
    x = dict(zip(FEATURES, features(arch)))
    return (LAW["depthwise_mmacs"] * x["depthwise_mmacs"] + LAW["pointwise_mmacs"] * x["pointwise_mmacs"]
            + LAW["act"] * sum(x[f] for f in ACT_FEATURES) + LAW_INTERCEPT)


def noisy(values: list[float], rel: float = 0.02, seed: int = 0) -> list[float]:
    rng = np.random.default_rng(seed)
    return [v * float(np.exp(rng.normal(0, rel))) for v in values]


# ------------------------------------------------------------------ the features are the network's


@pytest.mark.parametrize("cfg", [ArchConfig(), ArchConfig(nf=24, n_blocks=3, expansion=3.5, kernel_size=5, se_ratio=2,
                                                          act="silu", bn=False),
                                 ArchConfig(nf=8, n_blocks=2, se=False, act="prelu", scale=3),
                                 ArchConfig(nf=16, n_blocks=1, act="hardswish", scale=2, bicubic_skip=False)])
def test_counts_match_the_built_network(cfg: ArchConfig) -> None:
    import torch
    from torch import nn
    from torch.utils.flop_counter import FlopCounterMode

    from searchsr.arch import build_model
    from searchsr.blocks import SqueezeExcite, make_act

    lr = (12, 10)
    model = build_model(cfg).eval()
    counted = dict.fromkeys(("depthwise_mmacs", "pointwise_mmacs", "act", "shuffle"), 0.0)
    acts = tuple({type(make_act(a)) for a in ACTIVATIONS})
    in_se = {id(m) for se in model.modules() if isinstance(se, SqueezeExcite) for m in se.modules()}

    def hook(module: nn.Module, inputs: tuple, output: torch.Tensor) -> None:
        if isinstance(module, nn.Conv2d):
            per_output = module.in_channels // module.groups * module.kernel_size[0] * module.kernel_size[1]
            depthwise = module.groups == module.in_channels > 1
            assert depthwise or module.kernel_size == (1, 1), module
            counted["depthwise_mmacs" if depthwise else "pointwise_mmacs"] += output.numel() * per_output / 1e6
        elif isinstance(module, acts) and id(module) not in in_se:
            counted["act"] += output.numel() / 1e6
        elif isinstance(module, nn.PixelShuffle):
            counted["shuffle"] += output.numel() / 1e6

    handles = [m.register_forward_hook(hook) for m in model.modules()]
    with torch.inference_mode(), FlopCounterMode(display=False) as flops:
        model(torch.zeros(1, 3, *lr))
    for h in handles:
        h.remove()
    skip = sum(sum(v.values()) for name, v in flops.get_flop_counts().items() if name.endswith(".skip")) / 2e6
    x = dict(zip(FEATURES, features(cfg.to_dict(), lr)))
    assert x["depthwise_mmacs"] == pytest.approx(counted["depthwise_mmacs"])
    assert x["pointwise_mmacs"] == pytest.approx(counted["pointwise_mmacs"])  # SE's 1x1 convs included
    assert x[f"act_{cfg.act}_melements"] == pytest.approx(counted["act"])
    assert sum(x[f] for f in ACT_FEATURES) == pytest.approx(counted["act"])  # only its own kind
    assert x["skip_mmacs"] == pytest.approx(skip)
    assert x["elementwise_melements"] > counted["shuffle"] > 0
    assert x["se_melements"] > 0 if cfg.se else x["se_melements"] == 0


def test_features_scale_with_pixels_and_validate() -> None:
    small, large = features(ArchConfig().to_dict(), (64, 64)), features(ArchConfig().to_dict(), (128, 128))
    macs = FEATURES.index("pointwise_mmacs")
    assert large[macs] == pytest.approx(4 * small[macs], rel=1e-3)
    assert large[FEATURES.index("ops")] == small[FEATURES.index("ops")]  # operators do not grow with the image
    with pytest.raises(ValueError, match="nf must be"):
        features({"nf": 3})


def test_default_size_is_the_meters() -> None:
    from searchsr.latencyfit import LR_SIZE
    from searchsr.meter import LATENCY_SIZE

    assert LR_SIZE == LATENCY_SIZE


# ------------------------------------------------------------------ fitting and accuracy


def test_a_known_cost_law_is_recovered_and_predicted_within_10_percent() -> None:
    archs = random_archs(40)
    latencies = noisy([law(a) for a in archs])
    report = cross_validate(archs, latencies)
    assert report.n == 40 and report.folds == 5 and len(report.errors) == 40
    assert report.within_10 >= 0.95 and report.share_within(0.10) == report.within_10
    assert report.median_error < 0.03 and report.within_5 >= 0.8
    predictor = fit_predictor(archs, latencies)
    assert predictor.kind == "linear-relative"
    for name in ("depthwise_mmacs", "pointwise_mmacs"):
        assert predictor.coefficients[name] == pytest.approx(LAW[name], rel=0.15)
    seen = {a["act"] for a in archs}
    for kind in seen:
        assert predictor.coefficients[f"act_{kind}_melements"] == pytest.approx(LAW["act"], rel=0.15)
    assert predictor.fixed == ("skip_mmacs",)  # every network of the space has the skip: its cost is the intercept's
    assert predictor.coefficients["skip_mmacs"] == 0 and predictor.intercept == pytest.approx(LAW_INTERCEPT, rel=0.25)
    xlite = ArchConfig().to_dict()
    assert predictor.predict(xlite) == pytest.approx(law(xlite), rel=0.05)
    for fitted in (predictor, fit_predictor(archs, latencies, kinds=("power",))):
        again = LatencyPredictor.from_dict(json.loads(json.dumps(fitted.to_dict())))
        assert again == fitted and again.predict(xlite) == fitted.predict(xlite) > 0


def test_per_kind_activation_rates_and_operator_overhead_are_expressed() -> None:
    """A runtime where SiLU is two kernels, ReLU is fused into its conv, and every operator costs 20 us."""
    rates = {"relu": 0.02, "leakyrelu": 0.05, "prelu": 0.1, "hardswish": 0.15, "silu": 0.4}
    archs = random_archs(40, seed=4)

    def device(arch: dict) -> float:
        x = dict(zip(FEATURES, features(arch)))
        return (0.03 * x["depthwise_mmacs"] + 0.008 * x["pointwise_mmacs"] + 0.02 * x["ops"] + 1.0
                + rates[arch["act"]] * x[f"act_{arch['act']}_melements"])

    report = cross_validate(archs, noisy([device(a) for a in archs], seed=5), folds=None)
    assert report.folds == 40 and report.within_10 >= 0.95


def test_latencies_the_features_cannot_express_score_low() -> None:
    archs = random_archs(40)
    rng = np.random.default_rng(3)
    report = cross_validate(archs, list(rng.uniform(5, 50, len(archs))))
    assert report.within_10 < 0.4 and report.median_error > 0.15


def test_duplicates_are_pooled_and_never_straddle_folds() -> None:
    archs = random_archs(12)
    latencies = [law(a) for a in archs]
    report = cross_validate(archs + archs[:6], latencies + latencies[:6], folds=None)
    assert report.n == 12 and report.measurements == 18 and report.folds == 12
    assert cross_validate(archs[:1], latencies[:1]).share_within(0.10) == 0.0  # nothing validated


def test_an_unseen_activation_gets_the_mean_rate() -> None:
    archs = [dict(a, act="relu") for a in random_archs(15)] + [dict(a, act="hardswish") for a in random_archs(15, 2)]
    predictor = fit_predictor(archs, [law(a) for a in archs], kinds=("linear-relative",))
    rates = predictor.coefficients
    assert rates["act_silu_melements"] == pytest.approx((rates["act_relu_melements"]
                                                         + rates["act_hardswish_melements"]) / 2)


def test_bad_inputs_are_value_errors() -> None:
    with pytest.raises(ValueError, match="positive"):
        fit_predictor([ArchConfig().to_dict()], [0.0])
    with pytest.raises(ValueError, match="kinds"):
        fit_predictor([ArchConfig().to_dict()], [1.0], kinds=("cubic",))
    with pytest.raises(ValueError, match="not a stored latency predictor"):
        LatencyPredictor.from_dict({"kind": "linear-relative", "coefficients": {"flops": 1.0}, "intercept": 0})


# ------------------------------------------------------------------ the CLI


def add_trials(study: optuna.Study, archs: list[dict], latencies: list[float], **attrs) -> None:
    for i, (arch, ms) in enumerate(zip(archs, latencies)):
        state = TrialState.PRUNED if i % 4 == 3 else TrialState.COMPLETE
        study.add_trial(create_trial(state=state, values=[ms] if state == TrialState.COMPLETE else None,
                                     user_attrs={"arch": arch, "latency_ms": ms, "latency_lr_size": "128x128",
                                                 **attrs}))


@pytest.fixture(scope="module")
def storage(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A study of 28 measured architectures beside trials the fit must leave out; one of 9 (too few)."""
    url = f"sqlite:///{tmp_path_factory.mktemp('latencyfit')}/s.db"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        study = optuna.create_study(study_name="demo", storage=url, direction="minimize")
        archs = random_archs(30)
        add_trials(study, archs[:24], noisy([law(a) for a in archs[:24]]), latency_source="measured")
        add_trials(study, archs[24:28], noisy([law(a) for a in archs[24:28]], seed=1))  # older: no source
        add_trials(study, archs[28:], [1000.0, 1000.0], latency_source="predicted")  # never fitted on
        add_trials(study, archs[:2], [5.0, 5.0], latency_lr_size="64x64")  # another size: left out
        study.add_trial(create_trial(state=TrialState.FAIL, user_attrs={"arch": archs[0]}))
        small = optuna.create_study(study_name="small", storage=url, direction="minimize")
        add_trials(small, archs[:MIN_TRIALS - 1], [law(a) for a in archs[:MIN_TRIALS - 1]])
    return url


def test_cli_fits_measured_trials_only(storage: str, capsys: pytest.CaptureFixture) -> None:
    assert main(["latency", "fit", "--study", "demo", "--storage", storage, "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["n"] == 28 and out["measurements"] == 28 and out["lr_size"] == "128x128"
    assert out["left_out"] == {"other_size": 2, "predicted": 2}
    assert out["within_10"] >= 0.95 and out["within_tolerance"] == out["within_10"] and not out["saved"]
    assert set(out["predictor"]["coefficients"]) == set(FEATURES)
    assert "latency_predictor" not in optuna.load_study(study_name="demo", storage=storage).user_attrs

    assert main(["latency", "fit", "--study", "demo", "--storage", storage, "--tolerance", "0.2", "--folds", "loo",
                 "--save"]) == 0
    text = capsys.readouterr().out
    assert "28 measured architectures" in text and "leave-one-out" in text and "within +-20%" in text
    assert "within +-10%" in text and "depthwise_mmacs" in text and "ms per M MACs" in text
    stored = optuna.load_study(study_name="demo", storage=storage).user_attrs["latency_predictor"]
    predictor = LatencyPredictor.from_dict(stored)
    assert predictor.trained_on == 28 and stored["cross_validation"]["folds"] == 28
    assert predictor.predict(ArchConfig().to_dict()) == pytest.approx(law(ArchConfig().to_dict()), rel=0.05)


@pytest.mark.parametrize("argv, message", [
    (["--study", "nope"], "no study named 'nope' in this storage (studies: demo, small)"),
    (["--study", "small"], f"study 'small' has {MIN_TRIALS - 1} measured architectures"),
    (["--study", "demo", "--tolerance", "10"], "--tolerance must be between 0 and 1"),
    (["--study", "demo", "--folds", "1"], "--folds must be an integer >= 2 or loo"),
])
def test_cli_errors_are_one_line(storage: str, argv: list[str], message: str, capsys: pytest.CaptureFixture) -> None:
    try:
        rc = main(["latency", "fit", "--storage", storage, *argv])
    except SystemExit as exit_info:  # argparse's own
        rc = exit_info.code
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith("searchsr: error: ") and err.count("\n") == 1 and message in err, err


def test_cli_fit_imports_no_torch(storage: str) -> None:
    code = ("import sys\nfrom searchsr.cli import main\nrc = main(sys.argv[1:])\n"
            "print('heavy:' + ','.join(m for m in ('torch', 'ray') if m in sys.modules), rc)")
    out = subprocess.run([sys.executable, "-c", code, "latency", "fit", "--study", "demo", "--storage", storage],
                         capture_output=True, text=True, check=False)
    assert out.returncode == 0 and out.stdout.strip().splitlines()[-1] == "heavy: 0", out.stdout + out.stderr
