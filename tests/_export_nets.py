"""Tiny models for the export tests: residual adds, BatchNorm, tied and shared weights, odd layers."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from mixbits import PrepareConfig, prepare_


class Block(nn.Module):
    """A ResNet basic block; a 1x1 conv + BN shortcut when the shape changes."""

    def __init__(self, c_in: int, c_out: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.down = None
        if stride != 1 or c_in != c_out:
            self.down = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out))

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))  # (B, C_out, H', W')
        out = self.bn2(self.conv2(out))
        return F.relu(out + (x if self.down is None else self.down(x)))


class TinyResNet(nn.Module):
    """Stem, two stages of basic blocks, global pooling and a Linear head."""

    def __init__(self, *, in_channels: int = 3, num_classes: int = 10, width: int = 8) -> None:
        super().__init__()
        self.stem = nn.Conv2d(in_channels, width, 3, 1, 1, bias=False)
        self.bn = nn.BatchNorm2d(width)
        self.stage1 = nn.Sequential(Block(width, width, 1), Block(width, width, 1))
        self.stage2 = nn.Sequential(Block(width, 2 * width, 2), Block(2 * width, 2 * width, 1))
        self.fc = nn.Linear(2 * width, num_classes)

    def forward(self, x):
        x = F.relu(self.bn(self.stem(x)))  # (B, w, H, W)
        x = self.stage2(self.stage1(x))  # (B, 2w, H/2, W/2)
        return self.fc(F.adaptive_avg_pool2d(x, 1).flatten(1))  # (B, classes)


def tiny_resnet(*, in_channels: int = 3, num_classes: int = 10, width: int = 8) -> nn.Module:
    """Builder for the import-path recipe (``tests._export_nets:tiny_resnet``)."""
    return TinyResNet(in_channels=in_channels, num_classes=num_classes, width=width)


class Oddities(nn.Module):
    """Conv1d, a depthwise conv, a layer used twice, two Linears sharing weight and bias,
    a 0-d parameter, an excluded layer, and a buffer of odd length."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv1d(3, 6, 5, padding=2)
        self.dw = nn.Conv1d(6, 6, 3, padding=1, groups=6)
        self.shared = nn.Linear(13, 13)
        self.a = nn.Linear(13, 7)
        self.b = nn.Linear(13, 7)
        self.b.weight = self.a.weight  # tied: one decision, stored once
        self.b.bias = self.a.bias  # tied float tensor: stored once, loaded under both keys
        self.keep = nn.Linear(7, 3)  # excluded: kept in float
        self.alpha = nn.Parameter(torch.tensor(0.75))
        self.register_buffer("offset", torch.linspace(-1, 1, 13))
        self.twice = nn.ModuleList([self.shared, self.shared])

    def forward(self, x):  # x: (B, 3, 13)
        h = F.relu(self.dw(F.relu(self.conv(x))))  # (B, 6, 13)
        h = h.mean(1) + self.offset  # (B, 13)
        for layer in self.twice:
            h = torch.tanh(layer(h))  # the shared layer, applied twice
        return self.keep(self.a(h) * self.alpha + self.b(h))  # (B, 3)


def prepared(model: nn.Module, bits_of, **config):
    """Prepare ``model``, fix each layer at ``bits_of(index, layer)`` and return (model, space, bits)."""
    space = prepare_(model, PrepareConfig(candidates=(1, 2, 3, 4, 5, 6, 7, 8, 16, 32), **config))
    bits = {layer.name: bits_of(i, layer) for i, layer in enumerate(space.layers)}
    space.fix_(bits)
    return model.eval(), space, bits


def grouped_tiny_resnet(width: int = 4):
    """A TinyResNet with bits per structure (``group:3``) cycling through 1, 3, 8, 16, 32 and 2 bits, fixed;
    (model in eval mode, space, bits)."""
    model = TinyResNet(width=width)
    space = prepare_(model, PrepareConfig(candidates=(1, 2, 3, 4, 8, 16, 32), granularity="group:3"))
    cycle = (1, 3, 8, 16, 32, 2)
    bits = {l.name: tuple(cycle[(i + g) % 6] for g in range(l.num_groups)) if l.grouped else 4
            for i, l in enumerate(space.layers)}
    space.fix_(bits)
    return model.eval(), space, bits


def randomize_bn_(model: nn.Module) -> nn.Module:
    """Give every BatchNorm non-trivial statistics and affine parameters (as after training)."""
    g = torch.Generator().manual_seed(1)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            c = m.num_features
            m.running_mean.copy_(torch.randn(c, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(c, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(c, generator=g) + 0.5)
            m.bias.data.copy_(torch.randn(c, generator=g) * 0.1)
    return model
