"""LeNet-5 (LeCun et al. 1998) with ReLU and max pooling, the usual modern variant."""

from __future__ import annotations

from torch import nn

from .registry import register_model

__all__ = ["LeNet5"]


class LeNet5(nn.Module):
    """conv5x5(6, same padding) - pool - conv5x5(16) - pool - fc120 - fc84 - fc(classes).

    On 28x28 MNIST the first conv pads by 2, as LeNet-5 saw 32x32 padded digits:
    61,706 parameters for 10 classes.

    Args:
        in_channels: input channels.
        num_classes: output classes.
        input_size: input height and width (at least 12).
    """

    def __init__(self, *, in_channels: int = 1, num_classes: int = 10, input_size: int = 28) -> None:
        super().__init__()
        if input_size < 12:
            raise ValueError(f"lenet5 needs inputs of at least 12x12, got {input_size}x{input_size}")
        side = (input_size // 2 - 4) // 2  # after conv1 (same) + pool + conv2 (valid) + pool
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, 6, 5, padding=2), nn.ReLU(inplace=True), nn.MaxPool2d(2),
            nn.Conv2d(6, 16, 5), nn.ReLU(inplace=True), nn.MaxPool2d(2),
        )
        self.classifier = nn.Sequential(
            nn.Linear(16 * side * side, 120), nn.ReLU(inplace=True),
            nn.Linear(120, 84), nn.ReLU(inplace=True),
            nn.Linear(84, num_classes),
        )

    def forward(self, x):
        x = self.features(x)  # (B, 16, side, side)
        return self.classifier(x.flatten(1))  # (B, classes)


@register_model("lenet5")
def lenet5(*, in_channels: int, num_classes: int, input_size: int) -> nn.Module:
    return LeNet5(in_channels=in_channels, num_classes=num_classes, input_size=input_size)
