"""MobileNetV2 (Sandler et al. 2018) adapted to 32x32 inputs.

The ImageNet network downsamples 32x; on CIFAR the stem conv and the second
stage keep stride 1, so the last feature map is 4x4 at 32x32 (the usual CIFAR
adaptation): 2.24M parameters for 10 classes. Depthwise convolutions are
quantizable layers like any other conv.
"""

from __future__ import annotations

from torch import nn

from .registry import register_model

__all__ = ["MobileNetV2Cifar", "InvertedResidual"]

# (expansion t, output channels c, repeats n, first stride s); stage 2's stride is 1 (ImageNet: 2).
_STAGES = ((1, 16, 1, 1), (6, 24, 2, 1), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1))


def _conv_bn(c_in: int, c_out: int, k: int, stride: int = 1, groups: int = 1, act: bool = True) -> list[nn.Module]:
    layers: list[nn.Module] = [nn.Conv2d(c_in, c_out, k, stride, k // 2, groups=groups, bias=False), nn.BatchNorm2d(c_out)]
    return layers + [nn.ReLU6(inplace=True)] if act else layers


class InvertedResidual(nn.Module):
    """1x1 expand - 3x3 depthwise - 1x1 linear projection, residual when shapes match."""

    def __init__(self, c_in: int, c_out: int, stride: int, expansion: int) -> None:
        super().__init__()
        hidden = c_in * expansion
        layers = _conv_bn(c_in, hidden, 1) if expansion != 1 else []
        layers += _conv_bn(hidden, hidden, 3, stride, groups=hidden) + _conv_bn(hidden, c_out, 1, act=False)
        self.block = nn.Sequential(*layers)
        self.residual = stride == 1 and c_in == c_out

    def forward(self, x):
        out = self.block(x)
        return x + out if self.residual else out


class MobileNetV2Cifar(nn.Module):
    """MobileNetV2 for small images.

    Args:
        in_channels, num_classes: input channels and output classes.
        width_mult: channel multiplier (1.0 in the paper), channels rounded to multiples of 8.
    """

    def __init__(self, *, in_channels: int = 3, num_classes: int = 10, width_mult: float = 1.0) -> None:
        super().__init__()

        def ch(c: int) -> int:
            return max(8, int(c * width_mult + 4) // 8 * 8)

        c_in = ch(32)
        layers: list[nn.Module] = _conv_bn(in_channels, c_in, 3, 1)
        for t, c, n, s in _STAGES:
            for i in range(n):
                layers.append(InvertedResidual(c_in, ch(c), s if i == 0 else 1, t))
                c_in = ch(c)
        last = ch(1280) if width_mult > 1.0 else 1280
        layers += _conv_bn(c_in, last, 1)
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(last, num_classes)

    def forward(self, x):
        x = self.features(x)  # (B, 1280, H/8, W/8)
        return self.classifier(x.mean((2, 3)))  # (B, classes)


@register_model("mobilenetv2_cifar")
def mobilenetv2_cifar(*, in_channels: int, num_classes: int, input_size: int, width_mult: float = 1.0) -> nn.Module:
    return MobileNetV2Cifar(in_channels=in_channels, num_classes=num_classes, width_mult=width_mult)
