"""Training throughput of backmatch's loop against a reference loop, side by side in one run.

The reference is a CIFAR training loop written the usual way: torchvision's
``CIFAR10`` dataset with per-sample ``RandomCrop``, ``RandomHorizontalFlip``,
``ToTensor`` and ``Normalize`` transforms behind a ``DataLoader``. Both loops
train the same VGG13-BN with the same batch, optimiser and thread count; only
the data path and the loop differ. The script also measures the float32 matmul
rate of the machine, so achieved FLOP/s can be compared with it, bf16 autocast,
and the step time of scale-amended SGD against SGD.

Usage:
    python benchmarks/training_throughput.py --data-dir resources --out benchmarks/results/training.json
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F
import torchvision
from torch.utils.data import DataLoader
from torch.utils.flop_counter import FlopCounterMode
from torchvision import transforms

from backmatch import provenance
from backmatch.data.loader import CHANNEL_STATS, load_device_data
from backmatch.models import vgg13
from backmatch.optim.scale_amended import ScaleAmendedSGD
from backmatch.training.loop import autocast_context, train_epoch

logger = logging.getLogger("benchmarks.training")


class LocalCIFAR10(torchvision.datasets.CIFAR10):
    """torchvision's CIFAR10 without its md5 check, which rejects re-packed copies of the same images."""

    def _check_integrity(self) -> bool:
        return True


def matmul_flops_per_second(size: int = 2048, repeats: int = 10) -> float:
    """Return the float32 dense matmul rate of this machine in FLOP/s (best of ``repeats``)."""
    a, b = torch.randn(size, size), torch.randn(size, size)
    a @ b
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - start)
    return 2 * size**3 / best


def training_flops_per_image(width: float) -> float:
    """Return forward plus backward FLOPs of one image: three times the forward count."""
    model = vgg13(10, width=width)
    with FlopCounterMode(display=False) as counter:
        model(torch.randn(1, 3, 32, 32))
    return 3.0 * counter.get_total_flops()


def reference_throughput(data_dir: Path, width: float, workers: int, steps: int, batch_size: int) -> float:
    """Return images/s of the usual DataLoader loop over ``steps`` steps after a warm-up."""
    mean, std = CHANNEL_STATS["cifar10"]
    augment = transforms.Compose([
        transforms.RandomCrop(32, padding=4),
        transforms.RandomHorizontalFlip(),
        transforms.ToTensor(),
        transforms.Normalize(mean, std),
    ])
    dataset = LocalCIFAR10(str(data_dir), train=True, transform=augment, download=False)
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=True, num_workers=workers, drop_last=True, persistent_workers=workers > 0)
    torch.manual_seed(0)
    model = vgg13(10, width=width)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    model.train()

    batches = iter(loader)
    warmup = 5
    for step in range(warmup + steps):
        if step == warmup:
            start = time.perf_counter()
        images, labels = next(batches)
        loss = F.cross_entropy(model(images), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return steps * batch_size / (time.perf_counter() - start)


def vgg_and_optimizer(width: float, optimizer_name: str, lr: float) -> tuple[torch.nn.Module, torch.optim.Optimizer]:
    """Return a channels-last VGG13-BN (seed 0) and SGD or scale-amended SGD for it."""
    torch.manual_seed(0)
    model = vgg13(10, width=width).to(memory_format=torch.channels_last)
    if optimizer_name == "sgd":
        return model, torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, weight_decay=5e-4)
    return model, ScaleAmendedSGD(model, lr=lr)


def backmatch_throughput(
    data_dir: Path, width: float, optimizer_name: str, precision: str, images: int, batch_size: int, repeats: int = 2
) -> float:
    """Return images/s of backmatch's training loop (best epoch of ``repeats``) on a subset of ``images``."""
    data = load_device_data(data_dir, "cifar10", True, torch.device("cpu"), subset=images, channels_last=True)
    model, optimizer = vgg_and_optimizer(width, optimizer_name, lr=0.05)
    generator = torch.Generator().manual_seed(0)
    train_epoch(model, optimizer, data, batch_size, generator, precision=precision)
    rates = [
        result.images / result.seconds
        for result in (train_epoch(model, optimizer, data, batch_size, generator, precision=precision) for _ in range(repeats))
    ]
    return max(rates)


def step_seconds(width: float, batch_size: int, steps: int) -> dict[str, float]:
    """Return the median seconds of one forward, backward and step with SGD and with scale-amended SGD.

    The two optimisers train their own copy of the same model on one fixed batch
    and take turns step by step, so that a burst of load on the machine slows
    both alike. Learning rate 0 keeps both models at their initial weights, so
    each step processes the same data with both.
    """
    images = torch.randn(batch_size, 3, 32, 32).contiguous(memory_format=torch.channels_last)
    labels = torch.randint(0, 10, (batch_size,))
    runs = {}
    for name in ("sgd", "sa-sgd"):
        runs[name] = (*vgg_and_optimizer(width, name, lr=0.0), [])

    warmup = 5
    for step in range(steps + warmup):
        for model, optimizer, times in runs.values():
            start = time.perf_counter()
            loss = F.cross_entropy(model(images), labels)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            if step >= warmup:
                times.append(time.perf_counter() - start)
    return {name: statistics.median(times) for name, (_, _, times) in runs.items()}


