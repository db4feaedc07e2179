"""``searchsr export`` / ``searchsr upscale``: verified exports, exact tiling, safe loading, one-line errors."""

from __future__ import annotations

import json
import pickle
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import skimage.data
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

from searchsr.arch import build_model
from searchsr.bundle import OPSET, OnnxModel, load_weights
from searchsr.card import sha256
from searchsr.config import ArchConfig, load_arch
from searchsr.cli import main
from searchsr.data import load_folder
from searchsr.deploy import StaticBicubic, se_input_means
from searchsr.evaluate import tiles
from searchsr.evaluate import upscale as torch_upscale
from searchsr.errors import VerificationError
from searchsr.export import export_model, load_run
from searchsr.imresize import imresize_uint8
from searchsr.schedule import load_schedule
from searchsr.train import train

EXPORTED = {"arch.yaml", "weights.safetensors", "model.onnx", "model_tiles.onnx", "model_se_stats.onnx",
            "model.ts", "model_card.json", "model_card.md"}


def _lr(image: np.ndarray) -> np.ndarray:
    return imresize_uint8(image, 1 / 4)


def _as_input(img: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(img.transpose(2, 0, 1)[None], dtype=np.float32) / np.float32(255)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A finished XLITE run on the smoke schedule (tiny random images: seconds, learns nothing)."""
    root = tmp_path_factory.mktemp("data")
    rng = np.random.default_rng(5)
    for split in ("train", "val"):
        (root / split).mkdir()
        for i in range(2):
            Image.fromarray(rng.integers(0, 256, (64, 72, 3), dtype=np.uint8)).save(root / split / f"im{i}.png")
    out = tmp_path_factory.mktemp("runs") / "xlite_smoke"
    train(load_arch("xlite"), load_schedule("smoke"), load_folder(root / "train", 4), load_folder(root / "val", 4),
          out, progress=False)
    return out


@pytest.fixture(scope="module")
def exported(run_dir, tmp_path_factory):
    cfg, model, provenance = load_run(run_dir)
    out = tmp_path_factory.mktemp("exports") / "xlite"
    card = export_model(cfg, model, out, provenance=provenance)
    return out, card, model


def test_export_writes_every_file_and_a_model_card(exported, run_dir):
    out, card, model = exported
    assert {p.name for p in out.iterdir()} == EXPORTED
    assert card == json.loads((out / "model_card.json").read_text())
    assert load_arch(str(out / "arch.yaml")) == load_arch("xlite") == ArchConfig(**card["arch"])
    assert card["onnx"]["opset"] == OPSET == 17
    assert card["cost"]["params"] == 17_979 and card["cost"]["flops"] > 0
    result = json.loads((run_dir / "result.json").read_text())
    assert card["provenance"]["metrics"]["val"]["psnr_y"] == result["val"]["psnr_y"]
    assert card["provenance"]["schedule"]["name"] == "smoke"
    assert card["export_command"] == sys.argv
    assert 0 <= card["verification"]["max_abs_diff"] <= 1e-4
    checked = {c["file"] for c in card["verification"]["checks"]}
    assert {"model.onnx", "model.ts", "model_tiles.onnx + model_se_stats.onnx"} <= checked
    for name, info in card["files"].items():
        assert sha256(out / name) == info["sha256"]
    md = (out / "model_card.md").read_text()
    assert "opset 17" in md and "PSNR-Y" in md and "smoke" in md
    # The weights are the run's, in the run's own format (arch in the metadata), never pickled.
    saved = load_file(out / "weights.safetensors")
    assert saved.keys() == model.state_dict().keys()
    assert all(torch.equal(saved[k], v) for k, v in model.state_dict().items())
    cfg, again = load_weights(out / "weights.safetensors")
    assert cfg == load_arch("xlite")


def test_onnx_matches_pytorch_on_a_real_image_at_any_size(exported):
    out, _, model = exported
    proto = onnx.load(str(out / "model.onnx"))
    assert [o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")] == [17]
    assert "BatchNormalization" not in {n.op_type for n in proto.graph.node}  # fused
    (inp,), (outp,) = proto.graph.input, proto.graph.output
    assert inp.name == "lr" and outp.name == "sr"
    dims = [d.dim_param or d.dim_value for d in inp.type.tensor_type.shape.dim]
    assert dims == ["batch", 3, "height", "width"] and inp.type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    session = ort.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
    astronaut = _lr(skimage.data.astronaut())  # 128x128
    odd = _lr(skimage.data.chelsea())[:61, :45]  # odd height and width
    batch = np.concatenate([_as_input(odd), _as_input(astronaut[:61, :45])])
    for x in (_as_input(astronaut), _as_input(odd), batch):
        got = session.run(None, {"lr": x})[0]
        with torch.inference_mode():
            want = model.eval()(torch.from_numpy(x)).clamp(0, 1).numpy()
        assert got.shape == (x.shape[0], 3, 4 * x.shape[2], 4 * x.shape[3])
        assert np.abs(got - want).max() <= 1e-4


def test_torchscript_matches_pytorch_at_other_sizes(exported):
    out, _, model = exported
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # TorchScript is deprecated from torch 2.10 on
        scripted = torch.jit.load(str(out / "model.ts"))
    for h, w in ((48, 40), (37, 53)):
        x = torch.from_numpy(_as_input(_lr(skimage.data.astronaut())[:h, :w]))
        with torch.inference_mode():
            got, want = scripted(x), model.eval()(x).clamp(0, 1)
        assert got.shape == (1, 3, 4 * h, 4 * w)
        assert (got - want).abs().max().item() <= 1e-4


def test_failed_verification_leaves_nothing(tmp_path, monkeypatch):
    original = StaticBicubic.forward
    monkeypatch.setattr(StaticBicubic, "forward", lambda self, x: original(self, x) + 1e-3)
    cfg = ArchConfig(nf=8, n_blocks=1)
    parent = tmp_path / "exports"
    parent.mkdir()
    with pytest.raises(VerificationError, match="not exported"):
        export_model(cfg, build_model(cfg), parent / "broken", formats=["yaml", "onnx"])
    assert list(parent.iterdir()) == []  # neither the target nor the temporary folder

    (parent / "full").mkdir()
    (parent / "full" / "keep.txt").write_text("x")
    monkeypatch.setattr(StaticBicubic, "forward", original)
    with pytest.raises(ValueError, match="not empty"):
        export_model(cfg, build_model(cfg), parent / "full", formats=["yaml"])
    assert [p.name for p in parent.iterdir()] == ["full"] and (parent / "full" / "keep.txt").read_text() == "x"


def test_upscale_is_exactly_x4_and_matches_the_pytorch_model(exported, tmp_path, capsys):
    out, _, model = exported
    lr = _lr(skimage.data.chelsea())  # 75x113, a real photo
    Image.fromarray(lr).save(tmp_path / "cat.png")
    assert main(["upscale", "--model", str(out), str(tmp_path / "cat.png"), "--out", str(tmp_path / "sr"),
                 "--tile", "32"]) == 0  # 3x4 tiles: exercises the SE-exact tiling
    assert "cat.png" in capsys.readouterr().out
    sr = np.array(Image.open(tmp_path / "sr" / "cat.png"))
    assert sr.shape == (4 * 75, 4 * 113, 3) and sr.dtype == np.uint8
    want = torch_upscale(model, lr, tile=1000).astype(int)  # untiled, BN not fused
    diff = np.abs(sr.astype(int) - want)
    assert diff.max() <= 1 and (diff == 0).mean() > 0.999  # float rounding may flip a few roundings

    assert main(["upscale", "--model", str(out), str(tmp_path / "cat.png"), "--out", str(tmp_path / "sr_torch"),
                 "--backend", "torch", "--tile", "64", "--json"]) == 0
    (report,) = json.loads(capsys.readouterr().out)
    assert report["sr_size"] == [300, 452]
    torch_sr = np.array(Image.open(tmp_path / "sr_torch" / "cat.png")).astype(int)
    assert np.abs(torch_sr - want).max() <= 1 and (torch_sr == want).mean() > 0.999


def test_tiled_onnx_uses_image_wide_squeeze_excite_means(exported):
    """Tiles see only part of the image; the SE statistics must still be the whole image's."""
    out, _, model = exported
    engine = OnnxModel(out)
    x = _as_input(_lr(skimage.data.chelsea()))  # 75x113
    grid = tiles(75, 113, 32, engine.radius)
    assert len(grid) == 12
    got, want = engine.se_means(x, grid), se_input_means(model.eval(), x)
    assert got.shape == want.shape == (8, 32)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6)
    first = grid[0]  # what a tile alone would use: clearly different, so the check above can fail
    alone = se_input_means(model.eval(), np.ascontiguousarray(first.window(x)))
    assert np.abs(alone - want).max() > 100 * np.abs(got - want).max()


