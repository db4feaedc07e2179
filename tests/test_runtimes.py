"""Latency backends (searchsr.runtimes): the ONNX Runtime runner computes what the network does, every
measurement says where it was taken, and a study keeps one backend."""

import json

import numpy as np
import optuna
import pytest
import torch

from searchsr.arch import build_model
from searchsr.cli import main
from searchsr.config import load_arch
from searchsr.meter import CostMeter
from searchsr.runtimes import runner, runtime_info
from searchsr.study import SETUP_ATTR, check_setup, record_setup


@pytest.mark.parametrize("name", ["xlite", "fsrcnn"])
def test_the_onnxruntime_runner_computes_the_network(name):
    cfg = load_arch(name)
    model = build_model(cfg).eval()
    x = torch.rand(1, 3, 20, 28)
    got = runner(model, cfg, "onnxruntime", 1, (20, 28))(x)
    want = model(x).clamp(0, 1).detach().numpy()
    assert got.shape == (1, 3, 80, 112) and np.abs(got - want).max() < 1e-5
    fused = runner(model, cfg, "torch", 1, (20, 28))(x).detach().clamp(0, 1).numpy()  # BN folded: the same up to rounding
    assert np.abs(fused - want).max() < 1e-5


def test_the_meter_times_on_its_backend_and_says_so():
    meter = CostMeter(1, 2, lr_size=(24, 24), backend="onnxruntime")
    costs = meter.measure(load_arch("xlite").to_dict())
    assert costs["latency_backend"] == "onnxruntime" and costs["latency_runtime"].startswith("onnxruntime")
    assert costs["latency_runtime_version"] == runtime_info("onnxruntime", 1).version
    assert costs["latency_precision"] == "fp32" and costs["latency_threads"] == 1
    assert 0.8 < costs["latency_ratio"] < 1.25  # XLITE against XLITE, both on ONNX Runtime
    assert meter.own_yardstick()["backend"] == "onnxruntime"


def _setup(backend):
    return {"schedule": {"label": "short", "key": "s"},
            "latency backend": {"label": backend, "key": backend, "before": "torch"}}


def test_a_study_keeps_one_latency_backend_and_older_studies_were_torch():
    study = optuna.create_study(directions=["maximize", "minimize"])
    check_setup(study, _setup("onnxruntime"))  # a new study takes any
    record_setup(study, _setup("onnxruntime"))
    with pytest.raises(ValueError, match="latency backend onnxruntime; this run has latency backend torch"):
        check_setup(study, _setup("torch"))
    old = optuna.create_study(directions=["maximize", "minimize"])
    old.set_user_attr(SETUP_ATTR, {"schedule": {"label": "short", "key": "s"}})  # before backends
    check_setup(old, _setup("torch"))
    with pytest.raises(ValueError, match="ran with latency backend torch"):
        check_setup(old, _setup("onnxruntime"))


def test_a_new_study_times_on_onnxruntime_and_a_continued_one_on_its_own(tmp_path):
    from searchsr.objectives import parse_objectives
    from searchsr.search import SearchSettings
    from searchsr.space import load_space
    from searchsr.storage import open_storage

    storage = open_storage(f"sqlite:///{tmp_path}/s.db")
    settings = SearchSettings(space=load_space("tiny"), objectives=parse_objectives("psnr,latency"), trials=1,
                              study="old")
    assert settings.with_backend(storage).latency_backend == "onnxruntime"  # no such study yet
    old = optuna.create_study(study_name="old", storage=storage, directions=["maximize", "minimize"])
    old.set_user_attr(SETUP_ATTR, {"schedule": {"label": "short", "key": "s"}})  # from before backends
    assert settings.with_backend(storage).latency_backend == "torch"
    record_setup(optuna.create_study(study_name="cmd", storage=storage, directions=["maximize", "minimize"]),
                 {"latency backend": {"label": "command (adb {model})", "key": "command (adb {model})"}})
    from dataclasses import replace

    with pytest.raises(ValueError, match="--latency-cmd"):  # its command is not remembered: say it again
        replace(settings, study="cmd").with_backend(storage)
    assert replace(settings, latency_backend="torch").with_backend(storage).latency_backend == "torch"


