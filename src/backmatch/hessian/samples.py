"""The fixed batch of test images that local-Hessian and back-matching results are computed on."""

from __future__ import annotations

from pathlib import Path

import torch

from backmatch.data.cifar import dataset_info, load_split
from backmatch.data.loader import DeviceData, stratified_subset

#: Description of the image selection of :func:`fixed_test_batch`, recorded with every result.
SAMPLE_SELECTION = (
    "test split in canonical order (sorted by per-image content digest), "
    "indices = stratified_subset(test labels, N, num_classes, seed=0), kept in canonical order"
)


def fixed_test_batch(data_dir: Path | str, dataset: str, samples: int, device: torch.device | str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
    """Return ``samples`` normalised float32 test images and their labels.

    The images are a class-stratified subset drawn with seed 0 from the test
    split in canonical order, so the same images come back whatever order the
    files on disk store them in.

    Raises:
        ValueError: ``samples`` is not between 1 and the size of the test split.
        DatasetNotFoundError: the data set is not in ``data_dir``.
    """
    split = load_split(Path(data_dir), dataset, train=False)
    index = stratified_subset(split.labels, samples, dataset_info(dataset).num_classes, seed=0)
    data = DeviceData(split, dataset, torch.device(device))
    chosen = torch.from_numpy(index).to(data.device)
    return data.normalise(data.images[chosen]), data.labels[chosen]
