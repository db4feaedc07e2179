"""Hostile input, table-driven (issue 7, items 5 and 6).

The contract for bad input, checked for every row in a real process: exit code 2, exactly one
line on stderr (``searchsr: error: ...``, no traceback) that names the bad value, key or file,
and nothing written: every file under the test's folder keeps its bytes (the SQLite storage
included) and no output, run or study folder appears, not even outside the paths named on the
command line (``--study ../../evil`` from a working directory two levels down would land in the
test folder, which is compared too). Every row fails during validation: ``run`` and ``retrain``
rows also pass ``--address`` of a closed port, so that a row that slipped through could never
start a local Ray (it would fail the row instead). Names with a NUL byte cannot travel through
argv; ``test_study_names_with_nul_are_refused_by_every_command`` covers them in-process.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import optuna
import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
TINY_SPACE = str(ROOT / "spaces" / "tiny.yaml")
NO_RAY = ("--address", "127.0.0.1:1")
PG = "postgresql+psycopg://u:secret@127.0.0.1:1/db"
DB = "sqlite:///{w}/s.db"

pytestmark = pytest.mark.slow  # ~60 processes at ~3 s of imports each


def _run(*extra: str) -> list[str]:
    return ["run", "--space", TINY_SPACE, "--schedule", "smoke", "--trials", "1", "--storage", DB, "--runs-dir",
            "{w}/runs", "--study", "t", "--sampler", "random", "--objectives", "psnr,latency", "--train-dir",
            "{w}/img/ok", "--val-dir", "{w}/img/ok", *NO_RAY, *extra]  # argparse: a later option wins


def _train(*extra: str) -> list[str]:
    return ["train", "--schedule", "smoke", "--set", "nf=8", "--set", "n_blocks=1", "--train-dir", "{w}/img/ok",
            "--val-dir", "{w}/img/ok", "--out", "{w}/out", "--no-progress", *extra]


def _eval(data: str) -> list[str]:
    return ["eval", "--arch", "bicubic", "--data", data, "--save-dir", "{w}/out"]


def _retrain(*extra: str) -> list[str]:
    return ["retrain", "--storage", DB, "--study", "t", "--trials", "0", "--baselines", "xlite", "--schedule",
            "smoke", "--train-dir", "{w}/img/ok", "--val-dir", "{w}/img/ok", "--out", "{w}/out", *NO_RAY, *extra]


def _export(*extra: str) -> list[str]:
    return ["export", "--out", "{w}/out", "--format", "yaml", *extra]


def _study(command: str, name: str, storage: str = DB) -> list[str]:
    """``command`` on study ``name`` with everything else valid."""
    return {
        "run": _run("--study", name, "--storage", storage),
        "front": ["front", "--study", name, "--storage", storage],
        "dashboard": ["dashboard", "--study", name, "--storage", storage, "--port", "0"],
        "report": ["report", "--study", name, "--storage", storage, "--out", "{w}/out/report.html"],
        "export": _export("--study", name, "--trial", "0", "--storage", storage),
        "retrain": _retrain("--study", name, "--storage", storage),
    }[command]


# (id, argv with {w} = the test's copy of the template, fragments stderr must contain)
CASES: list[tuple[str, list[str], tuple[str, ...]]] = [
    # ---- search-space YAML (run)
    ("space-malformed-yaml", _run("--space", "{w}/spaces/malformed.yaml"), ("malformed.yaml", "invalid YAML")),
    ("space-is-a-list", _run("--space", "{w}/spaces/list.yaml"), ("list.yaml", "must be a mapping")),
    ("space-is-a-scalar", _run("--space", "{w}/spaces/scalar.yaml"), ("scalar.yaml", "got 42")),
    ("space-unknown-top-key", _run("--space", "{w}/spaces/top_key.yaml"), ("objectives: unknown top-level key",)),
    ("space-unknown-spec-key", _run("--space", "{w}/spaces/spec_key.yaml"), ("params.nf", "'stride'")),
    ("space-unknown-field", _run("--space", "{w}/spaces/field.yaml"), ("params.width", "not an ArchConfig field")),
    ("space-int-of-strings", _run("--space", "{w}/spaces/int_strings.yaml"), ("params.nf", "'a'")),
    ("space-string-for-int", _run("--space", "{w}/spaces/string_int.yaml"), ("n_blocks", "'four'")),
    ("space-nf-zero", _run("--space", "{w}/spaces/nf_zero.yaml"), ("params.nf", "got 0")),
    ("space-nf-negative", _run("--space", "{w}/spaces/nf_negative.yaml"), ("params.nf", "-8")),
    ("space-low-above-high", _run("--space", "{w}/spaces/inverted.yaml"), ("params.n_blocks", "low 8 > high 2")),
    ("space-step-zero", _run("--space", "{w}/spaces/step_zero.yaml"), ("params.nf", "step must be > 0, got 0")),
    ("space-even-kernel", _run("--space", "{w}/spaces/kernel.yaml"), ("kernel_size", "got 4")),
    ("space-scale-8", _run("--space", "{w}/spaces/scale.yaml"), ("scale must be one of", "got 8")),
    ("space-empty-params", _run("--space", "{w}/spaces/empty_params.yaml"), ("params: must be a non-empty",)),
    ("space-when-undeclared", _run("--space", "{w}/spaces/when.yaml"), ("params.se_ratio.when.se",)),
    ("space-bad-constraint", _run("--space", "{w}/spaces/constraint.yaml"), ("constraints[0]", "latency_ms < 40")),
    ("space-binary-file", _run("--space", "{w}/spaces/binary.yaml"), ("binary.yaml", "utf-8")),
    ("space-is-a-folder", _run("--space", "{w}/spaces"), ("spaces", "cannot read")),
    # ---- objectives, sampler, trials, presets (run)
    ("objective-unknown", _run("--objectives", "psnr,accuracy"), ("unknown objective 'accuracy'",)),
    ("objective-duplicate", _run("--objectives", "psnr,latency,psnr"), ("objective 'psnr' given twice",)),
    ("sampler-unknown", _run("--sampler", "grid"), ("--sampler", "'grid'")),
    ("trials-negative", _run("--trials", "-3"), ("--trials must be >= 1, got -3",)),
    ("enqueue-unknown-preset", _run("--enqueue", "xlite,giant"), ("--enqueue", "'giant'")),
    ("enqueue-preset-outside-space", _run("--space", "{w}/spaces/k5.yaml", "--enqueue", "xlite"),
     ("--enqueue xlite", "kernel_size")),
    ("runs-dir-is-a-file", _run("--runs-dir", "{w}/img/file.png"), ("file.png", "not a folder")),
    # ---- storage
    ("run-storage-unreachable", _run("--storage", PG), ("cannot open storage", "u:***@127.0.0.1:1")),
    ("report-storage-unreachable", _study("report", "t", PG), ("cannot open storage", "u:***@127.0.0.1:1")),
    ("run-storage-random-bytes", _run("--storage", "sqlite:///{w}/rand.db"), ("rand.db", "not a database")),
    ("run-storage-truncated", _run("--storage", "sqlite:///{w}/trunc.db"), ("trunc.db", "malformed")),
    ("run-storage-damaged-page", _run("--storage", "sqlite:///{w}/page.db"), ("page.db", "damaged SQLite")),
    ("front-storage-random-bytes", _study("front", "t", "sqlite:///{w}/rand.db"), ("rand.db", "not a database")),
    ("front-storage-empty-file", _study("front", "t", "sqlite:///{w}/empty.db"), ("no study storage", "empty.db")),
    ("export-storage-truncated", _study("export", "t", "sqlite:///{w}/trunc.db"), ("trunc.db", "malformed")),
    ("report-storage-damaged-page", _study("report", "t", "sqlite:///{w}/page.db"), ("page.db", "damaged")),
    ("dashboard-storage-random-bytes", _study("dashboard", "t", "sqlite:///{w}/rand.db"),
     ("rand.db", "not a database")),
    ("retrain-storage-truncated", _study("retrain", "t", "sqlite:///{w}/trunc.db"), ("trunc.db", "malformed")),
    ("run-storage-unknown-dialect", _run("--storage", "nosuchdb://u:secret@host/db"),
     ("cannot open storage", "nosuchdb")),
    # ---- image folders
    ("train-dir-missing", _train("--train-dir", "{w}/img/missing"), ("missing: not a directory",)),
    ("run-val-dir-empty", _run("--val-dir", "{w}/img/empty"), ("empty: no images",)),
    ("run-train-dir-no-images", _run("--train-dir", "{w}/img/notimg"), ("notimg: no images",)),
    ("train-val-dir-is-a-file", _train("--val-dir", "{w}/img/file.png"), ("file.png: not a directory",)),
    ("eval-garbage-png", _eval("{w}/img/garbage"), ("garbage/a.png: cannot read image",)),
    ("train-truncated-png", _train("--train-dir", "{w}/img/trunc_png"), ("trunc_png/a.png", "truncated")),
    ("eval-truncated-jpeg", _eval("{w}/img/trunc_jpg"), ("trunc_jpg/a.jpg", "truncated")),
    ("run-huge-png-header", _run("--val-dir", "{w}/img/bomb"), ("bomb/a.png", "1600000000 pixels")),
    ("eval-large-png-header", _eval("{w}/img/large"), ("large/a.png", "100000000 pixels")),
    ("run-image-below-patch", _run("--train-dir", "{w}/img/small"), ("--train-dir", "a.png", "12x12",
                                                                     "16x16 training patch")),
    ("run-image-too-small-to-score", _run("--val-dir", "{w}/img/tiny"), ("--val-dir", "a.png", "too small")),
    ("train-image-below-patch", _train("--train-dir", "{w}/img/small"), ("a.png", "12x12", "16x16 training patch")),
    ("eval-unreadable-file", _eval("{w}/img/noperm"), ("noperm/a.png", "cannot read image")),
    # ---- schedule YAML
    ("schedule-malformed", _train("--schedule", "{w}/schedules/malformed.yaml"), ("malformed.yaml", "not valid YAML")),
    ("schedule-unknown-key", _run("--schedule", "{w}/schedules/unknown.yaml"), ("unknown.yaml", "'epochs'")),
    ("schedule-wrong-type", _train("--schedule", "{w}/schedules/type.yaml"), ("type.yaml", "'steps'", "'ten'")),
    ("schedule-negative-steps", _retrain("--schedule", "{w}/schedules/negative.yaml"),
     ("negative.yaml", "'steps'", "-5")),
    # ---- export / upscale / retrain (tests/test_export.py has truncated, empty, pickled, reshaped weights)
    ("export-unknown-trial", _export("--study", "t", "--trial", "99", "--storage", DB), ("has no trial 99",)),
    ("export-missing-study", _export("--study", "nope", "--trial", "0", "--storage", DB),
     ("no study named 'nope'",)),
    ("export-failed-trial", _export("--study", "t", "--trial", "1", "--storage", DB), ("trial 1 is FAIL",)),
    ("export-huge-safetensors-header", _export("--checkpoint", "{w}/run_header"),
     ("run_header/weights.safetensors", "truncated or corrupt")),
    ("export-weights-for-another-arch", _export("--checkpoint", "{w}/run_other"), ("weights are for",)),
    ("export-config-not-json", _export("--checkpoint", "{w}/run_json"), ("config.json", "not readable JSON")),
    ("upscale-folder-as-input", ["upscale", "--model", "{w}/model", "--backend", "torch", "{w}/img/ok",
                                 "--out", "{w}/out"], ("img/ok: not a file",)),
    ("upscale-truncated-input", ["upscale", "--model", "{w}/model", "--backend", "torch", "{w}/img/file.png",
                                 "{w}/img/trunc_png/a.png", "--out", "{w}/out"], ("trunc_png/a.png", "truncated")),
    ("retrain-unknown-trial", _retrain("--trials", "99"), ("has no trial 99",)),
    ("retrain-trials-not-numbers", _retrain("--trials", "1,x"), ("--trials", "'1,x'")),
    ("retrain-unknown-baseline", _retrain("--baselines", "giant"), ("--baselines", "'giant'")),
    ("retrain-bench-too-small", _retrain("--bench", "{w}/img/tiny"), ("a.png", "too small to score")),
    ("retrain-out-is-a-file", _retrain("--out", "{w}/img/file.png"), ("file.png", "not a folder")),
    # ---- study names that are paths (item 6)
    ("run-study-with-slash", _study("run", "a/b"), ("--study must be", "'a/b'")),
    ("run-study-dotdot", _study("run", ".."), ("--study must be", "'..'")),
    ("run-study-newline", _study("run", "x\ny"), ("--study must be", "'x\\ny'")),
    ("front-study-parent", _study("front", "../x"), ("--study must be", "'../x'")),
    ("dashboard-study-newline", _study("dashboard", "a\nb"), ("--study must be", "'a\\nb'")),
    ("report-study-dotdot", _study("report", ".."), ("--study must be", "'..'")),
    ("export-study-absolute", _study("export", "/tmp/evil"), ("--study must be", "'/tmp/evil'")),
    ("retrain-study-with-slash", _study("retrain", "a/b"), ("--study must be", "'a/b'")),
    # a study that already exists in the storage under a hostile name
    ("export-existing-evil-study", _study("export", "../../evil"), ("--study must be", "'../../evil'")),
    ("retrain-existing-evil-study", _study("retrain", "../../evil"), ("--study must be", "'../../evil'")),
    ("report-existing-evil-study", _study("report", "../../evil"), ("--study must be", "'../../evil'")),
    ("dashboard-existing-evil-study", _study("dashboard", "../../evil"), ("--study must be", "'../../evil'")),
    # issue 11, point 7: the error path, each checked before anything is trained or written
    ("profile-device-gpu", ["profile", "--device", "gpu"], ("unknown device 'gpu'", "cpu, cuda")),
    ("eval-device-tpu", ["eval", "--arch", "xlite", "--data", "{w}/img/ok", "--device", "tpu"], ("'tpu'",)),
    ("train-device-gpu", _train("--device", "gpu"), ("unknown device 'gpu'",)),
    ("train-tile-0", _train("--tile", "0"), ("--tile must be at least 16", "got 0")),
    ("eval-tile-0", ["eval", "--arch", "xlite", "--data", "{w}/img/ok", "--tile", "0"], ("--tile must be",)),
    ("run-latency-runs-0", _run("--latency-runs", "0"), ("--latency-runs must be >= 1", "got 0")),
    ("bench-latency-repeats-0", ["bench", "latency", "--repeats", "0"], ("--repeats must be >= 1",)),
    ("bench-train-steps-0", ["bench", "train", "--steps", "0"], ("--steps must be >= 1",)),
    ("profile-huge-lr-size", ["profile", "--lr-size", "100000", "100000"], ("needs at least", "GiB", "available")),
    ("profile-huge-arch", ["profile", "--set", "nf=4000", "--set", "n_blocks=1000"], ("nf=4000, N=1000", "GiB")),
    ("front-storage-plain-path", ["front", "--storage", "{w}/s.db"], ("not an SQLAlchemy URL", "sqlite:///")),
    ("run-storage-missing-folders", _run("--storage", "sqlite:///{w}/nodir/deeper/x.db"), ("does not exist",)),
    ("run-address-without-port", _run("--address", "10.0.0.1"), ("--address must be HOST:PORT", "'10.0.0.1'")),
    ("retrain-address-garbage", _retrain("--address", "not an address"), ("--address must be",)),
    ("run-val-count-and-val-dir", _run("--val-count", "1"), ("--val-count and --val-dir", "give one")),
    ("run-val-count-negative", _run("--val-count", "-1"), ("--val-count must be >= 0",)),
    ("retrain-negative-gpus", _retrain("--gpus-per-trial", "-1"), ("--gpus-per-trial must be >= 0", "got -1")),
    ("retrain-schedule-typo", _retrain("--schedule", "smok"), ("unknown schedule 'smok'", "short, smoke")),
    ("front-unknown-study", ["front", "--storage", DB, "--study", "nope"], ("no study named 'nope'", "studies: ")),
    ("report-unknown-study", ["report", "--storage", DB, "--study", "nope", "--out", "{w}/r.html"],
     ("no study named 'nope'", "studies: ")),
]


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def _png_claiming(width: int, height: int) -> bytes:
    """A few hundred bytes whose header claims ``width`` x ``height`` RGB: PIL sizes it before decoding."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", zlib.compress(b"\0" * 64))
            + _chunk(b"IEND", b""))


