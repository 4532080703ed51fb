"""lipcore.scaling: per-feature factors, and a potential folded to take raw inputs."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lipcore import estimate_w1, evaluate
from lipcore.envelope import Envelope, envelope_of
from lipcore.scaling import feature_scales, fold_scales


def test_standardize_and_robust_factors() -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(4000, 3)) * [1.0, 100.0, 1e-3]
    y = rng.normal(size=(3000, 3)) * [1.0, 100.0, 1e-3]
    a, b = np.full(4000, 1 / 4000), np.full(3000, 1 / 3000)
    s = feature_scales(x, y, a, b, "standardize")
    assert s == pytest.approx([1.0, 100.0, 1e-3], rel=0.05)
    r = feature_scales(x, y, a, b, "robust")
    assert r == pytest.approx(np.array([1.0, 100.0, 1e-3]) * 1.349, rel=0.08)  # IQR of N(0, 1)
    assert (feature_scales(x, y, a, b, "none") == 1).all()
    const = np.zeros((5, 2))
    assert (
        feature_scales(const, const, np.full(5, 0.2), np.full(5, 0.2), "standardize") == 1
    ).all()
    with pytest.raises(ValueError, match="scale"):
        feature_scales(x, y, a, b, "minmax")


def test_folded_potential_takes_raw_points() -> None:
    rng = np.random.default_rng(1)
    x = rng.normal(size=(200, 2)) * [1.0, 50.0]
    y = x + [0.5, 0.0]
    a = np.full(200, 1 / 200)
    s = feature_scales(x, y, a, a, "standardize")
    cfg = {"width": 8, "depth": 1, "steps": 30, "min_steps": 0, "envelope_anchors": 0}
    est = estimate_w1(x / s, y / s, config=cfg, holdout=0.0)
    scaled_values = evaluate(est.potential, x / s, chunk=64)
    folded = fold_scales(est.potential, s)
    assert evaluate(folded, x, chunk=64) == pytest.approx(scaled_values, abs=1e-9)
    assert isinstance(folded[0], torch.nn.Linear)


def test_a_folded_envelope_takes_raw_points() -> None:
    rng = np.random.default_rng(2)
    x = rng.normal(size=(200, 2)) * [1.0, 50.0]
    s = np.array([1.0, 50.0])
    env = torch.nn.Sequential(envelope_of(x[:50] / s, rng.normal(size=50), "target"))
    scaled_values = evaluate(env, x / s, chunk=64)
    folded = fold_scales(env, s)
    assert evaluate(folded, x, chunk=64) == pytest.approx(scaled_values, abs=1e-12)
    assert isinstance(folded[0], Envelope)
