"""Reference networks of the paper's tables, outside the family: MSRResNet (Table 1) and FSRCNN (Table 3).

Each is built from its frozen config (``searchsr.config.MSRResNetConfig`` / ``FSRCNNConfig``, the
counterparts of ``ArchConfig``) by ``searchsr.arch.build_model``, which dispatches on the config's type,
so ``profile``, ``train``, ``eval`` and ``retrain --baselines`` handle them like any family network.

Costs under ``searchsr.cost``'s convention (tests/test_baselines.py):

* MSRResNet: 1,517,571 parameters (Table 1: 1517 K); 333.45 GFLOPs at 256x256 LR (Table 1: 333.32 G,
  +0.04%): 2 x 166.2 G conv MACs plus the bias adds and activations our convention charges; 292.55 M
  activations, Table 1's figure exactly.
* FSRCNN (d=56, s=12, m=4): 12,809 parameters: 12,464 conv weights, the figure Dong et al. count and
  Table 3 rounds to 12 K, plus 173 biases and 172 PReLU slopes. 9.32 GFLOPs for a 1280x720 output
  (320x180 LR; Table 3: 9.2 G, +1.2%). The 9x9 stride-4 deconvolution dominates: counted, as ptflops
  (the paper's counter) counts every ``ConvTranspose2d``, as 56 x 81 MACs per *output* (HR) pixel,
  8.36 of the 9.32 GFLOPs. That is the deconvolution taken as a convolution over the zero-stuffed HR
  grid; the multiplies a transposed convolution really does are 56 x 81 per *input* pixel, 16x fewer
  (what ``torch.utils.flop_counter`` reports). ``searchsr.cost.count_cost`` charges the ptflops figure, so
  FSRCNN's FLOPs compare with Table 3's peers as printed there.
"""

from __future__ import annotations

import torch
from torch import nn

from searchsr.blocks import BicubicUpsample
from searchsr.config import FSRCNNConfig, MSRResNetConfig, upsample_factors

# BT.601 luma of RGB in [0, 1], MATLAB's rgb2ycbcr (range 16-235), as searchsr.metrics scores it.
Y_WEIGHTS = (65.481 / 255, 128.553 / 255, 24.966 / 255)
Y_OFFSET = 16 / 255
# Changing Y alone by dy changes R, G and B each by 255/219 * dy: the first column of rgb2ycbcr's
# inverse (the Cb and Cr rows sum to zero, the Y row to 219/255).
Y_TO_RGB = 255 / 219


