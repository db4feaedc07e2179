"""Issue 12: eval never saves over its HR images; inputs are read as shown (EXIF orientation, one 16-bit
rule); retrain needs a benchmark and keeps what earlier retrains recorded on the study."""

from __future__ import annotations

import os
import struct
import zlib
from dataclasses import replace
from pathlib import Path

import numpy as np
import optuna
import pandas as pd
import pytest
import skimage.data
from PIL import Image

from searchsr.cli import main
from searchsr.config import PRESETS, ArchConfig
from searchsr.data import read_image
from searchsr.errors import UsageError
from searchsr.evaluate import output_targets
from searchsr.report import load_retrain_table
from searchsr.retrain import (
    Job,
    RetrainSettings,
    comparison_table,
    run_retrain,
    write_back,
    write_outputs,
)
from searchsr.runs import WEIGHTS_FILE, trial_name

ORIENTATION = 0x0112  # EXIF tag; 6 = stored sideways, turn 90 degrees clockwise to show


def _snapshot(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() if p.is_file() else b"<dir>"
            for p in sorted(root.rglob("*")) if not p.is_symlink()}


def png16(path: Path, samples: np.ndarray) -> None:
    """Write uint16 HxW (gray) or HxWx3 (RGB) as a 16-bit PNG (Pillow writes no 16-bit colour)."""
    data = np.asarray(samples, dtype=">u2")
    h, w = data.shape[:2]

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    rows = b"".join(b"\x00" + data[y].tobytes() for y in range(h))
    header = struct.pack(">IIBBBBB", w, h, 16, 0 if data.ndim == 2 else 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows))
                     + chunk(b"IEND", b""))


# ------------------------------------------------------------------ 1. eval --save-dir never replaces an HR file


@pytest.fixture
def hr_folder(tmp_path: Path) -> Path:
    data = tmp_path / "data"
    data.mkdir()
    Image.fromarray(skimage.data.astronaut()[:96, :96]).save(data / "a.png")
    Image.fromarray(skimage.data.chelsea()[:96, :96]).save(data / "b.png")
    (tmp_path / "link").symlink_to(data)
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "b.png").symlink_to(data / "b.png")  # an output named b.png would replace it
    (tmp_path / "hard").mkdir()
    os.link(data / "a.png", tmp_path / "hard" / "a.png")
    return data


@pytest.mark.parametrize("save_dir, culprit", [("data", "a.png"), ("link", "a.png"), ("link/", "a.png"),
                                               ("data/../link", "a.png"), ("other", "b.png"),
                                               ("hard", "a.png")])
