"""Notebook 01's exercises: the best rank-r approximation, the LoRA forward, the merge.

    W_r = U[:, :r] · diag(S[:r]) · Vh[:r]        y = x Wᵀ + b + s · x Aᵀ Bᵀ        W' = W + (α/r) · B A

Eckart–Young (1936) for W_r; Hu et al. 2021 (arXiv:2106.09685) for LoRA, in PEFT's layout:
A (r, in), B (out, r), s = α / r. Solutions: notebooks/solutions/01_low_rank_lora.py.
"""
from __future__ import annotations

from collections.abc import Callable

import torch

from .. import lowrank
from ._verdict import call, exercise, report, verdict

NOTEBOOK = "01_low_rank_lora"


@exercise(NOTEBOOK, "my_best_rank_r")
def check_low_rank(fn: Callable[[torch.Tensor, int], torch.Tensor]) -> bool:
    """Exercise 1: `fn(W, r)` returns the best rank-r approximation of W (Eckart–Young).

    Accepted: W_r itself, or any matrix of rank ≤ r whose error ‖W − W_r‖_F / ‖W‖_F is optimal.
    """
    g = torch.Generator().manual_seed(0)
    W = torch.randn(12, 20, generator=g) @ torch.diag(torch.linspace(3, 0.1, 20))  # (out, in)
    U, S, Vh = torch.linalg.svd(W, full_matrices=False)  # U (12, 12), S (12,), Vh (12, 20)
    for r in (1, 4, 12):
        got, why = call(fn, (W.clone(), r), "shapes: U (out, k), S (k,), Vh (k, in); the top-r "
                        "triplets are the columns U[:, :r], S[:r] and the rows Vh[:r]")
        if why:
            return report(f"fn(W, r={r}) {why}", "")
        ref = lowrank.best_rank_r(W, r)
        mistakes = {
            "you kept the *smallest* singular values: torch.linalg.svd sorts them largest first, "
            "so take U[:, :r], S[:r], Vh[:r]": (U[:, -r:] * S[-r:]) @ Vh[-r:],
            "the singular values are missing: scale U's columns by S[:r] (U[:, :r] * S[:r]) "
            "before multiplying by Vh[:r]": U[:, :r] @ Vh[:r],
            "you returned W itself: keep only the top-r singular triplets": W,
        }
        why = verdict(got, ref, mistakes, "(out, in), the same as W")
        if why and why.startswith("values differ"):  # judge by the optimum, not by ref
            rank = int(torch.linalg.matrix_rank(got.float()))
            err_got = float(torch.linalg.norm(W - got) / torch.linalg.norm(W))
            err_ref = float(torch.linalg.norm(W - ref) / torch.linalg.norm(W))
            if rank > r:
                why = f"your matrix has rank {rank}: keep only the top-{r} singular triplets"
            elif err_got > err_ref + 1e-4:
                why = (f"relative error {err_got:.4f} > the optimum {err_ref:.4f}: use the *largest* "
                       "singular values, U[:, :r] * S[:r] @ Vh[:r]")
            else:
                why = None  # another matrix with the optimal error (e.g. computed another way)
        if why:
            return report(f"for r={r}: {why}", "")
    return report(None, "rank ≤ r and the Eckart–Young optimal error for r = 1, 4, 12")


def _lora_tensors(r: int = 3) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(1)
    x, W, b = torch.randn(4, 10, generator=g), torch.randn(6, 10, generator=g), torch.randn(6, generator=g)
    return x, W, b, torch.randn(r, 10, generator=g), torch.randn(6, r, generator=g)  # A (r, in), B (out, r)


@exercise(NOTEBOOK, "my_lora_forward")
def check_forward(fn: Callable[..., torch.Tensor]) -> bool:
    """Exercise 2: `fn(x, W, b, A, B, scaling)` = x Wᵀ + b + scaling · x Aᵀ Bᵀ, shape (batch, out)."""
    x, W, b, A, B = _lora_tensors()
    s = 2.5
    base, branch = x @ W.T + b, x @ A.T @ B.T  # (batch, out) each
    mistakes = {"the LoRA branch is missing the scaling factor alpha/r": base + branch,
                "the scaling multiplies the whole output: apply it to the LoRA branch only": s * (base + branch),
                "the base bias b is missing": x @ W.T + s * branch,
                "only the base layer is computed: add scaling · B(A x)": base,
                "only the LoRA branch is computed: add the frozen base W x + b": s * branch}
    got, why = call(fn, (x.clone(), W.clone(), b.clone(), A.clone(), B.clone(), s),
                    "shapes: x (batch, in), W (out, in), A (r, in), B (out, r); the LoRA path is "
                    "x @ A.T @ B.T")
    why = why or verdict(got, base + s * branch, mistakes, "(batch, out)")
    return report(why, "matches x Wᵀ + b + scaling · x Aᵀ Bᵀ")


@exercise(NOTEBOOK, "my_merge")
def check_merge(fn: Callable[..., torch.Tensor]) -> bool:
    """Exercise 3: `fn(W, A, B, alpha, r)` returns W + (alpha / r) · B A without changing W."""
    _, W, _, A, B = _lora_tensors(r=3)
    alpha, r = 6.0, 3
    mistakes = {"scaled by alpha instead of alpha / r": W + alpha * (B @ A),
                "the update is not scaled: multiply B A by alpha / r": W + B @ A,
                "returned only the update ΔW: add it to W": (alpha / r) * (B @ A),
                "returned W unchanged: add (alpha / r) · B @ A": W}
    W_in = W.clone()
    got, why = call(fn, (W_in, A.clone(), B.clone(), alpha, r),
                    "B (out, r) @ A (r, in) has W's shape (out, in)")
    why = why or verdict(got, W + (alpha / r) * (B @ A), mistakes, "(out, in), the same as W")
    if why is None and not torch.equal(W_in, W):
        why = "W was changed in place: return a new tensor (unmerge needs the original)"
    return report(why, "W + (alpha / r) · B A, W left untouched")
