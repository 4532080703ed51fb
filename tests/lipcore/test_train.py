import numpy as np
import pytest
import torch

from lipcore import EstimatorConfig
from lipcore.network import LipschitzMLP
from lipcore.train import _Sampler, make_objective, make_optimizer, train, train_step


def test_weighted_sampler_draws_by_weight_and_never_a_zero_weight():
    z = torch.arange(5, dtype=torch.float32)[:, None]
    w = torch.tensor([0.5, 0.3, 0.15, 0.05, 0.0])
    s = _Sampler(z, w, batch=4, generator=torch.Generator().manual_seed(0))
    assert not s.full and not s.uniform
    draws = torch.cat([s.draw()[:, 0] for _ in range(5000)]).long()
    freq = torch.bincount(draws, minlength=5).double() / draws.numel()
    assert freq[4] == 0
    assert torch.allclose(freq, w.double(), atol=0.01)


def test_small_set_is_used_whole_with_its_weights():
    z = torch.randn(3, 2)
    w = torch.tensor([0.2, 0.3, 0.5])
    s = _Sampler(z, w, batch=3, generator=torch.Generator())
    assert s.full and torch.equal(s.draw(), z) and torch.equal(s.weights(), w)


def test_drawn_rows_count_equally():
    s = _Sampler(torch.randn(10, 2), torch.full((10,), 0.1), batch=4, generator=torch.Generator())
    assert s.draw().shape == (4, 2)
    assert torch.equal(s.weights(), torch.full((4,), 0.25))


def test_objective_rises_and_is_reported_in_data_units():
    g = torch.Generator().manual_seed(0)
    zx = torch.randn(500, 2, generator=g)
    zy = torch.randn(500, 2, generator=g) + torch.tensor([2.0, 0.0])
    w = torch.full((500,), 1 / 500)
    config = EstimatorConfig(width=16, depth=2, steps=200, patience=0, lr=1e-2, batch_size=128)
    net = LipschitzMLP(2, config, g)
    res = train(net, zx, w, zy, w, config, torch.Generator().manual_seed(1), unit=0.5)
    assert res.steps == 200 and len(res.history) == 20
    first, last = res.history[0][1], res.history[-1][1]
    assert last > first
    # the scaled problem's W1 is ~2; in data units (unit = 1 / scale = 0.5) ~1
    assert res.objective == pytest.approx(1.0, rel=0.15)


def test_divergence_is_an_error_not_a_number():
    config = EstimatorConfig(width=4, depth=1, steps=10, patience=0, batch_size=4)
    net = LipschitzMLP(1, config, torch.Generator().manual_seed(0))
    z = torch.tensor([[np.inf]] * 4, dtype=torch.float32)
    w = torch.full((4,), 0.25)
    with pytest.raises(FloatingPointError, match="diverged"):
        train(net, z, w, z, w, config, torch.Generator())


def test_default_step_is_fused_and_matches_plain_autograd():
    config = EstimatorConfig(width=16, depth=3)
    g = torch.Generator().manual_seed(0)
    # float64: Adam's first steps amplify float32 rounding (an update is +-lr whatever the size)
    z = torch.randn(64, 2, generator=g, dtype=torch.float64)
    s = torch.full((64,), 1 / 32, dtype=torch.float64)
    s[32:] *= -1
    nets = [LipschitzMLP(2, config, torch.Generator().manual_seed(1)).double() for _ in range(2)]
    fused = make_objective(nets[0], config, torch.device("cpu"))
    plain = lambda z, s: nets[1].objective(z, s)  # noqa: E731 - no workspace: plain autograd
    opts = [make_optimizer(n, config) for n in nets]
    for _ in range(5):
        a = train_step(nets[0], opts[0], fused, z, s)
        b = train_step(nets[1], opts[1], plain, z, s)
        assert torch.allclose(a, b, rtol=1e-10)
    for p, q in zip(nets[0].parameters(), nets[1].parameters(), strict=True):
        assert torch.allclose(p, q, rtol=1e-9, atol=1e-12)
    assert opts[0].defaults["fused"] is True  # Adam's fused kernel on a CPU


def test_optimizer_falls_back_where_fused_adam_is_missing(monkeypatch):
    real = torch.optim.Adam

    def adam(params, lr, fused=None):
        if fused:
            raise RuntimeError("`fused=True` requires all the params to be on supported devices")
        return real(params, lr=lr)

    monkeypatch.setattr(torch.optim, "Adam", adam)
    net = LipschitzMLP(2, EstimatorConfig(width=4, depth=1), torch.Generator())
    opt = make_optimizer(net, EstimatorConfig(width=4, depth=1))
    assert not opt.defaults["fused"]