def test_eval_refuses_a_save_dir_that_would_replace_an_hr_image(save_dir: str, culprit: str, hr_folder: Path,
                                                                 monkeypatch: pytest.MonkeyPatch,
                                                                 capsys: pytest.CaptureFixture) -> None:
    monkeypatch.chdir(hr_folder.parent)  # relative paths, as a user types them
    before = _snapshot(hr_folder.parent)
    assert main(["eval", "--arch", "bicubic", "--data", "data", "--save-dir", save_dir]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("searchsr: error: ")
    assert f"{culprit} would overwrite an input" in err, err
    assert _snapshot(hr_folder.parent) == before  # nothing written, the HR files intact


def test_eval_still_saves_into_another_folder(hr_folder: Path, capsys: pytest.CaptureFixture) -> None:
    hr = {p.name: p.read_bytes() for p in hr_folder.iterdir()}
    out = hr_folder.parent / "sr"
    assert main(["eval", "--arch", "bicubic", "--data", str(hr_folder), "--save-dir", str(out)]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["a.png", "b.png"]
    assert np.asarray(Image.open(out / "a.png")).shape == (96, 96, 3)
    assert {p.name: p.read_bytes() for p in hr_folder.iterdir()} == hr


def test_output_targets_one_rule_for_eval_and_upscale(tmp_path: Path) -> None:
    a_png, a_jpg = tmp_path / "a.png", tmp_path / "a.jpg"
    assert output_targets([tmp_path / "x" / "a.jpg"], tmp_path / "out") == [tmp_path / "out" / "a.png"]
    with pytest.raises(UsageError, match="would overwrite the output of another input"):
        output_targets([tmp_path / "x" / "a.jpg", tmp_path / "y" / "a.bmp"], tmp_path / "out")
    with pytest.raises(UsageError, match="would overwrite an input"):  # a.jpg's output is the input a.png
        output_targets([a_jpg], tmp_path, inputs=[a_png])


# ------------------------------------------------------------------ 2. inputs as shown; one 16-bit rule


def test_read_image_applies_the_exif_orientation(tmp_path: Path) -> None:
    stored = skimage.data.astronaut()[:50, :72]  # stored 72 wide, 50 high
    img = Image.fromarray(stored)
    exif = img.getexif()
    exif[ORIENTATION] = 6
    img.save(tmp_path / "phone.jpg", exif=exif.tobytes(), quality=95)
    shown = read_image(tmp_path / "phone.jpg")
    assert shown.shape == (72, 50, 3)  # portrait, as viewers show it
    err = np.abs(shown.astype(float) - np.rot90(stored, k=-1)).mean()  # turned clockwise
    assert err < 4 < np.abs(shown.astype(float) - np.rot90(stored, k=1)).mean()
    img.save(tmp_path / "plain.jpg", quality=95)
    assert read_image(tmp_path / "plain.jpg").shape == (50, 72, 3)


def test_16_bit_gray_and_rgb_get_the_same_treatment(tmp_path: Path) -> None:
    values = np.tile(np.array([0, 255, 256, 1000, 32768, 65535], dtype=np.uint16), (20, 4))
    png16(tmp_path / "gray16.png", values)
    png16(tmp_path / "rgb16.png", np.dstack([values, values, values]))
    gray, rgb = read_image(tmp_path / "gray16.png"), read_image(tmp_path / "rgb16.png")
    assert gray.dtype == rgb.dtype == np.uint8 and gray.shape == (20, 24) and rgb.shape == (20, 24, 3)
    assert list(gray[0, :6]) == [0, 0, 1, 3, 128, 255]  # the high byte, as Pillow decodes 16-bit colour
    for channel in range(3):
        np.testing.assert_array_equal(rgb[..., channel], gray)


def test_32_bit_images_are_refused_in_one_line(tmp_path: Path) -> None:
    Image.fromarray(np.full((20, 20), 70000, dtype=np.int32)).save(tmp_path / "deep.tif")
    with pytest.raises(UsageError, match=r"deep.tif: cannot read image \(unsupported image mode I") as info:
        read_image(tmp_path / "deep.tif")
    assert "\n" not in str(info.value)


# ------------------------------------------------------------------ 3. retrain: a benchmark, merged results


def _cost(flops: float, latency: float) -> dict:
    return {"params": 1, "flops": flops, "latency_ms": latency, "latency_ratio": latency / 10}


def test_no_benchmark_means_no_dominance_on_cost_alone() -> None:
    jobs = [Job("lite", PRESETS["lite"], None, None), Job("xlite", PRESETS["xlite"], None, None)]
    table = comparison_table(jobs, {"lite": {}, "xlite": {}},
                             {"lite": _cost(10e9, 40.0), "xlite": _cost(2e9, 10.0)})
    assert not any(c.endswith("_psnr_y") for c in table.columns)
    assert list(table["dominates"]) == ["", ""]  # XLITE is cheaper, not better
    scores = {"lite": {"set5": {"psnr_y": 31.2, "ssim_y": 0.88}}, "xlite": {"set5": {"psnr_y": 30.5, "ssim_y": 0.86}}}
    assert list(comparison_table(jobs, scores, {"lite": _cost(10e9, 40.0), "xlite": _cost(2e9, 10.0)})
                ["dominates"]) == ["", ""]  # a trade-off both ways
    scores["xlite"]["set5"]["psnr_y"] = 31.3
    assert list(comparison_table(jobs, scores, {"lite": _cost(10e9, 40.0), "xlite": _cost(2e9, 10.0)})
                ["dominates"]) == ["", "lite"]


def test_retrain_without_bench_is_refused_before_anything_runs(tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    import searchsr.raysession

    url = f"sqlite:///{tmp_path / 's.db'}"
    study = optuna.create_study(study_name="t", storage=url, directions=["maximize", "minimize"])
    study.add_trial(optuna.trial.create_trial(values=[30.0, 5.0], user_attrs={"arch": PRESETS["xlite"].to_dict()}))
    images = tmp_path / "img"
    images.mkdir()
    Image.fromarray(skimage.data.astronaut()[:200, :200]).save(images / "a.png")

    def no_ray(*_args: object, **_kwargs: object) -> None:
        raise AssertionError("Ray started")

    monkeypatch.setattr(searchsr.raysession, "ray_session", no_ray)
    settings = RetrainSettings(study="t", storage=url, trials=[0], front=False, baselines=["lite", "xlite"],
                               schedule="smoke",  # LITE is not in the study: a job without a trial
                               train_dir=str(images), val_dir=str(images), bench=[], out=tmp_path / "out")
    with pytest.raises(UsageError, match="at least one --bench folder") as info:
        run_retrain(settings)
    assert "\n" not in str(info.value) and not (tmp_path / "out").exists()
    with pytest.raises(AssertionError, match="Ray started"):  # with a benchmark every check passes
        run_retrain(replace(settings, bench=[str(images)]))


def _study_with_trials(numbers: list[int]) -> optuna.Study:
    study = optuna.create_study(directions=["maximize", "minimize"])
    for number in range(max(numbers) + 1):
        arch = ArchConfig(nf=8 + 8 * number, n_blocks=1) if number else PRESETS["xlite"]
        study.add_trial(optuna.trial.create_trial(values=[30.0 + number / 10, 5.0 + number],
                                                  user_attrs={"arch": arch.to_dict(), "psnr": 30.0 + number / 10,
                                                              "run_dir": f"/search/trial_{number:05d}"}))
    return study


def _retrain(study: optuna.Study, out: Path, psnr: dict[int, float]) -> pd.DataFrame:
    """What ``run_retrain`` does after training: table, files, write-back (with weights in place)."""
    trials = {t.number: t for t in study.trials}
    jobs = [Job(trial_name(n), ArchConfig.from_dict(trials[n].user_attrs["arch"]), n, trials[n].user_attrs["psnr"])
            for n in psnr]
    scores = {job.name: {"set5": {"psnr_y": psnr[job.trial], "ssim_y": 0.8}} for job in jobs}
    costs = {job.name: _cost(1e9 * (job.trial + 1), 5.0 + job.trial) for job in jobs}
    table = comparison_table(jobs, scores, costs)
    out.mkdir()
    for job in jobs:
        (out / job.name).mkdir()
        (out / job.name / WEIGHTS_FILE).write_bytes(b"")
    csv_path, _ = write_outputs(table, None, out)
    write_back(study, table, csv_path)
    return table


def test_a_second_retrain_keeps_what_the_first_recorded(tmp_path: Path) -> None:
    study = _study_with_trials([1, 2, 3])
    _retrain(study, tmp_path / "first", {1: 31.0, 2: 31.5})
    _retrain(study, tmp_path / "second", {2: 31.9, 3: 32.0})
    results = study.user_attrs["retrain_results"]
    assert list(results) == ["1", "2", "3"]
    assert results["1"]["set5_psnr_y"] == 31.0 and results["2"]["set5_psnr_y"] == 31.9  # newer replaces older
    assert results["1"]["run_dir"] == str((tmp_path / "first" / trial_name(1)).resolve())
    assert results["2"]["run_dir"] == str((tmp_path / "second" / trial_name(2)).resolve())
    assert study.user_attrs["retrain_out"] == str((tmp_path / "second").resolve())  # the latest
    assert study.user_attrs["retrain_table"] == str((tmp_path / "second" / "comparison.csv").resolve())


def test_damaged_earlier_results_are_replaced_not_fatal(tmp_path: Path) -> None:
    study = _study_with_trials([1])
    study.set_user_attr("retrain_results", ["not", "a", "mapping"])
    _retrain(study, tmp_path / "first", {1: 31.0})
    assert list(study.user_attrs["retrain_results"]) == ["1"]


def test_the_report_shows_networks_retrained_earlier(tmp_path: Path) -> None:
    study = _study_with_trials([1, 2, 3])
    _retrain(study, tmp_path / "first", {1: 31.0, 2: 31.5})
    _retrain(study, tmp_path / "second", {2: 31.9, 3: 32.0})
    shown = load_retrain_table(study)
    assert shown is not None and shown.earlier == 1
    assert list(shown.frame["trial"]) == [2, 3, 1] and list(shown.frame["set5_psnr_y"]) == [31.9, 32.0, 31.0]
    assert shown.frame["run_dir"].iloc[2] == str((tmp_path / "first" / trial_name(1)).resolve())


def test_export_finds_the_weights_of_a_trial_retrained_earlier(tmp_path: Path) -> None:
    from searchsr.study import trial_run_dir

    study = _study_with_trials([1, 2])
    _retrain(study, tmp_path / "first", {1: 31.0})
    _retrain(study, tmp_path / "second", {2: 31.9})
    assert trial_run_dir(study, 2) == tmp_path / "second" / trial_name(2)
    assert trial_run_dir(study, 1).resolve() == (tmp_path / "first" / trial_name(1)).resolve()
