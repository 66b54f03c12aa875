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
from backmatch.optim.statistics import (
    BlockStatistics,
    as_float32,
    batch_variance,
    check_batch_statistics,
    recovers_from_running_variance,
)

#: Largest relative error of a recovered variance that is accepted. Recovery
#: subtracts ``(1 - m) * old`` from ``running_var``, which multiplies the
#: rounding of the stored running variance by ``(1 - m) * old / (m * v)``. That
#: factor is large while the running variance is still far above the batch
#: variance (the first steps from its initial 1, or a small momentum), and then
#: the variance is recomputed instead.
RECOVERY_TOLERANCE = 1e-4


class BatchVariances:
    """Per output unit of a list of blocks, the variance that the unit was divided by.

    A batch-normalised unit gets its biased batch variance plus epsilon, and a
    unit without batch norm gets 1. Each call keeps a copy of the running
    variances and of the batch norms' update counters (the in-place version of
    ``num_batches_tracked``). When every batch norm ran exactly the recorded
    training forward pass since the previous call, the variances follow from the
    running variances. Otherwise they are recomputed from the recorded block
    inputs, which costs one more forward of each batch-normalised layer. That
    happens on the first call, after another training forward pass in between,
    after loaded state, and while recovery would lose more than
    :data:`RECOVERY_TOLERANCE` to rounding. After loading a checkpoint,
    :meth:`take_snapshot` makes the next call recover again.

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
        A change to the values of ``running_var`` that bypasses the batch
        norm's forward pass and ``load_state_dict`` (for example an in-place
        write by the user) is not detected, and it would skew the next step's
        variances. The constants live on the device of the blocks at
        construction, so move the model before building this object, as for
        any torch optimiser.
    """

    def __init__(self, blocks: list[Block]):
        self.blocks = blocks
        self._batch_norms = [block.batch_norm for block in blocks]
        self._units = [block.weight.shape[0] for block in blocks]
        device = blocks[0].weight.device
        self._ones = [torch.ones(units, device=device) for units in self._units]
        self._snapshot: torch.Tensor | None = None
        self._snapshot_updates: tuple[int | None, ...] | None = None
        self._snapshot_tensors: tuple[torch.Tensor | None, ...] | None = None
        self._constants_key: tuple | None = None
        self._constants: tuple[torch.Tensor, ...] | None = None
        #: Whether the last call recovered the variances from the running variances.
        self.recovered = False

    @torch.no_grad()
    def __call__(self, statistics: list[BlockStatistics]) -> torch.Tensor:
        tracked = self._tracked()
        for block, batch_norm in zip(self.blocks, self._batch_norms):
            if batch_norm is not None:
                check_batch_statistics(block)
        updates = self._updates(tracked)
        recorded = tuple(stats.bn_updates if flag else None for stats, flag in zip(statistics, tracked))
        before_weight, after_scale, eps, amplification = self._constants_for(statistics, tracked)

        # Units without usable running statistics need their variance recomputed
        # in every case; units without batch norm divide by 1.
        after_parts = []
        for index, (block, stats) in enumerate(zip(self.blocks, statistics)):
            batch_norm = self._batch_norms[index]
            if batch_norm is None:
                after_parts.append(self._ones[index])
            elif tracked[index]:
                after_parts.append(as_float32(batch_norm.running_var))
            else:
                after_parts.append(batch_variance(block, stats))
        after = torch.cat(after_parts)

        self.recovered = (
            any(tracked)
            and self._snapshot is not None
            and recorded == updates
            and all(then is now for then, now in zip(self._snapshot_tensors, self._running_variances(tracked)))
            and all(now is None or now == then + 1 for now, then in zip(updates, self._snapshot_updates))
        )
        if self.recovered:
            variance = torch.addcmul(after, self._snapshot, before_weight).mul_(after_scale).clamp_min_(0.0)
            # The rounding of running_var, multiplied by (1 - m) old / (m v), must stay in tolerance.
            self.recovered = not bool((self._snapshot * amplification > variance).any())
        if self.recovered:
            variance = variance.add_(eps)
        else:
            parts = [
                batch_variance(block, stats) if flag else part
                for block, stats, flag, part in zip(self.blocks, statistics, tracked, after_parts)
            ]
            variance = torch.cat(parts).add_(eps)

        self._remember(after, updates, tracked)
        return variance

    @torch.no_grad()
    def take_snapshot(self) -> None:
        """Keep the current running variances as those before the next training forward pass.

        Call this after loading the batch norms' state, so that the first step
        of a resumed run recovers the variances as an uninterrupted run does.
        """
        tracked = self._tracked()
        running = torch.cat([
            as_float32(batch_norm.running_var) if flag else ones
            for batch_norm, flag, ones in zip(self._batch_norms, tracked, self._ones)
        ])
        self._remember(running, self._updates(tracked), tracked)

    def _tracked(self) -> list[bool]:
        """Return, per block, whether its variance can be recovered from the running variance."""
        return [
            batch_norm is not None and recovers_from_running_variance(batch_norm) for batch_norm in self._batch_norms
        ]

    def _remember(self, running: torch.Tensor, updates: tuple[int | None, ...], tracked: list[bool]) -> None:
        """Keep ``running`` (per unit; only the tracked units matter) with the counters and buffers it belongs to."""
        self._snapshot = running
        self._snapshot_updates = updates
        self._snapshot_tensors = self._running_variances(tracked)

    def _updates(self, tracked: list[bool]) -> tuple[int | None, ...]:
        return tuple(
            batch_norm.num_batches_tracked._version if flag else None
            for batch_norm, flag in zip(self._batch_norms, tracked)
        )

    def _running_variances(self, tracked: list[bool]) -> tuple[torch.Tensor | None, ...]:
        # load_state_dict(assign=True) replaces the buffers, version counters
        # included, so the snapshot is valid only for the same tensor objects.
        return tuple(batch_norm.running_var if flag else None for batch_norm, flag in zip(self._batch_norms, tracked))

    def _constants_for(self, statistics: list[BlockStatistics], tracked: list[bool]) -> tuple[torch.Tensor, ...]:
        """Return per-unit ``before_weight``, ``after_scale``, ``eps`` and ``amplification``.

        The recovered variance is ``clamp((after + before_weight * before) *
        after_scale, 0) + eps``: for a unit with running statistics that is
        ``(after - (1 - m) before) / m * (N - 1) / N + eps``, and for any other
        unit it leaves ``after`` (its recomputed variance, or 1) plus ``eps``.
        Recovery is rejected where ``before * amplification`` exceeds the
        variance: ``amplification`` is ``(1 - m) / m * (N - 1) / N`` times the
        machine epsilon of the running variance over :data:`RECOVERY_TOLERANCE`.
        """
        key = tuple(
            (stats.positions, batch_norm.momentum, batch_norm.eps, batch_norm.running_var.dtype)
            if flag
            else (None if batch_norm is None else batch_norm.eps)
            for stats, batch_norm, flag in zip(statistics, self._batch_norms, tracked)
        )
        if key != self._constants_key:
            columns = []
            for stats, batch_norm, flag in zip(statistics, self._batch_norms, tracked):
                if batch_norm is None:
                    columns.append((0.0, 1.0, 0.0, 0.0))
                elif not flag:
                    columns.append((0.0, 1.0, batch_norm.eps, 0.0))
                else:
                    momentum, count = batch_norm.momentum, stats.positions
                    after_scale = (count - 1) / (count * momentum)
                    rounding = torch.finfo(batch_norm.running_var.dtype).eps / RECOVERY_TOLERANCE
                    columns.append((-(1 - momentum), after_scale, batch_norm.eps, (1 - momentum) * after_scale * rounding))
            device = self._ones[0].device
            repeats = torch.tensor(self._units, device=device)
            self._constants = tuple(
                torch.tensor(values, device=device).repeat_interleave(repeats) for values in zip(*columns)
            )
            self._constants_key = key
        return self._constants

