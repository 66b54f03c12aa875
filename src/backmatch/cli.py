"""The backmatch command line: data, train, hessian and backmatching."""

from __future__ import annotations

import argparse
import json
import logging
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from backmatch.settings import DEVICES, MODELS, OPTIMIZERS, PRECISIONS, TrainSettings

logger = logging.getLogger("backmatch")


class UsageError(ValueError):
    """An invalid command-line value; reported without a traceback, exit code 2."""


def int_list(text: str) -> tuple[int, ...]:
    """Parse ``"100,150"`` into ``(100, 150)``; an empty string gives ``()``.

    Example:
        >>> int_list("0, 5,10"), int_list("")
        ((0, 5, 10), ())
    """
    try:
        return tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated whole numbers such as 100,150, got {text!r}") from None


def add_data_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dataset", choices=("cifar10", "cifar100"), help="data set (default cifar10)")
    parser.add_argument("--data-dir", help="folder with the CIFAR pickle folders (default resources)")


def add_execution_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", choices=DEVICES, help="torch device; auto picks CUDA when available (default auto)")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's own choice)")


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the flags that describe a network; every flag defaults to the settings default."""
    group = parser.add_argument_group("model")
    group.add_argument("--model", choices=MODELS, help="network (default vgg13)")
    group.add_argument("--width", type=float, help="vgg13: channel multiplier (default 1); mlp: units per hidden block (default 256)")
    group.add_argument("--depth", type=int, help="mlp: number of hidden blocks between the input and output blocks (default 8)")
    group.add_argument("--relu", action=argparse.BooleanOptionalAction, help="mlp: ReLU after hidden blocks (default on)")
    group.add_argument("--bn", action=argparse.BooleanOptionalAction, help="vgg13: batch norm after each conv (default on)")
    group.add_argument(
        "--init", choices=("he", "orthogonal", "gaussian"), help="he for vgg13 (its only choice); orthogonal (default) or gaussian for mlp"
    )
    group.add_argument("--residual", action=argparse.BooleanOptionalAction, help="mlp: residual hidden blocks (default off)")
    group.add_argument("--branch-scale", type=float, help="mlp: factor on each residual branch (default 1)")
    group.add_argument("--seed", type=int, help="seed of the initialisation; training also draws data order and augmentation from it (default 0)")


def add_train_arguments(parser: argparse.ArgumentParser) -> None:
    add_data_arguments(parser)
    add_model_arguments(parser)
    add_execution_arguments(parser)
    parser.add_argument(
        "--settings-json",
        help="JSON object of training settings, named like the flags with underscores (e.g. train_subset); flags given as well override it",
    )
    parser.add_argument("--out", required=True, type=Path, help="output folder of the run")

    group = parser.add_argument_group("optimisation")
    group.add_argument("--optimizer", choices=OPTIMIZERS, help="sgd or scale-amended sgd (default sgd)")
    group.add_argument("--lr", type=float, help="base learning rate per step (default 0.1)")
    group.add_argument("--momentum", type=float, help="heavy-ball momentum (default 0.9)")
    group.add_argument("--weight-decay", type=float, help="L2 weight decay (default 5e-4)")
    group.add_argument(
        "--lr-milestones", type=int_list, help="comma-separated epochs after which the rate is multiplied by --lr-gamma, e.g. 100,150 (default none)"
    )
    group.add_argument("--lr-gamma", type=float, help="learning-rate factor at each milestone (default 0.1)")
    group.add_argument("--epochs", type=int, help="training epochs (default 200)")
    group.add_argument("--batch-size", type=int, help="images per step (default 128)")
    group.add_argument("--train-subset", type=int, help="train on a class-stratified subset of this many images (default: all 50,000)")
    group.add_argument("--test-subset", type=int, help="evaluate on a class-stratified subset of this many test images (default: all 10,000)")
    group.add_argument("--subset-seed", type=int, help="seed of the subsets, kept apart from --seed (default 0)")
    group.add_argument("--augment", action=argparse.BooleanOptionalAction, help="random crop and flip (default on)")
    group.add_argument(
        "--checkpoint-epochs", type=int_list, help="comma-separated epochs after which to keep a checkpoint, 0 for the initialisation (default none)"
    )
    group.add_argument("--precision", choices=PRECISIONS, help="fp32, or bf16 autocast on CPU and CUDA (default fp32)")
    group.add_argument("--progress", action=argparse.BooleanOptionalAction, help="tqdm progress bar (default on)")

    sa = parser.add_argument_group("scale-amended SGD")
    sa.add_argument("--sa-rule", choices=("full", "local"), help="full: product over the blocks above (default); local: m_W only")
    sa.add_argument("--sa-scalar", choices=("mean", "max"), help="mean eigenvalue (default) or largest one")
    sa.add_argument("--sa-estimator", choices=("closed_form", "numerical"), help="closed forms (default) or Hutchinson/power")
    sa.add_argument("--sa-per-channel", action=argparse.BooleanOptionalAction, help="one rate per output unit (default off: one per block)")
    sa.add_argument("--sa-ema", type=float, help="EMA factor of m across steps (default 0.9)")
    sa.add_argument("--sa-normalize", choices=("median", "none"), help="divide factors by their median (default)")
    sa.add_argument("--sa-clip-min", type=float, help="lower clip of the normalised factors (default 0.01)")
    sa.add_argument("--sa-clip-max", type=float, help="upper clip of the normalised factors (default 100)")
    sa.add_argument("--sa-probes", type=int, help="probes or iterations per numerical estimate (default 4)")


def settings_from_args(args: argparse.Namespace, base: dict[str, Any] | None = None) -> TrainSettings:
    """Merge settings defaults, ``base`` and the flags that were given, in that order."""
    data: dict[str, Any] = dict(base or {})
    sa: dict[str, Any] = dict(data.pop("sa", {}) or {})
    for key, value in vars(args).items():
        if value is None or key in ("command", "settings_json", "out", "handler", "checkpoint", "samples"):
            continue
        if key.startswith("sa_"):
            sa[key[3:]] = value
        else:
            data[key] = value
    if sa:
        data["sa"] = sa
    try:
        return TrainSettings.from_dict({key: value for key, value in data.items() if key in TrainSettings.__dataclass_fields__})
    except (TypeError, ValueError) as error:
        raise UsageError(str(error)) from error


def _run_data(args: argparse.Namespace) -> int:
    from backmatch.data.download import prepare_dataset

    from backmatch import provenance
    from backmatch.atomic import write_json_atomic

    datasets = ("cifar10", "cifar100") if args.dataset == "all" else (args.dataset,)
    digests = {}
    for dataset in datasets:
        digests[dataset] = prepare_dataset(Path(args.data_dir), dataset, url=args.url, md5=args.md5)
    if args.record:
        write_json_atomic(args.record, {"data_dir": str(args.data_dir), "digests": digests, "provenance": provenance.collect()})
    return 0


def _run_train(args: argparse.Namespace) -> int:
    from backmatch.training.run import train

    base = None
    if args.settings_json:
        try:
            base = json.loads(args.settings_json)
        except json.JSONDecodeError as error:
            raise UsageError(f"--settings-json is not valid JSON: {error}") from error
        if not isinstance(base, dict):
            raise UsageError("--settings-json must be a JSON object of setting names and values")
    settings = settings_from_args(args, base)
    train(settings, args.out)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="backmatch", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    commands = parser.add_subparsers(dest="command", required=True)

    data = commands.add_parser("data", help="download (when missing) and verify CIFAR-10 and CIFAR-100")
    data.add_argument("--dataset", choices=("cifar10", "cifar100", "all"), default="all", help="data set (default all)")
    data.add_argument("--data-dir", default="resources", help="target folder (default resources)")
    data.add_argument("--url", help="archive address instead of the official one (one data set only)")
    data.add_argument("--md5", help="md5 of the archive at --url")
    data.add_argument("--record", type=Path, help="also write the verified split digests to this JSON file")
    data.set_defaults(handler=_run_data)

    train = commands.add_parser("train", help="train one network and write metrics, checkpoints and provenance")
    add_train_arguments(train)
    train.set_defaults(handler=_run_train)

    from backmatch.hessian import command as hessian_command

    hessian = commands.add_parser("hessian", help="local Hessian spectra of every block of a network")
    hessian_command.add_arguments(hessian)
    hessian.set_defaults(handler=hessian_command.run)

    from backmatch.backmatching import command as backmatching_command

    backmatching = commands.add_parser("backmatching", help="compare one back-matching pass with one BP step")
    backmatching_command.add_arguments(backmatching)
    backmatching.set_defaults(handler=backmatching_command.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    # torch 2.14's forward-mode AD calls torch.jit.script internally and warns
    # about its deprecation on every run; the warning concerns torch, not the caller.
    warnings.filterwarnings("ignore", message=r".*torch\.jit\.script.*is deprecated", category=FutureWarning)
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    if args.command == "data" and args.url and args.dataset == "all":
        parser.error("--url needs --dataset cifar10 or --dataset cifar100")

    from backmatch.data.cifar import DatasetCorruptedError, DatasetNotFoundError

    try:
        return args.handler(args)
    except KeyboardInterrupt:
        logger.error("interrupted; start the same command again to resume a training run from its last finished epoch")
        return 130
    except (DatasetNotFoundError, DatasetCorruptedError, FileNotFoundError) as error:
        logger.error("%s", error)
        return 1
    except ValueError as error:
        # Invalid settings, flags or a resume state of another run: the message
        # names the value and the fix.
        parser.error(str(error))
    return 0


if __name__ == "__main__":
    sys.exit(main())
