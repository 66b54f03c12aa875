"""Matrix-free estimates on the exact operators: Lanczos, Hutchinson and ``||J_G||_2``.

These need only Jacobian-vector products, so they apply to every block at any
size. They give the largest eigenvalue and the mean eigenvalue. The smallest
eigenvalue of a large operator is not estimated, because Lanczos converges
slowly and unreliably at the bottom of a spectrum with many near-null directions.
"""

from __future__ import annotations

import logging
import math

import numpy as np
import torch
from scipy.sparse.linalg import ArpackNoConvergence, LinearOperator, eigsh
from torch.func import functional_call

from backmatch.hessian.operators import GaussNewtonOperator, functional_block, hutchinson_mean_eigenvalue
from backmatch.models.blocks import Block

logger = logging.getLogger(__name__)

#: Default relative accuracy of the Lanczos largest eigenvalue (ARPACK ``tol``).
LANCZOS_TOL = 1e-6

#: Operators up to this dimension are decomposed densely instead, because
#: ARPACK needs more Lanczos vectors than one eigenvalue.
SMALL_DIM = 8


def lanczos_lambda_max(
    operator: GaussNewtonOperator,
    tol: float = LANCZOS_TOL,
    seed: int = 0,
    max_iterations: int | None = None,
) -> tuple[float | None, str | None]:
    """Estimate the largest eigenvalue of ``J^T J`` with ARPACK's Lanczos (``scipy.sparse.linalg.eigsh``).

    Args:
        operator: the exact operator; only :meth:`~GaussNewtonOperator.matvec` is used.
        tol: relative accuracy of the eigenvalue.
        seed: seed of the start vector, so repeated runs give the same value.
        max_iterations: ARPACK restarts; ``None`` keeps ARPACK's default (``10 * dim``).

    Returns:
        The estimate and ``None``, or ``None`` and a note when ARPACK did not converge.
    """
    dim = operator.dim
    if dim <= SMALL_DIM:
        basis = torch.eye(dim, dtype=operator.point.dtype, device=operator.point.device)
        matrix = torch.stack([operator.matvec(column).reshape(-1) for column in basis])
        return float(torch.linalg.eigvalsh((matrix + matrix.T) / 2)[-1]), None

    def matvec(vector: np.ndarray) -> np.ndarray:
        tangent = torch.from_numpy(np.ascontiguousarray(vector, dtype=np.float64)).to(operator.point)
        return operator.matvec(tangent).reshape(-1).detach().cpu().numpy()

    linear_operator = LinearOperator((dim, dim), matvec=matvec, dtype=np.float64)
    start = np.random.default_rng(seed).standard_normal(dim)
    try:
        values = eigsh(linear_operator, k=1, which="LA", tol=tol, v0=start, maxiter=max_iterations, return_eigenvectors=False)
    except ArpackNoConvergence as error:
        logger.warning("Lanczos did not converge on an operator of dimension %d: %s", dim, error)
        if len(error.eigenvalues):
            return float(error.eigenvalues[-1]), f"Lanczos did not converge to tol {tol}; the value is the last Ritz value."
        return None, f"Lanczos did not converge to tol {tol} and returned no Ritz value."
    return float(values[-1]), None


def hutchinson_mean(operator: GaussNewtonOperator, probes: int, seed: int = 0) -> float:
    """Estimate ``trace(J^T J) / dim`` with ``probes`` Rademacher vectors drawn from ``seed``."""
    generator = torch.Generator(device=operator.point.device).manual_seed(seed)
    return hutchinson_mean_eigenvalue(operator, probes, generator)


def residual_branch_function(block: Block, inputs: torch.Tensor):
    """Return ``G(z) = scale * branch(z)`` of a residual block, for ``torch.func``.

    Raises:
        ValueError: ``block`` is not a residual block.
    """
    if block.kind != "residual":
        raise ValueError(f"block {block.name!r} is a {block.kind} block; ||J_G|| is defined for residual blocks only")
    twin = functional_block(block)
    params = {name: value.detach() for name, value in twin.branch.named_parameters()}
    scale = float(twin.scale)

    def branch(z: torch.Tensor) -> torch.Tensor:
        return scale * functional_call(twin.branch, params, (z,))

    return branch


def residual_jacobian_norm(
    block: Block,
    inputs: torch.Tensor,
    iterations: int = 500,
    rtol: float = 1e-9,
    seed: int = 0,
) -> float:
    """Estimate ``||J_G||_2`` of a residual block by power iteration on ``J_G^T J_G``.

    A residual branch has no batch norm, so ``J_G`` is block-diagonal over the
    samples and ``||J_G||_2`` is the largest per-sample spectral norm. Each
    sample's part of the iterate is normalised on its own, so every sample
    converges at the rate of its own spectral gap. The per-sample Rayleigh
    quotients never decrease, and the iteration stops when their maximum
    changes by no more than ``rtol`` (relative) from one product to the next.
    """
    operator = GaussNewtonOperator(residual_branch_function(block, inputs), inputs.detach())
    generator = torch.Generator(device=inputs.device).manual_seed(seed)
    vector = torch.randn(inputs.shape, generator=generator, dtype=inputs.dtype, device=inputs.device).flatten(1)
    vector = vector / vector.norm(dim=1, keepdim=True)
    quotients = torch.zeros(vector.shape[0], dtype=inputs.dtype, device=inputs.device)
    for _ in range(iterations):
        image = operator.matvec(vector.reshape(inputs.shape)).flatten(1)
        previous = quotients.max()
        quotients = (vector * image).sum(dim=1)
        norms = image.norm(dim=1, keepdim=True)
        # A sample whose branch Jacobian is zero keeps its vector; its quotient stays 0.
        vector = torch.where(norms > 0, image / norms.clamp_min(torch.finfo(image.dtype).tiny), vector)
        largest = quotients.max()
        if bool((largest - previous).abs() <= rtol * largest.abs()):
            break
    return math.sqrt(max(float(quotients.max()), 0.0))
