"""Gauss-Newton operators ``J^T J`` of one block, built with ``torch.func``.

The local Hessians of block ``b`` are the Hessians of the back-matching loss
``l_b(W, z) = 1/2 ||F_b(W, z) - t_b||^2`` (summed over the batch) with respect to
the weight and to the block input. At the expansion point ``t_b = F_b(W, z)`` the
residual vanishes, so they equal the Gauss-Newton matrices ``H_W = J_W^T J_W`` and
``H_z = J_z^T J_z``, whatever the block computes.
"""

from __future__ import annotations

import copy
from collections.abc import Callable

import torch
from torch import nn
from torch.func import functional_call, jacrev, jvp, replace_all_batch_norm_modules_, vjp

from backmatch.models.blocks import Block

WRT = ("weight", "input")


def functional_block(block: Block) -> nn.Module:
    """Return a copy of ``block.module`` that ``torch.func`` can call without side effects.

    In train mode the batch norms of the copy keep no running statistics: they
    normalise with batch statistics, exactly like the original, but never write
    running averages. In eval mode they use the stored running statistics.
    """
    twin = copy.deepcopy(block.module)
    if block.module.training:
        replace_all_batch_norm_modules_(twin)
    return twin


def block_function(block: Block, inputs: torch.Tensor, wrt: str) -> tuple[Callable[[torch.Tensor], torch.Tensor], torch.Tensor]:
    """Return ``(f, x0)`` with ``f(x)`` the block output when ``W_b`` or ``z_{b-1}`` is ``x``.

    Args:
        block: the block to differentiate; its current training mode is kept.
        inputs: the block input ``z_{b-1}`` for a batch.
        wrt: ``"weight"`` for ``H_W`` or ``"input"`` for ``H_z``.

    Returns:
        The function and the point ``x0`` (the current weight or the inputs),
        both in the dtype of the block parameters.
    """
    if wrt not in WRT:
        raise ValueError(f"wrt must be one of {WRT}, got {wrt!r}")

    twin = functional_block(block)
    params = {name: value.detach() for name, value in twin.named_parameters()}
    weight_name = next(name for name, value in block.module.named_parameters() if value is block.weight)
    inputs = inputs.detach()

    if wrt == "weight":

        def weight_function(weight: torch.Tensor) -> torch.Tensor:
            return functional_call(twin, {**params, weight_name: weight}, (inputs,))

        return weight_function, params[weight_name]

    def input_function(z: torch.Tensor) -> torch.Tensor:
        return functional_call(twin, params, (z,))

    return input_function, inputs


class GaussNewtonOperator:
    """``v -> J^T J v`` for ``J`` the Jacobian of ``f`` at ``x0``, with ``v`` shaped like ``x0``.

    Example:
        >>> weight = torch.tensor([[1.0, 2.0], [0.0, 1.0]], dtype=torch.float64)
        >>> op = GaussNewtonOperator(lambda z: z @ weight.T, torch.ones(1, 2, dtype=torch.float64))
        >>> op.dense()
        tensor([[1., 2.],
                [2., 5.]], dtype=torch.float64)
    """

    def __init__(self, function: Callable[[torch.Tensor], torch.Tensor], point: torch.Tensor):
        self.function = function
        self.point = point
        self.shape = point.shape
        self.dim = point.numel()
        self._output, self._vjp = vjp(function, point)
        self.output_shape = self._output.shape

    def jvp(self, vector: torch.Tensor) -> torch.Tensor:
        """Return ``J v`` shaped like the block output."""
        return jvp(self.function, (self.point,), (vector.reshape(self.shape),))[1]

    def matvec(self, vector: torch.Tensor) -> torch.Tensor:
        """Return ``J^T J v`` shaped like ``x0``."""
        return self._vjp(self.jvp(vector))[0]

    def dense(self) -> torch.Tensor:
        """Return ``J^T J`` as a ``dim x dim`` matrix; for small blocks only.

        Note:
            ``jacrev`` builds an ``output x output`` basis, so memory grows with
            the square of the output size. ``backmatch.hessian.dense.gauss_newton_matrix``
            builds the same matrix column by column.
        """
        jacobian = jacrev(self.function)(self.point).reshape(-1, self.dim)
        return jacobian.T @ jacobian


def rademacher_like(tensor: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Return a tensor of independent +1/-1 entries with the shape and dtype of ``tensor``."""
    bits = torch.randint(0, 2, tensor.shape, generator=generator, device=tensor.device)
    return (2 * bits - 1).to(tensor.dtype)


def hutchinson_mean_eigenvalue(operator: GaussNewtonOperator, probes: int, generator: torch.Generator) -> float:
    """Estimate ``trace(J^T J) / dim`` as the mean of ``||J v||^2 / dim`` over Rademacher ``v``.

    Each probe costs one forward-mode product. The estimate is unbiased; its
    relative standard deviation shrinks as ``1 / sqrt(probes)``.
    """
    if probes < 1:
        raise ValueError(f"probes must be at least 1, got {probes}")
    total = 0.0
    for _ in range(probes):
        total += float(operator.jvp(rademacher_like(operator.point, generator)).square().sum())
    return total / (probes * operator.dim)


def power_iteration(
    matvec: Callable[[torch.Tensor], torch.Tensor],
    start: torch.Tensor,
    iterations: int = 100,
    rtol: float = 1e-6,
) -> float:
    """Estimate the largest eigenvalue of a symmetric positive semi-definite operator.

    Stops when the Rayleigh quotient changes by less than ``rtol`` relative to the
    previous iterate, or after ``iterations`` products.

    Example:
        >>> matrix = torch.diag(torch.tensor([3.0, 1.0], dtype=torch.float64))
        >>> round(power_iteration(lambda v: matrix @ v, torch.ones(2, dtype=torch.float64)), 6)
        3.0
    """
    vector = start / start.norm()
    estimate = 0.0
    for _ in range(iterations):
        image = matvec(vector)
        previous, estimate = estimate, float((vector * image).sum())
        norm = image.norm()
        if norm == 0:
            return 0.0
        vector = image / norm
        if abs(estimate - previous) <= rtol * abs(estimate):
            break
    return estimate
