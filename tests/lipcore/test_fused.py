import pytest
import torch

from lipcore import EstimatorConfig
from lipcore.fused import Workspace, fused_objective
from lipcore.network import LipschitzMLP


def _net(d: int, width: int, depth: int, dtype: torch.dtype) -> LipschitzMLP:
    config = EstimatorConfig(width=width, depth=depth)
    return LipschitzMLP(d, config, torch.Generator().manual_seed(0)).to(dtype)


@pytest.mark.parametrize(("d", "width", "depth"), [(3, 16, 3), (1, 8, 1), (40, 12, 2)])
def test_fused_objective_and_gradients_equal_autograd(d, width, depth):
    g = torch.Generator().manual_seed(1)
    net = _net(d, width, depth, torch.float64)
    z = torch.randn(50, d, generator=g, dtype=torch.float64)
    s = torch.rand(50, generator=g, dtype=torch.float64)
    s[20:] *= -1  # signed weights, as in training; they need not sum to zero
    ref = torch.dot(s, net(z)[:, 0])
    grads_ref = torch.autograd.grad(ref, list(net.parameters()))
    out = net.objective(z, s, Workspace())
    grads = torch.autograd.grad(out, list(net.parameters()))
    assert torch.allclose(out, ref, rtol=1e-13)
    for a, b in zip(grads, grads_ref, strict=True):
        assert torch.allclose(a, b, rtol=1e-12, atol=1e-13)


def test_workspace_is_reused_and_a_stale_backward_raises():
    net = _net(2, 8, 2, torch.float32)
    ws = Workspace()
    z, s = torch.randn(10, 2), torch.full((10,), 0.1)
    first = net.objective(z, s, ws)
    buffers = ws.buffers(10, [8, 8], torch.float32, z.device)
    second = net.objective(z, s, ws)
    assert ws.buffers(10, [8, 8], torch.float32, z.device) is buffers  # nothing reallocated
    second.backward()  # the newest forward's backward works
    with pytest.raises(RuntimeError, match="reused by a later forward"):
        first.backward()
    # a new shape gets new buffers
    net.objective(torch.randn(12, 2), torch.full((12,), 0.1), ws).backward()


def test_fullsort_and_no_grad_take_the_plain_path():
    config = EstimatorConfig(width=6, depth=2, activation="fullsort")
    net = LipschitzMLP(2, config, torch.Generator())
    z, s = torch.randn(9, 2), torch.randn(9)
    ws = Workspace()
    out = net.objective(z, s, ws)
    assert torch.allclose(out, torch.dot(s, net(z)[:, 0]))
    assert ws.generation == 0  # the fused path never ran
    with torch.no_grad():
        mm = _net(2, 8, 2, torch.float32)
        assert torch.allclose(mm.objective(z, s, ws), torch.dot(s, mm(z)[:, 0]))
    assert ws.generation == 0


def test_inputs_that_need_a_gradient_take_the_plain_path():
    net = _net(2, 8, 2, torch.float64)
    z = torch.randn(6, 2, dtype=torch.float64, requires_grad=True)
    s = torch.full((6,), 1 / 6, dtype=torch.float64)
    ws = Workspace()
    (gz,) = torch.autograd.grad(net.objective(z, s, ws), z)  # the fused node has no z gradient
    (ref,) = torch.autograd.grad(torch.dot(s, net(z)[:, 0]), z)
    assert ws.generation == 0 and torch.allclose(gz, ref)


def test_fused_direct_call_matches_module():
    net = _net(4, 10, 2, torch.float64)
    z = torch.randn(7, 4, dtype=torch.float64)
    s = torch.randn(7, dtype=torch.float64)
    layers = [*net.hidden, net.out]
    out = fused_objective(
        Workspace(), z, s, [la.effective_weight() for la in layers], [la.bias for la in layers]
    )
    assert torch.allclose(out, torch.dot(s, net(z)[:, 0]), rtol=1e-13)