SPACES = {
    "malformed.yaml": "params: {nf: [16, 24\n",
    "list.yaml": "- nf\n- n_blocks\n",
    "scalar.yaml": "42\n",
    "top_key.yaml": "params: {nf: 16}\nobjectives: [psnr]\n",
    "spec_key.yaml": "params:\n  nf: {int: [8, 16], stride: 8}\n",
    "field.yaml": "params:\n  width: {int: [8, 16]}\n",
    "int_strings.yaml": "params:\n  nf: {int: [a, b]}\n",
    "string_int.yaml": "params:\n  n_blocks: four\n",
    "nf_zero.yaml": "params:\n  nf: {int: [0, 16], step: 8}\n",
    "nf_negative.yaml": "params:\n  nf: -8\n",
    "inverted.yaml": "params:\n  n_blocks: {int: [8, 2]}\n",
    "step_zero.yaml": "params:\n  nf: {int: [8, 16], step: 0}\n",
    "kernel.yaml": "params:\n  kernel_size: {choices: [3, 4]}\n",
    "scale.yaml": "params:\n  scale: 8\n",
    "empty_params.yaml": "params: {}\n",
    "when.yaml": "params:\n  se_ratio: {choices: [2, 4], when: {se: true}}\n",
    "constraint.yaml": "params:\n  nf: 16\nconstraints: ['latency_ms < 40']\n",
    "k5.yaml": "params:\n  nf: {int: [8, 16], step: 8}\n  kernel_size: 5\n",
}
SCHEDULES = {
    "malformed.yaml": "steps: [4\n",
    "unknown.yaml": "steps: 4\nbatch_size: 2\npatch_size: 16\nlr: 0.005\nmilestones: [2]\nepochs: 3\n",
    "type.yaml": "steps: ten\nbatch_size: 2\npatch_size: 16\nlr: 0.005\nmilestones: []\n",
    "negative.yaml": "steps: -5\nbatch_size: 2\npatch_size: 16\nlr: 0.005\nmilestones: []\n",
}


