"""lipcore.upper_bound: the cost of an explicit coupling brackets the exact empirical W1 from
above, on every input (as lower_bound does from below), and is tight where the potential is good."""

import math

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lipcore import EstimatorConfig, estimate_w1, evaluate, exact_w1, upper_bound
from lipcore.bracket import bracket_width, pair_costs

CONFIG = EstimatorConfig(
    width=8, depth=2, steps=25, batch_size=16, lr=0.05, min_steps=0, patience=0
)


@st.composite
def problems(draw):
    d = draw(st.sampled_from([1, 2, 3, 5]))
    n = draw(st.integers(1, 40))
    m = draw(st.integers(1, 40))
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    scale = draw(st.sampled_from([1e-3, 1.0, 1e3]))
    kind = draw(st.sampled_from(["gauss", "shift", "clustered", "dup", "far"]))
    x = rng.normal(size=(n, d)) * scale
    y = rng.normal(size=(m, d)) * scale * draw(st.sampled_from([0.5, 1.0, 3.0]))
    if kind == "shift":
        y = y + scale * rng.normal(size=d) * 3
    elif kind == "clustered":
        x = np.round(x / scale) * scale  # many repeated points
    elif kind == "dup" and m >= n:
        y[:n] = x  # overlapping sets
    elif kind == "far":
        x, y = x + 1e6 * scale, y + 1e6 * scale  # far from the origin
    a = b = None
    if draw(st.booleans()):
        a = rng.random(n) * (rng.random(n) > 0.3)
        a = a / a.sum() if a.sum() > 0 else None
    if draw(st.booleans()):
        b = rng.random(m) ** 3
        b = b / b.sum()
    dtype = draw(st.sampled_from([np.float32, np.float64]))
    block = draw(st.sampled_from([2, 3, 8, 128]))
    return x.astype(dtype), y.astype(dtype), a, b, block, seed % 1000


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(problems())
def test_bracket_holds_on_every_input(problem):
    x, y, a, b, block, seed = problem
    est = estimate_w1(x, y, a, b, config=CONFIG, holdout=0.0, seed=seed)
    exact = exact_w1(x, y, a, b)
    spread = float(np.abs(np.concatenate([x.ravel(), y.ravel()]).astype(np.float64)).max())
    ub = upper_bound(x, y, a, b, potential=est.potential, block=block, window=16)
    plain = upper_bound(x, y, a, b, block=block)  # no potential: the mean-difference projection
    assert est.lower_bound <= exact + 1e-9 * max(spread, 1e-300)
    # no tolerance on this side: the bound carries its own rounding allowance
    assert exact <= ub.value, (exact, ub)
    assert exact <= plain.value, (exact, plain)
    assert ub.cost <= ub.history[0] * (1 + 1e-12) + 1e-300  # refinement never adds cost


def _weights(rng, n):
    w = rng.gamma(2.0, size=n)
    return w / w.sum()


@pytest.mark.parametrize("heavy", [False, True])
def test_coupling_is_exactly_feasible_and_its_cost_is_the_value(heavy):
    rng = np.random.default_rng(3)
    x = rng.normal(size=(300, 2))
    y = rng.normal(size=(170, 2)) + [1.5, -0.5]
    a, b = _weights(rng, 300), _weights(rng, 170)
    if heavy:  # one atom carrying half the mass: split across many blocks
        b[0] = b[1:].sum()
        b = b / b.sum()
    ub = upper_bound(x, y, a, b, block=16, passes=3, window=64, return_coupling=True)
    c = ub.coupling
    assert c is not None and len(c.i) == ub.pairs
    assert (c.mass > 0).all()
    rows, cols = c.marginals(300, 170)
    np.testing.assert_allclose(rows, a, rtol=0, atol=1e-15)
    np.testing.assert_allclose(cols, b, rtol=0, atol=1e-15)
    assert ub.defect < 1e-13
    direct = math.fsum((c.mass * np.linalg.norm(x[c.i] - y[c.j], axis=1)).tolist())
    assert ub.cost == pytest.approx(direct, rel=1e-14)
    assert ub.cost <= ub.value <= ub.cost * (1 + 1e-13) + 1e-14
    assert ub.value >= exact_w1(x, y, a, b)
    np.testing.assert_allclose(pair_costs(x, y, c.i, c.j), np.linalg.norm(x[c.i] - y[c.j], axis=1))


def test_tight_with_a_fitted_potential():
    # 2-D shift, n = m = 600: the bracket [lower, upper] is a few per mille wide
    rng = np.random.default_rng(0)
    x = rng.normal(size=(600, 2))
    y = rng.normal(size=(600, 2)) + [2.0, 0.0]
    cfg = EstimatorConfig(width=32, depth=2, steps=150, batch_size=600, min_steps=0)
    est = estimate_w1(x, y, config=cfg, holdout=0.0)
    exact = exact_w1(x, y)
    ub = upper_bound(x, y, potential=est.potential, block=64, passes=2)
    assert est.lower_bound <= exact <= ub.value
    assert bracket_width(est.lower_bound, ub.value) < 0.02
    assert (ub.value - exact) / exact < 0.01
    assert ub.method == "potential-blocks"
    assert ub.history == sorted(ub.history, reverse=True)
    # the potential's values can be passed instead of the potential (the certificate has them)
    fx = evaluate(est.potential, x, chunk=1000)
    fy = evaluate(est.potential, y, chunk=1000)
    same = upper_bound(x, y, fx=fx, fy=fy, block=64, passes=2)
    assert same.value == ub.value and same.method == "key-blocks"


def test_identical_sets_cost_nothing():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(50, 3))
    for y in (x, x[::-1]):
        ub = upper_bound(x, y)
        assert ub.cost == 0.0 and ub.value < 1e-13  # what remains: the rounding allowance
    assert bracket_width(0.0, 0.0) == 0.0


def test_time_budget_keeps_a_valid_bound():
    rng = np.random.default_rng(2)
    x = rng.normal(size=(400, 2))
    y = rng.normal(size=(400, 2)) * 2
    exact = exact_w1(x, y)
    quick = upper_bound(x, y, block=32, passes=5, max_seconds=0.0)
    full = upper_bound(x, y, block=32, passes=5)
    assert quick.passes == 0 and full.passes == 5
    assert exact <= full.value <= quick.value
    assert full.to_dict()["passes"] == 5


def test_invalid_arguments():
    x = np.zeros((3, 2))
    with pytest.raises(ValueError, match="fx and fy"):
        upper_bound(x, x, fx=np.zeros(3))
    with pytest.raises(ValueError, match="fx, fy"):
        upper_bound(x, x, fx=np.zeros(2), fy=np.zeros(3))
    with pytest.raises(ValueError, match="block"):
        upper_bound(x, x, block=1)
    with pytest.raises(ValueError, match="max_seconds"):
        upper_bound(x, x, max_seconds=-1)
    with pytest.raises(ValueError, match="potential"):
        upper_bound(x, x, potential=lambda t: t)
    with pytest.raises(ValueError, match="mismatched"):
        upper_bound(x, np.zeros((3, 3)))
