"""Exact spectra of local Hessians from their block structure, and the patch-factor approximation.

``H_W`` is block-diagonal over output units: ``H_W = diag_i(Q_i^T M_i^T M_i Q_i)``
with the factors of :mod:`backmatch.hessian.factors`, so its spectrum is the union
of ``units`` fan-in sized spectra. Each is computed with ``eigvalsh`` in float64
on the smaller side. That is the ``fan_in x fan_in`` matrix when the unit has at
least as many active rows as the fan-in, else the Gram matrix of the active
rows. The eigenvalues the Gram matrix lacks are exact zeros, counted as
``"rank bound"`` nulls.

``H_z`` of a linear block without batch norm is block-diagonal over samples with
blocks ``W^T D_j W`` (``D_j`` the active units of sample ``j``), and of a residual
block ``(I + J_G)^T (I + J_G)`` per sample. For a convolution the input Hessian
couples neighbouring positions, and :func:`patch_factor_spectrum` gives an
approximation from the weights alone.
"""

from __future__ import annotations

import torch

from backmatch.hessian.factors import (
    DEFAULT_MAX_BYTES,
    JacobianFactors,
    bn_null_directions,
    chunk_size,
    input_structural_nulls,
    project_out_rows,
    weight_structural_nulls,
)
from backmatch.hessian.spectrum import SpectrumSummary, drop_smallest, summarize_spectrum

PATCH_FACTOR_NOTE = (
    "Approximation: eigenvalues of the fan_in x fan_in patch factor W~^T W~ with W~ = diag(s_i sqrt(rho_i)) W, "
    "s_i = gamma_i / sigma_i with batch norm (1 without) and rho_i the fraction of positions passing ReLU and pool; "
    "exact only for a 1x1 convolution without ReLU or batch norm. lambda_*, null_dim and mean_eigenvalue refer to "
    "that factor; lanczos_lambda_max and hutchinson_mean refer to the exact operator."
)


