import pytest
import torch

from lipcore import orthogonal
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


def _bjorck_autograd(w: torch.Tensor) -> torch.Tensor:
    """The first Björck step written with plain autograd ops: the reference of the hand-written
    backward."""
    tall = w.shape[0] >= w.shape[1]
    v = w if tall else w.mT
    g = v.mT @ v
    bound = g.abs().sum(dim=1).max()
    c = torch.minimum(bound, torch.clamp(bound / 1.69, min=1.0))
    p = 1.5 * torch.eye(g.shape[0], dtype=w.dtype) - 0.5 * g / c
    e = v @ p / c.sqrt()
    return e if tall else e.mT


# scale 0.3: c = bound < 1; 1.0: c = bound / SAFE in 128 dimensions, else about 1; 3.0:
# c = bound / SAFE; None: near orthogonal (the warm start's case), c = 1 and no gradient through
# it. Tall, square, wide.
# host: the scale as Python floats (CPUs) or as 0-d tensors (accelerators: no sync)
@pytest.mark.parametrize("host", [True, False])
@pytest.mark.parametrize("shape", [(128, 128), (64, 2), (16, 40), (40, 16)])
@pytest.mark.parametrize("scale", [0.3, 1.0, 3.0, None])
def test_bjorck_first_step_gradient_matches_autograd(shape, scale, host, monkeypatch):
    monkeypatch.setattr(orthogonal, "_host_scalars", lambda w: host)
    g = torch.Generator().manual_seed(3)
    if scale is None:
        q = torch.linalg.qr(torch.randn(max(shape), min(shape), generator=g, dtype=torch.float64))
        w0 = q.Q if shape[0] >= shape[1] else q.Q.mT
        w0 = w0 + 1e-4 * torch.randn(*shape, generator=g, dtype=torch.float64)
        gram = w0.mT @ w0 if shape[0] >= shape[1] else w0 @ w0.mT
        assert 1 <= gram.abs().sum(dim=1).max() <= orthogonal.SAFE
    else:
        w0 = torch.randn(*shape, generator=g, dtype=torch.float64) / min(shape) ** 0.5 * scale
    de = torch.randn(*shape, generator=g, dtype=torch.float64)
    w = w0.clone().requires_grad_(True)
    ref = w0.clone().requires_grad_(True)
    out, out_ref = bjorck(w, 1), _bjorck_autograd(ref)
    assert torch.allclose(out, out_ref, atol=1e-14)
    (out * de).sum().backward()
    (out_ref * de).sum().backward()
    assert torch.allclose(w.grad, ref.grad, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("iters", [1, 3])
def test_bjorck_gradcheck(iters):
    g = torch.Generator().manual_seed(4)
    for shape, scale in [((9, 5), 3.0), ((5, 9), 0.3), ((6, 6), 1.0)]:
        w = (torch.randn(*shape, generator=g, dtype=torch.float64) * scale).requires_grad_(True)
        assert torch.autograd.gradcheck(lambda x: bjorck(x, iters), (w,))
