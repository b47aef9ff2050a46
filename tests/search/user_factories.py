"""Model and data factories as a user writes them (some fail as a user's can); the CLI tests name
them in study files."""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.data import Dataset


def raising_model(num_classes: int, input_shape: tuple[int, ...]) -> nn.Module:
    raise RuntimeError("weights file models/best.pt is missing")


def data_on_an_unmounted_folder():
    with open("/mnt/unmounted/digits/train.csv") as file:  # FileNotFoundError
        return file.read()


def data_as_a_list():
    return [(index, index % 10) for index in range(100)]


class Images(Dataset):
    """A user's dataset: items by index, no `tensors`; `targets` only where `labelled`."""

    def __init__(self, count: int, offset: int, labelled: bool):
        generator = torch.Generator().manual_seed(offset)
        self.images = torch.randn(count, 1, 8, 8, generator=generator)
        self.labels = torch.arange(offset, offset + count) % 3
        if labelled:
            self.targets = self.labels.tolist()

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int):
        return self.images[index], int(self.labels[index])


def data_with_targets():
    return Images(300, 0, labelled=True), Images(60, 300, labelled=True), 3


def data_without_targets():
    return Images(300, 0, labelled=False), Images(60, 300, labelled=False), 3
