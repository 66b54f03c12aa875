"""A complete training run: setup, resume, epochs, outputs and provenance.

Output folder layout:

- ``metrics.csv``: one row per epoch.
- ``blocks.csv``: one row per epoch and block (epoch 0 is the initialisation).
- ``checkpoints/epoch_NNN.pt``: the requested checkpoints.
- ``summary.json``: status, accuracies, settings, data digests and provenance.
- ``state/``: the resume state, written after every epoch, and the requested
  checkpoints, which ``checkpoints/`` links to.

The four outputs are written at the end, atomically, and ``summary.json`` last, so
a folder with a ``summary.json`` contains a finished run, and starting the same
run again returns it unchanged. A run that is killed resumes from
``state/last.pt`` when started again with the same settings. The state stays
after the run finishes, so a rerun whose outputs were deleted (Snakemake does
that before it reruns a job) rewrites them without training again.
"""

from __future__ import annotations

import copy
import json
import logging
import os
import shutil
import time
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from backmatch import provenance
from backmatch.atomic import write_atomic, write_json_atomic
from backmatch.data.cifar import dataset_info
from backmatch.data.loader import load_device_data
from backmatch.device import resolve_device
from backmatch.models import BlockNetwork, build_model
from backmatch.optim.curvature import measure_closed_form
from backmatch.optim.scale_amended import ScaleAmendedSGD
from backmatch.settings import TrainSettings
from backmatch.training.checkpoint import read_checkpoint, save_checkpoint
from backmatch.training.loop import EpochResult, evaluate, train_epoch

logger = logging.getLogger(__name__)

METRIC_COLUMNS = ["epoch", "lr", "train_loss", "train_acc", "test_loss", "test_acc", "seconds", "images_per_second"]
BLOCK_COLUMNS = [
    "epoch", "block", "kind", "bn", "weight_norm", "lr", "effective_lr", "relative_update",
    "m_w", "m_z", "sa_factor", "sa_clip_fraction",
]


class ResumeMismatchError(ValueError):
    """Raised when an output folder contains a run, or the state of one, with other settings."""


#: Names a run folder may contain; anything else means --out points at a foreign folder.
RUN_FOLDER_ENTRIES = {"metrics.csv", "blocks.csv", "summary.json", "checkpoints", "state"}


def checkpoint_name(epoch: int) -> str:
    """Return the file name of the checkpoint after ``epoch``, e.g. ``epoch_005.pt``."""
    return f"epoch_{epoch:03d}.pt"


def build_optimizer(settings: TrainSettings, model: BlockNetwork) -> torch.optim.Optimizer:
    """Return SGD or scale-amended SGD with the momentum and weight decay of ``settings``."""
    if settings.optimizer == "sgd":
        return torch.optim.SGD(model.parameters(), lr=settings.lr, momentum=settings.momentum, weight_decay=settings.weight_decay)
    return ScaleAmendedSGD(
        model, lr=settings.lr, momentum=settings.momentum, weight_decay=settings.weight_decay, options=settings.sa
    )


def block_rows(model: BlockNetwork, batch: torch.Tensor, epoch: int, result: EpochResult | None) -> list[dict[str, Any]]:
    """Return one blocks.csv row per block: norms, rates and closed-form curvatures on ``batch``.

    The curvatures are measured on a copy of the model in train mode, so the
    model's batch-norm running statistics stay as they are.
    """
    probe = copy.deepcopy(model).train()
    rows = []
    z = batch
    for block in probe.blocks():
        with torch.no_grad():
            curvature = measure_closed_form(block, z)
            z = block.module(z)
        weight = block.weight.detach().float()
        norm = float(weight.norm())
        lr = result.block_lr.get(block.name, float("nan")) if result else float("nan")
        has_bn = block.batch_norm is not None
        # A batch-normalised weight is scale invariant: its direction moves at
        # the rate lr / ||w_i||^2, averaged here over output channels.
        mean_row_norm_sq = float(weight.reshape(weight.shape[0], -1).square().sum(dim=1).mean())
        effective = lr / mean_row_norm_sq if has_bn else lr
        rows.append({
            "epoch": epoch,
            "block": block.name,
            "kind": block.kind,
            "bn": has_bn,
            "weight_norm": norm,
            "lr": lr,
            "effective_lr": effective,
            "relative_update": result.relative_update.get(block.name, float("nan")) if result else float("nan"),
            "m_w": curvature.m_w,
            "m_z": curvature.m_z,
            "sa_factor": result.sa_factor.get(block.name, float("nan")) if result else float("nan"),
            "sa_clip_fraction": result.sa_clipped.get(block.name, float("nan")) if result else float("nan"),
        })
    return rows


