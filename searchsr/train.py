"""Train one network of the family exactly as Sec. 4.1 says, into a run folder.

L1 loss, Adam(beta1 = 0.9, beta2 = 0.99), lr halved at the schedule's milestones
(MultiStepLR, gamma 0.5), random aligned patches with flips and rotations. A search
trial is ``train(...)`` on the ``short`` schedule; a retrain is the same on ``full``.

Run folder (``out_dir``):

* ``config.json``  arch, schedule, data, seed, precision, command: what the run *is*;
  ``--resume`` refuses a different one.
* ``metrics.csv``  step, loss, lr every ``log_every`` steps; validation rows carry
  val_psnr_y / val_ssim_y instead.
* ``checkpoint.safetensors``  everything a resume needs in one atomically replaced
  file: model tensors (``model.*``), Adam state tensors (``optimizer.<i>.*``), and the
  step, optimiser hyper-parameters, scheduler, loss-scaler state and memory format as
  JSON metadata. No pickle anywhere. Data order needs no RNG state (``PatchSampler``
  seeds each batch by its step), so a resumed CPU run is bit-for-bit the uninterrupted one.
* ``weights.safetensors`` and ``result.json``  written last, only by a finished run.

Batches are gathered on the training device (``searchsr.patches``); the step runs in the
chosen precision and in the memory format a short measurement found faster for this
network on this device (``searchsr.tuning``); validation is always fp32.
"""

from __future__ import annotations

import csv
import json
import math
import time
from collections import deque
from dataclasses import asdict, dataclass
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from safetensors import SafetensorError
from safetensors.torch import load_file, safe_open, save, save_file
from torch import nn
from tqdm import tqdm

from searchsr.arch import MobileSR, build_model
from searchsr.config import ArchConfig
from searchsr.cost import count_cost
from searchsr.data import ImageSet
from searchsr.defaults import DEFAULT_TILE
from searchsr.errors import DivergedError, UsageError, first_line
from searchsr.evaluate import EvalResult, bicubic_upscaler, check_scorable, evaluate, model_upscaler
from searchsr.files import atomic_write, check_new_or_empty_dir, read_json
from searchsr.patches import DEFAULT_MAX_SHARE, PatchSampler
from searchsr.runs import CHECKPOINT_FILE, CONFIG_FILE, METRICS_FILE, RESULT_FILE, WEIGHTS_FILE, read_run_config
from searchsr.schedule import Schedule
from searchsr.tuning import MEMORY_FORMATS, autocast, check_precision, grad_scaler, memory_format_for

# The run folder's files (see the module docstring).
METRICS_COLUMNS = ("step", "loss", "lr", "val_psnr_y", "val_ssim_y")
LR_GAMMA = 0.5  # "halved at steps [...]"


@dataclass(frozen=True)
class Rung:
    """The validation scores at one rung step (``train``'s ``rungs``), and the training seconds spent to it."""

    step: int
    psnr: float  # PSNR-Y on the validation images
    ssim: float
    train_seconds: float


@dataclass(frozen=True)
class TrainResult:
    """A run's outcome; ``val`` is None when stopped early with ``until``."""

    out_dir: str
    step: int
    finished: bool
    seconds: float  # wall time of this call: training, validation, cost
    train_seconds: float  # the same over every call that led to ``step`` (a resumed run counts its earlier part)
    loss: float  # mean L1 over the last log_every steps (of this call)
    val: EvalResult | None
    bicubic: EvalResult | None  # the same validation images upscaled by bicubic
    params: int
    flops: int  # paper convention, 256x256 LR input
    device: str
    precision: str = "fp32"  # of the training step
    memory_format: str = "channels_last"  # of the training step (chosen by measurement unless asked)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def resolve_device(name: str | None) -> torch.device:
    """CUDA when present, CPU otherwise; asking for an absent CUDA is an error."""
    if name is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UsageError("--device cuda: CUDA is not available on this machine")
    return device


def run_config(cfg: ArchConfig, schedule: Schedule, train_set: ImageSet, val_set: ImageSet,
               seed: int, precision: str, command: dict[str, Any] | None) -> dict[str, Any]:
    """What ``config.json`` records; everything but ``command`` must match on resume."""
    return {"arch": cfg.to_dict(), "schedule": schedule.to_dict(),
            "data": {"train": train_set.source, "val": val_set.source, "scale": train_set.scale},
            "seed": seed, "precision": precision, "command": command}


