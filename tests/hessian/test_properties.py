"""Conditioning claims: orthonormal init, the residual bound and batch-norm weight scaling."""

import pytest
import torch
from torch import nn

from backmatch.hessian.factors import jacobian_factors
from backmatch.hessian.iterative import residual_jacobian_norm
from backmatch.hessian.structured import input_spectrum, weight_spectrum
from backmatch.models.blocks import Block, ConvBlock, LinearBlock, ResidualBlock


def float64_block(module: nn.Module, kind: str) -> Block:
    module = module.to(torch.float64).train()
    weight = module.branch.layer.weight if kind == "residual" else module.layer.weight
    return Block("block", kind, module, weight)


def orthonormal_linear(in_features: int, out_features: int, relu: bool) -> Block:
    torch.manual_seed(0)
    block = float64_block(LinearBlock(in_features, out_features, relu=relu), "linear")
    # Orthogonalise in float64, so the rows are orthonormal to rounding.
    nn.init.orthogonal_(block.weight)
    return block


def test_orthonormal_input_hessian_condition_one():
    block = orthonormal_linear(8, 8, relu=False)
    summary = input_spectrum(jacobian_factors(block, torch.randn(5, 8, dtype=torch.float64)))

    assert abs(summary.condition_number - 1.0) < 1e-12
    assert summary.null_dim == 0


def test_orthonormal_relu_spectrum_is_one():
    block = orthonormal_linear(8, 8, relu=True)
    summary = input_spectrum(jacobian_factors(block, torch.randn(5, 8, dtype=torch.float64)))

    assert abs(summary.lambda_max - 1.0) < 1e-12
    assert abs(summary.lambda_min - 1.0) < 1e-12
    assert summary.null_reasons.keys() == {"rank bound"}


def test_orthonormal_wide_layer_condition_one():
    block = orthonormal_linear(12, 4, relu=False)
    summary = input_spectrum(jacobian_factors(block, torch.randn(3, 12, dtype=torch.float64)))

    assert abs(summary.condition_number - 1.0) < 1e-12
    assert summary.null_reasons == {"rank bound": 3 * 8}


def test_gaussian_init_is_worse_conditioned():
    torch.manual_seed(0)
    module = LinearBlock(32, 32, relu=False)
    nn.init.normal_(module.layer.weight, std=32**-0.5)
    block = float64_block(module, "linear")
    summary = input_spectrum(jacobian_factors(block, torch.randn(4, 32, dtype=torch.float64)))

    assert summary.condition_number > 10.0


@pytest.mark.parametrize("scale, seed", [(0.3, 0), (0.6, 1), (0.9, 2)])
def test_residual_condition_bound(scale, seed):
    torch.manual_seed(seed)
    block = float64_block(ResidualBlock(6, relu=True, scale=scale), "residual")
    nn.init.orthogonal_(block.weight)
    inputs = torch.randn(8, 6, dtype=torch.float64)
    e = residual_jacobian_norm(block, inputs)
    summary = input_spectrum(jacobian_factors(block, inputs))

    assert e < 1.0
    assert summary.condition_number <= ((1 + e) / (1 - e)) ** 2 * (1 + 1e-9)


def bn_conv(eps: float) -> Block:
    torch.manual_seed(0)
    module = ConvBlock(2, 3, batch_norm=True, pool=True)
    module.batch_norm.eps = eps
    return float64_block(module, "conv")


@pytest.mark.parametrize("eps, tolerance", [(1e-30, 1e-9), (1e-5, 1e-3)])
def test_bn_weight_hessian_scales_inverse_square(eps, tolerance):
    block = bn_conv(eps)
    inputs = torch.randn(4, 2, 6, 6, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    before = weight_spectrum(jacobian_factors(block, inputs))
    c = 3.0
    with torch.no_grad():
        block.weight.mul_(c)
    after = weight_spectrum(jacobian_factors(block, inputs))

    assert abs(after.lambda_max * c**2 / before.lambda_max - 1) < tolerance
    assert abs(after.lambda_min * c**2 / before.lambda_min - 1) < tolerance
    assert abs(after.mean_eigenvalue * c**2 / before.mean_eigenvalue - 1) < tolerance
    assert after.null_reasons == before.null_reasons
