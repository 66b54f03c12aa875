"""Per-block local-Hessian records: method choice, spectra, estimates and timings.

:func:`analyse_model` runs a float64 copy of a network on a fixed batch and
returns one JSON-ready record per block. For each of ``H_W`` and ``H_z`` it
picks a spectrum method (see :func:`choose_method`), adds the Lanczos largest
eigenvalue and the Hutchinson mean eigenvalue of the exact operator, and for a
residual block ``||J_G||_2``.
"""

from __future__ import annotations

import copy
import logging
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn

from backmatch.hessian.dense import dense_input_spectrum, dense_weight_spectrum
from backmatch.hessian.factors import DEFAULT_MAX_BYTES, JacobianFactors, jacobian_factors, structured_support
from backmatch.hessian.iterative import LANCZOS_TOL, hutchinson_mean, lanczos_lambda_max, residual_jacobian_norm
from backmatch.hessian.operators import GaussNewtonOperator, block_function
from backmatch.hessian.spectrum import METHODS, SpectrumSummary
from backmatch.hessian.structured import input_structure_support, input_spectrum, patch_factor_spectrum, weight_spectrum
from backmatch.models.blocks import Block, BlockNetwork
from backmatch.optim.curvature import measure_closed_form

logger = logging.getLogger(__name__)

BN_MODES = ("train", "eval")
LANCZOS_CHOICES = ("inexact", "always", "never")

LANCZOS_ONLY_NOTE = (
    "Only the largest eigenvalue is estimated (Lanczos): the smallest eigenvalue of a large operator is not "
    "estimated, so lambda_min, the condition number and the null space are not reported."
)


@dataclass(frozen=True)
class AnalysisOptions:
    """Choices of a local-Hessian analysis.

    Attributes:
        dense_max_dim: largest operator dimension decomposed as a dense matrix.
        probes: Rademacher probes of each Hutchinson estimate.
        rtol: relative null threshold; ``None`` means ``dim * eps(float64)``.
        method: ``"auto"`` or one of :data:`~backmatch.hessian.spectrum.METHODS`
            to force wherever that method applies.
        lanczos_tol: relative accuracy of the Lanczos largest eigenvalue.
        estimators: compute the Lanczos and Hutchinson estimates.
        lanczos: where the Lanczos estimate is computed when ``estimators`` is on.
            ``"inexact"`` computes it only for matrices without an exact
            spectrum, where it is the only largest eigenvalue of the exact
            operator. ``"always"`` also computes it as a check of exact spectra.
            ``"never"`` computes it only where Lanczos is the spectrum method.
        bn_mode: ``"train"`` (batch statistics of the analysed batch) or
            ``"eval"`` (running statistics).
        max_bytes: scratch memory the structured and dense paths aim to stay under.
        seed: seed of the Lanczos start vector, the Hutchinson probes and the
            power-iteration start.
    """

    dense_max_dim: int = 2048
    probes: int = 16
    rtol: float | None = None
    method: str = "auto"
    lanczos_tol: float = LANCZOS_TOL
    estimators: bool = True
    lanczos: str = "inexact"
    bn_mode: str = "train"
    max_bytes: int = DEFAULT_MAX_BYTES
    seed: int = 0

    def __post_init__(self) -> None:
        if self.method != "auto" and self.method not in METHODS:
            raise ValueError(f"method {self.method!r} is unknown; use auto or one of {METHODS}")
        if self.bn_mode not in BN_MODES:
            raise ValueError(f"bn_mode {self.bn_mode!r} is unknown; use train or eval")
        if self.lanczos not in LANCZOS_CHOICES:
            raise ValueError(f"lanczos {self.lanczos!r} is unknown; use one of {LANCZOS_CHOICES}")
        if self.dense_max_dim < 0:
            raise ValueError(f"dense_max_dim {self.dense_max_dim} is negative; use 0 to disable the dense method")
        if self.probes < 1:
            raise ValueError(f"probes {self.probes} must be at least 1")
        if self.rtol is not None and not 0 <= self.rtol < 1:
            raise ValueError(f"rtol {self.rtol} must be in [0, 1), or None for dim * eps(float64)")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def choose_method(dim: int, available: tuple[str, ...], options: AnalysisOptions) -> tuple[str, str | None]:
    """Pick the spectrum method of one matrix, with a note when a forced method was not used.

    ``available`` lists the methods that apply to the matrix, in the order
    ``structured``, ``patch_factor`` (``dense`` and ``lanczos`` always apply).
    The automatic order is structured (exact, and far cheaper than dense: the
    dense path costs one forward- and reverse-mode pass per dimension), then
    dense when ``dim <= dense_max_dim``, then patch factor, then Lanczos.

    Example:
        >>> choose_method(100, ("structured",), AnalysisOptions())
        ('structured', None)
        >>> choose_method(100, ("patch_factor",), AnalysisOptions())
        ('dense', None)
        >>> choose_method(10_000, ("patch_factor",), AnalysisOptions())
        ('patch_factor', None)
    """
    if options.method != "auto":
        if options.method in ("dense", "lanczos") or options.method in available:
            return options.method, None
        fallback, _ = choose_method(dim, available, AnalysisOptions(dense_max_dim=options.dense_max_dim))
        return fallback, f"The requested method {options.method} does not apply to this matrix; {fallback} was used."

    if "structured" in available:
        return "structured", None
    if dim <= options.dense_max_dim:
        return "dense", None
    if "patch_factor" in available:
        return "patch_factor", None
    return "lanczos", None


