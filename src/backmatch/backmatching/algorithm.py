"""Back-matching propagation: one iteration over the blocks of a network.

A network is a chain ``z_b = F_b(W_b, z_{b-1})`` with loss ``L(z_B, y)``. One
iteration runs the forward pass, sets the top target ``t_B = z_B - eta dL/dz_B``
and then, for ``b = B .. 1``, with the back-matching loss
``l_b(W, z) = 1/2 ||F_b(W, z) - t_b||^2`` summed over the batch:

- new parameters of block ``b`` = the minimiser of ``l_b(., z_{b-1})``;
- target of the block below ``t_{b-1}`` = the minimiser of ``l_b(W_b_old, .)``,
  at the old parameters.

In ``"gradient"`` mode each minimisation is replaced by one gradient step from
the current point, of size ``1 / m_{b,W}`` for the parameters and ``1 / m_{b,z}``
for the input. With all steps 1 the new parameters equal one plain gradient step
``W_b - eta dL/dW_b``. With other steps they equal a gradient step with the
per-block rate ``eta / (m_{b,W} * prod_{k > b} m_{k,z})``. ``"exact"`` mode solves
both least-squares problems and applies to linear blocks without activation only.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, grad

from backmatch.hessian.operators import functional_block
from backmatch.models.blocks import Block, BlockNetwork

MODES = ("gradient", "exact")

Loss = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass
class BackMatchingPass:
    """The result of one back-matching iteration.

    Attributes:
        parameters: per block, in forward order, the new value of every
            parameter, keyed by its name in ``block.module.named_parameters()``.
        activations: ``z_0 .. z_B`` of the forward pass (detached).
        targets: ``t_0 .. t_B``; ``targets[b]`` is the target of ``z_b``.
    """

    parameters: list[dict[str, torch.Tensor]]
    activations: list[torch.Tensor]
    targets: list[torch.Tensor]


def back_matching_loss(block_twin: nn.Module, parameters: dict[str, torch.Tensor], inputs: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Return ``l_b = 1/2 ||F_b(parameters, inputs) - target||^2``, summed over the batch."""
    output = functional_call(block_twin, parameters, (inputs,))
    return 0.5 * (output - target).square().sum()


def back_matching_pass(
    model: BlockNetwork,
    images: torch.Tensor,
    labels: torch.Tensor,
    eta: float,
    weight_steps: Sequence[float] | None = None,
    input_steps: Sequence[float] | None = None,
    mode: str = "gradient",
    loss: Loss = F.cross_entropy,
) -> BackMatchingPass:
    """Run one back-matching iteration and return the new parameters and the targets.

    The model is not changed. Batch norm follows the mode of each module: in
    train mode it normalises with the statistics of ``images`` and no running
    statistics are updated.

    Args:
        model: the network.
        images: the input batch ``z_0``.
        labels: targets of ``loss``.
        eta: step size of the top target ``t_B = z_B - eta dL/dz_B``.
        weight_steps: ``m_{b,W}`` per block in forward order; all 1 when ``None``.
        input_steps: ``m_{b,z}`` per block in forward order; all 1 when ``None``.
        mode: ``"gradient"`` (one step of size ``1/m`` per minimisation) or
            ``"exact"`` (least-squares solutions, linear blocks only).
        loss: ``L(z_B, labels)``; cross-entropy averaged over the batch by default.

    Raises:
        ValueError: unknown mode, step lists of the wrong length or with
            non-positive entries, or ``"exact"`` on a block that is not linear
            without activation.
    """
    if mode not in MODES:
        raise ValueError(f"mode {mode!r} is unknown; use one of {MODES}")
    blocks = model.blocks()
    weight_steps = validate_steps(weight_steps, len(blocks), "weight_steps")
    input_steps = validate_steps(input_steps, len(blocks), "input_steps")
    if mode == "exact":
        for block in blocks:
            _require_exact_block(block)

    twins = [functional_block(block) for block in blocks]
    parameters = [{name: value.detach() for name, value in twin.named_parameters()} for twin in twins]
    activations = _forward(twins, parameters, images.detach())

    top = activations[-1].clone().requires_grad_(True)
    (top_gradient,) = torch.autograd.grad(loss(top, labels), top)
    targets: list[torch.Tensor] = [None] * len(activations)  # type: ignore[list-item]
    targets[-1] = (activations[-1] - eta * top_gradient).detach()

    new_parameters: list[dict[str, torch.Tensor]] = [None] * len(blocks)  # type: ignore[list-item]
    for index in reversed(range(len(blocks))):
        inputs, target = activations[index], targets[index + 1]
        if mode == "gradient":
            new, below = _gradient_step(twins[index], parameters[index], inputs, target, weight_steps[index], input_steps[index])
        else:
            new, below = _least_squares(blocks[index], parameters[index], inputs, target)
        new_parameters[index] = new
        targets[index] = below
    return BackMatchingPass(parameters=new_parameters, activations=activations, targets=targets)


