"""Choosing the torch device of a job."""

from __future__ import annotations

import torch


def resolve_device(name: str) -> torch.device:
    """Map ``"auto"``, ``"cpu"`` or ``"cuda"`` to a device; ``auto`` picks CUDA when available.

    Raises:
        ValueError: ``cuda`` was requested but torch finds no CUDA device.

    Example:
        >>> resolve_device("cpu")
        device(type='cpu')
    """
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("device 'cuda' requested but torch finds no CUDA device; use --device cpu or auto")
    if name not in ("cpu", "cuda"):
        raise ValueError(f"device {name!r} is unknown; use auto, cpu or cuda")
    return torch.device(name)
