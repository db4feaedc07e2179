"""``searchsr train`` / ``searchsr eval`` end to end, and their one-line errors."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from searchsr.cli import main

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def run_cli(*argv):
    """The installed entry point in a fresh process: exit code, stdout, stderr."""
    proc = subprocess.run([sys.executable, "-m", "searchsr.cli", *map(str, argv)], capture_output=True, text=True)
    return proc.returncode, proc.stdout, proc.stderr


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(11)
    for split, n in (("train", 2), ("val", 2)):
        (root / split).mkdir()
        for i in range(n):
            Image.fromarray(rng.integers(0, 256, (72, 80, 3), dtype=np.uint8)).save(root / split / f"im{i}.png")
    return root


@pytest.mark.parametrize("name, psnr, ssim", [("set5", 28.42, 0.810), ("set14", 26.00, 0.703)])
def test_eval_bicubic_json_reproduces_the_literature(name, psnr, ssim, capsys):
    if not (DATA / name).is_dir():
        pytest.skip(f"{DATA / name} not available")
    assert main(["eval", "--arch", "bicubic", "--data", str(DATA / name), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["images"] == {"set5": 5, "set14": 14}[name]
    assert result["psnr_y"] == pytest.approx(psnr, abs=0.02)
    assert result["ssim_y"] == pytest.approx(ssim, abs=0.002)


def test_train_then_eval_checkpoint(folders, tmp_path, capsys):
    run = tmp_path / "run"
    args = ["train", "--arch", "xlite", "--set", "nf=8", "--set", "n_blocks=2", "--schedule", "smoke",
            "--train-dir", folders / "train", "--val-dir", folders / "val", "--out", run, "--no-progress"]
    assert main([str(a) for a in args]) == 0
    out = capsys.readouterr().out
    assert "validation on" in out and "PSNR-Y" in out and "vs bicubic" in out
    result = json.loads((run / "result.json").read_text())
    config = json.loads((run / "config.json").read_text())
    assert config["arch"]["nf"] == 8 and config["command"]["overrides"] == ["nf=8", "n_blocks=2"]

    assert main(["eval", "--checkpoint", str(run), "--data", str(folders / "val"), "--json",
                 "--save-dir", str(tmp_path / "sr")]) == 0
    scored = json.loads(capsys.readouterr().out)
    assert scored["psnr_y"] == pytest.approx(result["val"]["psnr_y"], abs=1e-9)
    assert sorted(p.name for p in (tmp_path / "sr").iterdir()) == ["im0.png", "im1.png"]
    assert Image.open(tmp_path / "sr" / "im0.png").size == (80, 72)

    code, _, err = run_cli(*args)  # the folder is not empty now; a real process, no traceback
    assert code == 2 and err.count("\n") == 1 and "use --resume" in err and "Traceback" not in err


def test_zero_config_train_uses_embedded_photos(tmp_path, capsys):
    assert main(["train", "--schedule", "smoke", "--set", "nf=8", "--set", "n_blocks=1", "--out",
                 str(tmp_path / "run"), "--no-progress", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert [s["name"] for s in result["val"]["per_image"]] == ["chelsea.png", "coffee.png"]


@pytest.mark.parametrize("argv, message", [
    (["eval", "--arch", "bicubic", "--data", "{tmp}/missing"], "missing: not a directory"),
    (["eval", "--arch", "bicubic", "--data", "{tmp}/empty"], "empty: no images"),
    (["eval", "--arch", "bicubic", "--data", "{tmp}/corrupt"], "bad.png: cannot read image"),
    (["eval", "--arch", "bicubic", "--set", "nf=8", "--data", "{tmp}/empty"], "--set does not apply"),
    (["eval", "--arch", "xlite", "--scale", "2", "--data", "{tmp}/empty"], "--scale 2 differs"),
    (["eval", "--checkpoint", "{tmp}", "--data", "{tmp}/empty"], "not a run folder"),
    (["train", "--schedule", "weekly", "--out", "{tmp}/run"], "unknown schedule 'weekly'"),
    (["train", "--schedule", "smoke", "--amp", "--device", "cpu", "--out", "{tmp}/run"], "fp16 needs a CUDA"),
    (["train", "--schedule", "smoke", "--precision", "fp16", "--device", "cpu", "--out", "{tmp}/run"],
     "--precision fp16 needs a CUDA device"),
    (["train", "--schedule", "smoke", "--train-dir", "{tmp}/corrupt", "--out", "{tmp}/run"], "bad.png"),
    (["train", "--schedule", "smoke", "--val-dir", "{tmp}/empty", "--out", "{tmp}/run"], "no images"),
])
def test_errors_are_one_line_exit_2_and_leave_no_run(tmp_path, capsys, argv, message):
    (tmp_path / "empty").mkdir()
    (tmp_path / "corrupt").mkdir()
    (tmp_path / "corrupt" / "bad.png").write_bytes(b"not a png")
    code = main([a.format(tmp=tmp_path) for a in argv])
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith("searchsr: error: ") and err.count("\n") == 1, err
    assert message in err and "Traceback" not in err
    assert not (tmp_path / "run").exists()