class ResidualBlockNoBN(nn.Module):
    """BasicSR's residual block: x + conv3x3(ReLU(conv3x3(x)))."""

    def __init__(self, nf: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(nf, nf, 3, 1, 1)
        self.conv2 = nn.Conv2d(nf, nf, 3, 1, 1)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv2(self.relu(self.conv1(x)))


class MSRResNet(nn.Module):
    """BasicSR's ``MSRResNet`` (modified SRResNet, the AIM 2020 efficient-SR baseline), same layer names, so
    a BasicSR state dict loads as is:

        feat = LReLU(conv_first 3 -> nf)(x);  out = ResidualBlockNoBN x N (feat)
        out  = [LReLU(PixelShuffle(2)(upconv 3x3 nf -> 4nf))] x 2     (x2/x3: one stage, as BasicSR)
        out  = conv_last 3x3 nf -> 3 (LReLU(conv_hr 3x3 nf -> nf)(out)) + up(x)

    LeakyReLU(0.1); weights as BasicSR initialises them (Kaiming normal x 0.1, zero biases).
    ``up(x)``: BasicSR adds a bilinear ``F.interpolate`` of the input; this one adds our MATLAB bicubic
    (``BicubicUpsample``, a fixed buffer: no parameters, and, as a functional skip named ``skip``, no FLOPs
    under our convention), the same skip the family uses and the interpolation our LR images come from.
    """

    def __init__(self, cfg: MSRResNetConfig) -> None:
        super().__init__()
        nf, factors = cfg.nf, upsample_factors(cfg.scale)
        self.conv_first = nn.Conv2d(3, nf, 3, 1, 1)
        self.body = nn.Sequential(*(ResidualBlockNoBN(nf) for _ in range(cfg.n_blocks)))
        self.upconv1 = nn.Conv2d(nf, nf * factors[0] ** 2, 3, 1, 1)
        self.upconv2 = nn.Conv2d(nf, nf * factors[1] ** 2, 3, 1, 1) if len(factors) > 1 else None
        self.pixel_shuffle = nn.PixelShuffle(factors[0])
        self.conv_hr = nn.Conv2d(nf, nf, 3, 1, 1)
        self.conv_last = nn.Conv2d(nf, 3, 3, 1, 1)
        self.lrelu = nn.LeakyReLU(0.1, inplace=True)
        self.skip = BicubicUpsample(cfg.scale)
        for conv in self.modules():
            if isinstance(conv, nn.Conv2d):
                nn.init.kaiming_normal_(conv.weight)
                conv.weight.data.mul_(0.1)
                nn.init.zeros_(conv.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.body(self.lrelu(self.conv_first(x)))
        for upconv in (self.upconv1, self.upconv2):
            if upconv is not None:
                out = self.lrelu(self.pixel_shuffle(upconv(out)))
        return self.conv_last(self.lrelu(self.conv_hr(out))) + self.skip(x)


class FSRCNN(nn.Module):
    """FSRCNN(d, s, m) of Dong et al., "Accelerating the Super-Resolution Convolutional Neural Network"
    (ECCV 2016), on the Y channel as there (and as our metrics score):

        y    = BT.601 luma of the RGB input (16-235 range, in [0, 1])
        y_sr = deconv 9x9 stride x (d -> 1) (PReLU(1x1 s -> d)([PReLU(3x3 s -> s)] x m (
                   PReLU(1x1 d -> s)(PReLU(5x5 1 -> d)(y)))))
        out  = bicubic(x) + 255/219 * (y_sr - luma(bicubic(x)))

    so the output's luma is ``y_sr`` and its Cb/Cr are the bicubic upscale's (a Y-only network's usual
    RGB output), all in RGB. PReLU slopes per channel (Caffe's default, as the paper trained); He-normal
    convolutions and a N(0, 0.001) deconvolution, as the paper initialises them. The bicubic path is our
    MATLAB ``BicubicUpsample`` named ``skip``: a functional interpolation, no parameters, no FLOPs.
    """

    def __init__(self, cfg: FSRCNNConfig) -> None:
        super().__init__()
        d, s, scale = cfg.d, cfg.s, cfg.scale
        self.extract = nn.Sequential(nn.Conv2d(1, d, 5, padding=2), nn.PReLU(d))
        self.shrink = nn.Sequential(nn.Conv2d(d, s, 1), nn.PReLU(s))
        self.map = nn.Sequential(*(layer for _ in range(cfg.m) for layer in (nn.Conv2d(s, s, 3, padding=1),
                                                                             nn.PReLU(s))))
        self.expand = nn.Sequential(nn.Conv2d(s, d, 1), nn.PReLU(d))
        self.deconv = nn.ConvTranspose2d(d, 1, 9, stride=scale, padding=4, output_padding=scale - 1)
        self.skip = BicubicUpsample(scale)
        self.register_buffer("y_weights", torch.tensor(Y_WEIGHTS).view(1, 3, 1, 1), persistent=False)
        for conv in self.modules():
            if isinstance(conv, nn.Conv2d):
                nn.init.kaiming_normal_(conv.weight, mode="fan_out")
                nn.init.zeros_(conv.bias)
        nn.init.normal_(self.deconv.weight, std=0.001)
        nn.init.zeros_(self.deconv.bias)

    def luma(self, rgb: torch.Tensor) -> torch.Tensor:
        """BT.601 Y (elementwise: no conv, so no FLOPs charged for a colour conversion)."""
        return (rgb * self.y_weights).sum(1, keepdim=True) + Y_OFFSET

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y_sr = self.deconv(self.expand(self.map(self.shrink(self.extract(self.luma(x))))))
        up = self.skip(x)
        return up + Y_TO_RGB * (y_sr - self.luma(up))


def build_reference(cfg: MSRResNetConfig | FSRCNNConfig) -> nn.Module:
    """A freshly initialised reference network for ``cfg``: the one place config types map to networks."""
    if isinstance(cfg, MSRResNetConfig):
        return MSRResNet(cfg)
    if isinstance(cfg, FSRCNNConfig):
        return FSRCNN(cfg)
    raise TypeError(f"not a reference network's config: {cfg!r}")