def _save_run(folder: Path, config_arch: dict, weights: bytes) -> None:
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"arch": config_arch}))
    (folder / "weights.safetensors").write_bytes(weights)


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Everything the rows point at, made once (no training: weights are freshly initialised)."""
    import torch
    from safetensors.torch import save

    from searchsr.arch import build_model
    from searchsr.config import PRESETS

    root = tmp_path_factory.mktemp("hostile")
    rng = np.random.default_rng(7)
    img = root / "img"
    for name in ("ok", "empty", "notimg", "garbage", "trunc_png", "trunc_jpg", "bomb", "large", "small", "tiny",
                 "noperm"):
        (img / name).mkdir(parents=True)
    photo = Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8))
    photo.save(img / "ok" / "a.png")
    (img / "file.png").write_bytes((img / "ok" / "a.png").read_bytes())
    (img / "notimg" / "readme.txt").write_text("no pictures here\n")
    (img / "garbage" / "a.png").write_bytes(b"\x00garbage" * 64)
    for fmt, name in (("PNG", "trunc_png/a.png"), ("JPEG", "trunc_jpg/a.jpg")):
        buf = io.BytesIO()
        photo.save(buf, fmt)
        (img / name).write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])  # valid header, data cut
    (img / "bomb" / "a.png").write_bytes(_png_claiming(40000, 40000))  # over 2x PIL's limit: PIL refuses
    (img / "large" / "a.png").write_bytes(_png_claiming(10000, 10000))  # over 1x: PIL only warns
    Image.fromarray(rng.integers(0, 256, (48, 48, 3), dtype=np.uint8)).save(img / "small" / "a.png")  # LR 12x12
    Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(img / "tiny" / "a.png")
    photo.save(img / "noperm" / "a.png")  # made unreadable by the test (not as root: root reads it anyway)
    (root / "spaces").mkdir()
    for name, text in SPACES.items():
        (root / "spaces" / name).write_text(text)
    (root / "spaces" / "binary.yaml").write_bytes(b"params:\n  nf: \xff\xfe\x00\x81\n")
    (root / "schedules").mkdir()
    for name, text in SCHEDULES.items():
        (root / "schedules" / name).write_text(text)

    xlite = PRESETS["xlite"]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        state = build_model(xlite).state_dict()
    weights = save(state, metadata={"arch": xlite.to_json()})
    _save_run(root / "run", xlite.to_dict(), weights)
    header = struct.pack("<Q", 1 << 40) + weights[8:]  # claims a terabyte-long header
    _save_run(root / "run_header", xlite.to_dict(), header)
    other = save(build_model(xlite.replace(nf=8)).state_dict(), metadata={"arch": xlite.replace(nf=8).to_json()})
    _save_run(root / "run_other", xlite.to_dict(), other)
    _save_run(root / "run_json", xlite.to_dict(), weights)
    (root / "run_json" / "config.json").write_text('{"arch": {"nf": 16,')
    (root / "model").mkdir()
    (root / "model" / "arch.yaml").write_text(xlite.to_yaml())
    (root / "model" / "weights.safetensors").write_bytes(weights)

    storage = f"sqlite:///{root}/s.db"
    study = optuna.create_study(study_name="t", storage=storage, directions=["maximize", "minimize"])
    study.set_metric_names(["psnr", "latency"])
    attrs = {"run_dir": str(root / "run"), "arch": xlite.to_dict(), "psnr": 25.0, "latency_ms": 4.0}
    study.add_trial(optuna.trial.create_trial(values=[25.0, 4.0], user_attrs=attrs))
    study.add_trial(optuna.trial.create_trial(state=optuna.trial.TrialState.FAIL))
    evil = optuna.create_study(study_name="../../evil", storage=storage, directions=["maximize", "minimize"])
    evil.set_user_attr("retrain_out", "../../evil_out")
    evil.add_trial(optuna.trial.create_trial(values=[25.0, 4.0], user_attrs=attrs))
    del study, evil
    data = (root / "s.db").read_bytes()
    (root / "trunc.db").write_bytes(data[: len(data) // 2])
    (root / "rand.db").write_bytes(np.random.default_rng(3).integers(0, 256, 8192, dtype=np.uint8).tobytes())
    page = bytearray(data)
    page[4096 * 2: 4096 * 3] = np.random.default_rng(4).integers(0, 256, 4096, dtype=np.uint8).tobytes()
    (root / "page.db").write_bytes(bytes(page))  # right size, one page of noise
    (root / "empty.db").write_bytes(b"")
    return root


def _snapshot(root: Path) -> dict[str, str]:
    """Every path under ``root``: a file's SHA-256, or 'dir'."""
    def digest(path: Path) -> str:
        try:
            return hashlib.sha256(path.read_bytes()).hexdigest()
        except PermissionError:
            return "unreadable"

    return {str(p.relative_to(root)): "dir" if p.is_dir() else digest(p) for p in sorted(root.rglob("*"))}


