"""Built-in models, named `slimtune:<name>` in a study file."""

from __future__ import annotations

from torch import nn


def small_cnn(num_classes: int, input_shape: tuple[int, ...], width: int = 64) -> nn.Module:
    """A three-stage conv net for small images (the digits demo): wide enough that channel
    pruning changes the measured CPU latency, small enough to train in seconds."""
    channels = input_shape[0]

    def block(cin: int, cout: int) -> list[nn.Module]:
        return [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]

    return nn.Sequential(
        *block(channels, width),
        *block(width, 2 * width),
        nn.MaxPool2d(2),
        *block(2 * width, 4 * width),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(4 * width, 2 * width),
        nn.ReLU(inplace=True),
        nn.Linear(2 * width, num_classes),
    )


BUILTIN_MODELS = {"small_cnn": small_cnn}
