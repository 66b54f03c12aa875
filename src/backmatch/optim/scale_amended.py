"""Scale-amended SGD: SGD with a per-block learning rate set by local curvature.

Back-matching propagation with one gradient step of size ``1/m_{b,W}`` on the
weights and ``1/m_{b,z}`` on the targets equals SGD with the per-block rate
``eta_b = eta / (m_{b,W} * prod_{k > b} m_{k,z})``. This optimiser applies that
rate with ``m`` the scalar curvatures of the local Hessians, computed top-down:
``c_B = 1``, ``factor_b = c_b / m_{b,W}``, ``c_{b-1} = c_b / m_{b,z}``.
"""

from __future__ import annotations

import statistics as stats
from collections.abc import Callable

import torch

from backmatch.hessian.operators import (
    GaussNewtonOperator,
    block_function,
    hutchinson_mean_eigenvalue,
    power_iteration,
    rademacher_like,
)
from backmatch.models.blocks import Block, BlockNetwork
from backmatch.optim.batched_curvature import BatchedClosedForm
from backmatch.optim.curvature import Curvature
from backmatch.optim.statistics import BlockStatistics, StatisticsRecorder
from backmatch.settings import ScaleAmendedOptions

CurvatureFunction = Callable[[Block, BlockStatistics], Curvature]