@pytest.mark.parametrize("argv, fragments", [pytest.param(a, f, id=i) for i, a, f in CASES])
def test_bad_input_is_one_line_exit_2_and_writes_nothing(argv: list[str], fragments: tuple[str, ...],
                                                         template: Path, tmp_path: Path) -> None:
    work = tmp_path / "w"
    shutil.copytree(template, work)
    cwd = work / "cwd" / "deep"  # a study named ../../evil taken as a path would land in work/
    cwd.mkdir(parents=True)
    noperm = work / "img" / "noperm" / "a.png"
    if any("noperm" in a for a in argv):
        if os.geteuid() == 0:
            pytest.skip("root reads a file whatever its mode")
        noperm.chmod(0)
    try:
        before = _snapshot(tmp_path)
        proc = subprocess.run([sys.executable, "-m", "searchsr.cli", *(a.format(w=work) for a in argv)],
                              capture_output=True, text=True, cwd=cwd, timeout=120)
        after = _snapshot(tmp_path)
    finally:
        noperm.chmod(0o644)
    err = proc.stderr.strip()
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert len(err.splitlines()) == 1 and err.startswith("searchsr: error: "), proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr and "secret" not in proc.stderr + proc.stdout
    for fragment in fragments:
        assert fragment in err, (fragment, err)
    assert after == before


