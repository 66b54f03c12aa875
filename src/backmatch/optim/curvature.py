"""Closed-form scalar curvatures ``m ~ trace / dim`` of the local Hessians of a block.

Scale-amended SGD needs, for every block and step, one number for ``H_W`` and one
for ``H_z``. They follow from statistics of the forward pass (``N`` counts
samples times output positions before pooling):

- without batch norm, unit ``i``: ``m_{W,i} = s^2 rho_i * sum ||input patch||^2 / fan_in``;
- with batch norm: ``m_{W,i} = gamma_i^2 rho_i N / ||w_i||^2``;
- ``m_z = (1 / (C_in N_in)) * sum_i s_i^2 rho_i * sum_taps w_i[tap]^2 * N_tap``,

where ``rho_i`` is the fraction of the ``N`` positions through which a gradient
flows to unit ``i``: the ReLU is active there and, with a max-pool, the pool
selected the position. The gain ``s_i`` is ``gamma_i / sigma_i`` with batch norm
(``sigma_i`` the batch standard deviation), ``scale`` on a residual branch and 1
otherwise. ``N_in`` counts input positions, and ``N_tap`` counts the positions at
which a kernel tap falls inside the unpadded input (``N`` for every tap of a
linear layer). Away from the border
the last formula is ``||W||_F^2 / C_in`` times ``rho`` and ``N / N_in = 1 / stride^2``. A residual block adds
the identity: ``m_z = 1 + (the branch's value)``. ``m_W`` of the block is the mean
of ``m_{W,i}`` over units.

Note:
    The formulas assume that the active units are independent of the input
    patches and, with batch norm, that the patch covariance is isotropic. The residual ``m_z`` drops the cross term ``2 trace(J_G) / dim``. How much this
    costs is measured against Hutchinson estimates of the exact traces.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch

from backmatch.models.blocks import Block
from backmatch.optim.statistics import BlockStatistics, StatisticsRecorder, batch_variance, conv_geometry


@dataclass(frozen=True)
class Curvature:
    """Scalar curvatures of one block.

    Attributes:
        m_w: mean over units of ``m_{W,i}``.
        m_z: scalar curvature of ``H_z``.
        m_w_per_unit: ``m_{W,i}`` for every output unit.
    """

    m_w: float
    m_z: float
    m_w_per_unit: torch.Tensor


def closed_form_curvature(block: Block, statistics: BlockStatistics) -> Curvature:
    """Compute ``m_W`` and ``m_z`` of ``block`` from forward statistics.

    This is the reference form, one block at a time.
    :class:`~backmatch.optim.batched_curvature.BatchedClosedForm` computes the
    same numbers for all blocks of a network with fewer tensor operations.

    Example:
        >>> from backmatch.models.blocks import LinearBlock
        >>> layer = LinearBlock(2, 1, relu=False)
        >>> with torch.no_grad():
        ...     _ = layer.layer.weight.copy_(torch.tensor([[3.0, 4.0]]))
        >>> block = Block("fc", "linear", layer, layer.layer.weight)
        >>> stats = BlockStatistics(2, 2, 2, None, None, 2, patch_energy=torch.tensor(8.0))
        >>> curvature = closed_form_curvature(block, stats)
        >>> curvature.m_w, curvature.m_z
        (4.0, 12.5)
    """
    weight_sq = block.weight.detach().float().square()
    units, in_channels = weight_sq.shape[:2]
    fan_in = weight_sq[0].numel()
    row_norms = weight_sq.reshape(units, -1).sum(dim=1)

    rho = statistics.active_fraction(units, weight_sq.device)
    if block.batch_norm is not None:
        gamma = block.batch_norm.weight
        # A batch norm without affine parameters has gain 1.
        gamma_sq = torch.ones(units, device=weight_sq.device) if gamma is None else gamma.detach().float().square()
        scale_sq = gamma_sq / (batch_variance(block, statistics) + block.batch_norm.eps)
        m_w_units = gamma_sq * rho * statistics.positions / row_norms.clamp_min(torch.finfo(torch.float32).tiny)
    else:
        scale = block.module.scale if block.kind == "residual" else 1.0
        scale_sq = scale**2
        m_w_units = (scale_sq * statistics.patch_energy / fan_in) * rho

    # trace(H_z) sums, over output positions, the squared weights of the taps that
    # fall inside the input; zero padding drops the others at the border.
    coefficients = scale_sq * rho
    if statistics.input_size is not None:
        _, taps = conv_geometry(block.layer, *statistics.input_size, weight_sq.device)
        tap_energy = torch.einsum("i,ict->t", coefficients, weight_sq.reshape(units, in_channels, -1))
        trace = (tap_energy * taps.flatten()).sum() * statistics.samples
    else:
        trace = (coefficients * row_norms).sum() * statistics.positions
    m_z = float(trace) / (in_channels * statistics.input_positions)
    if block.kind == "residual":
        m_z += 1.0
    return Curvature(m_w=float(m_w_units.mean()), m_z=m_z, m_w_per_unit=m_w_units)


def measure_closed_form(block: Block, inputs: torch.Tensor) -> Curvature:
    """Run a copy of ``block`` on ``inputs`` in train mode and return its closed-form curvature.

    The copy keeps the running statistics of the block's batch norm unchanged.
    """
    module = copy.deepcopy(block.module).train()
    twin = Block(block.name, block.kind, module, dict(module.named_parameters())[_weight_name(block)])
    recorder = StatisticsRecorder([twin])
    try:
        with torch.enable_grad():
            module(inputs)
    finally:
        recorder.remove()
    return closed_form_curvature(twin, recorder.statistics[block.name])


def _weight_name(block: Block) -> str:
    return next(name for name, value in block.module.named_parameters() if value is block.weight)
