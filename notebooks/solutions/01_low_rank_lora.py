"""Solutions to notebook 01's exercises (best rank-r approximation, LoRA forward, merge)."""
import torch


def my_best_rank_r(W, r):
    U, S, Vh = torch.linalg.svd(W, full_matrices=False)   # U (out, k), S (k,), Vh (k, in), S largest first
    return U[:, :r] * S[:r] @ Vh[:r]                       # (out, r) · diag(S_r) · (r, in)


def my_lora_forward(x, W, b, A, B, scaling):
    return x @ W.T + b + scaling * (x @ A.T @ B.T)       # (batch, in) @ (in, r) @ (r, out)


def my_merge(W, A, B, alpha, r):
    return W + (alpha / r) * (B @ A)                     # (out, r) @ (r, in) has W's shape; a new tensor
