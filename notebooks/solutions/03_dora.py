"""Solutions to notebook 03's exercises (DoRA's weight norm, the merged DoRA weight)."""
import torch


def my_weight_norm(W, A, B, scaling):
    V = W + scaling * (B @ A)              # (out, in)
    return torch.linalg.norm(V, dim=1)     # one norm per OUTPUT row: (out,)


def my_dora_merge(W, A, B, m, scaling):
    V = W + scaling * (B @ A)                                   # (out, in)
    return m[:, None] * V / torch.linalg.norm(V, dim=1, keepdim=True)   # rows of length m
