"""One network of the paper's family as a frozen config, and ``build_model(cfg)``.

Layout (Wang et al., "Efficient Super-Resolution Using MobileNetV3", Sec. 3.2),
for LR input x with 3 channels, width nf, N, expansion e (paper: 2), SE ratio 4:

    f  = Block(3 -> nf, expanded e*nf, no SE)                       # first block
    y  = Block(nf -> nf, expanded e*nf, SE) x N  (f)  + f            # long skip
    t  = 1x1 conv (nf -> nf/2, bias)(y)                              # tail width
    t  = [1x1 conv (c -> 4c, bias) -> PixelShuffle(2) -> NL -> 3x3 dw (bias)] x 2
    out= 1x1 conv (c -> 3, bias)(NL(1x1 conv (c -> c, bias)(3x3 dw (bias)(t))))
    out= out + bicubic_x4(x)                                         # MATLAB cubic, a = -0.5

Block = 1x1 expand -> BN -> NL -> 3x3 dw -> BN -> NL -> [SE] -> 1x1 project -> BN
(+ identity when widths match); block convs are bias-free, SE = bias-free 1x1 convs
2nf -> nf/2 -> 2nf with hard-sigmoid gate, as in MobileNetV3.

How the paper's numbers pin this down (Table 2 = 7 (nf, N) points; Table 4 ablations):

* Per block. (nf, 16) minus (nf, 8) over 8 blocks gives 1,984 / 7,040 / 26,368
  parameters per block at nf = 16 / 32 / 64; the quadratic through them is exactly
  6 nf^2 + 28 nf: expand 2nf^2 + project 2nf^2 + SE 2nf^2 (2 * 2nf * nf/2, no bias)
  + depthwise 18nf + BN 2*(2nf + 2nf + nf) = 10nf, and no conv or SE biases.
  Activations differ by exactly 5nf per LR pixel per block (expand, dw, project).
* BN. Removing BN costs XLITE exactly 1.44K = 9 blocks * 10nf (nf = 16): every one
  of the N + 1 blocks, the first included, has BN(2nf), BN(2nf), BN(nf) and nothing
  else in the network has BN, so the first block also expands to 2nf (not 2 * 3).
  Its FLOP deltas (-1.6G LITE, -0.18G XLITE) are 4 FLOPs per BN output element.
* SE. Removing SE costs 4.1K (XLITE) = 8 * 2nf^2 and 165.9K (LITE) = 16 * 2nf^2:
  SE sits in N of the N + 1 blocks, not in the first (3-channel input) block.
* Tail. After subtracting N blocks and the first block (2nf^2 + 34nf: 1x1 3 -> 2nf,
  dw, project, BN), the remainder of Table 2 is 2.75 nf^2 + 21.5 nf + 3 parameters;
  the non-block activations are 36.5 nf LR-pixel equivalents + 3 HR channels and the
  non-block FLOPs have 2 * 9.5 nf^2 per LR pixel. Conv weights at LR, 2x and HR
  resolutions (p_LR + p_2x + p_HR = 2.75, p_LR + 4 p_2x + 16 p_HR = 9.5) together
  with the activation budget leave (up to the order of equivalent layers) one
  layout: a 1x1 reduction nf -> nf/2 (0.5 nf^2), 1x1 c -> 4c before each pixel
  shuffle (nf^2 at LR, nf^2 at 2x), a 3x3 depthwise after each shuffle, and the
  post-processing depthwise-separable conv + 1x1 on nf/2 channels at HR
  (0.25 nf^2). Biases on all tail convs give the linear term 21.5 nf + 3.
  This reproduces all 7 parameter counts of Table 2 to the printed precision and
  Table 4's BN and SE deltas exactly (tests/test_arch.py).
"""

from __future__ import annotations

import torch
from torch import nn

from searchsr.blocks import BicubicUpsample, MBConvSR, UpsampleStage, make_act
from searchsr.baselines import build_reference
from searchsr.config import AnyArch, ArchConfig, upsample_factors


class MobileSR(nn.Module):
    """The family's network; see the module docstring for the layout and its derivation."""

    def __init__(self, cfg: ArchConfig) -> None:
        super().__init__()
        squeeze = cfg.expanded // cfg.se_ratio if cfg.se else None
        block = dict(expanded=cfg.expanded, kernel_size=cfg.kernel_size, bn=cfg.bn, act=cfg.act)
        self.head = MBConvSR(3, cfg.nf, squeeze=None, **block)
        self.body = nn.Sequential(*(MBConvSR(cfg.nf, cfg.nf, squeeze=squeeze, **block)
                                    for _ in range(cfg.n_blocks)))
        c = cfg.tail
        self.reduce = nn.Conv2d(cfg.nf, c, 1)
        self.upsample = nn.Sequential(*(UpsampleStage(c, f, cfg.act) for f in upsample_factors(cfg.scale)))
        self.post_dw = nn.Conv2d(c, c, 3, padding=1, groups=c)
        self.post_pw = nn.Conv2d(c, c, 1)
        self.post_act = make_act(cfg.act)
        self.to_rgb = nn.Conv2d(c, 3, 1)
        self.skip = BicubicUpsample(cfg.scale) if cfg.bicubic_skip else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = self.head(x)
        y = self.body(f) + f
        y = self.upsample(self.reduce(y))
        y = self.to_rgb(self.post_act(self.post_pw(self.post_dw(y))))
        return y + self.skip(x) if self.skip is not None else y


def build_model(cfg: AnyArch) -> nn.Module:
    """Pure function: a freshly initialised network for ``cfg``, a member of the family (``MobileSR``) or,
    for a reference network's config, that network (``searchsr.baselines``)."""
    if isinstance(cfg, ArchConfig):
        return MobileSR(cfg)
    return build_reference(cfg)
