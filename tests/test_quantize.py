"""INT8 export: ONNX Runtime static quantization, its calibration, the card's INT8 section, ``upscale --int8``."""

from __future__ import annotations

import json
import shutil

import numpy as np
import onnx
import pytest
import skimage.data
import torch
from PIL import Image

from searchsr.arch import build_model
from searchsr.bundle import INT8_FILE, OnnxModel, ort_session
from searchsr.card import sha256
from searchsr.cli import main
from searchsr.config import ArchConfig
from searchsr.data import load_folder, load_source
from searchsr.export import model_onnx
from searchsr.imresize import imresize_uint8
from searchsr.quantize import QuantSettings, calibration_inputs, evaluate_onnx, int8_data, quantize_onnx
from searchsr.schedule import load_schedule
from searchsr.train import train

CFG = ArchConfig(nf=16, n_blocks=2)  # enough weights for INT8 to pay off in bytes; quantizes in < 1 s


def _photo(name: str) -> np.ndarray:
    """A real LR photo, float32 1x3xHxW: astronaut (128x128) or coffee (100x150), MATLAB bicubic x1/4."""
    lr = imresize_uint8(getattr(skimage.data, name)(), 1 / 4)
    return np.ascontiguousarray(lr.transpose(2, 0, 1)[None], dtype=np.float32) / np.float32(255)


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    return float(10 * np.log10(1 / np.mean((a.astype(np.float64) - b) ** 2)))


