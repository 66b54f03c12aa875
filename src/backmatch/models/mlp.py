"""Fully connected networks, plain or residual, with orthonormal or Gaussian init."""

from __future__ import annotations

import math

import torch
from torch import nn

from backmatch.models.blocks import BlockNetwork, LinearBlock, ResidualBlock

INITS = ("orthogonal", "gaussian")


def mlp(
    num_classes: int,
    in_features: int = 3 * 32 * 32,
    width: int = 256,
    depth: int = 8,
    relu: bool = True,
    init: str = "orthogonal",
    residual: bool = False,
    branch_scale: float = 1.0,
) -> BlockNetwork:
    """Build ``in -> width``, ``depth`` hidden ``width -> width`` blocks, then ``width -> classes``.

    Args:
        num_classes: outputs of the final linear classifier.
        in_features: size of the flattened input; 3072 for CIFAR images.
        width: units per hidden block.
        depth: number of ``width x width`` blocks between the input block and
            the classifier.
        relu: ReLU activation after every hidden block; identity when false.
        init: ``"orthogonal"`` (orthonormal rows or columns) or ``"gaussian"``
            (independent normal entries); both use the gain of the activation,
            sqrt(2) for ReLU and 1 otherwise.
        residual: make each hidden block ``z + branch_scale * G(z)``.
        branch_scale: factor on the residual branch; ignored without ``residual``.

    Example:
        >>> net = mlp(10, width=16, depth=2, residual=True)
        >>> [(block.name, block.kind) for block in net.blocks()]
        [('fc_in', 'linear'), ('fc1', 'residual'), ('fc2', 'residual'), ('fc_out', 'linear')]
    """
    if init not in INITS:
        raise ValueError(f"unknown init {init!r}; expected one of {INITS}")
    if width < 1 or depth < 0:
        raise ValueError(f"width must be at least 1 and depth at least 0, got width={width}, depth={depth}")

    named: list[tuple[str, str, nn.Module]] = [("fc_in", "linear", LinearBlock(in_features, width, relu=relu, flatten=True))]
    for number in range(1, depth + 1):
        if residual:
            named.append((f"fc{number}", "residual", ResidualBlock(width, relu=relu, scale=branch_scale)))
        else:
            named.append((f"fc{number}", "linear", LinearBlock(width, width, relu=relu)))
    named.append(("fc_out", "linear", LinearBlock(width, num_classes, relu=False)))

    network = BlockNetwork(named)
    for block in network.blocks():
        gain = math.sqrt(2.0) if block.has_relu else 1.0
        _init_weight(block.weight, init, gain)
        nn.init.zeros_(block.layer.bias)
    return network


def _init_weight(weight: torch.Tensor, init: str, gain: float) -> None:
    if init == "orthogonal":
        nn.init.orthogonal_(weight, gain=gain)
    else:
        nn.init.normal_(weight, std=gain / math.sqrt(weight.shape[1]))
