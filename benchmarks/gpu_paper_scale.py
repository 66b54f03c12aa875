"""Paper-scale training speed on a CUDA GPU: epoch time and images/s of VGG13-BN at width 1.

One short command for a machine with a GPU:

    python benchmarks/gpu_paper_scale.py --out gpu.json            # real CIFAR-10 in resources/
    python benchmarks/gpu_paper_scale.py --synthetic --out gpu.json  # random images of the same shape

It times one epoch of 50,000 images (batch 128, the published recipe) with
backmatch's training loop for SGD and scale-amended SGD, in bf16 autocast and in
fp32, after one warm-up epoch each. Pixel values do not change the speed, so
``--synthetic`` measures the same thing where the data set is not on the machine.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

import numpy as np
import torch

from backmatch import provenance
from backmatch.data.cifar import Split
from backmatch.data.loader import DeviceData, load_device_data
from backmatch.models import vgg13
from backmatch.optim.scale_amended import ScaleAmendedSGD
from backmatch.training.loop import train_epoch

logger = logging.getLogger("benchmarks.gpu")


def synthetic_split(images: int, seed: int = 0) -> Split:
    """Return random uint8 images and labels of CIFAR-10's shape."""
    rng = np.random.default_rng(seed)
    return Split(
        images=rng.integers(0, 256, size=(images, 3, 32, 32), dtype=np.uint8),
        labels=rng.integers(0, 10, size=images).astype(np.int64),
        digest="synthetic",
    )


def time_epochs(data: DeviceData, optimizer_name: str, precision: str, epochs: int) -> list[dict]:
    """Train VGG13-BN for one warm-up epoch and ``epochs`` timed ones; return their statistics."""
    torch.manual_seed(0)
    model = vgg13(10, width=1.0).to(data.device, memory_format=torch.channels_last)
    if optimizer_name == "sgd":
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
    else:
        optimizer = ScaleAmendedSGD(model, lr=0.1)
    generator = torch.Generator(device=data.device).manual_seed(0)
    results = []
    for epoch in range(epochs + 1):
        start = time.perf_counter()
        result = train_epoch(model, optimizer, data, 128, generator, precision=precision)
        torch.cuda.synchronize()
        if epoch == 0:
            continue
        results.append({
            "seconds": result.seconds,
            "wall_seconds": time.perf_counter() - start,
            "images_per_second": result.images / result.seconds,
            "train_loss": result.loss,
        })
        logger.info("%s %s: %.1f s, %.0f images/s", optimizer_name, precision, result.seconds, results[-1]["images_per_second"])
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, default=Path("resources"))
    parser.add_argument("--synthetic", action="store_true", help="random images instead of CIFAR-10")
    parser.add_argument("--epochs", type=int, default=1, help="timed epochs per setting (default 1)")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/gpu_paper_scale.json"))
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    if not torch.cuda.is_available():
        raise SystemExit("no CUDA device found; this benchmark needs a GPU")
    device = torch.device("cuda")
    torch.backends.cudnn.benchmark = True

    if args.synthetic:
        data = DeviceData(synthetic_split(50_000), "cifar10", device, channels_last=True)
    else:
        data = load_device_data(args.data_dir, "cifar10", True, device, channels_last=True)

    result = {"provenance": provenance.collect(device), "synthetic": args.synthetic, "width": 1.0, "batch_size": 128}
    for optimizer_name in ("sgd", "sa-sgd"):
        for precision in ("bf16", "fp32"):
            result[f"{optimizer_name}_{precision}"] = time_epochs(data, optimizer_name, precision, args.epochs)
    result["peak_memory_bytes"] = torch.cuda.max_memory_allocated(device)

    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    logger.info("wrote %s", args.out)


if __name__ == "__main__":
    main()
