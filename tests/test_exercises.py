"""peftlab.exercises: every checker accepts the reference solution and rejects each typical
mistake with the hint meant for it.

Compared: a checker's verdict (True/False) and its printed line against the solution written in
the notebook and against wrong answers a learner typically writes (smallest singular values,
missing scaling, bias dropped, the result transposed, W changed in place, code that raises);
the shared `_verdict` on hand-made tensors for its generic hints (transposed, wrong shape,
flipped sign, constant factor, wrong-axis result passed as a mistake).
"""
import pytest
import torch

from peftlab import exercises


def _svd_top(W, r):
    U, S, Vh = torch.linalg.svd(W, full_matrices=False)
    return U[:, :r] * S[:r] @ Vh[:r]


def _svd(W):
    return torch.linalg.svd(W, full_matrices=False)


# --- the shared verdict --------------------------------------------------------------------------

def test_verdict_generic_hints():
    ref = torch.arange(1.0, 7.0).reshape(2, 3)
    assert exercises._verdict(ref.clone(), ref) is None
    assert exercises._verdict(ref + 1e-7, ref) is None
    assert "transposed" in exercises._verdict(ref.T.contiguous(), ref, layout="(batch, out)")
    assert "expected shape (2, 3)" in exercises._verdict(torch.zeros(3, 3), ref)
    assert "sign is flipped" in exercises._verdict(-ref, ref)
    assert "0.5 × the expected" in exercises._verdict(0.5 * ref, ref)
    assert "values differ" in exercises._verdict(ref + torch.eye(2, 3), ref)
    assert "torch.Tensor" in exercises._verdict(ref.tolist(), ref)


def test_verdict_named_mistake_beats_generic_and_may_have_another_shape():
    W = torch.tensor([[3.0, 4.0, 0.0], [0.0, 0.0, 2.0]])            # (out, in)
    row_norm = W.norm(dim=1)                                        # (out,): the reference
    wrong_axis = {"you took the norm over the wrong axis: one norm per output row, dim=1": W.norm(dim=0)}
    assert exercises._verdict(row_norm, row_norm, wrong_axis) is None
    assert "wrong axis" in exercises._verdict(W.norm(dim=0), row_norm, wrong_axis)
    missing = {"the scaling is missing": row_norm / 2}
    assert exercises._verdict(row_norm / 2, row_norm, missing) == "the scaling is missing"


# --- notebook 01 ---------------------------------------------------------------------------------

def test_low_rank_accepts_solution_and_another_optimal_route(capsys):
    assert exercises.check_low_rank(_svd_top)

    def via_projection(W, r):  # U_r U_rᵀ W is the same matrix, computed another way
        U = _svd(W)[0][:, :r]
        return U @ (U.T @ W)

    assert exercises.check_low_rank(via_projection)
    assert capsys.readouterr().out.count("✓ correct") == 2


@pytest.mark.parametrize("fn, hint", [
    (lambda W, r: (lambda U, S, Vh: U[:, -r:] * S[-r:] @ Vh[-r:])(*_svd(W)), "smallest"),
    (lambda W, r: (lambda U, S, Vh: U[:, :r] @ Vh[:r])(*_svd(W)), "singular values are missing"),
    (lambda W, r: W, "returned W itself"),
    (lambda W, r: 2 * _svd_top(W, r), "constant factor"),
    (lambda W, r: _svd_top(W, r).T, "transposed"),
    (lambda W, r: (lambda U, S, Vh: U[:, :r] * S[:r] @ Vh[:, :r])(*_svd(W)), "rows Vh[:r]"),
    (lambda W, r: _svd_top(W, r + 1), "rank"),
])
def test_low_rank_names_the_mistake(fn, hint, capsys):
    assert not exercises.check_low_rank(fn)
    out = capsys.readouterr().out
    assert out.startswith("✗") and hint in out, out


def test_forward(capsys):
    assert exercises.check_forward(lambda x, W, b, A, B, s: x @ W.T + b + s * (x @ A.T @ B.T))
    assert "✓ correct" in capsys.readouterr().out


@pytest.mark.parametrize("fn, hint", [
    (lambda x, W, b, A, B, s: x @ W.T + b + x @ A.T @ B.T, "missing the scaling"),
    (lambda x, W, b, A, B, s: s * (x @ W.T + b + x @ A.T @ B.T), "LoRA branch only"),
    (lambda x, W, b, A, B, s: x @ W.T + s * (x @ A.T @ B.T), "bias b is missing"),
    (lambda x, W, b, A, B, s: x @ W.T + b, "only the base layer"),
    (lambda x, W, b, A, B, s: (x @ W.T + b + s * (x @ A.T @ B.T)).T, "transposed"),
    (lambda x, W, b, A, B, s: x @ W.T + b + s * (x @ B @ A), "raised"),
])
def test_forward_names_the_mistake(fn, hint, capsys):
    assert not exercises.check_forward(fn)
    out = capsys.readouterr().out
    assert out.startswith("✗") and hint in out, out


def test_merge(capsys):
    assert exercises.check_merge(lambda W, A, B, alpha, r: W + (alpha / r) * (B @ A))
    assert "✓ correct" in capsys.readouterr().out


@pytest.mark.parametrize("fn, hint", [
    (lambda W, A, B, alpha, r: W.add_((alpha / r) * (B @ A)), "in place"),
    (lambda W, A, B, alpha, r: W + alpha * (B @ A), "alpha instead of alpha / r"),
    (lambda W, A, B, alpha, r: W + B @ A, "not scaled"),
    (lambda W, A, B, alpha, r: (alpha / r) * (B @ A), "only the update"),
    (lambda W, A, B, alpha, r: W, "unchanged"),
    (lambda W, A, B, alpha, r: W + (alpha / r) * (A.T @ B.T), "raised"),
])
def test_merge_names_the_mistake(fn, hint, capsys):
    assert not exercises.check_merge(fn)
    out = capsys.readouterr().out
    assert out.startswith("✗") and hint in out, out
