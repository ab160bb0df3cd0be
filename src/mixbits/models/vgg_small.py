"""VGG-Small, the CIFAR VGG of the low-bit literature (LQ-Nets, Zhang et al. 2018).

conv(2x128)-pool-conv(2x256)-pool-conv(2x512)-pool-fc(classes), 3x3 convs with
batch norm and ReLU: 4.66M parameters for 10 classes at 32x32.
"""

from __future__ import annotations

from torch import nn

from .registry import register_model

__all__ = ["VGGSmall"]


class VGGSmall(nn.Module):
    """VGG-Small.

    Args:
        in_channels, num_classes: input channels and output classes.
        input_size: input height and width (divisible by 8).
        width: channels of the first stage (128); later stages double it.
    """

    def __init__(self, *, in_channels: int = 3, num_classes: int = 10, input_size: int = 32, width: int = 128) -> None:
        super().__init__()
        if input_size % 8:
            raise ValueError(f"vgg_small needs an input size divisible by 8, got {input_size}")
        layers: list[nn.Module] = []
        c_in = in_channels
        for c_out in (width, 2 * width, 4 * width):
            for _ in range(2):
                layers += [nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True)]
                c_in = c_out
            layers.append(nn.MaxPool2d(2))
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(c_in * (input_size // 8) ** 2, num_classes)

    def forward(self, x):
        x = self.features(x)  # (B, 4w, H/8, W/8)
        return self.classifier(x.flatten(1))  # (B, classes)


@register_model("vgg_small")
def vgg_small(*, in_channels: int, num_classes: int, input_size: int, width: int = 128) -> nn.Module:
    return VGGSmall(in_channels=in_channels, num_classes=num_classes, input_size=input_size, width=width)
