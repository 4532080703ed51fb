"""lipcore.feature_table: which features moved, against known answers."""

import numpy as np
import pandas as pd
import pytest
import scipy.stats

from lipcore import EstimatorConfig, estimate_w1, exact_w1, feature_table

SMALL = EstimatorConfig(width=32, depth=2, steps=200, batch_size=1000, min_steps=0)


def test_one_shifted_feature_among_50_ranks_first():
    rng = np.random.default_rng(0)
    n, d, k = 1000, 50, 17
    x = rng.normal(size=(n, d))
    y = rng.normal(size=(n, d))
    y[:, k] += 2.0
    est = estimate_w1(x, y, config=SMALL, seed=0)
    table = feature_table(est.potential, x, y, lipschitz=est.lipschitz_constant)
    top = table[0]
    assert top.index == k and top.name == f"x{k}"
    assert top.attribution >= 0.8
    assert top.direction > 0.8  # the target moved up along feature k
    assert top.marginal_w1 == pytest.approx(2.0, abs=0.15)
    assert sum(f.attribution for f in table) == pytest.approx(1.0, abs=1e-12)
    assert [f.attribution for f in table] == sorted((f.attribution for f in table), reverse=True)
    assert sorted(f.index for f in table) == list(range(d))
    assert all(abs(f.direction) <= 1 + 1e-9 for f in table)
    # the default L (from the weights) is the certificate's
    again = feature_table(est.potential, x, y)
    assert again[0].direction == pytest.approx(top.direction, rel=1e-12)


def test_rotation_keeps_marginals_but_not_the_distance():
    # x has correlation +0.9, y has -0.9 (x rotated by 90 degrees): both marginals N(0, 1)
    rng = np.random.default_rng(1)
    cov = np.array([[1.0, 0.9], [0.9, 1.0]])
    x = rng.multivariate_normal([0, 0], cov, size=1000)
    y = rng.multivariate_normal([0, 0], cov, size=1000) * [1.0, -1.0]
    exact = exact_w1(x, y)
    est = estimate_w1(x, y, config=SMALL, seed=0)
    table = feature_table(est.potential, x, y)
    assert max(f.marginal_w1 for f in table) < min(0.15, exact / 5)
    assert exact > 0.8 and est.lower_bound > 0.5
    # the transport uses both features
    assert all(f.attribution > 0.2 for f in table)


def test_exact_method_gives_marginals_only():
    rng = np.random.default_rng(2)
    x = rng.normal(size=(300, 4))
    y = rng.normal(size=(200, 4)) * [1, 1, 3, 1] + [0, 0.5, 0, 0]
    a = rng.random(300)
    a /= a.sum()
    b = rng.random(200)
    b /= b.sum()
    table = feature_table(None, x, y, a, b, names=["p", "q", "r", "s"])
    assert [f.name for f in table][:2] == ["r", "q"]
    for f in table:
        assert f.attribution is None and f.direction is None
        ref = scipy.stats.wasserstein_distance(x[:, f.index], y[:, f.index], a, b)
        assert f.marginal_w1 == pytest.approx(ref, rel=1e-10, abs=1e-14)
    assert table[0].to_dict() == {
        "name": "r",
        "index": 2,
        "marginal_w1": table[0].marginal_w1,
        "attribution": None,
        "direction": None,
    }


def test_frame_names_subsample_and_errors():
    rng = np.random.default_rng(3)
    x = pd.DataFrame(rng.normal(size=(400, 3)), columns=["age", "income", "score"])
    y = pd.DataFrame(rng.normal(size=(300, 3)) + [0, 0, 1.5], columns=["age", "income", "score"])
    est = estimate_w1(x, y, config=SMALL, seed=0)
    table = feature_table(est.potential, x, y, max_rows=100)
    assert table[0].name == "score" and table[0].index == 2
    assert sum(f.attribution for f in table) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="names"):
        feature_table(None, x, y, names=["a"])
    with pytest.raises(ValueError, match="max_rows"):
        feature_table(est.potential, x, y, max_rows=0)
    with pytest.raises(ValueError, match="potential"):
        feature_table("net", x, y)