def test_upscale_keeps_gray_gray_and_alpha(exported, tmp_path):
    out, _, _ = exported
    gray = _lr(skimage.data.camera())[:40, :52]
    rgba = np.dstack([_lr(skimage.data.coffee())[:30, :44], np.tile(np.linspace(0, 255, 44, dtype=np.uint8), (30, 1))])
    Image.fromarray(gray).save(tmp_path / "gray.png")
    Image.fromarray(rgba).save(tmp_path / "rgba.png")
    Image.fromarray(gray).save(tmp_path / "photo.jpg")
    assert main(["upscale", "--model", str(out), *(str(tmp_path / n) for n in ("gray.png", "rgba.png", "photo.jpg")),
                 "--out", str(tmp_path / "sr")]) == 0
    g = Image.open(tmp_path / "sr" / "gray.png")
    assert g.mode == "L" and g.size == (52 * 4, 40 * 4)
    a = Image.open(tmp_path / "sr" / "rgba.png")
    assert a.mode == "RGBA" and a.size == (44 * 4, 30 * 4)
    assert np.array_equal(np.array(a)[..., 3], imresize_uint8(rgba[..., 3], 4))
    assert Image.open(tmp_path / "sr" / "photo.png").size == (52 * 4, 40 * 4)


def test_upscale_turns_exif_rotated_photos_and_reads_16_bit_gray_and_rgb_alike(exported, tmp_path):
    """Issue 12: a phone photo stored sideways is upscaled as shown (alpha turned with it); 16-bit gray
    and 16-bit RGB are both accepted, with the same values."""
    from test_defects_ship import ORIENTATION, png16

    out, _, _ = exported
    stored = _lr(skimage.data.coffee())[:18, :26]  # 26 wide, 18 high; shown 18 wide, 26 high
    for name, img in (("phone.jpg", Image.fromarray(stored)),
                      ("rgba.png", Image.fromarray(np.dstack([stored, np.tile(np.arange(26, dtype=np.uint8) * 9,
                                                                              (18, 1))])))):
        exif = img.getexif()
        exif[ORIENTATION] = 6
        img.save(tmp_path / name, exif=exif.tobytes())
    values = np.tile(np.array([0, 255, 256, 1000, 32768, 65535], dtype=np.uint16), (16, 3))
    png16(tmp_path / "gray16.png", values)
    png16(tmp_path / "rgb16.png", np.dstack([values, values, values]))
    assert main(["upscale", "--model", str(out), *(str(tmp_path / n) for n in ("phone.jpg", "rgba.png", "gray16.png",
                                                                             "rgb16.png")),
                 "--out", str(tmp_path / "sr"), "--backend", "torch"]) == 0
    assert Image.open(tmp_path / "sr" / "phone.png").size == (18 * 4, 26 * 4)  # W x H as shown, was 104 x 72
    rgba = np.asarray(Image.open(tmp_path / "sr" / "rgba.png"))
    assert rgba.shape == (26 * 4, 18 * 4, 4)
    assert np.array_equal(rgba[..., 3], imresize_uint8(np.rot90(np.tile(np.arange(26, dtype=np.uint8) * 9, (18, 1)),
                                                                k=-1).copy(), 4))
    gray, rgb = (np.asarray(Image.open(tmp_path / "sr" / f"{n}.png")) for n in ("gray16", "rgb16"))
    assert gray.shape == (64, 72) and rgb.shape == (64, 72, 3)
    assert np.abs(rgb.astype(int).mean(-1) - gray).max() <= 1  # gray = the mean of the same output's channels


