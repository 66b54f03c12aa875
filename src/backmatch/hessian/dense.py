"""Dense exact spectra of local Hessians from the full ``J^T J`` matrix.

The dense path builds ``J^T J`` with ``torch.func`` and makes no use of the
block structure for the matrix itself. It applies the same null-space rule as
the structured path. The structural null counts come from the forward pass
(:mod:`backmatch.hessian.factors`). The batch-norm directions ``w_i`` are
projected out of each live unit's coordinates. The remaining structural nulls
are the smallest eigenvalues, which are zero up to rounding.
"""

from __future__ import annotations

import math

import torch
from torch.func import vmap

from backmatch.hessian.factors import (
    DEFAULT_MAX_BYTES,
    JacobianFactors,
    bn_null_directions,
    chunk_size,
    householder_vectors,
    input_scale_invariant,
    input_structural_nulls,
    project_out_rows,
    weight_structural_nulls,
)
from backmatch.hessian.operators import GaussNewtonOperator
from backmatch.hessian.spectrum import SpectrumSummary, summarize_spectrum


def gauss_newton_matrix(
    operator: GaussNewtonOperator, max_bytes: int = DEFAULT_MAX_BYTES, activation_numel: int | None = None
) -> torch.Tensor:
    """Return ``J^T J`` as a ``dim x dim`` matrix, from ``J^T J e_k`` for chunks of basis vectors ``e_k``.

    The products are vectorised with ``vmap`` over a chunk of basis vectors
    sized so that the tangents stay near ``max_bytes``. Unlike
    :meth:`GaussNewtonOperator.dense`, whose ``jacrev`` builds an
    ``output x output`` basis, memory does not grow with the square of the
    output size.

    Args:
        operator: the operator.
        max_bytes: memory the vectorised products aim to stay under.
        activation_numel: size of the largest intermediate of the block (the
            pre-pool activation of a pooled block); the output size when ``None``.
    """
    dim = operator.dim
    point = operator.point
    largest = max(math.prod(operator.output_shape), activation_numel or 0)
    matrix = torch.empty(dim, dim, dtype=point.dtype, device=point.device)
    # NOTE: measured on VGG blocks (torch 2.14, CPU), one product keeps about six
    # float64 tensors of the largest intermediate's size alive; 8 leaves a margin.
    step = chunk_size(8 * 8 * (largest + dim), max_bytes)
    products = vmap(operator.matvec)
    for start in range(0, dim, step):
        stop = min(start + step, dim)
        basis = torch.zeros(stop - start, dim, dtype=point.dtype, device=point.device)
        basis[torch.arange(stop - start), torch.arange(start, stop)] = 1.0
        matrix[:, start:stop] = products(basis).reshape(stop - start, dim).T
    return (matrix + matrix.T) / 2


def project_unit_rows(matrix: torch.Tensor, factors: JacobianFactors) -> torch.Tensor:
    """Project ``w_i`` out of the coordinates of every unit that :func:`bn_null_directions` marks.

    ``H_W`` is indexed unit-major (``W_b`` flattened), so unit ``i`` owns
    coordinates ``i * fan_in ... (i + 1) * fan_in - 1``. Each marked unit loses
    one coordinate; the result has ``dim - marked`` rows and columns.
    """
    marked = bn_null_directions(factors).nonzero().flatten().tolist()
    if not marked:
        return matrix

    fan_in = factors.fan_in
    matrix = matrix.clone()
    keep = torch.ones(matrix.shape[0], dtype=torch.bool, device=matrix.device)
    for unit in marked:
        coordinates = slice(unit * fan_in, (unit + 1) * fan_in)
        vector = householder_vectors(factors.weight_matrix[unit])
        scale = 2.0 / vector.dot(vector)
        # H A H for the reflection H of this unit, applied to its columns, then its rows.
        columns = matrix[:, coordinates]
        matrix[:, coordinates] = columns - scale * (columns @ vector).unsqueeze(1) * vector.unsqueeze(0)
        rows = matrix[coordinates, :]
        matrix[coordinates, :] = rows - scale * vector.unsqueeze(1) * (vector @ rows).unsqueeze(0)
        keep[unit * fan_in] = False
    return matrix[keep][:, keep]


def dense_spectrum(
    matrix: torch.Tensor,
    structural: dict[str, int],
    rtol: float | None = None,
    factors: JacobianFactors | None = None,
) -> SpectrumSummary:
    """Summarise the spectrum of a dense ``J^T J`` under the null-space rule.

    Args:
        matrix: the ``dim x dim`` matrix.
        structural: structural null counts by reason.
        rtol: relative null threshold; ``dim * eps(float64)`` when ``None``.
        factors: for ``H_W`` with batch-norm nulls, the factors that give the
            rows ``w_i`` to project out; ``None`` otherwise.
    """
    dim = matrix.shape[0]
    trace = float(matrix.trace())
    if factors is not None:
        matrix = project_unit_rows(matrix, factors)
    eigenvalues = torch.linalg.eigvalsh(matrix)
    removed = sum(count for reason, count in structural.items() if reason != "bn scale invariance")
    return summarize_spectrum(eigenvalues[removed:], dim=dim, trace=trace, method="dense", structural=structural, rtol=rtol)


def dense_weight_spectrum(
    operator: GaussNewtonOperator,
    factors: JacobianFactors | None,
    rtol: float | None = None,
    max_bytes: int = DEFAULT_MAX_BYTES,
) -> SpectrumSummary:
    """Compute the exact spectrum of ``H_W`` from the dense matrix.

    Without ``factors`` (a block the structured factors do not cover) only
    numerical nulls are removed.
    """
    structural = weight_structural_nulls(factors)[0] if factors is not None else {}
    activation_numel = factors.row_weights.numel() if factors is not None else None
    return dense_spectrum(gauss_newton_matrix(operator, max_bytes, activation_numel), structural, rtol, factors)


def dense_input_spectrum(
    operator: GaussNewtonOperator,
    factors: JacobianFactors | None,
    rtol: float | None = None,
    max_bytes: int = DEFAULT_MAX_BYTES,
) -> SpectrumSummary:
    """Compute the exact spectrum of ``H_z`` from the dense matrix.

    With batch norm on batch statistics and no bias before it, the batch
    input ``z`` is projected out as a ``"bn scale invariance"`` null.
    """
    structural = input_structural_nulls(factors) if factors is not None else {}
    activation_numel = factors.row_weights.numel() if factors is not None else None
    matrix = gauss_newton_matrix(operator, max_bytes, activation_numel)
    if factors is None or not input_scale_invariant(factors):
        return dense_spectrum(matrix, structural, rtol)

    trace = float(matrix.trace())
    projected = project_out_rows(matrix, factors.inputs.reshape(-1))
    eigenvalues = torch.linalg.eigvalsh(projected)
    return summarize_spectrum(eigenvalues, dim=matrix.shape[0], trace=trace, method="dense", structural=structural, rtol=rtol)
