"""A CIFAR split held on the training device as uint8, served in shuffled batches."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from backmatch.data.augment import random_crop
from backmatch.data.cifar import Split, dataset_info, load_split

#: Per-channel mean and standard deviation of the training images, pixels in [0, 1].
CHANNEL_STATS: dict[str, tuple[tuple[float, ...], tuple[float, ...]]] = {
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
}

#: Pixels of zero padding on each side before the random 32x32 crop.
CROP_PADDING = 4


def stratified_subset(labels: np.ndarray, size: int, num_classes: int, seed: int) -> np.ndarray:
    """Draw ``size`` indices with (as nearly as possible) equal counts per class.

    The ``size % num_classes`` classes that get one extra image are drawn from the
    same seed. The result is sorted, so it keeps the canonical order of the split.

    Example:
        >>> labels = np.repeat(np.arange(3), 10)
        >>> chosen = stratified_subset(labels, 7, 3, seed=0)
        >>> len(chosen), sorted(np.bincount(labels[chosen]).tolist())
        (7, [2, 2, 3])
    """
    if not 0 < size <= len(labels):
        raise ValueError(f"subset size {size} is invalid for a split of {len(labels)} images; use 1 to {len(labels)}")

    rng = np.random.default_rng(seed)
    per_class = np.full(num_classes, size // num_classes)
    per_class[rng.permutation(num_classes)[: size % num_classes]] += 1

    chosen = []
    for label in range(num_classes):
        candidates = np.flatnonzero(labels == label)
        if per_class[label] > len(candidates):
            raise ValueError(
                f"subset size {size} needs {per_class[label]} images of class {label}, but the split has {len(candidates)}"
            )
        chosen.append(rng.choice(candidates, size=per_class[label], replace=False))
    return np.sort(np.concatenate(chosen))


class DeviceData:
    """One split as a uint8 tensor on ``device``, with labels and normalisation.

    Args:
        split: images and labels in canonical order.
        dataset: ``"cifar10"`` or ``"cifar100"``, which selects the channel statistics.
        device: where the tensors live; batches are built there.
        channels_last: return batches in channels-last memory format, which is
            faster for convolutions on recent CPUs and GPUs.
    """

    def __init__(self, split: Split, dataset: str, device: torch.device, channels_last: bool = False):
        self.device = torch.device(device)
        self.images = torch.from_numpy(split.images).to(self.device)
        self.labels = torch.from_numpy(split.labels).to(self.device)
        self.digest = split.digest
        self.channels_last = channels_last

        mean, std = CHANNEL_STATS[dataset]
        std_t = torch.tensor(std, device=self.device).view(1, 3, 1, 1)
        mean_t = torch.tensor(mean, device=self.device).view(1, 3, 1, 1)
        # x_normalised = (pixel / 255 - mean) / std, folded into one multiply-add.
        self._scale = 1.0 / (255.0 * std_t)
        self._shift = -mean_t / std_t
        self._padded: torch.Tensor | None = None

    def __len__(self) -> int:
        return len(self.labels)

    def normalise(self, images: torch.Tensor) -> torch.Tensor:
        """Convert a uint8 batch to normalised float32 values."""
        if self.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        # In place on the fresh float copy: the same values without two more
        # batch-sized allocations.
        return images.float().mul_(self._scale).add_(self._shift)

    def train_batches(
        self, batch_size: int, generator: torch.Generator, augment: bool = True
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Yield one epoch of shuffled, augmented, normalised batches.

        The last incomplete batch is dropped, because batch normalisation in train
        mode fails on a batch of one image and is noisy on small ones.
        """
        if batch_size > len(self):
            raise ValueError(f"batch size {batch_size} exceeds the {len(self)} training images; lower it or enlarge the subset")
        if augment and self._padded is None:
            pad = CROP_PADDING
            self._padded = F.pad(self.images, (pad, pad, pad, pad))

        order = torch.randperm(len(self), generator=generator, device=self.device)
        for start in range(0, len(self) - batch_size + 1, batch_size):
            index = order[start : start + batch_size]
            if augment:
                images = random_crop(self._padded[index], 32, generator, flip=True)
            else:
                images = self.images[index]
            yield self.normalise(images), self.labels[index]

    def eval_batches(self, batch_size: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Yield the split in canonical order, unaugmented, in batches of ``batch_size``."""
        for start in range(0, len(self), batch_size):
            yield self.normalise(self.images[start : start + batch_size]), self.labels[start : start + batch_size]


def load_device_data(
    data_dir: Path,
    dataset: str,
    train: bool,
    device: torch.device,
    subset: int | None = None,
    subset_seed: int = 0,
    channels_last: bool = False,
) -> DeviceData:
    """Load, verify and optionally subsample a split, and move it to ``device``."""
    split = load_split(data_dir, dataset, train=train)
    if subset is not None and subset > len(split.labels):
        name = "train_subset" if train else "test_subset"
        raise ValueError(
            f"{name} {subset} exceeds the {len(split.labels)} images of the {dataset} {'training' if train else 'test'} split; "
            f"lower it, or leave it unset to use the whole split"
        )
    if subset is not None and subset < len(split.labels):
        index = stratified_subset(split.labels, subset, dataset_info(dataset).num_classes, subset_seed)
        split = Split(images=split.images[index], labels=split.labels[index], digest=split.digest)
    return DeviceData(split, dataset, device, channels_last=channels_last)