@pytest.mark.parametrize("changes", [dict(se=False, scale=2), dict(scale=3, kernel_size=5, act="prelu", bn=False),
                                     dict(n_blocks=1, act="relu")])  # one SE layer: no earlier SE mean is used
def test_other_family_members_export_and_tile_exactly(changes, tmp_path):
    cfg = ArchConfig(**{"nf": 8, "n_blocks": 2, **changes})
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = build_model(cfg)
        for module in model.modules():  # BN statistics far from the identity, so fusion matters
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.uniform_(-0.2, 0.2)
                module.running_var.uniform_(0.5, 2.0)
    card = export_model(cfg, model, tmp_path / "m")
    assert card["verification"]["max_abs_diff"] <= 1e-4
    assert ("model_tiles.onnx" in card["files"]) == cfg.se  # no SE: plain tiles of model.onnx are exact
    lr = _lr(skimage.data.chelsea())[:50, :70]
    Image.fromarray(lr).save(tmp_path / "cat.png")
    assert main(["upscale", "--model", str(tmp_path / "m"), str(tmp_path / "cat.png"), "--out", str(tmp_path / "sr"),
                 "--tile", "16"]) == 0
    sr = np.array(Image.open(tmp_path / "sr" / "cat.png")).astype(int)
    want = torch_upscale(model, lr, tile=1000).astype(int)
    assert sr.shape == (50 * cfg.scale, 70 * cfg.scale, 3)
    assert np.abs(sr - want).max() <= 1 and (sr == want).mean() > 0.999


