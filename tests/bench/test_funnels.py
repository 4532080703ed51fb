"""The MinFunnels generator of bench/funnels.py: its plan is optimal and its directions are unit.

The pairs (x_i, y_i) it samples are an optimal plan: the exact empirical W1 (POT) between the
x_i and the y_i equals the plan's mean cost to rounding, and u(y) - u(x) = |y - x| on every pair.
"""

from __future__ import annotations

import numpy as np
import ot
import pytest
import torch

from bench.funnels import cosine, make_funnels, plan_direction


@pytest.mark.parametrize(("dim", "n_funnels"), [(2, 4), (2, 16), (16, 16)])
def test_plan_is_optimal(dim: int, n_funnels: int) -> None:
    funnels = make_funnels(dim, n_funnels, seed=3)
    x, y = funnels.sample_plan(600, np.random.default_rng(0))
    cost = np.linalg.norm(y - x, axis=1)
    ux, kx = funnels.potential(x)
    uy, ky = funnels.potential(y)
    np.testing.assert_allclose(uy - ux, cost, atol=1e-6)  # u rises by |y - x| along each pair
    assert (kx == ky).all()  # x stays in y's funnel
    assert (np.abs(x) <= funnels.half + 1e-12).all()
    emd = ot.emd2([], [], ot.dist(x, y, metric="euclidean"), numItermax=10**7)
    assert emd == pytest.approx(cost.mean(), rel=1e-9)


def test_true_w1_matches_pot_unpaired() -> None:
    """D = 2, N = 4: the exact W1 of independent samples of P and Q is within sampling error of
    the true W1 (in 2-D the empirical W1's bias at n = 1500 is a few hundredths)."""
    funnels = make_funnels(2, 4)
    w1, se = funnels.true_w1(100_000, np.random.default_rng(1))
    assert se < 0.01 * w1
    rng = np.random.default_rng(2)
    x, _ = funnels.sample_plan(1500, rng)
    y = rng.uniform(-funnels.half, funnels.half, size=(1500, 2))
    emd = ot.emd2([], [], ot.dist(x, y, metric="euclidean"), numItermax=10**7)
    assert abs(emd - w1) < 0.06 * w1


def test_direction_is_unit_and_along_the_plan() -> None:
    funnels = make_funnels(16, 64)
    x, y = funnels.sample_plan(500, np.random.default_rng(4))
    v = funnels.direction(x)
    np.testing.assert_allclose(np.linalg.norm(v, axis=1), 1.0, atol=1e-12)
    along = (y - x) / np.linalg.norm(y - x, axis=1, keepdims=True)
    assert np.min((v * along).sum(1)) > 1 - 1e-6


def test_cosine_of_a_linear_potential() -> None:
    """f(z) = -w.z is high on the source and its -grad f = w: cosine 1 where the plan moves
    along w, -1 against it, and the plan's directions are those of the field."""
    funnels = make_funnels(2, 16)
    x, y = funnels.sample_plan(300, np.random.default_rng(5))
    d = plan_direction(x, y)
    np.testing.assert_allclose(np.linalg.norm(d, axis=1), 1.0, atol=1e-12)
    far = np.linalg.norm(y - x, axis=1) > 1e-6
    assert np.min((d[far] * funnels.direction(x[far])).sum(1)) > 1 - 1e-6
    w = np.array([0.6, -0.8])
    linear = torch.nn.Linear(2, 1, bias=False, dtype=torch.float64)
    with torch.no_grad():
        linear.weight.copy_(torch.from_numpy(-w[None, :]))
    along = np.repeat(w[None, :], len(x), axis=0)
    assert cosine(linear, x, along) == pytest.approx(1.0, abs=1e-12)
    assert cosine(linear, x, -along) == pytest.approx(-1.0, abs=1e-12)
