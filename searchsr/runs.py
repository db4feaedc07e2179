"""Where trials keep their files: one run-folder layout for search and retrain.

    <runs-dir>/<study>/trial_00012/     the search's trial 12 (a ``searchsr train`` run folder)
    <retrain --out>/trial_00012/        the same architecture retrained
    <retrain --out>/lite/               a paper baseline retrained

A run folder holds what ``searchsr.train`` writes (the file names below) and, when the trial
failed in its worker, ``failure.txt`` with the reason (the driver, which records
the trial, reads it: the worker never touches the study's storage).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from searchsr.config import AnyArch, arch_from_dict
from searchsr.errors import UsageError, first_line
from searchsr.files import read_json

CONFIG_FILE = "config.json"  # what the run is (searchsr.train); resume checks it
METRICS_FILE = "metrics.csv"  # loss, lr and validation scores over steps
CHECKPOINT_FILE = "checkpoint.safetensors"  # the latest resumable state
WEIGHTS_FILE = "weights.safetensors"  # the trained network, written last by a finished run
RESULT_FILE = "result.json"  # the final scores, written last by a finished run
FAILURE_FILE = "failure.txt"
WORKER_DIED = "worker died (no reason recorded)"


def trial_name(number: int) -> str:
    return f"trial_{number:05d}"


def trial_dir(root: str | Path, number: int) -> Path:
    return Path(root) / trial_name(number)


def read_run_config(run_dir: str | Path) -> tuple[dict[str, Any], AnyArch]:
    """The config of a *finished* run folder and its architecture; anything missing, unfinished or
    damaged is a one-line UsageError (``eval --checkpoint``, ``export --checkpoint``, retrain)."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise UsageError(f"{run_dir}: no such run folder")
    if not (run_dir / CONFIG_FILE).is_file():
        raise UsageError(f"{run_dir}: not a run folder (no {CONFIG_FILE})")
    if not (run_dir / WEIGHTS_FILE).is_file():
        raise UsageError(f"{run_dir}: no {WEIGHTS_FILE}: training has not finished (resume it with --resume)")
    config = read_json(run_dir / CONFIG_FILE)
    if not isinstance(config, dict) or not isinstance(config.get("arch"), dict):
        raise UsageError(f"{run_dir / CONFIG_FILE}: no 'arch' mapping: not a run's config")
    try:
        return config, arch_from_dict(config["arch"])
    except (ValueError, TypeError) as err:
        raise UsageError(f"{run_dir / CONFIG_FILE}: {first_line(err)}") from None


def existing_trial_dir(root: str | Path, number: int) -> Path:
    """``trial_dir``, unless only a folder of the layout retrain used before this one (``trial_12``)
    exists there: an older retrain's weights are found, and its resume goes on in place."""
    current, legacy = trial_dir(root, number), Path(root) / f"trial_{number}"
    return legacy if legacy.is_dir() and not current.exists() else current


def ray_dir(root: str | Path) -> Path:
    """Where Ray Tune keeps its experiment state for runs under ``root`` (not needed to resume)."""
    return (Path(root) / "ray").resolve()


def for_workers(path: str | Path | None) -> str | None:
    """A user's path as Ray workers need it: absolute (they run in their own working directories)."""
    return None if path is None else str(Path(path).resolve())


def record_failure(run_dir: Path, err: BaseException) -> None:
    """Called by the worker as a trial fails: the reason the driver will record."""
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / FAILURE_FILE).write_text(f"{type(err).__name__}: {err}\n")


def failure_reason(run_dir: Path) -> str:
    """The recorded reason of a failed trial, or that its worker died before recording one."""
    path = run_dir / FAILURE_FILE
    return path.read_text().strip() if path.is_file() else WORKER_DIED