def _copy_with_weights(src: Path, dst: Path, tensors: dict | None = None, raw: bytes | None = None) -> Path:
    shutil.copytree(src, dst)
    if raw is not None:
        (dst / "weights.safetensors").write_bytes(raw)
    if tensors is not None:
        save_file(tensors, str(dst / "weights.safetensors"), metadata={"arch": load_arch("xlite").to_json()})
    return dst / "weights.safetensors"


class _Booby:
    """Unpickling this would create a file: proof that loading never unpickles."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_truncated_or_tampered_weights_are_one_line_errors(exported, run_dir, tmp_path, capsys):
    out, _, model = exported
    data = (out / "weights.safetensors").read_bytes()
    good = load_file(out / "weights.safetensors")
    cases = {
        "truncated": (dict(raw=data[: len(data) // 2]), "truncated or corrupt"),
        "empty": (dict(raw=b""), "truncated or corrupt"),
        "shape": (dict(tensors={**good, "reduce.weight": torch.zeros(8, 16, 3, 3)}), "'reduce.weight' has shape"),
        "missing": (dict(tensors={k: v for k, v in good.items() if k != "to_rgb.bias"}),
                    "missing tensor 'to_rgb.bias'"),
        "extra": (dict(tensors={**good, "evil": torch.zeros(1)}), "unexpected tensor 'evil'"),
        "nan": (dict(tensors={**good, "to_rgb.bias": torch.full((3,), float("nan"))}), "NaN"),
    }
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "img.png")
    marker = tmp_path / "unpickled"
    cases["pickle"] = (dict(raw=pickle.dumps({"to_rgb.bias": _Booby(marker)})), "truncated or corrupt")
    for name, (kwargs, message) in cases.items():
        path = _copy_with_weights(out, tmp_path / name, **kwargs)
        with pytest.raises(ValueError, match=message) as info:
            load_weights(path)
        assert "\n" not in str(info.value), name
        # and through the CLI: exit 2, one line, nothing written
        assert main(["upscale", "--model", str(tmp_path / name), str(tmp_path / "img.png"), "--out",
                     str(tmp_path / f"{name}_sr"), "--backend", "torch"]) == 2
    assert not marker.exists()

    run_copy = tmp_path / "run"
    shutil.copytree(run_dir, run_copy)
    (run_copy / "weights.safetensors").write_bytes((run_dir / "weights.safetensors").read_bytes()[:1000])
    with pytest.raises(ValueError, match="truncated or corrupt"):
        load_run(run_copy)
    capsys.readouterr()
    assert main(["export", "--checkpoint", str(run_copy), "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("searchsr: error:") and not (tmp_path / "x").exists()


@pytest.mark.parametrize("argv, message", [
    (["upscale", "--model", "{model}", "{tmp}/missing.png", "--out", "{tmp}/o"], "missing.png: no such file"),
    (["upscale", "--model", "{model}", "{tmp}/text.png", "--out", "{tmp}/o"], "text.png: cannot read image"),
    (["upscale", "--model", "{tmp}/nomodel", "{tmp}/img.png", "--out", "{tmp}/o"], "no such model folder"),
    (["upscale", "--model", "{tmp}/partial", "{tmp}/img.png", "--out", "{tmp}/o"], "no model.onnx"),
    (["upscale", "--model", "{tmp}/partial", "{tmp}/img.png", "--out", "{tmp}/o", "--backend", "torch"],
     "no weights.safetensors"),
    (["upscale", "--model", "{model}", "{tmp}/img.png", "--out", "{tmp}/text.png"], "exists and is not a folder"),
    (["upscale", "--model", "{model}", "{tmp}/img.png", "--out", "{tmp}/text.png/sub"], "is not a folder"),
    (["upscale", "--model", "{model}", "{tmp}/img.png", "--out", "{tmp}/o", "--tile", "8"], "--tile must be"),
    (["upscale", "--model", "{model}", "{tmp}/img.png", "{tmp}/img.jpg", "--out", "{tmp}/o"], "would overwrite"),
    (["export", "--checkpoint", "{tmp}/norun", "--out", "{tmp}/o"], "no such run folder"),
    (["export", "--checkpoint", "{tmp}", "--out", "{tmp}/o"], "not a run folder"),
    (["export", "--checkpoint", "{run}", "--out", "{model}"], "not empty"),
    (["export", "--checkpoint", "{run}", "--out", "{tmp}/text.png/o"], "is not a folder"),
    (["export", "--checkpoint", "{run}", "--out", "{tmp}/o", "--format", "onnx,tflite"], "--format takes"),
    (["export", "--checkpoint", "{run}", "--out", "{tmp}/o", "--trial", "3"], "go with --study"),
    (["export", "--study", "s", "--out", "{tmp}/o"], "needs --trial"),
    (["export", "--study", "s", "--trial", "3", "--storage", "sqlite:///{tmp}/none.db", "--out", "{tmp}/o"],
     "no study storage at"),
])
def test_bad_input_is_one_line_exit_2_and_writes_nothing(argv, message, exported, run_dir, tmp_path, capsys):
    out, _, _ = exported
    (tmp_path / "text.png").write_text("not an image")
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "img.png")
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "img.jpg")
    (tmp_path / "partial").mkdir()
    shutil.copy(out / "arch.yaml", tmp_path / "partial")
    before = sorted(p.name for p in tmp_path.iterdir())
    capsys.readouterr()
    args = [a.format(tmp=tmp_path, model=out, run=run_dir) for a in argv]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith("searchsr: error:") and err.count("\n") == 1 and message in err, err
    assert sorted(p.name for p in tmp_path.iterdir()) == before
    assert {p.name for p in out.iterdir()} == EXPORTED


def test_a_real_process_reports_one_line_without_traceback(exported, tmp_path):
    out, _, _ = exported
    proc = subprocess.run([sys.executable, "-m", "searchsr.cli", "upscale", "--model", str(out),
                           str(tmp_path / "nope.png"), "--out", str(tmp_path / "o")], capture_output=True, text=True)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr
    assert "nope.png: no such file" in proc.stderr and not (tmp_path / "o").exists()
