"""Fold BatchNorm into the preceding convolution for inference (paper, Table 4: LITE_FUSED)."""

from __future__ import annotations

import copy

from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from searchsr.blocks import MBConvSR

_PAIRS = (("expand", "bn1"), ("dw", "bn2"), ("project", "bn3"))


def fuse_bn(model: nn.Module) -> nn.Module:
    """Return an eval-mode copy of ``model`` with every block BN folded into its conv.

    The input model is left untouched (it may still be training). Each fused conv
    gains a bias (the BN shift has to live somewhere), so the fused network has
    the no-BN weights plus one bias per former BN channel.
    """
    fused = copy.deepcopy(model).eval()
    for block in fused.modules():
        if not isinstance(block, MBConvSR):
            continue
        for conv_name, bn_name in _PAIRS:
            bn = getattr(block, bn_name)
            if isinstance(bn, nn.BatchNorm2d):
                setattr(block, conv_name, fuse_conv_bn_eval(getattr(block, conv_name), bn))
                setattr(block, bn_name, nn.Identity())
    return fused
