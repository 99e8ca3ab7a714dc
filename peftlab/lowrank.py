"""Low-rank structure of weight matrices: SVD spectra, the best rank-r approximation, subspace overlap.

    W = U Σ Vᵀ,   W_r = U_r Σ_r V_rᵀ,   ‖W − W_r‖_F / ‖W‖_F = sqrt(Σ_{i>r} σ_i²) / sqrt(Σ_i σ_i²)

Eckart–Young–Mirsky (1936): no rank-r matrix is closer to W in Frobenius norm than W_r.
Subspace similarity (Hu et al. 2021, LoRA, arXiv:2106.09685, §7.2 eq. 4):

    φ(U, V, i, j) = ‖U_iᵀ V_j‖_F² / min(i, j)  ∈ [0, 1]

for the top-i and top-j singular directions; two random subspaces of R^d give ≈ max(i, j) / d.
"""
from __future__ import annotations

import torch


def _as_matrix(W: torch.Tensor) -> torch.Tensor:
    if not isinstance(W, torch.Tensor) or W.ndim != 2 or 0 in W.shape:
        raise ValueError(f"expected a non-empty 2-D weight matrix (out, in), got "
                         f"{getattr(W, 'shape', type(W).__name__)}")
    return W.detach().to(torch.float32)


def spectrum(W: torch.Tensor) -> torch.Tensor:
    """Singular values σ_1 ≥ σ_2 ≥ … of W (fp32), length min(out, in)."""
    return torch.linalg.svdvals(_as_matrix(W))


def _check_r(r: int, n: int) -> None:
    if not isinstance(r, int) or isinstance(r, bool) or not 0 <= r <= n:
        raise ValueError(f"rank r must be an integer in [0, {n}] (min(out, in) of this matrix), got {r!r}")


def energy(s: torch.Tensor, r: int) -> float:
    """Fraction of ‖W‖_F² kept by the top-r singular values: Σ_{i≤r} σ_i² / Σ σ_i²."""
    _check_r(r, len(s))
    s2 = s.double() ** 2
    return float(s2[:r].sum() / s2.sum())


def relative_error(s: torch.Tensor, r: int) -> float:
    """‖W − W_r‖_F / ‖W‖_F from the singular values alone (Eckart–Young)."""
    return max(0.0, 1.0 - energy(s, r)) ** 0.5


def error_curve(s: torch.Tensor) -> torch.Tensor:
    """relative_error(s, r) for r = 0 … len(s) in one pass, shape (len(s) + 1,)."""
    s2 = s.double() ** 2
    tail = torch.cat([s2.flip(0).cumsum(0).flip(0), s2.new_zeros(1)])  # Σ_{i>r} σ_i²
    return (tail / s2.sum()).sqrt().float()


def best_rank_r(W: torch.Tensor, r: int) -> torch.Tensor:
    """The best rank-r approximation W_r = U_r diag(σ_r) V_rᵀ, shape (out, in)."""
    W = _as_matrix(W)
    _check_r(r, min(W.shape))
    U, S, Vh = torch.linalg.svd(W, full_matrices=False)  # U (out, k), S (k,), Vh (k, in)
    return (U[:, :r] * S[:r]) @ Vh[:r]


def rank_for_energy(s: torch.Tensor, fraction: float) -> int:
    """Smallest r whose top-r singular values keep `fraction` of ‖W‖_F²."""
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"fraction must be in (0, 1], got {fraction}")
    s2 = s.double() ** 2
    kept = s2.cumsum(0) / s2.sum()
    return int(torch.searchsorted(kept, torch.tensor(fraction, dtype=kept.dtype, device=kept.device) - 1e-12)) + 1


def subspace_similarity(U: torch.Tensor, V: torch.Tensor) -> torch.Tensor:
    """φ(i, j) = ‖U[:, :i]ᵀ V[:, :j]‖_F² / min(i, j) for all i, j; U (d, p), V (d, q) orthonormal columns.

    Returns a (p, q) tensor; entry [i-1, j-1] is φ(i, j).
    """
    if U.ndim != 2 or V.ndim != 2 or U.shape[0] != V.shape[0]:
        raise ValueError(f"U and V must be (d, p) and (d, q) with the same d, got {tuple(U.shape)} "
                         f"and {tuple(V.shape)}")
    G = (U.double().T @ V.double()) ** 2                   # (p, q) squared cosines
    cum = G.cumsum(0).cumsum(1)                             # ‖U_iᵀ V_j‖_F² for every (i, j)
    i = torch.arange(1, U.shape[1] + 1, dtype=torch.float64, device=G.device)[:, None]
    j = torch.arange(1, V.shape[1] + 1, dtype=torch.float64, device=G.device)[None, :]
    return (cum / torch.minimum(i, j)).float()


def left_singular(M: torch.Tensor, k: int | None = None) -> torch.Tensor:
    """Top-k left singular vectors of M (d, n) as orthonormal columns (d, k)."""
    U, _, _ = torch.linalg.svd(_as_matrix(M), full_matrices=False)
    return U if k is None else U[:, :k]

