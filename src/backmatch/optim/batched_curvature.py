"""The closed-form curvatures of all blocks of a network, computed together.

Scale-amended SGD needs ``m_W`` and ``m_z`` of every block on every step.
Computed one block at a time (:func:`~backmatch.optim.curvature.closed_form_curvature`),
they take about a dozen small tensor operations per block, and on the CPU the
dispatch of those operations costs more than their arithmetic. :class:`BatchedClosedForm` writes
every formula as an operation on one vector over the output units of all
blocks. A step then costs one reduction per block, the norm of the weight over
input channels, one product per block without batch norm, and a fixed number
of operations for the network. A batch norm whose variance cannot be recovered
from its running variance costs one more forward of its layer. The
batch-norm variances come from :class:`~backmatch.optim.batch_variance.BatchVariances`.

Every unit ``i`` of block ``b`` gets a gain ``g_i`` (the batch-norm ``gamma_i``,
or the residual ``scale``, or 1), a variance ``v_i`` (the batch-norm batch
variance, or 1) and a numerator ``n_i`` (``N`` with batch norm, ``sum ||input
patch||^2 / fan_in`` without). Then, with ``rho_i`` the active fraction:

- ``m_{W,i} = rho_i g_i^2 n_i / d_i``, where ``d_i = ||w_i||^2`` with batch
  norm and 1 without;
- ``m_{z,b} = sum_i rho_i (g_i^2 / v_i) q_i`` (plus 1 for a residual block),
  where ``q_i = sum_{c, tap} w_i[c, tap]^2 * taps[tap] / (C_in * input
  positions per image)`` and ``taps`` counts the output positions at which a
  kernel tap falls inside the unpadded input (1 for a linear layer).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from backmatch.models.blocks import Block
from backmatch.optim.batch_variance import BatchVariances
from backmatch.optim.curvature import Curvature
from backmatch.optim.statistics import BlockStatistics, as_float32, conv_geometry


@dataclass
class _Layout:
    """Constants of one network and one set of batch shapes, one entry per unit unless noted."""

    #: Per unit and kernel tap (flat), the weight of the squared tap norm in ``q_i``.
    tap_weights: torch.Tensor
    #: Per unit and kernel tap (flat), the index of the unit.
    tap_units: torch.Tensor
    #: Per block, the gain ``g_i`` that applies without batch norm or its
    #: affine parameters (the residual scale or 1).
    fixed_gains: list[torch.Tensor]
    #: Per block, ones that stand in for ``active`` without ReLU.
    unit_ones: list[torch.Tensor]
    #: Per block, 1 / fan_in.
    inverse_fan_in: list[float]
    #: Per block, ``N`` for every unit, the numerator that applies with batch norm.
    position_counts: list[torch.Tensor]
    #: 1 / (positions on which ``active`` was counted), or 1 without ReLU.
    inverse_counted: torch.Tensor
    #: Whether the unit's block has batch norm.
    batch_normalised: torch.Tensor
    #: Per unit, the index of the block that owns it.
    unit_blocks: torch.Tensor
    #: Zeros of shape (units, 2), the template of per-unit sums.
    unit_pairs: torch.Tensor
    #: Per block, [1 / units, 1] and [0, 1 if residual else 0], applied to the sums over units.
    block_scale: torch.Tensor
    block_offset: torch.Tensor
    units: list[int]


class BatchedClosedForm:
    """Compute :class:`Curvature` of every block of a network from one forward pass.

    The result equals :func:`~backmatch.optim.curvature.closed_form_curvature`
    applied block by block, up to float32 rounding and the rounding of the
    recovered batch-norm variances (see
    :data:`~backmatch.optim.batch_variance.RECOVERY_TOLERANCE`). Under autocast
    the recovered variance is that of batch norm's lower-precision input, which
    the reference recomputes in float32.

    Args:
        blocks: the blocks, in the order of the statistics passed to :meth:`__call__`.

    Example:
        >>> from backmatch.models import mlp
        >>> from backmatch.optim.statistics import StatisticsRecorder
        >>> net = mlp(10, in_features=8, width=4, depth=1)
        >>> recorder = StatisticsRecorder(net.blocks())
        >>> _ = net(torch.randn(16, 8))
        >>> batched = BatchedClosedForm(net.blocks())
        >>> curvatures = batched([recorder.statistics[block.name] for block in net.blocks()])
        >>> len(curvatures), curvatures[0].m_w_per_unit.shape
        (3, torch.Size([4]))

    Note:
        The constants depend on the batch shapes, so they are rebuilt whenever
        the shapes change (for example on a smaller last batch) and reused
        otherwise, and they follow a change of a residual block's ``scale``.
    """

    def __init__(self, blocks: list[Block]):
        self.blocks = blocks
        self._weights = [block.weight for block in blocks]
        # Block properties look modules up on every access, so read them once.
        self._batch_norms = [block.batch_norm for block in blocks]
        #: The batch-norm variances of the units, kept across steps.
        self.variances = BatchVariances(blocks)
        self._layout_key: tuple | None = None
        self._layout: _Layout | None = None

    @torch.no_grad()
    def __call__(self, statistics: list[BlockStatistics]) -> list[Curvature]:
        if len(statistics) != len(self.blocks):
            raise ValueError(
                f"expected statistics for {len(self.blocks)} blocks, got {len(statistics)}; "
                "pass one BlockStatistics per block, in the order of the blocks"
            )
        layout = self._layout_for(statistics)

        # Reducing over input channels first reads each weight once and writes
        # only (units, taps) values, which is several times faster on the CPU
        # than squaring the whole weight.
        tap_energies = torch.cat([
            torch.linalg.vector_norm(as_float32(weight), dim=1).reshape(-1)
            for weight in self._weights
        ]).square()
        weighted = torch.stack([tap_energies, tap_energies * layout.tap_weights], dim=1)
        row_norms, tap_terms = torch.zeros_like(layout.unit_pairs).index_add_(0, layout.tap_units, weighted).unbind(1)

        active = torch.cat([
            stats.active if stats.active is not None else ones
            for stats, ones in zip(statistics, layout.unit_ones)
        ])
        rho = active * layout.inverse_counted

        gains, numerators = [], []
        for index, (batch_norm, stats) in enumerate(zip(self._batch_norms, statistics)):
            if batch_norm is None:
                gains.append(layout.fixed_gains[index])
                numerators.append((stats.patch_energy * layout.inverse_fan_in[index]).expand(layout.units[index]))
            else:
                # A batch norm without affine parameters has gain 1.
                gains.append(layout.fixed_gains[index] if batch_norm.weight is None else as_float32(batch_norm.weight))
                numerators.append(layout.position_counts[index])

        gain_sq = torch.cat(gains).square()
        variance = self.variances(statistics)
        tiny = torch.finfo(torch.float32).tiny
        denominators = torch.where(layout.batch_normalised, row_norms.clamp_min(tiny), 1.0)

        m_w_units = rho * gain_sq * torch.cat(numerators) / denominators
        z_terms = rho * gain_sq / variance * tap_terms
        sums = torch.zeros_like(layout.block_scale).index_add_(0, layout.unit_blocks, torch.stack([m_w_units, z_terms], dim=1))
        values = torch.addcmul(layout.block_offset, sums, layout.block_scale).tolist()

        per_unit = m_w_units.split(layout.units)
        return [Curvature(m_w=m_w, m_z=m_z, m_w_per_unit=part) for (m_w, m_z), part in zip(values, per_unit)]

    def _scales(self) -> list[float | None]:
        return [block.module.scale if block.kind == "residual" else None for block in self.blocks]

    def _layout_for(self, statistics: list[BlockStatistics]) -> _Layout:
        key = tuple(
            (
                stats.positions,
                stats.counted_positions,
                stats.input_positions,
                stats.input_size,
                stats.active is None,
                weight.device,
                scale,
            )
            for weight, stats, scale in zip(self._weights, statistics, self._scales())
        )
        if key != self._layout_key:
            self._layout = _build_layout(self.blocks, statistics)
            self._layout_key = key
        return self._layout


def _tap_weights(block: Block, stats: BlockStatistics, device: torch.device) -> torch.Tensor:
    """Return, per unit and kernel tap, the weight of ``||w[i, :, tap]||^2`` in ``q_i``.

    The result is flat in the order of ``vector_norm(weight, dim=1)``: units,
    then taps. A linear layer has one tap.
    """
    in_channels = block.weight.shape[1]
    if stats.input_size is None:
        per_tap = torch.full((1,), 1.0 / in_channels, device=device)
    else:
        _, counts = conv_geometry(block.layer, *stats.input_size, device)
        input_pixels = stats.input_size[0] * stats.input_size[1]
        per_tap = counts.flatten() / (in_channels * input_pixels)
    return per_tap.repeat(block.weight.shape[0])


def _build_layout(blocks: list[Block], statistics: list[BlockStatistics]) -> _Layout:
    device = blocks[0].weight.device
    units = [block.weight.shape[0] for block in blocks]
    unit_counts = torch.tensor(units, device=device)

    def per_unit(values: list[float]) -> torch.Tensor:
        return torch.tensor(values, device=device).repeat_interleave(unit_counts)

    taps_per_unit = torch.tensor([block.weight[0, 0].numel() for block in blocks], device=device)
    taps_per_unit = taps_per_unit.repeat_interleave(unit_counts)
    return _Layout(
        tap_weights=torch.cat([_tap_weights(block, stats, device) for block, stats in zip(blocks, statistics)]),
        tap_units=torch.arange(sum(units), device=device).repeat_interleave(taps_per_unit),
        fixed_gains=[
            torch.full((count,), float(block.module.scale if block.kind == "residual" else 1.0), device=device)
            for block, count in zip(blocks, units)
        ],
        unit_ones=[torch.ones(count, device=device) for count in units],
        inverse_fan_in=[1.0 / block.weight[0].numel() for block in blocks],
        position_counts=[
            torch.full((count,), float(stats.positions), device=device) for stats, count in zip(statistics, units)
        ],
        inverse_counted=per_unit([
            1.0 if stats.active is None else 1.0 / stats.counted_positions for stats in statistics
        ]),
        batch_normalised=per_unit([float(block.batch_norm is not None) for block in blocks]).bool(),
        unit_blocks=torch.arange(len(blocks), device=device).repeat_interleave(unit_counts),
        unit_pairs=torch.zeros(sum(units), 2, device=device),
        block_scale=torch.tensor([[1.0 / count, 1.0] for count in units], device=device),
        block_offset=torch.tensor([[0.0, float(block.kind == "residual")] for block in blocks], device=device),
        units=units,
    )
