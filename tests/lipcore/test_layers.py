import torch

from lipcore.layers import FrobeniusLinear, FullSort, MaxMin, OrthoLinear


def test_maxmin_values_and_gradient_norm_preserved():
    x = torch.tensor([[1.0, -2.0, 0.5, 3.0]], requires_grad=True)
    y = MaxMin()(x)
    assert y.tolist() == [[1.0, 3.0, 0.5, -2.0]]
    v = torch.randn(1, 4)
    (g,) = torch.autograd.grad((y * v).sum(), x)
    assert torch.allclose(g.norm(), v.norm())  # a permutation: gradient norm preserved


def test_fullsort_sorts_and_preserves_norm():
    x = torch.randn(5, 6, requires_grad=True)
    y = FullSort()(x)
    assert torch.all(y[:, 1:] >= y[:, :-1])
    v = torch.randn(5, 6)
    (g,) = torch.autograd.grad((y * v).sum(), x)
    assert torch.allclose(g.norm(dim=1), v.norm(dim=1))


def test_ortholinear_weight_is_orthogonal_and_reprojection_helps():
    g = torch.Generator().manual_seed(0)
    layer = OrthoLinear(32, 32, iters=3, generator=g)
    s = torch.linalg.svdvals(layer.effective_weight().double())
    assert (s - 1).abs().max() < 1e-5
    with torch.no_grad():
        layer.weight.add_(0.005 * torch.randn(32, 32, generator=g))
    before = (torch.linalg.svdvals(layer.weight.double()) - 1).abs().max()
    layer.reproject_(2)
    after = (torch.linalg.svdvals(layer.weight.double()) - 1).abs().max()
    assert after < before / 10


def test_frobenius_linear_is_one_lipschitz():
    layer = FrobeniusLinear(10, 1, torch.Generator().manual_seed(0))
    with torch.no_grad():
        layer.weight.mul_(17.0)
    assert torch.linalg.matrix_norm(layer.effective_weight().double(), ord=2) <= 1 + 1e-6


def test_maxmin_gradient_matches_autograd_of_max_and_min_and_double_backward():
    torch.manual_seed(0)
    x = torch.randn(7, 10, dtype=torch.float64, requires_grad=True)
    v = torch.randn(7, 10, dtype=torch.float64)
    (g,) = torch.autograd.grad((MaxMin()(x) * v).sum(), x)
    a, b = x[:, :5], x[:, 5:]
    ref = torch.cat([torch.maximum(a, b), torch.minimum(a, b)], 1)
    (g_ref,) = torch.autograd.grad((ref * v).sum(), x)
    assert torch.allclose(g, g_ref, atol=1e-15)
    # double backward (e.g. a gradient penalty) goes through the custom backward:
    # the input gradient is a permutation of v, so d/dv ||g||^2 = 2 v
    v.requires_grad_(True)
    (g2,) = torch.autograd.grad((MaxMin()(x) * v).sum(), x, create_graph=True)
    (h,) = torch.autograd.grad((g2**2).sum(), v)
    assert torch.allclose(h, 2 * v)
    assert torch.autograd.gradcheck(MaxMin(), (x,))


def test_warm_start_moves_raw_weight_to_last_orthonormalised_plus_update():
    g = torch.Generator().manual_seed(1)
    layer = OrthoLinear(24, 24, iters=1, generator=g)
    with torch.no_grad():
        layer.weight.add_(0.01 * torch.randn(24, 24, generator=g))  # drifted raw weight
    drift = (torch.linalg.svdvals(layer.weight.double()) - 1).abs().max()
    layer(torch.randn(4, 24))  # a training forward records the orthonormalisation's correction
    w_eff = layer.effective_weight().detach()
    update = 1e-3 * torch.randn(24, 24, generator=g)
    with torch.no_grad():
        layer.weight.add_(update)  # what an optimiser step does
    layer.reproject_()
    assert torch.allclose(layer.weight, w_eff + update, atol=1e-6)
    # no forward since: a second call is a no-op
    before = layer.weight.clone()
    layer.reproject_()
    assert torch.equal(before, layer.weight)
    # the raw weight is back near orthogonal, so one iteration is enough
    s = torch.linalg.svdvals(layer.effective_weight().double())
    assert (s - 1).abs().max() < drift / 100
