"""The family reproduces the paper's Table 2 and Table 4, and every option builds and trains."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import yaml

from conftest import read_paper_table
from searchsr.arch import build_model
from searchsr.config import PRESETS, ArchConfig, apply_overrides, load_arch
from searchsr.blocks import BicubicUpsample
from searchsr.cost import arch_cost, count_params
from searchsr.imresize import imresize


def _printed_precision(value: str) -> float:
    """Half a unit of the last printed digit, in the value's own unit."""
    decimals = len(value.split(".")[1]) if "." in value else 0
    return 0.5 * 10.0 ** -decimals


@pytest.mark.parametrize("row", range(7))
def test_table2_params_flops_activations(row: int) -> None:
    paper = read_paper_table("table2_family.csv")[row]
    cfg = ArchConfig(nf=int(paper["nf"]), n_blocks=int(paper["N"]))
    cost = arch_cost(cfg, (256, 256))
    assert abs(cost.params / 1e3 - float(paper["params_k"])) <= _printed_precision(paper["params_k"]) + 1e-9
    assert cost.flops / 1e9 == pytest.approx(float(paper["flops_g"]), rel=0.02)
    assert cost.activations / 1e6 == pytest.approx(float(paper["activations_m"]), rel=0.02)


@pytest.mark.parametrize("model,preset", [("LITE", "lite"), ("XLITE", "xlite")])
@pytest.mark.parametrize("variant,change", [("no_batchnorm", {"bn": False}), ("no_se", {"se": False}),
                                            ("no_bicubic_skip", {"bicubic_skip": False})])
def test_table4_ablation_params(model: str, preset: str, variant: str, change: dict) -> None:
    rows = {(r["model"], r["variant"]): r for r in read_paper_table("table4_ablation.csv")}
    full, ablated = rows[(model, "full")], rows[(model, variant)]
    paper_delta = float(ablated["params_k"]) - float(full["params_k"])
    base = count_params(build_model(PRESETS[preset]))
    ours = count_params(build_model(PRESETS[preset].replace(**change)))
    tolerance = 2 * _printed_precision(ablated["params_k"])  # difference of two rounded figures
    assert abs((ours - base) / 1e3 - paper_delta) <= tolerance + 1e-9


@pytest.mark.parametrize("model,preset", [("LITE", "lite"), ("XLITE", "xlite")])
def test_table4_no_batchnorm_flops(model: str, preset: str) -> None:
    rows = {(r["model"], r["variant"]): r for r in read_paper_table("table4_ablation.csv")}
    ours = arch_cost(PRESETS[preset].replace(bn=False)).flops / 1e9
    assert ours == pytest.approx(float(rows[(model, "no_batchnorm")]["flops_g"]), rel=0.02)


def test_block_layout_matches_derivation() -> None:
    """6 nf^2 + 28 nf per block, SE in N of the N+1 blocks, tail width nf/2."""
    for nf in (16, 32, 40):
        a = count_params(build_model(ArchConfig(nf=nf, n_blocks=4)))
        b = count_params(build_model(ArchConfig(nf=nf, n_blocks=5)))
        assert b - a == 6 * nf * nf + 28 * nf
    model = build_model(PRESETS["xlite"])
    assert isinstance(model.head.se, torch.nn.Identity)
    assert all(not isinstance(block.se, torch.nn.Identity) for block in model.body)
    assert model.reduce.out_channels == 8


@pytest.mark.parametrize("scale", [2, 3, 4])
@pytest.mark.parametrize("size", [(17, 23), (8, 8), (5, 31)])
def test_output_is_scale_times_input(scale: int, size: tuple[int, int]) -> None:
    model = build_model(ArchConfig(nf=8, n_blocks=1, scale=scale)).eval()
    with torch.no_grad():
        y = model(torch.rand(2, 3, *size))
    assert y.shape == (2, 3, size[0] * scale, size[1] * scale)


OPTIONS = [dict(act=a) for a in ("leakyrelu", "relu", "prelu", "hardswish", "silu")] + [
    dict(se=False), dict(bn=False), dict(bicubic_skip=False), dict(expansion=3.5), dict(kernel_size=5),
    dict(se_ratio=8), dict(scale=3), dict(scale=2)]