def analysis_copy(model: nn.Module, bn_mode: str = "train") -> nn.Module:
    """Return a float64 copy of ``model`` in train (batch statistics) or eval (running statistics) mode."""
    if bn_mode not in BN_MODES:
        raise ValueError(f"bn_mode {bn_mode!r} is unknown; use train or eval")
    twin = copy.deepcopy(model).to(torch.float64)
    return twin.train() if bn_mode == "train" else twin.eval()


def block_inputs(model: BlockNetwork, images: torch.Tensor) -> list[torch.Tensor]:
    """Return the input ``z_{b-1}`` of every block for ``images`` (float64, detached)."""
    inputs = []
    z = images.to(torch.float64)
    with torch.no_grad():
        for block in model.blocks():
            inputs.append(z)
            z = block.module(z)
    return inputs


def analyse_block(block: Block, inputs: torch.Tensor, index: int, options: AnalysisOptions) -> dict[str, Any]:
    """Return the JSON-ready record of one float64 block on one batch.

    The closed-form curvatures always use batch statistics, also when the
    block's batch norm is in eval mode, as in scale-amended SGD on training batches.

    Example:
        >>> from backmatch.models import mlp
        >>> net = analysis_copy(mlp(3, in_features=4, width=5, depth=1))
        >>> block = net.blocks()[1]
        >>> record = analyse_block(block, torch.randn(6, 5, dtype=torch.float64), 1,
        ...                        AnalysisOptions(probes=2))
        >>> record["H_W"]["method"], record["H_z"]["method"]
        ('structured', 'structured')
    """
    bn_mode = "train" if block.module.training else "eval"
    unsupported = structured_support(block)
    factors = jacobian_factors(block, inputs) if unsupported is None else None

    weight_summary = _weight_summary(block, inputs, factors, unsupported, options)
    input_summary = _input_summary(block, inputs, factors, unsupported, options)

    closed_form = measure_closed_form(block, inputs)
    jg_norm = residual_jacobian_norm(block, inputs, seed=options.seed) if block.kind == "residual" else None
    return {
        "block": block.name,
        "index": index,
        "kind": block.kind,
        "bn": block.batch_norm is not None,
        "relu": block.has_relu,
        "pool": block.has_pool,
        "bn_mode": bn_mode,
        "weight_norm": float(block.weight.detach().norm()),
        "H_W": weight_summary.to_json(),
        "H_z": input_summary.to_json(),
        "closed_form": {"m_w": closed_form.m_w, "m_z": closed_form.m_z},
        "jg_norm": jg_norm,
    }


def _weight_summary(
    block: Block, inputs: torch.Tensor, factors: JacobianFactors | None, unsupported: str | None, options: AnalysisOptions
) -> SpectrumSummary:
    operator = GaussNewtonOperator(*block_function(block, inputs, "weight"))
    available = ("structured",) if factors is not None else ()
    method, note = choose_method(operator.dim, available, options)

    def compute() -> SpectrumSummary:
        if method == "dense":
            return dense_weight_spectrum(operator, factors, options.rtol, options.max_bytes)
        if method == "structured":
            return weight_spectrum(factors, options.rtol, options.max_bytes)
        return _lanczos_only(operator.dim)

    summary = _timed(compute)
    if unsupported is not None:
        summary.add_note(f"No structured form: {unsupported}.")
    return _finish(summary, operator, note, options)


