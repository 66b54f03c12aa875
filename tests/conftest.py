"""Shared fixtures: the real CIFAR folder and the repository root."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO_ROOT


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """The folder with real CIFAR-10 and CIFAR-100, ``$BACKMATCH_DATA_DIR`` or ``resources/``.

    A missing folder fails the test instead of skipping it, so a test run without
    data cannot pass by accident.
    """
    folder = Path(os.environ.get("BACKMATCH_DATA_DIR", REPO_ROOT / "resources"))
    needed = [folder / "cifar-10-batches-py" / "test_batch", folder / "cifar-100-python" / "test"]
    missing = [str(path) for path in needed if not path.is_file()]
    if missing:
        pytest.fail(f"CIFAR data not found ({', '.join(missing)}); run `make data` or set BACKMATCH_DATA_DIR")
    return folder
