import numpy as np

from lipcore import EstimatorConfig, estimate_w1, exact_w1


def test_gaussian_shift_2d_within_one_percent_of_exact():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(600, 2))
    y = rng.normal(size=(500, 2)) * 0.8 + np.array([2.0, 1.0])
    exact = exact_w1(x, y)
    config = EstimatorConfig(width=16, depth=2, steps=300, patience=0, lr=1e-2)
    est = estimate_w1(x, y, config=config, holdout=0.2)
    gap = (exact - est.lower_bound) / exact
    assert 0 <= gap <= 0.01, (est.lower_bound, exact, gap)
    assert abs(est.holdout.value - exact) / exact < 0.1
    assert est.grad_norm["q50"] > 0.95  # a fitted potential has |grad f| ~ 1 on the samples


def test_data_far_from_origin_is_centred_before_float32():
    # float32 has ~7 digits: 1e8 + N(0, 1) cast first would be quantised to steps of 8
    rng = np.random.default_rng(1)
    x = 1e8 + rng.normal(size=(300, 2))
    y = 1e8 + rng.normal(size=(250, 2)) + [1.5, 0.0]
    exact = exact_w1(x, y)
    config = EstimatorConfig(width=16, depth=2, steps=150, patience=0, lr=1e-2)
    est = estimate_w1(x, y, config=config, holdout=0)
    assert 0 <= (exact - est.lower_bound) / exact <= 0.05