@pytest.fixture(scope="module")
def graphs():
    """The FP32 graph of a random network (seeded) and its INT8 graph, calibrated on the embedded photos."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(1)
        model = build_model(CFG)
    fp32 = model_onnx(model, CFG)
    return fp32, quantize_onnx(fp32, calibration_inputs(None, CFG.scale, count=8))


def test_int8_graph_is_quantized_smaller_and_close_to_fp32_on_photos(graphs):
    fp32, int8 = graphs
    assert len(int8) < 0.9 * len(fp32)  # measured 0.82x
    proto = onnx.load_from_string(int8)
    weights = {t.name: t for t in proto.graph.initializer}
    ops = [n.op_type for n in proto.graph.node]
    int8_weights = [n for n in proto.graph.node if n.op_type == "DequantizeLinear" and n.input[0] in weights
                    and weights[n.input[0]].data_type == onnx.TensorProto.INT8]
    assert len(int8_weights) >= 10 and "QuantizeLinear" in ops and "ReduceMean" not in ops
    to_rgb = next(n for n in proto.graph.node if n.name == "/model/to_rgb/Conv")  # the HR end stays float32
    assert weights[to_rgb.input[1]].data_type == onnx.TensorProto.FLOAT
    meta = {p.key: p.value for p in proto.metadata_props}
    assert meta["searchsr.precision"] == "int8" and meta["searchsr.scale"] == "4"
    assert json.loads(meta["searchsr.ort_session"])["graph_optimization_level"] == "all"

    for name in ("astronaut", "coffee"):
        x = _photo(name)
        want = ort_session(fp32).run(None, {"lr": x})[0]
        got = ort_session(int8, int8=True).run(None, {"lr": x})[0]
        assert got.shape == want.shape == (1, 3, 4 * x.shape[2], 4 * x.shape[3]) and got.dtype == np.float32
        assert np.abs(got - want).max() > 1e-5  # really quantized (measured 7e-4)
        residual = want - imresize_uint8((x[0].transpose(1, 2, 0) * 255).round().astype(np.uint8), 4
                                         ).transpose(2, 0, 1)[None] / 255.0
        signal = residual - residual.mean((2, 3), keepdims=True)  # the network's correction, its constant removed
        assert _psnr(got, want) > 65  # measured 77.6 and 78.3 dB
        assert 10 * np.log10(np.mean(signal**2) / np.mean((got - want) ** 2)) > 35  # measured 47.5 and 50.6 dB


def test_calibration_decides_the_ranges(graphs):
    """The same graph calibrated on black patches clips every activation: the check above can fail."""
    fp32, _ = graphs
    black = quantize_onnx(fp32, [np.zeros((1, 3, 32, 32), np.float32)])
    x = _photo("astronaut")
    want = ort_session(fp32).run(None, {"lr": x})[0]
    assert _psnr(ort_session(black, int8=True).run(None, {"lr": x})[0], want) < 30  # measured 14 dB


def test_calibration_is_reproducible(graphs, tmp_path):
    a, b = calibration_inputs(None, 4, count=5, size=24), calibration_inputs(None, 4, count=5, size=24)
    assert len(a) == 5 and all(x.shape == (1, 3, 24, 24) and x.dtype == np.float32 for x in a)
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    assert 0 <= min(x.min() for x in a) and max(x.max() for x in a) <= 1
    other = calibration_inputs(None, 4, count=5, size=24, seed=1)
    assert not all(np.array_equal(x, y) for x, y in zip(a, other))
    fp32, int8 = graphs
    assert quantize_onnx(fp32, calibration_inputs(None, CFG.scale, count=8)) == int8  # byte for byte
    # a folder of HR images: LR patches made like training LR; smaller images give whole sides
    Image.fromarray(skimage.data.coffee()[:40, :60]).save(tmp_path / "small.png")
    (patch,) = calibration_inputs(tmp_path, 4, count=1, size=64)
    assert patch.shape == (1, 3, 10, 15)
    assert np.array_equal(patch[0], load_folder(tmp_path, 4).images[0].lr.transpose(2, 0, 1) / np.float32(255))


def test_settings_change_the_graph(graphs):
    fp32, _ = graphs
    calib = calibration_inputs(None, CFG.scale, count=8)
    whole = onnx.load_from_string(quantize_onnx(fp32, calib, QuantSettings(float_tail=False, pool_rewrite=False)))
    ops = {n.op_type for n in whole.graph.node}
    assert "ReduceMean" in ops and "GlobalAveragePool" not in ops
    weights = {t.name: t for t in whole.graph.initializer}
    to_rgb = next(n for n in whole.graph.node if n.name == "/model/to_rgb/Conv")
    weight_dq = next(n for n in whole.graph.node if to_rgb.input[1] in n.output)
    assert weights[weight_dq.input[0]].data_type == onnx.TensorProto.INT8


def _run(tmp_path_factory) -> tuple:
    """A finished run of a tiny squeeze-excite network on crops of real photos (smoke schedule: seconds)."""
    root = tmp_path_factory.mktemp("photos")
    for split, names in (("train", ("astronaut", "rocket", "chelsea")), ("val", ("coffee", "camera"))):
        (root / split).mkdir()
        for name in names:
            Image.fromarray(getattr(skimage.data, name)()[:160, :200]).save(root / split / f"{name}.png")
    out = tmp_path_factory.mktemp("runs") / "tiny"
    cfg = ArchConfig(nf=8, n_blocks=2)
    train(cfg, load_schedule("smoke"), load_folder(root / "train", 4), load_folder(root / "val", 4), out,
          progress=False, memory_format="contiguous")
    return root, out


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    root, run = _run(tmp_path_factory)
    out = tmp_path_factory.mktemp("exports") / "tiny"
    assert main(["export", "--checkpoint", str(run), "--out", str(out), "--int8", "--format", "yaml,onnx"]) == 0
    return root, run, out


def test_export_int8_writes_the_graphs_and_the_cards_int8_section(exported, capsys):
    root, run, out = exported
    card = json.loads((out / "model_card.json").read_text())
    assert {p.name for p in out.iterdir()} >= {"model.onnx", INT8_FILE, "model_int8_tiles.onnx",
                                                "model_int8_se_stats.onnx"}
    int8 = card["int8"]
    assert int8["file"] == INT8_FILE and int8["tiling_helpers"] == ["model_int8_tiles.onnx", "model_int8_se_stats.onnx"]
    assert card["files"][INT8_FILE]["sha256"] == sha256(out / INT8_FILE)
    assert int8["bytes"] == (out / INT8_FILE).stat().st_size and int8["fp32_bytes"] == (out / "model.onnx").stat().st_size
    assert int8["calibration"] == {"images": str((root / "train").resolve()), "image_count": 3, "patches": 32,
                                   "patch_size_lr": 64, "seed": 0}
    val = int8["validation"]
    assert val["images"] == str((root / "val").resolve()) and val["image_count"] == 2
    # the FP32 graph scores what the run's own validation measured (PyTorch), the INT8 one close to it
    result = json.loads((run / "result.json").read_text())
    assert val["fp32"]["psnr_y"] == pytest.approx(result["val"]["psnr_y"], abs=0.01)
    assert val["psnr_y_diff_db"] == pytest.approx(val["int8"]["psnr_y"] - val["fp32"]["psnr_y"])
    assert abs(val["psnr_y_diff_db"]) < 0.2 and val["int8"]["psnr_y"] != val["fp32"]["psnr_y"]
    q = int8["quantization"]
    assert (q["format"], q["weights"], q["activations"], q["per_channel"]) == ("QDQ", "QInt8", "QUInt8", True)
    assert q["ort_session"]["disabled_optimizers"] == ["NchwcTransformer"]  # a 4-channel float tail
    assert int8["onnxruntime"] == __import__("onnxruntime").__version__ and int8["notes"] == []
    md = (out / "model_card.md").read_text()
    assert "## INT8" in md and "| INT8 - FP32 |" in md and "seed 0" in md
    # the scores are reproducible with the public helper, on the same images
    again = evaluate_onnx(OnnxModel(out, int8=True), load_folder(root / "val", 4))
    assert again.psnr_y == pytest.approx(val["int8"]["psnr_y"])


def test_int8_images_follow_the_run_else_the_embedded_photos(exported, tmp_path):
    root, _, _ = exported
    data = {"train": str(tmp_path / "gone"), "val": f"{root / 'val'} (1 held out for validation)"}
    found = int8_data(4, data)
    assert found.calibration.source.startswith("skimage:train") and len(found.validation.images) == 1
    gone = f"the run's train images ({tmp_path / 'gone'}) are not on this machine: used the embedded photos"
    assert found.notes == (gone,)
    chosen = int8_data(4, data, calibration=root / "val")
    assert chosen.calibration.source == str((root / "val").resolve()) and chosen.notes == ()
    assert load_source(f"{root / 'val'} (minus 1 held out)", 4).images[0].name in ("camera.png", "coffee.png")
    assert int8_data(4, None).validation.source.startswith("skimage:val")


def test_upscale_int8_tiles_like_fp32_and_stays_close(exported, tmp_path, capsys):
    _, _, out = exported
    lr = imresize_uint8(skimage.data.chelsea(), 1 / 4)  # 75x113: 3x4 tiles of 32
    Image.fromarray(lr).save(tmp_path / "cat.png")
    results = {}
    for name, extra in (("int8_tiled", ["--int8", "--tile", "32"]), ("int8", ["--int8", "--tile", "512"]),
                        ("fp32", ["--tile", "512"])):
        assert main(["upscale", "--model", str(out), str(tmp_path / "cat.png"), "--out", str(tmp_path / name),
                     *extra]) == 0
        results[name] = np.array(Image.open(tmp_path / name / "cat.png")).astype(int)
    assert results["int8"].shape == (300, 452, 3)
    tiled = np.abs(results["int8_tiled"] - results["int8"])
    assert tiled.max() <= 1 and (tiled == 0).mean() > 0.999  # measured: identical (INT8 SE means, same ranges)
    to_fp32 = np.abs(results["int8"] - results["fp32"])
    assert 0 < to_fp32.max() <= 2 and (to_fp32 == 0).mean() > 0.6  # measured: at most 1, 79% equal


def test_upscale_int8_without_an_int8_model_is_one_line(exported, tmp_path, capsys):
    _, _, out = exported
    plain = tmp_path / "plain"
    shutil.copytree(out, plain)
    (plain / INT8_FILE).unlink()
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "img.png")
    capsys.readouterr()
    for argv, message in (([], "re-export with `searchsr export --int8`"), (["--backend", "torch"], "--backend onnx")):
        assert main(["upscale", "--model", str(plain), str(tmp_path / "img.png"), "--out", str(tmp_path / "o"),
                     "--int8", *argv]) == 2
        err = capsys.readouterr().err
        assert err.startswith("searchsr: error:") and err.count("\n") == 1 and message in err, err
        assert not (tmp_path / "o").exists()
    for argv, message in ((["--calib-dir", str(tmp_path)], "goes with --int8"),
                          (["--int8", "--format", "yaml,torchscript"], "includes onnx")):
        assert main(["export", "--checkpoint", str(tmp_path), "--out", str(tmp_path / "x"), *argv]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and message in err, err


def test_bench_upscale_times_fp32_and_int8_in_fresh_processes(capsys) -> None:
    from searchsr.cli import main

    assert main(["bench", "upscale", "--archs", "xlite", "--runtimes", "onnxruntime", "--lr-size", "40", "48",
                 "--runs", "1", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["failed"] == []
    rows = {(r["runtime"], r["precision"]): r for r in result["timings"]}
    assert set(rows) == {("onnxruntime", "fp32"), ("onnxruntime", "int8")}
    for r in rows.values():
        assert r["sr_size"] == [160, 192] and r["seconds"] > 0 and not r["tiled"]  # 40x48 fits one 256 tile
        assert r["peak_total_mb"] >= r["peak_mb"] >= 0 and r["peak_total_mb"] > 100  # a process with torch loaded
