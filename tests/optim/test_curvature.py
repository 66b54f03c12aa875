"""Closed-form curvatures against Hutchinson estimates of the exact traces, in float64."""

import pytest
import torch

from backmatch.hessian.operators import GaussNewtonOperator, block_function, hutchinson_mean_eigenvalue
from backmatch.models.blocks import Block, ConvBlock, LinearBlock, ResidualBlock
from backmatch.optim.curvature import measure_closed_form


def _block(kind, module):
    weight = module.branch.layer.weight if kind == "residual" else module.layer.weight
    return Block("b", kind, module.double(), weight)


CASES = {
    "linear": lambda: (_block("linear", LinearBlock(32, 24, relu=False)), (64, 32)),
    "linear_relu": lambda: (_block("linear", LinearBlock(32, 24, relu=True)), (64, 32)),
    "conv": lambda: (_block("conv", ConvBlock(4, 6, batch_norm=False, pool=False)), (16, 4, 8, 8)),
    "conv_pool": lambda: (_block("conv", ConvBlock(4, 6, batch_norm=False, pool=True)), (16, 4, 8, 8)),
    "conv_bn": lambda: (_block("conv", ConvBlock(4, 6, batch_norm=True, pool=False)), (16, 4, 8, 8)),
    "conv_bn_pool": lambda: (_block("conv", ConvBlock(4, 6, batch_norm=True, pool=True)), (16, 4, 8, 8)),
    "residual": lambda: (_block("residual", ResidualBlock(24, relu=True, scale=0.5)), (64, 24)),
    "conv_strided": lambda: (_block("conv", _strided(ConvBlock(4, 6, batch_norm=False, pool=False))), (16, 4, 8, 8)),
    "conv_bn_no_running_stats": lambda: (_block("conv", _without_running_stats(ConvBlock(4, 6, batch_norm=True, pool=True))), (16, 4, 8, 8)),
}


def _strided(module):
    module.layer = torch.nn.Conv2d(4, 6, kernel_size=3, stride=2, padding=1)
    return module


def _without_running_stats(module):
    module.batch_norm = torch.nn.BatchNorm2d(module.batch_norm.num_features, track_running_stats=False)
    return module


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("wrt", ["weight", "input"])
def test_closed_form_within_ten_percent_of_hutchinson(case, wrt):
    torch.manual_seed(0)
    block, shape = CASES[case]()
    inputs = torch.randn(*shape, dtype=torch.float64)
    closed = measure_closed_form(block, inputs)
    function, point = block_function(block, inputs, wrt)
    estimate = hutchinson_mean_eigenvalue(GaussNewtonOperator(function, point), 400, torch.Generator().manual_seed(1))
    value = closed.m_w if wrt == "weight" else closed.m_z
    assert value == pytest.approx(estimate, rel=0.10)


def test_measure_keeps_running_statistics():
    block, shape = CASES["conv_bn"]()
    before = block.batch_norm.running_mean.clone()
    measure_closed_form(block, torch.randn(*shape, dtype=torch.float64))
    assert torch.equal(block.batch_norm.running_mean, before)
