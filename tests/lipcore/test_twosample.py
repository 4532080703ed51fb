"""lipcore.twosample and the verdict of estimate_w1: exact level under the null, power on a
plain shift, weights, and the held-out samples kept out of every training decision."""

from __future__ import annotations

import math

import numpy as np
import pytest

from lipcore import estimate_w1
from lipcore.estimate import prepare
from lipcore.twosample import permutation_test, summary

TINY = {"width": 8, "depth": 1, "steps": 40, "batch_size": 64, "min_steps": 0, "patience": 20}


def _binomial_upper(n: int, p: float, z: float = 3.0) -> float:
    """A rejection rate above this is more than z standard errors over level p."""
    return p + z * math.sqrt(p * (1 - p) / n)


def test_level_holds_for_any_witness_under_exchangeable_samples() -> None:
    rng = np.random.default_rng(0)
    reps, alpha = 400, 0.05
    rejections = 0
    for _ in range(reps):
        fx, fy = rng.standard_t(3, size=25), rng.standard_t(3, size=35)
        test = permutation_test(fx, np.ones(25), fy, np.ones(35), 99, rng)
        rejections += test.rejects(alpha)
    assert rejections / reps <= _binomial_upper(reps, alpha)


def test_level_holds_with_weights_drawn_alike() -> None:
    rng = np.random.default_rng(1)
    reps, alpha = 300, 0.1
    rejections = 0
    for _ in range(reps):
        fx, fy = rng.normal(size=20), rng.normal(size=30)
        wx, wy = rng.exponential(size=20), rng.exponential(size=30)
        rejections += permutation_test(fx, wx, fy, wy, 99, rng).rejects(alpha)
    assert rejections / reps <= _binomial_upper(reps, alpha)


def test_p_value_range_statistic_and_noise_floor() -> None:
    rng = np.random.default_rng(2)
    fx, fy = rng.normal(size=50) + 3.0, rng.normal(size=50)
    test = permutation_test(fx, np.ones(50), fy, np.ones(50), 199, rng)
    assert test.p_value == pytest.approx(1 / 200)  # nothing beats a 3-sigma shift
    assert test.statistic == pytest.approx(fx.mean() - fy.mean())
    assert abs(test.null_median) < 0.5 < test.statistic
    flat = permutation_test(np.ones(50), np.ones(50), np.ones(50), np.ones(50), 199, rng)
    assert flat.p_value == 1.0  # a constant witness: every relabelling ties, ties do not reject
    with pytest.raises(ValueError, match="permutations"):
        permutation_test(fx, np.ones(50), fy, np.ones(50), 0, rng)


def test_weights_enter_the_statistic() -> None:
    rng = np.random.default_rng(3)
    fx, fy = np.array([0.0, 10.0]), np.array([0.0, 0.0])
    test = permutation_test(fx, np.array([3.0, 1.0]), fy, np.ones(2), 9, rng)
    assert test.statistic == pytest.approx(2.5)


def test_estimate_verdict_on_a_shift_and_on_the_null() -> None:
    rng = np.random.default_rng(4)
    x, cfg = rng.normal(size=(300, 2)), {**TINY, "steps": 200, "patience": 50}
    shifted = estimate_w1(x, rng.normal(size=(300, 2)) + [1.0, 0.0], config=cfg, seed=1)
    verdict = shifted.verdict(0.05)
    assert verdict is not None and verdict["differ"] and verdict["p_value"] <= 0.01
    assert verdict["summary"].startswith("differ (p")
    assert verdict["permutations"] == 1000 and verdict["alpha"] == 0.05
    same = estimate_w1(x, rng.normal(size=(300, 2)), config=cfg, seed=1)
    assert same.test is not None and same.test.p_value > 0.01
    assert estimate_w1(x, x + 1, config=TINY, holdout=0.0).verdict() is None
    with pytest.raises(ValueError, match="alpha"):
        shifted.verdict(1.5)


@pytest.mark.slow
def test_estimate_w1_level_under_the_null() -> None:
    """The whole pipeline (split, validation, training, test) under the null: the rejection
    rate at alpha = 0.1 stays within Monte-Carlo error of 0.1."""
    reps, alpha = 60, 0.1
    rejections = 0
    for seed in range(reps):
        rng = np.random.default_rng(1000 + seed)
        x, y = rng.normal(size=(60, 3)), rng.normal(size=(50, 3))
        cfg = {**TINY, "permutations": 99}
        est = estimate_w1(x, y, config=cfg, holdout=0.5, seed=seed)
        rejections += est.test is not None and est.test.rejects(alpha)
    assert rejections / reps <= _binomial_upper(reps, alpha)


def test_held_out_rows_never_train_nor_validate() -> None:
    rng = np.random.default_rng(5)
    x, y = rng.normal(size=(200, 2)), rng.normal(size=(150, 2))
    prep = prepare(x, y, config=TINY, holdout=0.3, seed=7)
    assert prep.split_x is not None and prep.data.validation is not None
    held = set(prep.split_x.held.tolist())
    used = set(prep.split_x.train.tolist())
    assert not held & used and len(held) + len(used) == 200
    # training + validation rows are exactly the non-held-out rows
    n_train, n_val = prep.data.zx.shape[0], prep.data.validation.zx.shape[0]
    assert n_train + n_val == 200 - len(held)


def test_summary_sentence() -> None:
    rng = np.random.default_rng(6)
    test = permutation_test(np.zeros(5), np.ones(5), np.zeros(5), np.ones(5), 9, rng)
    assert summary(test, 0.05).startswith("no detectable difference (p = 1")
    assert summary(None, 0.05) == "no two-sample test was run"


def test_exact_permutation_test_and_its_noise_floor() -> None:
    from lipcore import exact_permutation_test, exact_w1

    rng = np.random.default_rng(8)
    x, y = rng.normal(size=(40, 5)), rng.normal(size=(30, 5))
    a, b = np.full(40, 1 / 40), np.full(30, 1 / 30)
    same = exact_permutation_test(x, y, a, b, exact_w1(x, y), 49, rng, 10**6)
    assert same.method == "exact-w1-permutation" and same.p_value > 0.05
    # In 5-D at n = 40 the empirical W1 of one distribution is mostly noise: the floor is large.
    assert same.null_median > 0.5 * same.statistic
    far = y + [3.0, 0, 0, 0, 0]
    moved = exact_permutation_test(x, far, a, b, exact_w1(x, far), 49, rng, 10**6)
    assert moved.p_value == pytest.approx(1 / 50) and moved.statistic > 1.3 * moved.null_median


@pytest.mark.slow
def test_twenty_dimensional_shift_distance_and_verdict() -> None:
    """The issue's case: two 5000 x 20 samples, one feature shifted by 0.5 (W1 = 0.5). The
    held-out distance is within reach of 0.5 and its interval covers it; the null pair's test
    does not reject and its distance interval covers 0."""
    rng = np.random.default_rng(100)
    x, y = rng.normal(size=(5000, 20)), rng.normal(size=(5000, 20))
    y[:, 0] += 0.5
    est = estimate_w1(x, y, seed=0, device="cpu")
    assert est.holdout is not None and est.test is not None
    lo, hi = est.holdout.ci95
    assert est.holdout.value >= 0.40 and lo <= 0.5 <= hi
    assert est.test.p_value < 0.01
    null = estimate_w1(x, rng.normal(size=(5000, 20)), seed=0, device="cpu")
    assert null.holdout is not None and null.holdout.ci95[0] <= 0.0
