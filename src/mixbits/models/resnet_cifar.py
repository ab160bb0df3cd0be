"""The CIFAR ResNets of He et al. 2016 (section 4.2): ResNet-20/32/56, 6n+2 layers.

Three stages of n basic blocks with 16, 32 and 64 channels at 32x32, 16x16 and
8x8; global average pooling; one linear layer. Shortcuts are option A of the
paper: identity, and where the shape changes a parameter-free shortcut that
subsamples by 2 and pads the new channels with zeros. ResNet-20 has 269,722
parameters for 10 classes (the paper's 0.27M).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .registry import register_model

__all__ = ["CifarResNet", "BasicBlock", "PadShortcut"]


class PadShortcut(nn.Module):
    """Option-A shortcut: keep every ``stride``-th pixel, zero-pad the extra channels (no parameters)."""

    def __init__(self, in_channels: int, out_channels: int, stride: int) -> None:
        super().__init__()
        self.stride = stride
        self.extra = out_channels - in_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x[:, :, ::self.stride, ::self.stride]  # (B, C, H/s, W/s)
        lo = self.extra // 2
        return F.pad(x, (0, 0, 0, 0, lo, self.extra - lo))  # (B, C + extra, H/s, W/s)


class BasicBlock(nn.Module):
    """conv3x3-BN-ReLU-conv3x3-BN plus the shortcut, then ReLU."""

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.shortcut: nn.Module = (PadShortcut(in_channels, out_channels, stride)
                                    if stride != 1 or in_channels != out_channels else nn.Identity())

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class CifarResNet(nn.Module):
    """ResNet with ``6 * blocks_per_stage + 2`` weight layers for small images.

    Args:
        blocks_per_stage: n (3 for ResNet-20, 5 for ResNet-32, 9 for ResNet-56).
        in_channels, num_classes: input channels and output classes.
        width: channels of the first stage (16 in the paper); later stages double it.
    """

    def __init__(self, blocks_per_stage: int, *, in_channels: int = 3, num_classes: int = 10, width: int = 16) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, width, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        stages, c_in = [], width
        for i, c_out in enumerate((width, 2 * width, 4 * width)):
            blocks = []
            for j in range(blocks_per_stage):
                blocks.append(BasicBlock(c_in, c_out, 2 if (i > 0 and j == 0) else 1))
                c_in = c_out
            stages.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3 = stages
        self.fc = nn.Linear(c_in, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.Linear):
                nn.init.kaiming_normal_(m.weight)

    def forward(self, x):
        x = F.relu(self.bn1(self.conv1(x)))  # (B, w, H, W)
        x = self.layer3(self.layer2(self.layer1(x)))  # (B, 4w, H/4, W/4)
        x = F.adaptive_avg_pool2d(x, 1).flatten(1)  # (B, 4w)
        return self.fc(x)  # (B, classes)


def _factory(n: int):
    def make(*, in_channels: int, num_classes: int, input_size: int, width: int = 16) -> nn.Module:
        return CifarResNet(n, in_channels=in_channels, num_classes=num_classes, width=width)

    make.__doc__ = f"ResNet-{6 * n + 2} for CIFAR (He et al. 2016, option-A shortcuts)."
    return make


for _n in (3, 5, 9):
    register_model(f"resnet{6 * _n + 2}")(_factory(_n))
