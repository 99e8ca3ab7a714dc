"""Exercise checkers: each notebook's "write it yourself" cells call one of these.

    check_<what>(fn) -> bool      runs the learner's `fn` on fixed small tensors, prints
                                  "✓ correct: …" or "✗ <what is wrong and how to fix it>"

A checker compares with a reference and, when the answer is wrong, names the typical mistake
it matches (the wrong axis, a missing scaling factor, a transposed shape, …) rather than only
"values differ". Layout: the shared verdict first, then one section per notebook in notebook
order, each checker next to the tensors it uses. Solutions live in the notebook cells.
"""
from __future__ import annotations

from collections.abc import Callable, Mapping

import torch

from . import lowrank

ATOL = RTOL = 1e-5  # fp32 answers computed in a different order still agree to this


# --- the shared verdict --------------------------------------------------------------------------

def _close(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.shape == b.shape and bool(torch.allclose(a.float(), b.float(), atol=ATOL, rtol=RTOL))


def _verdict(got, ref: torch.Tensor, mistakes: Mapping[str, torch.Tensor] | None = None,
             layout: str = "") -> str | None:
    """None when `got` matches `ref`; otherwise the most specific reason it does not.

    `mistakes` maps a hint to what that mistake returns on the same inputs. It may have another
    shape than `ref` (a norm over the wrong axis, BA transposed): it is matched by value first,
    so its hint beats the generic ones. Then, generically: a transposed result, a wrong shape,
    a flipped sign, a result off by a constant factor (a scaling factor missing or doubled).
    `layout` names ref's axes for the messages, e.g. "(batch, out)".
    """
    want, have = tuple(ref.shape), tuple(getattr(got, "shape", ()))
    expected = f"{want} = {layout}" if layout else f"{want}"
    if not isinstance(got, torch.Tensor):
        return f"return a torch.Tensor of shape {expected}, got {type(got).__name__}"
    if _close(got, ref):
        return None
    for hint, wrong in (mistakes or {}).items():
        if _close(got, wrong):
            return hint
    if have != want:
        if got.ndim == 2 and have == want[::-1]:
            return (f"the result is transposed: expected shape {expected}, got {have}; "
                    "swap the operands of the matmul or drop a .T")
        return f"expected shape {expected}, got {have}"
    g, r = got.detach().double().flatten(), ref.double().flatten()
    c = float(g @ r / (r @ r)) if float(r @ r) > 0 else 0.0
    if abs(c - 1) > 1e-3 and torch.allclose(g, c * r, atol=ATOL, rtol=RTOL):
        if abs(c + 1) < 1e-4:
            return "the sign is flipped: the result is −(expected)"
        return (f"off by a constant factor: your result is {c:.4g} × the expected one; a scaling "
                "factor is missing, doubled or applied to the wrong term")
    return f"values differ from the reference (max |diff| {float((g - r).abs().max()):.3g})"


def _call(fn: Callable, args: tuple, on_error: str) -> tuple[object, str | None]:
    """(fn(*args), None), or (None, a message) when the learner's code raises."""
    try:
        return fn(*args), None
    except Exception as err:  # the learner's code may raise anything
        return None, f"raised {type(err).__name__}: {err} — {on_error}"


def _report(why: str | None, correct: str) -> bool:
    print(f"✗ {why}" if why else f"✓ correct: {correct}")
    return why is None


# --- notebook 01 · low rank and LoRA from scratch ------------------------------------------------

def check_low_rank(fn: Callable[[torch.Tensor, int], torch.Tensor]) -> bool:
    """Exercise 1: `fn(W, r)` returns the best rank-r approximation of W (Eckart–Young).

    Accepted: W_r itself, or any matrix of rank ≤ r whose error ‖W − W_r‖_F / ‖W‖_F is optimal.
    """
    g = torch.Generator().manual_seed(0)
    W = torch.randn(12, 20, generator=g) @ torch.diag(torch.linspace(3, 0.1, 20))  # (out, in)
    U, S, Vh = torch.linalg.svd(W, full_matrices=False)  # U (12, 12), S (12,), Vh (12, 20)
    for r in (1, 4, 12):
        got, why = _call(fn, (W.clone(), r), "shapes: U (out, k), S (k,), Vh (k, in); the top-r "
                         "triplets are the columns U[:, :r], S[:r] and the rows Vh[:r]")
        if why:
            return _report(f"fn(W, r={r}) {why}", "")
        ref = lowrank.best_rank_r(W, r)
        mistakes = {
            "you kept the *smallest* singular values: torch.linalg.svd sorts them largest first, "
            "so take U[:, :r], S[:r], Vh[:r]": (U[:, -r:] * S[-r:]) @ Vh[-r:],
            "the singular values are missing: scale U's columns by S[:r] (U[:, :r] * S[:r]) "
            "before multiplying by Vh[:r]": U[:, :r] @ Vh[:r],
            "you returned W itself: keep only the top-r singular triplets": W,
        }
        why = _verdict(got, ref, mistakes, "(out, in), the same as W")
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
            return _report(f"for r={r}: {why}", "")
    return _report(None, "rank ≤ r and the Eckart–Young optimal error for r = 1, 4, 12")


def _lora_tensors(r: int = 3) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(1)
    x, W, b = torch.randn(4, 10, generator=g), torch.randn(6, 10, generator=g), torch.randn(6, generator=g)
    return x, W, b, torch.randn(r, 10, generator=g), torch.randn(6, r, generator=g)  # A (r, in), B (out, r)


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
    got, why = _call(fn, (x.clone(), W.clone(), b.clone(), A.clone(), B.clone(), s),
                     "shapes: x (batch, in), W (out, in), A (r, in), B (out, r); the LoRA path is "
                     "x @ A.T @ B.T")
    why = why or _verdict(got, base + s * branch, mistakes, "(batch, out)")
    return _report(why, "matches x Wᵀ + b + scaling · x Aᵀ Bᵀ")


def check_merge(fn: Callable[..., torch.Tensor]) -> bool:
    """Exercise 3: `fn(W, A, B, alpha, r)` returns W + (alpha / r) · B A without changing W."""
    _, W, _, A, B = _lora_tensors(r=3)
    alpha, r = 6.0, 3
    mistakes = {"scaled by alpha instead of alpha / r": W + alpha * (B @ A),
                "the update is not scaled: multiply B A by alpha / r": W + B @ A,
                "returned only the update ΔW: add it to W": (alpha / r) * (B @ A),
                "returned W unchanged: add (alpha / r) · B @ A": W}
    W_in = W.clone()
    got, why = _call(fn, (W_in, A.clone(), B.clone(), alpha, r),
                     "B (out, r) @ A (r, in) has W's shape (out, in)")
    why = why or _verdict(got, W + (alpha / r) * (B @ A), mistakes, "(out, in), the same as W")
    if why is None and not torch.equal(W_in, W):
        why = "W was changed in place: return a new tensor (unmerge needs the original)"
    return _report(why, "W + (alpha / r) · B A, W left untouched")
