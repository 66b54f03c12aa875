"""Provenance saved with every result: versions, hardware, code revision, command."""

from __future__ import annotations

import datetime
import importlib.metadata
import os
import platform
import subprocess
import sys
from pathlib import Path
from typing import Any

import torch

PACKAGES = ("backmatch", "torch", "torchvision", "numpy", "scipy", "pandas")


def package_versions() -> dict[str, str | None]:
    """Return the installed version of each package in :data:`PACKAGES`, ``None`` when absent."""
    versions: dict[str, str | None] = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def cpu_model() -> str:
    """Return the CPU model name from ``/proc/cpuinfo``, or the platform string elsewhere."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def git_revision(source: Path | None = None) -> dict[str, Any]:
    """Return the commit and whether tracked files differ from it, for the repository of ``source``.

    Both values are ``None`` outside a git checkout or without git.
    """
    folder = Path(source or __file__).resolve().parent
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=folder, capture_output=True, text=True, check=True, timeout=10
        ).stdout.strip()
        status = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=folder, capture_output=True, text=True, check=True, timeout=10,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return {"commit": None, "dirty": None}
    return {"commit": commit, "dirty": bool(status.strip())}


def device_description(device: torch.device) -> str:
    """Return a readable name of ``device``, for example the GPU model."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return cpu_model()


def collect(device: torch.device | None = None, **extra: Any) -> dict[str, Any]:
    """Return the provenance record of a result computed now on ``device``.

    Args:
        device: the torch device the computation ran on.
        **extra: further entries, for example ``seed`` or ``settings``.
    """
    device = device or torch.device("cpu")
    record: dict[str, Any] = {
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": [Path(sys.argv[0]).name, *sys.argv[1:]],
        "versions": package_versions(),
        "git": git_revision(),
        "host": {
            "platform": platform.platform(),
            "cpu": cpu_model(),
            "cpu_count": os.cpu_count(),
            "device": str(device),
            "device_name": device_description(device),
            "torch_threads": torch.get_num_threads(),
            "torch_cuda_build": torch.version.cuda,
            "cuda_available": torch.cuda.is_available(),
        },
    }
    record.update(extra)
    return record
