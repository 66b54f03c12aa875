import pickle
import shutil

import numpy as np
import pytest

from backmatch.data.cifar import DatasetCorruptedError, DatasetNotFoundError, load_split
from backmatch.data.integrity import EXPECTED_DIGESTS, image_digests, split_digest


def _copy_cifar10(data_dir, target):
    shutil.copytree(data_dir / "cifar-10-batches-py", target / "cifar-10-batches-py")
    return target / "cifar-10-batches-py"


def _rewrite(path, change):
    with path.open("rb") as handle:
        batch = pickle.load(handle, encoding="latin1")
    change(batch)
    with path.open("wb") as handle:
        pickle.dump(batch, handle, protocol=2)


@pytest.mark.parametrize("dataset,train", [("cifar10", True), ("cifar10", False), ("cifar100", True), ("cifar100", False)])
def test_real_splits_match_expected_digests(data_dir, dataset, train):
    split = load_split(data_dir, dataset, train=train)
    assert split.digest == EXPECTED_DIGESTS[(dataset, "train" if train else "test")]
    assert split.images.shape[1:] == (3, 32, 32)
    assert split.images.dtype == np.uint8


def test_split_digest_ignores_order():
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(50, 3072), dtype=np.uint8)
    labels = rng.integers(0, 10, size=50)
    order = rng.permutation(50)
    assert split_digest(image_digests(images, labels)) == split_digest(image_digests(images[order], labels[order]))


def test_digest_covers_labels():
    images = np.zeros((2, 3072), dtype=np.uint8)
    assert split_digest(image_digests(images, np.array([0, 1]))) != split_digest(image_digests(images, np.array([0, 2])))


def test_reordered_copy_passes_and_loads_same_order(data_dir, tmp_path):
    folder = _copy_cifar10(data_dir, tmp_path)

    def reverse(batch):
        batch["data"] = batch["data"][::-1].copy()
        batch["labels"] = batch["labels"][::-1]
        batch["filenames"] = batch["filenames"][::-1]

    _rewrite(folder / "test_batch", reverse)
    original = load_split(data_dir, "cifar10", train=False)
    reordered = load_split(tmp_path, "cifar10", train=False)
    assert reordered.digest == original.digest
    assert np.array_equal(reordered.images, original.images)
    assert np.array_equal(reordered.labels, original.labels)


def test_altered_pixel_fails(data_dir, tmp_path):
    folder = _copy_cifar10(data_dir, tmp_path)

    def flip_pixel(batch):
        batch["data"][123, 456] ^= 0xFF

    _rewrite(folder / "test_batch", flip_pixel)
    with pytest.raises(DatasetCorruptedError, match="content digest"):
        load_split(tmp_path, "cifar10", train=False)


def test_altered_label_fails(data_dir, tmp_path):
    folder = _copy_cifar10(data_dir, tmp_path)

    def relabel(batch):
        batch["labels"][7] = (batch["labels"][7] + 1) % 10

    _rewrite(folder / "test_batch", relabel)
    with pytest.raises(DatasetCorruptedError, match="content digest"):
        load_split(tmp_path, "cifar10", train=False)


def test_truncated_file_fails(data_dir, tmp_path):
    folder = _copy_cifar10(data_dir, tmp_path)
    path = folder / "test_batch"
    path.write_bytes(path.read_bytes()[: 1_000_000])
    with pytest.raises(DatasetCorruptedError, match="truncated"):
        load_split(tmp_path, "cifar10", train=False)


def test_missing_file_names_folder_and_fixes(tmp_path):
    with pytest.raises(DatasetNotFoundError) as error:
        load_split(tmp_path, "cifar100", train=True)
    message = str(error.value)
    assert str(tmp_path / "cifar-100-python") in message
    assert "backmatch data" in message
    assert "cifar-100-python.tar.gz" in message
