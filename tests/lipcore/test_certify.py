import numpy as np
import pytest
import torch
from torch import nn

from lipcore.certify import evaluate, grad_norm_quantiles, weighted_difference
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
