"""Time the structured-exact local-Hessian spectra of VGG13 and check them against dense and Lanczos.

For every block of VGG13 (width 1/8 by default, at initialisation or from a
checkpoint) on 256 real test images in float64 it records:

- the seconds of the structured-exact ``H_W`` spectrum (forward factors included)
  and of the structured (linear) or patch-factor (convolution) ``H_z`` spectrum;
- the Lanczos largest eigenvalue of the exact ``H_W`` operator next to the
  structured one;
- on a smaller batch (``--dense-samples``), where the dense matrix is feasible,
  the structured condition number and null count next to the dense ones.

Usage:
    PYTHONPATH=src python benchmarks/hessian_methods.py [--checkpoint FILE] [--out FILE.json]
"""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path
from typing import Any

import torch

from backmatch import provenance
from backmatch.atomic import write_json_atomic
from backmatch.hessian.analysis import AnalysisOptions, analysis_copy, block_inputs, choose_method
from backmatch.hessian.command import finite_or_null
from backmatch.hessian.dense import dense_weight_spectrum
from backmatch.hessian.factors import jacobian_factors
from backmatch.hessian.iterative import lanczos_lambda_max
from backmatch.hessian.operators import GaussNewtonOperator, block_function
from backmatch.hessian.samples import SAMPLE_SELECTION, fixed_test_batch
from backmatch.hessian.structured import input_spectrum, input_structure_support, patch_factor_spectrum, weight_spectrum
from backmatch.models import vgg13
from backmatch.training.checkpoint import load_model

logger = logging.getLogger("hessian_methods")

DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "hessian_methods.json"


def parse_arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", type=Path, help="analyse this checkpoint instead of a fresh VGG13")
    parser.add_argument("--width", type=float, default=0.125, help="channel multiplier of the fresh VGG13 (default 0.125)")
    parser.add_argument("--bn", action=argparse.BooleanOptionalAction, default=True, help="batch norm in the fresh VGG13 (default on)")
    parser.add_argument("--seed", type=int, default=0, help="initialisation seed of the fresh VGG13 (default 0)")
    parser.add_argument("--dataset", default="cifar10", choices=("cifar10", "cifar100"), help="test images (default cifar10)")
    parser.add_argument("--data-dir", type=Path, default=Path("resources"), help="CIFAR folder (default resources)")
    parser.add_argument("--samples", type=int, default=256, help="images of the timed batch (default 256)")
    parser.add_argument("--dense-samples", type=int, default=16, help="images of the dense comparison batch (default 16)")
    parser.add_argument("--dense-max-dim", type=int, default=4608, help="largest H_W dimension compared with the dense matrix (default 4608)")
    parser.add_argument("--lanczos", action=argparse.BooleanOptionalAction, default=True, help="Lanczos lambda_max of H_W on the timed batch (default on)")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's own choice)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"output JSON (default {DEFAULT_OUT})")
    return parser.parse_args()


def load_network(args: argparse.Namespace) -> tuple[torch.nn.Module, dict[str, Any]]:
    if args.checkpoint is not None:
        model, settings, epoch = load_model(args.checkpoint)
        return model, {"checkpoint": str(args.checkpoint), "epoch": epoch, "settings": settings.to_dict()}
    torch.manual_seed(args.seed)
    model = vgg13(10 if args.dataset == "cifar10" else 100, width=args.width, batch_norm=args.bn)
    return model, {"checkpoint": None, "epoch": 0, "width": args.width, "bn": args.bn, "seed": args.seed}


def warm_up(model: torch.nn.Module, images: torch.Tensor) -> None:
    """Run every path once on two images, so library start-up costs stay out of the timings."""
    twin = analysis_copy(model)
    for block, inputs in zip(twin.blocks(), block_inputs(twin, images[:2])):
        factors = jacobian_factors(block, inputs)
        weight_spectrum(factors)
        operator = GaussNewtonOperator(*block_function(block, inputs, "weight"))
        lanczos_lambda_max(operator)