class ScaleAmendedSGD(torch.optim.SGD):
    """SGD with momentum and weight decay whose block weights get curvature-scaled rates.

    The weight ``W_b`` of every block but the classifier forms its own parameter
    group. The classifier weight, all biases and all batch-norm parameters keep
    the base rate. The base rate lives in ``group["lr"]`` as in plain SGD, so
    learning-rate schedulers work unchanged; :meth:`step` multiplies it by the
    block's factor only for the update itself. Forward hooks record the batch
    statistics that the closed-form curvatures need, so a step must follow a
    forward pass in train mode with autograd on.

    Args:
        model: network whose :meth:`~BlockNetwork.blocks` define the groups.
        lr: base learning rate.
        momentum: heavy-ball momentum, as in :class:`torch.optim.SGD`.
        weight_decay: L2 penalty, as in :class:`torch.optim.SGD`.
        options: the choices of the rule; see :class:`ScaleAmendedOptions`.
        curvature: replaces the estimator that ``options`` select; it gets the
            block and its batch statistics and returns a :class:`Curvature`.

    Example:
        >>> from backmatch.models import mlp
        >>> net = mlp(10, in_features=8, width=4, depth=1)
        >>> optimizer = ScaleAmendedSGD(net, lr=0.1)
        >>> loss = net(torch.randn(16, 8)).square().mean()
        >>> loss.backward()
        >>> optimizer.step()
        >>> sorted(optimizer.last_record)
        ['fc1', 'fc_in', 'fc_out']

    Note:
        With ``per_channel=True`` the block weights are updated by this class
        with the same arithmetic as :class:`torch.optim.SGD` (no dampening, no
        Nesterov), because a parameter group cannot carry one rate per row.
    """

    def __init__(
        self,
        model: BlockNetwork,
        lr: float,
        momentum: float = 0.9,
        weight_decay: float = 5e-4,
        options: ScaleAmendedOptions | None = None,
        curvature: CurvatureFunction | None = None,
    ):
        self.options = options or ScaleAmendedOptions()
        self.blocks = model.blocks()
        weight_ids = {id(block.weight) for block in self.blocks}
        others = [p for p in model.parameters() if id(p) not in weight_ids]

        groups = []
        for index, block in enumerate(self.blocks):
            groups.append({
                "params": [block.weight],
                "block": block.name,
                # The classifier only passes its m_z down; it keeps the base rate.
                "scaled": index < len(self.blocks) - 1,
                "m_w": None,
                "m_z": None,
            })
        if others:
            groups.append({"params": others, "block": None, "scaled": False, "m_w": None, "m_z": None})
        super().__init__(groups, lr=lr, momentum=momentum, weight_decay=weight_decay)

        # The default closed forms of all blocks are computed together, which
        # costs a fraction of the operations of one call per block.
        self._batched: BatchedClosedForm | None = None
        self._curvature = curvature
        if curvature is None:
            self._batched, self._curvature = self._default_curvature()
        self._recorder = StatisticsRecorder(self.blocks)
        self._generator = torch.Generator(device=self.blocks[0].weight.device).manual_seed(0)
        #: Per block name: m_w, m_z (smoothed), factor and whether the clip fired, from the last step.
        self.last_record: dict[str, dict[str, float | bool]] = {}

    def _default_curvature(self) -> tuple[BatchedClosedForm | None, CurvatureFunction | None]:
        """Return the batched closed forms, or the per-block estimator that ``options`` select."""
        if self.options.estimator == "closed_form":
            if self.options.scalar != "mean":
                raise ValueError("scalar 'max' needs estimator 'numerical', because the closed forms give traces only")
            return BatchedClosedForm(self.blocks), None
        return None, self._numerical_curvature

    def _numerical_curvature(self, block: Block, statistics: BlockStatistics) -> Curvature:
        if statistics.inputs is None:
            raise RuntimeError(f"block {block.name!r}: no input was recorded for the numerical estimator")
        values = {}
        for wrt in ("weight", "input"):
            function, point = block_function(block, statistics.inputs.detach(), wrt)
            operator = GaussNewtonOperator(function, point)
            if self.options.scalar == "mean":
                values[wrt] = hutchinson_mean_eigenvalue(operator, self.options.probes, self._generator)
            else:
                start = rademacher_like(point, self._generator)
                values[wrt] = power_iteration(operator.matvec, start, iterations=self.options.probes)
        units = block.weight.shape[0]
        per_unit = torch.full((units,), values["weight"], device=block.weight.device)
        return Curvature(m_w=values["weight"], m_z=values["input"], m_w_per_unit=per_unit)

    def state_dict(self) -> dict:
        """Return SGD's state plus the random state of the numerical estimator."""
        state = super().state_dict()
        state["estimator_generator"] = self._generator.get_state()
        return state

    def load_state_dict(self, state_dict: dict) -> None:
        """Load SGD's state and the random state of the numerical estimator.

        Load the model's state first. The running batch-norm variances at this
        call are taken as those of the saved step, so that the next step
        continues exactly as an uninterrupted run would.
        """
        state_dict = dict(state_dict)
        generator_state = state_dict.pop("estimator_generator", None)
        super().load_state_dict(state_dict)
        if generator_state is not None:
            self._generator.set_state(generator_state.cpu() if generator_state.device.type != "cpu" else generator_state)
        if self._batched is not None:
            self._batched.variances.take_snapshot()

    def remove_hooks(self) -> None:
        """Detach the forward hooks, for example before deleting the model."""
        self._recorder.remove()

    def _smoothed(self, group: dict, key: str, value: float | torch.Tensor) -> float | torch.Tensor:
        previous = group[key]
        if previous is None:
            smoothed = value
        else:
            previous = torch.as_tensor(previous, device=value.device) if torch.is_tensor(value) else previous
            smoothed = self.options.ema * previous + (1 - self.options.ema) * value
        group[key] = smoothed.detach().clone() if torch.is_tensor(smoothed) else float(smoothed)
        return smoothed

    def _factors(self) -> dict[str, float | torch.Tensor]:
        """Update the smoothed curvatures from the last forward pass and return raw factors."""
        block_groups = [group for group in self.param_groups if group["block"] is not None]
        missing = [group["block"] for group in block_groups if group["block"] not in self._recorder.statistics]
        if missing:
            raise RuntimeError(
                f"no batch statistics for blocks {missing}; call step() after a forward pass in train mode with autograd on"
            )

        statistics = [self._recorder.statistics[block.name] for block in self.blocks]
        if self._batched is not None:
            curvatures = self._batched(statistics)
        else:
            curvatures = [self._curvature(block, stats) for block, stats in zip(self.blocks, statistics)]

        raw: dict[str, float | torch.Tensor] = {}
        carried = 1.0
        tiny = torch.finfo(torch.float32).tiny
        for block, group, curvature in reversed(list(zip(self.blocks, block_groups, curvatures))):
            m_w_value = curvature.m_w_per_unit if self.options.per_channel else curvature.m_w
            m_w = self._smoothed(group, "m_w", m_w_value)
            m_z = self._smoothed(group, "m_z", curvature.m_z)
            if torch.is_tensor(m_w):
                m_w = m_w.clamp_min(tiny)
            else:
                m_w = max(m_w, tiny)
            c_b = carried if self.options.rule == "full" else 1.0
            raw[block.name] = c_b / m_w
            carried = carried / max(float(m_z), tiny)
        self._recorder.statistics.clear()
        return raw

    def _normalised(self, raw: dict[str, float | torch.Tensor]) -> tuple[dict[str, float | torch.Tensor], dict[str, bool]]:
        """Divide the raw factors by their median over scaled blocks, clip them, and flag the clipped ones.

        Unscaled groups (the classifier) get factor 1. Scalar factors stay Python
        floats, because a step then costs no extra tensor operations.
        """
        scaled = [group["block"] for group in self.param_groups if group["scaled"]]
        if self.options.per_channel:
            typical = [float(raw[name].mean()) for name in scaled]
        else:
            typical = [raw[name] for name in scaled]
        median = stats.median(typical) if typical and self.options.normalize == "median" else 1.0

        factors: dict[str, float | torch.Tensor] = {}
        clipped: dict[str, bool] = {}
        low, high = self.options.clip_min, self.options.clip_max
        for name in raw:
            if name not in scaled:
                factors[name], clipped[name] = 1.0, False
            elif self.options.per_channel:
                factor = raw[name] / median
                factors[name] = factor.clamp(low, high)
                clipped[name] = bool(((factor < low) | (factor > high)).any())
            else:
                factor = raw[name] / median
                factors[name] = min(max(factor, low), high)
                clipped[name] = not low <= factor <= high
        return factors, clipped

    @torch.no_grad()
    def step(self, closure=None):  # noqa: D102 - same contract as torch.optim.SGD.step
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()

        factors, clipped = self._normalised(self._factors())
        self.last_record = {}
        for group in self.param_groups:
            name = group["block"]
            if name is None:
                continue
            factor, m_w = factors[name], group["m_w"]
            self.last_record[name] = {
                "m_w": float(m_w.mean()) if torch.is_tensor(m_w) else m_w,
                "m_z": group["m_z"],
                "factor": float(factor.mean()) if torch.is_tensor(factor) else factor,
                "clipped": clipped[name],
            }

        manual = set()
        if self.options.per_channel:
            self._per_channel_update(factors)
            manual = {group["block"] for group in self.param_groups if group["scaled"]}

        # The scheduled base rate stays in group["lr"]; the factor applies to this update only.
        saved = []
        for group in self.param_groups:
            saved.append((group["lr"], group["params"]))
            if group["block"] in manual:
                group["params"] = []
            elif group["block"] is not None:
                group["lr"] = group["lr"] * factors[group["block"]]
        try:
            super().step()
        finally:
            for group, (lr, params) in zip(self.param_groups, saved):
                group["lr"], group["params"] = lr, params
        return loss

    def _per_channel_update(self, factors: dict[str, float | torch.Tensor]) -> None:
        for group in self.param_groups:
            if not group["scaled"]:
                continue
            weight = group["params"][0]
            if weight.grad is None:
                continue
            step = weight.grad.add(weight, alpha=group["weight_decay"]) if group["weight_decay"] else weight.grad.clone()
            if group["momentum"]:
                state = self.state[weight]
                buffer = state.get("momentum_buffer")
                if buffer is None:
                    buffer = state["momentum_buffer"] = step.clone()
                else:
                    buffer.mul_(group["momentum"]).add_(step)
                step = buffer
            rate = group["lr"] * torch.as_tensor(factors[group["block"]], device=weight.device, dtype=weight.dtype)
            weight.sub_(rate.view(-1, *([1] * (weight.dim() - 1))) * step)
