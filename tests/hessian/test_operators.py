"""Gauss-Newton operators against brute-force autograd Hessians of the back-matching loss."""

import pytest
import torch

from backmatch.hessian.dense import gauss_newton_matrix
from backmatch.hessian.operators import GaussNewtonOperator, block_function


def relative_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    return float((actual - expected).abs().max() / expected.abs().max())


@pytest.mark.parametrize("wrt", ["weight", "input"])
def test_operator_equals_autograd_hessian(case, hessian, case_name, wrt):
    block, inputs = case(case_name)
    expected = hessian(block, inputs, wrt)
    operator = GaussNewtonOperator(*block_function(block, inputs, wrt))

    assert relative_error(operator.dense(), expected) < 1e-12


@pytest.mark.parametrize("name", ["conv_bn_relu_pool", "residual"])
def test_chunked_matrix_equals_dense(case, name):
    block, inputs = case(name)
    operator = GaussNewtonOperator(*block_function(block, inputs, "weight"))
    # A budget this small forces one basis vector per vectorised product.
    chunked = gauss_newton_matrix(operator, max_bytes=1)

    assert relative_error(chunked, operator.dense()) < 1e-12


def test_matvec_equals_dense_product(case):
    block, inputs = case("conv_bn_relu")
    operator = GaussNewtonOperator(*block_function(block, inputs, "input"))
    vector = torch.randn(operator.shape, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    expected = operator.dense() @ vector.reshape(-1)

    assert relative_error(operator.matvec(vector).reshape(-1), expected) < 1e-12
