"""Preparing a CIFAR folder: download when missing, then verify both splits."""

from __future__ import annotations

import logging
from pathlib import Path

from backmatch.data.cifar import (
    DatasetNotFoundError,
    dataset_info,
    load_split,
    missing_files,
    not_found_message,
)

logger = logging.getLogger(__name__)


def prepare_dataset(data_dir: Path, dataset: str, url: str | None = None, md5: str | None = None) -> dict[str, str]:
    """Make sure ``dataset`` is complete and intact below ``data_dir``.

    Missing files are fetched with torchvision's download utilities, which also
    reuse an archive already lying in ``data_dir`` when its md5 matches, so the
    same call works offline once the archive has been copied there.

    Args:
        data_dir: target folder, created when missing.
        dataset: ``"cifar10"`` or ``"cifar100"``.
        url: archive address; the official one by default.
        md5: md5 of the archive at ``url``; the official one by default.

    Returns:
        The order-independent digest of each split, keyed ``"train"`` and ``"test"``.

    Raises:
        DatasetNotFoundError: files are missing and the download failed.
        DatasetCorruptedError: the files exist but differ from the published data.
    """
    from torchvision.datasets.utils import download_and_extract_archive

    info = dataset_info(dataset)
    data_dir = Path(data_dir)
    absent = missing_files(data_dir, dataset)
    if absent:
        url = url or info.url
        md5 = md5 or info.archive_md5
        logger.info("%s: %d file(s) missing in %s, downloading %s", dataset, len(absent), data_dir / info.folder, url)
        data_dir.mkdir(parents=True, exist_ok=True)
        try:
            download_and_extract_archive(url, str(data_dir), filename=info.archive_name, md5=md5)
        except (OSError, RuntimeError, ValueError) as error:
            # urllib raises URLError (an OSError) offline; torchvision raises
            # RuntimeError on an md5 mismatch.
            raise DatasetNotFoundError(not_found_message(data_dir, dataset, absent, download_error=str(error))) from error

        still_absent = missing_files(data_dir, dataset)
        if still_absent:
            raise DatasetNotFoundError(
                not_found_message(data_dir, dataset, still_absent, download_error="the archive did not contain these files")
            )

    digests = {}
    for split_name, train in (("train", True), ("test", False)):
        digests[split_name] = load_split(data_dir, dataset, train=train).digest
        logger.info("%s %s split verified, digest %s", dataset, split_name, digests[split_name][:16])
    return digests
