"""Forward-pass factors of a block Jacobian, shared by the structured and dense spectra.

For a linear, convolution or residual block the output unit (channel) ``i``
depends on the weight row ``w_i`` only, also with batch norm in train mode
(per-channel statistics), ReLU and max-pooling (per channel). Its Jacobian with
respect to ``w_i`` factors as ``J_i = M_i Q_i`` with

- ``P``: the ``N x fan_in`` matrix of input patches (unfolded convolution
  windows, or the flattened inputs of a linear layer), ``N`` = samples times
  output positions before pooling;
- ``Q_i = g_i P`` without batch norm or with batch norm in eval mode, and
  ``Q_i = g_i (I - 1 1^T / N - yhat_i yhat_i^T / N) P`` with batch norm in train
  mode, where ``yhat_i`` is the normalised output;
- ``M_i`` diagonal, non-zero at the positions through which a gradient reaches
  the block output: ReLU active and, with a max-pool, selected by the pool.

``g_i`` is ``gamma_i / s_i`` with batch norm (``s_i`` the batch or running
standard deviation including eps) times the residual branch scale, and
:class:`JacobianFactors` stores ``g_i`` together with the weights ``M_i^T M_i``.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from backmatch.models.blocks import Block

#: Bytes of float64 scratch memory a structured computation aims to stay under.
DEFAULT_MAX_BYTES = 256 * 2**20


@dataclass
class JacobianFactors:
    """The factors of ``J_i = M_i Q_i`` for every output unit of one block and batch.

    Attributes:
        block: the analysed block (float64).
        inputs: the block input ``z_{b-1}``.
        layer_inputs: the input of the weight layer (flattened for a linear layer).
        weight_matrix: ``W_b`` as a ``units x fan_in`` matrix.
        row_weights: ``(n, units, L)``, the diagonal of ``M_i^T M_i`` without the
            gain: 0 where no gradient passes, else the number of pooling windows
            that select the position (1 without a pool). ``L`` counts output
            positions per sample before pooling (1 for a linear layer).
        gain: ``(units,)``, the factor ``g_i``.
        normalised: ``(n, units, L)``, ``yhat`` of batch norm in train mode, else ``None``.
        residual_scale: the branch scale of a residual block, ``None`` otherwise.
    """

    block: Block
    inputs: torch.Tensor
    layer_inputs: torch.Tensor
    weight_matrix: torch.Tensor
    row_weights: torch.Tensor
    gain: torch.Tensor
    normalised: torch.Tensor | None
    residual_scale: float | None

    @property
    def units(self) -> int:
        return self.weight_matrix.shape[0]

    @property
    def fan_in(self) -> int:
        return self.weight_matrix.shape[1]

    @property
    def samples(self) -> int:
        return self.row_weights.shape[0]

    @property
    def positions(self) -> int:
        """Output positions per sample before pooling (``L``)."""
        return self.row_weights.shape[2]

    @property
    def centred(self) -> bool:
        """Whether batch norm normalises with batch statistics (train mode)."""
        return self.normalised is not None

    def active_rows(self) -> torch.Tensor:
        """Return, per unit, the number of positions through which a gradient passes."""
        return (self.row_weights > 0).sum(dim=(0, 2))

    def patches(self, max_bytes: int = DEFAULT_MAX_BYTES) -> Iterator[tuple[slice, torch.Tensor]]:
        """Yield ``(samples, P_chunk)`` with ``P_chunk`` the ``(len(samples) * L) x fan_in`` patch rows.

        Rows are ordered sample-major, then by output position, as in
        :attr:`row_weights` reshaped to ``(n * L)``.
        """
        row_bytes = self.positions * self.fan_in * 8
        step = max(1, max_bytes // max(1, 4 * row_bytes))
        for start in range(0, self.samples, step):
            chunk = slice(start, min(start + step, self.samples))
            yield chunk, self._patch_rows(self.layer_inputs[chunk])

    def _patch_rows(self, inputs: torch.Tensor) -> torch.Tensor:
        layer = self.block.layer
        if isinstance(layer, nn.Linear):
            return inputs
        unfolded = F.unfold(inputs, layer.kernel_size, dilation=layer.dilation, padding=layer.padding, stride=layer.stride)
        return unfolded.transpose(1, 2).reshape(-1, self.fan_in)


def structured_support(block: Block) -> str | None:
    """Return why the structured factors do not apply to ``block``, or ``None`` when they do.

    They cover linear, convolution and residual blocks whose activation is ReLU
    or the identity, with optional :class:`~torch.nn.BatchNorm2d` and
    :class:`~torch.nn.MaxPool2d`, and convolutions with one group and zero padding.
    """
    inner = block.module.branch if block.kind == "residual" else block.module
    layer = block.layer
    if not isinstance(getattr(inner, "activation", None), (nn.ReLU, nn.Identity)):
        return f"activation {type(getattr(inner, 'activation', None)).__name__} is neither ReLU nor identity"
    if isinstance(layer, nn.Conv2d):
        if layer.groups != 1:
            return f"convolution has {layer.groups} groups"
        if layer.padding_mode != "zeros" or isinstance(layer.padding, str):
            return f"convolution padding {layer.padding!r} in mode {layer.padding_mode!r} is not explicit zero padding"
    elif not isinstance(layer, nn.Linear):
        return f"layer {type(layer).__name__} is neither Linear nor Conv2d"
    if block.batch_norm is not None and not isinstance(block.batch_norm, nn.BatchNorm2d):
        return f"normalisation {type(block.batch_norm).__name__} is not BatchNorm2d"
    pool = getattr(block.module, "pool", None) if block.kind == "conv" else None
    if pool is not None and not isinstance(pool, nn.MaxPool2d):
        return f"pool {type(pool).__name__} is not MaxPool2d"
    return None


def batch_norm_uses_batch_statistics(batch_norm: nn.Module) -> bool:
    """Return whether ``batch_norm`` normalises with batch statistics, as in :func:`F.batch_norm`."""
    return batch_norm.training or batch_norm.running_mean is None


def jacobian_factors(block: Block, inputs: torch.Tensor) -> JacobianFactors:
    """Run ``block`` on ``inputs`` and record the factors of its Jacobian.

    The block and the inputs should be float64. Batch norm follows the mode of
    the module: batch statistics in train mode, running statistics in eval mode.

    Raises:
        ValueError: the block is not covered (see :func:`structured_support`).
    """
    reason = structured_support(block)
    if reason is not None:
        raise ValueError(f"block {block.name!r} has no structured Jacobian factors: {reason}")

    inner = block.module.branch if block.kind == "residual" else block.module
    layer = block.layer
    inputs = inputs.detach()
    layer_inputs = inputs.flatten(1) if isinstance(layer, nn.Linear) and getattr(inner, "flatten", False) else inputs
    units = block.weight.shape[0]

    with torch.no_grad():
        pre_activation = layer(layer_inputs)
        output, gain, normalised = _normalise(block.batch_norm, pre_activation)
        passes = output > 0 if block.has_relu else torch.ones_like(output, dtype=torch.bool)
        selected = _pool_selection(block, torch.relu(output) if block.has_relu else output)

    samples = pre_activation.shape[0]
    row_weights = (passes.to(selected.dtype) * selected).reshape(samples, units, -1)
    scale = float(block.module.scale) if block.kind == "residual" else None
    if scale is not None:
        gain = gain * scale
    if normalised is not None:
        normalised = normalised.reshape(samples, units, -1)
    return JacobianFactors(
        block=block,
        inputs=inputs,
        layer_inputs=layer_inputs,
        weight_matrix=block.weight.detach().reshape(units, -1),
        row_weights=row_weights,
        gain=gain,
        normalised=normalised,
        residual_scale=scale,
    )


def _normalise(batch_norm: nn.Module | None, pre_activation: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Return the batch-norm output, the per-unit gain ``gamma / s`` and ``yhat`` (train mode only)."""
    units = pre_activation.shape[1]
    if batch_norm is None:
        return pre_activation, torch.ones(units, dtype=pre_activation.dtype, device=pre_activation.device), None

    gamma = batch_norm.weight if batch_norm.weight is not None else torch.ones(units, dtype=pre_activation.dtype)
    beta = batch_norm.bias
    dims = (0, 2, 3)
    if batch_norm_uses_batch_statistics(batch_norm):
        # The same kernel the module runs, so the ReLU mask below matches autograd's.
        output = F.batch_norm(pre_activation, None, None, gamma, beta, training=True, eps=batch_norm.eps)
        mean = pre_activation.mean(dim=dims, keepdim=True)
        std = (pre_activation.var(dim=dims, unbiased=False, keepdim=True) + batch_norm.eps).sqrt()
        normalised = (pre_activation - mean) / std
        return output, gamma.detach() / std.flatten(), normalised

    output = F.batch_norm(
        pre_activation, batch_norm.running_mean, batch_norm.running_var, gamma, beta, training=False, eps=batch_norm.eps
    )
    std = (batch_norm.running_var + batch_norm.eps).sqrt()
    return output, gamma.detach() / std, None


