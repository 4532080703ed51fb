"""The certificate's one promise: lower_bound never exceeds the exact empirical W1."""

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lipcore import EstimatorConfig, estimate_w1, exact_w1

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
    kind = draw(st.sampled_from(["gauss", "shift", "clustered", "dup"]))
    x = rng.normal(size=(n, d)) * scale
    y = rng.normal(size=(m, d)) * scale * draw(st.sampled_from([0.5, 1.0, 3.0]))
    if kind == "shift":
        y = y + scale * rng.normal(size=d) * 3
    elif kind == "clustered":
        x = np.round(x / scale) * scale  # many repeated points
    elif kind == "dup" and m >= n:
        y[:n] = x  # overlapping sets
    a = b = None
    if draw(st.booleans()):
        a = rng.random(n) * (rng.random(n) > 0.3)
        a = a / a.sum() if a.sum() > 0 else None
    if draw(st.booleans()):
        b = rng.random(m) ** 3
        b = b / b.sum()
    dtype = draw(st.sampled_from([np.float32, np.float64]))
    holdout = draw(st.sampled_from([0.0, 0.2, 0.5]))
    return x.astype(dtype), y.astype(dtype), a, b, holdout, seed % 1000


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(problems())
def test_lower_bound_never_exceeds_exact(problem):
    x, y, a, b, holdout, seed = problem
    est = estimate_w1(x, y, a, b, config=CONFIG, holdout=holdout, seed=seed)
    exact = exact_w1(x, y, a, b)
    spread = float(np.abs(np.concatenate([x.ravel(), y.ravel()])).max())
    assert est.lower_bound <= exact + 1e-9 * max(spread, 1e-300), (est.lower_bound, exact)
    assert est.lipschitz_constant > 0


@pytest.mark.parametrize("d", [1, 2])
def test_tight_case_stays_below_exact_up_to_rounding(d):
    # A translated cloud: a linear potential attains W1 = |shift| exactly, so the bound comes
    # within rounding of the exact value, where a sloppy certificate would cross it.
    rng = np.random.default_rng(d)
    x = rng.normal(size=(200, d))
    y = x + rng.normal(size=d) * 3
    exact = exact_w1(x, y)
    config = EstimatorConfig(width=16, depth=2, steps=300, patience=0, lr=1e-2)
    est = estimate_w1(x, y, config=config, holdout=0)
    rel = (est.lower_bound - exact) / exact
    assert -1e-3 < rel <= 1e-12