@pytest.mark.parametrize("int8,objectives,backend,predicting,says", [
    (False, ["psnr_int8", "latency"], "onnxruntime", False, "need --int8"),
    (True, ["psnr", "latency"], "torch", False, "not with --latency-backend torch"),
    (True, ["psnr", "latency"], "onnxruntime", True, "predicts FP32 latency only"),
])
def test_int8_goes_with_a_runtime_that_has_an_int8_path(int8, objectives, backend, predicting, says):
    from searchsr.errors import UsageError
    from searchsr.runtimes import check_int8

    with pytest.raises(UsageError, match=says):
        check_int8(int8, objectives, backend, predicting)
    check_int8(True, objectives, "executorch", False)  # fine


def test_profile_on_onnxruntime(capsys):
    assert main(["profile", "--arch", "xlite", "--latency", "--latency-backend", "onnxruntime", "--runs", "2",
                 "--lr-size", "24", "24", "--device", "cpu", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["latency_backend"] == "onnxruntime" and result["latency_ms_median"] > 0


@pytest.mark.parametrize("argv, message", [
    (["--latency-cmd", "x {model}"], "--latency-backend command and --latency-cmd 'TEMPLATE' go together"),
    (["--latency-backend", "command"], "--latency-backend command and --latency-cmd 'TEMPLATE' go together"),
    (["--latency-backend", "command", "--latency-cmd", "adb shell run"], "has no {model}"),
    (["--latency-backend", "command", "--latency-cmd", "exit 4 # {model}"], "latency command exited with code 4"),
])
def test_latency_command_errors_are_one_line(capsys, argv, message):
    code = main(["profile", "--arch", "xlite", "--latency", "--lr-size", "16", "16", *argv])
    err = capsys.readouterr().err
    assert code in (1, 2) and err.startswith("searchsr: error: ") and err.count("\n") == 1 and message in err, err


def test_the_executorch_runner_computes_the_network():
    pytest.importorskip("executorch", reason="the mobile extra (pip install -e '.[mobile]') is not installed")
    cfg = load_arch("xlite")
    model = build_model(cfg).eval()
    x = torch.rand(1, 3, 20, 28)
    got = runner(model, cfg, "executorch", 1, (20, 28))(x)
    assert got.shape == (1, 3, 80, 112)
    assert (got - model(x).clamp(0, 1)).abs().max().item() < 1e-5
    assert runtime_info("executorch", 1).runtime.startswith("executorch")


@pytest.mark.parametrize("backend", ["onnxruntime", "executorch"])
def test_int8_runners_compute_the_network_quantized(backend):
    # A trained-like network: random weights make outputs the bicubic skip dominates, so the check is on
    # the network's own correction (output minus bicubic), which quantization must keep, not zero out.
    if backend == "executorch":
        pytest.importorskip("executorch", reason="the mobile extra (pip install -e '.[mobile]') is not installed")
    from skimage import data

    cfg = load_arch("xlite")
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    img = data.astronaut()[200:248, 200:264].astype(np.float32) / 255  # a real photo's texture, 48x64
    x = torch.from_numpy(img.transpose(2, 0, 1).copy())[None]
    want = model(x).clamp(0, 1).detach()
    got = torch.as_tensor(np.asarray(runner(model, cfg, backend, 1, (48, 64), int8=True)(x)))
    fp32 = torch.as_tensor(np.asarray(runner(model, cfg, backend, 1, (48, 64))(x)))
    assert got.shape == want.shape
    correction = want - torch.nn.functional.interpolate(x, scale_factor=4, mode="bicubic").clamp(0, 1)
    error = got - want
    assert 0 < error.abs().max() < 0.1 and (fp32 - want).abs().max() < 1e-4  # quantized, and close
    assert float(correction.pow(2).mean() / error.pow(2).mean()) > 10  # the correction survives


def test_without_the_mobile_extra_executorch_is_a_one_line_error(monkeypatch, capsys):
    monkeypatch.setitem(__import__("sys").modules, "executorch", None)  # as if not installed
    assert main(["profile", "--arch", "xlite", "--latency", "--latency-backend", "executorch", "--device", "cpu",
                 "--lr-size", "16", "16"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and 'needs the mobile extra: pip install -e ".[mobile]"' in err
