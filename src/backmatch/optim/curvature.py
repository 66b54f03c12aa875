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
import torch.nn.functional as F
from torch import nn

from backmatch.models.blocks import Block


@dataclass
class BlockStatistics:
    """Forward-pass statistics of one block for one batch.

    Attributes:
        patch_energy: ``sum ||input patch||^2`` over samples and output positions;
            ``None`` for batch-normalised blocks, whose formulas do not use it.
        active: per output unit, the number of the ``positions`` through which a
            gradient reaches the unit.
        positions: samples times output positions before pooling (``N``).
        input_positions: samples times input positions (``N_in``).
        bn_variance: per unit, batch variance plus epsilon of the batch-norm input,
            or ``None`` without batch norm.
        tap_positions: for a convolution, per kernel tap, the number of the
            ``positions`` at which the tap falls inside the (unpadded) input.
        inputs: the block input, kept only when requested (numerical estimators).
    """

    patch_energy: torch.Tensor | None
    active: torch.Tensor
    positions: int
    input_positions: int
    bn_variance: torch.Tensor | None = None
    tap_positions: torch.Tensor | None = None
    inputs: torch.Tensor | None = None


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


_GEOMETRY_CACHE: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}


def _conv_geometry(conv: nn.Conv2d, height: int, width: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Return the zero-padding geometry of ``conv`` on a ``height x width`` input.

    Returns:
        ``coverage``, the number of windows that contain each input pixel, and
        ``taps``, the number of output positions at which each kernel tap falls
        inside the input. Both count one image.
    """
    key = (conv.kernel_size, conv.stride, conv.padding, conv.dilation, height, width, str(device))
    if key not in _GEOMETRY_CACHE:
        ones = torch.ones(1, 1, height, width, device=device)
        kernel = torch.ones(1, 1, *conv.kernel_size, device=device)
        options = {"stride": conv.stride, "padding": conv.padding, "dilation": conv.dilation}
        windows = torch.ones_like(F.conv2d(ones, kernel, **options))
        coverage = F.conv_transpose2d(windows, kernel, **options)[0, 0, :height, :width]
        # The gradient of sum(conv(ones)) with respect to each tap counts the
        # output positions where that tap multiplies a real (unpadded) pixel.
        taps = torch.nn.grad.conv2d_weight(ones, kernel.shape, windows, **options)[0, 0]
        _GEOMETRY_CACHE[key] = (coverage, taps)
    return _GEOMETRY_CACHE[key]


def _channel_rows(x: torch.Tensor) -> torch.Tensor:
    """Return ``x`` as a (positions, channels) matrix, a view for channels-last or 2-D input.

    Reductions over the rows of this matrix are several times faster on the
    CPU than reductions over dims (0, 2, 3) of a channels-last tensor.
    """
    if x.dim() == 2:
        return x
    return x.permute(0, 2, 3, 1).reshape(-1, x.shape[1])


def _batch_variance(x: torch.Tensor, shift: torch.Tensor | None) -> torch.Tensor:
    """Return the biased per-channel variance of ``x``, computed from shifted moments.

    ``E[(x - s)^2] - (E[x] - s)^2`` with ``s`` close to the mean (the running
    mean) avoids cancellation and is an order of magnitude faster than
    ``Tensor.var`` over dims (0, 2, 3) on the CPU (torch 2.14).
    """
    rows = _channel_rows(x).float()
    if shift is not None:
        rows = rows - shift.float()
    return (rows.square().mean(dim=0) - rows.mean(dim=0).square()).clamp_min(0.0)


#: Samples of a batch on which the active fraction ``rho`` is counted. Counting
#: every sample costs a full pass over each block's output, about 6% of a
#: training step of VGG13 at width 1/8 on two CPU cores. 32 samples leave at
#: least 128 positions per unit in VGG13, and the EMA smooths the estimate.
RHO_SAMPLES = 32


def _conv_output_size(conv: nn.Conv2d, height: int, width: int) -> tuple[int, int]:
    """Return the spatial size of ``conv``'s output for a ``height x width`` input."""
    sizes = []
    for size, kernel, stride, padding, dilation in zip(
        (height, width), conv.kernel_size, conv.stride, conv.padding, conv.dilation
    ):
        sizes.append((size + 2 * padding - dilation * (kernel - 1) - 1) // stride + 1)
    return sizes[0], sizes[1]


class StatisticsRecorder:
    """Record :class:`BlockStatistics` of blocks during forward passes with autograd on.

    Two hooks per block, on its input and its output, collect what the closed
    forms need. They fire only while gradients are enabled and the module is in
    train mode, so evaluation passes leave the last training statistics in place.

    Args:
        blocks: blocks to watch.
        keep_inputs: also keep each block's input tensor (detached).
    """

    def __init__(self, blocks: list[Block], keep_inputs: bool = False):
        self.blocks = blocks
        self.keep_inputs = keep_inputs
        self.statistics: dict[str, BlockStatistics] = {}
        self._partial: dict[str, dict] = {}
        self._handles = []
        for block in blocks:
            self._attach(block)

    def _attach(self, block: Block) -> None:
        name = block.name
        # A residual block's gradient flows through the ReLU of its branch.
        inner = block.module.branch if block.kind == "residual" else block.module
        layer = block.layer
        batch_norm = block.batch_norm

        def on_input(module: nn.Module, args: tuple) -> None:
            if not (torch.is_grad_enabled() and module.training):
                return
            x = args[0].detach()
            partial = {"inputs": x if self.keep_inputs else None, "tap_positions": None, "patch_energy": None}
            if isinstance(layer, nn.Conv2d):
                coverage, taps = _conv_geometry(layer, x.shape[2], x.shape[3], x.device)
                height, width = _conv_output_size(layer, x.shape[2], x.shape[3])
                partial["positions"] = x.shape[0] * height * width
                partial["input_positions"] = x.shape[0] * x.shape[2] * x.shape[3]
                partial["tap_positions"] = taps * x.shape[0]
                # m_W of a batch-normalised block does not use the input energy,
                # and skipping it saves a pass over the activations.
                if batch_norm is None:
                    partial["patch_energy"] = (x.float().square().sum(dim=1) * coverage).sum()
            else:
                partial["positions"] = partial["input_positions"] = x.shape[0]
                if batch_norm is None:
                    partial["patch_energy"] = x.flatten(1).float().square().sum()
            if batch_norm is not None and batch_norm.track_running_stats and batch_norm.momentum is not None:
                partial["running_var"] = batch_norm.running_var.detach().clone()
            self._partial[name] = partial

        def on_output(module: nn.Module, args: tuple, output: torch.Tensor) -> None:
            partial = self._partial.pop(name, None)
            if partial is None or not (torch.is_grad_enabled() and module.training):
                return
            output = output.detach()
            if block.has_relu:
                # After ReLU and max-pool, an output > 0 marks exactly one position
                # with a positive pre-activation that the pool selected. The output
                # is never negative, so its sign is the indicator (and fast to sum).
                step = max(1, output.shape[0] // RHO_SAMPLES)
                sample = output[::step]
                active = torch.sign(_channel_rows(sample).float()).sum(dim=0) * (output.shape[0] / sample.shape[0])
            else:
                active = torch.full((block.weight.shape[0],), float(partial["positions"]), device=output.device)

            variance = None
            if batch_norm is not None:
                previous = partial.get("running_var")
                if previous is not None:
                    # Train-mode batch norm has just set running_var = (1 - m) * old + m * v,
                    # v the unbiased batch variance, so v costs nothing to recover.
                    count = partial["positions"]
                    momentum = batch_norm.momentum
                    unbiased = (batch_norm.running_var.detach().float() - (1 - momentum) * previous.float()) / momentum
                    variance = unbiased.clamp_min(0.0) * (count - 1) / count + batch_norm.eps
                else:
                    # Without running statistics, recompute the variance from the
                    # block's pre-activation, which one more forward of the layer gives.
                    with torch.no_grad():
                        pre_activation = layer(args[0].detach())
                    shift = batch_norm.running_mean if batch_norm.track_running_stats else None
                    variance = _batch_variance(pre_activation, shift) + batch_norm.eps

            self.statistics[name] = BlockStatistics(
                patch_energy=partial["patch_energy"],
                active=active,
                positions=partial["positions"],
                input_positions=partial["input_positions"],
                bn_variance=variance,
                tap_positions=partial["tap_positions"],
                inputs=partial["inputs"],
            )

        self._handles.append(inner.register_forward_pre_hook(on_input))
        self._handles.append(inner.register_forward_hook(on_output))

    def remove(self) -> None:
        """Detach all hooks."""
        for handle in self._handles:
            handle.remove()
        self._handles.clear()


def closed_form_curvature(block: Block, statistics: BlockStatistics) -> Curvature:
    """Compute ``m_W`` and ``m_z`` of ``block`` from forward statistics.

    Example:
        >>> from backmatch.models.blocks import LinearBlock
        >>> layer = LinearBlock(2, 1, relu=False)
        >>> with torch.no_grad():
        ...     _ = layer.layer.weight.copy_(torch.tensor([[3.0, 4.0]]))
        >>> block = Block("fc", "linear", layer, layer.layer.weight)
        >>> stats = BlockStatistics(torch.tensor(8.0), torch.tensor([2.0]), positions=2, input_positions=2)
        >>> curvature = closed_form_curvature(block, stats)
        >>> curvature.m_w, curvature.m_z
        (4.0, 12.5)
    """
    weight_sq = block.weight.detach().float().square()
    units, in_channels = weight_sq.shape[:2]
    fan_in = weight_sq[0].numel()
    row_norms = weight_sq.reshape(units, -1).sum(dim=1)

    rho = statistics.active / statistics.positions
    if block.batch_norm is not None:
        if statistics.bn_variance is None:
            raise ValueError(f"block {block.name!r} has batch norm but no batch variance was recorded")
        gamma_sq = block.batch_norm.weight.detach().float().square()
        scale_sq = gamma_sq / statistics.bn_variance
        m_w_units = gamma_sq * rho * statistics.positions / row_norms.clamp_min(torch.finfo(torch.float32).tiny)
    else:
        scale = block.module.scale if block.kind == "residual" else 1.0
        scale_sq = scale**2
        m_w_units = (scale_sq * statistics.patch_energy / fan_in) * rho

    # trace(H_z) sums, over output positions, the squared weights of the taps that
    # fall inside the input; zero padding drops the others at the border.
    coefficients = scale_sq * rho
    if statistics.tap_positions is not None:
        # Sum over output units and input channels of coefficient * w^2, per tap;
        # a matrix-vector product is cheaper to dispatch than einsum.
        tap_energy = torch.mv(weight_sq.reshape(units, -1).T, coefficients).reshape(in_channels, -1).sum(dim=0)
        trace = (tap_energy * statistics.tap_positions.flatten()).sum()
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