def _input_summary(
    block: Block, inputs: torch.Tensor, factors: JacobianFactors | None, unsupported: str | None, options: AnalysisOptions
) -> SpectrumSummary:
    operator = GaussNewtonOperator(*block_function(block, inputs, "input"))
    available: tuple[str, ...] = ()
    if factors is not None and input_structure_support(factors) is None:
        available = ("structured",)
    elif factors is not None and block.kind == "conv":
        available = ("patch_factor",)
    method, note = choose_method(operator.dim, available, options)

    def compute() -> SpectrumSummary:
        if method == "dense":
            return dense_input_spectrum(operator, factors, options.rtol, options.max_bytes)
        if method == "structured":
            return input_spectrum(factors, options.rtol, options.max_bytes)
        if method == "patch_factor":
            return patch_factor_spectrum(factors, options.rtol)
        return _lanczos_only(operator.dim)

    summary = _timed(compute)
    return _finish(summary, operator, note, options)


def _lanczos_only(dim: int) -> SpectrumSummary:
    summary = SpectrumSummary(dim=dim, method="lanczos", exact=False)
    summary.add_note(LANCZOS_ONLY_NOTE)
    return summary


def _timed(compute: Callable[[], SpectrumSummary]) -> SpectrumSummary:
    start = time.perf_counter()
    summary = compute()
    summary.seconds = time.perf_counter() - start
    return summary


def _finish(summary: SpectrumSummary, operator: GaussNewtonOperator, note: str | None, options: AnalysisOptions) -> SpectrumSummary:
    """Add the forced-method note and the Lanczos and Hutchinson estimates of the exact operator."""
    if note:
        summary.add_note(note)
    if summary.method == "lanczos" or options.estimators:
        start = time.perf_counter()
        requested = summary.method == "lanczos" or options.lanczos == "always" or (
            options.lanczos == "inexact" and not summary.exact
        )
        if requested:
            value, lanczos_note = lanczos_lambda_max(operator, tol=options.lanczos_tol, seed=options.seed)
            summary.lanczos_lambda_max = value
            if lanczos_note:
                summary.add_note(lanczos_note)
        if options.estimators or summary.mean_eigenvalue is None:
            summary.hutchinson_mean = hutchinson_mean(operator, options.probes, seed=options.seed)
        summary.estimator_seconds = time.perf_counter() - start
    if summary.method == "lanczos":
        summary.lambda_max = summary.lanczos_lambda_max
        summary.mean_eigenvalue = summary.hutchinson_mean
    return summary


def analyse_model(
    model: BlockNetwork,
    images: torch.Tensor,
    options: AnalysisOptions,
    progress: Callable[[dict[str, Any]], None] | None = None,
) -> list[dict[str, Any]]:
    """Analyse every block of a float64 copy of ``model`` on ``images``.

    Each record is the one of :func:`analyse_block` plus ``seconds``, the
    wall-clock time of the whole block.

    Args:
        model: the network; it is copied, not changed.
        images: the fixed batch, already normalised.
        options: method and estimator choices.
        progress: called with each record as soon as it is ready.
    """
    twin = analysis_copy(model, options.bn_mode)
    inputs = block_inputs(twin, images.to(next(twin.parameters()).device))
    blocks = twin.blocks()
    records = []
    for index, (block, block_input) in enumerate(zip(blocks, inputs)):
        start = time.perf_counter()
        record = analyse_block(block, block_input, index, options)
        record["seconds"] = time.perf_counter() - start
        log_record(record, len(blocks))
        if progress is not None:
            progress(record)
        records.append(record)
    return records


def log_record(record: dict[str, Any], total: int) -> None:
    """Log one line per block: methods, condition numbers and seconds."""
    weight, inputs = record["H_W"], record["H_z"]
    logger.info(
        "%s (%d/%d): H_W %s cond %s, H_z %s cond %s, %.1f s",
        record["block"],
        record["index"] + 1,
        total,
        weight["method"],
        _format(weight["condition_number"]),
        inputs["method"],
        _format(inputs["condition_number"]),
        record.get("seconds", 0.0),
    )


def _format(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3e}"
