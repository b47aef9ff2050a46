"""Batches for training and for fixed-shape evaluation."""

from __future__ import annotations

from typing import Iterator

import torch
from torch.utils.data import DataLoader, Dataset, TensorDataset


class ResizedTensorDataset(TensorDataset):
    """Small in-memory images served at a larger shape: resized (bilinear) and their channels
    repeated on the device, batch by batch, so a 224x224 view of a dataset costs no memory.

    `flips`: training batches are flipped at random, left-right and up-down, each image on its
    own (for images whose label a flip keeps, like ELPV's solar cells; never digits). Long
    fine-tunes on a small data set overfit without it. Evaluation never flips."""

    def __init__(self, inputs: torch.Tensor, labels: torch.Tensor, shape: tuple[int, ...], flips: bool = False):
        super().__init__(inputs, labels)
        self.shape = tuple(shape)
        self.flips = flips

    def transform(self, inputs: torch.Tensor) -> torch.Tensor:
        channels, height, width = self.shape
        if tuple(inputs.shape[-2:]) != (height, width):
            inputs = torch.nn.functional.interpolate(inputs, size=(height, width), mode="bilinear", align_corners=False)
        if inputs.shape[1] != channels:
            inputs = inputs.expand(-1, channels, -1, -1) if inputs.shape[1] == 1 else inputs[:, :channels]
        return inputs.contiguous()

    def __getitem__(self, index):
        inputs, labels = super().__getitem__(index)
        return self.transform(inputs.unsqueeze(0)).squeeze(0), labels


def _transform(dataset: Dataset):
    return getattr(dataset, "transform", None) if isinstance(dataset, ResizedTensorDataset) else None


def _random_flips(batch: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Each image flipped left-right with probability 1/2, and up-down with 1/2, drawn from the
    stream's seeded generator (so a seed replays the same fine-tune)."""
    for dim in (-1, -2):
        flip = (torch.rand(len(batch), generator=generator) < 0.5).to(batch.device).view(-1, 1, 1, 1)
        batch = torch.where(flip, batch.flip(dim), batch)
    return batch


def training_batches(
    dataset: Dataset, batch_size: int, seed: int, device: torch.device
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """An endless, seeded, reshuffled-each-epoch stream of (inputs, labels) on `device`.

    A split smaller than `batch_size` yields the whole split as each batch."""
    if len(dataset) == 0:
        raise ValueError("the training split is empty")
    batch_size = min(batch_size, len(dataset))
    generator = torch.Generator().manual_seed(seed)
    transform = _transform(dataset)
    flips = isinstance(dataset, ResizedTensorDataset) and dataset.flips
    if isinstance(dataset, TensorDataset):  # in-memory data: index it, skip the collate overhead
        inputs, labels = (t.to(device) for t in dataset.tensors)
        while True:
            order = torch.randperm(len(labels), generator=generator).to(device)
            for start in range(0, len(order) - batch_size + 1, batch_size):
                index = order[start:start + batch_size]
                batch = transform(inputs[index]) if transform else inputs[index]
                yield (_random_flips(batch, generator) if flips else batch), labels[index]
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=True, drop_last=True, generator=generator)
    while True:
        for inputs, labels in loader:
            yield inputs.to(device), labels.to(device)


def eval_batches(
    dataset: Dataset, batch_size: int, device: torch.device, dtype: torch.dtype = torch.float32
) -> Iterator[tuple[torch.Tensor, torch.Tensor, int]]:
    """Every sample once, in batches of exactly `batch_size`: the last one is padded (count
    of real rows returned) so a compiled model never sees a new shape."""
    transform = _transform(dataset)
    if isinstance(dataset, TensorDataset):
        chunks = zip(dataset.tensors[0].split(batch_size), dataset.tensors[1].split(batch_size))
    else:
        chunks = iter(DataLoader(dataset, batch_size=batch_size, shuffle=False))
    for inputs, labels in chunks:
        real = len(labels)
        if real < batch_size:
            pad = inputs[:1].expand(batch_size - real, *inputs.shape[1:])
            inputs = torch.cat([inputs, pad])
        inputs = inputs.to(device)
        if transform is not None:
            inputs = transform(inputs)
        yield (inputs.to(dtype=dtype) if inputs.is_floating_point() else inputs), labels.to(device), real
