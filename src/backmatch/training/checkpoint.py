"""Checkpoints: the full training state, written atomically, and model loading."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from backmatch.atomic import atomic_path
from backmatch.data.cifar import dataset_info
from backmatch.models import BlockNetwork, build_model
from backmatch.settings import TrainSettings

#: Version of the checkpoint layout; bumped when keys change meaning.
CHECKPOINT_FORMAT = 1


class RunDivergedError(ValueError):
    """Raised when a checkpoint marks an epoch that a diverged run never reached."""

    def __init__(self, path: Path, epoch: int, settings: dict[str, Any]):
        super().__init__(f"{path}: the run diverged before epoch {epoch}, so this checkpoint holds no network")
        self.epoch = epoch
        self.settings = settings


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    """Write ``state`` with :func:`torch.save`, atomically."""
    with atomic_path(path) as tmp:
        torch.save({"format": CHECKPOINT_FORMAT, **state}, tmp)


def read_checkpoint(path: Path, device: torch.device | str = "cpu") -> dict[str, Any]:
    """Read a checkpoint written by :func:`save_checkpoint`.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: the file is not a backmatch checkpoint of a known format.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} not found")
    # weights_only=False because the state contains RNG states and plain Python
    # containers; the files are written by this package only.
    state = torch.load(path, map_location=device, weights_only=False)
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        found = state.get("format") if isinstance(state, dict) else type(state).__name__
        raise ValueError(f"{path} is not a backmatch checkpoint of format {CHECKPOINT_FORMAT} (found {found!r})")
    return state


def load_model(path: Path, device: torch.device | str = "cpu") -> tuple[BlockNetwork, TrainSettings, int]:
    """Rebuild the network stored in a checkpoint.

    Returns:
        The network with its weights and batch-norm statistics, the settings of
        the run that wrote it, and the number of completed epochs (0 at
        initialisation).

    Raises:
        RunDivergedError: the run diverged before this epoch; the file is a marker.
    """
    state = read_checkpoint(path, device)
    if state.get("model") is None and state.get("status") == "diverged":
        raise RunDivergedError(Path(path), int(state["epoch"]), state["settings"])
    settings = TrainSettings.from_dict(state["settings"])
    model = build_model(settings, dataset_info(settings.dataset).num_classes)
    model.load_state_dict(state["model"])
    return model.to(device), settings, int(state["epoch"])
