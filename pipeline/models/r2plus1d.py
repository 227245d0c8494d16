"""R(2+1)D video ResNet backbone (models.md §2.5), without its pooling and classifier.

The layout is the torchvision VideoResNet one as used by the IG65M R(2+1)D-34 weights: a (2+1)D
stem, four stages of BasicBlocks whose 3x3x3 convolutions are factorised into a (1,3,3) spatial
and a (3,1,1) temporal convolution, with the "caffe2" mid-width of the second convolution of
each stage's first block. Depth 34 = [3, 4, 6, 3] blocks; depth 10 = [1, 1, 1, 1] is the light
CPU variant (optionally at reduced width).
"""

from __future__ import annotations

import torch
from torch import nn

R2PLUS1D_BN_EPS = 1e-3
R2PLUS1D_BN_MOMENTUM = 0.9  # as in the IG65M port the spec describes
R2PLUS1D_STEM_MID = 45  # stem (1,7,7) conv output width at base width 64
R2PLUS1D_BASE_WIDTH = 64
R2PLUS1D_TEMPORAL_STRIDE = 8  # layers 2-4 halve time: 32 frames -> 4 tokens
BLOCKS_BY_DEPTH: dict[int, tuple[int, int, int, int]] = {
    10: (1, 1, 1, 1),
    18: (2, 2, 2, 2),
    34: (3, 4, 6, 3),
}


def _bn(channels: int) -> nn.BatchNorm3d:
    return nn.BatchNorm3d(channels, eps=R2PLUS1D_BN_EPS, momentum=R2PLUS1D_BN_MOMENTUM)


def mid_planes(in_planes: int, out_planes: int) -> int:
    """Width between the spatial and temporal convolutions: keeps the 3x3x3 parameter count."""
    return (in_planes * out_planes * 27) // (in_planes * 9 + 3 * out_planes)


class Conv2Plus1D(nn.Sequential):
    """(1,3,3) spatial conv, BN, ReLU, (3,1,1) temporal conv; the stride applies in both parts."""

    def __init__(self, in_planes: int, out_planes: int, mid: int, stride: int = 1):
        super().__init__(
            nn.Conv3d(
                in_planes, mid, (1, 3, 3), stride=(1, stride, stride), padding=(0, 1, 1), bias=False
            ),
            _bn(mid),
            nn.ReLU(inplace=True),
            nn.Conv3d(
                mid, out_planes, (3, 1, 1), stride=(stride, 1, 1), padding=(1, 0, 0), bias=False
            ),
        )


class BasicBlock2Plus1D(nn.Module):
    """Two (2+1)D convolutions with BN and a residual connection (1x1x1 conv when shapes change)."""

    def __init__(self, in_planes: int, planes: int, stride: int = 1, first_in_stage: bool = False):
        super().__init__()
        mid1 = mid_planes(in_planes, planes)
        # The caffe2-trained weights size the second conv of a stage's first block from
        # (planes, planes), where torchvision would reuse mid1.
        mid2 = mid_planes(planes, planes) if first_in_stage else mid1
        self.conv1 = nn.Sequential(
            Conv2Plus1D(in_planes, planes, mid1, stride), _bn(planes), nn.ReLU(inplace=True)
        )
        self.conv2 = nn.Sequential(Conv2Plus1D(planes, planes, mid2), _bn(planes))
        self.downsample: nn.Module | None = None
        if stride != 1 or in_planes != planes:
            self.downsample = nn.Sequential(
                nn.Conv3d(in_planes, planes, 1, stride=stride, bias=False), _bn(planes)
            )
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        residual = x if self.downsample is None else self.downsample(x)
        return self.relu(self.conv2(self.conv1(x)) + residual)


class R2Plus1D(nn.Module):
    """Backbone: N x 3 x T x H x W -> N x (8 * width) x T/8 x H/16 x W/16 feature map."""

    def __init__(
        self,
        blocks: tuple[int, int, int, int] = BLOCKS_BY_DEPTH[34],
        base_width: int = R2PLUS1D_BASE_WIDTH,
        in_channels: int = 3,
    ):
        super().__init__()
        if len(blocks) != 4 or min(blocks) < 1:
            raise ValueError(f"blocks must be four positive counts, got {blocks}")
        if base_width < 8:
            raise ValueError(f"base_width must be at least 8, got {base_width}")
        stem_mid = (R2PLUS1D_STEM_MID * base_width) // R2PLUS1D_BASE_WIDTH
        self.stem = nn.Sequential(
            nn.Conv3d(
                in_channels, stem_mid, (1, 7, 7), stride=(1, 2, 2), padding=(0, 3, 3), bias=False
            ),
            _bn(stem_mid),
            nn.ReLU(inplace=True),
            nn.Conv3d(stem_mid, base_width, (3, 1, 1), padding=(1, 0, 0), bias=False),
            _bn(base_width),
            nn.ReLU(inplace=True),
        )
        widths = [base_width * (2**i) for i in range(4)]
        in_planes = base_width
        stages: list[nn.Sequential] = []
        for i, (n_blocks, planes) in enumerate(zip(blocks, widths, strict=True)):
            stride = 1 if i == 0 else 2
            layer = [BasicBlock2Plus1D(in_planes, planes, stride, first_in_stage=i > 0)]
            layer += [BasicBlock2Plus1D(planes, planes) for _ in range(n_blocks - 1)]
            stages.append(nn.Sequential(*layer))
            in_planes = planes
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.out_channels = widths[-1]
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Kaiming (fan-out) convolutions and unit BatchNorm, as torchvision's VideoResNet."""
        for m in self.modules():
            if isinstance(m, nn.Conv3d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm3d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))