def _write_csv(path: Path, rows: list[dict[str, Any]], columns: list[str]) -> None:
    frame = pd.DataFrame(rows, columns=columns)
    write_atomic(path, lambda handle: frame.to_csv(handle, index=False))


def _check_same_run(stored_settings: dict[str, Any], settings: TrainSettings, path: Path) -> None:
    stored = TrainSettings.from_dict(stored_settings).identity()
    current = settings.identity()
    keys = sorted(set(stored) | set(current))
    differences = [f"{key}: {stored.get(key)!r} there, {current.get(key)!r} now" for key in keys if stored.get(key) != current.get(key)]
    if differences:
        raise ResumeMismatchError(
            f"{path} belongs to a run with other settings ({'; '.join(differences)}). "
            f"Use another --out folder, or delete {path.parent} to start this run afresh."
        )


def _check_output_folder(out: Path) -> None:
    foreign = sorted(entry.name for entry in out.iterdir() if entry.name not in RUN_FOLDER_ENTRIES and not entry.name.startswith("."))
    if foreign:
        raise ValueError(
            f"--out {out} already contains {', '.join(foreign[:5])}, which are not outputs of backmatch train; "
            "choose a new or empty folder"
        )


def _capture_rng(generator: torch.Generator, device: torch.device) -> dict[str, Any]:
    state = {"data": generator.get_state(), "torch": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def _restore_rng(state: dict[str, Any], generator: torch.Generator, device: torch.device) -> None:
    generator.set_state(state["data"].cpu() if device.type == "cpu" else state["data"])
    torch.set_rng_state(state["torch"].cpu())
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"].cpu(), device)


def train(settings: TrainSettings, out: Path) -> dict[str, Any]:
    """Train the network of ``settings``, write the outputs to ``out`` and return the summary."""
    out = Path(out)
    device = resolve_device(settings.device)
    if settings.threads is not None:
        torch.set_num_threads(settings.threads)
    state_dir = out / "state"
    last_path = state_dir / "last.pt"
    wall_start = time.perf_counter()

    if out.is_dir():
        _check_output_folder(out)
    summary_path = out / "summary.json"
    if summary_path.is_file():
        summary = json.loads(summary_path.read_text())
        _check_same_run(summary["settings"], settings, summary_path)
        logger.info("%s already contains this run (status %s); delete it to train again", out, summary["status"])
        return summary

    num_classes = dataset_info(settings.dataset).num_classes
    channels_last = settings.model == "vgg13"
    train_data = load_device_data(
        Path(settings.data_dir), settings.dataset, True, device, settings.train_subset, settings.subset_seed, channels_last
    )
    test_data = load_device_data(
        Path(settings.data_dir), settings.dataset, False, device, settings.test_subset, settings.subset_seed, channels_last
    )
    logger.info(
        "%s: %d training and %d test images on %s, %d torch threads",
        settings.dataset, len(train_data), len(test_data), device, torch.get_num_threads(),
    )

    torch.manual_seed(settings.seed)
    model = build_model(settings, num_classes).to(device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer = build_optimizer(settings, model)
    scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=list(settings.lr_milestones), gamma=settings.lr_gamma)
    generator = torch.Generator(device=device).manual_seed(settings.seed)
    # Curvature statistics in blocks.csv use the same unaugmented batch every epoch.
    probe_batch = train_data.normalise(train_data.images[: settings.batch_size])

    metrics: list[dict[str, Any]] = []
    blocks: list[dict[str, Any]] = []
    start_epoch = 0
    status = "running"
    if last_path.is_file():
        state = read_checkpoint(last_path, device)
        _check_same_run(state["settings"], settings, last_path)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        _restore_rng(state["rng"], generator, device)
        metrics, blocks, start_epoch = state["metrics"], state["blocks"], state["epoch"]
        status = state.get("status", "running")
        logger.info("resuming %s after epoch %d of %d", out, start_epoch, settings.epochs)
    else:
        state_dir.mkdir(parents=True, exist_ok=True)
        blocks = block_rows(model, probe_batch, 0, None)
        _save_state(state_dir, settings, model, optimizer, scheduler, generator, device, 0, metrics, blocks, status)

    epoch = start_epoch
    while status == "running" and epoch < settings.epochs:
        epoch += 1
        lr = optimizer.param_groups[0]["lr"]
        result = train_epoch(
            model, optimizer, train_data, settings.batch_size, generator,
            precision=settings.precision, augment=settings.augment, progress=settings.progress,
            description=f"epoch {epoch}/{settings.epochs}",
        )
        if result.diverged:
            test_loss, test_acc = float("nan"), float("nan")
            status = "diverged"
        else:
            test_loss, test_acc = evaluate(model, test_data, settings.precision)
        metrics.append({
            "epoch": epoch, "lr": lr, "train_loss": result.loss, "train_acc": result.accuracy,
            "test_loss": test_loss, "test_acc": test_acc, "seconds": result.seconds,
            "images_per_second": result.images / result.seconds if result.seconds > 0 else float("nan"),
        })
        if status == "diverged":
            logger.warning("loss became NaN or infinite in epoch %d; the run ends with status 'diverged'", epoch)
        else:
            blocks += block_rows(model, probe_batch, epoch, result)
            scheduler.step()
        _save_state(state_dir, settings, model, optimizer, scheduler, generator, device, epoch, metrics, blocks, status)
        # Logged after the resume state is on disk: a run killed after this line resumes after this epoch.
        logger.info(
            "epoch %d/%d: lr %.4g, train loss %.4f, train acc %.4f, test loss %.4f, test acc %.4f, %.1f s, %.0f images/s",
            epoch, settings.epochs, lr, result.loss, result.accuracy, test_loss, test_acc, result.seconds,
            metrics[-1]["images_per_second"],
        )

    if status == "running":
        status = "completed"
    summary = _finish(out, settings, device, status, epoch, metrics, blocks, train_data, test_data, wall_start)
    if isinstance(optimizer, ScaleAmendedSGD):
        optimizer.remove_hooks()
    return summary


def _save_state(state_dir, settings, model, optimizer, scheduler, generator, device, epoch, metrics, blocks, status) -> None:
    state = {
        "settings": settings.to_dict(),
        "epoch": epoch,
        "status": status,
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "rng": _capture_rng(generator, device),
        "metrics": metrics,
        "blocks": blocks,
    }
    if epoch in settings.checkpoint_epochs and status != "diverged":
        save_checkpoint(state_dir / checkpoint_name(epoch), state)
    save_checkpoint(state_dir / "last.pt", state)


def _finish(out, settings, device, status, epoch, metrics, blocks, train_data, test_data, wall_start) -> dict[str, Any]:
    state_dir = out / "state"
    checkpoint_dir = out / "checkpoints"
    checkpoint_dir.mkdir(parents=True, exist_ok=True)
    checkpoints = {}
    for requested in settings.checkpoint_epochs:
        source = state_dir / checkpoint_name(requested)
        target = checkpoint_dir / checkpoint_name(requested)
        if source.is_file():
            _link_or_copy(source, target)
        else:
            # Epochs after a divergence have no network to save; a marker keeps
            # the file layout complete and records why.
            save_checkpoint(target, {"settings": settings.to_dict(), "epoch": requested, "status": "diverged", "model": None})
        checkpoints[str(requested)] = str(target.relative_to(out))

    _write_csv(out / "metrics.csv", metrics, METRIC_COLUMNS)
    _write_csv(out / "blocks.csv", blocks, BLOCK_COLUMNS)

    finite = [row for row in metrics if row["test_acc"] == row["test_acc"]]
    best = max(finite, key=lambda row: row["test_acc"]) if finite else None
    train_seconds = sum(row["seconds"] for row in metrics)
    summary = {
        "status": status,
        "epochs_completed": epoch if status == "completed" else max(epoch - 1, 0),
        "final_test_acc": finite[-1]["test_acc"] if finite and status == "completed" else None,
        "final_test_loss": finite[-1]["test_loss"] if finite and status == "completed" else None,
        "final_train_loss": metrics[-1]["train_loss"] if metrics and status == "completed" else None,
        "best_test_acc": best["test_acc"] if best else None,
        "best_epoch": best["epoch"] if best else None,
        "train_seconds": train_seconds,
        "images_per_second": sum(row["images_per_second"] for row in metrics) / len(metrics) if metrics else None,
        # Wall time of the last invocation only, when the run was resumed.
        "session_wall_seconds": time.perf_counter() - wall_start,
        "checkpoints": checkpoints,
        "data": {
            "train_images": len(train_data),
            "test_images": len(test_data),
            "train_digest": train_data.digest,
            "test_digest": test_data.digest,
        },
        "settings": settings.to_dict(),
        "provenance": provenance.collect(device, seed=settings.seed),
    }
    write_json_atomic(out / "summary.json", summary)
    logger.info("run %s: %s after %d epoch(s), best test accuracy %s", out, status, epoch, summary["best_test_acc"])
    return summary


def _link_or_copy(source: Path, target: Path) -> None:
    """Hard-link ``source`` to ``target`` (no copy of the bytes), or copy across file systems."""
    target.unlink(missing_ok=True)
    try:
        os.link(source, target)
    except OSError:
        shutil.copy2(source, target)
