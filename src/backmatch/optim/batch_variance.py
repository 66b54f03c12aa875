"""Batch-norm variances of a training forward pass, recovered from running variances.

Train-mode batch norm with momentum ``m`` sets ``running_var = (1 - m) * old +
m * v``, with ``v`` the unbiased variance of the batch. With the running
variance from before the forward pass, ``v`` therefore costs one vector
operation. :class:`BatchVariances` keeps that earlier value from one training
step to the next, so recovering the variances of all batch norms of a network
needs no work inside the forward pass.
"""

from __future__ import annotations

import torch

from backmatch.models.blocks import Block
from backmatch.optim.statistics import BlockStatistics, batch_variance


class BatchVariances:
    """Return, per output unit of a list of blocks, the variance that the unit was divided by.

    A batch-normalised unit gets its biased batch variance plus epsilon; a unit
    without batch norm gets 1. Each call keeps a copy of the running variances
    and of the batch norms' update counters (the in-place version of
    ``num_batches_tracked``). When every batch norm ran exactly the recorded
    training forward pass since the previous call, the variances follow from the
    running variances. Otherwise (first call, another training forward pass in
    between, loaded state) they are recomputed from the recorded block inputs,
    which costs one more forward of each batch-normalised layer. After loading
    a checkpoint, :meth:`take_snapshot` restores the first case.

    Args:
        blocks: the blocks, in the order of the statistics passed to :meth:`__call__`.

    Example:
        >>> from backmatch.models import vgg13
        >>> from backmatch.optim.statistics import StatisticsRecorder
        >>> net = vgg13(10, width=0.125)
        >>> recorder = StatisticsRecorder(net.blocks())
        >>> variances = BatchVariances(net.blocks())
        >>> for step in range(2):
        ...     _ = net(torch.randn(8, 3, 32, 32))
        ...     values = variances([recorder.statistics[block.name] for block in net.blocks()])
        ...     print(variances.recovered)
        False
        True

    Note:
        A change to ``running_var`` that bypasses the batch norm's forward pass
        and its ``load_state_dict`` (for example an in-place write by the user)
        is not detected, and it would skew the next step's variances.
    """

    def __init__(self, blocks: list[Block]):
        self.blocks = blocks
        self._batch_norms = [block.batch_norm for block in blocks]
        self._tracked = [
            batch_norm is not None and batch_norm.track_running_stats and batch_norm.momentum is not None
            for batch_norm in self._batch_norms
        ]
        self._units = [block.weight.shape[0] for block in blocks]
        device = blocks[0].weight.device
        self._ones = [torch.ones(units, device=device) for units in self._units]
        self._snapshot: torch.Tensor | None = None
        self._snapshot_updates: tuple[int | None, ...] | None = None
        self._constants_key: tuple | None = None
        self._constants: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None
        #: Whether the last call recovered the variances from the running variances.
        self.recovered = False

    @torch.no_grad()
    def __call__(self, statistics: list[BlockStatistics]) -> torch.Tensor:
        updates = tuple(
            batch_norm.num_batches_tracked._version if tracked else None
            for batch_norm, tracked in zip(self._batch_norms, self._tracked)
        )
        recorded = tuple(stats.bn_updates if tracked else None for stats, tracked in zip(statistics, self._tracked))
        before_weight, after_scale, eps = self._constants_for(statistics)

        # Units without running statistics need their variance recomputed in
        # every case; units without batch norm divide by 1.
        after_parts = []
        for index, (block, stats) in enumerate(zip(self.blocks, statistics)):
            batch_norm = self._batch_norms[index]
            if batch_norm is None:
                after_parts.append(self._ones[index])
            elif self._tracked[index]:
                after_parts.append(_as_float(batch_norm.running_var))
            else:
                after_parts.append(batch_variance(block, stats))
        after = torch.cat(after_parts)

        self.recovered = (
            self._snapshot is not None
            and recorded == updates
            and all(now is None or now == then + 1 for now, then in zip(updates, self._snapshot_updates))
        )
        if self.recovered:
            variance = torch.addcmul(after, self._snapshot, before_weight)
            variance = variance.mul_(after_scale).clamp_min_(0.0).add_(eps)
        else:
            parts = [
                batch_variance(block, stats) if tracked else part
                for block, stats, tracked, part in zip(self.blocks, statistics, self._tracked, after_parts)
            ]
            variance = torch.cat(parts).add_(eps)

        self._snapshot, self._snapshot_updates = after, updates
        return variance

    @torch.no_grad()
    def take_snapshot(self) -> None:
        """Keep the current running variances as those before the next training forward pass.

        Call this after loading the batch norms' state, so that the first step
        of a resumed run recovers the variances as an uninterrupted run does.
        """
        self._snapshot = torch.cat([
            _as_float(batch_norm.running_var) if tracked else ones
            for batch_norm, tracked, ones in zip(self._batch_norms, self._tracked, self._ones)
        ])
        self._snapshot_updates = tuple(
            batch_norm.num_batches_tracked._version if tracked else None
            for batch_norm, tracked in zip(self._batch_norms, self._tracked)
        )

    def _constants_for(self, statistics: list[BlockStatistics]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Return per-unit ``before_weight``, ``after_scale`` and ``eps``.

        The recovered variance is ``clamp((after + before_weight * before) *
        after_scale, 0) + eps``: for a unit with running statistics that is
        ``(after - (1 - m) before) / m * (N - 1) / N + eps``, and for any other
        unit it leaves ``after`` (its recomputed variance, or 1) plus ``eps``.
        """
        key = tuple(
            (stats.positions, batch_norm.momentum, batch_norm.eps) if batch_norm is not None else None
            for stats, batch_norm in zip(statistics, self._batch_norms)
        )
        if key != self._constants_key:
            columns = []
            for stats, batch_norm, tracked in zip(statistics, self._batch_norms, self._tracked):
                if batch_norm is None:
                    columns.append((0.0, 1.0, 0.0))
                elif not tracked:
                    columns.append((0.0, 1.0, batch_norm.eps))
                else:
                    momentum, count = batch_norm.momentum, stats.positions
                    columns.append((-(1 - momentum), (count - 1) / (count * momentum), batch_norm.eps))
            device = self._ones[0].device
            repeats = torch.tensor(self._units, device=device)
            self._constants = tuple(
                torch.tensor(values, device=device).repeat_interleave(repeats) for values in zip(*columns)
            )
            self._constants_key = key
        return self._constants


def _as_float(tensor: torch.Tensor) -> torch.Tensor:
    return tensor if tensor.dtype == torch.float32 else tensor.float()
