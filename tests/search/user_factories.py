"""Model and data factories that fail as a user's can; the CLI tests name them in study files."""

from __future__ import annotations

from torch import nn


def raising_model(num_classes: int, input_shape: tuple[int, ...]) -> nn.Module:
    raise RuntimeError("weights file models/best.pt is missing")


def data_on_an_unmounted_folder():
    with open("/mnt/unmounted/digits/train.csv") as file:  # FileNotFoundError
        return file.read()


def data_as_a_list():
    return [(index, index % 10) for index in range(100)]
