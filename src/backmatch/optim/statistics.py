"""Forward-pass statistics that the closed-form curvatures of a block need.

:class:`StatisticsRecorder` hooks into the blocks of a network and, for every
training forward pass, stores one :class:`BlockStatistics` per block. It
records the shapes, how many positions pass a gradient to each unit and the
block input. Without batch norm, it also records the energy of the input
patches. The hooks do as few tensor operations as they can, because they run
on every training step. The batch-norm variance is recovered later, from the
block input or from the running variance (see
:mod:`backmatch.optim.batch_variance`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from backmatch.models.blocks import Block

#: Positions per unit on which the active fraction ``rho`` is counted, at least:
#: enough leading samples of the batch are taken to cover this many positions
#: before pooling, or the whole batch when it has fewer. Counting on every
#: sample costs a pass over each block's output, several percent of a training
#: step of VGG13 at width 1/8 on two CPU cores. Against counting on the whole
#: batch of 128 CIFAR-10 images, this budget changes the EMA-smoothed m_W and
#: m_z of VGG13 at width 1/8 by 0.23% (median over blocks and steps; 3.8% at
#: most) after one epoch of training.
RHO_POSITIONS = 512

#: Minimum number of samples on which ``rho`` is counted, so that one image cannot set it.
RHO_MIN_SAMPLES = 4


def rho_samples(batch: int, positions_per_sample: int) -> int:
    """Return how many leading samples of a batch ``rho`` is counted on.

    Example:
        >>> rho_samples(128, 32 * 32), rho_samples(128, 4 * 4), rho_samples(128, 1)
        (4, 32, 128)
    """
    needed = max(RHO_MIN_SAMPLES, -(-RHO_POSITIONS // positions_per_sample))
    return min(batch, needed)


@dataclass
class BlockStatistics:
    """Forward-pass statistics of one block for one batch.

    Attributes:
        samples: batch size.
        positions: samples times output positions before pooling (``N``).
        input_positions: samples times input positions (``N_in``).
        input_size: height and width of a convolution's input; ``None`` for a
            linear layer.
        active: per output unit, how many of the ``counted_positions`` pass a
            gradient to the unit. It is ``None`` when the block has no ReLU,
            because then every position does.
        counted_positions: positions before pooling on which ``active`` is
            counted (leading samples of the batch, see :func:`rho_samples`).
        patch_energy: ``sum ||input patch||^2`` over samples and output
            positions; ``None`` for batch-normalised blocks, whose formulas do
            not use it.
        inputs: the block input as the block received it (not a copy), which
            the batch-norm variance and the numerical estimators recompute from.
        input_version: the in-place version counter of ``inputs`` at the
            forward pass, to detect a later in-place change.
        bn_updates: the in-place version counter of the batch norm's
            ``num_batches_tracked`` right after the forward pass, which counts
            its training forward passes. It is ``None`` unless the batch norm
            moves its running variance by a momentum (see
            :func:`recovers_from_running_variance`).
    """

    samples: int
    positions: int
    input_positions: int
    input_size: tuple[int, int] | None
    active: torch.Tensor | None
    counted_positions: int
    patch_energy: torch.Tensor | None = None
    inputs: torch.Tensor | None = None
    input_version: int = 0
    bn_updates: int | None = None

    def active_fraction(self, units: int, device: torch.device) -> torch.Tensor:
        """Return ``rho``, per unit the fraction of positions that pass a gradient.

        Example:
            >>> stats = BlockStatistics(2, 8, 8, None, torch.tensor([2.0, 4.0]), counted_positions=4)
            >>> stats.active_fraction(2, torch.device("cpu"))
            tensor([0.5000, 1.0000])
        """
        if self.active is None:
            return torch.ones(units, device=device)
        return self.active / self.counted_positions


def as_float32(tensor: torch.Tensor) -> torch.Tensor:
    """Return ``tensor`` in float32, itself when it already is (no copy, no dispatch)."""
    return tensor if tensor.dtype == torch.float32 else tensor.float()


def count_positive(x: torch.Tensor, samples: int | None = None) -> torch.Tensor:
    """Return, per channel (dim 1), how many entries of the first ``samples`` samples of ``x`` are positive.

    ``x`` must be non-negative, as the output of a ReLU is. Its sign is then the
    indicator of positive entries, and summing that is several times faster on
    the CPU than summing a boolean mask.

    Example:
        >>> count_positive(torch.tensor([[0.0, 2.0], [3.0, 0.5], [1.0, 1.0]]), samples=2)
        tensor([1., 2.])
    """
    if torch.is_grad_enabled():
        x = x.detach()
    samples = x.shape[0] if samples is None else samples
    if x.dim() == 4 and not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last):
        # The leading samples of a channels-last tensor are a (positions, channels)
        # matrix in memory, and one strided view reaches it.
        channels = x.shape[1]
        rows = x.as_strided((samples * x.shape[2] * x.shape[3], channels), (channels, 1))
        return torch.sign(rows).sum(dim=0, dtype=torch.float32)
    dims = (0,) if x.dim() == 2 else (0, 2, 3)
    return torch.sign(x[:samples]).sum(dim=dims, dtype=torch.float32)


def recovers_from_running_variance(batch_norm: nn.modules.batchnorm._BatchNorm) -> bool:
    """Return whether a training forward pass of ``batch_norm`` moves ``running_var`` by a momentum.

    Only then does the running variance before and after a forward pass give
    the batch variance. Without running statistics, or with ``momentum`` None
    (a cumulative average) or 0, it does not.
    """
    return batch_norm.track_running_stats and bool(batch_norm.momentum)


def check_batch_statistics(block: Block) -> None:
    """Raise ``ValueError`` if the batch norm of ``block`` does not normalise by batch statistics.

    A batch norm in eval mode inside a block in train mode divides by its
    running variance, so the block is an affine map and the batch-norm closed
    forms do not describe it.
    """
    batch_norm = block.batch_norm
    if batch_norm is not None and not batch_norm.training and batch_norm.track_running_stats:
        raise ValueError(
            f"the batch norm of block {block.name!r} is in eval mode while the block trains, and the "
            "closed-form curvatures assume batch statistics; put it in train mode or use estimator 'numerical'"
        )


def batch_variance(block: Block, statistics: BlockStatistics) -> torch.Tensor:
    """Return the biased batch variance of the batch norm of ``block``, without epsilon.

    One more forward of the block's layer on the recorded input gives the
    pre-activation whose variance batch norm took. Under autocast, the result
    can differ from batch norm's own variance by the rounding of the lower
    precision.

    Raises:
        ValueError: if ``block`` has no batch norm, its batch norm is in eval
            mode (see :func:`check_batch_statistics`), or no input was recorded.
        RuntimeError: if the input was changed in place after the forward pass.
    """
    batch_norm = block.batch_norm
    if batch_norm is None:
        raise ValueError(f"block {block.name!r} has no batch norm")
    check_batch_statistics(block)
    if statistics.inputs is None:
        raise ValueError(
            f"block {block.name!r}: no input was recorded, so its batch variance cannot be computed; "
            "record the statistics with StatisticsRecorder during a training forward pass"
        )
    if statistics.inputs._version != statistics.input_version:
        raise RuntimeError(
            f"the input of block {block.name!r} was modified in place after the forward pass; "
            "compute the curvatures before changing it"
        )
    # Under autocast the recorded input can be in a lower precision than the
    # weight; the recomputation runs in the weight's precision.
    with torch.no_grad():
        pre_activation = block.layer(statistics.inputs.detach().to(block.weight.dtype))
    shift = batch_norm.running_mean if batch_norm.track_running_stats else None
    return _shifted_variance(pre_activation, shift)


_GEOMETRY_CACHE: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}


def conv_geometry(conv: nn.Conv2d, height: int, width: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Return the zero-padding geometry of ``conv`` on a ``height x width`` input.

    Returns:
        ``coverage``, the number of windows that contain each input pixel, and
        ``taps``, the number of output positions at which each kernel tap falls
        inside the input. Both count one image.

    Example:
        >>> conv = nn.Conv2d(1, 1, kernel_size=3, padding=1)
        >>> coverage, taps = conv_geometry(conv, 4, 4, torch.device("cpu"))
        >>> taps
        tensor([[ 9., 12.,  9.],
                [12., 16., 12.],
                [ 9., 12.,  9.]])
    """
    key = (conv.kernel_size, conv.stride, conv.padding, conv.dilation, height, width, str(device))
    if key not in _GEOMETRY_CACHE:
        ones = torch.ones(1, 1, height, width, device=device)
        kernel = torch.ones(1, 1, *conv.kernel_size, device=device)
        options = {"stride": conv.stride, "padding": conv.padding, "dilation": conv.dilation}
        windows = torch.ones_like(F.conv2d(ones, kernel, **options))
        # The gradients of sum(conv(ones)) count, per input pixel, the windows
        # that contain it and, per tap, the output positions where the tap
        # multiplies a real (unpadded) pixel.
        coverage = torch.nn.grad.conv2d_input(ones.shape, kernel, windows, **options)[0, 0]
        taps = torch.nn.grad.conv2d_weight(ones, kernel.shape, windows, **options)[0, 0]
        _GEOMETRY_CACHE[key] = (coverage, taps)
    return _GEOMETRY_CACHE[key]


