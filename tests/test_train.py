"""Training: Sec. 4.1's loss/optimiser/schedule, determinism, bit-for-bit resume, run folder."""

import csv
import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from searchsr.arch import build_model
from searchsr.config import ArchConfig
from searchsr.data import load_folder
from searchsr.evaluate import evaluate, model_upscaler
from searchsr.schedule import Schedule
from searchsr.errors import DivergedError
from searchsr.patches import PatchSampler
from searchsr.train import load_trained, train

CFG = ArchConfig(nf=8, n_blocks=2)
SCHEDULE = Schedule("test", steps=6, batch_size=2, patch_size=12, lr=0.005, milestones=(2, 4), log_every=1)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    rng = np.random.default_rng(7)
    for split, n in (("train", 3), ("val", 2)):
        (root / split).mkdir()
        for i in range(n):
            img = rng.integers(0, 256, (64 + 8 * i, 72, 3), dtype=np.uint8)
            Image.fromarray(img).save(root / split / f"{i}.png")
    return load_folder(root / "train", 4), load_folder(root / "val", 4)


def _train(data, out, **kwargs):
    kwargs = {"schedule": SCHEDULE, **kwargs}
    return train(CFG, kwargs.pop("schedule"), *data, out, progress=False, **kwargs)


def _metrics(run):
    with (run / "metrics.csv").open() as f:
        return list(csv.DictReader(f))


def _weights(run):
    return load_file(run / "weights.safetensors")


def test_run_folder_and_paper_optimisation(data, tmp_path):
    run = tmp_path / "run"
    result = _train(data, run, seed=3)
    assert result.finished and result.step == 6
    assert sorted(p.name for p in run.iterdir()) == ["config.json", "metrics.csv", "result.json",
                                                     "weights.safetensors"]
    config = json.loads((run / "config.json").read_text())
    assert config["arch"] == CFG.to_dict() and config["seed"] == 3
    assert config["schedule"]["milestones"] == [2, 4]
    assert config["data"]["train"] == data[0].source

    rows = _metrics(run)
    train_rows = [r for r in rows if r["loss"]]
    # lr 0.005 halved at steps 2 and 4 (MultiStepLR, gamma 0.5): the lr *used* by each step.
    assert [float(r["lr"]) for r in train_rows] == [0.005, 0.005, 0.0025, 0.0025, 0.00125, 0.00125]
    # The first logged loss is the L1 of the seeded initial network on the first batch.
    torch.manual_seed(3)
    model = build_model(CFG).train()
    lr, hr = PatchSampler(data[0], 12, 2, seed=3, device=torch.device("cpu")).batch(0)
    assert float(train_rows[0]["loss"]) == pytest.approx(F.l1_loss(model(lr), hr).item(), rel=1e-5)

    (val_row,) = [r for r in rows if r["val_psnr_y"]]
    assert float(val_row["val_psnr_y"]) == pytest.approx(result.val.psnr_y)
    saved = json.loads((run / "result.json").read_text())
    assert saved["val"]["psnr_y"] == pytest.approx(result.val.psnr_y)
    assert saved["bicubic"]["images"] == 2 and saved["params"] == result.params > 0
    # The final weights reload into a network that scores exactly the same.
    cfg, trained = load_trained(run)
    assert cfg == CFG
    assert evaluate(model_upscaler(trained), data[1]).psnr_y == pytest.approx(result.val.psnr_y, abs=1e-9)


def test_training_is_deterministic_on_cpu(data, tmp_path):
    a, b = _weights_of(data, tmp_path / "a", 0), _weights_of(data, tmp_path / "b", 0)
    c = _weights_of(data, tmp_path / "c", 1)
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)


def _weights_of(data, run, seed):
    _train(data, run, seed=seed)
    return _weights(run)


def test_resume_is_bit_for_bit(data, tmp_path):
    _train(data, tmp_path / "straight")
    stopped = _train(data, tmp_path / "resumed", until=3)
    assert not stopped.finished and stopped.val is None
    assert not (tmp_path / "resumed" / "result.json").exists()
    with safe_open(tmp_path / "resumed" / "checkpoint.safetensors", "pt") as f:
        state = json.loads(f.metadata()["state"])
        assert any(k.startswith("optimizer.") and k.endswith(".exp_avg_sq") for k in f.keys())
    assert state["step"] == 3 and state["param_groups"][0]["betas"] == [0.9, 0.99]
    # Rows logged after the checkpoint by an interrupted run are dropped on resume.
    with (tmp_path / "resumed" / "metrics.csv").open("a") as f:
        f.write("4,9.9,0.1,,\n")
    _train(data, tmp_path / "resumed", resume=True)

    a, b = _weights(tmp_path / "straight"), _weights(tmp_path / "resumed")
    assert all(torch.equal(a[k], b[k]) for k in a)  # weights and BN statistics, bit for bit
    assert _metrics(tmp_path / "straight") == _metrics(tmp_path / "resumed")


