import numpy as np
import pytest

from lipcore.holdout import Z95, holdout_estimate, split


def test_split_partitions_and_renormalises():
    w = np.random.default_rng(0).random(50)
    w /= w.sum()
    s = split(50, w, 0.2, np.random.default_rng(1))
    assert len(s.held) == 10 and len(s.train) == 40
    assert sorted(np.r_[s.held, s.train].tolist()) == list(range(50))
    assert s.w_train.sum() == pytest.approx(1) and s.w_held.sum() == pytest.approx(1)
    assert np.allclose(s.w_held / w[s.held], s.w_held[0] / w[s.held[0]])


def test_split_refuses_degenerate_parts():
    u = np.full(3, 1 / 3)
    assert split(3, u, 0.0, np.random.default_rng(0)) is None
    assert split(1, np.ones(1), 0.2, np.random.default_rng(0)) is None
    # all the mass on one sample: one part would weigh nothing
    w = np.r_[1.0, np.zeros(9)]
    assert split(10, w, 0.5, np.random.default_rng(0)) is None


def test_uniform_interval_is_the_two_sample_normal_interval():
    rng = np.random.default_rng(3)
    fx, fy = rng.normal(1, 2, size=400), rng.normal(0, 1, size=100)
    h = holdout_estimate(fx, np.full(400, 1 / 400), fy, np.full(100, 1 / 100))
    half = Z95 * np.sqrt(fx.var() / 400 + fy.var() / 100)
    assert h.value == pytest.approx(fx.mean() - fy.mean())
    assert h.ci95 == pytest.approx((h.value - half, h.value + half))
    assert (h.n_source, h.n_target) == (400, 100)


def test_interval_covers_the_mean_about_95_percent():
    rng = np.random.default_rng(4)
    hits = 0
    for _ in range(400):
        fx, fy = rng.exponential(size=80), rng.normal(size=60)
        w = rng.random(80)
        h = holdout_estimate(fx, w / w.sum(), fy, np.full(60, 1 / 60))
        hits += h.ci95[0] <= 1.0 <= h.ci95[1]
    assert 0.9 <= hits / 400 <= 0.99