def _centring_statistics(factors: JacobianFactors, max_bytes: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Return the mean patch row ``pbar`` (fan_in) and ``q = P^T yhat / N`` (fan_in x units)."""
    row_sum = torch.zeros(factors.fan_in, dtype=factors.weight_matrix.dtype, device=factors.weight_matrix.device)
    moment = torch.zeros(factors.fan_in, factors.units, dtype=row_sum.dtype, device=row_sum.device)
    for samples, patches in factors.patches(max_bytes):
        normalised = factors.normalised[samples].transpose(1, 2).reshape(-1, factors.units)
        row_sum += patches.sum(dim=0)
        moment += patches.T @ normalised
    count = factors.samples * factors.positions
    return row_sum / count, moment / count


def _unit_rows(
    factors: JacobianFactors,
    unit: int,
    samples: slice,
    patches: torch.Tensor,
    centring: tuple[torch.Tensor, torch.Tensor] | None,
) -> torch.Tensor:
    """Return the non-zero rows of ``J_i = M_i Q_i`` that come from one chunk of samples."""
    weights = factors.row_weights[samples, unit].reshape(-1)
    index = weights.nonzero().squeeze(1)
    rows = patches.index_select(0, index)
    if centring is not None:
        mean_row, moment = centring
        normalised = factors.normalised[samples, unit].reshape(-1).index_select(0, index)
        rows = rows - mean_row - normalised.unsqueeze(1) * moment[:, unit]
    return rows * (factors.gain[unit] * weights.index_select(0, index).sqrt()).unsqueeze(1)


def weight_hessian_blocks(factors: JacobianFactors, max_bytes: int = DEFAULT_MAX_BYTES) -> torch.Tensor:
    """Return the diagonal blocks ``H_i = J_i^T J_i`` of ``H_W`` as a ``units x fan_in x fan_in`` tensor.

    No direction is projected out. Meant for checks on small blocks; the
    spectrum of a large block comes from :func:`weight_spectrum`.
    """
    centring = _centring_statistics(factors, max_bytes) if factors.centred else None
    matrix = factors.weight_matrix
    blocks = torch.zeros(factors.units, factors.fan_in, factors.fan_in, dtype=matrix.dtype, device=matrix.device)
    for samples, patches in factors.patches(max_bytes):
        for unit in range(factors.units):
            rows = _unit_rows(factors, unit, samples, patches, centring)
            blocks[unit] += rows.T @ rows
    return blocks


def weight_spectrum(factors: JacobianFactors, rtol: float | None = None, max_bytes: int = DEFAULT_MAX_BYTES) -> SpectrumSummary:
    """Compute the exact spectrum of ``H_W`` unit by unit and summarise it.

    Null directions: dead units (fan-in nulls each), the row ``w_i`` of every
    live unit with batch norm in train mode (projected out), and the rank bound
    of units with fewer active rows than the remaining fan-in.

    Note:
        Memory stays near ``max_bytes`` plus the patch rows of one chunk of
        samples: units are processed in groups whose ``fan_in x fan_in``
        accumulators or Gram rows fit in ``max_bytes``.
    """
    structural, _ = weight_structural_nulls(factors)
    active = factors.active_rows()
    shared = not factors.centred and bool((factors.row_weights == 1).all())
    if shared:
        values, trace = _shared_unit_eigenvalues(factors, max_bytes)
    else:
        unit_values, trace = _per_unit_eigenvalues(factors, active, max_bytes)
        values = torch.cat(unit_values) if unit_values else torch.zeros(0, dtype=torch.float64)
    return summarize_spectrum(
        values, dim=factors.units * factors.fan_in, trace=trace, method="structured", structural=structural, rtol=rtol
    )


def _shared_unit_eigenvalues(factors: JacobianFactors, max_bytes: int) -> tuple[torch.Tensor, float]:
    """Return the eigenvalues when every row is active for every unit, so ``H_i = g_i^2 P^T P``.

    ``P^T P`` (or the Gram ``P P^T`` when there are fewer rows than the fan-in)
    is decomposed once and scaled per unit.
    """
    rows = factors.samples * factors.positions
    fan_in = factors.fan_in
    if rows < fan_in:
        patches = torch.cat([chunk for _, chunk in factors.patches(max_bytes)])
        base = torch.linalg.eigvalsh(patches @ patches.T)
    else:
        moment = torch.zeros(fan_in, fan_in, dtype=factors.weight_matrix.dtype, device=factors.weight_matrix.device)
        for _, patches in factors.patches(max_bytes):
            moment += patches.T @ patches
        base = torch.linalg.eigvalsh(moment)

    gain_sq = factors.gain.square()
    values = (gain_sq.unsqueeze(1) * base.unsqueeze(0)).reshape(-1)
    trace = float(gain_sq.sum() * base.sum())
    return values, trace


def _per_unit_eigenvalues(factors: JacobianFactors, active: torch.Tensor, max_bytes: int) -> tuple[list[torch.Tensor], float]:
    """Return the eigenvalues of every live unit, computed on the smaller side, and the trace."""
    centring = _centring_statistics(factors, max_bytes) if factors.centred else None
    projected = bn_null_directions(factors)
    fan_in = factors.fan_in
    device = factors.weight_matrix.device
    live = [unit for unit in range(factors.units) if active[unit] > 0]

    values: list[torch.Tensor] = []
    trace = 0.0
    unit_bytes = 8 * fan_in * fan_in
    group_size = chunk_size(unit_bytes, max_bytes)
    for start in range(0, len(live), group_size):
        group = live[start : start + group_size]
        gram_side = {unit: int(active[unit]) < fan_in - int(projected[unit]) for unit in group}
        moments = {unit: torch.zeros(fan_in, fan_in, dtype=torch.float64, device=device) for unit in group if not gram_side[unit]}
        rows: dict[int, list[torch.Tensor]] = {unit: [] for unit in group if gram_side[unit]}

        for samples, patches in factors.patches(max_bytes):
            for unit in group:
                unit_rows = _unit_rows(factors, unit, samples, patches, centring)
                if gram_side[unit]:
                    rows[unit].append(unit_rows)
                else:
                    moments[unit] += unit_rows.T @ unit_rows

        for unit in group:
            if gram_side[unit]:
                unit_values, unit_trace = _gram_eigenvalues(torch.cat(rows[unit]), factors, unit, bool(projected[unit]))
            else:
                unit_values, unit_trace = _moment_eigenvalues(moments[unit], factors, unit, bool(projected[unit]))
            values.append(unit_values)
            trace += unit_trace
    return values, trace


def _moment_eigenvalues(moment: torch.Tensor, factors: JacobianFactors, unit: int, project: bool) -> tuple[torch.Tensor, float]:
    trace = float(moment.trace())
    if project:
        moment = project_out_rows(moment, factors.weight_matrix[unit])
    return torch.linalg.eigvalsh(moment), trace


def _gram_eigenvalues(rows: torch.Tensor, factors: JacobianFactors, unit: int, project: bool) -> tuple[torch.Tensor, float]:
    trace = float(rows.square().sum())
    gram = rows @ rows.T
    if project:
        # (R U)(R U)^T = R (I - w w^T / ||w||^2) R^T for U a basis of the complement of w.
        direction = factors.weight_matrix[unit] / factors.weight_matrix[unit].norm()
        along = rows @ direction
        gram = gram - along.unsqueeze(1) * along.unsqueeze(0)
    return torch.linalg.eigvalsh(gram), trace


def input_structure_support(factors: JacobianFactors) -> str | None:
    """Return why ``H_z`` has no exact structured form for this block, or ``None`` when it has one."""
    block = factors.block
    if block.kind == "conv":
        return "a convolution couples neighbouring input positions"
    if block.batch_norm is not None:
        return "batch norm couples the samples of the batch"
    return None


def input_jacobian_rows(factors: JacobianFactors) -> torch.Tensor:
    """Return the per-sample Jacobian ``J_j = dF/dz_j``, shape ``(n, out, in)``.

    For a linear block ``J_j = D_j W`` with ``D_j`` the gains of the active
    units; for a residual block ``J_j = I + scale * D_j W``.
    """
    reason = input_structure_support(factors)
    if reason is not None:
        raise ValueError(f"block {factors.block.name!r} has no per-sample input Jacobian: {reason}")
    return _chunk_jacobian(factors, slice(None))


def input_hessian_blocks(factors: JacobianFactors) -> torch.Tensor:
    """Return the per-sample diagonal blocks ``J_j^T J_j`` of ``H_z``, shape ``(n, in, in)``."""
    jacobian = input_jacobian_rows(factors)
    return jacobian.transpose(1, 2) @ jacobian


def input_spectrum(factors: JacobianFactors, rtol: float | None = None, max_bytes: int = DEFAULT_MAX_BYTES) -> SpectrumSummary:
    """Compute the exact spectrum of ``H_z`` of a linear or residual block, sample by sample.

    A linear block has ``in - r_j`` ``"rank bound"`` nulls in sample ``j`` when
    only ``r_j < in`` units are active; a residual block has no structural nulls.
    """
    reason = input_structure_support(factors)
    if reason is not None:
        raise ValueError(f"block {factors.block.name!r} has no structured input Hessian: {reason}")
    samples, fan_in, units = factors.samples, factors.fan_in, factors.units
    residual = factors.block.kind == "residual"
    active = (factors.row_weights[:, :, 0] > 0).sum(dim=1)
    side = fan_in if residual else min(fan_in, units)

    values = []
    trace = 0.0
    step = chunk_size(8 * (units * fan_in + 2 * side * side), max_bytes)
    for start in range(0, samples, step):
        jacobian = _chunk_jacobian(factors, slice(start, start + step))
        trace += float(jacobian.square().sum())
        matrix = jacobian.transpose(1, 2) @ jacobian if side == fan_in else jacobian @ jacobian.transpose(1, 2)
        eigenvalues = torch.linalg.eigvalsh(matrix)
        # On either side the rank is at most min(r_j, side); the other eigenvalues are structural zeros.
        rank = fan_in if residual else active[start : start + step].clamp_max(side)
        values.append(drop_smallest(eigenvalues, side - torch.as_tensor(rank)))
    return summarize_spectrum(
        torch.cat(values),
        dim=samples * fan_in,
        trace=trace,
        method="structured",
        structural=input_structural_nulls(factors),
        rtol=rtol,
    )


def _chunk_jacobian(factors: JacobianFactors, samples: slice) -> torch.Tensor:
    scaled = (factors.gain.unsqueeze(0) * factors.row_weights[samples, :, 0].sqrt()).unsqueeze(2)
    jacobian = scaled * factors.weight_matrix.unsqueeze(0)
    if factors.block.kind == "residual":
        jacobian = jacobian + torch.eye(factors.fan_in, dtype=jacobian.dtype, device=jacobian.device)
    return jacobian


def patch_factor(factors: JacobianFactors) -> torch.Tensor:
    """Return ``W~ = diag(s_i sqrt(rho_i)) W``, the ``units x fan_in`` factor of the patch approximation of ``H_z``."""
    rho = factors.row_weights.sum(dim=(0, 2)) / (factors.samples * factors.positions)
    return (factors.gain * rho.sqrt()).unsqueeze(1) * factors.weight_matrix


def patch_factor_spectrum(factors: JacobianFactors, rtol: float | None = None) -> SpectrumSummary:
    """Approximate the spectrum of a convolution's ``H_z`` by that of ``W~^T W~``.

    For a 1x1 convolution without ReLU or batch norm, ``H_z`` is block-diagonal
    over samples and positions with blocks ``W^T W``, so the approximation is
    exact there. Otherwise it ignores how the kernel taps overlap between
    neighbouring positions and that batch norm centres over the batch.
    """
    factor = patch_factor(factors)
    units, fan_in = factor.shape
    live = int((factor.abs().sum(dim=1) > 0).sum())
    side = min(units, fan_in)
    matrix = factor.T @ factor if side == fan_in else factor @ factor.T
    eigenvalues = torch.linalg.eigvalsh(matrix)
    non_structural = drop_smallest(eigenvalues, side - min(live, side))
    summary = summarize_spectrum(
        non_structural,
        dim=fan_in,
        trace=float(factor.square().sum()),
        method="patch_factor",
        structural={"rank bound": fan_in - min(live, fan_in)},
        exact=False,
        rtol=rtol,
    )
    summary.dim = factors.inputs.numel()
    summary.add_note(PATCH_FACTOR_NOTE)
    return summary
