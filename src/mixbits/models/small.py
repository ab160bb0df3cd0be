"""Small built-in models for the offline default run."""

from __future__ import annotations

from torch import nn

from .registry import register_model

__all__ = ["DigitsCNN"]


class DigitsCNN(nn.Module):
    """A four-layer CNN for small grey images (the default on scikit-learn's 8x8 digits).

    Args:
        in_channels: input channels.
        num_classes: output classes.
        input_size: input height and width (divisible by 4).
        width: channels of the first conv; later convs use 2x width.
    """

    def __init__(self, *, in_channels: int = 1, num_classes: int = 10, input_size: int = 8, width: int = 32) -> None:
        super().__init__()
        w2 = 2 * width
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU(inplace=True),
            nn.Conv2d(width, w2, 3, padding=1, bias=False), nn.BatchNorm2d(w2), nn.ReLU(inplace=True),
            nn.MaxPool2d(2),
            nn.Conv2d(w2, w2, 3, padding=1, bias=False), nn.BatchNorm2d(w2), nn.ReLU(inplace=True),
            nn.MaxPool2d(2),
        )
        self.classifier = nn.Linear(w2 * (input_size // 4) ** 2, num_classes)

    def forward(self, x):
        x = self.features(x)  # (B, 2w, H/4, W/4)
        return self.classifier(x.flatten(1))  # (B, classes)


@register_model("digits_cnn")
def digits_cnn(*, in_channels: int, num_classes: int, input_size: int, width: int = 32) -> nn.Module:
    return DigitsCNN(in_channels=in_channels, num_classes=num_classes, input_size=input_size, width=width)
