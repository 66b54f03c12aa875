"""Reading CIFAR-10 and CIFAR-100 from the standard "python version" pickle layout.

Every split is returned in a canonical order, sorted by per-image content digest,
so subsets and shuffles drawn from a seed select the same images whatever order
the files on disk store them in.
"""

from __future__ import annotations

import logging
import pickle
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from backmatch.data.integrity import EXPECTED_DIGESTS, image_digests, split_digest

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class DatasetInfo:
    """Location on disk and download address of one CIFAR variant."""

    name: str
    folder: str
    train_files: tuple[str, ...]
    test_files: tuple[str, ...]
    label_key: str
    num_classes: int
    url: str
    archive_md5: str
    train_size: int = 50_000
    test_size: int = 10_000

    @property
    def archive_name(self) -> str:
        return self.url.rsplit("/", 1)[-1]


DATASETS: dict[str, DatasetInfo] = {
    "cifar10": DatasetInfo(
        name="cifar10",
        folder="cifar-10-batches-py",
        train_files=tuple(f"data_batch_{i}" for i in range(1, 6)),
        test_files=("test_batch",),
        label_key="labels",
        num_classes=10,
        url="https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
        archive_md5="c58f30108f718f92721af3b95e74349a",
    ),
    "cifar100": DatasetInfo(
        name="cifar100",
        folder="cifar-100-python",
        train_files=("train",),
        test_files=("test",),
        label_key="fine_labels",
        num_classes=100,
        url="https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz",
        archive_md5="eb9058c3a382ffc7106e4002c42a8d85",
    ),
}


class DatasetNotFoundError(FileNotFoundError):
    """Raised when a CIFAR folder is missing and cannot be downloaded."""


class DatasetCorruptedError(ValueError):
    """Raised when CIFAR files exist but are truncated or altered."""


@dataclass(frozen=True)
class Split:
    """One CIFAR split in canonical order.

    Attributes:
        images: uint8 array of shape ``(n, 3, 32, 32)``.
        labels: int64 array of shape ``(n,)``.
        digest: order-independent SHA-256 of the split, see
            :mod:`backmatch.data.integrity`.
    """

    images: np.ndarray
    labels: np.ndarray
    digest: str


def dataset_info(dataset: str) -> DatasetInfo:
    """Return the :class:`DatasetInfo` of ``"cifar10"`` or ``"cifar100"``."""
    try:
        return DATASETS[dataset]
    except KeyError:
        raise ValueError(f"unknown dataset {dataset!r}; expected one of {sorted(DATASETS)}") from None


def split_files(data_dir: Path, dataset: str, train: bool) -> list[Path]:
    """Return the pickle files of one split below ``data_dir``."""
    info = dataset_info(dataset)
    names = info.train_files if train else info.test_files
    return [Path(data_dir) / info.folder / name for name in names]


def missing_files(data_dir: Path, dataset: str) -> list[Path]:
    """Return the pickle files of ``dataset`` that do not exist below ``data_dir``."""
    files = split_files(data_dir, dataset, train=True) + split_files(data_dir, dataset, train=False)
    return [path for path in files if not path.is_file()]


def _read_batch(path: Path, label_key: str) -> tuple[np.ndarray, np.ndarray]:
    try:
        with path.open("rb") as handle:
            batch = pickle.load(handle, encoding="latin1")
    except (pickle.UnpicklingError, EOFError, ValueError) as error:
        raise DatasetCorruptedError(
            f"cannot read {path}: {error}. The file is truncated or not a CIFAR pickle; "
            f"delete {path.parent} and prepare the data again (backmatch data --data-dir ...)."
        ) from error

    try:
        images = np.asarray(batch["data"], dtype=np.uint8)
        labels = np.asarray(batch[label_key], dtype=np.int64)
    except KeyError as error:
        raise DatasetCorruptedError(f"{path} has no key {error}; expected a CIFAR pickle with 'data' and {label_key!r}") from error
    if images.ndim != 2 or images.shape[1] != 3072 or len(images) != len(labels):
        raise DatasetCorruptedError(
            f"{path} contains data of shape {images.shape} and {len(labels)} labels; expected (n, 3072) and n labels"
        )
    return images, labels


def load_split(data_dir: Path, dataset: str, train: bool, verify: bool = True) -> Split:
    """Load a split, check its integrity and sort it into canonical order.

    Args:
        data_dir: folder that contains ``cifar-10-batches-py`` or ``cifar-100-python``.
        dataset: ``"cifar10"`` or ``"cifar100"`` (fine labels).
        train: the training split when true, else the test split.
        verify: compare the order-independent digest with the published data.

    Raises:
        DatasetNotFoundError: a file of the split is missing.
        DatasetCorruptedError: a file is unreadable, has the wrong size, or the
            split digest differs from the expected one.
    """
    info = dataset_info(dataset)
    files = split_files(data_dir, dataset, train)
    if any(not path.is_file() for path in files):
        raise DatasetNotFoundError(not_found_message(Path(data_dir), dataset, missing_files(data_dir, dataset)))

    parts = [_read_batch(path, info.label_key) for path in files]
    images = np.concatenate([part[0] for part in parts])
    labels = np.concatenate([part[1] for part in parts])

    split_name = "train" if train else "test"
    expected_size = info.train_size if train else info.test_size
    if len(images) != expected_size:
        raise DatasetCorruptedError(
            f"{dataset} {split_name} split in {files[0].parent} has {len(images)} images, expected {expected_size}; "
            f"delete the folder and prepare the data again."
        )

    per_image = image_digests(images, labels)
    digest = split_digest(per_image)
    expected = EXPECTED_DIGESTS.get((dataset, split_name))
    if verify and expected is not None and digest != expected:
        raise DatasetCorruptedError(
            f"{dataset} {split_name} split in {files[0].parent} has content digest {digest[:16]}..., "
            f"expected {expected[:16]}...: some images or labels differ from the published data set. "
            f"Delete the folder and prepare the data again."
        )

    # Duplicate pixels with different labels exist in CIFAR-100, and the label is part
    # of the digest, so sorting by digest alone gives a total order.
    order = np.argsort(per_image, kind="stable")
    images = images[order].reshape(-1, 3, 32, 32)
    return Split(images=np.ascontiguousarray(images), labels=labels[order], digest=digest)


def not_found_message(data_dir: Path, dataset: str, absent: list[Path], download_error: str | None = None) -> str:
    """Return the error text for a missing data set, naming both ways to fill the folder."""
    info = dataset_info(dataset)
    lines = [f"{dataset} not found: {len(absent)} file(s) missing in {data_dir / info.folder} (first: {absent[0].name})."]
    if download_error is not None:
        lines.append(f"Download from {info.url} failed: {download_error}")
    lines += [
        "Fill the folder in one of two ways:",
        f"  1. with network access: backmatch data --dataset {dataset} --data-dir {data_dir}",
        f"  2. offline: copy {info.archive_name} (md5 {info.archive_md5}) into {data_dir} and run that",
        f"     backmatch data command, or extract the archive so that {data_dir / info.folder} contains",
        f"     {', '.join(info.train_files + info.test_files)}.",
    ]
    return "\n".join(lines)
