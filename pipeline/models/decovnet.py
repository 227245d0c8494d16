"""DeCoVNet, the 3D classifier of Wang et al. (IEEE TMI 2020), as specified in models.md §1.5.

Input 1 x 2 x T x 224 x 336 (windowed CT in [0, 1], lung mask in {0, 1}); T is the number of
1-mm slices of the lung extent and varies per CT. Only the forward path is built (stem, two
residual blocks, progressive classifier, two linear layers): the unused s4/s5 stages of the
original are left out, so the state dict holds exactly the 346,978 forward-path parameters.
"""

from __future__ import annotations

import torch
from torch import nn

DECOVNET_IN_CHANNELS = 2
DECOVNET_WIDTH = 16  # width_per_group of the original
DECOVNET_FEATURE_CHANNELS = 128  # channels of the s3 output used by the CAM
DECOVNET_EMBEDDING_DIM = 32
BN_EPS = 1e-5
BN_MOMENTUM = 0.1
LINEAR_INIT_STD = 0.01

# Indices into ``DeCoVNet.head`` of the three convolutions the linearised CAM reads (§1.6).
HEAD_CONV_INDICES = (1, 4, 8)


def _conv_bn(
    c_in: int,
    c_out: int,
    kernel: tuple[int, int, int],
    stride: tuple[int, int, int] = (1, 1, 1),
    padding: tuple[int, int, int] = (0, 0, 0),
    relu: bool = True,
) -> nn.Sequential:
    layers: list[nn.Module] = [
        nn.Conv3d(c_in, c_out, kernel, stride=stride, padding=padding, bias=False),
        nn.BatchNorm3d(c_out, eps=BN_EPS, momentum=BN_MOMENTUM),
    ]
    if relu:
        layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


class ResBlock3d(nn.Module):
    """Bottleneck block: (3,1,1) temporal conv, (1,3,3) spatial conv, 1x1x1 expansion, shortcut.

    The spatial stride sits on the (1,3,3) convolution and on the shortcut; the last BatchNorm of
    the branch starts with gamma = 0 so that the block starts as its shortcut.
    """

    def __init__(self, c_in: int, c_mid: int, c_out: int, spatial_stride: int = 1):
        super().__init__()
        s = (1, spatial_stride, spatial_stride)
        self.branch_a = _conv_bn(c_in, c_mid, (3, 1, 1), padding=(1, 0, 0))
        self.branch_b = _conv_bn(c_mid, c_mid, (1, 3, 3), stride=s, padding=(0, 1, 1))
        self.branch_c = _conv_bn(c_mid, c_out, (1, 1, 1), relu=False)
        self.shortcut = _conv_bn(c_in, c_out, (1, 1, 1), stride=s, relu=False)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.branch_c(self.branch_b(self.branch_a(x)))
        return self.relu(y + self.shortcut(x))


class DeCoVNet(nn.Module):
    """DeCoVNet. ``forward`` returns (logits, s3 features); the features feed the CAM."""

    def __init__(self, num_classes: int = 2, in_channels: int = DECOVNET_IN_CHANNELS):
        super().__init__()
        if num_classes < 2:
            raise ValueError(f"num_classes must be at least 2, got {num_classes}")
        w = DECOVNET_WIDTH
        self.num_classes = num_classes
        self.stem = nn.Sequential(
            nn.Conv3d(in_channels, w, (5, 7, 7), stride=(1, 2, 2), padding=(2, 3, 3), bias=False),
            nn.BatchNorm3d(w, eps=BN_EPS, momentum=BN_MOMENTUM),
            nn.ReLU(inplace=True),
            nn.MaxPool3d(kernel_size=(1, 3, 3), stride=(1, 2, 2), padding=(0, 1, 1)),
        )
        self.s2 = ResBlock3d(w, w, 4 * w)
        self.temporal_pool = nn.MaxPool3d(kernel_size=(2, 1, 1), stride=(2, 1, 1))
        self.s3 = ResBlock3d(4 * w, 2 * w, DECOVNET_FEATURE_CHANNELS, spatial_stride=2)
        self.head = nn.Sequential(
            nn.AdaptiveMaxPool3d((16, 24, 36)),
            nn.Conv3d(DECOVNET_FEATURE_CHANNELS, 64, 3, padding=1),
            nn.ReLU(inplace=True),
            nn.AdaptiveMaxPool3d((4, 12, 18)),
            nn.Conv3d(64, 32, 3, padding=1),
            nn.ReLU(inplace=True),
            nn.AdaptiveMaxPool3d((1, 6, 9)),
            nn.Dropout3d(p=0.0),
            nn.Conv3d(32, DECOVNET_EMBEDDING_DIM, 3, padding=1),
            nn.ReLU(inplace=True),
            nn.AdaptiveMaxPool3d(1),
        )
        self.classifier = nn.Sequential(
            nn.Linear(DECOVNET_EMBEDDING_DIM, DECOVNET_EMBEDDING_DIM),
            nn.Linear(DECOVNET_EMBEDDING_DIM, num_classes),
        )
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """MSRA-filled convs, BN gamma 1 (0 on each block's last BN), N(0, 0.01) linears."""
        for m in self.modules():
            if isinstance(m, nn.Conv3d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm3d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, std=LINEAR_INIT_STD)
                nn.init.zeros_(m.bias)
        for block in (self.s2, self.s3):
            bn = block.branch_c[1]
            if isinstance(bn, nn.BatchNorm3d):
                nn.init.zeros_(bn.weight)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The 128-channel s3 output, N x 128 x T/2 x H/8 x W/8."""
        if x.ndim != 5 or x.shape[2] < 2:
            raise ValueError(f"expected N x C x T x H x W with T >= 2, got {tuple(x.shape)}")
        return self.s3(self.temporal_pool(self.s2(self.stem(x))))

    def forward_with_embedding(
        self, x: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(logits N x classes, s3 features, pooled 32-d embedding N x 32)."""
        feats = self.features(x)
        embedding = torch.flatten(self.head(feats), 1)
        return self.classifier(embedding), feats, embedding

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits, feats, _ = self.forward_with_embedding(x)
        return logits, feats

    def cam_weights(self) -> torch.Tensor:
        """The linearised CAM weights (§1.6): a 128 x num_classes matrix.

        Each head convolution is reduced to the mean of its kernel over the 3x3x3 window and the
        chain head[1] -> head[4] -> head[8] -> classifier[0] -> classifier[1] is multiplied out,
        ignoring ReLUs, biases and poolings. ``cam = w[:, k] . F`` for class k.
        """
        mats = []
        for idx in HEAD_CONV_INDICES:
            conv = self.head[idx]
            if not isinstance(conv, nn.Conv3d):
                raise TypeError(f"head[{idx}] is not a Conv3d")
            mats.append(conv.weight.mean(dim=(2, 3, 4)))  # out x in
        for lin in self.classifier:
            if not isinstance(lin, nn.Linear):
                raise TypeError("classifier holds a non-linear layer")
            mats.append(lin.weight)
        w = mats[0].t()
        for m in mats[1:]:
            w = w @ m.t()
        return w
