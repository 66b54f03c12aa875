"""Structured spectra against autograd Hessians and the dense path."""

import pytest
import torch
from torch import nn

from backmatch.hessian.dense import dense_input_spectrum, dense_weight_spectrum
from backmatch.hessian.factors import jacobian_factors
from backmatch.hessian.operators import GaussNewtonOperator, block_function
from backmatch.hessian.structured import (
    input_hessian_blocks,
    input_spectrum,
    patch_factor_spectrum,
    weight_hessian_blocks,
    weight_spectrum,
)
from backmatch.models.blocks import Block


def relative(actual: float, expected: float) -> float:
    return abs(actual - expected) / abs(expected)


def dense_weight(block, inputs, factors):
    return dense_weight_spectrum(GaussNewtonOperator(*block_function(block, inputs, "weight")), factors)


def dense_input(block, inputs, factors):
    return dense_input_spectrum(GaussNewtonOperator(*block_function(block, inputs, "input")), factors)


def test_weight_blocks_equal_autograd_hessian(case, hessian, case_name):
    block, inputs = case(case_name)
    expected = hessian(block, inputs, "weight")
    assembled = torch.block_diag(*weight_hessian_blocks(jacobian_factors(block, inputs)))

    assert float((assembled - expected).abs().max()) < 1e-12 * float(expected.abs().max())


def test_input_blocks_equal_autograd_hessian(case, hessian, per_sample_case_name):
    block, inputs = case(per_sample_case_name)
    expected = hessian(block, inputs, "input")
    assembled = torch.block_diag(*input_hessian_blocks(jacobian_factors(block, inputs)))

    assert float((assembled - expected).abs().max()) < 1e-12 * float(expected.abs().max())


def test_weight_spectrum_agrees_with_dense(case, case_name):
    block, inputs = case(case_name)
    factors = jacobian_factors(block, inputs)
    structured = weight_spectrum(factors)
    dense = dense_weight(block, inputs, factors)

    assert structured.method == "structured"
    assert dense.method == "dense"
    assert relative(structured.condition_number, dense.condition_number) < 1e-6
    assert relative(structured.lambda_max, dense.lambda_max) < 1e-10
    assert relative(structured.mean_eigenvalue, dense.mean_eigenvalue) < 1e-10
    assert structured.null_dim == dense.null_dim
    assert structured.null_reasons == dense.null_reasons


def test_input_spectrum_agrees_with_dense(case, per_sample_case_name):
    block, inputs = case(per_sample_case_name)
    factors = jacobian_factors(block, inputs)
    structured = input_spectrum(factors)
    dense = dense_input(block, inputs, factors)

    assert relative(structured.condition_number, dense.condition_number) < 1e-6
    assert relative(structured.lambda_max, dense.lambda_max) < 1e-10
    assert relative(structured.mean_eigenvalue, dense.mean_eigenvalue) < 1e-10
    assert structured.null_dim == dense.null_dim
    assert structured.null_reasons == dense.null_reasons


@pytest.mark.parametrize(
    "name, reasons",
    [
        ("linear", {}),
        # 3 units, 4 samples, fan-in 9: 5 rank-bound nulls per unit.
        ("linear_wide", {"rank bound": 15}),
        ("conv_bn", {"bn scale invariance": 3}),
        # 2 units, 2 images x 4 positions = 8 rows, fan-in 27 less the projected w_i: 18 per unit.
        ("conv_bn_few_rows", {"bn scale invariance": 2, "rank bound": 36}),
    ],
)
def test_weight_structural_nulls(case, name, reasons):
    block, inputs = case(name)
    # A large positive shift before the ReLU keeps every position active.
    with torch.no_grad():
        shift = block.layer.bias if block.batch_norm is None else block.batch_norm.bias
        if shift is not None and block.has_relu:
            shift.fill_(1e3)
    summary = weight_spectrum(jacobian_factors(block, inputs))

    assert {reason: count for reason, count in summary.null_reasons.items() if reason != "numerical"} == reasons


def test_dead_unit_nulls(case):
    block, inputs = case("linear_relu")
    with torch.no_grad():
        block.layer.bias[0] = -1e3
    summary = weight_spectrum(jacobian_factors(block, inputs))

    assert summary.null_reasons["dead unit"] == 5
    assert summary.condition_number is not None


def test_chunked_spectrum_is_unchanged(case):
    block, inputs = case("conv_bn_relu_pool")
    factors = jacobian_factors(block, inputs)
    whole = weight_spectrum(factors)
    chunked = weight_spectrum(factors, max_bytes=1)

    assert relative(chunked.condition_number, whole.condition_number) < 1e-10
    assert chunked.null_reasons == whole.null_reasons


def test_eval_mode_has_no_scale_null(case):
    block, inputs = case("conv_bn_relu")
    block.module.batch_norm.running_var.fill_(2.0)
    block.module.eval()
    factors = jacobian_factors(block, inputs)
    structured = weight_spectrum(factors)
    dense = dense_weight(block, inputs, factors)

    assert "bn scale invariance" not in structured.null_reasons
    assert relative(structured.condition_number, dense.condition_number) < 1e-6
    assert structured.null_reasons == dense.null_reasons


def test_dense_input_projects_scale_null(case):
    block, inputs = case("conv_bn")
    summary = dense_input(block, inputs, jacobian_factors(block, inputs))

    assert summary.null_reasons.get("bn scale invariance") == 1


def one_by_one_conv() -> Block:
    layer = nn.Conv2d(2, 3, kernel_size=1, bias=True)
    module = nn.Module()
    module.layer, module.batch_norm, module.activation, module.pool = layer, None, nn.Identity(), None
    module.forward = layer.forward
    module = module.to(torch.float64).train()
    return Block("conv1x1", "conv", module, module.layer.weight)


def test_patch_factor_exact_for_one_by_one_conv():
    torch.manual_seed(0)
    block = one_by_one_conv()
    inputs = torch.randn(2, 2, 3, 3, dtype=torch.float64)
    factors = jacobian_factors(block, inputs)
    approximate = patch_factor_spectrum(factors)
    exact = dense_input(block, inputs, factors)

    assert relative(approximate.lambda_max, exact.lambda_max) < 1e-10
    assert relative(approximate.lambda_min, exact.lambda_min) < 1e-10
    assert relative(approximate.condition_number, exact.condition_number) < 1e-10
    assert relative(approximate.mean_eigenvalue, exact.mean_eigenvalue) < 1e-10


def test_patch_factor_is_marked_approximate(case):
    block, inputs = case("conv_bn_relu_pool")
    summary = patch_factor_spectrum(jacobian_factors(block, inputs))

    assert summary.exact is False
    assert summary.dim == inputs.numel()
    assert "Approximation" in summary.note
