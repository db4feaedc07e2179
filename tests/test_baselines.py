"""Reference networks of the paper's tables (searchsr.baselines): their costs against the paper, their
forward pass, their configs, and the CLI paths a family network takes (profile, train, eval)."""

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from searchsr.arch import build_model
from searchsr.baselines import FSRCNN, MSRResNet
from searchsr.cli import main
from searchsr.config import (ArchConfig, FSRCNNConfig, MSRResNetConfig, apply_overrides, arch_from_dict, arch_label,
                             load_arch)
from searchsr.cost import count_cost
from searchsr.errors import UsageError

# Table 1 (MSRResNet, 256x256 LR) and Table 3 (../shared/paper/table3_peers.csv: FSRCNN, 1280x720 output).
TABLE1_MSRRESNET = {"params_k": 1517, "flops": 333.32e9, "activations": 292.55e6}
TABLE3_FSRCNN = {"params_k": 12, "flops": 9.2e9}


def _msrresnet_macs(p: int) -> int:
    """Hand count at p LR pixels: conv MACs, one per bias add, one per activation element (searchsr.cost)."""
    conv = (27 * 64 + 32 * 36864 + 36864 * 4) * p + 36864 * 4 * (4 * p) + (36864 + 1728) * 16 * p
    bias = (64 + 32 * 64 + 256) * p + 256 * 4 * p + (64 + 3) * 16 * p
    act = 64 * p + 16 * 64 * p + 64 * 4 * p + 2 * 64 * 16 * p  # LReLU, ReLU x 16, LReLU at 2x, LReLU x 2 at HR
    return conv + bias + act


def test_msrresnet_costs_match_table1():
    cost = count_cost(build_model(load_arch("msrresnet")), (256, 256))
    assert cost.params == 1_517_571  # conv_first 1,792 + 16 x 73,856 + 2 x 147,712 + 36,928 + 1,731
    assert cost.params // 1000 == TABLE1_MSRRESNET["params_k"]  # Table 1 truncates (LITE's 558,543: 558 K)
    assert cost.macs == _msrresnet_macs(256 * 256)
    assert cost.flops == pytest.approx(TABLE1_MSRRESNET["flops"], rel=0.01)
    assert cost.activations == pytest.approx(TABLE1_MSRRESNET["activations"], rel=1e-4)


def test_fsrcnn_costs_match_table3():
    model = build_model(load_arch("fsrcnn"))
    cost = count_cost(model, (180, 320))  # 1280x720 output
    weights = sum(p.numel() for p in model.parameters() if p.dim() == 4)
    assert weights == 25 * 56 + 56 * 12 + 4 * 9 * 12 * 12 + 12 * 56 + 81 * 56 == 12_464  # Dong et al.'s count
    assert round(weights / 1000) == TABLE3_FSRCNN["params_k"]  # Table 3 rounds (LITE's 558,543: 559 K)
    assert cost.params == 12_464 + (56 + 12 + 4 * 12 + 56 + 1) + (56 + 12 + 4 * 12 + 56) == 12_809  # + biases, PReLU
    # per LR pixel: convs, bias adds, PReLU; per HR pixel: the deconvolution counted as ptflops does, + its bias
    assert cost.macs == 180 * 320 * (7928 + 172 + 172) + 720 * 1280 * (56 * 81 + 1)
    assert cost.flops == pytest.approx(TABLE3_FSRCNN["flops"], rel=0.015)  # 9.32 G: +1.3%


def test_the_family_costs_the_same_as_before():
    """The transposed-conv rule must not touch the family: LITE and XLITE as test_arch pins them."""
    assert count_cost(build_model(load_arch("xlite"))).flops == 2_586_845_312
    assert count_cost(build_model(load_arch("lite"))).flops == 58_767_250_560


@pytest.mark.parametrize("scale", [2, 3, 4])
def test_forward_shapes(scale):
    x = torch.rand(2, 3, 10, 13)
    for cfg in (MSRResNetConfig(nf=8, n_blocks=2, scale=scale), FSRCNNConfig(scale=scale)):
        with torch.no_grad():
            assert build_model(cfg)(x).shape == (2, 3, 10 * scale, 13 * scale)
    assert isinstance(build_model(MSRResNetConfig()), MSRResNet) and isinstance(build_model(FSRCNNConfig()), FSRCNN)


