"""Blocks F_b of a network and the record that describes each one.

A network is a chain ``z_b = F_b(W_b, z_{b-1})``. Every model in this package is a
:class:`BlockNetwork`, whose :meth:`~BlockNetwork.blocks` lists the blocks in
forward order, so the local Hessian code, the back-matching code and the
scale-amended optimiser all share one definition of a block and of its weight
``W_b``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

#: Kinds of block. ``"linear"`` and ``"conv"`` are a weight layer followed by
#: optional batch normalisation, activation and max-pooling; ``"residual"`` is
#: ``z + scale * G(z)`` with ``G`` a linear block.
BLOCK_KINDS = ("linear", "conv", "residual")


@dataclass(frozen=True)
class Block:
    """One block ``F_b`` of a network.

    Attributes:
        name: stable identifier, for example ``"conv3"`` or ``"fc"``.
        kind: one of :data:`BLOCK_KINDS`.
        module: the module that maps ``z_{b-1}`` to ``z_b``.
        weight: the weight ``W_b`` whose local Hessian ``H_W`` is analysed and
            whose learning rate scale-amended SGD sets. Biases and batch-norm
            parameters belong to the block but are not part of ``W_b``.
    """

    name: str
    kind: str
    module: nn.Module
    weight: nn.Parameter

    @property
    def layer(self) -> nn.Linear | nn.Conv2d:
        """The linear or convolution layer that owns :attr:`weight`."""
        return self.module.branch.layer if self.kind == "residual" else self.module.layer

    @property
    def batch_norm(self) -> nn.BatchNorm2d | None:
        return None if self.kind == "residual" else self.module.batch_norm

    @property
    def has_relu(self) -> bool:
        inner = self.module.branch if self.kind == "residual" else self.module
        return isinstance(inner.activation, nn.ReLU)

    @property
    def has_pool(self) -> bool:
        return self.kind == "conv" and self.module.pool is not None


class LinearBlock(nn.Module):
    """``activation(W x + b)``, flattening the input first when ``flatten`` is set."""

    def __init__(self, in_features: int, out_features: int, relu: bool = True, flatten: bool = False):
        super().__init__()
        self.flatten = flatten
        self.layer = nn.Linear(in_features, out_features)
        self.batch_norm = None
        # In place: the pre-activation is not needed for the backward pass, and
        # skipping the copy makes a training step measurably faster on the CPU.
        self.activation = nn.ReLU(inplace=True) if relu else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.flatten:
            x = x.flatten(1)
        return self.activation(self.layer(x))


class ConvBlock(nn.Module):
    """3x3 convolution, optional batch norm, ReLU and optional 2x2 max-pool."""

    def __init__(self, in_channels: int, out_channels: int, batch_norm: bool, pool: bool):
        super().__init__()
        # A bias before batch norm would be cancelled by the mean subtraction.
        self.layer = nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1, bias=not batch_norm)
        self.batch_norm = nn.BatchNorm2d(out_channels) if batch_norm else None
        self.activation = nn.ReLU(inplace=True)
        self.pool = nn.MaxPool2d(2) if pool else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.layer(x)
        if self.batch_norm is not None:
            x = self.batch_norm(x)
        x = self.activation(x)
        if self.pool is not None:
            x = self.pool(x)
        return x


class ResidualBlock(nn.Module):
    """``z + scale * G(z)`` with ``G`` a square :class:`LinearBlock`."""

    def __init__(self, width: int, relu: bool = True, scale: float = 1.0):
        super().__init__()
        self.branch = LinearBlock(width, width, relu=relu)
        self.scale = scale

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return z + self.scale * self.branch(z)


class BlockNetwork(nn.Module):
    """A chain of named blocks; the forward pass applies them in order."""

    def __init__(self, named_blocks: list[tuple[str, str, nn.Module]]):
        super().__init__()
        self._names = [name for name, _, _ in named_blocks]
        self._kinds = [kind for _, kind, _ in named_blocks]
        for _, kind, _ in named_blocks:
            if kind not in BLOCK_KINDS:
                raise ValueError(f"unknown block kind {kind!r}; expected one of {BLOCK_KINDS}")
        self.layers = nn.ModuleList(module for _, _, module in named_blocks)

    def blocks(self) -> list[Block]:
        """Return the blocks in forward order, the classifier last."""
        result = []
        for name, kind, module in zip(self._names, self._kinds, self.layers):
            layer = module.branch.layer if kind == "residual" else module.layer
            result.append(Block(name=name, kind=kind, module=module, weight=layer.weight))
        return result

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for module in self.layers:
            x = module(x)
        return x
