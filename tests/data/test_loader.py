import numpy as np
import pytest
import torch

from backmatch.data.augment import random_crop, random_flip
from backmatch.data.cifar import load_split
from backmatch.data.loader import CHANNEL_STATS, DeviceData, load_device_data, stratified_subset


def test_stratified_subset_balances_classes():
    labels = np.repeat(np.arange(10), 100)
    chosen = stratified_subset(labels, 250, 10, seed=3)
    counts = np.bincount(labels[chosen], minlength=10)
    assert len(chosen) == 250
    assert counts.min() == 25
    assert counts.max() == 25


def test_stratified_subset_is_seeded():
    labels = np.repeat(np.arange(10), 100)
    assert np.array_equal(stratified_subset(labels, 50, 10, seed=1), stratified_subset(labels, 50, 10, seed=1))
    assert not np.array_equal(stratified_subset(labels, 50, 10, seed=1), stratified_subset(labels, 50, 10, seed=2))


def test_stratified_subset_rejects_oversize():
    with pytest.raises(ValueError, match="subset size 11"):
        stratified_subset(np.arange(10), 11, 10, seed=0)


def test_random_crop_cuts_windows_of_padded_image():
    padded = torch.arange(4 * 3 * 40 * 40).reshape(4, 3, 40, 40)
    crops = random_crop(padded, 32, torch.Generator().manual_seed(0))
    assert crops.shape == (4, 3, 32, 32)
    for image, crop in zip(padded, crops):
        top, left = divmod(int(crop[0, 0, 0]) % 1600, 40)
        assert torch.equal(crop, image[:, top : top + 32, left : left + 32])


def test_random_crop_uses_all_offsets():
    padded = torch.arange(40 * 40).reshape(1, 1, 40, 40).expand(2000, 1, 40, 40).contiguous()
    corners = random_crop(padded, 32, torch.Generator().manual_seed(0))[:, 0, 0, 0]
    assert len(set(corners.tolist())) == 81


def test_random_flip_mirrors_about_half():
    images = torch.arange(4).view(1, 1, 1, 4).expand(1000, 1, 1, 4)
    flipped = random_flip(images, torch.Generator().manual_seed(0))
    mirrored = (flipped[:, 0, 0, 0] == 3).float().mean()
    assert 0.45 < mirrored < 0.55
    assert torch.all((flipped[:, 0, 0, 0] == 0) | (flipped[:, 0, 0, 0] == 3))


def test_normalised_training_data_has_unit_statistics(data_dir):
    data = load_device_data(data_dir, "cifar10", True, torch.device("cpu"))
    values = data.normalise(data.images[:20000])
    assert torch.allclose(values.mean(dim=(0, 2, 3)), torch.zeros(3), atol=0.02)
    assert torch.allclose(values.std(dim=(0, 2, 3)), torch.ones(3), atol=0.02)


def test_train_batches_cover_epoch_once(data_dir):
    split = load_split(data_dir, "cifar10", train=False)
    data = DeviceData(split, "cifar10", torch.device("cpu"))
    seen = torch.cat([labels for _, labels in data.train_batches(1000, torch.Generator().manual_seed(0), augment=False)])
    assert len(seen) == 10_000
    assert torch.equal(torch.bincount(seen), torch.bincount(data.labels))


def test_channel_stats_match_cifar100(data_dir):
    split = load_split(data_dir, "cifar100", train=True)
    mean = split.images.reshape(50_000, 3, -1).mean(axis=(0, 2)) / 255
    assert np.allclose(mean, CHANNEL_STATS["cifar100"][0], atol=1e-3)


def test_random_crop_with_flip_equals_crop_then_flip():
    padded = torch.randint(0, 256, (64, 3, 40, 40), dtype=torch.uint8)
    together = random_crop(padded, 32, torch.Generator().manual_seed(3), flip=True)
    generator = torch.Generator().manual_seed(3)
    separately = random_flip(random_crop(padded, 32, generator), generator)
    assert torch.equal(together, separately)
