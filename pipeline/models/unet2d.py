"""The DeCoVNet lung-mask 2D U-Net (models.md §1.3): four poolings, 16 base channels, bilinear up.

Encoder widths 16-32-64-128-128, decoder 64-32-16-16, a 1x1 output convolution to two classes
(background, lung). Each double convolution is (3x3 conv with bias, BatchNorm, ReLU) twice,
as in the early milesial layout (839,506 parameters).
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

UNET_BASE_CHANNELS = 16
UNET_DOWNSAMPLING_FACTOR = 16  # four 2x poolings: input sides must be multiples of this


class DoubleConv(nn.Sequential):
    """Two (3x3 conv, BatchNorm, ReLU) layers."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__(
            nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
            nn.Conv2d(out_channels, out_channels, kernel_size=3, padding=1),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
        )


class Down(nn.Sequential):
    """2x2 max pooling followed by a double convolution."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__(nn.MaxPool2d(2), DoubleConv(in_channels, out_channels))


class Up(nn.Module):
    """Bilinear 2x upsampling (corners aligned), concatenation with the skip, double convolution."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.conv = DoubleConv(in_channels, out_channels)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(x, scale_factor=2.0, mode="bilinear", align_corners=True)
        dy = skip.shape[-2] - x.shape[-2]
        dx = skip.shape[-1] - x.shape[-1]
        if dy or dx:  # odd sizes: pad the upsampled map to the skip's size
            x = F.pad(x, [dx // 2, dx - dx // 2, dy // 2, dy - dy // 2])
        return self.conv(torch.cat([skip, x], dim=1))


class UNet2D(nn.Module):
    """Slice-wise lung segmenter: N x 1 x H x W in [0, 1] -> N x classes x H x W logits."""

    def __init__(
        self, in_channels: int = 1, num_classes: int = 2, base_channels: int = UNET_BASE_CHANNELS
    ):
        super().__init__()
        c = base_channels
        self.in_channels = in_channels
        self.num_classes = num_classes
        self.inc = DoubleConv(in_channels, c)
        self.down1 = Down(c, 2 * c)
        self.down2 = Down(2 * c, 4 * c)
        self.down3 = Down(4 * c, 8 * c)
        self.down4 = Down(8 * c, 8 * c)  # bilinear variant: the bottom stays at 8c
        self.up1 = Up(16 * c, 4 * c)
        self.up2 = Up(8 * c, 2 * c)
        self.up3 = Up(4 * c, c)
        self.up4 = Up(2 * c, c)
        self.outc = nn.Conv2d(c, num_classes, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x1 = self.inc(x)
        x2 = self.down1(x1)
        x3 = self.down2(x2)
        x4 = self.down3(x3)
        x5 = self.down4(x4)
        y = self.up1(x5, x4)
        y = self.up2(y, x3)
        y = self.up3(y, x2)
        y = self.up4(y, x1)
        return self.outc(y)


def fused_for_inference(net: UNet2D) -> UNet2D:
    """An eval-mode copy with every BatchNorm folded into its convolution (same outputs, faster).

    Use only for inference: the copy has no BatchNorm layers left to train.
    """
    fused = copy.deepcopy(net).eval()
    for module in fused.modules():
        if isinstance(module, DoubleConv):
            for i in (0, 3):
                conv, bn = module[i], module[i + 1]
                if isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d):
                    module[i] = fuse_conv_bn_eval(conv, bn)
                    module[i + 1] = nn.Identity()
    return fused