def time_block(block, inputs: torch.Tensor, lanczos: bool) -> dict[str, Any]:
    """Time the structured H_W, the structured or patch-factor H_z, and optionally Lanczos on H_W."""
    start = time.perf_counter()
    factors = jacobian_factors(block, inputs)
    weight = weight_spectrum(factors)
    weight_seconds = time.perf_counter() - start

    input_dim = inputs.numel()
    available = ("structured",) if input_structure_support(factors) is None else ("patch_factor",)
    method, _ = choose_method(input_dim, available, AnalysisOptions(dense_max_dim=0))
    start = time.perf_counter()
    inputs_summary = input_spectrum(factors) if method == "structured" else patch_factor_spectrum(factors)
    input_seconds = time.perf_counter() - start

    record = {
        "block": block.name,
        "H_W_dim": weight.dim,
        "H_W_structured_seconds": weight_seconds,
        "H_W_condition_number": weight.condition_number,
        "H_W_lambda_max": weight.lambda_max,
        "H_W_null_reasons": weight.null_reasons,
        "H_z_dim": input_dim,
        "H_z_method": method,
        "H_z_seconds": input_seconds,
        "H_z_condition_number": inputs_summary.condition_number,
        "lanczos_lambda_max": None,
        "lanczos_seconds": None,
        "lanczos_relative_difference": None,
    }
    if lanczos:
        start = time.perf_counter()
        operator = GaussNewtonOperator(*block_function(block, inputs, "weight"))
        value, _ = lanczos_lambda_max(operator)
        record["lanczos_seconds"] = time.perf_counter() - start
        record["lanczos_lambda_max"] = value
        if value is not None:
            record["lanczos_relative_difference"] = abs(value - weight.lambda_max) / weight.lambda_max
    return record


def compare_with_dense(block, inputs: torch.Tensor, max_dim: int) -> dict[str, Any] | None:
    """Return structured and dense condition numbers and null counts of H_W, or None when too large."""
    if block.weight.numel() > max_dim:
        return None
    factors = jacobian_factors(block, inputs)
    structured = weight_spectrum(factors)
    start = time.perf_counter()
    dense = dense_weight_spectrum(GaussNewtonOperator(*block_function(block, inputs, "weight")), factors)
    dense_seconds = time.perf_counter() - start
    return {
        "block": block.name,
        "dim": structured.dim,
        "structured_condition_number": structured.condition_number,
        "dense_condition_number": dense.condition_number,
        "condition_relative_difference": abs(structured.condition_number - dense.condition_number) / dense.condition_number,
        "structured_null_reasons": structured.null_reasons,
        "dense_null_reasons": dense.null_reasons,
        "dense_seconds": dense_seconds,
    }


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    args = parse_arguments()
    if args.threads is not None:
        torch.set_num_threads(args.threads)

    model, network = load_network(args)
    images, _ = fixed_test_batch(args.data_dir, args.dataset, args.samples)
    dense_images, _ = fixed_test_batch(args.data_dir, args.dataset, args.dense_samples)
    warm_up(model, images)

    twin = analysis_copy(model)
    timings = []
    for block, inputs in zip(twin.blocks(), block_inputs(twin, images)):
        record = time_block(block, inputs, args.lanczos)
        logger.info(
            "%s: H_W structured %.2f s (cond %.3e), H_z %s %.3f s, Lanczos %s",
            record["block"], record["H_W_structured_seconds"], record["H_W_condition_number"] or float("nan"),
            record["H_z_method"], record["H_z_seconds"],
            "skipped" if record["lanczos_seconds"] is None else f"{record['lanczos_seconds']:.1f} s",
        )
        timings.append(record)

    comparisons = []
    for block, inputs in zip(twin.blocks(), block_inputs(twin, dense_images)):
        comparison = compare_with_dense(block, inputs, args.dense_max_dim)
        if comparison is not None:
            logger.info("%s: dense check on %d images, condition numbers differ by %.1e", block.name, args.dense_samples, comparison["condition_relative_difference"])
            comparisons.append(comparison)

    weight_total = sum(record["H_W_structured_seconds"] for record in timings)
    input_total = sum(record["H_z_seconds"] for record in timings)
    result = {
        "provenance": provenance.collect(torch.device("cpu")),
        "network": network,
        "samples": args.samples,
        "dense_samples": args.dense_samples,
        "dtype": "float64",
        "bn_mode": "train",
        "sample_selection": SAMPLE_SELECTION,
        "warm_up": "every path ran once on 2 images before timing",
        "total_structured_seconds": weight_total + input_total,
        "total_H_W_structured_seconds": weight_total,
        "total_H_z_seconds": input_total,
        "blocks": timings,
        "dense_comparison": comparisons,
    }
    write_json_atomic(args.out, finite_or_null(result))
    logger.info("structured-exact total %.1f s (H_W %.1f s, H_z %.1f s); wrote %s", weight_total + input_total, weight_total, input_total, args.out)


if __name__ == "__main__":
    main()