def conv_output_size(conv: nn.Conv2d, height: int, width: int) -> tuple[int, int]:
    """Return the spatial size of ``conv``'s output for a ``height x width`` input."""
    sizes = []
    for size, kernel, stride, padding, dilation in zip(
        (height, width), conv.kernel_size, conv.stride, conv.padding, conv.dilation
    ):
        sizes.append((size + 2 * padding - dilation * (kernel - 1) - 1) // stride + 1)
    return sizes[0], sizes[1]


def _channel_rows(x: torch.Tensor) -> torch.Tensor:
    """Return ``x`` as a (positions, channels) matrix, a view for channels-last or 2-D input.

    Reductions over the rows of this matrix are several times faster on the
    CPU than reductions over dims (0, 2, 3) of a channels-last tensor.
    """
    if x.dim() == 2:
        return x
    return x.permute(0, 2, 3, 1).reshape(-1, x.shape[1])


def _shifted_variance(x: torch.Tensor, shift: torch.Tensor | None) -> torch.Tensor:
    """Return the biased per-channel variance of ``x``, computed from shifted moments.

    ``E[(x - s)^2] - (E[x] - s)^2`` with ``s`` close to the mean (the running
    mean) avoids cancellation and is an order of magnitude faster than
    ``Tensor.var`` over dims (0, 2, 3) on the CPU (torch 2.14).
    """
    rows = _channel_rows(x).float()
    if shift is not None:
        rows = rows - shift.float()
    return (rows.square().mean(dim=0) - rows.mean(dim=0).square()).clamp_min(0.0)


class StatisticsRecorder:
    """Record :class:`BlockStatistics` of blocks during forward passes with autograd on.

    A forward hook on every block collects what the closed forms need. It acts
    only while gradients are enabled and the module is in train mode, so
    evaluation passes leave the last training statistics in place.

    Args:
        blocks: blocks to watch.

    Raises:
        ValueError: for a convolution with ``groups`` above 1, a padding mode
            other than zeros, or padding given as a string, because the closed
            forms count zero-padded windows of a dense convolution.

    Example:
        >>> from backmatch.models.blocks import LinearBlock
        >>> layer = LinearBlock(3, 2)
        >>> recorder = StatisticsRecorder([Block("fc", "linear", layer, layer.layer.weight)])
        >>> _ = layer(torch.randn(5, 3))
        >>> recorder.statistics["fc"].positions
        5
        >>> recorder.remove()
    """

    def __init__(self, blocks: list[Block]):
        self.blocks = blocks
        self.statistics: dict[str, BlockStatistics] = {}
        self._handles = []
        for block in blocks:
            self._attach(block)

    def _attach(self, block: Block) -> None:
        name = block.name
        # A residual block's gradient flows through the ReLU of its branch.
        inner = block.module.branch if block.kind == "residual" else block.module
        layer = block.layer
        batch_norm = block.batch_norm
        has_relu = block.has_relu
        counts_updates = batch_norm is not None and recovers_from_running_variance(batch_norm)
        if isinstance(layer, nn.Conv2d):
            _check_conv(block.name, layer)

        output_sizes: dict[tuple[int, int], tuple[int, int]] = {}

        def on_output(module: nn.Module, args: tuple, output: torch.Tensor) -> None:
            # A deep copy of the module carries this hook along; its passes
            # (for example measure_closed_form on a copy) must not count here.
            if module is not inner or not (torch.is_grad_enabled() and module.training):
                return
            x = args[0]
            samples = x.shape[0]
            if isinstance(layer, nn.Conv2d):
                input_size = (x.shape[2], x.shape[3])
                if input_size not in output_sizes:
                    output_sizes[input_size] = conv_output_size(layer, *input_size)
                height, width = output_sizes[input_size]
                positions = samples * height * width
                input_positions = samples * input_size[0] * input_size[1]
            else:
                input_size = None
                positions = input_positions = samples

            statistics = BlockStatistics(samples, positions, input_positions, input_size, None, positions)
            statistics.inputs, statistics.input_version = x, x._version
            if counts_updates:
                statistics.bn_updates = batch_norm.num_batches_tracked._version
            if has_relu:
                # After ReLU and max-pool, an output > 0 marks exactly one position
                # with a positive pre-activation that the pool selected. The first
                # samples are as random as any, because batches are shuffled.
                per_sample = positions // samples
                counted_samples = rho_samples(samples, per_sample)
                statistics.active = count_positive(output, counted_samples)
                statistics.counted_positions = per_sample * counted_samples
            if batch_norm is None:
                statistics.patch_energy = _patch_energy(layer, x.detach())
            self.statistics[name] = statistics

        self._handles.append(inner.register_forward_hook(on_output))

    def remove(self) -> None:
        """Detach all hooks."""
        for handle in self._handles:
            handle.remove()
        self._handles.clear()


def _check_conv(name: str, conv: nn.Conv2d) -> None:
    """Raise ``ValueError`` for a convolution that the closed forms do not describe."""
    if conv.groups != 1:
        raise ValueError(f"block {name!r}: the closed forms need groups=1 convolutions, got groups={conv.groups}")
    if conv.padding_mode != "zeros":
        raise ValueError(
            f"block {name!r}: the closed forms count zero padding, got padding_mode={conv.padding_mode!r}"
        )
    if isinstance(conv.padding, str):
        raise ValueError(
            f"block {name!r}: give the convolution's padding in pixels instead of padding={conv.padding!r}"
        )


def _patch_energy(layer: nn.Linear | nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
    """Return ``sum ||input patch||^2`` over samples and output positions of ``layer``.

    A convolution reads each input pixel once per window that contains it, so
    the pixel energies are weighted by the coverage of the zero-padded windows.
    """
    if isinstance(layer, nn.Conv2d):
        coverage, _ = conv_geometry(layer, x.shape[2], x.shape[3], x.device)
        return (x.float().square().sum(dim=1) * coverage).sum()
    flat = x.reshape(-1).float()
    return torch.dot(flat, flat)