def test_fsrcnn_predicts_luma_and_keeps_bicubic_chroma():
    model = build_model(FSRCNNConfig())
    with torch.no_grad():
        for p in model.deconv.parameters():
            p.normal_()  # a network whose luma differs from bicubic's
        x = torch.rand(1, 3, 12, 12)
        out, up = model(x), model.skip(x)
    chroma = torch.tensor([[-37.797, -74.203, 112.0], [112.0, -93.786, -18.214]]) / 255  # rgb2ycbcr Cb, Cr
    assert torch.allclose(torch.einsum("cr,nrhw->nchw", chroma, out), torch.einsum("cr,nrhw->nchw", chroma, up),
                          atol=1e-5)
    assert not torch.allclose(model.luma(out), model.luma(up), atol=1e-2)


def test_tiled_inference_matches_the_whole_image():
    from searchsr.evaluate import forward_tiled

    x = torch.rand(1, 3, 21, 26)
    for cfg in (FSRCNNConfig(), MSRResNetConfig(nf=8, n_blocks=2)):
        model = build_model(cfg).eval()
        with torch.no_grad():
            assert torch.allclose(forward_tiled(model, x, 8), model(x), atol=1e-5)


def test_configs_round_trip_and_reject_bad_input(tmp_path):
    for cfg in (MSRResNetConfig(), FSRCNNConfig(), ArchConfig()):
        assert arch_from_dict(cfg.to_dict()) == cfg and arch_from_dict(json.loads(cfg.to_json())) == cfg
    assert FSRCNNConfig().to_dict() == {"model": "fsrcnn", "d": 56, "s": 12, "m": 4, "scale": 4}
    (tmp_path / "f.yaml").write_text("arch:\n  model: fsrcnn\n  m: 2\n")
    assert load_arch(str(tmp_path / "f.yaml")) == FSRCNNConfig(m=2)
    assert arch_label(load_arch("msrresnet")) == "msrresnet" and arch_label(ArchConfig()) == "nf=16, N=8"
    for bad, message in (({"model": "srcnn"}, "unknown model 'srcnn'"), ({"model": "fsrcnn", "nf": 8}, "'nf'"),
                         ({"model": "msrresnet", "scale": 5}, "scale"), ({"model": "fsrcnn", "d": 0}, "d must")):
        with pytest.raises(UsageError, match=message):
            arch_from_dict(bad)
    with pytest.raises(UsageError, match="--set does not apply to msrresnet"):
        apply_overrides(load_arch("msrresnet"), ["nf=32"])
    assert apply_overrides(load_arch("fsrcnn"), []) == FSRCNNConfig()


def test_profile_json(capsys):
    assert main(["profile", "--arch", "msrresnet", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["arch"] == {"model": "msrresnet", "nf": 64, "n_blocks": 16, "scale": 4}
    assert result["params"] == 1_517_571 and result["flops"] == 2 * _msrresnet_macs(256 * 256)
    assert result["memory_bytes"] > 4 * 1_517_571


@pytest.mark.parametrize("argv", [["profile", "--arch", "msrresnet", "--set", "nf=32"],
                                  ["train", "--arch", "fsrcnn", "--set", "d=32", "--out", "never"]])
def test_set_on_a_reference_network_is_one_line(argv, tmp_path):
    proc = subprocess.run([sys.executable, "-m", "searchsr.cli", *argv], capture_output=True, text=True, cwd=tmp_path)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr
    assert "--set does not apply to" in proc.stderr
    assert not (tmp_path / "never").exists()


def test_train_then_eval_then_export_a_reference_run(tmp_path, capsys):
    rng = np.random.default_rng(3)
    for split in ("train", "val"):
        (tmp_path / split).mkdir()
        for i in range(2):
            Image.fromarray(rng.integers(0, 256, (64, 72, 3), dtype=np.uint8)).save(tmp_path / split / f"im{i}.png")
    run = tmp_path / "run"
    assert main(["train", "--arch", "fsrcnn", "--schedule", "smoke", "--train-dir", str(tmp_path / "train"),
                 "--val-dir", str(tmp_path / "val"), "--out", str(run), "--no-progress", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert json.loads((run / "config.json").read_text())["arch"] == FSRCNNConfig().to_dict()

    from searchsr.train import load_trained

    cfg, model = load_trained(run)
    assert cfg == FSRCNNConfig() and isinstance(model, FSRCNN)
    assert main(["eval", "--checkpoint", str(run), "--data", str(tmp_path / "val"), "--json"]) == 0
    # training validates its channels_last network, eval a contiguous one: float rounding may flip a pixel
    assert json.loads(capsys.readouterr().out)["psnr_y"] == pytest.approx(result["val"]["psnr_y"], abs=1e-3)

    assert main(["export", "--checkpoint", str(run), "--out", str(tmp_path / "exported")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "fsrcnn is a reference network" in err
    assert not (tmp_path / "exported").exists()
