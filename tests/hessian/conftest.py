"""Tiny float64 blocks of every kind the local-Hessian code supports, with inputs."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from backmatch.models.blocks import Block, ConvBlock, LinearBlock, ResidualBlock

DATA_DIR = Path(__file__).resolve().parents[2] / "resources"


class PlainConv(nn.Module):
    """A convolution block with optional batch norm and no activation or pool."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3, batch_norm: bool = False):
        super().__init__()
        self.layer = nn.Conv2d(in_channels, out_channels, kernel_size, padding=kernel_size // 2, bias=not batch_norm)
        self.batch_norm = nn.BatchNorm2d(out_channels) if batch_norm else None
        self.activation = nn.Identity()
        self.pool = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.layer(x)
        return x if self.batch_norm is None else self.batch_norm(x)


def make_block(module: nn.Module, kind: str, name: str = "block") -> Block:
    """Wrap a float64 module in train mode as a :class:`Block`."""
    module = module.to(torch.float64).train()
    weight = module.branch.layer.weight if kind == "residual" else module.layer.weight
    return Block(name, kind, module, weight)


def _randomise_batch_norm(module: nn.Module, generator: torch.Generator) -> None:
    for child in module.modules():
        if isinstance(child, nn.BatchNorm2d):
            with torch.no_grad():
                child.weight.copy_(0.5 + torch.rand(child.weight.shape, generator=generator, dtype=child.weight.dtype))
                child.bias.copy_(0.3 * torch.randn(child.bias.shape, generator=generator, dtype=child.bias.dtype))


#: name -> (module factory, kind, input shape)
CASES = {
    "linear": (lambda: LinearBlock(5, 4, relu=False), "linear", (6, 5)),
    "linear_relu": (lambda: LinearBlock(5, 7, relu=True), "linear", (6, 5)),
    "linear_wide": (lambda: LinearBlock(9, 3, relu=True), "linear", (4, 9)),
    "linear_flatten": (lambda: LinearBlock(8, 3, relu=False, flatten=True), "linear", (4, 2, 2, 2)),
    "conv": (lambda: PlainConv(2, 3), "conv", (3, 2, 4, 4)),
    "conv_bn": (lambda: PlainConv(2, 3, batch_norm=True), "conv", (3, 2, 4, 4)),
    "conv_bn_relu": (lambda: ConvBlock(2, 3, batch_norm=True, pool=False), "conv", (3, 2, 4, 4)),
    "conv_bn_few_rows": (lambda: ConvBlock(3, 2, batch_norm=True, pool=False), "conv", (2, 3, 2, 2)),
    "conv_relu_pool": (lambda: ConvBlock(2, 3, batch_norm=False, pool=True), "conv", (3, 2, 4, 4)),
    "conv_bn_relu_pool": (lambda: ConvBlock(2, 3, batch_norm=True, pool=True), "conv", (3, 2, 4, 4)),
    "residual": (lambda: ResidualBlock(5, relu=True, scale=0.5), "residual", (6, 5)),
}

#: Cases whose input Hessian has an exact per-sample structure.
PER_SAMPLE_CASES = ("linear", "linear_relu", "linear_wide", "linear_flatten", "residual")


def build_case(name: str, seed: int = 0) -> tuple[Block, torch.Tensor]:
    """Return a seeded float64 block of case ``name`` and a batch of inputs for it."""
    factory, kind, shape = CASES[name]
    torch.manual_seed(seed)
    module = factory()
    generator = torch.Generator().manual_seed(seed + 1)
    _randomise_batch_norm(module, generator)
    inputs = torch.randn(shape, generator=generator, dtype=torch.float64)
    return make_block(module, kind, name), inputs


@pytest.fixture
def data_dir() -> Path:
    """The CIFAR folder of the repository; skips the test when CIFAR-10 is not there."""
    if not (DATA_DIR / "cifar-10-batches-py" / "test_batch").is_file():
        pytest.skip(f"CIFAR-10 is not unpacked in {DATA_DIR}; run backmatch data --dataset cifar10 --data-dir {DATA_DIR}")
    return DATA_DIR


@pytest.fixture
def case():
    """Return :func:`build_case`, which builds a tiny block and its inputs by name."""
    return build_case


def brute_force_hessian(block: Block, inputs: torch.Tensor, wrt: str) -> torch.Tensor:
    """Return the autograd Hessian of ``1/2 ||F(x) - F(x0)||^2`` at ``x0``, flattened to ``dim x dim``."""
    from backmatch.hessian.operators import block_function

    function, point = block_function(block, inputs, wrt)
    target = function(point).detach()

    def loss(x: torch.Tensor) -> torch.Tensor:
        return 0.5 * (function(x) - target).square().sum()

    hessian = torch.autograd.functional.hessian(loss, point.clone())
    return hessian.reshape(point.numel(), point.numel())


@pytest.fixture
def hessian():
    """Return :func:`brute_force_hessian`."""
    return brute_force_hessian


def pytest_generate_tests(metafunc):
    """Parametrise ``case_name`` over every case and ``per_sample_case_name`` over :data:`PER_SAMPLE_CASES`."""
    if "case_name" in metafunc.fixturenames:
        metafunc.parametrize("case_name", sorted(CASES))
    if "per_sample_case_name" in metafunc.fixturenames:
        metafunc.parametrize("per_sample_case_name", PER_SAMPLE_CASES)
