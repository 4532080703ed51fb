import pytest
import torch

from lipcore.orthogonal import bjorck, frobenius_normalise, power_iteration, spectral_norm_exact


def _svals(w: torch.Tensor) -> torch.Tensor:
    return torch.linalg.svdvals(w.double())


@pytest.mark.parametrize("shape", [(32, 32), (64, 3), (5, 40), (1, 16)])
def test_bjorck_from_random_reaches_orthonormal(shape):
    g = torch.Generator().manual_seed(0)
    w = torch.randn(*shape, generator=g, dtype=torch.float64) * 7.0  # far from orthogonal
    q = bjorck(w, 30)
    s = _svals(q)
    assert torch.allclose(s, torch.ones_like(s), atol=1e-9), s
    small = min(shape)
    eye = torch.eye(small, dtype=torch.float64)
    gram = q.T @ q if shape[0] >= shape[1] else q @ q.T
    assert torch.allclose(gram, eye, atol=1e-9)


def test_bjorck_never_overshoots_after_one_iteration():
    # Björck's map sends (0, sqrt(3)) into (0, 1]: after one step all singular values are <= 1.
    g = torch.Generator().manual_seed(1)
    w = torch.randn(48, 48, generator=g, dtype=torch.float64)
    for k in range(1, 6):
        assert _svals(bjorck(w, k)).max() <= 1 + 1e-12


def test_warm_start_converges_in_few_iterations():
    g = torch.Generator().manual_seed(2)
    q = torch.linalg.qr(torch.randn(128, 128, generator=g, dtype=torch.float64)).Q
    w = q + 1e-3 * torch.randn(128, 128, generator=g, dtype=torch.float64)  # one optimiser step
    s = _svals(bjorck(w, 3))
    assert (s - 1).abs().max() < 1e-6
    # ...whereas the perturbed weight itself is clearly not orthogonal.
    assert (_svals(w) - 1).abs().max() > 1e-3


def test_spectral_norm_exact_and_power_iteration_agree():
    g = torch.Generator().manual_seed(3)
    w = torch.randn(20, 30, generator=g, dtype=torch.float64)
    exact = spectral_norm_exact(w)
    assert exact == pytest.approx(float(_svals(w).max()), rel=1e-12)
    est = float(power_iteration(w, 500, generator=g))
    assert est <= exact * (1 + 1e-12)
    assert est == pytest.approx(exact, rel=1e-4)


def test_frobenius_row_has_unit_norm():
    w = torch.tensor([[3.0, 4.0]], dtype=torch.float64)
    assert spectral_norm_exact(frobenius_normalise(w)) == pytest.approx(1.0, abs=1e-15)
