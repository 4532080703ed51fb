import pytest
import torch
from torch import nn

from lipcore import EstimatorConfig
from lipcore.certify import lipschitz_constant
from lipcore.layers import MaxMin
from lipcore.network import LipschitzMLP


def _trained_net(config: EstimatorConfig, d: int = 3) -> LipschitzMLP:
    g = torch.Generator().manual_seed(0)
    net = LipschitzMLP(d, config, g)
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    for _ in range(20):  # move away from the initialisation
        z = torch.randn(64, d, generator=g)
        loss = -(net(z[:32]).mean() - net(z[32:] + 1.0).mean())
        opt.zero_grad()
        loss.backward()
        opt.step()
        net.reproject_()
    return net


@pytest.mark.parametrize("activation", ["maxmin", "fullsort"])
def test_export_equals_training_function_with_folded_scaling(activation):
    config = EstimatorConfig(width=16, depth=3, activation=activation)
    net = _trained_net(config)
    shift = torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64)
    scale = 0.25
    exported = net.export(shift, scale)
    assert isinstance(exported, nn.Sequential)
    assert all(isinstance(m, nn.Linear | MaxMin) or activation != "maxmin" for m in exported)
    x = torch.randn(200, 3, dtype=torch.float64) * 5
    with torch.no_grad():
        trained = net(((x - shift) * scale).float()).double()
        plain = exported(x)
    assert plain.shape == (200, 1)
    assert torch.allclose(trained, plain, atol=1e-5, rtol=1e-5)


def test_exported_gradient_norm_at_most_one_after_certification():
    config = EstimatorConfig(width=16, depth=3)
    net = _trained_net(config)
    exported = net.export(torch.zeros(3, dtype=torch.float64), 3.0)
    lip = lipschitz_constant(exported)
    assert lip == pytest.approx(3.0, rel=1e-3)  # orthonormal layers: L ~ the input scale
    x = torch.randn(500, 3, dtype=torch.float64, requires_grad=True)
    (g,) = torch.autograd.grad(exported(x).sum(), x)
    norms = g.norm(dim=1) / lip
    assert norms.max() <= 1 + 1e-9
    assert norms.min() > 0.5  # gradient-norm preserving network: no dead directions


def test_lipschitz_constant_is_product_of_spectral_norms():
    model = nn.Sequential(nn.Linear(2, 3), MaxMin(), nn.Linear(3, 1)).double()
    with torch.no_grad():
        model[0].weight.copy_(torch.tensor([[2.0, 0], [0, 1], [0, 0]]))
        model[2].weight.copy_(torch.tensor([[3.0, 4.0, 0]]))
    assert lipschitz_constant(model) == pytest.approx(10.0)
