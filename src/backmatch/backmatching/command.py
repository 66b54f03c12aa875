"""``backmatch backmatching``: one back-matching pass against one BP step, per network and block, as JSON."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import torch

from backmatch import provenance
from backmatch.atomic import write_json_atomic
from backmatch.backmatching.table import DEFAULT_VGG_WIDTH, MLP_DEPTH, MLP_WIDTH, NETWORKS, RESIDUAL_BRANCH_SCALE, SCALED_STEP_RANGE, STEPS, table_records
from backmatch.cli import UsageError, add_data_arguments
from backmatch.data.cifar import dataset_info
from backmatch.hessian.command import finite_or_null
from backmatch.hessian.samples import SAMPLE_SELECTION, fixed_test_batch

logger = logging.getLogger(__name__)


def network_list(text: str) -> tuple[str, ...]:
    """Parse ``"mlp,vgg13"`` into network names, checking each one.

    Example:
        >>> network_list("mlp, vgg13_bn")
        ('mlp', 'vgg13_bn')
    """
    names = tuple(part.strip() for part in text.split(",") if part.strip())
    unknown = [name for name in names if name not in NETWORKS]
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"networks {text!r}: give a comma-separated subset of {', '.join(NETWORKS)}")
    return names


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the flags of ``backmatch backmatching`` to ``parser``."""
    add_data_arguments(parser)
    parser.add_argument("--samples", type=int, default=16, help="test images in the batch (default 16)")
    parser.add_argument("--seed", type=int, default=0, help="seed of initialisation and of the scaled steps (default 0)")
    parser.add_argument("--eta", type=float, default=0.1, help="step size of the top target and of BP (default 0.1)")
    parser.add_argument(
        "--vgg-width", type=float, default=DEFAULT_VGG_WIDTH, help=f"channel multiplier of both VGG13 networks (default {DEFAULT_VGG_WIDTH})"
    )
    parser.add_argument(
        "--networks", type=network_list, default=NETWORKS, help=f"comma-separated networks (default {','.join(NETWORKS)})"
    )
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's own choice)")
    parser.add_argument("--out", type=Path, required=True, help="output JSON file; its folder is created")


def run(args: argparse.Namespace) -> int:
    """Compute the table and write the JSON file; return the exit code."""
    if args.threads is not None:
        if args.threads < 1:
            raise UsageError(f"--threads {args.threads} is invalid; use 1 or more")
        torch.set_num_threads(args.threads)
    if args.samples < 2:
        raise UsageError(f"--samples {args.samples} is too few: batch norm in train mode needs at least 2 images")
    if not args.eta > 0:
        raise UsageError(f"--eta {args.eta} is invalid; use a positive step size")
    if not args.vgg_width > 0:
        raise UsageError(f"--vgg-width {args.vgg_width} is invalid; use a positive multiplier such as 0.0625")

    dataset = args.dataset or "cifar10"
    data_dir = Path(args.data_dir or "resources")
    images, labels = fixed_test_batch(data_dir, dataset, args.samples)
    records = table_records(
        args.networks, images, labels, dataset_info(dataset).num_classes, args.eta, args.seed, args.vgg_width
    )

    settings = {
        "dataset": dataset,
        "samples": args.samples,
        "seed": args.seed,
        "eta": args.eta,
        "vgg_width": args.vgg_width,
        "networks": list(args.networks),
        "mlp": {"width": MLP_WIDTH, "depth": MLP_DEPTH, "residual_branch_scale": RESIDUAL_BRANCH_SCALE},
        "steps": list(STEPS),
        "scaled_step_range": list(SCALED_STEP_RANGE),
        "loss": "cross-entropy, mean over the batch",
        "dtype": "float64",
        "bn_mode": "train",
        "sample_selection": SAMPLE_SELECTION,
    }
    result = {
        "provenance": provenance.collect(torch.device("cpu"), seed=args.seed),
        "settings": settings,
        "records": records,
    }
    write_json_atomic(args.out, finite_or_null(result))
    worst = max(record["max_abs_diff"] for record in records)
    logger.info("wrote %d records to %s; largest difference %.2e", len(records), args.out, worst)
    return 0