def _pool_selection(block: Block, activation: torch.Tensor) -> torch.Tensor:
    """Return, per position before pooling, how many pooling windows select it (all ones without a pool).

    ``F.max_pool2d(..., return_indices=True)`` is the kernel autograd differentiates
    through, so ties are broken exactly as in the backward pass.
    """
    pool = getattr(block.module, "pool", None) if block.kind == "conv" else None
    if pool is None:
        return torch.ones_like(activation)

    _, indices = F.max_pool2d(
        activation,
        pool.kernel_size,
        pool.stride,
        pool.padding,
        pool.dilation,
        ceil_mode=pool.ceil_mode,
        return_indices=True,
    )
    samples, channels, height, width = activation.shape
    counts = torch.zeros(samples, channels, height * width, dtype=activation.dtype, device=activation.device)
    counts.scatter_add_(2, indices.flatten(2), torch.ones_like(indices, dtype=activation.dtype).flatten(2))
    return counts.reshape(activation.shape)


def bn_null_directions(factors: JacobianFactors) -> torch.Tensor:
    """Return a boolean mask of the units whose row ``w_i`` is projected out as a batch-norm null.

    These are the live units (a gradient reaches them) with a non-zero row of a
    block whose batch norm uses batch statistics. With running statistics
    ``w_i`` is not a null direction.
    """
    live = factors.active_rows() > 0
    if not factors.centred:
        return torch.zeros_like(live)
    return live & (factors.weight_matrix.norm(dim=1) > 0)