def test_resume_without_optimizer_state_would_differ(data, tmp_path):
    # Guards the test above: a "resume" that restarts Adam from scratch is detectably different.
    _train(data, tmp_path / "straight")
    _train(data, tmp_path / "part", until=3)
    ckpt = tmp_path / "part" / "checkpoint.safetensors"
    tensors = load_file(ckpt)
    with safe_open(ckpt, "pt") as f:
        metadata = f.metadata()
    save_file({k: (torch.zeros_like(v) if k.endswith("exp_avg") else v) for k, v in tensors.items()}, ckpt,
              metadata=metadata)
    _train(data, tmp_path / "part", resume=True)
    a, b = _weights(tmp_path / "straight"), _weights(tmp_path / "part")
    assert not all(torch.equal(a[k], b[k]) for k in a)


def test_refusals_write_nothing(data, tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "keep.txt").write_text("mine")
    with pytest.raises(ValueError, match="not an empty folder"):
        _train(data, run)
    assert [p.name for p in run.iterdir()] == ["keep.txt"]
    with pytest.raises(ValueError, match="nothing to resume"):
        _train(data, tmp_path / "new", resume=True)
    with pytest.raises(ValueError, match="smaller than the 100x100 training patch"):
        _train(data, tmp_path / "big", schedule=Schedule("big", 2, 1, 100, 0.005, ()))
    with pytest.raises(ValueError, match="x4, the network is x2"):
        train(CFG.replace(scale=2), SCHEDULE, *data, tmp_path / "scale", progress=False)
    assert not (tmp_path / "new").exists() and not (tmp_path / "big").exists()
    assert not (tmp_path / "scale").exists()


def test_resume_checks_config_and_refuses_finished_run(data, tmp_path):
    run = tmp_path / "run"
    _train(data, run, until=2)
    with pytest.raises(ValueError, match="--resume: seed differs"):
        _train(data, run, resume=True, seed=9)
    with pytest.raises(ValueError, match="--resume: schedule.steps differs .*: 6 there, 8 now"):
        _train(data, run, resume=True, schedule=Schedule("test", 8, 2, 12, 0.005, (2, 4), log_every=1))
    _train(data, run, resume=True)
    with pytest.raises(ValueError, match="already finished"):
        _train(data, run, resume=True)


def test_nan_loss_is_a_clear_error(data, tmp_path):
    wild = Schedule("wild", steps=6, batch_size=2, patch_size=12, lr=1e30, milestones=())
    with pytest.raises(DivergedError, match=r"loss is (nan|inf) at step \d: training diverged"):
        _train(data, tmp_path / "run", schedule=wild)
    assert not (tmp_path / "run" / "result.json").exists()


def test_bf16_trains_and_scores_close_to_fp32(data, tmp_path):
    schedule = Schedule("bf16", steps=40, batch_size=4, patch_size=12, lr=0.005, milestones=(20, 30), log_every=10)
    fp32 = _train(data, tmp_path / "fp32", schedule=schedule)
    bf16 = _train(data, tmp_path / "bf16", schedule=schedule, precision="bf16")
    assert bf16.precision == "bf16" and json.loads((tmp_path / "bf16" / "config.json").read_text())["precision"] == "bf16"
    assert bf16.val.psnr_y > bf16.bicubic.psnr_y - 3  # it learned: scored in fp32, not diverged
    assert abs(bf16.val.psnr_y - fp32.val.psnr_y) < 0.05
    assert not all(torch.equal(a, b) for a, b in zip(_weights(tmp_path / "fp32").values(),
                                                    _weights(tmp_path / "bf16").values()))  # it did run in bf16


def test_precision_and_memory_format_refusals(data, tmp_path):
    with pytest.raises(ValueError, match="fp16 needs a CUDA device"):
        _train(data, tmp_path / "a", precision="fp16")
    with pytest.raises(ValueError, match="--precision must be one of fp32, bf16, fp16"):
        _train(data, tmp_path / "b", precision="fp8")
    with pytest.raises(ValueError, match="memory format must be auto"):
        _train(data, tmp_path / "c", memory_format="nhwc")
    assert not any(tmp_path.iterdir())


def test_the_memory_format_is_chosen_kept_on_resume_and_old_amp_runs_resume(data, tmp_path):
    run = tmp_path / "run"
    _train(data, run, until=3, memory_format="contiguous")
    with safe_open(run / "checkpoint.safetensors", "pt") as f:
        assert json.loads(f.metadata()["state"])["memory_format"] == "contiguous"
    config = json.loads((run / "config.json").read_text())
    config["amp"] = config.pop("precision") == "fp16"  # a run folder from before --precision
    (run / "config.json").write_text(json.dumps(config))
    assert _train(data, run, resume=True).memory_format == "contiguous"  # auto keeps the checkpoint's
    straight = _train(data, tmp_path / "straight", memory_format="contiguous")
    assert straight.memory_format == "contiguous"
    a, b = _weights(run), _weights(tmp_path / "straight")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_choosing_a_memory_format_leaves_the_network_untouched():
    from searchsr.tuning import choose_memory_format

    model = build_model(CFG).train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    choice, seconds = choose_memory_format(model, torch.rand(2, 3, 12, 12), torch.rand(2, 3, 48, 48), "fp32")
    assert choice in ("channels_last", "contiguous") and seconds[choice] == min(seconds.values()) > 0
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
