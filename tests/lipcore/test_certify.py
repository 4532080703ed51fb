import numpy as np
import pytest
import torch
from torch import nn

from lipcore.certify import evaluate, grad_norm_quantiles, weighted_center, weighted_difference
from lipcore.layers import MaxMin


def _model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(3, 8), MaxMin(), nn.Linear(8, 1)).double()


def test_chunked_evaluation_matches_one_pass_and_float32_input():
    model = _model()
    x = np.random.default_rng(0).normal(size=(1001, 3))
    with torch.no_grad():
        ref = model(torch.from_numpy(x)).numpy()[:, 0]
    assert np.array_equal(evaluate(model, x, chunk=1001), ref)
    assert np.allclose(evaluate(model, x, chunk=7), ref, rtol=0, atol=1e-14)
    x32 = x.astype(np.float32)
    with torch.no_grad():
        ref32 = model(torch.from_numpy(x32.astype(np.float64))).numpy()[:, 0]
    assert np.array_equal(evaluate(model, x32, chunk=100), ref32)  # evaluated in float64


def test_weighted_difference_ignores_constant_offset():
    rng = np.random.default_rng(1)
    fx, fy = rng.normal(size=5), rng.normal(size=4)
    a, b = np.full(5, 0.2), np.full(4, 0.25)
    base = weighted_difference(fx, a, fy, b)
    assert base == pytest.approx(fx.mean() - fy.mean(), rel=1e-12)
    assert weighted_difference(fx + 1e6, a, fy + 1e6, b) == pytest.approx(base, abs=1e-9)


def test_grad_norm_quantiles_of_a_linear_map():
    model = nn.Sequential(nn.Linear(2, 1)).double()
    with torch.no_grad():
        model[0].weight.copy_(torch.tensor([[3.0, 4.0]]))
    x = np.random.default_rng(2).normal(size=(30, 2))
    q = grad_norm_quantiles(model, x, x, 10.0, 8, np.random.default_rng(0))
    assert q == pytest.approx({"q05": 0.5, "q50": 0.5, "q95": 0.5})


def test_public_evaluate_reads_a_read_only_memory_map_in_chunks(tmp_path):
    import lipcore

    model = _model()
    x = np.random.default_rng(3).normal(size=(257, 3)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    mm = np.load(tmp_path / "x.npy", mmap_mode="r")
    assert not mm.flags.writeable
    with torch.no_grad():
        ref = model(torch.from_numpy(x.astype(np.float64))).numpy()[:, 0]
    out = lipcore.evaluate(model, mm, chunk=10)
    # Chunks of other sizes may take other BLAS kernels: equal up to the last bits.
    assert out.dtype == np.float64 and np.allclose(out, ref, rtol=0, atol=1e-14)
    assert np.allclose(lipcore.evaluate(model, torch.from_numpy(x), chunk=64), ref, atol=1e-14)
    assert lipcore.evaluate(model, np.zeros((0, 3)), chunk=4).shape == (0,)
    with pytest.raises(ValueError, match="chunk"):
        lipcore.evaluate(model, x, chunk=0)


def test_public_evaluate_gradients_and_device_leave_the_model_alone():
    import lipcore

    model = nn.Sequential(nn.Linear(2, 1)).double().requires_grad_(False)
    with torch.no_grad():
        model[0].weight.copy_(torch.tensor([[3.0, 4.0]]))
        model[0].bias.fill_(1.0)
    x = np.random.default_rng(4).normal(size=(11, 2))
    values, grads = lipcore.evaluate(model, x, chunk=4, device="cpu", grad=True)
    assert np.allclose(values, x @ [3.0, 4.0] + 1.0, rtol=0, atol=1e-12)
    assert grads.shape == (11, 2) and grads.dtype == np.float64
    assert np.array_equal(grads, np.tile([3.0, 4.0], (11, 1)))
    assert not model[0].weight.requires_grad
    assert next(model.parameters()).device.type == "cpu"


def test_weighted_center_is_the_mean_of_the_two_weighted_means():
    fx, fy = np.array([1.0, 3.0]), np.array([10.0])
    assert weighted_center(fx, np.array([0.5, 0.5]), fy, np.array([1.0])) == 6.0
