"""How a training step runs fast on its device: precision, memory format, compilation.

* ``--precision``: ``fp32``; ``bf16`` (autocast to bfloat16: CPUs and Ampere-or-later GPUs, no
  loss scaling needed); ``fp16`` (autocast to float16 with a gradient scaler; CUDA only).
  Only the training step runs in lower precision: validation and final scores are fp32.
* Memory format: channels-last (NHWC) or contiguous (NCHW). Which one is faster depends on the
  device, the width, the kernel and the torch release (on this project's 2-core CPU with torch 2.13
  channels-last made an XLITE step 3.1x faster and LITE's 2.1x; an earlier torch ran LITE slower in
  it), so ``auto`` times a few steps of both, on a
  copy of the network and the run's own first batch, and keeps the faster (``choose_memory_format``).
  The choice is remembered per machine (``memory_format_for``: searchsr's cache folder, keyed by
  network, device, threads, batch shape, precision and torch version), so every trial and rerun of
  one architecture on one machine trains in the same format: the same floating-point order.
* ``compile``: ``torch.compile`` of the training step's module (worth it for long schedules only:
  compiling takes minutes).
"""

from __future__ import annotations

import copy
import hashlib
import json
import time
from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import nn

from searchsr import defaults
from searchsr.errors import UsageError
from searchsr.files import atomic_write
from searchsr.imagecache import cache_root

PRECISIONS = dict(zip(defaults.PRECISIONS, (torch.float32, torch.bfloat16, torch.float16)))
MEMORY_FORMATS = dict(zip(defaults.MEMORY_FORMATS, (torch.channels_last, torch.contiguous_format)))
PROBE_STEPS = 2  # timed forward+backward passes per format (after one untimed), on a copy of the network


def check_precision(precision: str, device: torch.device) -> None:
    """One-line errors for a precision the device cannot train in."""
    if precision not in PRECISIONS:
        raise UsageError(f"--precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if precision == "fp16" and device.type != "cuda":
        raise UsageError("--precision fp16 needs a CUDA device (its loss scaling is CUDA's); use bf16 on a CPU")
    if precision == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise UsageError(f"--precision bf16: {torch.cuda.get_device_name(device)} has no bfloat16; use fp16")


@contextmanager
def autocast(device: torch.device, precision: str) -> Iterator[None]:
    """The training step's forward pass in ``precision`` (a no-op for fp32)."""
    with torch.autocast(device.type, dtype=PRECISIONS[precision], enabled=precision != "fp32"):
        yield


def grad_scaler(device: torch.device, precision: str) -> torch.amp.GradScaler:
    """Loss scaling for fp16 (bf16 has fp32's exponent range and needs none); disabled otherwise."""
    return torch.amp.GradScaler(device.type, enabled=precision == "fp16")


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_format(model: nn.Module, lr: torch.Tensor, hr: torch.Tensor, fmt: torch.memory_format,
                precision: str, steps: int = PROBE_STEPS) -> float:
    """Best seconds of ``steps`` forward+backward passes of ``model`` in ``fmt`` (after one untimed)."""
    model = model.to(memory_format=fmt)
    lr, hr = lr.contiguous(memory_format=fmt), hr.contiguous(memory_format=fmt)
    best = float("inf")
    for i in range(steps + 1):
        _sync(lr.device)
        start = time.perf_counter()
        with autocast(lr.device, precision):
            loss = F.l1_loss(model(lr), hr)
        loss.backward()
        model.zero_grad(set_to_none=True)
        _sync(lr.device)
        if i:
            best = min(best, time.perf_counter() - start)
    return best


def choose_memory_format(model: nn.Module, lr: torch.Tensor, hr: torch.Tensor, precision: str
                         ) -> tuple[str, dict[str, float]]:
    """The faster memory format for training ``model`` on batches like (``lr``, ``hr``), and the
    seconds per step each took. The network is copied (its weights and statistics are untouched, and
    a step draws no random numbers), so the choice changes how fast the run goes, not what it computes
    up to floating-point order."""
    probe = copy.deepcopy(model).train()
    seconds = {name: time_format(probe, lr, hr, fmt, precision) for name, fmt in MEMORY_FORMATS.items()}
    return min(seconds, key=seconds.__getitem__), seconds


_remembered: dict[str, str] = {}  # this process's choices (the only memory when the cache is off)


def memory_format_for(model: nn.Module, label: str, lr: torch.Tensor, hr: torch.Tensor, precision: str) -> str:
    """``choose_memory_format``'s answer for network ``label`` on this machine, measured once and kept in
    searchsr's cache folder (``formats/``); later runs of the same network, device, threads, batch shape,
    precision and torch version read it back."""
    device = lr.device
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu x{torch.get_num_threads()}"
    facts = [label, where, list(lr.shape), list(hr.shape), precision, torch.__version__]
    key = hashlib.sha256(json.dumps(facts).encode()).hexdigest()[:32]
    root = cache_root()
    path = root / "formats" / f"{key}.json" if root is not None else None
    if key not in _remembered and path is not None:
        try:
            found = json.loads(path.read_text()).get("memory_format")
            if found in MEMORY_FORMATS:
                _remembered[key] = found
        except (OSError, ValueError, AttributeError):
            pass
    if key not in _remembered:
        choice, seconds = choose_memory_format(model, lr, hr, precision)
        _remembered[key] = choice
        if path is not None:
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
                atomic_write(path, json.dumps({"memory_format": choice, "seconds_per_step": seconds,
                                               "facts": facts}).encode())
            except OSError:
                pass  # unwritable cache: this process remembers, the next measures again
    return _remembered[key]
