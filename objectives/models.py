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


def vit_tiny(num_classes: int, input_shape: tuple[int, ...]) -> nn.Module:
    """A small torchvision VisionTransformer (4 layers, 4 heads, width 128, patches of 4):
    a model made of Linear layers, where torchao's int8/fp8 Linear quantization applies."""
    from torchvision.models import VisionTransformer

    channels, height, width = input_shape
    if height != width or height % 4:
        raise ValueError(f"vit_tiny needs square inputs with a side divisible by 4, not {list(input_shape)}")
    model = VisionTransformer(
        image_size=height, patch_size=4, num_layers=4, num_heads=4, hidden_dim=128, mlp_dim=256, num_classes=num_classes,
    )
    if channels != 3:
        model.conv_proj = nn.Conv2d(channels, 128, kernel_size=4, stride=4)
    return model


def strided_cnn(num_classes: int, input_shape: tuple[int, ...], width: int = 16) -> nn.Module:
    """A four-stage conv net for 64-96 px images (ELPV on the CPU): a stride-2 stem and a
    max-pool after each stage keep a 64 px image to about 15M MACs, so a baseline trains in
    minutes on two cores, while its 8x widening leaves channel pruning something to remove."""
    channels = input_shape[0]

    def block(cin: int, cout: int, stride: int = 1) -> list[nn.Module]:
        return [nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]

    return nn.Sequential(
        *block(channels, width, stride=2),
        *block(width, 2 * width), nn.MaxPool2d(2),
        *block(2 * width, 4 * width), nn.MaxPool2d(2),
        *block(4 * width, 8 * width),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(8 * width, num_classes),
    )


BUILTIN_MODELS = {"small_cnn": small_cnn, "strided_cnn": strided_cnn, "vit_tiny": vit_tiny}
