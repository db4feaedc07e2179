"""The network as it is exported: BN-fused and clamped, plus the graphs that make tiled inference exact.

``deployable`` makes the BN-fused copy every exported file is traced from; ``Clamped`` adds the
[0, 1] clamp (``model.onnx``, ``model.ts``). ``TiledGraph`` is the same network with every
squeeze-excite mean given from outside, the two helper graphs of ``searchsr.bundle``:
``model_tiles`` (``(lr, se_means) -> sr``) and ``model_se_stats`` (``(lr, se_means, core_mask)
-> se_sums``). ``se_input_means`` is the untiled reference for what the helpers measure.

PyTorch's TorchScript-based ONNX exporter cannot turn ``BicubicUpsample``'s run-time kernel
tiling (from the input's channel count) into a static kernel, so ``StaticBicubic`` tiles it over
the 3 input channels ahead of time; the arithmetic is identical.
"""

from __future__ import annotations

import copy
from types import SimpleNamespace

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from searchsr.blocks import BicubicUpsample, SqueezeExcite, symmetric_pad
from searchsr.fuse import fuse_bn


class StaticBicubic(nn.Module):
    """``BicubicUpsample`` with its kernel tiled over 3 channels ahead of time (see module doc)."""

    def __init__(self, skip: BicubicUpsample, channels: int = 3) -> None:
        super().__init__()
        self.scale = skip.scale
        self.channels = channels
        self.register_buffer("weight", skip.weight.repeat(channels, 1, 1, 1).clone(), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = symmetric_pad(symmetric_pad(x, 2, 2), 2, 3)
        return F.pixel_shuffle(F.conv2d(x, self.weight, groups=self.channels), self.scale)


class Clamped(nn.Module):
    """The deployed network: model output clamped to [0, 1]."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, lr: torch.Tensor) -> torch.Tensor:
        return self.model(lr).clamp(0, 1)


def deployable(model: nn.Module) -> nn.Module:
    """CPU, eval, BN-fused copy with an export-friendly skip; the input model is untouched."""
    fused = fuse_bn(model).cpu().eval()
    if isinstance(getattr(fused, "skip", None), BicubicUpsample):
        fused.skip = StaticBicubic(fused.skip)
    return fused


class GivenMeanSE(nn.Module):
    """A squeeze-excite layer whose pooled input comes from outside (the image-wide mean)."""

    def __init__(self, se: SqueezeExcite, index: int, state: SimpleNamespace) -> None:
        super().__init__()
        self.se = se
        self.index = index
        self._state = (state,)  # a tuple: not registered as a submodule or buffer

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        state = self._state[0]
        state.order.append(self.index)
        if state.mask is not None:
            state.sums[self.index] = (x * state.mask).to(torch.float64).sum((0, 2, 3))
        mean = state.means[self.index].reshape(1, -1, 1, 1)
        return x * self.se.excite(mean)


class TiledGraph(nn.Module):
    """The deployed network with every SE mean given: ``(lr, se_means) -> sr`` (``stats=False``)
    or ``(lr, se_means, core_mask) -> se_sums`` (``stats=True``, float64, one row per SE layer)."""

    def __init__(self, deploy: nn.Module, stats: bool) -> None:
        super().__init__()
        self.model = copy.deepcopy(deploy)
        self.stats = stats
        self._state = (SimpleNamespace(means=None, mask=None, sums={}, order=[]),)
        names = [name for name, m in self.model.named_modules() if isinstance(m, SqueezeExcite)]
        for index, name in enumerate(names):
            parent_name, _, attr = name.rpartition(".")
            parent = self.model.get_submodule(parent_name) if parent_name else self.model
            setattr(parent, attr, GivenMeanSE(getattr(parent, attr), index, self._state[0]))
        self.n_se = len(names)
        self.channels = [self.model.get_submodule(n).se.reduce.in_channels for n in names]

    def forward(self, lr: torch.Tensor, se_means: torch.Tensor,
                core_mask: torch.Tensor | None = None) -> torch.Tensor:
        state = self._state[0]
        state.means, state.mask, state.sums, state.order = se_means, core_mask if self.stats else None, {}, []
        out = self.model(lr)
        if state.order != list(range(self.n_se)):
            raise RuntimeError(f"squeeze-excite layers ran in order {state.order}, not in module order")
        if self.stats:
            return torch.stack([state.sums[i] for i in range(self.n_se)])
        return out.clamp(0, 1)


def se_input_means(model: nn.Module, x: np.ndarray) -> np.ndarray:
    """Each squeeze-excite layer's input mean (rows, in module order) in one untiled forward pass."""
    means: list[np.ndarray] = []
    hooks = [m.register_forward_hook(lambda _m, args, _o: means.append(args[0].mean((0, 2, 3)).numpy()))
             for m in model.modules() if isinstance(m, SqueezeExcite)]
    try:
        with torch.inference_mode():
            model(torch.from_numpy(x))
    finally:
        for hook in hooks:
            hook.remove()
    return np.stack(means)