def weight_structural_nulls(factors: JacobianFactors) -> tuple[dict[str, int], torch.Tensor]:
    """Count the structural nulls of ``H_W`` by reason and return the per-unit rank bound.

    Returns:
        The counts by reason, and per unit the number of ``"rank bound"``
        nulls, ``max(0, d_i - r_i)`` with ``r_i`` active positions and ``d_i``
        the fan-in, less one for a projected batch-norm direction.
    """
    active = factors.active_rows()
    dead = active == 0
    projected = bn_null_directions(factors)
    effective = factors.fan_in - projected.long()
    rank_bound = torch.where(dead, torch.zeros_like(active), (effective - active).clamp_min(0))
    counts = {
        "dead unit": int(dead.sum()) * factors.fan_in,
        "bn scale invariance": int(projected.sum()),
        "rank bound": int(rank_bound.sum()),
    }
    return counts, rank_bound


def input_scale_invariant(factors: JacobianFactors) -> bool:
    """Return whether the block output is invariant to scaling the whole batch input ``z``.

    With batch norm on batch statistics and no bias before it,
    ``F(W, c z) = F(W, z)`` for ``c > 0`` (exactly for eps = 0, nearly so
    otherwise), so ``z`` is a null direction of ``H_z``, as ``w_i`` is of ``H_W``.
    """
    return factors.centred and factors.block.layer.bias is None and bool(factors.inputs.norm() > 0)


def input_structural_nulls(factors: JacobianFactors) -> dict[str, int]:
    """Count the structural nulls of ``H_z`` by reason.

    A linear block without batch norm has ``in - min(r_j, in)`` ``"rank bound"``
    nulls in sample ``j``, where ``r_j`` units are active, because its per-sample
    Jacobian ``D_j W`` has ``r_j`` non-zero rows. A block that
    :func:`input_scale_invariant` marks has one ``"bn scale invariance"`` null,
    the batch input ``z`` itself. Other blocks have none that the forward pass reveals.
    """
    block = factors.block
    if input_scale_invariant(factors):
        return {"bn scale invariance": 1}
    if block.kind != "linear" or block.batch_norm is not None:
        return {}
    active = (factors.row_weights[:, :, 0] > 0).sum(dim=1)
    return {"rank bound": int((factors.fan_in - active.clamp_max(factors.fan_in)).sum())}


def householder_vectors(rows: torch.Tensor) -> torch.Tensor:
    """Return ``v`` per row such that ``I - 2 v v^T / (v^T v)`` maps ``row / ||row||`` onto ``-/+ e_0``.

    The reflection is orthogonal and symmetric, so its columns ``1..d-1`` are an
    orthonormal basis of the complement of the row.
    """
    unit = rows / rows.norm(dim=-1, keepdim=True)
    sign = torch.where(unit[..., :1] >= 0, 1.0, -1.0).to(rows.dtype)
    vectors = unit.clone()
    vectors[..., :1] += sign
    return vectors


def reflect_both_sides(matrices: torch.Tensor, vectors: torch.Tensor) -> torch.Tensor:
    """Return ``H A H`` for ``H = I - 2 v v^T / (v^T v)``, batched over leading dimensions."""
    scale = 2.0 / (vectors * vectors).sum(dim=-1, keepdim=True)
    left = matrices - (scale * vectors).unsqueeze(-1) * (vectors.unsqueeze(-2) @ matrices)
    return left - (left @ vectors.unsqueeze(-1)) * (scale * vectors).unsqueeze(-2)


def project_out_rows(matrices: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """Return ``U^T A U`` with ``U`` an orthonormal basis of the complement of each row, shape ``d-1``.

    Example:
        >>> eye = torch.eye(3, dtype=torch.float64)
        >>> project_out_rows(eye, torch.tensor([0.0, 1.0, 1.0], dtype=torch.float64)).shape
        torch.Size([2, 2])
    """
    return reflect_both_sides(matrices, householder_vectors(rows))[..., 1:, 1:]


def chunk_size(item_bytes: int, max_bytes: int) -> int:
    """Return how many items of ``item_bytes`` fit in ``max_bytes``, at least 1."""
    return max(1, math.floor(max_bytes / max(1, item_bytes)))
