"""Summaries of a local-Hessian spectrum and the rule that decides which directions are null.

Every method (dense, structured, patch factor) hands its eigenvalues to
:func:`summarize_spectrum`, so the methods agree on what counts as null:

1. Structural nulls, which the caller removes before the eigenvalues arrive and
   counts by reason (see :data:`NULL_REASONS`).
2. Numerical nulls: remaining eigenvalues at or below ``rtol * lambda_max``,
   with ``rtol = dim * eps(float64)`` unless the caller sets it.

The condition number is ``lambda_max`` over the smallest non-null eigenvalue.
When every direction is null it is ``None`` and a note states the reason, so a
summary never contains an infinity and never divides by zero.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

import torch

#: Reasons for a null direction. ``"dead unit"``: an output unit that no
#: gradient reaches (no active position), so its whole weight row is null.
#: ``"bn scale invariance"``: with batch norm in train mode the row ``w_i`` of a
#: live unit is a null direction (exactly for eps = 0, nearly so otherwise) and
#: is projected out. ``"rank bound"``: a factor with fewer rows than columns.
#: ``"numerical"``: an eigenvalue at or below ``rtol * lambda_max``.
NULL_REASONS = ("dead unit", "bn scale invariance", "rank bound", "numerical")

#: Spectrum methods. ``"dense"`` and ``"structured"`` are exact, ``"patch_factor"``
#: approximates the input Hessian of a convolution, ``"lanczos"`` estimates the
#: largest eigenvalue only.
METHODS = ("dense", "structured", "patch_factor", "lanczos")


def default_rtol(dim: int) -> float:
    """Return the default relative null threshold ``dim * eps(float64)``.

    Example:
        >>> default_rtol(1000)
        2.220446049250313e-13
    """
    return dim * torch.finfo(torch.float64).eps


@dataclass
class SpectrumSummary:
    """Spectrum of one local Hessian (``H_W`` or ``H_z``) of one block.

    Attributes:
        dim: dimension of the operator (weights of the block, or inputs of the batch).
        method: one of :data:`METHODS`.
        exact: whether ``lambda_*``, ``condition_number`` and ``null_dim`` are
            exact up to rounding (false for ``"patch_factor"`` and ``"lanczos"``).
        lambda_max: largest eigenvalue.
        lambda_min: smallest non-null eigenvalue; ``None`` when every direction
            is null or when the method does not compute it.
        condition_number: ``lambda_max / lambda_min`` over non-null directions.
        mean_eigenvalue: ``trace / dim`` over all ``dim`` directions.
        null_dim: number of null directions removed.
        null_reasons: count of null directions per reason in :data:`NULL_REASONS`.
        lanczos_lambda_max: Lanczos estimate of the largest eigenvalue of the
            exact operator.
        hutchinson_mean: Hutchinson estimate of ``trace / dim`` of the exact operator.
        seconds: wall-clock time of the spectrum computed by ``method``.
        estimator_seconds: wall-clock time of the Lanczos and Hutchinson estimates.
        note: why a value is missing or approximate, ``None`` when nothing needs saying.
    """

    dim: int
    method: str
    exact: bool
    lambda_max: float | None = None
    lambda_min: float | None = None
    condition_number: float | None = None
    mean_eigenvalue: float | None = None
    null_dim: int | None = None
    null_reasons: dict[str, int] = field(default_factory=dict)
    lanczos_lambda_max: float | None = None
    hutchinson_mean: float | None = None
    seconds: float | None = None
    estimator_seconds: float | None = None
    note: str | None = None

    def add_note(self, text: str) -> None:
        """Append a sentence to :attr:`note`."""
        self.note = text if not self.note else f"{self.note} {text}"

    def to_json(self) -> dict[str, Any]:
        """Return the summary as JSON types, with ``None`` for every non-finite number."""
        return {key: _finite_or_none(value) for key, value in asdict(self).items()}


def _finite_or_none(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def summarize_spectrum(
    eigenvalues: torch.Tensor,
    *,
    dim: int,
    trace: float,
    method: str,
    structural: dict[str, int] | None = None,
    exact: bool = True,
    rtol: float | None = None,
) -> SpectrumSummary:
    """Apply the null-space rule to eigenvalues and summarise the non-null spectrum.

    Args:
        eigenvalues: the eigenvalues left after the caller removed the
            structural nulls, in any order and shape.
        dim: dimension of the matrix; ``eigenvalues.numel()`` plus the
            structural counts must equal it.
        trace: trace of the matrix before any projection, for ``trace / dim``.
        method: one of :data:`METHODS`.
        structural: structural null counts by reason.
        exact: whether the eigenvalues are those of the exact operator.
        rtol: relative null threshold; ``dim * eps(float64)`` when ``None``.

    Raises:
        ValueError: the eigenvalue and null counts do not add up to ``dim``, or
            ``method`` or a reason is unknown.

    Example:
        >>> summary = summarize_spectrum(torch.tensor([0.0, 1.0, 4.0]), dim=4, trace=5.0,
        ...                              method="dense", structural={"rank bound": 1})
        >>> summary.condition_number, summary.null_dim, summary.null_reasons
        (4.0, 2, {'rank bound': 1, 'numerical': 1})
    """
    if method not in METHODS:
        raise ValueError(f"unknown spectrum method {method!r}; expected one of {METHODS}")
    structural = {reason: int(count) for reason, count in (structural or {}).items() if count}
    unknown = sorted(set(structural) - set(NULL_REASONS))
    if unknown:
        raise ValueError(f"unknown null reasons {unknown}; expected some of {NULL_REASONS}")

    values = eigenvalues.detach().to("cpu", torch.float64).flatten()
    if values.numel() + sum(structural.values()) != dim:
        raise ValueError(
            f"{values.numel()} eigenvalues and {sum(structural.values())} structural nulls do not add up to "
            f"dim {dim}; the caller removed the wrong number of null directions"
        )
    rtol = default_rtol(dim) if rtol is None else rtol

    lambda_max = float(values.max()) if values.numel() else 0.0
    threshold = rtol * max(lambda_max, 0.0)
    live = values[values > threshold]
    reasons = dict(structural)
    numerical = values.numel() - live.numel()
    if numerical:
        reasons["numerical"] = numerical

    summary = SpectrumSummary(
        dim=dim,
        method=method,
        exact=exact,
        lambda_max=lambda_max,
        mean_eigenvalue=trace / dim,
        null_dim=sum(reasons.values()),
        null_reasons=reasons,
    )
    if live.numel() == 0:
        summary.add_note(
            f"All {dim} directions are null ({_describe(reasons)}), so lambda_min and the condition number are undefined."
        )
        return summary

    summary.lambda_min = float(live.min())
    summary.condition_number = lambda_max / summary.lambda_min
    return summary


def _describe(reasons: dict[str, int]) -> str:
    return ", ".join(f"{count} {reason}" for reason, count in reasons.items()) or "none"


def drop_smallest(eigenvalues: torch.Tensor, count: torch.Tensor | int) -> torch.Tensor:
    """Remove the ``count`` smallest eigenvalues of each row of an ascending batch.

    Args:
        eigenvalues: ``(batch, m)`` eigenvalues in ascending order per row, as
            :func:`torch.linalg.eigvalsh` returns them, or one ``(m,)`` row.
        count: per row, the number of structural nulls to remove.

    Returns:
        The kept eigenvalues of all rows, concatenated into one vector.

    Example:
        >>> drop_smallest(torch.tensor([[0.0, 1.0, 2.0], [0.0, 0.0, 3.0]]), torch.tensor([1, 2]))
        tensor([1., 2., 3.])
    """
    rows = eigenvalues.reshape(-1, eigenvalues.shape[-1])
    count = torch.as_tensor(count, device=rows.device).reshape(-1, 1)
    keep = (torch.arange(rows.shape[1], device=rows.device).unsqueeze(0) >= count).expand(rows.shape)
    return rows[keep]