@pytest.mark.parametrize("option", OPTIONS, ids=lambda o: ",".join(f"{k}={v}" for k, v in o.items()))
def test_every_option_runs_forward_and_backward(option: dict) -> None:
    cfg = ArchConfig(nf=8, n_blocks=2).replace(**option)
    model = build_model(cfg).train()
    y = model(torch.rand(2, 3, 9, 11))
    y.abs().mean().backward()
    grads = [p.grad for p in model.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert any(g.abs().sum() > 0 for g in grads)


@pytest.mark.parametrize("scale", [2, 3, 4])
def test_bicubic_skip_is_matlab_imresize(scale: int) -> None:
    """The in-network skip equals MATLAB imresize (a = -0.5, symmetric borders), not torch's a = -0.75."""
    rng = np.random.default_rng(0)
    lr = rng.random((13, 18, 3))
    expected = imresize(lr, scale)
    got = BicubicUpsample(scale)(torch.from_numpy(lr).permute(2, 0, 1)[None].float())
    got = got[0].permute(1, 2, 0).double().numpy()
    assert np.abs(got - expected).max() < 1e-5
    torch_default = torch.nn.functional.interpolate(torch.from_numpy(lr).permute(2, 0, 1)[None],
                                                    scale_factor=scale, mode="bicubic")
    assert np.abs(torch_default[0].permute(1, 2, 0).numpy() - expected).max() > 1e-3


def test_bicubic_skip_rejects_tiny_input() -> None:
    with pytest.raises(ValueError, match="smaller than the bicubic support"):
        BicubicUpsample(4)(torch.rand(1, 3, 1, 5))


def test_config_roundtrips_and_hashes() -> None:
    cfg = ArchConfig(nf=32, n_blocks=6, se=False, act="silu", expansion=3)
    assert ArchConfig.from_dict(cfg.to_dict()) == cfg
    assert ArchConfig.from_json(cfg.to_json()) == cfg
    assert ArchConfig.from_yaml(cfg.to_yaml()) == cfg
    assert json.loads(cfg.to_json())["expansion"] == 3.0
    assert hash(cfg) == hash(ArchConfig(nf=32, n_blocks=6, se=False, act="silu", expansion=3.0))
    assert len({cfg, cfg.replace(nf=32), cfg.replace(nf=40)}) == 2
    with pytest.raises(dataclasses_frozen_error()):
        cfg.nf = 8  # type: ignore[misc]


def dataclasses_frozen_error() -> type[Exception]:
    import dataclasses

    return dataclasses.FrozenInstanceError


@pytest.mark.parametrize("field,value", [("nf", 7), ("nf", 0), ("n_blocks", 0), ("scale", 8), ("act", "gelu"),
                                         ("expansion", 0.5), ("kernel_size", 4), ("se_ratio", 0), ("se", "yes"),
                                         ("nf", 16.0), ("bn", 1)])
def test_invalid_values_name_field_and_value(field: str, value: object) -> None:
    with pytest.raises(ValueError) as err:
        ArchConfig(**{field: value})
    assert field in str(err.value) and repr(value) in str(err.value)


def test_unknown_field_and_overrides() -> None:
    with pytest.raises(ValueError, match="unknown architecture field 'depth'"):
        ArchConfig.from_dict({"depth": 3})
    cfg = apply_overrides(PRESETS["xlite"], ["nf=32", "se=false", "act=relu", "expansion=3"])
    assert (cfg.nf, cfg.se, cfg.act, cfg.expansion, cfg.n_blocks) == (32, False, "relu", 3.0, 8)
    for bad in (["nf"], ["se=maybe"], ["nf=ten"], ["colour=red"]):
        with pytest.raises(ValueError):
            apply_overrides(PRESETS["xlite"], bad)


def test_presets_and_files(tmp_path) -> None:
    assert (PRESETS["lite"].nf, PRESETS["lite"].n_blocks) == (72, 16)
    assert (PRESETS["xlite"].nf, PRESETS["xlite"].n_blocks) == (16, 8)
    path = tmp_path / "arch.yaml"
    path.write_text(yaml.safe_dump({"arch": {"nf": 24, "n_blocks": 3}}))
    assert load_arch(str(path)) == ArchConfig(nf=24, n_blocks=3)
    path.write_text("nf: [1, 2")
    with pytest.raises(ValueError, match="arch.yaml"):
        load_arch(str(path))
    with pytest.raises(ValueError, match="not a preset"):
        load_arch("nonexistent")