def _check_inputs(cfg: ArchConfig, schedule: Schedule, train_set: ImageSet, val_set: ImageSet,
                  seed: int, device: torch.device, precision: str, memory_format: str, until: int | None) -> None:
    for name, images in (("training", train_set), ("validation", val_set)):
        if images.scale != cfg.scale:
            raise UsageError(f"{name} images are prepared for x{images.scale}, the network is x{cfg.scale}")
    check_scorable(val_set)
    if seed < 0:
        raise UsageError(f"seed must be >= 0, got {seed}")
    check_precision(precision, device)
    if memory_format != "auto" and memory_format not in MEMORY_FORMATS:
        raise UsageError(f"memory format must be auto, {' or '.join(MEMORY_FORMATS)}, got {memory_format!r}")
    if until is not None and not 0 < until <= schedule.steps:
        raise UsageError(f"until must be between 1 and the schedule's {schedule.steps} steps, got {until}")


def _prepare_run_dir(out_dir: Path, config: dict[str, Any], resume: bool) -> None:
    """A fresh run needs an empty folder; a resume needs the same config and an unfinished run."""
    if not resume:
        check_new_or_empty_dir(out_dir, "exists and is not an empty folder (use --resume to continue that run)")
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / CONFIG_FILE).write_text(json.dumps(config, indent=2) + "\n")
        _write_metrics(out_dir / METRICS_FILE, [])
        return
    if not (out_dir / CONFIG_FILE).is_file():
        raise UsageError(f"{out_dir}: nothing to resume (no {CONFIG_FILE})")
    if (out_dir / RESULT_FILE).exists():
        raise UsageError(f"{out_dir}: the run already finished ({RESULT_FILE} exists)")
    saved = read_json(out_dir / CONFIG_FILE)
    if not isinstance(saved, dict):
        raise UsageError(f"{out_dir / CONFIG_FILE}: not a run's config")
    if "amp" in saved and "precision" not in saved:  # runs from before --precision: --amp meant fp16
        saved["precision"] = "fp16" if saved.pop("amp") else "fp32"
    saved = _flatten(saved)
    wanted = _flatten(json.loads(json.dumps(config)))  # tuples become lists, as in the saved copy
    for key in sorted(saved.keys() | wanted.keys()):
        if not key.startswith("command.") and saved.get(key) != wanted.get(key):
            raise UsageError(f"--resume: {key} differs from {out_dir / CONFIG_FILE}: "
                             f"{json.dumps(saved.get(key))} there, {json.dumps(wanted.get(key))} now")