@pytest.mark.parametrize("command", ["run", "front", "dashboard", "report", "export", "retrain"])
def test_study_names_with_nul_are_refused_by_every_command(command: str, template: Path, tmp_path: Path,
                                                           capsys: pytest.CaptureFixture) -> None:
    """argv cannot carry a NUL byte; a caller of ``main`` can."""
    from searchsr.cli import main

    work = tmp_path / "w"
    shutil.copytree(template, work)
    before = _snapshot(tmp_path)
    assert main([a.format(w=work) for a in _study(command, "a\x00b")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--study must be" in err and "'a\\x00b'" in err, err
    assert _snapshot(tmp_path) == before


@pytest.mark.parametrize("name", ["../x", "a/b", "..", ".", ".hidden", "/abs", "a\\b", "a\x00b", "a\nb", "a b", "",
                                  "x" * 129, "~", "$HOME"])
def test_hostile_study_names_are_refused(name: str) -> None:
    from searchsr.storage import check_study_name

    with pytest.raises(ValueError, match="--study must be") as info:
        check_study_name(name)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("name", ["t", "searchsr", "sun80", "my.study-2_x", "x" * 128])
def test_ordinary_study_names_pass(name: str) -> None:
    from searchsr.storage import check_study_name

    assert check_study_name(name) == name
