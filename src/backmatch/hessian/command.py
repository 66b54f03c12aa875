"""``backmatch hessian``: local-Hessian spectra of every block of a network, written as JSON.

The network is a trained checkpoint (``--checkpoint``) or a fresh one at
initialisation (the model flags and ``--seed``). It is analysed in float64 on a
fixed, class-stratified batch of test images.
"""

from __future__ import annotations

import argparse
import logging
import math
from pathlib import Path
from typing import Any

import torch

from backmatch import provenance
from backmatch.atomic import write_json_atomic
from backmatch.cli import UsageError, add_data_arguments, add_execution_arguments, add_model_arguments, settings_from_args
from backmatch.data.cifar import dataset_info
from backmatch.device import resolve_device
from backmatch.hessian.analysis import BN_MODES, LANCZOS_CHOICES, AnalysisOptions, analyse_model
from backmatch.hessian.iterative import LANCZOS_TOL
from backmatch.hessian.samples import SAMPLE_SELECTION, fixed_test_batch
from backmatch.hessian.spectrum import METHODS
from backmatch.models import BlockNetwork, build_model
from backmatch.settings import TrainSettings
from backmatch.training.checkpoint import RunDivergedError, load_model

logger = logging.getLogger(__name__)

#: Flags that describe a fresh network and make no sense with ``--checkpoint``.
MODEL_FLAGS = ("model", "width", "depth", "relu", "bn", "init", "residual", "branch_scale", "seed")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the flags of ``backmatch hessian`` to ``parser``."""
    parser.add_argument("--checkpoint", type=Path, help="checkpoint written by backmatch train; omit for a fresh network")
    add_model_arguments(parser)
    add_data_arguments(parser)
    add_execution_arguments(parser)
    parser.add_argument("--samples", type=int, default=256, help="test images in the analysed batch (default 256)")
    parser.add_argument("--out", type=Path, required=True, help="output JSON file; its folder is created")

    group = parser.add_argument_group("spectra")
    group.add_argument("--bn-mode", choices=BN_MODES, default="train", help="batch statistics (train, default) or running statistics (eval)")
    group.add_argument("--dense-max-dim", type=int, default=2048, help="largest operator dimension decomposed densely (default 2048)")
    group.add_argument(
        "--method",
        choices=("auto", *METHODS),
        default="auto",
        help="force a spectrum method where it applies (default auto); dense builds a dim x dim matrix, so keep it to small operators",
    )
    group.add_argument("--probes", type=int, default=16, help="Rademacher probes per Hutchinson estimate (default 16)")
    group.add_argument("--rtol", type=float, help="relative null threshold on eigenvalues (default dim * eps(float64))")
    group.add_argument(
        "--lanczos",
        choices=LANCZOS_CHOICES,
        default="inexact",
        help="Lanczos largest eigenvalue for inexact spectra only (default), for every matrix, or never",
    )
    group.add_argument("--lanczos-tol", type=float, default=LANCZOS_TOL, help=f"relative accuracy of the Lanczos largest eigenvalue (default {LANCZOS_TOL})")
    group.add_argument(
        "--estimators",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="Lanczos and Hutchinson estimates of the exact operators (default on)",
    )
    group.add_argument("--max-memory-mb", type=int, default=256, help="scratch memory the exact methods aim to stay under, in MiB (default 256)")


def run(args: argparse.Namespace) -> int:
    """Analyse every block and write the JSON file; return the exit code."""
    if args.threads is not None:
        if args.threads < 1:
            raise UsageError(f"--threads {args.threads} is invalid; use 1 or more")
        torch.set_num_threads(args.threads)

    try:
        model, settings, epoch = load_network(args)
    except RunDivergedError as error:
        # A diverged run has no network at this epoch. The record states that,
        # so figures can show the divergence instead of failing.
        logger.warning("%s", error)
        record = {"status": "diverged", "checkpoint": str(args.checkpoint), "epoch": error.epoch, "settings": error.settings, "blocks": []}
        write_json_atomic(args.out, {"provenance": provenance.collect(), **record})
        return 0
    dataset = args.dataset or settings.dataset
    data_dir = Path(args.data_dir or settings.data_dir)
    try:
        device = resolve_device(args.device or "auto")
    except ValueError as error:
        raise UsageError(str(error)) from None
    options = analysis_options(args)
    check_samples(args.samples, model, options.bn_mode)

    images, _ = fixed_test_batch(data_dir, dataset, args.samples, device)
    model = model.to(device)
    logger.info(
        "analysing %d blocks of %s on %d %s test images (epoch %d, bn_mode %s)",
        len(model.blocks()), settings.model, args.samples, dataset, epoch, options.bn_mode,
    )
    records = analyse_model(model, images, options)

    result = {
        "provenance": provenance.collect(device, seed=settings.seed, dataset=dataset),
        "status": "completed",
        "checkpoint": str(args.checkpoint) if args.checkpoint is not None else None,
        "epoch": epoch,
        "settings": settings.to_dict(),
        "analysis": analysis_record(args.samples, dataset, options),
        "blocks": records,
    }
    write_json_atomic(args.out, finite_or_null(result))
    logger.info("wrote %s", args.out)
    return 0


def load_network(args: argparse.Namespace) -> tuple[BlockNetwork, TrainSettings, int]:
    """Return the network, its settings and its epoch, from ``--checkpoint`` or the model flags.

    Raises:
        UsageError: model flags given together with ``--checkpoint``, neither
            given, or the checkpoint file is missing.
    """
    model_flags = [flag for flag in MODEL_FLAGS if getattr(args, flag, None) is not None]
    if args.checkpoint is not None:
        if model_flags:
            flags = ", ".join("--" + flag.replace("_", "-") for flag in model_flags)
            raise UsageError(f"{flags} describe a fresh network, but --checkpoint {args.checkpoint} supplies one; drop one of them")
        if not args.checkpoint.is_file():
            raise UsageError(f"checkpoint {args.checkpoint} not found; pass a file written by backmatch train")
        model, settings, epoch = load_model(args.checkpoint)
        return model, settings, epoch

    if args.model is None:
        raise UsageError("no network given: pass --checkpoint FILE, or --model (vgg13 or mlp) with --seed for a fresh one")
    settings = settings_from_args(args)
    torch.manual_seed(settings.seed)
    model = build_model(settings, dataset_info(settings.dataset).num_classes)
    return model, settings, 0


def analysis_options(args: argparse.Namespace) -> AnalysisOptions:
    """Build :class:`AnalysisOptions` from the flags, turning invalid values into usage errors."""
    if args.max_memory_mb < 1:
        raise UsageError(f"--max-memory-mb {args.max_memory_mb} is invalid; use 1 or more")
    try:
        return AnalysisOptions(
            dense_max_dim=args.dense_max_dim,
            probes=args.probes,
            rtol=args.rtol,
            method=args.method,
            lanczos_tol=args.lanczos_tol,
            estimators=args.estimators,
            lanczos=args.lanczos,
            bn_mode=args.bn_mode,
            max_bytes=args.max_memory_mb * 2**20,
        )
    except ValueError as error:
        raise UsageError(str(error)) from error


def check_samples(samples: int, model: BlockNetwork, bn_mode: str) -> None:
    """Raise :class:`UsageError` unless ``samples`` suits the network.

    Batch norm in train mode needs at least two values per channel, and the
    last convolution of VGG13 has one position per image, so such networks need
    at least two images.
    """
    if samples < 1:
        raise UsageError(f"--samples {samples} is invalid; use 1 or more")
    has_batch_norm = any(block.batch_norm is not None for block in model.blocks())
    if has_batch_norm and bn_mode == "train" and samples < 2:
        raise UsageError(f"--samples {samples} is too few for batch norm in train mode; use 2 or more, or --bn-mode eval")


def analysis_record(samples: int, dataset: str, options: AnalysisOptions) -> dict[str, Any]:
    """Return the ``analysis`` entry of the output: how the spectra were computed."""
    return {
        "samples": samples,
        "dataset": dataset,
        "dtype": "float64",
        "bn_mode": options.bn_mode,
        "dense_max_dim": options.dense_max_dim,
        "method": options.method,
        "probes": options.probes,
        "rtol": options.rtol,
        "rtol_rule": "dim * eps(float64)" if options.rtol is None else "given",
        "lanczos_tol": options.lanczos_tol,
        "estimators": options.estimators,
        "lanczos": options.lanczos,
        "max_memory_mb": options.max_bytes / 2**20,
        "seed": options.seed,
        "sample_selection": SAMPLE_SELECTION,
    }


def finite_or_null(value: Any) -> Any:
    """Return ``value`` with every NaN or infinite float replaced by ``None``, recursively.

    Example:
        >>> finite_or_null({"a": [1.0, float("inf")], "b": float("nan")})
        {'a': [1.0, None], 'b': None}
    """
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {key: finite_or_null(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite_or_null(item) for item in value]
    return value
