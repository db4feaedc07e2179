"""Cost model: convention, memory and latency measurement behave as documented."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from searchsr.arch import build_model
from searchsr.config import PRESETS, ArchConfig
from searchsr.cost import count_cost, latency_ratio, measure_latency, peak_memory_bytes, prepare_for_timing


def test_flop_convention_on_a_single_conv() -> None:
    """2 FLOPs per MAC, 2 per biased output, 4 per BN output, 2 per activation output."""
    tiny = ArchConfig(nf=4, n_blocks=1, bicubic_skip=False)
    base = count_cost(build_model(tiny), (8, 8))
    assert base.macs * 2 == base.flops
    no_bn = count_cost(build_model(tiny.replace(bn=False)), (8, 8))
    bn_elements = 5 * tiny.nf * 2 * 64  # BN(2nf) BN(2nf) BN(nf) in each of the 2 blocks
    assert base.flops - no_bn.flops == 4 * bn_elements


def test_bicubic_skip_is_not_counted_but_is_computed() -> None:
    with_skip = count_cost(build_model(PRESETS["xlite"]), (32, 32))
    without = count_cost(build_model(PRESETS["xlite"].replace(bicubic_skip=False)), (32, 32))
    assert (with_skip.flops, with_skip.activations, with_skip.params) == (without.flops, without.activations,
                                                                         without.params)


def test_costs_scale_with_input_area() -> None:
    small = count_cost(build_model(PRESETS["xlite"]), (32, 32))
    large = count_cost(build_model(PRESETS["xlite"]), (64, 64))
    assert large.activations == pytest.approx(4 * small.activations, rel=1e-3)
    assert large.flops == pytest.approx(4 * small.flops, rel=1e-3)


def test_peak_memory_grows_with_input() -> None:
    model = prepare_for_timing(build_model(PRESETS["xlite"]))
    small, large = peak_memory_bytes(model, (32, 32)), peak_memory_bytes(model, (64, 64))
    weights = sum(p.numel() * 4 for p in model.parameters())
    assert weights < small < large
    # the largest live tensors are HR feature maps: (tail + 4 * tail) channels at 4x, float32
    assert large - weights >= 64 * 64 * 16 * 8 * 4


def test_latency_stats_and_threads_restored() -> None:
    before = torch.get_num_threads()
    a, b = build_model(ArchConfig(nf=8, n_blocks=1)), build_model(ArchConfig(nf=32, n_blocks=4))
    ratio, small, big = latency_ratio(prepare_for_timing(a), prepare_for_timing(b), lr_size=(32, 32), runs=7,
                                      warmup=1, threads=1)
    assert torch.get_num_threads() == before
    assert small.runs == big.runs == 7 and small.threads == 1 and small.device == "cpu"
    assert small.iqr_ms >= 0 and small.min_ms <= small.median_ms
    assert len(small.samples_ms) == 7 and small.median_ms == sorted(small.samples_ms)[3]
    assert min(a / b for a, b in zip(small.samples_ms, big.samples_ms)) <= ratio
    assert ratio <= max(a / b for a, b in zip(small.samples_ms, big.samples_ms))
    assert ratio < 1  # 4 blocks of width 32 cost more than 1 block of width 8
    with pytest.raises(ValueError):
        measure_latency([a], runs=0)


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "searchsr.cli", *args], capture_output=True, text=True)


def test_profile_cli_json_contract() -> None:
    out = _cli("profile", "--arch", "xlite", "--set", "se=false", "--lr-size", "32", "32", "--latency",
               "--runs", "3", "--json")
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    for key in ("params", "flops", "macs", "activations", "latency_ms_median", "latency_ms_iqr", "arch"):
        assert key in result
    assert result["arch"]["se"] is False and result["params"] == 17979 - 4096
    assert out.stderr == ""


@pytest.mark.parametrize("args,message", [
    (["--set", "nf=7"], "nf must be"),
    (["--set", "colour=red"], "unknown architecture field 'colour'"),
    (["--set", "bn=perhaps"], "bn must be bool"),
    (["--set", "nf"], "key=value"),
    (["--arch", "huge"], "not a preset"),
    (["--lr-size", "2", "2"], "--lr-size"),
])
def test_profile_cli_bad_input(args: list[str], message: str) -> None:
    out = _cli("profile", *args)
    assert out.returncode == 2
    assert message in out.stderr and len(out.stderr.strip().splitlines()) == 1 and "Traceback" not in out.stderr
    assert out.stdout == ""
