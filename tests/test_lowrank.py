"""peftlab.lowrank: SVD-based numbers against direct computation.

Compared: relative_error / error_curve (from singular values alone) against ‖W − W_r‖_F / ‖W‖_F
of an explicit best_rank_r matrix; best_rank_r against random rank-r matrices (Eckart–Young);
subspace_similarity against its definition and its bounds.
"""
import pytest
import torch

from peftlab import lowrank


def _W():
    g = torch.Generator().manual_seed(0)
    return torch.randn(30, 50, generator=g) @ torch.diag(torch.logspace(1, -2, 50))


@pytest.mark.parametrize("r", [0, 1, 5, 29, 30])
def test_error_from_spectrum_equals_explicit_error(r):
    W = _W()
    s = lowrank.spectrum(W)
    explicit = float(torch.linalg.norm(W - lowrank.best_rank_r(W, r)) / torch.linalg.norm(W))
    assert lowrank.relative_error(s, r) == pytest.approx(explicit, abs=1e-5)
    assert float(lowrank.error_curve(s)[r]) == pytest.approx(explicit, abs=1e-5)
    assert lowrank.energy(s, r) == pytest.approx(1 - explicit ** 2, abs=1e-5)
    assert int(torch.linalg.matrix_rank(lowrank.best_rank_r(W, r))) == r


def test_eckart_young_beats_other_rank_r_matrices():
    W, r = _W(), 4
    best = float(torch.linalg.norm(W - lowrank.best_rank_r(W, r)))
    g = torch.Generator().manual_seed(1)
    for _ in range(20):
        B, A = torch.randn(30, r, generator=g), torch.randn(r, 50, generator=g)
        X = B @ A
        X = X * float((X * W).sum() / (X * X).sum())  # best scalar multiple of a random rank-r BA
        assert float(torch.linalg.norm(W - X)) > best


def test_rank_for_energy():
    s = torch.tensor([3.0, 2.0, 1.0])  # energies 9/14, 13/14, 1
    assert [lowrank.rank_for_energy(s, f) for f in (0.5, 9 / 14, 0.9, 0.99, 1.0)] == [1, 1, 2, 3, 3]


def test_subspace_similarity():
    g = torch.Generator().manual_seed(0)
    Q = torch.linalg.qr(torch.randn(200, 8, generator=g)).Q
    phi = lowrank.subspace_similarity(Q, Q)
    assert phi.shape == (8, 8) and torch.allclose(phi.diagonal(), torch.ones(8), atol=1e-5)
    R = torch.linalg.qr(torch.randn(200, 64, generator=g)).Q
    rand = lowrank.subspace_similarity(Q, R)
    assert rand.shape == (8, 64) and float(rand.min()) >= 0 and float(rand.max()) <= 1 + 1e-6
    assert float(rand[7, 63]) == pytest.approx(64 / 200, abs=0.15)  # chance level max(i, j) / d
    i, j = 3, 10
    direct = float(torch.linalg.norm(Q[:, :i].T @ R[:, :j]) ** 2 / min(i, j))
    assert float(rand[i - 1, j - 1]) == pytest.approx(direct, rel=1e-5)
    with pytest.raises(ValueError, match="same d"):
        lowrank.subspace_similarity(Q, R[:100])


def test_bad_input():
    with pytest.raises(ValueError, match="2-D"):
        lowrank.spectrum(torch.zeros(3))
    with pytest.raises(ValueError, match=r"\[0, 30\]"):
        lowrank.best_rank_r(_W(), 31)

