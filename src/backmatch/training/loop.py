"""One training epoch and one evaluation pass, with honest timing."""

from __future__ import annotations

import math
import time
from contextlib import nullcontext
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from tqdm import tqdm

from backmatch.data.loader import DeviceData
from backmatch.models.blocks import BlockNetwork


@dataclass
class EpochResult:
    """Training statistics of one epoch.

    Attributes:
        loss: mean cross-entropy over the images seen, nats.
        accuracy: fraction of the images seen classified correctly (augmented, train mode).
        images: images processed.
        seconds: wall time of the training steps alone, without evaluation.
        diverged: the loss became NaN or infinite; the epoch stopped there.
        block_lr: per block, mean over steps of the learning rate its weight got.
        relative_update: per block, mean over steps of ``||dW|| / ||W||``.
        sa_factor: per block, mean scale-amended factor (empty for plain SGD).
        sa_clipped: per block, fraction of steps in which the factor was clipped.
    """

    loss: float
    accuracy: float
    images: int
    seconds: float
    diverged: bool = False
    block_lr: dict[str, float] = field(default_factory=dict)
    relative_update: dict[str, float] = field(default_factory=dict)
    sa_factor: dict[str, float] = field(default_factory=dict)
    sa_clipped: dict[str, float] = field(default_factory=dict)


def autocast_context(device: torch.device, precision: str):
    """Return a bf16 autocast context for ``precision == "bf16"``, else a no-op context."""
    if precision == "bf16":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return nullcontext()


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def train_epoch(
    model: BlockNetwork,
    optimizer: torch.optim.Optimizer,
    data: DeviceData,
    batch_size: int,
    generator: torch.Generator,
    precision: str = "fp32",
    augment: bool = True,
    progress: bool = False,
    description: str = "",
) -> EpochResult:
    """Run one epoch of SGD steps and return its statistics.

    Loss and accuracy accumulate on the device and are read once at the end. The
    loss is checked for NaN and infinity every step on the CPU and every 50
    steps on CUDA, where each check waits for the device.
    """
    device = data.device
    model.train()
    blocks = model.blocks()
    # Schedulers change the base rate between epochs only.
    base_lr = optimizer.param_groups[0]["lr"]
    check_every = 1 if device.type == "cpu" else 50

    total_loss = torch.zeros((), device=device, dtype=torch.float64)
    correct = torch.zeros((), device=device, dtype=torch.int64)
    update_sums = {block.name: torch.zeros((), device=device) for block in blocks}
    factor_sums = {block.name: 0.0 for block in blocks}
    clip_counts = {block.name: 0 for block in blocks}
    images = steps = 0
    diverged = False

    batches = data.train_batches(batch_size, generator, augment=augment)
    steps_per_epoch = len(data) // batch_size
    # disable=None lets tqdm switch itself off when stderr is not a terminal.
    bar = tqdm(
        batches, total=steps_per_epoch, desc=description, unit="batch", leave=False,
        disable=None if progress else True, mininterval=2.0,
    )

    _synchronize(device)
    start = time.perf_counter()
    for inputs, labels in bar:
        with autocast_context(device, precision):
            logits = model(inputs)
            loss = F.cross_entropy(logits, labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()

        before = [block.weight.detach().clone() for block in blocks]
        optimizer.step()
        with torch.no_grad():
            for block, old in zip(blocks, before):
                update_sums[block.name] += (block.weight - old).norm() / old.norm().clamp_min(1e-30)

        record = getattr(optimizer, "last_record", {})
        for name, entry in record.items():
            factor_sums[name] += entry["factor"]
            clip_counts[name] += int(entry["clipped"])

        total_loss += loss.detach().double() * len(labels)
        correct += (logits.argmax(dim=1) == labels).sum()
        images += len(labels)
        steps += 1

        if steps % check_every == 0 and not torch.isfinite(loss).item():
            diverged = True
            break
        if progress and steps % 10 == 0:
            bar.set_postfix(loss=f"{float(total_loss) / images:.3f}", img_s=f"{images / (time.perf_counter() - start):.0f}")
    _synchronize(device)
    seconds = time.perf_counter() - start
    bar.close()

    mean_loss = float(total_loss) / max(images, 1)
    if not math.isfinite(mean_loss):
        diverged = True
    has_record = bool(getattr(optimizer, "last_record", {}))
    return EpochResult(
        loss=mean_loss,
        accuracy=int(correct) / max(images, 1),
        images=images,
        seconds=seconds,
        diverged=diverged,
        block_lr={name: base_lr * (factor_sums[name] / steps if has_record and steps else 1.0) for name in factor_sums},
        relative_update={name: float(value) / max(steps, 1) for name, value in update_sums.items()},
        sa_factor={name: value / max(steps, 1) for name, value in factor_sums.items()} if has_record else {},
        sa_clipped={name: value / max(steps, 1) for name, value in clip_counts.items()} if has_record else {},
    )


@torch.inference_mode()
def evaluate(model: BlockNetwork, data: DeviceData, precision: str = "fp32", batch_size: int = 1000) -> tuple[float, float]:
    """Return mean cross-entropy (nats) and accuracy of ``model`` on ``data`` in eval mode."""
    model.eval()
    total_loss = torch.zeros((), device=data.device, dtype=torch.float64)
    correct = torch.zeros((), device=data.device, dtype=torch.int64)
    for inputs, labels in data.eval_batches(batch_size):
        with autocast_context(data.device, precision):
            logits = model(inputs)
        total_loss += F.cross_entropy(logits.float(), labels, reduction="sum").double()
        correct += (logits.argmax(dim=1) == labels).sum()
    return float(total_loss) / len(data), int(correct) / len(data)