def bf16_accuracy_cost(data_dir: Path, width: float, epochs: int, images: int) -> dict:
    """Train the same run in fp32 and with bf16 autocast; return both test accuracies."""
    train = load_device_data(data_dir, "cifar10", True, torch.device("cpu"), subset=images, channels_last=True)
    test = load_device_data(data_dir, "cifar10", False, torch.device("cpu"), subset=2000, channels_last=True)
    accuracies = {}
    for precision in ("fp32", "bf16"):
        torch.manual_seed(0)
        model = vgg13(10, width=width).to(memory_format=torch.channels_last)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
        generator = torch.Generator().manual_seed(0)
        for _ in range(epochs):
            train_epoch(model, optimizer, train, 128, generator, precision=precision)
        model.eval()
        correct = 0
        with torch.inference_mode():
            for inputs, labels in test.eval_batches(500):
                with autocast_context(torch.device("cpu"), precision):
                    correct += int((model(inputs).argmax(1) == labels).sum())
        accuracies[precision] = correct / len(test)
    return {"epochs": epochs, "train_images": images, "test_images": 2000, "test_accuracy": accuracies}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, default=Path("resources"))
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/training.json"))
    parser.add_argument("--threads", type=int, default=2, help="torch threads of every measurement (default 2)")
    parser.add_argument("--steps", type=int, default=40, help="timed steps of the reference loop (default 40)")
    parser.add_argument("--images", type=int, default=10240, help="training images per timed backmatch epoch (default 10240)")
    parser.add_argument(
        "--optimizer-steps", type=int, default=200, help="timed steps per optimiser in the step-time comparison (default 200)"
    )
    parser.add_argument("--skip-accuracy", action="store_true", help="skip the bf16 accuracy comparison")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    torch.set_num_threads(args.threads)

    result = {"provenance": provenance.collect(), "threads": args.threads, "batch_size": 128}
    result["matmul_flops_per_second"] = matmul_flops_per_second()
    logger.info("float32 matmul: %.1f GFLOP/s", result["matmul_flops_per_second"] / 1e9)

    widths = {}
    for width in (0.125, 0.25):
        flops = training_flops_per_image(width)
        entry = {"training_flops_per_image": flops}
        for workers in (0, 2):
            entry[f"reference_workers_{workers}"] = reference_throughput(args.data_dir, width, workers, args.steps, 128)
            logger.info("width %s reference, %d workers: %.0f images/s", width, workers, entry[f"reference_workers_{workers}"])
        for optimizer_name in ("sgd", "sa-sgd"):
            for precision in ("fp32", "bf16"):
                key = f"backmatch_{optimizer_name}_{precision}"
                entry[key] = backmatch_throughput(args.data_dir, width, optimizer_name, precision, args.images, 128)
                logger.info("width %s backmatch %s %s: %.0f images/s", width, optimizer_name, precision, entry[key])
        reference = max(entry["reference_workers_0"], entry["reference_workers_2"])
        entry["speedup_fp32_sgd"] = entry["backmatch_sgd_fp32"] / reference
        entry["flop_ratio_backmatch_fp32"] = entry["backmatch_sgd_fp32"] * flops / result["matmul_flops_per_second"]
        entry["flop_ratio_reference"] = reference * flops / result["matmul_flops_per_second"]
        seconds = step_seconds(width, 128, args.optimizer_steps)
        entry["sgd_step_seconds"] = seconds["sgd"]
        entry["sa_sgd_step_seconds"] = seconds["sa-sgd"]
        entry["sa_sgd_step_ratio"] = entry["sa_sgd_step_seconds"] / entry["sgd_step_seconds"]
        widths[str(width)] = entry
        logger.info(
            "width %s: speedup %.2f, FLOP ratio %.2f (reference %.2f), SA-SGD/SGD step %.3f",
            width, entry["speedup_fp32_sgd"], entry["flop_ratio_backmatch_fp32"], entry["flop_ratio_reference"], entry["sa_sgd_step_ratio"],
        )
    result["widths"] = widths
    if not args.skip_accuracy:
        result["bf16_accuracy"] = bf16_accuracy_cost(args.data_dir, 0.25, epochs=5, images=10240)
        logger.info("bf16 accuracy cost: %s", result["bf16_accuracy"])

    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    logger.info("wrote %s", args.out)


if __name__ == "__main__":
    main()
