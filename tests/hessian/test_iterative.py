"""Lanczos, Hutchinson and power-iteration estimates against dense results."""

import math

import pytest
import torch

from backmatch.hessian.factors import jacobian_factors
from backmatch.hessian.iterative import hutchinson_mean, lanczos_lambda_max, residual_jacobian_norm
from backmatch.hessian.operators import GaussNewtonOperator, block_function


@pytest.mark.parametrize("wrt", ["weight", "input"])
@pytest.mark.parametrize("name", ["conv_bn_relu_pool", "residual", "linear_relu"])
def test_lanczos_matches_dense(case, name, wrt):
    block, inputs = case(name)
    operator = GaussNewtonOperator(*block_function(block, inputs, wrt))
    expected = float(torch.linalg.eigvalsh(operator.dense())[-1])
    value, note = lanczos_lambda_max(operator, tol=1e-12)

    assert note is None
    assert abs(value - expected) <= 1e-9 * expected


def test_hutchinson_within_six_standard_deviations(case):
    block, inputs = case("conv_bn_relu")
    operator = GaussNewtonOperator(*block_function(block, inputs, "weight"))
    matrix = operator.dense()
    probes = 400
    # Var(v^T A v) = 2 (||A||_F^2 - sum_i A_ii^2) for Rademacher v.
    variance = 2 * (matrix.square().sum() - matrix.diagonal().square().sum())
    spread = float(variance.sqrt()) / math.sqrt(probes) / operator.dim
    expected = float(matrix.trace()) / operator.dim
    estimate = hutchinson_mean(operator, probes, seed=0)

    assert abs(estimate - expected) <= 6 * spread


def test_hutchinson_is_reproducible(case):
    block, inputs = case("residual")
    operator = GaussNewtonOperator(*block_function(block, inputs, "input"))

    assert hutchinson_mean(operator, 8, seed=5) == hutchinson_mean(operator, 8, seed=5)


def test_residual_norm_is_largest_sample_norm(case):
    block, inputs = case("residual")
    factors = jacobian_factors(block, inputs)
    scale = block.module.scale
    branch = scale * factors.row_weights[:, :, 0].unsqueeze(2) * factors.weight_matrix.unsqueeze(0)
    expected = float(torch.linalg.matrix_norm(branch, ord=2).max())

    assert abs(residual_jacobian_norm(block, inputs) - expected) <= 1e-6 * expected


def test_residual_norm_rejects_other_blocks(case):
    block, inputs = case("linear")
    with pytest.raises(ValueError, match="residual blocks only"):
        residual_jacobian_norm(block, inputs)