def _flatten(config: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested keys as dotted paths, so a mismatch names the exact field."""
    flat: dict[str, Any] = {}
    for key, value in config.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def _write_metrics(path: Path, rows: list[dict[str, str]]) -> None:
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, METRICS_COLUMNS)
        writer.writeheader()
        writer.writerows(rows)


def _append_metrics(path: Path, **row: Any) -> None:
    """One row per call, flushed at once, so an interrupted run keeps its history."""
    with path.open("a", newline="") as f:
        csv.DictWriter(f, METRICS_COLUMNS).writerow(row)


def _rewind_metrics(path: Path, step: int) -> None:
    """Drop rows logged after the checkpoint a resume restarts from (they will be logged again)."""
    with path.open(newline="") as f:
        rows = [row for row in csv.DictReader(f) if int(row["step"]) <= step]
    _write_metrics(path, rows)


def save_checkpoint(path: Path, step: int, model: nn.Module, optimizer: torch.optim.Optimizer,
                    scheduler: torch.optim.lr_scheduler.LRScheduler, scaler: torch.amp.GradScaler,
                    seconds: float = 0.0, memory_format: str = "channels_last") -> None:
    """Write model, Adam and schedule state to one safetensors file, replaced atomically; ``seconds``
    is the training time spent up to ``step`` (over all calls that led there), ``memory_format`` the
    step's (a resume keeps it, for the same floating-point order)."""
    tensors = {f"model.{k}": v for k, v in model.state_dict().items()}
    opt = optimizer.state_dict()
    for index, state in opt["state"].items():
        tensors.update({f"optimizer.{index}.{k}": v for k, v in state.items()})
    sched = {k: v for k, v in scheduler.state_dict().items() if k != "milestones"}  # from the schedule
    meta = {"step": step, "seconds": seconds, "param_groups": opt["param_groups"], "scheduler": sched,
            "scaler": scaler.state_dict(), "memory_format": memory_format}
    atomic_write(path, save({k: v.detach().cpu().contiguous() for k, v in tensors.items()},
                            metadata={"state": json.dumps(meta)}))


def load_checkpoint(path: Path, model: nn.Module, optimizer: torch.optim.Optimizer,
                    scheduler: torch.optim.lr_scheduler.LRScheduler, scaler: torch.amp.GradScaler
                    ) -> tuple[int, float, str]:
    """Restore what ``save_checkpoint`` wrote; returns the step to continue from, the training
    seconds spent up to it and the step's memory format."""
    try:
        tensors = load_file(path)
        with safe_open(path, "pt") as f:
            meta = json.loads(f.metadata()["state"])
    except (OSError, KeyError, TypeError, UnicodeDecodeError, json.JSONDecodeError, SafetensorError) as err:
        raise UsageError(f"{path}: damaged checkpoint ({first_line(err)}); start a new run") from None
    model.load_state_dict({k[len("model."):]: v for k, v in tensors.items() if k.startswith("model.")})
    state: dict[int, dict[str, torch.Tensor]] = {}
    for key, value in tensors.items():
        if key.startswith("optimizer."):
            _, index, name = key.split(".", 2)
            state.setdefault(int(index), {})[name] = value
    optimizer.load_state_dict({"state": state, "param_groups": meta["param_groups"]})
    scheduler.load_state_dict({**scheduler.state_dict(), **meta["scheduler"]})
    scaler.load_state_dict(meta["scaler"])
    return int(meta["step"]), float(meta.get("seconds", 0.0)), str(meta.get("memory_format", "channels_last"))


def load_trained(run_dir: str | Path) -> tuple[ArchConfig, MobileSR]:
    """The architecture and final weights of a finished run (``searchsr eval --checkpoint``)."""
    _, cfg = read_run_config(run_dir)
    model = build_model(cfg)
    model.load_state_dict(load_file(Path(run_dir) / WEIGHTS_FILE))
    return cfg, model.eval()


def _train_step(model: nn.Module, optimizer: torch.optim.Optimizer,
                scheduler: torch.optim.lr_scheduler.LRScheduler, scaler: torch.amp.GradScaler,
                lr_batch: torch.Tensor, hr_batch: torch.Tensor, precision: str, fmt: torch.memory_format) -> float:
    """One Adam step on the L1 loss (forward in ``precision``, batches in ``fmt``); returns the loss."""
    lr_batch, hr_batch = lr_batch.contiguous(memory_format=fmt), hr_batch.contiguous(memory_format=fmt)
    with autocast(lr_batch.device, precision):
        loss = F.l1_loss(model(lr_batch), hr_batch)
    optimizer.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    scaler.step(optimizer)
    scaler.update()
    scheduler.step()
    return loss.item()


def _validate(model: nn.Module, val_set: ImageSet, tile: int) -> EvalResult:
    return evaluate(model_upscaler(model, tile), val_set)


def train(cfg: ArchConfig, schedule: Schedule, train_set: ImageSet, val_set: ImageSet, out_dir: str | Path, *,
          seed: int = 0, resume: bool = False, until: int | None = None, progress: bool = True,
          device: str | None = None, precision: str = "fp32", memory_format: str = "auto",
          compile: bool = False, max_data_share: float = DEFAULT_MAX_SHARE, tile: int = DEFAULT_TILE,
          command: dict[str, Any] | None = None, rungs: Sequence[int] = (),
          on_rung: Callable[[Rung], None] | None = None) -> TrainResult:
    """Train ``cfg`` on ``train_set``, validate on ``val_set``, and fill ``out_dir``.

    Everything is checked before the folder is touched. ``until`` stops after that
    step with a checkpoint (a later ``resume=True`` call continues from it). At each step
    of ``rungs`` (before the last) the network is validated, checkpointed, and ``on_rung``
    called with the scores: it may block (a scheduler deciding) or stop the process.
    ``precision``, ``memory_format`` (``auto``: measured) and ``compile``: ``searchsr.tuning``;
    ``max_data_share``: ``searchsr.patches``.
    """
    start_time = time.perf_counter()
    out_dir, dev = Path(out_dir), resolve_device(device)
    _check_inputs(cfg, schedule, train_set, val_set, seed, dev, precision, memory_format, until)
    config = run_config(cfg, schedule, train_set, val_set, seed, precision, command)
    sampler = PatchSampler(train_set, schedule.patch_size, schedule.batch_size, seed, dev, max_data_share)
    _prepare_run_dir(out_dir, config, resume)

    with torch.random.fork_rng(devices=[]):  # seeded init without touching the caller's RNG
        torch.manual_seed(seed)
        model = build_model(cfg)
    model = model.to(dev).train()
    optimizer = torch.optim.Adam(model.parameters(), lr=schedule.lr, betas=schedule.betas)
    scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, list(schedule.milestones), gamma=LR_GAMMA)
    scaler = grad_scaler(dev, precision)
    step, spent, saved_format = 0, 0.0, None  # spent: training seconds of earlier calls, up to ``step``
    if resume:
        if (out_dir / CHECKPOINT_FILE).is_file():
            step, spent, saved_format = load_checkpoint(out_dir / CHECKPOINT_FILE, model, optimizer, scheduler, scaler)
        _rewind_metrics(out_dir / METRICS_FILE, step)
    rung_steps = {s for s in rungs if step < s < schedule.steps}
    if memory_format == "auto":  # a resumed run keeps its format; a new one measures (a copy of the network)
        memory_format = saved_format or memory_format_for(model, json.dumps(cfg.to_dict(), sort_keys=True),
                                                          *sampler.batch(step), precision)
    fmt = MEMORY_FORMATS[memory_format]
    model = model.to(memory_format=fmt)
    step_model = torch.compile(model) if compile else model

    def seconds() -> float:
        return spent + time.perf_counter() - start_time

    stop = schedule.steps if until is None else until
    recent: deque[float] = deque(maxlen=schedule.log_every)
    with tqdm(total=stop, initial=step, unit="step", disable=not progress, dynamic_ncols=True, leave=False) as bar:
        while step < stop:
            lr_now = scheduler.get_last_lr()[0]
            lr_batch, hr_batch = sampler.batch(step)
            recent.append(_train_step(step_model, optimizer, scheduler, scaler, lr_batch, hr_batch, precision, fmt))
            step += 1
            if not math.isfinite(recent[-1]):
                raise DivergedError(f"loss is {recent[-1]} at step {step}: training diverged "
                                    f"(try a lower lr than the schedule's {schedule.lr})")
            bar.set_postfix(loss=f"{recent[-1]:.4f}", lr=f"{lr_now:.2g}", refresh=False)
            bar.update()
            if step % schedule.log_every == 0:
                _append_metrics(out_dir / METRICS_FILE, step=step, loss=sum(recent) / len(recent), lr=lr_now)
            if schedule.val_every and step % schedule.val_every == 0 and step < schedule.steps:
                val = _validate(model, val_set, tile)
                _append_metrics(out_dir / METRICS_FILE, step=step, val_psnr_y=val.psnr_y, val_ssim_y=val.ssim_y)
            if step in rung_steps:
                val = _validate(model, val_set, tile)
                _append_metrics(out_dir / METRICS_FILE, step=step, val_psnr_y=val.psnr_y, val_ssim_y=val.ssim_y)
            if schedule.checkpoint_every and step % schedule.checkpoint_every == 0 or step in (until, *rung_steps):
                save_checkpoint(out_dir / CHECKPOINT_FILE, step, model, optimizer, scheduler, scaler, seconds(),
                                memory_format)
            if step in rung_steps and on_rung is not None:
                on_rung(Rung(step, val.psnr_y, val.ssim_y, seconds()))

    cost = count_cost(model, (256, 256))
    common = dict(out_dir=str(out_dir), step=step, train_seconds=seconds(),
                  loss=sum(recent) / len(recent) if recent else math.nan,
                  params=cost.params, flops=cost.flops, device=dev.type, precision=precision,
                  memory_format=memory_format)
    if step < schedule.steps:
        return TrainResult(finished=False, seconds=time.perf_counter() - start_time, val=None, bicubic=None, **common)
    val = _validate(model, val_set, tile)
    _append_metrics(out_dir / METRICS_FILE, step=step, val_psnr_y=val.psnr_y, val_ssim_y=val.ssim_y)
    bicubic = evaluate(bicubic_upscaler(cfg.scale), val_set)
    save_file({k: v.contiguous() for k, v in model.cpu().state_dict().items()}, out_dir / WEIGHTS_FILE,
              metadata={"arch": cfg.to_json()})
    result = TrainResult(finished=True, seconds=time.perf_counter() - start_time, val=val, bicubic=bicubic, **common)
    (out_dir / RESULT_FILE).write_text(json.dumps(result.to_dict(), indent=2) + "\n")
    return result
