"""The networks and step variants of the table that compares back-matching with BP."""

from __future__ import annotations

import logging
from typing import Any

import torch

from backmatch.backmatching.comparison import compare_with_gradient_step, random_steps
from backmatch.models import mlp, vgg13
from backmatch.models.blocks import BlockNetwork

logger = logging.getLogger(__name__)

#: Network kinds of the table.
NETWORKS = ("mlp", "residual_mlp", "vgg13_bn", "vgg13")

#: Step variants: ``"unit"`` sets every ``m`` to 1; ``"scaled"`` draws every
#: ``m_{b,W}`` and ``m_{b,z}`` uniformly from [0.5, 2].
STEPS = ("unit", "scaled")

#: Range of the curvatures ``m`` of the ``"scaled"`` variant.
SCALED_STEP_RANGE = (0.5, 2.0)

MLP_WIDTH = 64
MLP_DEPTH = 4
RESIDUAL_BRANCH_SCALE = 0.5
DEFAULT_VGG_WIDTH = 1 / 16


def build_network(name: str, num_classes: int, vgg_width: float = DEFAULT_VGG_WIDTH, in_features: int = 3 * 32 * 32) -> BlockNetwork:
    """Build one network of the table at initialisation (seed it with :func:`torch.manual_seed` first).

    ``mlp`` has width 64 and depth 4, ``residual_mlp`` the same with residual
    hidden blocks and branch scale 0.5, ``vgg13_bn`` and ``vgg13`` are VGG13 with
    and without batch norm at channel multiplier ``vgg_width``.
    """
    if name == "mlp":
        return mlp(num_classes, in_features=in_features, width=MLP_WIDTH, depth=MLP_DEPTH)
    if name == "residual_mlp":
        return mlp(
            num_classes,
            in_features=in_features,
            width=MLP_WIDTH,
            depth=MLP_DEPTH,
            residual=True,
            branch_scale=RESIDUAL_BRANCH_SCALE,
        )
    if name in ("vgg13_bn", "vgg13"):
        return vgg13(num_classes, width=vgg_width, batch_norm=name == "vgg13_bn")
    raise ValueError(f"network {name!r} is unknown; use one of {NETWORKS}")


def table_records(
    networks: tuple[str, ...],
    images: torch.Tensor,
    labels: torch.Tensor,
    num_classes: int,
    eta: float,
    seed: int,
    vgg_width: float = DEFAULT_VGG_WIDTH,
) -> list[dict[str, Any]]:
    """Compare back-matching with BP for every network and step variant, in float64 and train mode.

    Each network is built after ``torch.manual_seed(seed)``; the scaled steps
    are drawn from ``seed`` as well.

    Returns:
        One record per network, step variant and block: ``network``, ``block``,
        ``kind``, ``steps``, ``max_abs_diff``, ``max_abs_update`` and ``rate``.
    """
    images = images.to(torch.float64)
    records = []
    for name in networks:
        torch.manual_seed(seed)
        model = build_network(name, num_classes, vgg_width, in_features=images[0].numel()).to(torch.float64).train()
        count = len(model.blocks())
        for steps in STEPS:
            weight_steps, input_steps = random_steps(count, seed, *SCALED_STEP_RANGE) if steps == "scaled" else ([1.0] * count, [1.0] * count)
            rows = compare_with_gradient_step(model, images, labels, eta, weight_steps, input_steps)
            worst = max(row["max_abs_diff"] for row in rows)
            logger.info("%s, %s steps: largest difference over %d blocks %.2e", name, steps, count, worst)
            records += [{"network": name, "block": row["block"], "kind": row["kind"], "steps": steps, **_values(row)} for row in rows]
    return records


def _values(row: dict[str, Any]) -> dict[str, Any]:
    return {"max_abs_diff": row["max_abs_diff"], "max_abs_update": row["max_abs_update"], "rate": row["rate"]}