def validate_steps(steps: Sequence[float] | None, count: int, name: str) -> list[float]:
    """Return one positive step curvature per block, all 1 when ``steps`` is ``None``."""
    if steps is None:
        return [1.0] * count
    steps = [float(step) for step in steps]
    if len(steps) != count:
        raise ValueError(f"{name} has {len(steps)} entries but the network has {count} blocks; give one per block")
    if any(step <= 0 for step in steps):
        raise ValueError(f"{name} {steps} contains a non-positive entry; every curvature m must be positive")
    return steps


def _forward(twins: list[nn.Module], parameters: list[dict[str, torch.Tensor]], images: torch.Tensor) -> list[torch.Tensor]:
    activations = [images]
    with torch.no_grad():
        for twin, params in zip(twins, parameters):
            activations.append(functional_call(twin, params, (activations[-1],)))
    return activations


def _gradient_step(
    twin: nn.Module,
    parameters: dict[str, torch.Tensor],
    inputs: torch.Tensor,
    target: torch.Tensor,
    weight_step: float,
    input_step: float,
) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """Take one step of size ``1/m_W`` on the parameters and ``1/m_z`` on the input, both from the old point."""
    parameter_gradient, input_gradient = grad(back_matching_loss, argnums=(1, 2))(twin, parameters, inputs, target)
    new = {name: value - parameter_gradient[name] / weight_step for name, value in parameters.items()}
    return new, inputs - input_gradient / input_step


def _require_exact_block(block: Block) -> None:
    if block.kind != "linear" or block.has_relu or block.batch_norm is not None:
        details = f"{block.kind} block"
        if block.has_relu:
            details += " with ReLU"
        if block.batch_norm is not None:
            details += " with batch norm"
        raise ValueError(
            f"exact back-matching solves least-squares problems and needs linear blocks without activation, "
            f"but block {block.name!r} is a {details}; use mode='gradient' for this network"
        )


def _least_squares(
    block: Block, parameters: dict[str, torch.Tensor], inputs: torch.Tensor, target: torch.Tensor
) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """Return the minimum-norm least-squares weights (and bias) and input target of a linear block.

    The weights solve ``min ||[Z, 1] [W, b]^T - T||``, where a column of ones
    appended to the inputs ``Z`` carries the bias. The input target solves
    ``min ||W_old z_j + b_old - t_j||`` for each sample ``j``, with minimum norm
    where ``W_old`` has a null space.
    """
    layer = block.layer
    weight_name = _parameter_name(block, layer.weight)
    bias_name = _parameter_name(block, layer.bias) if layer.bias is not None else None
    weight = parameters[weight_name]
    bias = parameters[bias_name] if bias_name is not None else None

    flat_inputs = inputs.flatten(1)
    design = flat_inputs if bias is None else torch.cat([flat_inputs, torch.ones_like(flat_inputs[:, :1])], dim=1)
    solution = torch.linalg.pinv(design) @ target
    new = dict(parameters)
    new[weight_name] = solution[: flat_inputs.shape[1]].T.contiguous()
    if bias_name is not None:
        new[bias_name] = solution[-1].contiguous()

    shifted = target if bias is None else target - bias
    below = (torch.linalg.pinv(weight) @ shifted.T).T
    return new, below.reshape(inputs.shape)


def _parameter_name(block: Block, parameter: torch.Tensor) -> str:
    return next(name for name, value in block.module.named_parameters() if value is parameter)
