"""One back-matching iteration against one plain gradient (BP) step, block by block.

With gradient steps of size ``1/m_{b,W}`` and ``1/m_{b,z}``, back-matching
equals a gradient step with the per-block rate

    eta_b = eta / (m_{b,W} * prod_{k > b} m_{k,z}),

so the difference between the two parameter sets measures rounding error only.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F

from backmatch.backmatching.algorithm import Loss, back_matching_pass, validate_steps
from backmatch.models.blocks import BlockNetwork


def per_block_rates(eta: float, weight_steps: Sequence[float], input_steps: Sequence[float]) -> list[float]:
    """Return ``eta_b = eta / (m_{b,W} * prod_{k > b} m_{k,z})`` for every block in forward order.

    Example:
        >>> per_block_rates(1.0, [1.0, 2.0, 4.0], [3.0, 5.0, 7.0])
        [0.02857142857142857, 0.07142857142857142, 0.25]
    """
    if len(weight_steps) != len(input_steps):
        raise ValueError(f"{len(weight_steps)} weight steps and {len(input_steps)} input steps; give one of each per block")
    rates = []
    above = 1.0
    for weight_step, input_step in zip(reversed(weight_steps), reversed(input_steps)):
        rates.append(eta / (weight_step * above))
        above *= input_step
    return rates[::-1]


def gradient_step(
    model: BlockNetwork, images: torch.Tensor, labels: torch.Tensor, rates: Sequence[float], loss: Loss = F.cross_entropy
) -> list[dict[str, torch.Tensor]]:
    """Return the parameters of every block after one gradient step with rate ``rates[b]`` for block ``b``.

    The gradient comes from ordinary autograd through the modules of a copy of
    ``model``, independently of the functional calls of back-matching.
    """
    twin = copy.deepcopy(model)
    twin.zero_grad(set_to_none=True)
    loss(twin(images), labels).backward()
    updated = []
    for block, rate in zip(twin.blocks(), rates):
        updated.append({name: (value - rate * value.grad).detach() for name, value in block.module.named_parameters()})
    return updated


def compare_with_gradient_step(
    model: BlockNetwork,
    images: torch.Tensor,
    labels: torch.Tensor,
    eta: float,
    weight_steps: Sequence[float] | None = None,
    input_steps: Sequence[float] | None = None,
    loss: Loss = F.cross_entropy,
) -> list[dict[str, Any]]:
    """Compare one gradient-mode back-matching pass with the equivalent gradient step, per block.

    Returns:
        One record per block: ``block``, ``kind``, ``max_abs_diff`` (largest
        absolute difference over all parameters of the block: weight, bias,
        batch-norm scale and shift), ``max_abs_update`` (largest absolute entry
        of the gradient step, for scale) and ``rate`` (``eta_b``).
    """
    blocks = model.blocks()
    weight_steps = validate_steps(weight_steps, len(blocks), "weight_steps")
    input_steps = validate_steps(input_steps, len(blocks), "input_steps")
    rates = per_block_rates(eta, weight_steps, input_steps)

    matched = back_matching_pass(model, images, labels, eta, weight_steps, input_steps, mode="gradient", loss=loss)
    stepped = gradient_step(model, images, labels, rates, loss)

    records = []
    for block, rate, after_matching, after_step in zip(blocks, rates, matched.parameters, stepped):
        before = dict(block.module.named_parameters())
        difference = max(float((after_matching[name] - after_step[name]).abs().max()) for name in after_step)
        update = max(float((after_step[name] - before[name].detach()).abs().max()) for name in after_step)
        records.append(
            {"block": block.name, "kind": block.kind, "max_abs_diff": difference, "max_abs_update": update, "rate": rate}
        )
    return records


def random_steps(count: int, seed: int, low: float = 0.5, high: float = 2.0) -> tuple[list[float], list[float]]:
    """Draw ``m_{b,W}`` and ``m_{b,z}`` for ``count`` blocks uniformly from ``[low, high]``.

    Example:
        >>> weights, inputs = random_steps(3, seed=0)
        >>> len(weights), all(0.5 <= m <= 2.0 for m in weights + inputs)
        (3, True)
    """
    if not 0 < low <= high or not math.isfinite(high):
        raise ValueError(f"step range [{low}, {high}] is invalid; need 0 < low <= high")
    generator = torch.Generator().manual_seed(seed)
    values = low + (high - low) * torch.rand(2, count, generator=generator, dtype=torch.float64)
    return values[0].tolist(), values[1].tolist()
