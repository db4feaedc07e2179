"""Will it fit? Memory a network needs for one inference or one training step, counted on PyTorch's
meta device (nothing is allocated), and checked against what the machine has: a network too large
is refused in one line before it is built, instead of dying in the allocator or the OOM killer.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
from torch import nn

from searchsr.arch import build_model
from searchsr.config import ArchConfig, arch_label
from searchsr.cost import count_params
from searchsr.errors import UsageError


@dataclass(frozen=True)
class LayerSizes:
    """Element counts of a network for one 1x3xHxW input."""

    params: int
    outputs: tuple[int, ...]  # every leaf layer's output, in call order
    stored: tuple[int, ...]  # the outputs that get their own memory (not in-place activations, not Identity)


def layer_sizes(cfg: ArchConfig, lr_size: tuple[int, int]) -> LayerSizes:
    """Parameter and per-layer output element counts of ``cfg`` at ``lr_size``, on the meta device, so a
    network far too large for the machine is measured without allocating anything."""
    with torch.device("meta"):
        model = build_model(cfg)
    outputs, stored = [], []

    def hook(module: nn.Module, _inputs: tuple, out: torch.Tensor) -> None:
        outputs.append(out.numel())
        if not getattr(module, "inplace", False) and not isinstance(module, nn.Identity):
            stored.append(out.numel())

    handles = [m.register_forward_hook(hook) for m in model.modules() if not list(m.children())]
    try:
        with torch.no_grad():
            model.eval()(torch.empty(1, 3, *lr_size, device="meta"))
    finally:
        for h in handles:
            h.remove()
    return LayerSizes(count_params(model), tuple(outputs), tuple(stored))


def inference_bytes(cfg: ArchConfig, lr_size: tuple[int, int]) -> int:
    """Bytes one float32 inference of ``cfg`` needs at least: weights, input and the two largest
    intermediates (a layer's input and output live together). Computed on PyTorch's meta device,
    so nothing is allocated: a network too large for the machine is refused before it is built."""
    sizes = layer_sizes(cfg, lr_size)
    largest = sorted(sizes.outputs)[-2:]
    return 4 * (sizes.params + 3 * lr_size[0] * lr_size[1] + sum(largest))


@dataclass(frozen=True)
class TrainingMemory:
    """Float32 bytes one training step (forward, L1 backward, Adam) of a network needs at least."""

    state_bytes: int  # weights + gradients + Adam's two moments: 4 x params
    activation_bytes: int  # every layer output kept for backward and its gradient, times the batch
    data_bytes: int  # the LR batch and its HR target
    batch: int
    patch: int

    @property
    def total(self) -> int:
        return self.state_bytes + self.activation_bytes + self.data_bytes


def training_memory(cfg: ArchConfig, batch: int, patch: int) -> TrainingMemory:
    """One training step's memory at ``batch`` LR patches of ``patch`` x ``patch``, counted on the meta device
    (nothing allocated). Functional ops (residual adds, SE gating, the skip) are not counted, while every
    output's gradient is, though few are live at once: XLITE at 16 x 48x48 counts 0.63 GiB against a measured
    peak RSS growth of 0.49 GiB (LITE at 8 x 48x48: 2.2 vs 1.4 GiB), within 2x of the real peak."""
    sizes, hr = layer_sizes(cfg, (patch, patch)), patch * cfg.scale
    return TrainingMemory(state_bytes=4 * 4 * sizes.params, activation_bytes=4 * 2 * batch * sum(sizes.stored),
                          data_bytes=4 * batch * 3 * (patch * patch + hr * hr), batch=batch, patch=patch)


def available_memory_bytes() -> int:
    """Memory the kernel says a new allocation can get (MemAvailable), else free physical memory."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES")


def device_available_bytes(device: str | torch.device) -> int:
    """Free memory where a network would run: the GPU's free memory for CUDA, else ``available_memory_bytes``."""
    device = torch.device(device)
    return torch.cuda.mem_get_info(device)[0] if device.type == "cuda" else available_memory_bytes()


def check_fits_training(cfg: ArchConfig, batch: int, patch: int, available: int | None = None, *,
                        where: str = "this machine") -> None:
    """UsageError, in one line, when one training step of ``cfg`` at ``batch`` x ``patch``^2 LR patches
    cannot fit in ``available`` bytes (default: this machine's available memory). Nothing is allocated."""
    need = training_memory(cfg, batch, patch).total
    have = available_memory_bytes() if available is None else available
    if need > have:
        raise UsageError(f"{arch_label(cfg)} needs at least {need / 2**30:.1f} GiB to train at batch "
                         f"{batch} x {patch}x{patch}; {where} has {have / 2**30:.1f} GiB of memory available")


def check_fits_memory(cfg: ArchConfig, lr_size: tuple[int, int]) -> None:
    """UsageError, in one line, when one inference of ``cfg`` at ``lr_size`` cannot fit in memory."""
    need, have = inference_bytes(cfg, lr_size), available_memory_bytes()
    if need > have:
        h, w = lr_size
        raise UsageError(f"{arch_label(cfg)} at LR {h}x{w} needs at least {need / 2**30:.1f} GiB "
                         f"(weights and activations); this machine has {have / 2**30:.1f} GiB available")
