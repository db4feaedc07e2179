"""Building blocks of the MobileNetV3 SR family (see ``searchsr.arch`` for the layout).

Named attributes and ``nn.Identity`` for absent parts (like timm's
``_efficientnet_blocks``), so BN fusion, profiling and ablations can address
every layer by name and an ablated network has exactly the paper's parameters.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from searchsr.config import ACTIVATIONS
from searchsr.errors import UsageError


def make_act(name: str) -> nn.Module:
    """The paper's non-linearity is LeakyReLU(0.2); the others are search options."""
    if name == "leakyrelu":
        return nn.LeakyReLU(0.2, inplace=True)
    if name == "relu":
        return nn.ReLU(inplace=True)
    if name == "prelu":
        return nn.PReLU()
    if name == "hardswish":
        return nn.Hardswish()
    if name == "silu":
        return nn.SiLU()
    raise UsageError(f"act must be one of {ACTIVATIONS}, got {name!r}")


class SqueezeExcite(nn.Module):
    """MobileNetV3 SE: global pool -> FC (ReLU) -> FC (hard-sigmoid) -> channel gate.

    Bias-free 1x1 convs: Table 2's per-block parameter count leaves no room for SE biases.
    """

    def __init__(self, channels: int, squeeze: int) -> None:
        super().__init__()
        self.reduce = nn.Conv2d(channels, squeeze, 1, bias=False)
        self.act = nn.ReLU(inplace=True)
        self.expand = nn.Conv2d(squeeze, channels, 1, bias=False)
        self.gate = nn.Hardsigmoid()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.excite(x.mean((2, 3), keepdim=True))

    def excite(self, pooled: torch.Tensor) -> torch.Tensor:
        """The channel gate (N x C x 1 x 1) for a pooled input; tiled inference passes the image-wide mean."""
        return self.gate(self.expand(self.act(self.reduce(pooled))))


class MBConvSR(nn.Module):
    """Adapted MobileNetV3 block at LR resolution (stride 1).

    1x1 expand -> BN -> act -> kxk depthwise -> BN -> act -> [SE] -> 1x1 project -> BN,
    plus the inverted-residual add when input and output widths match.
    Convs carry no bias: a following BN has its own shift, and Table 4's no-BN row
    removes exactly the BN parameters (no biases appear in their place).
    """

    def __init__(self, c_in: int, c_out: int, expanded: int, kernel_size: int,
                 squeeze: int | None, bn: bool, act: str) -> None:
        super().__init__()
        norm = nn.BatchNorm2d if bn else (lambda c: nn.Identity())
        self.expand = nn.Conv2d(c_in, expanded, 1, bias=False)
        self.bn1 = norm(expanded)
        self.act1 = make_act(act)
        self.dw = nn.Conv2d(expanded, expanded, kernel_size, padding=kernel_size // 2,
                            groups=expanded, bias=False)
        self.bn2 = norm(expanded)
        self.act2 = make_act(act)
        self.se = SqueezeExcite(expanded, squeeze) if squeeze else nn.Identity()
        self.project = nn.Conv2d(expanded, c_out, 1, bias=False)
        self.bn3 = norm(c_out)
        self.residual = c_in == c_out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.act1(self.bn1(self.expand(x)))
        y = self.se(self.act2(self.bn2(self.dw(y))))
        y = self.bn3(self.project(y))
        return x + y if self.residual else y


class UpsampleStage(nn.Module):
    """One pixel-shuffle stage: 1x1 conv (c -> r^2 c) -> PixelShuffle(r) -> act -> 3x3 depthwise."""

    def __init__(self, channels: int, factor: int, act: str) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels * factor * factor, 1)
        self.shuffle = nn.PixelShuffle(factor)
        self.act = make_act(act)
        self.dw = nn.Conv2d(channels, channels, 3, padding=1, groups=channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dw(self.act(self.shuffle(self.conv(x))))


def symmetric_pad(x: torch.Tensor, pad: int, dim: int) -> torch.Tensor:
    """MATLAB's 'symmetric' border (edge pixel repeated), which PyTorch's pad modes lack."""
    n = x.shape[dim]
    if n < pad:
        raise UsageError(f"input size {n} along dim {dim} is smaller than the bicubic support {pad}")
    head = x.narrow(dim, 0, pad).flip(dim)
    tail = x.narrow(dim, n - pad, pad).flip(dim)
    return torch.cat([head, x, tail], dim)


def bicubic_phase_kernels(scale: int, a: float = -0.5) -> torch.Tensor:
    """1-D weights (scale, 5): output pixel ``scale*k + p`` = sum_j w[p, j] * x[k - 2 + j].

    MATLAB maps output pixel u (0-based) to input coordinate (u + 0.5)/scale - 0.5,
    so within one input pixel the fractional offset of phase p is (p + 0.5)/scale - 0.5,
    which lies in (-0.5, 0.5): five taps k-2..k+2 always cover the kernel's support.
    """
    weights = torch.zeros(scale, 5, dtype=torch.float64)
    for p in range(scale):
        d = (p + 0.5) / scale - 0.5
        for j in range(5):
            t = abs(d - (j - 2))
            if t <= 1:
                weights[p, j] = (a + 2) * t**3 - (a + 3) * t**2 + 1
            elif t < 2:
                weights[p, j] = a * t**3 - 5 * a * t**2 + 8 * a * t - 4 * a
        weights[p] /= weights[p].sum()
    return weights


class BicubicUpsample(nn.Module):
    """MATLAB ``imresize(x, scale, 'bicubic')`` for integer upscaling, as a fixed conv.

    PyTorch's ``interpolate(mode='bicubic')`` uses a = -0.75 and clamps at borders; the
    SR literature's bicubic (and the LR images it is scored on) uses a = -0.5 with
    symmetric borders, so the skip reproduces MATLAB exactly (up to float rounding):
    symmetric pad by 2, one depthwise 5x5 conv producing scale^2 phases, pixel shuffle.
    The kernel is a buffer, not a parameter, so it never counts as a weight.
    """

    def __init__(self, scale: int) -> None:
        super().__init__()
        w1 = bicubic_phase_kernels(scale)
        w2 = torch.einsum("pi,qj->pqij", w1, w1).reshape(scale * scale, 1, 5, 5)
        self.scale = scale
        self.register_buffer("weight", w2.float(), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c = x.shape[1]
        x = symmetric_pad(symmetric_pad(x, 2, 2), 2, 3)
        y = F.conv2d(x, self.weight.repeat(c, 1, 1, 1), groups=c)
        return F.pixel_shuffle(y, self.scale)
