"""Notebook 03's exercises: DoRA's weight norm on the right axis, and the merged DoRA weight.

    ‖W + s·BA‖_c  (one L2 norm per OUTPUT row of W (out, in))        W' = m · (W + s·BA) / ‖W + s·BA‖_c

Liu et al. 2024, arXiv:2402.09353 (the paper's "column-wise" norm is per output neuron: dim=1 in
PyTorch's (out, in) layout). The reference is `peftlab.dora.dora_weight`.
Solutions: notebooks/solutions/03_dora.py.
"""
from __future__ import annotations

from collections.abc import Callable

import torch

from .. import dora
from ._verdict import call, exercise, report, verdict

NOTEBOOK = "03_dora"


def _tensors() -> tuple[torch.Tensor, ...]:
    """W (6, 10): not square, so a norm over the wrong axis has another shape; A (3, 10), B (6, 3), m (6,)."""
    g = torch.Generator().manual_seed(3)
    W, A, B = torch.randn(6, 10, generator=g), torch.randn(3, 10, generator=g), torch.randn(6, 3, generator=g)
    return W, A, B, torch.rand(6, generator=g) + 0.5


@exercise(NOTEBOOK, "my_weight_norm")
def check_weight_norm(fn: Callable[..., torch.Tensor]) -> bool:
    """Exercise 1: `fn(W, A, B, scaling)` = ‖W + scaling · B A‖_c, one norm per output row, shape (out,)."""
    W, A, B, _ = _tensors()
    s = 2.0
    V = W + s * (B @ A)                                                    # (out, in)
    ref = torch.linalg.norm(V, dim=1)                                      # (out,)
    mistakes = {
        "wrong axis: that is one norm per INPUT column (dim=0); DoRA's magnitude is one per OUTPUT row of "
        "the (out, in) weight: dim=1": torch.linalg.norm(V, dim=0),
        "the LoRA update is missing its scaling: V = W + scaling · (B @ A)": torch.linalg.norm(W + B @ A, dim=1),
        "that is the norm of W alone: DoRA normalises the updated weight W + scaling · B A":
            torch.linalg.norm(W, dim=1),
        "one number for the whole matrix (Frobenius): take one norm per output row (dim=1)":
            torch.linalg.norm(V),
        "that is the squared norm: take the square root (torch.linalg.norm does it for you)": V.pow(2).sum(dim=1),
        "keep it flat: shape (out,), not (out, 1) (drop keepdim=True; the forward reshapes it)":
            torch.linalg.norm(V, dim=1, keepdim=True),
    }
    got, why = call(fn, (W.clone(), A.clone(), B.clone(), s), "B (out, r) @ A (r, in) has W's shape (out, in)")
    why = why or verdict(got, ref, mistakes, "(out,): one norm per output row")
    return report(why, "one L2 norm per output row of W + s·BA (dim=1), as PEFT's DoRA")


@exercise(NOTEBOOK, "my_dora_merge")
def check_dora_merge(fn: Callable[..., torch.Tensor]) -> bool:
    """Exercise 2: `fn(W, A, B, m, scaling)` = m · (W + s·BA) / ‖W + s·BA‖_c, a new (out, in) tensor."""
    W, A, B, m = _tensors()
    s = 2.0
    V = W + s * (B @ A)                                                    # (out, in)
    ref = dora.dora_weight(W, s * (B @ A), m)                              # m[:, None] · V / row norms
    mistakes = {
        "wrong axis: the norm must be one per OUTPUT row (dim=1, keepdim=True), and m scales rows":
            m[:, None] * V / torch.linalg.norm(V, dim=0, keepdim=True),
        "the direction is not normalised: divide W + s·BA by its row norms": m[:, None] * V,
        "that is the LoRA merge W + s·BA: DoRA rescales each row to length m": V,
        "normalised by the norm of W: DoRA divides by the norm of the *updated* weight W + s·BA":
            m[:, None] * V / torch.linalg.norm(W, dim=1, keepdim=True),
        "the LoRA update is missing its scaling: V = W + scaling · (B @ A)": dora.dora_weight(W, B @ A, m),
        "the magnitude m is missing: multiply the unit rows by m[:, None]": V / torch.linalg.norm(V, dim=1, keepdim=True),
    }
    W_in = W.clone()
    got, why = call(fn, (W_in, A.clone(), B.clone(), m.clone(), s),
                    "m is (out,): scale rows with m[:, None] (or m.view(-1, 1)), not m itself")
    why = why or verdict(got, ref, mistakes, "(out, in), the same as W")
    if why is None and not torch.equal(W_in, W):
        why = "W was changed in place: return a new tensor (unmerge needs the original)"
    if why is None:
        rows = torch.linalg.norm(got, dim=1)
        assert torch.allclose(rows, m, atol=1e-5), "the merged rows have length m"  # the lesson's fact
    return report(why, "m · (W + s·BA) / ‖W + s·BA‖_c: every merged row has length m, W untouched")
